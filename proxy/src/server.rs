//! Wiring: config -> the proxy's own etcd client (its records, the broker's binding records
//! it follows for revocations), the balanced channel for tenants' requests, the metrics and
//! the monitoring listener, the services (measured by one layer) -> a tonic server on the
//! listener, until shutdown.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::Context;
use etcd_client::ConnectOptions;
use tokio::net::TcpListener;
use tonic::transport::Server;

use crate::backend::Backend;
use crate::caller::Tokens;
use crate::config::Config;
use crate::encryption::DataKeys;
use crate::leases::LeaseOwners;
use crate::measured::MeasureLayer;
use crate::metrics::{Metrics, OpenStreamsGauge};
use crate::pb::etcdserverpb::{
    auth_server::AuthServer, cluster_server::ClusterServer, kv_server::KvServer, lease_server::LeaseServer,
    maintenance_server::MaintenanceServer, watch_server::WatchServer,
};
use crate::policy;
use crate::quotas::metrics::QuotaCollector;
use crate::quotas::Quotas;
use crate::revocation::Bindings;
use crate::service::{Proxy, Shared};
use crate::streams::OpenStreams;
use crate::view::View;

/// Logs in as the proxy's own user, binds the listener, and serves until `shutdown`
/// completes; then stops accepting and lets calls in flight finish for up to
/// [`policy::DRAIN_TIMEOUT`] (open watches would otherwise hold it forever).
pub async fn run(config: Config, shutdown: impl Future<Output = ()> + Send + 'static) -> anyhow::Result<()> {
    let listener = TcpListener::bind(config.listen)
        .await
        .with_context(|| format!("cannot listen on {}", config.listen))?;
    let address: SocketAddr = listener.local_addr()?;
    let endpoints: Vec<String> =
        config.endpoints.iter().map(|e| e.as_str().trim_end_matches('/').to_owned()).collect();
    let options = ConnectOptions::new()
        .with_user(config.user.as_str(), config.password.expose())
        .with_connect_timeout(policy::CONNECT_TIMEOUT)
        .with_timeout(policy::RECORD_TIMEOUT)
        .with_auto_token_refresh(true);
    let client =
        etcd_broker::etcd::connect(&endpoints, options, &config.endpoints_tls).await.with_context(|| {
            format!("the proxy's etcd user '{}' cannot log in to {}", config.user, endpoints.join(","))
        })?;
    let bindings = Bindings::new(client.clone(), config.broker_names.clone());
    bindings.probe().await.with_context(|| {
        format!(
            "the proxy's etcd user '{}' cannot read the broker's binding records ({}); it needs read \
             access there to revoke unbound bindings",
            config.user,
            config.broker_names.all_bindings_prefix()
        )
    })?;
    if let Some(bao) = config.openbao.clone() {
        // Transit keys' token, renewed ahead of its expiry even while no data key is unsealed.
        tokio::spawn(async move { bao.keep_renewed().await });
    }
    let tokens = Arc::new(Tokens::new(config.admin_users.iter().cloned()));
    let streams = OpenStreams::default();
    // Runs as long as the process: it only reads.
    tokio::spawn(bindings.clone().follow(tokens.clone(), streams.clone()));
    let data_keys = DataKeys::new(client.clone(), config.broker_names.clone(), config.keychain.clone());
    tokio::spawn(data_keys.clone().follow());
    let owners = LeaseOwners::new(client.clone(), &config.state_prefix);
    tokio::spawn(owners.clone().sweep_every(config.lease_sweep));
    let quotas = Quotas::new(client.clone(), config.broker_names.clone());
    if let Err(e) = quotas.probe().await {
        // Not fatal: only instances with quotas need it (their writes are refused meanwhile).
        tracing::warn!(
            error = %e,
            user = %config.user,
            prefix = quotas.data_prefix(),
            "the proxy's etcd user cannot read the tenants' data: instances with quotas cannot be \
             counted and their writes will be refused (UNAVAILABLE)"
        );
    }
    tokio::spawn(quotas.clone().follow());
    let backend = Backend::new(&config.endpoints, &config.endpoints_tls)?;
    let metrics = Arc::new(Metrics::new());
    let bytes = data_keys.bytes();
    metrics.register(Box::new(bytes.encrypted));
    metrics.register(Box::new(bytes.decrypted));
    metrics.register(Box::new(tokens.revocations()));
    metrics.register(Box::new(OpenStreamsGauge::new(streams.clone())));
    let (stopping, stop) = tokio::sync::watch::channel(false);
    let stopped = |mut stop: tokio::sync::watch::Receiver<bool>| async move {
        let _ = stop.wait_for(|stopped| *stopped).await;
    };
    if let Some(address) = config.monitoring_listen {
        let monitoring =
            crate::monitoring::serve(address, metrics.clone(), backend.clone(), stopped(stop.clone()));
        tokio::spawn(monitoring.await?);
    }
    metrics.register(Box::new(QuotaCollector::new(quotas.clone(), config.quota_top_instances)));
    let proxy = Proxy::new(Shared {
        backend,
        tokens,
        owners,
        view: View::new(&config.advertise_client_urls),
        bindings,
        streams,
        data_keys,
        quotas,
    });
    let router = Server::builder()
        .tcp_nodelay(true)
        .layer(MeasureLayer::new(metrics))
        .add_service(KvServer::new(proxy.clone()).max_decoding_message_size(policy::MAX_REQUEST_BYTES))
        .add_service(WatchServer::new(proxy.clone()).max_decoding_message_size(policy::MAX_REQUEST_BYTES))
        .add_service(LeaseServer::new(proxy.clone()).max_decoding_message_size(policy::MAX_REQUEST_BYTES))
        .add_service(AuthServer::new(proxy.clone()).max_decoding_message_size(policy::MAX_REQUEST_BYTES))
        .add_service(
            MaintenanceServer::new(proxy.clone()).max_decoding_message_size(policy::MAX_REQUEST_BYTES),
        )
        .add_service(ClusterServer::new(proxy).max_decoding_message_size(policy::MAX_REQUEST_BYTES));

    let signal = stopped(stop);
    let serve = async move {
        match &config.tls {
            None => {
                tracing::info!(%address, tls = false, "serving etcd's v3 API");
                router.serve_with_incoming_shutdown(crate::listener::plain_incoming(listener), signal).await
            }
            Some(identity) => {
                let acceptor = crate::listener::acceptor(identity)?;
                tracing::info!(%address, tls = true, "serving etcd's v3 API");
                router
                    .serve_with_incoming_shutdown(crate::listener::tls_incoming(listener, acceptor), signal)
                    .await
            }
        }
        .map_err(anyhow::Error::from)
    };
    let drained = async move {
        shutdown.await;
        tracing::info!("stopping: no new connections, calls in flight may finish");
        let _ = stopping.send(true);
        tokio::time::sleep(policy::DRAIN_TIMEOUT).await;
    };
    tokio::select! {
        served = serve => served,
        () = drained => Ok(()),
    }
}

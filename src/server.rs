//! Wiring: a validated [`Config`] becomes an [`EtcdBroker`] behind an actix-web server.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use actix_web::{App, HttpServer};

use crate::broker::names::Names;
use crate::broker::{BrokerSetup, Cluster, EtcdBroker};
use crate::clock::SystemClock;
use crate::config::{parse_endpoint, Config, TlsConfig};
use crate::etcd::{EtcdStore, Observer};
use crate::http::monitoring::{self, MonitoringState};
use crate::http::{routes, HttpState};
use crate::metrics::Metrics;
use crate::role_reaper;
use crate::store::metered::MeteredStore;
use crate::store::Store;

/// In-flight requests get this long to finish on shutdown (bpm allows 20 s in all).
const SHUTDOWN_GRACE: Duration = Duration::from_secs(15);

/// Why the broker could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("etcd cluster '{cluster}': {message}")]
    Cluster { cluster: String, message: String },
    #[error("cannot listen on {addr}: {source}")]
    Listen { addr: String, source: std::io::Error },
    #[error("listen.tls: {0}")]
    Tls(String),
}

/// Builds the broker for a validated config: one lazily connected, metered store per cluster.
pub fn build_broker(config: &Config, metrics: &Arc<Metrics>) -> Result<EtcdBroker, StartError> {
    let mut clusters = HashMap::new();
    for (name, cluster) in &config.clusters {
        let fail = |message: String| StartError::Cluster { cluster: name.clone(), message };
        // The series are looked up once here rather than on every batch or copy (which also
        // exports the copy counter at 0 from start-up).
        let batch_size = |call| metrics.etcd_batch_size.with_label_values(&[name.as_str(), call]);
        let (gets, txns) = (batch_size("get"), batch_size("txn"));
        let copies = metrics.etcd_read_copies.with_label_values(&[name.as_str()]);
        let observer = Observer {
            batch: Arc::new(move |call, size| if call == "get" { &gets } else { &txns }.observe(size as f64)),
            read_copy: Arc::new(move || copies.inc()),
        };
        let etcd: Arc<dyn Store> = EtcdStore::new(cluster, observer).map_err(|e| fail(e.to_string()))?;
        let store: Arc<dyn Store> = Arc::new(MeteredStore::new(etcd, metrics.clone(), name));
        let public =
            if cluster.public_endpoints.is_empty() { &cluster.endpoints } else { &cluster.public_endpoints };
        let public_endpoints =
            public.iter().map(|e| parse_endpoint(e)).collect::<Result<Vec<_>, _>>().map_err(fail)?;
        let ca_certificate = match &cluster.tls {
            Some(tls) => tls
                .ca_pem()
                .map_err(|e| fail(e.to_string()))?
                .map(|pem| String::from_utf8_lossy(&pem).into_owned()),
            None => None,
        };
        clusters.insert(name.clone(), Cluster { store, public_endpoints, ca_certificate });
    }
    let state = clusters[config.state_cluster_name()].store.clone();
    let plan_clusters =
        config.plan_configs.iter().map(|(plan, c)| (plan.clone(), c.cluster.clone())).collect();
    Ok(EtcdBroker::new(BrokerSetup {
        catalog: config.catalog.clone(),
        plan_clusters,
        clusters,
        state,
        state_cluster: config.state_cluster_name().to_owned(),
        names: Names::new(&config.prefixes.data, &config.prefixes.state),
        clock: Arc::new(SystemClock),
    }))
}

/// A listening broker: the OSB API and, when enabled, the monitoring listener.
pub struct RunningBroker {
    /// The OSB API's bound address (useful with port 0).
    pub addr: SocketAddr,
    /// The monitoring listener's bound address, if enabled.
    pub metrics_addr: Option<SocketAddr>,
    servers: Vec<actix_web::dev::Server>,
    /// The role reaper, run for as long as the servers.
    reaper: std::pin::Pin<Box<dyn std::future::Future<Output = ()>>>,
}

impl RunningBroker {
    /// Serves until SIGTERM/SIGINT (actix-web drains in-flight requests) or until stopped
    /// through [`RunningBroker::handles`]; the role reaper runs meanwhile (stopping it at any
    /// point is safe: each of its steps can be repeated).
    pub async fn serve(self) -> std::io::Result<()> {
        tokio::select! {
            served = futures_util::future::try_join_all(self.servers) => served.map(|_| ()),
            () = self.reaper => Ok(()),
        }
    }

    /// Handles to stop the listeners programmatically.
    pub fn handles(&self) -> Vec<actix_web::dev::ServerHandle> {
        self.servers.iter().map(|s| s.handle()).collect()
    }
}

/// The first address a bound server listens on.
fn first_addr(addrs: Vec<SocketAddr>, listen: &str) -> Result<SocketAddr, StartError> {
    addrs.first().copied().ok_or_else(|| StartError::Listen {
        addr: listen.to_owned(),
        source: std::io::Error::other("no address bound"),
    })
}

/// The HTTPS settings of the OSB listener: Mozilla's "intermediate" profile, the configured
/// certificate (with any chain certificates after it) and key. Errors name what is wrong, never
/// the PEM text.
fn tls_acceptor(tls: &TlsConfig) -> Result<openssl::ssl::SslAcceptorBuilder, StartError> {
    use openssl::pkey::PKey;
    use openssl::ssl::{SslAcceptor, SslMethod};
    use openssl::x509::X509;
    let fail = |message: &str| StartError::Tls(message.to_owned());
    let (cert, key) = tls
        .client_pems()
        .map_err(|e| StartError::Tls(e.to_string()))?
        .ok_or_else(|| fail("needs a certificate and a private key"))?;
    let chain = X509::stack_from_pem(&cert).map_err(|_| fail("the certificate is not PEM"))?;
    let (leaf, intermediates) =
        chain.split_first().ok_or_else(|| fail("the certificate PEM holds no certificate"))?;
    let key =
        PKey::private_key_from_pem(&key).map_err(|_| fail("the private key is not a PEM private key"))?;
    let mut builder = SslAcceptor::mozilla_intermediate_v5(SslMethod::tls_server())
        .map_err(|_| fail("OpenSSL cannot set up TLS"))?;
    builder.set_certificate(leaf).map_err(|_| fail("OpenSSL refuses the certificate"))?;
    for certificate in intermediates {
        builder
            .add_extra_chain_cert(certificate.clone())
            .map_err(|_| fail("OpenSSL refuses a chain certificate"))?;
    }
    builder.set_private_key(&key).map_err(|_| fail("the private key does not belong to the certificate"))?;
    builder.check_private_key().map_err(|_| fail("the private key does not belong to the certificate"))?;
    Ok(builder)
}

/// Binds the listeners and prepares the servers; they serve once [`RunningBroker::serve`] runs.
pub fn start(config: &Config) -> Result<RunningBroker, StartError> {
    let metrics = Arc::new(Metrics::new());
    let broker = Arc::new(build_broker(config, &metrics)?);
    let state =
        HttpState::new(broker.clone(), &config.auth.username, config.auth.password.expose(), metrics.clone());
    let reaper = Box::pin(role_reaper::run(
        broker.clone(),
        config.role_reaper.clone(),
        metrics.clone(),
        state.activity.clone(),
    ));
    let listen = format!("{}:{}", config.listen.host, config.listen.port);
    let api = HttpServer::new(move || App::new().configure(routes(state.clone())))
        .workers(config.listen.workers)
        .shutdown_timeout(SHUTDOWN_GRACE.as_secs());
    let api = match &config.listen.tls {
        Some(tls) => api.bind_openssl(&listen, tls_acceptor(tls)?),
        None => api.bind(&listen),
    }
    .map_err(|source| StartError::Listen { addr: listen.clone(), source })?;
    let addr = first_addr(api.addrs(), &listen)?;
    let mut servers = vec![api.run()];
    let mut metrics_addr = None;
    if config.metrics.enabled {
        let state = MonitoringState { broker, metrics };
        let listen = format!("{}:{}", config.metrics.host, config.metrics.port);
        let monitoring = HttpServer::new(move || App::new().configure(monitoring::routes(state.clone())))
            .workers(1)
            .shutdown_timeout(SHUTDOWN_GRACE.as_secs())
            .bind(&listen)
            .map_err(|source| StartError::Listen { addr: listen.clone(), source })?;
        metrics_addr = Some(first_addr(monitoring.addrs(), &listen)?);
        servers.push(monitoring.run());
    }
    Ok(RunningBroker { addr, metrics_addr, servers, reaper })
}

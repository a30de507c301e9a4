//! Wiring: a validated [`Config`] becomes an [`EtcdBroker`] behind an actix-web server.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use actix_web::{App, HttpServer};

use crate::broker::names::Names;
use crate::broker::{BrokerSetup, Cluster, EtcdBroker};
use crate::clock::SystemClock;
use crate::config::{parse_endpoint, Config};
use crate::etcd::EtcdStore;
use crate::http::{routes, HttpState};
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
}

/// Builds the broker for a validated config: one lazily connected store per cluster.
pub fn build_broker(config: &Config) -> Result<EtcdBroker, StartError> {
    let mut clusters = HashMap::new();
    for (name, cluster) in &config.clusters {
        let fail = |message: String| StartError::Cluster { cluster: name.clone(), message };
        let store: Arc<dyn Store> = Arc::new(EtcdStore::new(cluster).map_err(|e| fail(e.to_string()))?);
        let public =
            if cluster.public_endpoints.is_empty() { &cluster.endpoints } else { &cluster.public_endpoints };
        let public_endpoints =
            public.iter().map(|e| parse_endpoint(e)).collect::<Result<Vec<_>, _>>().map_err(fail)?;
        let ca_certificate = match cluster.tls.as_ref().and_then(|t| t.ca_file.as_ref()) {
            Some(path) => Some(
                std::fs::read_to_string(path)
                    .map_err(|e| fail(format!("cannot read {}: {e}", path.display())))?,
            ),
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

/// A listening broker.
pub struct RunningBroker {
    /// The bound address (useful with port 0).
    pub addr: SocketAddr,
    /// The server future: await it to serve until a signal or [`actix_web::dev::ServerHandle::stop`].
    pub server: actix_web::dev::Server,
}

/// Binds the listener and prepares the server; it serves once `server` is awaited or spawned.
/// actix-web stops gracefully on SIGTERM/SIGINT, draining in-flight requests.
pub fn start(config: &Config) -> Result<RunningBroker, StartError> {
    let broker = Arc::new(build_broker(config)?);
    let state = HttpState::new(broker, &config.auth.username, config.auth.password.expose());
    let addr = format!("{}:{}", config.listen.host, config.listen.port);
    let server = HttpServer::new(move || App::new().configure(routes(state.clone())))
        .shutdown_timeout(SHUTDOWN_GRACE.as_secs())
        .bind(&addr)
        .map_err(|source| StartError::Listen { addr: addr.clone(), source })?;
    let bound = server.addrs().first().copied().ok_or_else(|| StartError::Listen {
        addr: addr.clone(),
        source: std::io::Error::other("no address bound"),
    })?;
    Ok(RunningBroker { addr: bound, server: server.run() })
}

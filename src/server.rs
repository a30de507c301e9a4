//! Wiring: a validated [`Config`] becomes an [`EtcdBroker`] behind an actix-web server.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use actix_web::{App, HttpServer};

use crate::activity::OsbActivity;
use crate::broker::certificates::CertificateSetup;
use crate::broker::leader::TaskSettings;
use crate::broker::names::Names;
use crate::broker::role_reaper::{self, Pacing};
use crate::broker::{expiry, inventory, reconcile};
use crate::broker::{BrokerSetup, Cluster, EtcdBroker};
use crate::clock::SystemClock;
use crate::config::{BindingExpiryConfig, Config, ReconcileConfig, Sealing};
use crate::etcd::{EtcdStore, Observer};
use crate::http::monitoring::{self, MonitoringState};
use crate::http::{routes, HttpState};
use crate::inventory::Inventory;
use crate::metrics::Metrics;
use crate::store::metered::MeteredStore;
use crate::store::Store;

/// In-flight requests get this long to finish on shutdown (bpm allows 20 s in all).
const SHUTDOWN_GRACE: Duration = Duration::from_secs(15);

/// Why the broker could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("etcd cluster '{cluster}': {message}")]
    Cluster { cluster: String, message: String },
    #[error("invalid configuration: {0}")]
    Config(String),
    #[error("cannot listen on {addr}: {source}")]
    Listen { addr: String, source: std::io::Error },
    #[error("listen.tls: {0}")]
    Tls(String),
    /// Records need a key the keychain does not hold: their bindings could not be read.
    #[error("{0}; add the key to [secrets.keys] (docs/config.md)")]
    MissingKeys(String),
    #[error("serving failed: {0}")]
    Serve(#[from] std::io::Error),
}

/// Runs the broker for `config` on actix's runtime, which its servers need, until SIGTERM or
/// SIGINT: what `etcd-broker serve` does.
pub fn run(config: &Config) -> Result<(), StartError> {
    actix_web::rt::System::new().block_on(async move {
        let running = start(config)?;
        tracing::info!(addr = %running.addr, "etcd-broker listening");
        running.serve().await?;
        tracing::info!("etcd-broker stopped");
        Ok(())
    })
}

/// Builds the broker for a config: one lazily connected, metered store per cluster.
pub fn build_broker(config: &Config, metrics: &Arc<Metrics>) -> Result<EtcdBroker, StartError> {
    build_broker_with(config, &|name, cluster, fence_key| {
        // The series are looked up once here rather than on every batch or copy (which also
        // exports the copy counter at 0 from start-up).
        let batch_size = |call| metrics.etcd_batch_size.with_label_values(&[name, call]);
        let (gets, txns) = (batch_size("get"), batch_size("txn"));
        let copies = metrics.etcd_read_copies.with_label_values(&[name]);
        let resends = metrics.etcd_write_resends.with_label_values(&[name]);
        let refusals = metrics.etcd_stale_auth_refusals.with_label_values(&[name]);
        let observer = Observer {
            batch: Arc::new(move |call, size| if call == "get" { &gets } else { &txns }.observe(size as f64)),
            read_copy: Arc::new(move || copies.inc()),
            write_resend: Arc::new(move || resends.inc()),
            stale_auth: Arc::new(move || refusals.inc()),
        };
        let etcd: Arc<dyn Store> = EtcdStore::new(cluster, fence_key, observer)
            .map_err(|e| StartError::Cluster { cluster: name.to_owned(), message: format!("TLS: {e}") })?;
        Ok(Arc::new(MeteredStore::new(etcd, metrics.clone(), name)))
    })
}

/// Makes the store of one configured cluster (by name), with the cluster's write fence key
/// (`Names::write_fence`).
pub type StoreOf<'a> = dyn Fn(&str, &crate::config::Cluster, &str) -> Result<Arc<dyn Store>, StartError> + 'a;

/// Builds the broker for a config with the store `store_of` makes for each cluster (by name):
/// the server's are metered, the operators' tools' (`reconcile`) are not.
pub fn build_broker_with(config: &Config, store_of: &StoreOf<'_>) -> Result<EtcdBroker, StartError> {
    let mut clusters = HashMap::new();
    let mut certificates = CertificateSetup {
        plans: config.plan_credentials.iter().map(|(plan, kind)| (plan.clone(), *kind)).collect(),
        authority: config.certificates.clone(),
        endpoints: HashMap::new(),
    };
    let fence_key = Names::new(&config.prefixes.data, &config.prefixes.state).write_fence();
    for (name, cluster) in &config.clusters {
        certificates.endpoints.insert(name.clone(), cluster.certificate_endpoints.clone());
        let store = store_of(name, cluster, &fence_key)?;
        let ca_certificate = cluster
            .tls
            .as_ref()
            .and_then(|tls| tls.ca.as_deref())
            .map(|pem| String::from_utf8_lossy(pem).into_owned());
        let public_endpoints = cluster.public_endpoints.clone();
        let proxy_endpoints = cluster.proxy_endpoints.clone();
        clusters.insert(name.clone(), Cluster { store, public_endpoints, ca_certificate, proxy_endpoints });
    }
    let state = clusters.get(&config.state_cluster).map(|c| c.store.clone()).ok_or_else(|| {
        StartError::Config(format!("state_cluster '{}' is not one of the clusters", config.state_cluster))
    })?;
    Ok(EtcdBroker::new(BrokerSetup {
        catalog: config.catalog.clone(),
        plan_clusters: config.plan_clusters.iter().map(|(plan, c)| (plan.clone(), c.clone())).collect(),
        plan_options: config.plan_options.iter().map(|(plan, o)| (plan.clone(), o.clone())).collect(),
        limits: config.limits.clone(),
        clusters,
        state,
        state_cluster: config.state_cluster.clone(),
        names: Names::new(&config.prefixes.data, &config.prefixes.state),
        clock: Arc::new(SystemClock),
        sealing: config.sealing.clone(),
        credential_store: config.credential_store.clone(),
        templates: config.credential_templates.clone(),
        certificates,
        expiry_grace: config.binding_expiry.grace_seconds,
    }))
}

/// A listening broker: the OSB API and, when enabled, the monitoring listener.
pub struct RunningBroker {
    /// The OSB API's bound address (useful with port 0).
    pub addr: SocketAddr,
    /// The monitoring listener's bound address, if enabled.
    pub metrics_addr: Option<SocketAddr>,
    servers: Vec<actix_web::dev::Server>,
    broker: Arc<EtcdBroker>,
    /// The role reaper, the periodic reconcile check, the expiry and inventory tasks, run for
    /// as long as the servers.
    reaper: std::pin::Pin<Box<dyn std::future::Future<Output = ()>>>,
}

impl RunningBroker {
    /// Serves until SIGTERM/SIGINT (actix-web drains in-flight requests) or until stopped
    /// through [`RunningBroker::handles`]; the role reaper runs meanwhile (stopping it at any
    /// point is safe: each of its steps can be repeated).
    ///
    /// First, before a request is served (actix's servers start when polled), it refuses to
    /// run when records are sealed with a key the keychain lacks ([`check_sealing_keys`]).
    pub async fn serve(self) -> Result<(), StartError> {
        check_sealing_keys(&self.broker).await?;
        tokio::select! {
            served = futures_util::future::try_join_all(self.servers) => served.map(|_| ()).map_err(StartError::from),
            () = self.reaper => Ok(()),
        }
    }

    /// Handles to stop the listeners programmatically.
    pub fn handles(&self) -> Vec<actix_web::dev::ServerHandle> {
        self.servers.iter().map(|s| s.handle()).collect()
    }
}

/// Refuses a keychain that lacks a key records are sealed with, naming the key: from the index
/// of sealed records, one read per key name in use. An etcd that does not answer only warns:
/// the broker starts with etcd down (its readiness says so), and a record sealed with a
/// missing key still answers a 500 naming record and key.
pub async fn check_sealing_keys(broker: &EtcdBroker) -> Result<(), StartError> {
    match broker.missing_sealing_keys().await {
        Ok(None) => Ok(()),
        Ok(Some(missing)) => Err(StartError::MissingKeys(missing)),
        Err(e) => {
            tracing::warn!(error = %e, "cannot check which keys seal records; starting anyway");
            Ok(())
        }
    }
}

/// Says whether binding passwords are sealed: a warning at start when `sealing = "off"` (an
/// explicit choice, but one to keep in sight) and the gauge `etcd_broker_sealing_enabled`, on
/// which the alert `EtcdBrokerSealingOff` fires.
fn report_sealing(sealing: &Sealing, metrics: &Metrics) {
    let on = matches!(sealing, Sealing::On(_));
    metrics.set_sealing_enabled(on);
    if !on {
        tracing::warn!(
            "sealing is off ([secrets] sealing = \"off\"): binding passwords are stored in etcd in clear (docs/security.md)"
        );
    }
}

/// The periodic reconcile check ([`reconcile::run_periodically`]) reporting to the gauge
/// `etcd_broker_reconcile_findings{kind}` (every kind exported at 0 from start); never ends,
/// and does nothing with `interval_seconds = 0`.
fn periodic_reconcile(
    broker: Arc<EtcdBroker>,
    config: &ReconcileConfig,
    metrics: &Metrics,
) -> impl std::future::Future<Output = ()> {
    let (findings, failures) = (metrics.reconcile_findings.clone(), metrics.reconcile_failures.clone());
    for kind in reconcile::Kind::ALL {
        findings.with_label_values(&[kind.name()]).set(0);
    }
    let observer = reconcile::PeriodicObserver {
        found: Box::new(move |counts| {
            for (kind, n) in counts {
                findings.with_label_values(&[kind.name()]).set(i64::try_from(*n).unwrap_or(i64::MAX));
            }
        }),
        failed: Box::new(move |_| failures.inc()),
    };
    let (interval, stuck_after) = (config.interval_seconds, config.stuck_after_seconds);
    async move {
        if interval == 0 {
            return std::future::pending().await;
        }
        reconcile::run_periodically(broker, Duration::from_secs(interval), stuck_after, observer).await
    }
}

/// The binding expiry task ([`expiry::run`]): one broker at a time revokes expired bindings,
/// reporting to `etcd_broker_binding_expiry_leader` and the revocation counters; never ends.
fn binding_expiry(
    broker: Arc<EtcdBroker>,
    config: &BindingExpiryConfig,
    metrics: &Metrics,
) -> impl std::future::Future<Output = ()> {
    let (leader, revoked, failures) =
        (metrics.expiry_leader.clone(), metrics.bindings_revoked.clone(), metrics.expiry_failures.clone());
    let observer = expiry::Observer {
        leading: Box::new(move |now| leader.set(i64::from(now))),
        revoked: Box::new(move |n| revoked.inc_by(n)),
        failed: Box::new(move || failures.inc()),
    };
    let settings = TaskSettings {
        every: Duration::from_secs(config.check_seconds),
        lease_ttl: Duration::from_secs(config.leader_lease_seconds),
        holder: leader_holder(),
    };
    expiry::run(broker, settings, observer)
}

/// Who this broker is in a leader key's value, for operators reading it: host and process.
fn leader_holder() -> String {
    let host = std::env::var("HOSTNAME").unwrap_or_else(|_| "localhost".to_owned());
    format!("{host}/{}", std::process::id())
}

/// The inventory task ([`inventory::run`]) setting `gauges`: one broker at a time counts in
/// etcd every `[metrics] inventory_seconds`, every broker reads the counts as often; never ends.
fn inventory_counts(
    broker: Arc<EtcdBroker>,
    gauges: Inventory,
    config: &Config,
) -> impl std::future::Future<Output = ()> {
    let settings = TaskSettings {
        every: Duration::from_secs(config.metrics.inventory_seconds),
        // The expiry task's ttl: how long a dead leader's gauges go uncounted, about.
        lease_ttl: Duration::from_secs(config.binding_expiry.leader_lease_seconds),
        holder: leader_holder(),
    };
    let leading = gauges.clone();
    let observer = inventory::Observer {
        leading: Box::new(move |now| leading.set_leading(now)),
        counted: Box::new(move |counts| gauges.apply(counts)),
    };
    inventory::run(broker, settings, observer)
}

/// The first address a bound server listens on.
fn first_addr(addrs: Vec<SocketAddr>, listen: &str) -> Result<SocketAddr, StartError> {
    addrs.first().copied().ok_or_else(|| StartError::Listen {
        addr: listen.to_owned(),
        source: std::io::Error::other("no address bound"),
    })
}

/// Binds the listeners and prepares the servers; they serve once [`RunningBroker::serve`] runs.
pub fn start(config: &Config) -> Result<RunningBroker, StartError> {
    let metrics = Arc::new(Metrics::new());
    report_sealing(&config.sealing, &metrics);
    let broker = Arc::new(build_broker(config, &metrics)?);
    // The OSB API reports its requests here; the role reaper deletes in their pauses.
    let activity = Arc::new(OsbActivity::default());
    let auth = &config.auth;
    let state = HttpState::new(
        broker.clone(),
        &auth.username,
        auth.password.expose(),
        metrics.clone(),
        activity.clone(),
    )
    .with_body_timeout(config.listen.body_timeout);
    let pacing = Pacing {
        busy_share: config.role_reaper.busy_share,
        poll: Duration::from_secs(config.role_reaper.poll_seconds),
        at_most: Duration::from_secs(config.role_reaper.yield_seconds),
    };
    let (deleted, failed) = (metrics.roles_deleted.clone(), metrics.role_deletion_failures.clone());
    let observer = role_reaper::Observer {
        deleted: Box::new(move || deleted.inc()),
        failed: Box::new(move || failed.inc()),
    };
    let reaper = role_reaper::run(broker.clone(), pacing, observer, activity);
    let reconcile = periodic_reconcile(broker.clone(), &config.reconcile, &metrics);
    let expiry = binding_expiry(broker.clone(), &config.binding_expiry, &metrics);
    // The OpenBao token is renewed ahead of its expiry even while no request needs it.
    let openbao = config.openbao.clone();
    let renewal = async move {
        if let Some(bao) = openbao {
            bao.keep_renewed().await;
        }
    };
    // The inventory gauges are counted only where a monitoring listener shows them.
    let inventory = config.metrics.enabled.then(|| Inventory::new(broker.clone()));
    let counting = inventory.clone().map(|gauges| inventory_counts(broker.clone(), gauges, config));
    let counting = async move {
        match counting {
            Some(task) => task.await,
            None => std::future::pending().await,
        }
    };
    let reaper = Box::pin(async move {
        futures_util::future::join5(reaper, reconcile, expiry, renewal, counting).await;
    });
    let listen = format!("{}:{}", config.listen.host, config.listen.port);
    let api = HttpServer::new(move || App::new().configure(routes(state.clone())))
        .workers(config.listen.workers)
        .max_connections(config.listen.max_connections)
        .max_connection_rate(config.listen.max_connection_rate)
        .tls_handshake_timeout(config.listen.tls_handshake_timeout)
        .client_request_timeout(config.listen.header_timeout)
        .keep_alive(config.listen.idle_timeout)
        .shutdown_timeout(SHUTDOWN_GRACE.as_secs());
    let api = match &config.listen.tls {
        Some(identity) => api.bind_openssl(
            &listen,
            crate::tls::acceptor(identity).map_err(|e| StartError::Tls(e.to_string()))?,
        ),
        None => api.bind(&listen),
    }
    .map_err(|source| StartError::Listen { addr: listen.clone(), source })?;
    let addr = first_addr(api.addrs(), &listen)?;
    let mut servers = vec![api.run()];
    let mut metrics_addr = None;
    if let Some(inventory) = inventory {
        metrics.register(Box::new(inventory.clone()));
        let state = MonitoringState { broker: broker.clone(), metrics, inventory };
        let listen = format!("{}:{}", config.metrics.host, config.metrics.port);
        let monitoring = HttpServer::new(move || App::new().configure(monitoring::routes(state.clone())))
            .workers(1)
            .shutdown_timeout(SHUTDOWN_GRACE.as_secs())
            .bind(&listen)
            .map_err(|source| StartError::Listen { addr: listen.clone(), source })?;
        metrics_addr = Some(first_addr(monitoring.addrs(), &listen)?);
        servers.push(monitoring.run());
    }
    Ok(RunningBroker { addr, metrics_addr, servers, broker, reaper })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The documented example config with `tls` set on its cluster `main`.
    fn example_with_cluster_tls(tls: toml::Table) -> Config {
        let mut table: toml::Table =
            toml::from_str(include_str!("../docs/etcd-broker.example.toml")).unwrap();
        let main = table["clusters"]["main"].as_table_mut().unwrap();
        main.insert("tls".into(), toml::Value::Table(tls));
        Config::from_toml(&toml::to_string(&table).unwrap()).unwrap()
    }

    #[test]
    fn a_cluster_whose_tls_material_does_not_build_stops_the_start() {
        // PEM text, so the config takes it, but no certificate in it.
        let key_only = "-----BEGIN PUBLIC KEY-----\nMFkw\n-----END PUBLIC KEY-----\n";
        let config = example_with_cluster_tls(toml::toml! { ca = key_only });
        let error = build_broker(&config, &Arc::new(Metrics::new())).err().expect("the start is refused");
        assert_eq!(error.to_string(), "etcd cluster 'main': TLS: the CA PEM holds no certificate");
    }
}

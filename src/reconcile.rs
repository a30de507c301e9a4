//! Wiring for `etcd-broker-ops reconcile`: the config's clusters as stores and the broker built
//! on them, handed to the check of [`crate::broker::reconcile`].
//!
//! The operators' crate may not build a store itself (ARCHITECTURE.md), so the broker is built
//! here the way the server builds its own, without metrics.

use std::sync::Arc;

pub use crate::broker::reconcile::{
    Checked, Finding, Kind, Repair, Repairable, Repaired, Report, Settings, REPORT_VERSION,
};
use crate::config::Config;
use crate::etcd::{EtcdStore, Observer};
use crate::server::{build_broker_with, StartError};
use crate::store::Store;

/// Checks (and with `repair`, repairs) the deployment `config` describes; see
/// [`crate::broker::reconcile`]. `Err` when the check could not run to the end (a cluster
/// failed, a TLS file is broken); it names the cluster and never a secret.
pub async fn reconcile(config: &Config, settings: &Settings, repair: Repair) -> Result<Report, String> {
    let broker = build_broker_with(config, &|name, cluster, fence_key| {
        let store: Arc<dyn Store> = EtcdStore::new(cluster, fence_key, Observer::default())
            .map_err(|e| StartError::Cluster { cluster: name.to_owned(), message: format!("TLS: {e}") })?;
        Ok(store)
    })
    .map_err(|e| e.to_string())?;
    broker.reconcile(settings, repair).await.map_err(|e| e.to_string())
}

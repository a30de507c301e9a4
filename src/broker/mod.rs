//! The etcd-backed broker: OSB operations as ordered, idempotent steps on a [`Store`].
//!
//! Ordering rules that make every operation crash-safe (see `ARCHITECTURE.md`):
//! - a record is written (state `creating`) before the etcd user/role it describes, and removed
//!   after them (state `deleting` first), so nothing grants access without a record;
//! - every step is idempotent, and each record write compares the revision that was read, so a
//!   retry, or a second broker process, continues the work instead of duplicating it;
//! - a bind that loses a race against an unbind or deprovision removes what it created.

mod bindings;
pub mod certificates;
pub mod credentials;
pub mod expiry;
mod instances;
pub mod inventory;
pub mod leader;
pub mod limits;
mod material;
pub mod names;
pub mod reconcile;
pub mod records;
pub mod reseal;
pub mod role_deletions;
pub mod role_reaper;
mod sealed;
pub mod templates;

use std::collections::HashMap;
use std::sync::Arc;

use async_trait::async_trait;
use url::Url;

use crate::clock::Clock;
use crate::osb::catalog::Catalog;
use crate::osb::model::*;
use crate::osb::plan_options::{BrokerLimits, PlanOptions};
use crate::osb::{BindingId, BrokerError, BrokerResult, InstanceId, ServiceBroker};
use crate::sealing::Sealing;
use crate::store::{Guard, Store, StoreError, Versioned, Write};
use names::Names;
use records::decode;
pub use sealed::SealingInventory;

/// How many times an operation re-reads and retries after losing a compare-and-swap race
/// before answering 422 ConcurrencyError.
const CAS_ATTEMPTS: usize = 8;

/// One etcd cluster that holds tenant data.
#[derive(Clone)]
pub struct Cluster {
    /// The broker's (root-role) connection to it.
    pub store: Arc<dyn Store>,
    /// Client URLs handed out in credentials (`http(s)://host:port`); never empty.
    pub public_endpoints: Vec<Url>,
    /// PEM CA certificate handed out when the public endpoints use TLS.
    pub ca_certificate: Option<String>,
    /// The tenant proxy's client URLs, handed out instead of `public_endpoints` by plans with
    /// `encryption` (the config makes sure they are there for those).
    pub proxy_endpoints: Vec<Url>,
}

/// Everything the broker needs, already validated by the config.
pub struct BrokerSetup {
    pub catalog: Catalog,
    /// plan id -> cluster name; covers every catalog plan.
    pub plan_clusters: HashMap<String, String>,
    /// plan id -> what the plan offers; a plan without an entry offers nothing beyond today's
    /// bindings.
    pub plan_options: HashMap<String, PlanOptions>,
    /// Limits across plans.
    pub limits: BrokerLimits,
    /// cluster name -> cluster.
    pub clusters: HashMap<String, Cluster>,
    /// Where broker records live.
    pub state: Arc<dyn Store>,
    /// Name of the cluster behind `state`, for error messages.
    pub state_cluster: String,
    pub names: Names,
    pub clock: Arc<dyn Clock>,
    /// Whether binding passwords are sealed, and the keys that unseal them.
    pub sealing: Sealing,
    /// Where plans with `credential_store = "openbao"` keep their bindings' secrets
    /// (`[secrets.openbao.kv]`); `None` when no plan does.
    pub credential_store: Option<Arc<dyn crate::credential_store::CredentialStore>>,
    /// The plans' credential templates (`credentials_template`), compiled and checked.
    pub templates: Arc<templates::CredentialTemplates>,
    /// Which plans hand out client certificates, and the CA that mints them.
    pub certificates: certificates::CertificateSetup,
    /// Seconds after an expiring binding's `expires_at` until its user is deleted
    /// (`[binding_expiry] grace_seconds`).
    pub expiry_grace: u64,
}

/// The broker.
pub struct EtcdBroker {
    setup: BrokerSetup,
    /// Wakes the role reaper when this broker queues a role (see `role_deletions.rs`).
    role_queued: tokio::sync::Notify,
    /// Creates refused by a limit, for the metrics.
    limit_refusals: limits::LimitRefusals,
}

impl EtcdBroker {
    /// Wraps a validated setup.
    pub fn new(setup: BrokerSetup) -> Self {
        Self { setup, role_queued: tokio::sync::Notify::new(), limit_refusals: Default::default() }
    }

    fn names(&self) -> &Names {
        &self.setup.names
    }

    fn now(&self) -> u64 {
        self.setup.clock.now_unix()
    }

    fn cluster(&self, name: &str) -> BrokerResult<&Cluster> {
        self.setup.clusters.get(name).ok_or_else(|| {
            BrokerError::Internal(format!(
                "the record names etcd cluster '{name}', which is not in the broker's configuration"
            ))
        })
    }

    /// Maps a failure of the state cluster.
    fn state_failed(&self, e: StoreError) -> BrokerError {
        unavailable(&self.setup.state_cluster, e)
    }

    /// The cluster a catalog plan uses, or a 400 naming what is unknown.
    fn check_plan(&self, service_id: &str, plan_id: &str) -> BrokerResult<&str> {
        if self.setup.catalog.service(service_id).is_none() {
            return Err(BrokerError::BadRequest(format!(
                "service_id '{service_id}' is not in this broker's catalog"
            )));
        }
        if self.setup.catalog.plan(service_id, plan_id).is_none() {
            return Err(BrokerError::BadRequest(format!(
                "plan_id '{plan_id}' is not a plan of service '{service_id}'"
            )));
        }
        self.setup.plan_clusters.get(plan_id).map(String::as_str).ok_or_else(|| {
            BrokerError::Internal(format!("plan '{plan_id}' has no cluster in the broker's configuration"))
        })
    }

    /// The options of a plan (the defaults for a plan the config gives none).
    fn plan_options(&self, plan_id: &str) -> PlanOptions {
        self.setup.plan_options.get(plan_id).cloned().unwrap_or_default()
    }

    /// Validates the ids a DELETE carries: a catalog plan, or the plan the record was made with
    /// (so instances of a plan removed from the catalog can still be deleted).
    fn check_delete_ids(&self, service_id: &str, plan_id: &str, recorded: (&str, &str)) -> BrokerResult<()> {
        if (service_id, plan_id) == recorded {
            return Ok(());
        }
        self.check_plan(service_id, plan_id).map(|_| ())
    }

    /// Applies `writes` to the state cluster if `key` is still at `revision`: the compare-and-swap
    /// every record change goes through. The new revision, or `None` if another request won.
    async fn swap(&self, key: &str, revision: i64, writes: &[Write]) -> BrokerResult<Option<i64>> {
        self.setup
            .state
            .commit(&[Guard::Revision(key.to_owned(), revision)], writes)
            .await
            .map_err(|e| self.state_failed(e))
    }

    /// `result`, with a refusal by a limit counted for the metrics.
    fn counting_refusals<T>(&self, result: BrokerResult<T>) -> BrokerResult<T> {
        if let Err(BrokerError::LimitReached { limit, .. }) = &result {
            self.limit_refusals.count(*limit);
        }
        result
    }

    /// Reads and decodes a record.
    async fn read<T: serde::de::DeserializeOwned>(
        &self,
        store: &dyn Store,
        key: &str,
    ) -> BrokerResult<Option<(T, i64)>> {
        self.record_from(key, store.get(key).await)
    }

    fn record_from<T: serde::de::DeserializeOwned>(
        &self,
        key: &str,
        read: Result<Option<Versioned>, crate::store::StoreError>,
    ) -> BrokerResult<Option<(T, i64)>> {
        match read.map_err(|e| self.state_failed(e))? {
            None => Ok(None),
            Some(Versioned { value, mod_revision }) => Ok(Some((decode(key, &value)?, mod_revision))),
        }
    }
}

/// Instances and bindings of one plan, for the inventory gauges.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlanInventory {
    pub service: String,
    pub plan: String,
    pub instances: u64,
    pub bindings: u64,
}

/// Whether one etcd cluster answers with the broker's credentials.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterHealth {
    pub cluster: String,
    /// `None` when healthy, else what failed.
    pub error: Option<String>,
}

/// How long a readiness probe may wait for one cluster.
const PROBE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(3);

impl EtcdBroker {
    /// Counts instances and bindings per catalog plan from the per-plan index keys, O(index
    /// entries) in etcd (so only the inventory leader counts, once: `inventory.rs`).
    pub async fn inventory(&self) -> BrokerResult<Vec<PlanInventory>> {
        Ok(self.plan_inventory(&self.count_inventory().await?))
    }

    /// Probes every cluster with one read using the broker's own credentials, then asks for its
    /// alarms: under NOSPACE etcd answers reads but refuses every write.
    pub async fn readiness(&self) -> Vec<ClusterHealth> {
        let mut out = Vec::new();
        let mut clusters: Vec<(&String, &Cluster)> = self.setup.clusters.iter().collect();
        clusters.sort_by_key(|(name, _)| *name);
        for (name, cluster) in clusters {
            let store = &cluster.store;
            let probe = self.names().instance_key(&InstanceId::parse("readiness-probe").expect("valid id"));
            let probed = async {
                store.get(&probe).await?;
                store.alarms().await
            };
            let error = match tokio::time::timeout(PROBE_TIMEOUT, probed).await {
                Ok(Ok(alarms)) if alarms.is_empty() => None,
                Ok(Ok(alarms)) => Some(format!(
                    "etcd raised {}: it refuses writes until an operator clears the cause and disarms \
                     the alarm (docs/reliability.md)",
                    alarms.join(", ")
                )),
                Ok(Err(e)) => Some(e.to_string()),
                Err(_) => Some(format!("no answer within {} s", PROBE_TIMEOUT.as_secs())),
            };
            out.push(ClusterHealth { cluster: name.clone(), error });
        }
        out
    }
}

/// Parameters a plan does not take: refused instead of silently ignored.
fn refuse_parameters(parameters: &JsonObject) -> BrokerResult<()> {
    if parameters.is_empty() {
        return Ok(());
    }
    let names: Vec<&str> = parameters.keys().map(String::as_str).collect();
    Err(BrokerError::BadRequest(format!(
        "unknown parameters: {} (this plan takes no parameters here)",
        names.join(", ")
    )))
}

/// Maps a store failure on `cluster` to a 503 (or 500 for anything but unavailability).
fn unavailable(cluster: &str, e: StoreError) -> BrokerError {
    match e {
        StoreError::Unavailable(_) | StoreError::Unauthorized(_) => BrokerError::Unavailable(format!(
            "etcd cluster '{cluster}': {e}; the operation may be incomplete: repeat the request to finish it"
        )),
        StoreError::Conflict(_) => lost_race("the resource"),
        StoreError::Failed(_) => BrokerError::Internal(format!("etcd cluster '{cluster}': {e}")),
    }
}

fn lost_race(what: &str) -> BrokerError {
    BrokerError::Concurrency(format!("{what} is being changed by another request at the same time; retry"))
}

#[async_trait]
impl ServiceBroker for EtcdBroker {
    fn catalog(&self) -> &Catalog {
        &self.setup.catalog
    }

    async fn provision(&self, req: ProvisionRequest) -> BrokerResult<Provisioned> {
        self.counting_refusals(self.provision_instance(req).await)
    }

    async fn update(&self, req: UpdateRequest) -> BrokerResult<()> {
        self.counting_refusals(self.update_instance(req).await)
    }

    async fn deprovision(&self, req: DeprovisionRequest) -> BrokerResult<()> {
        self.deprovision_instance(req).await
    }

    async fn get_instance(&self, id: &InstanceId) -> BrokerResult<InstanceInfo> {
        self.fetch_instance(id).await
    }

    async fn instance_last_operation(&self, id: &InstanceId) -> BrokerResult<LastOperation> {
        self.instance_operation(id).await
    }

    async fn bind(&self, req: BindRequest) -> BrokerResult<Bound> {
        self.counting_refusals(self.create_binding(req).await)
    }

    async fn unbind(&self, req: UnbindRequest) -> BrokerResult<()> {
        self.delete_binding(req).await
    }

    async fn get_binding(&self, instance: &InstanceId, binding: &BindingId) -> BrokerResult<Binding> {
        self.fetch_binding(instance, binding).await
    }

    async fn binding_last_operation(
        &self,
        instance: &InstanceId,
        binding: &BindingId,
    ) -> BrokerResult<LastOperation> {
        self.binding_operation(instance, binding).await
    }
}

#[cfg(test)]
pub(crate) mod fake_kv;
#[cfg(test)]
pub(crate) mod tests;

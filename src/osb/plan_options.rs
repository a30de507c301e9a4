//! What a plan offers beyond the catalog's own fields, set by the operator per plan
//! (`plan_configs`) and obeyed by the broker. Every option's default keeps the broker as it was
//! before the option existed, so a config that does not name it changes nothing.

use serde_json::Value;

use super::bind_parameters;

/// One plan's options.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PlanOptions {
    /// Binds take [`bind_parameters`] (read-only, sub-prefix) and the catalog publishes their
    /// schema; without it, bind parameters are refused (400).
    pub binding_parameters: bool,
    /// At most this many instances of the plan; `None`: no limit.
    pub max_instances: Option<u64>,
    /// At most this many bindings on each instance of the plan (the instance's plan decides);
    /// `None`: no limit.
    pub max_bindings_per_instance: Option<u64>,
    /// A bind may name a `predecessor_binding_id` (OSB 2.17 rotation): the new binding takes
    /// the predecessor's parameters. The catalog publishes `binding_rotatable` from this.
    pub binding_rotatable: bool,
    /// Bindings of the plan expire; `None`: they never do.
    pub binding_expiry: Option<BindingExpiry>,
    /// Instances get a data key, with which the tenant proxy encrypts their values, and
    /// bindings get the proxy's endpoints (docs/proxy.md): etcd's disks, snapshots and backups
    /// then hold no tenant value in clear.
    pub encryption: bool,
    /// Where the plan's bindings keep their secrets: in their records in etcd (sealed), or in
    /// the configured credential store (OpenBao KV).
    pub credential_store: CredentialStoreKind,
    /// Bind and GET binding answer where the secrets are (OpenBao's address and the path)
    /// instead of the secrets, for platforms whose apps read OpenBao themselves. Only with
    /// `credential_store = OpenBao`.
    pub credentials_by_reference: bool,
}

/// Where a plan's bindings keep their secret material (`plan_configs.<plan>.credential_store`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CredentialStoreKind {
    /// In the binding record in etcd, sealed when sealing is on: the behaviour before the
    /// option existed.
    #[default]
    Etcd,
    /// In OpenBao/Vault KV v2 (`[secrets.openbao.kv]`); the record only names where.
    OpenBao,
}

impl CredentialStoreKind {
    /// The config's spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            CredentialStoreKind::Etcd => "etcd",
            CredentialStoreKind::OpenBao => "openbao",
        }
    }
}

/// When a plan's bindings expire, in seconds: fixed when the binding is made, so a later
/// change of the plan's options leaves existing bindings as they were promised.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BindingExpiry {
    /// From the bind to `expires_at`.
    pub ttl: u64,
    /// From `renew_before` to `expires_at`.
    pub renew_before: u64,
}

/// Limits across plans (`[limits]` in the config); `None`: no limit.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct BrokerLimits {
    /// At most this many instances per organization (the provision's `organization_guid`),
    /// over all plans.
    pub max_instances_per_organization: Option<u64>,
}

impl PlanOptions {
    /// The catalog's `schemas` of the plan: only what the plan offers, `None` when nothing.
    pub fn schemas(&self) -> Option<Value> {
        self.binding_parameters.then(bind_parameters::plan_schemas)
    }
}

/// Which limit refused a create: the label of `etcd_broker_limit_refusals_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Limit {
    /// `plan_configs.<plan>.max_instances`.
    PlanInstances,
    /// `plan_configs.<plan>.max_bindings_per_instance`.
    BindingsPerInstance,
    /// `limits.max_instances_per_organization`.
    OrganizationInstances,
}

impl Limit {
    /// Every limit, in the order of [`LimitRefusals`].
    pub const ALL: [Limit; 3] =
        [Limit::PlanInstances, Limit::BindingsPerInstance, Limit::OrganizationInstances];

    /// The metric label and the config key's name.
    pub fn name(self) -> &'static str {
        match self {
            Limit::PlanInstances => "max_instances",
            Limit::BindingsPerInstance => "max_bindings_per_instance",
            Limit::OrganizationInstances => "max_instances_per_organization",
        }
    }
}

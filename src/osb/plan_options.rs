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
    /// Limits on each instance's usage, enforced by the tenant proxy (docs/proxy.md#quotas);
    /// bindings of a plan with any of them get the proxy's endpoints.
    pub quotas: InstanceQuotas,
}

/// Per-instance quotas (`plan_configs.<plan>.quota_*`), enforced by the tenant proxy, which
/// counts each instance's usage; `None`: no limit. Usage is what etcd stores under the
/// instance's prefix: every key's bytes plus its value's bytes as stored (a value the proxy
/// encrypts counts with its 37 bytes of envelope), so that the limit bounds the cluster's
/// space a tenant can take.
///
/// The broker writes them into the instance record (`quotas`) at provision and plan change,
/// where the proxy reads them: the proxy does not hold the broker's config.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct InstanceQuotas {
    /// At most this many bytes (keys + stored values) under the prefix.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bytes: Option<u64>,
    /// At most this many keys under the prefix.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub keys: Option<u64>,
    /// At most this many KV requests (Range, Put, DeleteRange, Txn) per second and proxy.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub requests_per_second: Option<u32>,
}

impl InstanceQuotas {
    /// Whether any limit is set (then the plan's tenants must go through the proxy).
    pub fn is_none(&self) -> bool {
        !self.any()
    }

    /// Whether any limit is set (then the plan's tenants must go through the proxy).
    pub fn any(&self) -> bool {
        self.bytes.is_some() || self.keys.is_some() || self.requests_per_second.is_some()
    }

    /// How full an instance with `keys` keys and `bytes` bytes is: the larger of its shares
    /// of the key and byte quotas (0 without either; above 1 when over a quota).
    pub fn share(&self, keys: u64, bytes: u64) -> f64 {
        let of = |used: u64, limit: Option<u64>| match limit {
            Some(0) => {
                if used == 0 {
                    0.0
                } else {
                    f64::INFINITY
                }
            }
            Some(limit) => used as f64 / limit as f64,
            None => 0.0,
        };
        of(keys, self.keys).max(of(bytes, self.bytes))
    }
}

/// What one key counts against a bytes quota: its key's and value's bytes as etcd stores them.
/// The one rule the proxy and `etcd-broker-ops usage` both count with.
pub fn stored_bytes(key: &[u8], value: &[u8]) -> u64 {
    (key.len() + value.len()) as u64
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
    /// Whether the plan's tenants must talk to the tenant proxy (it encrypts their values or
    /// enforces their quotas): their bindings get the cluster's `proxy_endpoints`.
    pub fn proxied(&self) -> bool {
        self.encryption || self.quotas.any()
    }

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

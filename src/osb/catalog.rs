//! The service catalog, as configured and as served on `GET /v2/catalog`.
//!
//! The same types are read from the TOML config and written as OSB JSON, so what the operator
//! writes is what the platform sees; optional fields are omitted rather than sent as `null`.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// The whole catalog: the services this broker offers.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Catalog {
    /// Offered services; the OSB spec asks for at least one.
    pub services: Vec<Service>,
}

/// One offered service (normally just `etcd`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Service {
    /// Globally unique id; platforms key on it.
    pub id: String,
    /// CLI-friendly name (`cf create-service <name> ...`).
    pub name: String,
    /// Shown in marketplaces.
    pub description: String,
    /// Whether bindings can be created (always true for etcd namespaces).
    #[serde(default = "yes")]
    pub bindable: bool,
    /// Whether instances may change plan (within one etcd cluster).
    #[serde(default)]
    pub plan_updateable: bool,
    /// Always true, not configurable: `GET /v2/service_instances/:id` works.
    #[serde(skip_deserializing, default = "yes")]
    pub instances_retrievable: bool,
    /// Always true, not configurable: `GET .../service_bindings/:id` works.
    #[serde(skip_deserializing, default = "yes")]
    pub bindings_retrievable: bool,
    /// Free-form tags for the marketplace and `VCAP_SERVICES`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tags: Vec<String>,
    /// Free-form metadata (displayName, imageUrl, ...).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metadata: Option<Map<String, Value>>,
    /// The plans of this service.
    pub plans: Vec<Plan>,
}

/// One plan; `plan_configs` in the broker config say which etcd cluster it uses.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Plan {
    /// Globally unique id; also the key of this plan's `plan_configs` entry.
    pub id: String,
    /// CLI-friendly name.
    pub name: String,
    /// Shown in marketplaces.
    pub description: String,
    /// Whether the plan is free of charge.
    #[serde(default = "yes")]
    pub free: bool,
    /// Overrides the service's `bindable` when set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bindable: Option<bool>,
    /// Overrides the service's `plan_updateable` when set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub plan_updateable: Option<bool>,
    /// Free-form metadata (bullets, costs, displayName, ...).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metadata: Option<Map<String, Value>>,
    /// The JSON schemas of the plan's parameters, from its options (`PlanOptions::schemas`),
    /// never written by hand: what the catalog publishes is what the broker checks.
    #[serde(skip_deserializing, skip_serializing_if = "Option::is_none")]
    pub schemas: Option<Value>,
    /// Whether bindings of the plan can be rotated (OSB 2.17), from its options
    /// (`PlanOptions::binding_rotatable`): published only when they can.
    #[serde(skip_deserializing, skip_serializing_if = "std::ops::Not::not")]
    pub binding_rotatable: bool,
}

fn yes() -> bool {
    true
}

impl Catalog {
    /// Finds a service and one of its plans by id, for request validation.
    pub fn plan(&self, service_id: &str, plan_id: &str) -> Option<(&Service, &Plan)> {
        let service = self.services.iter().find(|s| s.id == service_id)?;
        let plan = service.plans.iter().find(|p| p.id == plan_id)?;
        Some((service, plan))
    }

    /// Finds a service by id.
    pub fn service(&self, service_id: &str) -> Option<&Service> {
        self.services.iter().find(|s| s.id == service_id)
    }

    /// Every plan with the service it belongs to.
    pub fn plans(&self) -> impl Iterator<Item = (&Service, &Plan)> {
        self.services.iter().flat_map(|s| s.plans.iter().map(move |p| (s, p)))
    }
}

impl Service {
    /// Whether instances of `plan` may switch to another plan.
    pub fn plan_updateable(&self, plan: &Plan) -> bool {
        plan.plan_updateable.unwrap_or(self.plan_updateable)
    }
}

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
}

impl PlanOptions {
    /// The catalog's `schemas` of the plan: only what the plan offers, `None` when nothing.
    pub fn schemas(&self) -> Option<Value> {
        self.binding_parameters.then(bind_parameters::plan_schemas)
    }
}

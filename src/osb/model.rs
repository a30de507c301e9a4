//! Typed requests and outcomes of the OSB operations.
//!
//! Requests carry already-validated ids; outcomes are enums where the spec distinguishes results
//! by status code (`Created` vs `AlreadyExists`), so a handler cannot send a contradictory answer.

use serde::Serialize;
use serde_json::{Map, Value};

use super::ids::{BindingId, InstanceId};

/// Free-form JSON object (`parameters`, `context`).
pub type JsonObject = Map<String, Value>;

/// `PUT /v2/service_instances/{instance_id}` body and query.
#[derive(Debug, Clone, PartialEq)]
pub struct ProvisionRequest {
    pub instance_id: InstanceId,
    pub service_id: String,
    pub plan_id: String,
    pub organization_guid: String,
    pub space_guid: String,
    pub context: JsonObject,
    pub parameters: JsonObject,
    pub accepts_incomplete: bool,
}

/// `PATCH /v2/service_instances/{instance_id}` body and query.
#[derive(Debug, Clone, PartialEq)]
pub struct UpdateRequest {
    pub instance_id: InstanceId,
    pub service_id: String,
    /// The new plan; `None` keeps the current one.
    pub plan_id: Option<String>,
    /// New parameters; `None` keeps the current ones.
    pub parameters: Option<JsonObject>,
    pub context: Option<JsonObject>,
    pub accepts_incomplete: bool,
}

/// `DELETE /v2/service_instances/{instance_id}` query.
#[derive(Debug, Clone, PartialEq)]
pub struct DeprovisionRequest {
    pub instance_id: InstanceId,
    pub service_id: String,
    pub plan_id: String,
    pub accepts_incomplete: bool,
}

/// `PUT .../service_bindings/{binding_id}` body and query.
#[derive(Debug, Clone, PartialEq)]
pub struct BindRequest {
    pub instance_id: InstanceId,
    pub binding_id: BindingId,
    pub service_id: String,
    pub plan_id: String,
    /// `bind_resource.app_guid`, or the deprecated top-level `app_guid`.
    pub app_guid: Option<String>,
    pub bind_resource: Option<JsonObject>,
    pub context: JsonObject,
    pub parameters: JsonObject,
    pub accepts_incomplete: bool,
    /// The binding this bind rotates (OSB 2.17); `None` for requests of older API versions,
    /// which do not have the field.
    pub predecessor_binding_id: Option<BindingId>,
}

/// `DELETE .../service_bindings/{binding_id}` query.
#[derive(Debug, Clone, PartialEq)]
pub struct UnbindRequest {
    pub instance_id: InstanceId,
    pub binding_id: BindingId,
    pub service_id: String,
    pub plan_id: String,
    pub accepts_incomplete: bool,
}

/// Result of a provision: 201 or 200.
#[derive(Debug, Clone, PartialEq)]
pub enum Provisioned {
    /// A new instance (201).
    Created,
    /// The identical instance already existed (200).
    AlreadyExists,
}

/// Result of a bind: 201 or 200, both with the credentials.
#[derive(Debug, Clone, PartialEq)]
pub enum Bound {
    /// A new binding (201).
    Created(Binding),
    /// The identical binding already existed (200).
    AlreadyExists(Binding),
}

/// What a binding hands to the application.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Binding {
    /// When an expiring binding expires and should be renewed; absent for the others.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub metadata: Option<BindingMetadata>,
    pub credentials: Value,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub parameters: Option<JsonObject>,
}

/// OSB's binding metadata: timestamps in the spec's form, `yyyy-mm-ddThh:mm:ss.sZ` (UTC).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct BindingMetadata {
    pub expires_at: String,
    pub renew_before: String,
}

impl BindingMetadata {
    /// From seconds since the Unix epoch.
    pub fn from_unix(expires_at: u64, renew_before: u64) -> Self {
        Self { expires_at: osb_timestamp(expires_at), renew_before: osb_timestamp(renew_before) }
    }
}

/// `seconds` since the Unix epoch as OSB writes times, e.g. `2019-12-31T23:59:59.0Z`.
pub fn osb_timestamp(seconds: u64) -> String {
    let format = time::macros::format_description!("[year]-[month]-[day]T[hour]:[minute]:[second].0Z");
    i64::try_from(seconds)
        .ok()
        .and_then(|s| time::OffsetDateTime::from_unix_timestamp(s).ok())
        .and_then(|t| t.format(&format).ok())
        // Beyond year 9999, which no expiry of at most ten years reaches.
        .unwrap_or_else(|| "9999-12-31T23:59:59.0Z".to_owned())
}

/// `GET /v2/service_instances/{instance_id}` answer.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct InstanceInfo {
    pub service_id: String,
    pub plan_id: String,
    #[serde(skip_serializing_if = "JsonObject::is_empty")]
    pub parameters: JsonObject,
}

/// State of the last operation, as the spec spells it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum OperationState {
    #[serde(rename = "in progress")]
    InProgress,
    #[serde(rename = "succeeded")]
    Succeeded,
    #[serde(rename = "failed")]
    Failed,
}

/// `GET .../last_operation` answer.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct LastOperation {
    pub state: OperationState,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
}

//! `PUT/GET/DELETE /v2/service_instances/{instance_id}/service_bindings/{binding_id}`.

use actix_web::{web, HttpRequest, HttpResponse};
use serde::Deserialize;

use super::error::HttpError;
use super::protocol::minor_version;
use super::{binding_id, empty, instance_id, method_not_allowed, AsyncQuery, Body, DeleteQuery, HttpState};
use crate::osb::model::*;
use crate::osb::BindingId;

pub fn routes(cfg: &mut web::ServiceConfig) {
    cfg.service(
        web::resource("/service_instances/{instance_id}/service_bindings/{binding_id}")
            .put(bind)
            .get(get)
            .delete(unbind)
            .default_service(web::to(method_not_allowed("GET, PUT, DELETE"))),
    );
}

#[derive(Debug, Deserialize)]
struct BindBody {
    service_id: String,
    plan_id: String,
    #[serde(default)]
    app_guid: Option<String>,
    #[serde(default)]
    bind_resource: Option<JsonObject>,
    #[serde(default)]
    context: Option<JsonObject>,
    #[serde(default)]
    parameters: Option<JsonObject>,
    /// OSB 2.17: the binding this one rotates.
    #[serde(default)]
    predecessor_binding_id: Option<String>,
}

/// The first OSB version with binding rotation: older requests do not have
/// `predecessor_binding_id`, so a field of that name in one is not a rotation and is ignored.
const ROTATION_MINOR_VERSION: u32 = 17;

/// `bind_resource` is kept as the object the platform sent, but the fields the OSB spec defines
/// in it are strings: a number as `app_guid` would otherwise be dropped in silence (the binding
/// then made without its app), found by generated requests (docs/reliability.md).
fn check_bind_resource(resource: Option<&JsonObject>) -> Result<(), HttpError> {
    for field in ["app_guid", "route"] {
        match resource.and_then(|r| r.get(field)) {
            None | Some(serde_json::Value::Null | serde_json::Value::String(_)) => {}
            Some(_) => {
                return Err(HttpError::bad_request(format!(
                    "invalid request body: bind_resource.{field}: a string is expected"
                )))
            }
        }
    }
    Ok(())
}

async fn bind(
    state: web::Data<HttpState>,
    request: HttpRequest,
    path: web::Path<(String, String)>,
    query: web::Query<AsyncQuery>,
    Body(body): Body<BindBody>,
) -> Result<HttpResponse, HttpError> {
    let (instance, binding) = path.into_inner();
    let (instance_id, binding_id) = (instance_id(&instance)?, binding_id(&binding)?);
    if body.service_id.is_empty() || body.plan_id.is_empty() {
        return Err(HttpError::bad_request("service_id and plan_id must not be empty"));
    }
    check_bind_resource(body.bind_resource.as_ref())?;
    let app_guid = body
        .bind_resource
        .as_ref()
        .and_then(|r| r.get("app_guid"))
        .and_then(|v| v.as_str())
        .map(str::to_owned)
        .or(body.app_guid);
    let predecessor_binding_id = match body.predecessor_binding_id {
        Some(id) if minor_version(request.headers()) >= ROTATION_MINOR_VERSION => {
            Some(BindingId::parse(&id).map_err(|e| {
                HttpError::bad_request(format!("invalid request body: predecessor_binding_id: {e}"))
            })?)
        }
        _ => None,
    };
    let outcome = state
        .broker
        .bind(BindRequest {
            instance_id,
            binding_id,
            service_id: body.service_id,
            plan_id: body.plan_id,
            app_guid,
            bind_resource: body.bind_resource,
            context: body.context.unwrap_or_default(),
            parameters: body.parameters.unwrap_or_default(),
            accepts_incomplete: query.accepts_incomplete,
            predecessor_binding_id,
        })
        .await?;
    Ok(match outcome {
        Bound::Created(binding) => HttpResponse::Created().json(binding),
        Bound::AlreadyExists(binding) => HttpResponse::Ok().json(binding),
    })
}

async fn get(
    state: web::Data<HttpState>,
    path: web::Path<(String, String)>,
) -> Result<HttpResponse, HttpError> {
    let (instance, binding) = path.into_inner();
    let binding = state.broker.get_binding(&instance_id(&instance)?, &binding_id(&binding)?).await?;
    Ok(HttpResponse::Ok().json(binding))
}

async fn unbind(
    state: web::Data<HttpState>,
    path: web::Path<(String, String)>,
    query: web::Query<DeleteQuery>,
) -> Result<HttpResponse, HttpError> {
    let (instance, binding) = path.into_inner();
    let (instance_id, binding_id) = (instance_id(&instance)?, binding_id(&binding)?);
    let (service_id, plan_id, accepts_incomplete) = query.into_inner().required()?;
    state
        .broker
        .unbind(UnbindRequest { instance_id, binding_id, service_id, plan_id, accepts_incomplete })
        .await?;
    Ok(empty(actix_web::http::StatusCode::OK))
}

//! `PUT/PATCH/GET/DELETE /v2/service_instances/{instance_id}`.

use actix_web::http::StatusCode;
use actix_web::{web, HttpResponse};
use serde::Deserialize;

use super::error::HttpError;
use super::{empty, instance_id, method_not_allowed, AsyncQuery, Body, DeleteQuery, HttpState};
use crate::osb::model::*;

pub fn routes(cfg: &mut web::ServiceConfig) {
    cfg.service(
        web::resource("/service_instances/{instance_id}")
            .put(provision)
            .patch(update)
            .get(get)
            .delete(deprovision)
            .default_service(web::to(method_not_allowed("GET, PUT, PATCH, DELETE"))),
    );
}

/// Provision body; unknown fields (e.g. `maintenance_info`) are accepted and ignored.
#[derive(Debug, Deserialize)]
struct ProvisionBody {
    service_id: String,
    plan_id: String,
    organization_guid: String,
    space_guid: String,
    #[serde(default)]
    context: Option<JsonObject>,
    #[serde(default)]
    parameters: Option<JsonObject>,
}

#[derive(Debug, Deserialize)]
struct UpdateBody {
    service_id: String,
    #[serde(default)]
    plan_id: Option<String>,
    #[serde(default)]
    context: Option<JsonObject>,
    #[serde(default)]
    parameters: Option<JsonObject>,
}

fn non_empty(field: &str, value: &str) -> Result<(), HttpError> {
    if value.is_empty() {
        return Err(HttpError::bad_request(format!("{field} must not be empty")));
    }
    Ok(())
}

async fn provision(
    state: web::Data<HttpState>,
    path: web::Path<String>,
    query: web::Query<AsyncQuery>,
    Body(body): Body<ProvisionBody>,
) -> Result<HttpResponse, HttpError> {
    let instance_id = instance_id(&path)?;
    for (field, value) in [
        ("service_id", &body.service_id),
        ("plan_id", &body.plan_id),
        ("organization_guid", &body.organization_guid),
        ("space_guid", &body.space_guid),
    ] {
        non_empty(field, value)?;
    }
    let outcome = state
        .broker
        .provision(ProvisionRequest {
            instance_id,
            service_id: body.service_id,
            plan_id: body.plan_id,
            organization_guid: body.organization_guid,
            space_guid: body.space_guid,
            context: body.context.unwrap_or_default(),
            parameters: body.parameters.unwrap_or_default(),
            accepts_incomplete: query.accepts_incomplete,
        })
        .await?;
    Ok(match outcome {
        Provisioned::Created => empty(StatusCode::CREATED),
        Provisioned::AlreadyExists => empty(StatusCode::OK),
    })
}

async fn update(
    state: web::Data<HttpState>,
    path: web::Path<String>,
    query: web::Query<AsyncQuery>,
    Body(body): Body<UpdateBody>,
) -> Result<HttpResponse, HttpError> {
    let instance_id = instance_id(&path)?;
    non_empty("service_id", &body.service_id)?;
    state
        .broker
        .update(UpdateRequest {
            instance_id,
            service_id: body.service_id,
            plan_id: body.plan_id,
            parameters: body.parameters,
            context: body.context,
            accepts_incomplete: query.accepts_incomplete,
        })
        .await?;
    Ok(empty(StatusCode::OK))
}

async fn get(state: web::Data<HttpState>, path: web::Path<String>) -> Result<HttpResponse, HttpError> {
    let info = state.broker.get_instance(&instance_id(&path)?).await?;
    Ok(HttpResponse::Ok().json(info))
}

async fn deprovision(
    state: web::Data<HttpState>,
    path: web::Path<String>,
    query: web::Query<DeleteQuery>,
) -> Result<HttpResponse, HttpError> {
    let instance_id = instance_id(&path)?;
    let (service_id, plan_id, accepts_incomplete) = query.into_inner().required()?;
    state
        .broker
        .deprovision(DeprovisionRequest { instance_id, service_id, plan_id, accepts_incomplete })
        .await?;
    Ok(empty(StatusCode::OK))
}

//! `GET .../last_operation` for instances and bindings.
//!
//! Every operation of this broker completes synchronously, so these report the state of the
//! record: `succeeded`, `in progress` for an interrupted operation, 410 once it is gone.

use actix_web::{web, HttpResponse};

use super::error::HttpError;
use super::{binding_id, instance_id, method_not_allowed, HttpState};

pub fn routes(cfg: &mut web::ServiceConfig) {
    cfg.service(
        web::resource("/service_instances/{instance_id}/last_operation")
            .get(instance_operation)
            .default_service(web::to(method_not_allowed("GET"))),
    )
    .service(
        web::resource("/service_instances/{instance_id}/service_bindings/{binding_id}/last_operation")
            .get(binding_operation)
            .default_service(web::to(method_not_allowed("GET"))),
    );
}

async fn instance_operation(
    state: web::Data<HttpState>,
    path: web::Path<String>,
) -> Result<HttpResponse, HttpError> {
    let operation = state.broker.instance_last_operation(&instance_id(&path)?).await?;
    Ok(HttpResponse::Ok().json(operation))
}

async fn binding_operation(
    state: web::Data<HttpState>,
    path: web::Path<(String, String)>,
) -> Result<HttpResponse, HttpError> {
    let (instance, binding) = path.into_inner();
    let operation =
        state.broker.binding_last_operation(&instance_id(&instance)?, &binding_id(&binding)?).await?;
    Ok(HttpResponse::Ok().json(operation))
}

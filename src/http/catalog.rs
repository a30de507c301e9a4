//! `GET /v2/catalog`: the pre-serialized catalog.

use actix_web::{web, HttpResponse};

use super::{method_not_allowed, HttpState};

pub fn routes(cfg: &mut web::ServiceConfig) {
    cfg.service(web::resource("/catalog").get(catalog).default_service(web::to(method_not_allowed("GET"))));
}

async fn catalog(state: web::Data<HttpState>) -> HttpResponse {
    HttpResponse::Ok().content_type("application/json").body(state.catalog_json.clone())
}

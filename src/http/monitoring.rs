//! The monitoring listener: `/metrics` (Prometheus text), `/health` (the process answers) and
//! `/ready` (every etcd cluster answers with the broker's credentials). No basic auth, so
//! Prometheus and load balancers need no broker credentials; it exposes no tenant data.

use std::sync::Arc;

use actix_web::{web, HttpResponse};
use serde_json::json;

use crate::broker::EtcdBroker;
use crate::inventory::Inventory;
use crate::metrics::Metrics;

/// What the monitoring endpoints need.
#[derive(Clone)]
pub struct MonitoringState {
    pub broker: Arc<EtcdBroker>,
    pub metrics: Arc<Metrics>,
    /// Registered in `metrics`; set by the inventory task, never counted by a scrape.
    pub inventory: Inventory,
}

/// Registers `/metrics`, `/health` and `/ready`.
pub fn routes(state: MonitoringState) -> impl FnOnce(&mut web::ServiceConfig) + Clone {
    move |cfg| {
        cfg.app_data(web::Data::new(state))
            .route("/metrics", web::get().to(metrics))
            .route("/health", web::get().to(health))
            .route("/ready", web::get().to(ready));
    }
}

async fn metrics(state: web::Data<MonitoringState>) -> HttpResponse {
    state.inventory.before_scrape();
    HttpResponse::Ok().content_type("text/plain; version=0.0.4; charset=utf-8").body(state.metrics.render())
}

async fn health() -> HttpResponse {
    HttpResponse::Ok().json(json!({ "status": "ok" }))
}

async fn ready(state: web::Data<MonitoringState>) -> HttpResponse {
    let health = state.broker.readiness().await;
    let ready = health.iter().all(|c| c.error.is_none());
    let clusters: serde_json::Map<String, serde_json::Value> = health
        .into_iter()
        .map(|c| {
            let value = match c.error {
                None => json!({ "ok": true }),
                Some(error) => json!({ "ok": false, "error": error }),
            };
            (c.cluster, value)
        })
        .collect();
    let body = json!({ "status": if ready { "ready" } else { "not ready" }, "clusters": clusters });
    if ready {
        HttpResponse::Ok().json(body)
    } else {
        HttpResponse::ServiceUnavailable().json(body)
    }
}

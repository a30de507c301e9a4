//! The monitoring listener: `/metrics` (Prometheus text), `/health` (the process answers) and
//! `/ready` (every etcd cluster answers with the broker's credentials). No basic auth, so
//! Prometheus and load balancers need no broker credentials; it exposes no tenant data.

use std::sync::Arc;

use actix_web::{web, HttpResponse};
use serde_json::json;

use crate::broker::EtcdBroker;
use crate::metrics::Metrics;

/// What the monitoring endpoints need.
#[derive(Clone)]
pub struct MonitoringState {
    pub broker: Arc<EtcdBroker>,
    pub metrics: Arc<Metrics>,
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
    // Inventory gauges are refreshed per scrape from count-only requests; on failure the last
    // values stay and the etcd error counters say why.
    if let Ok(plans) = state.broker.inventory().await {
        for plan in plans {
            let labels = [plan.service.as_str(), plan.plan.as_str()];
            state.metrics.instances.with_label_values(&labels).set(plan.instances as i64);
            state.metrics.bindings.with_label_values(&labels).set(plan.bindings as i64);
        }
    }
    if let Ok(queued) = state.broker.queued_roles().await {
        state.metrics.roles_awaiting_deletion.set(queued as i64);
    }
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

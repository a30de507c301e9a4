//! The monitoring listener (`--monitoring-listen`), apart from etcd's API: `/metrics`
//! (Prometheus text), `/health` (the process answers) and `/ready` (at least one etcd
//! endpoint answers its health check, so requests can be served), like the broker's. No
//! authentication, so Prometheus and load balancers need no credentials: it shows counts by
//! method and code, never a tenant, key, value or token. HTTP is axum's (already in the
//! proxy through tonic), not the broker's actix.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::Context;
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;
use serde_json::json;
use tokio::net::TcpListener;

use crate::backend::Backend;
use crate::metrics::Metrics;

/// What the endpoints read.
#[derive(Clone)]
struct State {
    metrics: Arc<Metrics>,
    backend: Backend,
}

/// Binds `address` now (a taken port fails the start), then serves on it until `shutdown`.
pub async fn serve(
    address: SocketAddr,
    metrics: Arc<Metrics>,
    backend: Backend,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<impl Future<Output = ()> + Send + 'static> {
    let listener = TcpListener::bind(address)
        .await
        .with_context(|| format!("cannot listen on {address} for monitoring"))?;
    let bound = listener.local_addr()?;
    let app = Router::new()
        .route("/metrics", get(render))
        .route("/health", get(health))
        .route("/ready", get(ready))
        .with_state(State { metrics, backend });
    tracing::info!(address = %bound, "serving /metrics, /health and /ready");
    Ok(async move {
        if let Err(e) = axum::serve(listener, app).with_graceful_shutdown(shutdown).await {
            tracing::error!(error = %e, "the monitoring listener stopped");
        }
    })
}

async fn render(axum::extract::State(state): axum::extract::State<State>) -> impl IntoResponse {
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")], state.metrics.render())
}

/// A JSON answer with `status`.
fn json_answer(status: StatusCode, body: serde_json::Value) -> impl IntoResponse {
    (status, [(header::CONTENT_TYPE, "application/json")], body.to_string())
}

async fn health() -> impl IntoResponse {
    json_answer(StatusCode::OK, json!({ "status": "ok" }))
}

async fn ready(axum::extract::State(state): axum::extract::State<State>) -> impl IntoResponse {
    let answering = state.backend.answering();
    let body = |status: &str| json!({ "status": status, "endpoints_answering": answering });
    if answering > 0 {
        json_answer(StatusCode::OK, body("ready"))
    } else {
        json_answer(
            StatusCode::SERVICE_UNAVAILABLE,
            body("not ready: no etcd endpoint answers its health check"),
        )
    }
}

//! The thin actix-web layer: routes, extractors and the error mapping, nothing else.
//!
//! Handlers extract and validate input, call the [`ServiceBroker`], and map its outcome to one
//! status code. Protocol plumbing lives in `protocol.rs`, errors become JSON in `error.rs`.

mod bindings;
mod catalog;
pub mod error;
mod instances;
mod last_operation;
pub mod monitoring;
pub mod observe;
pub mod protocol;

use std::sync::Arc;

use actix_web::error::{JsonPayloadError, PathError, QueryPayloadError};
use actix_web::{middleware::from_fn, web, HttpRequest, HttpResponse};
use serde::Deserialize;

use crate::activity::OsbActivity;
use crate::metrics::Metrics;
use crate::osb::{BindingId, InstanceId, ServiceBroker};
use error::HttpError;
use protocol::BasicAuth;

/// Largest request body accepted; OSB bodies are a few kilobytes.
pub const MAX_BODY_BYTES: usize = 64 * 1024;

/// How long reading a body may take unless the config says otherwise (`listen.body_timeout`).
pub const DEFAULT_BODY_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// Shared per-process state of the HTTP layer.
#[derive(Clone)]
pub struct HttpState {
    pub broker: Arc<dyn ServiceBroker>,
    pub auth: BasicAuth,
    /// The catalog, serialized once.
    pub catalog_json: web::Bytes,
    pub metrics: Arc<Metrics>,
    /// Requests in flight and the end of the last one, for the role reaper.
    pub activity: Arc<OsbActivity>,
    /// How long reading a request body may take: a body that trickles in gets 408.
    pub body_timeout: std::time::Duration,
}

impl HttpState {
    /// Prepares the state for a broker and its basic-auth credentials; the requests it serves
    /// are counted in `activity`.
    pub fn new(
        broker: Arc<dyn ServiceBroker>,
        username: &str,
        password: &str,
        metrics: Arc<Metrics>,
        activity: Arc<OsbActivity>,
    ) -> Self {
        let catalog_json = serde_json::to_vec(broker.catalog()).expect("the catalog serializes");
        Self {
            broker,
            auth: BasicAuth::new(username, password),
            catalog_json: catalog_json.into(),
            metrics,
            activity,
            body_timeout: DEFAULT_BODY_TIMEOUT,
        }
    }

    /// Sets how long reading a request body may take.
    pub fn with_body_timeout(mut self, timeout: std::time::Duration) -> Self {
        self.body_timeout = timeout;
        self
    }
}

/// Registers every route; the one app factory for `main` and the tests:
/// `App::new().configure(http::routes(state))`.
pub fn routes(state: HttpState) -> impl FnOnce(&mut web::ServiceConfig) + Clone {
    move |cfg| {
        cfg.app_data(web::Data::new(state))
            .app_data(
                web::JsonConfig::default()
                    .limit(MAX_BODY_BYTES)
                    .content_type_required(false)
                    .error_handler(|e, _| json_error(e).into()),
            )
            .app_data(web::QueryConfig::default().error_handler(|e, _| query_error(e).into()))
            .app_data(web::PathConfig::default().error_handler(|e, _| path_error(e).into()))
            .service(
                web::scope("/v2")
                    .wrap(from_fn(protocol::osb_protocol))
                    .wrap(from_fn(observe::record))
                    .configure(catalog::routes)
                    .configure(instances::routes)
                    .configure(bindings::routes)
                    .configure(last_operation::routes)
                    .default_service(web::to(no_route)),
            )
            .default_service(web::to(no_route));
    }
}

async fn no_route(req: HttpRequest) -> Result<HttpResponse, HttpError> {
    Err(HttpError::NoRoute(format!("{} {}", req.method(), req.path())))
}

/// Default of every resource: the path exists, the method does not. `allow` lists the
/// resource's methods for the `Allow` header that RFC 9110 requires on a 405.
fn method_not_allowed(
    allow: &'static str,
) -> impl Fn(HttpRequest) -> futures_util::future::Ready<Result<HttpResponse, HttpError>> + Clone {
    move |req| futures_util::future::ready(Err(HttpError::MethodNotAllowed(req.method().to_string(), allow)))
}

fn json_error(e: JsonPayloadError) -> HttpError {
    match e {
        JsonPayloadError::Overflow { limit } | JsonPayloadError::OverflowKnownLength { limit, .. } => {
            HttpError::PayloadTooLarge(limit)
        }
        JsonPayloadError::Deserialize(e) => HttpError::bad_request(format!("invalid request body: {e}")),
        other => HttpError::bad_request(format!("invalid request body: {other}")),
    }
}

fn query_error(e: QueryPayloadError) -> HttpError {
    let detail = match &e {
        QueryPayloadError::Deserialize(e) => e.to_string(),
        other => other.to_string(),
    };
    HttpError::bad_request(format!("invalid query string: {detail}"))
}

fn path_error(e: PathError) -> HttpError {
    HttpError::bad_request(format!("invalid path: {e}"))
}

/// `?accepts_incomplete=` shared by the mutating endpoints.
#[derive(Debug, Deserialize)]
struct AsyncQuery {
    #[serde(default)]
    accepts_incomplete: bool,
}

/// `?service_id=&plan_id=` that DELETE requests must carry.
#[derive(Debug, Deserialize)]
struct DeleteQuery {
    service_id: Option<String>,
    plan_id: Option<String>,
    #[serde(default)]
    accepts_incomplete: bool,
}

impl DeleteQuery {
    fn required(self) -> Result<(String, String, bool), HttpError> {
        match (self.service_id, self.plan_id) {
            (Some(s), Some(p)) if !s.is_empty() && !p.is_empty() => Ok((s, p, self.accepts_incomplete)),
            _ => Err(HttpError::bad_request("the query parameters service_id and plan_id are required")),
        }
    }
}

fn instance_id(raw: &str) -> Result<InstanceId, HttpError> {
    Ok(InstanceId::parse(raw).map_err(crate::osb::BrokerError::from)?)
}

fn binding_id(raw: &str) -> Result<BindingId, HttpError> {
    Ok(BindingId::parse(raw).map_err(crate::osb::BrokerError::from)?)
}

/// A request body: any JSON first (size and syntax checked by [`web::JsonConfig`]), read within
/// the body timeout (a body that trickles in gets 408, and the unread rest closes the
/// connection), then the typed shape, so errors can name the offending field (`plan_id:
/// invalid type ...`).
pub struct Body<T>(pub T);

impl<T: serde::de::DeserializeOwned> actix_web::FromRequest for Body<T> {
    type Error = actix_web::Error;
    type Future = futures_util::future::LocalBoxFuture<'static, Result<Self, Self::Error>>;

    fn from_request(req: &HttpRequest, payload: &mut actix_web::dev::Payload) -> Self::Future {
        let json = web::Json::<serde_json::Value>::from_request(req, payload);
        let timeout = req.app_data::<web::Data<HttpState>>().map_or(DEFAULT_BODY_TIMEOUT, |s| s.body_timeout);
        Box::pin(async move {
            let Ok(json) = tokio::time::timeout(timeout, json).await else {
                return Err(HttpError::BodyTimeout(timeout.as_secs()).into());
            };
            let value = json?.into_inner();
            // serde reads a struct from a JSON array too (fields by position); OSB bodies are
            // objects, and a positional body names no field a client could check.
            if !value.is_object() {
                return Err(HttpError::bad_request("invalid request body: a JSON object is expected").into());
            }
            serde_path_to_error::deserialize(value).map(Body).map_err(|e| {
                let path = e.path().to_string();
                let at = if path == "." { String::new() } else { format!("{path}: ") };
                HttpError::bad_request(format!("invalid request body: {at}{}", e.inner())).into()
            })
        })
    }
}

/// The `{}` body of most successful answers.
fn empty(status: actix_web::http::StatusCode) -> HttpResponse {
    HttpResponse::build(status).content_type("application/json").body("{}")
}

#[cfg(test)]
mod fuzz;
#[cfg(test)]
mod tests;

//! Request metrics for the OSB API: count, latency and in-flight gauge per operation; and the
//! API's activity, which the role reaper waits on.
//!
//! Operations are derived from the method and the shape of the path, so label values stay a
//! small fixed set whatever ids the platform sends.

use std::time::Instant;

use actix_web::body::MessageBody;
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::http::Method;
use actix_web::middleware::Next;
use actix_web::{web, Error};

use super::HttpState;

/// The OSB operation a request is, as used in metric labels and logs.
pub fn operation_of(method: &Method, path: &str) -> &'static str {
    // An OSB path has at most six segments; longer ones are "other" (a seventh stays in view).
    let mut segments = [""; 7];
    let mut count = 0;
    for segment in path.trim_start_matches('/').split('/').take(segments.len()) {
        segments[count] = segment;
        count += 1;
    }
    match (method.as_str(), &segments[..count]) {
        ("GET", ["v2", "catalog"]) => "catalog",
        ("PUT", ["v2", "service_instances", _]) => "provision",
        ("PATCH", ["v2", "service_instances", _]) => "update",
        ("DELETE", ["v2", "service_instances", _]) => "deprovision",
        ("GET", ["v2", "service_instances", _]) => "get",
        ("GET", ["v2", "service_instances", _, "last_operation"]) => "last_operation",
        ("PUT", ["v2", "service_instances", _, "service_bindings", _]) => "bind",
        ("DELETE", ["v2", "service_instances", _, "service_bindings", _]) => "unbind",
        ("GET", ["v2", "service_instances", _, "service_bindings", _]) => "get",
        ("GET", ["v2", "service_instances", _, "service_bindings", _, "last_operation"]) => "last_operation",
        _ => "other",
    }
}

/// The middleware; outermost on `/v2`, so 401 and 412 answers are counted too.
pub async fn record(
    req: ServiceRequest,
    next: Next<impl MessageBody + 'static>,
) -> Result<ServiceResponse<impl MessageBody>, Error> {
    let Some(state) = req.app_data::<web::Data<HttpState>>().cloned() else {
        return next.call(req).await.map(ServiceResponse::map_into_boxed_body);
    };
    let metrics = &state.metrics;
    let operation = operation_of(req.method(), req.path());
    metrics.osb_in_flight.inc();
    let in_flight = state.activity.begin();
    let started = Instant::now();
    let result = next.call(req).await;
    drop(in_flight);
    metrics.osb_in_flight.dec();
    metrics.osb_duration.with_label_values(&[operation]).observe(started.elapsed().as_secs_f64());
    let status = match &result {
        Ok(response) => response.status(),
        Err(e) => e.as_response_error().status_code(),
    };
    metrics.osb_requests.with_label_values(&[operation, status.as_str()]).inc();
    result.map(ServiceResponse::map_into_boxed_body)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_endpoint_has_its_operation_and_ids_never_leak_into_labels() {
        let cases = [
            (Method::GET, "/v2/catalog", "catalog"),
            (Method::PUT, "/v2/service_instances/abc", "provision"),
            (Method::PATCH, "/v2/service_instances/abc", "update"),
            (Method::DELETE, "/v2/service_instances/abc", "deprovision"),
            (Method::GET, "/v2/service_instances/abc", "get"),
            (Method::GET, "/v2/service_instances/abc/last_operation", "last_operation"),
            (Method::PUT, "/v2/service_instances/abc/service_bindings/b", "bind"),
            (Method::DELETE, "/v2/service_instances/abc/service_bindings/b", "unbind"),
            (Method::GET, "/v2/service_instances/abc/service_bindings/b", "get"),
            (Method::GET, "/v2/service_instances/abc/service_bindings/b/last_operation", "last_operation"),
            (Method::POST, "/v2/service_instances/abc", "other"),
            (Method::GET, "/v2/anything/else", "other"),
            (Method::GET, "/v2/service_instances/abc/service_bindings/b/last_operation/more", "other"),
            (Method::GET, "/v2/service_instances/abc/service_bindings/b/last_operation/a/b/c", "other"),
        ];
        for (method, path, expected) in cases {
            assert_eq!(operation_of(&method, path), expected, "{method} {path}");
        }
    }
}

//! Request metrics as one tower layer around all of etcd's services ([`MeasureLayer`]), so the
//! services themselves count nothing: each call is counted by service, method and gRPC status
//! code when its status is known, unary calls' latency is observed, and firewall refusals are
//! counted by the rule the refusing status names ([`crate::firewall::RULE_KEY`]).
//!
//! The status of a call is in the response's headers (a "trailers-only" answer: tonic's for an
//! error of a unary call) or in the trailers at the end of its body; a body dropped before
//! them (the client went away) counts as `Cancelled`. Labels come only from the request's path
//! (checked against etcd's API, [`method_of`]) and the status code: never from a request's
//! content, so no key, value or token can reach a metric.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Instant;

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use tonic::codegen::http;
use tonic::Code;

use crate::firewall::{Rule, RULE_KEY};
use crate::metrics::Metrics;

/// etcd's v3 gRPC API, service by service: the only label values a request's path can give.
const API: &[(&str, &[&str])] = &[
    ("etcdserverpb.KV", &["Range", "Put", "DeleteRange", "Txn", "Compact"]),
    ("etcdserverpb.Watch", &["Watch"]),
    (
        "etcdserverpb.Lease",
        &["LeaseGrant", "LeaseRevoke", "LeaseKeepAlive", "LeaseTimeToLive", "LeaseLeases"],
    ),
    ("etcdserverpb.Cluster", &["MemberAdd", "MemberRemove", "MemberUpdate", "MemberList", "MemberPromote"]),
    (
        "etcdserverpb.Maintenance",
        &["Alarm", "Status", "Defragment", "Hash", "HashKV", "Snapshot", "MoveLeader", "Downgrade"],
    ),
    (
        "etcdserverpb.Auth",
        &[
            "AuthEnable",
            "AuthDisable",
            "AuthStatus",
            "Authenticate",
            "UserAdd",
            "UserGet",
            "UserList",
            "UserDelete",
            "UserChangePassword",
            "UserGrantRole",
            "UserRevokeRole",
            "RoleAdd",
            "RoleGet",
            "RoleList",
            "RoleDelete",
            "RoleGrantPermission",
            "RoleRevokePermission",
        ],
    ),
];

/// Streaming calls: counted when they end, but a stream's duration is no latency.
const STREAMS: &[&str] = &["Watch", "LeaseKeepAlive", "Snapshot"];

/// (service, method) of a request path `/<service>/<method>` of etcd's API; anything else is
/// `("unknown", "unknown")`, so that a client cannot make up label values.
pub fn method_of(path: &str) -> (&'static str, &'static str) {
    let mut parts = path.trim_start_matches('/').splitn(2, '/');
    let (service, method) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
    API.iter()
        .find(|(s, _)| *s == service)
        .and_then(|(s, methods)| methods.iter().find(|m| **m == method).map(|m| (*s, *m)))
        .unwrap_or(("unknown", "unknown"))
}

/// Wraps tonic's router: every call measured ([`Metrics::requests`], [`Metrics::duration`],
/// [`Metrics::refusals`]).
#[derive(Clone)]
pub struct MeasureLayer {
    metrics: Arc<Metrics>,
}

impl MeasureLayer {
    pub fn new(metrics: Arc<Metrics>) -> Self {
        MeasureLayer { metrics }
    }
}

impl<S> tower::Layer<S> for MeasureLayer {
    type Service = Measured<S>;

    fn layer(&self, inner: S) -> Measured<S> {
        Measured { inner, metrics: self.metrics.clone() }
    }
}

/// The service [`MeasureLayer`] makes.
#[derive(Clone)]
pub struct Measured<S> {
    inner: S,
    metrics: Arc<Metrics>,
}

impl<S, RequestBody> tower::Service<http::Request<RequestBody>> for Measured<S>
where
    S: tower::Service<http::Request<RequestBody>, Response = http::Response<tonic::body::Body>>,
    S::Future: Send + 'static,
{
    type Response = http::Response<tonic::body::Body>;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, S::Error>> + Send + 'static>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<RequestBody>) -> Self::Future {
        let (service, method) = method_of(request.uri().path());
        let mut call =
            Call { metrics: self.metrics.clone(), service, method, started: Instant::now(), code: None };
        let response = self.inner.call(request);
        Box::pin(async move {
            let response = response.await?;
            if call.status_in(response.headers()) {
                // Trailers-only: the status is all there is.
                return Ok(response);
            }
            Ok(response.map(|body| tonic::body::Body::new(MeasuredBody { inner: body, call })))
        })
    }
}

/// One call being measured: recorded once, when dropped (with its status, or `Cancelled`).
struct Call {
    metrics: Arc<Metrics>,
    service: &'static str,
    method: &'static str,
    started: Instant,
    code: Option<Code>,
}

impl Call {
    /// Takes the status from `headers` (or trailers) if they hold one; whether they did.
    fn status_in(&mut self, headers: &http::HeaderMap) -> bool {
        let Some(status) = headers.get("grpc-status") else { return false };
        let code =
            status.to_str().ok().and_then(|s| s.parse::<i32>().ok()).map_or(Code::Unknown, Code::from_i32);
        self.code = Some(code);
        if let Some(rule) = headers.get(RULE_KEY).and_then(|r| r.to_str().ok()) {
            self.metrics.refusals.with_label_values(&[Rule::label_of(rule)]).inc();
        }
        true
    }
}

impl Drop for Call {
    fn drop(&mut self) {
        let code = self.code.unwrap_or(Code::Cancelled);
        let code_label = format!("{code:?}");
        self.metrics.requests.with_label_values(&[self.service, self.method, &code_label]).inc();
        if !STREAMS.contains(&self.method) {
            self.metrics
                .duration
                .with_label_values(&[self.service, self.method])
                .observe(self.started.elapsed().as_secs_f64());
        }
    }
}

/// A response body that takes the call's status from its trailers.
struct MeasuredBody {
    inner: tonic::body::Body,
    call: Call,
}

impl Body for MeasuredBody {
    type Data = Bytes;
    type Error = tonic::Status;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, tonic::Status>>> {
        let this = &mut *self;
        let polled = Pin::new(&mut this.inner).poll_frame(cx);
        match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(trailers) = frame.trailers_ref() {
                    this.call.status_in(trailers);
                }
            }
            Poll::Ready(Some(Err(status))) => this.call.code = Some(status.code()),
            Poll::Ready(None) if this.call.code.is_none() => this.call.code = Some(Code::Unknown),
            _ => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_etcds_methods_become_labels() {
        assert_eq!(method_of("/etcdserverpb.KV/Range"), ("etcdserverpb.KV", "Range"));
        assert_eq!(method_of("/etcdserverpb.Lease/LeaseKeepAlive"), ("etcdserverpb.Lease", "LeaseKeepAlive"));
        for made_up in ["/etcdserverpb.KV/secret-key", "/x/Range", "/", "", "/etcdserverpb.KV"] {
            assert_eq!(method_of(made_up), ("unknown", "unknown"), "{made_up}");
        }
    }
}

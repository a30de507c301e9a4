//! OSB protocol plumbing shared by every `/v2` route, as one middleware: basic auth (constant
//! time), `X-Broker-API-Version`, request-identity echo, originating identity, and a tracing span.

use actix_web::body::MessageBody;
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::http::header::{HeaderName, HeaderValue, AUTHORIZATION};
use actix_web::middleware::Next;
use actix_web::{web, Error};
use base64::Engine;
use subtle::ConstantTimeEq;
use tracing::Instrument;

use super::error::HttpError;
use super::HttpState;

/// The oldest OSB version this broker speaks.
pub const MIN_MINOR_VERSION: u32 = 13;

const VERSION_HEADER: &str = "x-broker-api-version";
const REQUEST_IDENTITY: HeaderName = HeaderName::from_static("x-broker-api-request-identity");
const ORIGINATING_IDENTITY: &str = "x-broker-api-originating-identity";

/// The expected credentials of the `Authorization` header, precomputed.
#[derive(Clone)]
pub struct BasicAuth {
    /// The base64 token after the scheme.
    expected: Vec<u8>,
}

impl BasicAuth {
    /// From the configured credentials.
    pub fn new(username: &str, password: &str) -> Self {
        let token = base64::engine::general_purpose::STANDARD.encode(format!("{username}:{password}"));
        Self { expected: token.into_bytes() }
    }

    /// Whether the header is `Basic <token>` with the expected token. The scheme is matched
    /// without regard to case, as RFC 9110 says of every auth scheme, and may be followed by
    /// more than one space; the token is compared in constant time.
    fn accepts(&self, header: Option<&HeaderValue>) -> bool {
        let given = header.map(HeaderValue::as_bytes).unwrap_or_default();
        let Some(space) = given.iter().position(|b| *b == b' ') else {
            return false;
        };
        let (scheme, rest) = given.split_at(space);
        let token = rest.trim_ascii_start();
        scheme.eq_ignore_ascii_case(b"basic") && bool::from(token.ct_eq(&self.expected))
    }
}

/// Whether `text` is a version number part as OSB writes them: digits, without a sign or a
/// leading zero (`Rust`'s integer parser takes `+14` and `014`).
fn plain_number(text: &str) -> Option<u32> {
    let digits = !text.is_empty() && text.bytes().all(|b| b.is_ascii_digit());
    if !digits || (text.len() > 1 && text.starts_with('0')) {
        return None;
    }
    text.parse().ok()
}

/// The version in an `X-Broker-API-Version` header: (major, minor), each plain digits.
fn parse_version(value: &HeaderValue) -> Option<(u32, u32)> {
    let text = value.to_str().ok()?.trim();
    let (major, minor) = text.split_once('.')?;
    Some((plain_number(major)?, plain_number(minor)?))
}

/// The minor OSB version of a request that passed [`check_version`] (the middleware lets no
/// other through): what a handler asks before reading a field that newer versions added.
pub fn minor_version(headers: &actix_web::http::header::HeaderMap) -> u32 {
    match headers.get(VERSION_HEADER).and_then(parse_version) {
        Some((2, minor)) => minor,
        _ => MIN_MINOR_VERSION,
    }
}

/// Checks `X-Broker-API-Version`: `2.<minor>` with minor at least 13, each part plain digits.
pub fn check_version(header: Option<&HeaderValue>) -> Result<(), HttpError> {
    let Some(value) = header else {
        return Err(HttpError::ApiVersion(format!(
            "the X-Broker-API-Version header is missing; this broker requires 2.{MIN_MINOR_VERSION} or later"
        )));
    };
    let text = value.to_str().unwrap_or("").trim();
    match parse_version(value) {
        Some((2, minor)) if minor >= MIN_MINOR_VERSION => Ok(()),
        _ => Err(HttpError::ApiVersion(format!(
            "X-Broker-API-Version '{text}' is not supported; this broker requires 2.{MIN_MINOR_VERSION} or later"
        ))),
    }
}

/// Who asked, from `X-Broker-API-Originating-Identity` (`<platform> <base64 JSON>`): the
/// platform name and its `user_id` (Cloud Foundry) or `username` (Kubernetes).
pub fn originating_user(header: Option<&HeaderValue>) -> Option<String> {
    let (platform, encoded) = header?.to_str().ok()?.split_once(' ')?;
    let bytes = base64::engine::general_purpose::STANDARD.decode(encoded.trim()).ok()?;
    let value: serde_json::Value = serde_json::from_slice(&bytes).ok()?;
    let user = value.get("user_id").or_else(|| value.get("username"))?.as_str()?;
    Some(format!("{platform}/{user}"))
}

/// The instance and binding ids in an OSB path, for the request span ("" when absent).
fn ids_in(path: &str) -> (&str, &str) {
    let mut segments = path.trim_start_matches('/').split('/');
    match (segments.next(), segments.next(), segments.next(), segments.next(), segments.next()) {
        (Some("v2"), Some("service_instances"), Some(i), Some("service_bindings"), Some(b)) => (i, b),
        (Some("v2"), Some("service_instances"), Some(i), _, _) => (i, ""),
        _ => ("", ""),
    }
}

/// The middleware.
pub async fn osb_protocol(
    req: ServiceRequest,
    next: Next<impl MessageBody + 'static>,
) -> Result<ServiceResponse<impl MessageBody>, Error> {
    let headers = req.headers();
    let identity = headers.get(&REQUEST_IDENTITY).cloned();
    let (instance_id, binding_id) = ids_in(req.path());
    let span = tracing::info_span!(
        "osb",
        operation = super::observe::operation_of(req.method(), req.path()),
        method = %req.method(),
        path = %req.path(),
        instance_id,
        binding_id,
        request_identity = identity.as_ref().and_then(|v| v.to_str().ok()).unwrap_or(""),
        user = originating_user(headers.get(ORIGINATING_IDENTITY)).as_deref().unwrap_or(""),
    );
    let state = req.app_data::<web::Data<HttpState>>();
    let authorized = state.is_some_and(|s| s.auth.accepts(headers.get(AUTHORIZATION)));
    if let (false, Some(state)) = (authorized, state) {
        state.metrics.auth_failures.inc();
    }
    let checked =
        if authorized { check_version(headers.get(VERSION_HEADER)) } else { Err(HttpError::Unauthorized) };
    let mut response = match checked {
        // Handler errors are already responses here; only our own rejections need converting.
        Ok(()) => next.call(req).instrument(span.clone()).await?.map_into_boxed_body(),
        Err(e) => {
            let _entered = span.enter();
            req.error_response(e).map_into_boxed_body()
        }
    };
    tracing::debug!(parent: &span, status = response.status().as_u16(), "answered");
    if let Some(identity) = identity {
        response.headers_mut().insert(REQUEST_IDENTITY, identity);
    }
    Ok(response)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hv(s: &str) -> HeaderValue {
        HeaderValue::from_str(s).unwrap()
    }

    #[test]
    fn versions_from_2_13_are_accepted() {
        for ok in ["2.13", "2.14", "2.15", "2.16", "2.17", "2.18"] {
            assert!(check_version(Some(&hv(ok))).is_ok(), "{ok}");
        }
        for bad in ["2.12", "2.0", "1.99", "3.13", "2", "abc", ""] {
            assert!(check_version(Some(&hv(bad))).is_err(), "{bad}");
        }
        assert!(check_version(None).is_err());
    }

    #[test]
    fn originating_identity_names_platform_and_user() {
        let cf = base64::engine::general_purpose::STANDARD.encode(r#"{"user_id":"683ea748"}"#);
        assert_eq!(
            originating_user(Some(&hv(&format!("cloudfoundry {cf}")))).as_deref(),
            Some("cloudfoundry/683ea748")
        );
        let k8s = base64::engine::general_purpose::STANDARD.encode(r#"{"username":"admin","uid":"1"}"#);
        assert_eq!(
            originating_user(Some(&hv(&format!("kubernetes {k8s}")))).as_deref(),
            Some("kubernetes/admin")
        );
        assert_eq!(originating_user(Some(&hv("garbage"))), None);
    }

    #[test]
    fn basic_auth_needs_the_exact_credentials() {
        let auth = BasicAuth::new("broker", "secret");
        let good = format!("Basic {}", base64::engine::general_purpose::STANDARD.encode("broker:secret"));
        assert!(auth.accepts(Some(&hv(&good))));
        let wrong = format!("Basic {}", base64::engine::general_purpose::STANDARD.encode("broker:secreT"));
        assert!(!auth.accepts(Some(&hv(&wrong))));
        assert!(!auth.accepts(None));
    }
}

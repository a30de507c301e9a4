//! The one place where errors become HTTP: OSB error JSON with the right status code.

use actix_web::http::{header, StatusCode};
use actix_web::{HttpResponse, ResponseError};
use serde_json::json;

use crate::osb::BrokerError;

/// Everything a request can fail with: domain errors plus protocol-level ones.
#[derive(Debug, thiserror::Error)]
pub enum HttpError {
    #[error(transparent)]
    Broker(#[from] BrokerError),
    /// Missing or wrong basic-auth credentials (401).
    #[error("missing or wrong broker credentials")]
    Unauthorized,
    /// Missing or unsupported `X-Broker-API-Version` (412).
    #[error("{0}")]
    ApiVersion(String),
    /// Request body above the limit (413).
    #[error("request body is larger than {0} bytes")]
    PayloadTooLarge(usize),
    /// The request body did not arrive within the body timeout, in seconds (408).
    #[error("the request body did not arrive within {0} s")]
    BodyTimeout(u64),
    /// No such route (404).
    #[error("no such endpoint: {0}")]
    NoRoute(String),
    /// Route exists, method does not (405); the methods it allows.
    #[error("method {0} is not allowed here")]
    MethodNotAllowed(String, &'static str),
}

impl HttpError {
    /// A 400 with a description.
    pub fn bad_request(description: impl Into<String>) -> Self {
        HttpError::Broker(BrokerError::BadRequest(description.into()))
    }

    /// The OSB machine-readable `error` code, where the spec defines one.
    fn code(&self) -> Option<&'static str> {
        match self {
            HttpError::Broker(BrokerError::Concurrency(_)) => Some("ConcurrencyError"),
            _ => None,
        }
    }
}

impl ResponseError for HttpError {
    fn status_code(&self) -> StatusCode {
        match self {
            HttpError::Broker(e) => match e {
                BrokerError::BadRequest(_) | BrokerError::InvalidId(_) => StatusCode::BAD_REQUEST,
                BrokerError::InstanceNotFound(_) | BrokerError::BindingNotFound(_) => StatusCode::NOT_FOUND,
                BrokerError::InstanceGone(_) | BrokerError::BindingGone(_) => StatusCode::GONE,
                BrokerError::Conflict(_) => StatusCode::CONFLICT,
                BrokerError::Concurrency(_)
                | BrokerError::Unprocessable(_)
                | BrokerError::LimitReached { .. } => StatusCode::UNPROCESSABLE_ENTITY,
                BrokerError::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
                BrokerError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
            },
            HttpError::Unauthorized => StatusCode::UNAUTHORIZED,
            HttpError::ApiVersion(_) => StatusCode::PRECONDITION_FAILED,
            HttpError::PayloadTooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            HttpError::BodyTimeout(_) => StatusCode::REQUEST_TIMEOUT,
            HttpError::NoRoute(_) => StatusCode::NOT_FOUND,
            HttpError::MethodNotAllowed(..) => StatusCode::METHOD_NOT_ALLOWED,
        }
    }

    fn error_response(&self) -> HttpResponse {
        let status = self.status_code();
        if status.is_server_error() {
            tracing::error!(status = status.as_u16(), "{self}");
        } else {
            tracing::info!(status = status.as_u16(), "{self}");
        }
        let mut body = json!({ "description": self.to_string() });
        if let Some(code) = self.code() {
            body["error"] = json!(code);
        }
        let mut response = HttpResponse::build(status);
        if let HttpError::Unauthorized = self {
            response.insert_header((header::WWW_AUTHENTICATE, "Basic realm=\"etcd-broker\""));
        }
        if let HttpError::MethodNotAllowed(_, allow) = self {
            response.insert_header((header::ALLOW, *allow));
        }
        if let HttpError::BodyTimeout(_) = self {
            // The rest of the body is not read: the connection cannot carry another request.
            response.force_close();
        }
        response.json(body)
    }
}

//! OpenBao (and Vault) over its HTTP API: the one module that speaks to it, and the only user
//! of reqwest in the broker.
//!
//! - [`OpenBao`] (this file): the client. One reqwest client (TLS by OpenSSL through
//!   native-tls, an optional CA bundle), every request bounded in time, the token sent in
//!   `X-Vault-Token`, answers mapped to [`BaoError`] (unavailable, denied, refused) without
//!   ever quoting a token or a secret.
//! - [`auth`]: where the token comes from (a token file read once, or AppRole's role_id and
//!   secret_id) and how it is kept alive: renewed with `renew-self` once two thirds of its
//!   time to live are gone, logged in again (AppRole) when it cannot be renewed.
//! - [`transit`]: a transit key as a `sealing::KeyBackend`: it wraps and unwraps the data
//!   keys of sealed values; the broker never sees the key-encryption key.
//! - [`kv`]: a KV v2 engine as a `credential_store::CredentialStore`: where plans with
//!   `credential_store = "openbao"` keep their bindings' secrets.
//!
//! Nothing here is a domain type: the sealing and credential store traits are implemented
//! here, not defined.

pub mod auth;
pub mod kv;
pub mod transit;

use std::time::Duration;

use reqwest::{Method, StatusCode};
use serde_json::Value;
use url::Url;

pub use auth::Auth;
use auth::Session;

/// How long one request to OpenBao may take, unless the config says otherwise.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(5);

/// What the broker needs to reach OpenBao, checked by the config.
#[derive(Debug, Clone)]
pub struct Settings {
    /// `http(s)://host:port` of OpenBao (or Vault).
    pub address: Url,
    /// PEM CA bundle that verifies OpenBao's certificate; without it, the system's roots.
    pub ca_pem: Option<Vec<u8>>,
    /// How the broker logs in.
    pub auth: Auth,
    /// Deadline of each request.
    pub timeout: Duration,
}

/// Why a request to OpenBao failed. Messages name the address and what OpenBao said, never a
/// token, a secret or a request body.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BaoError {
    /// OpenBao did not answer in time, or answered that it cannot serve (sealed, 5xx, 429).
    #[error("OpenBao at {address} is unavailable: {reason}")]
    Unavailable { address: String, reason: String },
    /// The broker's token may not do this (403), or the login failed.
    #[error("OpenBao at {address} refused the broker's token: {reason}")]
    Denied { address: String, reason: String },
    /// Nothing at this path (404).
    #[error("OpenBao at {address} has nothing at {path}")]
    NotFound { address: String, path: String },
    /// Any other refusal (400 and the rest), with OpenBao's own messages.
    #[error("OpenBao at {address} refused the request: {reason}")]
    Refused { address: String, reason: String },
}

/// The client; shared (`Arc`) by every backend that uses the same OpenBao.
pub struct OpenBao {
    http: reqwest::Client,
    address: Url,
    auth: Auth,
    session: tokio::sync::Mutex<Option<Session>>,
}

impl std::fmt::Debug for OpenBao {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OpenBao").field("address", &self.address.as_str()).field("auth", &self.auth).finish()
    }
}

impl OpenBao {
    /// A client for `settings`; contacts nothing yet (the first request logs in). Fails only
    /// on a CA bundle that holds no certificate or a TLS setup OpenSSL refuses.
    pub fn new(settings: Settings) -> Result<OpenBao, String> {
        let mut builder = reqwest::Client::builder()
            .timeout(settings.timeout)
            .connect_timeout(settings.timeout.min(Duration::from_secs(3)))
            // A token is never sent to a redirect's target.
            .redirect(reqwest::redirect::Policy::none());
        if let Some(pem) = &settings.ca_pem {
            let certs = reqwest::Certificate::from_pem_bundle(pem)
                .map_err(|_| "the CA bundle is not PEM certificates".to_owned())?;
            if certs.is_empty() {
                return Err("the CA bundle holds no certificate".to_owned());
            }
            builder = builder.tls_certs_only(certs);
        }
        let http = builder.build().map_err(|e| format!("cannot set up the HTTP client: {e}"))?;
        Ok(OpenBao { http, address: settings.address, auth: settings.auth, session: Default::default() })
    }

    /// The address, for messages.
    pub fn address(&self) -> &str {
        self.address.as_str().trim_end_matches('/')
    }

    /// `method` on `/v1/<path>` with the broker's token (logging in or renewing first when
    /// due), `body` as JSON. The answer's JSON (`Value::Null` for 204). A 403 with AppRole
    /// logs in again once and repeats the request: the token may have been revoked.
    pub async fn call(&self, method: Method, path: &str, body: Option<&Value>) -> Result<Value, BaoError> {
        let token = self.token().await?;
        match self.send(method.clone(), path, body, Some(&token)).await {
            Err(BaoError::Denied { .. }) if matches!(self.auth, Auth::AppRole { .. }) => {
                self.forget(&token).await;
                let token = self.token().await?;
                self.send(method, path, body, Some(&token)).await
            }
            other => other,
        }
    }

    /// One request, as is (`token`: none for a login).
    async fn send(
        &self,
        method: Method,
        path: &str,
        body: Option<&Value>,
        token: Option<&str>,
    ) -> Result<Value, BaoError> {
        let url = self.url(path)?;
        let mut request = self.http.request(method, url);
        if let Some(token) = token {
            request = request.header("X-Vault-Token", token);
        }
        if let Some(body) = body {
            request = request.json(body);
        }
        let response = request.send().await.map_err(|e| self.unavailable(describe(&e)))?;
        let status = response.status();
        let text = response.text().await.map_err(|e| self.unavailable(describe(&e)))?;
        if status.is_success() {
            return if text.trim().is_empty() {
                Ok(Value::Null)
            } else {
                serde_json::from_str(&text).map_err(|_| BaoError::Refused {
                    address: self.address().to_owned(),
                    reason: format!("{path}: the answer is not JSON"),
                })
            };
        }
        let reason = errors_of(&text, status);
        let address = self.address().to_owned();
        Err(match status {
            StatusCode::FORBIDDEN | StatusCode::UNAUTHORIZED => BaoError::Denied { address, reason },
            StatusCode::NOT_FOUND => BaoError::NotFound { address, path: path.to_owned() },
            StatusCode::TOO_MANY_REQUESTS => BaoError::Unavailable { address, reason },
            s if s.is_server_error() => BaoError::Unavailable { address, reason },
            _ => BaoError::Refused { address, reason },
        })
    }

    fn url(&self, path: &str) -> Result<Url, BaoError> {
        self.address.join(&format!("v1/{path}")).map_err(|_| BaoError::Refused {
            address: self.address().to_owned(),
            reason: format!("'{path}' is not a path"),
        })
    }

    fn unavailable(&self, reason: String) -> BaoError {
        BaoError::Unavailable { address: self.address().to_owned(), reason }
    }
}

/// What reqwest says went wrong, without the URL (no secret is in it, but it repeats the
/// address the error already names).
fn describe(e: &reqwest::Error) -> String {
    let kind = if e.is_timeout() {
        "no answer in time"
    } else if e.is_connect() {
        "cannot connect"
    } else {
        "the request failed"
    };
    let mut source = std::error::Error::source(e);
    let mut deepest = None;
    while let Some(s) = source {
        deepest = Some(s.to_string());
        source = s.source();
    }
    match deepest {
        Some(cause) => format!("{kind} ({cause})"),
        None => kind.to_owned(),
    }
}

/// OpenBao's `{"errors": [...]}`, joined, with the status; at most 300 characters of it.
fn errors_of(text: &str, status: StatusCode) -> String {
    let errors = serde_json::from_str::<Value>(text)
        .ok()
        .and_then(|v| v.get("errors").and_then(Value::as_array).cloned())
        .map(|errors| errors.iter().filter_map(Value::as_str).collect::<Vec<_>>().join("; "))
        .filter(|e| !e.is_empty());
    let mut reason = match errors {
        Some(errors) => format!("{status}: {errors}"),
        None => status.to_string(),
    };
    if reason.len() > 300 {
        let mut end = 300;
        while !reason.is_char_boundary(end) {
            end -= 1;
        }
        reason.truncate(end);
    }
    reason
}

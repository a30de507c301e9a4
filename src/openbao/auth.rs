//! The broker's OpenBao token: where it comes from, and how it stays valid.
//!
//! - **Token file**: read once when the config loads; its time to live is asked of OpenBao
//!   (`auth/token/lookup-self`) at first use. A token that cannot be renewed any more is an
//!   error that says to replace the file's token.
//! - **AppRole**: `auth/<mount>/login` with role_id and secret_id gives a token; when it cannot
//!   be renewed (its max TTL reached) or OpenBao refuses it, the broker logs in again.
//!
//! Either token is renewed (`auth/token/renew-self`) once two thirds of its time to live are
//! gone: at the next request, and by [`OpenBao::keep_renewed`] when there is none, so an idle
//! broker's token does not run out. A token with no time to live (a root token) is never
//! renewed. Tokens are held in `Zeroizing` strings and never printed.

use std::fmt;
use std::time::Duration;

use reqwest::Method;
use serde_json::{json, Value};
use tokio::time::Instant;
use zeroize::Zeroizing;

use super::{BaoError, OpenBao};

/// How the broker logs in to OpenBao. `Debug` shows no secret.
#[derive(Clone)]
pub enum Auth {
    /// A token, read from the config's `token_file`.
    Token(Zeroizing<String>),
    /// AppRole at `mount` (default `approle`).
    AppRole { mount: String, role_id: String, secret_id: Zeroizing<String> },
}

impl fmt::Debug for Auth {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Auth::Token(_) => f.write_str("Token(***)"),
            Auth::AppRole { mount, role_id, .. } => f
                .debug_struct("AppRole")
                .field("mount", mount)
                .field("role_id", role_id)
                .finish_non_exhaustive(),
        }
    }
}

/// The token in use and its clock.
pub(super) struct Session {
    token: Zeroizing<String>,
    /// When to renew: two thirds of the time to live; `None`: never (no TTL).
    renew_at: Option<Instant>,
    /// When it runs out; `None`: never.
    expires_at: Option<Instant>,
    renewable: bool,
}

impl Session {
    fn new(token: Zeroizing<String>, ttl_seconds: u64, renewable: bool) -> Session {
        let now = Instant::now();
        let (renew_at, expires_at) = match ttl_seconds {
            0 => (None, None),
            ttl => (Some(now + Duration::from_secs(ttl) * 2 / 3), Some(now + Duration::from_secs(ttl))),
        };
        Session { token, renew_at, expires_at, renewable }
    }

    fn expired(&self, now: Instant) -> bool {
        self.expires_at.is_some_and(|at| now >= at)
    }
}

/// How long [`OpenBao::keep_renewed`] waits after a failed renewal before it tries again.
const RETRY_RENEWAL: Duration = Duration::from_secs(5);

impl OpenBao {
    /// A valid token: the current one, renewed first when due, or a fresh login.
    pub(super) async fn token(&self) -> Result<Zeroizing<String>, BaoError> {
        let mut session = self.session.lock().await;
        let now = Instant::now();
        if let Some(current) = session.as_ref() {
            if !matches!(current.renew_at, Some(at) if now >= at) {
                return Ok(current.token.clone());
            }
            if current.renewable && !current.expired(now) {
                match self.renew(&current.token).await {
                    Ok(renewed) => {
                        let token = renewed.token.clone();
                        *session = Some(renewed);
                        return Ok(token);
                    }
                    // Still valid: use it, and renew at the next request.
                    Err(BaoError::Unavailable { .. }) => return Ok(current.token.clone()),
                    Err(e) if matches!(self.auth, Auth::Token(_)) => return Err(self.token_lost(e)),
                    Err(_) => {} // AppRole: log in again below.
                }
            } else if matches!(self.auth, Auth::Token(_)) {
                if current.expired(now) {
                    return Err(self.token_lost(self.unavailable("the token's time to live is over".into())));
                }
                // Not renewable, not expired: use it while it lasts.
                return Ok(current.token.clone());
            }
        }
        let fresh = self.log_in().await?;
        let token = fresh.token.clone();
        *session = Some(fresh);
        Ok(token)
    }

    /// Drops `token` if it is still the current one: OpenBao refused it.
    pub(super) async fn forget(&self, token: &str) {
        let mut session = self.session.lock().await;
        if session.as_ref().is_some_and(|s| s.token.as_str() == token) {
            *session = None;
        }
    }

    /// Renews the broker's token whenever two thirds of its time to live are gone, for as
    /// long as the broker runs (spawned by the server): an idle broker's token stays valid.
    /// Failures are logged (without the token) and retried.
    pub async fn keep_renewed(&self) {
        loop {
            let wait = match self.token().await {
                Ok(_) => {
                    let session = self.session.lock().await;
                    match session.as_ref().and_then(|s| s.renew_at) {
                        Some(at) => {
                            at.saturating_duration_since(Instant::now()).max(Duration::from_millis(100))
                        }
                        None => return, // a token without a TTL needs no renewal
                    }
                }
                Err(e) => {
                    tracing::warn!(error = %e, "OpenBao: cannot renew or obtain the broker's token; retrying");
                    RETRY_RENEWAL
                }
            };
            tokio::time::sleep(wait).await;
        }
    }

    /// A new session: the token file's token (its TTL looked up), or an AppRole login.
    async fn log_in(&self) -> Result<Session, BaoError> {
        match &self.auth {
            Auth::Token(token) => {
                let looked_up = self
                    .send(Method::GET, "auth/token/lookup-self", None, Some(token))
                    .await
                    .map_err(|e| self.token_lost(e))?;
                let data = &looked_up["data"];
                let ttl = data["ttl"].as_u64().unwrap_or(0);
                Ok(Session::new(token.clone(), ttl, data["renewable"].as_bool().unwrap_or(false)))
            }
            Auth::AppRole { mount, role_id, secret_id } => {
                let body = json!({ "role_id": role_id, "secret_id": secret_id.as_str() });
                let answer = self.send(Method::POST, &format!("auth/{mount}/login"), Some(&body), None).await;
                let answer = answer.map_err(|e| match e {
                    BaoError::Refused { address, reason } | BaoError::Denied { address, reason } => {
                        BaoError::Denied {
                            address,
                            reason: format!("AppRole login at auth/{mount} failed: {reason}"),
                        }
                    }
                    other => other,
                })?;
                self.session_of(&answer)
            }
        }
    }

    /// `renew-self` with `token`.
    async fn renew(&self, token: &Zeroizing<String>) -> Result<Session, BaoError> {
        let answer = self.send(Method::POST, "auth/token/renew-self", Some(&json!({})), Some(token)).await?;
        self.session_of(&answer)
    }

    /// The session an answer's `auth` block describes.
    fn session_of(&self, answer: &Value) -> Result<Session, BaoError> {
        let auth = &answer["auth"];
        let Some(token) = auth["client_token"].as_str() else {
            return Err(BaoError::Refused {
                address: self.address().to_owned(),
                reason: "the answer holds no token".into(),
            });
        };
        let ttl = auth["lease_duration"].as_u64().unwrap_or(0);
        Ok(Session::new(Zeroizing::new(token.to_owned()), ttl, auth["renewable"].as_bool().unwrap_or(false)))
    }

    /// The token file's token no longer works: say what to do.
    fn token_lost(&self, e: BaoError) -> BaoError {
        match e {
            BaoError::Denied { address, reason } | BaoError::Refused { address, reason } => {
                BaoError::Denied {
                    address,
                    reason: format!(
                    "the token from token_file is not valid ({reason}): put a valid token into the file and \
                     restart the broker"
                ),
                }
            }
            BaoError::Unavailable { address, reason } if reason.contains("time to live") => {
                BaoError::Denied {
                    address,
                    reason: format!(
                    "the token from token_file expired and could not be renewed ({reason}): put a new token \
                     into the file and restart the broker"
                ),
                }
            }
            other => other,
        }
    }
}

//! A small Open Service Broker API client: what a platform sends, for the tools that drive a
//! broker from outside (`blackbox`, `bench`). One HTTP connection pool, basic auth, API version
//! 2.17, `accepts_incomplete=true` with `last_operation` polling. Errors name the request and the
//! status, never the credentials.

use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};

/// The OSB API version sent with every request.
pub const API_VERSION: &str = "2.17";

/// Where a broker is and how to authenticate to it.
#[derive(Clone)]
pub struct BrokerTarget {
    /// Base URL, e.g. `http://10.0.0.5:8080` (no trailing slash needed).
    pub url: String,
    pub username: String,
    pub password: String,
    /// Accept any TLS certificate of the broker (test deployments with self-signed certs).
    pub skip_tls_verification: bool,
}

impl std::fmt::Debug for BrokerTarget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BrokerTarget")
            .field("url", &self.url)
            .field("username", &self.username)
            .finish_non_exhaustive()
    }
}

/// A broker's answer: status and JSON body (`null` when the body is not JSON).
#[derive(Debug, Clone)]
pub struct Answer {
    pub status: StatusCode,
    pub body: Value,
}

impl Answer {
    /// The OSB `description` (or `error`) of an error answer, for messages.
    pub fn reason(&self) -> String {
        let text = self.body.get("description").or(self.body.get("error")).and_then(Value::as_str);
        match text {
            Some(text) => format!("{} ({text})", self.status),
            None => self.status.to_string(),
        }
    }
}

/// The service and plan a test or benchmark provisions.
#[derive(Debug, Clone)]
pub struct Offering {
    pub service_id: String,
    pub plan_id: String,
}

/// An OSB client bound to one broker.
#[derive(Debug, Clone)]
pub struct OsbClient {
    http: reqwest::Client,
    target: BrokerTarget,
}

impl OsbClient {
    /// A client with `timeout` per request.
    pub fn new(target: BrokerTarget, timeout: Duration) -> Result<Self> {
        let http = reqwest::Client::builder()
            .timeout(timeout)
            .danger_accept_invalid_certs(target.skip_tls_verification)
            .build()
            .context("cannot build the HTTP client")?;
        let mut target = target;
        target.url = target.url.trim_end_matches('/').to_owned();
        Ok(OsbClient { http, target })
    }

    /// Sends one request; a transport failure is an error, any HTTP status is an answer.
    pub async fn call(&self, method: Method, path: &str, body: Option<Value>) -> Result<Answer> {
        let mut request = self
            .http
            .request(method.clone(), format!("{}{path}", self.target.url))
            .basic_auth(&self.target.username, Some(&self.target.password))
            .header("X-Broker-API-Version", API_VERSION);
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response =
            request.send().await.map_err(|e| anyhow!("{method} {path}: {}", transport_error(&e)))?;
        let status = response.status();
        let bytes =
            response.bytes().await.map_err(|e| anyhow!("{method} {path}: {}", transport_error(&e)))?;
        let body = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
        Ok(Answer { status, body })
    }

    /// GET /v2/catalog, then the service and plan named (the first bindable ones when `None`).
    pub async fn offering(&self, service: Option<&str>, plan: Option<&str>) -> Result<Offering> {
        let answer = self.call(Method::GET, "/v2/catalog", None).await?;
        if answer.status != StatusCode::OK {
            bail!("GET /v2/catalog answered {}", answer.reason());
        }
        let services = answer.body["services"].as_array().context("the catalog has no services list")?;
        let service = match service {
            Some(name) => services.iter().find(|s| s["name"] == name).with_context(|| {
                format!("the catalog has no service named '{name}' (it has: {})", names(services))
            })?,
            None => services
                .iter()
                .find(|s| s["bindable"].as_bool().unwrap_or(false))
                .context("the catalog has no bindable service")?,
        };
        let plans = service["plans"].as_array().context("the service has no plans list")?;
        let plan = match plan {
            Some(name) => plans
                .iter()
                .find(|p| p["name"] == name)
                .with_context(|| format!("service has no plan named '{name}' (it has: {})", names(plans)))?,
            None => plans.first().context("the service has no plans")?,
        };
        let text = |v: &Value| v.as_str().map(str::to_owned).context("a catalog id or name is not a string");
        Ok(Offering { service_id: text(&service["id"])?, plan_id: text(&plan["id"])? })
    }

    /// Provisions `instance`; waits for an asynchronous provision to finish. Returns the status
    /// of the PUT (201, 200 or 202).
    pub async fn provision(
        &self,
        offering: &Offering,
        instance: &str,
        deadline: Duration,
    ) -> Result<StatusCode> {
        let body = json!({
            "service_id": offering.service_id,
            "plan_id": offering.plan_id,
            "organization_guid": "etcd-broker-ops",
            "space_guid": "etcd-broker-ops",
            "context": { "platform": "etcd-broker-ops" },
        });
        let path = format!("/v2/service_instances/{instance}?accepts_incomplete=true");
        let answer = self.call(Method::PUT, &path, Some(body)).await?;
        match answer.status {
            StatusCode::CREATED | StatusCode::OK => Ok(answer.status),
            StatusCode::ACCEPTED => {
                self.wait_for_operation(
                    &format!("/v2/service_instances/{instance}/last_operation"),
                    deadline,
                )
                .await?;
                Ok(answer.status)
            }
            _ => bail!("provision answered {}", answer.reason()),
        }
    }

    /// Binds; returns the credentials of a 201 or 200.
    pub async fn bind(
        &self,
        offering: &Offering,
        instance: &str,
        binding: &str,
    ) -> Result<(StatusCode, Value)> {
        let body = json!({ "service_id": offering.service_id, "plan_id": offering.plan_id });
        let path =
            format!("/v2/service_instances/{instance}/service_bindings/{binding}?accepts_incomplete=true");
        let answer = self.call(Method::PUT, &path, Some(body)).await?;
        match answer.status {
            StatusCode::CREATED | StatusCode::OK => {
                let credentials =
                    answer.body.get("credentials").cloned().context("the bind answer has no credentials")?;
                Ok((answer.status, credentials))
            }
            _ => bail!("bind answered {}", answer.reason()),
        }
    }

    /// GET of a binding: its credentials.
    pub async fn fetch_binding(&self, instance: &str, binding: &str) -> Result<Value> {
        let path = format!("/v2/service_instances/{instance}/service_bindings/{binding}");
        let answer = self.call(Method::GET, &path, None).await?;
        if answer.status != StatusCode::OK {
            bail!("GET binding answered {}", answer.reason());
        }
        answer.body.get("credentials").cloned().context("the binding has no credentials")
    }

    /// DELETE of a binding; the status (200, or 410 when it is already gone).
    pub async fn unbind(&self, offering: &Offering, instance: &str, binding: &str) -> Result<StatusCode> {
        let path = format!(
            "/v2/service_instances/{instance}/service_bindings/{binding}?service_id={}&plan_id={}&accepts_incomplete=true",
            offering.service_id, offering.plan_id
        );
        self.delete(
            &path,
            &format!("/v2/service_instances/{instance}/service_bindings/{binding}/last_operation"),
        )
        .await
    }

    /// DELETE of an instance; the status (200, or 410 when it is already gone).
    pub async fn deprovision(&self, offering: &Offering, instance: &str) -> Result<StatusCode> {
        let path = format!(
            "/v2/service_instances/{instance}?service_id={}&plan_id={}&accepts_incomplete=true",
            offering.service_id, offering.plan_id
        );
        self.delete(&path, &format!("/v2/service_instances/{instance}/last_operation")).await
    }

    async fn delete(&self, path: &str, last_operation: &str) -> Result<StatusCode> {
        let answer = self.call(Method::DELETE, path, None).await?;
        match answer.status {
            StatusCode::OK | StatusCode::GONE => Ok(answer.status),
            StatusCode::ACCEPTED => {
                self.wait_for_operation(last_operation, Duration::from_secs(60)).await?;
                Ok(StatusCode::OK)
            }
            _ => bail!("DELETE answered {}", answer.reason()),
        }
    }

    async fn wait_for_operation(&self, path: &str, deadline: Duration) -> Result<()> {
        let until = Instant::now() + deadline;
        loop {
            let answer = self.call(Method::GET, path, None).await?;
            match (answer.status, answer.body["state"].as_str()) {
                (StatusCode::OK, Some("succeeded")) | (StatusCode::GONE, _) => return Ok(()),
                (StatusCode::OK, Some("failed")) => bail!("the operation failed: {}", answer.reason()),
                (StatusCode::OK, _) => {}
                _ => bail!("last_operation answered {}", answer.reason()),
            }
            if Instant::now() > until {
                bail!("the operation did not finish within {deadline:?}");
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}

fn names(items: &[Value]) -> String {
    items.iter().filter_map(|i| i["name"].as_str()).collect::<Vec<_>>().join(", ")
}

/// "connection refused", "timed out", ... without the URL's user info (reqwest's Display shows
/// the URL, which never holds credentials here, but keep messages short).
fn transport_error(e: &reqwest::Error) -> String {
    let kind = if e.is_timeout() {
        "timed out"
    } else if e.is_connect() {
        "cannot connect"
    } else {
        "request failed"
    };
    let mut source: Option<&dyn std::error::Error> = std::error::Error::source(e);
    let mut detail = String::new();
    while let Some(inner) = source {
        detail = inner.to_string();
        source = inner.source();
    }
    if detail.is_empty() {
        kind.to_owned()
    } else {
        format!("{kind}: {detail}")
    }
}

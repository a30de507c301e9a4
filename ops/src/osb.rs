//! A small Open Service Broker API client: what a platform sends, for the tools that drive a
//! broker from outside (`blackbox`, xtask's `bench`) and for the integration tests. One HTTP
//! connection pool, basic auth, API version 2.17. Errors name the request and the status,
//! never the credentials.
//!
//! Three layers, each built on the one before, so a test that judges a raw answer and a tool
//! that wants an outcome send the same requests:
//! - [`OsbClient::request`] / [`OsbClient::send`] / [`OsbClient::call`]: any request, the answer
//!   with status, JSON body and headers (tests of the protocol: bad headers, bad bodies);
//! - one method per OSB endpoint (`put_instance`, `get_binding`, ...): the raw [`Answer`];
//! - the lifecycle (`provision`, `bind`, `unbind`, `deprovision`, `fetch_binding`):
//!   `accepts_incomplete=true`, `last_operation` polling, an error for any unexpected status.

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

/// A broker's answer: status, JSON body (`null` when the body is not JSON) and headers.
#[derive(Debug, Clone)]
pub struct Answer {
    pub status: StatusCode,
    pub body: Value,
    pub headers: reqwest::header::HeaderMap,
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
    /// Bind parameter names the plan's catalog schema lists (`access`, `key_prefix`); empty when
    /// the plan takes none.
    pub bind_parameters: Vec<String>,
    /// The catalog says the plan's bindings can be rotated (`binding_rotatable`, OSB 2.17).
    pub rotatable: bool,
}

impl Offering {
    /// The body of a provision (PUT instance) of this plan, as a platform sends it.
    pub fn provision_body(&self) -> Value {
        json!({
            "service_id": self.service_id,
            "plan_id": self.plan_id,
            "organization_guid": "etcd-broker-ops",
            "space_guid": "etcd-broker-ops",
            "context": { "platform": "etcd-broker-ops" },
        })
    }

    /// The body of a bind (PUT binding) or an update (PATCH instance) to this plan.
    pub fn plan_body(&self) -> Value {
        json!({ "service_id": self.service_id, "plan_id": self.plan_id })
    }

    /// The query a DELETE of an instance or binding of this plan carries.
    fn delete_query(&self) -> String {
        format!("service_id={}&plan_id={}", self.service_id, self.plan_id)
    }
}

/// Whether a request accepts an asynchronous answer (202 + `operation`): the lifecycle methods
/// do; tests of the synchronous protocol do not.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Incomplete {
    Accepted,
    Refused,
}

impl Incomplete {
    /// `path` with `accepts_incomplete=true` appended when accepted.
    fn add_to(self, path: String) -> String {
        match self {
            Incomplete::Refused => path,
            Incomplete::Accepted if path.contains('?') => format!("{path}&accepts_incomplete=true"),
            Incomplete::Accepted => format!("{path}?accepts_incomplete=true"),
        }
    }
}

fn instance_path(instance: &str) -> String {
    format!("/v2/service_instances/{instance}")
}

fn binding_path(instance: &str, binding: &str) -> String {
    format!("/v2/service_instances/{instance}/service_bindings/{binding}")
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

    /// The broker's base URL, without a trailing slash.
    pub fn url(&self) -> &str {
        &self.target.url
    }

    /// The HTTP client, for requests that must differ from a platform's in auth or headers.
    pub fn http(&self) -> &reqwest::Client {
        &self.http
    }

    /// A request as a platform sends it (basic auth, API version), for the caller to add
    /// headers or a body to, then [`OsbClient::send`].
    pub fn request(&self, method: Method, path: &str) -> reqwest::RequestBuilder {
        self.http
            .request(method, format!("{}{path}", self.target.url))
            .basic_auth(&self.target.username, Some(&self.target.password))
            .header("X-Broker-API-Version", API_VERSION)
    }

    /// Sends a request; a transport failure is an error, any HTTP status is an answer.
    pub async fn send(request: reqwest::RequestBuilder) -> Result<Answer> {
        let what = request
            .try_clone()
            .and_then(|r| r.build().ok())
            .map(|r| format!("{} {}", r.method(), r.url().path()))
            .unwrap_or_else(|| "request".to_owned());
        let response = request.send().await.map_err(|e| anyhow!("{what}: {}", transport_error(&e)))?;
        let status = response.status();
        let headers = response.headers().clone();
        let bytes = response.bytes().await.map_err(|e| anyhow!("{what}: {}", transport_error(&e)))?;
        let body = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
        Ok(Answer { status, body, headers })
    }

    /// Sends one request with an optional JSON body; any HTTP status is an answer.
    pub async fn call(&self, method: Method, path: &str, body: Option<Value>) -> Result<Answer> {
        let mut request = self.request(method, path);
        if let Some(body) = body {
            request = request.json(&body);
        }
        Self::send(request).await
    }

    /// PUT /v2/service_instances/{instance}: the raw answer.
    pub async fn put_instance(&self, instance: &str, body: &Value, incomplete: Incomplete) -> Result<Answer> {
        self.call(Method::PUT, &incomplete.add_to(instance_path(instance)), Some(body.clone())).await
    }

    /// PATCH /v2/service_instances/{instance}: the raw answer.
    pub async fn patch_instance(
        &self,
        instance: &str,
        body: &Value,
        incomplete: Incomplete,
    ) -> Result<Answer> {
        self.call(Method::PATCH, &incomplete.add_to(instance_path(instance)), Some(body.clone())).await
    }

    /// GET /v2/service_instances/{instance}: the raw answer.
    pub async fn get_instance(&self, instance: &str) -> Result<Answer> {
        self.call(Method::GET, &instance_path(instance), None).await
    }

    /// DELETE /v2/service_instances/{instance}?service_id=..&plan_id=..: the raw answer.
    pub async fn delete_instance(
        &self,
        offering: &Offering,
        instance: &str,
        incomplete: Incomplete,
    ) -> Result<Answer> {
        let path = format!("{}?{}", instance_path(instance), offering.delete_query());
        self.call(Method::DELETE, &incomplete.add_to(path), None).await
    }

    /// PUT /v2/service_instances/{instance}/service_bindings/{binding}: the raw answer.
    pub async fn put_binding(
        &self,
        instance: &str,
        binding: &str,
        body: &Value,
        incomplete: Incomplete,
    ) -> Result<Answer> {
        self.call(Method::PUT, &incomplete.add_to(binding_path(instance, binding)), Some(body.clone())).await
    }

    /// GET /v2/service_instances/{instance}/service_bindings/{binding}: the raw answer.
    pub async fn get_binding(&self, instance: &str, binding: &str) -> Result<Answer> {
        self.call(Method::GET, &binding_path(instance, binding), None).await
    }

    /// DELETE /v2/service_instances/{instance}/service_bindings/{binding}?service_id=..&plan_id=..:
    /// the raw answer.
    pub async fn delete_binding(
        &self,
        offering: &Offering,
        instance: &str,
        binding: &str,
        incomplete: Incomplete,
    ) -> Result<Answer> {
        let path = format!("{}?{}", binding_path(instance, binding), offering.delete_query());
        self.call(Method::DELETE, &incomplete.add_to(path), None).await
    }

    /// GET .../last_operation of an instance (`binding` None) or a binding: the raw answer.
    pub async fn last_operation(&self, instance: &str, binding: Option<&str>) -> Result<Answer> {
        let resource = match binding {
            Some(binding) => binding_path(instance, binding),
            None => instance_path(instance),
        };
        self.call(Method::GET, &format!("{resource}/last_operation"), None).await
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
        let schema = &plan["schemas"]["service_binding"]["create"]["parameters"]["properties"];
        let bind_parameters = schema.as_object().map(|p| p.keys().cloned().collect()).unwrap_or_default();
        Ok(Offering {
            service_id: text(&service["id"])?,
            plan_id: text(&plan["id"])?,
            bind_parameters,
            rotatable: plan["binding_rotatable"].as_bool().unwrap_or(false),
        })
    }

    /// Provisions `instance`; waits for an asynchronous provision to finish. Returns the status
    /// of the PUT (201, 200 or 202).
    pub async fn provision(
        &self,
        offering: &Offering,
        instance: &str,
        deadline: Duration,
    ) -> Result<StatusCode> {
        let answer = self.put_instance(instance, &offering.provision_body(), Incomplete::Accepted).await?;
        match answer.status {
            StatusCode::CREATED | StatusCode::OK => Ok(answer.status),
            StatusCode::ACCEPTED => {
                self.wait_for_operation(instance, None, deadline).await?;
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
        self.bind_with(offering, instance, binding, None).await
    }

    /// [`OsbClient::bind`] with bind `parameters`.
    pub async fn bind_with(
        &self,
        offering: &Offering,
        instance: &str,
        binding: &str,
        parameters: Option<Value>,
    ) -> Result<(StatusCode, Value)> {
        let mut body = offering.plan_body();
        if let Some(parameters) = parameters {
            body["parameters"] = parameters;
        }
        let answer = self.put_binding(instance, binding, &body, Incomplete::Accepted).await?;
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
        let answer = self.get_binding(instance, binding).await?;
        if answer.status != StatusCode::OK {
            bail!("GET binding answered {}", answer.reason());
        }
        answer.body.get("credentials").cloned().context("the binding has no credentials")
    }

    /// DELETE of a binding; the status (200, or 410 when it is already gone).
    pub async fn unbind(&self, offering: &Offering, instance: &str, binding: &str) -> Result<StatusCode> {
        let answer = self.delete_binding(offering, instance, binding, Incomplete::Accepted).await?;
        self.deleted(answer, instance, Some(binding)).await
    }

    /// DELETE of an instance; the status (200, or 410 when it is already gone).
    pub async fn deprovision(&self, offering: &Offering, instance: &str) -> Result<StatusCode> {
        let answer = self.delete_instance(offering, instance, Incomplete::Accepted).await?;
        self.deleted(answer, instance, None).await
    }

    /// The outcome of a DELETE's answer, waiting for an asynchronous one.
    async fn deleted(&self, answer: Answer, instance: &str, binding: Option<&str>) -> Result<StatusCode> {
        match answer.status {
            StatusCode::OK | StatusCode::GONE => Ok(answer.status),
            StatusCode::ACCEPTED => {
                self.wait_for_operation(instance, binding, Duration::from_secs(60)).await?;
                Ok(StatusCode::OK)
            }
            _ => bail!("DELETE answered {}", answer.reason()),
        }
    }

    /// Polls `last_operation` until the operation succeeded (or the resource is gone).
    async fn wait_for_operation(
        &self,
        instance: &str,
        binding: Option<&str>,
        deadline: Duration,
    ) -> Result<()> {
        let until = Instant::now() + deadline;
        loop {
            let answer = self.last_operation(instance, binding).await?;
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_incomplete_joins_the_query_it_finds() {
        let offering = Offering {
            service_id: "s".into(),
            plan_id: "p".into(),
            bind_parameters: vec![],
            rotatable: false,
        };
        let path = format!("{}?{}", binding_path("i", "b"), offering.delete_query());
        assert_eq!(
            Incomplete::Accepted.add_to(path.clone()),
            "/v2/service_instances/i/service_bindings/b?service_id=s&plan_id=p&accepts_incomplete=true"
        );
        assert_eq!(Incomplete::Refused.add_to(path.clone()), path);
        assert_eq!(
            Incomplete::Accepted.add_to(instance_path("i")),
            "/v2/service_instances/i?accepts_incomplete=true"
        );
    }
}

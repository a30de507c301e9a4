//! The part of the Cloud Foundry v3 API that registering a service broker needs: UAA login,
//! service brokers (create, update, delete, with their asynchronous jobs), service plans and
//! their visibility, organizations by name. Messages quote CF's error `detail`s, never a token,
//! password or response body.

use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};

/// How to log in to UAA.
pub enum Login {
    /// The password grant with CF's public client `cf` (an admin user).
    User { username: String, password: String },
    /// The client-credentials grant (a UAA client with cloud_controller.admin).
    Client { id: String, secret: String },
}

/// A logged-in CF API client.
pub struct CfClient {
    http: reqwest::Client,
    api: String,
    token: String,
    job_timeout: Duration,
}

/// A service broker as CF knows it.
#[derive(Debug, Clone)]
pub struct Broker {
    pub guid: String,
}

/// A service plan of a broker.
#[derive(Debug, Clone)]
pub struct Plan {
    pub guid: String,
    pub name: String,
    pub offering: String,
}

impl CfClient {
    /// Finds UAA from the API root and logs in.
    pub async fn login(
        api: &str,
        login: &Login,
        skip_tls_verification: bool,
        ca_pem: Option<&str>,
        timeout: Duration,
    ) -> Result<CfClient> {
        let mut builder =
            reqwest::Client::builder().timeout(timeout).danger_accept_invalid_certs(skip_tls_verification);
        if let Some(pem) = ca_pem {
            let certificate =
                reqwest::Certificate::from_pem(pem.as_bytes()).context("the CF CA certificate is not PEM")?;
            builder = builder.add_root_certificate(certificate);
        }
        let http = builder.build().context("cannot build the HTTP client")?;
        let api = api.trim_end_matches('/').to_owned();
        let root: Value = read(http.get(format!("{api}/")).send().await, "GET /", &api).await?.1;
        let uaa = root["links"]["uaa"]["href"]
            .as_str()
            .or(root["links"]["login"]["href"].as_str())
            .with_context(|| format!("{api}/ names no UAA (links.uaa / links.login): is this a CF API?"))?
            .trim_end_matches('/')
            .to_owned();
        let request = http.post(format!("{uaa}/oauth/token")).header("Accept", "application/json");
        let request = match login {
            Login::User { username, password } => request.basic_auth("cf", Some("")).form(&[
                ("grant_type", "password"),
                ("username", username),
                ("password", password),
            ]),
            Login::Client { id, secret } => {
                request.basic_auth(id, Some(secret)).form(&[("grant_type", "client_credentials")])
            }
        };
        let response = request.send().await.map_err(|e| anyhow!("UAA login at {uaa}: {}", transport(&e)))?;
        let status = response.status();
        if status == StatusCode::UNAUTHORIZED || status == StatusCode::BAD_REQUEST {
            bail!("UAA at {uaa} refused the login ({status}): wrong user, password or client?");
        }
        if !status.is_success() {
            bail!("UAA login at {uaa} answered {status}");
        }
        let body: Value =
            response.json().await.map_err(|_| anyhow!("UAA at {uaa} answered no JSON token"))?;
        let token = body["access_token"].as_str().context("UAA answered no access_token")?.to_owned();
        Ok(CfClient { http, api, token, job_timeout: Duration::from_secs(300) })
    }

    /// One API call; a 4xx/5xx becomes an error quoting CF's error details.
    async fn call(
        &self,
        method: Method,
        path: &str,
        body: Option<Value>,
    ) -> Result<(StatusCode, Value, Option<String>)> {
        let url = if path.starts_with("http") { path.to_owned() } else { format!("{}{path}", self.api) };
        let mut request = self.http.request(method.clone(), &url).bearer_auth(&self.token);
        if let Some(body) = body {
            request = request.json(&body);
        }
        let what = format!("{method} {}", path.strip_prefix(&self.api).unwrap_or(path));
        let response = request.send().await;
        let location = response
            .as_ref()
            .ok()
            .and_then(|r| r.headers().get("location"))
            .and_then(|l| l.to_str().ok())
            .map(str::to_owned);
        let (status, body) = read(response, &what, &self.api).await?;
        Ok((status, body, location))
    }

    /// The broker called `name`, if CF has one.
    pub async fn find_broker(&self, name: &str) -> Result<Option<Broker>> {
        let (_, body, _) =
            self.call(Method::GET, &format!("/v3/service_brokers?names={}", encode(name)), None).await?;
        Ok(body["resources"]
            .as_array()
            .and_then(|r| r.first())
            .and_then(|b| b["guid"].as_str())
            .map(|guid| Broker { guid: guid.to_owned() }))
    }

    /// Creates a broker (space-scoped when `space_guid` is given) and waits for CF to fetch its catalog.
    pub async fn create_broker(
        &self,
        name: &str,
        url: &str,
        user: &str,
        password: &str,
        space_guid: Option<&str>,
    ) -> Result<()> {
        let mut body = json!({ "name": name, "url": url, "authentication": basic(user, password) });
        if let Some(space) = space_guid {
            body["relationships"] = json!({ "space": { "data": { "guid": space } } });
        }
        let (_, _, location) = self.call(Method::POST, "/v3/service_brokers", Some(body)).await?;
        self.wait_for_job(location).await.context("creating the service broker")
    }

    /// Points an existing broker at `url` with these credentials and waits for the catalog refresh.
    pub async fn update_broker(&self, broker: &Broker, url: &str, user: &str, password: &str) -> Result<()> {
        let body = json!({ "url": url, "authentication": basic(user, password) });
        let path = format!("/v3/service_brokers/{}", broker.guid);
        let (_, _, location) = self.call(Method::PATCH, &path, Some(body)).await?;
        self.wait_for_job(location).await.context("updating the service broker")
    }

    /// Deletes a broker; CF refuses while service instances of it exist.
    pub async fn delete_broker(&self, broker: &Broker) -> Result<()> {
        let path = format!("/v3/service_brokers/{}", broker.guid);
        let (_, _, location) = self.call(Method::DELETE, &path, None).await?;
        self.wait_for_job(location).await.context("deleting the service broker")
    }

    /// Every plan of the broker, following pagination.
    pub async fn plans(&self, broker_name: &str) -> Result<Vec<Plan>> {
        let mut plans = Vec::new();
        let mut next = Some(format!(
            "/v3/service_plans?service_broker_names={}&include=service_offering",
            encode(broker_name)
        ));
        while let Some(path) = next {
            let (_, body, _) = self.call(Method::GET, &path, None).await?;
            let offerings: Vec<(String, String)> = body["included"]["service_offerings"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|o| Some((o["guid"].as_str()?.to_owned(), o["name"].as_str()?.to_owned())))
                .collect();
            for plan in body["resources"].as_array().into_iter().flatten() {
                let offering_guid =
                    plan["relationships"]["service_offering"]["data"]["guid"].as_str().unwrap_or_default();
                plans.push(Plan {
                    guid: plan["guid"].as_str().context("a plan without guid")?.to_owned(),
                    name: plan["name"].as_str().unwrap_or("?").to_owned(),
                    offering: offerings
                        .iter()
                        .find(|(guid, _)| guid == offering_guid)
                        .map_or_else(|| offering_guid.to_owned(), |(_, name)| name.clone()),
                });
            }
            next = body["pagination"]["next"]["href"].as_str().map(str::to_owned);
        }
        Ok(plans)
    }

    /// Makes a plan visible to everybody.
    pub async fn make_public(&self, plan: &Plan) -> Result<()> {
        let path = format!("/v3/service_plans/{}/visibility", plan.guid);
        self.call(Method::PATCH, &path, Some(json!({ "type": "public" }))).await?;
        Ok(())
    }

    /// Adds organizations to a plan's visibility (those it already has stay).
    pub async fn add_orgs(&self, plan: &Plan, org_guids: &[String]) -> Result<()> {
        let path = format!("/v3/service_plans/{}/visibility", plan.guid);
        let organizations: Vec<Value> = org_guids.iter().map(|g| json!({ "guid": g })).collect();
        self.call(
            Method::POST,
            &path,
            Some(json!({ "type": "organization", "organizations": organizations })),
        )
        .await?;
        Ok(())
    }

    /// GUIDs of organizations by name; a name CF does not know is an error.
    pub async fn org_guids(&self, names: &[String]) -> Result<Vec<String>> {
        let query = names.iter().map(|n| encode(n)).collect::<Vec<_>>().join(",");
        let (_, body, _) =
            self.call(Method::GET, &format!("/v3/organizations?names={query}&per_page=5000"), None).await?;
        let found: Vec<(&str, &str)> = body["resources"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|o| Some((o["name"].as_str()?, o["guid"].as_str()?)))
            .collect();
        names
            .iter()
            .map(|name| {
                found
                    .iter()
                    .find(|(n, _)| n == name)
                    .map(|(_, guid)| (*guid).to_owned())
                    .with_context(|| format!("CF has no organization named '{name}'"))
            })
            .collect()
    }

    /// Polls an asynchronous job (the `Location` of a 202) until it completes.
    async fn wait_for_job(&self, location: Option<String>) -> Result<()> {
        let Some(job) = location else { return Ok(()) }; // synchronous answer
        let until = Instant::now() + self.job_timeout;
        loop {
            let (_, body, _) = self.call(Method::GET, &job, None).await?;
            match body["state"].as_str() {
                Some("COMPLETE") => return Ok(()),
                Some("FAILED") => {
                    bail!("CF's job failed: {}", errors(&body).unwrap_or_else(|| "no detail".into()))
                }
                _ if Instant::now() > until => bail!("CF's job did not finish within {:?}", self.job_timeout),
                _ => tokio::time::sleep(Duration::from_millis(500)).await,
            }
        }
    }
}

fn basic(user: &str, password: &str) -> Value {
    json!({ "type": "basic", "credentials": { "username": user, "password": password } })
}

/// Status and JSON body of a response; a failed request or an error status is an error.
async fn read(
    response: reqwest::Result<reqwest::Response>,
    what: &str,
    api: &str,
) -> Result<(StatusCode, Value)> {
    let response = response.map_err(|e| anyhow!("{what} at {api}: {}", transport(&e)))?;
    let status = response.status();
    let body = match response.bytes().await {
        Ok(bytes) => serde_json::from_slice(&bytes).unwrap_or(Value::Null),
        Err(_) => Value::Null,
    };
    if !status.is_success() {
        let detail = errors(&body).map(|d| format!(": {d}")).unwrap_or_default();
        bail!("{what} answered {status}{detail}");
    }
    Ok((status, body))
}

/// CF's `errors[].detail` (or `title`), joined.
fn errors(body: &Value) -> Option<String> {
    let details: Vec<&str> = body["errors"]
        .as_array()?
        .iter()
        .filter_map(|e| e["detail"].as_str().or(e["title"].as_str()))
        .collect();
    (!details.is_empty()).then(|| details.join("; "))
}

fn encode(text: &str) -> String {
    url::form_urlencoded::byte_serialize(text.as_bytes()).collect()
}

fn transport(e: &reqwest::Error) -> &'static str {
    if e.is_timeout() {
        "timed out"
    } else if e.is_connect() {
        "cannot connect"
    } else {
        "request failed"
    }
}

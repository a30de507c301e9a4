//! `etcd-broker-ops register` / `deregister` against a fake Cloud Foundry: a CF v3 API + UAA in
//! this process (in-memory brokers, plans, visibilities and organizations; asynchronous jobs that
//! finish on the second poll; plans paginated one per page), recording every call.

use crate::common;

use std::collections::BTreeMap;
use std::process::{Command, Output};
use std::sync::{Arc, Mutex};

use actix_web::{web, App, HttpRequest, HttpResponse, HttpServer};
use serde_json::{json, Value};

use common::OPS;
const CF_PASSWORD: &str = "cf-admin-Pa55";
const CLIENT_SECRET: &str = "registrar-client-S3cret";
const TOKEN: &str = "token-abc-123";
const BROKER_PASSWORD: &str = "broker-pw-XYZ";

#[derive(Debug, Clone)]
struct Broker {
    name: String,
    url: String,
    username: String,
    password: String,
    space: Option<String>,
}

#[derive(Debug, Default)]
struct Cf {
    base: String,
    calls: Vec<String>,
    brokers: BTreeMap<String, Broker>,
    /// plan guid -> (broker guid, plan name, visibility, orgs)
    plans: BTreeMap<String, (String, String, String, Vec<String>)>,
    jobs: BTreeMap<String, (u32, bool)>,
    has_instances: bool,
    fail_jobs: bool,
    next: u32,
}

impl Cf {
    fn id(&mut self, kind: &str) -> String {
        self.next += 1;
        format!("{kind}-{}", self.next)
    }
    fn job(&mut self) -> HttpResponse {
        let guid = self.id("job");
        self.jobs.insert(guid.clone(), (0, self.fail_jobs));
        HttpResponse::Accepted().insert_header(("Location", format!("{}/v3/jobs/{guid}", self.base))).finish()
    }
}

type State = Arc<Mutex<Cf>>;

fn authorized(request: &HttpRequest) -> bool {
    request.headers().get("authorization").and_then(|h| h.to_str().ok()) == Some(&format!("Bearer {TOKEN}"))
}

fn query(request: &HttpRequest, key: &str) -> Option<String> {
    url::form_urlencoded::parse(request.query_string().as_bytes())
        .find(|(k, _)| k == key)
        .map(|(_, v)| v.into_owned())
}

fn error(status: u16, detail: &str) -> HttpResponse {
    HttpResponse::build(actix_web::http::StatusCode::from_u16(status).unwrap())
        .json(json!({ "errors": [{ "detail": detail, "title": "CF-Error", "code": 10008 }] }))
}

async fn handle(request: HttpRequest, body: web::Bytes, state: web::Data<State>) -> HttpResponse {
    let mut cf = state.lock().unwrap();
    let method = request.method().as_str().to_owned();
    let path = request.path().to_owned();
    cf.calls.push(format!("{method} {path}"));
    let raw = body.to_vec();
    let body: Value = serde_json::from_slice(&raw).unwrap_or(Value::Null);
    let segments: Vec<&str> = path.trim_matches('/').split('/').collect();
    if path == "/" {
        return HttpResponse::Ok().json(
            json!({ "links": { "uaa": { "href": cf.base.clone() }, "login": { "href": cf.base.clone() } } }),
        );
    }
    if path == "/oauth/token" {
        let form: BTreeMap<String, String> = url::form_urlencoded::parse(&raw).into_owned().collect();
        let basic = request
            .headers()
            .get("authorization")
            .and_then(|h| h.to_str().ok())
            .unwrap_or_default()
            .to_owned();
        let expect_basic = |user: &str, password: &str| {
            use base64::Engine;
            format!(
                "Basic {}",
                base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"))
            )
        };
        let ok = match form.get("grant_type").map(String::as_str) {
            Some("password") => {
                basic == expect_basic("cf", "")
                    && form.get("username").map(String::as_str) == Some("admin")
                    && form.get("password").map(String::as_str) == Some(CF_PASSWORD)
            }
            Some("client_credentials") => basic == expect_basic("registrar", CLIENT_SECRET),
            _ => false,
        };
        return if ok {
            HttpResponse::Ok().json(json!({ "access_token": TOKEN, "token_type": "bearer" }))
        } else {
            HttpResponse::Unauthorized()
                .json(json!({ "error": "unauthorized", "error_description": "Bad credentials" }))
        };
    }
    if !authorized(&request) {
        return error(401, "Invalid Auth Token");
    }
    match (method.as_str(), segments.as_slice()) {
        ("GET", ["v3", "service_brokers"]) => {
            let names = query(&request, "names").unwrap_or_default();
            let resources: Vec<Value> = cf
                .brokers
                .iter()
                .filter(|(_, b)| names.split(',').any(|n| n == b.name))
                .map(|(guid, b)| json!({ "guid": guid, "name": b.name, "url": b.url }))
                .collect();
            HttpResponse::Ok().json(json!({ "resources": resources, "pagination": { "next": null } }))
        }
        ("POST", ["v3", "service_brokers"]) => {
            let guid = cf.id("broker");
            let broker = Broker {
                name: body["name"].as_str().unwrap().into(),
                url: body["url"].as_str().unwrap().into(),
                username: body["authentication"]["credentials"]["username"].as_str().unwrap().into(),
                password: body["authentication"]["credentials"]["password"].as_str().unwrap().into(),
                space: body["relationships"]["space"]["data"]["guid"].as_str().map(Into::into),
            };
            cf.brokers.insert(guid.clone(), broker);
            for plan in ["shared", "large"] {
                let plan_guid = cf.id("plan");
                cf.plans.insert(plan_guid, (guid.clone(), plan.into(), "admin".into(), vec![]));
            }
            cf.job()
        }
        ("PATCH", ["v3", "service_brokers", guid]) => {
            let guid = guid.to_string();
            let Some(broker) = cf.brokers.get_mut(&guid) else {
                return error(404, "Service broker not found");
            };
            broker.url = body["url"].as_str().unwrap().into();
            broker.username = body["authentication"]["credentials"]["username"].as_str().unwrap().into();
            broker.password = body["authentication"]["credentials"]["password"].as_str().unwrap().into();
            cf.job()
        }
        ("DELETE", ["v3", "service_brokers", guid]) => {
            if cf.has_instances {
                return error(422, "Can not remove brokers that have associated service instances: my-etcd");
            }
            let guid = guid.to_string();
            cf.brokers.remove(&guid);
            cf.plans.retain(|_, (broker, ..)| *broker != guid);
            cf.job()
        }
        ("GET", ["v3", "jobs", guid]) => {
            let job = cf.jobs.get_mut(*guid).unwrap();
            job.0 += 1;
            let state = match job {
                (1, _) => json!({ "state": "PROCESSING", "errors": [] }),
                (_, false) => json!({ "state": "COMPLETE", "errors": [] }),
                (_, true) => {
                    json!({ "state": "FAILED", "errors": [{ "detail": "Service broker catalog is invalid: plan ids must be unique", "title": "CF-ServiceBrokerCatalogInvalid" }] })
                }
            };
            HttpResponse::Ok().json(state)
        }
        ("GET", ["v3", "service_plans"]) => {
            let name = query(&request, "service_broker_names").unwrap_or_default();
            let page: usize = query(&request, "page").and_then(|p| p.parse().ok()).unwrap_or(1);
            let plans: Vec<(String, String)> = cf
                .plans
                .iter()
                .filter(|(_, (broker, ..))| cf.brokers.get(broker).is_some_and(|b| b.name == name))
                .map(|(guid, (_, plan, ..))| (guid.clone(), plan.clone()))
                .collect();
            let resources: Vec<Value> = plans
                .iter()
                .skip(page - 1)
                .take(1)
                .map(|(guid, plan)| json!({ "guid": guid, "name": plan, "relationships": { "service_offering": { "data": { "guid": "offering-1" } } } }))
                .collect();
            let next = (page < plans.len()).then(|| {
                json!({ "href": format!("{}/v3/service_plans?service_broker_names={name}&include=service_offering&page={}", cf.base, page + 1) })
            });
            HttpResponse::Ok().json(json!({
                "resources": resources,
                "included": { "service_offerings": [{ "guid": "offering-1", "name": "etcd" }] },
                "pagination": { "next": next },
            }))
        }
        ("PATCH" | "POST", ["v3", "service_plans", guid, "visibility"]) => {
            let guid = guid.to_string();
            let Some(plan) = cf.plans.get_mut(&guid) else { return error(404, "Service plan not found") };
            plan.2 = body["type"].as_str().unwrap().into();
            let orgs = body["organizations"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|o| o["guid"].as_str().unwrap().to_owned());
            if method == "PATCH" {
                plan.3 = orgs.collect();
            } else {
                for org in orgs {
                    if !plan.3.contains(&org) {
                        plan.3.push(org);
                    }
                }
            }
            HttpResponse::Ok().json(json!({ "type": plan.2 }))
        }
        ("GET", ["v3", "organizations"]) => {
            let names = query(&request, "names").unwrap_or_default();
            let resources: Vec<Value> = ["dev", "prod"]
                .iter()
                .filter(|o| names.split(',').any(|n| n == **o))
                .map(|o| json!({ "guid": format!("org-{o}"), "name": o }))
                .collect();
            HttpResponse::Ok().json(json!({ "resources": resources }))
        }
        _ => error(404, "Unknown request"),
    }
}

/// Starts the fake CF on a free port in its own thread; returns its URL and state.
fn fake_cf() -> (String, State) {
    let state: State = Arc::new(Mutex::new(Cf::default()));
    let (tx, rx) = std::sync::mpsc::channel();
    let shared = state.clone();
    std::thread::spawn(move || {
        actix_web::rt::System::new().block_on(async move {
            let data = web::Data::new(shared);
            let server =
                HttpServer::new(move || App::new().app_data(data.clone()).default_service(web::to(handle)))
                    .workers(1)
                    .bind("127.0.0.1:0")
                    .unwrap();
            tx.send(server.addrs()[0]).unwrap();
            server.run().await.unwrap();
        });
    });
    let url = format!("http://{}", rx.recv().unwrap());
    state.lock().unwrap().base = url.clone();
    (url, state)
}

fn ops(args: &[&str], envs: &[(&str, &str)]) -> Output {
    let mut command = Command::new(OPS);
    command.args(args);
    for key in [
        "CF_API",
        "CF_USERNAME",
        "CF_PASSWORD",
        "CF_CLIENT_ID",
        "CF_CLIENT_SECRET",
        "BROKER_URL",
        "BROKER_USERNAME",
        "BROKER_PASSWORD",
    ] {
        command.env_remove(key);
    }
    command.envs(envs.iter().copied()).output().unwrap()
}

fn text(out: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr))
}

fn no_secrets(output: &str) {
    for secret in [CF_PASSWORD, CLIENT_SECRET, TOKEN, BROKER_PASSWORD] {
        assert!(!output.contains(secret), "a secret in the output: {output}");
    }
}

fn register(api: &str, extra: &[&str]) -> Output {
    let mut args =
        vec!["register", "--cf-api", api, "--cf-username", "admin", "--broker-url", "http://10.0.1.20:8080"];
    args.extend_from_slice(extra);
    ops(&args, &[("CF_PASSWORD", CF_PASSWORD), ("BROKER_PASSWORD", BROKER_PASSWORD)])
}

#[test]
fn register_creates_then_updates_and_makes_every_plan_public() {
    let (api, state) = fake_cf();
    let out = register(&api, &[]);
    let output = text(&out);
    assert!(out.status.success(), "{output}");
    no_secrets(&output);
    assert!(output.contains("created service broker 'etcd-broker' at http://10.0.1.20:8080"), "{output}");
    assert!(output.contains("service 'etcd' plan 'shared': public"), "{output}");
    assert!(output.contains("service 'etcd' plan 'large': public"), "paginated plans: {output}");
    {
        let cf = state.lock().unwrap();
        let broker = cf.brokers.values().next().unwrap();
        assert_eq!((broker.username.as_str(), broker.password.as_str()), ("broker", BROKER_PASSWORD));
        assert!(cf.plans.values().all(|p| p.2 == "public"));
        assert!(cf.calls.iter().filter(|c| c.starts_with("GET /v3/jobs/")).count() >= 2, "polled the job");
    }

    // Again, with a new URL: an update, no second broker, same visibility.
    let out = ops(
        &[
            "register",
            "--cf-api",
            &api,
            "--cf-username",
            "admin",
            "--broker-url",
            "https://etcd-broker.example.com",
        ],
        &[("CF_PASSWORD", CF_PASSWORD), ("BROKER_PASSWORD", BROKER_PASSWORD)],
    );
    assert!(out.status.success(), "{}", text(&out));
    assert!(text(&out).contains("updated service broker 'etcd-broker'"), "{}", text(&out));
    let cf = state.lock().unwrap();
    assert_eq!(cf.brokers.len(), 1);
    assert_eq!(cf.brokers.values().next().unwrap().url, "https://etcd-broker.example.com");
    assert_eq!(cf.calls.iter().filter(|c| *c == "POST /v3/service_brokers").count(), 1);
    assert!(cf.plans.values().all(|p| p.2 == "public"));
}

#[test]
fn register_can_limit_plans_to_organizations_or_a_space() {
    let (api, state) = fake_cf();
    let out = register(&api, &["--org", "dev", "--org", "prod"]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(text(&out).contains("plan 'shared': visible to dev, prod"), "{}", text(&out));
    assert!(state
        .lock()
        .unwrap()
        .plans
        .values()
        .all(|p| p.2 == "organization" && p.3 == ["org-dev", "org-prod"]));

    let out = register(&api, &["--org", "nope"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out).contains("CF has no organization named 'nope'"), "{}", text(&out));

    let (api, state) = fake_cf();
    let out = register(&api, &["--space-guid", "space-1"]);
    assert!(out.status.success(), "{}", text(&out));
    let cf = state.lock().unwrap();
    assert_eq!(cf.brokers.values().next().unwrap().space.as_deref(), Some("space-1"));
    assert!(!cf.calls.iter().any(|c| c.contains("visibility")), "{:?}", cf.calls);
}

#[test]
fn deregister_removes_the_broker_and_is_idempotent_unless_cf_refuses() {
    let (api, state) = fake_cf();
    assert!(register(&api, &[]).status.success());
    let deregister = || {
        ops(
            &["deregister", "--cf-api", &api, "--cf-client-id", "registrar"],
            &[("CF_CLIENT_SECRET", CLIENT_SECRET)],
        )
    };

    state.lock().unwrap().has_instances = true;
    let out = deregister();
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out).contains("Can not remove brokers that have associated service instances: my-etcd"),
        "{}",
        text(&out)
    );
    assert_eq!(state.lock().unwrap().brokers.len(), 1);

    state.lock().unwrap().has_instances = false;
    let out = deregister();
    assert!(out.status.success(), "{}", text(&out));
    assert!(text(&out).contains("removed service broker 'etcd-broker'"));
    assert!(state.lock().unwrap().brokers.is_empty());
    let out = deregister();
    assert!(out.status.success(), "{}", text(&out));
    assert!(text(&out).contains("is not registered: nothing to do"));
    no_secrets(&text(&out));
}

#[test]
fn login_failures_and_failed_jobs_are_clear_and_show_no_secret() {
    let (api, state) = fake_cf();
    let out = ops(
        &["register", "--cf-api", &api, "--cf-username", "admin", "--broker-url", "http://b:1"],
        &[("CF_PASSWORD", "wrong-Pa55word"), ("BROKER_PASSWORD", BROKER_PASSWORD)],
    );
    assert_eq!(out.status.code(), Some(1));
    let output = text(&out);
    assert!(output.contains("refused the login (401 Unauthorized)"), "{output}");
    assert!(!output.contains("wrong-Pa55word"), "{output}");
    no_secrets(&output);

    state.lock().unwrap().fail_jobs = true;
    let out = register(&api, &[]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out)
            .contains("creating the service broker: CF's job failed: Service broker catalog is invalid"),
        "{}",
        text(&out)
    );

    let out = ops(&["register", "--cf-api", &api, "--broker-url", "http://b:1"], &[("BROKER_PASSWORD", "x")]);
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out).contains("no CF login"), "{}", text(&out));
    let out = ops(&["register", "--cf-api", "ftp://x", "--cf-username", "a"], &[("CF_PASSWORD", "x")]);
    assert!(text(&out).contains("--cf-api must be an http(s) URL"), "{}", text(&out));
}

/// The errand's path: properties.json with cf.* and the servicebroker link.
#[test]
fn register_reads_the_errand_properties() {
    let (api, state) = fake_cf();
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("properties.json");
    let properties = json!({
        "properties": {
            "cf": { "api_url": api, "client_id": "registrar", "client_secret": CLIENT_SECRET },
            "broker_name": "etcd-prod",
            "orgs": ["dev"],
        },
        "links": { "servicebroker": {
            "instances": [{ "address": "10.0.1.21" }],
            "properties": { "auth": { "username": "osb", "password": BROKER_PASSWORD }, "listen": { "port": 8443 } },
        }},
    });
    std::fs::write(&file, properties.to_string()).unwrap();
    let out = ops(&["register", "--bosh-properties", file.to_str().unwrap()], &[]);
    let output = text(&out);
    assert!(out.status.success(), "{output}");
    no_secrets(&output);
    let cf = state.lock().unwrap();
    let broker = cf.brokers.values().next().unwrap();
    assert_eq!((broker.name.as_str(), broker.url.as_str()), ("etcd-prod", "http://10.0.1.21:8443"));
    assert_eq!((broker.username.as_str(), broker.password.as_str()), ("osb", BROKER_PASSWORD));
    assert!(cf.plans.values().all(|p| p.3 == ["org-dev"]));
}

/// The errand's chain: the offline render of manifests/etcd-broker.yml + operators/registrar.yml,
/// the errand's ERB evaluated by the Ruby harness (BOSH's template helpers), and
/// `register --bosh-properties` reading what it wrote.
#[test]
fn the_registrar_errand_registers_what_its_erb_template_writes() {
    let (api, state) = fake_cf();
    let dir = tempfile::tempdir().unwrap();
    let file = common::errand_properties(
        dir.path(),
        "broker-registration",
        "broker-registrar",
        "manifests/operators/registrar.yml",
        &[
            "-v".into(),
            format!("cf_api_url={api}"),
            "-v".into(),
            format!("cf_admin_password={CF_PASSWORD}"),
            format!(
                "--link=servicebroker={}",
                common::repo().join("manifests/examples/servicebroker-link.yml").display()
            ),
        ],
    );
    let out = ops(&["register", "--bosh-properties", file.to_str().unwrap()], &[]);
    assert!(out.status.success(), "{}", text(&out));
    let cf = state.lock().unwrap();
    let broker = cf.brokers.values().next().unwrap();
    assert_eq!((broker.name.as_str(), broker.url.as_str()), ("etcd-broker", "http://10.0.1.20:8080"));
    assert_eq!(broker.password, "example-broker-password", "the password of the servicebroker link");
    assert!(cf.plans.values().all(|p| p.2 == "public"));
}

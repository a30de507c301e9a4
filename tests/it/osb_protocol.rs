//! Acceptance: the OSB status-code matrix, one table of requests and the answers the spec asks
//! for, run in order against one broker on a real etcd: every endpoint, bad input of every kind,
//! version and auth headers. Every error answer must be OSB error JSON with a description. And
//! an etcd that is down gives 503, not 500.

use std::collections::HashMap;

use crate::common::*;
use reqwest::header::{HeaderMap, HeaderName, HeaderValue};
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};

/// A request body.
enum Body {
    None,
    Json(Value),
    /// Sent as is, labelled `application/json`.
    Text(&'static str),
}

/// One row of the matrix: a request, and the answer it must get.
struct Row {
    /// Names the row in the failure report and in [`Row::replies`]' map.
    name: String,
    method: Method,
    path: String,
    /// Basic auth as `(user, password)`; None sends no `Authorization`.
    auth: Option<(&'static str, &'static str)>,
    /// `X-Broker-API-Version`; None sends no header.
    version: Option<&'static str>,
    headers: Vec<(&'static str, &'static str)>,
    body: Body,
    /// Sent over a plain socket exactly as written: HTTP clients normalize paths such as `..`.
    raw: bool,
    status: StatusCode,
    /// A fragment of the `description` every error answer must carry.
    description: &'static str,
    /// The OSB `error` code of an error answer; None: the field is absent.
    error: Option<&'static str>,
    /// The exact JSON body of the answer, when the row pins it.
    answer: Option<Value>,
    /// A header the answer must carry, with its value.
    answer_header: Option<(&'static str, &'static str)>,
}

/// A row sending valid credentials and version, no body, and expecting 200.
fn row(name: impl Into<String>, method: Method, path: impl Into<String>) -> Row {
    Row {
        name: name.into(),
        method,
        path: path.into(),
        auth: Some((USER, PASSWORD)),
        version: Some(VERSION),
        headers: Vec::new(),
        body: Body::None,
        raw: false,
        status: StatusCode::OK,
        description: "",
        error: None,
        answer: None,
        answer_header: None,
    }
}

impl Row {
    fn json(mut self, body: Value) -> Self {
        self.body = Body::Json(body);
        self
    }

    fn text(mut self, body: &'static str) -> Self {
        self.body = Body::Text(body);
        self
    }

    fn auth(mut self, auth: Option<(&'static str, &'static str)>) -> Self {
        self.auth = auth;
        self
    }

    fn version(mut self, version: Option<&'static str>) -> Self {
        self.version = version;
        self
    }

    fn header(mut self, name: &'static str, value: &'static str) -> Self {
        self.headers.push((name, value));
        self
    }

    fn raw(mut self) -> Self {
        self.raw = true;
        self
    }

    /// A success answer with this status.
    fn ok(mut self, status: StatusCode) -> Self {
        self.status = status;
        self
    }

    /// A success answer with this status and exactly this body.
    fn answers(mut self, status: StatusCode, body: Value) -> Self {
        (self.status, self.answer) = (status, Some(body));
        self
    }

    /// An error answer with this status, whose description contains `description`.
    fn fails(mut self, status: StatusCode, description: &'static str) -> Self {
        (self.status, self.description) = (status, description);
        self
    }

    fn answer_header(mut self, name: &'static str, value: &'static str) -> Self {
        self.answer_header = Some((name, value));
        self
    }

    async fn send(&self, osb: &Osb) -> Reply {
        if self.raw {
            return self.send_raw(osb.url()).await;
        }
        let mut builder = osb.http().request(self.method.clone(), format!("{}{}", osb.url(), self.path));
        if let Some((user, password)) = self.auth {
            builder = builder.basic_auth(user, Some(password));
        }
        if let Some(version) = self.version {
            builder = builder.header("X-Broker-API-Version", version);
        }
        for (name, value) in &self.headers {
            builder = builder.header(*name, *value);
        }
        builder = match &self.body {
            Body::None => builder,
            Body::Json(body) => builder.json(body),
            Body::Text(text) => builder.header("Content-Type", "application/json").body(*text),
        };
        Osb::send(builder).await
    }

    /// Writes the request by hand (no body) and reads the answer until the broker closes.
    async fn send_raw(&self, url: &str) -> Reply {
        use base64::Engine;
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        assert!(matches!(self.body, Body::None), "{}: raw rows send no body", self.name);
        let addr = url.trim_start_matches("http://");
        let mut request =
            format!("{} {} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n", self.method, self.path);
        if let Some((user, password)) = self.auth {
            let auth = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"));
            request += &format!("Authorization: Basic {auth}\r\n");
        }
        if let Some(version) = self.version {
            request += &format!("X-Broker-API-Version: {version}\r\n");
        }
        for (name, value) in &self.headers {
            request += &format!("{name}: {value}\r\n");
        }
        let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
        stream.write_all(format!("{request}\r\n").as_bytes()).await.unwrap();
        let mut response = String::new();
        stream.read_to_string(&mut response).await.unwrap();
        let (head, body) = response.split_once("\r\n\r\n").unwrap_or((&response, ""));
        let mut lines = head.lines();
        let status = lines.next().and_then(|l| l.split(' ').nth(1)).and_then(|s| s.parse().ok());
        let mut headers = HeaderMap::new();
        for (name, value) in lines.filter_map(|l| l.split_once(':')) {
            if let (Ok(name), Ok(value)) = (HeaderName::try_from(name), HeaderValue::try_from(value.trim())) {
                headers.append(name, value);
            }
        }
        Reply {
            status: status.and_then(|s| StatusCode::from_u16(s).ok()).expect("a status line"),
            body: serde_json::from_str(body).unwrap_or(Value::Null),
            headers,
        }
    }

    /// What is wrong with `reply`, if anything.
    fn check(&self, reply: &Reply) -> Result<(), String> {
        let mut problems = Vec::new();
        if reply.status != self.status {
            problems.push(format!("status {} instead of {}", reply.status, self.status));
        }
        if self.answer.as_ref().is_some_and(|answer| *answer != reply.body) {
            problems.push(format!("body is not {}", self.answer.as_ref().unwrap()));
        }
        if !self.status.is_success() {
            match reply.body["description"].as_str() {
                None => problems.push("no description".to_owned()),
                Some(description) if !description.contains(self.description) => {
                    problems.push(format!("description lacks {:?}", self.description))
                }
                Some(_) => {}
            }
            if reply.body.get("error").map(Value::as_str) != self.error.map(Some) {
                problems.push(format!("error code is not {:?}", self.error));
            }
        }
        if let Some((name, value)) = self.answer_header {
            if !reply.headers.get(name).is_some_and(|v| v == value) {
                problems.push(format!("header {name} is not {value:?}"));
            }
        }
        if problems.is_empty() {
            Ok(())
        } else {
            Err(format!("{}: {} (answer {} {})", self.name, problems.join("; "), reply.status, reply.body))
        }
    }
}

/// The matrix, in the order it runs: bad input on an empty broker first, then every endpoint
/// through the life of instance `i1` and binding `b1`, ending with nothing left.
fn matrix() -> Vec<Row> {
    use Method as M;
    use StatusCode as S;
    let instance = |id: &str| format!("/v2/service_instances/{id}");
    let binding = |id: &str, b: &str| format!("/v2/service_instances/{id}/service_bindings/{b}");
    let ids_query = format!("?service_id={SERVICE_ID}&plan_id={SHARED}");
    let bind_body = |app: &str| json!({ "service_id": SERVICE_ID, "plan_id": SHARED, "bind_resource": { "app_guid": app } });
    let update_body = |plan: &str| json!({ "service_id": SERVICE_ID, "plan_id": plan });
    let with = |mut body: Value, field: &str, value: Value| {
        body[field] = value;
        body
    };
    let without = |mut body: Value, field: &str| {
        body.as_object_mut().unwrap().remove(field);
        body
    };
    let succeeded = json!({ "state": "succeeded" });

    let mut rows = vec![
        // Malformed and mistyped bodies and queries.
        row("malformed JSON", M::PUT, instance("i1"))
            .text("{\"service_id\": ")
            .fails(S::BAD_REQUEST, "invalid request body"),
        row("plan_id a number", M::PUT, instance("i1"))
            .json(with(provision_body(SHARED), "plan_id", json!(5)))
            .fails(S::BAD_REQUEST, "plan_id"),
        row("parameters not an object", M::PUT, instance("i1"))
            .json(with(provision_body(SHARED), "parameters", json!("not an object")))
            .fails(S::BAD_REQUEST, "invalid request body"),
        row("body an array", M::PUT, instance("i1")).text("[]").fails(S::BAD_REQUEST, "invalid request body"),
        row("body an array of the provision fields", M::PUT, instance("i1"))
            .json(json!([SERVICE_ID, SHARED, "o", "s", null, null]))
            .fails(S::BAD_REQUEST, "a JSON object is expected"),
        row("bind body an array", M::PUT, binding("i1", "b9"))
            .json(json!([SERVICE_ID, SHARED]))
            .fails(S::BAD_REQUEST, "a JSON object is expected"),
        // Found by generated requests (ci/schemathesis): a non-string app_guid was dropped and the
        // binding made without its app.
        row("bind_resource.app_guid a number", M::PUT, binding("i1", "b9"))
            .json(json!({ "service_id": SERVICE_ID, "plan_id": SHARED, "bind_resource": { "app_guid": 5 } }))
            .fails(S::BAD_REQUEST, "bind_resource.app_guid: a string is expected"),
        row("bind_resource.route an object", M::PUT, binding("i1", "b9"))
            .json(json!({ "service_id": SERVICE_ID, "plan_id": SHARED, "bind_resource": { "route": {} } }))
            .fails(S::BAD_REQUEST, "bind_resource.route: a string is expected"),
        row("body a string", M::PUT, instance("i1"))
            .text("\"x\"")
            .fails(S::BAD_REQUEST, "a JSON object is expected"),
        row("accepts_incomplete=maybe", M::PUT, format!("{}?accepts_incomplete=maybe", instance("i1")))
            .json(provision_body(SHARED))
            .fails(S::BAD_REQUEST, "query"),
        row("a 1 MiB body", M::PUT, instance("i1"))
            .json(with(provision_body(SHARED), "context", json!({ "padding": "x".repeat(1 << 20) })))
            .fails(S::PAYLOAD_TOO_LARGE, "larger than"),
        // Paths and methods.
        row("GET .. (as sent)", M::GET, "/v2/service_instances/..")
            .raw()
            .fails(S::BAD_REQUEST, "invalid instance id"),
        row("POST an instance", M::POST, instance("i1"))
            .json(provision_body(SHARED))
            .fails(S::METHOD_NOT_ALLOWED, "POST")
            .answer_header("allow", "GET, PUT, PATCH, DELETE"),
        row("POST a binding", M::POST, binding("i1", "b1"))
            .json(bind_body("app-1"))
            .fails(S::METHOD_NOT_ALLOWED, "POST")
            .answer_header("allow", "GET, PUT, DELETE"),
        row("DELETE the catalog", M::DELETE, "/v2/catalog")
            .fails(S::METHOD_NOT_ALLOWED, "DELETE")
            .answer_header("allow", "GET"),
        row("PUT a last operation", M::PUT, format!("{}/last_operation", instance("i1")))
            .fails(S::METHOD_NOT_ALLOWED, "PUT")
            .answer_header("allow", "GET"),
        // Version header: missing, old, another major, garbage; the supported range.
        row("no version", M::GET, "/v2/catalog").version(None).fails(S::PRECONDITION_FAILED, "missing"),
        row("version 2.12", M::GET, "/v2/catalog")
            .version(Some("2.12"))
            .fails(S::PRECONDITION_FAILED, "2.12"),
        row("version 3.13", M::GET, "/v2/catalog")
            .version(Some("3.13"))
            .fails(S::PRECONDITION_FAILED, "3.13"),
        row("version banana", M::GET, "/v2/catalog")
            .version(Some("banana"))
            .fails(S::PRECONDITION_FAILED, "banana"),
        row("version 2.+14", M::GET, "/v2/catalog")
            .version(Some("2.+14"))
            .fails(S::PRECONDITION_FAILED, "2.+14"),
        row("version 2.014", M::GET, "/v2/catalog")
            .version(Some("2.014"))
            .fails(S::PRECONDITION_FAILED, "2.014"),
        row("version +2.14", M::GET, "/v2/catalog")
            .version(Some("+2.14"))
            .fails(S::PRECONDITION_FAILED, "+2.14"),
        row("version 02.14", M::GET, "/v2/catalog")
            .version(Some("02.14"))
            .fails(S::PRECONDITION_FAILED, "02.14"),
        row("version 2.13", M::GET, "/v2/catalog").version(Some("2.13")),
        row("version 2.15", M::GET, "/v2/catalog").version(Some("2.15")),
        row("version 2.17", M::GET, "/v2/catalog").version(Some("2.17")),
        // Request identity is echoed, on success and on error.
        row("request identity on success", M::GET, "/v2/catalog")
            .header("X-Broker-API-Request-Identity", "req-42")
            .answer_header("x-broker-api-request-identity", "req-42"),
        row("request identity on error", M::GET, instance("missing"))
            .header("X-Broker-API-Request-Identity", "req-42")
            .fails(S::NOT_FOUND, "missing")
            .answer_header("x-broker-api-request-identity", "req-42"),
    ];
    // Auth: missing, wrong password, wrong user; on a read and on a change.
    for (who, auth) in [
        ("no credentials", None),
        ("wrong password", Some((USER, "wrong"))),
        ("wrong user", Some(("someone", PASSWORD))),
    ] {
        for (method, path, body) in
            [(M::GET, "/v2/catalog".to_owned(), None), (M::PUT, instance("i1"), Some(provision_body(SHARED)))]
        {
            let mut r = row(format!("{who}: {method} {path}"), method, path).auth(auth);
            if let Some(body) = body {
                r = r.json(body);
            }
            rows.push(
                r.fails(S::UNAUTHORIZED, "credentials")
                    .answer_header("www-authenticate", "Basic realm=\"etcd-broker\""),
            );
        }
    }
    // The auth scheme is case-insensitive (RFC 9110); the credentials are not.
    let token = {
        use base64::Engine;
        base64::engine::general_purpose::STANDARD.encode(format!("{USER}:{PASSWORD}"))
    };
    for scheme in ["basic", "BASIC"] {
        let value: &'static str = Box::leak(format!("{scheme} {token}").into_boxed_str());
        rows.push(
            row(format!("auth scheme {scheme}"), M::GET, "/v2/catalog")
                .auth(None)
                .header("Authorization", value),
        );
    }
    // Ids that must not become keys or names.
    for id in ["a%2Fb", "a.b", "a%20b", "%C3%BCnic%C3%B6de", "-lead", &"x".repeat(65)] {
        rows.push(
            row(format!("instance id {id}"), M::PUT, instance(id))
                .json(provision_body(SHARED))
                .fails(S::BAD_REQUEST, "invalid instance id"),
        );
        rows.push(
            row(format!("binding id {id}"), M::PUT, binding("i1", id))
                .json(bind_body("app-1"))
                .fails(S::BAD_REQUEST, "invalid binding id"),
        );
    }
    for path in ["/v2/service_instances/", "/v2/service_instances/a/b", "/v2/nothing", "/"] {
        rows.push(
            row(format!("PUT {path}"), M::PUT, path)
                .json(provision_body(SHARED))
                .fails(S::NOT_FOUND, "no such endpoint"),
        );
    }
    rows.extend([
        // Provision.
        row("provision i1", M::PUT, instance("i1")).json(provision_body(SHARED)).ok(S::CREATED),
        row("provision i1 again", M::PUT, instance("i1"))
            .json(provision_body(SHARED))
            .answers(S::OK, json!({})),
        row("provision i1 a third time", M::PUT, instance("i1")).json(provision_body(SHARED)).ok(S::OK),
        row("provision i1 on another plan", M::PUT, instance("i1"))
            .json(provision_body(LARGE))
            .fails(S::CONFLICT, "different attributes"),
        row("provision an unknown plan", M::PUT, instance("i2"))
            .json(provision_body("no-such-plan"))
            .fails(S::BAD_REQUEST, "plan_id 'no-such-plan'"),
        row("provision an unknown service", M::PUT, instance("i2"))
            .json(with(provision_body(SHARED), "service_id", json!("no-such-service")))
            .fails(S::BAD_REQUEST, "service_id 'no-such-service'"),
        row("provision without space_guid", M::PUT, instance("i2"))
            .json(without(provision_body(SHARED), "space_guid"))
            .fails(S::BAD_REQUEST, "space_guid"),
        row("provision with unknown parameters", M::PUT, instance("i2"))
            .json(with(provision_body(SHARED), "parameters", json!({ "size": 3 })))
            .fails(S::BAD_REQUEST, "unknown parameters: size"),
        // GET instance.
        row("get i1", M::GET, instance("i1"))
            .answers(S::OK, json!({ "service_id": SERVICE_ID, "plan_id": SHARED })),
        row("get missing i2", M::GET, instance("i2")).fails(S::NOT_FOUND, "i2"),
        // Update.
        row("update i1 to large", M::PATCH, instance("i1")).json(update_body(LARGE)),
        row("update i1 to large again", M::PATCH, instance("i1")).json(update_body(LARGE)),
        row("get updated i1", M::GET, instance("i1"))
            .answers(S::OK, json!({ "service_id": SERVICE_ID, "plan_id": LARGE })),
        row("update i1 to another cluster", M::PATCH, instance("i1"))
            .json(update_body(FAR))
            .fails(S::UNPROCESSABLE_ENTITY, "cluster"),
        row("update i1 to an unknown plan", M::PATCH, instance("i1"))
            .json(update_body("no-such-plan"))
            .fails(S::BAD_REQUEST, "no-such-plan"),
        row("update i1 with another service", M::PATCH, instance("i1"))
            .json(with(update_body(SHARED), "service_id", json!("no-such-service")))
            .fails(S::BAD_REQUEST, "service_id"),
        row("get i1 after refused updates", M::GET, instance("i1"))
            .answers(S::OK, json!({ "service_id": SERVICE_ID, "plan_id": LARGE })),
        row("update missing i2", M::PATCH, instance("i2")).json(update_body(LARGE)).fails(S::NOT_FOUND, "i2"),
        row("update i1 back to shared", M::PATCH, instance("i1")).json(update_body(SHARED)),
        // Last operation of an instance.
        row("last operation of i1", M::GET, format!("{}/last_operation", instance("i1")))
            .answers(S::OK, succeeded.clone()),
        // Bind.
        row("bind b1", M::PUT, binding("i1", "b1")).json(bind_body("app-1")).ok(S::CREATED),
        row("bind b1 again", M::PUT, binding("i1", "b1")).json(bind_body("app-1")),
        row("bind b1 for another app", M::PUT, binding("i1", "b1"))
            .json(bind_body("app-2"))
            .fails(S::CONFLICT, "different attributes"),
        row("bind b1 on another plan", M::PUT, binding("i1", "b1"))
            .json(with(bind_body("app-1"), "plan_id", json!(LARGE)))
            .fails(S::CONFLICT, "different attributes"),
        row("bind to missing i2", M::PUT, binding("i2", "b1"))
            .json(bind_body("app-1"))
            .fails(S::NOT_FOUND, "i2"),
        row("bind without plan_id", M::PUT, binding("i1", "b9"))
            .json(json!({ "service_id": SERVICE_ID }))
            .fails(S::BAD_REQUEST, "plan_id"),
        row("bind an unknown plan", M::PUT, binding("i1", "b9"))
            .json(with(bind_body("app-1"), "plan_id", json!("no-such-plan")))
            .fails(S::BAD_REQUEST, "plan_id 'no-such-plan'"),
        // GET binding and its last operation.
        row("get binding b1", M::GET, binding("i1", "b1")),
        row("get missing binding b2", M::GET, binding("i1", "b2")).fails(S::NOT_FOUND, "b2"),
        row("last operation of b1", M::GET, format!("{}/last_operation", binding("i1", "b1")))
            .answers(S::OK, succeeded),
        // Unbind.
        row("unbind without ids", M::DELETE, binding("i1", "b1"))
            .fails(S::BAD_REQUEST, "service_id and plan_id are required"),
        row("unbind b1", M::DELETE, binding("i1", "b1") + &ids_query).answers(S::OK, json!({})),
        row("unbind b1 again", M::DELETE, binding("i1", "b1") + &ids_query).fails(S::GONE, "b1"),
        row("unbind a binding never made", M::DELETE, binding("i1", "b7") + &ids_query).fails(S::GONE, "b7"),
        row("last operation of unbound b1", M::GET, format!("{}/last_operation", binding("i1", "b1")))
            .fails(S::GONE, "b1"),
        // Deprovision.
        row("deprovision without plan_id", M::DELETE, format!("{}?service_id=x", instance("i1")))
            .fails(S::BAD_REQUEST, "required"),
        row("deprovision i1", M::DELETE, instance("i1") + &ids_query).answers(S::OK, json!({})),
        row("deprovision i1 again", M::DELETE, instance("i1") + &ids_query).fails(S::GONE, "i1"),
        row("deprovision an instance never made", M::DELETE, instance("i3") + &ids_query)
            .fails(S::GONE, "i3"),
        row("last operation of deprovisioned i1", M::GET, format!("{}/last_operation", instance("i1")))
            .fails(S::GONE, "i1"),
    ]);
    rows
}

#[tokio::test]
async fn every_row_of_the_status_matrix_gets_its_answer() {
    let etcd = start_etcd().await;
    let far = start_etcd().await;
    let broker = BrokerProcess::start(&etcd, Some(&far)).await;
    let osb = Osb::new(&broker.url);

    let rows = matrix();
    let mut failures = Vec::new();
    let mut replies = HashMap::new();
    for row in &rows {
        let reply = row.send(&osb).await;
        failures.extend(row.check(&reply).err());
        assert!(replies.insert(row.name.clone(), reply).is_none(), "two rows named {:?}", row.name);
    }
    // A repeated bind and a GET binding hand out the credentials the bind made.
    let credentials = |name: &str| replies[name].body["credentials"].clone();
    assert!(credentials("bind b1").is_object(), "bind b1: {:?}", replies["bind b1"].body);
    for name in ["bind b1 again", "get binding b1"] {
        if credentials(name) != credentials("bind b1") {
            failures.push(format!("{name}: credentials differ from bind b1's"));
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} rows failed:\n{}",
        failures.len(),
        rows.len(),
        failures.join("\n")
    );

    // None of the refused requests left anything behind, and the broker never answered 500.
    let (keys, users, roles) = broker_made_things(&etcd).await;
    assert!(keys.is_empty() && users.is_empty() && roles.is_empty(), "{keys:?} {users:?} {roles:?}");
    let log = broker.stop().await;
    assert!(!log.contains("status=500"), "{log}");
    assert!(!log.contains(PASSWORD), "the broker password was logged");
}

fn assert_error(reply: &Reply, status: StatusCode, needle: &str) {
    assert_eq!(reply.status, status, "{:?}", reply.body);
    let description =
        reply.body["description"].as_str().unwrap_or_else(|| panic!("no description: {:?}", reply.body));
    assert!(description.contains(needle), "description {description:?} lacks {needle:?}");
}

#[tokio::test]
async fn etcd_down_gives_503_with_a_description() {
    let etcd = start_etcd().await;
    let broker = BrokerProcess::start(&etcd, None).await;
    let osb = Osb::new(&broker.url);
    assert_eq!(osb.provision("i1", SHARED).await.status, StatusCode::CREATED);
    etcd.stop().await;
    let reply = osb.provision("i2", SHARED).await;
    assert_error(&reply, StatusCode::SERVICE_UNAVAILABLE, "etcd");
    let reply = osb.bind("i1", "b1").await;
    assert_eq!(reply.status, StatusCode::SERVICE_UNAVAILABLE, "{:?}", reply.body);
    let log = broker.stop().await;
    assert!(!log.contains("status=500"), "{log}");
}

/// Sends a provision whose body trickles in, one byte every 200 ms (a 100-byte body would take
/// 20 s), and reads the answer: how long it took, and the answer as text.
async fn trickle_a_body(addr: String) -> (std::time::Duration, String) {
    use base64::Engine;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let auth = base64::engine::general_purpose::STANDARD.encode(format!("{USER}:{PASSWORD}"));
    let head = format!(
        "PUT /v2/service_instances/slow HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Basic {auth}\r\n\
         X-Broker-API-Version: {VERSION}\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n"
    );
    let stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let (mut read, mut write) = stream.into_split();
    let started = std::time::Instant::now();
    write.write_all(head.as_bytes()).await.unwrap();
    let writer = tokio::spawn(async move {
        for _ in 0..100 {
            if write.write_all(b" ").await.is_err() {
                return;
            }
            tokio::time::sleep(std::time::Duration::from_millis(200)).await;
        }
    });
    let mut answer = String::new();
    let read =
        tokio::time::timeout(std::time::Duration::from_secs(15), read.read_to_string(&mut answer)).await;
    writer.abort();
    assert!(read.is_ok(), "no answer, connection still open after 15 s: {answer:?}");
    (started.elapsed(), answer)
}

/// Issue 22: an authenticated request whose body arrived at one byte per second was never timed
/// out, and 1,000 of them at once held 1,000 connections. A body must now arrive within
/// `listen.body_timeout_seconds` (408, and the connection is closed), and each worker serves at
/// most `listen.max_connections` connections: here 4 trickling bodies hold all 4, so a
/// catalog request waits until their timeouts free one.
#[tokio::test]
async fn a_trickling_request_body_gets_408_within_the_body_timeout() {
    let etcd = start_etcd().await;
    let env =
        [("ETCD_BROKER__LISTEN__BODY_TIMEOUT_SECONDS", "2"), ("ETCD_BROKER__LISTEN__MAX_CONNECTIONS", "4")];
    let broker = BrokerProcess::start_with_env(&etcd, None, &env).await;
    let osb = Osb::new(&broker.url);
    let addr = broker.url.trim_start_matches("http://").to_owned();
    let slow: Vec<_> = (0..4).map(|_| tokio::spawn(trickle_a_body(addr.clone()))).collect();
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    let started = std::time::Instant::now();
    let catalog = osb.call(Method::GET, "/v2/catalog", None).await;
    let waited = started.elapsed();
    assert_eq!(catalog.status, StatusCode::OK);
    for answer in slow {
        let (took, answer) = answer.await.unwrap();
        assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
        assert!(answer.contains("the request body did not arrive within 2 s"), "{answer}");
        let bound = std::time::Duration::from_secs(2);
        assert!(took >= bound && took < bound * 2, "answered after {took:?}");
    }
    assert!(waited > std::time::Duration::from_secs(1), "served while 4 connections were held: {waited:?}");
    // Nothing of the refused provision was kept.
    let (keys, _, _) = broker_made_things(&etcd).await;
    assert!(keys.is_empty(), "{keys:?}");
    broker.stop().await;
}

/// Writes `bytes` on a new connection to `addr`, then reads until the broker closes it (or 10 s
/// pass): how long the broker took to close it, and what it answered.
async fn send_and_wait_for_close(
    addr: &str,
    bytes: Vec<u8>,
    pause_after: usize,
) -> (std::time::Duration, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let (mut read, mut write) = stream.into_split();
    let started = std::time::Instant::now();
    // The first `pause_after` bytes at once, the rest one a second (trickling headers).
    let writer = tokio::spawn(async move {
        let (now, later) = bytes.split_at(pause_after.min(bytes.len()));
        if write.write_all(now).await.is_err() {
            return;
        }
        for byte in later {
            tokio::time::sleep(std::time::Duration::from_secs(1)).await;
            if write.write_all(&[*byte]).await.is_err() {
                return;
            }
        }
        std::future::pending::<()>().await;
    });
    let mut answer = Vec::new();
    let read = tokio::time::timeout(std::time::Duration::from_secs(10), read.read_to_end(&mut answer)).await;
    writer.abort();
    assert!(read.is_ok(), "connection still open after 10 s: {:?}", String::from_utf8_lossy(&answer));
    (started.elapsed(), String::from_utf8_lossy(&answer).into_owned())
}

/// Issue 22, the server under abuse: headers that trickle in get 408 within
/// `listen.header_timeout_seconds`; idle keep-alive connections are closed after
/// `listen.idle_timeout_seconds`, so they cannot hold `listen.max_connections` for ever; a
/// request head over actix-web's 128 KiB gets 431. Each closes its connection, and the broker
/// serves the next request.
#[tokio::test]
async fn slow_headers_idle_connections_and_huge_headers_are_bounded() {
    let etcd = start_etcd().await;
    let env = [
        ("ETCD_BROKER__LISTEN__HEADER_TIMEOUT_SECONDS", "1"),
        ("ETCD_BROKER__LISTEN__IDLE_TIMEOUT_SECONDS", "1"),
        ("ETCD_BROKER__LISTEN__MAX_CONNECTIONS", "4"),
    ];
    let broker = BrokerProcess::start_with_env(&etcd, None, &env).await;
    let osb = Osb::new(&broker.url);
    let addr = broker.url.trim_start_matches("http://").to_owned();

    let head = format!("GET /v2/catalog HTTP/1.1\r\nHost: {addr}\r\nX-Broker-API-Version: {VERSION}\r\n\r\n");
    let (took, answer) = send_and_wait_for_close(&addr, head.clone().into_bytes(), 20).await;
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert!(took < std::time::Duration::from_secs(4), "trickling headers held on for {took:?}");

    // Four keep-alive connections, each after one request, fill max_connections; they are
    // closed once idle for a second, and the catalog is served again.
    let idle: Vec<_> = (0..4)
        .map(|_| {
            let (addr, head) = (addr.clone(), head.clone());
            tokio::spawn(async move { send_and_wait_for_close(&addr, head.into_bytes(), usize::MAX).await })
        })
        .collect();
    for connection in idle {
        let (took, answer) = connection.await.unwrap();
        assert!(answer.starts_with("HTTP/1.1 401"), "{answer}");
        assert!(took < std::time::Duration::from_secs(4), "an idle connection stayed open {took:?}");
    }
    assert_eq!(osb.call(Method::GET, "/v2/catalog", None).await.status, StatusCode::OK);

    let huge =
        format!("GET /v2/catalog HTTP/1.1\r\nHost: {addr}\r\nX-Padding: {}\r\n\r\n", "x".repeat(200_000));
    let (_, answer) = send_and_wait_for_close(&addr, huge.into_bytes(), usize::MAX).await;
    assert!(answer.starts_with("HTTP/1.1 431"), "{answer}");
    assert_eq!(osb.call(Method::GET, "/v2/catalog", None).await.status, StatusCode::OK);
    let log = broker.stop().await;
    assert!(!log.contains("panicked"), "{log}");
}

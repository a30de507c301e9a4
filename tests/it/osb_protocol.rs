//! Acceptance: the OSB status-code matrix for every endpoint and bad input of every kind, on a
//! real etcd. Every error answer must be OSB error JSON with a description.

use crate::common::*;
use reqwest::{Method, StatusCode};
use serde_json::json;

fn assert_error(reply: &Reply, status: StatusCode, needle: &str) {
    assert_eq!(reply.status, status, "{:?}", reply.body);
    let description =
        reply.body["description"].as_str().unwrap_or_else(|| panic!("no description: {:?}", reply.body));
    assert!(description.contains(needle), "description {description:?} lacks {needle:?}");
}

#[tokio::test]
async fn status_codes_follow_the_spec_for_every_endpoint() {
    let etcd = start_etcd().await;
    let far = start_etcd().await;
    let broker = BrokerProcess::start(&etcd, Some(&far)).await;
    let osb = Osb::new(&broker.url);

    // Provision.
    assert_eq!(osb.provision("i1", SHARED).await.status, StatusCode::CREATED);
    assert_eq!(osb.provision("i1", SHARED).await.body, json!({}));
    assert_eq!(osb.provision("i1", SHARED).await.status, StatusCode::OK);
    assert_error(&osb.provision("i1", LARGE).await, StatusCode::CONFLICT, "different attributes");
    assert_error(
        &osb.provision("i2", "no-such-plan").await,
        StatusCode::BAD_REQUEST,
        "plan_id 'no-such-plan'",
    );
    let mut body = provision_body(SHARED);
    body["service_id"] = json!("no-such-service");
    let reply = osb.call(Method::PUT, "/v2/service_instances/i2", Some(body)).await;
    assert_error(&reply, StatusCode::BAD_REQUEST, "service_id 'no-such-service'");
    let mut body = provision_body(SHARED);
    body.as_object_mut().unwrap().remove("space_guid");
    let reply = osb.call(Method::PUT, "/v2/service_instances/i2", Some(body)).await;
    assert_error(&reply, StatusCode::BAD_REQUEST, "space_guid");
    let mut body = provision_body(SHARED);
    body["parameters"] = json!({ "size": 3 });
    let reply = osb.call(Method::PUT, "/v2/service_instances/i2", Some(body)).await;
    assert_error(&reply, StatusCode::BAD_REQUEST, "unknown parameters: size");

    // GET instance.
    let got = osb.call(Method::GET, "/v2/service_instances/i1", None).await;
    assert_eq!(
        (got.status, got.body.clone()),
        (StatusCode::OK, json!({ "service_id": SERVICE_ID, "plan_id": SHARED }))
    );
    assert_error(&osb.call(Method::GET, "/v2/service_instances/i2", None).await, StatusCode::NOT_FOUND, "i2");

    // Update.
    assert_eq!(osb.update("i1", LARGE).await.status, StatusCode::OK);
    assert_eq!(osb.update("i1", LARGE).await.status, StatusCode::OK);
    assert_eq!(osb.call(Method::GET, "/v2/service_instances/i1", None).await.body["plan_id"], LARGE);
    assert_error(&osb.update("i1", FAR).await, StatusCode::UNPROCESSABLE_ENTITY, "cluster");
    assert_error(&osb.update("i1", "no-such-plan").await, StatusCode::BAD_REQUEST, "no-such-plan");
    assert_error(&osb.update("i2", LARGE).await, StatusCode::NOT_FOUND, "i2");
    assert_eq!(osb.update("i1", SHARED).await.status, StatusCode::OK);

    // Last operation of an instance.
    let op = osb.call(Method::GET, "/v2/service_instances/i1/last_operation", None).await;
    assert_eq!((op.status, op.body), (StatusCode::OK, json!({ "state": "succeeded" })));

    // Bind.
    let first = osb.bind("i1", "b1").await;
    assert_eq!(first.status, StatusCode::CREATED);
    let again = osb.bind("i1", "b1").await;
    assert_eq!(again.status, StatusCode::OK);
    assert_eq!(again.body["credentials"], first.body["credentials"]);
    let other_app =
        json!({ "service_id": SERVICE_ID, "plan_id": SHARED, "bind_resource": { "app_guid": "app-2" } });
    let reply = osb.call(Method::PUT, "/v2/service_instances/i1/service_bindings/b1", Some(other_app)).await;
    assert_error(&reply, StatusCode::CONFLICT, "different attributes");
    assert_error(&osb.bind("i2", "b1").await, StatusCode::NOT_FOUND, "i2");
    let reply = osb
        .call(
            Method::PUT,
            "/v2/service_instances/i1/service_bindings/b9",
            Some(json!({ "service_id": SERVICE_ID })),
        )
        .await;
    assert_error(&reply, StatusCode::BAD_REQUEST, "plan_id");

    // GET binding and its last operation.
    assert_eq!(osb.get_binding("i1", "b1").await.body["credentials"], first.body["credentials"]);
    assert_error(&osb.get_binding("i1", "b2").await, StatusCode::NOT_FOUND, "b2");
    let op = osb.call(Method::GET, "/v2/service_instances/i1/service_bindings/b1/last_operation", None).await;
    assert_eq!((op.status, op.body), (StatusCode::OK, json!({ "state": "succeeded" })));

    // Unbind.
    let reply = osb.call(Method::DELETE, "/v2/service_instances/i1/service_bindings/b1", None).await;
    assert_error(&reply, StatusCode::BAD_REQUEST, "service_id and plan_id are required");
    assert_eq!(osb.unbind("i1", "b1").await.status, StatusCode::OK);
    assert_error(&osb.unbind("i1", "b1").await, StatusCode::GONE, "b1");
    let op = osb.call(Method::GET, "/v2/service_instances/i1/service_bindings/b1/last_operation", None).await;
    assert_eq!(op.status, StatusCode::GONE);

    // Deprovision.
    let reply = osb.call(Method::DELETE, "/v2/service_instances/i1?service_id=x", None).await;
    assert_error(&reply, StatusCode::BAD_REQUEST, "required");
    assert_eq!(osb.deprovision("i1").await.status, StatusCode::OK);
    assert_error(&osb.deprovision("i1").await, StatusCode::GONE, "i1");
    assert_eq!(
        osb.call(Method::GET, "/v2/service_instances/i1/last_operation", None).await.status,
        StatusCode::GONE
    );

    // None of the refused requests left anything behind.
    let (keys, users, roles) = broker_made_things(&etcd).await;
    assert!(keys.is_empty() && users.is_empty() && roles.is_empty(), "{keys:?} {users:?} {roles:?}");
    broker.stop().await;
}

#[tokio::test]
async fn bad_input_gets_clear_osb_errors_and_never_a_500() {
    let etcd = start_etcd().await;
    let broker = BrokerProcess::start(&etcd, None).await;
    let osb = Osb::new(&broker.url);
    let put = |path: &str| osb.request(Method::PUT, path).header("Content-Type", "application/json");

    // Malformed and mistyped JSON.
    let reply = Osb::send(put("/v2/service_instances/i1").body("{\"service_id\": ")).await;
    assert_error(&reply, StatusCode::BAD_REQUEST, "invalid request body");
    let mut body = provision_body(SHARED);
    body["plan_id"] = json!(5);
    let reply = Osb::send(put("/v2/service_instances/i1").json(&body)).await;
    assert_error(&reply, StatusCode::BAD_REQUEST, "plan_id");
    let mut body = provision_body(SHARED);
    body["parameters"] = json!("not an object");
    let reply = Osb::send(put("/v2/service_instances/i1").json(&body)).await;
    assert_error(&reply, StatusCode::BAD_REQUEST, "invalid request body");
    let reply = Osb::send(put("/v2/service_instances/i1").body("[]")).await;
    assert_error(&reply, StatusCode::BAD_REQUEST, "invalid request body");
    let reply =
        Osb::send(put("/v2/service_instances/i1?accepts_incomplete=maybe").json(&provision_body(SHARED)))
            .await;
    assert_error(&reply, StatusCode::BAD_REQUEST, "query");

    // A huge body.
    let mut body = provision_body(SHARED);
    body["context"] = json!({ "padding": "x".repeat(1 << 20) });
    let reply = Osb::send(put("/v2/service_instances/i1").json(&body)).await;
    assert_error(&reply, StatusCode::PAYLOAD_TOO_LARGE, "larger than");

    // Ids that must not become keys or names.
    for id in ["a%2Fb", "a.b", "a%20b", "%C3%BCnic%C3%B6de", "-lead", &"x".repeat(65)] {
        let reply =
            Osb::send(put(&format!("/v2/service_instances/{id}")).json(&provision_body(SHARED))).await;
        assert_error(&reply, StatusCode::BAD_REQUEST, "invalid instance id");
        let reply = osb.bind("i1", id).await;
        assert_error(&reply, StatusCode::BAD_REQUEST, "invalid binding id");
    }
    // HTTP clients normalize "..", so send it by hand.
    let status = raw_status(&osb.url, "GET /v2/service_instances/.. HTTP/1.1").await;
    assert_eq!(status, 400);
    for path in ["/v2/service_instances/", "/v2/service_instances/a/b", "/v2/nothing", "/"] {
        let reply = Osb::send(put(path).json(&provision_body(SHARED))).await;
        assert_error(&reply, StatusCode::NOT_FOUND, "no such endpoint");
    }
    let reply = osb.call(Method::POST, "/v2/service_instances/i1", Some(provision_body(SHARED))).await;
    assert_error(&reply, StatusCode::METHOD_NOT_ALLOWED, "POST");

    // Version header: missing, old, garbage.
    let bare = |version: Option<&str>| {
        let mut b = osb.http.get(format!("{}/v2/catalog", osb.url)).basic_auth(USER, Some(PASSWORD));
        if let Some(v) = version {
            b = b.header("X-Broker-API-Version", v);
        }
        b
    };
    assert_error(&Osb::send(bare(None)).await, StatusCode::PRECONDITION_FAILED, "missing");
    assert_error(&Osb::send(bare(Some("2.12"))).await, StatusCode::PRECONDITION_FAILED, "2.12");
    assert_error(&Osb::send(bare(Some("banana"))).await, StatusCode::PRECONDITION_FAILED, "banana");
    for v in ["2.13", "2.15", "2.17"] {
        assert_eq!(Osb::send(bare(Some(v))).await.status, StatusCode::OK, "{v}");
    }

    // Auth: missing, wrong password, wrong user.
    let catalog = format!("{}/v2/catalog", osb.url);
    for builder in [
        osb.http.get(&catalog),
        osb.http.get(&catalog).basic_auth(USER, Some("wrong")),
        osb.http.get(&catalog).basic_auth("someone", Some(PASSWORD)),
    ] {
        let reply = Osb::send(builder.header("X-Broker-API-Version", VERSION)).await;
        assert_error(&reply, StatusCode::UNAUTHORIZED, "credentials");
        assert_eq!(reply.headers["www-authenticate"], "Basic realm=\"etcd-broker\"");
    }

    // Request identity is echoed, on success and on error.
    for path in ["/v2/catalog", "/v2/service_instances/missing"] {
        let reply =
            Osb::send(osb.request(Method::GET, path).header("X-Broker-API-Request-Identity", "req-42")).await;
        assert_eq!(reply.headers["x-broker-api-request-identity"], "req-42");
    }

    // Nothing was created by any of it, and the broker never answered 500.
    let (keys, users, _) = broker_made_things(&etcd).await;
    assert!(keys.is_empty() && users.is_empty(), "{keys:?} {users:?}");
    let log = broker.stop().await;
    assert!(!log.contains("status=500"), "{log}");
    assert!(!log.contains(PASSWORD), "the broker password was logged");
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

/// Sends one request line with valid headers over a plain socket; returns the status code.
async fn raw_status(url: &str, request_line: &str) -> u16 {
    use base64::Engine;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let addr = url.trim_start_matches("http://");
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let auth = base64::engine::general_purpose::STANDARD.encode(format!("{USER}:{PASSWORD}"));
    let request = format!(
        "{request_line}\r\nHost: {addr}\r\nAuthorization: Basic {auth}\r\nX-Broker-API-Version: {VERSION}\r\nConnection: close\r\n\r\n"
    );
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).await.unwrap();
    response.split(' ').nth(1).and_then(|s| s.parse().ok()).unwrap_or(0)
}

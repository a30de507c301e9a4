//! Fuzz target: request decoding. What the HTTP layer parses before the broker sees a request
//! (method, path ids, query strings, the OSB headers, JSON bodies) generated near the OSB
//! shapes and far from them, sent through the real routes to a broker on the in-memory store:
//! every answer is below 500 and, when it is an error, OSB error JSON with a description.

use std::sync::Arc;

use actix_web::http::Method;
use actix_web::test::{call_service, init_service, read_body, TestRequest};
use actix_web::App;
use proptest::prelude::*;
use serde_json::{json, Value};

use super::{routes, HttpState};
use crate::broker::tests::{broker_on, LARGE, SERVICE, SMALL};
use crate::store::memory::MemoryStore;

const AUTH: &str = "Basic YnJva2VyOnNlY3JldA=="; // broker:secret

/// One generated request.
#[derive(Debug, Clone)]
struct Request {
    method: Method,
    path: String,
    query: Vec<(String, String)>,
    headers: Vec<(&'static str, String)>,
    body: Option<Vec<u8>>,
}

fn encode(text: &str) -> String {
    url::form_urlencoded::byte_serialize(text.as_bytes()).collect()
}

/// Ids: good ones (some reused, so requests meet existing records), and any text.
fn id() -> impl Strategy<Value = String> {
    prop_oneof![
        3 => prop::sample::select(vec!["i1", "i2", "b1", "0", "a-b_c"]).prop_map(str::to_owned),
        1 => "[A-Za-z0-9][A-Za-z0-9_-]{63,66}",
        2 => any::<String>(),
        1 => prop::sample::select(vec!["", ".", "..", "%2F", "i1/..", " i1"]).prop_map(str::to_owned),
    ]
}

fn path() -> impl Strategy<Value = String> {
    (0..8usize, id(), id()).prop_map(|(shape, i, b)| {
        let (i, b) = (encode(&i), encode(&b));
        match shape {
            0 => "/v2/catalog".to_owned(),
            1 | 2 => format!("/v2/service_instances/{i}"),
            3 => format!("/v2/service_instances/{i}/last_operation"),
            4 | 5 => format!("/v2/service_instances/{i}/service_bindings/{b}"),
            6 => format!("/v2/service_instances/{i}/service_bindings/{b}/last_operation"),
            _ => format!("/{i}/{b}"),
        }
    })
}

/// Values that are catalog ids, OSB-ish, or anything.
fn text() -> impl Strategy<Value = String> {
    prop_oneof![
        prop::sample::select(vec![SERVICE, SMALL, LARGE, "true", "false", "", "null"])
            .prop_map(str::to_owned),
        any::<String>(),
    ]
}

fn query() -> impl Strategy<Value = Vec<(String, String)>> {
    let name = prop_oneof![
        prop::sample::select(vec!["service_id", "plan_id", "accepts_incomplete", "operation"])
            .prop_map(str::to_owned),
        any::<String>(),
    ];
    prop::collection::vec((name, text()), 0..4)
}

/// Header values: valid ones, near misses, and printable garbage.
fn headers() -> impl Strategy<Value = Vec<(&'static str, String)>> {
    let printable = "[ -~]{0,40}";
    let auth = prop_oneof![4 => Just(AUTH.to_owned()), 1 => Just(AUTH.to_lowercase()), 1 => printable.prop_map(String::from)];
    let version = prop_oneof![
        4 => prop::sample::select(vec!["2.13", "2.17", "2.99"]).prop_map(str::to_owned),
        1 => printable.prop_map(String::from),
        1 => "[0-9+.-]{0,8}".prop_map(String::from),
    ];
    let identity = prop_oneof![
        "[a-z]{0,10} [A-Za-z0-9+/=]{0,40}".prop_map(String::from),
        printable.prop_map(String::from),
    ];
    (
        prop::option::of(auth),
        prop::option::of(version),
        prop::option::of(identity.clone()),
        prop::option::of(identity),
    )
        .prop_map(|(a, v, o, r)| {
            let mut out = Vec::new();
            out.extend(a.map(|a| ("Authorization", a)));
            out.extend(v.map(|v| ("X-Broker-API-Version", v)));
            out.extend(o.map(|o| ("X-Broker-API-Originating-Identity", o)));
            out.extend(r.map(|r| ("X-Broker-API-Request-Identity", r)));
            out
        })
}

/// JSON values of any type, a little nested.
fn json_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        any::<f64>().prop_map(Value::from),
        text().prop_map(Value::String)
    ];
    leaf.prop_recursive(2, 8, 3, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..3).prop_map(Value::Array),
            prop::collection::btree_map(text(), inner, 0..3)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

/// Bodies: an OSB body with some fields replaced by any JSON, any JSON, or any bytes.
fn body() -> impl Strategy<Value = Option<Vec<u8>>> {
    let fields = prop::sample::select(vec![
        "service_id",
        "plan_id",
        "organization_guid",
        "space_guid",
        "context",
        "parameters",
        "app_guid",
        "bind_resource",
        "previous_values",
    ]);
    let osb = prop::collection::vec((fields, json_value()), 0..4).prop_map(|edits| {
        let mut body = json!({ "service_id": SERVICE, "plan_id": SMALL, "organization_guid": "o",
            "space_guid": "s", "bind_resource": { "app_guid": "a" } });
        for (field, value) in edits {
            body[field] = value;
        }
        body.to_string().into_bytes()
    });
    prop_oneof![
        1 => Just(None),
        4 => osb.prop_map(Some),
        1 => json_value().prop_map(|v| Some(v.to_string().into_bytes())),
        1 => any::<Vec<u8>>().prop_map(Some),
    ]
}

fn request() -> impl Strategy<Value = Request> {
    let method = prop::sample::select(vec![
        Method::GET,
        Method::PUT,
        Method::PATCH,
        Method::DELETE,
        Method::POST,
        Method::HEAD,
    ]);
    (method, path(), query(), headers(), body()).prop_map(|(method, path, query, headers, body)| Request {
        method,
        path,
        query,
        headers,
        body,
    })
}

#[test]
fn every_generated_request_gets_an_osb_answer_below_500() {
    let system = actix_web::rt::System::new();
    let app = system.block_on(init_service(App::new().configure(routes(HttpState::new(
        Arc::new(broker_on(Arc::new(MemoryStore::default()))),
        "broker",
        "secret",
        Arc::new(crate::metrics::Metrics::new()),
        Arc::default(),
    )))));
    let mut runner = proptest::test_runner::TestRunner::new(crate::fuzz_config(3000));
    runner
        .run(&request(), |r| {
            let query: String =
                r.query.iter().map(|(k, v)| format!("{}={}&", encode(k), encode(v))).collect();
            let mut req = TestRequest::default().method(r.method.clone()).uri(&format!("{}?{query}", r.path));
            for (name, value) in &r.headers {
                req = req.insert_header((*name, value.as_str()));
            }
            if let Some(body) = &r.body {
                req = req.set_payload(body.clone());
            }
            let (status, body) = system.block_on(async {
                let response = call_service(&app, req.to_request()).await;
                (response.status(), read_body(response).await)
            });
            prop_assert!(status.as_u16() < 500, "{status} for {r:?}: {body:?}");
            if r.method != Method::HEAD {
                let parsed: Result<Value, _> = serde_json::from_slice(&body);
                prop_assert!(parsed.is_ok(), "{status}, not JSON, for {r:?}: {body:?}");
                let parsed = parsed.unwrap();
                if !status.is_success() {
                    prop_assert!(
                        parsed["description"].is_string(),
                        "{status} without a description for {r:?}: {parsed}"
                    );
                }
            }
            Ok(())
        })
        .unwrap();
}

//! HTTP-layer tests on the in-memory store: exact JSON in, exact JSON out.

use std::sync::Arc;

use actix_web::{http::StatusCode, test, App};
use serde_json::{json, Value};

use super::*;
use crate::broker::tests::{broker_on, LARGE, SERVICE, SMALL};
use crate::store::memory::MemoryStore;

const AUTH: (&str, &str) = ("Authorization", "Basic YnJva2VyOnNlY3JldA=="); // broker:secret

macro_rules! app {
    () => {
        test::init_service(App::new().configure(routes(HttpState::new(
            Arc::new(broker_on(Arc::new(MemoryStore::default()))),
            "broker",
            "secret",
            Arc::new(crate::metrics::Metrics::new()),
            Arc::default(),
        ))))
        .await
    };
}

fn osb(req: test::TestRequest) -> test::TestRequest {
    req.insert_header(AUTH).insert_header(("X-Broker-API-Version", "2.14"))
}

async fn check(
    app: &impl actix_web::dev::Service<
        actix_http::Request,
        Response = actix_web::dev::ServiceResponse,
        Error = actix_web::Error,
    >,
    req: test::TestRequest,
    status: StatusCode,
    body: Value,
) {
    let response = test::call_service(app, req.to_request()).await;
    assert_eq!(response.status(), status);
    let got: Value = test::read_body_json(response).await;
    assert_eq!(got, body);
}

#[actix_web::test]
async fn catalog_is_served_as_configured() {
    let app = app!();
    let response =
        test::call_service(&app, osb(test::TestRequest::get().uri("/v2/catalog")).to_request()).await;
    assert_eq!(response.status(), StatusCode::OK);
    let body: Value = test::read_body_json(response).await;
    assert_eq!(body["services"][0]["id"], SERVICE);
    assert_eq!(body["services"][0]["plans"].as_array().unwrap().len(), 5);
    assert_eq!(
        body["services"][0]["plans"][0],
        json!({ "id": SMALL, "name": SMALL, "description": "d", "free": true })
    );
}

#[actix_web::test]
async fn provision_and_update_answer_exact_bodies() {
    let app = app!();
    let body =
        json!({ "service_id": SERVICE, "plan_id": SMALL, "organization_guid": "o", "space_guid": "s" });
    let put = || osb(test::TestRequest::put().uri("/v2/service_instances/i1")).set_json(&body);
    check(&app, put(), StatusCode::CREATED, json!({})).await;
    check(&app, put(), StatusCode::OK, json!({})).await;
    let patch = osb(test::TestRequest::patch().uri("/v2/service_instances/i1"))
        .set_json(json!({ "service_id": SERVICE, "plan_id": LARGE }));
    check(&app, patch, StatusCode::OK, json!({})).await;
    check(
        &app,
        osb(test::TestRequest::get().uri("/v2/service_instances/i1")),
        StatusCode::OK,
        json!({ "service_id": SERVICE, "plan_id": LARGE }),
    )
    .await;
    let bad = osb(test::TestRequest::put().uri("/v2/service_instances/i2")).set_json(
        json!({ "service_id": SERVICE, "plan_id": 7, "organization_guid": "o", "space_guid": "s" }),
    );
    check(
        &app,
        bad,
        StatusCode::BAD_REQUEST,
        json!({ "description": "invalid request body: plan_id: invalid type: integer `7`, expected a string" }),
    )
    .await;
}

#[actix_web::test]
async fn protocol_errors_are_osb_json() {
    let app = app!();
    let no_version = test::TestRequest::get().uri("/v2/catalog").insert_header(AUTH);
    check(
        &app,
        no_version,
        StatusCode::PRECONDITION_FAILED,
        json!({ "description": "the X-Broker-API-Version header is missing; this broker requires 2.13 or later" }),
    )
    .await;
    let no_auth = test::TestRequest::get().uri("/v2/catalog").insert_header(("X-Broker-API-Version", "2.14"));
    check(
        &app,
        no_auth,
        StatusCode::UNAUTHORIZED,
        json!({ "description": "missing or wrong broker credentials" }),
    )
    .await;
    let body =
        json!({ "service_id": SERVICE, "plan_id": SMALL, "organization_guid": "o", "space_guid": "s" });
    let put = osb(test::TestRequest::put().uri("/v2/service_instances/i1")).set_json(&body);
    check(&app, put, StatusCode::CREATED, json!({})).await;
    check(
        &app,
        osb(test::TestRequest::delete().uri("/v2/service_instances/i1?service_id=x&plan_id=y")),
        StatusCode::BAD_REQUEST,
        json!({ "description": "service_id 'x' is not in this broker's catalog" }),
    )
    .await;
}

/// Issue 22: `basic …` got 401, but RFC 9110 makes every auth scheme case-insensitive.
#[actix_web::test]
async fn the_auth_scheme_is_matched_without_regard_to_case() {
    let app = app!();
    let token = "YnJva2VyOnNlY3JldA=="; // broker:secret
    let catalog = |authorization: String| {
        test::TestRequest::get()
            .uri("/v2/catalog")
            .insert_header(("Authorization", authorization))
            .insert_header(("X-Broker-API-Version", "2.14"))
            .to_request()
    };
    for accepted in [format!("basic {token}"), format!("BASIC {token}"), format!("bAsIc  {token}")] {
        let response = test::call_service(&app, catalog(accepted.clone())).await;
        assert_eq!(response.status(), StatusCode::OK, "{accepted}");
    }
    let wrong = "YnJva2VyOndyb25n"; // broker:wrong
    for refused in [
        format!("Bearer {token}"),
        format!("Basic{token}"),
        format!("basic {wrong}"),
        format!("Basic {token} "),
        "Basic".to_owned(),
    ] {
        let response = test::call_service(&app, catalog(refused.clone())).await;
        assert_eq!(response.status(), StatusCode::UNAUTHORIZED, "{refused}");
    }
}

/// Issue 22: `2.+14` and `2.014` were accepted; a version is `2.<digits>` without a sign or a
/// leading zero.
#[actix_web::test]
async fn only_plain_version_numbers_are_well_formed() {
    use actix_web::http::header::HeaderValue;
    let check = |v: &str| protocol::check_version(Some(&HeaderValue::from_str(v).unwrap())).is_ok();
    for good in ["2.13", "2.14", "2.17", "2.100"] {
        assert!(check(good), "{good}");
    }
    for bad in ["2.+14", "2.014", "+2.14", "02.14", "2.-14", "2. 14", "2.14.1", "2.", ".14", "2.1e2"] {
        assert!(!check(bad), "{bad}");
    }
}

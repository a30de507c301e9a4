//! Acceptance: `etcd-broker serve --bosh-properties` renders the config from the BOSH job's
//! properties JSON and serves a working broker on real etcd.

use crate::common::*;
use reqwest::StatusCode;
use serde_json::{json, Value};

#[tokio::test]
async fn serve_renders_bosh_properties_and_works() {
    let etcd = start_etcd().await;
    let fixture: Value =
        serde_json::from_str(include_str!("../fixtures/bosh/properties.json")).expect("fixture is JSON");
    let broker = BrokerProcess::start_with_bosh_properties(|port, metrics_port| {
        let mut data = fixture.clone();
        data.as_object_mut().unwrap().remove("links");
        let properties = &mut data["properties"];
        properties["listen"]["port"] = json!(port);
        properties["metrics"]["port"] = json!(metrics_port);
        properties["auth"] = json!({ "username": USER, "password": PASSWORD });
        properties["clusters"] = json!({
            "main": { "endpoints": [etcd.endpoint()], "username": "root", "password": etcd.root_password() }
        });
        properties["catalog"]["services"][0]["id"] = json!(SERVICE_ID);
        properties["catalog"]["services"][0]["plans"][0]["id"] = json!(SHARED);
        properties["plan_configs"] = json!({ SHARED: { "cluster": "main" } });
        data.to_string()
    })
    .await;
    let osb = Osb::new(&broker.url);
    assert_eq!(osb.provision("bp1", SHARED).await.status, StatusCode::CREATED);
    let bound = osb.bind("bp1", "b1").await;
    assert_eq!(bound.status, StatusCode::CREATED, "{:?}", bound.body);
    let mut tenant = tenant_client(&bound.body["credentials"]).await.unwrap();
    tenant.put("/service_instances/bp1/k", "v", None).await.unwrap();
    assert_eq!(osb.unbind("bp1", "b1").await.status, StatusCode::OK);
    assert_eq!(osb.deprovision("bp1").await.status, StatusCode::OK);
    broker.stop().await;
}

#[tokio::test]
async fn a_missing_property_stops_the_start_with_bosh_s_message() {
    let dir = tempfile::tempdir().unwrap();
    let mut data: Value = serde_json::from_str(include_str!("../fixtures/bosh/properties.json")).unwrap();
    data["properties"]["auth"].as_object_mut().unwrap().remove("password");
    let path = dir.path().join("properties.json");
    std::fs::write(&path, data.to_string()).unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_etcd-broker"))
        .args(["serve", "--bosh-properties"])
        .arg(&path)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("Can't find property 'auth.password'"), "{stderr}");
    // `render` prints the TOML for inspection, and neither flag together with --config is allowed.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_etcd-broker"))
        .args(["serve", "--config", "x.toml", "--bosh-properties"])
        .arg(&path)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
}

//! Read-only and sub-prefix bindings (bind parameters) on a real etcd: what the role permits is
//! what etcd enforces, and the OSB side (catalog schema, 400s, idempotency, GET binding).

use etcd_broker_ops::osb::Incomplete;
use etcd_client::{GetOptions, PutOptions};
use reqwest::StatusCode;
use serde_json::{json, Value};

use crate::common::*;

/// Binds `binding` on plan LARGE (which takes bind parameters) with `parameters`.
async fn bind_with(osb: &Osb, instance: &str, binding: &str, parameters: Value) -> Reply {
    let body = json!({
        "service_id": SERVICE_ID,
        "plan_id": LARGE,
        "bind_resource": { "app_guid": "app-1" },
        "parameters": parameters,
    });
    osb.put_binding(instance, binding, &body, Incomplete::Refused).await.expect("broker answers")
}

fn denied<T>(result: Result<T, etcd_client::Error>, what: &str) {
    match result {
        Ok(_) => panic!("{what}: etcd allowed it"),
        Err(e) => assert!(e.to_string().contains("permission denied"), "{what}: {e}"),
    }
}

#[tokio::test]
async fn a_read_only_binding_cannot_put_delete_or_attach_a_lease() {
    let etcd = start_etcd().await;
    let broker = BrokerProcess::start(&etcd, None).await;
    let osb = Osb::new(&broker.url);
    assert_eq!(osb.provision("i1", LARGE).await.status, StatusCode::CREATED);
    let writer = bind_with(&osb, "i1", "rw", json!({})).await;
    assert_eq!(writer.status, StatusCode::CREATED, "{}", writer.reason());
    let reader = bind_with(&osb, "i1", "ro", json!({"access": "read"})).await;
    assert_eq!(reader.status, StatusCode::CREATED, "{}", reader.reason());
    assert_eq!(reader.body["credentials"]["prefix"], "/service_instances/i1/");

    let mut writer = tenant_client(&writer.body["credentials"]).await.unwrap();
    writer.put("/service_instances/i1/k", "v", None).await.unwrap();
    let mut reader = tenant_client(&reader.body["credentials"]).await.unwrap();
    // It reads (one key and the whole prefix) and watches...
    let got = reader.get("/service_instances/i1/k", None).await.unwrap();
    assert_eq!(got.kvs()[0].value(), b"v");
    let all = reader.get("/service_instances/i1/", Some(GetOptions::new().with_prefix())).await.unwrap();
    assert_eq!(all.count(), 1);
    let mut stream = reader.watch("/service_instances/i1/k", None).await.unwrap();
    writer.put("/service_instances/i1/k", "v2", None).await.unwrap();
    // The first message confirms the watch; the put follows.
    let mut events = Vec::new();
    while events.is_empty() {
        events = stream.message().await.unwrap().expect("a watch message").events().to_vec();
    }
    assert_eq!(events[0].kv().unwrap().value(), b"v2");
    // ...but neither puts, nor deletes, nor attaches a lease to a key (a put with a lease).
    denied(reader.put("/service_instances/i1/k", "x", None).await, "put");
    denied(reader.put("/service_instances/i1/new", "x", None).await, "put a new key");
    denied(reader.delete("/service_instances/i1/k", None).await, "delete");
    let lease = reader.lease_grant(60, None).await.unwrap().id();
    let with_lease = PutOptions::new().with_lease(lease);
    denied(reader.put("/service_instances/i1/k", "x", Some(with_lease.clone())).await, "lease-attach");
    // The read-write binding of the same plan does all three.
    let lease = writer.lease_grant(60, None).await.unwrap().id();
    writer.put("/service_instances/i1/leased", "x", Some(PutOptions::new().with_lease(lease))).await.unwrap();
    writer.delete("/service_instances/i1/leased", None).await.unwrap();
    let got = writer.get("/service_instances/i1/k", None).await.unwrap();
    assert_eq!(got.kvs()[0].value(), b"v2", "the refused writes changed nothing");
    broker.stop().await;
}

#[tokio::test]
async fn a_sub_prefix_binding_cannot_see_its_siblings() {
    let etcd = start_etcd().await;
    let broker = BrokerProcess::start(&etcd, None).await;
    let osb = Osb::new(&broker.url);
    assert_eq!(osb.provision("i1", LARGE).await.status, StatusCode::CREATED);
    let whole = bind_with(&osb, "i1", "whole", json!({})).await;
    let mut whole = tenant_client(&whole.body["credentials"]).await.unwrap();
    for key in ["config/a", "config-secrets/b", "configX", "top", "app/config/c"] {
        whole.put(format!("/service_instances/i1/{key}"), "sibling", None).await.unwrap();
    }
    let sub = bind_with(&osb, "i1", "sub", json!({"key_prefix": "config/"})).await;
    assert_eq!(sub.status, StatusCode::CREATED, "{}", sub.reason());
    assert_eq!(sub.body["credentials"]["prefix"], "/service_instances/i1/config/");
    let mut sub = tenant_client(&sub.body["credentials"]).await.unwrap();
    // Its own prefix: read, list, write, delete.
    let mine = sub.get("/service_instances/i1/config/", Some(GetOptions::new().with_prefix())).await.unwrap();
    assert_eq!(mine.count(), 1);
    sub.put("/service_instances/i1/config/new", "v", None).await.unwrap();
    sub.delete("/service_instances/i1/config/new", None).await.unwrap();
    // Its siblings, the whole instance, the prefix without its slash: nothing.
    for key in ["config-secrets/b", "configX", "top", "app/config/c"] {
        let key = format!("/service_instances/i1/{key}");
        denied(sub.get(key.as_str(), None).await, &format!("read {key}"));
        denied(sub.put(key.as_str(), "x", None).await, &format!("write {key}"));
    }
    for prefix in ["/service_instances/i1/", "/service_instances/i1/config"] {
        denied(sub.get(prefix, Some(GetOptions::new().with_prefix())).await, &format!("list {prefix}"));
    }
    // A read-only sub-prefix binding combines both.
    let both = bind_with(&osb, "i1", "both", json!({"access": "read", "key_prefix": "app/config/"})).await;
    let mut both = tenant_client(&both.body["credentials"]).await.unwrap();
    let got = both.get("/service_instances/i1/app/config/c", None).await.unwrap();
    assert_eq!(got.kvs()[0].value(), b"sibling");
    denied(both.put("/service_instances/i1/app/config/c", "x", None).await, "read-only sub-prefix put");
    denied(both.get("/service_instances/i1/config/a", None).await, "read-only sub-prefix sibling");
    broker.stop().await;
}

#[tokio::test]
async fn bind_parameters_are_published_checked_and_part_of_the_binding() {
    let etcd = start_etcd().await;
    let broker = BrokerProcess::start(&etcd, None).await;
    let osb = Osb::new(&broker.url);
    // The catalog publishes the schema for LARGE only.
    let catalog = osb.call(reqwest::Method::GET, "/v2/catalog", None).await.body;
    let plans = catalog["services"][0]["plans"].as_array().unwrap().clone();
    for plan in &plans {
        let schema = &plan["schemas"]["service_binding"]["create"]["parameters"];
        if plan["id"] == LARGE {
            assert_eq!(schema["properties"]["access"]["enum"], json!(["read", "readwrite"]));
            assert_eq!(schema["additionalProperties"], json!(false));
        } else {
            assert!(plan.get("schemas").is_none(), "{plan}");
        }
    }
    assert_eq!(osb.provision("i1", LARGE).await.status, StatusCode::CREATED);
    // Bad parameters: 400 in OSB's error JSON, naming the field; nothing is created.
    let cases = [
        (json!({"access": "write"}), "'access'"),
        (json!({"key_prefix": "config"}), "'key_prefix'"),
        (json!({"key_prefix": "../other/"}), "'key_prefix'"),
        (json!({"expires": 1}), "unknown bind parameter 'expires'"),
    ];
    for (parameters, needle) in cases {
        let reply = bind_with(&osb, "i1", "b1", parameters.clone()).await;
        assert_eq!(reply.status, StatusCode::BAD_REQUEST, "{parameters}");
        let description = reply.body["description"].as_str().unwrap_or_default();
        assert!(description.contains(needle), "{parameters}: {description}");
    }
    assert_eq!(osb.get_binding("i1", "b1").await.status, StatusCode::NOT_FOUND);
    // Idempotency: same parameters 200, others 409; GET shows them.
    let parameters = json!({"access": "read", "key_prefix": "config/"});
    assert_eq!(bind_with(&osb, "i1", "b1", parameters.clone()).await.status, StatusCode::CREATED);
    assert_eq!(bind_with(&osb, "i1", "b1", parameters.clone()).await.status, StatusCode::OK);
    let other = bind_with(&osb, "i1", "b1", json!({"access": "read"})).await;
    assert_eq!(other.status, StatusCode::CONFLICT);
    let got = osb.get_binding("i1", "b1").await;
    assert_eq!(got.status, StatusCode::OK);
    assert_eq!(got.body["parameters"], parameters);
    assert_eq!(got.body["credentials"]["prefix"], "/service_instances/i1/config/");
    // A plan without the option refuses bind parameters.
    let body = json!({"service_id": SERVICE_ID, "plan_id": SHARED, "parameters": {"access": "read"}});
    let refused = osb.put_binding("i1", "b2", &body, Incomplete::Refused).await.unwrap();
    assert_eq!(refused.status, StatusCode::BAD_REQUEST);
    assert!(refused.reason().contains("access"), "{}", refused.reason());
    broker.stop().await;
}

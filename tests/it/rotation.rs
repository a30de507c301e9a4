//! Rotatable and expiring bindings on a real etcd: rotation through the OSB API (2.17 only),
//! expiry metadata, an expired binding's credentials refused by etcd while its record stays,
//! and the expiry task's leader replaced within seconds after a kill -9.

use std::time::{Duration, Instant};

use reqwest::{Method, StatusCode};
use serde_json::{json, Value};

use crate::common::*;

/// Bindings of the shared plan are rotatable and expire `ttl` seconds after they are made
/// (renew 1 s before); expired ones lose their user 1 s later, looked for every second; the
/// leader's lease lasts 2 s.
fn expiring_config(port: u16, metrics_port: u16, etcd: &local_etcd::LocalEtcd, ttl: u64) -> String {
    let config = config_toml(port, metrics_port, etcd, None);
    let shared = format!("[plan_configs.\"{SHARED}\"]\ncluster = \"main\"\n");
    assert!(config.contains(&shared), "the test catalog changed");
    let options =
        format!("binding_rotatable = true\nbinding_ttl_seconds = {ttl}\nbinding_renew_before_seconds = 1\n");
    config.replace(&shared, &(shared.clone() + &options))
        + "\n[binding_expiry]\ngrace_seconds = 1\ncheck_seconds = 1\nleader_lease_seconds = 2\n"
}

async fn expiring_broker(etcd: &local_etcd::LocalEtcd, ttl: u64) -> BrokerProcess {
    BrokerProcess::start_with_config(|port, metrics| expiring_config(port, metrics, etcd, ttl), &[]).await
}

/// A bind with `X-Broker-API-Version: version` and `body`.
async fn bind_as(broker: &BrokerProcess, version: &str, binding: &str, body: Value) -> Reply {
    let url = format!("{}/v2/service_instances/i1/service_bindings/{binding}", broker.url);
    let request = reqwest::Client::new()
        .request(Method::PUT, url)
        .basic_auth(USER, Some(PASSWORD))
        .header("X-Broker-API-Version", version)
        .json(&body);
    Osb::send(request).await
}

fn rotation_of(predecessor: &str) -> Value {
    let mut body = bind_body();
    body["predecessor_binding_id"] = json!(predecessor);
    body
}

/// Waits up to `within` for `done`, polling every 100 ms; how long it took.
async fn waited_for<F, Fut>(within: Duration, mut done: F) -> Option<Duration>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let started = Instant::now();
    while started.elapsed() < within {
        if done().await {
            return Some(started.elapsed());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    None
}

#[tokio::test]
async fn bindings_rotate_and_expire_and_an_expired_one_is_refused_by_etcd() {
    let etcd = start_etcd().await;
    // Long enough for the rotation steps below, short enough to wait for.
    let broker = expiring_broker(&etcd, 8).await;
    let osb = Osb::new(&broker.url);

    let catalog = osb.call(Method::GET, "/v2/catalog", None).await.body;
    let plans = catalog["services"][0]["plans"].as_array().unwrap();
    let rotatable =
        |id: &str| plans.iter().find(|p| p["id"] == id).unwrap().get("binding_rotatable").cloned();
    assert_eq!((rotatable(SHARED), rotatable(LARGE)), (Some(json!(true)), None));

    assert_eq!(osb.provision("i1", SHARED).await.status, StatusCode::CREATED);
    let first = osb.bind("i1", "b1").await;
    assert_eq!(first.status, StatusCode::CREATED, "{:?}", first.body);
    let expires_at = first.body["metadata"]["expires_at"].as_str().unwrap().to_owned();
    let renew_before = first.body["metadata"]["renew_before"].as_str().unwrap().to_owned();
    assert!(expires_at.ends_with(".0Z") && renew_before < expires_at, "{expires_at} {renew_before}");

    let second = bind_as(&broker, VERSION, "b2", rotation_of("b1")).await;
    assert_eq!(second.status, StatusCode::CREATED, "{:?}", second.body);
    assert_ne!(second.body["credentials"]["password"], first.body["credentials"]["password"]);
    let again = bind_as(&broker, VERSION, "b2", rotation_of("b1")).await;
    assert_eq!((again.status, &again.body["credentials"]), (StatusCode::OK, &second.body["credentials"]));
    // Both work side by side.
    for binding in [&first, &second] {
        let mut client = tenant_client(&binding.body["credentials"]).await.unwrap();
        client.put("/service_instances/i1/k", "v", None).await.unwrap();
    }
    // A request of OSB 2.16 has no rotation: the field is ignored, and the bind is a plain one.
    let old = bind_as(&broker, "2.16", "b3", rotation_of("nobody")).await;
    assert_eq!(old.status, StatusCode::CREATED, "{:?}", old.body);
    let refused = bind_as(&broker, VERSION, "b4", rotation_of("nobody")).await;
    assert_eq!(refused.status, StatusCode::BAD_REQUEST, "{:?}", refused.body);
    assert!(refused.reason().contains("is not a binding of service instance 'i1'"), "{:?}", refused.body);

    // Past expiry and grace, etcd refuses b1's credentials; its record stays until unbind.
    let credentials = first.body["credentials"].clone();
    let revoked =
        waited_for(Duration::from_secs(20), || async { tenant_client(&credentials).await.is_err() }).await;
    assert!(revoked.is_some(), "b1 still logs in: {}", broker.log_text());
    let fetched = osb.get_binding("i1", "b1").await;
    assert_eq!(
        (fetched.status, &fetched.body["metadata"]["expires_at"]),
        (StatusCode::OK, &json!(expires_at))
    );
    let metrics = scrape(&broker).await;
    assert_eq!(sample(&metrics, "etcd_broker_binding_expiry_leader"), 1.0);
    assert!(sample(&metrics, "etcd_broker_bindings_revoked_total") >= 1.0, "{metrics}");
    assert_eq!(osb.unbind("i1", "b1").await.status, StatusCode::OK);
    assert!(!broker.log_text().contains(credentials["password"].as_str().unwrap()));
    broker.stop().await;
    etcd.stop().await;
}

#[tokio::test]
async fn a_killed_expiry_leader_is_replaced_within_seconds() {
    let etcd = start_etcd().await;
    let mut brokers = [expiring_broker(&etcd, 2).await, expiring_broker(&etcd, 2).await];
    let leading = |broker: &BrokerProcess| {
        let metrics_url = broker.metrics_url.clone();
        async move {
            let text = reqwest::get(format!("{metrics_url}/metrics")).await.ok()?.text().await.ok()?;
            Some(sample(&text, "etcd_broker_binding_expiry_leader") == 1.0)
        }
    };
    let one_leads = waited_for(Duration::from_secs(10), || async {
        let (a, b) = (leading(&brokers[0]).await, leading(&brokers[1]).await);
        matches!((a, b), (Some(true), Some(false)) | (Some(false), Some(true)))
    })
    .await;
    assert!(one_leads.is_some(), "no single leader");
    let leader = if leading(&brokers[0]).await == Some(true) { 0 } else { 1 };
    let survivor = 1 - leader;
    // It keeps leading on the lease it took: renewals answer (2.5 ttls of 2 s).
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert_eq!(leading(&brokers[leader]).await, Some(true), "the leader stepped down");
    let metrics = scrape(&brokers[leader]).await;
    let grants = "etcd_broker_etcd_request_duration_seconds_count{call=\"grant_lease\",cluster=\"main\"}";
    // One lease per task it leads: the expiry's, and the inventory's if it leads that too.
    let tasks = 1.0 + sample(&metrics, "etcd_broker_inventory_leader");
    assert_eq!(sample(&metrics, grants), tasks, "the leader took more than one lease per task");

    brokers[leader].kill().await;
    let took =
        waited_for(Duration::from_secs(15), || async { leading(&brokers[survivor]).await == Some(true) })
            .await
            .unwrap_or_else(|| panic!("no new leader: {}", brokers[survivor].log_text()));
    // The lease's ttl (2 s) plus a follower's poll (1 s), with room for a busy machine.
    assert!(took < Duration::from_secs(8), "a new leader after {took:?}");

    // The new leader does the work: a binding made now is revoked by it.
    let osb = Osb::new(&brokers[survivor].url);
    assert_eq!(osb.provision("i1", SHARED).await.status, StatusCode::CREATED);
    let bound = osb.bind("i1", "b1").await;
    let credentials = bound.body["credentials"].clone();
    tenant_client(&credentials).await.expect("a fresh binding logs in");
    let revoked =
        waited_for(Duration::from_secs(20), || async { tenant_client(&credentials).await.is_err() }).await;
    assert!(revoked.is_some(), "not revoked: {}", brokers[survivor].log_text());
    let [a, b] = brokers;
    a.stop().await;
    b.stop().await;
    etcd.stop().await;
}

/// The leader's lease calls on a real etcd: a renewal answers at once (a renewal that waited
/// for its request timeout would cost the leader its lease), an ended lease is said to be
/// ended, and a key put on a lease goes with it.
#[tokio::test]
async fn leases_renew_at_once_and_end_with_their_keys() {
    use etcd_broker::store::Store;
    let etcd = start_etcd().await;
    let store = store_on(&etcd, etcd_broker::etcd::Observer::default());
    let lease = store.grant_lease(Duration::from_secs(5)).await.unwrap();
    assert!(store.put_if_absent_leased("/etcd-broker/leaders/t", b"me", lease).await.unwrap());
    assert!(!store.put_if_absent_leased("/etcd-broker/leaders/t", b"other", lease).await.unwrap());
    for _ in 0..3 {
        let started = Instant::now();
        assert!(store.renew_lease(lease).await.unwrap());
        assert!(started.elapsed() < Duration::from_secs(2), "a renewal took {:?}", started.elapsed());
    }
    store.revoke_lease(lease).await.unwrap();
    store.revoke_lease(lease).await.unwrap();
    assert!(!store.renew_lease(lease).await.unwrap());
    assert_eq!(store.get("/etcd-broker/leaders/t").await.unwrap(), None);
    etcd.stop().await;
}

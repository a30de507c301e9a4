//! Acceptance: the whole lifecycle and tenant isolation, on a real etcd with auth enabled.

use crate::common::*;
use etcd_client::{GetOptions, Permission};
use reqwest::{Method, StatusCode};
use serde_json::Value;

#[tokio::test]
async fn full_lifecycle_on_real_etcd_leaves_nothing_behind() {
    let etcd = start_etcd().await;
    let broker = BrokerProcess::start(&etcd, None).await;
    let osb = Osb::new(&broker.url);

    let catalog = osb.call(Method::GET, "/v2/catalog", None).await;
    assert_eq!(catalog.status, StatusCode::OK);
    assert_eq!(catalog.body["services"][0]["id"], SERVICE_ID);
    assert_eq!(catalog.body["services"][0]["bindings_retrievable"], true);

    assert_eq!(osb.provision("inst-1", SHARED).await.status, StatusCode::CREATED);
    let bound = osb.bind("inst-1", "bind-1").await;
    assert_eq!(bound.status, StatusCode::CREATED, "{:?}", bound.body);
    let creds = bound.body["credentials"].clone();
    assert_eq!(creds["prefix"], "/service_instances/inst-1/");
    assert_eq!(creds["endpoints"][0], etcd.endpoint());
    assert_eq!(creds["tls"]["enabled"], false);
    let fetched = osb.get_binding("inst-1", "bind-1").await;
    assert_eq!(fetched.body["credentials"], creds);

    // Inside the prefix: read and write.
    let mut tenant = tenant_client(&creds).await.unwrap();
    tenant.put("/service_instances/inst-1/greeting", "hello", None).await.unwrap();
    let got = tenant.get("/service_instances/inst-1/greeting", None).await.unwrap();
    assert_eq!(got.kvs()[0].value(), b"hello");
    // Outside it: denied.
    let denied = tenant.put("/service_instances/other/x", "y", None).await.unwrap_err();
    assert!(denied.to_string().contains("permission denied"), "{denied}");

    // Unbind: the credentials stop working for new connections.
    assert_eq!(osb.unbind("inst-1", "bind-1").await.status, StatusCode::OK);
    assert!(tenant_client(&creds).await.is_err(), "old credentials still authenticate");
    assert!(tenant.get("/service_instances/inst-1/greeting", None).await.is_err(), "old token still works");

    // Rebind: a different password, the data is still there.
    let rebound = osb.bind("inst-1", "bind-2").await;
    assert_eq!(rebound.status, StatusCode::CREATED);
    let creds2 = rebound.body["credentials"].clone();
    assert_ne!(creds2["password"], creds["password"]);
    let mut tenant2 = tenant_client(&creds2).await.unwrap();
    let got = tenant2.get("/service_instances/inst-1/greeting", None).await.unwrap();
    assert_eq!(got.kvs()[0].value(), b"hello");

    assert_eq!(osb.unbind("inst-1", "bind-2").await.status, StatusCode::OK);
    // A binding left in place is removed by the deprovision.
    assert_eq!(osb.bind("inst-1", "bind-3").await.status, StatusCode::CREATED);
    assert_eq!(osb.deprovision("inst-1").await.status, StatusCode::OK);

    let (keys, users, roles) = broker_made_things(&etcd).await;
    assert!(keys.is_empty(), "keys left: {keys:?}");
    assert!(users.is_empty(), "users left: {users:?}");
    assert!(roles.is_empty(), "roles left: {roles:?}");
    broker.stop().await;
}

#[tokio::test]
async fn a_binding_is_confined_to_its_own_prefix() {
    let etcd = start_etcd().await;
    let broker = BrokerProcess::start(&etcd, None).await;
    let osb = Osb::new(&broker.url);
    for id in ["abc", "abcd"] {
        assert_eq!(osb.provision(id, SHARED).await.status, StatusCode::CREATED);
    }
    let a: Value = osb.bind("abc", "ba").await.body["credentials"].clone();
    let b: Value = osb.bind("abcd", "bb").await.body["credentials"].clone();
    let mut tenant_b = tenant_client(&b).await.unwrap();
    tenant_b.put("/service_instances/abcd/secret", "b-data", None).await.unwrap();

    let mut tenant_a = tenant_client(&a).await.unwrap();
    tenant_a.put("/service_instances/abc/mine", "a-data", None).await.unwrap();
    let denied = |r: Result<(), etcd_client::Error>, what: &str| {
        let e = r.expect_err(what);
        assert!(e.to_string().contains("permission denied"), "{what}: {e}");
    };
    // The sibling whose id has ours as a string prefix.
    denied(tenant_a.get("/service_instances/abcd/secret", None).await.map(|_| ()), "read sibling");
    denied(tenant_a.put("/service_instances/abcd/secret", "x", None).await.map(|_| ()), "write sibling");
    denied(
        tenant_a.get("/service_instances/abcd", Some(GetOptions::new().with_prefix())).await.map(|_| ()),
        "list sibling",
    );
    denied(
        tenant_a.get("/service_instances/abc", Some(GetOptions::new().with_prefix())).await.map(|_| ()),
        "prefix without slash",
    );
    denied(tenant_a.delete("/service_instances/abcd/secret", None).await.map(|_| ()), "delete sibling");
    // The broker's state, and everything.
    denied(
        tenant_a.get("/etcd-broker/", Some(GetOptions::new().with_prefix())).await.map(|_| ()),
        "read broker state",
    );
    denied(tenant_a.put("/etcd-broker/instances/abc", "{}", None).await.map(|_| ()), "write broker state");
    denied(tenant_a.get("", Some(GetOptions::new().with_all_keys())).await.map(|_| ()), "read all keys");
    // No administration.
    assert!(tenant_a.user_list().await.is_err(), "tenant can list users");
    assert!(tenant_a.role_list().await.is_err(), "tenant can list roles");
    let role = a["username"].as_str().unwrap();
    assert!(
        tenant_a.role_grant_permission(role, Permission::read_write("").with_all_keys()).await.is_err(),
        "tenant can widen its own role"
    );
    assert!(tenant_a.user_grant_role(role, "root").await.is_err(), "tenant can grant itself root");
    assert!(tenant_a.user_add("intruder", "pw", None).await.is_err(), "tenant can add users");
    // B's data is untouched.
    let got = tenant_b.get("/service_instances/abcd/secret", None).await.unwrap();
    assert_eq!(got.kvs()[0].value(), b"b-data");
    broker.stop().await;
}

/// The role reaper deletes in the pauses of the OSB traffic: while requests keep coming (one
/// every 100 ms, below the half second of quiet it waits for) an unbound binding's role stays
/// queued; once they stop, it goes. Timing-based: scripts/test.sh runs it on etcd 3.5 only.
#[tokio::test]
async fn roles_are_deleted_in_the_pauses_of_the_osb_traffic() {
    let etcd = start_etcd().await;
    let broker = BrokerProcess::start(&etcd, None).await;
    let osb = Osb::new(&broker.url);
    assert_eq!(osb.provision("inst-q", SHARED).await.status, StatusCode::CREATED);
    assert_eq!(osb.bind("inst-q", "bind-q").await.status, StatusCode::CREATED);
    let role = "etcd-broker.inst-q.bind-q";
    assert_eq!(osb.unbind("inst-q", "bind-q").await.status, StatusCode::OK);
    let busy_until = std::time::Instant::now() + std::time::Duration::from_secs(2);
    while std::time::Instant::now() < busy_until {
        assert_eq!(osb.call(Method::GET, "/v2/catalog", None).await.status, StatusCode::OK);
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    let mut root = etcd.root_client().await.unwrap();
    let entry = root.get(format!("/etcd-broker/role-deletions/{role}"), None).await.unwrap();
    assert_eq!(entry.count(), 1, "the role left the queue while the broker was busy");
    assert!(root.role_get(role).await.is_ok(), "the role was deleted while the broker was busy");
    assert_eq!(osb.deprovision("inst-q").await.status, StatusCode::OK);
    let (keys, users, roles) = broker_made_things(&etcd).await;
    assert!(keys.is_empty() && users.is_empty() && roles.is_empty(), "{keys:?} {users:?} {roles:?}");
}

/// What a broker killed during a bind and an unbind of the same binding left (issue 22): the
/// unbind answered 200 and deleted the record, then the bind still in flight created the user
/// and died before its clean-up. Here the broker is killed right after the unbind (its reaper
/// waits for half a second of quiet, so it has not run), and the late bind's user is made
/// as root. The next broker's role reaper finds the user from the unbind's queue entry.
#[tokio::test]
async fn a_user_created_by_a_bind_killed_after_its_unbind_is_deleted() {
    let etcd = start_etcd().await;
    let broker = BrokerProcess::start(&etcd, None).await;
    let osb = Osb::new(&broker.url);
    assert_eq!(osb.provision("inst-k", SHARED).await.status, StatusCode::CREATED);
    assert_eq!(osb.bind("inst-k", "bind-k").await.status, StatusCode::CREATED);
    assert_eq!(osb.unbind("inst-k", "bind-k").await.status, StatusCode::OK);
    broker.stop().await;
    let name = "etcd-broker.inst-k.bind-k";
    let mut root = etcd.root_client().await.unwrap();
    let entry = root.get(format!("/etcd-broker/role-deletions/{name}"), None).await.unwrap();
    assert_eq!(entry.count(), 1, "the reaper ran before the broker was killed");
    assert!(root.role_get(name).await.is_ok(), "the reaper ran before the broker was killed");
    root.user_add(name, "late-bind-password", None).await.unwrap();
    root.user_grant_role(name, name).await.unwrap();

    let broker = BrokerProcess::start(&etcd, None).await;
    let osb = Osb::new(&broker.url);
    assert_eq!(osb.unbind("inst-k", "bind-k").await.status, StatusCode::GONE);
    let (_, users, roles) = broker_made_things(&etcd).await;
    assert!(users.is_empty() && roles.is_empty(), "left behind: {users:?} {roles:?}");
    assert_eq!(osb.deprovision("inst-k").await.status, StatusCode::OK);
}

/// Deprovision removes the users and roles that the bind markers of its instance name (what a
/// bind killed after the role reaper took its unbind's entry leaves: its user, made after the
/// unbind, and its marker, written with its first record), and nothing of an instance whose
/// id merely starts with the same letters. A user an older broker's bind left, without a
/// marker, is reconcile's to find: deprovision no longer lists every user.
#[tokio::test]
async fn deprovision_deletes_the_users_and_roles_that_bind_markers_name() {
    use etcd_broker::broker::names::Names;
    use etcd_broker::broker::records::{encode, BindMarker};
    let etcd = start_etcd().await;
    let broker = BrokerProcess::start(&etcd, None).await;
    let osb = Osb::new(&broker.url);
    for id in ["inst-s", "inst-s2"] {
        assert_eq!(osb.provision(id, SHARED).await.status, StatusCode::CREATED);
        assert_eq!(osb.bind(id, "bind-1").await.status, StatusCode::CREATED);
    }
    let (keys, _, _) = broker_made_things(&etcd).await;
    assert!(!keys.iter().any(|k| k.contains("binds-in-flight")), "a finished bind left its marker: {keys:?}");
    let mut root = etcd.root_client().await.unwrap();
    let names = Names::default();
    for binding in ["lost", "role-only"] {
        let marker = BindMarker { cluster: "main".into(), started_at: 1 };
        root.put(names.bind_marker_key("inst-s", binding), encode(&marker), None).await.unwrap();
    }
    for name in ["etcd-broker.inst-s.lost", "etcd-broker.inst-s.role-only", "etcd-broker.inst-s.legacy"] {
        root.role_add(name).await.unwrap();
    }
    for name in ["etcd-broker.inst-s.lost", "etcd-broker.inst-s.legacy"] {
        root.user_add(name, "pw", None).await.unwrap();
        root.user_grant_role(name, name).await.unwrap();
    }

    assert_eq!(osb.deprovision("inst-s").await.status, StatusCode::OK);
    let (keys, users, roles) = broker_made_things(&etcd).await;
    assert!(!keys.iter().any(|k| k.contains("binds-in-flight")), "markers left: {keys:?}");
    assert_eq!(users, ["etcd-broker.inst-s.legacy", "etcd-broker.inst-s2.bind-1"]);
    assert_eq!(roles, ["etcd-broker.inst-s.legacy", "etcd-broker.inst-s2.bind-1"]);
    root.user_delete("etcd-broker.inst-s.legacy").await.unwrap();
    root.role_delete("etcd-broker.inst-s.legacy").await.unwrap();
    assert_eq!(osb.deprovision("inst-s2").await.status, StatusCode::OK);
    let (keys, users, roles) = broker_made_things(&etcd).await;
    assert!(keys.is_empty() && users.is_empty() && roles.is_empty(), "{keys:?} {users:?} {roles:?}");
}

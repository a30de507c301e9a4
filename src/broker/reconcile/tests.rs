//! reconcile on the in-memory store: each kind of inconsistency made by hand is found, the safe
//! repairs fix exactly it, a repair cut by a fault at any store call is finished by the next
//! run, and a healthy deployment reports nothing.

use std::sync::Arc;

use super::{Kind, Repair, Repaired, Report, Settings};
use crate::broker::records::{decode, encode, BindMarker, BindingRecord, RecordState, RoleDeletion};
use crate::broker::tests::*;
use crate::osb::ServiceBroker;
use crate::store::faulty::{FailMode, FaultyStore};
use crate::store::memory::MemoryStore;
use crate::store::{Access, Permission, Store, Write};

const CHECK: Settings = Settings { stuck_after: 600, grants: true };

fn kinds(report: &Report) -> Vec<(Kind, String)> {
    report.findings.iter().map(|f| (f.kind, f.subject.clone())).collect()
}

/// i1 with b1, b2 (ready, sealed by k1).
async fn healthy() -> Arc<MemoryStore> {
    let store = Arc::new(MemoryStore::default());
    let broker = sealed_broker_on(store.clone());
    broker.provision(provision_req("i1", SMALL)).await.unwrap();
    broker.bind(bind_req("i1", "b1")).await.unwrap();
    broker.bind(bind_req("i1", "b2")).await.unwrap();
    store
}

/// Rewrites the binding record of `b` with `edit`, keeping it otherwise as it is.
async fn edit_binding(store: &MemoryStore, b: &str, edit: impl FnOnce(&mut BindingRecord)) {
    let key = format!("/etcd-broker/bindings/i1/{b}");
    let found = store.get(&key).await.unwrap().unwrap();
    let mut record: BindingRecord = decode(&key, &found.value).unwrap();
    edit(&mut record);
    store.commit(&[], &[Write::Put(key, encode(&record))]).await.unwrap();
}

/// Every kind a hand can make on the memory store: an orphan user and role, a missing user, a
/// role with a foreign permission, a user with a foreign role, orphan data, a binding stuck in
/// `creating` and one in `deleting`, a stale queue entry, a stale bind marker naming a user and
/// role (a bind killed after an unbind deleted its record), a bind marker of a gone instance.
async fn broken() -> Arc<MemoryStore> {
    let store = healthy().await;
    let broker = sealed_broker_on(store.clone());
    broker.bind(bind_req("i1", "b3")).await.unwrap();
    broker.bind(bind_req("i1", "b4")).await.unwrap();
    broker.bind(bind_req("i1", "b5")).await.unwrap();
    store
        .ensure_role("etcd-broker.i9.b9", &Permission::read_write_prefix("/service_instances/i9/"))
        .await
        .unwrap();
    store.ensure_user("etcd-broker.i9.b9", "pw", "etcd-broker.i9.b9").await.unwrap();
    store.delete_user("etcd-broker.i1.b1").await.unwrap();
    let foreign = Permission { access: Access::Read, key: b"/".to_vec(), range_end: vec![0] };
    store.state.lock().unwrap().roles.get_mut("etcd-broker.i1.b2").unwrap().insert(foreign);
    store.ensure_role("root", &Permission::read_write_prefix("/")).await.unwrap();
    store.ensure_user("etcd-broker.i1.b3", "ignored", "root").await.unwrap();
    store.commit(&[], &[Write::Put("/service_instances/gone/k".into(), b"tenant".to_vec())]).await.unwrap();
    edit_binding(&store, "b4", |r| (r.state, r.updated_at) = (RecordState::Creating, 1)).await;
    edit_binding(&store, "b5", |r| (r.state, r.updated_at) = (RecordState::Deleting, 1)).await;
    let entry = RoleDeletion {
        role: "etcd-broker.i1.old".into(),
        user: None,
        cluster: "main".into(),
        secret_location: None,
        queued_at: 1,
    };
    store
        .ensure_role("etcd-broker.i1.old", &Permission::read_write_prefix("/service_instances/i1/"))
        .await
        .unwrap();
    store
        .commit(&[], &[Write::Put("/etcd-broker/role-deletions/etcd-broker.i1.old".into(), encode(&entry))])
        .await
        .unwrap();
    store
        .ensure_role("etcd-broker.i1.b6", &Permission::read_write_prefix("/service_instances/i1/"))
        .await
        .unwrap();
    store.ensure_user("etcd-broker.i1.b6", "pw", "etcd-broker.i1.b6").await.unwrap();
    put_marker(&store, "i1", "b6", 1).await;
    put_marker(&store, "i8", "b8", now()).await;
    store
}

/// A bind marker as a bind's first transaction writes it, started at `started_at`.
async fn put_marker(store: &MemoryStore, instance: &str, binding: &str, started_at: u64) {
    let marker = BindMarker { cluster: "main".into(), started_at };
    let key = format!("/etcd-broker/binds-in-flight/{instance}/{binding}");
    store.commit(&[], &[Write::Put(key, encode(&marker))]).await.unwrap();
}

#[tokio::test]
async fn a_healthy_deployment_reports_nothing() {
    let store = healthy().await;
    let report = sealed_broker_on(store.clone()).reconcile(&CHECK, Repair::Nothing).await.unwrap();
    assert!(report.findings.is_empty(), "{report:?}");
    assert_eq!((report.checked.instances, report.checked.bindings), (1, 2));
    assert_eq!((report.checked.users, report.checked.roles), (2, 2));
    assert_eq!(report.counts.len(), Kind::ALL.len());
    assert!(report.counts.values().all(|n| *n == 0));
}

#[tokio::test]
async fn each_inconsistency_is_found_and_only_the_safe_ones_repaired() {
    let store = broken().await;
    let broker = sealed_broker_on(store.clone());
    let before = store.snapshot();
    let found = broker.reconcile(&CHECK, Repair::Nothing).await.unwrap();
    assert_eq!(store.snapshot().keys, before.keys, "a check wrote");
    let expected = [
        (Kind::OrphanUser, "etcd-broker.i9.b9"),
        (Kind::OrphanRole, "etcd-broker.i9.b9"),
        (Kind::MissingUser, "/etcd-broker/bindings/i1/b1"),
        (Kind::WrongGrants, "/etcd-broker/bindings/i1/b2"),
        (Kind::WrongGrants, "/etcd-broker/bindings/i1/b3"),
        (Kind::OrphanData, "/service_instances/gone/"),
        (Kind::StuckCreating, "/etcd-broker/bindings/i1/b4"),
        (Kind::StuckDeleting, "/etcd-broker/bindings/i1/b5"),
        (Kind::StaleRoleDeletion, "/etcd-broker/role-deletions/etcd-broker.i1.old"),
        (Kind::StaleBindMarker, "/etcd-broker/binds-in-flight/i1/b6"),
        (Kind::StaleBindMarker, "/etcd-broker/binds-in-flight/i8/b8"),
    ];
    let mut got = kinds(&found);
    got.sort();
    let mut want: Vec<(Kind, String)> = expected.iter().map(|(k, s)| (*k, s.to_string())).collect();
    want.sort();
    assert_eq!(got, want, "{found:#?}");
    assert_eq!(found.counts["wrong_grants"], 2);
    assert!(found.findings.iter().all(|f| f.repair.is_none()));

    let repaired = broker.reconcile(&CHECK, Repair::Safe).await.unwrap();
    for finding in &repaired.findings {
        let expected = match finding.kind {
            Kind::StuckCreating => None,
            Kind::OrphanData => Some("skipped"),
            _ => Some("repaired"),
        };
        if let Some(Repaired::Failed(why)) = &finding.repair {
            panic!("{finding:?}: {why}");
        }
        let got = finding.repair.as_ref().map(Repaired::name);
        assert_eq!(got, expected, "{finding:?}");
    }
    let state = store.snapshot();
    assert!(state.keys.contains_key("/service_instances/gone/k"), "tenant data deleted without the flag");
    assert!(!state.users.contains_key("etcd-broker.i9.b9") && !state.roles.contains_key("etcd-broker.i9.b9"));
    assert!(!state.roles.contains_key("etcd-broker.i1.old"));
    assert!(!state.users.contains_key("etcd-broker.i1.b6") && !state.roles.contains_key("etcd-broker.i1.b6"));
    assert!(!state.keys.keys().any(|k| k.starts_with("/etcd-broker/binds-in-flight/")), "a marker is left");
    assert_eq!(state.users["etcd-broker.i1.b3"].1, ["etcd-broker.i1.b3".to_owned()].into());
    assert!(state.users.contains_key("etcd-broker.i1.b1"));
    // The recreated user has the recorded password: GET binding's credentials work.
    let got = broker
        .get_binding(
            &crate::osb::InstanceId::parse("i1").unwrap(),
            &crate::osb::BindingId::parse("b1").unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(state.users["etcd-broker.i1.b1"].0, got.credentials["password"].as_str().unwrap());

    let again = broker.reconcile(&CHECK, Repair::Safe).await.unwrap();
    assert_eq!(
        kinds(&again),
        [
            (Kind::OrphanData, "/service_instances/gone/".to_owned()),
            (Kind::StuckCreating, "/etcd-broker/bindings/i1/b4".to_owned())
        ]
    );
    let data = broker.reconcile(&CHECK, Repair::SafeAndOrphanData).await.unwrap();
    assert_eq!(data.findings[0].repair, Some(Repaired::Repaired));
    let state = store.snapshot();
    assert!(!state.keys.keys().any(|k| k.starts_with("/service_instances/gone/")));
    assert!(!state.keys.contains_key("/etcd-broker/instances/gone"), "the claim is left");
    assert_eq!(kinds(&broker.reconcile(&CHECK, Repair::Nothing).await.unwrap()).len(), 1);
}

#[tokio::test]
async fn young_creating_and_deleting_records_are_operations_in_flight() {
    let store = healthy().await;
    edit_binding(&store, "b1", |r| r.state = RecordState::Creating).await;
    edit_binding(&store, "b2", |r| r.state = RecordState::Deleting).await;
    store.delete_user("etcd-broker.i1.b1").await.unwrap();
    store.delete_user("etcd-broker.i1.b2").await.unwrap();
    // A bind whose record an unbind deleted, still running: its user is no orphan.
    store
        .ensure_role("etcd-broker.i1.b7", &Permission::read_write_prefix("/service_instances/i1/"))
        .await
        .unwrap();
    store.ensure_user("etcd-broker.i1.b7", "pw", "etcd-broker.i1.b7").await.unwrap();
    put_marker(&store, "i1", "b7", now()).await;
    let report = sealed_broker_on(store.clone()).reconcile(&CHECK, Repair::Nothing).await.unwrap();
    assert!(report.findings.is_empty(), "{report:#?}");
    assert_eq!(report.checked.bind_markers, 1);
    let strict = Settings { stuck_after: 0, ..CHECK };
    let mut old = sealed_broker_on(store.clone());
    old.setup.clock = Arc::new(Later);
    let report = old.reconcile(&strict, Repair::Nothing).await.unwrap();
    assert_eq!(report.count_by_kind()[&Kind::StuckCreating], 1);
    assert_eq!(report.count_by_kind()[&Kind::StuckDeleting], 1);
    assert_eq!(report.count_by_kind()[&Kind::StaleBindMarker], 1);
    assert_eq!(report.count_by_kind()[&Kind::OrphanUser], 0, "the marker names the user");
}

/// A clock a day ahead.
struct Later;

impl crate::clock::Clock for Later {
    fn now_unix(&self) -> u64 {
        crate::clock::SystemClock.now_unix() + 86_400
    }
}

#[tokio::test]
async fn records_sealed_by_a_key_the_keychain_lacks_are_reported() {
    let store = healthy().await;
    let broker = crate::broker::tests::broker_with(store.clone(), crate::sealing::Sealing::On(only_k2()));
    let report = broker.reconcile(&CHECK, Repair::Safe).await.unwrap();
    assert_eq!(report.count_by_kind()[&Kind::SealedWithUnknownKey], 2, "{report:#?}");
    assert!(report.findings.iter().all(|f| f.repair.is_none()));
}

/// A keychain holding k2 only (records of [`healthy`] are sealed by k1).
fn only_k2() -> crate::sealing::Keychain {
    let full = test_keychain("k2");
    let k2 = full.get("k2").unwrap().clone();
    crate::sealing::Keychain::new("k2", [k2]).unwrap()
}

#[tokio::test]
async fn a_repair_stopped_at_any_store_call_is_finished_by_the_next_run() {
    for mode in [FailMode::Before, FailMode::After] {
        for n in 0.. {
            let store = broken().await;
            let faulty = Arc::new(FaultyStore::new(store.clone(), Some(n), mode));
            let cut = sealed_broker_on(faulty.clone()).reconcile(&CHECK, Repair::SafeAndOrphanData).await;
            let reached = faulty.calls() > n;
            assert_indexes_match_records(&store.snapshot());
            let broker = sealed_broker_on(store.clone());
            broker.reconcile(&CHECK, Repair::SafeAndOrphanData).await.unwrap();
            let left = broker.reconcile(&CHECK, Repair::Nothing).await.unwrap();
            assert_eq!(
                kinds(&left),
                [(Kind::StuckCreating, "/etcd-broker/bindings/i1/b4".to_owned())],
                "call {n} ({mode:?}), first run: {:?}",
                cut.map(|r| r.findings.len())
            );
            if !reached {
                break;
            }
        }
    }
}

#[tokio::test]
async fn an_expired_bindings_missing_user_is_no_finding_and_never_made_again() {
    let (store, clock, broker) = crate::broker::tests::rotating().await;
    // Past expiry and grace: the user goes, whether the expiry leader came by yet or not.
    clock.set(1_003_900);
    store.delete_user("etcd-broker.i1.b1").await.unwrap();
    let report = broker.reconcile(&CHECK, Repair::Safe).await.unwrap();
    assert!(report.findings.is_empty(), "{:?}", report.findings);
    assert!(!store.snapshot().users.contains_key("etcd-broker.i1.b1"));
}

/// Now, by the clock brokers of these tests tell the time with.
fn now() -> u64 {
    crate::clock::Clock::now_unix(&crate::clock::SystemClock)
}

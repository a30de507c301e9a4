//! Unit tests of the broker logic on the in-memory store, including crash safety: every store
//! call of every operation is made to fail once (before or after it takes effect), and a retry
//! must converge with no orphan users, roles or records.

use std::collections::HashMap;
use std::sync::Arc;

use serde_json::json;
use url::Url;

use super::records::{BindingRecord, RecordState, RoleDeletion};
use super::role_deletions::QueueStep;
use super::*;
use crate::clock::SystemClock;
use crate::osb::catalog::{Plan, Service};
use crate::store::faulty::{FailMode, FaultyStore};
use crate::store::memory::{MemoryState, MemoryStore};
use crate::store::Write;

pub const SERVICE: &str = "svc-etcd";
pub const SMALL: &str = "plan-small";
pub const LARGE: &str = "plan-large";
pub const FAR: &str = "plan-far";

fn plan(id: &str) -> Plan {
    Plan {
        id: id.into(),
        name: id.into(),
        description: "d".into(),
        free: true,
        bindable: None,
        plan_updateable: None,
        metadata: None,
    }
}

pub fn catalog() -> Catalog {
    Catalog {
        services: vec![Service {
            id: SERVICE.into(),
            name: "etcd".into(),
            description: "etcd".into(),
            bindable: true,
            plan_updateable: true,
            instances_retrievable: true,
            bindings_retrievable: true,
            tags: vec![],
            metadata: None,
            plans: vec![plan(SMALL), plan(LARGE), plan(FAR)],
        }],
    }
}

/// A broker whose state and "main" cluster are `store`; plan FAR lives on a second cluster.
pub fn broker_on(store: Arc<dyn Store>) -> EtcdBroker {
    let cluster = |store: Arc<dyn Store>| Cluster {
        store,
        public_endpoints: vec![Url::parse("http://127.0.0.1:2379").unwrap()],
        ca_certificate: None,
    };
    let mut clusters = HashMap::new();
    clusters.insert("main".to_owned(), cluster(store.clone()));
    clusters.insert("far".to_owned(), cluster(Arc::new(MemoryStore::default())));
    let plan_clusters = [(SMALL, "main"), (LARGE, "main"), (FAR, "far")]
        .into_iter()
        .map(|(p, c)| (p.to_owned(), c.to_owned()))
        .collect();
    EtcdBroker::new(BrokerSetup {
        catalog: catalog(),
        plan_clusters,
        clusters,
        state: store,
        state_cluster: "main".into(),
        names: Names::default(),
        clock: Arc::new(SystemClock),
    })
}

fn iid(s: &str) -> InstanceId {
    InstanceId::parse(s).unwrap()
}
fn bid(s: &str) -> BindingId {
    BindingId::parse(s).unwrap()
}

pub fn provision_req(id: &str, plan: &str) -> ProvisionRequest {
    ProvisionRequest {
        instance_id: iid(id),
        service_id: SERVICE.into(),
        plan_id: plan.into(),
        organization_guid: "org".into(),
        space_guid: "space".into(),
        context: Default::default(),
        parameters: Default::default(),
        accepts_incomplete: false,
    }
}

pub fn bind_req(instance: &str, binding: &str) -> BindRequest {
    BindRequest {
        instance_id: iid(instance),
        binding_id: bid(binding),
        service_id: SERVICE.into(),
        plan_id: SMALL.into(),
        app_guid: Some("app".into()),
        bind_resource: None,
        context: Default::default(),
        parameters: Default::default(),
        accepts_incomplete: false,
    }
}

fn unbind_req(instance: &str, binding: &str) -> UnbindRequest {
    UnbindRequest {
        instance_id: iid(instance),
        binding_id: bid(binding),
        service_id: SERVICE.into(),
        plan_id: SMALL.into(),
        accepts_incomplete: false,
    }
}

fn deprovision_req(id: &str) -> DeprovisionRequest {
    DeprovisionRequest {
        instance_id: iid(id),
        service_id: SERVICE.into(),
        plan_id: SMALL.into(),
        accepts_incomplete: false,
    }
}

fn update_req(id: &str, plan: &str) -> UpdateRequest {
    UpdateRequest {
        instance_id: iid(id),
        service_id: SERVICE.into(),
        plan_id: Some(plan.into()),
        parameters: None,
        context: None,
        accepts_incomplete: false,
    }
}

fn password_of(bound: &Bound) -> String {
    let (Bound::Created(b) | Bound::AlreadyExists(b)) = bound;
    b.credentials["password"].as_str().unwrap().to_owned()
}

/// Runs the role reaper's steps until the queue is empty; the first failure is returned.
pub async fn drain_role_queue(broker: &EtcdBroker) -> BrokerResult<()> {
    let mut after = None;
    loop {
        match broker.delete_next_queued_role(after.as_deref()).await? {
            QueueStep::Empty => return Ok(()),
            QueueStep::Deleted { key } => after = Some(key),
            QueueStep::Failed { error, .. } => return Err(error),
        }
    }
}

/// Every etcd user belongs to a `ready` binding record, and every role to one or to the queue
/// of roles to delete (then no user holds it); every record is `ready`, and every ready binding
/// has its user (with the recorded password and role) and role, which is not queued.
pub fn assert_consistent(state: &MemoryState) {
    let mut bindings = Vec::new();
    let mut queued = Vec::new();
    for (key, v) in &state.keys {
        if let Some(role) = key.strip_prefix("/etcd-broker/role-deletions/") {
            let entry: RoleDeletion = serde_json::from_slice(&v.value).unwrap();
            assert_eq!(entry.role, role);
            queued.push(entry.role);
        } else if key.starts_with("/etcd-broker/bindings/") {
            let record: BindingRecord = serde_json::from_slice(&v.value).unwrap();
            assert_eq!(record.state, RecordState::Ready, "record {key} left in {:?}", record.state);
            bindings.push(record);
        } else if key.starts_with("/etcd-broker/instances/") {
            let record: records::InstanceRecord = serde_json::from_slice(&v.value).unwrap();
            assert_eq!(record.state, RecordState::Ready, "record {key} left in {:?}", record.state);
        }
    }
    for record in &bindings {
        let (password, roles) = state
            .users
            .get(&record.username)
            .unwrap_or_else(|| panic!("user of {} missing", record.binding_id));
        assert_eq!(password, &record.password);
        assert!(roles.contains(&record.role));
        assert_eq!(state.roles.get(&record.role), Some(&Some(record.prefix.clone())));
        assert!(!queued.contains(&record.role), "the role of ready binding {} is queued", record.binding_id);
    }
    for user in state.users.keys() {
        assert!(bindings.iter().any(|b| &b.username == user), "orphan user {user}");
    }
    for role in state.roles.keys() {
        let recorded = bindings.iter().any(|b| &b.role == role);
        assert!(recorded || queued.contains(role), "orphan role {role}");
        if !recorded {
            assert!(state.users.values().all(|(_, roles)| !roles.contains(role)), "queued {role} is granted");
        }
    }
}

#[tokio::test]
async fn provision_is_idempotent_and_conflicts_on_different_content() {
    let broker = broker_on(Arc::new(MemoryStore::default()));
    assert_eq!(broker.provision(provision_req("i1", SMALL)).await, Ok(Provisioned::Created));
    assert_eq!(broker.provision(provision_req("i1", SMALL)).await, Ok(Provisioned::AlreadyExists));
    assert!(matches!(broker.provision(provision_req("i1", LARGE)).await, Err(BrokerError::Conflict(_))));
    let mut other_space = provision_req("i1", SMALL);
    other_space.space_guid = "elsewhere".into();
    assert!(matches!(broker.provision(other_space).await, Err(BrokerError::Conflict(_))));
}

#[tokio::test]
async fn provision_refuses_unknown_catalog_ids_and_parameters() {
    let broker = broker_on(Arc::new(MemoryStore::default()));
    let mut req = provision_req("i1", "nope");
    let err = broker.provision(req.clone()).await.unwrap_err();
    assert_eq!(err, BrokerError::BadRequest(format!("plan_id 'nope' is not a plan of service '{SERVICE}'")));
    req.plan_id = SMALL.into();
    req.service_id = "other".into();
    assert!(
        matches!(broker.provision(req).await, Err(BrokerError::BadRequest(m)) if m.contains("service_id 'other'"))
    );
    let mut req = provision_req("i1", SMALL);
    req.parameters.insert("size".into(), json!(3));
    assert!(matches!(broker.provision(req).await, Err(BrokerError::BadRequest(m)) if m.contains("size")));
    assert!(matches!(broker.get_instance(&iid("i1")).await, Err(BrokerError::InstanceNotFound(_))));
}

#[tokio::test]
async fn update_changes_plan_within_a_cluster_only() {
    let broker = broker_on(Arc::new(MemoryStore::default()));
    broker.provision(provision_req("i1", SMALL)).await.unwrap();
    broker.update(update_req("i1", LARGE)).await.unwrap();
    assert_eq!(broker.get_instance(&iid("i1")).await.unwrap().plan_id, LARGE);
    let err = broker.update(update_req("i1", FAR)).await.unwrap_err();
    assert!(matches!(&err, BrokerError::Unprocessable(m) if m.contains("cluster 'far'")), "{err:?}");
    assert!(matches!(broker.update(update_req("nope", LARGE)).await, Err(BrokerError::InstanceNotFound(_))));
    // A provision repeat with the original plan now conflicts.
    assert!(matches!(broker.provision(provision_req("i1", SMALL)).await, Err(BrokerError::Conflict(_))));
}

#[tokio::test]
async fn bind_unbind_rebind_and_deprovision_leave_nothing_behind() {
    let store = Arc::new(MemoryStore::default());
    let broker = broker_on(store.clone());
    broker.provision(provision_req("i1", SMALL)).await.unwrap();
    let first = broker.bind(bind_req("i1", "b1")).await.unwrap();
    assert!(matches!(first, Bound::Created(_)));
    let again = broker.bind(bind_req("i1", "b1")).await.unwrap();
    assert!(matches!(again, Bound::AlreadyExists(_)));
    assert_eq!(password_of(&first), password_of(&again));
    let mut different = bind_req("i1", "b1");
    different.app_guid = Some("other-app".into());
    assert!(matches!(broker.bind(different).await, Err(BrokerError::Conflict(_))));
    assert_consistent(&store.snapshot());
    assert_eq!(store.snapshot().users.len(), 1);

    broker.unbind(unbind_req("i1", "b1")).await.unwrap();
    assert!(matches!(broker.unbind(unbind_req("i1", "b1")).await, Err(BrokerError::BindingGone(_))));
    assert!(matches!(broker.get_binding(&iid("i1"), &bid("b1")).await, Err(BrokerError::BindingNotFound(_))));
    // The user is gone at once; the role waits in the queue, granted to nobody.
    assert!(store.snapshot().users.is_empty());
    assert_consistent(&store.snapshot());
    assert_eq!(broker.queued_roles().await, Ok(1));

    // Binding the same id again deletes the queued role first, so the reaper cannot take the
    // new binding's role later.
    let rebound = broker.bind(bind_req("i1", "b1")).await.unwrap();
    assert_ne!(password_of(&rebound), password_of(&first));
    assert_eq!(broker.queued_roles().await, Ok(0));
    assert_consistent(&store.snapshot());
    broker.bind(bind_req("i1", "b2")).await.unwrap();
    store.commit(&[], &[Write::Put("/service_instances/i1/k".into(), b"v".to_vec())]).await.unwrap();

    broker.deprovision(deprovision_req("i1")).await.unwrap();
    assert_eq!(broker.queued_roles().await, Ok(2));
    assert_consistent(&store.snapshot());
    drain_role_queue(&broker).await.unwrap();
    let state = store.snapshot();
    assert!(state.keys.is_empty(), "left keys: {:?}", state.keys.keys());
    assert!(state.users.is_empty() && state.roles.is_empty());
    assert!(matches!(broker.deprovision(deprovision_req("i1")).await, Err(BrokerError::InstanceGone(_))));
    assert!(matches!(broker.bind(bind_req("i1", "b3")).await, Err(BrokerError::InstanceNotFound(_))));
}

#[tokio::test]
async fn deleting_records_block_new_binds_until_the_delete_is_finished() {
    let store = Arc::new(MemoryStore::default());
    let broker = broker_on(store.clone());
    broker.provision(provision_req("i1", SMALL)).await.unwrap();
    broker.bind(bind_req("i1", "b1")).await.unwrap();
    // An unbind that crashed right after marking the record.
    let faulty = Arc::new(FaultyStore::new(store.clone(), Some(3), FailMode::Before));
    let crashing = broker_on(faulty);
    assert!(crashing.unbind(unbind_req("i1", "b1")).await.is_err());
    assert!(matches!(broker.bind(bind_req("i1", "b1")).await, Err(BrokerError::Concurrency(_))));
    assert!(matches!(
        broker.binding_last_operation(&iid("i1"), &bid("b1")).await,
        Ok(LastOperation { state: OperationState::InProgress, .. })
    ));
    broker.unbind(unbind_req("i1", "b1")).await.unwrap();
    assert_consistent(&store.snapshot());
    assert!(matches!(
        broker.binding_last_operation(&iid("i1"), &bid("b1")).await,
        Err(BrokerError::BindingGone(_))
    ));
}

/// Runs `op` with call `n` failing, then retries it on a healthy store until it succeeds.
async fn crash_then_retry<F, Fut>(n: usize, mode: FailMode, store: Arc<MemoryStore>, op: F) -> bool
where
    F: Fn(Arc<EtcdBroker>) -> Fut,
    Fut: std::future::Future<Output = BrokerResult<()>>,
{
    let faulty = Arc::new(FaultyStore::new(store.clone(), Some(n), mode));
    let crashed = op(Arc::new(broker_on(faulty.clone()))).await;
    let reached = faulty.calls() > n;
    if reached {
        assert!(crashed.is_err(), "call {n} failed ({mode:?}) but the operation reported success");
    }
    op(Arc::new(broker_on(store)))
        .await
        .unwrap_or_else(|e| panic!("retry after fault at call {n} ({mode:?}): {e}"));
    reached
}

/// Tries every call index until the operation no longer reaches it.
async fn for_every_fault<S, F, Fut>(setup: S, op: F, check: fn(&MemoryState))
where
    S: Fn() -> std::pin::Pin<Box<dyn std::future::Future<Output = Arc<MemoryStore>>>>,
    F: Fn(Arc<EtcdBroker>) -> Fut + Copy,
    Fut: std::future::Future<Output = BrokerResult<()>>,
{
    for mode in [FailMode::Before, FailMode::After] {
        let mut n = 0;
        loop {
            let store = setup().await;
            let reached = crash_then_retry(n, mode, store.clone(), op).await;
            check(&store.snapshot());
            if !reached {
                break;
            }
            n += 1;
        }
        assert!(n >= 3, "the operation made only {n} store calls");
    }
}

async fn provisioned() -> Arc<MemoryStore> {
    let store = Arc::new(MemoryStore::default());
    broker_on(store.clone()).provision(provision_req("i1", SMALL)).await.unwrap();
    store
}

async fn bound() -> Arc<MemoryStore> {
    let store = provisioned().await;
    let broker = broker_on(store.clone());
    broker.bind(bind_req("i1", "b1")).await.unwrap();
    broker.bind(bind_req("i1", "b2")).await.unwrap();
    store.commit(&[], &[Write::Put("/service_instances/i1/data".into(), b"x".to_vec())]).await.unwrap();
    store
}

#[tokio::test]
async fn bind_converges_after_a_fault_at_any_step() {
    for_every_fault(
        || Box::pin(provisioned()),
        |broker| async move { broker.bind(bind_req("i1", "b1")).await.map(|_| ()) },
        |state| {
            assert_consistent(state);
            assert_eq!(state.users.len(), 1);
        },
    )
    .await;
}

#[tokio::test]
async fn unbind_converges_after_a_fault_at_any_step() {
    for_every_fault(
        || Box::pin(bound()),
        |broker| async move {
            match broker.unbind(unbind_req("i1", "b1")).await {
                Err(BrokerError::BindingGone(_)) => Ok(()), // the faulty attempt finished it
                other => other,
            }?;
            drain_role_queue(&broker).await
        },
        |state| {
            assert_consistent(state);
            assert_eq!(state.users.keys().collect::<Vec<_>>(), ["etcd-broker.i1.b2"]);
            assert_eq!(state.roles.keys().collect::<Vec<_>>(), ["etcd-broker.i1.b2"]);
        },
    )
    .await;
}

#[tokio::test]
async fn deprovision_converges_after_a_fault_at_any_step() {
    for_every_fault(
        || Box::pin(bound()),
        |broker| async move {
            match broker.deprovision(deprovision_req("i1")).await {
                Err(BrokerError::InstanceGone(_)) => Ok(()),
                other => other,
            }?;
            drain_role_queue(&broker).await
        },
        |state| {
            assert!(state.keys.is_empty(), "left keys: {:?}", state.keys.keys());
            assert!(state.users.is_empty() && state.roles.is_empty());
        },
    )
    .await;
}

#[tokio::test]
async fn provision_converges_after_a_fault_at_any_step() {
    let setup = || -> std::pin::Pin<Box<dyn std::future::Future<Output = Arc<MemoryStore>>>> {
        Box::pin(async { Arc::new(MemoryStore::default()) })
    };
    for mode in [FailMode::Before, FailMode::After] {
        for n in 0..2 {
            let store = setup().await;
            crash_then_retry(n, mode, store.clone(), |b| async move {
                b.provision(provision_req("i1", SMALL)).await.map(|_| ())
            })
            .await;
            assert_consistent(&store.snapshot());
            assert_eq!(
                store.snapshot().keys.keys().collect::<Vec<_>>(),
                ["/etcd-broker/index/instances/plan-small/i1", "/etcd-broker/instances/i1"]
            );
        }
    }
}

#[tokio::test]
async fn a_bind_that_loses_to_an_unbind_removes_what_it_created() {
    // Simulate: the bind wrote its record and created user+role, then an unbind deleted the
    // record before the bind marked it ready.
    let store = provisioned().await;
    let broker = broker_on(store.clone());
    let key = broker.names().binding_key(&iid("i1"), &bid("b1"));
    let racing = RacingStore { inner: store.clone(), key: key.clone() };
    let racing_broker = broker_on(Arc::new(racing));
    let err = racing_broker.bind(bind_req("i1", "b1")).await.unwrap_err();
    assert!(matches!(err, BrokerError::Concurrency(_)), "{err:?}");
    assert_consistent(&store.snapshot());
    drain_role_queue(&broker).await.unwrap();
    let state = store.snapshot();
    assert!(state.users.is_empty() && state.roles.is_empty(), "{state:?}");
    assert!(state.keys.keys().all(|k| !k.contains("bindings")));
}

/// Deletes the binding record right after the user is created, like a concurrent unbind.
struct RacingStore {
    inner: Arc<MemoryStore>,
    key: String,
}

#[async_trait]
impl Store for RacingStore {
    async fn get(&self, key: &str) -> Result<Option<Versioned>, StoreError> {
        self.inner.get(key).await
    }
    async fn list(&self, prefix: &str) -> Result<Vec<(String, Versioned)>, StoreError> {
        self.inner.list(prefix).await
    }
    async fn next_after(
        &self,
        prefix: &str,
        after: Option<&str>,
    ) -> Result<Option<(String, Versioned)>, StoreError> {
        self.inner.next_after(prefix, after).await
    }
    async fn count(&self, prefix: &str) -> Result<u64, StoreError> {
        self.inner.count(prefix).await
    }
    async fn commit(
        &self,
        guards: &[crate::store::Guard],
        writes: &[Write],
    ) -> Result<Option<i64>, StoreError> {
        self.inner.commit(guards, writes).await
    }
    async fn delete_prefix(&self, prefix: &str) -> Result<(), StoreError> {
        self.inner.delete_prefix(prefix).await
    }
    async fn ensure_role(&self, role: &str, prefix: &str) -> Result<(), StoreError> {
        self.inner.ensure_role(role, prefix).await
    }
    async fn ensure_user(&self, user: &str, password: &str, role: &str) -> Result<(), StoreError> {
        self.inner.ensure_user(user, password, role).await?;
        self.inner.commit(&[], &[Write::Delete(self.key.clone())]).await?;
        Ok(())
    }
    async fn delete_user(&self, user: &str) -> Result<(), StoreError> {
        self.inner.delete_user(user).await
    }
    async fn delete_role(&self, role: &str) -> Result<(), StoreError> {
        self.inner.delete_role(role).await
    }
    async fn list_users(&self, prefix: &str) -> Result<Vec<String>, StoreError> {
        self.inner.list_users(prefix).await
    }
    async fn list_roles(&self, prefix: &str) -> Result<Vec<String>, StoreError> {
        self.inner.list_roles(prefix).await
    }
}

/// Every user and role is named by a binding record or by an entry of the role queue: the
/// rule of docs/naming.md that must hold at every crash point.
fn assert_findable(state: &MemoryState, context: &str) {
    let (mut users, mut roles) = (Vec::new(), Vec::new());
    for (key, v) in &state.keys {
        if key.starts_with("/etcd-broker/role-deletions/") {
            let entry: RoleDeletion = serde_json::from_slice(&v.value).unwrap();
            users.extend(entry.user);
            roles.push(entry.role);
        } else if key.starts_with("/etcd-broker/bindings/") {
            let record: BindingRecord = serde_json::from_slice(&v.value).unwrap();
            users.push(record.username);
            roles.push(record.role);
        }
    }
    for user in state.users.keys() {
        assert!(users.contains(user), "{context}: user {user} is named by no record");
    }
    for role in state.roles.keys() {
        assert!(roles.contains(role), "{context}: role {role} is named by no record");
    }
}

/// A bind paused at each of its steps while an unbind of the same binding runs to the end
/// (on another broker), then killed at each later step: the interleaving that left an etcd
/// user with no record when the bind created the user after the unbind deleted the record.
/// With `reap_between`, the role reaper also drains the queue before the bind resumes.
async fn bind_racing_unbind_then_killed(reap_between: bool) {
    for mode in [FailMode::Before, FailMode::After] {
        let mut kills = 0;
        'pauses: for pause_at in 0.. {
            for crash_at in pause_at.. {
                let context = format!("paused before call {pause_at}, killed at call {crash_at} ({mode:?})");
                let store = provisioned().await;
                let other = broker_on(store.clone());
                let script = FaultyStore::new(store.clone(), Some(crash_at), mode);
                let script = Arc::new(script.dying().pausing_before(pause_at));
                let binder = broker_on(script.clone());
                let bind = binder.bind(bind_req("i1", "b1"));
                tokio::pin!(bind);
                tokio::select! {
                    biased;
                    _ = script.paused.notified() => {}
                    _ = &mut bind => break 'pauses, // the pause is past the bind's last call
                }
                match other.unbind(unbind_req("i1", "b1")).await {
                    Ok(()) | Err(BrokerError::BindingGone(_)) => {}
                    Err(e) => panic!("{context}: unbind: {e}"),
                }
                if reap_between {
                    drain_role_queue(&other).await.unwrap();
                }
                script.resume.notify_one();
                let killed = tokio::select! {
                    biased;
                    _ = script.died.notified() => true,
                    _ = &mut bind => false,
                };
                if killed && !reap_between {
                    assert_findable(&store.snapshot(), &context);
                }
                // What the platform does next: unbind until it is gone, then deprovision.
                match other.unbind(unbind_req("i1", "b1")).await {
                    Ok(()) | Err(BrokerError::BindingGone(_)) => {}
                    Err(e) => panic!("{context}: unbind again: {e}"),
                }
                drain_role_queue(&other).await.unwrap();
                if !reap_between {
                    let state = store.snapshot();
                    assert!(
                        state.users.is_empty() && state.roles.is_empty(),
                        "{context}: after the unbind: {state:?}"
                    );
                }
                other.deprovision(deprovision_req("i1")).await.unwrap();
                drain_role_queue(&other).await.unwrap();
                let state = store.snapshot();
                assert!(
                    state.users.is_empty() && state.roles.is_empty(),
                    "{context}: after deprovision: {state:?}"
                );
                assert!(state.keys.is_empty(), "{context}: keys left: {:?}", state.keys.keys());
                if !killed {
                    break; // the bind ended before call `crash_at`
                }
                kills += 1;
            }
        }
        // Paused at each of the bind's calls, killed at each later one (36 pairs today).
        assert!(kills >= 30, "only {kills} kill points ({mode:?})");
    }
}

#[tokio::test]
async fn a_bind_killed_after_a_concurrent_unbind_leaves_no_user_without_a_record() {
    bind_racing_unbind_then_killed(false).await;
}

#[tokio::test]
async fn deprovision_removes_what_a_bind_killed_after_the_reaper_left() {
    bind_racing_unbind_then_killed(true).await;
}

#[tokio::test]
async fn deprovision_removes_users_and_roles_no_record_names() {
    let store = provisioned().await;
    let broker = broker_on(store.clone());
    broker.provision(provision_req("i10", SMALL)).await.unwrap();
    broker.bind(bind_req("i1", "b1")).await.unwrap();
    broker.bind(bind_req("i10", "b1")).await.unwrap();
    // What a bind killed after its unbind leaves: a user and role, and no record of either.
    store.ensure_role("etcd-broker.i1.lost", "/service_instances/i1/").await.unwrap();
    store.ensure_user("etcd-broker.i1.lost", "pw", "etcd-broker.i1.lost").await.unwrap();
    store.ensure_role("etcd-broker.i1.role-only", "/service_instances/i1/").await.unwrap();
    broker.deprovision(deprovision_req("i1")).await.unwrap();
    drain_role_queue(&broker).await.unwrap();
    let state = store.snapshot();
    assert_eq!(state.users.keys().collect::<Vec<_>>(), ["etcd-broker.i10.b1"]);
    assert_eq!(state.roles.keys().collect::<Vec<_>>(), ["etcd-broker.i10.b1"]);
    assert_consistent(&state);
}

/// Issue 22: a repeated bind with another plan_id answered 200; the spec's 200 is for an
/// identical request, so it is a 409, also after the instance moved to that plan. The same
/// request as the first bind stays a 200 with the same credentials.
#[tokio::test]
async fn a_repeated_bind_with_another_plan_conflicts() {
    let broker = broker_on(Arc::new(MemoryStore::default()));
    broker.provision(provision_req("i1", SMALL)).await.unwrap();
    let first = broker.bind(bind_req("i1", "b1")).await.unwrap();
    let mut other_plan = bind_req("i1", "b1");
    other_plan.plan_id = LARGE.into();
    let conflict = broker.bind(other_plan.clone()).await.unwrap_err();
    assert!(matches!(conflict, BrokerError::Conflict(_)), "{conflict:?}");
    broker.update(update_req("i1", LARGE)).await.unwrap();
    let conflict = broker.bind(other_plan).await.unwrap_err();
    assert!(matches!(conflict, BrokerError::Conflict(_)), "after the plan change: {conflict:?}");
    let again = broker.bind(bind_req("i1", "b1")).await.unwrap();
    assert!(matches!(again, Bound::AlreadyExists(_)));
    assert_eq!(password_of(&again), password_of(&first));
}

#[tokio::test]
async fn instances_of_a_plan_removed_from_the_catalog_can_still_be_deleted() {
    let store = Arc::new(MemoryStore::default());
    let old = broker_on(store.clone());
    let mut req = provision_req("i1", SMALL);
    req.plan_id = SMALL.into();
    old.provision(req).await.unwrap();
    old.bind(bind_req("i1", "b1")).await.unwrap();
    // A broker whose catalog no longer has SMALL: the recorded plan is still accepted.
    let mut setup_catalog = catalog();
    setup_catalog.services[0].plans.retain(|p| p.id != SMALL);
    let mut new = broker_on(store.clone());
    new.setup.catalog = setup_catalog;
    let mut unbind = unbind_req("i1", "b1");
    unbind.plan_id = "never-existed".into();
    assert!(matches!(new.unbind(unbind).await, Err(BrokerError::BadRequest(_))));
    new.unbind(unbind_req("i1", "b1")).await.unwrap();
    new.deprovision(deprovision_req("i1")).await.unwrap();
    drain_role_queue(&new).await.unwrap();
    assert!(store.snapshot().keys.is_empty());
}

#[tokio::test]
async fn plans_that_are_not_bindable_refuse_binds() {
    let store = Arc::new(MemoryStore::default());
    let mut broker = broker_on(store.clone());
    broker.setup.catalog.services[0].plans[0].bindable = Some(false);
    broker.provision(provision_req("i1", SMALL)).await.unwrap();
    let err = broker.bind(bind_req("i1", "b1")).await.unwrap_err();
    assert_eq!(err, BrokerError::BadRequest(format!("plan '{SMALL}' is not bindable")));
    assert!(store.snapshot().users.is_empty());
}

#[tokio::test]
async fn inventory_counts_instances_and_bindings_per_plan() {
    let store = Arc::new(MemoryStore::default());
    let broker = broker_on(store.clone());
    let counts = |inv: Vec<super::PlanInventory>| {
        inv.into_iter().map(|p| (p.plan, p.instances, p.bindings)).collect::<Vec<_>>()
    };
    broker.provision(provision_req("i1", SMALL)).await.unwrap();
    broker.provision(provision_req("i2", SMALL)).await.unwrap();
    broker.bind(bind_req("i1", "b1")).await.unwrap();
    broker.bind(bind_req("i1", "b2")).await.unwrap();
    assert_eq!(
        counts(broker.inventory().await.unwrap()),
        [(SMALL.to_owned(), 2, 2), (LARGE.to_owned(), 0, 0), (FAR.to_owned(), 0, 0)]
    );
    broker.update(update_req("i2", LARGE)).await.unwrap();
    broker.unbind(unbind_req("i1", "b2")).await.unwrap();
    assert_eq!(
        counts(broker.inventory().await.unwrap()),
        [(SMALL.to_owned(), 1, 1), (LARGE.to_owned(), 1, 0), (FAR.to_owned(), 0, 0)]
    );
    broker.deprovision(deprovision_req("i1")).await.unwrap();
    broker.deprovision(deprovision_req("i2")).await.unwrap();
    assert!(counts(broker.inventory().await.unwrap()).iter().all(|(_, i, b)| *i == 0 && *b == 0));
    drain_role_queue(&broker).await.unwrap();
    assert!(store.snapshot().keys.is_empty(), "index keys left: {:?}", store.snapshot().keys.keys());
}

#[tokio::test]
async fn readiness_names_the_failing_cluster() {
    let store = Arc::new(MemoryStore::default());
    let broken = Arc::new(FaultyStore::new(store, Some(0), FailMode::Before));
    let health = broker_on(broken).readiness().await;
    assert_eq!(health.len(), 2);
    assert_eq!(health[0].cluster, "far");
    assert_eq!(health[0].error, None);
    assert_eq!(health[1].cluster, "main");
    assert!(health[1].error.as_deref().unwrap().contains("unavailable"), "{health:?}");
}

#[tokio::test]
async fn a_queue_entry_that_fails_does_not_hold_the_others_back() {
    let store = provisioned().await;
    let broker = broker_on(store.clone());
    broker.bind(bind_req("i1", "b1")).await.unwrap();
    broker.unbind(unbind_req("i1", "b1")).await.unwrap();
    // An entry naming a cluster this broker does not know, sorted first.
    let entry = RoleDeletion { role: "a-role".into(), user: None, cluster: "gone".into(), queued_at: 0 };
    let key = "/etcd-broker/role-deletions/a-role";
    store.commit(&[], &[Write::Put(key.into(), records::encode(&entry))]).await.unwrap();
    let first = broker.delete_next_queued_role(None).await.unwrap();
    let QueueStep::Failed { key: failed, error } = first else { panic!("{first:?}") };
    assert_eq!(failed, key);
    assert!(matches!(&error, BrokerError::Internal(m) if m.contains("'gone'")), "{error:?}");
    let second = broker.delete_next_queued_role(Some(&failed)).await.unwrap();
    assert!(matches!(second, QueueStep::Deleted { .. }), "{second:?}");
    assert!(store.snapshot().roles.is_empty());
    assert_eq!(broker.queued_roles().await, Ok(1));
    assert!(matches!(broker.delete_next_queued_role(None).await, Ok(QueueStep::Failed { .. })));
}

//! Unit tests of the broker logic on the in-memory store, including crash safety: every store
//! call of every operation is made to fail once (before or after it takes effect), and a retry
//! must converge with no orphan users, roles or records.

use std::collections::HashMap;
use std::sync::Arc;

use serde_json::json;
use url::Url;

use super::fake_kv::FakeKv;
use super::records::{encode, BindMarker, BindingRecord, RecordState, RoleDeletion};
use super::role_deletions::QueueStep;
use super::*;
use crate::clock::SystemClock;
use crate::osb::catalog::{Plan, Service};
use crate::osb::plan_options::CredentialStoreKind;
use crate::sealing::Keychain;
use crate::store::faulty::{FailMode, FaultyStore};
use crate::store::memory::{MemoryState, MemoryStore};
use crate::store::{Permission, Write};

pub const SERVICE: &str = "svc-etcd";
pub const SMALL: &str = "plan-small";
pub const LARGE: &str = "plan-large";
pub const FAR: &str = "plan-far";
/// Bindings of this plan get a client certificate only.
pub const CERT: &str = "plan-cert";
/// Bindings of this plan get a password and a client certificate.
pub const BOTH: &str = "plan-both";

fn plan(id: &str) -> Plan {
    Plan {
        id: id.into(),
        name: id.into(),
        description: "d".into(),
        free: true,
        bindable: None,
        plan_updateable: None,
        metadata: None,
        schemas: None,
        binding_rotatable: false,
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
            plans: vec![plan(SMALL), plan(LARGE), plan(FAR), plan(CERT), plan(BOTH)],
        }],
    }
}

/// The test keychain: `k1` (active) and `k2`, each a fixed key.
pub fn test_keychain(active: &str) -> Keychain {
    let key = |name: &str, byte: u8| {
        use base64::Engine as _;
        let text = base64::engine::general_purpose::STANDARD.encode([byte; 32]);
        crate::sealing::Key::from_text(name, &text).unwrap()
    };
    Keychain::new(active, [key("k1", 1), key("k2", 2)]).unwrap()
}

/// The fake transit key `t1` that [`transit_broker_on`]'s brokers share: never rotated nor
/// taken down (tests that do either make their own).
pub fn test_transit() -> Arc<crate::sealing::backend::fake::FakeTransit> {
    static FAKE: std::sync::OnceLock<Arc<crate::sealing::backend::fake::FakeTransit>> =
        std::sync::OnceLock::new();
    FAKE.get_or_init(Default::default).clone()
}

/// A keychain whose active key is the remote `transit` (named `t1`), with the local `k1` and
/// `k2` of [`test_keychain`] beside it.
pub fn transit_keychain_with(transit: Arc<dyn crate::sealing::KeyBackend>) -> Keychain {
    let mut keys: Vec<crate::sealing::Key> = test_keychain("k1").keys().cloned().collect();
    keys.push(crate::sealing::Key::remote("t1", transit).unwrap());
    Keychain::new("t1", keys).unwrap()
}

/// [`broker_on`] with sealing on and the fake transit key `t1` active (a key backend outside
/// the broker), `k1` and `k2` still unsealing.
pub fn transit_broker_on(store: Arc<dyn Store>) -> EtcdBroker {
    broker_with(store, Sealing::On(transit_keychain_with(test_transit())))
}

/// A broker whose state and "main" cluster are `store`; plan FAR lives on a second cluster.
/// Sealing is off, as before sealing existed.
pub fn broker_on(store: Arc<dyn Store>) -> EtcdBroker {
    broker_with(store, Sealing::Off { keychain: None })
}

/// [`broker_on`] with sealing on: the test keychain, `k1` active.
pub fn sealed_broker_on(store: Arc<dyn Store>) -> EtcdBroker {
    broker_with(store, Sealing::On(test_keychain("k1")))
}

/// A broker with sealing on (`k1`) whose plans all keep their bindings' secrets in a fake
/// OpenBao KV ([`FakeKv`]) whose secrets are keys of `store`: the crash tests' faults hit
/// its calls too.
pub fn kv_broker_on(store: Arc<dyn Store>) -> EtcdBroker {
    kv_broker_with(store.clone(), Arc::new(FakeKv::on(store)))
}

/// [`kv_broker_on`] with the fake `kv`.
pub fn kv_broker_with(store: Arc<dyn Store>, kv: Arc<FakeKv>) -> EtcdBroker {
    EtcdBroker::new(kv_setup(store, kv))
}

/// What [`kv_broker_with`] runs on.
fn kv_setup(store: Arc<dyn Store>, kv: Arc<FakeKv>) -> BrokerSetup {
    let mut setup = broker_setup(store, Sealing::On(test_keychain("k1")));
    setup.credential_store = Some(kv);
    for plan in [SMALL, LARGE, FAR, CERT, BOTH] {
        setup.plan_options.entry(plan.to_owned()).or_default().credential_store =
            CredentialStoreKind::OpenBao;
    }
    setup
}

/// [`broker_on`] with `sealing`.
pub fn broker_with(store: Arc<dyn Store>, sealing: Sealing) -> EtcdBroker {
    EtcdBroker::new(broker_setup(store, sealing))
}

/// [`broker_on`] with limits: at most 2 instances of SMALL and 2 bindings per instance of
/// SMALL, at most 3 instances per organization.
pub fn limited_broker_on(store: Arc<dyn Store>) -> EtcdBroker {
    let mut setup = broker_setup(store, Sealing::Off { keychain: None });
    let small =
        PlanOptions { max_instances: Some(2), max_bindings_per_instance: Some(2), ..Default::default() };
    setup.plan_options.insert(SMALL.to_owned(), small);
    setup.limits.max_instances_per_organization = Some(3);
    EtcdBroker::new(setup)
}

/// A clock the test sets (seconds since the epoch).
#[derive(Debug, Default)]
pub struct TestClock(pub std::sync::atomic::AtomicU64);

impl TestClock {
    pub fn set(&self, now: u64) {
        self.0.store(now, std::sync::atomic::Ordering::SeqCst);
    }
}

impl crate::clock::Clock for TestClock {
    fn now_unix(&self) -> u64 {
        self.0.load(std::sync::atomic::Ordering::SeqCst)
    }
}

/// Bindings of SMALL expire an hour after they are made (renew 10 minutes before); SMALL,
/// LARGE (which takes bind parameters) and CERT bindings can be rotated; the grace is 300 s.
/// Time is `clock`'s.
pub fn rotating_broker_on(store: Arc<dyn Store>, clock: Arc<TestClock>) -> EtcdBroker {
    use crate::osb::plan_options::BindingExpiry;
    let mut setup = broker_setup(store, Sealing::Off { keychain: None });
    let expiring = Some(BindingExpiry { ttl: 3600, renew_before: 600 });
    let small = PlanOptions { binding_rotatable: true, binding_expiry: expiring, ..Default::default() };
    setup.plan_options.insert(SMALL.to_owned(), small);
    let cert = PlanOptions { binding_rotatable: true, binding_expiry: expiring, ..Default::default() };
    setup.plan_options.insert(CERT.to_owned(), cert);
    setup.plan_options.get_mut(LARGE).unwrap().binding_rotatable = true;
    setup.clock = clock;
    EtcdBroker::new(setup)
}

/// What [`broker_with`] runs on.
fn broker_setup(store: Arc<dyn Store>, sealing: Sealing) -> BrokerSetup {
    let cluster = |store: Arc<dyn Store>| Cluster {
        store,
        public_endpoints: vec![Url::parse("http://127.0.0.1:2379").unwrap()],
        ca_certificate: None,
        proxy_endpoints: vec![],
    };
    let mut clusters = HashMap::new();
    clusters.insert("main".to_owned(), cluster(store.clone()));
    clusters.insert("far".to_owned(), cluster(Arc::new(MemoryStore::default())));
    let plan_clusters = [(SMALL, "main"), (LARGE, "main"), (FAR, "far"), (CERT, "main"), (BOTH, "main")]
        .into_iter()
        .map(|(p, c)| (p.to_owned(), c.to_owned()))
        .collect();
    // LARGE takes bind parameters; the other plans take none.
    let plan_options =
        [(LARGE.to_owned(), PlanOptions { binding_parameters: true, ..Default::default() })].into();
    BrokerSetup {
        catalog: catalog(),
        plan_clusters,
        plan_options,
        limits: Default::default(),
        clusters,
        state: store,
        state_cluster: "main".into(),
        names: Names::default(),
        clock: Arc::new(SystemClock),
        sealing,
        credential_store: None,
        templates: Default::default(),
        certificates: test_certificates(),
        expiry_grace: 300,
    }
}

/// The test CA, made once.
pub fn test_ca() -> &'static crate::pki::ClientCa {
    static CA: std::sync::OnceLock<crate::pki::ClientCa> = std::sync::OnceLock::new();
    CA.get_or_init(|| {
        crate::pki::ClientCa::generate("test CA", std::time::Duration::from_secs(86_400)).unwrap()
    })
}

/// Plans CERT and BOTH hand out certificates from [`test_ca`], valid for a day; the main
/// cluster's certificate endpoint is https.
fn test_certificates() -> certificates::CertificateSetup {
    use certificates::CredentialKind;
    certificates::CertificateSetup {
        plans: [(CERT, CredentialKind::Certificate), (BOTH, CredentialKind::Both)]
            .into_iter()
            .map(|(p, k)| (p.to_owned(), k))
            .collect(),
        authority: Some(certificates::Authority {
            ca: test_ca().clone(),
            validity: std::time::Duration::from_secs(86_400),
        }),
        endpoints: [("main".to_owned(), vec![Url::parse("https://127.0.0.1:2380").unwrap()])]
            .into_iter()
            .collect(),
    }
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
        predecessor_binding_id: None,
    }
}

pub fn unbind_req(instance: &str, binding: &str) -> UnbindRequest {
    UnbindRequest {
        instance_id: iid(instance),
        binding_id: bid(binding),
        service_id: SERVICE.into(),
        plan_id: SMALL.into(),
        accepts_incomplete: false,
    }
}

pub fn deprovision_req(id: &str) -> DeprovisionRequest {
    DeprovisionRequest {
        instance_id: iid(id),
        service_id: SERVICE.into(),
        plan_id: SMALL.into(),
        accepts_incomplete: false,
    }
}

pub fn update_req(id: &str, plan: &str) -> UpdateRequest {
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
            QueueStep::Deleted { key, .. } => after = Some(key),
            QueueStep::Failed { error, .. } => return Err(error),
        }
    }
}

/// The clear password of a binding record (unsealed with the test keychain, or read from the
/// fake KV store in `state`); the empty string (what the memory store holds for a user without
/// a password) for a certificate binding.
fn recorded_password(state: &MemoryState, key: &str, record: &BindingRecord) -> String {
    if let Some(at) = &record.secret_location {
        let stored = state.keys.get(&FakeKv::key(at)).unwrap_or_else(|| panic!("{key}: no secret at {at}"));
        return super::fake_kv::decode(&stored.value).get("password").unwrap_or_default().to_owned();
    }
    match (&record.password, &record.password_sealed) {
        (None, None) if record.certificate.is_some() => String::new(),
        (Some(clear), None) => clear.clone(),
        (None, Some(sealed)) => {
            // The fake transit key answers at once: no runtime needed to wait for it.
            use futures_util::FutureExt as _;
            let keychain = transit_keychain_with(test_transit());
            let clear =
                crate::sealing::unseal_async(&keychain, key, sealed).now_or_never().expect("fake transit");
            String::from_utf8(clear.unwrap()).unwrap()
        }
        other => panic!("record {key} holds {other:?}"),
    }
}

/// Every binding record has its per-plan index entry, an entry in the index of sealed records
/// under the key named in its sealed value exactly when it is sealed, and one in the expiry
/// index exactly when it expires and is not revoked yet; every index entry belongs to such a
/// record.
pub fn assert_indexes_match_records(state: &MemoryState) {
    let names = Names::default();
    let mut expected = std::collections::BTreeSet::new();
    for (key, v) in &state.keys {
        if key.starts_with("/etcd-broker/bindings/") {
            let record: BindingRecord = serde_json::from_slice(&v.value).unwrap();
            let (i, b) = (&record.instance_id, &record.binding_id);
            expected.insert(names.binding_index_key(&record.plan_id, i, b));
            if let Some(sealed) = record.password_sealed.as_ref().or(record.private_key_sealed.as_ref()) {
                let name = crate::sealing::sealed_with(sealed).expect("a key name");
                expected.insert(names.sealed_index_key(name, i, b));
            }
            if let (Some(at), None) = (record.expires_at, record.revoked_at) {
                expected.insert(names.expiry_index_key(at, i, b));
            }
            if record.secret_location.is_some() {
                expected.insert(names.stored_index_key(i, b));
            }
        } else if key.starts_with("/etcd-broker/instances/") {
            let record: records::InstanceRecord = serde_json::from_slice(&v.value).unwrap();
            if super::reconcile::is_claim(&record) {
                continue; // reconcile's claim on orphan data: no platform instance, no index
            }
            expected.insert(names.instance_index_key(&record.plan_id, &record.instance_id));
            expected.insert(names.organization_index_key(&record.organization_guid, &record.instance_id));
        }
    }
    let found: std::collections::BTreeSet<String> =
        state.keys.keys().filter(|k| k.starts_with("/etcd-broker/index/")).cloned().collect();
    assert_eq!(found, expected, "the indexes drifted from the records");
    // An instance's limit key goes with its record.
    for key in state.keys.keys() {
        if let Some(instance) = key.strip_prefix("/etcd-broker/limits/instances/") {
            let record = format!("/etcd-broker/instances/{instance}");
            assert!(state.keys.contains_key(&record), "{key} outlived its instance");
        }
    }
}

/// Every etcd user belongs to a `ready` binding record, and every role to one or to the queue
/// of roles to delete (then no user holds it); every record is `ready`, and every ready binding
/// has its user (with the recorded password and role) and role, which is not queued. The
/// indexes match the records, and no bind marker is left (every bind finished).
pub fn assert_consistent(state: &MemoryState) {
    assert_indexes_match_records(state);
    let markers: Vec<&String> =
        state.keys.keys().filter(|k| k.starts_with("/etcd-broker/binds-in-flight/")).collect();
    assert!(markers.is_empty(), "bind markers left: {markers:?}");
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
            bindings.push((recorded_password(state, key, &record), record));
        } else if key.starts_with("/etcd-broker/instances/") {
            let record: records::InstanceRecord = serde_json::from_slice(&v.value).unwrap();
            assert_eq!(record.state, RecordState::Ready, "record {key} left in {:?}", record.state);
        }
    }
    for (recorded, record) in &bindings {
        let (password, roles) = state
            .users
            .get(&record.username)
            .unwrap_or_else(|| panic!("user of {} missing", record.binding_id));
        assert_eq!(password, recorded);
        assert!(roles.contains(&record.role));
        let granted: Vec<&Permission> = state.roles.get(&record.role).into_iter().flatten().collect();
        assert_eq!(granted, [&record.permission()]);
        assert!(!queued.contains(&record.role), "the role of ready binding {} is queued", record.binding_id);
    }
    for user in state.users.keys() {
        assert!(bindings.iter().any(|(_, b)| &b.username == user), "orphan user {user}");
    }
    assert_secrets_named(state);
    for role in state.roles.keys() {
        let recorded = bindings.iter().any(|(_, b)| &b.role == role);
        assert!(recorded || queued.contains(role), "orphan role {role}");
        if !recorded {
            assert!(state.users.values().all(|(_, roles)| !roles.contains(role)), "queued {role} is granted");
        }
    }
}

/// Every secret in the fake KV store is named by a binding record or a role-deletion entry:
/// nothing is left in OpenBao that the broker cannot find again.
pub fn assert_secrets_named(state: &MemoryState) {
    let mut named = std::collections::BTreeSet::new();
    for (key, v) in &state.keys {
        if key.starts_with("/etcd-broker/bindings/") {
            let record: BindingRecord = serde_json::from_slice(&v.value).unwrap();
            named.extend(record.secret_location.map(|at| FakeKv::key(&at)));
        } else if key.starts_with("/etcd-broker/role-deletions/") {
            let entry: RoleDeletion = serde_json::from_slice(&v.value).unwrap();
            named.extend(entry.secret_location.map(|at| FakeKv::key(&at)));
        }
    }
    for key in state.keys.keys().filter(|k| k.starts_with(super::fake_kv::KV_PREFIX)) {
        assert!(named.contains(key), "secret {key} is named by no record");
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

/// Makes a broker on a store: [`broker_on`] or [`sealed_broker_on`].
pub type MakeBroker = fn(Arc<dyn Store>) -> EtcdBroker;

/// The crash tests' sealing cases: (name, the broker that sets the records up, the one that
/// crashes, the one that retries): sealing off throughout, on throughout, a transit key (a key
/// backend outside the broker) throughout, records sealed by a keychain key that a broker with
/// transit active changes, records written in clear that a broker with sealing on changes, and
/// an upgrade that turns sealing on between the crash and the retry, and secrets kept in a
/// (fake) OpenBao KV store whose calls fail like etcd's.
const SEALING_CASES: [(&str, MakeBroker, MakeBroker, MakeBroker); 7] = [
    ("off", broker_on, broker_on, broker_on),
    ("on", sealed_broker_on, sealed_broker_on, sealed_broker_on),
    ("transit", transit_broker_on, transit_broker_on, transit_broker_on),
    ("keychain records, transit active", sealed_broker_on, transit_broker_on, transit_broker_on),
    ("clear records, sealing on", broker_on, sealed_broker_on, sealed_broker_on),
    ("sealing on after the crash", broker_on, broker_on, sealed_broker_on),
    ("openbao kv", kv_broker_on, kv_broker_on, kv_broker_on),
];

/// Runs `op` with call `n` failing, then retries it on a healthy store until it succeeds.
async fn crash_then_retry<F, Fut>(n: usize, mode: FailMode, store: Arc<MemoryStore>, op: F) -> bool
where
    F: Fn(Arc<EtcdBroker>) -> Fut,
    Fut: std::future::Future<Output = BrokerResult<()>>,
{
    crash_then_retry_with((broker_on, broker_on), n, mode, store, op).await
}

/// [`crash_then_retry`] with the brokers `makers` make: (the one that crashes, the one that
/// retries).
async fn crash_then_retry_with<F, Fut>(
    makers: (MakeBroker, MakeBroker),
    n: usize,
    mode: FailMode,
    store: Arc<MemoryStore>,
    op: F,
) -> bool
where
    F: Fn(Arc<EtcdBroker>) -> Fut,
    Fut: std::future::Future<Output = BrokerResult<()>>,
{
    let faulty = Arc::new(FaultyStore::new(store.clone(), Some(n), mode));
    let crashed = op(Arc::new(makers.0(faulty.clone()))).await;
    let reached = faulty.calls() > n;
    match crashed {
        // A commit answered as lost though it applied: the operation re-reads and may finish.
        Ok(()) if mode == FailMode::AppliedAsLost => {}
        Ok(()) => assert!(!reached, "call {n} failed ({mode:?}) but the operation reported success"),
        Err(e) => assert!(reached && !matches!(e, BrokerError::Internal(_)), "call {n} ({mode:?}): {e:?}"),
    }
    op(Arc::new(makers.1(store)))
        .await
        .unwrap_or_else(|e| panic!("retry after fault at call {n} ({mode:?}): {e}"));
    reached
}

/// Tries every call index until the operation no longer reaches it, in each of the
/// [`SEALING_CASES`]: `setup` makes the records with the case's first broker.
async fn for_every_fault<S, F, Fut>(setup: S, op: F, check: fn(&MemoryState))
where
    S: Fn(MakeBroker) -> std::pin::Pin<Box<dyn std::future::Future<Output = Arc<MemoryStore>>>>,
    F: Fn(Arc<EtcdBroker>) -> Fut + Copy,
    Fut: std::future::Future<Output = BrokerResult<()>>,
{
    for (case, set_up_by, crashes, retries) in SEALING_CASES {
        for_every_fault_with(case, || setup(set_up_by), (crashes, retries), op, check).await;
    }
}

/// The faults each call is tried with: failing before it reaches etcd, failing after, and (for
/// a commit) applied but answered as a lost race.
const FAULTS: [FailMode; 3] = [FailMode::Before, FailMode::After, FailMode::AppliedAsLost];

pub async fn for_every_fault_with<S, F, Fut>(
    case: &str,
    setup: S,
    makers: (MakeBroker, MakeBroker),
    op: F,
    check: fn(&MemoryState),
) where
    S: Fn() -> std::pin::Pin<Box<dyn std::future::Future<Output = Arc<MemoryStore>>>>,
    F: Fn(Arc<EtcdBroker>) -> Fut + Copy,
    Fut: std::future::Future<Output = BrokerResult<()>>,
{
    for mode in FAULTS {
        let mut n = 0;
        loop {
            let store = setup().await;
            let reached = crash_then_retry_with(makers, n, mode, store.clone(), op).await;
            let state = store.snapshot();
            check(&state);
            if case == "on" || case == "transit" {
                assert_all_sealed(&state);
            }
            if case == "openbao kv" {
                assert_no_secret_in_records(&state);
            }
            if !reached {
                break;
            }
            n += 1;
        }
        assert!(n >= 3, "the operation made only {n} store calls");
    }
}

/// No binding record holds a secret, sealed or not: they live in the KV store.
fn assert_no_secret_in_records(state: &MemoryState) {
    for (key, v) in state.keys.iter().filter(|(k, _)| k.starts_with("/etcd-broker/bindings/")) {
        let record: BindingRecord = serde_json::from_slice(&v.value).unwrap();
        let held =
            (&record.password, &record.password_sealed, &record.private_key, &record.private_key_sealed);
        assert_eq!(held, (&None, &None, &None, &None), "{key} holds a secret");
        assert!(record.certificate.is_none() && record.secret_location.is_some(), "{key}");
    }
}

/// Every binding record left holds its password sealed.
fn assert_all_sealed(state: &MemoryState) {
    for (key, v) in state.keys.iter().filter(|(k, _)| k.starts_with("/etcd-broker/bindings/")) {
        let record: BindingRecord = serde_json::from_slice(&v.value).unwrap();
        let password =
            record.password.is_none() && (record.password_sealed.is_some() || record.certificate.is_some());
        let private_key = record.private_key.is_none()
            && (record.private_key_sealed.is_some() == record.certificate.is_some());
        assert!(password && private_key, "{key} is not sealed");
    }
}

async fn provisioned() -> Arc<MemoryStore> {
    let store = Arc::new(MemoryStore::default());
    broker_on(store.clone()).provision(provision_req("i1", SMALL)).await.unwrap();
    store
}

/// Instance i1 with bindings b1 and b2 made by `make`'s broker, and a tenant key.
async fn bound_by(make: MakeBroker) -> Arc<MemoryStore> {
    let store = provisioned().await;
    let broker = make(store.clone());
    broker.bind(bind_req("i1", "b1")).await.unwrap();
    broker.bind(bind_req("i1", "b2")).await.unwrap();
    store.commit(&[], &[Write::Put("/service_instances/i1/data".into(), b"x".to_vec())]).await.unwrap();
    store
}

#[tokio::test]
async fn bind_converges_after_a_fault_at_any_step() {
    for_every_fault(
        |_| Box::pin(provisioned()),
        |broker| async move { broker.bind(bind_req("i1", "b1")).await.map(|_| ()) },
        |state| {
            assert_consistent(state);
            assert_eq!(state.users.len(), 1);
        },
    )
    .await;
}

/// A bind on plan LARGE (which takes bind parameters) with `parameters`.
fn bind_with(instance: &str, binding: &str, parameters: serde_json::Value) -> BindRequest {
    let mut req = bind_req(instance, binding);
    req.plan_id = LARGE.into();
    req.parameters = parameters.as_object().unwrap().clone();
    req
}

#[tokio::test]
async fn bind_with_parameters_converges_after_a_fault_at_any_step() {
    for_every_fault(
        |_| Box::pin(provisioned()),
        |broker| async move {
            let req = bind_with("i1", "b1", json!({"access": "read", "key_prefix": "config/"}));
            broker.bind(req).await.map(|_| ())
        },
        |state| {
            assert_consistent(state);
            let granted: Vec<&Permission> = state.roles.values().flatten().collect();
            let expected = Permission::prefix(crate::store::Access::Read, "/service_instances/i1/config/");
            assert_eq!(granted, [&expected]);
        },
    )
    .await;
}

#[tokio::test]
async fn bind_parameters_choose_the_roles_access_and_prefix() {
    let store = provisioned().await;
    let broker = broker_on(store.clone());
    let parameters = json!({"access": "read", "key_prefix": "app/config/"});
    let Ok(Bound::Created(created)) = broker.bind(bind_with("i1", "b1", parameters.clone())).await else {
        panic!("not created")
    };
    assert_eq!(created.credentials["prefix"], "/service_instances/i1/app/config/");
    assert_eq!(created.parameters, None, "a bind's answer carries no parameters");
    let state = store.snapshot();
    let role: Vec<&Permission> = state.roles["etcd-broker.i1.b1"].iter().collect();
    assert_eq!(role, [&Permission::prefix(crate::store::Access::Read, "/service_instances/i1/app/config/")]);
    // GET binding shows the parameters; the same parameters again are 200, others 409.
    let got = broker.get_binding(&iid("i1"), &bid("b1")).await.unwrap();
    assert_eq!(got.parameters.map(serde_json::Value::Object), Some(parameters.clone()));
    assert!(matches!(broker.bind(bind_with("i1", "b1", parameters)).await, Ok(Bound::AlreadyExists(_))));
    for other in
        [json!({"access": "read"}), json!({}), json!({"access": "readwrite", "key_prefix": "app/config/"})]
    {
        let again = broker.bind(bind_with("i1", "b1", other.clone())).await;
        assert!(matches!(again, Err(BrokerError::Conflict(_))), "{other}: {again:?}");
    }
    // Without parameters the plan's binding is today's: read-write on the whole instance.
    broker.bind(bind_with("i1", "b2", json!({}))).await.unwrap();
    let role: Vec<Permission> = store.snapshot().roles["etcd-broker.i1.b2"].iter().cloned().collect();
    assert_eq!(role, [Permission::read_write_prefix("/service_instances/i1/")]);
    assert_eq!(broker.get_binding(&iid("i1"), &bid("b2")).await.unwrap().parameters, None);
}

#[tokio::test]
async fn bad_or_unoffered_bind_parameters_are_400_and_leave_nothing() {
    let store = provisioned().await;
    let broker = broker_on(store.clone());
    let cases = [
        (bind_with("i1", "b1", json!({"access": "all"})), "bind parameter 'access'"),
        (bind_with("i1", "b1", json!({"key_prefix": "config"})), "bind parameter 'key_prefix'"),
        (bind_with("i1", "b1", json!({"ttl": 5})), "unknown bind parameter 'ttl'"),
        // Plan SMALL offers no bind parameters.
        (
            BindRequest { plan_id: SMALL.into(), ..bind_with("i1", "b1", json!({"access": "read"})) },
            "unknown parameters: access",
        ),
    ];
    for (req, needle) in cases {
        match broker.bind(req).await {
            Err(BrokerError::BadRequest(message)) => assert!(message.contains(needle), "{needle}: {message}"),
            other => panic!("{needle}: {other:?}"),
        }
    }
    let state = store.snapshot();
    assert!(state.users.is_empty() && state.roles.is_empty());
    assert!(!state.keys.keys().any(|k| k.starts_with("/etcd-broker/bindings/")));
}

/// Unbinds b1 of i1 (a 410: the faulty attempt finished it) and drains the role queue.
async fn unbind_b1(broker: Arc<EtcdBroker>) -> BrokerResult<()> {
    match broker.unbind(unbind_req("i1", "b1")).await {
        Err(BrokerError::BindingGone(_)) => Ok(()),
        other => other,
    }?;
    drain_role_queue(&broker).await
}

/// What [`unbind_b1`] leaves of two bindings: b2's user and role, consistent.
fn only_b2_left(state: &MemoryState) {
    assert_consistent(state);
    assert_eq!(state.users.keys().collect::<Vec<_>>(), ["etcd-broker.i1.b2"]);
    assert_eq!(state.roles.keys().collect::<Vec<_>>(), ["etcd-broker.i1.b2"]);
}

#[tokio::test]
async fn unbind_converges_after_a_fault_at_any_step() {
    for_every_fault(|make| Box::pin(bound_by(make)), unbind_b1, only_b2_left).await;
}

#[tokio::test]
async fn deprovision_converges_after_a_fault_at_any_step() {
    for_every_fault(
        |make| Box::pin(bound_by(make)),
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
    for mode in FAULTS {
        for n in 0..2 {
            let store = setup().await;
            crash_then_retry(n, mode, store.clone(), |b| async move {
                b.provision(provision_req("i1", SMALL)).await.map(|_| ())
            })
            .await;
            assert_consistent(&store.snapshot());
            assert_eq!(
                store.snapshot().keys.keys().collect::<Vec<_>>(),
                [
                    "/etcd-broker/index/instances/plan-small/i1",
                    "/etcd-broker/index/organizations/org/i1",
                    "/etcd-broker/instances/i1"
                ]
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
    let racing = HookedStore {
        inner: store.clone(),
        after_ensure_user: Box::new(move || vec![Write::Delete(key.clone())]),
        before_commit: Box::new(|_, _| Vec::new()),
    };
    let racing_broker = broker_on(Arc::new(racing));
    let err = racing_broker.bind(bind_req("i1", "b1")).await.unwrap_err();
    assert!(matches!(err, BrokerError::Concurrency(_)), "{err:?}");
    assert_consistent(&store.snapshot());
    drain_role_queue(&broker).await.unwrap();
    let state = store.snapshot();
    assert!(state.users.is_empty() && state.roles.is_empty(), "{state:?}");
    assert!(state.keys.keys().all(|k| !k.contains("bindings")));
}

/// Passes every call to `inner`, and writes what the hooks return at two points, like a
/// concurrent request: right after each `ensure_user` (an unbind deleting the record), right
/// before each commit, given its guards (a broker changing the record a commit guards).
pub struct HookedStore {
    pub inner: Arc<MemoryStore>,
    pub after_ensure_user: Box<dyn Fn() -> Vec<Write> + Send + Sync>,
    pub before_commit: Box<BeforeCommit>,
}

/// [`HookedStore`]'s hook before a commit: the store's state and the commit's guards in, the
/// concurrent writes out.
pub type BeforeCommit = dyn Fn(&MemoryState, &[crate::store::Guard]) -> Vec<Write> + Send + Sync;

#[async_trait]
impl Store for HookedStore {
    async fn get(&self, key: &str) -> Result<Option<Versioned>, StoreError> {
        self.inner.get(key).await
    }
    async fn list(&self, prefix: &str) -> Result<Vec<(String, Versioned)>, StoreError> {
        self.inner.list(prefix).await
    }
    async fn count(&self, prefix: &str) -> Result<u64, StoreError> {
        self.inner.count(prefix).await
    }
    async fn count_at_one_revision(&self, prefixes: &[String]) -> Result<(Vec<u64>, i64), StoreError> {
        self.inner.count_at_one_revision(prefixes).await
    }
    async fn follow_keys(
        &self,
        prefix: &str,
        revision: i64,
        sink: tokio::sync::mpsc::UnboundedSender<Vec<crate::store::KeyChange>>,
    ) -> Result<(), StoreError> {
        self.inner.follow_keys(prefix, revision, sink).await
    }
    async fn commit(
        &self,
        guards: &[crate::store::Guard],
        writes: &[Write],
    ) -> Result<Option<i64>, StoreError> {
        let meanwhile = (self.before_commit)(&self.inner.snapshot(), guards);
        if !meanwhile.is_empty() {
            self.inner.commit(&[], &meanwhile).await?;
        }
        self.inner.commit(guards, writes).await
    }
    async fn delete_prefix(&self, prefix: &str) -> Result<(), StoreError> {
        self.inner.delete_prefix(prefix).await
    }
    async fn ensure_role(&self, role: &str, permission: &Permission) -> Result<(), StoreError> {
        self.inner.ensure_role(role, permission).await
    }
    async fn ensure_user(&self, user: &str, password: &str, role: &str) -> Result<(), StoreError> {
        self.inner.ensure_user(user, password, role).await?;
        let meanwhile = (self.after_ensure_user)();
        if !meanwhile.is_empty() {
            self.inner.commit(&[], &meanwhile).await?;
        }
        Ok(())
    }
    async fn ensure_certificate_user(&self, user: &str, unused: &str, role: &str) -> Result<(), StoreError> {
        self.inner.ensure_certificate_user(user, unused, role).await?;
        let meanwhile = (self.after_ensure_user)();
        if !meanwhile.is_empty() {
            self.inner.commit(&[], &meanwhile).await?;
        }
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
    async fn scan(
        &self,
        prefix: &str,
        from: &str,
        limit: usize,
        keys_only: bool,
    ) -> Result<Vec<(String, Versioned)>, StoreError> {
        self.inner.scan(prefix, from, limit, keys_only).await
    }
    async fn user_roles(&self, user: &str) -> Result<Option<Vec<String>>, StoreError> {
        self.inner.user_roles(user).await
    }
    async fn role_permissions(&self, role: &str) -> Result<Option<Vec<Permission>>, StoreError> {
        self.inner.role_permissions(role).await
    }
    async fn revoke_role(&self, user: &str, role: &str) -> Result<(), StoreError> {
        self.inner.revoke_role(user, role).await
    }
    async fn revoke_permission(&self, role: &str, permission: &Permission) -> Result<(), StoreError> {
        self.inner.revoke_permission(role, permission).await
    }

    async fn grant_lease(&self, ttl: std::time::Duration) -> Result<i64, StoreError> {
        self.inner.grant_lease(ttl).await
    }

    async fn renew_lease(&self, lease: i64) -> Result<bool, StoreError> {
        self.inner.renew_lease(lease).await
    }

    async fn revoke_lease(&self, lease: i64) -> Result<(), StoreError> {
        self.inner.revoke_lease(lease).await
    }

    async fn put_if_absent_leased(&self, key: &str, value: &[u8], lease: i64) -> Result<bool, StoreError> {
        self.inner.put_if_absent_leased(key, value, lease).await
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
    assert_secrets_named(state);
}

/// A bind paused at each of its steps while an unbind of the same binding runs to the end
/// (on another broker), then killed at each later step: the interleaving that left an etcd
/// user with no record when the bind created the user after the unbind deleted the record.
/// With `reap_between`, the role reaper also drains the queue before the bind resumes. `make`
/// makes both brokers (with [`kv_broker_on`], the secret in the KV store is followed too).
async fn bind_racing_unbind_then_killed(reap_between: bool, make: MakeBroker) {
    for mode in [FailMode::Before, FailMode::After] {
        let mut kills = 0;
        'pauses: for pause_at in 0.. {
            for crash_at in pause_at.. {
                let context = format!("paused before call {pause_at}, killed at call {crash_at} ({mode:?})");
                let store = provisioned().await;
                let other = make(store.clone());
                let script = FaultyStore::new(store.clone(), Some(crash_at), mode);
                let script = Arc::new(script.dying().pausing_before(pause_at));
                let binder = make(script.clone());
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
    bind_racing_unbind_then_killed(false, broker_on).await;
}

#[tokio::test]
async fn deprovision_removes_what_a_bind_killed_after_the_reaper_left() {
    bind_racing_unbind_then_killed(true, broker_on).await;
}

#[tokio::test]
async fn a_bind_killed_after_a_concurrent_unbind_leaves_no_secret_in_openbao_without_a_record() {
    bind_racing_unbind_then_killed(false, kv_broker_on).await;
}

#[tokio::test]
async fn deprovision_removes_secrets_in_openbao_a_bind_killed_after_the_reaper_left() {
    bind_racing_unbind_then_killed(true, kv_broker_on).await;
}

/// A bind interrupted right after its first transaction (record `creating` and its marker, no
/// user yet), on a fresh i1.
async fn a_bind_interrupted_after_its_first_step() -> Arc<MemoryStore> {
    for n in 0..10 {
        let store = provisioned().await;
        let faulty = Arc::new(FaultyStore::new(store.clone(), Some(n), FailMode::Before));
        // The result is the fault's answer; what the bind left is what counts.
        let _ = broker_on(faulty).bind(bind_req("i1", "b1")).await;
        let state = store.snapshot();
        if state.keys.contains_key("/etcd-broker/bindings/i1/b1") && state.users.is_empty() {
            return store;
        }
    }
    panic!("no call of the bind comes right after its first transaction")
}

/// A bind killed after it made its user, while an unbind deleted its record and the role
/// reaper ran: the marker alone names the user, and deprovision removes the user, the role and
/// the marker.
#[tokio::test]
async fn deprovision_removes_the_user_a_bind_killed_after_its_unbind_made() {
    let store = a_bind_interrupted_after_its_first_step().await;
    let marker = "/etcd-broker/binds-in-flight/i1/b1";
    let broker = broker_on(store.clone());
    broker.unbind(unbind_req("i1", "b1")).await.unwrap();
    drain_role_queue(&broker).await.unwrap();
    // The bind, still in flight, makes its role and user, then dies.
    store
        .ensure_role("etcd-broker.i1.b1", &Permission::read_write_prefix("/service_instances/i1/"))
        .await
        .unwrap();
    store.ensure_user("etcd-broker.i1.b1", "pw", "etcd-broker.i1.b1").await.unwrap();
    let state = store.snapshot();
    let found: BindMarker = serde_json::from_slice(&state.keys[marker].value).unwrap();
    assert_eq!(found.cluster, "main");
    assert!(!state.keys.keys().any(|k| k.contains("/bindings/") || k.contains("/role-deletions/")));
    broker.deprovision(deprovision_req("i1")).await.unwrap();
    drain_role_queue(&broker).await.unwrap();
    let state = store.snapshot();
    assert!(state.users.is_empty() && state.roles.is_empty(), "{state:?}");
    assert!(state.keys.is_empty(), "left: {:?}", state.keys.keys());
}

/// A retry of a bind interrupted after its first step finishes it, and its ready swap deletes
/// the marker.
#[tokio::test]
async fn a_retried_bind_deletes_its_marker_when_it_becomes_ready() {
    let store = a_bind_interrupted_after_its_first_step().await;
    assert!(store.snapshot().keys.contains_key("/etcd-broker/binds-in-flight/i1/b1"));
    broker_on(store.clone()).bind(bind_req("i1", "b1")).await.unwrap();
    assert_consistent(&store.snapshot());
}

#[tokio::test]
async fn deprovision_removes_what_bind_markers_name_and_no_other_users() {
    let store = provisioned().await;
    let broker = broker_on(store.clone());
    broker.provision(provision_req("i10", SMALL)).await.unwrap();
    broker.bind(bind_req("i1", "b1")).await.unwrap();
    broker.bind(bind_req("i10", "b1")).await.unwrap();
    let marker = |binding: &str| {
        let value = encode(&BindMarker { cluster: "main".into(), started_at: 1 });
        Write::Put(format!("/etcd-broker/binds-in-flight/i1/{binding}"), value)
    };
    // What binds killed after their unbind leave: a user and role, or a role alone, and the
    // bind's marker; one with its role queued already.
    let permission = Permission::read_write_prefix("/service_instances/i1/");
    for name in ["etcd-broker.i1.lost", "etcd-broker.i1.role-only", "etcd-broker.i1.queued"] {
        store.ensure_role(name, &permission).await.unwrap();
    }
    store.ensure_user("etcd-broker.i1.lost", "pw", "etcd-broker.i1.lost").await.unwrap();
    store.ensure_user("etcd-broker.i1.queued", "pw", "etcd-broker.i1.queued").await.unwrap();
    let queued = RoleDeletion {
        role: "etcd-broker.i1.queued".into(),
        user: None,
        cluster: "main".into(),
        secret_location: None,
        queued_at: 1,
    };
    let entry = Write::Put("/etcd-broker/role-deletions/etcd-broker.i1.queued".into(), encode(&queued));
    store.commit(&[], &[marker("lost"), marker("role-only"), marker("queued"), entry]).await.unwrap();
    // What an older broker's bind left, without a marker: reconcile's to find, not deprovision's.
    store.ensure_role("etcd-broker.i1.legacy", &permission).await.unwrap();
    store.ensure_user("etcd-broker.i1.legacy", "pw", "etcd-broker.i1.legacy").await.unwrap();

    broker.deprovision(deprovision_req("i1")).await.unwrap();
    drain_role_queue(&broker).await.unwrap();
    let state = store.snapshot();
    assert_eq!(state.users.keys().collect::<Vec<_>>(), ["etcd-broker.i1.legacy", "etcd-broker.i10.b1"]);
    assert_eq!(state.roles.keys().collect::<Vec<_>>(), ["etcd-broker.i1.legacy", "etcd-broker.i10.b1"]);
    assert!(!state.keys.keys().any(|k| k.contains("binds-in-flight")), "{:?}", state.keys.keys());
    let settings = super::reconcile::Settings { stuck_after: 600, grants: false };
    let report = broker.reconcile(&settings, super::reconcile::Repair::Safe).await.unwrap();
    let found: Vec<(&str, &str)> =
        report.findings.iter().map(|f| (f.kind.name(), f.subject.as_str())).collect();
    assert_eq!(found, [("orphan_user", "etcd-broker.i1.legacy"), ("orphan_role", "etcd-broker.i1.legacy")]);
    drain_role_queue(&broker).await.unwrap();
    let state = store.snapshot();
    assert_eq!(state.users.keys().collect::<Vec<_>>(), ["etcd-broker.i10.b1"]);
    assert_consistent(&state);
}

/// Issue 22: a repeated bind with another plan_id answered 200; the spec's 200 is for an
/// identical request, so it is a 409, also after the instance moved to that plan. The same
/// request as the first bind stays a 200 with the same credentials.
/// A bind's first look is served by one member without a raft round, and that member may
/// lag: whatever it has missed, the bind answers as a linearizable read would have made it.
#[tokio::test]
async fn a_bind_whose_first_look_is_stale_answers_as_if_it_were_not() {
    // The member has not seen the instance: not a 404.
    let store = Arc::new(MemoryStore::default());
    let broker = broker_on(store.clone());
    store.lag();
    broker.provision(provision_req("i1", SMALL)).await.unwrap();
    let first = broker.bind(bind_req("i1", "b1")).await.unwrap();
    assert!(matches!(first, Bound::Created(_)), "{first:?}");

    // It has seen the instance but not the binding: the create's guard fails, the retry finds
    // the binding, and the answer is the same binding, not a second user.
    store.lag();
    let second = broker.bind(bind_req("i1", "b2")).await.unwrap();
    let again = broker.bind(bind_req("i1", "b2")).await.unwrap();
    assert!(matches!(again, Bound::AlreadyExists(_)), "{again:?}");
    assert_eq!(password_of(&again), password_of(&second));

    // It has an older revision of the instance (a plan update since): the revision guard fails
    // and the retry binds against the current record.
    store.lag();
    broker.update(update_req("i1", LARGE)).await.unwrap();
    assert!(matches!(broker.bind(bind_req("i1", "b3")).await.unwrap(), Bound::Created(_)));
    assert_eq!(store.snapshot().users.len(), 3);

    // It still has an instance deprovisioned since: the bind is refused as for a gone instance.
    store.lag();
    broker.deprovision(deprovision_req("i1")).await.unwrap();
    drain_role_queue(&broker).await.unwrap();
    let refused = broker.bind(bind_req("i1", "b4")).await.unwrap_err();
    assert!(matches!(refused, BrokerError::InstanceNotFound(_)), "{refused:?}");
    let state = store.snapshot();
    assert!(state.users.is_empty() && state.roles.is_empty(), "{state:?}");
    assert_consistent(&state);
}

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
        [
            (SMALL.to_owned(), 2, 2),
            (LARGE.to_owned(), 0, 0),
            (FAR.to_owned(), 0, 0),
            (CERT.to_owned(), 0, 0),
            (BOTH.to_owned(), 0, 0)
        ]
    );
    broker.update(update_req("i2", LARGE)).await.unwrap();
    broker.unbind(unbind_req("i1", "b2")).await.unwrap();
    assert_eq!(
        counts(broker.inventory().await.unwrap()),
        [
            (SMALL.to_owned(), 1, 1),
            (LARGE.to_owned(), 1, 0),
            (FAR.to_owned(), 0, 0),
            (CERT.to_owned(), 0, 0),
            (BOTH.to_owned(), 0, 0)
        ]
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
    let entry = RoleDeletion {
        role: "a-role".into(),
        user: None,
        cluster: "gone".into(),
        secret_location: None,
        queued_at: 0,
    };
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

/// The binding record at `key`, as stored.
fn stored_binding(store: &MemoryStore, key: &str) -> BindingRecord {
    serde_json::from_slice(&store.snapshot().keys[key].value).unwrap()
}

/// Replaces the binding record at `key` with what `change` makes of it.
async fn rewrite_binding(store: &MemoryStore, key: &str, change: impl FnOnce(&mut BindingRecord)) {
    let mut record = stored_binding(store, key);
    change(&mut record);
    store.commit(&[], &[Write::Put(key.into(), records::encode(&record))]).await.unwrap();
}

#[tokio::test]
async fn with_sealing_on_no_record_holds_the_password_and_reads_unseal_it() {
    let store = Arc::new(MemoryStore::default());
    let broker = sealed_broker_on(store.clone());
    broker.provision(provision_req("i1", SMALL)).await.unwrap();
    let bound = broker.bind(bind_req("i1", "b1")).await.unwrap();
    let password = password_of(&bound);
    let record = stored_binding(&store, "/etcd-broker/bindings/i1/b1");
    assert_eq!(record.password, None);
    assert_eq!(crate::sealing::sealed_with(record.password_sealed.as_deref().unwrap()), Some("k1"));
    let everything = format!("{:?}", store.snapshot().keys);
    assert!(!everything.contains(&password), "the password is in the state: {everything}");
    assert!(store.snapshot().keys.contains_key("/etcd-broker/index/sealed/k1/i1/b1"));
    // GET binding and an identical re-bind hand out the same password.
    let got = broker.get_binding(&iid("i1"), &bid("b1")).await.unwrap();
    assert_eq!(got.credentials["password"], password.as_str());
    assert!(got.credentials["uri"].as_str().unwrap().contains(&password));
    assert_eq!(password_of(&broker.bind(bind_req("i1", "b1")).await.unwrap()), password);
    assert_consistent(&store.snapshot());
    // A broker with sealing off but the keychain still reads it.
    let off = broker_with(store.clone(), Sealing::Off { keychain: Some(test_keychain("k2")) });
    assert_eq!(
        off.get_binding(&iid("i1"), &bid("b1")).await.unwrap().credentials["password"],
        password.as_str()
    );
}

#[tokio::test]
async fn a_transit_key_seals_by_version_and_while_it_is_down_binds_are_503_and_leave_nothing() {
    use std::sync::atomic::Ordering;
    let fake = Arc::new(crate::sealing::backend::fake::FakeTransit::default());
    let store = Arc::new(MemoryStore::default());
    let broker = broker_with(store.clone(), Sealing::On(transit_keychain_with(fake.clone())));
    broker.provision(provision_req("i1", SMALL)).await.unwrap();
    fake.down.store(true, Ordering::SeqCst);
    let refused = broker.bind(bind_req("i1", "b1")).await;
    match &refused {
        Err(BrokerError::Unavailable(message)) => {
            assert!(message.contains("key 't1'") && message.contains("repeat the request"), "{message}")
        }
        other => panic!("{other:?}"),
    }
    let state = store.snapshot();
    assert!(state.users.is_empty() && state.roles.is_empty());
    assert!(!state.keys.keys().any(|k| k.contains("/bindings/")), "{:?}", state.keys.keys());
    fake.down.store(false, Ordering::SeqCst);
    let password = password_of(&broker.bind(bind_req("i1", "b1")).await.unwrap());
    let record = stored_binding(&store, "/etcd-broker/bindings/i1/b1");
    assert_eq!(crate::sealing::sealed_with(record.password_sealed.as_deref().unwrap()), Some("t1.v1"));
    assert!(store.snapshot().keys.contains_key("/etcd-broker/index/sealed/t1.v1/i1/b1"));
    assert!(!format!("{:?}", store.snapshot().keys).contains(&password));
    assert_eq!(broker.sealing_keys_in_use().await.unwrap(), ["t1.v1"]);
    assert_eq!(broker.missing_sealing_keys().await.unwrap(), None);
    assert!(broker.keychain_holds("t1.v1") && !broker.keychain_holds("t9.v1"));
    // After a rotation new records name the new version; old ones still unseal.
    fake.rotate();
    broker.bind(bind_req("i1", "b2")).await.unwrap();
    let record = stored_binding(&store, "/etcd-broker/bindings/i1/b2");
    assert_eq!(crate::sealing::sealed_with(record.password_sealed.as_deref().unwrap()), Some("t1.v2"));
    let got = broker.get_binding(&iid("i1"), &bid("b1")).await.unwrap();
    assert_eq!(got.credentials["password"], password.as_str());
    let inventory = broker.sealing_inventory().await.unwrap();
    assert_eq!(
        inventory.sealed,
        [("k1".to_owned(), 0), ("k2".to_owned(), 0), ("t1.v1".to_owned(), 1), ("t1.v2".to_owned(), 1)]
    );
    // Down again: reads are 503, never a wrong password; unbind needs no key and works.
    fake.down.store(true, Ordering::SeqCst);
    assert!(matches!(broker.get_binding(&iid("i1"), &bid("b1")).await, Err(BrokerError::Unavailable(_))));
    assert!(matches!(broker.bind(bind_req("i1", "b1")).await, Err(BrokerError::Unavailable(_))));
    broker.unbind(unbind_req("i1", "b1")).await.unwrap();
    assert!(!store.snapshot().keys.keys().any(|k| k.ends_with("/i1/b1")));
}

#[tokio::test]
async fn sealing_off_stores_records_exactly_as_before() {
    let store = Arc::new(MemoryStore::default());
    let broker = broker_with(store.clone(), Sealing::Off { keychain: Some(test_keychain("k1")) });
    broker.provision(provision_req("i1", SMALL)).await.unwrap();
    let password = password_of(&broker.bind(bind_req("i1", "b1")).await.unwrap());
    let stored: serde_json::Value =
        serde_json::from_slice(&store.snapshot().keys["/etcd-broker/bindings/i1/b1"].value).unwrap();
    assert_eq!(stored["password"], password.as_str());
    assert!(stored.get("password_sealed").is_none(), "{stored}");
    assert!(store.snapshot().keys.keys().all(|k| !k.contains("/index/sealed/")));
}

#[tokio::test]
async fn clear_text_records_keep_working_and_are_sealed_when_rewritten() {
    let store = Arc::new(MemoryStore::default());
    broker_on(store.clone()).provision(provision_req("i1", SMALL)).await.unwrap();
    let old = broker_on(store.clone());
    let b1 = password_of(&old.bind(bind_req("i1", "b1")).await.unwrap());
    // A bind the old version left unfinished.
    let crashing = broker_on(Arc::new(FaultyStore::new(store.clone(), Some(3), FailMode::Before)));
    assert!(crashing.bind(bind_req("i1", "b2")).await.is_err());
    let b2 = stored_binding(&store, "/etcd-broker/bindings/i1/b2");
    assert_eq!(b2.state, RecordState::Creating);

    let new = sealed_broker_on(store.clone());
    let got = new.get_binding(&iid("i1"), &bid("b1")).await.unwrap();
    assert_eq!(got.credentials["password"], b1.as_str());
    assert_eq!(stored_binding(&store, "/etcd-broker/bindings/i1/b1").password.as_deref(), Some(b1.as_str()));
    // Finishing the old bind rewrites its record: sealed, with the same password.
    let finished = new.bind(bind_req("i1", "b2")).await.unwrap();
    assert_eq!(Some(password_of(&finished)), b2.password);
    let b2_now = stored_binding(&store, "/etcd-broker/bindings/i1/b2");
    assert_eq!((b2_now.password, b2_now.state), (None, RecordState::Ready));
    assert_consistent(&store.snapshot());
    let inventory = new.sealing_inventory().await.unwrap();
    assert_eq!(inventory.sealed, [("k1".to_owned(), 1), ("k2".to_owned(), 0)]);
    assert_eq!(inventory.clear_text, 1);
}

/// What GET binding and an identical re-bind answer for the record b1 after `change`, with a
/// broker holding `keychain` (sealing on); the answers must be the same 500.
async fn reading_a_changed_record(
    change: impl FnOnce(&mut BindingRecord),
    keychain: Keychain,
) -> (String, String) {
    let store = Arc::new(MemoryStore::default());
    let broker = sealed_broker_on(store.clone());
    broker.provision(provision_req("i1", SMALL)).await.unwrap();
    let password = password_of(&broker.bind(bind_req("i1", "b1")).await.unwrap());
    broker.bind(bind_req("i1", "b2")).await.unwrap();
    rewrite_binding(&store, "/etcd-broker/bindings/i1/b1", change).await;
    let reader = broker_with(store.clone(), Sealing::On(keychain));
    let got = reader.get_binding(&iid("i1"), &bid("b1")).await.unwrap_err();
    let rebound = reader.bind(bind_req("i1", "b1")).await.unwrap_err();
    assert_eq!(got, rebound);
    let BrokerError::Internal(message) = got else { panic!("not a 500: {got:?}") };
    assert!(message.contains("'/etcd-broker/bindings/i1/b1'"), "the record is not named: {message}");
    assert!(!message.contains(&password), "{message}");
    // The damaged record does not stop its unbind, which leaves nothing behind.
    reader.unbind(unbind_req("i1", "b1")).await.unwrap();
    assert_indexes_match_records(&store.snapshot());
    (message, password)
}

/// `sealed` with the base64 field `index` (3: wrapped key, 4: nonce, 5: ciphertext) changed by
/// one bit.
fn flip_bit(sealed: &str, index: usize) -> String {
    use base64::Engine as _;
    let engine = base64::engine::general_purpose::STANDARD;
    let mut fields: Vec<String> = sealed.split(':').map(str::to_owned).collect();
    let mut bytes = engine.decode(&fields[index]).unwrap();
    bytes[0] ^= 1;
    fields[index] = engine.encode(bytes);
    fields.join(":")
}

fn sealed_of(record: &mut BindingRecord) -> &mut String {
    record.password_sealed.as_mut().unwrap()
}

#[tokio::test]
async fn a_tampered_sealed_password_is_a_500_naming_the_record() {
    for field in [3, 4, 5] {
        let (message, _) =
            reading_a_changed_record(|r| *sealed_of(r) = flip_bit(sealed_of(r), field), test_keychain("k1"))
                .await;
        assert!(message.contains("does not unseal with key 'k1'"), "{field}: {message}");
    }
}

#[tokio::test]
async fn a_truncated_sealed_password_is_a_500_naming_the_record() {
    for keep in [0, 10, 30, 60, 100] {
        let (message, _) = reading_a_changed_record(
            |r| {
                let cut: String = sealed_of(r).chars().take(keep).collect();
                *sealed_of(r) = cut;
            },
            test_keychain("k1"),
        )
        .await;
        assert!(message.starts_with("record '/etcd-broker/bindings/i1/b1'"), "{keep}: {message}");
    }
}

#[tokio::test]
async fn a_password_sealed_for_another_record_does_not_unseal() {
    let store = Arc::new(MemoryStore::default());
    let broker = sealed_broker_on(store.clone());
    broker.provision(provision_req("i1", SMALL)).await.unwrap();
    broker.bind(bind_req("i1", "b1")).await.unwrap();
    broker.bind(bind_req("i1", "b2")).await.unwrap();
    let b2 = stored_binding(&store, "/etcd-broker/bindings/i1/b2");
    rewrite_binding(&store, "/etcd-broker/bindings/i1/b1", |r| r.password_sealed = b2.password_sealed).await;
    let err = broker.get_binding(&iid("i1"), &bid("b1")).await.unwrap_err();
    assert!(
        matches!(&err, BrokerError::Internal(m) if m.contains("'/etcd-broker/bindings/i1/b1' does not unseal")),
        "{err:?}"
    );
}

#[tokio::test]
async fn a_wrong_key_of_the_same_name_is_a_500_naming_the_record() {
    use base64::Engine as _;
    let text = base64::engine::general_purpose::STANDARD.encode([9u8; 32]);
    let wrong = Keychain::new("k1", [crate::sealing::Key::from_text("k1", &text).unwrap()]).unwrap();
    let (message, _) = reading_a_changed_record(|_| {}, wrong).await;
    assert!(message.contains("does not unseal with key 'k1'"), "{message}");
}

#[tokio::test]
async fn a_key_the_keychain_lacks_is_a_500_naming_record_and_key() {
    let (message, _) = reading_a_changed_record(
        |r| *sealed_of(r) = sealed_of(r).replacen(":k1:", ":k9:", 1),
        test_keychain("k1"),
    )
    .await;
    assert_eq!(
        message,
        "record '/etcd-broker/bindings/i1/b1' is sealed with key 'k9', which the keychain does not hold"
    );
}

#[tokio::test]
async fn an_unknown_format_version_is_a_500_naming_the_record() {
    let (message, _) = reading_a_changed_record(
        |r| *sealed_of(r) = sealed_of(r).replacen(":v1:", ":v2:", 1),
        test_keychain("k1"),
    )
    .await;
    assert_eq!(
        message,
        "record '/etcd-broker/bindings/i1/b1' is sealed in format v2, which this version cannot read"
    );
}

#[tokio::test]
async fn a_record_with_both_or_no_password_is_a_500_naming_the_record() {
    let (message, password) =
        reading_a_changed_record(|r| r.password = Some("also-in-clear".into()), test_keychain("k1")).await;
    assert!(message.contains("holds both a clear and a sealed password"), "{message}");
    assert!(!message.contains("also-in-clear") && !message.contains(&password));
    let (message, _) = reading_a_changed_record(|r| r.password_sealed = None, test_keychain("k1")).await;
    assert!(message.ends_with("holds no password"), "{message}");
}

#[tokio::test]
async fn sealed_records_are_counted_per_key_and_missing_keys_are_named() {
    let store = Arc::new(MemoryStore::default());
    let k1 = sealed_broker_on(store.clone());
    k1.provision(provision_req("i1", SMALL)).await.unwrap();
    k1.provision(provision_req("i2", LARGE)).await.unwrap();
    for b in ["b1", "b2", "b3"] {
        k1.bind(bind_req("i1", b)).await.unwrap();
    }
    let k2 = broker_with(store.clone(), Sealing::On(test_keychain("k2")));
    let mut far = bind_req("i2", "b1");
    far.plan_id = LARGE.into();
    k2.bind(far).await.unwrap();
    broker_on(store.clone()).bind(bind_req("i1", "b4")).await.unwrap();
    assert_eq!(k1.sealing_keys_in_use().await.unwrap(), ["k1", "k2"]);
    let inventory = k1.sealing_inventory().await.unwrap();
    assert_eq!(inventory.sealed, [("k1".to_owned(), 3), ("k2".to_owned(), 1)]);
    assert_eq!(inventory.clear_text, 1);
    assert_eq!(k1.missing_sealing_keys().await.unwrap(), None);

    // A keychain without k1 (and a key name that sorts between the others) misses k1.
    let only_k2 =
        Keychain::new("k2", test_keychain("k1").keys().filter(|k| k.name() == "k2").cloned()).unwrap();
    let lacking = broker_with(store.clone(), Sealing::On(only_k2));
    assert_eq!(
        lacking.missing_sealing_keys().await.unwrap().as_deref(),
        Some("records are sealed with key 'k1', which the keychain does not hold")
    );
    let none = broker_on(store.clone());
    assert_eq!(
        none.missing_sealing_keys().await.unwrap().as_deref(),
        Some("records are sealed with keys 'k1', 'k2', which the keychain does not hold")
    );
    // Once no record needs k1, nothing is missing.
    for b in ["b1", "b2", "b3"] {
        lacking.unbind(unbind_req("i1", b)).await.unwrap();
    }
    assert_eq!(lacking.missing_sealing_keys().await.unwrap(), None);
    assert_consistent(&store.snapshot());
}

fn certificate_bind_req(instance: &str, binding: &str, plan: &str) -> BindRequest {
    BindRequest { plan_id: plan.into(), ..bind_req(instance, binding) }
}

fn credentials_of(bound: &Bound) -> serde_json::Value {
    let (Bound::Created(b) | Bound::AlreadyExists(b)) = bound;
    b.credentials.clone()
}

#[tokio::test]
async fn a_certificate_binding_is_a_user_without_password_and_a_certificate_for_it() {
    let store = Arc::new(MemoryStore::default());
    let broker = sealed_broker_on(store.clone());
    broker.provision(provision_req("i1", SMALL)).await.unwrap();
    let bound = broker.bind(certificate_bind_req("i1", "b1", CERT)).await.unwrap();
    assert!(matches!(bound, Bound::Created(_)));
    let creds = credentials_of(&bound);
    let user = "etcd-broker.i1.b1";
    assert_eq!(crate::pki::certificate_common_name(creds["cert"].as_str().unwrap()).unwrap(), user);
    assert!(creds["key"].as_str().unwrap().starts_with("-----BEGIN PRIVATE KEY-----"), "{creds}");
    assert_eq!(creds["ca_certificate"], test_ca().certificate_pem());
    assert_eq!(creds["endpoints"], json!(["https://127.0.0.1:2380"]));
    assert_eq!((&creds["username"], &creds["prefix"]), (&json!(user), &json!("/service_instances/i1/")));
    assert!(creds.get("password").is_none() && creds.get("uri").is_none(), "{creds}");
    // etcd got a user without a password (the memory store's empty string), with the role.
    let state = store.snapshot();
    assert_eq!(state.users[user], (String::new(), [user.to_owned()].into_iter().collect()));
    assert_consistent(&state);
    assert_all_sealed(&state);

    // A repeat and GET binding hand out the same certificate and key.
    let again = broker.bind(certificate_bind_req("i1", "b1", CERT)).await.unwrap();
    assert!(matches!(again, Bound::AlreadyExists(_)));
    assert_eq!(credentials_of(&again), creds);
    assert_eq!(broker.get_binding(&iid("i1"), &bid("b1")).await.unwrap().credentials, creds);

    // Nothing secret in clear in the state: neither the key nor any of its lines.
    let key_pem = creds["key"].as_str().unwrap();
    let body: Vec<&str> = key_pem.lines().filter(|l| !l.starts_with("-----")).collect();
    for (k, v) in &store.snapshot().keys {
        let text = String::from_utf8_lossy(&v.value);
        assert!(body.iter().all(|line| !text.contains(line)), "{k} holds the private key in clear");
    }

    // Unbind deletes the user: the certificate names nobody any more.
    broker.unbind(unbind_req("i1", "b1")).await.unwrap();
    assert!(!store.snapshot().users.contains_key(user));
    drain_role_queue(&broker).await.unwrap();
    assert_consistent(&store.snapshot());
}

#[tokio::test]
async fn a_binding_of_both_kinds_has_a_password_user_and_a_certificate() {
    let store = Arc::new(MemoryStore::default());
    let broker = broker_on(store.clone());
    broker.provision(provision_req("i1", SMALL)).await.unwrap();
    let bound = broker.bind(certificate_bind_req("i1", "b1", BOTH)).await.unwrap();
    let creds = credentials_of(&bound);
    assert_eq!(store.snapshot().users["etcd-broker.i1.b1"].0, creds["password"].as_str().unwrap());
    assert_eq!(creds["certificate_endpoints"], json!(["https://127.0.0.1:2380"]));
    assert_eq!(
        crate::pki::certificate_common_name(creds["cert"].as_str().unwrap()).unwrap(),
        "etcd-broker.i1.b1"
    );
    // Sealing off: both in clear, as with passwords.
    let record = stored_binding(&store, "/etcd-broker/bindings/i1/b1");
    assert_eq!(record.private_key.as_deref(), creds["key"].as_str());
    assert_consistent(&store.snapshot());
}

#[tokio::test]
async fn a_private_key_sealed_for_the_password_field_does_not_unseal() {
    let store = Arc::new(MemoryStore::default());
    let broker = sealed_broker_on(store.clone());
    broker.provision(provision_req("i1", SMALL)).await.unwrap();
    broker.bind(certificate_bind_req("i1", "b1", BOTH)).await.unwrap();
    let key = "/etcd-broker/bindings/i1/b1";
    rewrite_binding(&store, key, |r| r.password_sealed = r.private_key_sealed.clone()).await;
    let err = broker.get_binding(&iid("i1"), &bid("b1")).await.unwrap_err();
    assert!(matches!(&err, BrokerError::Internal(m) if m.contains(key) && !m.contains("PRIVATE")), "{err:?}");
}

async fn certificate_bound_by(make: MakeBroker) -> Arc<MemoryStore> {
    let store = provisioned().await;
    let broker = make(store.clone());
    broker.bind(certificate_bind_req("i1", "b1", CERT)).await.unwrap();
    broker.bind(certificate_bind_req("i1", "b2", BOTH)).await.unwrap();
    store
}

#[tokio::test]
async fn a_certificate_bind_converges_after_a_fault_at_any_step() {
    for plan in [CERT, BOTH] {
        for_every_fault(
            |_| Box::pin(provisioned()),
            move |broker| async move { broker.bind(certificate_bind_req("i1", "b1", plan)).await.map(|_| ()) },
            |state| {
                assert_consistent(state);
                assert_eq!(state.users.len(), 1);
                let record: BindingRecord =
                    serde_json::from_slice(&state.keys["/etcd-broker/bindings/i1/b1"].value).unwrap();
                let in_kv = record.secret_location.as_ref().and_then(|at| {
                    let stored = &state.keys[&FakeKv::key(at)];
                    super::fake_kv::decode(&stored.value).get("certificate").map(str::to_owned)
                });
                assert!(record.certificate.is_some() || in_kv.is_some(), "the record or OpenBao holds its certificate");
            },
        )
        .await;
    }
}

#[tokio::test]
async fn a_certificate_unbind_converges_after_a_fault_at_any_step() {
    for_every_fault(|make| Box::pin(certificate_bound_by(make)), unbind_b1, only_b2_left).await;
}

#[tokio::test]
async fn a_certificate_bind_on_a_cluster_without_https_endpoints_is_a_400_that_makes_nothing() {
    let store = Arc::new(MemoryStore::default());
    let broker = sealed_broker_on(store.clone());
    broker.provision(provision_req("i1", FAR)).await.unwrap();
    let before = store.snapshot();
    let err = broker.bind(certificate_bind_req("i1", "b1", CERT)).await.unwrap_err();
    assert!(matches!(&err, BrokerError::BadRequest(m) if m.contains("cluster 'far'")), "{err:?}");
    let after = store.snapshot();
    assert_eq!((after.keys, after.users, after.roles), (before.keys, before.users, before.roles));
}

// --- Rotation (OSB 2.17) and expiring bindings -------------------------------------------

/// A broker of [`rotating_broker_on`] at time 1,000,000 with instance i1 (SMALL) and binding
/// b1.
pub async fn rotating() -> (Arc<MemoryStore>, Arc<TestClock>, EtcdBroker) {
    let store = Arc::new(MemoryStore::default());
    let clock = Arc::new(TestClock::default());
    clock.set(1_000_000);
    let broker = rotating_broker_on(store.clone(), clock.clone());
    broker.provision(provision_req("i1", SMALL)).await.unwrap();
    broker.bind(bind_req("i1", "b1")).await.unwrap();
    (store, clock, broker)
}

fn rotate_req(binding: &str, predecessor: &str) -> BindRequest {
    BindRequest { predecessor_binding_id: Some(bid(predecessor)), ..bind_req("i1", binding) }
}

fn bound(outcome: Bound) -> Binding {
    match outcome {
        Bound::Created(b) | Bound::AlreadyExists(b) => b,
    }
}

#[tokio::test]
async fn an_expiring_binding_says_when_it_expires_and_when_to_renew() {
    let (store, _, broker) = rotating().await;
    let binding = broker.get_binding(&iid("i1"), &bid("b1")).await.unwrap();
    // 1,000,000 s after the epoch is 1970-01-12T13:46:40Z; the ttl is 3600 s, renew 600 s before.
    let metadata = binding.metadata.expect("metadata");
    assert_eq!(metadata.expires_at, "1970-01-12T14:46:40.0Z");
    assert_eq!(metadata.renew_before, "1970-01-12T14:36:40.0Z");
    let record = stored_binding(&store, "/etcd-broker/bindings/i1/b1");
    assert_eq!((record.expires_at, record.renew_before), (Some(1_003_600), Some(1_003_000)));
    assert_consistent(&store.snapshot());
    // Plans without expiry answer no metadata.
    broker.bind(BindRequest { plan_id: LARGE.into(), ..bind_req("i1", "b2") }).await.unwrap();
    assert_eq!(broker.get_binding(&iid("i1"), &bid("b2")).await.unwrap().metadata, None);
}

#[tokio::test]
async fn a_rotation_makes_a_new_binding_and_the_predecessor_keeps_working() {
    let (store, clock, broker) = rotating().await;
    let before = broker.get_binding(&iid("i1"), &bid("b1")).await.unwrap();
    clock.set(1_002_000);
    let rotated = broker.bind(rotate_req("b2", "b1")).await.unwrap();
    assert!(matches!(rotated, Bound::Created(_)));
    let rotated = bound(rotated);
    assert_ne!(rotated.credentials["password"], before.credentials["password"]);
    assert_ne!(rotated.credentials["username"], before.credentials["username"]);
    // A fresh expiry, counted from the rotation.
    assert_eq!(rotated.metadata.unwrap().expires_at, "1970-01-12T15:20:00.0Z");
    // The same rotation again is the same binding (200); another predecessor is a conflict.
    let again = broker.bind(rotate_req("b2", "b1")).await.unwrap();
    assert!(matches!(again, Bound::AlreadyExists(ref b) if b.credentials == rotated.credentials));
    broker.bind(bind_req("i1", "b3")).await.unwrap();
    let other = broker.bind(rotate_req("b2", "b3")).await;
    assert!(matches!(other, Err(BrokerError::Conflict(_))), "{other:?}");
    let plain = broker.bind(bind_req("i1", "b2")).await;
    assert!(matches!(plain, Err(BrokerError::Conflict(_))), "{plain:?}");
    // Both users exist until the predecessor is unbound.
    let users = store.snapshot().users;
    assert!(users.contains_key("etcd-broker.i1.b1") && users.contains_key("etcd-broker.i1.b2"));
    assert_eq!(
        stored_binding(&store, "/etcd-broker/bindings/i1/b2").predecessor_binding_id.as_deref(),
        Some("b1")
    );
    broker.unbind(unbind_req("i1", "b1")).await.unwrap();
    assert!(broker.get_binding(&iid("i1"), &bid("b2")).await.is_ok());
    assert_consistent(&store.snapshot());
}

#[tokio::test]
async fn a_rotation_takes_the_predecessors_parameters() {
    let (store, _, broker) = rotating().await;
    let parameters = json!({"access": "read", "key_prefix": "config/"});
    broker.bind(bind_with("i1", "p1", parameters.clone())).await.unwrap();
    let rotate = BindRequest { plan_id: LARGE.into(), ..rotate_req("p2", "p1") };
    let rotated = bound(broker.bind(rotate.clone()).await.unwrap());
    assert_eq!(rotated.credentials["prefix"], "/service_instances/i1/config/");
    let fetched = broker.get_binding(&iid("i1"), &bid("p2")).await.unwrap();
    assert_eq!(serde_json::Value::Object(fetched.parameters.unwrap()), parameters);
    // Sending the same parameters again is the same rotation; other ones are refused.
    let same = BindRequest { parameters: parameters.as_object().unwrap().clone(), ..rotate.clone() };
    assert!(matches!(broker.bind(same).await.unwrap(), Bound::AlreadyExists(_)));
    let other = BindRequest {
        parameters: json!({"access": "readwrite"}).as_object().unwrap().clone(),
        ..BindRequest { binding_id: bid("p3"), ..rotate }
    };
    let refused = broker.bind(other).await;
    assert!(matches!(&refused, Err(BrokerError::BadRequest(m)) if m.contains("send none")), "{refused:?}");
    let permissions: Vec<Permission> = store.snapshot().roles["etcd-broker.i1.p2"].iter().cloned().collect();
    assert_eq!(
        permissions,
        [Permission::prefix(crate::store::Access::Read, "/service_instances/i1/config/")]
    );
}

#[tokio::test]
async fn rotations_the_spec_does_not_allow_are_refused() {
    let (_, clock, broker) = rotating().await;
    let refused = |outcome: BrokerResult<Bound>, says: &str| match outcome {
        Err(BrokerError::BadRequest(m)) => assert!(m.contains(says), "{m}"),
        other => panic!("{other:?}"),
    };
    // A plan that does not offer rotation (BOTH), the binding itself, an unknown binding.
    refused(
        broker.bind(BindRequest { plan_id: BOTH.into(), ..rotate_req("b2", "b1") }).await,
        "binding_rotatable",
    );
    refused(broker.bind(rotate_req("b1", "b1")).await, "names the binding being created");
    refused(broker.bind(rotate_req("b2", "nope")).await, "is not a binding of service instance 'i1'");
    // Another plan than the predecessor's.
    refused(broker.bind(BindRequest { plan_id: LARGE.into(), ..rotate_req("b2", "b1") }).await, "plan_id");
    // An expired predecessor (its ttl is 3600 s).
    clock.set(1_003_600);
    refused(broker.bind(rotate_req("b2", "b1")).await, "has expired");
}

#[tokio::test]
async fn an_expired_binding_loses_its_user_after_the_grace_and_keeps_its_record() {
    let (store, clock, broker) = rotating().await;
    broker.bind(BindRequest { plan_id: LARGE.into(), ..bind_req("i1", "forever") }).await.unwrap();
    // Expired, but within the grace (300 s): nothing happens yet.
    clock.set(1_003_600 + 299);
    assert_eq!(broker.revoke_expired_bindings().await.unwrap(), expiry::Pass::default());
    assert!(store.snapshot().users.contains_key("etcd-broker.i1.b1"));
    clock.set(1_003_600 + 300);
    assert_eq!(broker.revoke_expired_bindings().await.unwrap(), expiry::Pass { revoked: 1, waiting: 0 });
    let state = store.snapshot();
    assert!(!state.users.contains_key("etcd-broker.i1.b1"));
    assert!(state.users.contains_key("etcd-broker.i1.forever"), "a binding without expiry stays");
    let record = stored_binding(&store, "/etcd-broker/bindings/i1/b1");
    assert_eq!((record.state, record.revoked_at), (RecordState::Ready, Some(1_003_900)));
    assert_indexes_match_records(&state);
    // Nothing left to do; GET still answers, with the past expiry; unbind cleans up as usual.
    assert_eq!(broker.revoke_expired_bindings().await.unwrap(), expiry::Pass::default());
    assert!(broker.get_binding(&iid("i1"), &bid("b1")).await.unwrap().metadata.is_some());
    broker.unbind(unbind_req("i1", "b1")).await.unwrap();
    drain_role_queue(&broker).await.unwrap();
    assert!(!store.snapshot().roles.contains_key("etcd-broker.i1.b1"));
    assert_consistent(&store.snapshot());
}

#[tokio::test]
async fn a_certificate_binding_is_valid_until_its_expiry_and_grace() {
    let (_, _, broker) = rotating().await;
    let cert =
        bound(broker.bind(BindRequest { plan_id: CERT.into(), ..bind_req("i1", "c1") }).await.unwrap());
    let pem = cert.credentials["cert"].as_str().unwrap();
    let x509 = openssl::x509::X509::from_pem(pem.as_bytes()).unwrap();
    // Minted now (the real clock), valid for the binding's remaining 3600 s + 300 s of grace
    // at most, far below the configured validity.
    let in_an_hour_and_more = openssl::asn1::Asn1Time::days_from_now(1).unwrap();
    assert!(x509.not_after() < in_an_hour_and_more);
}

#[tokio::test]
async fn expiry_converges_after_a_fault_at_any_step() {
    let calls = {
        let (store, clock, _) = rotating().await;
        clock.set(1_003_900);
        let counting = Arc::new(FaultyStore::new(store, None, FailMode::Before));
        rotating_broker_on(counting.clone(), clock).revoke_expired_bindings().await.unwrap();
        counting.calls()
    };
    assert!(calls >= 4, "{calls}");
    for mode in [FailMode::Before, FailMode::After] {
        for step in 0..calls {
            let (store, clock, _) = rotating().await;
            clock.set(1_003_900);
            let faulty = Arc::new(FaultyStore::new(store.clone(), Some(step), mode));
            let failed = rotating_broker_on(faulty, clock.clone()).revoke_expired_bindings().await;
            assert!(failed.is_err(), "step {step} ({mode:?})");
            // The next pass (the same leader later, or the next one) finishes the job.
            rotating_broker_on(store.clone(), clock).revoke_expired_bindings().await.unwrap();
            let state = store.snapshot();
            assert!(!state.users.contains_key("etcd-broker.i1.b1"), "step {step} ({mode:?})");
            assert_eq!(stored_binding(&store, "/etcd-broker/bindings/i1/b1").revoked_at, Some(1_003_900));
            assert_indexes_match_records(&state);
        }
    }
}

#[tokio::test]
async fn with_openbao_kv_the_record_holds_no_secret_and_unbind_deletes_it() {
    let store = Arc::new(MemoryStore::default());
    let kv = Arc::new(FakeKv::on(store.clone()));
    let broker = kv_broker_with(store.clone(), kv.clone());
    broker.provision(provision_req("i1", SMALL)).await.unwrap();
    let bound = broker.bind(bind_req("i1", "b1")).await.unwrap();
    assert!(matches!(bound, Bound::Created(_)));
    let password = password_of(&bound);
    let record = stored_binding(&store, "/etcd-broker/bindings/i1/b1");
    let at = record.secret_location.clone().expect("the record names its secret");
    assert_eq!(at.to_string(), "secret/etcd-broker/i1/b1");
    let state = store.snapshot();
    assert!(!String::from_utf8_lossy(&state.keys["/etcd-broker/bindings/i1/b1"].value).contains(&password));
    assert_eq!(
        super::fake_kv::decode(&state.keys[&FakeKv::key(&at)].value).get("password"),
        Some(&*password)
    );
    assert_consistent(&state);
    // Repeated bind and GET answer the same secret, read from the store.
    assert_eq!(password_of(&broker.bind(bind_req("i1", "b1")).await.unwrap()), password);
    let got = broker.get_binding(&iid("i1"), &bid("b1")).await.unwrap();
    assert_eq!(got.credentials["password"], password.as_str());
    let inventory = broker.sealing_inventory().await.unwrap();
    assert_eq!((inventory.clear_text, inventory.in_credential_store), (0, 1));
    broker.unbind(unbind_req("i1", "b1")).await.unwrap();
    assert!(!store.snapshot().keys.contains_key(&FakeKv::key(&at)), "unbind deletes the secret");
    drain_role_queue(&broker).await.unwrap();
    broker.deprovision(deprovision_req("i1")).await.unwrap();
    assert!(store.snapshot().keys.is_empty());
}

#[tokio::test]
async fn with_openbao_kv_down_binds_are_503_and_write_nothing_and_unbind_finishes_later() {
    use std::sync::atomic::Ordering;
    let store = Arc::new(MemoryStore::default());
    let kv = Arc::new(FakeKv::on(store.clone()));
    let broker = kv_broker_with(store.clone(), kv.clone());
    broker.provision(provision_req("i1", SMALL)).await.unwrap();
    broker.bind(bind_req("i1", "b1")).await.unwrap();
    let before = store.snapshot();
    kv.down.store(true, Ordering::SeqCst);
    for plan in [SMALL, CERT, BOTH] {
        match broker.bind(certificate_bind_req("i1", "b2", plan)).await {
            Err(BrokerError::Unavailable(message)) => {
                assert!(message.contains("fake OpenBao is down") && message.contains("repeat the request"))
            }
            other => panic!("{other:?}"),
        }
    }
    let after = store.snapshot();
    assert_eq!(
        (after.revision, &after.users, &after.roles),
        (before.revision, &before.users, &before.roles),
        "a bind with OpenBao down wrote something"
    );
    assert!(matches!(broker.get_binding(&iid("i1"), &bid("b1")).await, Err(BrokerError::Unavailable(_))));
    assert!(matches!(broker.bind(bind_req("i1", "b1")).await, Err(BrokerError::Unavailable(_))));
    // The unbind deletes the user (access ends at once), then waits for OpenBao.
    assert!(matches!(broker.unbind(unbind_req("i1", "b1")).await, Err(BrokerError::Unavailable(_))));
    assert!(store.snapshot().users.is_empty());
    kv.down.store(false, Ordering::SeqCst);
    broker.unbind(unbind_req("i1", "b1")).await.unwrap();
    drain_role_queue(&broker).await.unwrap();
    broker.deprovision(deprovision_req("i1")).await.unwrap();
    assert!(store.snapshot().keys.is_empty());
}

#[tokio::test]
async fn a_certificate_binding_keeps_certificate_and_key_in_openbao_kv() {
    let store = Arc::new(MemoryStore::default());
    let broker = kv_broker_on(store.clone());
    broker.provision(provision_req("i1", SMALL)).await.unwrap();
    let bound = broker.bind(certificate_bind_req("i1", "b1", BOTH)).await.unwrap();
    let credentials = credentials_of(&bound);
    let record = stored_binding(&store, "/etcd-broker/bindings/i1/b1");
    assert!(record.certificate.is_none() && record.private_key_sealed.is_none());
    let secret = super::fake_kv::decode(
        &store.snapshot().keys[&FakeKv::key(record.secret_location.as_ref().unwrap())].value,
    );
    assert_eq!(secret.get("certificate"), credentials["cert"].as_str());
    assert_eq!(secret.get("private_key"), credentials["key"].as_str());
    assert_eq!(secret.get("password"), credentials["password"].as_str());
    let got = broker.get_binding(&iid("i1"), &bid("b1")).await.unwrap();
    assert_eq!(got.credentials, credentials);
}

#[tokio::test]
async fn a_plan_answering_by_reference_hands_out_where_the_secrets_are_not_the_secrets() {
    let store = Arc::new(MemoryStore::default());
    let mut setup = kv_setup(store.clone(), Arc::new(FakeKv::on(store.clone())));
    for plan in [SMALL, BOTH] {
        setup.plan_options.get_mut(plan).unwrap().credentials_by_reference = true;
    }
    let broker = EtcdBroker::new(setup);
    broker.provision(provision_req("i1", SMALL)).await.unwrap();
    let bound = credentials_of(&broker.bind(bind_req("i1", "b1")).await.unwrap());
    let secret = super::fake_kv::decode(&store.snapshot().keys["/openbao-kv/secret/etcd-broker/i1/b1"].value);
    let password = secret.get("password").unwrap();
    assert!(!bound.to_string().contains(password), "{bound}");
    assert_eq!(
        bound,
        json!({
            "endpoints": ["http://127.0.0.1:2379"],
            "host": "127.0.0.1",
            "port": 2379,
            "username": "etcd-broker.i1.b1",
            "prefix": "/service_instances/i1/",
            "tls": { "enabled": false },
            "credentials_reference": {
                "store": "openbao",
                "address": "https://bao.example:8200",
                "mount": "secret",
                "path": "etcd-broker/i1/b1",
                "read_path": "secret/data/etcd-broker/i1/b1",
                "fields": ["password"],
            },
        })
    );
    let got = broker.get_binding(&iid("i1"), &bid("b1")).await.unwrap();
    assert_eq!(got.credentials, bound);
    // A certificate binding: the certificate (public) stays, the key goes.
    let both = credentials_of(&broker.bind(certificate_bind_req("i1", "b2", BOTH)).await.unwrap());
    assert!(both["cert"].is_string() && both.get("key").is_none() && both.get("password").is_none());
    assert_eq!(both["credentials_reference"]["fields"], json!(["password", "certificate", "private_key"]));
    // Another plan of the same broker answers the secrets.
    let full = credentials_of(&broker.bind(certificate_bind_req("i1", "b3", CERT)).await.unwrap());
    assert!(full["key"].is_string() && full.get("credentials_reference").is_none());
}

#[tokio::test]
async fn a_plan_template_shapes_bind_and_get_with_the_instances_parameters() {
    use super::templates::{CredentialTemplates, SampleShape};
    let store = Arc::new(MemoryStore::default());
    let mut setup = broker_setup(store.clone(), Sealing::Off { keychain: None });
    let template = r#"{"url": "etcd://{{username}}:{{password}}@{{host}}:{{port}}{{prefix}}",
        "team": "{{#if instance.parameters.team}}{{instance.parameters.team}}{{else}}none{{/if}}",
        "cluster": "{{cluster.name}}"}"#;
    let shape = SampleShape { password: true, ..Default::default() };
    setup.templates = Arc::new(
        CredentialTemplates::new(&[(SMALL.into(), template.into())].into(), &[(SMALL.into(), shape)].into())
            .unwrap(),
    );
    let broker = EtcdBroker::new(setup);
    broker.provision(provision_req("i1", SMALL)).await.unwrap();
    // Provisions take no parameters yet (plan parameters are to come): an instance record
    // that has some, as a later version will write.
    let key = "/etcd-broker/instances/i1";
    let mut instance: records::InstanceRecord =
        serde_json::from_slice(&store.snapshot().keys[key].value).unwrap();
    instance.parameters = json!({ "team": "blue" }).as_object().unwrap().clone();
    store.commit(&[], &[Write::Put(key.into(), records::encode(&instance))]).await.unwrap();
    let bound = credentials_of(&broker.bind(bind_req("i1", "b1")).await.unwrap());
    let password = stored_binding(&store, "/etcd-broker/bindings/i1/b1").password.unwrap();
    assert_eq!(
        bound,
        json!({
            "url": format!("etcd://etcd-broker.i1.b1:{password}@127.0.0.1:2379/service_instances/i1/"),
            "team": "blue",
            "cluster": "main",
        })
    );
    assert_eq!(broker.get_binding(&iid("i1"), &bid("b1")).await.unwrap().credentials, bound);
    assert_eq!(credentials_of(&broker.bind(bind_req("i1", "b1")).await.unwrap()), bound);
    // Another plan keeps the default shape.
    let mut other = bind_req("i1", "b2");
    other.plan_id = LARGE.into();
    let default = credentials_of(&broker.bind(other).await.unwrap());
    assert!(default["endpoints"].is_array() && default.get("url").is_none());
}

#[tokio::test]
async fn with_openbao_down_an_instance_of_a_plan_keeping_secrets_in_etcd_is_still_deprovisioned() {
    use std::sync::atomic::Ordering;
    let store = Arc::new(MemoryStore::default());
    let kv = Arc::new(FakeKv::on(store.clone()));
    let mut setup = kv_setup(store.clone(), kv.clone());
    setup.plan_options.get_mut(LARGE).unwrap().credential_store = CredentialStoreKind::Etcd;
    let broker = EtcdBroker::new(setup);
    broker.provision(provision_req("i1", LARGE)).await.unwrap();
    broker.provision(provision_req("i2", SMALL)).await.unwrap();
    kv.down.store(true, Ordering::SeqCst);
    let mut req = deprovision_req("i1");
    req.plan_id = LARGE.into();
    broker.deprovision(req).await.unwrap();
    // An instance of a plan keeping its secrets in OpenBao waits for it.
    assert!(matches!(broker.deprovision(deprovision_req("i2")).await, Err(BrokerError::Unavailable(_))));
    kv.down.store(false, Ordering::SeqCst);
    broker.deprovision(deprovision_req("i2")).await.unwrap();
    assert!(store.snapshot().keys.is_empty());
}

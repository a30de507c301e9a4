//! `reseal`: every binding record sealed by a key other than the active one, or still in clear
//! text, rewritten sealed by the active key, while brokers serve.
//!
//! Each record is one compare-and-swap transaction guarded on the revision it was read at: the
//! record, its entry in the index of sealed records moved from the old key's name (or none) to
//! the active one's, and its per-plan entry (put again, as every record write does). A broker
//! that changed the record in between wins; the record is then read again and retried. So
//! every crash point leaves records and indexes in agreement, and nothing a broker wrote is
//! lost.
//!
//! The walk goes through the records in key order, a page of [`PAGE`] records per read
//! ([`Store::scan`]), rewriting up to [`Pace::parallel`] records of a page at once (their
//! transactions stay one per record; the store may send several in one etcd request), and skips
//! records the active key already seals: a re-run after Ctrl-C or a crash skips what is done and
//! finishes the rest. Records in state `deleting` are left to the unbind finishing
//! them (it deletes them, with their index entries under every key). [`Pace::max_rate`] spaces
//! the rewrites out evenly, so a large run can be kept to a share of etcd's write capacity.

use std::collections::BTreeMap;
use std::num::NonZeroU32;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::time::Instant;

use futures_util::StreamExt;
use zeroize::Zeroizing;

use crate::sealing::{self, Keychain};
use crate::store::{Guard, Store, StoreError, Versioned, Write};

use super::names::Names;
use super::records::{decode, BindingRecord, RecordState, StoredPassword, PRIVATE_KEY_FIELD};
use super::sealed::binding_writes;
use super::CAS_ATTEMPTS;

/// Where a rewritten record's password came from, the key of the summary's counts.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub enum Source {
    /// The record held its password in clear.
    Clear,
    /// The record was sealed by this (non-active) key.
    Key(String),
}

impl std::fmt::Display for Source {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Source::Clear => f.write_str("clear text"),
            Source::Key(name) => write!(f, "key '{name}'"),
        }
    }
}

/// What a run did (or, dry, would do). Names record keys and key names, never a secret.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Summary {
    /// Records rewritten (dry run: to rewrite) per source.
    pub rewritten: BTreeMap<Source, u64>,
    /// Records the active key seals already.
    pub already_active: u64,
    /// Records in state `deleting`, left to their unbind.
    pub deleting: u64,
    /// Records whose secrets live in a credential store (OpenBao KV): nothing in them to seal.
    pub in_credential_store: u64,
    /// Compare-and-swaps lost to a concurrent change; each record was read again and retried.
    pub raced: u64,
    /// Records deleted between being found and being rewritten.
    pub gone: u64,
    /// Records that could not be rewritten: (record key, why).
    pub failed: Vec<(String, String)>,
    /// The run stopped early (asked to, or the state cluster failed): why, and the last record
    /// key finished.
    pub stopped: Option<Stopped>,
}

/// Why a run ended before the last record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Stopped {
    /// Asked to stop (Ctrl-C) after the record being rewritten.
    Interrupted,
    /// The state cluster failed; a re-run continues.
    Store(StoreError),
    /// The active key's backend (OpenBao transit) did not say which key version seals; nothing
    /// was rewritten.
    Key(String),
}

impl Summary {
    /// Adds the counts of `other` (one record's) to these; the first stop wins.
    fn add(&mut self, other: Summary) {
        for (source, count) in other.rewritten {
            *self.rewritten.entry(source).or_default() += count;
        }
        self.already_active += other.already_active;
        self.deleting += other.deleting;
        self.in_credential_store += other.in_credential_store;
        self.raced += other.raced;
        self.gone += other.gone;
        self.failed.extend(other.failed);
        if self.stopped.is_none() {
            self.stopped = other.stopped;
        }
    }

    /// Records looked at so far.
    pub fn done(&self) -> u64 {
        self.rewritten.values().sum::<u64>()
            + self.already_active
            + self.deleting
            + self.in_credential_store
            + self.gone
            + self.failed.len() as u64
    }
}

/// Progress of a run, handed to the caller's report after every record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Progress {
    /// Records looked at.
    pub done: u64,
    /// Binding records when the run started (records bound since may make `done` exceed it).
    pub total: u64,
}

/// Records read at once by the walk: one etcd read per page, small next to etcd's limits.
pub const PAGE: usize = 64;

/// How many records a run rewrites at once unless told otherwise.
pub const DEFAULT_PARALLEL: usize = 8;

/// One reseal run over the binding records of a state cluster.
pub struct Reseal {
    pub state: Arc<dyn Store>,
    pub names: Names,
    /// The active key seals; the others unseal.
    pub keychain: Keychain,
    /// Count what would be rewritten, write nothing.
    pub dry_run: bool,
    /// How hard the run presses on etcd.
    pub pace: Pace,
}

/// How hard a run presses on etcd, chosen by the operator for a cluster that serves meanwhile.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Pace {
    /// Records rewritten at once (at least 1): each waits for an fsynced transaction, so one at
    /// a time leaves etcd mostly idle; more finish sooner and take more of etcd from the brokers.
    pub parallel: usize,
    /// At most this many rewrites start per second, evenly spaced (none: as fast as `parallel`
    /// allows). Records needing no rewrite are not counted: they cost one shared read.
    pub max_rate: Option<NonZeroU32>,
}

impl Default for Pace {
    fn default() -> Self {
        Self { parallel: DEFAULT_PARALLEL, max_rate: None }
    }
}

/// The start times of rewrites under [`Pace::max_rate`]: each takes the next free slot, one
/// interval after the previous one (never in the past, so an idle stretch earns no burst).
struct Slots {
    interval: Duration,
    next: Mutex<Instant>,
}

impl Slots {
    fn new(max_rate: NonZeroU32) -> Self {
        Self { interval: Duration::from_secs(1) / max_rate.get(), next: Mutex::new(Instant::now()) }
    }

    /// Waits for this rewrite's slot.
    async fn wait(&self) {
        let at = {
            // A poisoned lock only means a panic elsewhere; the instant inside is still valid.
            let mut next = self.next.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
            let at = (*next).max(Instant::now());
            *next = at + self.interval;
            at
        };
        tokio::time::sleep_until(at).await;
    }
}

/// What to do with one record as read.
enum Plan {
    Skip(fn(&mut Summary)),
    Fail(String),
    /// Boxed: a record is large next to the other variants.
    Rewrite(Source, Box<BindingRecord>),
}

impl Reseal {
    /// Walks every binding record in key order; `stop` ends the walk after the records being
    /// rewritten. `progress` hears of every record looked at.
    pub async fn run(&self, stop: &AtomicBool, progress: &mut (dyn FnMut(Progress) + Send)) -> Summary {
        let mut summary = Summary::default();
        let prefix = self.names.all_bindings_prefix();
        let total = match self.state.count(&prefix).await {
            Ok(total) => total,
            Err(e) => {
                summary.stopped = Some(Stopped::Store(e));
                return summary;
            }
        };
        // What "sealed by the active key" means: its name, or a remote key's latest version.
        let active = self.keychain.active();
        let active = match active.backend() {
            None => active.name().to_owned(),
            Some(backend) => match backend.latest_version().await {
                Ok(version) => format!("{}.v{version}", active.name()),
                Err(e) => {
                    summary.stopped =
                        Some(Stopped::Key(format!("key '{}' ({}): {e}", active.name(), backend.describe())));
                    return summary;
                }
            },
        };
        let active = active.as_str();
        let slots = self.pace.max_rate.map(Slots::new);
        let mut after: Option<String> = None;
        while summary.stopped.is_none() {
            if stop.load(Ordering::SeqCst) {
                summary.stopped = Some(Stopped::Interrupted);
                break;
            }
            let from = after.as_ref().map_or_else(|| prefix.clone(), |after| format!("{after}\0"));
            let page = match self.state.scan(&prefix, &from, PAGE, false).await {
                Ok(page) => page,
                Err(e) => {
                    summary.stopped = Some(Stopped::Store(e));
                    break;
                }
            };
            let Some((last, _)) = page.last() else { break };
            after = Some(last.clone());
            // Records not started once `stop` is set are left for the next run.
            let mut outcomes = futures_util::stream::iter(page)
                .map(|(key, found)| {
                    let slots = slots.as_ref();
                    async move {
                        if stop.load(Ordering::SeqCst) {
                            return None;
                        }
                        let mut one = Summary::default();
                        if let Err(e) = self.record(&key, found, active, slots, stop, &mut one).await {
                            one.stopped = Some(Stopped::Store(e));
                        }
                        Some(one)
                    }
                })
                .buffer_unordered(self.pace.parallel.max(1));
            while let Some(outcome) = outcomes.next().await {
                if let Some(one) = outcome {
                    summary.add(one);
                    progress(Progress { done: summary.done(), total });
                }
            }
        }
        summary
    }

    /// Rewrites the record at `key` (read as `found`) unless it needs none; counts the outcome.
    /// A store failure ends the run (the record is left as it was, or rewritten: the next run
    /// tells).
    async fn record(
        &self,
        key: &str,
        mut found: Versioned,
        active: &str,
        slots: Option<&Slots>,
        stop: &AtomicBool,
        summary: &mut Summary,
    ) -> Result<(), StoreError> {
        for _ in 0..CAS_ATTEMPTS {
            let (source, record) = match self.plan(key, &found.value, active) {
                Plan::Skip(count) => {
                    count(summary);
                    return Ok(());
                }
                Plan::Fail(why) => {
                    summary.failed.push((key.to_owned(), why));
                    return Ok(());
                }
                Plan::Rewrite(source, record) => (source, record),
            };
            if self.dry_run {
                *summary.rewritten.entry(source).or_default() += 1;
                return Ok(());
            }
            let writes = match self.rewrite(key, &source, *record).await {
                Ok(writes) => writes,
                Err(why) => {
                    summary.failed.push((key.to_owned(), why));
                    return Ok(());
                }
            };
            if let Some(slots) = slots {
                slots.wait().await;
                // Ctrl-C during a long wait: the record is left as it was, for the next run.
                if stop.load(Ordering::SeqCst) {
                    summary.stopped = Some(Stopped::Interrupted);
                    return Ok(());
                }
            }
            let guard = [Guard::Revision(key.to_owned(), found.mod_revision)];
            if self.state.commit(&guard, &writes).await?.is_some() {
                *summary.rewritten.entry(source).or_default() += 1;
                return Ok(());
            }
            summary.raced += 1;
            match self.state.get(key).await? {
                Some(again) => found = again,
                None => {
                    summary.gone += 1;
                    return Ok(());
                }
            }
        }
        summary.failed.push((key.to_owned(), format!("changed concurrently {CAS_ATTEMPTS} times in a row")));
        Ok(())
    }

    /// Whether the record as read needs rewriting, and from what; `active` is the sealing
    /// name of the active key (a remote key's with its latest version).
    fn plan(&self, key: &str, value: &[u8], active: &str) -> Plan {
        let record: BindingRecord = match decode(key, value) {
            Ok(record) => record,
            Err(e) => return Plan::Fail(e.to_string()),
        };
        if record.state == RecordState::Deleting {
            return Plan::Skip(|s| s.deleting += 1);
        }
        if record.secret_location.is_some() {
            return Plan::Skip(|s| s.in_credential_store += 1);
        }
        // The password's form decides; a certificate binding's private key is sealed with it
        // (or alone, without a password).
        let stored = match (record.stored_password(), record.stored_private_key()) {
            (Ok(password), Ok(private_key)) => password.or(private_key),
            (Err(broken), _) | (_, Err(broken)) => return Plan::Fail(format!("it {broken}")),
        };
        let source = match stored {
            Some(StoredPassword::Clear(_)) => Source::Clear,
            Some(StoredPassword::Sealed(sealed)) => match sealing::sealed_with(sealed) {
                Some(name) if name == active => return Plan::Skip(|s| s.already_active += 1),
                Some(name) => Source::Key(name.to_owned()),
                None => return Plan::Fail("its sealed password names no key".to_owned()),
            },
            None => return Plan::Fail("it holds no secret".to_owned()),
        };
        Plan::Rewrite(source, Box::new(record))
    }

    /// The writes of one record's rewrite: the record sealed by the active key, its entry in
    /// the index of sealed records moved there, its per-plan entry.
    async fn rewrite(
        &self,
        key: &str,
        source: &Source,
        mut record: BindingRecord,
    ) -> Result<Vec<Write>, String> {
        record.password_sealed =
            self.reseal_one(source, record.password.take(), record.password_sealed.take(), key).await?;
        let private_key_for = format!("{key}{PRIVATE_KEY_FIELD}");
        record.private_key_sealed = self
            .reseal_one(source, record.private_key.take(), record.private_key_sealed.take(), &private_key_for)
            .await?;
        let mut writes = binding_writes(&self.names, key, &record);
        if let Source::Key(old) = source {
            writes.push(Write::Delete(self.names.sealed_index_key(
                old,
                &record.instance_id,
                &record.binding_id,
            )));
        }
        Ok(writes)
    }

    /// One secret of a record (clear or sealed, as `source` says) sealed by the active key for
    /// `sealed_for`; `None` when the record holds none of this kind.
    async fn reseal_one(
        &self,
        source: &Source,
        clear: Option<String>,
        sealed: Option<String>,
        sealed_for: &str,
    ) -> Result<Option<String>, String> {
        let clear = match (source, clear, sealed) {
            (_, None, None) => return Ok(None),
            (Source::Clear, Some(clear), None) => Zeroizing::new(clear.into_bytes()),
            (Source::Key(_), None, Some(sealed)) => Zeroizing::new(
                sealing::unseal_async(&self.keychain, sealed_for, &sealed)
                    .await
                    .map_err(|e| e.to_string())?,
            ),
            _ => return Err("its password changed form while being read".to_owned()),
        };
        sealing::seal_async(&self.keychain, sealed_for, &clear).await.map(Some).map_err(|e| e.to_string())
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::num::NonZeroU32;
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
    use std::sync::Arc;
    use std::time::Duration;

    use tokio::time::Instant;

    use super::{Pace, Reseal, Source, Stopped, Summary};
    use crate::broker::names::Names;
    use crate::broker::records::{decode, encode, BindingRecord, RecordState};
    use crate::broker::tests::*;
    use crate::osb::{BindingId, InstanceId, ServiceBroker};
    use crate::sealing::Sealing;
    use crate::store::faulty::{FailMode, FaultyStore};
    use crate::store::memory::{MemoryState, MemoryStore};
    use crate::store::{Guard, Store, Write};

    const RECORD: &str = "/etcd-broker/bindings/i1/";

    /// Instance i1 with b1, b2 in clear (sealing off), b3, b4 sealed by k1, b5 sealed by k2.
    async fn mixed() -> Arc<MemoryStore> {
        let store = Arc::new(MemoryStore::default());
        broker_on(store.clone()).provision(provision_req("i1", SMALL)).await.unwrap();
        for b in ["b1", "b2"] {
            broker_on(store.clone()).bind(bind_req("i1", b)).await.unwrap();
        }
        for b in ["b3", "b4"] {
            sealed_broker_on(store.clone()).bind(bind_req("i1", b)).await.unwrap();
        }
        broker_with(store.clone(), Sealing::On(test_keychain("k2")))
            .bind(bind_req("i1", "b5"))
            .await
            .unwrap();
        store
    }

    #[tokio::test]
    async fn after_a_transit_key_rotation_records_of_older_versions_are_resealed_by_the_latest() {
        use crate::sealing::backend::fake::FakeTransit;
        let fake = Arc::new(FakeTransit::default());
        let keychain = transit_keychain_with(fake.clone());
        let store = mixed().await;
        let broker = broker_with(store.clone(), Sealing::On(keychain.clone()));
        broker.bind(bind_req("i1", "b6")).await.unwrap();
        fake.rotate();
        let before = passwords_with(&store, &keychain).await;
        let run = Reseal { keychain: keychain.clone(), ..reseal(store.clone(), false) };
        let summary = run_summary(&run).await;
        assert_eq!(summary.failed, []);
        let sources: Vec<(String, u64)> =
            summary.rewritten.iter().map(|(source, n)| (source.to_string(), *n)).collect();
        assert_eq!(
            sources,
            [
                ("clear text".to_owned(), 2),
                ("key 'k1'".to_owned(), 2),
                ("key 'k2'".to_owned(), 1),
                ("key 't1.v1'".to_owned(), 1)
            ]
        );
        for (key, record) in records(&store.snapshot()) {
            let sealed = record.password_sealed.as_deref().unwrap();
            assert_eq!(crate::sealing::sealed_with(sealed), Some("t1.v2"), "{key}");
        }
        assert_indexes_match_records(&store.snapshot());
        assert_eq!(passwords_with(&store, &keychain).await, before);
        // Again: nothing to do. With transit down: stopped before any record, nothing written.
        assert_eq!(run_summary(&run).await.already_active, 6);
        fake.down.store(true, Ordering::SeqCst);
        let stopped = run_summary(&run).await;
        assert!(
            matches!(&stopped.stopped, Some(Stopped::Key(why)) if why.contains("key 't1'")),
            "{stopped:?}"
        );
        assert_eq!(stopped.done(), 0);
    }

    async fn run_summary(reseal: &Reseal) -> Summary {
        reseal.run(&AtomicBool::new(false), &mut |_| {}).await
    }

    /// Every binding's password as GET binding answers it with `keychain`.
    async fn passwords_with(
        store: &Arc<MemoryStore>,
        keychain: &crate::sealing::Keychain,
    ) -> BTreeMap<String, String> {
        let broker = broker_with(store.clone(), Sealing::On(keychain.clone()));
        let mut out = BTreeMap::new();
        for (key, record) in records(&store.snapshot()) {
            let (i, b) = (
                InstanceId::parse(&record.instance_id).unwrap(),
                BindingId::parse(&record.binding_id).unwrap(),
            );
            let got = broker.get_binding(&i, &b).await.unwrap();
            out.insert(key, got.credentials["password"].as_str().unwrap().to_owned());
        }
        out
    }

    fn reseal(state: Arc<dyn Store>, dry_run: bool) -> Reseal {
        Reseal {
            state,
            names: Names::default(),
            keychain: test_keychain("k2"),
            dry_run,
            pace: Pace { parallel: 3, max_rate: None },
        }
    }

    async fn run(reseal: &Reseal) -> Summary {
        reseal.run(&AtomicBool::new(false), &mut |_| {}).await
    }

    fn records(state: &MemoryState) -> BTreeMap<String, BindingRecord> {
        state
            .keys
            .iter()
            .filter(|(k, _)| k.starts_with(RECORD))
            .map(|(k, v)| (k.clone(), decode(k, &v.value).unwrap()))
            .collect()
    }

    /// Every binding's password as GET binding answers it, with k2 active and k1 still known.
    async fn passwords(store: &Arc<MemoryStore>) -> BTreeMap<String, String> {
        let broker = broker_with(store.clone(), Sealing::On(test_keychain("k2")));
        let mut out = BTreeMap::new();
        for key in records(&store.snapshot()).keys() {
            let b = key.strip_prefix(RECORD).unwrap();
            let got = broker
                .get_binding(&InstanceId::parse("i1").unwrap(), &BindingId::parse(b).unwrap())
                .await
                .unwrap();
            out.insert(b.to_owned(), got.credentials["password"].as_str().unwrap().to_owned());
        }
        out
    }

    /// Every record not deleting is sealed by k2, and the indexes agree with the records.
    fn assert_all_k2(state: &MemoryState) {
        assert_indexes_match_records(state);
        for (key, record) in records(state) {
            if record.state == RecordState::Deleting {
                continue;
            }
            let sealed = record.password_sealed.as_deref().unwrap_or_else(|| panic!("{key} is in clear"));
            assert_eq!(crate::sealing::sealed_with(sealed), Some("k2"), "{key}");
            assert!(record.password.is_none(), "{key}");
        }
        let k2 = state.keys.keys().filter(|k| k.starts_with("/etcd-broker/index/sealed/k2/")).count();
        let k1 = state.keys.keys().filter(|k| k.starts_with("/etcd-broker/index/sealed/k1/")).count();
        assert_eq!(k1, 0);
        assert_eq!(k2, records(state).values().filter(|r| r.state != RecordState::Deleting).count());
    }

    #[tokio::test]
    async fn clear_and_old_key_records_are_sealed_by_the_active_key() {
        let store = mixed().await;
        let before = passwords(&store).await;
        let summary = run(&reseal(store.clone(), false)).await;
        let expected: BTreeMap<Source, u64> = [(Source::Clear, 2), (Source::Key("k1".into()), 2)].into();
        assert_eq!(summary.rewritten, expected);
        assert_eq!((summary.already_active, summary.raced, summary.stopped), (1, 0, None));
        assert!(summary.failed.is_empty());
        let state = store.snapshot();
        assert_all_k2(&state);
        assert_consistent(&state);
        assert_eq!(passwords(&store).await, before);
        let again = run(&reseal(store.clone(), false)).await;
        assert!(again.rewritten.is_empty());
        assert_eq!(again.already_active, 5);
        assert_eq!(store.snapshot().keys, state.keys, "a second run wrote");
    }

    #[tokio::test]
    async fn certificate_bindings_private_keys_are_resealed_with_their_records() {
        let store = Arc::new(MemoryStore::default());
        broker_on(store.clone()).provision(provision_req("i1", SMALL)).await.unwrap();
        let bind = |b: &'static str, plan: &'static str| crate::osb::model::BindRequest {
            plan_id: plan.into(),
            ..bind_req("i1", b)
        };
        broker_on(store.clone()).bind(bind("c1", CERT)).await.unwrap();
        sealed_broker_on(store.clone()).bind(bind("c2", CERT)).await.unwrap();
        sealed_broker_on(store.clone()).bind(bind("c3", BOTH)).await.unwrap();
        let broker = broker_with(store.clone(), Sealing::On(test_keychain("k2")));
        let mut before = BTreeMap::new();
        for b in ["c1", "c2", "c3"] {
            let id = (InstanceId::parse("i1").unwrap(), BindingId::parse(b).unwrap());
            before.insert(b, broker.get_binding(&id.0, &id.1).await.unwrap().credentials);
        }
        let summary = run(&reseal(store.clone(), false)).await;
        let expected: BTreeMap<Source, u64> = [(Source::Clear, 1), (Source::Key("k1".into()), 2)].into();
        assert_eq!(summary.rewritten, expected);
        assert!(summary.failed.is_empty(), "{:?}", summary.failed);
        let state = store.snapshot();
        assert_consistent(&state);
        for (key, record) in records(&state) {
            let sealed =
                record.private_key_sealed.as_deref().unwrap_or_else(|| panic!("{key}: key in clear"));
            assert_eq!(crate::sealing::sealed_with(sealed), Some("k2"), "{key}");
            assert!(record.private_key.is_none() && record.password.is_none(), "{key}");
        }
        // The same certificate, key and password afterwards, unsealed by k2.
        let k2 = {
            use base64::Engine as _;
            let text = base64::engine::general_purpose::STANDARD.encode([2u8; 32]);
            crate::sealing::Keychain::new("k2", [crate::sealing::Key::from_text("k2", &text).unwrap()])
                .unwrap()
        };
        let k2_only = broker_with(store.clone(), Sealing::On(k2));
        for (b, credentials) in before {
            let id = (InstanceId::parse("i1").unwrap(), BindingId::parse(b).unwrap());
            assert_eq!(k2_only.get_binding(&id.0, &id.1).await.unwrap().credentials, credentials, "{b}");
        }
    }

    #[tokio::test]
    async fn a_dry_run_counts_and_writes_nothing() {
        let store = mixed().await;
        let before = store.snapshot().keys;
        let summary = run(&reseal(store.clone(), true)).await;
        let expected: BTreeMap<Source, u64> = [(Source::Clear, 2), (Source::Key("k1".into()), 2)].into();
        assert_eq!(summary.rewritten, expected);
        assert_eq!(summary.already_active, 1);
        assert_eq!(store.snapshot().keys, before);
    }

    #[tokio::test]
    async fn deleting_records_are_left_to_their_unbind() {
        let store = mixed().await;
        let key = format!("{RECORD}b1");
        let found = store.get(&key).await.unwrap().unwrap();
        let mut record: BindingRecord = decode(&key, &found.value).unwrap();
        record.state = RecordState::Deleting;
        store.commit(&[], &[Write::Put(key.clone(), encode(&record))]).await.unwrap();
        let before = store.get(&key).await.unwrap();
        let summary = run(&reseal(store.clone(), false)).await;
        assert_eq!(summary.deleting, 1);
        assert_eq!(store.get(&key).await.unwrap(), before);
        assert_all_k2(&store.snapshot());
    }

    #[tokio::test]
    async fn a_change_between_read_and_write_is_kept_and_the_record_retried() {
        let store = mixed().await;
        // Before reseal's first commit, a broker changes the record that commit guards.
        let commits = AtomicUsize::new(0);
        let racing = Arc::new(HookedStore {
            inner: store.clone(),
            after_ensure_user: Box::new(Vec::new),
            before_commit: Box::new(move |state, guards| {
                if commits.fetch_add(1, Ordering::SeqCst) > 0 {
                    return Vec::new();
                }
                let Guard::Revision(key, _) = &guards[0] else { panic!("reseal guards on revisions") };
                let mut record: BindingRecord = decode(key, &state.keys[key].value).unwrap();
                record.app_guid = Some("changed meanwhile".into());
                vec![Write::Put(key.clone(), encode(&record))]
            }),
        });
        let summary = run(&reseal(racing, false)).await;
        assert_eq!(summary.raced, 1);
        assert_eq!(summary.rewritten.values().sum::<u64>(), 4);
        let record = &records(&store.snapshot())[&format!("{RECORD}b1")];
        assert_eq!(record.app_guid.as_deref(), Some("changed meanwhile"), "the concurrent change was lost");
        assert_all_k2(&store.snapshot());
    }

    #[tokio::test]
    async fn a_run_stopped_at_any_store_call_is_finished_by_the_next() {
        for mode in [FailMode::Before, FailMode::After] {
            for n in 0.. {
                let store = mixed().await;
                let before = passwords(&store).await;
                let faulty = Arc::new(FaultyStore::new(store.clone(), Some(n), mode));
                let crashed = run(&reseal(faulty.clone(), false)).await;
                let reached = faulty.calls() > n;
                assert_eq!(
                    matches!(crashed.stopped, Some(Stopped::Store(_))),
                    reached,
                    "call {n} ({mode:?}): {crashed:?}"
                );
                assert_indexes_match_records(&store.snapshot());
                let finished = run(&reseal(store.clone(), false)).await;
                assert_eq!(finished.stopped, None);
                assert!(finished.failed.is_empty(), "{finished:?}");
                assert_all_k2(&store.snapshot());
                assert_eq!(passwords(&store).await, before, "call {n} ({mode:?})");
                if !reached {
                    break;
                }
            }
        }
    }

    #[tokio::test]
    async fn records_over_several_pages_are_all_rewritten() {
        let store = mixed().await;
        let sealed = sealed_broker_on(store.clone());
        let more = 2 * super::PAGE + 7;
        for b in 0..more {
            sealed.bind(bind_req("i1", &format!("p{b}"))).await.unwrap();
        }
        let before = passwords(&store).await;
        let summary =
            run(&Reseal { pace: Pace { parallel: 8, max_rate: None }, ..reseal(store.clone(), false) }).await;
        assert_eq!(summary.rewritten.values().sum::<u64>(), 4 + more as u64, "{summary:?}");
        assert_eq!((summary.already_active, summary.stopped), (1, None));
        assert_all_k2(&store.snapshot());
        assert_eq!(passwords(&store).await, before);
    }

    #[tokio::test(start_paused = true)]
    async fn a_max_rate_spaces_the_rewrites_evenly() {
        let store = mixed().await;
        let paced = Reseal {
            pace: Pace { parallel: 3, max_rate: NonZeroU32::new(10) },
            ..reseal(store.clone(), false)
        };
        let started = Instant::now();
        let summary = run(&paced).await;
        // Four rewrites at 10 a second start at 0, 0.1, 0.2 and 0.3 s; the skipped record waits
        // for no slot.
        assert_eq!(summary.rewritten.values().sum::<u64>(), 4, "{summary:?}");
        let elapsed = started.elapsed();
        assert!(elapsed >= Duration::from_millis(300) && elapsed < Duration::from_millis(400), "{elapsed:?}");
        assert_all_k2(&store.snapshot());
    }

    #[tokio::test]
    async fn ctrl_c_stops_after_the_current_record() {
        let store = mixed().await;
        let stop = AtomicBool::new(false);
        let mut seen = 0;
        let summary = reseal(store.clone(), false)
            .run(&stop, &mut |p| {
                seen = p.done;
                assert_eq!(p.total, 5);
                stop.store(true, Ordering::SeqCst);
            })
            .await;
        assert_eq!((seen, summary.done()), (1, 1));
        assert_eq!(summary.stopped, Some(Stopped::Interrupted));
        assert_eq!(run(&reseal(store.clone(), false)).await.rewritten.values().sum::<u64>(), 3);
        assert_all_k2(&store.snapshot());
    }
}

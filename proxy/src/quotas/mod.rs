//! Per-instance quotas (plan options `quota_bytes`, `quota_keys`, `quota_requests_per_second`;
//! docs/proxy.md#quotas): a tenant's write that would take its instance beyond its keys or
//! bytes, or a request beyond its rate, is refused with RESOURCE_EXHAUSTED, naming the quota
//! and its limit.
//!
//! - Which quotas: the instance record's `quotas` (`<broker state prefix>instances/<id>`),
//!   which the broker copies from the plan's options at provision and plan change; read once
//!   per instance and again when the record changes (a plan change, a deprovision):
//!   [`Quotas::follow`].
//! - How much is used: counted once, when a request first touches the instance, by a paged
//!   range of its prefix at one revision (the proxy's own user), then kept current by a watch
//!   of the prefix from the next revision with previous values ([`usage`] does the arithmetic).
//!   No request scans; writes made directly on etcd, or through other proxies, are counted too.
//! - Writes admitted but not yet seen by the watch are reserved ([`usage::InstanceUsage`]), so
//!   this proxy's concurrent writes cannot share the same free space. A put is first checked as
//!   if its key were new; only when that does not fit is the key's current size read, so that
//!   replacing a key counts the difference.
//! - The rate: a token bucket per instance in this proxy ([`rate`]).
//! - [`metrics`]: a Prometheus collector with bounded cardinality (totals, refusals, top N).
//!
//! Operators (`--admin-users`) are not limited. Keys and values are never logged nor put into
//! messages.

pub mod metrics;
pub mod rate;
pub mod usage;

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use etcd_broker::broker::names::Names;
use etcd_broker::osb::plan_options::{stored_bytes, InstanceQuotas};
use etcd_broker::osb::InstanceId;
use etcd_client::{Client, EventType, WatchOptions};
use futures_util::StreamExt;
use serde::Deserialize;
use tonic::Status;

use crate::caller::Caller;
use crate::encryption::instance_of;
use crate::firewall::PREFIX;
use crate::pb::etcdserverpb::{request_op, response_op, PutRequest, TxnRequest, TxnResponse};
use crate::policy;
use rate::RateLimit;
use usage::{Change, Demand, Exceeded, InstanceUsage, QuotaKind, Usage};

/// The proxy's own reads for quotas failed; the request that needed them is refused
/// (UNAVAILABLE), never let through unchecked.
#[derive(Debug, thiserror::Error)]
pub enum QuotaError {
    #[error("{0}")]
    Etcd(#[from] etcd_client::Error),
    #[error("etcd did not answer within {0:?}")]
    Timeout(Duration),
    #[error("the instance's record is unreadable")]
    Unreadable,
    #[error("the instance's usage is not counted yet")]
    NotCounted,
}

impl QuotaError {
    fn status(&self) -> Status {
        Status::unavailable(format!("{PREFIX}: the instance's quota usage is unavailable: {self}"))
    }
}

/// The fields of an instance record the quotas need.
#[derive(Deserialize)]
struct Record {
    #[serde(default)]
    quotas: InstanceQuotas,
}

/// One instance as the quotas see it.
struct Tracker {
    instance: String,
    quotas: InstanceQuotas,
    usage: Arc<Mutex<InstanceUsage>>,
    /// The revision the usage is current at; 0 while not counted (set by the counting task).
    current: tokio::sync::watch::Receiver<i64>,
    /// Asks the counting task's watch for a progress report (its current revision).
    progress: Arc<tokio::sync::Notify>,
    rate: Option<Mutex<RateLimit>>,
    /// The task counting and watching the prefix (instances with a keys or bytes quota).
    task: Option<tokio::task::AbortHandle>,
}

impl Drop for Tracker {
    fn drop(&mut self) {
        if let Some(task) = &self.task {
            task.abort();
        }
    }
}

impl Tracker {
    fn lock(&self) -> std::sync::MutexGuard<'_, InstanceUsage> {
        self.usage.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn counts(&self) -> bool {
        self.quotas.keys.is_some() || self.quotas.bytes.is_some()
    }

    /// The instance's usage and quotas, once counted.
    fn snapshot(&self) -> Option<(String, InstanceQuotas, Usage)> {
        let usage = self.lock().usage()?;
        Some((self.instance.clone(), self.quotas, usage))
    }

    /// Waits until the usage is counted (at most [`policy::RECORD_TIMEOUT`]).
    async fn counted(&self) -> Result<(), QuotaError> {
        let mut current = self.current.clone();
        let waited = tokio::time::timeout(policy::RECORD_TIMEOUT, current.wait_for(|r| *r > 0)).await;
        match waited {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(_)) => Err(QuotaError::NotCounted),
            Err(_) => Err(QuotaError::Timeout(policy::RECORD_TIMEOUT)),
        }
    }

    /// Waits until the usage is current at `revision` (the watch has delivered every change up
    /// to it), at most [`policy::QUOTA_CATCH_UP`]; after that the usage known is used as it is.
    async fn caught_up(&self, revision: i64) {
        let mut current = self.current.clone();
        if *current.borrow() >= revision {
            return;
        }
        self.progress.notify_one();
        let _ = tokio::time::timeout(policy::QUOTA_CATCH_UP, current.wait_for(|r| *r >= revision)).await;
    }
}

/// Writes admitted under quotas; their reservations are released when dropped unless
/// [`Admitted::answered`] or [`Admitted::answered_txn`] hands them to the watch. Each with,
/// for a Txn, which of its operations put keys of the reservation's instance.
#[must_use]
#[derive(Default)]
pub struct Admitted(Vec<(Arc<Tracker>, u64, Option<TxnPuts>)>);

impl Admitted {
    /// etcd answered a Put at `revision`: the reservations last until the watch's events
    /// reach it.
    pub fn answered(mut self, revision: i64) {
        let now = Instant::now();
        for (tracker, id, _) in self.0.drain(..) {
            tracker.lock().answered(id, revision, true, now);
        }
    }

    /// etcd answered a Txn: an instance whose keys the branches taken put holds its
    /// reservation until the watch's events reach the answer's revision; the others' are
    /// released (no event will come for them).
    pub fn answered_txn(mut self, answer: &TxnResponse) {
        let revision = answer.header.as_ref().map_or(0, |h| h.revision);
        let now = Instant::now();
        for (tracker, id, puts) in self.0.drain(..) {
            let wrote = puts.map_or(true, |puts| puts.ran(answer));
            tracker.lock().answered(id, revision, wrote, now);
        }
    }
}

impl Drop for Admitted {
    fn drop(&mut self) {
        for (tracker, id, _) in self.0.drain(..) {
            tracker.lock().release(id);
        }
    }
}

/// Which operations of a Txn's branches put keys of one instance (nested Txns included), so
/// that its answer says whether they ran.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TxnPuts {
    success: Vec<OpPuts>,
    failure: Vec<OpPuts>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum OpPuts {
    /// A put of a key of the instance.
    Put,
    Txn(TxnPuts),
    /// Anything else (puts of other instances' keys too).
    Other,
}

impl TxnPuts {
    fn of(txn: &TxnRequest, mine: &dyn Fn(&[u8]) -> bool) -> TxnPuts {
        let ops = |ops: &[crate::pb::etcdserverpb::RequestOp]| {
            ops.iter()
                .map(|op| match &op.request {
                    Some(request_op::Request::RequestPut(put)) if mine(&put.key) => OpPuts::Put,
                    Some(request_op::Request::RequestTxn(nested)) => OpPuts::Txn(TxnPuts::of(nested, mine)),
                    _ => OpPuts::Other,
                })
                .collect()
        };
        TxnPuts { success: ops(&txn.success), failure: ops(&txn.failure) }
    }

    /// Whether a put of the instance ran, as `answer` (to this Txn) says.
    fn ran(&self, answer: &TxnResponse) -> bool {
        let taken = if answer.succeeded { &self.success } else { &self.failure };
        taken.iter().zip(answer.responses.iter().map(|r| &r.response).chain(std::iter::repeat(&None))).any(
            |(op, response)| match (op, response) {
                (OpPuts::Put, _) => true,
                (OpPuts::Txn(nested), Some(response_op::Response::ResponseTxn(nested_answer))) => {
                    nested.ran(nested_answer)
                }
                // Not answered as expected: assume it ran (held until the events or the hold).
                (OpPuts::Txn(_), _) => true,
                (OpPuts::Other, _) => false,
            },
        )
    }
}

/// Every instance's quotas and usage, as far as requests touched them; cheap to clone.
#[derive(Clone)]
pub struct Quotas(Arc<Shared>);

struct Shared {
    client: Client,
    names: Names,
    instances: Mutex<HashMap<String, Arc<Tracker>>>,
    /// Record changes seen by [`Quotas::follow`]: a record read before a change is not kept.
    changes: AtomicU64,
    /// Refusals by [`QuotaKind`] (in [`QuotaKind::ALL`]'s order), for the metrics.
    refusals: [AtomicU64; 3],
}

impl Quotas {
    /// Quotas of the instances whose records `names` locate, counted and read by `client`
    /// (the proxy's own user).
    pub fn new(client: Client, names: Names) -> Self {
        Quotas(Arc::new(Shared {
            client,
            names,
            instances: Mutex::default(),
            changes: AtomicU64::default(),
            refusals: Default::default(),
        }))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Arc<Tracker>>> {
        self.0.instances.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn refused(&self, instance: &str, exceeded: Exceeded) -> Status {
        self.0.refusals[QuotaKind::ALL.iter().position(|k| *k == exceeded.quota).unwrap_or(0)]
            .fetch_add(1, Ordering::Relaxed);
        // The limit only, not the usage: the check runs before etcd's RBAC, so a tenant
        // writing under another instance's prefix learns no more than that it is full.
        let what = match exceeded.quota {
            QuotaKind::Keys => format!("at most {} keys", exceeded.limit),
            QuotaKind::Bytes => format!("at most {} bytes of keys and values", exceeded.limit),
            QuotaKind::RequestsPerSecond => format!("at most {} requests per second", exceeded.limit),
        };
        let then = match exceeded.quota {
            QuotaKind::RequestsPerSecond => "slow down and retry",
            _ => "delete keys to free space",
        };
        Status::resource_exhausted(format!(
            "{PREFIX}: instance {instance} is over its quota {} ({what}); {then}",
            exceeded.quota.option()
        ))
    }

    /// The instance of `key`'s tracker, if the instance has quotas (the caller is a tenant).
    async fn tracker(&self, caller: &Caller, key: &[u8]) -> Result<Option<Arc<Tracker>>, Status> {
        if matches!(caller, Caller::Admin(_)) {
            return Ok(None);
        }
        let Some(instance) = instance_of(&self.0.names, key) else { return Ok(None) };
        if let Some(tracker) = self.lock().get(instance) {
            return Ok(Some(tracker.clone()).filter(|t| t.quotas.any()));
        }
        let Ok(id) = InstanceId::parse(instance) else { return Ok(None) };
        let before = self.0.changes.load(Ordering::SeqCst);
        let record_key = self.0.names.instance_key(&id);
        let found = policy::own_request(
            &self.0.client,
            |mut client| {
                let key = record_key.clone();
                async move { client.get(key, None).await }
            },
            QuotaError::Timeout,
        )
        .await
        .map_err(|e| e.status())?;
        let quotas = match found.kvs().first() {
            None => InstanceQuotas::default(),
            Some(kv) => {
                let record: Record =
                    serde_json::from_slice(kv.value()).map_err(|_| QuotaError::Unreadable.status())?;
                record.quotas
            }
        };
        let tracker = Arc::new(self.start(instance, quotas));
        if self.0.changes.load(Ordering::SeqCst) == before {
            let mut instances = self.lock();
            if instances.len() >= policy::MAX_QUOTA_INSTANCES {
                // Instances without quotas are the cheap ones to read again.
                instances.retain(|_, t| t.quotas.any());
            }
            let tracker = instances.entry(instance.to_owned()).or_insert(tracker);
            return Ok(Some(tracker.clone()).filter(|t| t.quotas.any()));
        }
        Ok(Some(tracker).filter(|t| t.quotas.any()))
    }

    /// A tracker for `instance`, counting and watching its prefix if it has a keys or bytes
    /// quota.
    fn start(&self, instance: &str, quotas: InstanceQuotas) -> Tracker {
        let usage = Arc::new(Mutex::new(InstanceUsage::new(quotas)));
        let (current_tx, current) = tokio::sync::watch::channel(0);
        let progress = Arc::new(tokio::sync::Notify::new());
        let mut tracker = Tracker {
            instance: instance.to_owned(),
            quotas,
            usage: usage.clone(),
            current,
            progress: progress.clone(),
            rate: quotas.requests_per_second.map(|r| Mutex::new(RateLimit::new(r, Instant::now()))),
            task: None,
        };
        if tracker.counts() {
            let prefix = format!("{}{instance}/", self.0.names.data_prefix());
            let task = tokio::spawn(track(self.0.client.clone(), prefix, usage, current_tx, progress));
            tracker.task = Some(task.abort_handle());
        }
        tracker
    }

    /// A KV request of a tenant touching `keys`: refused when one of their instances is over
    /// its request rate.
    pub async fn request(&self, caller: &Caller, keys: Vec<Vec<u8>>) -> Result<(), Status> {
        let mut seen = Vec::new();
        for key in &keys {
            let Some(tracker) = self.tracker(caller, key).await? else { continue };
            if seen.contains(&tracker.instance) {
                continue;
            }
            seen.push(tracker.instance.clone());
            let Some(rate) = &tracker.rate else { continue };
            let taken = rate.lock().unwrap_or_else(|p| p.into_inner()).take(Instant::now());
            if !taken {
                let limit = u64::from(tracker.quotas.requests_per_second.unwrap_or(0));
                let exceeded = Exceeded { quota: QuotaKind::RequestsPerSecond, limit, used: 0 };
                return Err(self.refused(&tracker.instance, exceeded));
            }
        }
        Ok(())
    }

    /// A tenant's Put (its value as etcd will store it), admitted or refused.
    pub async fn admit_put(&self, caller: &Caller, put: &PutRequest) -> Result<Admitted, Status> {
        let Some(tracker) = self.tracker(caller, &put.key).await? else { return Ok(Admitted::default()) };
        if !tracker.counts() {
            return Ok(Admitted::default());
        }
        let demand = |known: &Known| put_demand(put, known);
        let mut admitted = Admitted::default();
        self.admit(&tracker, demand, vec![put.key.clone()], None, &mut admitted).await?;
        Ok(admitted)
    }

    /// A tenant's Txn (its values as etcd will store them): each instance it writes to must
    /// have room for the larger of its branches' puts (deletes are not credited).
    pub async fn admit_txn(&self, caller: &Caller, txn: &TxnRequest) -> Result<Admitted, Status> {
        let mut puts = Vec::new();
        txn_puts(txn, &mut puts);
        let mut admitted = Admitted::default();
        let mut done: Vec<String> = Vec::new();
        for key in &puts {
            let Some(tracker) = self.tracker(caller, key).await? else { continue };
            if !tracker.counts() || done.contains(&tracker.instance) {
                continue;
            }
            done.push(tracker.instance.clone());
            let names = &self.0.names;
            let instance = tracker.instance.clone();
            let demand = |known: &Known| {
                txn_demand(txn, &|key: &[u8]| instance_of(names, key) == Some(instance.as_str()), known)
            };
            let mine = |key: &[u8]| instance_of(names, key) == Some(instance.as_str());
            let keys: Vec<Vec<u8>> = puts.iter().filter(|k| mine(k)).cloned().collect();
            let shape = TxnPuts::of(txn, &mine);
            self.admit(&tracker, demand, keys, Some(shape), &mut admitted).await?;
        }
        Ok(admitted)
    }

    /// Admits `demand` on `tracker`: first as if every key were new, then, if that does not
    /// fit, with the current sizes of `keys` read from etcd.
    async fn admit(
        &self,
        tracker: &Arc<Tracker>,
        demand: impl Fn(&Known) -> Demand,
        keys: Vec<Vec<u8>>,
        puts: Option<TxnPuts>,
        admitted: &mut Admitted,
    ) -> Result<(), Status> {
        tracker.counted().await.map_err(|e| e.status())?;
        let first = tracker.lock().admit(demand(&Known::default()), Instant::now());
        let id = match first {
            Ok(id) => id,
            Err(_) => {
                // Exact now: the keys' sizes, and every change up to the same revision
                // (a delete just answered, not yet seen by the watch, frees its space).
                let (known, revision) = self.sizes(keys).await.map_err(|e| e.status())?;
                tracker.caught_up(revision).await;
                let second = tracker.lock().admit(demand(&known), Instant::now());
                second.map_err(|exceeded| self.refused(&tracker.instance, exceeded))?
            }
        };
        admitted.0.push((tracker.clone(), id, puts));
        Ok(())
    }

    /// The stored sizes of `keys` now (absent: no such key), and the revision read at.
    async fn sizes(&self, keys: Vec<Vec<u8>>) -> Result<(Known, i64), QuotaError> {
        let mut known = Known::default();
        let mut revision = 0;
        for key in keys {
            let found = policy::own_request(
                &self.0.client,
                |mut client| {
                    let key = key.clone();
                    async move { client.get(key, None).await }
                },
                QuotaError::Timeout,
            )
            .await?;
            let size = found.kvs().first().map(|kv| stored_bytes(kv.key(), kv.value()));
            revision = revision.max(found.header().map_or(0, |h| h.revision()));
            known.0.insert(key, size);
        }
        Ok((known, revision))
    }

    /// Checks that the proxy's user may read the data prefix (to count usage): a proxy that
    /// cannot count refuses the writes of instances with quotas (UNAVAILABLE).
    pub async fn probe(&self) -> Result<(), QuotaError> {
        let prefix = self.0.names.data_prefix().to_owned();
        policy::own_request(
            &self.0.client,
            |mut client| {
                let options = etcd_client::GetOptions::new().with_prefix().with_count_only();
                let prefix = prefix.clone();
                async move { client.get(prefix, Some(options)).await }
            },
            QuotaError::Timeout,
        )
        .await
        .map(|_| ())
    }

    /// The prefix under which instances' usage is counted.
    pub fn data_prefix(&self) -> &str {
        self.0.names.data_prefix()
    }

    /// Forgets an instance's quotas and usage when its record changes (a plan change, a
    /// deprovision), for as long as the process runs; everything is forgotten while it cannot
    /// watch (then read and counted again).
    pub async fn follow(self) {
        let prefix = self.0.names.instances_prefix();
        loop {
            let mut client = self.0.client.clone();
            match client.watch(prefix.as_str(), Some(WatchOptions::new().with_prefix())).await {
                Ok(mut watch) => {
                    self.0.changes.fetch_add(1, Ordering::SeqCst);
                    self.lock().clear();
                    while let Some(Ok(answer)) = watch.next().await {
                        if answer.canceled() {
                            break;
                        }
                        for event in answer.events() {
                            let Some(kv) = event.kv() else { continue };
                            self.0.changes.fetch_add(1, Ordering::SeqCst);
                            if let Some(instance) = kv.key().strip_prefix(prefix.as_bytes()) {
                                self.lock().remove(String::from_utf8_lossy(instance).as_ref());
                            }
                        }
                    }
                }
                Err(e) => {
                    tracing::warn!(error = %e, "quotas: cannot watch the broker's instance records; trying again")
                }
            }
            self.0.changes.fetch_add(1, Ordering::SeqCst);
            self.lock().clear();
            tokio::time::sleep(policy::QUOTA_RETRY).await;
        }
    }
}

impl metrics::QuotaSource for Quotas {
    fn snapshots(&self) -> Vec<(String, InstanceQuotas, Usage)> {
        self.lock().values().filter(|t| t.counts()).filter_map(|t| t.snapshot()).collect()
    }

    fn refusals(&self) -> [u64; 3] {
        self.0.refusals.each_ref().map(|r| r.load(Ordering::Relaxed))
    }
}

/// Stored sizes of keys read from etcd: `Some(size)` an existing key, `None` no such key;
/// a key not in it may be new (counted as new).
#[derive(Debug, Default)]
pub struct Known(HashMap<Vec<u8>, Option<u64>>);

/// What a put may add, given what is known of its key.
fn put_demand(put: &PutRequest, known: &Known) -> Demand {
    if put.ignore_value {
        // The value stays as it is; etcd refuses it for a key that does not exist.
        return Demand::default();
    }
    let bytes = stored_bytes(&put.key, &put.value);
    match known.0.get(&put.key) {
        Some(Some(before)) => Demand { keys: 0, bytes: bytes.saturating_sub(*before) },
        _ => Demand { keys: 1, bytes },
    }
}

/// What a Txn may add to the keys `mine` selects: the larger of its branches, each the sum of
/// its puts and nested Txns.
fn txn_demand(txn: &TxnRequest, mine: &dyn Fn(&[u8]) -> bool, known: &Known) -> Demand {
    let branch = |ops: &[crate::pb::etcdserverpb::RequestOp]| {
        ops.iter().fold(Demand::default(), |sum, op| match &op.request {
            Some(request_op::Request::RequestPut(put)) if mine(&put.key) => sum.plus(put_demand(put, known)),
            Some(request_op::Request::RequestTxn(nested)) => sum.plus(txn_demand(nested, mine, known)),
            _ => sum,
        })
    };
    branch(&txn.success).max(branch(&txn.failure))
}

/// The first key of each of a Txn's compares and operations, nested Txns included: the
/// instances whose request rate it counts against.
pub fn txn_keys(txn: &TxnRequest) -> Vec<Vec<u8>> {
    let mut keys: Vec<Vec<u8>> = txn.compare.iter().map(|c| c.key.clone()).collect();
    for op in txn.success.iter().chain(&txn.failure) {
        match &op.request {
            Some(request_op::Request::RequestPut(put)) => keys.push(put.key.clone()),
            Some(request_op::Request::RequestRange(range)) => keys.push(range.key.clone()),
            Some(request_op::Request::RequestDeleteRange(delete)) => keys.push(delete.key.clone()),
            Some(request_op::Request::RequestTxn(nested)) => keys.extend(txn_keys(nested)),
            None => {}
        }
    }
    keys
}

/// The keys of a Txn's puts, nested Txns included.
fn txn_puts(txn: &TxnRequest, keys: &mut Vec<Vec<u8>>) {
    for op in txn.success.iter().chain(&txn.failure) {
        match &op.request {
            Some(request_op::Request::RequestPut(put)) => keys.push(put.key.clone()),
            Some(request_op::Request::RequestTxn(nested)) => txn_puts(nested, keys),
            _ => {}
        }
    }
}

/// Counts `prefix`, then follows it, counting again whenever the watch breaks (compaction,
/// etcd unreachable), for as long as the instance is tracked (the task is aborted then).
async fn track(
    client: Client,
    prefix: String,
    usage: Arc<Mutex<InstanceUsage>>,
    current: tokio::sync::watch::Sender<i64>,
    progress: Arc<tokio::sync::Notify>,
) {
    let lock = || usage.lock().unwrap_or_else(|p| p.into_inner());
    loop {
        match count(&client, &prefix).await {
            Ok((counted, revision)) => {
                lock().counted(counted, revision);
                current.send_replace(revision.max(1));
                if let Err(why) = follow(&client, &prefix, revision, &usage, &current, &progress).await {
                    tracing::info!(%why, "quotas: an instance's watch ended; counting it again");
                }
            }
            Err(e) => tracing::warn!(error = %e, "quotas: cannot count an instance's usage; trying again"),
        }
        lock().forget();
        current.send_replace(0);
        tokio::time::sleep(policy::QUOTA_RETRY).await;
    }
}

/// The keys and bytes under `prefix`, read in pages at one revision; that revision.
async fn count(client: &Client, prefix: &str) -> Result<(Usage, i64), etcd_client::Error> {
    let counted = etcd_broker::etcd::prefix_usage(client, prefix, stored_bytes).await?;
    Ok((Usage { keys: counted.keys, bytes: counted.bytes }, counted.revision))
}

/// Applies the watch's events on `prefix` after `revision` until it breaks; why it did.
async fn follow(
    client: &Client,
    prefix: &str,
    revision: i64,
    usage: &Mutex<InstanceUsage>,
    current: &tokio::sync::watch::Sender<i64>,
    progress: &tokio::sync::Notify,
) -> Result<(), String> {
    let options = WatchOptions::new().with_prefix().with_prev_key().with_start_revision(revision + 1);
    let mut watch = client.clone().watch(prefix, Some(options)).await.map_err(|e| e.to_string())?;
    let lock = || usage.lock().unwrap_or_else(|p| p.into_inner());
    loop {
        let answer = tokio::select! {
            answer = watch.next() => answer,
            () = progress.notified() => {
                watch.request_progress().await.map_err(|e| e.to_string())?;
                continue;
            }
        };
        let Some(answer) = answer else { break };
        let answer = answer.map_err(|e| e.to_string())?;
        if answer.canceled() {
            return Err(format!("canceled (compacted at revision {})", answer.compact_revision()));
        }
        // A Txn's events share a revision: applied together.
        let mut group: Vec<Change> = Vec::new();
        let mut at = 0;
        for event in answer.events() {
            let Some(kv) = event.kv() else { continue };
            if kv.mod_revision() != at && !group.is_empty() {
                lock().apply(at, group.drain(..));
            }
            at = kv.mod_revision();
            let before = event.prev_kv().map(|p| stored_bytes(p.key(), p.value()));
            let change = match (event.event_type(), before) {
                (EventType::Put, _) if kv.version() == 1 => {
                    Change::Put { bytes: stored_bytes(kv.key(), kv.value()), before: None }
                }
                (EventType::Put, Some(before)) => {
                    Change::Put { bytes: stored_bytes(kv.key(), kv.value()), before: Some(before) }
                }
                (EventType::Delete, Some(before)) => Change::Delete { before },
                // Without the previous value the change cannot be counted: count again.
                _ => return Err("an event came without its previous value".into()),
            };
            group.push(change);
        }
        if !group.is_empty() {
            lock().apply(at, group.drain(..));
        }
        if answer.events().is_empty() && !answer.created() {
            // A progress report: every change up to its revision has been delivered. (The
            // header of a response with events may be ahead of events still to come while
            // the watch catches up, so only events count there. Nor does the creation's
            // answer: its header is etcd's revision when the watch was made, and the events
            // from the start revision up to it are still to come. Taking it for progress lost
            // the writes between the count and the watch, so one proxy admitted a key beyond
            // quota_keys.)
            if let Some(header) = answer.header() {
                lock().seen(header.revision());
            }
        }
        current.send_replace(lock().reported().max(1));
    }
    Err("the watch stream ended".into())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pb::etcdserverpb::RequestOp;

    fn put(key: &str, value: &str) -> RequestOp {
        let put = PutRequest { key: key.into(), value: value.into(), ..Default::default() };
        RequestOp { request: Some(request_op::Request::RequestPut(put)) }
    }

    #[test]
    fn a_put_replacing_a_known_key_demands_its_growth_only() {
        let request = PutRequest { key: b"/i/a/k".to_vec(), value: vec![0; 10], ..Default::default() };
        assert_eq!(put_demand(&request, &Known::default()), Demand { keys: 1, bytes: 16 });
        let known = Known([(b"/i/a/k".to_vec(), Some(12))].into());
        assert_eq!(put_demand(&request, &known), Demand { keys: 0, bytes: 4 });
        let known = Known([(b"/i/a/k".to_vec(), Some(40))].into());
        assert_eq!(put_demand(&request, &known), Demand::default());
        let known = Known([(b"/i/a/k".to_vec(), None)].into());
        assert_eq!(put_demand(&request, &known), Demand { keys: 1, bytes: 16 });
        let ignore = PutRequest { ignore_value: true, ..request };
        assert_eq!(put_demand(&ignore, &Known::default()), Demand::default());
    }

    #[test]
    fn a_txn_demands_its_larger_branch_nested_txns_included_for_its_own_keys_only() {
        let nested = TxnRequest { success: vec![put("/a/n", "1234")], failure: vec![], ..Default::default() };
        let txn = TxnRequest {
            success: vec![put("/a/x", "12"), put("/b/y", "123456789")],
            failure: vec![
                put("/a/z", "1"),
                RequestOp { request: Some(request_op::Request::RequestTxn(nested)) },
            ],
            ..Default::default()
        };
        let mine = |key: &[u8]| key.starts_with(b"/a/");
        // success: 1 key, 6 bytes; failure: 2 keys, 5 + 8 bytes.
        assert_eq!(txn_demand(&txn, &mine, &Known::default()), Demand { keys: 2, bytes: 13 });
        let mut keys = Vec::new();
        txn_puts(&txn, &mut keys);
        assert_eq!(keys.len(), 4);
    }
}

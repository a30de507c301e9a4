//! The etcd side of group commit: a batch of gets is one read-only Txn of Ranges, a batch of
//! commits one Txn of nested Txns; [`super::coalesce`] decides what goes into a batch.

use std::sync::Arc;

use etcd_client::{Compare, GetResponse, Txn, TxnOp, TxnOpResponse};

use super::call::Call;
use super::coalesce::{Batching, Coalescer, SendBatch};
use super::connection::Connection;
use super::errors::{classify, no_answer_within, refused_before_applying};
use super::policy::{BATCHED_TIMEOUT, MAX_BATCHES_IN_FLIGHT, MAX_COMMIT_BATCH, MAX_READ_BATCH};
use super::EtcdStore;
use crate::store::{StoreError, Versioned};

/// Requests of one kind waiting for a connection's next batch, each answered with a `T`.
pub(super) type Queue<R, T> = Arc<Coalescer<R, Result<T, StoreError>>>;

/// What one key read answers.
type ReadResult = Result<Option<Versioned>, StoreError>;
/// What one [`crate::store::Store::commit`] answers.
type CommitResult = Result<Option<i64>, StoreError>;

/// A [`crate::store::Store::commit`] waiting for its batch: its transaction, the keys it compares and the
/// keys it writes.
pub(super) struct PendingCommit {
    /// Its guards as etcd compares, and its writes.
    pub(super) compares: Vec<Compare>,
    pub(super) ops: Vec<TxnOp>,
    pub(super) guarded: Vec<String>,
    pub(super) written: Vec<String>,
}

impl PendingCommit {
    /// Whether `self` may be a nested Txn beside each of `batch`. etcd evaluates every nested
    /// Txn's compares before applying any, and refuses a Txn that writes a key twice, so a
    /// commit must not write a key another one compares or writes. Comparing the same key is
    /// fine (concurrent binds of one instance all compare the instance record).
    fn fits(batch: &[PendingCommit], commit: &PendingCommit) -> bool {
        let touches = |a: &PendingCommit, b: &PendingCommit| {
            a.written.iter().any(|k| b.written.contains(k) || b.guarded.contains(k))
        };
        batch.iter().all(|other| !touches(commit, other) && !touches(other, commit))
    }
}

impl EtcdStore {
    /// Sends `request` in the next batch of one of this thread's queues ([`Connection::reads`],
    /// [`Connection::commits`]), waiting at most [`BATCHED_TIMEOUT`].
    pub(super) async fn batched<R, T>(
        &self,
        queue: fn(&Connection) -> &Queue<R, T>,
        request: R,
    ) -> Result<T, StoreError>
    where
        R: Send + 'static,
        T: Send + 'static,
    {
        let connection = self.connection().await.map_err(classify)?;
        match tokio::time::timeout(BATCHED_TIMEOUT, queue(&connection).call(request)).await {
            Ok(Some(answer)) => answer,
            Ok(None) => Err(StoreError::Failed("a batched etcd request was dropped unanswered".into())),
            Err(_) => Err(StoreError::Unavailable(no_answer_within(BATCHED_TIMEOUT))),
        }
    }

    /// A new connection's queues. Not built inside [`Self::connection`]: whether the batch
    /// functions' futures are `Send` depends on that function's own future.
    pub(super) fn queues(&self) -> (Queue<String, Option<Versioned>>, Queue<PendingCommit, Option<i64>>) {
        let reads = Coalescer::new(Batching {
            max_batch: MAX_READ_BATCH,
            max_in_flight: MAX_BATCHES_IN_FLIGHT,
            fits: |_, _| true,
            send: self.sender(EtcdStore::read_batch),
        });
        let commits = Coalescer::new(Batching {
            max_batch: MAX_COMMIT_BATCH,
            max_in_flight: MAX_BATCHES_IN_FLIGHT,
            fits: PendingCommit::fits,
            send: self.sender(EtcdStore::commit_batch),
        });
        (reads, commits)
    }

    /// A queue's batch function: `send` on this store, which the queue's sender tasks cannot
    /// borrow (they outlive the call that started them).
    fn sender<R, T, Fut>(
        &self,
        send: fn(Arc<EtcdStore>, Vec<R>) -> Fut,
    ) -> SendBatch<R, Result<T, StoreError>>
    where
        R: Send + 'static,
        T: Send + 'static,
        Fut: std::future::Future<Output = Vec<Result<T, StoreError>>> + Send + 'static,
    {
        let me = self.me.clone();
        Box::new(move |batch| match me.upgrade() {
            Some(store) => Box::pin(send(store, batch)),
            None => {
                let stopping =
                    batch.iter().map(|_| Err(StoreError::Unavailable("the broker is stopping".into())));
                let answers: Vec<_> = stopping.collect();
                Box::pin(async move { answers })
            }
        })
    }

    /// Sends `commits` for [`Connection::commits`] (which batches only commits that fit
    /// together, see [`PendingCommit::fits`]) behind the fence (`fence.rs`), answering them in
    /// order: one as a Txn of its own, several as nested Txns of one.
    async fn commit_batch(self: Arc<Self>, commits: Vec<PendingCommit>) -> Vec<CommitResult> {
        (self.observer.batch)("txn", commits.len());
        if let [commit] = commits.as_slice() {
            return vec![self.commit_one(commit).await];
        }
        let txns: Vec<Txn> =
            commits.iter().map(|c| Txn::new().when(c.compares.clone()).and_then(c.ops.clone())).collect();
        match self.send_fenced(&txns).await {
            Ok(response) => commit_answers(&response, commits.len()),
            // Above etcd's --max-txn-ops or --max-request-bytes: refused before anything was
            // applied, so each commit can go on its own.
            Err(e) if refused_before_applying(&e) => {
                futures_util::future::join_all(commits.iter().map(|c| self.commit_one(c))).await
            }
            // Anything else may have been applied: answering each commit with the error keeps
            // its outcome open, as for a commit of its own.
            Err(e) => vec![Err(classify(e)); commits.len()],
        }
    }

    /// One commit as one flat Txn behind the fence ([`EtcdStore::send_fenced_one`]).
    async fn commit_one(&self, commit: &PendingCommit) -> CommitResult {
        self.send_fenced_one(&commit.compares, &commit.ops).await.map_err(classify)
    }

    /// Reads `keys` for [`Connection::reads`], answering them in order: one key as a Range,
    /// several as one read-only Txn of Ranges.
    async fn read_batch(self: Arc<Self>, keys: Vec<String>) -> Vec<ReadResult> {
        (self.observer.batch)("get", keys.len());
        if let [key] = keys.as_slice() {
            return vec![self.read_one(key).await];
        }
        match self.read_txn(&keys).await.map_err(classify) {
            Ok(response) => each_answer(&response, keys.len(), |answer| match answer {
                TxnOpResponse::Get(range) => Some(first_value(range)),
                _ => None,
            }),
            // etcd's --max-txn-ops is below the batch, or the answer is above gRPC's message
            // limit: each key on its own, all at once (reading again changes nothing).
            Err(StoreError::Failed(_)) => {
                futures_util::future::join_all(keys.iter().map(|key| self.read_one(key))).await
            }
            Err(e) => vec![Err(e); keys.len()],
        }
    }

    /// One Txn request that only gets `keys`.
    async fn read_txn(&self, keys: &[String]) -> Result<etcd_client::TxnResponse, etcd_client::Error> {
        self.read_only_txn(keys.iter().map(|key| TxnOp::get(key.as_str(), None)).collect()).await
    }

    /// One Txn request of `ranges` only, so it may go out twice ([`Call::Read`]); etcd answers
    /// all of them at one revision.
    pub(super) async fn read_only_txn(
        &self,
        ranges: Vec<TxnOp>,
    ) -> Result<etcd_client::TxnResponse, etcd_client::Error> {
        let txn = Txn::new().and_then(ranges);
        self.kv(Call::Read, |mut c| {
            let txn = txn.clone();
            async move { c.txn(txn).await }
        })
        .await
    }

    /// One key as one Range.
    async fn read_one(&self, key: &str) -> ReadResult {
        let response =
            self.kv(Call::Read, |mut c| async move { c.get(key, None).await }).await.map_err(classify)?;
        Ok(first_value(&response))
    }
}

/// A batch's answers, one per request in order, from the responses of the Txn that carried
/// it (`answer` reads one, `None` if it is of the wrong kind); a missing or wrong response is
/// that request's error.
pub(super) fn each_answer<T>(
    response: &etcd_client::TxnResponse,
    count: usize,
    answer: impl Fn(&TxnOpResponse) -> Option<T>,
) -> Vec<Result<T, StoreError>> {
    let mut answers: Vec<_> = response
        .op_responses()
        .iter()
        .map(|r| {
            answer(r)
                .ok_or_else(|| StoreError::Failed("etcd answered a batched call with something else".into()))
        })
        .collect();
    answers.resize_with(count, || {
        Err(StoreError::Failed("etcd answered fewer calls than the batch held".into()))
    });
    answers
}

/// Each commit's answer from the fenced write that carried them: the revision of its writes
/// (every write of one Txn is at the header's revision, the store revision after it), or
/// `None` when its own guards failed.
fn commit_answers(response: &etcd_client::TxnResponse, count: usize) -> Vec<CommitResult> {
    let revision = response.header().map_or(0, |h| h.revision());
    each_answer(response, count, |nested| match nested {
        TxnOpResponse::Txn(txn) => Some(txn.succeeded().then_some(revision)),
        _ => None,
    })
}

/// The value of a single-key Range, if the key exists.
pub(super) fn first_value(response: &GetResponse) -> Option<Versioned> {
    response.kvs().first().map(super::versioned)
}

//! The real [`Store`]: one etcd v3 cluster through etcd-client.
//!
//! The only module that imports etcd-client. It connects lazily (the broker starts, and answers
//! 503, while a cluster is down), authenticates as the configured root-role user, refreshes
//! expired auth tokens, fails over between the configured endpoints, and sends the gets and
//! commits that arrive together as one request ([`crate::coalesce`]).

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::thread::ThreadId;
use std::time::Duration;

use async_trait::async_trait;
use etcd_client::{
    AuthClient, Client, Compare, CompareOp, ConnectOptions, DeleteOptions, GetOptions, GetResponse, KvClient,
    Permission, Txn, TxnOp, TxnOpResponse,
};
use tokio::sync::OnceCell;

use crate::coalesce::{Batching, Coalescer, SendBatch};
use crate::config::ClusterConfig;
use crate::endpoint_health::{Endpoints, Probe, SLOW_ANSWER};
use crate::store::{Guard, Store, StoreError, Versioned, Write};

/// How long one attempt of an etcd request may take (see [`bounded`]), the copies of a read
/// included ([`hedged`]); a request that times out is not retried, so the broker answers 503.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Pause between failover attempts, so the balancer can mark a dead endpoint.
const FAILOVER_PAUSE: Duration = Duration::from_millis(20);
/// How long a read waits for its answer before it is sent to another endpoint as well: past
/// the moment its endpoint is taken out of use for not answering (endpoint_health.rs; its
/// watch starts when the request leaves the balancer, a little later), so the balancer
/// usually picks one that answers.
const HEDGE_AFTER: Duration = SLOW_ANSWER.saturating_add(Duration::from_millis(500));
/// Most keys read by one batched read (see [`Connection::reads`]): far below etcd's default
/// `--max-txn-ops` (128), and 16 of the largest records (a 64 KB request body stored twice)
/// stay under gRPC's 4 MB answer limit. A batch etcd refuses anyway is read key by key.
const MAX_READ_BATCH: usize = 16;
/// Most commits in one batched write: the broker's largest commits write two records (a
/// 64 KB request body stored twice), and 8 of them stay under etcd's default
/// `--max-request-bytes` (1.5 MiB). A batch etcd refuses anyway is sent commit by commit.
const MAX_COMMIT_BATCH: usize = 8;
/// Most batches of one kind in flight per connection: a second starts only when a full batch
/// waits, so a slow batch does not hold everything else back.
const MAX_BATCHES_IN_FLIGHT: usize = 4;
/// How long a caller waits for its batched request: one [`REQUEST_TIMEOUT`] for the batch in
/// flight when it arrived, one for its own.
const BATCHED_TIMEOUT: Duration = Duration::from_secs(2 * REQUEST_TIMEOUT.as_secs());

/// Requests of one kind waiting for a connection's next batch, each answered with a `T`.
type Queue<R, T> = Arc<Coalescer<R, Result<T, StoreError>>>;

/// What one key read answers.
type ReadResult = Result<Option<Versioned>, StoreError>;
/// What one [`Store::commit`] answers.
type CommitResult = Result<Option<i64>, StoreError>;

/// A [`Store::commit`] waiting for its batch: its transaction, the keys it compares and the
/// keys it writes.
struct PendingCommit {
    txn: Txn,
    guarded: Vec<String>,
    written: Vec<String>,
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

/// A logged-in client, and what its tokens are like.
struct Connection {
    client: Client,
    /// etcd issues JWTs (`--auth-token jwt`): they carry the auth revision they were issued at,
    /// so every user or role change makes them stale and they must be refreshed. etcd's default
    /// simple tokens are checked against the revision current when a request arrives, and a
    /// refresh (a bcrypt check of the password in etcd, which etcd repeats for as long as auth
    /// keeps changing during it) would only slow things down.
    signed_tokens: bool,
    /// How many times this client's token has been refreshed: requests that all saw the same
    /// stale token log in once between them, not once each.
    token_generation: AtomicU64,
    /// Held while refreshing, so a refresh is single-flight.
    refreshing: tokio::sync::Mutex<()>,
    /// Key reads waiting for this connection's next batched read: the gets that arrive while
    /// one is in flight go out together as one read-only Txn, so etcd does one read-index
    /// round and one gRPC exchange for all of them (linearizable like a Range of their own:
    /// a batch is only sent after each of its reads was asked for).
    reads: Queue<String, Option<Versioned>>,
    /// Commits waiting for this connection's next batched write: those that arrive while one
    /// is in flight go out as one Txn with each commit a nested Txn of its own, so etcd
    /// checks and applies them in one request and one raft entry.
    commits: Queue<PendingCommit, Option<i64>>,
}

/// Whether `token` is a JWT (three dot-separated parts) rather than a simple token
/// (random letters, a dot, a counter).
fn is_signed_token(token: &str) -> bool {
    token.split('.').count() == 3
}

/// What [`EtcdStore`] tells the broker's metrics, without this module knowing about them.
#[derive(Clone)]
pub struct Observer {
    /// Each batch of gets or commits it sends: the call kind (`get` or `txn`) and its size.
    pub batch: Arc<dyn Fn(&'static str, usize) + Send + Sync>,
    /// Each copy of a slow read it sends to another endpoint ([`hedged`]): a member that
    /// stopped answering while in use, or a cluster too slow for its reads.
    pub read_copy: Arc<dyn Fn() + Send + Sync>,
}

impl Default for Observer {
    /// Hears nothing.
    fn default() -> Self {
        Self { batch: Arc::new(|_, _| {}), read_copy: Arc::new(|| {}) }
    }
}

/// What an etcd request does: that decides whether it may be sent twice.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Call {
    /// Only reads keys: sent to another endpoint as well when its own is slow to answer
    /// ([`hedged`]), since reading twice changes nothing.
    Read,
    /// Writes keys: sent once, since etcd may still apply it after a slow answer.
    Write,
    /// Changes users or roles: sent once, and held back while a request that auth changes
    /// keep refusing goes through ([`EtcdStore::auth_gate`]).
    AuthChange,
}

/// A lazily connected etcd cluster.
pub struct EtcdStore {
    /// The store itself, for the task that sends batched requests (it outlives the call that
    /// started it).
    me: Weak<EtcdStore>,
    endpoints: Vec<String>,
    /// Connection options without the user: the login happens after connecting, on the same
    /// balanced channel, so a dead endpoint is skipped instead of failing the first request.
    options: ConnectOptions,
    /// TLS material for https endpoints.
    tls: EtcdTls,
    username: String,
    password: crate::config::Secret,
    /// One connection per thread that calls the store. tonic runs a channel's request buffer
    /// and its HTTP/2 connection as tasks on the runtime that dialled it; a connection shared
    /// by an actix worker and the thread that dialled it first (the role reaper's, at start)
    /// sent every etcd request to that other thread and its answer back: two thread wake-ups
    /// per call, and the broker's CPU per GET binding on a par with etcd's. Each thread dials
    /// and logs in once, when it first needs etcd.
    connections: std::sync::Mutex<HashMap<ThreadId, Arc<OnceCell<Arc<Connection>>>>>,
    /// Shared by each user/role change while it is in flight; taken exclusively by a request
    /// that auth changes keep refusing, so it gets through (tokio's lock is fair: once it
    /// waits, new changes queue behind it).
    auth_gate: tokio::sync::RwLock<()>,
    observer: Observer,
}

impl EtcdStore {
    /// Prepares a connection; nothing is dialled until the first call. Fails only if the TLS
    /// material cannot be read. `observer` hears of its batches and read copies.
    pub fn new(config: &ClusterConfig, observer: Observer) -> Result<Arc<Self>, StoreError> {
        let options = ConnectOptions::new()
            .with_auto_token_refresh(true)
            .with_connect_timeout(CONNECT_TIMEOUT)
            .with_keep_alive(Duration::from_secs(30), Duration::from_secs(10));
        let mut tls = EtcdTls::default();
        if let Some(config) = &config.tls {
            let failed = |e: std::io::Error| StoreError::Failed(e.to_string());
            tls.ca = config.ca_pem().map_err(failed)?;
            tls.client = config.client_pems().map_err(failed)?;
        }
        Ok(Arc::new_cyclic(|me| Self {
            me: me.clone(),
            endpoints: config.endpoints.clone(),
            options,
            tls,
            username: config.username.clone(),
            password: config.password.clone(),
            connections: Default::default(),
            auth_gate: tokio::sync::RwLock::new(()),
            observer,
        }))
    }

    /// This thread's connection, dialled and logged in on first use.
    async fn connection(&self) -> Result<Arc<Connection>, etcd_client::Error> {
        let cell = {
            let mut connections = crate::unpoisoned::lock(&self.connections);
            connections.entry(std::thread::current().id()).or_default().clone()
        };
        cell.get_or_try_init(|| async {
            // Connecting dials nothing yet; the logins are the first requests, retried on the
            // same balancer while it learns which endpoints are dead. The client logs in for
            // itself; the second login only shows which kind of token this etcd issues.
            let client = connect(&self.endpoints, self.options.clone(), &self.tls).await?;
            let credentials = (self.username.clone(), self.password.expose().to_owned());
            self.until_reached(|| {
                // Clones share the token and credentials: this logs `client` in.
                let (mut client, credentials) = (client.clone(), credentials.clone());
                async move { bounded(client.update_user(Some(credentials))).await }
            })
            .await?;
            let token = self
                .until_reached(|| {
                    let (mut auth, (user, password)) = (client.auth_client(), credentials.clone());
                    async move { bounded(auth.authenticate(user, password)).await }
                })
                .await?;
            let (reads, commits) = self.queues();
            Ok::<_, etcd_client::Error>(Arc::new(Connection {
                client,
                signed_tokens: is_signed_token(token.token()),
                token_generation: AtomicU64::new(0),
                refreshing: tokio::sync::Mutex::new(()),
                reads,
                commits,
            }))
        })
        .await
        .cloned()
    }

    /// Runs a request, sending it again while it reaches no endpoint (one that just failed
    /// may still be picked until its failure takes it out of use: endpoint_health.rs).
    async fn until_reached<T, F, Fut>(&self, op: F) -> Result<T, etcd_client::Error>
    where
        F: Fn() -> Fut,
        Fut: std::future::Future<Output = Result<T, etcd_client::Error>>,
    {
        let mut attempt = 0;
        loop {
            match op().await {
                Err(e) if never_reached(&e) && attempt < self.failover_attempts() => {
                    attempt += 1;
                    tokio::time::sleep(FAILOVER_PAUSE).await;
                }
                result => return result,
            }
        }
    }

    /// How often a request that reached no endpoint is retried: a few tries per other endpoint.
    fn failover_attempts(&self) -> usize {
        3 * self.endpoints.len().saturating_sub(1)
    }

    /// Runs one etcd request, retrying the two failures that are safe to retry.
    ///
    /// etcd answers "auth revision is old" when a user or role change landed between accepting
    /// the request and applying it; each bind and unbind makes such changes, so under load this
    /// is routine. With simple tokens, sending the request again is enough (one round trip);
    /// JWTs are refreshed first, once for all concurrent requests (see [`Connection`]).
    ///
    /// Retrying alone can starve: at 64 concurrent binds etcd applies auth changes faster than
    /// a request gets through (measured: 28 of 100,000 preloaded binds failed after 30 tries).
    /// So a request refused [`QUIET_AUTH_AFTER`] times waits until this broker's auth changes in
    /// flight are done and keeps new ones back while it is sent again ([`Self::auth_gate`]).
    ///
    /// A request that could not reach an endpoint is sent again, a few times per endpoint; a
    /// read whose endpoint is slow to answer is sent to another one as well ([`hedged`]).
    async fn call<T, F, Fut>(&self, kind: Call, op: F) -> Result<T, etcd_client::Error>
    where
        F: Fn(&Client) -> Fut,
        Fut: std::future::Future<Output = Result<T, etcd_client::Error>>,
    {
        let connection = self.connection().await?;
        let client = &connection.client;
        let send = || async {
            match kind {
                Call::Read if self.endpoints.len() > 1 => {
                    let spare = self.endpoints.len() - 1;
                    hedged(|| op(client), spare, HEDGE_AFTER, &*self.observer.read_copy).await
                }
                _ => bounded(op(client)).await,
            }
        };
        let mut generation = connection.token_generation.load(Ordering::Acquire);
        let (mut stale_token, mut unreachable) = (0, 0);
        loop {
            let outcome = if stale_token >= QUIET_AUTH_AFTER {
                let _quiet = self.auth_gate.write().await;
                send().await
            } else if kind == Call::AuthChange {
                let _changing = self.auth_gate.read().await;
                send().await
            } else {
                send().await
            };
            match outcome {
                Err(e) if is_old_auth_revision(&e) && stale_token < OLD_REVISION_RETRIES => {
                    stale_token += 1;
                    // Other writers keep changing auth: back off a little, with jitter, so
                    // this request's next try does not meet the next change head on.
                    tokio::time::sleep(stale_token_pause(stale_token)).await;
                    if connection.signed_tokens {
                        generation = connection.refresh_token_once(generation).await?;
                    }
                }
                // Failover: the request never left, so sending it to the next endpoint is safe.
                Err(e) if never_reached(&e) && unreachable < self.failover_attempts() => {
                    unreachable += 1;
                    tokio::time::sleep(FAILOVER_PAUSE).await;
                }
                result => return result,
            }
        }
    }

    /// [`Self::call`] with the KV service only, for a request of `kind` (a read or a write):
    /// cloning the whole client for each request (nine services' channels) showed in profiles.
    async fn kv<T, F, Fut>(&self, kind: Call, op: F) -> Result<T, etcd_client::Error>
    where
        F: Fn(KvClient) -> Fut,
        Fut: std::future::Future<Output = Result<T, etcd_client::Error>>,
    {
        self.call(kind, |c| op(c.kv_client())).await
    }

    /// [`Self::call`] with the auth service only (users and roles).
    async fn auth<T, F, Fut>(&self, op: F) -> Result<T, etcd_client::Error>
    where
        F: Fn(AuthClient) -> Fut,
        Fut: std::future::Future<Output = Result<T, etcd_client::Error>>,
    {
        self.call(Call::AuthChange, |c| op(c.auth_client())).await
    }
}

/// Sends a read, and sends it again each time `after` passes without an answer, at most
/// `spare` more times, all within one [`REQUEST_TIMEOUT`]: the endpoint of a read that has no
/// answer after [`HEDGE_AFTER`] is usually out of use by then, so the balancer sends the next
/// copy to one that answers. Without this, a read sent to a member that stopped just before
/// would wait out the whole timeout and answer 503.
///
/// Answers with the first success. An error that [`EtcdStore::call`] retries (a stale auth
/// revision, an endpoint not reached) is returned at once, dropping the copies in flight, so
/// the retry goes out on a balancer that knows more. Any other error waits for the copies
/// still in flight; if they fail too, the first error is the answer (a timeout says less).
/// `copied` hears of each copy.
async fn hedged<T, F, Fut>(
    op: F,
    spare: usize,
    after: Duration,
    copied: &(dyn Fn() + Sync),
) -> Result<T, etcd_client::Error>
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = Result<T, etcd_client::Error>>,
{
    let deadline = tokio::time::Instant::now() + REQUEST_TIMEOUT;
    let copy = || bounded_until(deadline, op());
    let mut in_flight = futures_util::stream::FuturesUnordered::new();
    in_flight.push(copy());
    let (mut spare, mut first_error) = (spare, None);
    let next_copy = tokio::time::sleep(after);
    tokio::pin!(next_copy);
    loop {
        tokio::select! {
            // An answer beats a copy falling due at the same moment. This branch is never
            // disabled: `in_flight` is only empty once an answer was returned.
            biased;
            Some(answer) = futures_util::StreamExt::next(&mut in_flight) => match answer {
                Err(e) if !is_old_auth_revision(&e) && !never_reached(&e) => {
                    let error = first_error.take().unwrap_or(e);
                    if in_flight.is_empty() {
                        return Err(error);
                    }
                    first_error = Some(error);
                }
                answer => return answer,
            },
            () = &mut next_copy, if spare > 0 => {
                spare -= 1;
                copied();
                in_flight.push(copy());
                next_copy.as_mut().reset(tokio::time::Instant::now() + after);
            }
        }
    }
}

impl EtcdStore {
    /// Sends `request` in the next batch of one of this thread's queues ([`Connection::reads`],
    /// [`Connection::commits`]), waiting at most [`BATCHED_TIMEOUT`].
    async fn batched<R, T>(&self, queue: fn(&Connection) -> &Queue<R, T>, request: R) -> Result<T, StoreError>
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
    fn queues(&self) -> (Queue<String, Option<Versioned>>, Queue<PendingCommit, Option<i64>>) {
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
    /// together, see [`PendingCommit::fits`]), answering them in order: one as its own Txn,
    /// several as nested Txns of one.
    async fn commit_batch(self: Arc<Self>, commits: Vec<PendingCommit>) -> Vec<CommitResult> {
        (self.observer.batch)("txn", commits.len());
        if let [commit] = commits.as_slice() {
            return vec![self.commit_one(&commit.txn).await];
        }
        let nested: Vec<TxnOp> = commits.iter().map(|c| TxnOp::txn(c.txn.clone())).collect();
        match self.send_txn(&Txn::new().and_then(nested)).await {
            Ok(response) => {
                // Every write of the outer Txn is at its revision.
                let revision = response.header().map(|h| h.revision()).unwrap_or(0);
                each_answer(&response, commits.len(), |nested| match nested {
                    TxnOpResponse::Txn(txn) => Some(txn.succeeded().then_some(revision)),
                    _ => None,
                })
            }
            // Above etcd's --max-txn-ops or --max-request-bytes: refused before anything was
            // applied, so each commit can go on its own.
            Err(e) if refused_before_applying(&e) => {
                futures_util::future::join_all(commits.iter().map(|c| self.commit_one(&c.txn))).await
            }
            // Anything else may have been applied: answering each commit with the error keeps
            // its outcome open, as for a commit of its own.
            Err(e) => vec![Err(classify(e)); commits.len()],
        }
    }

    /// One commit as one Txn.
    async fn commit_one(&self, txn: &Txn) -> CommitResult {
        let response = self.send_txn(txn).await.map_err(classify)?;
        // The header's revision is the store revision after the transaction: the mod_revision
        // of every key it wrote.
        Ok(response.succeeded().then(|| response.header().map(|h| h.revision()).unwrap_or(0)))
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

    /// One Txn request that writes (with [`Self::call`]'s retries): sent once.
    async fn send_txn(&self, txn: &Txn) -> Result<etcd_client::TxnResponse, etcd_client::Error> {
        self.kv(Call::Write, |mut c| {
            let txn = txn.clone();
            async move { c.txn(txn).await }
        })
        .await
    }

    /// One Txn request that only gets `keys`, so it may go out twice ([`Call::Read`]).
    async fn read_txn(&self, keys: &[String]) -> Result<etcd_client::TxnResponse, etcd_client::Error> {
        let txn =
            Txn::new().and_then(keys.iter().map(|key| TxnOp::get(key.as_str(), None)).collect::<Vec<_>>());
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
fn each_answer<T>(
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

/// The value of a single-key Range, if the key exists.
fn first_value(response: &GetResponse) -> Option<Versioned> {
    response.kvs().first().map(|kv| Versioned { value: kv.value().to_vec(), mod_revision: kv.mod_revision() })
}

impl Connection {
    /// Refreshes the token unless another request already did since `seen`; returns the
    /// generation of the token now in use.
    async fn refresh_token_once(&self, seen: u64) -> Result<u64, etcd_client::Error> {
        let _refreshing = self.refreshing.lock().await;
        if self.token_generation.load(Ordering::Acquire) == seen {
            bounded(self.client.refresh_token()).await?;
            self.token_generation.fetch_add(1, Ordering::AcqRel);
        }
        Ok(self.token_generation.load(Ordering::Acquire))
    }
}

/// One etcd request, given up after [`REQUEST_TIMEOUT`] (dropping it cancels its stream), with
/// an error that says so. tonic's own deadline (`ConnectOptions::with_timeout`) reports only
/// "Timeout expired"; an operator reading the 503 should learn that etcd stopped answering.
async fn bounded<T>(
    request: impl std::future::Future<Output = Result<T, etcd_client::Error>>,
) -> Result<T, etcd_client::Error> {
    bounded_until(tokio::time::Instant::now() + REQUEST_TIMEOUT, request).await
}

/// [`bounded`] with the deadline given: the copies of one read share it ([`hedged`]).
async fn bounded_until<T>(
    deadline: tokio::time::Instant,
    request: impl std::future::Future<Output = Result<T, etcd_client::Error>>,
) -> Result<T, etcd_client::Error> {
    tokio::time::timeout_at(deadline, request).await.unwrap_or_else(|_| {
        Err(etcd_client::Error::GRpcStatus(tonic::Status::deadline_exceeded(no_answer_within(
            REQUEST_TIMEOUT,
        ))))
    })
}

/// What a 503 says when etcd let a deadline pass.
fn no_answer_within(timeout: Duration) -> String {
    format!("etcd did not answer within {} s", timeout.as_secs())
}

/// Connects to etcd through a balanced channel that uses only the endpoints that answer
/// ([`HealthCheckedChannel`]), with TCP_NODELAY on every connection.
///
/// Both matter. etcd-client's own channels send requests to an endpoint that refuses or never
/// answers (see [`crate::endpoint_health`]). And with the `tls-openssl` feature,
/// `Client::connect` dials through an OpenSSL connector whose sockets keep Nagle's algorithm
/// on: a gRPC request's frames then wait for the server's delayed ACK, about 40 ms per etcd
/// call on Linux (measured by `etcd-broker-ops bench`: every call 44 ms, a get included).
pub async fn connect(
    endpoints: &[String],
    options: ConnectOptions,
    tls: &EtcdTls,
) -> Result<Client, etcd_client::Error> {
    let mut tcp = hyper_util::client::legacy::connect::HttpConnector::new();
    tcp.enforce_http(false);
    tcp.set_nodelay(true);
    if endpoints.iter().all(|e| e.starts_with("http://")) {
        Client::connect_with_balanced_channel(endpoints, Some(options), HealthCheckedChannel(tcp)).await
    } else {
        let https = hyper_openssl::client::legacy::HttpsConnector::with_connector(tcp, tls.connector()?)
            .map_err(|e| etcd_client::Error::InvalidArgs(format!("etcd TLS: {e}")))?;
        Client::connect_with_balanced_channel(endpoints, Some(options), HealthCheckedChannel(https)).await
    }
}

/// Where etcd-client sends the endpoints a balanced channel is to use.
type EndpointUpdates = tokio::sync::mpsc::Sender<
    tonic::transport::channel::Change<tonic::codegen::http::Uri, tonic::transport::Endpoint>,
>;

/// TLS settings for etcd connections, as PEM text: what [`connect`] needs to dial https
/// endpoints itself.
#[derive(Clone, Default)]
pub struct EtcdTls {
    /// CA certificates that verify etcd's certificate; the system's when absent.
    pub ca: Option<Vec<u8>>,
    /// Client certificate (with any chain after it) and private key.
    pub client: Option<(Vec<u8>, Vec<u8>)>,
}

impl std::fmt::Debug for EtcdTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EtcdTls")
            .field("ca", &self.ca.is_some())
            .field("client", &self.client.is_some())
            .finish()
    }
}

impl EtcdTls {
    /// The OpenSSL client settings: HTTP/2 by ALPN (gRPC needs it), the CA, the client key pair.
    /// Errors name what is wrong, never the PEM text.
    fn connector(&self) -> Result<openssl::ssl::SslConnectorBuilder, etcd_client::Error> {
        use openssl::pkey::PKey;
        use openssl::ssl::{SslConnector, SslMethod};
        use openssl::x509::X509;
        fn fail(what: &'static str) -> impl Fn(openssl::error::ErrorStack) -> etcd_client::Error {
            move |_| etcd_client::Error::InvalidArgs(format!("etcd TLS: {what}"))
        }
        let mut builder =
            SslConnector::builder(SslMethod::tls_client()).map_err(fail("OpenSSL cannot set up TLS"))?;
        builder.set_alpn_protos(b"\x02h2").map_err(fail("OpenSSL refuses ALPN h2"))?;
        if let Some(ca) = &self.ca {
            for certificate in X509::stack_from_pem(ca).map_err(fail("the CA is not PEM"))? {
                builder.cert_store_mut().add_cert(certificate).map_err(fail("OpenSSL refuses the CA"))?;
            }
        }
        if let Some((cert, key)) = &self.client {
            let chain = X509::stack_from_pem(cert).map_err(fail("the client certificate is not PEM"))?;
            let (leaf, intermediates) = chain.split_first().ok_or_else(|| {
                etcd_client::Error::InvalidArgs("etcd TLS: no client certificate in the PEM".into())
            })?;
            builder.set_certificate(leaf).map_err(fail("OpenSSL refuses the client certificate"))?;
            for certificate in intermediates {
                builder
                    .add_extra_chain_cert(certificate.clone())
                    .map_err(fail("OpenSSL refuses a chain certificate"))?;
            }
            let key =
                PKey::private_key_from_pem(key).map_err(fail("the client key is not a PEM private key"))?;
            builder.set_private_key(&key).map_err(fail("OpenSSL refuses the client key"))?;
            builder.check_private_key().map_err(fail("the client key does not belong to its certificate"))?;
        }
        Ok(builder)
    }
}

/// A balanced channel over one lazily connected tonic `Channel` per endpoint, dialled by
/// `connector` (plain TCP or OpenSSL over it), each used only while it answers
/// ([`Endpoints`]); the balancer picks between two usable ones at random (equal load, like
/// tonic's own balanced channel).
struct HealthCheckedChannel<C>(C);

impl<C> etcd_client::BalancedChannelBuilder for HealthCheckedChannel<C>
where
    C: tower::Service<tonic::codegen::http::Uri> + Clone + Send + Sync + 'static,
    C::Response: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
    C::Error: Send,
    tower::BoxError: From<C::Error>,
    C::Future: Send,
{
    type Error = etcd_client::Error;

    fn balanced_channel(
        self,
        buffer_size: usize,
    ) -> Result<(etcd_client::Channel, EndpointUpdates), Self::Error> {
        use tonic::transport::channel::Change;
        use tower::discover::Change as Discovered;
        let connector = self.0;
        let (updates, mut changes) =
            tokio::sync::mpsc::channel::<Change<tonic::codegen::http::Uri, tonic::transport::Endpoint>>(16);
        let (discovered, discover) = tokio::sync::mpsc::channel(16);
        let endpoints = Endpoints::new();
        tokio::spawn(async move {
            while let Some(change) = changes.recv().await {
                let change = match change {
                    Change::Insert(key, endpoint) => {
                        let channel = endpoint.connect_with_connector_lazy(connector.clone());
                        let checked = endpoints.add(key.to_string(), channel.clone(), health_probe(channel));
                        Discovered::Insert(key, tower::load::Constant::new(checked, 0usize))
                    }
                    Change::Remove(key) => Discovered::Remove(key),
                };
                if discovered.send(Ok::<_, tower::BoxError>(change)).await.is_err() {
                    return;
                }
            }
        });
        let balance =
            tower::balance::p2c::Balance::new(tokio_stream::wrappers::ReceiverStream::new(discover));
        let channel = tower::buffer::Buffer::new(balance, buffer_size);
        Ok((etcd_client::Channel::Custom(tower::util::BoxCloneSyncService::new(channel)), updates))
    }
}

/// Asks an endpoint etcd's gRPC health check (no auth needed): it answers if it says it
/// serves, or has no health service to ask (it still answered).
fn health_probe(channel: tonic::transport::Channel) -> Probe {
    use tonic_health::pb::{
        health_check_response::ServingStatus, health_client::HealthClient, HealthCheckRequest,
    };
    Box::new(move || {
        let mut client = HealthClient::new(channel.clone());
        Box::pin(async move {
            match client.check(HealthCheckRequest { service: String::new() }).await {
                Ok(reply) => reply.into_inner().status == ServingStatus::Serving as i32,
                Err(status) => status.code() == tonic::Code::Unimplemented,
            }
        })
    })
}

/// The smallest key after every key that starts with `prefix` (etcd's range end of a prefix);
/// public for the bench, which pages through prefixes the same way.
pub fn prefix_end(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    vec![0]
}

/// Up to 2^attempt ms (capped at 64 ms), uniformly random.
fn stale_token_pause(attempt: usize) -> Duration {
    let mut byte = [0u8; 2];
    openssl::rand::rand_bytes(&mut byte).expect("OpenSSL's random generator failed");
    let cap = 1u64 << attempt.min(6);
    Duration::from_micros(u64::from(u16::from_le_bytes(byte)) * cap * 1000 / 65_536)
}

/// etcd's answers to a request checked against an auth revision older than the newest auth
/// change (3.5 and 3.4 wording).
const OLD_AUTH_REVISION: [&str; 2] = ["revision in header is old", "revision of auth store is old"];

/// Whether etcd refused a request because auth changed while it was in flight; public so the
/// bench's floor retries exactly what the broker retries.
pub fn is_old_auth_revision(e: &etcd_client::Error) -> bool {
    OLD_AUTH_REVISION.iter().any(|m| says(e, m))
}

/// Sends a request again (up to [`OLD_REVISION_RETRIES`] times) while etcd refuses it because
/// auth changed meanwhile: for the operators' tools, whose plain clients meet the broker's
/// binds, unbinds and role deletions.
pub async fn resend_on_auth_change<T, F, Fut>(op: F) -> Result<T, etcd_client::Error>
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = Result<T, etcd_client::Error>>,
{
    let mut stale = 0;
    loop {
        match op().await {
            Err(e) if is_old_auth_revision(&e) && stale < OLD_REVISION_RETRIES => stale += 1,
            result => return result,
        }
    }
}

/// Auth changes can keep coming while the broker binds at full speed; this bounds the chase.
const OLD_REVISION_RETRIES: usize = 30;
/// Refusals of one request before it holds this broker's auth changes back.
const QUIET_AUTH_AFTER: usize = 3;

/// Turns an etcd-client error into a [`StoreError`]; etcd's messages carry no secrets.
fn classify(e: etcd_client::Error) -> StoreError {
    use tonic::Code;
    match e {
        etcd_client::Error::GRpcStatus(status) => {
            let message = status.message().to_owned();
            match status.code() {
                Code::Unavailable | Code::DeadlineExceeded | Code::Cancelled | Code::Aborted => {
                    StoreError::Unavailable(message)
                }
                Code::Unauthenticated | Code::PermissionDenied => StoreError::Unauthorized(message),
                _ if message.contains("authentication failed") => StoreError::Unauthorized(message),
                _ if OLD_AUTH_REVISION.iter().any(|m| message.contains(m)) => StoreError::Unavailable(
                    format!("{message} (auth kept changing under concurrent binds; retry)"),
                ),
                _ if message.contains("authentication is not enabled") => StoreError::Unauthorized(format!(
                    "{message}; the broker needs etcd with auth enabled and a user with the root role"
                )),
                _ => StoreError::Failed(message),
            }
        }
        etcd_client::Error::TransportError(e) => StoreError::Unavailable(e.to_string()),
        etcd_client::Error::IoError(e) => StoreError::Unavailable(e.to_string()),
        other => StoreError::Failed(other.to_string()),
    }
}

/// Whether the request failed before reaching any etcd (connection refused or not established).
fn never_reached(e: &etcd_client::Error) -> bool {
    match e {
        etcd_client::Error::TransportError(_) => true,
        etcd_client::Error::GRpcStatus(s) => {
            s.code() == tonic::Code::Unavailable && s.message().contains("connect")
        }
        _ => false,
    }
}

/// etcd's refusals of a whole Txn, checked before it applies anything: too many operations
/// (`--max-txn-ops`), too large (`--max-request-bytes`, etcd's own check and gRPC's receive
/// limit), a key written twice.
const REFUSED_BEFORE_APPLYING: [&str; 4] = [
    "too many operations in txn request",
    "request is too large",
    "larger than max",
    "duplicate key given in txn request",
];

/// Whether etcd refused a Txn without applying any of it (see [`REFUSED_BEFORE_APPLYING`]).
fn refused_before_applying(e: &etcd_client::Error) -> bool {
    REFUSED_BEFORE_APPLYING.iter().any(|m| says(e, m))
}

/// Whether etcd said the user or role already exists / does not exist.
fn says(e: &etcd_client::Error, what: &str) -> bool {
    matches!(e, etcd_client::Error::GRpcStatus(s) if s.message().contains(what))
}

#[async_trait]
impl Store for EtcdStore {
    async fn get(&self, key: &str) -> Result<Option<Versioned>, StoreError> {
        self.batched(|c| &c.reads, key.to_owned()).await
    }

    async fn list(&self, prefix: &str) -> Result<Vec<(String, Versioned)>, StoreError> {
        let response = self
            .kv(Call::Read, |mut c| async move { c.get(prefix, Some(GetOptions::new().with_prefix())).await })
            .await
            .map_err(classify)?;
        Ok(response
            .kvs()
            .iter()
            .map(|kv| {
                let key = String::from_utf8_lossy(kv.key()).into_owned();
                (key, Versioned { value: kv.value().to_vec(), mod_revision: kv.mod_revision() })
            })
            .collect())
    }

    async fn next_after(
        &self,
        prefix: &str,
        after: Option<&str>,
    ) -> Result<Option<(String, Versioned)>, StoreError> {
        let from = match after {
            Some(after) => [after.as_bytes(), b"\0"].concat(),
            None => prefix.as_bytes().to_vec(),
        };
        let options = GetOptions::new().with_range(prefix_end(prefix.as_bytes())).with_limit(1);
        let response = self
            .kv(Call::Read, |mut c| {
                let (from, options) = (from.clone(), options.clone());
                async move { c.get(from, Some(options)).await }
            })
            .await
            .map_err(classify)?;
        Ok(response.kvs().first().map(|kv| {
            let key = String::from_utf8_lossy(kv.key()).into_owned();
            (key, Versioned { value: kv.value().to_vec(), mod_revision: kv.mod_revision() })
        }))
    }

    async fn count(&self, prefix: &str) -> Result<u64, StoreError> {
        let options = GetOptions::new().with_prefix().with_count_only();
        let response = self
            .kv(Call::Read, |mut c| {
                let options = options.clone();
                async move { c.get(prefix, Some(options)).await }
            })
            .await
            .map_err(classify)?;
        Ok(u64::try_from(response.count()).unwrap_or(0))
    }

    async fn commit(&self, guards: &[Guard], writes: &[Write]) -> Result<Option<i64>, StoreError> {
        let compares: Vec<Compare> = guards
            .iter()
            .map(|g| match g {
                Guard::Absent(k) => Compare::create_revision(k.as_str(), CompareOp::Equal, 0),
                Guard::Revision(k, r) => Compare::mod_revision(k.as_str(), CompareOp::Equal, *r),
            })
            .collect();
        let ops: Vec<TxnOp> = writes
            .iter()
            .map(|w| match w {
                Write::Put(k, v) => TxnOp::put(k.as_str(), v.clone(), None),
                Write::Delete(k) => TxnOp::delete(k.as_str(), None),
            })
            .collect();
        let txn = Txn::new().when(compares).and_then(ops);
        let guarded = guards
            .iter()
            .map(|g| match g {
                Guard::Absent(k) | Guard::Revision(k, _) => k.clone(),
            })
            .collect();
        let written = writes
            .iter()
            .map(|w| match w {
                Write::Put(k, _) | Write::Delete(k) => k.clone(),
            })
            .collect();
        self.batched(|c| &c.commits, PendingCommit { txn, guarded, written }).await
    }

    async fn delete_prefix(&self, prefix: &str) -> Result<(), StoreError> {
        self.kv(Call::Write, |mut c| async move {
            c.delete(prefix, Some(DeleteOptions::new().with_prefix())).await
        })
        .await
        .map_err(classify)?;
        Ok(())
    }

    async fn ensure_role(&self, role: &str, prefix: &str) -> Result<(), StoreError> {
        match self.auth(|mut c| async move { c.role_add(role).await }).await {
            Err(e) if !says(&e, "already exists") => return Err(classify(e)),
            _ => {}
        }
        let permission = Permission::read_write(prefix).with_prefix();
        self.auth(|mut c| {
            let permission = permission.clone();
            async move { c.role_grant_permission(role, permission).await }
        })
        .await
        .map_err(raced)?;
        Ok(())
    }

    async fn ensure_user(&self, user: &str, password: &str, role: &str) -> Result<(), StoreError> {
        match self.auth(|mut c| async move { c.user_add(user, password, None).await }).await {
            Ok(_) => {}
            Err(e) if says(&e, "already exists") => {
                self.auth(|mut c| async move { c.user_change_password(user, password).await })
                    .await
                    .map_err(raced)?;
            }
            Err(e) => return Err(classify(e)),
        }
        self.auth(|mut c| async move { c.user_grant_role(user, role).await }).await.map_err(raced)?;
        Ok(())
    }

    async fn delete_user(&self, user: &str) -> Result<(), StoreError> {
        match self.auth(|mut c| async move { c.user_delete(user).await }).await {
            Err(e) if !says(&e, "not found") => Err(classify(e)),
            _ => Ok(()),
        }
    }

    async fn delete_role(&self, role: &str) -> Result<(), StoreError> {
        match self.auth(|mut c| async move { c.role_delete(role).await }).await {
            Err(e) if !says(&e, "not found") => Err(classify(e)),
            _ => Ok(()),
        }
    }
}

/// A user or role vanished between two steps: someone else is deleting it.
fn raced(e: etcd_client::Error) -> StoreError {
    if says(&e, "not found") {
        StoreError::Conflict(e.to_string())
    } else {
        classify(e)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::AtomicUsize;

    use super::*;

    const AFTER: Duration = Duration::from_secs(2);

    fn unavailable(n: usize) -> etcd_client::Error {
        etcd_client::Error::GRpcStatus(tonic::Status::unavailable(format!("copy {n} failed")))
    }

    /// Copies of one read: how many were sent, and how many have ended (answered or dropped).
    #[derive(Default)]
    struct Copies {
        sent: AtomicUsize,
        ended: Arc<AtomicUsize>,
    }

    /// Counts a copy as ended when it is dropped, answered or not.
    struct Ends(Arc<AtomicUsize>);

    impl Drop for Ends {
        fn drop(&mut self) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    /// A read whose `n`th copy (from 0) waits `waits[n]` seconds, then answers `answer(n)`.
    fn read<'a>(
        copies: &'a Copies,
        waits: &'static [u64],
        answer: fn(usize) -> Result<usize, etcd_client::Error>,
    ) -> impl Fn() -> futures_util::future::BoxFuture<'static, Result<usize, etcd_client::Error>> + 'a {
        move || {
            let (n, ends) = (copies.sent.fetch_add(1, Ordering::SeqCst), Ends(copies.ended.clone()));
            Box::pin(async move {
                let _ends = ends;
                tokio::time::sleep(Duration::from_secs(waits[n])).await;
                answer(n)
            })
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_prompt_answer_is_sent_once() {
        let copies = Copies::default();
        let answer = hedged(read(&copies, &[1, 0, 0], Ok), 2, AFTER, &|| {}).await;
        assert_eq!(answer.unwrap(), 0);
        assert_eq!(copies.sent.load(Ordering::SeqCst), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn a_read_without_an_answer_is_sent_again_and_the_first_answer_wins() {
        let (copies, started) = (Copies::default(), tokio::time::Instant::now());
        // The first copy would answer after 60 s, the second answers 1 s after it was sent.
        let answer = hedged(read(&copies, &[60, 1, 0], Ok), 2, AFTER, &|| {}).await;
        assert_eq!(answer.unwrap(), 1);
        assert_eq!(copies.sent.load(Ordering::SeqCst), 2);
        assert_eq!(started.elapsed(), AFTER + Duration::from_secs(1));
        assert_eq!(copies.ended.load(Ordering::SeqCst), 2, "the first copy was dropped, not left running");
    }

    #[tokio::test(start_paused = true)]
    async fn copies_stop_at_spare_and_share_one_deadline() {
        let (copies, copied, started) = (Copies::default(), AtomicUsize::new(0), tokio::time::Instant::now());
        let observe = || {
            copied.fetch_add(1, Ordering::SeqCst);
        };
        let answer = hedged(read(&copies, &[60, 60, 60, 60], Ok), 2, AFTER, &observe).await;
        assert_eq!(copies.sent.load(Ordering::SeqCst), 3, "one read and two copies");
        assert_eq!(copied.load(Ordering::SeqCst), 2, "each copy observed");
        assert!(answer.unwrap_err().to_string().contains("10 s"));
        assert_eq!(started.elapsed(), REQUEST_TIMEOUT, "the copies had no time of their own");
    }

    #[tokio::test(start_paused = true)]
    async fn an_error_waits_for_the_copy_in_flight() {
        let copies = Copies::default();
        // The first copy fails at 3 s, while the second (sent at 2 s) is still on its way.
        let answer = hedged(
            read(&copies, &[3, 2], |n| if n == 0 { Err(unavailable(n)) } else { Ok(n) }),
            1,
            AFTER,
            &|| {},
        );
        assert_eq!(answer.await.unwrap(), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn when_every_copy_fails_the_first_error_is_the_answer() {
        let copies = Copies::default();
        // The second copy fails at 3 s; the first and third time out at 10 s.
        let answer = hedged(read(&copies, &[60, 1, 60], |n| Err(unavailable(n))), 2, AFTER, &|| {}).await;
        assert_eq!(copies.sent.load(Ordering::SeqCst), 3);
        assert!(answer.unwrap_err().to_string().contains("copy 1 failed"));
    }

    #[tokio::test(start_paused = true)]
    async fn an_error_that_call_retries_is_the_answer_at_once() {
        let (copies, started) = (Copies::default(), tokio::time::Instant::now());
        let stale =
            |_| Err(etcd_client::Error::GRpcStatus(tonic::Status::invalid_argument(OLD_AUTH_REVISION[0])));
        // The first copy hangs; the second is refused 1 s after it was sent, and call retries it.
        let answer = hedged(read(&copies, &[60, 1], stale), 1, AFTER, &|| {}).await;
        assert!(is_old_auth_revision(&answer.unwrap_err()));
        assert_eq!(started.elapsed(), AFTER + Duration::from_secs(1));
        assert_eq!(copies.ended.load(Ordering::SeqCst), 2, "the hung copy was dropped");
    }

    #[tokio::test(start_paused = true)]
    async fn an_error_with_nothing_else_in_flight_is_the_answer() {
        let copies = Copies::default();
        let answer = hedged(read(&copies, &[1, 0], |n| Err(unavailable(n))), 1, AFTER, &|| {}).await;
        assert!(answer.unwrap_err().to_string().contains("copy 0 failed"));
        assert_eq!(copies.sent.load(Ordering::SeqCst), 1, "the error came before a copy was due");
    }
}

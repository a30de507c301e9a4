//! The real [`Store`]: one etcd v3 cluster through etcd-client, and the small client API the
//! operators' tools share with it.
//!
//! The only module that imports etcd-client. How its parts combine, for one store call:
//! - `connection`: each calling thread dials lazily (the broker starts, and answers 503,
//!   while a cluster is down) one balanced channel over the cluster's endpoints and logs in as
//!   the configured root-role user;
//! - `health`: the balancer uses only the endpoints whose gRPC health check answers;
//! - `batch`: gets and commits that arrive while one is in flight go out together as one
//!   request (`coalesce` forms the batches and knows nothing of etcd);
//! - `call`: each request is bounded in time, retried when etcd did not apply it (an auth
//!   change under it, no endpoint reached), a slow read is copied to another endpoint, and a
//!   slow write sent again through another one;
//! - `fence`: every write that may be sent again compares the fence key's revision, moved
//!   before it is sent again, so the first copy can never apply late;
//! - `errors`: what etcd's messages mean, as [`StoreError`]s;
//! - `policy`: every deadline, back-off and limit of the above, and how they nest;
//! - `span`: a page of a prefix read in ranges with bounded ends, so a walk over many keys
//!   costs etcd O(keys) rather than O(keys²).
//!
//! Public: [`EtcdStore`] and its [`Observer`], and for the operators' tools [`connect`],
//! [`resend_on_auth_change`] (the broker's own retry policy), [`prefix_end`] and [`span`]'s
//! bounded pages (the bench's listing walks a million keys as the broker does); for the
//! tenant proxy's own balancer, the health-checked endpoints ([`Endpoints`], [`health_probe`]).

mod batch;
mod call;
mod coalesce;
mod connection;
mod errors;
mod fence;
mod health;
mod policy;
mod sides;
pub mod span;
mod unpoisoned;

use std::collections::HashMap;
use std::sync::{Arc, Weak};
use std::thread::ThreadId;

use async_trait::async_trait;
use etcd_client::{
    AlarmAction, AlarmType, Compare, CompareOp, ConnectOptions, DeleteOptions, GetOptions, Permission,
    PermissionType, PutOptions, RoleRevokePermissionOptions, Txn, TxnOp, UserAddOptions,
};
use tokio::sync::OnceCell;

pub use call::resend_on_auth_change;
pub use connection::{connect, health_probe};
pub use health::{Endpoints, HealthChecked, Probe, NO_ENDPOINT_ANSWERS};

use batch::PendingCommit;
use call::Call;
use connection::Connection;
use errors::{already_exists, classify, not_found, nothing_to_revoke, raced};
use policy::{CONNECT_TIMEOUT, KEEP_ALIVE_INTERVAL, KEEP_ALIVE_TIMEOUT, WATCH_PROBE};

use crate::config::Cluster;
use crate::store::{
    Access, Guard, KeyChange, KeyChangeSink, Permission as StorePermission, Store, StoreError, Versioned,
    Write,
};
use crate::tls::{ClientTls, TlsError};

/// What [`EtcdStore`] tells the broker's metrics, without this module knowing about them.
#[derive(Clone)]
pub struct Observer {
    /// Each batch of gets or commits it sends: the call kind (`get` or `txn`) and its size.
    pub batch: Arc<dyn Fn(&'static str, usize) + Send + Sync>,
    /// Each copy of a slow read it sends to another endpoint (`call.rs`): a member that
    /// stopped answering while in use, or a cluster too slow for its reads.
    pub read_copy: Arc<dyn Fn() + Send + Sync>,
    /// Each write (a batch of commits, a prefix deletion, a user or role change) sent again
    /// through another endpoint because its own had not answered (`call.rs`, `fence.rs`).
    pub write_resend: Arc<dyn Fn() + Send + Sync>,
    /// Each request etcd refused because a user or role changed while it was in flight
    /// ("auth revision is old"; `call.rs` sends it again).
    pub stale_auth: Arc<dyn Fn() + Send + Sync>,
}

impl Default for Observer {
    /// Hears nothing.
    fn default() -> Self {
        Self {
            batch: Arc::new(|_, _| {}),
            read_copy: Arc::new(|| {}),
            write_resend: Arc::new(|| {}),
            stale_auth: Arc::new(|| {}),
        }
    }
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
    tls: ClientTls,
    username: String,
    password: crate::config::Secret,
    /// One connection per thread that calls the store. tonic runs a channel's request buffer
    /// and its HTTP/2 connection as tasks on the runtime that dialled it, so a connection
    /// shared between threads would send each request to another thread and its answer back
    /// (two thread wake-ups per call). Each thread dials and logs in once, when it first needs
    /// etcd.
    connections: std::sync::Mutex<HashMap<ThreadId, Arc<OnceCell<Arc<Connection>>>>>,
    /// Shared by each user/role change while it is in flight; taken exclusively by a request
    /// that auth changes keep refusing, so it gets through (tokio's lock is fair: once it
    /// waits, new changes queue behind it).
    auth_gate: tokio::sync::RwLock<()>,
    /// Keeps commits and this broker's quick user/role changes from overlapping, so that its
    /// own changes do not refuse its commits (`sides.rs`).
    sides: sides::SideGate,
    /// The width the last page of each walk (prefix, page size) spanned: where the next
    /// page's first range ends (`span`). A hint only; a few walks at a time.
    widths: std::sync::Mutex<HashMap<(String, usize), span::Width>>,
    /// The key whose revision every write that may be sent again compares (`fence`).
    fence: fence::Fence,
    observer: Observer,
}

impl EtcdStore {
    /// Prepares a connection; nothing is dialled until the first call, but the TLS material is
    /// checked now, so a broken one stops its caller at once instead of failing every request.
    /// `fence_key` is the cluster's write fence (`Names::write_fence`), shared by every broker
    /// and tool that writes there; `observer` hears of its batches, read copies and resends.
    pub fn new(config: &Cluster, fence_key: &str, observer: Observer) -> Result<Arc<Self>, TlsError> {
        if let Some(tls) = &config.tls {
            crate::tls::connector(tls)?;
        }
        let options = ConnectOptions::new()
            .with_auto_token_refresh(true)
            .with_connect_timeout(CONNECT_TIMEOUT)
            .with_keep_alive(KEEP_ALIVE_INTERVAL, KEEP_ALIVE_TIMEOUT);
        // A parsed endpoint's text ends in the path `/`, which etcd-client does not expect.
        let endpoints =
            config.endpoints.iter().map(|url| url.as_str().trim_end_matches('/').to_owned()).collect();
        Ok(Arc::new_cyclic(|me| Self {
            me: me.clone(),
            endpoints,
            options,
            tls: config.tls.clone().unwrap_or_default(),
            username: config.username.clone(),
            password: config.password.clone(),
            connections: Default::default(),
            auth_gate: tokio::sync::RwLock::new(()),
            sides: sides::SideGate::new(policy::SIDE_PATIENCE),
            widths: Default::default(),
            fence: fence::Fence::new(fence_key.to_owned()),
            observer,
        }))
    }
}

/// A key and its value as the store hands them out.
fn versioned(kv: &etcd_client::KeyValue) -> Versioned {
    Versioned { value: kv.value().to_vec(), mod_revision: kv.mod_revision() }
}

/// A listed key with its value (keys are the broker's own, so UTF-8).
fn entry(kv: &etcd_client::KeyValue) -> (String, Versioned) {
    (String::from_utf8_lossy(kv.key()).into_owned(), versioned(kv))
}

/// The smallest key after every key that starts with `prefix` (etcd's range end of a prefix);
/// public for the bench and the operators' tools, which page through prefixes the same way.
pub use crate::store::prefix_end;

/// What is stored under a prefix: its keys and their bytes, at one revision.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PrefixUsage {
    pub keys: u64,
    pub bytes: u64,
    /// The revision counted at.
    pub revision: i64,
}

/// Counts [`PrefixUsage`] under `prefix` with `client`, each key weighing `size(key, value)`
/// bytes (the per-instance quotas' rule, `osb::plan_options::stored_bytes`, which this module
/// may not import): ranges of [`USAGE_PAGE`] keys (values included: etcd keeps no size apart
/// from the value), all at the first page's revision, so that the count is one consistent
/// snapshot however long it takes. Shared by the tenant proxy (which then follows a watch from
/// that revision) and `etcd-broker-ops usage`.
pub async fn prefix_usage(
    client: &etcd_client::Client,
    prefix: &str,
    size: fn(&[u8], &[u8]) -> u64,
) -> Result<PrefixUsage, etcd_client::Error> {
    let end = prefix_end(prefix.as_bytes());
    let mut from = prefix.as_bytes().to_vec();
    let mut usage = PrefixUsage::default();
    loop {
        let mut options = GetOptions::new().with_range(end.clone()).with_limit(USAGE_PAGE);
        if usage.revision > 0 {
            options = options.with_revision(usage.revision);
        }
        let page = resend_on_auth_change(|| {
            let (mut client, from, options) = (client.clone(), from.clone(), options.clone());
            async move { client.get(from, Some(options)).await }
        })
        .await?;
        if usage.revision == 0 {
            usage.revision = page.header().map_or(0, |h| h.revision());
        }
        for kv in page.kvs() {
            usage.keys += 1;
            usage.bytes += size(kv.key(), kv.value());
        }
        match page.kvs().last() {
            Some(last) if page.more() => {
                from = last.key().to_vec();
                from.push(0);
            }
            _ => return Ok(usage),
        }
    }
}

/// Keys per range of [`prefix_usage`]: bounded responses.
pub const USAGE_PAGE: i64 = 1000;

/// A permission as the store hands it out.
fn permission(p: &etcd_client::Permission) -> StorePermission {
    let access = match p.get_type() {
        0 => Access::Read,
        1 => Access::Write,
        _ => Access::ReadWrite,
    };
    StorePermission { access, key: p.key().to_vec(), range_end: p.range_end().to_vec() }
}
/// The broker's permission as etcd-client spells it (the inverse of [`permission`]).
fn etcd_permission(p: &StorePermission) -> Permission {
    let kind = match p.access {
        Access::Read => PermissionType::Read,
        Access::Write => PermissionType::Write,
        Access::ReadWrite => PermissionType::Readwrite,
    };
    Permission::new(kind, p.key.clone()).with_range_end(p.range_end.clone())
}

#[async_trait]
impl Store for EtcdStore {
    async fn get(&self, key: &str) -> Result<Option<Versioned>, StoreError> {
        self.batched(|c| &c.reads, key.to_owned()).await
    }

    /// Not batched: a batch is one Txn, and etcd serves a Txn without its read-index round
    /// only when every range in it is serializable; a Range of its own is as cheap.
    async fn get_local(&self, key: &str) -> Result<Option<Versioned>, StoreError> {
        let response =
            self.kv(Call::Read, |mut c| async move {
                c.get(key, Some(GetOptions::new().with_serializable())).await
            })
            .await
            .map_err(classify)?;
        Ok(response.kvs().first().map(versioned))
    }

    /// One read-only Txn of serializable Ranges: etcd serves it from the member's own state
    /// like a single serializable Range (a Txn waits for a read-index round only when one of
    /// its Ranges is linearizable), one request instead of one per key.
    async fn get_local_all(&self, keys: &[&str]) -> Result<Vec<Option<Versioned>>, StoreError> {
        match keys {
            [] => return Ok(Vec::new()),
            [key] => return Ok(vec![self.get_local(key).await?]),
            _ => {}
        }
        let serializable = || Some(GetOptions::new().with_serializable());
        let ranges: Vec<TxnOp> = keys.iter().map(|key| TxnOp::get(*key, serializable())).collect();
        let response = self.read_only_txn(ranges).await.map_err(classify)?;
        batch::each_answer(&response, keys.len(), |answer| match answer {
            etcd_client::TxnOpResponse::Get(range) => Some(batch::first_value(range)),
            _ => None,
        })
        .into_iter()
        .collect()
    }

    async fn list(&self, prefix: &str) -> Result<Vec<(String, Versioned)>, StoreError> {
        let response = self
            .kv(Call::Read, |mut c| async move { c.get(prefix, Some(GetOptions::new().with_prefix())).await })
            .await
            .map_err(classify)?;
        Ok(response.kvs().iter().map(entry).collect())
    }

    async fn scan(
        &self,
        prefix: &str,
        from: &str,
        limit: usize,
        keys_only: bool,
    ) -> Result<Vec<(String, Versioned)>, StoreError> {
        let walk = (prefix.to_owned(), limit);
        let hint = unpoisoned::lock(&self.widths).get(&walk).copied();
        let range = |start: Vec<u8>, end: Vec<u8>, limit: usize| async move {
            let mut options =
                GetOptions::new().with_range(end).with_limit(i64::try_from(limit).unwrap_or(i64::MAX));
            if keys_only {
                options = options.with_keys_only();
            }
            let response = self
                .kv(Call::Read, |mut c| {
                    let (start, options) = (start.clone(), options.clone());
                    async move { c.get(start, Some(options)).await }
                })
                .await
                .map_err(classify)?;
            Ok(response.kvs().iter().map(entry).collect())
        };
        let (found, learned) = span::page(prefix, from, limit, hint, range).await?;
        if let Some(width) = learned {
            let mut widths = unpoisoned::lock(&self.widths);
            // Walks are few; a store asked for many prefixes forgets them all.
            if widths.len() >= 64 {
                widths.clear();
            }
            widths.insert(walk, width);
        }
        Ok(found)
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

    /// One read-only Txn of count-only Ranges: etcd answers all of them at one revision.
    async fn count_at_one_revision(&self, prefixes: &[String]) -> Result<(Vec<u64>, i64), StoreError> {
        let counts: Vec<TxnOp> = prefixes
            .iter()
            .map(|p| TxnOp::get(p.as_str(), Some(GetOptions::new().with_prefix().with_count_only())))
            .collect();
        let response = self.read_only_txn(counts).await.map_err(classify)?;
        let revision = response.header().map_or(0, |h| h.revision());
        let counts = batch::each_answer(&response, prefixes.len(), |answer| match answer {
            etcd_client::TxnOpResponse::Get(range) => Some(u64::try_from(range.count()).unwrap_or(0)),
            _ => None,
        });
        Ok((counts.into_iter().collect::<Result<Vec<_>, _>>()?, revision))
    }

    /// An etcd watch of the prefix from `revision + 1` on this thread's connection, for as long
    /// as it runs (no request deadline: it is meant to last). etcd sends each revision's
    /// events in one answer, so a transaction's changes arrive together.
    async fn follow_keys(&self, prefix: &str, revision: i64, sink: KeyChangeSink) -> Result<(), StoreError> {
        use futures_util::StreamExt;
        let mut client = self.connection().await.map_err(classify)?.client.watch_client();
        let options = etcd_client::WatchOptions::new().with_prefix().with_start_revision(revision + 1);
        let mut watch = tokio::select! {
            opened = client.watch(prefix, Some(options)) => opened.map_err(classify)?,
            () = sink.closed() => return Ok(()),
        };
        // Whether the watch has been asked for its progress since it last said anything.
        let mut probed = false;
        loop {
            let answer = tokio::select! {
                answer = watch.next() => Some(answer),
                () = tokio::time::sleep(WATCH_PROBE) => None,
                () = sink.closed() => return Ok(()),
            };
            let Some(answer) = answer else {
                if probed {
                    return Err(StoreError::Unavailable(format!(
                        "etcd answered nothing on a watch for {} s, not even a progress request",
                        2 * WATCH_PROBE.as_secs()
                    )));
                }
                watch.request_progress().await.map_err(classify)?;
                probed = true;
                continue;
            };
            probed = false;
            let answer = match answer {
                Some(answer) => answer.map_err(classify)?,
                None => return Err(StoreError::Unavailable("etcd ended a watch".into())),
            };
            if answer.compact_revision() > 0 {
                return Err(StoreError::Failed(format!(
                    "etcd compacted its history up to revision {} while a watch needed it from {}",
                    answer.compact_revision(),
                    revision + 1
                )));
            }
            if answer.canceled() {
                return Err(StoreError::Failed(format!(
                    "etcd cancelled a watch: {}",
                    answer.cancel_reason()
                )));
            }
            let changes: Vec<KeyChange> = answer
                .events()
                .iter()
                .filter_map(|event| {
                    let kv = event.kv()?;
                    let key = String::from_utf8_lossy(kv.key()).into_owned();
                    match event.event_type() {
                        // A key's first version: created (again, if it was deleted before).
                        etcd_client::EventType::Put if kv.version() == 1 => Some(KeyChange::Created(key)),
                        etcd_client::EventType::Put => None,
                        etcd_client::EventType::Delete => Some(KeyChange::Deleted(key)),
                    }
                })
                .collect();
            if !changes.is_empty() && sink.send(changes).is_err() {
                return Ok(());
            }
        }
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
        self.batched(|c| &c.commits, PendingCommit { compares, ops, guarded, written }).await
    }

    /// Behind the write fence: a deprovision's deletion left in a stopped member must not
    /// apply after the same instance id was provisioned again.
    async fn delete_prefix(&self, prefix: &str) -> Result<(), StoreError> {
        let delete = TxnOp::delete(prefix, Some(DeleteOptions::new().with_prefix()));
        self.send_fenced_one(&[], &[delete]).await.map_err(classify)?;
        Ok(())
    }

    async fn ensure_role(&self, role: &str, permission: &StorePermission) -> Result<(), StoreError> {
        match self.auth(|mut c| async move { c.role_add(role).await }).await {
            Err(e) if !already_exists(&e) => return Err(classify(e)),
            _ => {}
        }
        let permission = etcd_permission(permission);
        self.auth(|mut c| {
            let permission = permission.clone();
            async move { c.role_grant_permission(role, permission).await }
        })
        .await
        .map_err(raced)?;
        Ok(())
    }

    async fn ensure_user(&self, user: &str, password: &str, role: &str) -> Result<(), StoreError> {
        let slow = Call::SlowAuthChange;
        match self.auth_as(slow, |mut c| async move { c.user_add(user, password, None).await }).await {
            Ok(_) => {}
            Err(e) if already_exists(&e) => {
                self.auth_as(slow, |mut c| async move { c.user_change_password(user, password).await })
                    .await
                    .map_err(raced)?;
            }
            Err(e) => return Err(classify(e)),
        }
        self.auth(|mut c| async move { c.user_grant_role(user, role).await }).await.map_err(raced)?;
        Ok(())
    }

    async fn ensure_certificate_user(
        &self,
        user: &str,
        unused_password: &str,
        role: &str,
    ) -> Result<(), StoreError> {
        let options = || Some(UserAddOptions::new().with_no_pwd());
        match self.auth(|mut c| async move { c.user_add(user, unused_password, options()).await }).await {
            Err(e) if !already_exists(&e) => return Err(classify(e)),
            _ => {}
        }
        self.auth(|mut c| async move { c.user_grant_role(user, role).await }).await.map_err(raced)?;
        Ok(())
    }

    async fn ensure_binding_user(
        &self,
        role: &str,
        permission: &StorePermission,
        user: &str,
        password: Option<&str>,
        unused_password: &str,
    ) -> Result<(), StoreError> {
        // The user needs no role to be added, so the two adds go together; both grants need
        // only the adds. Each round is one raft write per request, which etcd batches.
        let add_role = async {
            match self.auth(|mut c| async move { c.role_add(role).await }).await {
                Err(e) if !already_exists(&e) => Err(classify(e)),
                _ => Ok(()),
            }
        };
        let add_user = async {
            let options = || password.is_none().then(|| UserAddOptions::new().with_no_pwd());
            let given = password.unwrap_or(unused_password);
            let kind = if password.is_some() { Call::SlowAuthChange } else { Call::AuthChange };
            match self.auth_as(kind, |mut c| async move { c.user_add(user, given, options()).await }).await {
                Ok(_) => Ok(()),
                // An existing password user gets the recorded password again; an existing
                // certificate user is kept as it is (as in ensure_certificate_user).
                Err(e) if already_exists(&e) => match password {
                    Some(password) => self
                        .auth_as(Call::SlowAuthChange, |mut c| async move {
                            c.user_change_password(user, password).await
                        })
                        .await
                        .map(|_| ())
                        .map_err(raced),
                    None => Ok(()),
                },
                Err(e) => Err(classify(e)),
            }
        };
        let (role_added, user_added) = tokio::join!(add_role, add_user);
        role_added?;
        user_added?;
        let permission = etcd_permission(permission);
        let grant_permission = self.auth(|mut c| {
            let permission = permission.clone();
            async move { c.role_grant_permission(role, permission).await }
        });
        let grant_role = self.auth(|mut c| async move { c.user_grant_role(user, role).await });
        let (permission_granted, role_granted) = tokio::join!(grant_permission, grant_role);
        permission_granted.map_err(raced)?;
        role_granted.map_err(raced)?;
        Ok(())
    }

    async fn delete_user(&self, user: &str) -> Result<(), StoreError> {
        match self.auth(|mut c| async move { c.user_delete(user).await }).await {
            Err(e) if !not_found(&e) => Err(classify(e)),
            _ => Ok(()),
        }
    }

    async fn delete_role(&self, role: &str) -> Result<(), StoreError> {
        match self.auth_as(Call::SlowAuthChange, |mut c| async move { c.role_delete(role).await }).await {
            Err(e) if !not_found(&e) => Err(classify(e)),
            _ => Ok(()),
        }
    }

    async fn list_users(&self, prefix: &str) -> Result<Vec<String>, StoreError> {
        let response = self.auth_read(|mut c| async move { c.user_list().await }).await.map_err(classify)?;
        Ok(response.users().iter().filter(|u| u.starts_with(prefix)).cloned().collect())
    }

    async fn list_roles(&self, prefix: &str) -> Result<Vec<String>, StoreError> {
        let response = self.auth_read(|mut c| async move { c.role_list().await }).await.map_err(classify)?;
        Ok(response.roles().iter().filter(|r| r.starts_with(prefix)).cloned().collect())
    }

    async fn user_roles(&self, user: &str) -> Result<Option<Vec<String>>, StoreError> {
        match self.auth_read(|mut c| async move { c.user_get(user).await }).await {
            Ok(response) => Ok(Some(response.roles().to_vec())),
            Err(e) if not_found(&e) => Ok(None),
            Err(e) => Err(classify(e)),
        }
    }

    async fn role_permissions(&self, role: &str) -> Result<Option<Vec<StorePermission>>, StoreError> {
        match self.auth_read(|mut c| async move { c.role_get(role).await }).await {
            Ok(response) => Ok(Some(response.permissions().iter().map(permission).collect())),
            Err(e) if not_found(&e) => Ok(None),
            Err(e) => Err(classify(e)),
        }
    }

    async fn revoke_role(&self, user: &str, role: &str) -> Result<(), StoreError> {
        match self.auth(|mut c| async move { c.user_revoke_role(user, role).await }).await {
            Err(e) if !nothing_to_revoke(&e) => Err(classify(e)),
            _ => Ok(()),
        }
    }

    async fn revoke_permission(&self, role: &str, permission: &StorePermission) -> Result<(), StoreError> {
        let options = RoleRevokePermissionOptions::new().with_range_end(permission.range_end.clone());
        let key = permission.key.clone();
        match self
            .auth(|mut c| {
                let (key, options) = (key.clone(), options.clone());
                async move { c.role_revoke_permission(role, key, Some(options)).await }
            })
            .await
        {
            Err(e) if !nothing_to_revoke(&e) => Err(classify(e)),
            _ => Ok(()),
        }
    }

    async fn alarms(&self) -> Result<Vec<String>, StoreError> {
        let response = self
            .call(Call::Read, |c| {
                let mut maintenance = c.maintenance_client();
                async move { maintenance.alarm(AlarmAction::Get, AlarmType::None, None).await }
            })
            .await
            .map_err(classify)?;
        Ok(response
            .alarms()
            .iter()
            .map(|a| format!("{} on member {:x}", a.alarm().as_str_name(), a.member_id()))
            .collect())
    }

    async fn grant_lease(&self, ttl: std::time::Duration) -> Result<i64, StoreError> {
        let seconds = i64::try_from(ttl.as_secs().max(1)).unwrap_or(i64::MAX);
        let granted = self
            .call(Call::Write, |c| {
                let mut leases = c.lease_client();
                async move { leases.grant(seconds, None).await }
            })
            .await
            .map_err(classify)?;
        Ok(granted.id())
    }

    async fn renew_lease(&self, lease: i64) -> Result<bool, StoreError> {
        // One keep-alive request on a stream of its own: the lease's holder renews a few times
        // per ttl, so a long-lived stream would save little and need its own reconnecting.
        // Opening the stream sends the first request and reads its answer (etcd-client fails
        // the opening with "lease not found" when the answer's ttl is 0): that is the renewal.
        let renewed = self
            .call(Call::Write, |c| {
                let mut leases = c.lease_client();
                async move { leases.keep_alive(lease).await.map(drop) }
            })
            .await;
        match renewed {
            Ok(()) => Ok(true),
            Err(etcd_client::Error::LeaseKeepAliveError(message)) if message.contains("not found") => {
                Ok(false)
            }
            Err(e) if not_found(&e) => Ok(false),
            Err(e) => Err(classify(e)),
        }
    }

    async fn revoke_lease(&self, lease: i64) -> Result<(), StoreError> {
        match self
            .call(Call::Write, |c| {
                let mut leases = c.lease_client();
                async move { leases.revoke(lease).await }
            })
            .await
        {
            Err(e) if !not_found(&e) => Err(classify(e)),
            _ => Ok(()),
        }
    }

    async fn put_if_absent_leased(&self, key: &str, value: &[u8], lease: i64) -> Result<bool, StoreError> {
        let txn = || {
            Txn::new().when([Compare::create_revision(key, CompareOp::Equal, 0)]).and_then([TxnOp::put(
                key,
                value.to_vec(),
                Some(PutOptions::new().with_lease(lease)),
            )])
        };
        let response = self
            .kv(Call::Write, |mut c| {
                let txn = txn();
                async move { c.txn(txn).await }
            })
            .await
            .map_err(classify)?;
        Ok(response.succeeded())
    }
}

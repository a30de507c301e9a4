//! Writes that fail over: a write whose member stops answering is sent again through another
//! member, and still never applies twice.
//!
//! Every commit, batch of commits and prefix deletion is one Txn that also compares the
//! **fence key**'s `mod_revision` as this store last saw it: beside a single commit's own
//! guards (flat, because etcd 3.4 lets a Txn whose writes are all nested through its NOSPACE
//! alarm), or around a batch's nested commits. A write with no answer after [`super::policy::HEDGE_AFTER`] has its member out of
//! use by then ([`super::health`]): the store first moves the fence (a Put through a member
//! that answers), then sends the write again with the fence's new revision. The copy left in
//! the stopped member compares the old revision, which never recurs, so it cannot apply
//! whenever that member reads it (minutes later, after the platform deprovisioned what it
//! would have created, say). If it applied before the move, the copy sent again finds its own
//! guards failed, because every commit writes a key it guards (docs/reliability.md), and the
//! broker re-reads as after any lost race.
//!
//! The fence is one key per cluster shared by every broker and tool: a move makes the other
//! writers' next Txn miss once (nothing applies), and they learn the new revision from the
//! miss itself (its else branch reads the fence), so a broker needs no read at start-up.

use std::sync::atomic::{AtomicI64, Ordering};

use etcd_client::{Compare, CompareOp, Txn, TxnOp, TxnOpResponse, TxnResponse};

use super::call::{bounded, Call};
use super::EtcdStore;

/// Sends of one write that found the fence moved before it gives up: each miss means another
/// writer moved the fence since this one last looked, which happens only when a member stops.
const FENCE_MISSES: usize = 5;

/// The fence key of one cluster, as this store knows it.
pub(super) struct Fence {
    key: String,
    /// The fence's `mod_revision` last seen (0: absent, or not read yet; etcd compares a
    /// missing key's revisions as 0, so a fresh cluster needs no write to begin).
    seen: AtomicI64,
    /// Held while moving, so concurrent writes stalled by the same member move it once.
    moving: tokio::sync::Mutex<()>,
}

impl Fence {
    /// The fence at `key` (see [`crate::broker::names::Names::write_fence`]).
    pub(super) fn new(key: String) -> Self {
        Self { key, seen: AtomicI64::new(0), moving: tokio::sync::Mutex::new(()) }
    }

    fn seen(&self) -> i64 {
        self.seen.load(Ordering::Acquire)
    }

    /// The compare every fenced Txn carries: the fence still at `seen`.
    fn at(&self, seen: i64) -> Compare {
        Compare::mod_revision(self.key.as_str(), CompareOp::Equal, seen)
    }

    /// Every fenced Txn's else branch: the fence read, for [`Self::read_in`].
    fn read(&self) -> TxnOp {
        TxnOp::get(self.key.as_str(), None)
    }

    /// `txns` as one Txn that applies them (each a nested Txn with its own guards) only while
    /// the fence is at `seen`, and otherwise reads the fence.
    fn around(&self, seen: i64, txns: &[Txn]) -> Txn {
        let nested: Vec<TxnOp> = txns.iter().cloned().map(TxnOp::txn).collect();
        Txn::new().when([self.at(seen)]).and_then(nested).or_else([self.read()])
    }

    /// The fence's revision as read by the else branch of a Txn that failed.
    fn read_in(failed: &TxnResponse) -> Option<i64> {
        match failed.op_responses().first() {
            Some(TxnOpResponse::Get(fence)) => {
                Some(fence.kvs().first().map_or(0, etcd_client::KeyValue::mod_revision))
            }
            _ => None,
        }
    }

    /// Learns the fence's revision from a fenced Txn that found it moved.
    fn learn(&self, revision: i64) {
        self.seen.store(revision, Ordering::Release);
    }
}

impl EtcdStore {
    /// Sends `txns` as one write behind the fence (see the module) and answers with the Txn
    /// that applied: its responses are one nested Txn response per entry of `txns`, in order.
    /// An error may leave the write applied or not, as for any write.
    pub(super) async fn send_fenced(&self, txns: &[Txn]) -> Result<TxnResponse, etcd_client::Error> {
        for _ in 0..FENCE_MISSES {
            let seen = self.fence.seen();
            let response = self.send_at(seen, self.fence.around(seen, txns)).await?;
            if response.succeeded() {
                return Ok(response);
            }
            self.fence.learn(Fence::read_in(&response).unwrap_or(0));
        }
        Err(fence_kept_moving())
    }

    /// Sends one write as one flat Txn: the fence's compare beside `compares`, then `ops`; the
    /// else branch reads the fence, which tells a moved fence (send again) from a compare of
    /// `compares` that failed (revisions never recur). Answers the revision of the writes, or
    /// `None` when `compares` failed.
    pub(super) async fn send_fenced_one(
        &self,
        compares: &[Compare],
        ops: &[TxnOp],
    ) -> Result<Option<i64>, etcd_client::Error> {
        for _ in 0..FENCE_MISSES {
            let seen = self.fence.seen();
            let mut all = vec![self.fence.at(seen)];
            all.extend(compares.iter().cloned());
            let txn = Txn::new().when(all).and_then(ops.to_vec()).or_else([self.fence.read()]);
            let response = self.send_at(seen, txn).await?;
            if response.succeeded() {
                // The header's revision is the store revision after the Txn: every write's.
                return Ok(Some(response.header().map_or(0, |h| h.revision())));
            }
            match Fence::read_in(&response) {
                Some(revision) if revision != seen => self.fence.learn(revision),
                _ => return Ok(None),
            }
        }
        Err(fence_kept_moving())
    }

    /// Sends `txn`, a Txn comparing the fence at `seen`, as a write that is sent again after a
    /// fence move when its endpoint is silent ([`Call::Fenced`]).
    async fn send_at(&self, seen: i64, txn: Txn) -> Result<TxnResponse, etcd_client::Error> {
        self.kv(Call::Fenced(seen), |mut c| {
            let txn = txn.clone();
            async move { c.txn(txn).await }
        })
        .await
    }

    /// Moves the fence past `seen`, the revision a write without an answer compared, unless
    /// it is already past: from then on that write can never apply. Sent on the balanced
    /// channel like any request, so through a member that answers once the silent one is out
    /// of use, with the retries of [`Self::until_reached`] (not through [`Self::call`], which
    /// calls this).
    pub(super) async fn move_fence(&self, seen: i64) -> Result<(), etcd_client::Error> {
        let _moving = self.fence.moving.lock().await;
        if self.fence.seen() != seen {
            return Ok(());
        }
        let connection = self.connection().await?;
        let key = self.fence.key.as_str();
        let moved = self
            .until_reached(|| {
                let mut kv = connection.client.kv_client();
                bounded(async move { kv.put(key, FENCE_VALUE, None).await })
            })
            .await?;
        let revision = moved.header().map_or(0, etcd_client::ResponseHeader::revision);
        self.fence.seen.store(revision, Ordering::Release);
        Ok(())
    }
}

/// The error of a write whose every send found the fence moved: nothing of it applied.
fn fence_kept_moving() -> etcd_client::Error {
    etcd_client::Error::GRpcStatus(tonic::Status::unavailable(format!(
        "etcd's write fence moved under each of {FENCE_MISSES} sends of one write (members keep \
         stopping); nothing of it was applied"
    )))
}

/// What the fence holds, for an operator who finds it: only its revision matters.
const FENCE_VALUE: &str = "moved when a write to a member went unanswered; see docs/reliability.md";

#[cfg(test)]
mod tests {
    //! The fence on a real etcd 3.4 and 3.5: what the stopped member's copy would do when it
    //! is read after a move.

    use etcd_client::{Client, ConnectOptions};
    use local_etcd::{EtcdVersion, LocalEtcd, Options};

    use super::*;
    use crate::config::{Cluster, Secret};
    use crate::etcd::Observer;
    use crate::store::{Guard, Store, Write};

    const FENCE: &str = "/broker/write-fence";

    async fn start(version: EtcdVersion) -> (LocalEtcd, std::sync::Arc<EtcdStore>, Client) {
        let etcd = LocalEtcd::start(Options { version, bcrypt_cost: Some(4), ..Options::default() })
            .await
            .expect("etcd starts");
        let endpoints = vec![url::Url::parse(&etcd.endpoint()).unwrap()];
        let cluster = Cluster {
            public_endpoints: endpoints.clone(),
            certificate_endpoints: endpoints.clone(),
            proxy_endpoints: vec![],
            endpoints,
            username: etcd.root_username().to_owned(),
            password: Secret::new(etcd.root_password()),
            tls: None,
        };
        let store = EtcdStore::new(&cluster, FENCE, Observer::default()).unwrap();
        let options = ConnectOptions::new().with_user(etcd.root_username(), etcd.root_password());
        let root = Client::connect([etcd.endpoint()], Some(options)).await.unwrap();
        (etcd, store, root)
    }

    /// The provision's commit: create `key` if absent.
    fn create(key: &str) -> Txn {
        Txn::new()
            .when([Compare::create_revision(key, CompareOp::Equal, 0)])
            .and_then([TxnOp::put(key, "creating", None)])
    }

    async fn fence_revision(root: &mut Client) -> i64 {
        root.get(FENCE, None).await.unwrap().kvs().first().map_or(0, etcd_client::KeyValue::mod_revision)
    }

    #[tokio::test]
    async fn a_write_sent_before_the_fence_moved_never_applies() {
        for version in [EtcdVersion::V3_5, EtcdVersion::V3_4] {
            let (_etcd, store, mut root) = start(version).await;
            // A fresh cluster has no fence: commits go through at revision 0, nothing written.
            let put = [Write::Put("/k0".into(), b"v".to_vec())];
            assert!(store.commit(&[Guard::Absent("/k0".into())], &put).await.unwrap().is_some());
            assert_eq!(fence_revision(&mut root).await, 0, "{version:?}");

            // A provision stalls in a stopped member; the store moves the fence, the platform
            // deprovisions; then the member reads the stalled copy.
            let stalled = store.fence.around(store.fence.seen(), &[create("/instance")]);
            store.move_fence(0).await.unwrap();
            let moved = fence_revision(&mut root).await;
            assert!(moved > 0 && store.fence.seen() == moved, "{version:?}");
            let late = root.txn(stalled).await.unwrap();
            assert!(!late.succeeded(), "{version:?}: the stalled copy applied");
            assert!(root.get("/instance", None).await.unwrap().kvs().is_empty(), "{version:?}");

            // A second move for the same stalled revision is not needed, and not made.
            store.move_fence(0).await.unwrap();
            assert_eq!(fence_revision(&mut root).await, moved, "{version:?}");
            // The store's own commits go on at the new revision.
            let put = [Write::Put("/k1".into(), b"v".to_vec())];
            assert!(store.commit(&[Guard::Absent("/k1".into())], &put).await.unwrap().is_some());
        }
    }

    #[tokio::test]
    async fn a_fence_moved_by_another_broker_costs_one_miss_and_no_write() {
        for version in [EtcdVersion::V3_5, EtcdVersion::V3_4] {
            let (_etcd, store, mut root) = start(version).await;
            root.put(FENCE, "moved by another broker", None).await.unwrap();
            let moved = fence_revision(&mut root).await;
            // The miss applied nothing, and the second send did.
            let put = [Write::Put("/k".into(), b"v".to_vec())];
            let committed = store.commit(&[Guard::Absent("/k".into())], &put).await.unwrap();
            assert!(committed.is_some(), "{version:?}");
            assert_eq!(store.fence.seen(), moved, "{version:?}");
            let written = root.get("/k", None).await.unwrap();
            assert_eq!(written.kvs()[0].version(), 1, "{version:?}: written once");
            // A guard that fails is the commit's own answer, not a miss.
            assert!(store.commit(&[Guard::Absent("/k".into())], &put).await.unwrap().is_none());
            // A prefix deletion goes behind the fence too.
            store.delete_prefix("/k").await.unwrap();
            assert!(root.get("/k", None).await.unwrap().kvs().is_empty(), "{version:?}");
        }
    }
}

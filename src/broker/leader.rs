//! Leadership of a background task among the broker instances that share a state cluster:
//! the task runs on one broker at a time, and on another within seconds of the leader dying.
//!
//! The leader holds a key (`Names::leader_key`) attached to an etcd lease that it renews
//! every third of the lease's ttl. If it dies (kill -9, a lost host), etcd ends the lease once
//! the ttl passes unrenewed and deletes the key; the other brokers, which look for the key
//! every [`FOLLOWER_POLL`], then campaign: the first whose put-if-absent lands leads.
//!
//! A leader that cannot renew (etcd unreachable, its process frozen) steps down once a ttl has
//! passed since its last renewal, so for a moment two brokers may both think they lead. The
//! tasks run under leadership are therefore written to be safe when run twice at once (each
//! change a compare-and-swap): leadership saves work, it does not guard correctness.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use crate::store::Store;

/// How often a broker that does not lead looks whether the leader's key is gone.
pub const FOLLOWER_POLL: Duration = Duration::from_secs(1);

/// What leadership tells the broker's metrics, without this module knowing about them.
pub struct Observer {
    /// This broker became the leader (`true`) or stopped being it (`false`).
    pub leading: Box<dyn Fn(bool) + Send + Sync>,
}

/// How a task that one broker at a time runs is scheduled (binding expiry: `[binding_expiry]`;
/// inventory: `[metrics] inventory_seconds` with the expiry's lease).
#[derive(Debug, Clone)]
pub struct TaskSettings {
    /// Time between two runs of the leader's work.
    pub every: Duration,
    /// The leader's lease ttl.
    pub lease_ttl: Duration,
    /// Who this broker is, in the leader key's value.
    pub holder: String,
}

/// One task's leadership, as seen from one broker.
pub struct Leadership {
    pub store: Arc<dyn Store>,
    /// The key the leader holds.
    pub key: String,
    /// Who this broker is, written as the key's value (for operators reading it with etcdctl).
    pub holder: String,
    /// The lease's ttl: how long a dead leader keeps the others waiting.
    pub ttl: Duration,
}

impl super::EtcdBroker {
    /// The leadership of `task` (its key under the state prefix, on the state cluster), as a
    /// task's `settings` say.
    pub(super) fn leadership(&self, task: &str, settings: &TaskSettings) -> Leadership {
        Leadership {
            store: self.setup.state.clone(),
            key: self.names().leader_key(task),
            holder: settings.holder.clone(),
            ttl: settings.lease_ttl,
        }
    }
}

impl Leadership {
    /// Runs forever: campaigns, and while this broker leads, runs `work` every `every` (the
    /// first time at once). `work` is dropped mid-way when leadership is lost.
    pub async fn run<F, Fut>(&self, every: Duration, mut work: F, observer: &Observer)
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = ()>,
    {
        let mut paced = || {
            let once = work();
            async move {
                once.await;
                tokio::time::sleep(every).await;
            }
        };
        self.lead(&mut paced, observer).await;
    }

    /// Runs forever: campaigns, and while this broker leads, runs `work` (again each time it
    /// returns): for work that lasts as long as the leadership, such as following changes.
    /// `work` is dropped mid-way when leadership is lost.
    pub async fn lead<F, Fut>(&self, mut work: F, observer: &Observer)
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = ()>,
    {
        loop {
            let Some(lease) = self.campaign().await else {
                tokio::time::sleep(FOLLOWER_POLL).await;
                continue;
            };
            tracing::info!(key = %self.key, "leading");
            (observer.leading)(true);
            let working = async {
                loop {
                    work().await;
                }
            };
            tokio::select! {
                () = self.hold(lease) => {}
                () = working => {}
            }
            (observer.leading)(false);
            tracing::warn!(key = %self.key, "no longer leading");
            // Best effort: a lease that etcd ended already, or cannot be reached, is fine.
            let _ = self.store.revoke_lease(lease).await;
        }
    }

    /// One attempt to lead: `Some(lease)` when this broker now holds the key. Looks first, so
    /// that followers grant no lease while a leader lives.
    async fn campaign(&self) -> Option<i64> {
        match self.store.get(&self.key).await {
            Ok(None) => {}
            Ok(Some(_)) => return None,
            Err(e) => {
                tracing::debug!(key = %self.key, error = %e, "cannot look for the leader");
                return None;
            }
        }
        let lease = self.store.grant_lease(self.ttl).await.ok()?;
        match self.store.put_if_absent_leased(&self.key, self.holder.as_bytes(), lease).await {
            Ok(true) => Some(lease),
            _ => {
                let _ = self.store.revoke_lease(lease).await;
                None
            }
        }
    }

    /// Renews `lease` every third of the ttl; returns when it has ended, or when no renewal
    /// has succeeded for a whole ttl (etcd may have ended it meanwhile).
    async fn hold(&self, lease: i64) {
        let mut renewed = Instant::now();
        loop {
            tokio::time::sleep(self.ttl / 3).await;
            match self.store.renew_lease(lease).await {
                Ok(true) => renewed = Instant::now(),
                Ok(false) => return,
                Err(e) => {
                    tracing::warn!(key = %self.key, error = %e, "cannot renew the leader's lease");
                    if renewed.elapsed() >= self.ttl {
                        return;
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

    use super::*;
    use crate::store::memory::MemoryStore;

    fn leadership(store: &Arc<MemoryStore>, holder: &str) -> Leadership {
        Leadership {
            store: store.clone(),
            key: "/etcd-broker/leaders/task".into(),
            holder: holder.into(),
            ttl: Duration::from_secs(3),
        }
    }

    /// Two brokers' leaderships of one task, "a" campaigning first; their runs of the work
    /// and whether each leads.
    struct Two {
        tasks: Vec<tokio::task::JoinHandle<()>>,
        runs: [Arc<AtomicUsize>; 2],
        leading: [Arc<AtomicBool>; 2],
    }

    async fn two_brokers(store: &Arc<MemoryStore>) -> Two {
        let runs = [Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0))];
        let leading = [Arc::new(AtomicBool::new(false)), Arc::new(AtomicBool::new(false))];
        let mut tasks = Vec::new();
        for (n, holder) in ["a", "b"].into_iter().enumerate() {
            let (runs, leading, store) = (runs[n].clone(), leading[n].clone(), store.clone());
            tasks.push(tokio::spawn(async move {
                let observer =
                    Observer { leading: Box::new(move |now| leading.store(now, Ordering::SeqCst)) };
                let work = || {
                    runs.fetch_add(1, Ordering::SeqCst);
                    async {}
                };
                leadership(&store, holder).run(Duration::from_secs(1), work, &observer).await;
            }));
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        Two { tasks, runs, leading }
    }

    fn holder(store: &MemoryStore) -> Vec<u8> {
        store.snapshot().keys["/etcd-broker/leaders/task"].value.clone()
    }

    #[tokio::test(start_paused = true)]
    async fn one_broker_leads_and_another_takes_over_when_it_dies() {
        let store = Arc::new(MemoryStore::default());
        let two = two_brokers(&store).await;
        tokio::time::sleep(Duration::from_secs(10)).await;
        assert!(two.leading[0].load(Ordering::SeqCst) && !two.leading[1].load(Ordering::SeqCst));
        assert!(two.runs[0].load(Ordering::SeqCst) >= 9, "{:?}", two.runs);
        assert_eq!(two.runs[1].load(Ordering::SeqCst), 0);
        assert_eq!(holder(&store), b"a");

        // a dies; etcd ends its lease once the ttl passes unrenewed: b leads within a poll.
        two.tasks[0].abort();
        let lease = *store.snapshot().leases.keys().next().unwrap();
        store.end_lease(lease);
        tokio::time::sleep(FOLLOWER_POLL + Duration::from_millis(100)).await;
        assert!(two.leading[1].load(Ordering::SeqCst));
        assert!(two.runs[1].load(Ordering::SeqCst) >= 1);
        assert_eq!(holder(&store), b"b");
    }

    #[tokio::test(start_paused = true)]
    async fn a_leader_whose_lease_ended_stops_working() {
        let store = Arc::new(MemoryStore::default());
        let two = two_brokers(&store).await;
        tokio::time::sleep(Duration::from_secs(2)).await;
        // a's lease ends under it (a frozen process, a partition): at its next renewal a stops
        // and someone leads again with a new lease.
        let lease = *store.snapshot().leases.keys().next().unwrap();
        store.end_lease(lease);
        let runs_a = two.runs[0].load(Ordering::SeqCst);
        tokio::time::sleep(Duration::from_secs(5)).await;
        let now = store.snapshot();
        assert_eq!(now.leases.len(), 1, "one live lease: {:?}", now.leases);
        assert_ne!(*now.leases.keys().next().unwrap(), lease);
        let leaders = two.leading.iter().filter(|l| l.load(Ordering::SeqCst)).count();
        assert_eq!(leaders, 1);
        // Whoever leads now works.
        let total: usize = two.runs.iter().map(|r| r.load(Ordering::SeqCst)).sum();
        assert!(total > runs_a, "{:?}", two.runs);
    }
}

//! The role reaper: a background task that deletes the roles unbinds and deprovisions queue
//! (see [`super::role_deletions`] for why they are queued).
//!
//! It walks the queue one entry at a time and rests between deletions so that it keeps etcd
//! busy for at most `busy_share` of the time: each RoleDelete holds etcd's write lock for a time
//! that grows with the number of users, and tenants' writes wait meanwhile. It wakes as soon as
//! this broker queues a role, and polls for roles queued elsewhere. Each deletion waits for a
//! pause in this broker's OSB traffic ([`QUIET`] without a request, for at most
//! `role_reaper.yield_seconds`), so the stall lands between platform requests rather than in
//! one. Once a wait has found no pause, the traffic is continuous: deletions stop waiting (still
//! within `busy_share`) until the API is seen quiet or the queue has stayed empty for
//! `yield_seconds`, or a soak's steady churn would queue roles faster than one per
//! `yield_seconds` forever (and, with "until the queue is empty", pile up `yield_seconds` of
//! unbinds each time the reaper caught up). With more than
//! [`QUEUE_TARGET`] roles queued the share rises with the queue ([`share_for`]): unbinds that
//! keep outpacing `busy_share` then cost more frequent stalls instead of a queue that grows
//! forever (a soak's steady churn queued 15,000 roles in 30 minutes at the plain share), while
//! a burst of up to [`QUEUE_TARGET`] unbinds is still deleted at the plain share. Every broker
//! instance runs one; two reapers on the same entry are harmless (deleting a missing role is
//! fine, and the entry is removed by compare-and-swap).

use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use super::role_deletions::QueueStep;
use super::EtcdBroker;
use crate::activity::OsbActivity;

/// How the reaper is paced (from the `role_reaper` settings).
#[derive(Debug, Clone, Copy)]
pub struct Pacing {
    /// The largest share of time the reaper keeps etcd busy with deletions.
    pub busy_share: f64,
    /// How often to look for roles queued by other broker instances.
    pub poll: Duration,
    /// The longest a deletion waits for a pause in the OSB traffic.
    pub at_most: Duration,
}

/// What the reaper tells the broker's metrics, without this module knowing about them.
pub struct Observer {
    /// A queued role was deleted.
    pub deleted: Box<dyn Fn() + Send + Sync>,
    /// A queued role could not be deleted (it stays queued).
    pub failed: Box<dyn Fn() + Send + Sync>,
}

/// How long to rest after a deletion that took `took`, to stay within `busy_share`.
pub fn pause_after(took: Duration, busy_share: f64) -> Duration {
    took.mul_f64((1.0 - busy_share) / busy_share)
}

/// The queue length up to which the reaper keeps to `busy_share`: a burst of unbinds this
/// large (the bench's 1,000 in a few seconds) must not drive it to back-to-back RoleDeletes,
/// which stall every tenant's writes (with a target of 100 they slowed the bench's next phase
/// by half).
pub const QUEUE_TARGET: u64 = 1000;

/// Deletions between two counts of the queue (one count request each) within a pass.
const COUNT_EVERY: usize = 50;

/// The share of etcd's time to take with `queued` roles waiting: `busy_share` up to
/// [`QUEUE_TARGET`], then in proportion to the queue, at most 1 (back to back). So any churn
/// the reaper can follow at full speed settles at a bounded queue: where the share it takes
/// deletes as fast as unbinds queue.
pub fn share_for(busy_share: f64, queued: u64) -> f64 {
    let backlog = (queued as f64 / QUEUE_TARGET as f64).max(1.0);
    (busy_share * backlog).min(1.0)
}

/// How long the OSB API must have been idle before a deletion starts.
pub const QUIET: Duration = Duration::from_millis(500);

/// Waits until `activity` has been quiet for [`QUIET`] (`true`), or `at_most` has passed
/// (`false`: the traffic did not pause).
pub async fn wait_for_quiet(activity: &OsbActivity, at_most: Duration) -> bool {
    let deadline = tokio::time::Instant::now() + at_most;
    loop {
        let (quiet, now) = (activity.quiet_for(), tokio::time::Instant::now());
        if quiet >= QUIET {
            return true;
        }
        if now >= deadline {
            return false;
        }
        tokio::time::sleep((QUIET - quiet).min(deadline - now)).await;
    }
}

/// Runs forever; meant to be raced against the servers.
pub async fn run(broker: Arc<EtcdBroker>, pacing: Pacing, observer: Observer, activity: Arc<OsbActivity>) {
    let Pacing { busy_share, poll, at_most } = pacing;
    let mut after: Option<String> = None;
    let mut pass_failed = false;
    // The share for the queue as last counted, and the deletions since.
    let (mut share, mut since_count) = (busy_share, COUNT_EVERY);
    // No pause came within `at_most`: the traffic is continuous, do not wait for one. That
    // holds until the API is seen quiet, or the queue has stayed empty for `at_most` (then the
    // next role waits for a pause again). Not merely until the queue is empty: under steady
    // churn the reaper catches up again and again, and waiting `at_most` each time let that
    // long's unbinds pile up before every drain.
    let mut continuous = false;
    // When the queue was last found empty, if nothing was deleted since.
    let mut drained_at: Option<Instant> = None;
    loop {
        let drained_long = drained_at.is_some_and(|at| at.elapsed() >= at_most);
        if continuous && (drained_long || activity.quiet_for() >= QUIET) {
            continuous = false;
        }
        if !continuous {
            continuous = !wait_for_quiet(&activity, at_most).await;
        }
        if after.is_none() || since_count >= COUNT_EVERY {
            // A failed count keeps the share from before; the deletion will say what failed.
            if let Ok(queued) = broker.queued_roles().await {
                share = share_for(busy_share, queued);
            }
            since_count = 0;
        }
        let started = Instant::now();
        match broker.delete_next_queued_role(after.as_deref()).await {
            Ok(QueueStep::Deleted { key, stall }) => {
                (observer.deleted)();
                drained_at = None;
                after = Some(key);
                since_count += 1;
                // The share bounds etcd's RoleDelete, the O(users) stall of every tenant's
                // writes; the entry's read and the user's and entry's deletions are single-key
                // requests like any OSB request's, and counting them made the reaper fall
                // behind steady churn (the soak: 26,000 roles queued in 30 minutes).
                tokio::time::sleep(pause_after(stall, share)).await;
                continue;
            }
            Ok(QueueStep::Failed { key, error }) => {
                (observer.failed)();
                tracing::warn!(entry = %key, %error, "could not delete a queued role; retrying on the next pass");
                after = Some(key);
                pass_failed = true;
            }
            // The end of a pass: start the next one at once, unless it would only meet the
            // same failures again, or there is nothing left.
            Ok(QueueStep::Empty) if after.is_some() && !pass_failed => {
                after = None;
                continue;
            }
            Ok(QueueStep::Empty) => {
                (after, pass_failed) = (None, false);
                drained_at.get_or_insert_with(Instant::now);
                idle(&broker, poll).await;
                continue;
            }
            Err(error) => {
                tracing::warn!(%error, "could not read the queue of roles to delete");
                (after, pass_failed) = (None, false);
                idle(&broker, poll).await;
                continue;
            }
        }
        tokio::time::sleep(pause_after(started.elapsed(), share)).await;
    }
}

/// Waits until this broker queues a role or `poll` passes.
async fn idle(broker: &EtcdBroker, poll: Duration) {
    let _ = tokio::time::timeout(poll, broker.role_queued().notified()).await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn deletions_wait_for_a_quiet_api_but_not_forever() {
        let activity = OsbActivity::default();
        // Idle since start: no wait once QUIET has passed.
        tokio::time::sleep(QUIET).await;
        let started = tokio::time::Instant::now();
        assert!(wait_for_quiet(&activity, Duration::from_secs(60)).await);
        assert!(started.elapsed() < Duration::from_millis(1));
        // A request that never ends: the wait gives up after `at_most`.
        let _busy = activity.begin();
        let started = tokio::time::Instant::now();
        assert!(!wait_for_quiet(&activity, Duration::from_secs(3)).await);
        assert_eq!(started.elapsed(), Duration::from_secs(3));
    }

    #[tokio::test(start_paused = true)]
    async fn under_continuous_traffic_the_queue_drains_after_one_wait() {
        use crate::broker::tests::{bind_req, broker_on, provision_req, unbind_req, SMALL};
        use crate::osb::ServiceBroker;
        let store = Arc::new(crate::store::memory::MemoryStore::default());
        let broker = Arc::new(broker_on(store.clone()));
        broker.provision(provision_req("i1", SMALL)).await.unwrap();
        for b in ["b1", "b2", "b3", "b4", "b5"] {
            broker.bind(bind_req("i1", b)).await.unwrap();
            broker.unbind(unbind_req("i1", b)).await.unwrap();
        }
        let roles = || store.snapshot().roles.keys().filter(|r| r.starts_with("etcd-broker.")).count();
        assert_eq!(roles(), 5);
        let activity = Arc::new(OsbActivity::default());
        let _never_ends = activity.begin();
        let pacing =
            Pacing { busy_share: 0.5, poll: Duration::from_secs(1), at_most: Duration::from_secs(10) };
        let observer = Observer { deleted: Box::new(|| {}), failed: Box::new(|| {}) };
        let reaper = tokio::spawn(run(broker, pacing, observer, activity.clone()));
        // One wait of `at_most` for a pause that never comes, then the queue without waiting
        // (before: one role per `at_most`).
        tokio::time::sleep(Duration::from_millis(10_500)).await;
        assert_eq!(roles(), 0);
        reaper.abort();
    }

    /// Steady churn the reaper keeps up with: before, each time it emptied the queue it waited
    /// `at_most` for a pause again, and that long's unbinds piled up before every drain (the
    /// soak's queue at a steady rate saw-toothed with it).
    #[tokio::test(start_paused = true)]
    async fn under_continuous_traffic_a_refilled_queue_is_not_waited_for_again() {
        use crate::broker::tests::{bind_req, broker_on, provision_req, unbind_req, SMALL};
        use crate::osb::ServiceBroker;
        let store = Arc::new(crate::store::memory::MemoryStore::default());
        let broker = Arc::new(broker_on(store.clone()));
        broker.provision(provision_req("i1", SMALL)).await.unwrap();
        let churn = |bindings: &'static [&'static str]| {
            let broker = broker.clone();
            async move {
                for b in bindings {
                    broker.bind(bind_req("i1", b)).await.unwrap();
                    broker.unbind(unbind_req("i1", b)).await.unwrap();
                }
            }
        };
        let roles = || store.snapshot().roles.keys().filter(|r| r.starts_with("etcd-broker.")).count();
        churn(&["b1", "b2"]).await;
        let activity = Arc::new(OsbActivity::default());
        let never_ends = activity.begin();
        let pacing =
            Pacing { busy_share: 0.5, poll: Duration::from_secs(1), at_most: Duration::from_secs(10) };
        let observer = Observer { deleted: Box::new(|| {}), failed: Box::new(|| {}) };
        let reaper = tokio::spawn(run(broker.clone(), pacing, observer, activity.clone()));
        tokio::time::sleep(Duration::from_millis(10_500)).await;
        assert_eq!(roles(), 0, "one wait of at_most, then the queue");
        // The traffic goes on and unbinds queue more roles: deleted at once.
        tokio::time::sleep(Duration::from_secs(3)).await;
        churn(&["b3", "b4"]).await;
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert_eq!(roles(), 0, "the refilled queue waited for a pause again");
        // The queue stays empty for longer than at_most: the next role waits for a pause again.
        tokio::time::sleep(Duration::from_secs(11)).await;
        churn(&["b5"]).await;
        tokio::time::sleep(Duration::from_secs(5)).await;
        assert_eq!(roles(), 1, "after a long empty queue, a deletion waits for a pause");
        // A pause: deleted within QUIET.
        drop(never_ends);
        tokio::time::sleep(QUIET + Duration::from_millis(100)).await;
        assert_eq!(roles(), 0);
        reaper.abort();
    }

    #[test]
    fn the_share_rises_with_the_queue_beyond_its_target() {
        assert_eq!(share_for(0.1, 0), 0.1);
        assert_eq!(share_for(0.1, QUEUE_TARGET), 0.1);
        assert!((share_for(0.1, 5 * QUEUE_TARGET) - 0.5).abs() < 1e-9);
        assert_eq!(share_for(0.1, 10 * QUEUE_TARGET), 1.0);
        assert_eq!(share_for(0.1, 1_000_000), 1.0, "never above back to back");
        assert_eq!(share_for(1.0, 7), 1.0);
    }

    /// A long queue is deleted faster than `busy_share` allows: 3 x [`QUEUE_TARGET`] roles whose
    /// RoleDelete takes 10 ms each would take 300 s at the plain share of 0.1 (10 ms busy, 90 ms
    /// resting); with the share rising with the queue (0.3 at first) they are gone within
    /// 220 s, when the plain share would have left 800.
    #[tokio::test(start_paused = true)]
    async fn a_queue_beyond_its_target_is_deleted_at_a_higher_share() {
        use crate::broker::tests::{bind_req, broker_on, provision_req, unbind_req, SMALL};
        use crate::osb::ServiceBroker;
        let store = Arc::new(crate::store::memory::MemoryStore::default());
        let broker = Arc::new(broker_on(store.clone()));
        broker.provision(provision_req("i1", SMALL)).await.unwrap();
        for b in 0..3 * QUEUE_TARGET {
            let b = format!("b{b}");
            broker.bind(bind_req("i1", &b)).await.unwrap();
            broker.unbind(unbind_req("i1", &b)).await.unwrap();
        }
        assert_eq!(broker.queued_roles().await.unwrap(), 3 * QUEUE_TARGET);
        *store.role_delete_takes.lock().unwrap() = Duration::from_millis(10);
        let observer = Observer { deleted: Box::new(|| {}), failed: Box::new(|| {}) };
        let pacing = Pacing { busy_share: 0.1, poll: Duration::from_secs(1), at_most: Duration::ZERO };
        let reaper = tokio::spawn(run(broker.clone(), pacing, observer, Arc::new(OsbActivity::default())));
        tokio::time::sleep(Duration::from_secs(100)).await;
        let halfway = broker.queued_roles().await.unwrap();
        assert!(halfway < 2 * QUEUE_TARGET, "{halfway} left after 100 s: not faster than the share");
        tokio::time::sleep(Duration::from_secs(120)).await;
        reaper.abort();
        assert_eq!(broker.queued_roles().await.unwrap(), 0);
    }

    #[test]
    fn the_pause_keeps_etcd_busy_for_at_most_the_share() {
        let took = Duration::from_millis(600);
        assert_eq!(pause_after(took, 0.1), Duration::from_millis(5400));
        assert_eq!(pause_after(took, 0.5), took);
        assert_eq!(pause_after(took, 1.0), Duration::ZERO);
    }
}

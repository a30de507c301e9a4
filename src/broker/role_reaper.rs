//! The role reaper: a background task that deletes the roles unbinds and deprovisions queue
//! (see [`super::role_deletions`] for why they are queued).
//!
//! It walks the queue one entry at a time and rests between deletions so that it keeps etcd
//! busy for at most `busy_share` of the time: each RoleDelete holds etcd's write lock for a time
//! that grows with the number of users, and tenants' writes wait meanwhile. It wakes as soon as
//! this broker queues a role, and polls for roles queued elsewhere. Each deletion waits for a
//! pause in this broker's OSB traffic ([`QUIET`] without a request, for at most
//! `role_reaper.yield_seconds`), so the stall lands between platform requests rather than in
//! one. Every broker instance runs one; two reapers on the same entry are harmless (deleting a
//! missing role is fine, and the entry is removed by compare-and-swap).

use std::sync::Arc;
use std::time::{Duration, Instant};

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

/// How long the OSB API must have been idle before a deletion starts.
pub const QUIET: Duration = Duration::from_millis(500);

/// Waits until `activity` has been quiet for [`QUIET`], or `at_most` has passed (a broker that
/// is never idle still drains its queue, one deletion per `at_most`).
pub async fn wait_for_quiet(activity: &OsbActivity, at_most: Duration) {
    let deadline = tokio::time::Instant::now() + at_most;
    loop {
        let (quiet, now) = (activity.quiet_for(), tokio::time::Instant::now());
        if quiet >= QUIET || now >= deadline {
            return;
        }
        tokio::time::sleep((QUIET - quiet).min(deadline - now)).await;
    }
}

/// Runs forever; meant to be raced against the servers.
pub async fn run(broker: Arc<EtcdBroker>, pacing: Pacing, observer: Observer, activity: Arc<OsbActivity>) {
    let Pacing { busy_share, poll, at_most } = pacing;
    let mut after: Option<String> = None;
    let mut pass_failed = false;
    loop {
        wait_for_quiet(&activity, at_most).await;
        let started = Instant::now();
        match broker.delete_next_queued_role(after.as_deref()).await {
            Ok(QueueStep::Deleted { key }) => {
                (observer.deleted)();
                after = Some(key);
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
        tokio::time::sleep(pause_after(started.elapsed(), busy_share)).await;
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
        wait_for_quiet(&activity, Duration::from_secs(60)).await;
        assert!(started.elapsed() < Duration::from_millis(1));
        // A request that never ends: the wait gives up after `at_most`.
        let _busy = activity.begin();
        let started = tokio::time::Instant::now();
        wait_for_quiet(&activity, Duration::from_secs(3)).await;
        assert_eq!(started.elapsed(), Duration::from_secs(3));
    }

    #[test]
    fn the_pause_keeps_etcd_busy_for_at_most_the_share() {
        let took = Duration::from_millis(600);
        assert_eq!(pause_after(took, 0.1), Duration::from_millis(5400));
        assert_eq!(pause_after(took, 0.5), took);
        assert_eq!(pause_after(took, 1.0), Duration::ZERO);
    }
}

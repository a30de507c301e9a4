//! How busy the OSB API is right now: requests in flight and when the last one ended.
//!
//! The role reaper reads it to delete roles in the gaps between platform requests: each
//! RoleDelete stalls every etcd write for a time that grows with the number of users (0.6 s at
//! 100,000), and a stall in the middle of a provision or bind is what a platform notices.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

// tokio's clock, so tests with paused time see the same time as the reaper's sleeps.
use tokio::time::Instant;

/// Shared by the HTTP layer (which reports requests) and the role reaper (which waits for quiet).
#[derive(Debug)]
pub struct OsbActivity {
    /// What `last_end` counts from.
    origin: Instant,
    in_flight: AtomicUsize,
    /// Nanoseconds from `origin` to the end of the latest request (0: none yet).
    last_end: AtomicU64,
}

impl Default for OsbActivity {
    fn default() -> Self {
        Self { origin: Instant::now(), in_flight: AtomicUsize::new(0), last_end: AtomicU64::new(0) }
    }
}

impl OsbActivity {
    /// A request starts; it counts as in flight until the guard is dropped.
    pub fn begin(&self) -> RequestGuard<'_> {
        self.in_flight.fetch_add(1, Ordering::AcqRel);
        RequestGuard(self)
    }

    /// How long no request has been in flight (zero while one is).
    pub fn quiet_for(&self) -> Duration {
        if self.in_flight.load(Ordering::Acquire) > 0 {
            return Duration::ZERO;
        }
        let last_end = Duration::from_nanos(self.last_end.load(Ordering::Acquire));
        self.origin.elapsed().saturating_sub(last_end)
    }
}

/// Marks one request in flight; see [`OsbActivity::begin`].
pub struct RequestGuard<'a>(&'a OsbActivity);

impl Drop for RequestGuard<'_> {
    fn drop(&mut self) {
        let now = u64::try_from(self.0.origin.elapsed().as_nanos()).unwrap_or(u64::MAX);
        self.0.last_end.fetch_max(now, Ordering::AcqRel);
        self.0.in_flight.fetch_sub(1, Ordering::AcqRel);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quiet_is_zero_while_a_request_is_in_flight_and_grows_after() {
        let activity = OsbActivity::default();
        let request = activity.begin();
        std::thread::sleep(Duration::from_millis(5));
        assert_eq!(activity.quiet_for(), Duration::ZERO);
        drop(request);
        std::thread::sleep(Duration::from_millis(20));
        let quiet = activity.quiet_for();
        assert!(quiet >= Duration::from_millis(20) && quiet < Duration::from_secs(5), "{quiet:?}");
        let _again = activity.begin();
        assert_eq!(activity.quiet_for(), Duration::ZERO);
    }
}

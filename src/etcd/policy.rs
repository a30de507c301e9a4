//! Every deadline, back-off and limit of the etcd transport, in one place so their interplay
//! can be checked at a glance.
//!
//! How they combine, for one store call:
//! 1. A get or commit waits in its connection's queue for the next batch ([`MAX_READ_BATCH`],
//!    [`MAX_COMMIT_BATCH`], up to [`MAX_BATCHES_IN_FLIGHT`] batches at once), and gives up after
//!    [`BATCHED_TIMEOUT`]: one [`REQUEST_TIMEOUT`] for the batch in flight when it arrived, one
//!    for its own. Other calls are sent at once.
//! 2. Each attempt of a request is given up after [`REQUEST_TIMEOUT`] and is not retried: the
//!    broker answers 503. A read's copies (step 4) share its attempt's deadline.
//! 3. The balancer sends a request only to endpoints whose health check answered (within
//!    [`PROBE_TIMEOUT`]), while one does. A request with no answer after [`SLOW_ANSWER`] takes
//!    its endpoint out of use until a probe answers again; failing probes repeat after
//!    [`FIRST_PROBE_BACKOFF`], doubling up to [`MAX_PROBE_BACKOFF`]. With no endpoint
//!    answering, a request goes to one anyway, asks for a probe at once, and fails when that
//!    probe fails ([`PROBE_TIMEOUT`]), long before [`REQUEST_TIMEOUT`].
//! 4. A read with no answer after [`HEDGE_AFTER`] (later than [`SLOW_ANSWER`], so its endpoint
//!    is usually out of use by then) is sent again, at most once per other endpoint; a write
//!    is sent again at the same moment, after the write fence moved (`fence.rs`), dropping
//!    the copy before.
//! 5. A request that reached no endpoint is sent again [`FAILOVER_ATTEMPTS_PER_ENDPOINT`] times
//!    per other endpoint, [`FAILOVER_PAUSE`] apart. One refused because auth changed under it
//!    is sent again up to [`OLD_REVISION_RETRIES`] times after a short random pause
//!    ([`stale_auth_pause`]), and after [`QUIET_AUTH_AFTER`] refusals it holds this broker's
//!    own auth changes back while it goes through. Commits and this broker's quick auth
//!    changes wait for each other, at most [`SIDE_PATIENCE`] (`sides.rs`).
//!
//! So a call answers within [`BATCHED_TIMEOUT`] (batched) or one [`REQUEST_TIMEOUT`] plus the
//! short retries of step 5, and an endpoint that stops costs the requests already sent to it
//! [`HEDGE_AFTER`] each (plus a fence move for a write), when other endpoints are listed.

use std::time::Duration;

/// How long dialling one endpoint may take.
pub(crate) const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// HTTP/2 keep-alive pings on idle connections, and how long one may go unanswered: a dead
/// peer is noticed between requests, not by the next request.
pub(crate) const KEEP_ALIVE_INTERVAL: Duration = Duration::from_secs(30);
pub(crate) const KEEP_ALIVE_TIMEOUT: Duration = Duration::from_secs(10);
/// A watch silent this long is asked for its progress, which a live etcd (3.4 and later)
/// answers at once; one still silent after as long again ends in an error, and its follower
/// opens another. A member that froze would otherwise hold the watch until keep-alive gives
/// up (`KEEP_ALIVE_INTERVAL` + `KEEP_ALIVE_TIMEOUT`).
pub(crate) const WATCH_PROBE: Duration = Duration::from_secs(5);

/// How long one attempt of an etcd request may take, the copies of a read included; a request
/// that times out is not retried, so the broker answers 503.
pub(crate) const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a caller waits for its batched request: one [`REQUEST_TIMEOUT`] for the batch in
/// flight when it arrived, one for its own.
pub(crate) const BATCHED_TIMEOUT: Duration = Duration::from_secs(2 * REQUEST_TIMEOUT.as_secs());

/// How long a health probe may take before its endpoint counts as not answering.
pub(crate) const PROBE_TIMEOUT: Duration = Duration::from_secs(1);
/// How long an endpoint may answer nothing, its probes included, before it counts as not
/// answering: a stopped etcd answers nothing; a busy one answers late, but something now and
/// then. A request in flight when etcd stops fails after about this long.
pub(crate) const SILENCE: Duration = Duration::from_secs(3);
/// How long a request may wait for its answer before its endpoint is probed (and not used
/// while the probe has no answer). Longer than etcd takes for any of the broker's requests
/// when it is healthy, bcrypt included, so a busy endpoint is rarely probed.
pub(crate) const SLOW_ANSWER: Duration = Duration::from_secs(2);
/// The wait before probing a failing endpoint again after its first failed probe; doubled
/// after each further one.
pub(crate) const FIRST_PROBE_BACKOFF: Duration = Duration::from_millis(500);
/// The longest wait between two probes of a failing endpoint: one that comes back is used
/// again within this.
pub(crate) const MAX_PROBE_BACKOFF: Duration = Duration::from_secs(5);

/// How long a read waits for its answer before it is sent to another endpoint as well: past
/// the moment its endpoint is taken out of use for not answering ([`SLOW_ANSWER`]; that watch
/// starts when the request leaves the balancer, a little later), so the balancer usually
/// picks one that answers.
pub(crate) const HEDGE_AFTER: Duration = SLOW_ANSWER.saturating_add(Duration::from_millis(500));

/// Sends of a request that reached no endpoint, per other endpoint.
pub(crate) const FAILOVER_ATTEMPTS_PER_ENDPOINT: usize = 3;
/// Pause between failover attempts, so the balancer can mark a dead endpoint.
pub(crate) const FAILOVER_PAUSE: Duration = Duration::from_millis(20);
/// Auth changes can keep coming while the broker binds at full speed; this bounds the chase.
pub(crate) const OLD_REVISION_RETRIES: usize = 30;
/// How long the operators' tools (and the bench and soak) keep resending a request refused
/// because auth changed: `OLD_REVISION_RETRIES` sends take about 1.5 s, which a role reaper
/// draining hundreds of roles outlasts.
pub(crate) const TOOLS_STALE_AUTH_PATIENCE: Duration = Duration::from_secs(60);
/// Refusals of one request before it holds this broker's auth changes back.
pub(crate) const QUIET_AUTH_AFTER: usize = 3;
/// The longest a commit waits for this broker's quick auth changes in flight, or one of them
/// for the commits in flight (`sides.rs`): about ten times either's usual time, so the gate
/// keeps them apart on a busy machine too, while a request stuck on a member that stopped
/// holds the other side back this long and not for its whole timeout.
pub(crate) const SIDE_PATIENCE: Duration = Duration::from_millis(50);

/// Most keys read by one batched read: far below etcd's default `--max-txn-ops` (128), and 16
/// of the largest records (a 64 KB request body stored twice) stay under gRPC's 4 MB answer
/// limit. A batch etcd refuses anyway is read key by key.
pub(crate) const MAX_READ_BATCH: usize = 16;
/// Most commits in one batched write: the broker's largest commits write two records (a
/// 64 KB request body stored twice), and 8 of them stay under etcd's default
/// `--max-request-bytes` (1.5 MiB). A batch etcd refuses anyway is sent commit by commit.
pub(crate) const MAX_COMMIT_BATCH: usize = 8;
/// Most batches of one kind in flight per connection: a second starts only when a full batch
/// waits, so a slow batch does not hold everything else back.
pub(crate) const MAX_BATCHES_IN_FLIGHT: usize = 4;

// How the deadlines must nest, checked when the crate compiles: a copy of a read goes out after
// its endpoint is out of use and has time to answer; a probe is quicker than a slow answer; a
// batched call outlasts the batch before it and its own.
const _: () = assert!(SLOW_ANSWER.as_millis() < HEDGE_AFTER.as_millis());
const _: () = assert!(HEDGE_AFTER.as_millis() < REQUEST_TIMEOUT.as_millis());
const _: () = assert!(PROBE_TIMEOUT.as_millis() < SLOW_ANSWER.as_millis());
const _: () = assert!(SLOW_ANSWER.as_millis() + PROBE_TIMEOUT.as_millis() <= SILENCE.as_millis());
const _: () = assert!(FIRST_PROBE_BACKOFF.as_millis() <= MAX_PROBE_BACKOFF.as_millis());
const _: () = assert!(BATCHED_TIMEOUT.as_millis() >= 2 * REQUEST_TIMEOUT.as_millis());

/// The pause before the `attempt`th resend of a request refused because auth changed: up to
/// 2^attempt ms (capped at 64 ms), uniformly random, so it does not meet the next change of
/// the other writers head on.
pub(crate) fn stale_auth_pause(attempt: usize) -> Duration {
    let mut byte = [0u8; 2];
    openssl::rand::rand_bytes(&mut byte).expect("OpenSSL's random generator failed");
    let cap = 1u64 << attempt.min(6);
    Duration::from_micros(u64::from(u16::from_le_bytes(byte)) * cap * 1000 / 65_536)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stale_auth_pauses_stay_under_their_cap() {
        for attempt in 0..40 {
            let cap = Duration::from_millis(1 << attempt.min(6));
            assert!(stale_auth_pause(attempt) <= cap, "attempt {attempt}");
        }
    }
}

//! Every limit, deadline and buffer of the proxy, in one place so that their interplay can be
//! reviewed at a glance.

use std::time::Duration;

/// Tokens remembered with their users ([`crate::caller::Tokens`]): about 100 bytes each, so
/// at most ~10 MB; a forgotten token only makes its holder a tenant of unknown identity.
pub const MAX_TOKENS: usize = 100_000;

/// Dialling one etcd endpoint; a dead endpoint fails a request after this, not after the
/// client's own deadline.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);

/// HTTP/2 pings towards etcd, so that a connection to a vanished endpoint is noticed even while
/// only watches are open on it.
pub const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(10);
/// How long a ping may go unanswered before the connection is closed.
pub const KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(5);

/// How often each etcd endpoint that answers is probed (etcd's gRPC health check): one that
/// stops (a frozen or partitioned member) is left out of the balancing within about this
/// plus the broker's 3 s of silence, before many requests wait on it. A forwarded request
/// is not sent again elsewhere (a Txn or a Put is not safe to repeat), so the ones already
/// sent to it wait for their client's deadline.
pub const HEARTBEAT: Duration = Duration::from_secs(1);

/// The largest request the proxy decodes. etcd refuses requests above its own
/// `--max-request-bytes` (1.5 MiB by default) with its own error, so the proxy lets larger
/// ones through to etcd for that answer, up to this bound on its memory per request.
pub const MAX_REQUEST_BYTES: usize = 64 * 1024 * 1024;

/// The largest response from etcd the proxy decodes: etcd's clients accept up to 2 GiB - 1
/// (a Range of many keys), and so does the proxy, as they would directly.
pub const MAX_RESPONSE_BYTES: usize = i32::MAX as usize;

/// One request of the proxy's own client (the records of lease owners, the broker's binding
/// records), retries included.
pub const RECORD_TIMEOUT: Duration = Duration::from_secs(5);

/// One request of the proxy's own client, sent again while etcd refuses it for an auth change
/// that happened meanwhile (the broker changes users and roles all the time), within
/// [`RECORD_TIMEOUT`]; `timed_out` names the caller's error for a request that took longer.
pub async fn own_request<T, E, F, Fut>(
    client: &etcd_client::Client,
    op: F,
    timed_out: fn(Duration) -> E,
) -> Result<T, E>
where
    E: From<etcd_client::Error>,
    F: Fn(etcd_client::Client) -> Fut,
    Fut: std::future::Future<Output = Result<T, etcd_client::Error>>,
{
    let call = etcd_broker::etcd::resend_on_auth_change(|| op(client.clone()));
    match tokio::time::timeout(RECORD_TIMEOUT, call).await {
        Ok(result) => Ok(result?),
        Err(_) => Err(timed_out(RECORD_TIMEOUT)),
    }
}

/// Keep-alive requests read ahead of their ownership check.
pub const KEEPALIVE_QUEUE: usize = 16;

/// How long a stopping proxy lets calls in flight finish (bpm gives a job 20 s).
pub const DRAIN_TIMEOUT: Duration = Duration::from_secs(15);

/// Revoked users remembered ([`crate::caller::Tokens::revoke`]); past it the oldest tenth is
/// forgotten: users deleted from etcd long ago, whose tokens and logins etcd refuses itself.
pub const MAX_REVOKED: usize = 100_000;

/// How long the watch of the broker's binding records waits before it starts again after a
/// failure (etcd unreachable); revocations meanwhile are applied when it resumes.
pub const REVOCATION_RETRY: Duration = Duration::from_secs(1);

/// How long a write admitted under a quota keeps its reservation after etcd answered, at
/// most: a safety net only. The watch shows a write within milliseconds, which releases it;
/// a Txn whose branch taken put none of the instance's keys is released when answered; one
/// the watch never shows otherwise is released by the next event under the prefix, or after
/// this hold. Short holds would let a lagging watch (a loaded proxy) admit writes beyond the
/// quota.
pub const QUOTA_RESERVATION_HOLD: Duration = Duration::from_secs(30);

/// How long the quotas wait before counting an instance again, or watching the broker's
/// instance records again, after a failure; requests meanwhile wait for the count (at most
/// [`RECORD_TIMEOUT`], then UNAVAILABLE).
pub const QUOTA_RETRY: Duration = Duration::from_secs(1);

/// How long a write that does not fit its quota waits for the instance's watch to catch up
/// with etcd (a progress request) before it is refused: a delete answered just before is
/// then counted, whatever the watch's delay.
pub const QUOTA_CATCH_UP: Duration = Duration::from_secs(1);

/// Instances whose quotas are remembered; past it, those without quotas are forgotten (read
/// again on their next request).
pub const MAX_QUOTA_INSTANCES: usize = 100_000;

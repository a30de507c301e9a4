//! How one etcd request is sent: bounded in time, retried when that is safe, a slow read
//! copied to another endpoint ([`hedged`]) and a slow write sent again through another one
//! ([`resent`]). The deadlines and pauses are in [`super::policy`].

use std::future::Future;
use std::sync::atomic::Ordering;
use std::time::Duration;

use etcd_client::{AuthClient, Client, KvClient};

use super::errors::{is_old_auth_revision, never_reached, no_answer_within};
use super::policy::{
    stale_auth_pause, FAILOVER_ATTEMPTS_PER_ENDPOINT, FAILOVER_PAUSE, HEDGE_AFTER, OLD_REVISION_RETRIES,
    QUIET_AUTH_AFTER, REQUEST_TIMEOUT, TOOLS_STALE_AUTH_PATIENCE,
};
use super::sides::Side;
use super::EtcdStore;

/// What an etcd request does: that decides whether it may be sent twice.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Call {
    /// Only reads keys: sent to another endpoint as well when its own is slow to answer
    /// ([`hedged`]), since reading twice changes nothing.
    Read,
    /// Writes keys: sent once, since etcd may still apply it after a slow answer.
    Write,
    /// Writes keys behind the write fence at the revision given (`fence.rs`): when its
    /// endpoint is slow to answer, the fence is moved past that revision, after which the
    /// first copy can never apply, and it is sent again ([`resent`]).
    Fenced(i64),
    /// Changes users or roles: sent again like [`Call::Fenced`], without a fence (etcd's auth
    /// calls take no compare; a second copy finds the first one's work done, and the broker
    /// takes "already exists" or "not found" as done); kept apart from this broker's commits
    /// (`sides.rs`), and held back while a request that auth changes keep refusing goes
    /// through ([`EtcdStore::auth_gate`]).
    AuthChange,
    /// A [`Call::AuthChange`] that keeps etcd busy long before or while it applies (a
    /// password's bcrypt hash, a RoleDelete's walk over every user): commits are not held
    /// back for that long, so it is not kept apart from them.
    SlowAuthChange,
}

/// The two failures after which a request is sent again, whatever it does: etcd did not apply
/// it either way.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Retry {
    /// Refused because auth changed between accepting and applying it.
    StaleAuth,
    /// It reached no endpoint.
    Unreached,
}

/// One request's retries so far: the single retry policy of every etcd request the broker
/// and its tools send.
struct Retries {
    stale_auth: usize,
    unreached: usize,
    /// Sends of a request that reached no endpoint: a few per other endpoint.
    max_unreached: usize,
}

impl Retries {
    fn new(endpoints: usize) -> Self {
        let max_unreached = FAILOVER_ATTEMPTS_PER_ENDPOINT * endpoints.saturating_sub(1);
        Self { stale_auth: 0, unreached: 0, max_unreached }
    }

    /// Whether to send the request again after `error`; if so, waits the pause first.
    async fn again(&mut self, error: &etcd_client::Error) -> Option<Retry> {
        if is_old_auth_revision(error) && self.stale_auth < OLD_REVISION_RETRIES {
            self.stale_auth += 1;
            tokio::time::sleep(stale_auth_pause(self.stale_auth)).await;
            Some(Retry::StaleAuth)
        } else if never_reached(error) && self.unreached < self.max_unreached {
            // The request never left, so sending it to the next endpoint is safe.
            self.unreached += 1;
            tokio::time::sleep(FAILOVER_PAUSE).await;
            Some(Retry::Unreached)
        } else {
            None
        }
    }
}

/// Runs `op` until it succeeds or fails in a way [`Retries`] does not retry, for requests
/// `endpoints` endpoints may serve.
async fn retrying<T, F, Fut>(endpoints: usize, op: F) -> Result<T, etcd_client::Error>
where
    F: Fn() -> Fut,
    Fut: Future<Output = Result<T, etcd_client::Error>>,
{
    let mut retries = Retries::new(endpoints);
    loop {
        match op().await {
            Err(e) if retries.again(&e).await.is_some() => {}
            result => return result,
        }
    }
}

/// Sends a request again while etcd refuses it because auth changed meanwhile: for the
/// operators' tools, whose plain clients meet the broker's binds, unbinds and role deletions.
/// For up to [`TOOLS_STALE_AUTH_PATIENCE`], not a number of times: a tool cannot hold the
/// brokers' auth changes back as a broker holds its own, and a role reaper draining its queue
/// changes auth back to back for many seconds.
pub async fn resend_on_auth_change<T, F, Fut>(op: F) -> Result<T, etcd_client::Error>
where
    F: Fn() -> Fut,
    Fut: Future<Output = Result<T, etcd_client::Error>>,
{
    let until = tokio::time::Instant::now() + TOOLS_STALE_AUTH_PATIENCE;
    loop {
        match retrying(1, &op).await {
            Err(e) if is_old_auth_revision(&e) && tokio::time::Instant::now() < until => {}
            result => return result,
        }
    }
}

impl EtcdStore {
    /// Runs a request of the login with the retries of every other request ([`Retries`]):
    /// sent again while it reaches no endpoint (one that just failed may still be picked until
    /// its failure takes it out of use) or auth changes under it.
    pub(super) async fn until_reached<T, F, Fut>(&self, op: F) -> Result<T, etcd_client::Error>
    where
        F: Fn() -> Fut,
        Fut: Future<Output = Result<T, etcd_client::Error>>,
    {
        retrying(self.endpoints.len(), op).await
    }

    /// Runs one etcd request, retrying the two failures that are safe to retry.
    ///
    /// etcd answers "auth revision is old" when a user or role change landed between accepting
    /// the request and applying it; each bind and unbind makes such changes, so under load this
    /// is routine. With simple tokens, sending the request again is enough (one round trip);
    /// JWTs are refreshed first, once for all concurrent requests (see
    /// [`super::connection::Connection`]).
    ///
    /// Most refusals were of this broker's own commits by its own auth changes (a bind's adds
    /// and grants, an unbind's user deletion), each costing a pause and a second send. So
    /// commits ([`Call::Fenced`]) and quick auth changes ([`Call::AuthChange`]) are kept
    /// apart (`sides.rs`; commits still overlap each other): this broker's own quick changes
    /// do not refuse its commits. Slow auth changes ([`Call::SlowAuthChange`]: a password's
    /// bcrypt, a RoleDelete) and other brokers' changes still can, and retrying alone can
    /// starve (at 64 concurrent binds etcd applies auth changes faster than a request gets
    /// through): a request refused [`QUIET_AUTH_AFTER`] times waits until this broker's auth
    /// changes in flight are done and keeps new ones back while it is sent again
    /// ([`EtcdStore::auth_gate`]).
    ///
    /// A request that could not reach an endpoint is sent again, a few times per endpoint; a
    /// read whose endpoint is slow to answer is sent to another one as well ([`hedged`]).
    pub(super) async fn call<T, F, Fut>(&self, kind: Call, op: F) -> Result<T, etcd_client::Error>
    where
        F: Fn(&Client) -> Fut,
        Fut: Future<Output = Result<T, etcd_client::Error>>,
    {
        let connection = self.connection().await?;
        let client = &connection.client;
        let spare = self.endpoints.len() - 1;
        let resend = &*self.observer.write_resend;
        let send = || async {
            match kind {
                Call::Read if spare > 0 => {
                    hedged(|| op(client), spare, HEDGE_AFTER, &*self.observer.read_copy).await
                }
                Call::Fenced(seen) if spare > 0 => {
                    resent(|| op(client), spare, HEDGE_AFTER, || self.move_fence(seen), resend).await
                }
                Call::AuthChange | Call::SlowAuthChange if spare > 0 => {
                    resent(|| op(client), spare, HEDGE_AFTER, || async { Ok(()) }, resend).await
                }
                _ => bounded(op(client)).await,
            }
        };
        let mut generation = connection.token_generation.load(Ordering::Acquire);
        let mut retries = Retries::new(self.endpoints.len());
        loop {
            let outcome = if retries.stale_auth >= QUIET_AUTH_AFTER {
                let _quiet = self.auth_gate.write().await;
                send().await
            } else {
                match kind {
                    Call::AuthChange => {
                        let _changing = self.auth_gate.read().await;
                        let _side = self.sides.enter(Side::AuthChanges).await;
                        send().await
                    }
                    Call::SlowAuthChange => {
                        let _changing = self.auth_gate.read().await;
                        send().await
                    }
                    Call::Fenced(_) => {
                        let _side = self.sides.enter(Side::Commits).await;
                        send().await
                    }
                    Call::Read | Call::Write => send().await,
                }
            };
            match outcome {
                Err(e) => match retries.again(&e).await {
                    Some(Retry::StaleAuth) => {
                        (self.observer.stale_auth)();
                        if connection.signed_tokens {
                            generation = connection.refresh_token_once(generation).await?;
                        }
                    }
                    Some(Retry::Unreached) => {}
                    None => return Err(e),
                },
                answer => return answer,
            }
        }
    }

    /// [`Self::call`] with the KV service only, for a request of `kind` (a read or a write): a
    /// request clones one service's channel, not the whole client's nine.
    pub(super) async fn kv<T, F, Fut>(&self, kind: Call, op: F) -> Result<T, etcd_client::Error>
    where
        F: Fn(KvClient) -> Fut,
        Fut: Future<Output = Result<T, etcd_client::Error>>,
    {
        self.call(kind, |c| op(c.kv_client())).await
    }

    /// [`Self::call`] with the auth service only, for a quick user or role change.
    pub(super) async fn auth<T, F, Fut>(&self, op: F) -> Result<T, etcd_client::Error>
    where
        F: Fn(AuthClient) -> Fut,
        Fut: Future<Output = Result<T, etcd_client::Error>>,
    {
        self.auth_as(Call::AuthChange, op).await
    }

    /// [`Self::call`] with the auth service only, for a change of `kind` (quick or slow).
    pub(super) async fn auth_as<T, F, Fut>(&self, kind: Call, op: F) -> Result<T, etcd_client::Error>
    where
        F: Fn(AuthClient) -> Fut,
        Fut: Future<Output = Result<T, etcd_client::Error>>,
    {
        self.call(kind, |c| op(c.auth_client())).await
    }

    /// [`Self::call`] with the auth service, for a request that only reads users or roles.
    pub(super) async fn auth_read<T, F, Fut>(&self, op: F) -> Result<T, etcd_client::Error>
    where
        F: Fn(AuthClient) -> Fut,
        Fut: Future<Output = Result<T, etcd_client::Error>>,
    {
        self.call(Call::Read, |c| op(c.auth_client())).await
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
/// Sends a write, and each time `after` passes without an answer, `prepare`s and sends it
/// again, at most `spare` more times, all within one [`REQUEST_TIMEOUT`]: by then the silent
/// endpoint is out of use (as for [`hedged`]), so the balancer picks one that answers. Unlike
/// a read's copies, each copy is dropped (its stream cancelled) once the next goes out:
/// `prepare` makes sure it cannot apply any more (moves the write fence), or that applying it
/// late changes nothing. An answer that arrives while `prepare` runs is still the answer; an
/// error of `prepare` is. `resent` hears of each copy sent again.
async fn resent<T, F, Fut, P, PFut>(
    op: F,
    spare: usize,
    after: Duration,
    prepare: P,
    resent: &(dyn Fn() + Sync),
) -> Result<T, etcd_client::Error>
where
    F: Fn() -> Fut,
    Fut: Future<Output = Result<T, etcd_client::Error>>,
    P: Fn() -> PFut,
    PFut: Future<Output = Result<(), etcd_client::Error>>,
{
    let deadline = tokio::time::Instant::now() + REQUEST_TIMEOUT;
    let mut spare = spare;
    loop {
        let attempt = bounded_until(deadline, op());
        tokio::pin!(attempt);
        if spare == 0 {
            return attempt.await;
        }
        tokio::select! {
            biased;
            answer = &mut attempt => return answer,
            () = tokio::time::sleep(after) => {}
        }
        tokio::select! {
            biased;
            answer = &mut attempt => return answer,
            prepared = bounded_until(deadline, prepare()) => prepared?,
        }
        spare -= 1;
        resent();
    }
}

/// One etcd request, given up after [`REQUEST_TIMEOUT`] (dropping it cancels its stream), with
/// an error that says so. tonic's own deadline (`ConnectOptions::with_timeout`) reports only
/// "Timeout expired"; an operator reading the 503 should learn that etcd stopped answering.
pub(super) async fn bounded<T>(
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

#[cfg(test)]
mod tests {
    use std::sync::atomic::AtomicUsize;
    use std::sync::Arc;

    use super::super::errors::OLD_AUTH_REVISION;
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

    /// A `prepare` for [`resent`] that takes `wait` seconds, counts its runs and answers `answer`.
    fn prepare<'a>(
        runs: &'a AtomicUsize,
        wait: u64,
        answer: fn() -> Result<(), etcd_client::Error>,
    ) -> impl Fn() -> futures_util::future::BoxFuture<'static, Result<(), etcd_client::Error>> + 'a {
        move || {
            runs.fetch_add(1, Ordering::SeqCst);
            Box::pin(async move {
                tokio::time::sleep(Duration::from_secs(wait)).await;
                answer()
            })
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_prompt_write_is_sent_once_and_nothing_prepared() {
        let (copies, runs) = (Copies::default(), AtomicUsize::new(0));
        let answer = resent(read(&copies, &[1, 0], Ok), 2, AFTER, prepare(&runs, 0, || Ok(())), &|| {}).await;
        assert_eq!(answer.unwrap(), 0);
        assert_eq!((copies.sent.load(Ordering::SeqCst), runs.load(Ordering::SeqCst)), (1, 0));
    }

    #[tokio::test(start_paused = true)]
    async fn a_silent_write_is_prepared_dropped_and_sent_again() {
        let (copies, runs, resends) = (Copies::default(), AtomicUsize::new(0), AtomicUsize::new(0));
        let started = tokio::time::Instant::now();
        let counted = || {
            resends.fetch_add(1, Ordering::SeqCst);
        };
        // The first copy would answer after 60 s; preparing takes 1 s; the second answers at once.
        let answer = resent(read(&copies, &[60, 0], Ok), 2, AFTER, prepare(&runs, 1, || Ok(())), &counted);
        assert_eq!(answer.await.unwrap(), 1);
        assert_eq!(started.elapsed(), AFTER + Duration::from_secs(1), "sent again once prepared");
        assert_eq!(runs.load(Ordering::SeqCst), 1);
        assert_eq!(resends.load(Ordering::SeqCst), 1);
        assert_eq!(copies.ended.load(Ordering::SeqCst), 2, "the silent copy was dropped, not left running");
    }

    #[tokio::test(start_paused = true)]
    async fn an_answer_while_preparing_is_the_answer() {
        let (copies, runs) = (Copies::default(), AtomicUsize::new(0));
        // The first copy answers at 3 s, while preparing (from 2 s to 7 s) is under way.
        let answer = resent(read(&copies, &[3, 0], Ok), 2, AFTER, prepare(&runs, 5, || Ok(())), &|| {}).await;
        assert_eq!(answer.unwrap(), 0);
        assert_eq!(copies.sent.load(Ordering::SeqCst), 1, "not sent again");
    }

    #[tokio::test(start_paused = true)]
    async fn a_failed_preparation_is_the_answer_and_nothing_is_sent_again() {
        let (copies, runs) = (Copies::default(), AtomicUsize::new(0));
        let answer =
            resent(read(&copies, &[60, 0], Ok), 2, AFTER, prepare(&runs, 0, || Err(unavailable(9))), &|| {});
        assert!(answer.await.unwrap_err().to_string().contains("copy 9 failed"));
        assert_eq!(copies.sent.load(Ordering::SeqCst), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn resends_stop_at_spare_and_share_one_deadline() {
        let (copies, runs, started) = (Copies::default(), AtomicUsize::new(0), tokio::time::Instant::now());
        let answer =
            resent(read(&copies, &[60, 60, 60, 60], Ok), 2, AFTER, prepare(&runs, 0, || Ok(())), &|| {});
        assert!(answer.await.unwrap_err().to_string().contains("10 s"));
        assert_eq!(copies.sent.load(Ordering::SeqCst), 3, "one write and two resends");
        assert_eq!(started.elapsed(), REQUEST_TIMEOUT, "the resends had no time of their own");
    }
}

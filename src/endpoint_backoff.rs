//! An endpoint of a balanced etcd channel that stays out of the balancer's picks for a while
//! after a request on it failed in transport.
//!
//! Why: the https channel (src/etcd.rs) balances over one tonic `Channel` per endpoint, and a
//! `Channel` always says it is ready (it queues requests in a buffer), also when its endpoint
//! refuses every connection. The balancer then kept picking a dead endpoint for half of the
//! requests, and a broker with a dead member first in its list answered 503s. tonic's own
//! balanced channel (plain http) sees its connections' state and does not need this.
//!
//! An endpoint is only skipped while another endpoint of its channel is not: with all of them
//! failing (a single-member cluster that is down, say), each is tried as before, so requests
//! keep failing fast and the first one after etcd is back gets through.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::time::{Instant, Sleep};

use crate::unpoisoned::lock;

/// How long an endpoint is skipped after its first failure; doubled on each further one.
const FIRST_BACKOFF: Duration = Duration::from_millis(500);
/// The longest an endpoint is skipped: a member that comes back is used again within this,
/// also when the others failed meanwhile (a skipped endpoint waits out its backoff).
const MAX_BACKOFF: Duration = Duration::from_secs(5);

/// The endpoints of one channel: how many have not failed since their last answer.
#[derive(Clone, Default)]
pub struct Endpoints {
    healthy: Arc<AtomicUsize>,
}

impl Endpoints {
    /// No endpoints yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// Wraps one endpoint's service, healthy.
    pub fn add<S>(&self, inner: S) -> EndpointBackoff<S> {
        self.healthy.fetch_add(1, Ordering::SeqCst);
        let health = Health { failures: 0, skipped_until: None, group: self.clone() };
        EndpointBackoff { inner, health: Arc::new(Mutex::new(health)), wait: None }
    }
}

/// The failures of one endpoint in a row, and until when it is skipped.
struct Health {
    failures: u32,
    skipped_until: Option<Instant>,
    group: Endpoints,
}

impl Health {
    fn failed(&mut self, now: Instant) {
        if self.failures == 0 {
            self.group.healthy.fetch_sub(1, Ordering::SeqCst);
        }
        let backoff = FIRST_BACKOFF.saturating_mul(1 << self.failures.min(8)).min(MAX_BACKOFF);
        self.failures = self.failures.saturating_add(1);
        self.skipped_until = Some(now + backoff);
    }

    fn succeeded(&mut self) {
        if self.failures > 0 {
            self.group.healthy.fetch_add(1, Ordering::SeqCst);
        }
        self.failures = 0;
        self.skipped_until = None;
    }

    /// Until when the balancer should not pick this endpoint, if it should not now.
    fn skipped(&self, now: Instant) -> Option<Instant> {
        let others_healthy = self.group.healthy.load(Ordering::SeqCst) > 0;
        self.skipped_until.filter(|until| now < *until && others_healthy)
    }
}

impl Drop for Health {
    fn drop(&mut self) {
        if self.failures == 0 {
            self.group.healthy.fetch_sub(1, Ordering::SeqCst);
        }
    }
}

/// A service that is not ready while its endpoint is backed off (see the module doc); made by
/// [`Endpoints::add`].
pub struct EndpointBackoff<S> {
    inner: S,
    health: Arc<Mutex<Health>>,
    /// The timer that wakes the balancer when the backoff ends.
    wait: Option<Pin<Box<Sleep>>>,
}

impl<S, Request> tower::Service<Request> for EndpointBackoff<S>
where
    S: tower::Service<Request>,
    S::Future: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<S::Response, S::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        let skipped_until = lock(&self.health).skipped(Instant::now());
        if let Some(until) = skipped_until {
            let wait = self.wait.get_or_insert_with(|| Box::pin(tokio::time::sleep_until(until)));
            if wait.deadline() != until {
                wait.as_mut().reset(until);
            }
            if wait.as_mut().poll(cx).is_pending() {
                return Poll::Pending;
            }
        }
        self.wait = None;
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request) -> Self::Future {
        let response = self.inner.call(request);
        let health = self.health.clone();
        Box::pin(async move {
            let result = response.await;
            match &result {
                Ok(_) => lock(&health).succeeded(),
                Err(_) => lock(&health).failed(Instant::now()),
            }
            result
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
    use tower::{Service, ServiceExt};

    /// Fails while `down` is set; counts its calls.
    #[derive(Clone, Default)]
    struct Flaky {
        down: Arc<AtomicBool>,
        calls: Arc<AtomicUsize>,
    }

    impl Service<()> for Flaky {
        type Response = ();
        type Error = &'static str;
        type Future = std::future::Ready<Result<(), &'static str>>;

        fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
            Poll::Ready(Ok(()))
        }

        fn call(&mut self, _: ()) -> Self::Future {
            self.calls.fetch_add(1, Ordering::SeqCst);
            std::future::ready(if self.down.load(Ordering::SeqCst) { Err("refused") } else { Ok(()) })
        }
    }

    /// Whether the service is ready without waiting.
    fn ready_now<S: Service<()>>(service: &mut S) -> bool {
        let mut cx = Context::from_waker(futures_util::task::noop_waker_ref());
        matches!(service.poll_ready(&mut cx), Poll::Ready(Ok(())))
    }

    #[tokio::test(start_paused = true)]
    async fn a_failed_endpoint_is_skipped_for_a_growing_while_and_used_again_once_it_answers() {
        let (flaky, endpoints) = (Flaky::default(), Endpoints::new());
        let mut endpoint = endpoints.add(flaky.clone());
        let _other = endpoints.add(Flaky::default());
        assert!(ready_now(&mut endpoint), "healthy at first");
        flaky.down.store(true, Ordering::SeqCst);
        assert!(endpoint.ready().await.unwrap().call(()).await.is_err());
        assert!(!ready_now(&mut endpoint), "skipped after a failure");
        tokio::time::advance(FIRST_BACKOFF - Duration::from_millis(1)).await;
        assert!(!ready_now(&mut endpoint));
        // The wait ends by itself: a balancer polling it is woken.
        let started = Instant::now();
        assert!(endpoint.ready().await.unwrap().call(()).await.is_err(), "tried again, still down");
        assert!(started.elapsed() <= Duration::from_millis(1));
        tokio::time::advance(FIRST_BACKOFF).await;
        assert!(!ready_now(&mut endpoint), "the second failure doubles the backoff");
        tokio::time::advance(FIRST_BACKOFF).await;
        flaky.down.store(false, Ordering::SeqCst);
        assert!(endpoint.ready().await.unwrap().call(()).await.is_ok());
        assert!(ready_now(&mut endpoint), "healthy again after an answer");
        assert_eq!(flaky.calls.load(Ordering::SeqCst), 3, "never called while skipped");
    }

    #[tokio::test(start_paused = true)]
    async fn with_every_endpoint_failing_none_is_skipped() {
        let endpoints = Endpoints::new();
        let (a, b) = (Flaky::default(), Flaky::default());
        let (mut first, mut second) = (endpoints.add(a.clone()), endpoints.add(b.clone()));
        a.down.store(true, Ordering::SeqCst);
        b.down.store(true, Ordering::SeqCst);
        assert!(first.ready().await.unwrap().call(()).await.is_err());
        assert!(!ready_now(&mut first), "skipped while the other may answer");
        assert!(second.ready().await.unwrap().call(()).await.is_err());
        assert!(ready_now(&mut first) && ready_now(&mut second), "both down: both tried");
        b.down.store(false, Ordering::SeqCst);
        assert!(second.ready().await.unwrap().call(()).await.is_ok());
        assert!(!ready_now(&mut first), "one answers again: the other is skipped again");
        drop(second);
        assert!(ready_now(&mut first), "the only endpoint left is never skipped");
    }

    #[test]
    fn the_backoff_is_capped() {
        let endpoint = Endpoints::new().add(());
        let mut health = lock(&endpoint.health);
        let now = Instant::now();
        for _ in 0..40 {
            health.failed(now);
        }
        assert_eq!(health.skipped_until, Some(now + MAX_BACKOFF));
    }
}

//! Requests spread over etcd's endpoints that answer, round-robin, by whichever task sends
//! them: a balancer without a task of its own.
//!
//! Why: tower's `Balance` is one service with one owner, so the channel that every handler
//! clones had to put it behind a `Buffer`, a task that each request was handed to and woken
//! for: one more task hop and wake-up per request, on the proxy's one thread, for nothing but
//! picking an endpoint. Here every clone shares the endpoints and a counter, picks the next
//! usable endpoint itself and sends on a clone of it: the request goes from its handler
//! straight to the endpoint's channel. The endpoints' health
//! ([`etcd_broker::etcd::HealthChecked`]) is shared by their clones, so what one request
//! learns (a failure, an answer too slow) every later pick sees.
//!
//! Round-robin rather than the least loaded of two: `Balance` was given no load (every
//! endpoint weighed 0), so it picked at random; etcd's members serve a tenant's requests alike.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};

use etcd_broker::etcd::HealthChecked;

/// The endpoints of one etcd cluster, each request sent to the next usable one; cheap to
/// clone (clones share the endpoints and the turn).
pub struct RoundRobin<S> {
    endpoints: Arc<[HealthChecked<S>]>,
    turn: Arc<AtomicUsize>,
    /// The endpoint that said it was ready, for the next `call` of this clone (tower's
    /// contract: `poll_ready`, then `call` on the same service).
    picked: Option<HealthChecked<S>>,
}

/// What [`RoundRobin::new`] refuses: with no endpoint there is nothing to send to.
#[derive(Debug, thiserror::Error)]
#[error("no etcd endpoint to balance over")]
pub struct NoEndpoints;

/// What a `call` without a ready endpoint answers: tower's contract was broken (no
/// `poll_ready` first); an error for that request rather than a panic of the proxy.
const CALLED_BEFORE_READY: &str =
    "etcd-broker-proxy: a request to etcd was sent before an endpoint was ready";

impl<S> RoundRobin<S> {
    /// Balances over `endpoints` (at least one).
    pub fn new(endpoints: Vec<HealthChecked<S>>) -> Result<Self, NoEndpoints> {
        if endpoints.is_empty() {
            return Err(NoEndpoints);
        }
        Ok(RoundRobin { endpoints: endpoints.into(), turn: Arc::new(AtomicUsize::new(0)), picked: None })
    }

    /// The endpoint whose turn it is: the next usable one after the last pick, or with none
    /// usable (no probe answered yet, or all failing and not yet found so: see
    /// [`HealthChecked::is_usable`]) the next one, whose readiness then waits for the
    /// endpoints' group to change.
    fn next(&self) -> usize {
        let count = self.endpoints.len();
        let start = self.turn.fetch_add(1, Ordering::Relaxed);
        (0..count)
            .map(|i| start.wrapping_add(i) % count)
            .find(|&i| self.endpoints[i].is_usable())
            .unwrap_or(start % count)
    }
}

impl<S: Clone> Clone for RoundRobin<S> {
    fn clone(&self) -> Self {
        RoundRobin { endpoints: self.endpoints.clone(), turn: self.turn.clone(), picked: None }
    }
}

impl<S, Request> tower::Service<Request> for RoundRobin<S>
where
    S: tower::Service<Request> + Clone,
    S::Future: Send + 'static,
    S::Response: Send + 'static,
    S::Error: Into<tower::BoxError> + Send,
{
    type Response = S::Response;
    type Error = tower::BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<S::Response, tower::BoxError>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        // Polled again (woken, or asked twice): the endpoint picked before keeps its turn
        // while it is usable; one that is not (it failed meanwhile, or none was) is picked again.
        if let Some(picked) = self.picked.as_mut().filter(|picked| picked.is_usable()) {
            return picked.poll_ready(cx);
        }
        let index = self.next();
        self.picked.insert(self.endpoints[index].clone()).poll_ready(cx)
    }

    fn call(&mut self, request: Request) -> Self::Future {
        match self.picked.take() {
            Some(mut picked) => picked.call(request),
            None => Box::pin(std::future::ready(Err(CALLED_BEFORE_READY.into()))),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::AtomicBool;
    use std::time::Duration;

    use etcd_broker::etcd::{Endpoints, Probe};
    use tower::{Service, ServiceExt};

    use super::*;

    /// An endpoint that answers its probe unless `down`, and counts the requests it gets.
    #[derive(Clone, Default)]
    struct Fake {
        down: Arc<AtomicBool>,
        calls: Arc<AtomicUsize>,
    }

    impl Fake {
        fn probe(&self) -> Probe {
            let down = self.down.clone();
            Box::new(move || {
                let answers = !down.load(Ordering::SeqCst);
                Box::pin(async move { answers })
            })
        }

        fn calls(&self) -> usize {
            self.calls.load(Ordering::SeqCst)
        }
    }

    impl Service<()> for Fake {
        type Response = ();
        type Error = &'static str;
        type Future = Pin<Box<dyn Future<Output = Result<(), &'static str>> + Send>>;

        fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
            Poll::Ready(Ok(()))
        }

        fn call(&mut self, _: ()) -> Self::Future {
            self.calls.fetch_add(1, Ordering::SeqCst);
            let down = self.down.load(Ordering::SeqCst);
            Box::pin(async move {
                if down {
                    Err("refused")
                } else {
                    Ok(())
                }
            })
        }
    }

    /// A balancer over `fakes`, each probed as one endpoint of the same group.
    fn balance(fakes: &[Fake]) -> RoundRobin<Fake> {
        let endpoints = Endpoints::new();
        let checked = fakes.iter().map(|fake| endpoints.add("fake".into(), fake.clone(), fake.probe()));
        RoundRobin::new(checked.collect()).unwrap()
    }

    /// Lets the probers run.
    async fn settle() {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    #[tokio::test]
    async fn clones_take_turns_over_the_endpoints_that_answer() {
        let fakes = [Fake::default(), Fake::default(), Fake::default()];
        fakes[1].down.store(true, Ordering::SeqCst);
        let balancer = balance(&fakes);
        settle().await;
        for _ in 0..10 {
            // A clone per request, as the proxy's handlers make them.
            balancer.clone().ready().await.unwrap().call(()).await.unwrap();
        }
        assert_eq!(fakes[1].calls(), 0, "the endpoint that does not answer its probe got a request");
        assert_eq!(fakes[0].calls() + fakes[2].calls(), 10);
        assert!(
            fakes[0].calls().abs_diff(fakes[2].calls()) <= 2,
            "{} and {}",
            fakes[0].calls(),
            fakes[2].calls()
        );
    }

    #[tokio::test]
    async fn a_request_before_any_probe_answered_waits_for_one() {
        let fake = Fake::default();
        let balancer = balance(std::slice::from_ref(&fake));
        // Nothing probed yet: the request waits for the group to change, then goes out.
        let sent = tokio::spawn(async move { balancer.clone().ready().await.unwrap().call(()).await });
        settle().await;
        assert!(sent.is_finished(), "not woken by the probe's answer");
        sent.await.unwrap().unwrap();
        assert_eq!(fake.calls(), 1);
    }

    #[tokio::test]
    async fn a_failed_request_moves_the_next_ones_to_the_other_endpoint() {
        let fakes = [Fake::default(), Fake::default()];
        let balancer = balance(&fakes);
        settle().await;
        fakes[0].down.store(true, Ordering::SeqCst);
        let mut failed = 0;
        for _ in 0..10 {
            failed += usize::from(balancer.clone().ready().await.unwrap().call(()).await.is_err());
        }
        assert!(failed <= 1, "{failed} requests went to the endpoint after its first failure");
        assert!(fakes[1].calls() >= 9);
    }

    #[test]
    fn no_endpoints_is_an_error() {
        assert!(RoundRobin::<Fake>::new(Vec::new()).is_err());
    }

    #[tokio::test]
    async fn a_call_without_a_ready_endpoint_fails_that_request() {
        let mut balancer = balance(&[Fake::default()]);
        let refused = balancer.call(()).await.unwrap_err();
        assert_eq!(refused.to_string(), CALLED_BEFORE_READY);
    }
}

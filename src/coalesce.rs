//! Group commit for requests: the requests that arrive while a batch is in flight go out
//! together as the next batch.
//!
//! Why: a linearizable etcd read costs etcd a read-index round and a gRPC exchange whatever it
//! reads, so under load one request for many keys is far cheaper for the shared cluster (and
//! the broker) than many requests for one key each. A request is never served by a batch sent
//! before it arrived, so a batched read is exactly as fresh as a read of its own; with one
//! request at a time every batch holds one request and nothing waits.
//!
//! Knows nothing about etcd: the caller says how a batch is sent.

use std::future::Future;
use std::sync::{Arc, Mutex, MutexGuard};

use tokio::sync::oneshot;

/// The queue of requests waiting for the next batch, shared by the callers of one connection.
pub struct Coalescer<Request, Response> {
    state: Mutex<State<Request, Response>>,
    max_batch: usize,
}

struct State<Request, Response> {
    waiting: Vec<(Request, oneshot::Sender<Response>)>,
    /// A sender task exists: it takes the waiting requests once its batch is answered.
    sending: bool,
}

impl<Request: Send + 'static, Response: Send + 'static> Coalescer<Request, Response> {
    /// An empty queue whose batches hold at most `max_batch` requests.
    pub fn new(max_batch: usize) -> Arc<Self> {
        Arc::new(Self {
            state: Mutex::new(State { waiting: Vec::new(), sending: false }),
            max_batch: max_batch.max(1),
        })
    }

    /// Queues `request` and waits for its response. If no batch is in flight, this call
    /// starts a sender task (on the current tokio runtime) that sends batches with
    /// `send_batch`, which must answer a batch's requests in order, until the queue is empty.
    /// The sender is a task of its own, so a caller that gives up (its future dropped) costs
    /// the others nothing. `None` if the request was dropped unanswered: `send_batch` answered
    /// fewer requests than it got, or panicked.
    pub async fn call<F, Fut>(self: &Arc<Self>, request: Request, send_batch: F) -> Option<Response>
    where
        F: Fn(Vec<Request>) -> Fut + Send + 'static,
        Fut: Future<Output = Vec<Response>> + Send + 'static,
    {
        let (answer, answered) = oneshot::channel();
        let start_sender = {
            let mut state = self.lock();
            state.waiting.push((request, answer));
            !std::mem::replace(&mut state.sending, true)
        };
        if start_sender {
            tokio::spawn(self.clone().send_all(send_batch));
        }
        answered.await.ok()
    }

    async fn send_all<F, Fut>(self: Arc<Self>, send_batch: F)
    where
        F: Fn(Vec<Request>) -> Fut,
        Fut: Future<Output = Vec<Response>>,
    {
        let _stopped = StopSending(&self);
        loop {
            let batch: Vec<_> = {
                let mut state = self.lock();
                let take = state.waiting.len().min(self.max_batch);
                if take == 0 {
                    state.sending = false;
                    return;
                }
                state.waiting.drain(..take).collect()
            };
            let (requests, answers): (Vec<_>, Vec<_>) = batch.into_iter().unzip();
            let responses = send_batch(requests).await;
            for (answer, response) in answers.into_iter().zip(responses) {
                // The caller may have given up; its answer is simply dropped.
                let _ = answer.send(response);
            }
        }
    }

    fn lock(&self) -> MutexGuard<'_, State<Request, Response>> {
        // Nothing panics while holding the lock; a poisoned queue is still consistent.
        self.state.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// Ends a sender that stops without emptying the queue (its batch function panicked, or its
/// runtime shut down): the waiting callers get `None` instead of waiting forever, and the next
/// call starts a new sender.
struct StopSending<'a, Request, Response>(&'a Coalescer<Request, Response>);

impl<Request, Response> Drop for StopSending<'_, Request, Response> {
    fn drop(&mut self) {
        let mut state = self.0.state.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        if state.sending {
            state.sending = false;
            state.waiting.clear();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::Duration;

    /// A batch function that records the size of each batch and echoes its requests doubled,
    /// after a short pause (long enough for the other callers to queue behind it).
    fn doubling(
        sizes: Arc<Mutex<Vec<usize>>>,
    ) -> impl Fn(Vec<u32>) -> futures_util::future::BoxFuture<'static, Vec<u32>> {
        move |requests| {
            sizes.lock().unwrap().push(requests.len());
            Box::pin(async move {
                tokio::time::sleep(Duration::from_millis(20)).await;
                requests.into_iter().map(|r| r * 2).collect()
            })
        }
    }

    #[tokio::test]
    async fn one_caller_at_a_time_sends_batches_of_one() {
        let coalescer = Coalescer::new(8);
        let sizes = Arc::new(Mutex::new(Vec::new()));
        for i in 0..3 {
            assert_eq!(coalescer.call(i, doubling(sizes.clone())).await, Some(i * 2));
        }
        assert_eq!(*sizes.lock().unwrap(), [1, 1, 1]);
    }

    #[tokio::test]
    async fn callers_that_arrive_during_a_batch_share_the_next_one() {
        let coalescer = Coalescer::new(8);
        let sizes = Arc::new(Mutex::new(Vec::new()));
        let calls = (0..20u32).map(|i| {
            let (coalescer, sizes) = (coalescer.clone(), sizes.clone());
            tokio::spawn(async move { coalescer.call(i, doubling(sizes)).await })
        });
        let answers: Vec<_> =
            futures_util::future::join_all(calls).await.into_iter().map(|r| r.unwrap()).collect();
        assert_eq!(
            answers,
            (0..20).map(|i| Some(i * 2)).collect::<Vec<_>>(),
            "each caller gets its own answer"
        );
        let sizes = sizes.lock().unwrap().clone();
        assert_eq!(sizes.iter().sum::<usize>(), 20);
        assert!(sizes.iter().all(|&s| s <= 8), "no batch above the limit: {sizes:?}");
        assert!(sizes.len() < 20, "concurrent callers were batched: {sizes:?}");
    }

    #[tokio::test]
    async fn a_caller_that_gives_up_does_not_stop_the_others() {
        let coalescer = Coalescer::new(8);
        let sizes = Arc::new(Mutex::new(Vec::new()));
        // The first caller starts the sender and then gives up while its batch is in flight.
        let first =
            tokio::time::timeout(Duration::from_millis(5), coalescer.call(1, doubling(sizes.clone())));
        assert!(first.await.is_err());
        assert_eq!(coalescer.call(2, doubling(sizes.clone())).await, Some(4));
    }

    #[tokio::test]
    async fn a_panicking_batch_answers_none_and_the_next_call_starts_afresh() {
        let coalescer = Coalescer::<u32, u32>::new(8);
        let panics = Arc::new(AtomicUsize::new(0));
        let counted = panics.clone();
        let answer = coalescer
            .call(1, move |_| {
                counted.fetch_add(1, Ordering::SeqCst);
                async { panic!("batch failed") }
            })
            .await;
        assert_eq!((answer, panics.load(Ordering::SeqCst)), (None, 1));
        let sizes = Arc::new(Mutex::new(Vec::new()));
        assert_eq!(coalescer.call(3, doubling(sizes)).await, Some(6));
    }

    #[tokio::test]
    async fn short_answers_leave_the_unanswered_with_none() {
        let coalescer = Coalescer::<u32, u32>::new(8);
        assert_eq!(coalescer.call(1, |_| async { Vec::new() }).await, None);
    }
}

//! Group commit for requests: the requests that arrive while a batch is in flight go out
//! together as the next batch.
//!
//! Why: a linearizable etcd read costs etcd a read-index round and a gRPC exchange whatever it
//! reads, and a write a raft entry and an apply, so under load one request for many calls is
//! far cheaper for the shared cluster (and the broker) than one request per call. A request is
//! never served by a batch sent before it arrived, so a batched read is exactly as fresh as a
//! read of its own; with one request at a time every batch holds one request and nothing
//! waits.
//!
//! Knows nothing about etcd: its owner says how a batch is sent and which requests may share
//! one.

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};

use tokio::sync::oneshot;

/// Sends a batch and answers its requests in order, one response per request.
pub(crate) type SendBatch<Request, Response> =
    Box<dyn Fn(Vec<Request>) -> Pin<Box<dyn Future<Output = Vec<Response>> + Send>> + Send + Sync>;

/// Whether a request may join a batch that already holds these requests.
pub(crate) type Fits<Request> = fn(&[Request], &Request) -> bool;

/// How a [`Coalescer`] forms and sends its batches.
pub(crate) struct Batching<Request, Response> {
    /// Most requests in one batch.
    pub(crate) max_batch: usize,
    /// Most batches in flight at once: a new one starts only when a full batch is waiting, so
    /// under light load there is one, and under heavy load the queue does not grow behind it.
    pub(crate) max_in_flight: usize,
    /// Which requests may share a batch; one that does not fit waits for a later batch.
    pub(crate) fits: Fits<Request>,
    /// How a batch is sent.
    pub(crate) send: SendBatch<Request, Response>,
}

/// The queue of requests waiting for the next batch, shared by the callers of one connection.
pub(crate) struct Coalescer<Request, Response> {
    state: Mutex<State<Request, Response>>,
    batching: Batching<Request, Response>,
}

struct State<Request, Response> {
    waiting: Vec<(Request, oneshot::Sender<Response>)>,
    /// Sender tasks running; each takes batches from `waiting` until none is left.
    senders: usize,
}

impl<Request: Send + 'static, Response: Send + 'static> Coalescer<Request, Response> {
    /// An empty queue.
    pub(crate) fn new(batching: Batching<Request, Response>) -> Arc<Self> {
        let batching = Batching {
            max_batch: batching.max_batch.max(1),
            max_in_flight: batching.max_in_flight.max(1),
            ..batching
        };
        Arc::new(Self { state: Mutex::new(State { waiting: Vec::new(), senders: 0 }), batching })
    }

    /// Queues `request` and waits for its response. If no batch is in flight (or a full one
    /// waits and fewer than `max_in_flight` are), this call starts a sender task on the current
    /// tokio runtime. The sender is a task of its own, so a caller that gives up (its future
    /// dropped) costs the others nothing, and its request is not sent unless its batch already
    /// left. `None` if the request was dropped unanswered: the batch function answered fewer
    /// requests than it got, or panicked.
    pub(crate) async fn call(self: &Arc<Self>, request: Request) -> Option<Response> {
        let (answer, answered) = oneshot::channel();
        let start_sender = {
            let mut state = self.lock();
            state.waiting.push((request, answer));
            let start = state.senders == 0
                || (state.waiting.len() >= self.batching.max_batch
                    && state.senders < self.batching.max_in_flight);
            state.senders += usize::from(start);
            start
        };
        if start_sender {
            tokio::spawn(self.clone().send_all());
        }
        answered.await.ok()
    }

    async fn send_all(self: Arc<Self>) {
        let mut running = Running { coalescer: &self, stopped: false };
        loop {
            let Some((requests, answers)) = self.take_batch() else {
                running.stopped = true;
                return;
            };
            let responses = (self.batching.send)(requests).await;
            for (answer, response) in answers.into_iter().zip(responses) {
                // The caller may have given up; its answer is simply dropped.
                let _ = answer.send(response);
            }
        }
    }

    /// The next batch: waiting requests in arrival order that fit together (the first always
    /// does), skipping those whose callers gave up; the others wait for a later batch. `None`,
    /// and this sender stops, when nothing waits.
    fn take_batch(&self) -> Option<(Vec<Request>, Vec<oneshot::Sender<Response>>)> {
        let mut state = self.lock();
        state.waiting.retain(|(_, answer)| !answer.is_closed());
        if state.waiting.is_empty() {
            state.senders -= 1;
            return None;
        }
        let (mut requests, mut answers, mut left) = (Vec::new(), Vec::new(), Vec::new());
        for (request, answer) in std::mem::take(&mut state.waiting) {
            let room = requests.len() < self.batching.max_batch;
            if requests.is_empty() || (room && (self.batching.fits)(&requests, &request)) {
                requests.push(request);
                answers.push(answer);
            } else {
                left.push((request, answer));
            }
        }
        state.waiting = left;
        Some((requests, answers))
    }

    fn lock(&self) -> MutexGuard<'_, State<Request, Response>> {
        super::unpoisoned::lock(&self.state)
    }
}

/// A running sender. One that ends without finding the queue empty (its batch function
/// panicked, or its runtime shut down) gives up its place; if it was the last, the waiting
/// callers get `None` instead of waiting forever, and the next call starts a new sender.
struct Running<'a, Request, Response> {
    coalescer: &'a Coalescer<Request, Response>,
    /// Set when it stopped normally (and already gave up its place).
    stopped: bool,
}

impl<Request, Response> Drop for Running<'_, Request, Response> {
    fn drop(&mut self) {
        if self.stopped {
            return;
        }
        let mut state = super::unpoisoned::lock(&self.coalescer.state);
        state.senders -= 1;
        if state.senders == 0 {
            state.waiting.clear();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::Duration;

    /// Batching that records each batch and echoes its requests doubled, after a pause long
    /// enough for other callers to queue behind it. Odd and even requests never share a batch.
    fn doubling(
        max_batch: usize,
        max_in_flight: usize,
        sizes: Arc<Mutex<Vec<Vec<u32>>>>,
    ) -> Batching<u32, u32> {
        Batching {
            max_batch,
            max_in_flight,
            fits: |batch, request| batch[0] % 2 == request % 2,
            send: Box::new(move |requests| {
                sizes.lock().unwrap().push(requests.clone());
                Box::pin(async move {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                    requests.into_iter().map(|r| r * 2).collect()
                })
            }),
        }
    }

    /// Batches of up to 8 that all fit together, sent by `send`.
    fn any_fits(max_in_flight: usize, send: SendBatch<u32, u32>) -> Batching<u32, u32> {
        Batching { max_batch: 8, max_in_flight, fits: |_, _| true, send }
    }

    fn recorder() -> Arc<Mutex<Vec<Vec<u32>>>> {
        Arc::new(Mutex::new(Vec::new()))
    }

    async fn call_all(
        coalescer: &Arc<Coalescer<u32, u32>>,
        requests: std::ops::Range<u32>,
    ) -> Vec<Option<u32>> {
        let calls = requests.map(|i| {
            let coalescer = coalescer.clone();
            tokio::spawn(async move { coalescer.call(i).await })
        });
        futures_util::future::join_all(calls).await.into_iter().map(|r| r.unwrap()).collect()
    }

    #[tokio::test]
    async fn one_caller_at_a_time_sends_batches_of_one() {
        let batches = recorder();
        let coalescer = Coalescer::new(doubling(8, 1, batches.clone()));
        for i in 0..3 {
            assert_eq!(coalescer.call(i).await, Some(i * 2));
        }
        assert_eq!(*batches.lock().unwrap(), [vec![0], vec![1], vec![2]]);
    }

    #[tokio::test]
    async fn callers_that_arrive_during_a_batch_share_the_next_one_if_they_fit() {
        let batches = recorder();
        let coalescer = Coalescer::new(doubling(4, 1, batches.clone()));
        let answers = call_all(&coalescer, 0..20).await;
        assert_eq!(
            answers,
            (0..20).map(|i| Some(i * 2)).collect::<Vec<_>>(),
            "each caller gets its own answer"
        );
        let batches = batches.lock().unwrap().clone();
        assert_eq!(batches.iter().map(Vec::len).sum::<usize>(), 20, "{batches:?}");
        assert!(batches.iter().all(|b| b.len() <= 4), "no batch above the limit: {batches:?}");
        assert!(
            batches.iter().all(|b| b.iter().all(|r| r % 2 == b[0] % 2)),
            "only fitting requests together: {batches:?}"
        );
        assert!(batches.len() < 20, "concurrent callers were batched: {batches:?}");
        for batch in &batches {
            assert!(batch.windows(2).all(|w| w[0] < w[1]), "arrival order kept: {batches:?}");
        }
    }

    #[tokio::test]
    async fn a_full_batch_waiting_starts_another_sender_up_to_the_limit() {
        let (in_flight, most) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
        let (counting, highest) = (in_flight.clone(), most.clone());
        let coalescer = Coalescer::new(Batching::<u32, u32> {
            max_batch: 2,
            max_in_flight: 3,
            fits: |_, _| true,
            send: Box::new(move |requests| {
                let (counting, highest) = (counting.clone(), highest.clone());
                Box::pin(async move {
                    highest.fetch_max(counting.fetch_add(1, Ordering::SeqCst) + 1, Ordering::SeqCst);
                    tokio::time::sleep(Duration::from_millis(20)).await;
                    counting.fetch_sub(1, Ordering::SeqCst);
                    requests
                })
            }),
        });
        let answers = call_all(&coalescer, 0..40).await;
        assert_eq!(answers, (0..40).map(Some).collect::<Vec<_>>());
        assert_eq!(most.load(Ordering::SeqCst), 3, "full batches waiting started senders up to the limit");
        assert_eq!(coalescer.lock().senders, 0, "every sender stopped once the queue was empty");
    }

    // Paused time: the 5 ms steps must not depend on how loaded the machine is.
    #[tokio::test(start_paused = true)]
    async fn a_caller_that_gives_up_does_not_stop_the_others_and_is_not_sent() {
        let batches = recorder();
        let coalescer = Coalescer::new(doubling(8, 1, batches.clone()));
        let first = {
            let coalescer = coalescer.clone();
            tokio::spawn(async move { coalescer.call(1).await })
        };
        tokio::time::sleep(Duration::from_millis(5)).await;
        // Queued behind the first batch, then given up before that batch returns.
        let quitter = tokio::time::timeout(Duration::from_millis(5), coalescer.call(3));
        assert!(quitter.await.is_err());
        assert_eq!(coalescer.call(5).await, Some(10));
        assert_eq!(first.await.unwrap(), Some(2));
        assert_eq!(*batches.lock().unwrap(), [vec![1], vec![5]], "the abandoned request was not sent");
    }

    #[tokio::test]
    async fn a_panicking_batch_answers_none_and_the_next_call_starts_afresh() {
        let panicking = any_fits(
            1,
            Box::new(|requests| {
                Box::pin(async move {
                    assert!(requests[0] != 1, "batch failed");
                    requests
                })
            }),
        );
        let coalescer = Coalescer::new(panicking);
        assert_eq!(coalescer.call(1).await, None);
        assert_eq!(coalescer.call(2).await, Some(2));
    }

    #[tokio::test]
    async fn short_answers_leave_the_unanswered_with_none() {
        let short = any_fits(1, Box::new(|_| Box::pin(async { Vec::new() })));
        assert_eq!(Coalescer::new(short).call(1).await, None);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn many_threads_calling_never_lose_an_answer() {
        let echo = any_fits(
            2,
            Box::new(|requests| {
                Box::pin(async move {
                    tokio::task::yield_now().await;
                    requests
                })
            }),
        );
        let coalescer = Coalescer::new(echo);
        for round in 0..200 {
            let answers = call_all(&coalescer, round * 50..(round + 1) * 50).await;
            assert!(
                answers.iter().zip(round * 50..).all(|(a, i)| *a == Some(i)),
                "round {round}: {answers:?}"
            );
        }
    }
}

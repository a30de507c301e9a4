//! Running one phase of a benchmark: `clients` concurrent tasks take item numbers from a shared
//! counter until `count` items are done or the time is up, each timing its calls into a
//! histogram. Used for the broker's operations and for the etcd floor alike.

use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use indicatif::{ProgressBar, ProgressStyle};
use serde_json::{json, Value};

/// What one phase measured.
#[derive(Debug, Clone)]
pub struct Measured {
    /// Latencies in microseconds of the calls that succeeded.
    pub latencies: Histogram<u64>,
    pub ok: u64,
    pub errors: u64,
    /// The first error, to say what went wrong (never holds credentials: see its callers).
    pub first_error: Option<String>,
    pub elapsed: Duration,
    /// The items whose calls succeeded, in no particular order: what a later phase can build on
    /// when a `--duration` cut this one short.
    pub succeeded: Vec<u64>,
}

impl Measured {
    /// Successful calls per second over the phase.
    pub fn throughput(&self) -> f64 {
        let secs = self.elapsed.as_secs_f64();
        if secs > 0.0 {
            self.ok as f64 / secs
        } else {
            0.0
        }
    }

    /// A latency quantile in milliseconds (0 when nothing succeeded).
    pub fn quantile_ms(&self, q: f64) -> f64 {
        if self.latencies.is_empty() {
            return 0.0;
        }
        self.latencies.value_at_quantile(q) as f64 / 1000.0
    }

    pub fn max_ms(&self) -> f64 {
        self.latencies.max() as f64 / 1000.0
    }

    /// Adds a later run of the same measurement (a phase measured in rounds): latencies,
    /// counts and time add up, the first error stays the first.
    pub fn absorb(&mut self, later: Measured) {
        let _ = self.latencies.add(&later.latencies);
        self.ok += later.ok;
        self.errors += later.errors;
        self.elapsed += later.elapsed;
        self.succeeded.extend(later.succeeded);
        if self.first_error.is_none() {
            self.first_error = later.first_error;
        }
    }

    /// Nothing measured yet: what [`Measured::absorb`] starts from.
    pub fn empty() -> Self {
        Measured {
            latencies: histogram(),
            ok: 0,
            errors: 0,
            first_error: None,
            elapsed: Duration::ZERO,
            succeeded: Vec::new(),
        }
    }

    /// `{count, errors, throughput, p50_ms, p90_ms, p99_ms, max_ms}`.
    pub fn to_json(&self) -> Value {
        json!({
            "count": self.ok + self.errors,
            "errors": self.errors,
            "throughput_per_s": round(self.throughput()),
            "p50_ms": round(self.quantile_ms(0.5)),
            "p90_ms": round(self.quantile_ms(0.9)),
            "p99_ms": round(self.quantile_ms(0.99)),
            "max_ms": round(self.max_ms()),
            "first_error": self.first_error,
        })
    }
}

/// Two decimals, for reports.
pub fn round(x: f64) -> f64 {
    (x * 100.0).round() / 100.0
}

fn histogram() -> Histogram<u64> {
    // 1 µs to 10 min, 3 significant digits.
    Histogram::new_with_bounds(1, 600_000_000, 3).expect("valid histogram bounds")
}

/// Runs `call(i)` for i = 0, 1, ... with `clients` concurrent tasks, until `count` calls were
/// made or `duration` (if any) has passed. Shows a progress bar titled `label` on a terminal.
pub async fn run<F, Fut>(
    label: &str,
    count: u64,
    clients: usize,
    duration: Option<Duration>,
    call: F,
) -> Measured
where
    F: Fn(u64) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = anyhow::Result<()>> + Send,
{
    let bar = ProgressBar::new(count);
    bar.set_style(
        ProgressStyle::with_template("{prefix:>24} [{bar:30}] {pos}/{len} {per_sec} {elapsed}")
            .expect("a valid progress template")
            .progress_chars("=> "),
    );
    bar.set_prefix(label.to_owned());
    let next = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    let deadline = duration.map(|d| start + d);
    let mut tasks = Vec::with_capacity(clients);
    for _ in 0..clients.max(1) {
        let (next, call, bar) = (next.clone(), call.clone(), bar.clone());
        tasks.push(tokio::spawn(async move {
            let mut latencies = histogram();
            let (mut ok, mut errors, mut first_error, mut succeeded) = (0u64, 0u64, None, Vec::new());
            loop {
                if deadline.is_some_and(|d| Instant::now() >= d) {
                    break;
                }
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= count {
                    break;
                }
                let t0 = Instant::now();
                match call(i).await {
                    Ok(()) => {
                        ok += 1;
                        succeeded.push(i);
                        let _ = latencies.record((t0.elapsed().as_micros() as u64).max(1));
                    }
                    Err(e) => {
                        errors += 1;
                        first_error.get_or_insert_with(|| format!("{e:#}"));
                    }
                }
                bar.inc(1);
            }
            (latencies, ok, errors, first_error, succeeded)
        }));
    }
    let mut measured = Measured::empty();
    for task in tasks {
        let (latencies, ok, errors, first_error, succeeded) = task.await.expect("a load task panicked");
        measured.absorb(Measured { latencies, ok, errors, first_error, elapsed: Duration::ZERO, succeeded });
    }
    measured.elapsed = start.elapsed();
    bar.finish_and_clear();
    measured
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn every_item_runs_once_and_errors_are_counted() {
        let seen = Arc::new(std::sync::Mutex::new(Vec::new()));
        let record = seen.clone();
        let measured = run("test", 50, 4, None, move |i| {
            let record = record.clone();
            async move {
                record.lock().unwrap().push(i);
                if i % 10 == 0 {
                    anyhow::bail!("item {i} fails");
                }
                Ok(())
            }
        })
        .await;
        let mut seen = seen.lock().unwrap().clone();
        seen.sort();
        assert_eq!(seen, (0..50).collect::<Vec<_>>());
        assert_eq!((measured.ok, measured.errors), (45, 5));
        let mut succeeded = measured.succeeded.clone();
        succeeded.sort();
        assert_eq!(succeeded, (0..50).filter(|i| i % 10 != 0).collect::<Vec<_>>());
        assert!(measured.first_error.as_deref().unwrap().starts_with("item "));
        assert_eq!(measured.to_json()["count"], 50);
    }

    #[tokio::test]
    async fn a_duration_stops_the_phase() {
        let measured = run("test", u64::MAX, 2, Some(Duration::from_millis(100)), |_| async {
            tokio::time::sleep(Duration::from_millis(10)).await;
            Ok(())
        })
        .await;
        assert!(measured.ok > 0 && measured.ok < 1000, "{}", measured.ok);
        assert!(measured.quantile_ms(0.5) >= 10.0);
    }
}

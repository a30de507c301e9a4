//! CPU time per operation of the processes a phase keeps busy: the bench itself (the load
//! generator) and, when they run on this machine, the broker and etcd (`--cpu-of NAME=PID`).
//! Where load, broker and etcd share the cores, latency under concurrency is made of this
//! CPU, so it says where an operation's time goes, and what a floor saves by having no broker.
//!
//! Read from Linux's per-thread `/proc/PID/task/*/schedstat` (time on CPU in nanoseconds):
//! `process_cpu_seconds_total` counts in whole seconds (the broker's) or ticks of 10 ms
//! (etcd's), too coarse for a round of a few hundred operations. Threads that exit during a
//! round take their time with them; tokio's and Go's worker threads live as long as the run.

use std::collections::BTreeMap;
use std::str::FromStr;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

/// A process whose CPU the bench reports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Watched {
    pub name: String,
    /// `None`: the bench itself.
    pid: Option<u32>,
}

impl Watched {
    /// The bench's own process, reported as "client".
    pub fn this_process() -> Self {
        Watched { name: "client".into(), pid: None }
    }

    /// Nanoseconds on CPU of all its threads so far; `None` when /proc cannot tell (not Linux,
    /// or the process is gone).
    pub fn cpu_ns(&self) -> Option<u64> {
        let dir = match self.pid {
            Some(pid) => format!("/proc/{pid}/task"),
            None => "/proc/self/task".to_owned(),
        };
        let mut total = 0;
        for task in std::fs::read_dir(dir).ok()?.flatten() {
            // A thread that ended between the listing and the read has nothing to add.
            // (Likewise a line that does not parse: one thread's time is less wrong than none.)
            let Ok(stat) = std::fs::read_to_string(task.path().join("schedstat")) else { continue };
            total += stat.split_whitespace().next().and_then(|ns| ns.parse::<u64>().ok()).unwrap_or(0);
        }
        Some(total)
    }
}

/// Names the report uses itself: the bench's process and the sum of all.
const RESERVED: [&str; 2] = ["client", "total"];

/// Refuses two `--cpu-of` with the same name (the report keys processes by name).
pub fn check_names(watched: &[Watched]) -> Result<()> {
    let mut seen = std::collections::BTreeSet::new();
    match watched.iter().find(|w| !seen.insert(w.name.as_str())) {
        Some(twice) => bail!("--cpu-of names '{}' twice; give each process its own name", twice.name),
        None => Ok(()),
    }
}

/// `NAME=PID`, as given to `--cpu-of`.
impl FromStr for Watched {
    type Err = anyhow::Error;

    fn from_str(spec: &str) -> Result<Self> {
        let Some((name, pid)) = spec.split_once('=') else {
            bail!("expected NAME=PID (e.g. broker=1234), got '{spec}'");
        };
        let name = name.trim();
        if name.is_empty() || RESERVED.contains(&name) {
            bail!("'{spec}': give the process a name other than {RESERVED:?} (the bench's own, and the sum)");
        }
        let pid = pid.trim().parse::<u32>().with_context(|| format!("'{spec}': the PID is not a number"))?;
        let watched = Watched { name: name.to_owned(), pid: Some(pid) };
        if watched.cpu_ns().is_none() {
            bail!("'{spec}': no process {pid} whose CPU time /proc/{pid}/task/*/schedstat tells");
        }
        Ok(watched)
    }
}

/// CPU used by each watched process over some stretch of the run.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct CpuUse {
    pub ns: BTreeMap<String, u64>,
}

impl CpuUse {
    /// The time each of `watched` spends on CPU while `work` runs; a process /proc cannot
    /// read before and after is left out.
    pub async fn during<T>(watched: &[Watched], work: impl std::future::Future<Output = T>) -> (T, CpuUse) {
        let before: Vec<Option<u64>> = watched.iter().map(Watched::cpu_ns).collect();
        let result = work.await;
        let mut used = CpuUse::default();
        for (process, before) in watched.iter().zip(before) {
            if let (Some(before), Some(after)) = (before, process.cpu_ns()) {
                used.ns.insert(process.name.clone(), after.saturating_sub(before));
            }
        }
        (result, used)
    }

    /// Adds a later stretch (another round of the same phase).
    pub fn absorb(&mut self, later: CpuUse) {
        for (name, ns) in later.ns {
            *self.ns.entry(name).or_default() += ns;
        }
    }

    /// Microseconds per operation, by process, and their sum as "total".
    pub fn per_operation_us(&self, operations: u64) -> BTreeMap<String, f64> {
        let per = |ns: u64| ns as f64 / 1000.0 / operations.max(1) as f64;
        let mut out: BTreeMap<String, f64> =
            self.ns.iter().map(|(name, ns)| (name.clone(), per(*ns))).collect();
        if !out.is_empty() {
            out.insert("total".into(), per(self.ns.values().sum()));
        }
        out
    }
}

/// One second of the watched processes' CPU, in milliseconds by name.
pub type Sample = BTreeMap<String, u64>;

/// How a wait for quiet processes ended.
#[derive(Debug, Clone, PartialEq)]
pub struct Quiet {
    /// Whether the processes fell quiet before the bound.
    pub reached: bool,
    /// Each second's sample, oldest first.
    pub samples: Vec<Sample>,
}

/// Samples each of `watched` once a second until every one of them used at most `busy_ms` of
/// CPU in each of the last `in_a_row` seconds, or `at_most` has passed. What a preload leaves
/// to do (etcd's Go GC over a grown heap, bbolt's commits and freelist, the broker's caches)
/// would otherwise run during the first phase and be charged to its operations.
pub async fn wait_until_quiet(
    watched: &[Watched],
    busy_ms: u64,
    in_a_row: usize,
    at_most: Duration,
) -> Quiet {
    let started = Instant::now();
    let mut before: Vec<Option<u64>> = watched.iter().map(Watched::cpu_ns).collect();
    let mut samples: Vec<Sample> = Vec::new();
    loop {
        let quiet_for = samples.iter().rev().take_while(|s| s.values().all(|ms| *ms <= busy_ms)).count();
        if quiet_for >= in_a_row {
            return Quiet { reached: true, samples };
        }
        if started.elapsed() >= at_most {
            return Quiet { reached: false, samples };
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
        let now: Vec<Option<u64>> = watched.iter().map(Watched::cpu_ns).collect();
        let sample = watched
            .iter()
            .zip(before.iter().zip(&now))
            .filter_map(|(w, (b, n))| Some((w.name.clone(), n.as_ref()?.saturating_sub((*b)?) / 1_000_000)))
            .collect();
        samples.push(sample);
        before = now;
    }
}

/// An operation's name, its CPU per operation by process with the broker, and without it (the
/// floor's), as [`CpuUse::per_operation_us`] gives them.
pub type PerOperation = (&'static str, BTreeMap<String, f64>, Option<BTreeMap<String, f64>>);

/// The terminal table: µs per operation of each process (the bench as "client" first, then the
/// broker), their total, the floor's (columns `f:`), and the ratio of the totals. `None` when
/// no CPU could be read.
pub fn table(rows: &[PerOperation]) -> Option<String> {
    let mut names: Vec<&str> =
        rows.iter().flat_map(|(_, broker, _)| broker.keys()).map(String::as_str).collect();
    names.sort_by_key(|n| (*n == "total", *n != "client", *n != "broker", *n));
    names.dedup();
    if names.is_empty() {
        return None;
    }
    let header =
        |prefix: &str| names.iter().map(|n| format!(" {:>9}", format!("{prefix}{n}"))).collect::<String>();
    let mut out = format!("{:<12}{} |{} {:>6}\n", "CPU us/op", header(""), header("f:"), "ratio");
    for (operation, broker, floor) in rows {
        let floor = floor.clone().unwrap_or_default();
        let cells = |m: &BTreeMap<String, f64>| {
            names
                .iter()
                .map(|n| m.get(*n).map_or(format!(" {:>9}", "-"), |us| format!(" {us:>9.0}")))
                .collect::<String>()
        };
        let ratio = match (broker.get("total"), floor.get("total")) {
            (Some(b), Some(f)) if *f > 0.0 => format!("{:>6.2}", b / f),
            _ => format!("{:>6}", "-"),
        };
        out += &format!("{operation:<12}{} |{} {ratio}\n", cells(broker), cells(&floor));
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn specs_name_a_live_process_by_pid() {
        let me = std::process::id();
        let watched: Watched = format!("broker={me}").parse().unwrap();
        assert_eq!(watched, Watched { name: "broker".into(), pid: Some(me) });
        for bad in ["broker", "=12", "client=12", "total=12", "broker=twelve", "broker=4294967295"] {
            assert!(bad.parse::<Watched>().is_err(), "{bad}");
        }
        let etcd: Watched = format!("etcd={me}").parse().unwrap();
        assert!(check_names(&[watched.clone(), etcd]).is_ok());
        assert!(check_names(&[watched.clone(), watched]).unwrap_err().to_string().contains("'broker' twice"));
    }

    #[tokio::test]
    async fn work_on_cpu_is_counted_and_sleeping_is_not() {
        let me = [Watched::this_process()];
        // Spins until this thread has had 50 ms of CPU, whatever the machine's load (a spin
        // of 50 ms of wall-clock time gets much less CPU on busy cores); the wall-clock cap
        // only keeps a broken clock from hanging the test.
        let thread_cpu_ns = || {
            let stat = std::fs::read_to_string("/proc/thread-self/schedstat").unwrap();
            stat.split_whitespace().next().unwrap().parse::<u64>().unwrap()
        };
        let ((), busy) = CpuUse::during(&me, async {
            let start = thread_cpu_ns();
            let cap = std::time::Instant::now() + std::time::Duration::from_secs(20);
            while thread_cpu_ns() - start < 50_000_000 && std::time::Instant::now() < cap {
                std::hint::black_box(0u64);
            }
        })
        .await;
        let ((), idle) = CpuUse::during(&me, tokio::time::sleep(std::time::Duration::from_millis(50))).await;
        assert!(busy.ns["client"] >= 40_000_000, "{busy:?}");
        assert!(idle.ns["client"] < 20_000_000, "{idle:?}");

        let mut both = busy.clone();
        both.absorb(idle.clone());
        assert_eq!(both.ns["client"], busy.ns["client"] + idle.ns["client"]);
        let per = both.per_operation_us(2);
        assert_eq!(per["client"], per["total"]);
        assert!((per["client"] - both.ns["client"] as f64 / 2000.0).abs() < 1e-6);
    }

    #[test]
    fn the_table_puts_the_client_first_and_compares_totals() {
        let us = |pairs: &[(&str, f64)]| pairs.iter().map(|(n, v)| (n.to_string(), *v)).collect();
        let rows: Vec<PerOperation> = vec![
            (
                "get",
                us(&[("broker", 60.0), ("client", 40.0), ("etcd", 100.0), ("total", 200.0)]),
                Some(us(&[("client", 50.0), ("etcd", 75.0), ("total", 125.0)])),
            ),
            ("catalog", us(&[("broker", 15.0), ("client", 30.0), ("etcd", 0.0), ("total", 45.0)]), None),
        ];
        let table = table(&rows).unwrap();
        let lines: Vec<Vec<&str>> = table.lines().map(|l| l.split_whitespace().collect()).collect();
        assert_eq!(
            lines[0],
            [
                "CPU", "us/op", "client", "broker", "etcd", "total", "|", "f:client", "f:broker", "f:etcd",
                "f:total", "ratio"
            ]
        );
        assert_eq!(lines[1], ["get", "40", "60", "100", "200", "|", "50", "-", "75", "125", "1.60"]);
        assert_eq!(lines[2], ["catalog", "30", "15", "0", "45", "|", "-", "-", "-", "-", "-"]);
        assert_eq!(super::table(&[]), None);
    }

    #[tokio::test]
    async fn a_quiet_wait_ends_after_quiet_seconds_or_at_its_bound() {
        let me = [Watched::this_process()];
        let quiet = wait_until_quiet(&me, 500, 2, Duration::from_secs(30)).await;
        assert!(quiet.reached, "{quiet:?}");
        assert_eq!(quiet.samples.len(), 2, "{quiet:?}");
        // While a thread spins, no second has 0 ms: the bound ends the wait.
        let busy = std::thread::spawn(|| {
            let until = Instant::now() + Duration::from_millis(2_500);
            while Instant::now() < until {
                std::hint::black_box(0u64);
            }
        });
        let never = wait_until_quiet(&me, 0, 5, Duration::from_secs(2)).await;
        busy.join().unwrap();
        assert!(!never.reached, "{never:?}");
        assert!((2..=3).contains(&never.samples.len()), "{never:?}");
        assert!(never.samples.iter().any(|s| s["client"] > 0), "the spinning thread is counted: {never:?}");
    }
}

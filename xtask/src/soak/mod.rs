//! `xtask soak` (`make soak`, not in CI): lifecycle churn against two brokers on one etcd for a
//! long while, sampling what grows when something leaks: each broker's resident memory and open
//! file descriptors, etcd's memory, and its keys, users, roles and queued role deletions. The
//! report ([`report`]) is a table per sample and the least-squares slope of each series, over
//! the churn and over its steady part, written into the `soak` region of docs/reliability.md
//! ("flat" is a slope near zero, stated, not eyeballed).
//!
//! The stack is `xtask dev` (etcd with `--bcrypt-cost 4`, so the churn is not bcrypt-bound,
//! and five minutes of auto-compaction; broker A in its process) plus broker B, an
//! `etcd-broker serve` process on the same config. Each client runs provision, bind, unbind,
//! deprovision with fresh ids, alternating between the brokers, at the start times of one shared
//! [`schedule`] (`--rate`), until the time is up; then
//! every instance is gone, so the last sample's keys, users and roles show what stayed behind.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use anyhow::{ensure, Context, Result};
use etcd_broker::etcd::resend_on_auth_change;
use etcd_broker_ops::osb::{BrokerTarget, Offering, OsbClient};
use etcd_client::{Client, ConnectOptions, GetOptions};
use reqwest::StatusCode;

use crate::scenario::doc;
use report::Run;
use schedule::Schedule;

mod report;
mod schedule;
use crate::stack::{catch_stop_signals, caught_signal, DevProcess, Interrupted, SecondBroker, StackOptions};

/// Flags of `xtask soak`.
#[derive(Debug, Clone, clap::Args)]
pub struct SoakArgs {
    /// How long the churn runs, in minutes.
    #[arg(long, env = "SOAK_MINUTES", default_value_t = 30, value_parser = clap::value_parser!(u64).range(1..))]
    pub minutes: u64,
    /// Seconds between two samples.
    #[arg(long, default_value_t = 60, value_parser = clap::value_parser!(u64).range(1..))]
    pub sample_seconds: u64,
    /// Clients running lifecycles at once (each alternates between the two brokers).
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u64).range(1..=64))]
    pub clients: u64,
    /// Lifecycles per second, all clients together, on one shared schedule: a client that falls
    /// behind loses its slots rather than bursting to catch up, and minutes below 95 % of the
    /// rate are flagged short in the report. 0: as fast as the clients go.
    #[arg(long, env = "SOAK_RATE", default_value_t = 10.0, value_parser = schedule::parse_rate)]
    pub rate: f64,
    /// Minutes of churn before the steady part whose slopes and min..max the report also gives:
    /// etcd's first five-minute retention window of revisions, then its first compactions and
    /// (at 10/s) its first raft snapshot, and the role reaper's queue settling
    /// (docs/reliability.md, Soak).
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u64).range(0..=1440))]
    pub warm_up_minutes: u64,
    /// The document whose `soak` region receives the report; without it, the report is only
    /// printed.
    #[arg(long, env = "SOAK_OUT")]
    pub out: Option<PathBuf>,
    /// The `etcd-broker` binary of broker B [default: the one next to this program].
    #[arg(long)]
    pub broker_binary: Option<PathBuf>,
    /// Stop after this many seconds instead of `--minutes` (for trying the tool out).
    #[arg(long, hide = true)]
    pub seconds: Option<u64>,
}

/// The document region the report goes into.
pub const REGION: &str = "soak";

/// One sample.
#[derive(Debug, Clone, PartialEq)]
struct Sample {
    /// Seconds since the churn started.
    at: f64,
    lifecycles: u64,
    broker_a: Process,
    broker_b: Process,
    etcd_rss_mb: f64,
    keys: u64,
    users: u64,
    roles: u64,
    /// Entries of the role reaper's queue (`<state_prefix>role-deletions/`).
    queued: u64,
}

/// What /proc says of a process.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Process {
    rss_mb: f64,
    fds: u64,
}

/// Counts of the churn.
#[derive(Default)]
struct Churn {
    lifecycles: AtomicU64,
    /// Requests answered with anything but the lifecycle's success statuses, or not at all.
    errors: AtomicU64,
}

/// Runs the soak and writes its report.
pub fn run(xtask: &Path, args: &SoakArgs) -> Result<()> {
    catch_stop_signals();
    if let Some(out) = &args.out {
        let text = std::fs::read_to_string(out).with_context(|| format!("cannot read {}", out.display()))?;
        doc::check_regions(&text, &[REGION]).with_context(|| out.display().to_string())?;
    }
    let broker = args.broker_binary.clone().unwrap_or_else(|| xtask.with_file_name("etcd-broker"));
    ensure!(broker.is_file(), "{} does not exist: build it (make soak does)", broker.display());
    let work = tempfile::tempdir().context("cannot create a temporary folder")?;
    let options = StackOptions { bcrypt_cost: Some(4), proxy: false, ..StackOptions::default() };
    let stack = DevProcess::start(xtask, &options, &work.path().join("stack"))?;
    let mut second = SecondBroker::start(&broker, &stack, "broker-b", &[])?;
    second.answered(&stack)?;
    let duration = Duration::from_secs(args.seconds.unwrap_or(args.minutes * 60));
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    let (samples, churn) = runtime.block_on(soak(&stack, &second.env(&stack), args, duration))?;
    let report = report::report(
        &samples,
        &Run {
            duration,
            clients: args.clients,
            rate: args.rate,
            warm_up: Duration::from_secs(args.warm_up_minutes * 60),
            lifecycles: churn.lifecycles.load(Ordering::Relaxed),
            errors: churn.errors.load(Ordering::Relaxed),
        },
    );
    print!("{report}");
    if let Some(out) = &args.out {
        let text = std::fs::read_to_string(out)?;
        std::fs::write(out, doc::replace_region(&text, REGION, &report)?)
            .with_context(|| format!("cannot write {}", out.display()))?;
        eprintln!("soak: wrote the report into {}", out.display());
    }
    drop(second);
    stack.stop()
}

/// The churn and the sampling, until `duration` has passed (or Ctrl-C); then a last sample
/// once the clients have finished their lifecycles.
async fn soak(
    stack: &DevProcess,
    env_b: &std::collections::BTreeMap<String, String>,
    args: &SoakArgs,
    duration: Duration,
) -> Result<(Vec<Sample>, Churn)> {
    let env_a = &stack.env;
    let target = |env: &std::collections::BTreeMap<String, String>| BrokerTarget {
        url: env["BROKER_URL"].clone(),
        username: env["BROKER_USERNAME"].clone(),
        password: env["BROKER_PASSWORD"].clone(),
        skip_tls_verification: false,
    };
    let brokers = [
        OsbClient::new(target(env_a), Duration::from_secs(30))?,
        OsbClient::new(target(env_b), Duration::from_secs(30))?,
    ];
    let offering = brokers[0].offering(None, Some("shared")).await?;
    let etcd = root_client(env_a).await?;
    let pids = [pid(env_a, "BROKER_PID")?, pid(env_b, "BROKER_PID")?, pid(env_a, "ETCD_PID")?];

    let churn = Arc::new(Churn::default());
    let stop = Arc::new(AtomicBool::new(false));
    let schedule = Schedule::new(args.rate).map(|s| Arc::new(Mutex::new(s)));
    let started = Instant::now();
    let mut clients = Vec::new();
    for client in 0..args.clients {
        let (brokers, offering) = (brokers.clone(), offering.clone());
        let (churn, stop, schedule) = (churn.clone(), stop.clone(), schedule.clone());
        clients.push(tokio::spawn(async move {
            let mut n = 0u64;
            while !stop.load(Ordering::SeqCst) {
                if let Some(schedule) = &schedule {
                    let slot =
                        schedule.lock().unwrap_or_else(PoisonError::into_inner).take(started.elapsed());
                    tokio::time::sleep_until((started + slot).into()).await;
                    if stop.load(Ordering::SeqCst) {
                        break;
                    }
                }
                let osb = &brokers[usize::try_from(n % 2).unwrap_or(0)];
                let instance = format!("soak-{client}-{n}");
                if lifecycle(osb, &offering, &instance).await {
                    churn.lifecycles.fetch_add(1, Ordering::Relaxed);
                } else {
                    churn.errors.fetch_add(1, Ordering::Relaxed);
                }
                n += 1;
            }
        }));
    }

    let every = Duration::from_secs(args.sample_seconds);
    let mut samples = vec![sample(&etcd, &pids, started, &churn).await?];
    while started.elapsed() < duration {
        if let Some(signal) = caught_signal() {
            stop.store(true, Ordering::SeqCst);
            return Err(Interrupted(signal).into());
        }
        let next = every * u32::try_from(samples.len()).unwrap_or(u32::MAX);
        let wait = next.min(duration).saturating_sub(started.elapsed());
        tokio::time::sleep(wait.min(Duration::from_millis(500))).await;
        if started.elapsed() >= next {
            // A sample etcd keeps refusing (its reads meet the brokers' auth changes) is taken
            // again half a second later: half an hour of churn is not given up for one.
            match sample(&etcd, &pids, started, &churn).await {
                Ok(taken) => {
                    eprintln!(
                        "soak: {:.0} s, {} lifecycles, broker RSS {:.1} / {:.1} MB",
                        taken.at, taken.lifecycles, taken.broker_a.rss_mb, taken.broker_b.rss_mb
                    );
                    samples.push(taken);
                }
                Err(e) => eprintln!("soak: a sample failed, taking it again: {e:#}"),
            }
        }
    }
    stop.store(true, Ordering::SeqCst);
    for client in clients {
        client.await.context("a client task failed")?;
    }
    // The role reaper deletes the last roles (then their queue entries) in the pause after the
    // traffic: give it a minute to leave only the brokers' own keys, then report what is left.
    // While it drains, each role deletion changes auth: a refused sample is taken again.
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut last = None;
    loop {
        match sample(&etcd, &pids, started, &churn).await {
            Ok(taken) => {
                let settled = taken.roles == 0 && taken.keys <= OWN_KEYS;
                last = Some(taken);
                if settled {
                    break;
                }
            }
            Err(e) => eprintln!("soak: a sample failed, taking it again: {e:#}"),
        }
        if Instant::now() >= deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    samples.push(last.context("etcd refused every sample for a minute after the churn")?);
    let churn = Arc::try_unwrap(churn).unwrap_or_default();
    Ok((samples, churn))
}

/// Provision, bind, unbind, deprovision one instance; `false` at the first request that did not
/// answer as it should (the rest is cleaned up as far as it goes).
async fn lifecycle(osb: &OsbClient, offering: &Offering, instance: &str) -> bool {
    let provisioned = matches!(
        osb.provision(offering, instance, Duration::from_secs(30)).await,
        Ok(StatusCode::CREATED | StatusCode::OK)
    );
    let bound =
        provisioned && matches!(osb.bind(offering, instance, "b").await, Ok((StatusCode::CREATED, _)));
    let unbound = bound && matches!(osb.unbind(offering, instance, "b").await, Ok(StatusCode::OK));
    let deprovisioned = matches!(osb.deprovision(offering, instance).await, Ok(StatusCode::OK));
    provisioned && bound && unbound && deprovisioned
}

/// Keys of the running brokers themselves, there with no instance: the leader keys of the
/// expiry and inventory tasks and the inventory's counts.
const OWN_KEYS: u64 = 3;

/// etcd's root client, from the stack's env.
async fn root_client(env: &std::collections::BTreeMap<String, String>) -> Result<Client> {
    let options =
        ConnectOptions::new().with_user(env["ETCD_ROOT_USERNAME"].clone(), env["ETCD_ROOT_PASSWORD"].clone());
    let endpoints: Vec<&str> = env["ETCD_ENDPOINTS"].split(',').collect();
    Client::connect(endpoints, Some(options)).await.context("cannot connect to etcd as root")
}

fn pid(env: &std::collections::BTreeMap<String, String>, key: &str) -> Result<u32> {
    env.get(key).and_then(|p| p.parse().ok()).with_context(|| format!("the stack's env has no {key}"))
}

// Each of root's reads is sent again when etcd refuses it for an auth change in between: the
// brokers add and delete users all the time (the broker's own retry, `resend_on_auth_change`).

async fn count_roles(etcd: &Client) -> Result<u64> {
    let roles = resend_on_auth_change(|| async { etcd.clone().role_list().await }).await?;
    Ok(roles.roles().iter().filter(|r| *r != "root").count() as u64)
}

async fn sample(etcd: &Client, pids: &[u32; 3], started: Instant, churn: &Churn) -> Result<Sample> {
    let all = || Some(GetOptions::new().with_all_keys().with_count_only());
    let keys = resend_on_auth_change(|| async { etcd.clone().get("", all()).await }).await?.count();
    let users = resend_on_auth_change(|| async { etcd.clone().user_list().await }).await?;
    let users = users.users().iter().filter(|u| *u != "root").count() as u64;
    // xtask dev's broker runs with the default prefixes.
    let queue_prefix = etcd_broker::broker::names::Names::default().role_deletions_prefix();
    let queue = || Some(GetOptions::new().with_prefix().with_count_only());
    let queued = resend_on_auth_change(|| async { etcd.clone().get(queue_prefix.as_str(), queue()).await })
        .await?
        .count();
    Ok(Sample {
        at: started.elapsed().as_secs_f64(),
        lifecycles: churn.lifecycles.load(Ordering::Relaxed),
        broker_a: process(pids[0])?,
        broker_b: process(pids[1])?,
        etcd_rss_mb: process(pids[2])?.rss_mb,
        keys: u64::try_from(keys).unwrap_or(0),
        users,
        roles: count_roles(etcd).await?,
        queued: u64::try_from(queued).unwrap_or(0),
    })
}

/// A process's resident memory (VmRSS) and open file descriptors, from /proc.
fn process(pid: u32) -> Result<Process> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .with_context(|| format!("process {pid} is gone"))?;
    let rss_kb: f64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .with_context(|| format!("/proc/{pid}/status has no VmRSS"))?;
    let fds = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .with_context(|| format!("cannot list /proc/{pid}/fd"))?
        .count() as u64;
    Ok(Process { rss_mb: rss_kb / 1024.0, fds })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn this_process_has_memory_and_descriptors() {
        let me = process(std::process::id()).unwrap();
        assert!(me.rss_mb > 0.0 && me.fds >= 3, "{me:?}");
        assert!(process(u32::MAX).is_err());
    }
}

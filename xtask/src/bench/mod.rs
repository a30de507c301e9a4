//! `xtask bench`: the broker's latency and throughput per OSB operation, measured
//! against the etcd floor (the same etcd calls without the broker; see `floor.rs`), with
//! optional preloading, the broker's memory, and an orphan check. See docs/performance.md.
//!
//! - `mod.rs`: flags, the run (phases in lifecycle order), the report (table and JSON);
//! - `load.rs`: N concurrent clients over numbered items, latency histograms, progress bar;
//! - `floor.rs`: the broker's etcd call mix per operation and its raw replay;
//! - `cpu.rs`: CPU time per operation of the bench, and of a local broker and etcd;
//! - `proxy.rs`: `xtask bench-proxy`, the tenant proxy against etcd directly;
//! - `relay.rs`: its relays, which do less than the proxy in its place.

mod cpu;
mod floor;
mod load;
pub mod proxy;
pub mod relay;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, ensure, Context, Result};
use etcd_client::{Client, ConnectOptions, GetOptions};
use reqwest::StatusCode;
use serde_json::{json, Value};

use cpu::{CpuUse, Watched};
use etcd_broker::etcd::span;
use etcd_broker::osb::ids::{BindingId, InstanceId};
use etcd_broker_ops::osb::{BrokerTarget, Offering, OsbClient};
use load::{round, Measured};

/// The operations a bench can drive, in the order they run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Op {
    Catalog,
    Provision,
    Bind,
    GetBinding,
    Unbind,
    Deprovision,
    /// provision + bind + unbind + deprovision of a fresh instance, timed as one.
    Lifecycle,
}

impl Op {
    fn name(self) -> &'static str {
        match self {
            Op::Catalog => "catalog",
            Op::Provision => "provision",
            Op::Bind => "bind",
            Op::GetBinding => "get-binding",
            Op::Unbind => "unbind",
            Op::Deprovision => "deprovision",
            Op::Lifecycle => "lifecycle",
        }
    }
}

/// Flags of `xtask bench`.
#[derive(Debug, Clone, clap::Args)]
pub struct BenchArgs {
    /// The broker's base URL.
    #[arg(long, env = "BROKER_URL")]
    pub broker_url: String,
    #[arg(long, env = "BROKER_USERNAME", default_value = "broker")]
    pub broker_username: String,
    /// Prefer the environment variable.
    #[arg(long, env = "BROKER_PASSWORD", hide_env_values = true)]
    pub broker_password: String,
    /// The broker's Prometheus endpoint (for its etcd call counts and RSS), e.g.
    /// http://127.0.0.1:9180/metrics.
    #[arg(long, env = "METRICS_URL")]
    pub metrics_url: Option<String>,
    /// etcd endpoints (comma-separated), for the floor and the orphan check.
    #[arg(long, env = "ETCD_ENDPOINTS", value_delimiter = ',')]
    pub etcd: Vec<String>,
    /// The user the broker uses in etcd (the floor uses the same).
    #[arg(long, env = "ETCD_ROOT_USERNAME", default_value = "root")]
    pub etcd_username: String,
    #[arg(long, env = "ETCD_ROOT_PASSWORD", hide_env_values = true)]
    pub etcd_password: Option<String>,
    /// Concurrent clients.
    #[arg(long, default_value_t = 8, value_parser = clap::value_parser!(u64).range(1..=1024))]
    pub clients: u64,
    /// Operations per phase (instances provisioned, bound, ...).
    #[arg(long, default_value_t = 200, value_parser = clap::value_parser!(u64).range(1..))]
    pub count: u64,
    /// Also stop each phase after this many seconds (shared by its rounds); later phases then
    /// work on what the earlier ones got done (bind what was provisioned, and so on).
    #[arg(long, value_name = "SECONDS")]
    pub duration: Option<u64>,
    /// Operations to measure (comma-separated) [default: all].
    #[arg(long, value_enum, value_delimiter = ',')]
    pub ops: Vec<Op>,
    /// First create this many instances with a binding each (left in place with --keep-preload),
    /// then compact etcd's history up to the preload's last revision (see `compact_preload`).
    #[arg(long, default_value_t = 0)]
    pub preload: u64,
    /// Keep the preloaded instances (to reuse them in the next run with --preload 0).
    #[arg(long)]
    pub keep_preload: bool,
    /// Preload instances only, without a binding each: a million bindings would cost etcd
    /// hours of bcrypt even at cost 4, while the broker's records and indexes are what grows.
    #[arg(long)]
    pub preload_without_bindings: bool,
    /// Concurrent clients while preloading (and cleaning the preload up): the preload is set-up,
    /// not measurement, so it need not wait for --clients.
    #[arg(long, default_value_t = 64, value_parser = clap::value_parser!(u64).range(1..=1024))]
    pub preload_clients: u64,
    /// Skip the floor measurement.
    #[arg(long)]
    pub no_floor: bool,
    /// Measure each phase in this many rounds, the broker's and the floor's in turn, so both
    /// meet the same background (etcd's compactions, the role reaper, other load on the machine).
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u64).range(1..=100))]
    pub rounds: u64,
    /// Before preloading and before the first phase, wait at most this long for the broker's
    /// role reaper to empty its queue (roles of earlier unbinds): each RoleDelete costs etcd
    /// O(users), and deletions left from an earlier run would otherwise stall etcd in the
    /// middle of this one's measurements. 0 measures whatever the reaper is doing.
    #[arg(long, value_name = "SECONDS", default_value_t = 300)]
    pub settle: u64,
    /// Also report the CPU time per operation of this process on this machine, e.g.
    /// `--cpu-of broker=PID --cpu-of etcd=PID` (the bench's own is always reported, as "client").
    #[arg(long = "cpu-of", value_name = "NAME=PID")]
    pub cpu_of: Vec<Watched>,
    /// Before the first phase, wait at most this long until every --cpu-of process has used
    /// at most 5% of a core in each of 3 seconds in a row, printing each second's CPU: after a
    /// preload etcd goes on working (its Go GC over the grown heap, bbolt's commits) and would
    /// otherwise be measured as the first phases' latency. 0 does not wait.
    #[arg(long, value_name = "SECONDS", default_value_t = 120)]
    pub quiet: u64,
    /// Catalog service and plan names [default: the first bindable service, its first plan].
    #[arg(long)]
    pub service: Option<String>,
    #[arg(long)]
    pub plan: Option<String>,
    /// Key prefix of tenant data and of the broker's records, for the orphan check.
    #[arg(long, default_value = etcd_broker::broker::names::DEFAULT_DATA_PREFIX)]
    pub data_prefix: String,
    #[arg(long, default_value = etcd_broker::broker::names::DEFAULT_STATE_PREFIX)]
    pub state_prefix: String,
    /// Write the report as JSON here.
    #[arg(long, value_name = "FILE")]
    pub json: Option<PathBuf>,
}

/// One row of the report.
struct Row {
    op: Op,
    broker: Measured,
    floor: Option<Measured>,
    calls: floor::CallMix,
    /// CPU the watched processes used in the broker's rounds and in the floor's.
    cpu: CpuUse,
    floor_cpu: CpuUse,
}

impl Row {
    /// Its name and the CPU per operation in the broker's rounds and (if any) the floor's.
    fn cpu_per_operation(&self) -> cpu::PerOperation {
        let count = |m: &Measured| m.ok + m.errors;
        let floor = self.floor.as_ref().map(|f| self.floor_cpu.per_operation_us(count(f)));
        (self.op.name(), self.cpu.per_operation_us(count(&self.broker)), floor)
    }
}

struct Bench {
    args: BenchArgs,
    osb: OsbClient,
    offering: Offering,
    http: reqwest::Client,
    etcd: Option<Client>,
    run: String,
    /// The bench itself, then the processes of --cpu-of.
    watched: Vec<Watched>,
}

/// Runs the bench, prints the table, writes the JSON; fails on errors or orphans.
pub fn run(args: BenchArgs) -> Result<()> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?
        .block_on(run_async(args))
}

async fn run_async(args: BenchArgs) -> Result<()> {
    let ops = if args.ops.is_empty() {
        vec![Op::Catalog, Op::Provision, Op::Bind, Op::GetBinding, Op::Unbind, Op::Deprovision, Op::Lifecycle]
    } else {
        args.ops.clone()
    };
    Items::check_order(&ops)?;
    cpu::check_names(&args.cpu_of)?;
    let target = BrokerTarget {
        url: args.broker_url.clone(),
        username: args.broker_username.clone(),
        password: args.broker_password.clone(),
        skip_tls_verification: false,
    };
    let osb = OsbClient::new(target, Duration::from_secs(60))?;
    let offering = osb.offering(args.service.as_deref(), args.plan.as_deref()).await?;
    let etcd = match (&args.etcd_password, args.etcd.is_empty()) {
        (Some(password), false) => {
            // Auto refresh: a long preload outlives etcd's simple tokens (5 minutes idle).
            let options =
                ConnectOptions::new().with_user(&args.etcd_username, password).with_auto_token_refresh(true);
            Some(
                etcd_broker::etcd::connect(&args.etcd, options, &Default::default())
                    .await
                    .context("cannot connect to etcd as the broker's user")?,
            )
        }
        _ => None,
    };
    if !args.no_floor && (etcd.is_none() || args.metrics_url.is_none()) {
        bail!("the floor needs --etcd, ETCD_ROOT_PASSWORD and --metrics-url (or give --no-floor)");
    }
    let run = format!("bench-{}", etcd_broker::secrets::random_password().get(..8).unwrap_or("run"));
    let watched = std::iter::once(Watched::this_process()).chain(args.cpu_of.iter().cloned()).collect();
    let bench = Arc::new(Bench {
        args,
        osb,
        offering,
        http: reqwest::Client::new(),
        etcd,
        run: run.clone(),
        watched,
    });

    let rss_start = bench.rss().await;
    let mut settled = Vec::new();
    if bench.args.preload > 0 {
        settled.push(bench.settle("the preload").await);
        let preloaded = bench.preload().await;
        eprintln!(
            "preloaded {} instances{} in {:.1} s ({} errors)",
            preloaded.ok,
            if bench.args.preload_without_bindings { "" } else { " with a binding each" },
            preloaded.elapsed.as_secs_f64(),
            preloaded.errors
        );
        bench.compact_preload().await;
    }
    let rss_loaded = bench.rss().await;

    settled.push(bench.settle("the first phase").await);
    let quiet = bench.quiet("the first phase").await;
    let quiet_line = quiet.as_ref().map(quiet_summary);
    settled.push(quiet);
    let rows = bench.clone().phases(&ops).await;
    // Cleaned up whatever happened in the phases, so a failure leaves nothing behind.
    bench.clean_up().await;
    let rows = rows?;
    let rss_end = bench.rss().await;
    let checking = std::time::Instant::now();
    let left = bench.leftovers().await?;
    eprintln!("orphan check: {:.1} s", checking.elapsed().as_secs_f64());
    let orphans = left.as_ref().map(|l| l.orphans.clone());

    println!("{}", table(&rows));
    if let Some(cpu) = cpu::table(&rows.iter().map(Row::cpu_per_operation).collect::<Vec<_>>()) {
        println!("{cpu}");
    }
    let mb = |rss: Option<f64>| rss.map_or("?".to_owned(), |b| format!("{:.1} MB", b / 1e6));
    println!(
        "broker RSS: {} at start, {} after preload, {} at the end; orphans: {}",
        mb(rss_start),
        mb(rss_loaded),
        mb(rss_end),
        left.as_ref().map_or("not checked (no etcd credentials)".into(), |l| format!(
            "{}; roles still queued for the role reaper: {}",
            l.orphans.len(),
            l.queued_roles
        ))
    );
    if let Some(line) = quiet_line {
        println!("{line}");
    }
    let report = json!({
        "run": run,
        "settings": {
            "clients": bench.args.clients, "count": bench.args.count, "duration_s": bench.args.duration,
            "preload": bench.args.preload, "floor": !bench.args.no_floor, "rounds": bench.args.rounds,
        },
        "settled": settled.into_iter().flatten().collect::<Vec<_>>(),
        "rss_bytes": { "start": rss_start, "after_preload": rss_loaded, "end": rss_end },
        "operations": rows.iter().map(row_json).collect::<Vec<_>>(),
        "orphans": orphans,
        "queued_roles": left.as_ref().map(|l| l.queued_roles),
    });
    if let Some(path) = &bench.args.json {
        std::fs::write(path, serde_json::to_string_pretty(&report)? + "\n")
            .with_context(|| format!("cannot write {}", path.display()))?;
    }
    let errors: u64 = rows.iter().map(|r| r.broker.errors).sum();
    if errors > 0 {
        let first = rows.iter().find_map(|r| r.broker.first_error.clone()).unwrap_or_default();
        bail!("{errors} operations failed (first: {first})");
    }
    if let Some(orphans) = orphans.filter(|o| !o.is_empty()) {
        bail!(
            "the bench left {} things behind in etcd: {:?}",
            orphans.len(),
            &orphans[..orphans.len().min(10)]
        );
    }
    Ok(())
}

impl Bench {
    fn instance(&self, i: u64) -> String {
        format!("{}-{i}", self.run)
    }

    fn preload_instance(&self, i: u64) -> String {
        format!("{}-pre-{i}", self.run)
    }

    fn clients(&self) -> usize {
        self.args.clients as usize
    }

    fn duration(&self) -> Option<Duration> {
        self.args.duration.map(Duration::from_secs)
    }

    async fn scrape(&self) -> Option<String> {
        self.http.get(self.args.metrics_url.as_deref()?).send().await.ok()?.text().await.ok()
    }

    /// The broker's resident memory from its /metrics (`process_resident_memory_bytes`).
    async fn rss(&self) -> Option<f64> {
        let metrics = self.scrape().await?;
        metrics.lines().find_map(|l| l.strip_prefix("process_resident_memory_bytes ")?.trim().parse().ok())
    }

    /// The keys, users and roles the broker uses, under the prefixes given.
    fn names(&self) -> etcd_broker::broker::names::Names {
        etcd_broker::broker::names::Names::new(&self.args.data_prefix, &self.args.state_prefix)
    }

    /// Waits (up to `--settle`) until no role is queued for the role reaper, saying how long
    /// that took; a queue that does not drain in time is reported and measured through. The
    /// JSON form `{before, queued, left, seconds}`, or nothing without etcd or with `--settle 0`.
    /// Failing to count is only a warning: the run goes on (and, after a preload, still cleans up).
    async fn settle(&self, before: &str) -> Option<Value> {
        let client = self.etcd.as_ref().filter(|_| self.args.settle > 0)?;
        let queue = self.names().role_deletions_prefix();
        let (started, limit) = (std::time::Instant::now(), Duration::from_secs(self.args.settle));
        let mut first = None;
        let queued = loop {
            let counting = floor::resend(client, |mut c| {
                let queue = queue.clone();
                async move { c.get(queue, Some(GetOptions::new().with_prefix().with_count_only())).await }
            });
            let answer = match tokio::time::timeout(SETTLE_COUNT_TIMEOUT, counting).await {
                Ok(answer) => answer.map_err(|e| e.to_string()),
                Err(_) => Err(format!("no answer in {} s", SETTLE_COUNT_TIMEOUT.as_secs())),
            };
            let count = match answer {
                Ok(answer) => answer.count(),
                Err(why) => {
                    eprintln!(
                        "warning: cannot count the role reaper's queue ({why}); {before} starts unsettled"
                    );
                    return None;
                }
            };
            first.get_or_insert(count);
            if count == 0 || started.elapsed() >= limit {
                break count;
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        };
        let (first, seconds) = (first.unwrap_or(0), started.elapsed().as_secs_f64());
        match (first, queued) {
            (0, _) => {}
            (first, 0) => {
                eprintln!(
                    "settled: the role reaper deleted {first} queued roles in {seconds:.1} s before {before}"
                )
            }
            (first, left) => eprintln!(
                "warning: {left} of {first} roles still queued for the role reaper after {} s; \
                 {before} is measured while it deletes them (see --settle)",
                self.args.settle
            ),
        }
        Some(json!({ "before": before, "queued": first, "left": queued, "seconds": round(seconds) }))
    }

    /// Waits (up to `--quiet`) until the --cpu-of processes are quiet ([`cpu::wait_until_quiet`]),
    /// printing each second's CPU; the JSON form `{before, quiet, seconds, cpu_ms}` (`cpu_ms`:
    /// per process, its milliseconds of CPU in each second), or nothing when there is nothing
    /// to watch or the wait is off.
    async fn quiet(&self, before: &str) -> Option<Value> {
        let watched: Vec<Watched> = self.watched.iter().filter(|w| w.name != "client").cloned().collect();
        if watched.is_empty() || self.args.quiet == 0 {
            return None;
        }
        let bound = Duration::from_secs(self.args.quiet);
        let quiet = cpu::wait_until_quiet(&watched, QUIET_MS, QUIET_SECONDS, bound).await;
        let per_process: BTreeMap<&str, Vec<u64>> = watched
            .iter()
            .map(|w| {
                (
                    w.name.as_str(),
                    quiet.samples.iter().map(|s| s.get(&w.name).copied().unwrap_or(0)).collect(),
                )
            })
            .collect();
        let seconds = quiet.samples.len();
        let shown: Vec<String> = per_process.iter().map(|(name, ms)| format!("{name} {ms:?}")).collect();
        if quiet.reached {
            eprintln!("quiet after {seconds} s before {before} (CPU ms per second: {})", shown.join(", "));
        } else {
            eprintln!(
                "warning: not quiet after {seconds} s; {before} is measured while they work (see --quiet; \
                 CPU ms per second: {})",
                shown.join(", ")
            );
        }
        Some(json!({ "before": before, "quiet": quiet.reached, "seconds": seconds, "cpu_ms": per_process }))
    }

    /// Compacts etcd's history up to now and waits until its backend has dropped the old
    /// revisions. A preload of a million instances leaves a million revisions behind; a
    /// production cluster's periodic compaction removed those long ago, while the stack's
    /// (`xtask dev`: every five minutes) would remove them in the middle of a phase, holding
    /// etcd's index and backend for seconds, and measure that instead of the broker. Then
    /// defragments, as operators do after a large compaction (etcd's maintenance guide): the
    /// freed pages otherwise stay in the database between the live ones, and without it the
    /// phases after the preload were measured up to 1.36x slower in etcd alone (the floors;
    /// docs/performance.md). Failing is only a warning: the phases are then measured with the
    /// history, or the freed pages, in place.
    async fn compact_preload(&self) {
        let Some(client) = self.etcd.as_ref() else { return };
        let started = std::time::Instant::now();
        let compacted = async {
            let revision = floor::resend(client, |mut c| async move {
                c.get("/", Some(GetOptions::new().with_count_only())).await
            })
            .await?
            .header()
            .map_or(0, |h| h.revision());
            floor::resend(client, |mut c| async move {
                c.compact(revision, Some(etcd_client::CompactionOptions::new().with_physical())).await
            })
            .await?;
            let compacted_after = started.elapsed();
            floor::resend(client, |mut c| async move { c.defragment().await }).await?;
            Ok::<_, etcd_client::Error>((revision, compacted_after))
        };
        match tokio::time::timeout(COMPACT_TIMEOUT, compacted).await {
            Ok(Ok((revision, compacted_after))) => eprintln!(
                "compacted etcd's history up to revision {revision} in {:.1} s, defragmented in {:.1} s",
                compacted_after.as_secs_f64(),
                (started.elapsed() - compacted_after).as_secs_f64()
            ),
            Ok(Err(e)) => eprintln!("warning: cannot compact the preload's history ({e}); measured with it"),
            Err(_) => eprintln!(
                "warning: compacting the preload's history took over {} s; measured while etcd compacts",
                COMPACT_TIMEOUT.as_secs()
            ),
        }
    }

    async fn preload(self: &Arc<Self>) -> Measured {
        let bench = self.clone();
        load::run("preload", self.args.preload, self.args.preload_clients as usize, None, move |i| {
            let bench = bench.clone();
            async move {
                let id = bench.preload_instance(i);
                bench.osb.provision(&bench.offering, &id, Duration::from_secs(60)).await?;
                if !bench.args.preload_without_bindings {
                    bench.osb.bind(&bench.offering, &id, BINDING).await?;
                }
                Ok(())
            }
        })
        .await
    }

    /// The operations in `ops`' order, each on the items the ones before it got done.
    async fn phases(self: Arc<Self>, ops: &[Op]) -> Result<Vec<Row>> {
        let (mut rows, mut items) = (Vec::new(), Items::new(self.args.count));
        for op in ops {
            let (row, succeeded) = self.clone().phase(*op, items.input(*op)?).await;
            items.after(*op, succeeded);
            rows.push(row);
        }
        Ok(rows)
    }

    /// One operation on `count` items and (unless --no-floor) the same etcd calls without the
    /// broker, in `--rounds` turns: a round of the broker, then a round of the floor with the
    /// call mix the broker has shown so far. Broker and floor thus share the time and whatever
    /// the machine and etcd do meanwhile, instead of one running after the other.
    ///
    /// Works on `items` (instance numbers); returns the row and the items it succeeded for.
    async fn phase(self: Arc<Self>, op: Op, items: Arc<Vec<u64>>) -> (Row, Vec<u64>) {
        let before = self.scrape().await.map(|m| floor::parse_call_counts(&m));
        let rounds = rounds(items.len() as u64, self.args.rounds);
        let duration = self.duration().map(|d| d / rounds.len().max(1) as u32);
        let (mut broker, mut floor, mut calls) = (Measured::empty(), None, floor::CallMix::new());
        let (mut cpu, mut floor_cpu) = (CpuUse::default(), CpuUse::default());
        for (round, range) in rounds.iter().enumerate() {
            let first = range.start as usize;
            let (bench, mine) = (self.clone(), items.clone());
            let label = format!("{} {}/{}", op.name(), round + 1, rounds.len());
            let load = load::run(&label, range.end - range.start, self.clients(), duration, move |i| {
                let (bench, item) = (bench.clone(), mine[first + i as usize]);
                async move { bench.operation(op, item).await }
            });
            let (mut measured, used) = CpuUse::during(&self.watched, load).await;
            measured.succeeded.iter_mut().for_each(|i| *i = items[first + *i as usize]);
            broker.absorb(measured);
            cpu.absorb(used);
            let after = self.scrape().await.map(|m| floor::parse_call_counts(&m));
            if let (Some(before), Some(after)) = (&before, &after) {
                calls = floor::call_mix(before, after, broker.ok);
            }
            let Some(client) = self.etcd.as_ref().filter(|_| !self.args.no_floor && !calls.is_empty()) else {
                continue;
            };
            let (client, mix, run, mine) =
                (client.clone(), Arc::new(calls.clone()), self.run.clone(), items.clone());
            let label = format!("{} floor {}/{}", op.name(), round + 1, rounds.len());
            let load = load::run(&label, range.end - range.start, self.clients(), duration, move |i| {
                let (client, mix, run, item) =
                    (client.clone(), mix.clone(), run.clone(), mine[first + i as usize]);
                async move { floor::replay(&client, &mix, &run, item).await }
            });
            let (measured, used) = CpuUse::during(&self.watched, load).await;
            floor.get_or_insert_with(Measured::empty).absorb(measured);
            floor_cpu.absorb(used);
        }
        let succeeded = std::mem::take(&mut broker.succeeded);
        (Row { op, broker, floor, calls, cpu, floor_cpu }, succeeded)
    }

    async fn operation(&self, op: Op, i: u64) -> Result<()> {
        let (osb, offering, id) = (&self.osb, &self.offering, self.instance(i));
        match op {
            Op::Catalog => {
                let answer = osb.call(reqwest::Method::GET, "/v2/catalog", None).await?;
                ensure!(answer.status == StatusCode::OK, "catalog answered {}", answer.reason());
            }
            Op::Provision => {
                osb.provision(offering, &id, Duration::from_secs(60)).await?;
            }
            Op::Bind => {
                osb.bind(offering, &id, BINDING).await?;
            }
            Op::GetBinding => {
                osb.fetch_binding(&id, BINDING).await?;
            }
            Op::Unbind => {
                let status = osb.unbind(offering, &id, BINDING).await?;
                ensure!(status == StatusCode::OK, "unbind answered {status}");
            }
            Op::Deprovision => {
                let status = osb.deprovision(offering, &id).await?;
                ensure!(status == StatusCode::OK, "deprovision answered {status}");
            }
            Op::Lifecycle => {
                let id = format!("{}-life-{i}", self.run);
                osb.provision(offering, &id, Duration::from_secs(60)).await?;
                osb.bind(offering, &id, BINDING).await?;
                osb.unbind(offering, &id, BINDING).await?;
                osb.deprovision(offering, &id).await?;
            }
        }
        Ok(())
    }

    /// Deprovisions whatever a phase left (e.g. only some phases were asked for) and the
    /// preloaded instances unless kept; removes the floor's objects.
    async fn clean_up(self: &Arc<Self>) {
        let bench = self.clone();
        let count = self.args.count;
        load::run("clean up", count, self.clients(), None, move |i| {
            let bench = bench.clone();
            async move { bench.osb.deprovision(&bench.offering, &bench.instance(i)).await.map(drop) }
        })
        .await;
        if !self.args.keep_preload && self.args.preload > 0 {
            let bench = self.clone();
            load::run(
                "clean up preload",
                self.args.preload,
                self.args.preload_clients as usize,
                None,
                move |i| {
                    let bench = bench.clone();
                    async move {
                        bench.osb.deprovision(&bench.offering, &bench.preload_instance(i)).await.map(drop)
                    }
                },
            )
            .await;
        }
        if let Some(client) = &self.etcd {
            let keep_roles = self.args.keep_preload && self.args.preload > 0;
            if let Err(e) = floor::clean_up(client, &self.run, self.args.count, keep_roles).await {
                eprintln!("warning: cleaning up the floor's objects failed: {e:#}");
            } else if keep_roles {
                eprintln!(
                    "note: the floor's roles (bench-floor.{}.*) are left with the kept preload: each \
                     RoleDelete costs etcd O(users)",
                    self.run
                );
            }
        }
    }

    /// What this run left in etcd: keys under the data and state prefixes that name its
    /// instances (read in pages: a large deployment's listing exceeds gRPC's 4 MB answer), and
    /// the user and role of every binding it made (checked by name, because etcd lists users
    /// only all at once). Kept preloaded instances do not count. A role queued for the broker's
    /// role reaper is not an orphan (its queue entry records it; its user must be gone).
    async fn leftovers(&self) -> Result<Option<Leftovers>> {
        let Some(client) = &self.etcd else { return Ok(None) };
        let kept = format!("{}-pre-", self.run);
        let ours = |name: &str| name.contains(&self.run) && !(self.args.keep_preload && name.contains(&kept));
        let names = self.names();
        let queue = names.role_deletions_prefix();
        let (mut left, mut queued) = (Vec::new(), std::collections::HashSet::new());
        for prefix in [&self.args.data_prefix, &self.args.state_prefix] {
            for key in keys_under(client, prefix).await?.into_iter().filter(|k| ours(k)) {
                match key.strip_prefix(&queue) {
                    Some(role) => queued.insert(role.to_owned()),
                    None => {
                        left.push(key);
                        true
                    }
                };
            }
        }
        let mut instances: Vec<String> =
            (0..self.args.count).flat_map(|i| [self.instance(i), format!("{}-life-{i}", self.run)]).collect();
        if !self.args.keep_preload {
            instances.extend((0..self.args.preload).map(|i| self.preload_instance(i)));
        }
        let binding = BindingId::parse(BINDING).expect("a valid binding id");
        for instance in instances {
            let Ok(instance) = InstanceId::parse(&instance) else { continue };
            let (user, role) = (names.user(&instance, &binding), names.role(&instance, &binding));
            let (user, role) = (user.as_str(), role.as_str());
            if found(floor::resend(client, |mut c| async move { c.user_get(user).await }).await)? {
                left.push(format!("user {user}"));
            }
            let role_found = floor::resend(client, |mut c| async move { c.role_get(role).await });
            if found(role_found.await)? && !queued.contains(role) {
                left.push(format!("role {role}"));
            }
        }
        Ok(Some(Leftovers { orphans: left, queued_roles: queued.len() }))
    }
}

/// What a run left in etcd.
struct Leftovers {
    /// Keys, users and roles no broker record accounts for.
    orphans: Vec<String>,
    /// Roles of this run in the broker's queue of roles to delete.
    queued_roles: usize,
}

/// Which instance numbers each phase works on. Normally all of `0..count`; when `--duration`
/// cut a phase short, the later phases work only on what it got done (a bind needs an instance
/// provisioned, an unbind a binding made), so a shorter run measures fewer operations instead
/// of failing on the rest.
struct Items {
    count: u64,
    provisioned: Option<Vec<u64>>,
    bound: Option<Vec<u64>>,
}

impl Items {
    fn new(count: u64) -> Self {
        Items { count, provisioned: None, bound: None }
    }

    /// The items `op` works on; an error when it needs a phase that has not run before it.
    fn input(&self, op: Op) -> Result<Arc<Vec<u64>>> {
        let needs = |state: &Option<Vec<u64>>, phases: &str| {
            state.clone().with_context(|| {
                format!("{} works on the instances that {phases} made earlier in the run: put them before it in --ops", op.name())
            })
        };
        let items = match op {
            Op::Catalog => (0..self.count * 10).collect(),
            Op::Provision | Op::Lifecycle => (0..self.count).collect(),
            Op::Bind | Op::Deprovision => needs(&self.provisioned, "provision")?,
            Op::GetBinding | Op::Unbind => needs(&self.bound, "provision and bind")?,
        };
        Ok(Arc::new(items))
    }

    /// Refuses an order of operations in which one needs a phase that does not run before it,
    /// before the first phase has made anything that would then be left behind.
    fn check_order(ops: &[Op]) -> Result<()> {
        let mut trial = Items::new(0);
        for op in ops {
            trial.input(*op)?;
            trial.after(*op, Vec::new());
        }
        Ok(())
    }

    /// Records what `op` did to the items it `succeeded` for.
    fn after(&mut self, op: Op, mut succeeded: Vec<u64>) {
        succeeded.sort_unstable();
        let without = |state: &mut Option<Vec<u64>>, gone: &[u64]| {
            if let Some(items) = state {
                items.retain(|i| gone.binary_search(i).is_err());
            }
        };
        match op {
            Op::Provision => self.provisioned = Some(succeeded),
            Op::Bind => self.bound = Some(succeeded),
            Op::Unbind => without(&mut self.bound, &succeeded),
            Op::Deprovision => {
                without(&mut self.provisioned, &succeeded);
                without(&mut self.bound, &succeeded);
            }
            Op::Catalog | Op::GetBinding | Op::Lifecycle => {}
        }
    }
}

/// Items `0..count` cut into `rounds` consecutive ranges of nearly equal size (fewer when
/// there are fewer items than rounds).
fn rounds(count: u64, rounds: u64) -> Vec<std::ops::Range<u64>> {
    let rounds = rounds.clamp(1, count.max(1));
    (0..rounds).map(|r| count * r / rounds..count * (r + 1) / rounds).filter(|r| !r.is_empty()).collect()
}

/// How long one count of the role reaper's queue may take (the bench's etcd client has no
/// request timeout of its own).
const SETTLE_COUNT_TIMEOUT: Duration = Duration::from_secs(10);

/// How long compacting a preload's history and defragmenting after it may take: etcd walks
/// every revision up to the compaction's, in batches with pauses between them (about 40 s for
/// a million), and the defragmentation rewrites the database (about 10 s).
const COMPACT_TIMEOUT: Duration = Duration::from_secs(300);

/// A process using at most this many milliseconds of CPU in a second is quiet (5% of a core;
/// an idle etcd or broker uses a few: leases, health checks, the role reaper's poll).
const QUIET_MS: u64 = 50;

/// Quiet seconds in a row before the first phase starts.
const QUIET_SECONDS: usize = 3;

/// The binding id every bench binding uses.
const BINDING: &str = "b";

/// Every key under `prefix`, a page at a time, each page read in bounded ranges as the broker
/// reads its walks ([`span::page`]): a page read up to the prefix's end costs etcd every key
/// after it, so a million keys' listing took about ten minutes that way.
async fn keys_under(client: &Client, prefix: &str) -> Result<Vec<String>> {
    const PAGE: usize = 5_000;
    let (mut from, mut hint, mut keys) = (prefix.to_owned(), None, Vec::new());
    loop {
        let range = |start: Vec<u8>, end: Vec<u8>, limit: usize| async move {
            let options = GetOptions::new()
                .with_range(end)
                .with_keys_only()
                .with_limit(i64::try_from(limit).unwrap_or(i64::MAX));
            let response = floor::resend(client, |mut c| {
                let (start, options) = (start.clone(), options.clone());
                async move { c.get(start, Some(options)).await }
            })
            .await?;
            Ok::<_, anyhow::Error>(
                response
                    .kvs()
                    .iter()
                    .map(|kv| (String::from_utf8_lossy(kv.key()).into_owned(), ()))
                    .collect(),
            )
        };
        let (page, learned) = span::page(prefix, &from, PAGE, hint, range).await?;
        hint = learned.or(hint);
        let full = page.len() == PAGE;
        keys.extend(page.into_iter().map(|(key, ())| key));
        match keys.last() {
            Some(last) if full => from = format!("{last}\0"),
            _ => return Ok(keys),
        }
    }
}

/// One line for the report's text: how long the wait for quiet processes took and each
/// second's CPU, from [`Bench::quiet`]'s JSON.
fn quiet_summary(quiet: &Value) -> String {
    let seconds = quiet["seconds"].as_u64().unwrap_or(0);
    let samples = quiet["cpu_ms"]
        .as_object()
        .map(|by| by.iter().map(|(name, ms)| format!("{name} {ms}")).collect::<Vec<_>>().join(", "))
        .unwrap_or_default();
    let outcome = if quiet["quiet"].as_bool() == Some(true) { "quiet after" } else { "NOT quiet after" };
    format!("before the first phase: {outcome} {seconds} s (CPU ms in each second: {samples})")
}

/// Whether a user/role lookup found it; "not found" is the answer hoped for.
fn found<T>(lookup: Result<T, etcd_client::Error>) -> Result<bool> {
    match lookup {
        Ok(_) => Ok(true),
        Err(e) if e.to_string().contains("not found") => Ok(false),
        Err(e) => Err(e.into()),
    }
}

fn ratio(row: &Row) -> Option<f64> {
    let floor = row.floor.as_ref()?.quantile_ms(0.5);
    (floor > 0.0).then(|| row.broker.quantile_ms(0.5) / floor)
}

fn row_json(row: &Row) -> Value {
    let (_, broker_cpu, floor_cpu) = row.cpu_per_operation();
    json!({
        "operation": row.op.name(),
        "broker": row.broker.to_json(),
        "floor": row.floor.as_ref().map(Measured::to_json),
        "p50_ratio": ratio(row).map(round),
        "etcd_calls_per_operation": row.calls,
        "cpu_us_per_operation": { "broker": broker_cpu, "floor": floor_cpu },
    })
}

/// The terminal table: one row per operation.
fn table(rows: &[Row]) -> String {
    let mut out = format!(
        "{:<12} {:>7} {:>6} {:>9} {:>8} {:>8} {:>8} {:>8} {:>10} {:>6}  {}\n",
        "operation",
        "count",
        "errors",
        "ops/s",
        "p50 ms",
        "p90 ms",
        "p99 ms",
        "max ms",
        "floor p50",
        "ratio",
        "etcd calls/op"
    );
    for row in rows {
        let b = &row.broker;
        out += &format!(
            "{:<12} {:>7} {:>6} {:>9.0} {:>8.2} {:>8.2} {:>8.2} {:>8.2} {:>10} {:>6}  {}\n",
            row.op.name(),
            b.ok + b.errors,
            b.errors,
            b.throughput(),
            b.quantile_ms(0.5),
            b.quantile_ms(0.9),
            b.quantile_ms(0.99),
            b.max_ms(),
            row.floor.as_ref().map_or("-".into(), |f| format!("{:.2}", f.quantile_ms(0.5))),
            ratio(row).map_or("-".into(), |r| format!("{r:.2}")),
            floor::describe(&row.calls),
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use etcd_broker::etcd::prefix_end;

    use super::*;

    #[test]
    fn prefix_end_is_the_first_key_after_the_prefix() {
        assert_eq!(prefix_end(b"/etcd-broker/"), b"/etcd-broker0");
        assert_eq!(prefix_end(b"a\xff"), b"b");
        assert_eq!(prefix_end(b"\xff\xff"), vec![0]);
    }

    #[test]
    fn rounds_cover_every_item_once_in_order() {
        assert_eq!(rounds(10, 4), vec![0..2, 2..5, 5..7, 7..10]);
        assert_eq!(rounds(3, 4), vec![0..1, 1..2, 2..3]);
        assert_eq!(rounds(7, 1), vec![0..7]);
        assert!(rounds(0, 4).is_empty());
    }

    #[test]
    fn later_phases_work_on_what_the_earlier_ones_got_done() {
        let mut items = Items::new(6);
        let input = |items: &Items, op| items.input(op).unwrap().as_ref().clone();
        assert_eq!(input(&items, Op::Catalog).len(), 60);
        assert_eq!(input(&items, Op::Provision), [0, 1, 2, 3, 4, 5]);
        let error = items.input(Op::GetBinding).unwrap_err().to_string();
        assert!(error.contains("provision and bind") && error.contains("--ops"), "{error}");
        // A provision cut short by --duration (items 4 and 5 never ran, 2 failed).
        items.after(Op::Provision, vec![3, 0, 1]);
        assert_eq!(input(&items, Op::Bind), [0, 1, 3]);
        items.after(Op::Bind, vec![1, 3]);
        assert_eq!(input(&items, Op::GetBinding), [1, 3]);
        items.after(Op::GetBinding, vec![1]);
        assert_eq!(input(&items, Op::Unbind), [1, 3]);
        items.after(Op::Unbind, vec![3]);
        assert_eq!(input(&items, Op::GetBinding), [1]);
        items.after(Op::Deprovision, vec![0, 1]);
        assert_eq!(input(&items, Op::Deprovision), [3]);
        assert!(input(&items, Op::Unbind).is_empty());
        assert_eq!(input(&items, Op::Lifecycle), [0, 1, 2, 3, 4, 5]);

        assert!(Items::check_order(&[Op::Provision, Op::Bind, Op::GetBinding, Op::Deprovision]).is_ok());
        assert!(Items::check_order(&[Op::Catalog, Op::Lifecycle]).is_ok());
        assert!(Items::check_order(&[Op::Provision, Op::GetBinding]).is_err());
        assert!(Items::check_order(&[Op::Bind, Op::Provision]).is_err());
    }

    #[test]
    fn a_lookup_that_finds_nothing_is_not_an_error() {
        let not_found = etcd_client::Error::GRpcStatus(tonic::Status::failed_precondition(
            "etcdserver: user name not found",
        ));
        assert!(!found::<()>(Err(not_found)).unwrap());
        assert!(found(Ok(())).unwrap());
        let refused = etcd_client::Error::GRpcStatus(tonic::Status::permission_denied("permission denied"));
        assert!(found::<()>(Err(refused)).is_err());
    }

    #[test]
    fn the_quiet_line_shows_each_seconds_cpu() {
        let quiet =
            json!({ "quiet": true, "seconds": 3, "cpu_ms": { "broker": [0, 1, 0], "etcd": [15, 5, 8] } });
        assert_eq!(
            quiet_summary(&quiet),
            "before the first phase: quiet after 3 s (CPU ms in each second: broker [0,1,0], etcd [15,5,8])"
        );
        let busy = json!({ "quiet": false, "seconds": 120, "cpu_ms": { "etcd": [900] } });
        assert!(quiet_summary(&busy).contains("NOT quiet after 120 s"), "{}", quiet_summary(&busy));
    }
}

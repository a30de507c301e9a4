//! `xtask bench-scenario` (`make bench`): the standard benchmark, written into the generated
//! regions of docs/performance.md.
//!
//! - a local stack at etcd's default bcrypt cost: `bench` with 8 and 64 clients, 8 clients on
//!   the plan with certificate bindings (no bcrypt: compared with the password binds of the same
//!   stack), then the catalog with wrk -t2 -c32 (Debian's wrk, unpacked into tools/wrk on first
//!   use);
//! - a local stack at --bcrypt-cost 4 (at the default cost, 100,000 binds would take etcd close
//!   to two hours of bcrypt): 1 and 8 clients, then 8 clients after preloading --preload
//!   instances with a binding each, compared with the empty run; then the start-up time of a
//!   second broker on the same config against the preloaded etcd;
//! - on that stack, before the preload, what sealing costs: its broker (sealing on) and a second
//!   one with sealing off, 8 clients, provision + bind + GET binding, in alternating runs;
//! - CPU per operation of the bench, the broker and etcd (`--cpu-of`), all on this machine;
//! - the tenant proxy against etcd directly (`xtask bench-proxy`, its own etcd and proxy): put,
//!   range and watch events, 1 and 8 clients, 3 rounds alternating the targets.
//!
//! Each stack is a `DevProcess` and each bench a process of its own (this binary's `bench`),
//! so the CPU figures of client, broker and etcd are separate processes'. Figures depend on
//! the machine: the document records it. Not a test; xtask/tests/it/bench.rs is the smoke run.
//!
//! - `doc.rs`: the generated regions of a markdown file;
//! - `tables.rs`: the comparison and targets tables from the bench's JSON reports.

pub mod doc;
mod tables;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::{bail, ensure, Context, Result};
use serde_json::Value;

use crate::stack::{catch_stop_signals, output_unless_interrupted, DevProcess, SecondBroker, StackOptions};

/// Flags of `xtask bench-scenario`.
#[derive(Debug, Clone, clap::Args)]
pub struct ScenarioArgs {
    /// Operations per phase of each bench run.
    #[arg(long, env = "BENCH_COUNT", default_value_t = 1000, value_parser = clap::value_parser!(u64).range(1..))]
    pub count: u64,
    /// Instances (without bindings: their bcrypt would dominate) preloaded before the last
    /// run; then `etcd-broker-ops reconcile` is timed over them.
    #[arg(long, env = "BENCH_PRELOAD", default_value_t = 1_000_000)]
    pub preload: u64,
    /// The document whose generated regions receive the figures.
    #[arg(long, env = "BENCH_OUT", default_value = "docs/performance.md")]
    pub out: PathBuf,
    /// The `etcd-broker` binary timed at start-up [default: the one next to this program].
    #[arg(long)]
    pub broker_binary: Option<PathBuf>,
    /// Run even though this program is a debug build (its bench, which is the load, is then
    /// slower than the broker it measures); for trying the scenario out, not for figures.
    #[arg(long)]
    pub allow_debug_build: bool,
    /// Measure only these regions of the document (comma-separated, e.g.
    /// `default-8,default-8-certificate`) and rewrite only them: the whole scenario takes
    /// half an hour and more. `machine` is always rewritten, `targets` only by a whole run.
    #[arg(long, env = "BENCH_ONLY", value_delimiter = ',', value_parser = clap::builder::PossibleValuesParser::new(MEASURED))]
    pub only: Vec<String>,
}

/// The regions a run can measure, as `--only` names them.
const MEASURED: [&str; 12] = [
    "default-8",
    "default-8-certificate",
    "default-64",
    "catalog-wrk",
    "cost4-1",
    "cost4-8",
    "sealing",
    "credential-store",
    "preload-8",
    "scale",
    "startup",
    "proxy",
];

/// The build profile of this program, recorded with the figures.
const PROFILE: &str = if cfg!(debug_assertions) { "debug" } else { "release" };

/// Regions of the document the scenario writes, checked before anything runs.
const REGIONS: [&str; 14] = [
    "machine",
    "default-8",
    "default-8-certificate",
    "default-64",
    "cost4-1",
    "cost4-8",
    "sealing",
    "credential-store",
    "preload-8",
    "catalog-wrk",
    "scale",
    "startup",
    "proxy",
    "targets",
];

/// One bench run: its printed tables and its JSON report.
struct BenchRun {
    text: String,
    report: Value,
}

/// Runs the scenario and rewrites the document's generated regions.
///
/// SIGINT and SIGTERM stop the run: the program measuring is killed, the stacks are stopped
/// and the work folder removed (their Drops, which a signal's default action would skip), and
/// the error is [`Interrupted`].
pub fn run(xtask: &Path, args: &ScenarioArgs) -> Result<()> {
    // The bench processes are this binary: a debug build's load generator distorts every
    // figure, and `cargo run` builds one silently.
    ensure!(
        PROFILE == "release" || args.allow_debug_build,
        "this xtask is a debug build, whose figures would be wrong: run `make bench` (it builds \
         and runs the release binaries), or pass --allow-debug-build to try the scenario out"
    );
    catch_stop_signals();
    let doc =
        std::fs::read_to_string(&args.out).with_context(|| format!("cannot read {}", args.out.display()))?;
    doc::check_regions(&doc, &REGIONS).with_context(|| args.out.display().to_string())?;
    let broker = args.broker_binary.clone().unwrap_or_else(|| xtask.with_file_name("etcd-broker"));
    ensure!(
        broker.is_file(),
        "{} does not exist: build it with `cargo build --release -p etcd-broker` (make bench does)",
        broker.display()
    );
    // Before the measurements: a machine that cannot be described should not cost a run.
    let machine = machine(args.count, PROFILE)?;
    let work = tempfile::tempdir().context("cannot create a temporary folder")?;
    let wrk = wrk_binary(work.path());

    let mut catalog_rps = None;
    let wanted = |region: &str| args.only.is_empty() || args.only.iter().any(|r| r == region);
    let mut runs = BTreeMap::new();
    let mut regions: Vec<(&str, String)> = vec![("machine", machine)];
    // Without the proxy: BROKER_PID's CPU is then the broker's alone.
    let without_proxy = StackOptions { proxy: false, ..StackOptions::default() };
    let bench = |stack: &DevProcess, name: &str, extra: &[&str]| {
        bench(xtask, args.count, &stack.env, work.path(), name, extra)
    };
    let lifecycle = ["provision", "bind", "get-binding", "unbind", "deprovision"].join(",");
    if ["default-8", "default-8-certificate", "default-64", "catalog-wrk"].into_iter().any(wanted) {
        let stack = DevProcess::start(xtask, &without_proxy, &work.path().join("default"))?;
        if wanted("default-8") {
            runs.insert("default-8", bench(&stack, "default-8", &["--clients", "8"])?);
        }
        if wanted("default-8-certificate") {
            // The local stack's plan with certificate bindings (`dev`'s CERTIFICATE_PLAN_ID).
            let extra = ["--clients", "8", "--plan", "certificate", "--ops", &lifecycle];
            runs.insert("default-8-certificate", bench(&stack, "default-8-certificate", &extra)?);
        }
        if wanted("default-64") {
            runs.insert(
                "default-64",
                bench(&stack, "default-64", &["--clients", "64", "--ops", &lifecycle])?,
            );
        }
        if wanted("catalog-wrk") {
            let (line, rps) = match &wrk {
                Some(wrk) => catalog_with_wrk(wrk, &stack.env)?,
                None => ("(wrk not available)".to_owned(), None),
            };
            regions.push(("catalog-wrk", line));
            catalog_rps = rps;
        }
        stop(stack);
    }

    let mut sealing_ratios = Vec::new();
    let mut stored_ratios = Vec::new();
    let mut startup_ms = None;
    let on_cost4 = ["cost4-1", "cost4-8", "sealing", "credential-store", "preload-8", "scale", "startup"];
    if on_cost4.into_iter().any(wanted) {
        let cost4 = StackOptions { bcrypt_cost: Some(4), ..without_proxy.clone() };
        let stack = DevProcess::start(xtask, &cost4, &work.path().join("cost4"))?;
        if wanted("cost4-1") {
            runs.insert("cost4-1", bench(&stack, "cost4-1", &["--clients", "1"])?);
        }
        if wanted("cost4-8") || wanted("scale") {
            runs.insert("cost4-8", bench(&stack, "cost4-8", &["--clients", "8"])?);
        }
        if wanted("sealing") {
            let sealing = sealing_comparison(xtask, &broker, &stack, args.count, work.path())?;
            let (text, ratios) = tables::sealing_table(&sealing.sealed, &sealing.unsealed);
            regions.push(("sealing", text));
            sealing_ratios = ratios;
        }
        if wanted("credential-store") {
            let stored = credential_store_comparison(xtask, &broker, &stack, args.count, work.path())?;
            let (text, ratios) = tables::credential_store_table(&stored.sealed, &stored.unsealed);
            regions.push(("credential-store", text));
            stored_ratios = ratios;
        }
        if wanted("preload-8") || wanted("scale") || wanted("startup") {
            let preload = args.preload.to_string();
            let extra =
                ["--clients", "8", "--preload", &preload, "--keep-preload", "--preload-without-bindings"];
            runs.insert("preload-8", bench(&stack, "preload-8", &extra)?);
        }
        if wanted("scale") {
            // The control: an empty stack measured while the preloaded one still holds its
            // memory, so both runs see the same machine (the empty run above came before the
            // preload filled etcd's heap and the page cache).
            let beside = DevProcess::start(xtask, &cost4, &work.path().join("cost4-beside"))?;
            let mut empty = vec![bench(&beside, tables::EMPTY_BESIDE, &["--clients", "8"])?.report];
            let mut preloaded = vec![runs["preload-8"].report.clone()];
            for turn in 2..=tables::SCALE_RUNS_PER_STACK {
                preloaded.push(bench(&stack, &format!("preload-8-run-{turn}"), &["--clients", "8"])?.report);
                let name = format!("{}-run-{turn}", tables::EMPTY_BESIDE);
                empty.push(bench(&beside, &name, &["--clients", "8"])?.report);
            }
            stop(beside);
            let mean = |reports: &[Value]| tables::mean_report(&reports.iter().collect::<Vec<_>>());
            let text = format!("(the mean of {} runs)", empty.len());
            runs.insert(tables::EMPTY_BESIDE, BenchRun { text, report: mean(&empty) });
            if let Some(run) = runs.get_mut("preload-8") {
                run.report = mean(&preloaded);
            }
            let scale = tables::scale_table(
                &runs["cost4-8"].report,
                &runs[tables::EMPTY_BESIDE].report,
                &runs["preload-8"].report,
            );
            let heading = format!(
                "Preloaded: {} instances. Preloaded and empty: the mean of {} runs each, measured in turn \
                 (the preload-8 table above is the first).",
                args.preload,
                tables::SCALE_RUNS_PER_STACK
            );
            regions.push(("scale", format!("{heading}\n\n{scale}")));
        }
        if wanted("startup") {
            let startup = startup_time(&broker, &stack)?;
            let reconcile = reconcile_run(&xtask.with_file_name("etcd-broker-ops"), &stack)?;
            regions.push((
                "startup",
                format!(
                    "A broker started against the preloaded etcd answered its first catalog request after {} ms.\n\n\
                     `etcd-broker-ops reconcile --json` over the preloaded deployment: {:.1} s, {:.0} MB peak RSS, \
                     exit code {}.",
                    startup.as_millis(),
                    reconcile.seconds,
                    reconcile.max_rss_mb,
                    reconcile.exit_code,
                ),
            ));
            startup_ms = u64::try_from(startup.as_millis()).ok();
        }
        stop(stack);
    }

    if wanted("proxy") {
        let proxy = proxy_bench(xtask, args.count, work.path())?;
        regions.push(("proxy", format!("```\n{}\n```\n", proxy.text.trim_end())));
        runs.insert("proxy", proxy);
    }

    for name in tables::RUNS {
        let Some(run) = runs.get(name).filter(|_| wanted(name)) else { continue };
        let mut text = String::new();
        if name == "preload-8" {
            text += &format!("Preloaded: {} instances (no bindings).\n\n", args.preload);
        }
        text += &format!("```\n{}\n```\n", run.text.trim_end());
        regions.push((name, text));
    }
    if args.only.is_empty() {
        let reports: BTreeMap<String, Value> =
            runs.iter().map(|(name, run)| ((*name).to_owned(), run.report.clone())).collect();
        regions.push((
            "targets",
            tables::targets_table(&reports, catalog_rps, startup_ms, &sealing_ratios, &stored_ratios),
        ));
    }

    let mut doc = doc;
    for (name, contents) in regions {
        doc = doc::replace_region(&doc, name, &contents)?;
    }
    std::fs::write(&args.out, doc).with_context(|| format!("cannot write {}", args.out.display()))?;
    eprintln!("bench-scenario: wrote {}", args.out.display());
    Ok(())
}

/// Stops a stack whose measurements are taken: a stack that stops badly is worth a warning,
/// not the loss of the figures, which are what the run is for.
fn stop(stack: DevProcess) {
    if let Err(e) = stack.stop() {
        eprintln!("bench-scenario: warning: {e:#}");
    }
}

/// `xtask bench --count N --json <work>/NAME.json --cpu-of ... EXTRA` against the broker and
/// etcd that `env` describes (a stack's env file); its tables are printed as they come and kept
/// for the document.
fn bench(
    xtask: &Path,
    count: u64,
    env: &BTreeMap<String, String>,
    work: &Path,
    name: &str,
    extra: &[&str],
) -> Result<BenchRun> {
    eprintln!("bench-scenario: {name}");
    let json = work.join(format!("{name}.json"));
    let mut command = Command::new(xtask);
    command
        .args(["bench", "--count", &count.to_string(), "--json"])
        .arg(&json)
        .args(["--cpu-of", &format!("broker={}", env["BROKER_PID"])])
        .args(["--cpu-of", &format!("etcd={}", env["ETCD_PID"])])
        .args(extra)
        .envs(env);
    let out = output_unless_interrupted(&mut command, true)
        .with_context(|| format!("cannot run {} bench", xtask.display()))?;
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    print!("{text}");
    if !out.status.success() {
        bail!("bench {name} failed ({})", out.status);
    }
    let report = std::fs::read_to_string(&json).with_context(|| format!("bench {name} wrote no report"))?;
    let report = serde_json::from_str(&report).with_context(|| format!("bench {name}'s report"))?;
    Ok(BenchRun { text, report })
}

/// `xtask bench-proxy --count N --rounds 3 --json <work>/proxy.json`: its own etcd 3.5 and the
/// release proxy next to this program (make bench builds it), printed as it comes and kept.
fn proxy_bench(xtask: &Path, count: u64, work: &Path) -> Result<BenchRun> {
    eprintln!("bench-scenario: proxy");
    let proxy = xtask.with_file_name("etcd-broker-proxy");
    ensure!(
        proxy.is_file(),
        "{} does not exist: build it with `cargo build --release -p etcd-broker-proxy` (make bench does)",
        proxy.display()
    );
    let json = work.join("proxy.json");
    let mut command = Command::new(xtask);
    command.args(["bench-proxy", "--count", &count.to_string(), "--rounds", "3", "--json"]).arg(&json);
    let out = output_unless_interrupted(&mut command, true)
        .with_context(|| format!("cannot run {} bench-proxy", xtask.display()))?;
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    print!("{text}");
    if !out.status.success() {
        bail!("bench-proxy failed ({})", out.status);
    }
    let report = std::fs::read_to_string(&json).context("bench-proxy wrote no report")?;
    let report = serde_json::from_str(&report).context("bench-proxy's report")?;
    Ok(BenchRun { text, report })
}

/// tools/wrk's wrk (Debian's package and the LuaJIT it links, unpacked there with
/// `apt-get download` + `dpkg -x` on first use: no root needed); `None`, said on stderr,
/// when it cannot be had.
fn wrk_binary(work: &Path) -> Option<PathBuf> {
    let root = local_etcd::tools_dir().join("wrk");
    let wrk = root.join("usr/bin/wrk");
    let has_luajit = || root.join("usr/lib/x86_64-linux-gnu/libluajit-5.1.so.2").exists();
    if wrk.is_file() && has_luajit() {
        return Some(wrk);
    }
    let unpacked = (|| -> Result<()> {
        let download = Command::new("apt-get")
            .args(["download", "wrk", "libluajit-5.1-2"])
            .current_dir(work)
            .output()
            .context("apt-get")?;
        ensure!(download.status.success(), "apt-get download: {}", String::from_utf8_lossy(&download.stderr));
        for entry in std::fs::read_dir(work)? {
            let path = entry?.path();
            if path.extension().is_some_and(|e| e == "deb") {
                let status = Command::new("dpkg").arg("-x").arg(&path).arg(&root).status().context("dpkg")?;
                ensure!(status.success(), "dpkg -x {}", path.display());
            }
        }
        ensure!(wrk.is_file() && has_luajit(), "the packages hold no wrk or libluajit");
        Ok(())
    })();
    match unpacked {
        Ok(()) => Some(wrk),
        Err(e) => {
            eprintln!(
                "bench-scenario: could not install wrk ({e:#}); the catalog figure comes from bench only"
            );
            None
        }
    }
}

/// wrk -t2 -c32 -d10s on the catalog with basic auth: its latency and requests/s lines joined
/// by `;`, and the requests/s.
fn catalog_with_wrk(wrk: &Path, env: &BTreeMap<String, String>) -> Result<(String, Option<f64>)> {
    use base64::Engine as _;
    let credentials = format!("{}:{}", env["BROKER_USERNAME"], env["BROKER_PASSWORD"]);
    let auth = base64::engine::general_purpose::STANDARD.encode(credentials);
    let libs =
        wrk.parent().and_then(Path::parent).map(|usr| usr.join("lib/x86_64-linux-gnu")).unwrap_or_default();
    eprintln!("bench-scenario: wrk on the catalog");
    let mut command = Command::new(wrk);
    command
        .env("LD_LIBRARY_PATH", libs)
        .args(["-t2", "-c32", "-d10s", "-H"])
        .arg(format!("Authorization: Basic {auth}"))
        .args(["-H", "X-Broker-API-Version: 2.17"])
        .arg(format!("{}/v2/catalog", env["BROKER_URL"]));
    let out = output_unless_interrupted(&mut command, false).context("cannot run wrk")?;
    ensure!(out.status.success(), "wrk failed: {}", String::from_utf8_lossy(&out.stderr));
    Ok(wrk_summary(&String::from_utf8_lossy(&out.stdout)))
}

/// wrk's `Latency` and `Requests/sec` lines, blanks squeezed and joined by `;`, and the
/// requests/s as a number.
fn wrk_summary(output: &str) -> (String, Option<f64>) {
    let lines: Vec<String> = output
        .lines()
        .filter(|l| l.contains("Requests/sec") || l.contains("Latency"))
        .map(|l| l.split_whitespace().collect::<Vec<_>>().join(" "))
        .collect();
    let rps = output
        .lines()
        .find_map(|l| l.trim().strip_prefix("Requests/sec:"))
        .and_then(|v| v.trim().parse().ok());
    (lines.join(";"), rps)
}

/// A second broker on the stack's config (other ports) started and timed until it answers the
/// catalog; the stack's etcd holds the preload by then.
fn startup_time(broker: &Path, stack: &DevProcess) -> Result<Duration> {
    SecondBroker::start(broker, stack, "startup", &[])?.answered(stack)
}

/// What a reconcile over the preloaded deployment cost.
struct ReconcileRun {
    seconds: f64,
    max_rss_mb: f64,
    exit_code: i32,
}

/// Runs `etcd-broker-ops reconcile --json` on the stack's config and measures its wall time
/// and peak memory (the child's own rusage, from wait4). Exit code 1 (findings) is a result,
/// not a failure: the figures are the point.
fn reconcile_run(ops: &Path, stack: &DevProcess) -> Result<ReconcileRun> {
    ensure!(ops.is_file(), "{} does not exist: build it (make bench does)", ops.display());
    let started = std::time::Instant::now();
    let child = Command::new(ops)
        .args(["reconcile", "--json", "--config"])
        .arg(stack.dir().join("broker.toml"))
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .with_context(|| format!("cannot run {}", ops.display()))?;
    let pid = i32::try_from(child.id()).context("a pid beyond i32")?;
    let mut status = 0;
    // SAFETY: an all-zero rusage is a valid value; wait4 fills it for our own child `pid`,
    // which nothing else waits for (`child` is never waited on through std afterwards).
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    let waited = unsafe { libc::wait4(pid, &mut status, 0, &mut usage) };
    ensure!(waited == pid, "waiting for reconcile failed: {}", std::io::Error::last_os_error());
    drop(child); // std never waits on drop: the pid is reaped above
    let exit_code = if libc::WIFEXITED(status) { libc::WEXITSTATUS(status) } else { -1 };
    // ru_maxrss is in kilobytes on Linux.
    Ok(ReconcileRun {
        seconds: started.elapsed().as_secs_f64(),
        max_rss_mb: usage.ru_maxrss as f64 / 1024.0,
        exit_code,
    })
}

/// Reports of [`sealing_comparison`]: one per run, in the order they ran.
struct SealingRuns {
    sealed: Vec<Value>,
    unsealed: Vec<Value>,
}

/// Pairs of runs measuring what sealing costs: the stack's broker (sealing on) and a second
/// broker on the same config and etcd with `secrets.sealing = "off"`, 8 clients each, taking
/// turns so that both meet the same background (the role reaper's deletions, compactions).
fn sealing_comparison(
    xtask: &Path,
    broker: &Path,
    stack: &DevProcess,
    count: u64,
    work: &Path,
) -> Result<SealingRuns> {
    const PAIRS: usize = 5;
    let mut unsealed_broker =
        SecondBroker::start(broker, stack, "unsealed", &[("ETCD_BROKER__SECRETS__SEALING", "off")])?;
    unsealed_broker.answered(stack)?;
    let unsealed_env = unsealed_broker.env(stack);
    let extra = ["--clients", "8", "--ops", "provision,bind,get-binding", "--no-floor"];
    let mut runs = SealingRuns { sealed: Vec::new(), unsealed: Vec::new() };
    for pair in 1..=PAIRS {
        let sealed = bench(xtask, count, &stack.env, work, &format!("sealed-{pair}"), &extra)?;
        runs.sealed.push(sealed.report);
        let unsealed = bench(xtask, count, &unsealed_env, work, &format!("unsealed-{pair}"), &extra)?;
        runs.unsealed.push(unsealed.report);
    }
    Ok(runs)
}

/// Pairs of runs measuring what keeping a plan's secrets in OpenBao KV costs: a throw-away
/// OpenBao dev server (`local_etcd::bao`), a second broker on a copy of the stack's config whose
/// plans all have `credential_store = "openbao"` (its token in a file), and the stack's broker
/// (secrets in etcd), 8 clients each, taking turns. In the returned runs, `sealed` holds the
/// OpenBao broker's reports and `unsealed` the etcd one's.
fn credential_store_comparison(
    xtask: &Path,
    broker: &Path,
    stack: &DevProcess,
    count: u64,
    work: &Path,
) -> Result<SealingRuns> {
    const PAIRS: usize = 3;
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    let bao = runtime.block_on(local_etcd::bao::LocalBao::start()).context("cannot start OpenBao")?;
    let token_file = work.join("openbao-token");
    {
        use std::io::Write as _;
        use std::os::unix::fs::OpenOptionsExt as _;
        let mut file =
            std::fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(&token_file)?;
        file.write_all(bao.root_token().as_bytes())?;
    }
    let config = openbao_config(
        &std::fs::read_to_string(stack.dir().join("broker.toml"))?,
        &bao.address(),
        &token_file,
    );
    let config_path = stack.dir().join("broker-openbao.toml");
    std::fs::write(&config_path, config)?;
    let mut kv_broker = SecondBroker::start_with_config(broker, stack, "openbao", &config_path, &[])?;
    kv_broker.answered(stack)?;
    let kv_env = kv_broker.env(stack);
    let extra = ["--clients", "8", "--ops", "provision,bind,get-binding", "--no-floor"];
    let mut runs = SealingRuns { sealed: Vec::new(), unsealed: Vec::new() };
    for pair in 1..=PAIRS {
        let kv = bench(xtask, count, &kv_env, work, &format!("openbao-kv-{pair}"), &extra)?;
        runs.sealed.push(kv.report);
        let etcd = bench(xtask, count, &stack.env, work, &format!("etcd-store-{pair}"), &extra)?;
        runs.unsealed.push(etcd.report);
    }
    drop(kv_broker);
    drop(bao);
    Ok(runs)
}

/// `config` (a broker's TOML) with every plan keeping its secrets in OpenBao KV at `address`,
/// logged in with the token in `token_file`.
fn openbao_config(config: &str, address: &str, token_file: &Path) -> String {
    let mut out = String::new();
    for line in config.lines() {
        out += line;
        out += "\n";
        if line.trim_start().starts_with("[plan_configs.") {
            out += "credential_store = \"openbao\"\n";
        }
    }
    out + &format!(
        "\n[secrets.openbao]\naddress = \"{address}\"\ntoken_file = {:?}\n",
        token_file.display().to_string()
    )
}

/// The machine's lines: cores and model, memory, etcd version, date, operations per phase,
/// and the build `profile` of the bench and the scenario.
fn machine(count: u64, profile: &str) -> Result<String> {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = cpuinfo
        .lines()
        .find_map(|l| {
            l.strip_prefix("model name").and_then(|rest| rest.split_once(':')).map(|(_, m)| m.trim())
        })
        .unwrap_or("unknown CPU");
    let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    let memory_gib = meminfo
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map_or_else(|| "?".to_owned(), |kib| (kib / 1024 / 1024).to_string());
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let etcd = local_etcd::etcd_binary(local_etcd::EtcdVersion::V3_5)?;
    let version = command_line(Command::new(etcd).arg("--version"))?;
    let date = command_line(Command::new("date").args(["-u", "+%Y-%m-%d"]))?;
    Ok(format!(
        "- {cores} cores: {model}\n- memory: {memory_gib} GiB; {version}; measured {date}\n\
         - {count} operations per phase; broker and etcd on the same machine as the load\n\
         - xtask (the load) built as {profile}\n"
    ))
}

/// The first line a command prints.
fn command_line(command: &mut Command) -> Result<String> {
    let out = command.output().with_context(|| format!("cannot run {command:?}"))?;
    ensure!(out.status.success(), "{command:?} failed");
    Ok(String::from_utf8_lossy(&out.stdout).lines().next().unwrap_or_default().to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wrk_output_gives_its_summary_and_rate() {
        let output = "Running 10s test @ http://127.0.0.1:1/v2/catalog\n  2 threads and 32 connections\n  Thread Stats   Avg      Stdev     Max   +/- Stdev\n    Latency   589.37us  603.75us   8.05ms   93.68%\n    Req/Sec    31.81k     2.07k   36.37k    70.00%\n  633017 requests in 10.00s, 1.41GB read\nRequests/sec:  63300.84\nTransfer/sec:    144.37MB\n";
        let (line, rps) = wrk_summary(output);
        assert_eq!(line, "Latency 589.37us 603.75us 8.05ms 93.68%;Requests/sec: 63300.84");
        assert_eq!(rps, Some(63300.84));
        assert_eq!(wrk_summary("nothing"), (String::new(), None));
    }

    #[test]
    fn a_broker_that_exits_at_start_up_fails_at_once_with_its_log() {
        use std::os::unix::fs::PermissionsExt;
        let folder = tempfile::tempdir().unwrap();
        let fake = crate::stack::tests::fake_dev(folder.path(), "exec sleep 30");
        let stack = DevProcess::start(&fake, &StackOptions::default(), &folder.path().join("stack")).unwrap();
        let broker = folder.path().join("broker");
        std::fs::write(&broker, "#!/bin/sh\necho 'broker.toml: bad listener'\nexit 2\n").unwrap();
        std::fs::set_permissions(&broker, std::fs::Permissions::from_mode(0o755)).unwrap();
        let started = std::time::Instant::now();
        let error = startup_time(&broker, &stack).unwrap_err().to_string();
        assert!(started.elapsed() < Duration::from_secs(10), "waited {:?}", started.elapsed());
        assert!(error.contains("exited with exit status: 2"), "{error}");
        assert!(error.contains("broker.toml: bad listener"), "{error}");
    }

    #[test]
    fn the_openbao_config_keeps_every_plans_secrets_in_openbao() {
        let config = "[secrets]\nsealing = \"off\"\n[plan_configs.\"p1\"]\ncluster = \"main\"\n[plan_configs.\"p2\"]\ncluster = \"main\"\n";
        let changed = openbao_config(config, "http://127.0.0.1:8200", Path::new("/w/token"));
        assert_eq!(changed.matches("credential_store = \"openbao\"").count(), 2);
        assert!(changed.ends_with(
            "[secrets.openbao]\naddress = \"http://127.0.0.1:8200\"\ntoken_file = \"/w/token\"\n"
        ));
        let table: toml::Table = toml::from_str(&changed).unwrap();
        assert_eq!(table["plan_configs"]["p2"]["credential_store"].as_str(), Some("openbao"));
    }

    #[test]
    fn the_machine_names_the_build_profile() {
        let lines = machine(7, "debug").unwrap();
        assert!(lines.contains("7 operations per phase"), "{lines}");
        assert!(lines.ends_with("- xtask (the load) built as debug\n"), "{lines}");
    }

    #[test]
    fn the_shipped_document_has_every_region() {
        let doc = include_str!("../../../docs/performance.md");
        doc::check_regions(doc, &REGIONS).unwrap();
    }
}

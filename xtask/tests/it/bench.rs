//! CI smoke run of `xtask bench` against a real local stack: the tool works end to
//! end (all operations, the floor from the broker's own etcd call counts, preload, RSS, orphan
//! check) and its JSON report adds up. No timing is asserted: figures live in docs/performance.md.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;
use xtask::stack::{DevProcess, StackOptions};

use crate::common::{child_with, children, ends, exit_within};

const XTASK: &str = env!("CARGO_BIN_EXE_xtask");

/// A local stack at bcrypt cost 4 (binds in milliseconds) with its files in `dir`.
fn stack(dir: &Path) -> DevProcess {
    DevProcess::start(
        Path::new(XTASK),
        &StackOptions { bcrypt_cost: Some(4), ..StackOptions::default() },
        dir,
    )
    .unwrap()
}

#[test]
fn a_short_bench_reports_every_operation_with_its_floor_and_leaves_nothing_behind() {
    let dir = tempfile::tempdir().unwrap();
    let stack = stack(dir.path());
    let env = &stack.env;
    let report = dir.path().join("bench.json");
    let out = Command::new(XTASK)
        .args(["bench", "--clients", "4", "--count", "12", "--preload", "5", "--json"])
        .arg(&report)
        .args([
            "--cpu-of",
            &format!("broker={}", env["BROKER_PID"]),
            "--cpu-of",
            &format!("etcd={}", env["ETCD_PID"]),
        ])
        .envs(env.iter().filter(|(k, _)| k.as_str() != "ETCDCTL"))
        .output()
        .unwrap();
    let output = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "{output}");
    assert!(
        !output.contains(env["BROKER_PASSWORD"].as_str())
            && !output.contains(env["ETCD_ROOT_PASSWORD"].as_str())
    );

    let report: Value = serde_json::from_str(&std::fs::read_to_string(&report).unwrap()).unwrap();
    assert_eq!(report["orphans"], Value::Array(vec![]), "{report}");
    assert!(report["rss_bytes"]["end"].as_f64().unwrap() > 1e6, "RSS read from /metrics");
    // The role reaper's queue was counted in etcd before the preload and the first phase,
    // and the broker's and etcd's CPU sampled until quiet before the first phase.
    let settled = report["settled"].as_array().unwrap();
    let (quiet, queues): (Vec<&Value>, Vec<&Value>) = settled.iter().partition(|s| s.get("quiet").is_some());
    let befores: Vec<&str> = queues.iter().map(|s| s["before"].as_str().unwrap()).collect();
    assert_eq!(befores, ["the preload", "the first phase"], "{report}");
    assert!(queues.iter().all(|s| s["left"] == 0), "{report}");
    assert_eq!(quiet.len(), 1, "{report}");
    assert_eq!(
        (quiet[0]["before"].as_str(), quiet[0]["quiet"].as_bool()),
        (Some("the first phase"), Some(true))
    );
    let operations = report["operations"].as_array().unwrap();
    let names: Vec<&str> = operations.iter().map(|o| o["operation"].as_str().unwrap()).collect();
    assert_eq!(names, ["catalog", "provision", "bind", "get-binding", "unbind", "deprovision", "lifecycle"]);
    for op in operations {
        let broker = &op["broker"];
        assert_eq!(broker["errors"], 0, "{op}");
        let expected = if op["operation"] == "catalog" { 120 } else { 12 };
        assert_eq!(broker["count"], expected, "{op}");
        assert!(broker["p50_ms"].as_f64().unwrap() <= broker["p99_ms"].as_f64().unwrap());
        if op["operation"] != "catalog" {
            assert!(op["floor"]["count"].as_u64().unwrap() > 0, "a floor for {op}");
            assert!(op["p50_ratio"].as_f64().is_some(), "{op}");
            assert!(!op["etcd_calls_per_operation"].as_object().unwrap().is_empty(), "{op}");
            // CPU per operation of the bench itself and of the broker and etcd it was told of.
            for side in ["broker", "floor"] {
                let cpu = &op["cpu_us_per_operation"][side];
                assert!(cpu["client"].as_f64().unwrap() > 0.0, "{side}: {op}");
                assert!(cpu["etcd"].as_f64().unwrap() > 0.0, "{side}: {op}");
            }
            assert!(op["cpu_us_per_operation"]["broker"]["broker"].as_f64().unwrap() > 0.0, "{op}");
        }
    }
    // The floor cleans up after itself too: its keys, users and roles are gone.
    let etcdctl = |args: &[&str]| {
        let out = Command::new(&env["ETCDCTL"])
            .args(["--endpoints", &env["ETCD_ENDPOINTS"], "--user", &env["ETCD_ROOT_USERNAME"]])
            .args(["--password", &env["ETCD_ROOT_PASSWORD"]])
            .args(args)
            .output()
            .unwrap();
        assert!(out.status.success(), "etcdctl {args:?}: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    for listing in [
        etcdctl(&["user", "list"]),
        etcdctl(&["role", "list"]),
        etcdctl(&["get", "", "--prefix", "--keys-only"]),
    ] {
        assert!(!listing.contains("bench-floor"), "the floor left {listing}");
    }
    let bind = operations.iter().find(|o| o["operation"] == "bind").unwrap();
    for call in ["ensure_binding_user", "txn"] {
        assert!(bind["etcd_calls_per_operation"][call].as_u64().unwrap() >= 1, "bind makes {call}: {bind}");
    }
}

/// With --duration cutting phases short, each later phase works on what the earlier ones got
/// done: no bind of an instance that was never provisioned, no errors, nothing left behind.
#[test]
fn a_bench_cut_short_by_its_duration_builds_only_on_what_was_done() {
    let dir = tempfile::tempdir().unwrap();
    let stack = stack(dir.path());
    let report = dir.path().join("bench.json");
    let out = Command::new(XTASK)
        .args(["bench", "--clients", "1", "--count", "600", "--duration", "1", "--rounds", "1", "--json"])
        .arg(&report)
        .args(["--ops", "provision,bind,get-binding,unbind,deprovision"])
        .envs(stack.env.iter().filter(|(k, _)| k.as_str() != "ETCDCTL"))
        .output()
        .unwrap();
    let output = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "{output}");
    let report: Value = serde_json::from_str(&std::fs::read_to_string(&report).unwrap()).unwrap();
    assert_eq!(report["orphans"], Value::Array(vec![]), "{report}");
    let count = |op: &str| {
        let row = report["operations"].as_array().unwrap().iter().find(|o| o["operation"] == op).unwrap();
        assert_eq!(row["broker"]["errors"], 0, "{row}");
        row["broker"]["count"].as_u64().unwrap()
    };
    let (provisioned, bound) = (count("provision"), count("bind"));
    // Binds (bcrypt in etcd) are the slowest: the second is up before all are made.
    assert!(bound > 0 && bound < provisioned, "bound {bound} of {provisioned}");
    assert!(count("get-binding") <= bound && count("unbind") <= bound);
    assert!(count("deprovision") <= provisioned);
}

/// docs/performance.md copied into `dir` (for a scenario to rewrite), and its text.
fn copy_of_performance_doc(dir: &Path) -> (std::path::PathBuf, String) {
    let doc = dir.join("performance.md");
    let original =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/performance.md"))
            .unwrap();
    std::fs::write(&doc, &original).unwrap();
    (doc, original)
}

/// A SIGTERM in the middle of `bench-scenario` stops it with 143, and the stack it measures
/// and its work folder go with it; the document is left as it was.
#[test]
fn a_terminated_bench_scenario_leaves_no_stack_behind() {
    let dir = tempfile::tempdir().unwrap();
    let (doc, original) = copy_of_performance_doc(dir.path());
    let mut xtask = Command::new(XTASK)
        .args(["bench-scenario", "--allow-debug-build", "--count", "1", "--preload", "0", "--out"])
        .arg(&doc)
        .arg("--broker-binary")
        .arg(XTASK)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    let (dev, stack_dir) = loop {
        if let Some((dev, dir)) = child_with(xtask.id(), Some("dev"), "--dir") {
            if dir.join("env").exists() {
                break (dev, dir);
            }
        }
        assert!(xtask.try_wait().unwrap().is_none(), "bench-scenario exited before its stack was up");
        assert!(Instant::now() < deadline, "no stack came up");
        std::thread::sleep(Duration::from_millis(10));
    };
    let etcd = children(dev);
    assert!(!etcd.is_empty(), "the stack's etcd");
    // SAFETY: kill(2) of our own child.
    unsafe { libc::kill(xtask.id() as i32, libc::SIGTERM) };
    let status = exit_within(&mut xtask, Duration::from_secs(40));
    assert!(ends(dev) && etcd.iter().all(|pid| ends(*pid)), "the stack outlived bench-scenario ({status})");
    let mut stderr = String::new();
    std::io::Read::read_to_string(&mut xtask.stderr.take().unwrap(), &mut stderr).unwrap();
    assert_eq!(status.code(), Some(128 + libc::SIGTERM), "{stderr}");
    let work = stack_dir.parent().unwrap();
    assert!(!work.exists(), "{} is left behind", work.display());
    assert_eq!(std::fs::read_to_string(&doc).unwrap(), original);
}

/// `cargo run` builds a debug xtask, whose load would distort every figure: bench-scenario
/// refuses it and says what to run instead, before it touches the document.
#[test]
fn bench_scenario_refuses_a_debug_build() {
    let dir = tempfile::tempdir().unwrap();
    let doc = dir.path().join("performance.md");
    let out = Command::new(XTASK).args(["bench-scenario", "--out"]).arg(&doc).output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("debug build") && stderr.contains("make bench"), "{stderr}");
    assert!(!doc.exists());
}

/// `bench-scenario --only`: one region measured and rewritten, `machine` too, every other
/// region of the document left as it was (the scenario's other stages never ran).
#[test]
fn a_scenario_limited_to_one_region_rewrites_only_that_region_and_the_machine() {
    let dir = tempfile::tempdir().unwrap();
    let (doc, original) = copy_of_performance_doc(dir.path());
    let out = Command::new(XTASK)
        .args(["bench-scenario", "--allow-debug-build", "--only", "cost4-1", "--count", "5", "--out"])
        .arg(&doc)
        .output()
        .unwrap();
    let output = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "{output}");
    let region = |text: &str, name: &str| {
        let start = text.find(&format!("<!-- generated: {name} -->")).unwrap();
        let end = start + text[start..].find("<!-- end generated -->").unwrap();
        text[start..end].to_owned()
    };
    let written = std::fs::read_to_string(&doc).unwrap();
    let cost4 = region(&written, "cost4-1");
    assert_ne!(cost4, region(&original, "cost4-1"));
    assert!(cost4.contains("provision") && cost4.contains("p50"), "{cost4}");
    for untouched in ["default-8", "default-8-certificate", "sealing", "credential-store", "scale", "targets"]
    {
        assert_eq!(region(&written, untouched), region(&original, untouched), "{untouched}");
    }

    let refused = Command::new(XTASK).args(["bench-scenario", "--only", "nonsense"]).output().unwrap();
    assert_eq!(refused.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&refused.stderr).contains("possible values"), "{refused:?}");
}

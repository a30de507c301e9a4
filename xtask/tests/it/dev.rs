//! `xtask dev` end to end: it starts etcd and the broker, writes a usable env file, the
//! printed workflow works with the real etcdctl, and Ctrl-C stops everything; `dev --run`
//! hands the same env to a command, stops the stack and exits with the command's code.

use std::collections::BTreeMap;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use etcd_broker_ops::osb::{BrokerTarget, Incomplete, Offering, OsbClient};
use xtask::stack::{parse_env, ENV_KEYS};

use crate::common::{child_with, children, ends, exit_within};

fn read_env(path: &std::path::Path) -> Option<BTreeMap<String, String>> {
    std::fs::read_to_string(path).ok().map(|text| parse_env(&text))
}

/// `ETCD_VERSION` (3.5 or 3.4; 3.5 when unset), so the suite runs the stack on both.
fn etcd_version() -> String {
    std::env::var("ETCD_VERSION").unwrap_or_else(|_| "3.5".to_owned())
}

#[tokio::test]
async fn dev_runs_a_usable_stack_and_stops_on_interrupt() {
    let dir = tempfile::tempdir().unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_xtask"))
        .args(["dev", "--bcrypt-cost", "4", "--etcd-version", &etcd_version(), "--dir"])
        .arg(dir.path())
        .env("BROKER_PORT", "0")
        .env("ETCD_PORT", "0")
        // The inventory gauges counted every second (a minute by default).
        .env("ETCD_BROKER__METRICS__INVENTORY_SECONDS", "1")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let env_file = dir.path().join("env");
    let deadline = Instant::now() + Duration::from_secs(30);
    let env = loop {
        if let Some(env) = read_env(&env_file) {
            break env;
        }
        assert!(child.try_wait().unwrap().is_none(), "dev exited early");
        assert!(Instant::now() < deadline, "no env file");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    for key in ENV_KEYS {
        assert!(env.get(key).is_some_and(|v| !v.is_empty()), "{key} missing");
    }
    let mode = std::os::unix::fs::PermissionsExt::mode(&std::fs::metadata(&env_file).unwrap().permissions());
    assert_eq!(mode & 0o077, 0, "env file readable by others");

    let osb = OsbClient::new(
        BrokerTarget {
            url: env["BROKER_URL"].clone(),
            username: env["BROKER_USERNAME"].clone(),
            password: env["BROKER_PASSWORD"].clone(),
            skip_tls_verification: false,
        },
        Duration::from_secs(30),
    )
    .unwrap();
    let offering = osb.offering(None, None).await.unwrap();
    assert_eq!(osb.provision(&offering, "demo", Duration::from_secs(30)).await.unwrap(), 201);
    let (bound, creds) = osb.bind(&offering, "demo", "app1").await.unwrap();
    assert_eq!(bound, 201);

    // The local stack seals binding passwords with its own key; the gauges follow within
    // about two inventory intervals.
    let deadline = Instant::now() + Duration::from_secs(10);
    let metrics = loop {
        let metrics = reqwest::get(&env["METRICS_URL"]).await.unwrap().text().await.unwrap();
        if metrics.contains("etcd_broker_sealed_records{key=\"dev\"} 1") || Instant::now() > deadline {
            break metrics;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(
        metrics.contains("etcd_broker_osb_requests_total{code=\"201\",operation=\"bind\"} 1"),
        "{metrics}"
    );
    assert!(metrics.contains("etcd_broker_sealed_records{key=\"dev\"} 1"), "{metrics}");
    assert!(metrics.contains("etcd_broker_clear_text_records 0"), "{metrics}");

    // The etcdctl named in the env file works with the binding's credentials.
    let etcdctl = |args: &[&str]| {
        Command::new(&env["ETCDCTL"])
            .env("ETCDCTL_API", "3")
            .args(["--endpoints", &env["ETCD_ENDPOINTS"], "--user"])
            .arg(format!("{}:{}", creds["username"].as_str().unwrap(), creds["password"].as_str().unwrap()))
            .args(args)
            .output()
            .unwrap()
    };
    assert!(etcdctl(&["put", "/service_instances/demo/hello", "world"]).status.success());
    let got = etcdctl(&["get", "/service_instances/demo/hello", "--print-value-only"]);
    assert_eq!(String::from_utf8_lossy(&got.stdout).trim(), "world");
    assert!(!etcdctl(&["put", "/elsewhere", "x"]).status.success());

    // The encrypting plan: its bindings name the proxy, through which etcdctl puts and gets
    // clear text while etcd itself (read as root, bypassing the proxy) holds ciphertext.
    let encrypted = Offering { plan_id: env["PROXY_PLAN_ID"].clone(), ..offering.clone() };
    assert_eq!(osb.provision(&encrypted, "sealed", Duration::from_secs(30)).await.unwrap(), 201);
    let (bound, sealed_creds) = osb.bind(&encrypted, "sealed", "app2").await.unwrap();
    assert_eq!(bound, 201);
    assert_eq!(sealed_creds["endpoints"], serde_json::json!([env["PROXY_ENDPOINTS"]]), "{sealed_creds}");
    let user = format!(
        "{}:{}",
        sealed_creds["username"].as_str().unwrap(),
        sealed_creds["password"].as_str().unwrap()
    );
    let through_proxy = |args: &[&str]| {
        Command::new(&env["ETCDCTL"])
            .env("ETCDCTL_API", "3")
            .args(["--endpoints", &env["PROXY_ENDPOINTS"], "--user", &user])
            .args(args)
            .output()
            .unwrap()
    };
    let key = format!("{}secret", sealed_creds["prefix"].as_str().unwrap());
    let put = through_proxy(&["put", &key, "the-clear-value"]);
    assert!(put.status.success(), "{}", String::from_utf8_lossy(&put.stderr));
    let got = through_proxy(&["get", &key, "--print-value-only"]);
    assert_eq!(String::from_utf8_lossy(&got.stdout).trim(), "the-clear-value");
    let root = format!("{}:{}", env["ETCD_ROOT_USERNAME"], env["ETCD_ROOT_PASSWORD"]);
    let raw = Command::new(&env["ETCDCTL"])
        .env("ETCDCTL_API", "3")
        .args(["--endpoints", &env["ETCD_ENDPOINTS"], "--user", &root, "get", &key, "--print-value-only"])
        .output()
        .unwrap();
    assert!(raw.status.success(), "{}", String::from_utf8_lossy(&raw.stderr));
    assert!(raw.stdout.starts_with(etcd_broker_proxy::encryption::MAGIC), "etcd holds {:?}", raw.stdout);
    assert!(!String::from_utf8_lossy(&raw.stdout).contains("the-clear-value"));

    // The rotating plan's bindings say when they expire, and rotate (OSB 2.17).
    let rotating = Offering { plan_id: env["ROTATING_PLAN_ID"].clone(), ..offering.clone() };
    assert_eq!(osb.provision(&rotating, "expiring", Duration::from_secs(30)).await.unwrap(), 201);
    let body = serde_json::json!({ "service_id": rotating.service_id, "plan_id": rotating.plan_id });
    let first = osb.put_binding("expiring", "r1", &body, Incomplete::Refused).await.unwrap();
    assert_eq!(first.status, 201, "{:?}", first.body);
    assert!(first.body["metadata"]["expires_at"].is_string(), "{:?}", first.body);
    let mut rotation = body.clone();
    rotation["predecessor_binding_id"] = "r1".into();
    let second = osb.put_binding("expiring", "r2", &rotation, Incomplete::Refused).await.unwrap();
    assert_eq!(second.status, 201, "{:?}", second.body);
    assert_ne!(second.body["credentials"]["username"], first.body["credentials"]["username"]);

    // Ctrl-C: clean exit, env file gone, etcd stopped.
    unsafe { libc::kill(child.id() as i32, libc::SIGINT) };
    let status = exit_within(&mut child, Duration::from_secs(30));
    assert!(status.success(), "{status}");
    assert!(!env_file.exists());
    let etcd_addr = env["ETCD_ENDPOINTS"].trim_start_matches("http://").to_owned();
    assert!(std::net::TcpStream::connect(etcd_addr).is_err(), "etcd still running");
    let proxy_addr = env["PROXY_ENDPOINTS"].trim_start_matches("http://").to_owned();
    assert!(std::net::TcpStream::connect(proxy_addr).is_err(), "the proxy still running");
}

/// A Ctrl-C while etcd is still starting (before the broker serves) stops dev cleanly: its etcd
/// is gone, and so is etcd's temporary folder.
#[test]
fn dev_interrupted_while_etcd_starts_leaves_nothing_behind() {
    let dir = tempfile::tempdir().unwrap();
    let mut dev = Command::new(env!("CARGO_BIN_EXE_xtask"))
        .args(["dev", "--bcrypt-cost", "4", "--broker-port", "0", "--metrics-port", "0", "--etcd-port", "0"])
        .arg("--dir")
        .arg(dir.path())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    let (etcd, data_dir) = loop {
        if let Some(found) = child_with(dev.id(), None, "--data-dir") {
            break found;
        }
        assert!(dev.try_wait().unwrap().is_none(), "dev exited before it started etcd");
        assert!(Instant::now() < deadline, "dev started no etcd");
        std::thread::sleep(Duration::from_millis(5));
    };
    assert!(!dir.path().join("env").exists(), "signalled too late: the stack was up");
    // SAFETY: kill(2) of our own child.
    unsafe { libc::kill(dev.id() as i32, libc::SIGINT) };
    let status = exit_within(&mut dev, Duration::from_secs(20));
    assert!(ends(etcd), "etcd {etcd} outlived dev ({status})");
    let etcd_folder = data_dir.parent().unwrap();
    assert!(!etcd_folder.exists(), "{} is left behind", etcd_folder.display());
    assert!(status.success(), "{status}");
}

/// `dev --run -- sh -c ...`: the command sees every variable of the env file, talks to the
/// broker, and its exit code is dev's; the stack is gone afterwards.
#[test]
fn dev_run_gives_the_command_the_stack_and_its_exit_code() {
    let out_dir = tempfile::tempdir().unwrap();
    let seen = out_dir.path().join("seen");
    let script = r#"env > "$0"
curl -sf -o /dev/null -u "$BROKER_USERNAME:$BROKER_PASSWORD" -H 'X-Broker-API-Version: 2.17' "$BROKER_URL/v2/catalog" || exit 9
exit 3"#;
    let out = Command::new(env!("CARGO_BIN_EXE_xtask"))
        .args(["dev", "--bcrypt-cost", "4", "--run", "--", "sh", "-c", script])
        .arg(&seen)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(3), "{stderr}");
    let env = read_env(&seen).unwrap();
    for key in ENV_KEYS {
        assert!(env.get(key).is_some_and(|v| !v.is_empty()), "{key} missing");
    }
    assert!(!stderr.contains(&env["BROKER_PASSWORD"]) && !stderr.contains(&env["ETCD_ROOT_PASSWORD"]));
    let etcd_addr = env["ETCD_ENDPOINTS"].trim_start_matches("http://").to_owned();
    assert!(std::net::TcpStream::connect(etcd_addr).is_err(), "etcd still running");
    let broker_addr = env["BROKER_URL"].trim_start_matches("http://").to_owned();
    assert!(std::net::TcpStream::connect(broker_addr).is_err(), "the broker still running");
    let pid: i32 = env["BROKER_PID"].parse().unwrap();
    assert_ne!(pid, std::process::id() as i32);
    // SAFETY: signal 0 only asks whether the process exists.
    assert_eq!(unsafe { libc::kill(pid, 0) }, -1, "the stack's process is gone");

    // A command that cannot be started is a clear error, and the stack stops all the same.
    let out = Command::new(env!("CARGO_BIN_EXE_xtask"))
        .args(["dev", "--bcrypt-cost", "4", "--run", "--", "/nonexistent/command"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("cannot run '/nonexistent/command'"), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");

    // Without the proxy (the bench's stacks): its variables are empty, its plan is not offered.
    let script = r#"[ -z "$PROXY_ENDPOINTS" ] && [ -z "$PROXY_PLAN_ID" ] || exit 8
curl -sf -u "$BROKER_USERNAME:$BROKER_PASSWORD" -H 'X-Broker-API-Version: 2.17' "$BROKER_URL/v2/catalog" | grep -q '"encrypted"' && exit 9
exit 5"#;
    let out = Command::new(env!("CARGO_BIN_EXE_xtask"))
        .args(["dev", "--bcrypt-cost", "4", "--no-proxy", "--run", "--", "sh", "-c", script])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(5), "{}", String::from_utf8_lossy(&out.stderr));
}

/// `xtask dev --run` spawned in a process group of its own, as a shell runs a job: the test
/// sends the terminal's Ctrl-C to that group.
fn dev_run_job(dir: &std::path::Path, script: &str, arg: &std::path::Path) -> std::process::Child {
    use std::os::unix::process::CommandExt as _;
    Command::new(env!("CARGO_BIN_EXE_xtask"))
        .args(["dev", "--bcrypt-cost", "4", "--etcd-version", "3.4", "--dir"])
        .arg(dir)
        .args(["--run", "--", "sh", "-c", script])
        .arg(arg)
        .process_group(0)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

/// A SIGTERM while the stack starts ends `dev --run` with 143 and stops the stack: nothing of
/// it is left running.
#[test]
fn dev_run_terminated_while_the_stack_starts_stops_it() {
    let dir = tempfile::tempdir().unwrap();
    let stack_dir = dir.path().join("stack");
    let marker = dir.path().join("ran");
    let mut xtask = dev_run_job(&stack_dir, r#": > "$0""#, &marker);
    let deadline = Instant::now() + Duration::from_secs(20);
    let (dev, etcd) = loop {
        let dev = child_with(xtask.id(), Some("dev"), "--dir").map(|(pid, _)| pid);
        if let Some(etcd) = dev.and_then(|dev| children(dev).first().copied()) {
            break (dev.unwrap(), etcd);
        }
        assert!(xtask.try_wait().unwrap().is_none(), "xtask exited before it started etcd");
        assert!(Instant::now() < deadline, "no stack started");
        std::thread::sleep(Duration::from_millis(5));
    };
    // SAFETY: kill(2) of our own child.
    unsafe { libc::kill(xtask.id() as i32, libc::SIGTERM) };
    let status = exit_within(&mut xtask, Duration::from_secs(40));
    assert!(ends(dev) && ends(etcd), "the stack outlived xtask ({status})");
    assert_eq!(status.code(), Some(128 + libc::SIGTERM), "{status}");
    assert!(!marker.exists(), "the command ran after the signal");
    let mut stderr = String::new();
    std::io::Read::read_to_string(&mut xtask.stderr.take().unwrap(), &mut stderr).unwrap();
    assert!(stderr.contains("stopped by SIGTERM") && !stderr.contains("panicked"), "{stderr}");
}

/// A terminal's Ctrl-C during the command reaches the command once (from the terminal, not
/// again forwarded) and not the stack, which still answers while the command finishes.
#[test]
fn dev_run_ctrl_c_reaches_the_command_once_and_not_the_stack() {
    let dir = tempfile::tempdir().unwrap();
    let counted = dir.path().join("interrupts");
    let script = r#"n=0
trap 'n=$((n+1))' INT
: > "$0.ready"
i=0
while [ $i -lt 15 ]; do sleep 0.1; i=$((i+1)); done
echo $n > "$0"
curl -sf -o /dev/null -u "$BROKER_USERNAME:$BROKER_PASSWORD" -H 'X-Broker-API-Version: 2.17' "$BROKER_URL/v2/catalog" || exit 9
exit 4"#;
    let mut xtask = dev_run_job(&dir.path().join("stack"), script, &counted);
    let ready = dir.path().join("interrupts.ready");
    let deadline = Instant::now() + Duration::from_secs(30);
    while !ready.exists() {
        assert!(xtask.try_wait().unwrap().is_none(), "xtask exited before the command ran");
        assert!(Instant::now() < deadline, "the command did not start");
        std::thread::sleep(Duration::from_millis(10));
    }
    // SAFETY: kill(2) of the process group of our own child, as a terminal's Ctrl-C.
    unsafe { libc::kill(-(xtask.id() as i32), libc::SIGINT) };
    let status = exit_within(&mut xtask, Duration::from_secs(40));
    assert_eq!(status.code(), Some(4), "the broker no longer answered the command ({status})");
    assert_eq!(std::fs::read_to_string(&counted).unwrap().trim(), "1", "SIGINTs the command got");
}

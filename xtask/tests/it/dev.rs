//! `xtask dev` end to end: it starts etcd and the broker, writes a usable env file, the
//! printed workflow works with the real etcdctl, and Ctrl-C stops everything; `dev --run`
//! hands the same env to a command, stops the stack and exits with the command's code.

use std::collections::HashMap;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use xtask::stack::ENV_KEYS;

fn read_env(path: &std::path::Path) -> Option<HashMap<String, String>> {
    let text = std::fs::read_to_string(path).ok()?;
    Some(text.lines().filter_map(|l| l.split_once('=')).map(|(k, v)| (k.to_owned(), v.to_owned())).collect())
}

#[tokio::test]
async fn dev_runs_a_usable_stack_and_stops_on_interrupt() {
    let dir = tempfile::tempdir().unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_xtask"))
        .args(["dev", "--bcrypt-cost", "4", "--dir"])
        .arg(dir.path())
        .env("BROKER_PORT", "0")
        .env("ETCD_PORT", "0")
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

    let http = reqwest::Client::new();
    let call = |method: reqwest::Method, path: &str| {
        http.request(method, format!("{}{path}", env["BROKER_URL"]))
            .basic_auth(&env["BROKER_USERNAME"], Some(&env["BROKER_PASSWORD"]))
            .header("X-Broker-API-Version", "2.17")
    };
    let catalog: Value =
        call(reqwest::Method::GET, "/v2/catalog").send().await.unwrap().json().await.unwrap();
    let service = catalog["services"][0]["id"].as_str().unwrap().to_owned();
    let plan = catalog["services"][0]["plans"][0]["id"].as_str().unwrap().to_owned();
    let body = json!({ "service_id": service, "plan_id": plan, "organization_guid": "o", "space_guid": "s" });
    let provisioned =
        call(reqwest::Method::PUT, "/v2/service_instances/demo").json(&body).send().await.unwrap();
    assert_eq!(provisioned.status(), 201);
    let bound = call(reqwest::Method::PUT, "/v2/service_instances/demo/service_bindings/app1")
        .json(&json!({ "service_id": service, "plan_id": plan }))
        .send()
        .await
        .unwrap();
    assert_eq!(bound.status(), 201);
    let creds = bound.json::<Value>().await.unwrap()["credentials"].clone();

    let metrics = reqwest::get(&env["METRICS_URL"]).await.unwrap().text().await.unwrap();
    assert!(
        metrics.contains("etcd_broker_osb_requests_total{code=\"201\",operation=\"bind\"} 1"),
        "{metrics}"
    );
    // The local stack seals binding passwords with its own key.
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

    // Ctrl-C: clean exit, env file gone, etcd stopped.
    unsafe { libc::kill(child.id() as i32, libc::SIGINT) };
    let deadline = Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        assert!(Instant::now() < deadline, "dev did not stop");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(status.success(), "{status}");
    assert!(!env_file.exists());
    let etcd_addr = env["ETCD_ENDPOINTS"].trim_start_matches("http://").to_owned();
    assert!(std::net::TcpStream::connect(etcd_addr).is_err(), "etcd still running");
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
}

//! Acceptance: metrics that move by exactly the expected amounts and pass `promtool check
//! metrics`, a real Prometheus scrape, health/readiness endpoints, and logs without secrets.

use std::process::Stdio;
use std::time::{Duration, Instant};

use crate::common::*;
use reqwest::{Method, StatusCode};
use serde_json::Value;
use tokio::io::AsyncWriteExt;

fn requests(text: &str, operation: &str, code: u16) -> f64 {
    sample(text, &format!("etcd_broker_osb_requests_total{{code=\"{code}\",operation=\"{operation}\"}}"))
}

/// A scripted sequence whose effect on every counter is known, 4xx cases included.
async fn scripted_sequence(osb: &Osb) {
    assert_eq!(osb.call(Method::GET, "/v2/catalog", None).await.status, StatusCode::OK);
    assert_eq!(osb.provision("i1", SHARED).await.status, StatusCode::CREATED);
    assert_eq!(osb.provision("i1", SHARED).await.status, StatusCode::OK);
    assert_eq!(osb.provision("i1", LARGE).await.status, StatusCode::CONFLICT);
    assert_eq!(osb.provision("i2", SHARED).await.status, StatusCode::CREATED);
    assert_eq!(osb.bind("i1", "b1").await.status, StatusCode::CREATED);
    assert_eq!(osb.bind("i1", "b2").await.status, StatusCode::CREATED);
    assert_eq!(osb.get_binding("i1", "b1").await.status, StatusCode::OK);
    assert_eq!(osb.unbind("i1", "b2").await.status, StatusCode::OK);
    assert_eq!(osb.unbind("i1", "b2").await.status, StatusCode::GONE);
    assert_eq!(osb.deprovision("i2").await.status, StatusCode::OK);
    let wrong = osb.http().get(format!("{}/v2/catalog", osb.url())).basic_auth(USER, Some("nope"));
    assert_eq!(
        Osb::send(wrong.header("X-Broker-API-Version", VERSION)).await.status,
        StatusCode::UNAUTHORIZED
    );
}

/// The etcd calls of one kind the broker made, from its `/metrics` text.
fn etcd_calls(text: &str, call: &str) -> f64 {
    sample(
        text,
        &format!("etcd_broker_etcd_request_duration_seconds_count{{call=\"{call}\",cluster=\"main\"}}"),
    )
}

#[tokio::test]
async fn counters_move_exactly_and_promtool_accepts_the_output() {
    let etcd = start_etcd().await;
    // The inventory is counted once, at start, and read once: no background request meets the
    // sequence's in a batch, and scrapes are seen to count nothing.
    let broker = BrokerProcess::start_with_env(&etcd, None, &[INVENTORY_HOURLY]).await;
    let osb = Osb::new(&broker.url);
    inventory_counted(&broker).await;
    let before = scrape(&broker).await;
    // The harness polled the catalog without credentials while waiting for the broker.
    let polls = requests(&before, "catalog", 401);
    let auth_failures = sample(&before, "etcd_broker_auth_failures_total");
    scripted_sequence(&osb).await;
    let text = scrape(&broker).await;

    assert_eq!(requests(&text, "catalog", 200), 1.0);
    assert_eq!(requests(&text, "catalog", 401), polls + 1.0);
    assert_eq!(sample(&text, "etcd_broker_auth_failures_total"), auth_failures + 1.0);
    assert_eq!(requests(&text, "provision", 201), 2.0);
    assert_eq!(requests(&text, "provision", 200), 1.0);
    assert_eq!(requests(&text, "provision", 409), 1.0);
    assert_eq!(requests(&text, "bind", 201), 2.0);
    assert_eq!(requests(&text, "get", 200), 1.0);
    assert_eq!(requests(&text, "unbind", 200), 1.0);
    assert_eq!(requests(&text, "unbind", 410), 1.0);
    assert_eq!(requests(&text, "deprovision", 200), 1.0);
    assert_eq!(sample(&text, "etcd_broker_osb_request_duration_seconds_count{operation=\"provision\"}"), 4.0);
    assert_eq!(sample(&text, "etcd_broker_osb_requests_in_flight"), 0.0);
    // The gauges show the count taken at start (nothing), not what the sequence made: a scrape
    // does not count, it shows what the inventory task counted last.
    assert_eq!(sample(&text, "etcd_broker_service_instances{plan=\"shared\",service=\"etcd\"}"), 0.0);
    assert_eq!(sample(&text, "etcd_broker_service_bindings{plan=\"shared\",service=\"etcd\"}"), 0.0);
    assert!(
        sample(
            &text,
            "etcd_broker_etcd_request_duration_seconds_count{call=\"ensure_binding_user\",cluster=\"main\"}"
        ) >= 2.0
    );
    // One request at a time: each commit went to etcd on its own, and each get too, except
    // that a bind reads its instance and binding records at once, which may share a request
    // (two binds created here).
    for (call, shared_at_most) in [("get", 2.0), ("txn", 0.0)] {
        let calls = sample(
            &text,
            &format!("etcd_broker_etcd_request_duration_seconds_count{{call=\"{call}\",cluster=\"main\"}}"),
        );
        let batches =
            sample(&text, &format!("etcd_broker_etcd_batch_size_count{{call=\"{call}\",cluster=\"main\"}}"));
        let batched =
            sample(&text, &format!("etcd_broker_etcd_batch_size_sum{{call=\"{call}\",cluster=\"main\"}}"));
        assert!(
            calls > 0.0 && batches <= calls && batches >= calls - shared_at_most && batched == calls,
            "{call}: {calls} calls, {batches} batches of {batched}"
        );
    }
    assert!(sample(&text, "process_resident_memory_bytes") > 0.0);
    assert!(text.contains("etcd_broker_build_info{"), "{text}");
    assert!(!text.contains("i1") && !text.contains("b1"), "ids leaked into labels");

    let mut promtool = tokio::process::Command::new(tool("prometheus/bin/promtool"))
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("promtool (scripts/install-tools.sh)");
    promtool.stdin.take().unwrap().write_all(text.as_bytes()).await.unwrap();
    let out = promtool.wait_with_output().await.unwrap();
    assert!(
        out.status.success(),
        "promtool check metrics: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    broker.stop().await;
}

/// `[metrics] inventory_seconds` at its maximum.
const INVENTORY_HOURLY: (&str, &str) = ("ETCD_BROKER__METRICS__INVENTORY_SECONDS", "3600");

/// Waits until `broker` shows counts (taken by itself or read from etcd).
async fn inventory_counted(broker: &BrokerProcess) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !scrape(broker).await.contains("etcd_broker_inventory_age_seconds ") {
        assert!(Instant::now() < deadline, "no inventory counts after 10 s");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn the_inventory_gauges_follow_etcd_and_only_the_leader_counts() {
    let mut etcd = start_etcd().await;
    let a = BrokerProcess::start(&etcd, None).await;
    scrape_until(&a, &[("etcd_broker_inventory_leader", 1.0)]).await;
    // b's role reaper counts its (empty) queue once at start and then only when b queues a
    // role, which it never does here: every count b sends after that would be the inventory's.
    let b = BrokerProcess::start_with_env(&etcd, None, &[("ETCD_BROKER__ROLE_REAPER__POLL_SECONDS", "3600")])
        .await;
    let deadline = Instant::now() + Duration::from_secs(10);
    while etcd_calls(&scrape(&b).await, "count") < 1.0 {
        assert!(Instant::now() < deadline, "b's role reaper never looked at its queue");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let b_counted = etcd_calls(&scrape(&b).await, "count");
    let (osb_a, osb_b) = (Osb::new(&a.url), Osb::new(&b.url));
    let instances = |plan: &str| format!("etcd_broker_service_instances{{plan=\"{plan}\",service=\"etcd\"}}");
    let bindings = |plan: &str| format!("etcd_broker_service_bindings{{plan=\"{plan}\",service=\"etcd\"}}");
    let (shared, large) = ("shared", "large");
    for (osb, id, plan) in [(&osb_a, "i1", SHARED), (&osb_b, "i2", SHARED), (&osb_b, "i3", LARGE)] {
        assert_eq!(osb.provision(id, plan).await.status, StatusCode::CREATED);
    }
    for (osb, id, binding) in [(&osb_a, "i1", "b1"), (&osb_b, "i1", "b2"), (&osb_b, "i3", "b3")] {
        assert_eq!(osb.bind(id, binding).await.status, StatusCode::CREATED);
    }
    let expected = |i_shared: f64, b_shared: f64, i_large: f64, b_large: f64| {
        [
            (instances(shared), i_shared),
            (bindings(shared), b_shared),
            (instances(large), i_large),
            (bindings(large), b_large),
        ]
    };
    for broker in [&a, &b] {
        // A binding counts under the plan its bind named (the harness's: shared).
        let want = expected(2.0, 3.0, 1.0, 0.0);
        let want: Vec<(&str, f64)> = want.iter().map(|(s, v)| (s.as_str(), *v)).collect();
        scrape_until(broker, &want).await;
    }
    // a counted once, when it started leading, and followed every change since; b never
    // counted.
    let once = "count_at_one_revision";
    assert_eq!(etcd_calls(&scrape(&a).await, once), 1.0);
    assert_eq!(etcd_calls(&scrape(&b).await, once), 0.0);

    // etcd restarts: a's follow breaks, and a counts again once etcd answers.
    etcd.kill().await.unwrap();
    etcd.restart().await.unwrap();
    // Only a queues roles (unbind, deprovision).
    assert_eq!(osb_a.unbind("i1", "b2").await.status, StatusCode::OK);
    assert_eq!(osb_a.deprovision("i3").await.status, StatusCode::OK);
    assert_eq!(osb_a.deprovision("i2").await.status, StatusCode::OK);
    for broker in [&a, &b] {
        let want = expected(1.0, 1.0, 0.0, 0.0);
        let mut want: Vec<(&str, f64)> = want.iter().map(|(s, v)| (s.as_str(), *v)).collect();
        want.push(("etcd_broker_sealed_records{key=\"test\"}", 1.0));
        want.push(("etcd_broker_clear_text_records", 0.0));
        let text = scrape_until(broker, &want).await;
        assert!(sample(&text, "etcd_broker_inventory_age_seconds") <= 3.0, "{text}");
    }
    // a counts for both (it led first), once per follow; b, which never led, has sent etcd no
    // count since its reaper's, however often it was scraped.
    let (text_a, text_b) = (scrape(&a).await, scrape(&b).await);
    assert_eq!(sample(&text_a, "etcd_broker_inventory_leader"), 1.0, "{text_a}");
    assert_eq!(sample(&text_b, "etcd_broker_inventory_leader"), 0.0, "{text_b}");
    assert!(etcd_calls(&text_a, once) >= 2.0, "{text_a}");
    assert_eq!(etcd_calls(&text_b, once), 0.0, "{text_b}");
    assert_eq!(etcd_calls(&text_b, "count"), b_counted, "{text_b}");
    a.stop().await;
    b.stop().await;
    etcd.stop().await;
}

#[tokio::test]
async fn health_and_readiness_say_what_failed() {
    let etcd = start_etcd().await;
    let broker = BrokerProcess::start(&etcd, None).await;
    let get = |path: &str| {
        let url = format!("{}{path}", broker.metrics_url);
        async move {
            let response = reqwest::get(url).await.unwrap();
            (response.status(), response.json::<Value>().await.unwrap())
        }
    };
    assert_eq!(get("/health").await, (StatusCode::OK, serde_json::json!({ "status": "ok" })));
    let (status, body) = get("/ready").await;
    assert_eq!((status, body["status"].as_str()), (StatusCode::OK, Some("ready")), "{body}");
    assert_eq!(body["clusters"]["main"]["ok"], true);
    etcd.stop().await;
    let (status, body) = get("/ready").await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    assert_eq!(body["clusters"]["main"]["ok"], false);
    assert!(body["clusters"]["main"]["error"].as_str().unwrap().contains("etcd"), "{body}");
    assert_eq!(get("/health").await.0, StatusCode::OK);
    broker.stop().await;
}

#[tokio::test]
async fn json_logs_carry_request_context_and_no_secret() {
    let etcd = start_etcd().await;
    let env = [("ETCD_BROKER__LOG_FORMAT", "json"), ("ETCD_BROKER__LOG_LEVEL", "debug")];
    let broker = BrokerProcess::start_with_env(&etcd, None, &env).await;
    let osb = Osb::new(&broker.url);
    let identity = "cloudfoundry eyJ1c2VyX2lkIjoiYXVkaXRvci0xIn0="; // {"user_id":"auditor-1"}
    let provision = osb
        .request(Method::PUT, "/v2/service_instances/i1")
        .header("X-Broker-API-Originating-Identity", identity)
        .header("X-Broker-API-Request-Identity", "req-7")
        .json(&provision_body(SHARED));
    assert_eq!(Osb::send(provision).await.status, StatusCode::CREATED);
    let mut passwords = vec![PASSWORD.to_owned(), etcd.root_password().to_owned()];
    for b in ["b1", "b2"] {
        let creds = osb.bind("i1", b).await.body["credentials"].clone();
        passwords.push(creds["password"].as_str().unwrap().to_owned());
        assert_eq!(osb.get_binding("i1", b).await.status, StatusCode::OK);
        assert_eq!(osb.unbind("i1", b).await.status, StatusCode::OK);
    }
    assert_eq!(osb.deprovision("i1").await.status, StatusCode::OK);
    let log = broker.stop().await;

    for secret in &passwords {
        assert!(!log.contains(secret.as_str()), "a secret was logged");
    }
    let lines: Vec<Value> = log
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect();
    let audit = lines
        .iter()
        .find(|l| l["fields"]["message"] == "provisioned service instance")
        .expect("an audit line for the provision");
    assert_eq!(audit["span"]["user"], "cloudfoundry/auditor-1", "{audit}");
    assert_eq!(audit["span"]["request_identity"], "req-7");
    assert_eq!(audit["span"]["operation"], "provision");
    assert_eq!(audit["span"]["instance_id"], "i1");
    for message in ["created service binding", "deleted service binding", "deprovisioned service instance"] {
        assert!(lines.iter().any(|l| l["fields"]["message"] == message), "no audit line {message:?}");
    }
}

#[tokio::test]
async fn a_real_prometheus_scrapes_the_broker() {
    let etcd = start_etcd().await;
    let broker = BrokerProcess::start(&etcd, None).await;
    let osb = Osb::new(&broker.url);
    let dir = tempfile::tempdir().unwrap();
    let target = broker.metrics_url.trim_start_matches("http://");
    let config = format!(
        "global:\n  scrape_interval: 1s\nscrape_configs:\n  - job_name: etcd-broker\n    static_configs:\n      - targets: ['{target}']\n"
    );
    std::fs::write(dir.path().join("prometheus.yml"), config).unwrap();
    let port = free_port();
    let mut prometheus = tokio::process::Command::new(tool("prometheus/bin/prometheus"))
        .arg(format!("--config.file={}", dir.path().join("prometheus.yml").display()))
        .arg(format!("--storage.tsdb.path={}", dir.path().join("data").display()))
        .arg(format!("--web.listen-address=127.0.0.1:{port}"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("prometheus (scripts/install-tools.sh)");
    scripted_sequence(&osb).await;

    let query = |q: &'static str| {
        let url = format!("http://127.0.0.1:{port}/api/v1/query");
        async move {
            let response = reqwest::Client::new().get(url).query(&[("query", q)]).send().await.ok()?;
            let body: Value = response.json().await.ok()?;
            body["data"]["result"][0]["value"][1].as_str()?.parse::<f64>().ok()
        }
    };
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let up = query("up{job=\"etcd-broker\"}").await;
        let provisions = query("etcd_broker_osb_requests_total{operation=\"provision\",code=\"201\"}").await;
        let bindings = query("sum(etcd_broker_service_bindings)").await;
        if (up, provisions, bindings) == (Some(1.0), Some(2.0), Some(1.0)) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "Prometheus saw up={up:?} provisions={provisions:?} bindings={bindings:?}"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }

    // Every expression of the Grafana dashboard parses and evaluates on real data.
    let dashboard: Value = serde_json::from_str(
        &std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/manifests/grafana/etcd-broker.json"))
            .unwrap(),
    )
    .unwrap();
    let exported = scrape(&broker).await;
    let http = reqwest::Client::new();
    let mut checked = 0;
    for panel in dashboard["panels"].as_array().unwrap() {
        for target in panel["targets"].as_array().unwrap() {
            let expr = target["expr"].as_str().unwrap();
            for name in expr.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_')) {
                if name.starts_with("etcd_broker_") || name.starts_with("process_") {
                    let family = name.trim_end_matches("_bucket");
                    assert!(
                        exported.contains(family),
                        "dashboard uses {name}, which the broker does not export"
                    );
                }
            }
            let concrete = expr
                .replace("$__rate_interval", "1m")
                .replace("$job", "etcd-broker")
                .replace("$instance", ".*");
            let response = http
                .get(format!("http://127.0.0.1:{port}/api/v1/query"))
                .query(&[("query", concrete.as_str())])
                .send()
                .await
                .unwrap();
            let body: Value = response.json().await.unwrap();
            assert_eq!(body["status"], "success", "{}: {expr}: {body}", panel["title"]);
            checked += 1;
        }
    }
    assert!(checked >= 10, "only {checked} dashboard expressions");
    let _ = prometheus.kill().await;
    broker.stop().await;
}

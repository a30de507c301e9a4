//! The monitoring listener and the health-checked backends: `/metrics` counts etcdctl's calls
//! by method and code and the firewall's refusals by rule, and holds no key, value, password
//! or token; `/ready` answers 503 while no etcd endpoint answers and 200 again after; with a
//! 3-member cluster behind the proxy, a frozen (SIGSTOP) member is left out and etcdctl keeps
//! working through the proxy, and the member is used again once it answers.

use std::time::{Duration, Instant};

use crate::common::*;

/// A proxy in front of `endpoints` (default: etcd's) with its monitoring listener; the
/// listener's base URL.
async fn monitored(etcd: &local_etcd::LocalEtcd, extra: &[&str]) -> (ProxyProcess, String) {
    let port = free_port();
    let listen = format!("127.0.0.1:{port}");
    let mut args = vec!["--monitoring-listen", &listen];
    args.extend(extra);
    let proxy = ProxyProcess::start_with(etcd, &args).await;
    (proxy, format!("http://{listen}"))
}

/// GET `path` of the monitoring listener: status and body.
async fn get(base: &str, path: &str) -> (u16, String) {
    let reply = reqwest::get(format!("{base}{path}")).await.unwrap();
    let status = reply.status().as_u16();
    (status, reply.text().await.unwrap())
}

/// The value of the sample `series` (name and labels, as rendered) in `text`; 0 if absent.
fn sample(text: &str, series: &str) -> f64 {
    text.lines().find_map(|line| line.strip_prefix(series)?.strip_prefix(' ')?.parse().ok()).unwrap_or(0.0)
}

/// Polls `/ready` until it answers `want`, for up to `within`; how long it took. A refused
/// connection is not an answer yet: the proxy binds its tenants' listener (which the test
/// helper waits for) before it logs in to etcd, and the monitoring listener after.
async fn wait_ready(base: &str, want: u16, within: Duration) -> (Duration, String) {
    let started = Instant::now();
    loop {
        let (status, body) = match reqwest::get(format!("{base}/ready")).await {
            Ok(reply) => (reply.status().as_u16(), reply.text().await.unwrap()),
            Err(e) if e.is_connect() => (0, e.to_string()),
            Err(e) => panic!("GET /ready: {e}"),
        };
        if status == want {
            return (started.elapsed(), body);
        }
        assert!(started.elapsed() < within, "/ready still {status} after {within:?}: {body}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn metrics_count_calls_by_method_and_code_and_hold_no_secret() {
    let etcd = start_etcd().await;
    let (proxy, base) = monitored(&etcd, &[]).await;
    let key = format!("{}metric-key-7f3a", prefix("alice"));
    let value = "metric-value-c0ffee";
    for args in [vec!["put", key.as_str(), value], vec!["get", key.as_str()], vec!["get", key.as_str()]] {
        let out = etcdctl(&etcd, &proxy.url, "alice", &args);
        assert!(out.status.success(), "{args:?}: {}", String::from_utf8_lossy(&out.stderr));
    }
    // Refused by the firewall: a tenant compacting the cluster.
    let out = etcdctl(&etcd, &proxy.url, "alice", &["compact", "1"]);
    assert!(!out.status.success());
    // A watch: an open stream while it lasts.
    let conn = Conn::login(&proxy.url, "alice").await;
    let (_requests, _responses) = conn.watch_prefix(&prefix("alice")).await.unwrap();

    let (status, text) = get(&base, "/metrics").await;
    assert_eq!(status, 200);
    let requests = |method: &str, code: &str| {
        let service = if method == "Authenticate" { "Auth" } else { "KV" };
        sample(
            &text,
            &format!(
                "etcd_broker_proxy_requests_total{{code=\"{code}\",method=\"{method}\",service=\"etcdserverpb.{service}\"}}"
            ),
        )
    };
    assert_eq!(requests("Put", "Ok"), 1.0, "{text}");
    assert_eq!(requests("Range", "Ok"), 2.0, "{text}");
    assert!(requests("Authenticate", "Ok") >= 4.0, "{text}");
    assert_eq!(requests("Compact", "PermissionDenied"), 1.0, "{text}");
    assert_eq!(
        sample(&text, "etcd_broker_proxy_firewall_refusals_total{rule=\"cluster_wide\"}"),
        1.0,
        "{text}"
    );
    assert_eq!(
        sample(
            &text,
            "etcd_broker_proxy_request_duration_seconds_count{method=\"Range\",service=\"etcdserverpb.KV\"}"
        ),
        2.0,
        "{text}"
    );
    assert_eq!(sample(&text, "etcd_broker_proxy_open_streams{kind=\"watch\"}"), 1.0, "{text}");
    assert!(text.contains("etcd_broker_proxy_encrypted_bytes_total 0"), "{text}");
    assert!(text.contains("etcd_broker_proxy_revocations_total 0"), "{text}");
    for secret in [key.as_str(), value, &password("alice"), "alice", conn.token.as_deref().unwrap()] {
        assert!(!text.contains(secret), "/metrics holds {secret:?}:\n{text}");
    }

    let (status, body) = get(&base, "/health").await;
    assert_eq!((status, body.as_str()), (200, r#"{"status":"ok"}"#));
    let (_, body) = wait_ready(&base, 200, Duration::from_secs(5)).await;
    assert!(body.contains("\"endpoints_answering\":1"), "{body}");
}

#[tokio::test]
async fn ready_is_503_while_no_etcd_endpoint_answers() {
    let etcd = start_etcd().await;
    let (_proxy, base) = monitored(&etcd, &[]).await;
    wait_ready(&base, 200, Duration::from_secs(5)).await;
    etcd.freeze();
    // The heartbeat's probe (every second) finds it: no request is needed.
    let (took, body) = wait_ready(&base, 503, Duration::from_secs(10)).await;
    assert!(body.contains("\"endpoints_answering\":0"), "{body}");
    assert!(took < Duration::from_secs(6), "{took:?}");
    etcd.thaw();
    wait_ready(&base, 200, Duration::from_secs(10)).await;
}

/// Which member leads, by asking each for its status as root.
async fn leader_index(members: &[local_etcd::LocalEtcd]) -> usize {
    let mut root = members[0].root_client().await.unwrap();
    let status = root.status().await.unwrap();
    let leader = status.leader();
    for (i, member) in members.iter().enumerate() {
        let mut client = member.root_client().await.unwrap();
        if client.status().await.unwrap().header().unwrap().member_id() == leader {
            return i;
        }
    }
    panic!("no member leads");
}

#[tokio::test]
async fn a_frozen_member_is_left_out_and_etcdctl_keeps_working() {
    let members = start_cluster(3).await;
    let endpoints: Vec<String> = members.iter().map(|m| m.endpoint()).collect();
    let endpoints = endpoints.join(",");
    let (proxy, base) = monitored(&members[0], &["--endpoints", &endpoints]).await;
    let (_, body) = wait_ready(&base, 200, Duration::from_secs(10)).await;
    assert!(body.contains("\"endpoints_answering\":3"), "{body}");
    // A follower: freezing the leader would stop the whole cluster for an election.
    let frozen = (leader_index(&members).await + 1) % members.len();
    members[frozen].freeze();
    let started = Instant::now();
    loop {
        let (_, body) = get(&base, "/ready").await;
        if body.contains("\"endpoints_answering\":2") {
            break;
        }
        assert!(started.elapsed() < Duration::from_secs(10), "the frozen member is still used: {body}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let key = format!("{}failover", prefix("alice"));
    for i in 0..12 {
        let started = Instant::now();
        let value = format!("v{i}");
        let put = etcdctl(&members[0], &proxy.url, "alice", &["put", &key, &value]);
        assert!(put.status.success(), "put {i}: {}", String::from_utf8_lossy(&put.stderr));
        let got = etcdctl(&members[0], &proxy.url, "alice", &["get", &key, "--print-value-only"]);
        assert!(got.status.success(), "get {i}: {}", String::from_utf8_lossy(&got.stderr));
        assert_eq!(String::from_utf8_lossy(&got.stdout).trim(), value);
        assert!(started.elapsed() < Duration::from_secs(3), "request {i} took {:?}", started.elapsed());
    }
    members[frozen].thaw();
    let started = Instant::now();
    loop {
        let (_, body) = get(&base, "/ready").await;
        if body.contains("\"endpoints_answering\":3") {
            break;
        }
        assert!(started.elapsed() < Duration::from_secs(15), "the thawed member is not used again: {body}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

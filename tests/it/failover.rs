//! Acceptance: a cluster's endpoints fail over. With a dead or a stopped endpoint listed first,
//! the broker still serves every request from the live one, from the very first request on. An
//! etcd that stops answering costs a request 503 after a health probe, not a hang nor the
//! request timeout; with other members listed, a read is sent to one of them instead, and a
//! write sent again through one of them behind the write fence, so that it never applies twice.

use std::time::{Duration, Instant};

use crate::common::*;
use local_etcd::LocalEtcd;
use reqwest::StatusCode;

/// A broker listing `endpoints` for the cluster of `etcd` (whose credentials it uses), with
/// the extra environment `env`.
pub async fn broker_listing(etcd: &LocalEtcd, endpoints: &[String], env: &[(&str, &str)]) -> BrokerProcess {
    BrokerProcess::start_with_config(
        |port, metrics_port| {
            let one = format!("endpoints = [{:?}]", etcd.endpoint());
            let config = config_toml(port, metrics_port, etcd, None);
            assert!(config.contains(&one));
            config.replace(&one, &format!("endpoints = {endpoints:?}"))
        },
        env,
    )
    .await
}

#[tokio::test]
async fn a_dead_first_endpoint_is_skipped() {
    let etcd = start_etcd().await;
    let dead = format!("http://127.0.0.1:{}", free_port());
    let broker = broker_listing(&etcd, &[dead.clone(), etcd.endpoint()], &[]).await;
    let osb = Osb::new(&broker.url);
    for i in 0..5 {
        let reply = osb.provision(&format!("f{i}"), SHARED).await;
        assert_eq!(reply.status, StatusCode::CREATED, "request {i}: {:?}", reply.body);
    }
    let bound = osb.bind("f0", "b0").await;
    assert_eq!(bound.status, StatusCode::CREATED, "{:?}", bound.body);
    // Credentials list both endpoints, so clients can fail over too.
    assert_eq!(bound.body["credentials"]["endpoints"][0], dead);
    for i in 0..5 {
        assert_eq!(osb.deprovision(&format!("f{i}")).await.status, StatusCode::OK);
    }
    broker.stop().await;
}

/// Sends `signal` (STOP or CONT) to a process.
fn signal(pid: u32, signal: &str) {
    let status = std::process::Command::new("kill").args([&format!("-{signal}"), &pid.to_string()]).status();
    assert!(status.is_ok_and(|s| s.success()), "kill -{signal} {pid}");
}

/// Resumes the process when dropped, also when the test fails.
struct Resume(u32);

impl Drop for Resume {
    fn drop(&mut self) {
        signal(self.0, "CONT");
    }
}

/// Issue 22: with the only endpoint stopped (SIGSTOP), every request waited the 10 s request
/// timeout for its 503, for as long as the freeze lasted. Now the request in flight when etcd
/// stops answers once its endpoint is found not answering (2 s without an answer, then a 1 s
/// probe), each later one after a probe (1 s), and the first request after SIGCONT succeeds.
#[tokio::test]
async fn a_frozen_etcd_costs_each_request_a_probe_not_the_request_timeout() {
    let etcd = start_etcd().await;
    let broker = BrokerProcess::start(&etcd, None).await;
    let osb = Osb::new(&broker.url);
    assert_eq!(osb.provision("hang-1", SHARED).await.status, StatusCode::CREATED);

    let pid = etcd.pid().expect("etcd runs");
    signal(pid, "STOP");
    let resume = Resume(pid);
    // The catalog needs no etcd: still served at once.
    let catalog = osb.request(reqwest::Method::GET, "/v2/catalog").send().await.unwrap();
    assert_eq!(catalog.status(), StatusCode::OK);
    let mut waits = Vec::new();
    for i in 0..6 {
        let started = Instant::now();
        let reply =
            tokio::time::timeout(Duration::from_secs(30), osb.provision(&format!("hang-{i}"), SHARED))
                .await
                .expect("the broker answers while etcd is stopped");
        waits.push(started.elapsed());
        assert_eq!(reply.status, StatusCode::SERVICE_UNAVAILABLE, "{:?}", reply.body);
        let description = reply.body["description"].as_str().unwrap();
        assert!(description.contains("answers its health check"), "{description}");
    }
    // The first: 2 s without an answer, then a probe of 1 s; the others: a probe.
    assert!(waits[0] < Duration::from_secs(5), "{waits:?}");
    assert!(waits[1..].iter().all(|w| *w < Duration::from_millis(1500)), "{waits:?}");

    drop(resume);
    // Once etcd answers again, so does the broker at once; the provisions that failed are safe
    // to repeat (etcd may have applied one after all when it resumed: then it exists, 200).
    let started = Instant::now();
    let again = osb.provision("hang-1", SHARED).await;
    assert_eq!(again.status, StatusCode::OK, "{:?}", again.body);
    assert!(started.elapsed() < Duration::from_secs(1), "resumed after {:?}", started.elapsed());
    for i in 0..6 {
        let again = osb.provision(&format!("hang-{i}"), SHARED).await;
        assert!([StatusCode::CREATED, StatusCode::OK].contains(&again.status), "{:?}", again.body);
        assert_eq!(osb.deprovision(&format!("hang-{i}")).await.status, StatusCode::OK);
    }
    eprintln!("503 latencies with the only etcd stopped: {waits:?}");
    broker.stop().await;
}

/// A stopped etcd accepts connections (the kernel does) and never answers: the broker must not
/// wait on it. (The stopped etcd is a cluster of its own: it stays stopped, so nothing is
/// written to it.)
#[tokio::test]
async fn a_stopped_first_endpoint_is_skipped() {
    let (etcd, stopped) = (start_etcd().await, start_etcd().await);
    let pid = stopped.pid().expect("etcd runs");
    signal(pid, "STOP");
    let _resume = Resume(pid);
    let broker = broker_listing(&etcd, &[stopped.endpoint(), etcd.endpoint()], &[]).await;
    let osb = Osb::new(&broker.url);
    let started = Instant::now();
    for i in 0..5 {
        let reply = osb.provision(&format!("s{i}"), SHARED).await;
        assert_eq!(reply.status, StatusCode::CREATED, "request {i}: {:?}", reply.body);
    }
    let bound = osb.bind("s0", "b0").await;
    assert_eq!(bound.status, StatusCode::CREATED, "{:?}", bound.body);
    assert_eq!(osb.get_binding("s0", "b0").await.status, StatusCode::OK);
    assert_eq!(osb.unbind("s0", "b0").await.status, StatusCode::OK);
    for i in 0..5 {
        assert_eq!(osb.deprovision(&format!("s{i}")).await.status, StatusCode::OK);
    }
    // Each request would take the 10 s request timeout if it were sent to the stopped etcd.
    let took = started.elapsed();
    assert!(took < Duration::from_secs(5), "took {took:?}");
    // The operator is told, once its health check has had its 1 s.
    let warning = health_warning(&broker).await;
    let log = broker.stop().await;
    let warning = warning.unwrap_or_else(|| panic!("{log}"));
    assert!(warning.contains(&stopped.endpoint()), "the warning names the endpoint: {warning}");
}

/// A three-member cluster, a broker whose endpoints list a follower first (`members[0]` then;
/// a stopped leader would first cost an election), and `instance` with a binding `b0`, made
/// while every member answers.
async fn cluster_with_a_binding(instance: &str) -> (Vec<LocalEtcd>, BrokerProcess, Osb) {
    let mut members = start_etcd_cluster(3).await;
    let follower = (leader(&members).await + 1) % members.len();
    members.swap(0, follower);
    let endpoints: Vec<String> = members.iter().map(|m| m.endpoint()).collect();
    let broker = broker_listing(&members[0], &endpoints, &[]).await;
    let osb = Osb::new(&broker.url);
    assert_eq!(osb.provision(instance, SHARED).await.status, StatusCode::CREATED);
    assert_eq!(osb.bind(instance, "b0").await.status, StatusCode::CREATED);
    (members, broker, osb)
}

/// The index of the cluster's leader among `members`, as the members that answer say.
pub async fn leader(members: &[LocalEtcd]) -> usize {
    for (i, member) in members.iter().enumerate() {
        let Ok(mut client) = member.root_client().await else { continue };
        if let Ok(status) = client.status().await {
            if status.leader() == status.header().unwrap().member_id() {
                return i;
            }
        }
    }
    panic!("no member is the leader");
}

/// Waits up to 10 s for the line of the broker's log that says an endpoint does not answer
/// its health check, and returns it.
async fn health_warning(broker: &BrokerProcess) -> Option<String> {
    let warning =
        |log: &str| log.lines().find(|l| l.contains("does not answer its health check")).map(String::from);
    let deadline = Instant::now() + Duration::from_secs(10);
    while warning(&broker.log_text()).is_none() && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    warning(&broker.log_text())
}

/// The broker's counter `etcd_broker_etcd_<name>_total` of the cluster `main` (exported at 0
/// from start-up): `read_copies`, reads sent to another endpoint as well; `write_resends`,
/// writes sent again through another one.
async fn etcd_counter(broker: &BrokerProcess, name: &str) -> f64 {
    let metrics = scrape(broker).await;
    let series = format!(r#"etcd_broker_etcd_{name}_total{{cluster="main"}}"#);
    assert!(metrics.contains(&series), "{metrics}");
    sample(&metrics, &series)
}

/// Stops `etcd` until the returned guard is dropped.
fn stop(etcd: &LocalEtcd) -> Resume {
    let pid = etcd.pid().expect("etcd runs");
    signal(pid, "STOP");
    Resume(pid)
}

/// Issue 22, a real three-member cluster: a write sent to a follower that stops is sent again
/// through another member once its own has had 2.5 s to answer (not after the 10 s request
/// timeout), after the write fence moved; so the copy left in the stopped member never applies,
/// not even when the member resumes after the platform deprovisioned what it would create.
#[tokio::test]
async fn writes_sent_to_a_member_that_stops_fail_over_and_never_apply_late() {
    let (members, broker, osb) = cluster_with_a_binding("c0").await;

    let resume = stop(&members[0]);
    // The broker serves on one thread, whose etcd connection picks one of the three members
    // for each request until it learns that one does not answer: one of the first few
    // provisions (one commit each) meets the stopped one ((2/3)^30 that none does).
    let mut slowest = Duration::ZERO;
    for i in 1..=30 {
        let asked = Instant::now();
        let reply = osb.provision(&format!("c{i}"), SHARED).await;
        assert_eq!(reply.status, StatusCode::CREATED, "c{i}: {:?}", reply.body);
        slowest = slowest.max(asked.elapsed());
    }
    assert!(slowest >= Duration::from_secs(2), "no provision met the stopped member: {slowest:?}");
    assert!(slowest < Duration::from_secs(5), "slowest provision {slowest:?}");
    assert!(etcd_counter(&broker, "write_resends").await >= 1.0);
    assert_eq!(osb.get_binding("c0", "b0").await.status, StatusCode::OK);
    assert_eq!(osb.unbind("c0", "b0").await.status, StatusCode::OK);
    for i in 0..=30 {
        assert_eq!(osb.deprovision(&format!("c{i}")).await.status, StatusCode::OK, "c{i}");
    }

    // The stopped member resumes and reads the copy it was sent: it must not bring back the
    // record (or anything else) the deprovision removed.
    drop(resume);
    let mut resumed = members[0].root_client().await.expect("the member answers again");
    let deadline = Instant::now() + Duration::from_secs(10);
    while resumed.status().await.is_err() && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    for prefix in ["/etcd-broker/instances/", "/etcd-broker/bindings/", "/service_instances/"] {
        let left = resumed.get(prefix, Some(etcd_client::GetOptions::new().with_prefix())).await.unwrap();
        let keys: Vec<_> =
            left.kvs().iter().map(|kv| String::from_utf8_lossy(kv.key()).into_owned()).collect();
        assert!(keys.is_empty(), "brought back after the deprovision: {keys:?}");
    }
    let fence = resumed.get("/etcd-broker/write-fence", None).await.unwrap();
    assert!(fence.kvs().first().is_some_and(|kv| kv.mod_revision() > 0), "the fence moved");
    broker.stop().await;
}

/// Reads are safe to send twice: a GET binding sent to a member that stopped while in use is
/// sent to another member once its own has had 2.5 s to answer, instead of waiting out the
/// 10 s request timeout and answering 503.
#[tokio::test]
async fn reads_sent_to_a_member_that_stops_are_answered_by_another() {
    let (members, broker, osb) = cluster_with_a_binding("r0").await;

    let resume = stop(&members[0]);
    // The broker serves on one thread, whose etcd connection picks one of the three members
    // at random for each read until it learns that one does not answer: one of the first few
    // reads meets the stopped one (all 40 miss it with a chance of (2/3)^40, about 1e-7).
    let mut slowest = Duration::ZERO;
    for i in 0..40 {
        let asked = Instant::now();
        let reply = osb.get_binding("r0", "b0").await;
        assert_eq!(reply.status, StatusCode::OK, "read {i}: {:?}", reply.body);
        slowest = slowest.max(asked.elapsed());
    }
    // The read that met it waited for its copy (2.5 s; 5 s if the copy met it too), not for
    // the request timeout.
    assert!(slowest >= Duration::from_secs(2), "no read met the stopped member: {slowest:?}");
    assert!(slowest < Duration::from_secs(9), "slowest read {slowest:?}");
    assert!(etcd_counter(&broker, "read_copies").await >= 1.0);
    // The member was probed for not answering, and the operator told.
    let warning = health_warning(&broker).await.unwrap_or_else(|| panic!("{}", broker.log_text()));
    assert!(warning.contains(&members[0].endpoint()), "the warning names the member: {warning}");
    drop(resume);
    assert_eq!(osb.unbind("r0", "b0").await.status, StatusCode::OK);
    assert_eq!(osb.deprovision("r0").await.status, StatusCode::OK);
    broker.stop().await;
}

/// Issue 22: a watch on a member that freezes (SIGSTOP) stayed silent until HTTP/2 keep-alive
/// gave up (30 to 40 s), and the inventory's gauges stood still that long. Now a silent watch
/// is asked for its progress every 5 s, which a live etcd answers, and ends in an error when
/// the question goes unanswered, so its follower counts again elsewhere.
#[tokio::test]
async fn a_watch_on_a_frozen_etcd_ends_within_two_progress_probes() {
    use etcd_broker::etcd::Observer;
    use etcd_broker::store::{KeyChange, Store, Write};

    let etcd = start_etcd().await;
    let store = store_on(&etcd, Observer::default());
    let (sink, mut changes) = tokio::sync::mpsc::unbounded_channel();
    let follower = {
        let store = store.clone();
        tokio::spawn(async move { store.follow_keys("/followed/", 0, sink).await })
    };
    store.commit(&[], &[Write::Put("/followed/a".into(), b"1".to_vec())]).await.unwrap();
    assert_eq!(changes.recv().await, Some(vec![KeyChange::Created("/followed/a".into())]));
    // Idle for longer than two probes on a live etcd: the probes are answered, the watch stays.
    tokio::time::sleep(Duration::from_secs(11)).await;
    assert!(!follower.is_finished(), "an idle watch on a live etcd ended: {:?}", follower.await);

    let pid = etcd.pid().expect("etcd runs");
    signal(pid, "STOP");
    let resume = Resume(pid);
    let frozen = Instant::now();
    let ended = tokio::time::timeout(Duration::from_secs(25), follower)
        .await
        .expect("the watch ends before keep-alive would have ended it")
        .unwrap();
    let error = ended.expect_err("a watch on a frozen etcd ends in an error");
    assert!(error.to_string().contains("not even a progress request"), "{error}");
    eprintln!("a watch on a frozen etcd ended after {:?}: {error}", frozen.elapsed());
    drop(resume);
}

//! etcd's disk space exhausted (a small `--quota-backend-bytes`, filled until etcd raises its
//! NOSPACE alarm): writes answer a clean 503 that says why, reads keep working, `/ready` names
//! the alarm, and once an operator frees space and disarms the alarm the same broker process
//! serves writes again.

use std::time::{Duration, Instant};

use etcd_client::{AlarmAction, AlarmOptions, AlarmType, CompactionOptions, DeleteOptions};
use local_etcd::{EtcdVersion, LocalEtcd, Options};
use reqwest::StatusCode;

use crate::common::*;

/// etcd's quota for the test: a few of the filler's values fill it.
const QUOTA: u64 = 8 * 1024 * 1024;

async fn ready(broker: &BrokerProcess) -> (StatusCode, serde_json::Value) {
    let response = reqwest::get(format!("{}/ready", broker.metrics_url)).await.unwrap();
    (response.status(), response.json().await.unwrap())
}

#[tokio::test]
async fn a_full_etcd_answers_a_clear_503_and_recovers_without_a_restart() {
    let version = EtcdVersion::from_env().expect("ETCD_VERSION");
    let options =
        Options { version, bcrypt_cost: Some(4), quota_backend_bytes: Some(QUOTA), ..Options::default() };
    let etcd = LocalEtcd::start(options).await.expect("etcd starts");
    let broker = BrokerProcess::start(&etcd, None).await;
    let osb = Osb::new(&broker.url);
    assert_eq!(osb.provision("i1", SHARED).await.status, StatusCode::CREATED);
    assert_eq!(osb.bind("i1", "b1").await.status, StatusCode::CREATED);

    // Fill etcd's backend with 1 MiB values until it refuses.
    let mut root = etcd.root_client().await.unwrap();
    let mut filled = false;
    for n in 0..64 {
        match root.put(format!("/filler/{n}"), vec![b'x'; 1 << 20], None).await {
            Ok(_) => {}
            Err(e) if e.to_string().contains("database space exceeded") => {
                filled = true;
                break;
            }
            Err(e) => panic!("filler put {n}: {e}"),
        }
    }
    assert!(filled, "etcd took 64 MiB with an {QUOTA}-byte quota");

    let refused = osb.provision("i2", SHARED).await;
    assert_eq!(refused.status, StatusCode::SERVICE_UNAVAILABLE, "{:?}", refused.body);
    assert!(refused.reason().contains("NOSPACE alarm"), "{}", refused.reason());
    let refused = osb.bind("i1", "b2").await;
    assert_eq!(refused.status, StatusCode::SERVICE_UNAVAILABLE, "{:?}", refused.body);
    assert_eq!(osb.get_binding("i1", "b1").await.status, StatusCode::OK, "reads still work");
    let (status, body) = ready(&broker).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    let why = body["clusters"]["main"]["error"].as_str().unwrap_or_default();
    assert!(why.contains("NOSPACE on member"), "{body}");

    // The operator's recovery: delete, compact, defragment, disarm.
    root.delete("/filler/", Some(DeleteOptions::new().with_prefix())).await.unwrap();
    let revision = root.get("/", None).await.unwrap().header().unwrap().revision();
    root.compact(revision, Some(CompactionOptions::new().with_physical())).await.unwrap();
    root.defragment().await.unwrap();
    // As `etcdctl alarm disarm`: each raised alarm, with its member.
    let raised = root.alarm(AlarmAction::Get, AlarmType::None, None).await.unwrap();
    for alarm in raised.alarms() {
        let mut member = AlarmOptions::new();
        member.with_member(alarm.member_id());
        root.alarm(AlarmAction::Deactivate, AlarmType::Nospace, Some(member)).await.unwrap();
    }

    // The same broker process serves writes again, and says it is ready (its next probe).
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let answer = osb.provision("i2", SHARED).await;
        if answer.status == StatusCode::CREATED {
            break;
        }
        assert!(Instant::now() < deadline, "still refused: {}", answer.reason());
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(osb.bind("i1", "b2").await.status, StatusCode::CREATED);
    let (status, body) = ready(&broker).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert!(!broker.log_text().contains("panicked"));
    broker.stop().await;
    etcd.stop().await;
}

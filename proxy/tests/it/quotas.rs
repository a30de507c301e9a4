//! Per-instance quotas with a real broker: a plan's quota_keys and quota_bytes stop a tenant's
//! etcdctl through the proxy with RESOURCE_EXHAUSTED naming the quota, until it deletes keys;
//! writes made directly on etcd are counted; quota_requests_per_second refuses bursts;
//! `etcd-broker-ops usage` reports the same figures as a root range.

use std::time::{Duration, Instant};

use etcd_broker::osb::plan_options::stored_bytes;
use etcd_broker_proxy::pb::etcdserverpb::{PutRequest, RangeRequest};
use etcd_client::GetOptions;
use local_etcd::LocalEtcd;
use serde_json::Value;
use tonic::Code;

use crate::broker::{BrokerProcess, QUOTAS, QUOTA_BYTES, QUOTA_KEYS, QUOTA_RATE, RATE_LIMITED};
use crate::common::*;

/// etcd, a broker whose bindings name the proxy, the proxy with its own config; a
/// binding of an instance of `plan`: its user, password and prefix.
async fn setup(plan: &str, instance: &str) -> (LocalEtcd, BrokerProcess, ProxyProcess, [String; 3]) {
    let etcd = start_etcd().await;
    let port = free_port();
    let url = format!("http://127.0.0.1:{port}");
    let broker = BrokerProcess::start_with(&etcd, Some(&url)).await;
    let proxy =
        ProxyProcess::start_at(&etcd, port, &["--config", broker.proxy_config.to_str().unwrap()]).await;
    let offering = BrokerProcess::offering(plan);
    broker.osb.provision(&offering, instance, Duration::from_secs(30)).await.unwrap();
    let (_, bound) = broker.osb.bind(&offering, instance, "binding-1").await.unwrap();
    assert_eq!(bound["endpoints"], Value::from(vec![url]), "a plan with quotas hands out the proxy");
    let text = |field: &str| bound[field].as_str().unwrap().to_owned();
    (etcd, broker, proxy, [text("username"), text("password"), text("prefix")])
}

#[tokio::test]
async fn writes_beyond_the_key_and_byte_quotas_are_refused_until_keys_are_deleted() {
    let (etcd, broker, proxy, [user, password, prefix]) = setup(QUOTAS, "quota-1").await;
    let ctl = |args: &[&str]| etcdctl_as(&etcd, &proxy.url, (&user, &password), args);
    let ok = |args: &[&str]| {
        let out = ctl(args);
        assert!(out.status.success(), "etcdctl {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    };
    let fails = |args: &[&str]| {
        let out = ctl(args);
        assert!(!out.status.success(), "etcdctl {args:?} should be refused");
        String::from_utf8_lossy(&out.stderr).into_owned()
    };
    let key = |name: &str| format!("{prefix}{name}");
    let value = |n: usize| "v".repeat(n);

    // The key quota: 5 keys of 30 bytes each.
    for i in 1..=QUOTA_KEYS {
        ok(&["put", &key(&format!("k{i}")), "v"]);
    }
    let refused = fails(&["put", &key("k6"), "v"]);
    assert!(refused.contains("ResourceExhausted"), "{refused}");
    assert!(refused.contains(&format!("over its quota quota_keys (at most {QUOTA_KEYS} keys)")), "{refused}");
    assert!(!refused.contains(&key("k6")), "no key in the message: {refused}");
    let through = Conn::login_as(&proxy.url, &user, &password).await;
    let put = |name: &str, value: String| PutRequest {
        key: key(name).into_bytes(),
        value: value.into_bytes(),
        ..Default::default()
    };
    let message = crate::common::refused(
        through.kv().put(through.req(put("k6", value(1)))).await,
        Code::ResourceExhausted,
    );
    assert!(message.contains("quota_keys"), "{message}");
    // Replacing a key adds none; a Txn's put of a new key counts.
    ok(&["put", &key("k1"), "w"]);
    let txn = format!("\n\nput {} v\n\n\n", key("k6"));
    let out = etcdctl_with_input_as(&etcd, &proxy.url, (&user, &password), &txn);
    assert!(String::from_utf8_lossy(&out.stderr).contains("quota_keys"), "{out:?}");
    // Deleting frees the key at once (the proxy catches up with its watch before refusing).
    ok(&["del", &key("k5")]);
    ok(&["put", &key("k6"), "v"]);

    // The byte quota: 4 keys of 30 bytes, then a big value.
    ok(&["del", &key("k6")]);
    let big = |n: usize| stored_bytes(key("k5").as_bytes(), value(n).as_bytes());
    assert!(120 + big(900) > QUOTA_BYTES);
    let refused = fails(&["put", &key("k5"), &value(900)]);
    assert!(refused.contains(&format!("quota_bytes (at most {QUOTA_BYTES} bytes")), "{refused}");
    assert!(!refused.contains(&value(900)), "no value in the message");
    ok(&["put", &key("k5"), &value(800)]);
    // Growing a key counts the difference only: 120 + 879 = 999 bytes.
    assert_eq!(120 + big(850), QUOTA_BYTES - 1);
    ok(&["put", &key("k5"), &value(850)]);
    let refused = fails(&["put", &key("k1"), "vvv"]);
    assert!(refused.contains("quota_bytes"), "{refused}");
    ok(&["del", &key("k5")]);
    ok(&["put", &key("k1"), "vvv"]);

    // A write made directly on etcd is counted within a second: 4 keys + root's = 5.
    let mut root = etcd.root_client().await.unwrap();
    root.put(key("direct"), "v", None).await.unwrap();
    let written = Instant::now();
    let deadline = written + Duration::from_secs(1);
    loop {
        match through.kv().put(through.req(put("probe", value(1)))).await {
            Err(status) => {
                assert_eq!(status.code(), Code::ResourceExhausted, "{status}");
                eprintln!("a direct write was counted after {:?}", written.elapsed());
                break;
            }
            Ok(_) => {
                root.delete(key("probe"), None).await.unwrap();
                assert!(Instant::now() < deadline, "the direct write is not counted within a second");
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    }

    // The operator's view: the same figures as a root range of the prefix.
    let all = root.get(prefix.as_str(), Some(GetOptions::new().with_prefix())).await.unwrap();
    let bytes: u64 = all.kvs().iter().map(|kv| stored_bytes(kv.key(), kv.value())).sum();
    let config = etcd_broker::config::Config::load(&broker.config).unwrap();
    let report = etcd_broker_ops::usage::usage(&config, "quota-1").await.unwrap();
    assert_eq!((report.keys, report.bytes), (all.kvs().len() as u64, bytes));
    assert_eq!(
        (report.keys, report.quota_keys, report.quota_bytes),
        (5, Some(QUOTA_KEYS), Some(QUOTA_BYTES))
    );
    assert_eq!(report.share, Some(1.0));
    assert_eq!(report.prefix, prefix);
    let text = etcd_broker_ops::usage::text(&report);
    assert!(text.contains(&format!("bytes:               {bytes} of {QUOTA_BYTES}\n")), "{text}");
    let missing = etcd_broker_ops::usage::usage(&config, "no-such-instance").await.unwrap_err();
    assert!(format!("{missing:#}").contains("no instance no-such-instance"), "{missing:#}");
}

#[tokio::test]
async fn the_request_rate_quota_refuses_bursts() {
    let (_etcd, _broker, proxy, [user, password, prefix]) = setup(RATE_LIMITED, "rate-1").await;
    let through = Conn::login_as(&proxy.url, &user, &password).await;
    let range = || RangeRequest { key: format!("{prefix}k").into_bytes(), ..Default::default() };
    let burst = (0..3 * QUOTA_RATE).map(|_| {
        let through = through.clone();
        let request = through.req(range());
        async move { through.kv().range(request).await }
    });
    let answers = futures_util::future::join_all(burst).await;
    let passed = answers.iter().filter(|a| a.is_ok()).count();
    assert!(passed as u32 <= QUOTA_RATE + 1 && passed > 0, "{passed} passed");
    let refused = answers.into_iter().find_map(Result::err).expect("some are refused");
    assert_eq!(refused.code(), Code::ResourceExhausted);
    assert!(
        refused
            .message()
            .contains(&format!("quota_requests_per_second (at most {QUOTA_RATE} requests per second)")),
        "{}",
        refused.message()
    );
    // A second later the bucket has refilled.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    through.kv().range(through.req(range())).await.unwrap();
}

//! Per-instance quotas with a real broker: a plan's quota_keys and quota_bytes stop a tenant's
//! etcdctl through the proxy with RESOURCE_EXHAUSTED naming the quota, until it deletes keys;
//! writes made directly on etcd are counted; quota_requests_per_second refuses bursts;
//! `etcd-broker-ops usage` reports the same figures as a root range; writers racing through
//! two proxies exceed a quota by no more than docs/proxy.md says.

use std::time::{Duration, Instant};

use etcd_broker::osb::plan_options::stored_bytes;
use etcd_broker_proxy::pb::etcdserverpb::{DeleteRangeRequest, PutRequest, RangeRequest};
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
    let binding = bind(&broker, plan, instance, &url).await;
    (etcd, broker, proxy, binding)
}

/// A new instance of `plan` and a binding of it, which names the proxy at `url`: its user,
/// password and prefix.
async fn bind(broker: &BrokerProcess, plan: &str, instance: &str, url: &str) -> [String; 3] {
    let offering = BrokerProcess::offering(plan);
    broker.osb.provision(&offering, instance, Duration::from_secs(30)).await.unwrap();
    let (_, bound) = broker.osb.bind(&offering, instance, "binding-1").await.unwrap();
    assert_eq!(bound["endpoints"], Value::from(vec![url]), "a plan with quotas hands out the proxy");
    let text = |field: &str| bound[field].as_str().unwrap().to_owned();
    [text("username"), text("password"), text("prefix")]
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

/// Writers racing through two proxies in front of one etcd, as docs/proxy.md's accuracy of
/// quotas describes: each proxy admits at most the free space it sees, so together they exceed
/// a quota by at most what the other proxy admitted, which is at most the free space at the
/// start of the race; after the race both refuse, and deletes through one proxy free space
/// the other sees. The key quota and the byte quota, each on an instance of its own.
#[tokio::test]
async fn two_proxies_exceed_a_quota_by_at_most_the_free_space_and_see_each_others_deletes() {
    let (etcd, broker, first, keys_binding) = setup(QUOTAS, "race-keys").await;
    let config = broker.proxy_config.to_str().unwrap().to_owned();
    let second = ProxyProcess::start_with(&etcd, &["--config", &config]).await;
    let bytes_binding = bind(&broker, QUOTAS, "race-bytes", &first.url).await;
    race(&etcd, [&first, &second], keys_binding, Fill::Keys).await;
    race(&etcd, [&first, &second], bytes_binding, Fill::Bytes).await;
}

/// Which quota a race fills: the keys with one-byte values (9 keys at most, 350 bytes), or
/// the bytes with values large enough that the key quota is never reached (after the first
/// key, one more fits per proxy: 3 keys at most).
#[derive(Clone, Copy, Debug)]
enum Fill {
    Keys,
    Bytes,
}

impl Fill {
    fn value(self) -> Vec<u8> {
        match self {
            Fill::Keys => b"v".to_vec(),
            Fill::Bytes => vec![b'v'; 300],
        }
    }

    fn limit(self) -> u64 {
        match self {
            Fill::Keys => QUOTA_KEYS,
            Fill::Bytes => QUOTA_BYTES,
        }
    }

    fn option(self) -> &'static str {
        match self {
            Fill::Keys => "quota_keys",
            Fill::Bytes => "quota_bytes",
        }
    }

    /// What a put of `key` uses of this quota.
    fn of_one(self, key: &[u8]) -> u64 {
        match self {
            Fill::Keys => 1,
            Fill::Bytes => stored_bytes(key, &self.value()),
        }
    }

    /// What `kvs` use of this quota.
    fn measure<'a>(self, kvs: impl IntoIterator<Item = &'a etcd_client::KeyValue>) -> u64 {
        match self {
            Fill::Keys => kvs.into_iter().count() as u64,
            Fill::Bytes => kvs.into_iter().map(|kv| stored_bytes(kv.key(), kv.value())).sum(),
        }
    }
}

/// Writers per proxy in a race.
const WRITERS: usize = 4;

async fn race(etcd: &LocalEtcd, proxies: [&ProxyProcess; 2], binding: [String; 3], fill: Fill) {
    let [user, password, prefix] = binding;
    let conns = [
        Conn::login_as(&proxies[0].url, &user, &password).await,
        Conn::login_as(&proxies[1].url, &user, &password).await,
    ];
    let put = |conn: &Conn, name: &str| {
        let request = PutRequest {
            key: format!("{prefix}{name}").into_bytes(),
            value: fill.value(),
            ..Default::default()
        };
        let (conn, request) = (conn.clone(), conn.req(request));
        async move { conn.kv().put(request).await }
    };
    let delete = |conn: &Conn, key: Vec<u8>| {
        let (conn, request) = (conn.clone(), conn.req(DeleteRangeRequest { key, ..Default::default() }));
        async move { conn.kv().delete_range(request).await.unwrap() }
    };
    let root = etcd.root_client().await.unwrap();
    let stored = || {
        let (mut root, prefix) = (root.clone(), prefix.clone());
        async move { root.get(prefix, Some(GetOptions::new().with_prefix())).await.unwrap().kvs().to_vec() }
    };

    // One key before the race: the free space is the quota less it. A read through each
    // proxy first, so that both have counted the instance when the race starts.
    for conn in &conns {
        revision(conn, &format!("{prefix}before")).await;
    }
    put(&conns[0], "before").await.unwrap();
    let before = fill.measure(&stored().await);
    let free = fill.limit() - before;

    // Writers through both proxies, started together, each putting new keys until refused.
    let start = std::sync::Arc::new(tokio::sync::Barrier::new(2 * WRITERS));
    let mut writers = Vec::new();
    for (p, conn) in conns.iter().enumerate() {
        for w in 0..WRITERS {
            let (conn, start, prefix) = (conn.clone(), start.clone(), prefix.clone());
            writers.push(tokio::spawn(async move {
                start.wait().await;
                for n in 0.. {
                    let key = format!("{prefix}p{p}-w{w}-{n}").into_bytes();
                    let request = PutRequest { key, value: fill.value(), ..Default::default() };
                    match conn.kv().put(conn.req(request)).await {
                        Ok(_) => continue,
                        Err(status) if status.code() == Code::ResourceExhausted => {
                            assert!(
                                status.message().contains(fill.option()),
                                "{fill:?}: {}",
                                status.message()
                            );
                            return;
                        }
                        Err(status) => panic!("proxy {p}, writer {w}: {status}"),
                    }
                }
            }));
        }
    }
    for writer in writers {
        writer.await.unwrap();
    }

    // What each proxy admitted, as etcd has it (the keys name the proxy).
    let kvs = stored().await;
    let through = |p: usize| {
        let mark = format!("{prefix}p{p}-");
        fill.measure(kvs.iter().filter(|kv| kv.key().starts_with(mark.as_bytes())))
    };
    let (a, b, total) = (through(0), through(1), fill.measure(&kvs));
    assert_eq!(total, before + a + b);
    eprintln!(
        "{fill:?} race: limit {}, {before} before, proxies admitted {a} and {b}: {total} ({} over)",
        fill.limit(),
        total.saturating_sub(fill.limit())
    );
    assert!(
        a <= free && b <= free,
        "{fill:?}: each proxy admits at most the free space it sees ({free}): {a}, {b}"
    );
    let excess = total.saturating_sub(fill.limit());
    assert!(excess <= a.min(b), "{fill:?}: {excess} over the quota, more than the other proxy admitted");
    assert!(total <= fill.limit() + free, "{fill:?}: {total}");

    // After the race each proxy refuses a further write, whatever its watch saw first (a key
    // name longer than the writers', so that it needs at least as much as their last).
    for conn in &conns {
        let message = refused(put(conn, "after-the-race").await, Code::ResourceExhausted);
        assert!(message.contains(fill.option()), "{message}");
    }

    // Deletes through one proxy free space the other sees at once: delete through one until
    // a key fits, put through the other; then the other way round.
    for (deleting, writing) in [(0, 1), (1, 0)] {
        let name = format!("after-{writing}");
        let wanted = fill.of_one(format!("{prefix}{name}").as_bytes());
        let mut kvs = stored().await;
        while fill.measure(&kvs) + wanted > fill.limit() {
            let victim = kvs.pop().unwrap();
            delete(&conns[deleting], victim.key().to_vec()).await;
        }
        put(&conns[writing], &name)
            .await
            .unwrap_or_else(|e| panic!("{fill:?}: after deletes through the other: {e}"));
    }
}

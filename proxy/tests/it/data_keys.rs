//! `etcd-broker-ops data-keys` against a real broker, proxy and etcd: a version added is used
//! by the proxy for new values within seconds while older ones still unseal; `rewrite` seals
//! every value with the newest through the proxy (clear ones too) without losing a tenant's
//! concurrent write; `retire` refuses a version still in use and drops it once none is.

use std::collections::HashMap;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::{Duration, Instant};

use etcd_broker::broker::records::sealed_value_version;
use etcd_broker_ops::data_keys::{self, InstanceArgs, ProxyArgs, Source};
use etcd_broker_proxy::pb::etcdserverpb::{PutRequest, RangeRequest};
use local_etcd::LocalEtcd;

use crate::broker::{BrokerProcess, ENCRYPTED, PLAN};
use crate::common::*;

/// A broker whose encrypting plan's bindings name a proxy, and that proxy.
async fn stack(etcd: &LocalEtcd) -> (BrokerProcess, ProxyProcess) {
    let port = free_port();
    let broker = BrokerProcess::start_with(etcd, Some(&format!("http://127.0.0.1:{port}"))).await;
    let proxy =
        ProxyProcess::start_at(etcd, port, &["--config", broker.proxy_config.to_str().unwrap()]).await;
    (broker, proxy)
}

/// An instance of `plan` and a binding's connection through the proxy; its prefix.
async fn tenant(broker: &BrokerProcess, proxy: &ProxyProcess, plan: &str, id: &str) -> (Conn, String) {
    let offering = BrokerProcess::offering(plan);
    broker.osb.provision(&offering, id, Duration::from_secs(30)).await.unwrap();
    let (_, bound) = broker.osb.bind(&offering, id, "binding-1").await.unwrap();
    let text = |field: &str| bound[field].as_str().unwrap().to_owned();
    let conn = Conn::login_as(&proxy.url, &text("username"), &text("password")).await;
    (conn, text("prefix"))
}

fn args(broker: &BrokerProcess, id: &str) -> InstanceArgs {
    InstanceArgs { instance_id: id.to_owned(), config: broker.config.clone() }
}

async fn put(conn: &Conn, key: &str, value: &str, lease: i64) {
    let put = PutRequest { key: key.into(), value: value.into(), lease, ..Default::default() };
    conn.kv().put(conn.req(put)).await.unwrap();
}

async fn get(conn: &Conn, key: &str) -> String {
    let range = RangeRequest { key: key.into(), ..Default::default() };
    let answer = conn.kv().range(conn.req(range)).await.unwrap().into_inner();
    String::from_utf8(answer.kvs[0].value.clone()).unwrap()
}

/// The version sealing each value under `prefix` in etcd (`None`: clear), read as root.
async fn versions(etcd: &LocalEtcd, prefix: &str) -> HashMap<String, Option<u32>> {
    let mut root = etcd.root_client().await.unwrap();
    let all = root.get(prefix, Some(etcd_client::GetOptions::new().with_prefix())).await.unwrap();
    all.kvs()
        .iter()
        .map(|kv| (String::from_utf8_lossy(kv.key()).into_owned(), sealed_value_version(kv.value())))
        .collect()
}

#[tokio::test]
async fn a_new_version_seals_new_values_then_the_rewrite_and_retire_follow() {
    let etcd = start_etcd().await;
    let (broker, proxy) = stack(&etcd).await;
    let (conn, prefix) = tenant(&broker, &proxy, ENCRYPTED, "keys-1").await;
    let instance = args(&broker, "keys-1");
    let key = |name: &str| format!("{prefix}{name}");
    let lease = grant(&conn).await;
    put(&conn, &key("a"), "value a", 0).await;
    put(&conn, &key("leased"), "value leased", lease).await;
    let mut root = etcd.root_client().await.unwrap();
    root.put(key("clear"), "written in clear", None).await.unwrap();

    let status = data_keys::status(&instance).await.unwrap();
    assert!(status.contains("version 1 (newest: seals new values): 2 values"), "{status}");
    assert!(status.contains("in clear: 1 values"), "{status}");
    let refused = data_keys::retire(&instance, 1).await.unwrap().unwrap_err();
    assert!(refused.contains("is the newest"), "{refused}");

    // A new version: the proxy seals with it within seconds, and still unseals version 1.
    let added = data_keys::add(&instance).await.unwrap();
    assert!(added.contains("version 2 added"), "{added}");
    let since = Instant::now();
    loop {
        put(&conn, &key("b"), "value b", 0).await;
        if versions(&etcd, &key("b")).await[&key("b")] == Some(2) {
            break;
        }
        assert!(since.elapsed() < Duration::from_secs(3), "the proxy still seals with version 1");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    eprintln!("the proxy sealed with version 2 after {:?}", since.elapsed());
    assert_eq!(get(&conn, &key("a")).await, "value a");
    let refused = data_keys::retire(&instance, 1).await.unwrap().unwrap_err();
    assert!(refused.contains("still seals 2 values"), "{refused}");

    // Dry run: counted, nothing written.
    let before = versions(&etcd, &prefix).await;
    let stop = AtomicBool::new(false);
    let through = ProxyArgs { proxy: vec![], proxy_ca_file: None };
    let dry = data_keys::rewrite(&instance, &through, true, &stop).await.unwrap();
    assert_eq!(dry.rewritten, [(Source::Clear, 1), (Source::Version(1), 2)].into());
    assert_eq!(versions(&etcd, &prefix).await, before);

    // The rewrite (the proxy's URL from the config): every value sealed with version 2, the
    // same values through the proxy, the lease kept.
    let summary = data_keys::rewrite(&instance, &through, false, &stop).await.unwrap();
    assert_eq!(summary.rewritten, dry.rewritten, "{}", data_keys::summary_text(&summary, false));
    assert!(
        summary.failed.is_empty() && summary.already == 1,
        "{}",
        data_keys::summary_text(&summary, false)
    );
    assert!(versions(&etcd, &prefix).await.values().all(|v| *v == Some(2)));
    assert_eq!(get(&conn, &key("a")).await, "value a");
    assert_eq!(get(&conn, &key("clear")).await, "written in clear");
    assert_eq!(get(&conn, &key("leased")).await, "value leased");
    assert_eq!(root.get(key("leased"), None).await.unwrap().kvs()[0].lease(), lease);
    let again = data_keys::rewrite(&instance, &through, false, &stop).await.unwrap();
    assert!(again.rewritten.is_empty() && again.already == 4, "{}", data_keys::summary_text(&again, false));

    // Nothing uses version 1 any more: retired; everything still reads.
    let retired = data_keys::retire(&instance, 1).await.unwrap().unwrap();
    assert!(retired.contains("versions left: 2"), "{retired}");
    let status = data_keys::status(&instance).await.unwrap();
    assert!(!status.contains("version 1"), "{status}");
    assert_eq!(get(&conn, &key("a")).await, "value a");
    assert_eq!(get(&conn, &key("b")).await, "value b");

    // An instance whose plan does not encrypt gets no data key; a rewrite needs one.
    tenant(&broker, &proxy, PLAN, "plain-1").await;
    let error = data_keys::add(&args(&broker, "plain-1")).await.unwrap_err().to_string();
    assert!(error.contains("does not encrypt"), "{error}");
    let error =
        data_keys::rewrite(&args(&broker, "plain-1"), &through, false, &stop).await.unwrap_err().to_string();
    assert!(error.contains("has no data key"), "{error}");
    let error = data_keys::status(&args(&broker, "never-provisioned")).await.unwrap_err().to_string();
    assert!(error.contains("has no record"), "{error}");
}

/// A tenant writing the same keys all through the rewrite: its last write to each key is what
/// the key holds afterwards (the rewrite's compare-and-swap lost, read again, or came first).
#[tokio::test]
async fn a_tenants_writes_during_the_rewrite_are_never_lost() {
    let etcd = start_etcd().await;
    let (broker, proxy) = stack(&etcd).await;
    let (conn, prefix) = tenant(&broker, &proxy, ENCRYPTED, "race-1").await;
    let prefix: &'static str = Box::leak(prefix.into_boxed_str());
    let instance = args(&broker, "race-1");
    let mut root = etcd.root_client().await.unwrap();
    const KEYS: usize = 300;
    let key = move |i: usize| format!("{prefix}k{i:04}");
    for i in 0..KEYS {
        root.put(key(i), format!("clear {i}"), None).await.unwrap();
    }
    let stop = Arc::new(AtomicBool::new(false));
    let writer = {
        let (conn, stop, key) = (conn.clone(), stop.clone(), key);
        tokio::spawn(async move {
            let mut last = HashMap::new();
            let mut round = 0;
            while !stop.load(std::sync::atomic::Ordering::SeqCst) {
                for i in (0..KEYS).step_by(7) {
                    let value = format!("tenant {round} {i}");
                    put(&conn, &key(i), &value, 0).await;
                    last.insert(i, value);
                }
                round += 1;
            }
            last
        })
    };
    tokio::time::sleep(Duration::from_millis(100)).await;
    let through = ProxyArgs { proxy: vec![url::Url::parse(&proxy.url).unwrap()], proxy_ca_file: None };
    let summary = data_keys::rewrite(&instance, &through, false, &AtomicBool::new(false)).await.unwrap();
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    let last = writer.await.unwrap();
    eprintln!("{}", data_keys::summary_text(&summary, false));
    assert!(summary.failed.is_empty(), "{}", data_keys::summary_text(&summary, false));
    for i in 0..KEYS {
        let expected = last.get(&i).cloned().unwrap_or(format!("clear {i}"));
        assert_eq!(get(&conn, &key(i)).await, expected, "key {i}");
    }
    assert!(versions(&etcd, prefix).await.values().all(|v| *v == Some(1)));
}

//! Values encrypted by the proxy, with a real broker: an instance of an encrypting plan gets a
//! data key, its bindings the proxy's URL; etcdctl through the proxy sees clear text while
//! etcd, read directly as root, holds only ciphertext.

use std::time::Duration;

use etcd_broker_proxy::encryption::MAGIC;
use etcd_broker_proxy::pb::etcdserverpb::{range_request::SortTarget, RangeRequest};
use serde_json::Value;
use tonic::Code;

use crate::broker::{BrokerProcess, ENCRYPTED};
use crate::common::*;

const SECRET: &str = "the-clear-secret";

#[tokio::test]
async fn values_are_ciphertext_in_etcd_and_clear_text_through_the_proxy() {
    let etcd = start_etcd().await;
    let port = free_port();
    let url = format!("http://127.0.0.1:{port}");
    let broker = BrokerProcess::start_with(&etcd, Some(&url)).await;
    let proxy =
        ProxyProcess::start_at(&etcd, port, &["--config", broker.proxy_config.to_str().unwrap()]).await;
    let plan = BrokerProcess::offering(ENCRYPTED);
    broker.osb.provision(&plan, "sealed-1", Duration::from_secs(30)).await.unwrap();
    let (_, bound) = broker.osb.bind(&plan, "sealed-1", "binding-1").await.unwrap();
    assert_eq!(bound["endpoints"], Value::from(vec![url.clone()]), "the credentials name the proxy");
    let text = |field: &str| bound[field].as_str().unwrap().to_owned();
    let (user, password, prefix) = (text("username"), text("password"), text("prefix"));
    let ctl = |args: &[&str]| etcdctl_as(&etcd, &proxy.url, (&user, &password), args);
    let ok = |args: &[&str]| {
        let out = ctl(args);
        assert!(out.status.success(), "etcdctl {args:?}: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8(out.stdout).unwrap()
    };
    let key = |name: &str| format!("{prefix}{name}");
    let mut root = etcd.root_client().await.unwrap();
    let raw = |value: &[u8]| {
        assert!(value.starts_with(MAGIC), "sealed");
        assert!(!value.windows(SECRET.len()).any(|w| w == SECRET.as_bytes()), "no clear text in etcd");
    };

    // Put, get: clear through the proxy, sealed in etcd.
    ok(&["put", &key("a"), SECRET]);
    assert_eq!(ok(&["get", &key("a"), "--print-value-only"]).trim(), SECRET);
    raw(root.get(key("a"), None).await.unwrap().kvs()[0].value());

    // A Txn's put is sealed; a compare on a value is refused, one on a version passes.
    let txn = format!("ver(\"{}\") > \"0\"\n\nput {} {SECRET}\n\n\n", key("a"), key("b"));
    let out = etcdctl_with_input_as(&etcd, &proxy.url, (&user, &password), &txn);
    assert!(String::from_utf8_lossy(&out.stdout).starts_with("SUCCESS"), "{out:?}");
    raw(root.get(key("b"), None).await.unwrap().kvs()[0].value());
    let compare = format!("value(\"{}\") = \"{SECRET}\"\n\nput {} x\n\n\n", key("a"), key("c"));
    let out = etcdctl_with_input_as(&etcd, &proxy.url, (&user, &password), &compare);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("may not compare the value"), "{out:?}");

    // Range sorted by value: refused; a value written in clear (directly) passes through.
    let through = Conn::login_as(&proxy.url, &user, &password).await;
    let sorted = RangeRequest {
        key: prefix.clone().into_bytes(),
        range_end: prefix_end(&prefix),
        sort_target: SortTarget::Value as i32,
        ..Default::default()
    };
    refused(through.kv().range(through.req(sorted)).await, Code::FailedPrecondition);
    root.put(key("clear"), "written directly", None).await.unwrap();
    assert_eq!(ok(&["get", &key("clear"), "--print-value-only"]).trim(), "written directly");

    // Watch events (with their previous values) and deletes' previous values are clear.
    let (_open, mut watch) = through.watch_prefix(&key("a")).await.unwrap();
    ok(&["put", &key("a"), "second"]);
    let answer =
        tokio::time::timeout(Duration::from_secs(5), watch.message()).await.unwrap().unwrap().unwrap();
    assert_eq!(answer.events[0].kv.as_ref().unwrap().value, b"second");
    let deleted = ok(&["del", &key("a"), "--prev-kv"]);
    assert!(deleted.contains("second"), "{deleted}");

    // Nothing under the prefix is in clear in etcd but what was written there directly.
    let all = root.get(prefix.as_str(), Some(etcd_client::GetOptions::new().with_prefix())).await.unwrap();
    for kv in all.kvs().iter().filter(|kv| kv.key() != key("clear").as_bytes()) {
        raw(kv.value());
    }
}

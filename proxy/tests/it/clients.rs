//! Client libraries from the package registries, unmodified, through a proxy that encrypts:
//! Rust's `etcd-client` (crates.io) and Node's `etcd3` (npm, installed into
//! `tools/node-etcd3/` by `scripts/install-tools.sh`). Each runs the same script with a
//! binding's user name and password: put and get, a Txn, a watch, a lease granted, attached,
//! kept alive and revoked, a delete with its previous value. The client sees clear text; root,
//! reading etcd directly, finds only sealed values under the instance's prefix.

use std::process::Command;
use std::time::Duration;

use etcd_broker_proxy::encryption::MAGIC;
use etcd_client::{
    Client, Compare, CompareOp, ConnectOptions, DeleteOptions, EventType, GetOptions, PutOptions, Txn, TxnOp,
    WatchOptions,
};
use local_etcd::LocalEtcd;

use crate::broker::EncryptedBinding;
use crate::common::*;

/// Every value the scripts write contains it; none may be found in etcd.
const MARKER: &[u8] = b"clear-text";
/// The keys each script leaves behind, whose values root then reads in etcd.
const LEFT: [&str; 2] = ["txn", "watched/1"];

/// Root reads the binding's prefix directly on etcd: the keys the script left are there, and
/// every value is sealed, none holds the script's clear text.
async fn only_ciphertext_in_etcd(etcd: &LocalEtcd, prefix: &str) {
    let mut root = etcd.root_client().await.unwrap();
    let all = root.get(prefix, Some(GetOptions::new().with_prefix())).await.unwrap();
    let keys: Vec<String> = all.kvs().iter().map(|kv| kv.key_str().unwrap().to_owned()).collect();
    for left in LEFT {
        assert!(keys.contains(&format!("{prefix}{left}")), "{left} is in etcd: {keys:?}");
    }
    for kv in all.kvs() {
        let value = kv.value();
        assert!(value.starts_with(MAGIC), "{} is sealed in etcd", kv.key_str().unwrap());
        assert!(!value.windows(MARKER.len()).any(|w| w == MARKER), "no clear text in etcd");
    }
}

#[tokio::test]
async fn rust_etcd_client_runs_the_script_through_the_encrypting_proxy() {
    let etcd = start_etcd().await;
    let tenant = EncryptedBinding::start(&etcd).await;
    let options = ConnectOptions::new()
        .with_user(tenant.user.as_str(), tenant.password.as_str())
        .with_timeout(Duration::from_secs(10));
    let mut client = Client::connect([tenant.url.as_str()], Some(options)).await.unwrap();
    let key = |name: &str| format!("{}{name}", tenant.prefix);
    let value = |step: &str| format!("clear-text of Rust etcd-client, {step}");
    let get = |mut client: Client, name: String| async move {
        let answer = client.get(name, None).await.unwrap();
        answer.kvs().first().map(|kv| kv.value_str().unwrap().to_owned())
    };

    client.put(key("plain"), value("put"), None).await.unwrap();
    assert_eq!(get(client.clone(), key("plain")).await, Some(value("put")));

    let txn = Txn::new()
        .when([Compare::version(key("plain"), CompareOp::Greater, 0)])
        .and_then([TxnOp::put(key("txn"), value("txn"), None)])
        .or_else([TxnOp::put(key("not-taken"), "else", None)]);
    assert!(client.txn(txn).await.unwrap().succeeded());
    assert_eq!(get(client.clone(), key("txn")).await, Some(value("txn")));

    let mut watch = client.watch(key("watched/"), Some(WatchOptions::new().with_prefix())).await.unwrap();
    let created = watch.message().await.unwrap().unwrap();
    assert!(created.created());
    client.put(key("watched/1"), value("watch"), None).await.unwrap();
    let event =
        tokio::time::timeout(Duration::from_secs(5), watch.message()).await.unwrap().unwrap().unwrap();
    assert_eq!(event.events()[0].event_type(), EventType::Put);
    assert_eq!(event.events()[0].kv().unwrap().value(), value("watch").as_bytes());
    watch.cancel(created.watch_id()).await.unwrap();

    let lease = client.lease_grant(30, None).await.unwrap().id();
    client.put(key("leased"), value("lease"), Some(PutOptions::new().with_lease(lease))).await.unwrap();
    assert_eq!(get(client.clone(), key("leased")).await, Some(value("lease")));
    let (mut keeper, mut alive) = client.lease_keep_alive(lease).await.unwrap();
    keeper.keep_alive().await.unwrap();
    let answer =
        tokio::time::timeout(Duration::from_secs(5), alive.message()).await.unwrap().unwrap().unwrap();
    assert!(answer.ttl() > 0, "{answer:?}");
    client.lease_revoke(lease).await.unwrap();
    assert_eq!(get(client.clone(), key("leased")).await, None, "revoking deletes the leased key");

    let deleted = client.delete(key("plain"), Some(DeleteOptions::new().with_prev_key())).await.unwrap();
    assert_eq!(deleted.prev_kvs()[0].value(), value("put").as_bytes());
    assert_eq!(get(client.clone(), key("plain")).await, None);

    only_ciphertext_in_etcd(&etcd, &tenant.prefix).await;
}

#[tokio::test]
async fn node_etcd3_runs_the_script_through_the_encrypting_proxy() {
    let modules = local_etcd::tools_dir().join("node-etcd3/node_modules");
    if !modules.join("etcd3/package.json").exists() {
        eprintln!("skipped: no npm package etcd3 in {} (run scripts/install-tools.sh)", modules.display());
        return;
    }
    let etcd = start_etcd().await;
    let tenant = EncryptedBinding::start(&etcd).await;
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/clients/node-etcd3.js");
    let run = Command::new("node")
        .arg(script)
        .args([&tenant.url, &tenant.user, &tenant.password, &tenant.prefix])
        .env("NODE_PATH", &modules)
        .output();
    let out = tokio::task::spawn_blocking(move || run).await.unwrap().expect("node runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && stdout.ends_with("done\n"),
        "node etcd3 through the proxy:\n{stdout}\n{}\n--- proxy log ---\n{}",
        String::from_utf8_lossy(&out.stderr),
        tenant.proxy.log_text()
    );
    assert_eq!(stdout.lines().filter(|l| l.starts_with("ok ")).count(), 9, "{stdout}");
    only_ciphertext_in_etcd(&etcd, &tenant.prefix).await;
}

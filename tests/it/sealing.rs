//! Binding passwords sealed at rest, on a real etcd with real broker processes: nothing handed
//! out is in etcd's state prefix, reads unseal, records written in clear keep working, a broker
//! that lacks a key records need refuses to start, and a damaged record is a 500 naming it.

use std::path::Path;

use etcd_broker::config::Config;
use etcd_client::GetOptions;
use local_etcd::LocalEtcd;
use reqwest::StatusCode;

use crate::common::*;

/// The whole state prefix as root sees it, but for the inventory's counts: (key, value) pairs.
pub(crate) async fn state_dump(etcd: &LocalEtcd) -> Vec<(String, String)> {
    let mut root = etcd.root_client().await.unwrap();
    let all = root.get("/etcd-broker/", Some(GetOptions::new().with_prefix())).await.unwrap();
    // The inventory's counts are rewritten every second (`[metrics] inventory_seconds` in the
    // tests): a count of records, not one, and never a secret.
    all.kvs()
        .iter()
        .filter(|kv| kv.key() != b"/etcd-broker/inventory")
        .map(|kv| {
            (String::from_utf8_lossy(kv.key()).into_owned(), String::from_utf8_lossy(kv.value()).into_owned())
        })
        .collect()
}

/// A `[secrets]` table that turns sealing off, as the config must say for it to be off.
pub(crate) const SEALING_OFF: &str = "\n[secrets]\nsealing = \"off\"\n";

/// The broker config on `etcd` with a `[secrets]` table.
pub(crate) fn config_with(port: u16, metrics_port: u16, etcd: &LocalEtcd, secrets: &str) -> String {
    config_toml_without_secrets(port, metrics_port, etcd, None) + secrets
}

/// Starts a broker on `etcd` with `secrets`.
pub(crate) async fn broker_with(etcd: &LocalEtcd, secrets: String) -> BrokerProcess {
    BrokerProcess::start_with_config(move |port, metrics| config_with(port, metrics, etcd, &secrets), &[])
        .await
}

pub(crate) fn password(reply: &Reply) -> String {
    reply.body["credentials"]["password"].as_str().unwrap_or_else(|| panic!("{:?}", reply.body)).to_owned()
}

#[tokio::test]
async fn no_password_handed_out_is_in_the_state_prefix_when_sealing_is_on() {
    let etcd = start_etcd().await;
    let keys = tempfile::tempdir().unwrap();
    let k1 = write_key(keys.path(), "k1");
    let key_text = std::fs::read_to_string(&k1).unwrap();
    let secrets = secrets_toml("on", "k1", &[("k1", &k1)]);
    let broker = broker_with(&etcd, secrets.clone()).await;
    let osb = Osb::new(&broker.url);
    assert_eq!(osb.provision("i1", SHARED).await.status, StatusCode::CREATED);
    assert_eq!(osb.provision("i2", SHARED).await.status, StatusCode::CREATED);
    let mut handed_out = Vec::new();
    for n in 0..20 {
        let instance = if n % 2 == 0 { "i1" } else { "i2" };
        let bound = osb.bind(instance, &format!("b{n}")).await;
        assert_eq!(bound.status, StatusCode::CREATED, "{:?}", bound.body);
        handed_out.push((instance, format!("b{n}"), password(&bound)));
    }
    // An unbind and a rebind rewrite records and indexes too.
    assert_eq!(osb.unbind("i1", "b0").await.status, StatusCode::OK);
    let rebound = osb.bind("i1", "b0").await;
    handed_out.push(("i1", "b0".into(), password(&rebound)));

    let dump = state_dump(&etcd).await;
    assert!(dump.iter().any(|(k, _)| k == "/etcd-broker/bindings/i1/b2"), "{dump:?}");
    for (_, _, secret) in &handed_out {
        let hits: Vec<&String> =
            dump.iter().filter(|(k, v)| k.contains(secret) || v.contains(secret)).map(|(k, _)| k).collect();
        assert!(hits.is_empty(), "a password handed out is in etcd in clear: {hits:?}");
    }
    // The tenant still works with it, and GET binding and a repeated bind hand out the same.
    let (instance, binding, secret) = handed_out.last().unwrap().clone();
    let fetched = osb.get_binding(instance, &binding).await;
    assert_eq!(fetched.status, StatusCode::OK);
    assert_eq!(password(&fetched), secret);
    assert_eq!(password(&osb.bind(instance, &binding).await), secret);
    let mut tenant = tenant_client(&fetched.body["credentials"]).await.unwrap();
    tenant.put("/service_instances/i1/k", "v", None).await.unwrap();
    for (instance, binding, secret) in &handed_out[1..5] {
        assert_eq!(&password(&osb.get_binding(instance, binding).await), secret);
    }

    // The index, the gauges and `keys list` count 20 records sealed with k1, none in clear.
    let sealed_index = dump.iter().filter(|(k, _)| k.starts_with("/etcd-broker/index/sealed/k1/")).count();
    assert_eq!(sealed_index, 20);
    let metrics = scrape_until(&broker, &[("etcd_broker_sealed_records{key=\"k1\"}", 20.0)]).await;
    assert_eq!(sample(&metrics, "etcd_broker_clear_text_records"), 0.0, "{metrics}");
    assert_eq!(sample(&metrics, "etcd_broker_keychain_keys{key=\"k1\"}"), 1.0, "{metrics}");
    let config = Config::from_toml(&config_with(1, 2, &etcd, &secrets)).unwrap();
    let list = etcd_broker_ops::sealing::list_with_counts(&config).await.unwrap();
    assert_eq!(list, "sealing: on\nkeys:\n  k1 (active): 20 records\nin clear: 0 records\n");

    // Neither the passwords nor the key reach the log (at debug level) or the metrics.
    let log = broker.stop().await;
    for secret in handed_out.iter().map(|(_, _, s)| s.as_str()).chain([key_text.trim()]) {
        assert!(!log.contains(secret) && !metrics.contains(secret), "a secret in the log or metrics");
    }
    etcd.stop().await;
}

#[tokio::test]
async fn records_written_in_clear_keep_working_after_sealing_is_turned_on() {
    let etcd = start_etcd().await;
    let keys = tempfile::tempdir().unwrap();
    let k1 = write_key(keys.path(), "k1");
    let before = broker_with(&etcd, SEALING_OFF.to_owned()).await;
    let osb = Osb::new(&before.url);
    assert_eq!(osb.provision("i1", SHARED).await.status, StatusCode::CREATED);
    let clear = password(&osb.bind("i1", "old").await);
    before.stop().await;
    let dump = state_dump(&etcd).await;
    assert!(dump.iter().any(|(_, v)| v.contains(&format!("\"password\":\"{clear}\""))), "written in clear");

    let after = broker_with(&etcd, secrets_toml("on", "k1", &[("k1", &k1)])).await;
    let osb = Osb::new(&after.url);
    let fetched = osb.get_binding("i1", "old").await;
    assert_eq!((fetched.status, password(&fetched)), (StatusCode::OK, clear.clone()));
    assert_eq!(password(&osb.bind("i1", "old").await), clear);
    tenant_client(&fetched.body["credentials"])
        .await
        .unwrap()
        .put("/service_instances/i1/k", "v", None)
        .await
        .unwrap();
    let sealed = password(&osb.bind("i1", "new").await);
    assert!(!state_dump(&etcd).await.iter().any(|(_, v)| v.contains(&sealed)));
    let expected = [("etcd_broker_sealed_records{key=\"k1\"}", 1.0), ("etcd_broker_clear_text_records", 1.0)];
    scrape_until(&after, &expected).await;
    // The old record unbinds, and its index entries go with it.
    assert_eq!(osb.unbind("i1", "old").await.status, StatusCode::OK);
    scrape_until(&after, &[("etcd_broker_clear_text_records", 0.0)]).await;
    after.stop().await;
    etcd.stop().await;
}

#[tokio::test]
async fn a_broker_whose_keychain_lacks_a_key_records_need_refuses_to_start() {
    let etcd = start_etcd().await;
    let keys = tempfile::tempdir().unwrap();
    let (k0, k1) = (write_key(keys.path(), "k0"), write_key(keys.path(), "k1"));
    let sealing = broker_with(&etcd, secrets_toml("on", "k0", &[("k0", &k0)])).await;
    let osb = Osb::new(&sealing.url);
    assert_eq!(osb.provision("i1", SHARED).await.status, StatusCode::CREATED);
    assert_eq!(osb.bind("i1", "b1").await.status, StatusCode::CREATED);
    sealing.stop().await;

    let expected = "records are sealed with key 'k0', which the keychain does not hold";
    let without = |secrets: String| {
        let etcd = &etcd;
        move |port, metrics| config_with(port, metrics, etcd, &secrets)
    };
    for secrets in [
        secrets_toml("on", "k1", &[("k1", &k1)]),
        secrets_toml("off", "k1", &[("k1", &k1)]),
        SEALING_OFF.to_owned(),
    ] {
        let (status, output) = serve_until_exit(without(secrets.clone())).await;
        assert!(!status.success(), "it started with {secrets}: {output}");
        assert!(output.contains(expected), "{output}");
    }
    // With the key back (sealing off), it starts and still reads the sealed record.
    let both = secrets_toml("off", "k1", &[("k0", &k0), ("k1", &k1)]);
    let broker = broker_with(&etcd, both).await;
    let fetched = Osb::new(&broker.url).get_binding("i1", "b1").await;
    assert_eq!(fetched.status, StatusCode::OK, "{:?}", fetched.body);
    broker.stop().await;
    etcd.stop().await;
}

#[tokio::test]
async fn a_damaged_sealed_password_is_a_500_naming_the_record() {
    let etcd = start_etcd().await;
    let keys = tempfile::tempdir().unwrap();
    let k1 = write_key(keys.path(), "k1");
    let broker = broker_with(&etcd, secrets_toml("on", "k1", &[("k1", &k1)])).await;
    let osb = Osb::new(&broker.url);
    assert_eq!(osb.provision("i1", SHARED).await.status, StatusCode::CREATED);
    let secret = password(&osb.bind("i1", "b1").await);
    let key = "/etcd-broker/bindings/i1/b1";
    let mut root = etcd.root_client().await.unwrap();
    let stored = root.get(key, None).await.unwrap().kvs()[0].value().to_vec();
    let mut record: serde_json::Value = serde_json::from_slice(&stored).unwrap();
    let sealed = record["password_sealed"].as_str().unwrap().to_owned();
    record["password_sealed"] = sealed[..sealed.len() - 8].into();
    root.put(key, serde_json::to_vec(&record).unwrap(), None).await.unwrap();

    for reply in [osb.get_binding("i1", "b1").await, osb.bind("i1", "b1").await] {
        assert_eq!(reply.status, StatusCode::INTERNAL_SERVER_ERROR, "{:?}", reply.body);
        let description = reply.body["description"].as_str().unwrap();
        assert!(description.contains(&format!("record '{key}'")), "{description}");
        assert!(!reply.body.to_string().contains(&secret));
    }
    assert_eq!(osb.unbind("i1", "b1").await.status, StatusCode::OK);
    let left = state_dump(&etcd).await;
    assert!(left.iter().all(|(k, _)| !k.contains("/index/sealed/") && !k.contains("/bindings/")), "{left:?}");
    broker.stop().await;
    etcd.stop().await;
}

/// Key files of the tests above are private: the broker refuses others (checked in config).
#[test]
fn write_key_makes_a_private_file() {
    use std::os::unix::fs::PermissionsExt as _;
    let dir = tempfile::tempdir().unwrap();
    let file = write_key(dir.path(), "k1");
    assert_eq!(std::fs::metadata(Path::new(&file)).unwrap().permissions().mode() & 0o777, 0o600);
}

/// Sealing is the default: without keys the broker refuses to start, naming `[secrets]` and both
/// ways out; with `sealing = "off"` said explicitly it starts, warns, and its gauge says 0 (the
/// alert EtcdBrokerSealingOff fires on it); with a key the gauge says 1.
#[tokio::test]
async fn sealing_is_off_only_when_the_config_says_so_and_then_it_shows() {
    let etcd = start_etcd().await;
    let no_keys = |port, metrics| config_with(port, metrics, &etcd, "");
    let (status, output) = serve_until_exit(no_keys).await;
    assert!(!status.success(), "{output}");
    for hint in [
        "secrets: sealing is on (the default) and no key is configured",
        "keys generate",
        "sealing = \"off\"",
    ] {
        assert!(output.contains(hint), "{hint:?} missing in: {output}");
    }

    let off = broker_with(&etcd, SEALING_OFF.to_owned()).await;
    assert!(scrape(&off).await.contains("\netcd_broker_sealing_enabled 0\n"));
    let log = off.stop().await;
    assert!(log.contains("sealing is off") && log.contains("stored in etcd in clear"), "{log}");

    let on = BrokerProcess::start(&etcd, None).await;
    assert!(scrape(&on).await.contains("\netcd_broker_sealing_enabled 1\n"));
    let log = on.stop().await;
    assert!(!log.contains("sealing is off"), "{log}");
    etcd.stop().await;
}

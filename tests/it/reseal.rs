//! `etcd-broker-ops reseal` on a real etcd with real broker processes: a key rotation as
//! docs/config.md describes it (bind with k1 active, restart with k2 active and k1 kept,
//! reseal, keys list shows k1 sealing nothing, a broker without k1 starts), and, ignored by
//! default, the measurement docs/performance.md reports (reseal of preloaded records while a
//! client reads bindings).

use std::path::Path;
use std::sync::atomic::AtomicBool;
use std::time::{Duration, Instant};

use etcd_broker::broker::names::Names;
use etcd_broker::broker::records::{encode, BindingRecord, RecordState};
use etcd_broker::config::Config;
use etcd_broker::reseal::{Pace, Source};
use etcd_broker_ops::reseal::{self, Outcome, ResealArgs};
use etcd_client::{Txn, TxnOp};
use local_etcd::LocalEtcd;
use reqwest::StatusCode;

use crate::common::*;
use crate::sealing::{broker_with, config_with, password, SEALING_OFF};

/// `etcd-broker-ops reseal --config <file>` as the binary runs it (its own runtime, so on a
/// thread of its own), with `secrets`.
async fn run_reseal(dir: &Path, etcd: &LocalEtcd, secrets: &str, dry_run: bool) -> Outcome {
    let config = dir.join(if dry_run { "dry.toml" } else { "reseal.toml" });
    std::fs::write(&config, config_with(1, 2, etcd, secrets)).unwrap();
    let args = ResealArgs { config, dry_run, parallel: 8, max_rate: None };
    std::thread::spawn(move || reseal::run(&args).unwrap()).join().unwrap()
}

#[tokio::test]
async fn a_rotation_reseals_every_record_and_passwords_stay_the_same() {
    let etcd = start_etcd().await;
    let dir = tempfile::tempdir().unwrap();
    let (k1, k2) = (write_key(dir.path(), "k1"), write_key(dir.path(), "k2"));
    let mut passwords = Vec::new();

    let clear = broker_with(&etcd, SEALING_OFF.to_owned()).await;
    let osb = Osb::new(&clear.url);
    assert_eq!(osb.provision("i1", SHARED).await.status, StatusCode::CREATED);
    passwords.push(("clear", password(&osb.bind("i1", "clear").await)));
    clear.stop().await;
    let old = broker_with(&etcd, secrets_toml("on", "k1", &[("k1", &k1)])).await;
    let osb = Osb::new(&old.url);
    for b in ["b1", "b2", "b3"] {
        passwords.push((b, password(&osb.bind("i1", b).await)));
    }
    old.stop().await;

    let rotated = secrets_toml("on", "k2", &[("k1", &k1), ("k2", &k2)]);
    let new = broker_with(&etcd, rotated.clone()).await;
    let osb = Osb::new(&new.url);
    passwords.push(("b4", password(&osb.bind("i1", "b4").await)));
    let config = Config::from_toml(&config_with(1, 2, &etcd, &rotated)).unwrap();
    let list = etcd_broker_ops::sealing::list_with_counts(&config).await.unwrap();
    assert_eq!(list, "sealing: on\nkeys:\n  k1: 3 records\n  k2 (active): 1 record\nin clear: 1 record\n");

    // Refused with sealing off: brokers would write rewritten records in clear again.
    let off =
        Config::from_toml(&config_with(1, 2, &etcd, &secrets_toml("off", "k2", &[("k2", &k2)]))).unwrap();
    let refused =
        etcd_broker::reseal::reseal(&off, false, Pace::default(), &AtomicBool::new(false), &mut |_| {}).await;
    assert!(refused.unwrap_err().contains("sealing is off"));

    // A dry run counts per source and writes nothing.
    assert_eq!(run_reseal(dir.path(), &etcd, &rotated, true).await, Outcome::Done);
    assert_eq!(etcd_broker_ops::sealing::list_with_counts(&config).await.unwrap(), list);
    let stop = AtomicBool::new(false);
    let dry = etcd_broker::reseal::reseal(&config, true, Pace::default(), &stop, &mut |_| {}).await.unwrap();
    let expected = [(Source::Clear, 1), (Source::Key("k1".into()), 3)].into();
    assert_eq!((dry.rewritten, dry.already_active), (expected, 1));

    // The rewrite, while the broker serves.
    assert_eq!(run_reseal(dir.path(), &etcd, &rotated, false).await, Outcome::Done);
    let list = etcd_broker_ops::sealing::list_with_counts(&config).await.unwrap();
    assert_eq!(list, "sealing: on\nkeys:\n  k1: 0 records\n  k2 (active): 5 records\nin clear: 0 records\n");
    for (binding, secret) in &passwords {
        let got = osb.get_binding("i1", binding).await;
        assert_eq!((got.status, &password(&got)), (StatusCode::OK, secret), "{binding}");
    }
    // A second run has nothing left to do.
    let again =
        etcd_broker::reseal::reseal(&config, false, Pace::default(), &stop, &mut |_| {}).await.unwrap();
    assert!(again.rewritten.is_empty() && again.failed.is_empty(), "{again:?}");
    assert_eq!(again.already_active, 5);
    new.stop().await;

    // With k1 gone from the config, the broker starts (no record needs it) and reads them all.
    let k2_only = broker_with(&etcd, secrets_toml("on", "k2", &[("k2", &k2)])).await;
    let osb = Osb::new(&k2_only.url);
    for (binding, secret) in &passwords {
        assert_eq!(&password(&osb.get_binding("i1", binding).await), secret, "{binding}");
    }
    k2_only.stop().await;
    etcd.stop().await;
}

/// Writes `count` ready binding records of instance i1, each sealed by `config`'s active key
/// with its index entries, straight into etcd (40 records per transaction: etcd allows 128
/// operations); their binding ids.
async fn preload(etcd: &LocalEtcd, config: &Config, count: usize) -> Vec<String> {
    let keychain = config.sealing.keychain().unwrap();
    let names = Names::default();
    let mut client = etcd.root_client().await.unwrap();
    let mut ids = Vec::new();
    for chunk in (0..count).collect::<Vec<_>>().chunks(40) {
        let mut ops = Vec::new();
        for n in chunk {
            let binding = format!("p{n:06}");
            let key = format!("/etcd-broker/bindings/i1/{binding}");
            let sealed = etcd_broker::sealing::seal(keychain, &key, format!("pw-{n}").as_bytes()).unwrap();
            let record = BindingRecord {
                instance_id: "i1".into(),
                binding_id: binding.clone(),
                service_id: SERVICE_ID.into(),
                plan_id: SHARED.into(),
                cluster: "main".into(),
                username: format!("etcd-broker.i1.{binding}"),
                role: format!("etcd-broker.i1.{binding}"),
                password_sealed: Some(sealed),
                prefix: "/service_instances/i1/".into(),
                state: RecordState::Ready,
                created_at: 0,
                updated_at: 0,
                ..Default::default()
            };
            let active = keychain.active().name();
            ops.push(TxnOp::put(key, encode(&record), None));
            ops.push(TxnOp::put(names.binding_index_key(SHARED, "i1", &binding), "", None));
            ops.push(TxnOp::put(names.sealed_index_key(active, "i1", &binding), "", None));
            ids.push(binding);
        }
        client.txn(Txn::new().and_then(ops)).await.unwrap();
    }
    ids
}

/// GET binding latencies (sorted) of a client looping over `ids` until `until` says stop.
async fn get_latencies(url: &str, ids: &[String], until: impl Fn(usize) -> bool) -> Vec<Duration> {
    let osb = Osb::new(url);
    let mut latencies = Vec::new();
    for n in 0.. {
        if until(n) {
            break;
        }
        let started = Instant::now();
        let got = osb.get_binding("i1", &ids[(n * 7919) % ids.len()]).await;
        latencies.push(started.elapsed());
        assert_eq!(got.status, StatusCode::OK);
    }
    latencies.sort();
    latencies
}

fn percentiles(sorted: &[Duration]) -> String {
    let at =
        |p: f64| sorted[((sorted.len() as f64 * p) as usize).min(sorted.len() - 1)].as_secs_f64() * 1000.0;
    format!("n={} p50={:.2} ms p99={:.2} ms max={:.2} ms", sorted.len(), at(0.5), at(0.99), at(1.0))
}

/// The measurement in docs/performance.md: `RESEAL_RECORDS` (default 10,000) records sealed by
/// k1, resealed to k2 (`RESEAL_PARALLEL` at once, default 8) while one client reads bindings
/// in a loop.
#[tokio::test]
#[ignore = "a measurement: cargo test --test it reseal::measure -- --ignored --nocapture"]
async fn measure_reseal_under_reads() {
    let count: usize = std::env::var("RESEAL_RECORDS").map_or(10_000, |n| n.parse().unwrap());
    let parallel: usize = std::env::var("RESEAL_PARALLEL").map_or(8, |n| n.parse().unwrap());
    let etcd = start_etcd().await;
    let dir = tempfile::tempdir().unwrap();
    let (k1, k2) = (write_key(dir.path(), "k1"), write_key(dir.path(), "k2"));
    let old =
        Config::from_toml(&config_with(1, 2, &etcd, &secrets_toml("on", "k1", &[("k1", &k1)]))).unwrap();
    let rotated = secrets_toml("on", "k2", &[("k1", &k1), ("k2", &k2)]);
    let broker = broker_with(&etcd, rotated.clone()).await;
    assert_eq!(Osb::new(&broker.url).provision("i1", SHARED).await.status, StatusCode::CREATED);
    let started = Instant::now();
    let ids = preload(&etcd, &old, count).await;
    eprintln!("preloaded {count} records in {:.1} s", started.elapsed().as_secs_f64());

    let idle = Instant::now();
    let before = get_latencies(&broker.url, &ids, |_| idle.elapsed() > Duration::from_secs(10)).await;
    eprintln!("GET binding before: {}", percentiles(&before));

    let done = std::sync::Arc::new(AtomicBool::new(false));
    let config_path = dir.path().join("reseal.toml");
    std::fs::write(&config_path, config_with(1, 2, &etcd, &rotated)).unwrap();
    let finished = done.clone();
    let started = Instant::now();
    let run = std::thread::spawn(move || {
        let outcome =
            reseal::run(&ResealArgs { config: config_path, dry_run: false, parallel, max_rate: None })
                .unwrap();
        finished.store(true, std::sync::atomic::Ordering::SeqCst);
        (outcome, started.elapsed())
    });
    let during = get_latencies(&broker.url, &ids, |_| done.load(std::sync::atomic::Ordering::SeqCst)).await;
    let (outcome, took) = run.join().unwrap();
    assert_eq!(outcome, Outcome::Done);
    eprintln!(
        "reseal of {count} records, {parallel} at once: {:.1} s, {:.0} records/s",
        took.as_secs_f64(),
        count as f64 / took.as_secs_f64()
    );
    eprintln!("GET binding during: {}", percentiles(&during));
    let config = Config::from_toml(&config_with(1, 2, &etcd, &rotated)).unwrap();
    let list = etcd_broker_ops::sealing::list_with_counts(&config).await.unwrap();
    assert!(list.contains("k1: 0 records"), "{list}");
    broker.stop().await;
    etcd.stop().await;
}

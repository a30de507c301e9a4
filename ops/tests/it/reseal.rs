//! `reseal` as a binary on a real etcd: Ctrl-C (SIGINT) stops it after the records in hand with
//! exit 130 and the summary saying how to resume, a second run finishes the rest, a third finds
//! nothing to do; nothing secret is printed. (The rotation with real brokers, GET binding and
//! `keys list`: the broker crate's tests/it/reseal.rs.)

use std::io::{BufRead as _, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use etcd_broker::broker::names::Names;
use etcd_broker::broker::records::{encode, BindingRecord, RecordState};
use etcd_broker::config::Config;
use etcd_client::{Txn, TxnOp};
use local_etcd::{EtcdVersion, LocalEtcd, Options};

const OPS: &str = env!("CARGO_BIN_EXE_etcd-broker-ops");
const PLAN: &str = "0d2f3a4b-5c6d-4e7f-8a9b-0c1d2e3f4a5b";
/// Enough records for the first progress line (after a second) to come before the end.
const RECORDS: usize = 600;

/// The documented example config on `etcd`, sealing with `active` of `keys`.
fn config(dir: &Path, etcd: &LocalEtcd, active: &str, keys: &[(&str, &Path)]) -> PathBuf {
    crate::common::example_config(dir, active, keys, |toml| {
        toml.replace("\"http://127.0.0.1:2379\"", &format!("{:?}", etcd.endpoint()))
            .replace("\"change-me-too\"", &format!("{:?}", etcd.root_password()))
    })
}

fn key(dir: &Path, name: &str) -> PathBuf {
    let out = Command::new(OPS).args(["keys", "generate", name, "--dir"]).arg(dir).output().unwrap();
    assert!(out.status.success());
    dir.join(format!("{name}.key"))
}

/// [`RECORDS`] ready binding records sealed by `config`'s active key, with their index entries.
async fn preload(etcd: &LocalEtcd, config: &Path) {
    let config = Config::load(config).unwrap();
    let keychain = config.sealing.keychain().unwrap();
    let names = Names::default();
    let mut client = etcd.root_client().await.unwrap();
    for chunk in (0..RECORDS).collect::<Vec<_>>().chunks(40) {
        let mut ops = Vec::new();
        for n in chunk {
            let binding = format!("b{n:04}");
            let key = format!("/etcd-broker/bindings/i1/{binding}");
            let sealed =
                etcd_broker::sealing::seal(keychain, &key, format!("secret-{n}").as_bytes()).unwrap();
            let record = BindingRecord {
                instance_id: "i1".into(),
                binding_id: binding.clone(),
                service_id: "6e2ab6a8-3b0c-4c52-9a6c-5f3f2c1d9e01".into(),
                plan_id: PLAN.into(),
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
            ops.push(TxnOp::put(key, encode(&record), None));
            ops.push(TxnOp::put(names.binding_index_key(PLAN, "i1", &binding), "", None));
            ops.push(TxnOp::put(names.sealed_index_key(keychain.active().name(), "i1", &binding), "", None));
        }
        client.txn(Txn::new().and_then(ops)).await.unwrap();
    }
}

/// `reseal --config <config>` (and `extra`): exit code, stdout, stderr.
fn reseal(config: &Path, extra: &[&str]) -> (Option<i32>, String, String) {
    let out = Command::new(OPS).args(["reseal", "--config"]).arg(config).args(extra).output().unwrap();
    let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
    (out.status.code(), text(&out.stdout), text(&out.stderr))
}

/// The number after `label` on a line of the summary.
fn count(summary: &str, label: &str) -> usize {
    let line = summary.lines().find(|l| l.starts_with(label)).unwrap_or_else(|| panic!("{label}: {summary}"));
    line[label.len()..].split_whitespace().next().unwrap().parse().unwrap()
}

#[tokio::test]
async fn ctrl_c_stops_after_a_record_and_a_second_run_finishes() {
    let version = EtcdVersion::from_env().expect("ETCD_VERSION");
    let etcd = LocalEtcd::start(Options { version, ..Options::default() }).await.expect("etcd starts");
    let dir = tempfile::tempdir().unwrap();
    let (k1, k2) = (key(dir.path(), "k1"), key(dir.path(), "k2"));
    preload(&etcd, &config(dir.path(), &etcd, "k1", &[("k1", &k1)])).await;
    let rotated = config(dir.path(), &etcd, "k2", &[("k1", &k1), ("k2", &k2)]);

    // At most 100 records a second: the first progress line (after 1 s) comes seconds before
    // the end however fast etcd writes.
    let mut child = Command::new(OPS)
        .args(["reseal", "--max-rate", "100", "--config"])
        .arg(&rotated)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stderr = BufReader::new(child.stderr.take().unwrap());
    let mut progress = String::new();
    stderr.read_line(&mut progress).unwrap();
    assert!(
        progress.starts_with("reseal: ") && progress.contains(&format!("/{RECORDS} records")),
        "{progress}"
    );
    let kill = Command::new("kill").args(["-INT", &child.id().to_string()]).status().unwrap();
    assert!(kill.success());
    let out = child.wait_with_output().unwrap();
    let first = String::from_utf8_lossy(&out.stdout).into_owned();
    assert_eq!(out.status.code(), Some(130), "{first}");
    assert!(first.contains("interrupted: run the same command again"), "{first}");
    let done = count(&first, "records rewritten to key 'k2':");
    assert!(done > 0 && done < RECORDS, "{first}");

    let (code, second, progress) = reseal(&rotated, &[]);
    assert_eq!(code, Some(0), "{second}{progress}");
    assert_eq!(count(&second, "records rewritten to key 'k2':"), RECORDS - done, "{second}");
    assert_eq!(count(&second, "already sealed by 'k2':"), done, "{second}");
    let last = progress.lines().last().unwrap_or_default();
    assert!(last.starts_with(&format!("reseal: {RECORDS}/{RECORDS} records, ")), "{progress}");

    let (code, _, usage) = reseal(&rotated, &["--parallel", "0"]);
    assert_eq!(code, Some(2), "{usage}");
    assert!(usage.contains("'0' is not a number from 1 to 64"), "{usage}");
    let (code, _, usage) = reseal(&rotated, &["--max-rate", "0"]);
    assert_eq!(code, Some(2), "{usage}");
    assert!(usage.contains("'0' is not a whole number of records per second"), "{usage}");

    let (code, third, _) = reseal(&rotated, &["--dry-run"]);
    assert_eq!(code, Some(0));
    assert!(third.starts_with("records to rewrite (dry run, nothing written) to key 'k2': 0\n"), "{third}");
    for text in [&first, &second, &third, &progress] {
        assert!(!text.contains("secret-"), "a password was printed: {text}");
    }
    etcd.stop().await;
}

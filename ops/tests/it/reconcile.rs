//! `reconcile` as a binary on a real etcd: exit 0 when nothing is found, 1 with findings
//! (repaired or not), 2 when it cannot check; the JSON report's shape on stdout; nothing secret
//! printed; the errand's chain (render -> ERB -> `--errand-properties`). (Each kind of finding
//! and its repair on a real broker: the broker crate's tests/it/reconcile.rs.)

use std::path::{Path, PathBuf};
use std::process::Command;

use local_etcd::{EtcdVersion, LocalEtcd, Options};
use serde_json::Value;

const OPS: &str = env!("CARGO_BIN_EXE_etcd-broker-ops");

/// The documented example config on `etcd`, sealing with a fresh key.
fn config(dir: &Path, etcd: &LocalEtcd) -> PathBuf {
    let out = Command::new(OPS).args(["keys", "generate", "k1", "--dir"]).arg(dir).output().unwrap();
    assert!(out.status.success());
    let key = dir.join("k1.key");
    crate::common::example_config(dir, "k1", &[("k1", &key)], |toml| {
        toml.replace("\"http://127.0.0.1:2379\"", &format!("{:?}", etcd.endpoint()))
            .replace("\"change-me-too\"", &format!("{:?}", etcd.root_password()))
    })
}

/// `reconcile` with `args`: exit code, stdout, stderr.
fn reconcile(args: &[&str]) -> (Option<i32>, String, String) {
    let out = Command::new(OPS).arg("reconcile").args(args).output().unwrap();
    let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
    (out.status.code(), text(&out.stdout), text(&out.stderr))
}

#[tokio::test]
async fn exit_codes_json_and_a_repair_as_the_binary_runs_them() {
    let etcd =
        LocalEtcd::start(Options { version: EtcdVersion::V3_5, bcrypt_cost: Some(4), ..Options::default() })
            .await
            .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let config = config(dir.path(), &etcd);
    let config = config.to_str().unwrap();

    let (code, out, err) = reconcile(&["--config", config]);
    assert_eq!(code, Some(0), "{out}{err}");
    assert!(out.ends_with("nothing found\n"), "{out}");

    let mut root = etcd.root_client().await.unwrap();
    root.user_add("etcd-broker.i1.b1", "left-over-secret", None).await.unwrap();
    let (code, out, err) = reconcile(&["--config", config, "--json"]);
    assert_eq!(code, Some(1), "{out}{err}");
    let report: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(report["version"], 1);
    assert_eq!(report["counts"]["orphan_user"], 1);
    assert_eq!(report["counts"].as_object().unwrap().len(), 14, "every kind counted");
    assert_eq!(report["checked"]["users"], 1);
    let finding = &report["findings"][0];
    let mut fields: Vec<&str> = finding.as_object().unwrap().keys().map(String::as_str).collect();
    fields.sort();
    assert_eq!(fields, ["cluster", "detail", "hint", "kind", "repair", "repairable", "subject"]);
    assert_eq!(
        (
            &finding["kind"],
            &finding["cluster"],
            &finding["subject"],
            &finding["repairable"],
            &finding["repair"]
        ),
        (&"orphan_user".into(), &"main".into(), &"etcd-broker.i1.b1".into(), &"safe".into(), &Value::Null)
    );

    let (code, out, err) = reconcile(&["--config", config, "--repair", "--json"]);
    assert_eq!(code, Some(1), "found, and repaired: {out}{err}");
    let report: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(report["findings"][0]["repair"], serde_json::json!({ "result": "repaired" }));
    let (code, out, _) = reconcile(&["--config", config]);
    assert_eq!((code, out.ends_with("nothing found\n")), (Some(0), true), "{out}");
    assert!(root.user_list().await.unwrap().users().iter().all(|u| u != "etcd-broker.i1.b1"));

    for secret in ["left-over-secret", etcd.root_password()] {
        assert!(!out.contains(secret) && !err.contains(secret));
    }
    etcd.stop().await;
}

#[test]
fn what_cannot_be_checked_exits_2_and_says_why() {
    let (code, out, err) = reconcile(&["--config", "/nonexistent/broker.toml"]);
    assert_eq!(code, Some(2), "{out}{err}");
    assert!(err.starts_with("etcd-broker-ops: ") && err.contains("/nonexistent/broker.toml"), "{err}");
    let (code, _, err) = reconcile(&["--config", "b.toml", "--delete-orphan-data"]);
    assert_eq!(code, Some(2), "bad usage: {err}");
    assert!(err.contains("--repair"), "{err}");
    let help = Command::new(OPS).args(["reconcile", "--help"]).output().unwrap();
    let help = String::from_utf8_lossy(&help.stdout);
    for said in ["Exit 0 when nothing is found, 1", "--delete-orphan-data", "--stuck-after-seconds", "--json"]
    {
        assert!(help.contains(said), "--help lacks {said}: {help}");
    }
}

/// The errand's chain: the offline render of manifests/etcd-broker.yml + operators/reconcile.yml
/// for the errand colocated with the broker, its ERB evaluated by the Ruby harness, and
/// `reconcile --errand-properties` reading it (read-only, as the ops file sets it).
#[tokio::test]
async fn the_errand_reads_the_properties_its_erb_template_writes() {
    let dir = tempfile::tempdir().unwrap();
    let file = crate::common::errand_properties(
        dir.path(),
        "etcd-broker",
        "etcd-broker-reconcile",
        "manifests/operators/reconcile.yml",
        &[],
    );
    let properties: Value = serde_json::from_str(&std::fs::read_to_string(&file).unwrap()).unwrap();
    assert_eq!(
        properties["properties"],
        serde_json::json!({ "repair": false, "delete_orphan_data": false, "stuck_after_seconds": 600, "check_grants": true })
    );
    let etcd =
        LocalEtcd::start(Options { version: EtcdVersion::V3_5, bcrypt_cost: Some(4), ..Options::default() })
            .await
            .unwrap();
    let config = config(dir.path(), &etcd);
    let mut root = etcd.root_client().await.unwrap();
    root.role_add("etcd-broker.i1.b1").await.unwrap();
    let args = ["--config", config.to_str().unwrap(), "--errand-properties", file.to_str().unwrap()];
    let (code, out, err) = reconcile(&args);
    assert_eq!(code, Some(1), "{out}{err}");
    assert!(out.contains("orphan_role (1):\n  main etcd-broker.i1.b1: "), "{out}");
    assert!(out.contains("read-only: --repair fixes the safe ones"), "{out}");
    assert!(root.role_list().await.unwrap().roles().iter().any(|r| r == "etcd-broker.i1.b1"), "it repaired");
    etcd.stop().await;
}

//! Our go-patch and variable interpolation (`render`) against the real BOSH CLI: for the
//! manifest alone, each ops file manifests/check.yml renders, and all of them together, with
//! the example vars, `bosh int` and `etcd_broker_ops::render::interpolated_manifest` must
//! yield the same document (compared as parsed values, not as text).
//!
//! The CLI is taken from $BOSH_CLI, else from ../shared/tools/bosh-cli/bosh next to the
//! checkout; without it the test says that it skipped.

use std::path::{Path, PathBuf};
use std::process::Command;

use etcd_broker_ops::render::{interpolated_manifest, read_yaml};
use serde_json::Value;

use crate::common::repo;

fn bosh_cli() -> Option<PathBuf> {
    let path = match std::env::var_os("BOSH_CLI") {
        Some(path) if !path.is_empty() => PathBuf::from(path),
        _ => repo().join("../shared/tools/bosh-cli/bosh"),
    };
    path.is_file().then_some(path)
}

/// What a test without the CLI prints: the team's rule is to use outside tools when present,
/// and to say so when a test could not.
fn skipped() {
    eprintln!("skipped: no BOSH CLI (set BOSH_CLI or install ../shared/tools/bosh-cli/bosh)");
}

/// The ops-file combinations `check release` renders: none, each alone, all together.
fn combinations(manifests: &Path) -> Vec<Vec<PathBuf>> {
    let checks = read_yaml(&manifests.join("check.yml"), "check list").unwrap();
    let files: Vec<PathBuf> = checks["ops_files"]
        .as_object()
        .expect("check.yml lists ops_files")
        .keys()
        .map(|file| manifests.join(file))
        .collect();
    assert!(files.len() >= 5, "check.yml lists the shipped ops files: {files:?}");
    let mut combinations = vec![Vec::new()];
    combinations.extend(files.iter().map(|file| vec![file.clone()]));
    combinations.push(files);
    combinations
}

#[test]
fn every_shipped_ops_file_patches_like_bosh_int() {
    let Some(bosh) = bosh_cli() else { return skipped() };
    let manifests = repo().join("manifests");
    let manifest = manifests.join("etcd-broker.yml");
    let vars = vec![manifests.join("examples/vars.yml")];
    let home = tempfile::tempdir().unwrap();
    for ops in combinations(&manifests) {
        let mut command = Command::new(&bosh);
        command.arg("int").arg(&manifest).env("HOME", home.path());
        for file in &ops {
            command.arg("-o").arg(file);
        }
        command.arg("-l").arg(&vars[0]);
        let out = command.output().unwrap();
        let names: Vec<String> =
            ops.iter().map(|f| f.strip_prefix(&manifests).unwrap().display().to_string()).collect();
        assert!(out.status.success(), "bosh int with {names:?}: {}", String::from_utf8_lossy(&out.stderr));
        let theirs: Value = serde_norway::from_slice(&out.stdout).unwrap();
        let ours = interpolated_manifest(&manifest, &ops, &vars).unwrap();
        assert_eq!(ours, theirs, "with {names:?}");
    }
}

/// The supported features beyond the shipped files' (an optional `name=x` item created then
/// patched, `-`, an optional remove of nothing, a variable without a value) match `bosh int`
/// too, and the comparison fails on a single changed value.
#[test]
fn the_comparison_sees_a_difference() {
    let Some(bosh) = bosh_cli() else { return skipped() };
    let dir = tempfile::tempdir().unwrap();
    let manifest = dir.path().join("m.yml");
    std::fs::write(&manifest, "name: d\ninstance_groups:\n- name: a\n  jobs: []\nport: ((port))\n").unwrap();
    let ops = dir.path().join("ops.yml");
    std::fs::write(
        &ops,
        "- type: replace\n  path: /instance_groups/name=a/jobs/name=j?/properties/x?/y\n  value: 1\n\
         - type: replace\n  path: /instance_groups/-\n  value: {name: b}\n\
         - type: remove\n  path: /instance_groups/name=missing?\n",
    )
    .unwrap();
    let out = Command::new(&bosh)
        .arg("int")
        .arg(&manifest)
        .arg("-o")
        .arg(&ops)
        .env("HOME", dir.path())
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let theirs: Value = serde_norway::from_slice(&out.stdout).unwrap();
    let ours = interpolated_manifest(&manifest, std::slice::from_ref(&ops), &[]).unwrap();
    assert_eq!(ours, theirs);
    assert_eq!(theirs["port"], "((port))", "a variable without a value stays");
    let mut changed = ours.clone();
    changed["instance_groups"][0]["jobs"][0]["properties"]["x"]["y"] = 2.into();
    assert_ne!(changed, theirs);
}

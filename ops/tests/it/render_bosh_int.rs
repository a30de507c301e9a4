//! Our go-patch and variable interpolation (`render`) against the real BOSH CLI: for the
//! manifest alone, each ops file manifests/check.yml renders, and all of them together, with
//! the example vars, `bosh int` and `etcd_broker_ops::render::interpolated_manifest` must
//! yield the same document (compared as parsed values, not as text).
//!
//! The CLI is taken from $BOSH_CLI, else from ../shared/tools/bosh-cli/bosh next to the
//! checkout, else from PATH; without it the test says that it skipped.

use std::path::{Path, PathBuf};
use std::process::Command;

use etcd_broker_ops::render::{interpolated_manifest, read_yaml};
use serde_json::Value;

use crate::common::repo;

fn bosh_cli() -> Option<PathBuf> {
    find_bosh(
        std::env::var_os("BOSH_CLI"),
        &repo().join("../shared/tools/bosh-cli/bosh"),
        std::env::var_os("PATH"),
    )
}

/// The BOSH CLI: `$BOSH_CLI` when set, else the shared tools' copy, else `bosh` on `PATH` (as
/// scripts/release.sh finds it); `None` when there is none.
fn find_bosh(
    from_env: Option<std::ffi::OsString>,
    shared: &Path,
    path: Option<std::ffi::OsString>,
) -> Option<PathBuf> {
    use std::os::unix::fs::PermissionsExt;
    let executable =
        |p: &Path| std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0);
    if let Some(path) = from_env.filter(|p| !p.is_empty()) {
        return Some(PathBuf::from(path)).filter(|p| executable(p));
    }
    if executable(shared) {
        return Some(shared.to_owned());
    }
    std::env::split_paths(&path?).map(|dir| dir.join("bosh")).find(|p| executable(p))
}

/// What a test without the CLI prints: the team's rule is to use outside tools when present,
/// and to say so when a test could not.
fn skipped() {
    eprintln!(
        "skipped: no BOSH CLI (set BOSH_CLI, install ../shared/tools/bosh-cli/bosh, or put bosh on PATH)"
    );
}

#[test]
fn the_cli_is_found_on_path_too() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let (empty, bin) = (dir.path().join("empty"), dir.path().join("bin"));
    std::fs::create_dir(&empty).unwrap();
    std::fs::create_dir(&bin).unwrap();
    let bosh = bin.join("bosh");
    std::fs::write(&bosh, "#!/bin/sh\n").unwrap();
    std::fs::set_permissions(&bosh, std::fs::Permissions::from_mode(0o755)).unwrap();
    let path = std::env::join_paths([&empty, &bin]).ok();
    let missing = dir.path().join("shared/bosh");
    assert_eq!(find_bosh(None, &missing, path.clone()), Some(bosh.clone()));
    assert_eq!(find_bosh(Some("".into()), &missing, path.clone()), Some(bosh.clone()), "an empty BOSH_CLI");
    assert_eq!(find_bosh(Some(bosh.clone().into()), &missing, None), Some(bosh.clone()));
    assert_eq!(
        find_bosh(None, &bosh, std::env::join_paths([&empty]).ok()),
        Some(bosh.clone()),
        "the shared copy"
    );
    assert_eq!(find_bosh(None, &missing, std::env::join_paths([&empty]).ok()), None);
    assert_eq!(find_bosh(Some(missing.clone().into()), &bosh, path), None, "a BOSH_CLI that does not exist");
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

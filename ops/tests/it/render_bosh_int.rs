//! Our go-patch and variable interpolation (`render`) against the real BOSH CLI: for the
//! manifest alone, each ops file manifests/check.yml renders, and all of them together, with
//! the example vars, `bosh int` and `etcd_broker_ops::render::interpolated_manifest` must
//! yield the same document (compared as parsed values, not as text), and `--var-errs` shows
//! the example vars give every variable; likewise for prometheus-scrape.yml on a prometheus
//! manifest.
//!
//! The CLI is taken from $BOSH_CLI, else from ../shared/tools/bosh-cli/bosh next to the
//! checkout, else from PATH; without it the test says that it skipped.

use std::path::{Path, PathBuf};
use std::process::Command;

use etcd_broker_ops::render::{interpolated_manifest, read_yaml};
use serde_json::Value;

use crate::common::{bosh_cli, find_bosh, repo, skipped};

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

/// The ops-file combinations `check release` renders: none, each alone (after the files it
/// requires), all together.
fn combinations(manifests: &Path) -> Vec<Vec<PathBuf>> {
    let combinations = etcd_broker_ops::check::ops_combinations(manifests.parent().unwrap()).unwrap();
    assert!(combinations.len() >= 7, "check.yml lists the shipped ops files: {combinations:?}");
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
        let names: Vec<String> =
            ops.iter().map(|f| f.strip_prefix(&manifests).unwrap().display().to_string()).collect();
        let theirs = bosh_int(&bosh, home.path(), &manifest, &ops, &vars)
            .unwrap_or_else(|e| panic!("bosh int --var-errs with {names:?}: {e}"));
        let ours = interpolated_manifest(&manifest, &ops, &vars).unwrap();
        assert_eq!(ours, theirs, "with {names:?}");
    }
}

/// `bosh int MANIFEST -o OPS... -l VARS... --var-errs` (every variable must have a value), as
/// a value; the CLI's stderr when it fails.
fn bosh_int(
    bosh: &Path,
    home: &Path,
    manifest: &Path,
    ops: &[PathBuf],
    vars: &[PathBuf],
) -> Result<Value, String> {
    let mut command = Command::new(bosh);
    command.arg("int").arg(manifest).arg("--var-errs").env("HOME", home);
    for file in ops {
        command.arg("-o").arg(file);
    }
    for file in vars {
        command.arg("-l").arg(file);
    }
    let out = command.output().unwrap();
    if !out.status.success() {
        return Err(String::from_utf8_lossy(&out.stderr).into_owned());
    }
    Ok(serde_norway::from_slice(&out.stdout).unwrap())
}

/// The ops file for a prometheus-boshrelease deployment (check.yml's other_deployments), on the
/// smallest manifest it applies to: the example vars give each of its variables, and we patch
/// it as bosh does.
#[test]
fn the_prometheus_ops_file_patches_like_bosh_int() {
    let Some(bosh) = bosh_cli() else { return skipped() };
    let dir = tempfile::tempdir().unwrap();
    let manifest = dir.path().join("prometheus.yml");
    std::fs::write(
        &manifest,
        "name: prometheus\ninstance_groups:\n- name: prometheus2\n  jobs:\n  - name: prometheus2\n    properties: {prometheus: {}}\n",
    )
    .unwrap();
    let manifests = repo().join("manifests");
    let ops = vec![manifests.join("operators/prometheus-scrape.yml")];
    let vars = vec![manifests.join("examples/vars.yml")];
    let theirs = bosh_int(&bosh, dir.path(), &manifest, &ops, &vars).unwrap_or_else(|e| panic!("{e}"));
    let ours = interpolated_manifest(&manifest, &ops, &vars).unwrap();
    assert_eq!(ours, theirs);
    let scrape = &theirs["instance_groups"][0]["jobs"][0]["properties"]["prometheus"]["scrape_configs"][0];
    assert_eq!(scrape["relabel_configs"][1]["replacement"], "${1}:9180");
}

/// tls.yml's certificate names the instances' BOSH DNS name, *.<instance group>.<network>.
/// <deployment>.bosh, from variables; with the example vars (the certificates left for CredHub
/// to generate) it is the base manifest's own.
#[test]
fn the_tls_certificate_names_the_deployments_bosh_dns_name() {
    let Some(bosh) = bosh_cli() else { return skipped() };
    let manifests = repo().join("manifests");
    let dir = tempfile::tempdir().unwrap();
    let mut vars = read_yaml(&manifests.join("examples/vars.yml"), "vars").unwrap();
    let vars_map = vars.as_object_mut().unwrap();
    assert!(vars_map.remove("etcd_broker_tls").is_some() && vars_map.remove("etcd_broker_ca").is_some());
    let vars_file = dir.path().join("vars.yml");
    std::fs::write(&vars_file, serde_norway::to_string(&vars).unwrap()).unwrap();
    let manifest = manifests.join("etcd-broker.yml");
    let ops = vec![manifests.join("operators/tls.yml")];
    let mut command = Command::new(&bosh);
    command
        .arg("int")
        .arg(&manifest)
        .arg("-o")
        .arg(&ops[0])
        .arg("-l")
        .arg(&vars_file)
        .env("HOME", dir.path());
    let out = command.output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let theirs: Value = serde_norway::from_slice(&out.stdout).unwrap();
    assert_eq!(interpolated_manifest(&manifest, &ops, &[vars_file]).unwrap(), theirs);
    let group = &theirs["instance_groups"][0];
    let dns = format!(
        "*.{}.{}.{}.bosh",
        group["name"].as_str().unwrap(),
        group["networks"][0]["name"].as_str().unwrap(),
        theirs["name"].as_str().unwrap()
    );
    let certificate =
        theirs["variables"].as_array().unwrap().iter().find(|v| v["name"] == "etcd_broker_tls").unwrap();
    let names = certificate["options"]["alternative_names"].as_array().unwrap();
    assert!(names.iter().any(|n| n == &Value::from(dns.clone())), "{dns} not in {names:?}");

    // Another deployment name and network: the name follows them.
    let out = command
        .args(["-v", "etcd_broker_deployment=etcd-broker-2", "-v", "etcd_broker_network=services"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let theirs: Value = serde_norway::from_slice(&out.stdout).unwrap();
    let certificate =
        theirs["variables"].as_array().unwrap().iter().find(|v| v["name"] == "etcd_broker_tls").unwrap();
    assert!(
        certificate["options"]["alternative_names"]
            .as_array()
            .unwrap()
            .iter()
            .any(|n| n == "*.etcd-broker.services.etcd-broker-2.bosh"),
        "{certificate}"
    );
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

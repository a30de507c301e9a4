//! `etcd-broker-ops check release` passes on this repository's release tree and names each
//! seeded mistake in a temporary copy of it.

use std::path::Path;
use std::process::{Command, Output};

use crate::common::repo;

/// A copy of the release tree (config, jobs, packages, manifests) with a stand-in for the
/// workspace `make release` stages, so the package's files glob has something to match.
fn release_copy() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    for folder in ["config", "jobs", "packages", "manifests"] {
        let status = Command::new("cp").arg("-r").arg(repo().join(folder)).arg(dir.path()).status().unwrap();
        assert!(status.success());
    }
    let staged = dir.path().join("src/etcd-broker-workspace");
    std::fs::create_dir_all(&staged).unwrap();
    std::fs::write(staged.join("Cargo.toml"), "[workspace]\n").unwrap();
    dir
}

fn check(dir: &Path) -> Output {
    Command::new(env!("CARGO_BIN_EXE_etcd-broker-ops"))
        .args(["check", "release", "--release-dir"])
        .arg(dir)
        .output()
        .unwrap()
}

fn edit(dir: &Path, file: &str, from: &str, to: &str) {
    let path = dir.join(file);
    let text = std::fs::read_to_string(&path).unwrap();
    assert!(text.contains(from), "{file} has no '{from}'");
    std::fs::write(&path, text.replacen(from, to, 1)).unwrap();
}

/// The check fails with exit 1 and says `message` about `path`.
fn assert_fails(dir: &Path, path: &str, message: &str) {
    let out = check(dir);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "expected a failure about {path}: {stderr}");
    let line = stderr
        .lines()
        .find(|l| l.starts_with(path))
        .unwrap_or_else(|| panic!("no line about {path}: {stderr}"));
    assert!(line.contains(message), "'{line}' does not say '{message}'");
}

#[test]
fn the_release_tree_passes() {
    let dir = release_copy();
    let out = check(dir.path());
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(stdout.starts_with("release OK:"), "{stdout}");
    // Base, each listed ops file, and all of them: at least 5 renders of the broker job.
    let renders: usize = stdout
        .trim()
        .split(", ")
        .find_map(|p| p.strip_suffix(" manifest renders checked")?.parse().ok())
        .unwrap();
    assert!(renders >= 5, "{stdout}");
}

#[test]
fn job_spec_mistakes_are_named() {
    let dir = release_copy();
    edit(dir.path(), "jobs/etcd-broker/spec", "name: etcd-broker\n", "name: etcd_broker\n");
    assert_fails(
        dir.path(),
        "jobs/etcd-broker/spec",
        "name 'etcd_broker' differs from its folder 'etcd-broker'",
    );

    let dir = release_copy();
    std::fs::remove_file(dir.path().join("jobs/etcd-broker/templates/bpm.yml.erb")).unwrap();
    assert_fails(dir.path(), "jobs/etcd-broker/spec", "template 'bpm.yml.erb' does not exist");

    let dir = release_copy();
    edit(dir.path(), "jobs/etcd-broker/spec", "  - etcd-broker\n", "  - etcd-broker-typo\n");
    assert_fails(
        dir.path(),
        "jobs/etcd-broker/spec",
        "uses package 'etcd-broker-typo', which does not exist",
    );

    let dir = release_copy();
    edit(
        dir.path(),
        "jobs/etcd-broker/spec",
        "  log_level:\n    description: |\n      Log verbosity: debug, info, warn or error.\n",
        "  log_level:\n",
    );
    assert_fails(dir.path(), "jobs/etcd-broker/spec", "property 'log_level' has no description");

    let dir = release_copy();
    let bpm = dir.path().join("jobs/etcd-broker/templates/bpm.yml.erb");
    let text = std::fs::read_to_string(&bpm).unwrap() + "<% if p('x') %>x<% end %>\n";
    std::fs::write(&bpm, text).unwrap();
    assert_fails(
        dir.path(),
        "jobs/etcd-broker/templates/bpm.yml.erb",
        "ERB logic in properties.json.erb only",
    );

    let dir = release_copy();
    std::fs::write(dir.path().join("jobs/etcd-broker/spec"), "name: [unclosed\n").unwrap();
    assert_fails(dir.path(), "jobs/etcd-broker/spec", "jobs/etcd-broker/spec");
}

#[test]
fn package_mistakes_are_named() {
    let dir = release_copy();
    std::fs::remove_dir_all(dir.path().join("src/etcd-broker-workspace")).unwrap();
    assert_fails(
        dir.path(),
        "packages/etcd-broker/spec",
        "matches nothing under src/ or blobs/ (src/etcd-broker-workspace/ is staged by `make release`",
    );

    let dir = release_copy();
    std::fs::remove_file(dir.path().join("packages/etcd-broker/packaging")).unwrap();
    assert_fails(dir.path(), "packages/etcd-broker", "has no packaging script");

    let dir = release_copy();
    edit(
        dir.path(),
        "packages/etcd-broker/spec",
        "  - rust-1-linux\n",
        "  - rust-1-linux\n  - golang-1-linux\n",
    );
    assert_fails(
        dir.path(),
        "packages/etcd-broker/spec",
        "depends on package 'golang-1-linux', which does not exist",
    );
}

#[test]
fn manifest_mistakes_are_named() {
    // An ops file nobody listed.
    let dir = release_copy();
    std::fs::write(dir.path().join("manifests/operators/extra.yml"), "[]\n").unwrap();
    assert_fails(dir.path(), "manifests/operators/extra.yml", "is not listed in manifests/check.yml");

    // A listed ops file whose path does not exist in the manifest.
    let dir = release_copy();
    std::fs::write(
        dir.path().join("manifests/operators/scale-out.yml"),
        "- type: replace\n  path: /instance_groups/name=etcd-brokr/instances\n  value: 2\n",
    )
    .unwrap();
    assert_fails(dir.path(), "manifests/etcd-broker.yml -o operators/scale-out.yml", "operation [0] failed");

    // One that renders a config the broker refuses.
    let dir = release_copy();
    std::fs::write(
        dir.path().join("manifests/operators/scale-out.yml"),
        "- type: replace\n  path: /instance_groups/name=etcd-broker/jobs/name=etcd-broker/properties/prefixes?/data\n  value: no-slashes\n",
    )
    .unwrap();
    assert_fails(
        dir.path(),
        "manifests/etcd-broker.yml -o operators/scale-out.yml",
        "renders a config the broker refuses",
    );

    // A variable the example vars do not give.
    let dir = release_copy();
    edit(dir.path(), "manifests/examples/vars.yml", "etcd_root_password:", "etcd_root_passwrd:");
    assert_fails(dir.path(), "manifests/etcd-broker.yml ", "missing variables: etcd_root_password");

    // An ops file for another deployment that is not a list of operations.
    let dir = release_copy();
    std::fs::write(dir.path().join("manifests/operators/prometheus-scrape.yml"), "type: replace\n").unwrap();
    assert_fails(dir.path(), "manifests/operators/prometheus-scrape.yml", "ops file");

    let dir = release_copy();
    std::fs::remove_file(dir.path().join("manifests/check.yml")).unwrap();
    assert_fails(dir.path(), "manifests/check.yml", "is missing");
}

#[test]
fn a_folder_that_is_no_release_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let out = check(dir.path());
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("is not a release tree"));
}

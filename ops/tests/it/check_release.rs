//! `etcd-broker-ops check release` passes on this repository's release tree and names each
//! seeded mistake in a temporary copy of it.

use std::path::Path;
use std::process::{Command, Output};

use crate::common::repo;

/// A copy of the release tree (config, jobs, packages, manifests) with a stand-in for the
/// workspace `make release` stages, so the package's files glob has something to match.
pub fn release_copy() -> tempfile::TempDir {
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

#[test]
fn final_yml_and_private_yml_mistakes_are_named() {
    // config/final.yml: what it held before (both keys, which the bosh CLI refuses), blobstores
    // the CLI cannot build, and final blobs in /tmp, which reach nobody else.
    let cases = [
        (
            "name: etcd-broker\n",
            "name: etcd-broker\nfinal_name: etcd-broker\n",
            "has both `name` and `final_name`",
        ),
        ("    bucket_name: etcd-broker-release-blobs\n", "", "blobstore has no `bucket_name`"),
        ("provider: s3", "provider: swift", "blobstore provider 'swift' is not one of s3, gcs, local"),
        (
            "  provider: s3\n  options:\n    bucket_name: etcd-broker-release-blobs\n",
            "  provider: local\n  options:\n    blobstore_path: /tmp/etcd-broker-release-blobs\n",
            "local blobstore /tmp/etcd-broker-release-blobs is outside the release",
        ),
    ];
    for (from, to, message) in cases {
        let dir = release_copy();
        edit(dir.path(), "config/final.yml", from, to);
        assert_fails(dir.path(), "config/final.yml", message);
    }

    // A local blobstore inside the release is fine, however the release folder is given.
    let dir = release_copy();
    let inside = dir.path().canonicalize().unwrap().join("final_blobs");
    edit(
        dir.path(),
        "config/final.yml",
        "  provider: s3\n  options:\n    bucket_name: etcd-broker-release-blobs\n",
        &format!("  provider: local\n  options:\n    blobstore_path: {}\n", inside.display()),
    );
    let out = Command::new(env!("CARGO_BIN_EXE_etcd-broker-ops"))
        .args(["check", "release", "--release-dir", "."])
        .current_dir(dir.path())
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));

    // private.yml: credentials only; its provider would be ignored.
    let private = |text: &str| {
        let dir = release_copy();
        std::fs::write(dir.path().join("config/private.yml"), text).unwrap();
        dir
    };
    let dir = private("blobstore:\n  provider: local\n");
    assert_fails(dir.path(), "config/private.yml", "sets `blobstore.provider`, which the bosh CLI ignores");
    let dir = private("blobstore:\n  options:\n    bucket_name: other\n    access_key_id: a\n    secret_access_key: s3cr3t-value\n");
    assert_fails(
        dir.path(),
        "config/private.yml",
        "sets blobstore option `bucket_name`, which is no credential",
    );
    let dir = private("blobstore:\n  options:\n    access_key_id: a\n");
    assert_fails(dir.path(), "config/private.yml", "only one of access_key_id and secret_access_key");
    let out = check(
        private("blobstore:\n  options:\n    access_key_id: a\n    secret_access_key: s3cr3t-value\n").path(),
    );
    assert!(out.status.success(), "credentials only: {}", String::from_utf8_lossy(&out.stderr));
    let dir = private("blobstore:\n  options:\n    secret_access_key: s3cr3t-value\n    host: x\n");
    let stderr = String::from_utf8_lossy(&check(dir.path()).stderr).into_owned();
    assert!(!stderr.contains("s3cr3t-value"), "a secret in the report: {stderr}");
}

/// A vendored rust-1-linux the way `bosh vendor-package` leaves it (spec.lock, the final
/// builds index, the blob in a local blobstore inside the release), then with each piece a
/// fresh clone could lack.
#[test]
fn vendored_package_mistakes_are_named() {
    let vendored = || {
        let dir = release_copy();
        edit(
            dir.path(),
            "config/final.yml",
            "  provider: s3\n  options:\n    bucket_name: etcd-broker-release-blobs\n",
            "  provider: local\n  options:\n    blobstore_path: final_blobs\n",
        );
        let package = dir.path().join("packages/rust-1-linux");
        std::fs::create_dir_all(&package).unwrap();
        std::fs::write(package.join("spec.lock"), "name: rust-1-linux\nfingerprint: f1\n").unwrap();
        let index = dir.path().join(".final_builds/packages/rust-1-linux");
        std::fs::create_dir_all(&index).unwrap();
        std::fs::write(
            index.join("index.yml"),
            "builds:\n  f1:\n    version: f1\n    blobstore_id: blob-1\n    sha1: sha256:00\nformat-version: \"2\"\n",
        )
        .unwrap();
        std::fs::create_dir_all(dir.path().join("final_blobs")).unwrap();
        std::fs::write(dir.path().join("final_blobs/blob-1"), "toolchain").unwrap();
        dir
    };
    let dir = vendored();
    let out = check(dir.path());
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));

    let dir = vendored();
    std::fs::remove_dir_all(dir.path().join(".final_builds")).unwrap();
    assert_fails(dir.path(), "packages/rust-1-linux/spec.lock", "Expected to find 'rust-1-linux/f1'");

    let dir = vendored();
    edit(dir.path(), ".final_builds/packages/rust-1-linux/index.yml", "  f1:\n", "  f0:\n");
    assert_fails(dir.path(), "packages/rust-1-linux/spec.lock", "does not list");

    let dir = vendored();
    std::fs::remove_file(dir.path().join("final_blobs/blob-1")).unwrap();
    assert_fails(
        dir.path(),
        ".final_builds/packages/rust-1-linux/index.yml",
        "names blob blob-1 for 'rust-1-linux/f1', which the local blobstore",
    );
}

//! The release tooling scripts against a fake `bosh` on PATH that records its calls:
//! `scripts/bosh-scp.sh` (make bosh_scp) and `scripts/release.sh` (make release).

use std::os::unix::fs::PermissionsExt;
use std::process::{Command, Output};

use crate::common::repo;

/// Two broker instances, one etcd instance, in the shape `bosh instances --json` prints.
const INSTANCES: &str = r#"{"Tables":[{"Content":"instances","Header":{"instance":"Instance"},"Rows":[
  {"instance":"etcd-broker/0b1c2d3e-aaaa-4bbb-8ccc-000000000001","process_state":"running"},
  {"instance":"etcd/5e6f7a8b-aaaa-4bbb-8ccc-000000000003","process_state":"running"},
  {"instance":"etcd-broker/0b1c2d3e-aaaa-4bbb-8ccc-000000000002","process_state":"running"}
]}]}"#;

/// A folder with an executable `bosh` that appends its arguments (one call per line, words
/// separated by `|`) to `calls`, prints `instances.json` for `instances --json`, and fails when
/// the file `fail` exists.
struct FakeBosh {
    dir: tempfile::TempDir,
}

impl FakeBosh {
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let script = r#"#!/usr/bin/env bash
here=$(dirname "$0")
[ -e "$here/fail" ] && { echo "Expected non-empty Director URL" >&2; exit 1; }
(IFS='|'; echo "$*") >> "$here/calls"
case "$*" in *"instances --json"*) cat "$here/instances.json" ;; esac
exit 0
"#;
        let bosh = dir.path().join("bosh");
        std::fs::write(&bosh, script).unwrap();
        std::fs::set_permissions(&bosh, std::fs::Permissions::from_mode(0o755)).unwrap();
        std::fs::write(dir.path().join("instances.json"), INSTANCES).unwrap();
        FakeBosh { dir }
    }

    fn path_env(&self) -> String {
        format!("{}:{}", self.dir.path().display(), std::env::var("PATH").unwrap())
    }

    fn calls(&self) -> Vec<String> {
        std::fs::read_to_string(self.dir.path().join("calls"))
            .unwrap_or_default()
            .lines()
            .map(str::to_owned)
            .collect()
    }
}

fn run(script: &str, args: &[&str], envs: &[(&str, &str)]) -> Output {
    let mut command = Command::new("bash");
    command.arg(repo().join(script)).args(args).current_dir(repo());
    for key in [
        "DRY_RUN",
        "BOSH_DEPLOYMENT",
        "INSTANCE_GROUP",
        "JOB",
        "BINARY",
        "RELEASE_ARGS",
        "STAGE_ONLY",
        "BOSH_CLI",
    ] {
        command.env_remove(key);
    }
    command.envs(envs.iter().copied());
    command.output().unwrap()
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

const BROKER_1: &str = "etcd-broker/0b1c2d3e-aaaa-4bbb-8ccc-000000000001";
const BROKER_2: &str = "etcd-broker/0b1c2d3e-aaaa-4bbb-8ccc-000000000002";

#[test]
fn bosh_scp_copies_stops_installs_and_starts_each_broker_instance_in_turn() {
    let bosh = FakeBosh::new();
    let binary = bosh.dir.path().join("etcd-broker-binary");
    std::fs::write(&binary, "binary").unwrap();
    let out = run(
        "scripts/bosh-scp.sh",
        &["-d", "my-etcd-broker"],
        &[("PATH", &bosh.path_env()), ("BINARY", binary.to_str().unwrap())],
    );
    assert!(out.status.success(), "{}", text(&out.stderr));

    let calls = bosh.calls();
    assert_eq!(calls[0], "-d|my-etcd-broker|instances|--json");
    let mut expected = Vec::new();
    for instance in [BROKER_1, BROKER_2] {
        expected
            .push(format!("-d|my-etcd-broker|scp|{}|{instance}:/tmp/etcd-broker.bosh_scp", binary.display()));
        expected.push("stop".to_owned());
        expected.push("start".to_owned());
    }
    assert_eq!(calls.len(), 1 + expected.len(), "{calls:#?}");
    for (i, (call, want)) in calls[1..].iter().zip(&expected).enumerate() {
        let instance = if i < 3 { BROKER_1 } else { BROKER_2 };
        match want.as_str() {
            "stop" => {
                assert!(call.starts_with(&format!("-d|my-etcd-broker|ssh|{instance}|-c|")), "{call}");
                assert!(call.contains("monit stop etcd-broker"), "{call}");
            }
            "start" => {
                assert!(call.starts_with(&format!("-d|my-etcd-broker|ssh|{instance}|-c|")), "{call}");
                let install = call.find("install -m 0755 /tmp/etcd-broker.bosh_scp").expect(call);
                let start = call.find("monit start etcd-broker").expect(call);
                assert!(install < start, "installs before starting: {call}");
                assert!(call.contains("/var/vcap/packages/etcd-broker/bin/etcd-broker"), "{call}");
            }
            scp => assert_eq!(call, scp),
        }
    }
    assert!(!calls.iter().any(|c| c.contains("etcd/5e6f")), "touched a non-broker instance: {calls:#?}");
    assert!(text(&out.stdout).contains("+ bosh -d my-etcd-broker scp"), "prints what it does");
}

#[test]
fn bosh_scp_dry_run_prints_the_commands_and_runs_only_the_instance_query() {
    let bosh = FakeBosh::new();
    for args in [&["--dry-run"][..], &[][..]] {
        let envs: Vec<(&str, &str)> = if args.is_empty() { vec![("DRY_RUN", "1")] } else { vec![] };
        let path = bosh.path_env();
        let mut envs = envs;
        envs.push(("PATH", &path));
        std::fs::remove_file(bosh.dir.path().join("calls")).ok();
        let out = run("scripts/bosh-scp.sh", args, &envs);
        assert!(out.status.success(), "{}", text(&out.stderr));
        assert_eq!(bosh.calls(), ["-d|etcd-broker|instances|--json"]);
        let stdout = text(&out.stdout);
        assert!(stdout.contains("+ cargo build --release --locked -p etcd-broker"), "{stdout}");
        for instance in [BROKER_1, BROKER_2] {
            assert!(stdout.contains(&format!("scp target/release/etcd-broker {instance}:")), "{stdout}");
            assert!(
                stdout.contains(&format!("ssh {instance} -c sudo /var/vcap/bosh/bin/monit stop")),
                "{stdout}"
            );
        }
        assert!(text(&out.stderr).contains("dry run: nothing was changed"));
    }
}

#[test]
fn bosh_scp_explains_missing_tools_sessions_and_instances() {
    let bosh = FakeBosh::new();
    let path = bosh.path_env();
    let cases: Vec<(Vec<(&str, &str)>, &str)> = vec![
        (vec![("BOSH_CLI", "/nonexistent/bosh")], "install the bosh CLI"),
        (vec![("PATH", &path), ("JQ", "/nonexistent/jq")], "install jq"),
        (vec![("PATH", &path), ("INSTANCE_GROUP", "nope")], "has no instance of group 'nope'"),
    ];
    for (envs, message) in cases {
        let out = run("scripts/bosh-scp.sh", &["--dry-run"], &envs);
        assert_eq!(out.status.code(), Some(1), "{message}");
        assert!(text(&out.stderr).contains(message), "{}", text(&out.stderr));
    }
    std::fs::write(bosh.dir.path().join("fail"), "").unwrap();
    let out = run("scripts/bosh-scp.sh", &[], &[("PATH", &path)]);
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out.stderr).contains("is there a bosh session"), "{}", text(&out.stderr));

    let out = run("scripts/bosh-scp.sh", &["--bogus"], &[("PATH", &path)]);
    assert_eq!(out.status.code(), Some(2));
}

/// `make release` stages a workspace that cargo resolves offline from the vendored crates alone
/// (an empty CARGO_HOME: no registry cache), with the static protoc the packaging script uses.
#[test]
fn release_stages_a_workspace_that_resolves_offline_and_creates_the_release() {
    let bosh = FakeBosh::new();
    let stage = tempfile::tempdir().unwrap();
    let stage_dir = stage.path().join("etcd-broker-workspace");
    let rust_release = tempfile::tempdir().unwrap();
    let dist = tempfile::tempdir().unwrap();
    let tarball = dist.path().join("etcd-broker.tgz");
    let release_args = format!("--tarball {}", tarball.display());
    let out = run(
        "scripts/release.sh",
        &["--stage-dir", stage_dir.to_str().unwrap()],
        &[
            ("PATH", &bosh.path_env()),
            ("RUST_RELEASE_DIR", rust_release.path().to_str().unwrap()),
            ("RELEASE_ARGS", &release_args),
        ],
    );
    assert!(out.status.success(), "{}", text(&out.stderr));

    for file in
        ["Cargo.toml", "Cargo.lock", "src/main.rs", "ops/src/main.rs", "templates/etcd-broker.toml.hbs"]
    {
        assert!(stage_dir.join(file).is_file(), "{file} not staged");
    }
    assert!(!stage_dir.join("target").exists(), "build output staged");
    let protoc = std::fs::read_dir(stage_dir.join("vendor"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.file_name().unwrap().to_str().unwrap().starts_with("protoc-bin-vendored-linux-x86_64"))
        .expect("vendored protoc crate")
        .join("bin/protoc");
    let mode = std::fs::metadata(&protoc).unwrap().permissions().mode();
    assert_ne!(mode & 0o111, 0, "protoc is executable");

    let empty_home = tempfile::tempdir().unwrap();
    let metadata = Command::new(env!("CARGO"))
        .args(["metadata", "--offline", "--locked", "--format-version", "1"])
        .current_dir(&stage_dir)
        .env("CARGO_HOME", empty_home.path())
        .output()
        .unwrap();
    assert!(metadata.status.success(), "{}", text(&metadata.stderr));
    let packages: serde_json::Value = serde_json::from_slice(&metadata.stdout).unwrap();
    let names: Vec<&str> =
        packages["packages"].as_array().unwrap().iter().map(|p| p["name"].as_str().unwrap()).collect();
    for crate_name in ["etcd-client", "actix-web", "openssl"] {
        assert!(names.contains(&crate_name), "{crate_name} resolved from vendor/");
    }
    // The developers' crate never reaches the BOSH package, nor what only it needs.
    assert!(!stage_dir.join("xtask").exists(), "xtask staged");
    for crate_name in ["xtask", "hdrhistogram", "indicatif"] {
        assert!(!names.contains(&crate_name), "{crate_name} in the staged workspace");
    }

    // Linux only: crates of other platforms are stubs (and cargo resolved them above), those of
    // Linux keep their sources.
    let vendored: Vec<std::path::PathBuf> =
        std::fs::read_dir(stage_dir.join("vendor")).unwrap().map(|e| e.unwrap().path()).collect();
    let crate_dirs = |prefix: &str| -> Vec<&std::path::PathBuf> {
        vendored
            .iter()
            .filter(|p| {
                let name = p.file_name().unwrap().to_str().unwrap();
                name.strip_prefix(prefix).is_some_and(|v| v.starts_with(|c: char| c.is_ascii_digit()))
            })
            .collect()
    };
    for stub in ["windows-sys-", "windows_x86_64_msvc-", "web-sys-", "js-sys-"] {
        for dir in crate_dirs(stub) {
            let mut files: Vec<String> = walk(dir);
            files.sort();
            assert_eq!(files, [".cargo-checksum.json", "Cargo.toml", "src/lib.rs"], "{}", dir.display());
        }
    }
    for needed in ["libc-", "openssl-sys-", "linux-raw-sys-"] {
        let dirs = crate_dirs(needed);
        assert!(!dirs.is_empty(), "{needed} vendored");
        for dir in dirs {
            assert!(walk(dir).len() > 3, "{} stubbed", dir.display());
        }
    }

    let rust_release = rust_release.path().to_str().unwrap();
    let calls = bosh.calls();
    if !repo().join("packages/rust-1-linux/spec.lock").exists() {
        assert_eq!(calls[0], format!("vendor-package|rust-1-linux|{rust_release}"));
    }
    assert_eq!(calls.last().unwrap(), &format!("create-release|--tarball|{}", tarball.display()));
}

#[test]
fn release_without_bosh_stages_only_and_says_what_to_do() {
    let stage = tempfile::tempdir().unwrap();
    let stage_dir = stage.path().join("ws");
    let out = run(
        "scripts/release.sh",
        &["--stage-dir", stage_dir.to_str().unwrap()],
        &[("BOSH_CLI", "/nonexistent/bosh")],
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(text(&out.stderr).contains("bosh CLI is not installed: staged only"), "{}", text(&out.stderr));
    assert!(stage_dir.join(".cargo/config.toml").is_file());

    let out = run("scripts/release.sh", &["--nope"], &[]);
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out.stderr).contains("unknown argument '--nope'"));
}

/// A clone of bosh-package-rust-release made without git-lfs holds pointers where the
/// toolchain should be; `bosh vendor-package` would fail on a digest mismatch, so release.sh
/// stops first and says what to install.
#[test]
fn release_refuses_a_rust_release_cloned_without_git_lfs() {
    if repo().join("packages/rust-1-linux/spec.lock").exists() {
        return; // vendored already: release.sh never reads a rust release
    }
    let bosh = FakeBosh::new();
    let stage = tempfile::tempdir().unwrap();
    let rust_release = tempfile::tempdir().unwrap();
    std::fs::create_dir(rust_release.path().join("final_blobs")).unwrap();
    std::fs::write(
        rust_release.path().join("final_blobs/3e83cc6e-422c-4d54-6454-0cdbfdbf2a2d"),
        "version https://git-lfs.github.com/spec/v1\noid sha256:7bcd07364ae8520160c3224e19ca57906df29ce9d0479e15710b18c5fef9cfb1\nsize 373156088\n",
    )
    .unwrap();
    let out = run(
        "scripts/release.sh",
        &["--stage-dir", stage.path().join("ws").to_str().unwrap()],
        &[("PATH", &bosh.path_env()), ("RUST_RELEASE_DIR", rust_release.path().to_str().unwrap())],
    );
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stderr));
    assert!(
        text(&out.stderr).contains("is a git-lfs pointer, not the toolchain: install git-lfs"),
        "{}",
        text(&out.stderr)
    );
    assert!(bosh.calls().is_empty(), "bosh called: {:?}", bosh.calls());
}

/// The files under `dir`, relative to it.
fn walk(dir: &std::path::Path) -> Vec<String> {
    let mut files = Vec::new();
    let mut pending = vec![dir.to_owned()];
    while let Some(next) = pending.pop() {
        for entry in std::fs::read_dir(&next).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                pending.push(path);
            } else {
                files.push(path.strip_prefix(dir).unwrap().display().to_string());
            }
        }
    }
    files
}

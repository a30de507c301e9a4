//! The release built by the real bosh CLI (found as `common::bosh_cli` says; without it each
//! test says that it skipped):
//!
//! - docs/bosh.md's "From a fresh clone to a final release" runs as written, on a clone of this
//!   checkout (its working copy, committed): `make release` (a dev release, `bosh create-release
//!   --force --tarball`, after `bosh vendor-package`), commits, the final release, the push; then
//!   `bosh inspect-local-release` reads both tarballs and a second clone recreates the final
//!   release from what was committed and the blobstore alone;
//! - every mistake the CLI refused there is one `check release` names too.
//!
//! Two stand-ins, because CI reaches neither: cloudfoundry/bosh-package-rust-release (its
//! toolchain blobs are git-lfs files) becomes a release with a tiny `rust-1-linux` of the same
//! contract (`bosh/compile.env`), and the S3 blobstore of config/final.yml a local folder.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use serde_json::Value;

use crate::check_release::release_copy;
use crate::common::{bosh_cli, repo, skipped};

/// The dev release tarball's ceiling: 41.1 MiB when every platform's crates were vendored,
/// 28.9 MiB with those of x86_64 Linux only (scripts/release.sh).
const TARBALL_LIMIT: u64 = 36 << 20;

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// Runs `command`, panicking with its output unless it succeeds.
fn ok(command: &mut Command) -> Output {
    let out = command.output().unwrap();
    assert!(out.status.success(), "{command:?}:\n{}\n{}", text(&out.stdout), text(&out.stderr));
    out
}

fn git(dir: &Path) -> Command {
    let mut command = Command::new("git");
    command.arg("-C").arg(dir);
    command
}

/// `bosh ARGS` in `dir` with its own `home` (the CLI keeps a cache of built packages there).
fn bosh(cli: &Path, home: &Path, dir: &Path, args: &[&str]) -> Output {
    Command::new(cli).args(args).current_dir(dir).env("HOME", home).output().unwrap()
}

/// A final release of a package `rust-1-linux` in `dir`, its blobs in `dir/final_blobs` (as
/// the real toolchain release keeps them), ready for `bosh vendor-package rust-1-linux dir`.
fn stand_in_rust_release(cli: &Path, home: &Path, dir: &Path) {
    let files: &[(&str, &str)] = &[
        (
            "config/final.yml",
            "name: rust\nblobstore:\n  provider: local\n  options:\n    blobstore_path: final_blobs\n",
        ),
        ("config/blobs.yml", "--- {}\n"),
        ("jobs/.keep", ""),
        ("packages/rust-1-linux/spec", "---\nname: rust-1-linux\nfiles:\n- compile.env\n"),
        (
            "packages/rust-1-linux/packaging",
            "set -e\nmkdir -p \"$BOSH_INSTALL_TARGET/bosh\"\ncp compile.env \"$BOSH_INSTALL_TARGET/bosh/\"\n",
        ),
        ("src/compile.env", "# stand-in: the toolchain of the compilation VM\n"),
    ];
    for (file, content) in files {
        let path = dir.join(file);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, content).unwrap();
    }
    let out = bosh(cli, home, dir, &["create-release", "--final", "--force", "--version", "1"]);
    assert!(out.status.success(), "stand-in rust release: {}", text(&out.stdout));
}

/// The ```sh block after docs/bosh.md's "tested by" marker.
fn documented_steps() -> String {
    let doc = std::fs::read_to_string(repo().join("docs/bosh.md")).unwrap();
    let marker =
        doc.find("<!-- tested by ops/tests/it/bosh_release.rs").expect("docs/bosh.md's tested steps");
    let block = &doc[marker..];
    let start = block.find("```sh\n").expect("a sh block after the marker") + "```sh\n".len();
    let end = block[start..].find("```").unwrap();
    block[start..start + end].to_owned()
}

/// (name, version, job names, package names) of a release tarball, as `bosh
/// inspect-local-release` reads it.
fn inspect(cli: &Path, home: &Path, tarball: &Path) -> (String, String, Vec<String>, Vec<String>) {
    let out = bosh(cli, home, home, &["inspect-local-release", tarball.to_str().unwrap(), "--json"]);
    assert!(out.status.success(), "{}", text(&out.stdout));
    let json: Value = serde_json::from_slice(&out.stdout).unwrap();
    let tables = json["Tables"].as_array().unwrap();
    let rows = |content: &str, column: &str| -> Vec<String> {
        let table = tables.iter().find(|t| t["Content"] == content).unwrap();
        let mut names: Vec<String> = table["Rows"]
            .as_array()
            .unwrap()
            .iter()
            .map(|row| row[column].as_str().unwrap().split('/').next().unwrap().to_owned())
            .collect();
        names.sort();
        names
    };
    let release = &tables[0]["Rows"][0];
    (
        release["name"].as_str().unwrap().to_owned(),
        release["version"].as_str().unwrap().to_owned(),
        rows("jobs", "job"),
        rows("packages", "package"),
    )
}

/// The folders of `dir` (sorted names).
fn folders(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap())
        .filter(|e| e.file_type().unwrap().is_dir())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

/// A bare repository holding this checkout's working copy (tracked and new files, as a commit
/// on top of HEAD), with the two stand-ins: a local blobstore at `blobstore`, and no vendored
/// rust-1-linux (a pinned one's blob would have to come from the real blobstore).
fn origin_of_this_checkout(dir: &Path, blobstore: &Path) -> PathBuf {
    let origin = dir.join("origin.git");
    let prep = dir.join("prep");
    ok(Command::new("git").args(["clone", "-q", "--bare"]).arg(repo()).arg(&origin));
    ok(Command::new("git").args(["clone", "-q"]).arg(&origin).arg(&prep));
    // On a branch of its own, whatever this checkout is on (a detached HEAD cannot be pushed
    // as it is); the origin's HEAD names it, so the docs' plain `git clone` checks it out.
    ok(git(&prep).args(["checkout", "-q", "-B", "main"]));
    let listed =
        ok(git(&repo()).args(["ls-files", "-z", "--cached", "--others", "--exclude-standard"])).stdout;
    for file in listed.split(|b| *b == 0).filter(|f| !f.is_empty()) {
        let file = std::str::from_utf8(file).unwrap();
        let (from, to) = (repo().join(file), prep.join(file));
        if from.is_file() {
            std::fs::create_dir_all(to.parent().unwrap()).unwrap();
            std::fs::copy(&from, &to).unwrap();
        } else if to.is_file() {
            std::fs::remove_file(&to).unwrap(); // deleted in the working copy
        }
    }
    std::fs::write(
        prep.join("config/final.yml"),
        format!(
            "name: etcd-broker\nblobstore:\n  provider: local\n  options:\n    blobstore_path: {}\n",
            blobstore.display()
        ),
    )
    .unwrap();
    std::fs::remove_file(prep.join("packages/rust-1-linux/spec.lock")).ok();
    std::fs::remove_dir_all(prep.join(".final_builds/packages/rust-1-linux")).ok();
    ok(git(&prep).args(["add", "-A"]));
    ok(git(&prep).args(["commit", "-q", "--allow-empty", "-m", "test: the working copy, stand-ins"]));
    ok(git(&prep).args(["push", "-q", "-f", "origin", "HEAD:refs/heads/main"]));
    ok(git(&origin).args(["symbolic-ref", "HEAD", "refs/heads/main"]));
    origin
}

#[test]
fn fresh_clone_to_final_release() {
    let Some(cli) = bosh_cli() else { return skipped() };
    let dir = tempfile::tempdir().unwrap();
    let (home, bin, work, blobstore, rust) = (
        dir.path().join("home"),
        dir.path().join("bin"),
        dir.path().join("work"),
        dir.path().join("blobstore"),
        dir.path().join("rust-release"),
    );
    for folder in [&home, &bin, &work, &blobstore, &rust] {
        std::fs::create_dir_all(folder).unwrap();
    }
    // Cargo and rustup keep their state under the real HOME; git gets a user and the GitHub
    // URL of the toolchain release rewritten to the stand-in.
    let real_home = PathBuf::from(std::env::var_os("HOME").unwrap());
    let cargo_home = std::env::var_os("CARGO_HOME").map_or(real_home.join(".cargo"), PathBuf::from);
    let rustup_home = std::env::var_os("RUSTUP_HOME").map_or(real_home.join(".rustup"), PathBuf::from);
    std::fs::write(
        home.join(".gitconfig"),
        format!(
            "[user]\n\tname = Release Test\n\temail = release-test@example.com\n\
             [url \"{}\"]\n\tinsteadOf = https://github.com/cloudfoundry/bosh-package-rust-release\n",
            rust.display()
        ),
    )
    .unwrap();
    let git_lfs = Command::new("git").args(["lfs", "version"]).output().is_ok_and(|o| o.status.success());
    if !git_lfs {
        // `git lfs install` is the doc's first step; the stand-in release has no LFS files.
        let fake = bin.join("git-lfs");
        std::fs::write(&fake, "#!/bin/sh\n[ \"$1\" = version ] && echo 'git-lfs/0 (stand-in)'\nexit 0\n")
            .unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&fake, std::fs::Permissions::from_mode(0o755)).unwrap();
    }

    stand_in_rust_release(&cli, &home, &rust);
    for args in [&["init", "-q"][..], &["add", "-A"], &["commit", "-q", "-m", "rust release"]] {
        ok(git(&rust).args(args).env("HOME", &home));
    }
    let origin = origin_of_this_checkout(dir.path(), &blobstore);

    let path = std::env::join_paths(
        [bin.clone(), cli.parent().unwrap().to_owned()]
            .into_iter()
            .chain(std::env::split_paths(&std::env::var_os("PATH").unwrap())),
    )
    .unwrap();
    let mut steps = Command::new("bash");
    steps.arg("-c").arg(documented_steps()).current_dir(&work);
    for key in
        ["RELEASE_ARGS", "STAGE_ONLY", "RUST_RELEASE_DIR", "BOSH_CLI", "MAKEFLAGS", "MFLAGS", "MAKELEVEL"]
    {
        steps.env_remove(key);
    }
    steps
        .env("HOME", &home)
        .env("PATH", path)
        .env("CARGO_HOME", cargo_home)
        .env("RUSTUP_HOME", rustup_home)
        .env("ETCD_BROKER_REPO", &origin)
        .env("RELEASE_VERSION", "1.0.0")
        .env("BLOBSTORE_ACCESS_KEY_ID", "test-key-id")
        .env("BLOBSTORE_SECRET_ACCESS_KEY", "test-secret-key");
    ok(&mut steps);

    // Both tarballs hold this release's jobs and packages.
    let clone = work.join("etcd-broker");
    let jobs = folders(&repo().join("jobs"));
    let packages = vec!["etcd-broker".to_owned(), "rust-1-linux".to_owned()];
    for (tarball, version) in
        [("dist/etcd-broker-dev.tgz", "0+dev.1"), ("dist/etcd-broker-1.0.0.tgz", "1.0.0")]
    {
        let tarball = clone.join(tarball);
        let inspected = inspect(&cli, &home, &tarball);
        assert_eq!(inspected, ("etcd-broker".to_owned(), version.to_owned(), jobs.clone(), packages.clone()));
        let size = std::fs::metadata(&tarball).unwrap().len();
        assert!(size < TARBALL_LIMIT, "{} is {size} bytes", tarball.display());
    }

    // What was pushed: the toolchain pinned, the final release recorded and tagged.
    let tagged = text(&ok(git(&origin).args(["ls-tree", "-r", "--name-only", "v1.0.0"])).stdout);
    for file in [
        "packages/rust-1-linux/spec.lock",
        ".final_builds/packages/rust-1-linux/index.yml",
        ".final_builds/packages/etcd-broker/index.yml",
        ".final_builds/jobs/etcd-broker/index.yml",
        "releases/etcd-broker/etcd-broker-1.0.0.yml",
        "releases/etcd-broker/index.yml",
    ] {
        assert!(tagged.lines().any(|l| l == file), "{file} not committed at v1.0.0");
    }
    assert!(!tagged.lines().any(|l| l.starts_with("config/private.yml")), "credentials committed");

    // Reproducible: another clone, with an empty bosh cache, recreates the final release from
    // the commit and the blobstore alone.
    let (home2, again) = (dir.path().join("home2"), dir.path().join("again"));
    std::fs::create_dir_all(&home2).unwrap();
    ok(Command::new("git").args(["clone", "-q", "--branch", "v1.0.0"]).arg(&origin).arg(&again));
    let tarball = dir.path().join("again.tgz");
    let out = bosh(
        &cli,
        &home2,
        &again,
        &[
            "create-release",
            "releases/etcd-broker/etcd-broker-1.0.0.yml",
            "--tarball",
            tarball.to_str().unwrap(),
        ],
    );
    assert!(out.status.success(), "{}", text(&out.stdout));
    assert_eq!(
        inspect(&cli, &home2, &tarball),
        ("etcd-broker".to_owned(), "1.0.0".to_owned(), jobs, packages)
    );
}

/// A release copy whose toolchain was vendored by the real `bosh vendor-package` from the
/// stand-in, into a local blobstore inside the copy (final_blobs/).
fn vendored_copy(cli: &Path) -> tempfile::TempDir {
    let dir = release_copy();
    std::fs::write(
        dir.path().join("config/final.yml"),
        "name: etcd-broker\nblobstore:\n  provider: local\n  options:\n    blobstore_path: final_blobs\n",
    )
    .unwrap();
    let (home, rust) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    stand_in_rust_release(cli, home.path(), rust.path());
    let out = bosh(
        cli,
        home.path(),
        dir.path(),
        &["vendor-package", "rust-1-linux", rust.path().to_str().unwrap()],
    );
    assert!(out.status.success(), "vendor-package: {}", text(&out.stdout));
    dir
}

/// `bosh create-release --force` as on a fresh clone (no dev builds, an empty cache): its
/// output when it fails.
fn cli_refuses(cli: &Path, release: &Path) -> Option<String> {
    for built in [".dev_builds", "dev_releases"] {
        std::fs::remove_dir_all(release.join(built)).ok();
    }
    let home = tempfile::tempdir().unwrap();
    let out = bosh(cli, home.path(), release, &["create-release", "--force"]);
    (!out.status.success()).then(|| text(&out.stdout) + &text(&out.stderr))
}

/// `check release` on `release`: its stderr when it fails.
fn check_refuses(release: &Path) -> Option<String> {
    let out = Command::new(env!("CARGO_BIN_EXE_etcd-broker-ops"))
        .args(["check", "release", "--release-dir"])
        .arg(release)
        .output()
        .unwrap();
    (!out.status.success()).then(|| text(&out.stderr))
}

/// Each release mistake the bosh CLI refused in these tests (final.yml's two names; a fresh
/// clone with `spec.lock` but not .final_builds/, or without the blob, or with a blobstore the
/// CLI cannot build): the CLI refuses it, and `check release` names it, which operators run
/// without the CLI.
#[test]
fn check_release_names_what_the_cli_refuses() {
    let Some(cli) = bosh_cli() else { return skipped() };
    let dir = vendored_copy(&cli);
    let release = dir.path();
    assert_eq!(cli_refuses(&cli, release), None, "the vendored copy builds");
    assert_eq!(check_refuses(release), None, "and passes check release");
    let fingerprint = std::fs::read_to_string(release.join("packages/rust-1-linux/spec.lock"))
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("fingerprint: "))
        .unwrap()
        .to_owned();

    let final_yml = release.join("config/final.yml");
    let good = std::fs::read_to_string(&final_yml).unwrap();
    std::fs::write(&final_yml, format!("{good}final_name: etcd-broker\n")).unwrap();
    let theirs = cli_refuses(&cli, release).expect("the CLI refuses name and final_name");
    assert!(theirs.contains("Expected 'name' or 'final_name' but not both"), "{theirs}");
    let ours = check_refuses(release).expect("check release refuses name and final_name");
    assert!(ours.contains("config/final.yml: has both `name` and `final_name`"), "{ours}");
    std::fs::write(&final_yml, &good).unwrap();

    // A fresh clone fetches the vendored toolchain from the blobstore: one the CLI cannot
    // build fails it.
    let cases = [
        ("  provider: s3\n  options: {}\n", "bucket_name must be set", "blobstore has no `bucket_name`"),
        ("  provider: swift\n", "Expected release blobstore to be configured", "blobstore provider 'swift'"),
        ("", "Expected non-empty 'blobstore.provider'", "has no `blobstore.provider`"),
    ];
    for (blobstore, cli_says, check_says) in cases {
        std::fs::write(&final_yml, format!("name: etcd-broker\nblobstore:\n{blobstore}")).unwrap();
        let theirs = cli_refuses(&cli, release).unwrap_or_else(|| panic!("the CLI takes {blobstore:?}"));
        assert!(theirs.contains(cli_says), "{theirs}");
        let ours = check_refuses(release).unwrap_or_else(|| panic!("check release takes {blobstore:?}"));
        assert!(ours.contains(&format!("config/final.yml: {check_says}")), "{ours}");
    }
    std::fs::write(&final_yml, &good).unwrap();

    let index = release.join(".final_builds/packages/rust-1-linux/index.yml");
    let saved = std::fs::read_to_string(&index).unwrap();
    std::fs::remove_file(&index).unwrap();
    let expected = format!("Expected to find 'rust-1-linux/{fingerprint}'");
    let theirs = cli_refuses(&cli, release).expect("the CLI refuses a lock without its index");
    assert!(theirs.contains(&expected), "{theirs}");
    let ours = check_refuses(release).expect("check release refuses a lock without its index");
    assert!(
        ours.contains(&format!("packages/rust-1-linux/spec.lock: pins 'rust-1-linux/{fingerprint}'")),
        "{ours}"
    );
    assert!(ours.contains(&expected), "{ours}");
    std::fs::write(&index, &saved).unwrap();

    let blob = saved.lines().find_map(|l| l.trim().strip_prefix("blobstore_id: ")).unwrap();
    std::fs::remove_file(release.join("final_blobs").join(blob)).unwrap();
    let theirs = cli_refuses(&cli, release).expect("the CLI refuses a missing blob");
    assert!(theirs.contains(&format!("final_blobs/{blob}: no such file or directory")), "{theirs}");
    let ours = check_refuses(release).expect("check release refuses a missing blob");
    assert!(ours.contains(&format!("names blob {blob} for 'rust-1-linux/{fingerprint}'")), "{ours}");
}

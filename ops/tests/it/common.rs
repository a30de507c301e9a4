//! Shared harness of the ops integration tests: the developers' `xtask` (its `dev --run` runs a
//! command against a local stack), and an errand's properties.json made the way BOSH makes it.

use std::path::{Path, PathBuf};
use std::process::Command;

pub const OPS: &str = env!("CARGO_BIN_EXE_etcd-broker-ops");

pub fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap().to_owned()
}

/// The developers' `xtask` binary, which runs the local stack (`xtask dev --run -- CMD`).
/// This crate ships and must not depend on the developers' crate, so the binary is taken from
/// the target folder it shares with this one: `cargo test --workspace` (make test) and
/// ci/blackbox build it, `cargo build -p xtask` alone does too.
pub fn xtask() -> PathBuf {
    let path = Path::new(OPS).with_file_name("xtask");
    assert!(path.is_file(), "{} is missing: build it first (cargo build -p xtask)", path.display());
    path
}

/// What BOSH would write to an errand's config/properties.json: `etcd-broker-ops render` of
/// manifests/etcd-broker.yml + `ops_file` with the example vars (and `extra` flags), then the
/// job's ERB template evaluated by the Ruby harness on the context render resolved. Returns
/// the path of the written file (in `dir`).
pub fn errand_properties(
    dir: &Path,
    instance_group: &str,
    job: &str,
    ops_file: &str,
    extra: &[String],
) -> PathBuf {
    let repo = repo();
    let out = Command::new(OPS)
        .args(["render", "--instance-group", instance_group, "--job", job, "--manifest"])
        .arg(repo.join("manifests/etcd-broker.yml"))
        .arg("-o")
        .arg(repo.join(ops_file))
        .arg("-l")
        .arg(repo.join("manifests/examples/vars.yml"))
        .args(extra)
        .arg("--output-dir")
        .arg(dir)
        .output()
        .unwrap();
    assert!(out.status.success(), "render: {}", String::from_utf8_lossy(&out.stderr));
    let erb = Command::new("ruby")
        .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/erb/render_erb.rb"))
        .arg(repo.join(format!("jobs/{job}/templates/properties.json.erb")))
        .arg(dir.join("context.json"))
        .output()
        .expect("ruby (scripts/install-tools.sh installs it)");
    assert!(erb.status.success(), "ERB: {}", String::from_utf8_lossy(&erb.stderr));
    let file = dir.join("properties.json");
    std::fs::write(&file, &erb.stdout).unwrap();
    file
}

/// The documented example config, `edit`ed, with a `[secrets]` table sealing with `active` of
/// `keys` (name, file); written into `dir`, its path.
pub fn example_config(
    dir: &Path,
    active: &str,
    keys: &[(&str, &Path)],
    edit: impl FnOnce(String) -> String,
) -> PathBuf {
    let example = std::fs::read_to_string(repo().join("docs/etcd-broker.example.toml")).unwrap();
    // The example says `sealing = "off"`; the table below replaces it.
    let off = "[secrets]\nsealing = \"off\"\n";
    assert!(example.contains(off), "the example's [secrets] table changed");
    let mut toml = edit(example.replace(off, ""));
    toml.push_str(&format!("\n[secrets]\nsealing = \"on\"\nactive = \"{active}\"\n"));
    for (name, file) in keys {
        toml.push_str(&format!("[secrets.keys.{name}]\nfile = \"{}\"\n", file.display()));
    }
    let file = dir.join(format!("broker-{active}.toml"));
    std::fs::write(&file, toml).unwrap();
    file
}

/// The real BOSH CLI the tests compare our models with, found the way scripts/test.sh documents.
pub fn bosh_cli() -> Option<PathBuf> {
    find_bosh(
        std::env::var_os("BOSH_CLI"),
        &repo().join("../shared/tools/bosh-cli/bosh"),
        std::env::var_os("PATH"),
    )
}

/// The BOSH CLI: `$BOSH_CLI` when set, else the shared tools' copy, else `bosh` on `PATH` (as
/// scripts/release.sh finds it); `None` when there is none.
pub fn find_bosh(
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
pub fn skipped() {
    eprintln!(
        "skipped: no BOSH CLI (set BOSH_CLI, install ../shared/tools/bosh-cli/bosh, or put bosh on PATH)"
    );
}

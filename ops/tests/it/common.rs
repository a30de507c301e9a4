//! Shared harness of the ops integration tests: a local stack started with
//! `etcd-broker-ops dev`, and an errand's properties.json made the way BOSH makes it.

#![allow(dead_code)]

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub const OPS: &str = env!("CARGO_BIN_EXE_etcd-broker-ops");

pub fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap().to_owned()
}

/// `etcd-broker-ops dev` (etcd 3.5, bcrypt cost 4, free ports) in a temporary folder, with the
/// KEY=value lines of its env file; stopped with SIGINT on drop.
pub struct DevStack {
    child: Child,
    pub env: HashMap<String, String>,
    dir: tempfile::TempDir,
}

impl DevStack {
    pub fn start() -> DevStack {
        let dir = tempfile::tempdir().unwrap();
        let child = Command::new(OPS)
            .args([
                "dev",
                "--bcrypt-cost",
                "4",
                "--broker-port",
                "0",
                "--etcd-port",
                "0",
                "--metrics-port",
                "0",
            ])
            .arg("--dir")
            .arg(dir.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let mut stack = DevStack { child, env: HashMap::new(), dir };
        let env_file = stack.dir.path().join("env");
        let deadline = Instant::now() + Duration::from_secs(60);
        while stack.env.is_empty() {
            if let Ok(text) = std::fs::read_to_string(&env_file) {
                stack.env = text
                    .lines()
                    .filter_map(|l| l.split_once('='))
                    .map(|(k, v)| (k.into(), v.into()))
                    .collect();
            }
            assert!(stack.child.try_wait().unwrap().is_none(), "dev exited");
            assert!(Instant::now() < deadline, "dev did not start");
            std::thread::sleep(Duration::from_millis(100));
        }
        stack
    }

    /// A scratch folder that lives as long as the stack.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for DevStack {
    fn drop(&mut self) {
        unsafe { libc::kill(self.child.id() as i32, libc::SIGINT) };
        let _ = self.child.wait();
    }
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

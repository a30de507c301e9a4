//! A throw-away OpenBao dev server for the tests of the broker's secret backends (issue 21).
//!
//! [`LocalBao::start`] runs the project-local `bao` binary (installed by
//! `scripts/install-tools.sh` into `tools/openbao/`) as `bao server -dev` on a free 127.0.0.1
//! port with a random root token, waits until it answers, and kills it when dropped. The dev
//! server keeps everything in memory, is unsealed, and mounts KV v2 at `secret/`; what a test
//! needs beyond that (transit, AppRole, policies) it sets up with [`LocalBao::bao`], the real
//! CLI, so the tests hold no model of OpenBao's API of their own.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use tokio::process::{Child, Command};

use crate::{io_err, tools_dir, Error};

/// How long a dev server may take to answer after it was started.
const BAO_START_TIMEOUT: Duration = Duration::from_secs(30);

/// The `bao` binary in [`tools_dir`]; an error says how to install it.
pub fn bao_binary() -> Result<PathBuf, Error> {
    let path = tools_dir().join("openbao").join("bin").join("bao");
    if path.is_file() {
        Ok(path)
    } else {
        Err(Error::MissingBinary(path))
    }
}

/// A running OpenBao dev server; killed on drop.
pub struct LocalBao {
    bin: PathBuf,
    child: Option<Child>,
    port: u16,
    root_token: String,
    log: PathBuf,
    _dir: tempfile::TempDir,
}

impl LocalBao {
    /// Starts a dev server on a free port (its cluster port, the next one, free too) and waits
    /// until `bao status` answers that it is unsealed.
    pub async fn start() -> Result<LocalBao, Error> {
        let bin = bao_binary()?;
        let dir = tempfile::tempdir().map_err(io_err("creating a temporary directory"))?;
        let log = dir.path().join("bao.log");
        let port = free_port_pair()?;
        let mut token = [0u8; 16];
        openssl::rand::rand_bytes(&mut token).map_err(|e| Error::Io {
            context: "drawing a root token".into(),
            source: std::io::Error::other(e.to_string()),
        })?;
        let root_token = format!("root-{}", token.iter().map(|b| format!("{b:02x}")).collect::<String>());
        let mut bao = LocalBao { bin, child: None, port, root_token, log, _dir: dir };
        bao.child = Some(bao.spawn()?);
        bao.wait_ready().await?;
        Ok(bao)
    }

    fn spawn(&self) -> Result<Child, Error> {
        let log = File::create(&self.log).map_err(io_err(format!("creating {}", self.log.display())))?;
        let log_err = log.try_clone().map_err(io_err("duplicating the log file"))?;
        let mut cmd = Command::new(&self.bin);
        clean_env(&mut cmd);
        cmd.args(["server", "-dev", "-dev-no-store-token", "-log-level=warn"])
            .arg(format!("-dev-root-token-id={}", self.root_token))
            .arg(format!("-dev-listen-address=127.0.0.1:{}", self.port))
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log_err)
            .kill_on_drop(true);
        cmd.spawn().map_err(io_err(format!("starting {}", self.bin.display())))
    }

    async fn wait_ready(&mut self) -> Result<(), Error> {
        let deadline = Instant::now() + BAO_START_TIMEOUT;
        loop {
            if let Some(child) = self.child.as_mut() {
                if let Ok(Some(status)) = child.try_wait() {
                    return Err(Error::Io {
                        context: format!("bao server exited during startup ({status}): {}", self.log_tail()),
                        source: std::io::Error::other("exited"),
                    });
                }
            }
            if self.bao_status().await {
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err(Error::Io {
                    context: format!(
                        "bao at {} did not answer within 30 s: {}",
                        self.address(),
                        self.log_tail()
                    ),
                    source: std::io::Error::from(std::io::ErrorKind::TimedOut),
                });
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Whether `bao status` says the server is up and unsealed (exit 0).
    async fn bao_status(&self) -> bool {
        let mut cmd = self.command();
        cmd.arg("status");
        matches!(cmd.output().await, Ok(out) if out.status.success())
    }

    /// `http://127.0.0.1:<port>`.
    pub fn address(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// The root token (for the test's own setup; never hand it to the broker under test
    /// where a narrower token shows what the broker needs).
    pub fn root_token(&self) -> &str {
        &self.root_token
    }

    /// The dev server's log file.
    pub fn log_file(&self) -> &Path {
        &self.log
    }

    fn command(&self) -> Command {
        let mut cmd = Command::new(&self.bin);
        clean_env(&mut cmd);
        cmd.env("BAO_ADDR", self.address()).env("BAO_TOKEN", &self.root_token).stdin(Stdio::null());
        cmd
    }

    /// Runs the real `bao` CLI against this server as root (e.g. `["secrets", "enable",
    /// "transit"]`) and returns its stdout; a failure carries its stderr.
    pub async fn bao(&self, args: &[&str]) -> Result<String, Error> {
        let mut cmd = self.command();
        cmd.args(args);
        let out = cmd.output().await.map_err(io_err(format!("running bao {}", args.join(" "))))?;
        if out.status.success() {
            Ok(String::from_utf8_lossy(&out.stdout).into_owned())
        } else {
            Err(Error::Io {
                context: format!(
                    "bao {} failed ({}): {}",
                    args.join(" "),
                    out.status,
                    String::from_utf8_lossy(&out.stderr).trim()
                ),
                source: std::io::Error::other("bao failed"),
            })
        }
    }

    /// Like [`LocalBao::bao`] with `-field=FIELD` before the last argument (the path), trimmed:
    /// one value of a response.
    pub async fn field(&self, field: &str, args: &[&str]) -> Result<String, Error> {
        // Flags go before the path, the last argument.
        let flag = format!("-field={field}");
        let mut all = args.to_vec();
        all.insert(args.len().saturating_sub(1), flag.as_str());
        Ok(self.bao(&all).await?.trim().to_owned())
    }

    /// Freezes the server (SIGSTOP): it accepts connections but answers nothing, like a hung
    /// OpenBao. [`LocalBao::thaw`] lets it go on.
    pub fn freeze(&self) {
        self.signal(libc::SIGSTOP);
    }

    /// Lets a frozen server go on (SIGCONT).
    pub fn thaw(&self) {
        self.signal(libc::SIGCONT);
    }

    fn signal(&self, signal: libc::c_int) {
        if let Some(pid) = self.child.as_ref().and_then(Child::id) {
            // SAFETY: kill(2) on our own child's pid; no memory is involved.
            unsafe {
                libc::kill(pid as libc::pid_t, signal);
            }
        }
    }

    /// Kills the server (SIGKILL) and waits for it: a dev server's data is gone with it.
    pub async fn kill(&mut self) {
        self.thaw();
        if let Some(mut child) = self.child.take() {
            let _ = child.kill().await;
            let _ = child.wait().await;
        }
    }

    /// The last lines of the server's log (the root token redacted).
    pub fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(20)..].join("\n").replace(&self.root_token, "<redacted>")
    }
}

impl Drop for LocalBao {
    fn drop(&mut self) {
        if let Some(child) = self.child.as_mut() {
            if let Some(pid) = child.id() {
                // SAFETY: as in `signal`; a frozen server is continued so that it can die.
                unsafe {
                    libc::kill(pid as libc::pid_t, libc::SIGCONT);
                }
            }
            let _ = child.start_kill();
        }
    }
}

/// BAO_* and VAULT_* of the test's environment would reach the server and the CLI.
fn clean_env(cmd: &mut Command) {
    for (name, _) in std::env::vars_os() {
        let name = name.to_string_lossy().into_owned();
        if name.starts_with("BAO_") || name.starts_with("VAULT_") {
            cmd.env_remove(name);
        }
    }
}

/// A free port whose successor is free too: the dev server's cluster listener takes it.
fn free_port_pair() -> Result<u16, Error> {
    for _ in 0..50 {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").map_err(io_err("finding a free port"))?;
        let port = listener.local_addr().map_err(io_err("finding a free port"))?.port();
        if port < u16::MAX && std::net::TcpListener::bind(("127.0.0.1", port + 1)).is_ok() {
            return Ok(port);
        }
    }
    Err(Error::Io {
        context: "finding two free neighbouring ports".into(),
        source: std::io::Error::from(std::io::ErrorKind::AddrInUse),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_dev_server_answers_and_has_kv_v2_and_takes_transit() {
        let bao = LocalBao::start().await.unwrap();
        bao.bao(&["secrets", "enable", "transit"]).await.unwrap();
        bao.bao(&["write", "-f", "transit/keys/k"]).await.unwrap();
        assert_eq!(bao.field("latest_version", &["read", "transit/keys/k"]).await.unwrap(), "1");
        bao.bao(&["kv", "put", "secret/x", "a=b"]).await.unwrap();
        assert_eq!(bao.field("a", &["kv", "get", "secret/x"]).await.unwrap(), "b");
        assert!(!bao.log_tail().contains(bao.root_token()));
    }
}

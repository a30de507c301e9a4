//! The one way to use the local stack from outside: start `xtask dev` as a child process,
//! wait until it has written its env file (etcd and the broker answer by then), hand its
//! `KEY=value` pairs to whoever runs against it, stop it with SIGINT.
//!
//! `dev --run -- CMD` (ci/blackbox, the ops crate's tests), the bench scenario and this crate's
//! tests all go through [`DevProcess`]. The stack runs in a process of its own so that its pid
//! is the broker's (`BROKER_PID`, read by `bench --cpu-of`) and a crash of the command cannot
//! take the stack's clean-up with it.

use std::collections::BTreeMap;
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicI32, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use local_etcd::EtcdVersion;

/// How long a stack may take to answer: etcd with auth, then the broker.
const START_TIMEOUT: Duration = Duration::from_secs(60);
/// How long a stopping stack may take before it is killed: the broker's 15 s shutdown grace
/// (server.rs), then local-etcd's stop (SIGTERM, SIGKILL after 5 s), with some slack.
const STOP_TIMEOUT: Duration = Duration::from_secs(30);

/// The variables `dev` writes to `<dir>/env`, in that order; `dev --run` exports all of them.
pub const ENV_KEYS: [&str; 16] = [
    "BROKER_URL",
    "BROKER_USERNAME",
    "BROKER_PASSWORD",
    "ETCD_ENDPOINTS",
    "ETCD_ROOT_USERNAME",
    "ETCD_ROOT_PASSWORD",
    "ETCDCTL",
    "METRICS_URL",
    "BROKER_PID",
    "ETCD_PID",
    // etcd's https endpoint with client-certificate auth (certificate bindings), the CA that
    // verifies it and signs client certificates, and the plan whose bindings are certificates.
    "ETCD_TLS_ENDPOINTS",
    "ETCD_CA_FILE",
    "CERTIFICATE_PLAN_ID",
    // The plan whose bindings expire and can be rotated.
    "ROTATING_PLAN_ID",
    // The tenant proxy's URL, and the plan whose instances' values it encrypts (its bindings
    // name the proxy); empty with `dev --no-proxy`.
    "PROXY_ENDPOINTS",
    "PROXY_PLAN_ID",
];

/// What the stack is started with: the flags of `dev` that a caller may want to choose.
#[derive(Debug, Clone)]
pub struct StackOptions {
    pub etcd_version: EtcdVersion,
    pub bcrypt_cost: Option<u32>,
    pub broker_port: u16,
    pub metrics_port: u16,
    pub etcd_port: u16,
    pub proxy_port: u16,
    /// Whether the stack runs the tenant proxy (`dev --no-proxy` when not): the bench and the
    /// soak measure the broker's process alone.
    pub proxy: bool,
}

impl Default for StackOptions {
    /// etcd 3.5 at its default bcrypt cost, every port free.
    fn default() -> Self {
        StackOptions {
            etcd_version: EtcdVersion::V3_5,
            bcrypt_cost: None,
            broker_port: 0,
            metrics_port: 0,
            etcd_port: 0,
            proxy_port: 0,
            proxy: true,
        }
    }
}

/// A running `xtask dev`: its env, its folder (broker.toml, etcd.log, dev.log); stopped on
/// drop.
pub struct DevProcess {
    child: Child,
    /// The env file's `KEY=value` pairs (see [`ENV_KEYS`]).
    pub env: BTreeMap<String, String>,
    dir: PathBuf,
}

impl DevProcess {
    /// Starts `xtask dev` (the binary `xtask`, usually `std::env::current_exe()`) with its files
    /// in `dir`, and returns once its env file exists. A stack that exits or does not answer
    /// within a minute is an error quoting its log.
    ///
    /// An env file left in `dir` by an earlier stack is removed first and, since that child
    /// could still be writing one, a file counts only when its `BROKER_PID` is this child's:
    /// otherwise the caller would get the old stack's URLs and passwords.
    pub fn start(xtask: &Path, options: &StackOptions, dir: &Path) -> Result<DevProcess> {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
        let env_file = dir.join("env");
        match std::fs::remove_file(&env_file) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                return Err(e).with_context(|| format!("cannot remove the old {}", env_file.display()))
            }
            _ => {}
        }
        let log = dir.join("dev.log");
        let log_file =
            std::fs::File::create(&log).with_context(|| format!("cannot write {}", log.display()))?;
        let mut command = Command::new(xtask);
        command.arg("dev").arg("--dir").arg(dir);
        command.args(["--etcd-version", &options.etcd_version.to_string()]);
        command.args(["--broker-port", &options.broker_port.to_string()]);
        command.args(["--metrics-port", &options.metrics_port.to_string()]);
        command.args(["--etcd-port", &options.etcd_port.to_string()]);
        command.args(["--proxy-port", &options.proxy_port.to_string()]);
        if !options.proxy {
            command.arg("--no-proxy");
        }
        if let Some(cost) = options.bcrypt_cost {
            command.args(["--bcrypt-cost", &cost.to_string()]);
        }
        // A group of its own: a terminal's Ctrl-C reaches this process and the command of
        // `dev --run`, never the stack, which is stopped after them; and a stack that must be
        // killed is killed with its etcd (the group's other member).
        let child = command
            .process_group(0)
            .stdin(Stdio::null())
            .stdout(log_file.try_clone()?)
            .stderr(log_file)
            .spawn()
            .with_context(|| format!("cannot run {} dev", xtask.display()))?;
        let mut stack = DevProcess { child, env: BTreeMap::new(), dir: dir.to_owned() };
        let own_pid = stack.child.id().to_string();
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            if let Ok(text) = std::fs::read_to_string(&env_file) {
                let env = parse_env(&text);
                if env.get("BROKER_PID") == Some(&own_pid)
                    && ENV_KEYS.iter().all(|key| env.contains_key(*key))
                {
                    stack.env = env;
                    return Ok(stack);
                }
            }
            if stack.child.try_wait()?.is_some() {
                bail!("the local stack did not start:\n{}", log_text(&log));
            }
            // Dropping the stack stops it.
            if let Some(signal) = caught_signal() {
                return Err(Interrupted(signal).into());
            }
            if Instant::now() > deadline {
                bail!("the local stack did not start within {START_TIMEOUT:?}:\n{}", log_text(&log));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The folder holding broker.toml, etcd.log and dev.log.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Stops the stack (SIGINT: the broker drains, etcd stops); kills it if it takes longer
    /// than 30 s. An error, quoting the end of dev.log, when it did not exit cleanly.
    pub fn stop(mut self) -> Result<()> {
        let status = self.stop_child(STOP_TIMEOUT)?;
        if !status.success() {
            let log = self.dir.join("dev.log");
            bail!("the local stack exited with {status}; the end of {}:\n{}", log.display(), log_tail(&log));
        }
        Ok(())
    }

    fn stop_child(&mut self, timeout: Duration) -> Result<ExitStatus> {
        if let Some(status) = self.child.try_wait()? {
            return Ok(status);
        }
        signal(self.child.id(), libc::SIGINT);
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait()? {
                return Ok(status);
            }
            if Instant::now() > deadline {
                // The whole group (dev started it as its leader): SIGKILL gives dev no chance
                // to stop its etcd.
                if let Ok(group) = libc::pid_t::try_from(self.child.id()) {
                    // SAFETY: kill(2) of our own child's process group, whose leader is not
                    // reaped yet, so the group id cannot name anyone else's.
                    unsafe { libc::kill(-group, libc::SIGKILL) };
                }
                let _ = self.child.kill();
                return Ok(self.child.wait()?);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for DevProcess {
    /// A stack is never left running, whatever happened to its user.
    fn drop(&mut self) {
        let _ = self.stop_child(STOP_TIMEOUT);
    }
}

/// `KEY=value` lines (the env file's format) as pairs; other lines are ignored.
pub fn parse_env(text: &str) -> BTreeMap<String, String> {
    text.lines().filter_map(|l| l.split_once('=')).map(|(k, v)| (k.to_owned(), v.to_owned())).collect()
}

/// How much of dev.log a failed stop quotes: the reason is at its end, and a whole log of a
/// long run would bury the output of the command before it.
const LOG_TAIL_LINES: usize = 20;

/// The last [`LOG_TAIL_LINES`] lines of a log, for an error that must say why.
pub fn log_tail(path: &Path) -> String {
    let text = log_text(path);
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(LOG_TAIL_LINES)..].join("\n")
}

fn log_text(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| format!("({}: {e})", path.display()))
}

fn signal(pid: u32, signal: libc::c_int) {
    if let Ok(pid) = libc::pid_t::try_from(pid) {
        // SAFETY: kill(2) with a pid of our own child; it cannot affect this process's memory.
        unsafe { libc::kill(pid, signal) };
    }
}

/// The last stop signal caught by [`catch_stop_signals`]' handler (0: none).
static CAUGHT: AtomicI32 = AtomicI32::new(0);

/// How many SIGTERMs were caught: each is forwarded to the command of `dev --run`.
static TERMS: AtomicUsize = AtomicUsize::new(0);

extern "C" fn remember(signal: libc::c_int) {
    CAUGHT.store(signal, Ordering::SeqCst);
    if signal == libc::SIGTERM {
        TERMS.fetch_add(1, Ordering::SeqCst);
    }
}

/// From now on SIGINT and SIGTERM do not end this process: they are remembered for
/// [`caught_signal`], so that the tool stops what it started (a stack's Drop stops it, a
/// temporary folder's Drop removes it) and exits with [`Interrupted`]. Installed before
/// anything is started: a signal while a stack starts (up to a minute) would otherwise leave
/// the stack running.
///
/// A handler, not SIG_IGN: handlers are reset by exec, so the programs this process starts
/// still get the default behaviour.
pub fn catch_stop_signals() {
    for sig in [libc::SIGINT, libc::SIGTERM] {
        // SAFETY: the handler only stores into an atomic, which is async-signal-safe.
        unsafe { libc::signal(sig, remember as extern "C" fn(libc::c_int) as libc::sighandler_t) };
    }
}

/// The last stop signal caught, if any (it stays caught: the whole run is being stopped).
pub fn caught_signal() -> Option<i32> {
    Some(CAUGHT.load(Ordering::SeqCst)).filter(|s| *s != 0)
}

/// The error of a run stopped by SIGINT or SIGTERM: main exits with 128 + the signal, as a
/// shell reports a process the signal ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Interrupted(pub i32);

impl Interrupted {
    /// The exit code: 128 + the signal.
    pub fn exit_code(self) -> i32 {
        128 + self.0
    }
}

impl std::fmt::Display for Interrupted {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let name = match self.0 {
            libc::SIGINT => "SIGINT".to_owned(),
            libc::SIGTERM => "SIGTERM".to_owned(),
            other => format!("signal {other}"),
        };
        write!(f, "stopped by {name}")
    }
}

impl std::error::Error for Interrupted {}

/// `command.output()`, with its stderr shown (`show_stderr`) or captured, unless a stop signal
/// is caught meanwhile: then the program is killed (what it measured is thrown away with the
/// run) and the error is [`Interrupted`].
pub fn output_unless_interrupted(command: &mut Command, show_stderr: bool) -> Result<std::process::Output> {
    use std::io::Read as _;
    let stderr = if show_stderr { Stdio::inherit() } else { Stdio::piped() };
    let mut child = command.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(stderr).spawn()?;
    // Read as the program writes, so that a full pipe never blocks it.
    let drain = |pipe: Option<Box<dyn std::io::Read + Send>>| {
        std::thread::spawn(move || {
            let mut bytes = Vec::new();
            if let Some(mut pipe) = pipe {
                let _ = pipe.read_to_end(&mut bytes);
            }
            bytes
        })
    };
    let stdout = drain(child.stdout.take().map(|p| Box::new(p) as Box<dyn std::io::Read + Send>));
    let stderr = drain(child.stderr.take().map(|p| Box::new(p) as Box<dyn std::io::Read + Send>));
    let status = loop {
        if let Some(status) = child.try_wait()? {
            break status;
        }
        if let Some(signal) = caught_signal() {
            let _ = child.kill();
            let _ = child.wait();
            return Err(Interrupted(signal).into());
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let join = |reader: std::thread::JoinHandle<Vec<u8>>| reader.join().unwrap_or_default();
    Ok(std::process::Output { status, stdout: join(stdout), stderr: join(stderr) })
}

/// `dev --run`: starts the stack in `dir`, runs `command` with the stack's env added to its
/// environment, stops the stack, and returns the command's exit code (128 + the signal when a
/// signal ended it). A SIGINT or SIGTERM before the command runs stops the stack and is an
/// [`Interrupted`] error.
///
/// While the command runs, SIGINT and SIGTERM do not end this process, which stops the stack
/// once the command exits. The command stays in this process's process group, the terminal's
/// foreground one, so that it can read the terminal (a shell, a prompt) and a Ctrl-C reaches it
/// directly from the terminal: forwarding SIGINT as well would deliver it twice. SIGTERM, sent
/// to this process alone (by a CI runner, `timeout`, `kill`), is forwarded. A SIGINT sent to
/// this process alone is not: the command decides when the run ends. (The stack has a group of
/// its own, so neither reaches it before the command is done.)
pub fn run_command(xtask: &Path, options: &StackOptions, dir: &Path, command: &[String]) -> Result<i32> {
    let (program, args) = command.split_first().context("--run needs a command")?;
    catch_stop_signals();
    let stack = DevProcess::start(xtask, options, dir)?;
    eprintln!(
        "dev: etcd at {}, broker at {}; running {program}",
        stack.env["ETCD_ENDPOINTS"], stack.env["BROKER_URL"]
    );
    let mut child = Command::new(program)
        .args(args)
        .envs(&stack.env)
        .spawn()
        .with_context(|| format!("cannot run '{program}'"))?;
    let mut forwarded = TERMS.load(Ordering::SeqCst);
    let status = loop {
        if let Some(status) = child.try_wait()? {
            break status;
        }
        let terms = TERMS.load(Ordering::SeqCst);
        if terms > forwarded {
            signal(child.id(), libc::SIGTERM);
            forwarded = terms;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    // The command's code is the result (ci/blackbox's exit code is the suite's): a stack that
    // stopped badly after the command is worth a warning, not a different verdict.
    if let Err(e) = stack.stop() {
        eprintln!("dev: warning: {e:#}");
    }
    Ok(exit_code(status))
}

/// A shell's `$?` for a finished process.
fn exit_code(status: ExitStatus) -> i32 {
    use std::os::unix::process::ExitStatusExt;
    status.code().unwrap_or_else(|| 128 + status.signal().unwrap_or(0))
}

/// A second broker on a stack's config, on ports of its own, killed when dropped.
pub struct SecondBroker {
    child: std::process::Child,
    listen_port: u16,
    metrics_port: u16,
    log_path: PathBuf,
    started: Instant,
}

impl SecondBroker {
    /// Starts `broker serve` on the stack's broker.toml with `env` added (settings override
    /// the file as `ETCD_BROKER__SECTION__KEY`); its log goes to `<stack dir>/NAME.log`.
    pub fn start(
        broker: &Path,
        stack: &DevProcess,
        name: &str,
        env: &[(&str, &str)],
    ) -> Result<SecondBroker> {
        SecondBroker::start_with_config(broker, stack, name, &stack.dir().join("broker.toml"), env)
    }

    /// [`SecondBroker::start`] on `config` (a changed copy of the stack's, e.g. with settings
    /// that environment overrides cannot reach, such as a plan's).
    pub fn start_with_config(
        broker: &Path,
        stack: &DevProcess,
        name: &str,
        config: &Path,
        env: &[(&str, &str)],
    ) -> Result<SecondBroker> {
        let port = |l: &std::net::TcpListener| l.local_addr().map(|a| a.port());
        let (a, b) =
            (std::net::TcpListener::bind("127.0.0.1:0")?, std::net::TcpListener::bind("127.0.0.1:0")?);
        let (listen_port, metrics_port) = (port(&a)?, port(&b)?);
        drop((a, b));
        let log_path = stack.dir().join(format!("{name}.log"));
        let log = std::fs::File::create(&log_path)?;
        let started = Instant::now();
        let child = Command::new(broker)
            .args(["serve", "--config"])
            .arg(config)
            .env("ETCD_BROKER__LISTEN__PORT", listen_port.to_string())
            .env("ETCD_BROKER__METRICS__PORT", metrics_port.to_string())
            .envs(env.iter().copied())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .with_context(|| format!("cannot run {}", broker.display()))?;
        Ok(SecondBroker { child, listen_port, metrics_port, log_path, started })
    }

    /// The time from its start until it answered the catalog. One that exits or does not
    /// answer within 30 s is an error quoting the end of its log (which lives in the work
    /// folder, removed as the error returns).
    pub fn answered(&mut self, stack: &DevProcess) -> Result<Duration> {
        let outcome = tokio::runtime::Builder::new_current_thread().enable_all().build()?.block_on(async {
            let http = reqwest::Client::new();
            let url = format!("http://127.0.0.1:{}/v2/catalog", self.listen_port);
            while self.started.elapsed() < Duration::from_secs(30) {
                if let Some(signal) = caught_signal() {
                    return Err(Interrupted(signal).into());
                }
                // Its log says why; waiting out the 30 s would add nothing.
                if let Some(status) = self.child.try_wait()? {
                    return Ok(Err(format!("exited with {status}")));
                }
                let request = http
                    .get(&url)
                    .basic_auth(&stack.env["BROKER_USERNAME"], Some(&stack.env["BROKER_PASSWORD"]))
                    .header("X-Broker-API-Version", "2.17");
                if request.send().await.is_ok() {
                    return Ok(Ok(self.started.elapsed()));
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            anyhow::Ok(Err("did not answer within 30 s".to_owned()))
        });
        outcome?.map_err(|failure| {
            anyhow::anyhow!("the second broker {failure}; the end of its log:\n{}", log_tail(&self.log_path))
        })
    }

    /// The stack's env with this broker's URLs and pid in place of the stack's broker.
    pub fn env(&self, stack: &DevProcess) -> BTreeMap<String, String> {
        let mut env = stack.env.clone();
        env.insert("BROKER_URL".into(), format!("http://127.0.0.1:{}", self.listen_port));
        env.insert("METRICS_URL".into(), format!("http://127.0.0.1:{}/metrics", self.metrics_port));
        env.insert("BROKER_PID".into(), self.child.id().to_string());
        env
    }
}

impl Drop for SecondBroker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    #[test]
    fn env_lines_become_pairs_and_values_keep_their_equal_signs() {
        let env = parse_env("A=1\nB=x=y\n\nnoise\nC=\n");
        assert_eq!(env["A"], "1");
        assert_eq!(env["B"], "x=y");
        assert_eq!(env["C"], "");
        assert_eq!(env.len(), 3);
    }

    /// A stand-in for `xtask dev` (called as `FAKE dev --dir DIR ...`): a shell script that
    /// writes a complete env file naming itself as the broker, then runs `then`.
    pub(crate) fn fake_dev(folder: &Path, then: &str) -> PathBuf {
        use std::os::unix::fs::PermissionsExt;
        let keys: String = ENV_KEYS
            .iter()
            .filter(|k| **k != "BROKER_PID")
            .map(|k| format!("echo {k}=http://127.0.0.1:1; "))
            .collect();
        let script = format!(
            "#!/bin/sh\ndir=$3\n{{ {keys}echo BROKER_PID=$$; }} > \"$dir/env.tmp\"\nmv \"$dir/env.tmp\" \"$dir/env\"\n{then}\n"
        );
        let path = folder.join("fake-xtask");
        std::fs::write(&path, script).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
        path
    }

    #[test]
    fn a_leftover_env_file_is_not_taken_for_the_new_stacks() {
        let folder = tempfile::tempdir().unwrap();
        let dir = folder.path().join("stack");
        std::fs::create_dir(&dir).unwrap();
        let old: String = ENV_KEYS.iter().map(|k| format!("{k}=old\n")).collect();
        std::fs::write(dir.join("env"), old).unwrap();
        // The new stack takes a moment before it writes its own file, as `dev` does.
        let fake = fake_dev(folder.path(), "exec sleep 30");
        let script = std::fs::read_to_string(&fake).unwrap().replacen("dir=$3\n", "dir=$3\nsleep 0.3\n", 1);
        std::fs::write(&fake, script).unwrap();
        let stack = DevProcess::start(&fake, &StackOptions::default(), &dir).unwrap();
        assert_eq!(stack.env["BROKER_PID"], stack.child.id().to_string());
        assert_eq!(stack.env["BROKER_URL"], "http://127.0.0.1:1");
    }

    /// Whether `pid` runs (a zombie does not: its parent may be a pid 1 that never reaps).
    pub(super) fn alive(pid: &str) -> bool {
        std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .is_ok_and(|stat| stat.rsplit_once(") ").is_some_and(|(_, rest)| !rest.starts_with('Z')))
    }

    /// Whether `pid` is gone within 5 s (a killed process still has to be scheduled to exit).
    pub(super) fn ends(pid: &str) -> bool {
        let deadline = Instant::now() + Duration::from_secs(5);
        while alive(pid) {
            if Instant::now() > deadline {
                return false;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        true
    }

    #[test]
    fn a_stack_that_will_not_stop_is_killed_with_its_whole_group() {
        let folder = tempfile::tempdir().unwrap();
        let dir = folder.path().join("stack");
        // Ignores SIGINT, as a hung dev would, and has a child of its own, as dev has etcd.
        let fake = fake_dev(folder.path(), "trap '' INT\nsleep 300 &\necho $! > \"$dir/grandchild\"\nwait");
        let mut stack = DevProcess::start(&fake, &StackOptions::default(), &dir).unwrap();
        let file = dir.join("grandchild");
        let deadline = Instant::now() + Duration::from_secs(10);
        let grandchild = loop {
            match std::fs::read_to_string(&file) {
                Ok(pid) if pid.ends_with('\n') => break pid.trim().to_owned(),
                _ => assert!(Instant::now() < deadline, "the fake stack started no child"),
            }
            std::thread::sleep(Duration::from_millis(10));
        };
        assert!(alive(&grandchild));
        let status = stack.stop_child(Duration::from_millis(300)).unwrap();
        assert!(!status.success());
        assert!(ends(&grandchild), "the stack's child {grandchild} survived the kill");
    }

    #[test]
    fn dev_run_returns_the_commands_code_when_the_stack_stops_badly() {
        let folder = tempfile::tempdir().unwrap();
        // Exits 1 on SIGINT, as a stack whose broker failed to drain does.
        let fake = fake_dev(
            folder.path(),
            "for i in $(seq -w 1 30); do echo log line $i; done\ntrap 'exit 1' INT\nwhile :; do sleep 0.05; done",
        );
        let dir = folder.path().join("stack");
        let command = ["sh".to_owned(), "-c".to_owned(), "exit 3".to_owned()];
        assert_eq!(run_command(&fake, &StackOptions::default(), &dir, &command).unwrap(), 3);

        let stack = DevProcess::start(&fake, &StackOptions::default(), &dir).unwrap();
        let log = dir.join("dev.log");
        let deadline = Instant::now() + Duration::from_secs(10);
        while !log_text(&log).contains("log line 30") {
            assert!(Instant::now() < deadline, "the fake stack wrote no log");
            std::thread::sleep(Duration::from_millis(10));
        }
        let error = stack.stop().unwrap_err().to_string();
        assert!(error.contains("log line 11\n") && error.ends_with("log line 30"), "{error}");
        assert!(!error.contains("log line 10"), "the whole log: {error}");
    }

    #[test]
    fn a_signal_ending_a_command_gives_the_shell_exit_code() {
        let status = Command::new("sh").args(["-c", "kill -TERM $$"]).status().unwrap();
        assert_eq!(exit_code(status), 128 + libc::SIGTERM);
        let status = Command::new("sh").args(["-c", "exit 7"]).status().unwrap();
        assert_eq!(exit_code(status), 7);
    }
}

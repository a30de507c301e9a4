//! Throw-away etcd servers for the broker's integration tests and `xtask dev`.
//!
//! The broker needs a real etcd with authentication enabled, because everything it does
//! (users, roles, prefix permissions) only means something under auth. [`LocalEtcd::start`]
//! runs the project-local etcd binary (installed by `scripts/install-tools.sh` into `tools/`)
//! on free 127.0.0.1 ports, creates the `root` user and enables auth, and kills the process
//! when dropped, so a test never leaves a server behind. [`LocalEtcd::start_cluster`] starts
//! several members of one cluster, for tests of a member that stops. [`bao::LocalBao`] is the
//! same for an OpenBao dev server (the broker's secret backends).

#![warn(missing_docs)]

pub mod bao;

use std::fmt;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::time::{Duration, Instant};

use etcd_client::{Client, ConnectOptions};
use tokio::process::{Child, Command};
use tonic::Code;

/// The etcd versions the broker supports and is tested against.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EtcdVersion {
    /// etcd 3.5, the default.
    V3_5,
    /// etcd 3.4, still common on older platforms.
    V3_4,
}

impl EtcdVersion {
    /// The version chosen by the environment variable `ETCD_VERSION` ("3.5" or "3.4"), so CI
    /// can run the same tests against both; unset or empty means 3.5.
    pub fn from_env() -> Result<Self, Error> {
        match std::env::var("ETCD_VERSION") {
            Ok(s) if !s.trim().is_empty() => Self::parse(&s),
            _ => Ok(EtcdVersion::V3_5),
        }
    }

    /// Parses "3.5" or "3.4" (a leading "v" is accepted), for flags and environment variables.
    pub fn parse(s: &str) -> Result<Self, Error> {
        match s.trim().trim_start_matches('v') {
            "3.5" => Ok(EtcdVersion::V3_5),
            "3.4" => Ok(EtcdVersion::V3_4),
            _ => Err(Error::UnknownVersion(s.to_string())),
        }
    }
}

impl fmt::Display for EtcdVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            EtcdVersion::V3_5 => "3.5",
            EtcdVersion::V3_4 => "3.4",
        })
    }
}

/// The project-local tools folder holding the etcd binaries: `$ETCD_BROKER_TOOLS` if set,
/// else `<workspace root>/tools`, where `scripts/install-tools.sh` puts them.
pub fn tools_dir() -> PathBuf {
    match std::env::var_os("ETCD_BROKER_TOOLS") {
        Some(dir) if !dir.is_empty() => PathBuf::from(dir),
        _ => Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap().join("tools"),
    }
}

/// The `etcd` server binary of a version in [`tools_dir`]; an error says how to install it.
pub fn etcd_binary(v: EtcdVersion) -> Result<PathBuf, Error> {
    etcd_binary_in(&tools_dir(), v)
}

/// The `etcdctl` binary of a version in [`tools_dir`], for humans and scripts poking at a
/// local server; an error says how to install it.
pub fn etcdctl_binary(v: EtcdVersion) -> Result<PathBuf, Error> {
    etcdctl_binary_in(&tools_dir(), v)
}

/// Like [`etcd_binary`] but in a given tools folder (testable without touching the environment).
pub fn etcd_binary_in(tools: &Path, v: EtcdVersion) -> Result<PathBuf, Error> {
    binary_in(tools, v, "etcd")
}

/// Like [`etcdctl_binary`] but in a given tools folder.
pub fn etcdctl_binary_in(tools: &Path, v: EtcdVersion) -> Result<PathBuf, Error> {
    binary_in(tools, v, "etcdctl")
}

fn binary_in(tools: &Path, v: EtcdVersion, name: &str) -> Result<PathBuf, Error> {
    let path = tools.join(format!("etcd-v{v}")).join("bin").join(name);
    if path.is_file() {
        Ok(path)
    } else {
        Err(Error::MissingBinary(path))
    }
}

/// How to start a [`LocalEtcd`]; `Options::default()` suits tests.
#[derive(Clone, Debug)]
pub struct Options {
    /// Which etcd to run.
    pub version: EtcdVersion,
    /// Client port on 127.0.0.1; 0 picks a free one.
    pub client_port: u16,
    /// etcd's `--bcrypt-cost`; a low value (4) makes user creation fast in tests.
    pub bcrypt_cost: Option<u32>,
    /// Data directory; `None` uses a temporary one removed on drop. A directory that already
    /// holds etcd data is reused as is (auth already set up), which needs `root_password`.
    pub data_dir: Option<PathBuf>,
    /// Password of `root`; `None` generates 32 random hex characters.
    pub root_password: Option<String>,
    /// File for etcd's stdout and stderr; `None` keeps them in a temporary file removed on
    /// drop (only used to explain a failed start).
    pub log_file: Option<PathBuf>,
    /// Issue JWTs (`--auth-token jwt`, RS256 with a fresh key pair) instead of etcd's simple
    /// tokens: a JWT carries the auth revision it was issued at, so every user or role change
    /// makes clients' tokens stale. Production clusters are told to use JWTs.
    pub signed_tokens: bool,
    /// etcd's `--max-txn-ops` (default 128): a low value lets tests meet etcd's refusal of a
    /// transaction with too many operations.
    pub max_txn_ops: Option<u32>,
    /// etcd's `--quota-backend-bytes`: a small quota lets tests fill etcd's disk space until
    /// it raises its NOSPACE alarm and refuses writes.
    pub quota_backend_bytes: Option<u64>,
    /// etcd's `--auto-compaction-mode periodic --auto-compaction-retention`: etcd compacts
    /// away revisions older than this (in whole seconds), as production clusters are told to.
    /// `None` (etcd's default) keeps every revision: memory and disk grow with every write,
    /// which a long-running stack (`xtask dev`, the soak) must not do.
    pub auto_compaction: Option<Duration>,
    /// Also serve https on a second free port with `--client-cert-auth`, where a client
    /// certificate signed by the trusted CA authenticates as the user its CN names (the
    /// broker's certificate bindings). The http endpoint stays as it is. [`Self`] of
    /// [`LocalEtcd::start`] only; [`LocalEtcd::start_cluster`] ignores it.
    pub client_cert_auth: Option<ClientCertAuth>,
}

/// The files of etcd's https listener with client-certificate authentication.
#[derive(Clone, Debug)]
pub struct ClientCertAuth {
    /// The server certificate (PEM), valid for 127.0.0.1.
    pub cert_file: PathBuf,
    /// Its private key (PEM).
    pub key_file: PathBuf,
    /// The CA whose client certificates etcd accepts (`--trusted-ca-file`).
    pub trusted_ca_file: PathBuf,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            version: EtcdVersion::V3_5,
            client_port: 0,
            bcrypt_cost: None,
            data_dir: None,
            root_password: None,
            log_file: None,
            signed_tokens: false,
            max_txn_ops: None,
            quota_backend_bytes: None,
            auto_compaction: None,
            client_cert_auth: None,
        }
    }
}

/// Why a local etcd could not be found, started or set up. Never contains the root password.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// `ETCD_VERSION` or a flag named a version we do not ship.
    #[error("unsupported etcd version {0:?}: expected \"3.5\" or \"3.4\"")]
    UnknownVersion(String),
    /// The tools were not installed.
    #[error("{} not found: run `scripts/install-tools.sh` (or `make tools`) to install etcd", .0.display())]
    MissingBinary(PathBuf),
    /// A file or process operation failed.
    #[error("{context}: {source}")]
    Io {
        /// What was being done.
        context: String,
        /// The underlying failure.
        source: std::io::Error,
    },
    /// Reusing a data directory needs the root password it was set up with.
    #[error("data dir {} already holds etcd data: root_password must be given", .0.display())]
    PasswordNeeded(PathBuf),
    /// etcd exited while starting.
    #[error("etcd {version} exited during startup ({status}); log tail:\n{log_tail}")]
    Exited {
        /// Which etcd.
        version: EtcdVersion,
        /// How it exited.
        status: ExitStatus,
        /// The last lines of etcd's log (root password redacted).
        log_tail: String,
    },
    /// etcd did not answer in time.
    #[error("etcd {version} at {endpoint} did not answer within 20 s; log tail:\n{log_tail}")]
    Timeout {
        /// Which etcd.
        version: EtcdVersion,
        /// Where it should have answered.
        endpoint: String,
        /// The last lines of etcd's log (root password redacted).
        log_tail: String,
    },
    /// An etcd request failed.
    #[error("{context}: {source}")]
    Etcd {
        /// What was being done.
        context: &'static str,
        /// The underlying failure.
        source: etcd_client::Error,
    },
}

pub(crate) fn io_err(context: impl Into<String>) -> impl FnOnce(std::io::Error) -> Error {
    let context = context.into();
    move |source| Error::Io { context, source }
}

fn etcd_err(context: &'static str) -> impl FnOnce(etcd_client::Error) -> Error {
    move |source| Error::Etcd { context, source }
}

const ROOT: &str = "root";
const START_TIMEOUT: Duration = Duration::from_secs(20);

/// A running etcd with auth enabled; the process is killed (and reaped) when this is dropped.
pub struct LocalEtcd {
    child: Option<Child>,
    /// How the process was started, to start it again after [`Self::kill`].
    launch: Launch,
    version: EtcdVersion,
    client_port: u16,
    /// The https port with client-certificate auth, when asked for.
    tls_port: Option<u16>,
    root_password: String,
    etcdctl: PathBuf,
    _temp: tempfile::TempDir,
}

impl LocalEtcd {
    /// Starts etcd on free ports (retrying up to 3 times if a port is taken meanwhile), waits
    /// until it answers, creates user `root` with role `root`, enables auth, and returns once
    /// an authenticated root client works.
    pub async fn start(opts: Options) -> Result<LocalEtcd, Error> {
        let etcd_bin = etcd_binary(opts.version)?;
        let etcdctl = etcdctl_binary(opts.version)?;
        let temp = temp_dir()?;
        let data_dir = opts.data_dir.clone().unwrap_or_else(|| temp.path().join("data"));
        let reused = data_dir.join("member").exists();
        let root_password = match (&opts.root_password, reused) {
            (Some(p), _) => p.clone(),
            (None, true) => return Err(Error::PasswordNeeded(data_dir)),
            (None, false) => random_password(),
        };
        let log = opts.log_file.clone().unwrap_or_else(|| temp.path().join("etcd.log"));
        let auth_token = auth_token(opts.signed_tokens, temp.path())?;
        let mut attempt = 0;
        let (child, client_port, launch, tls_port) = loop {
            attempt += 1;
            let port = match opts.client_port {
                0 => free_port()?,
                p => p,
            };
            let ports = (port, free_port()?);
            let tls = match &opts.client_cert_auth {
                Some(files) => Some((free_port()?, files.clone())),
                None => None,
            };
            let tls_port = tls.as_ref().map(|(port, _)| *port);
            let member = Member { name: "local".into(), initial_cluster: None, tls };
            let launch = Launch {
                bin: etcd_bin.clone(),
                opts: opts.clone(),
                data_dir: data_dir.clone(),
                log: log.clone(),
                ports,
                auth_token: auth_token.clone(),
                member,
            };
            let mut child = launch.spawn()?;
            let exit = match wait_ready(&mut child, port).await {
                Ok(()) => break (child, port, launch, tls_port),
                Err(exit) => exit,
            };
            let _ = child.kill().await;
            let error = startup_error(opts.version, exit, port, &log, &root_password);
            match &error {
                Error::Exited { log_tail, .. }
                    if attempt < 3 && log_tail.contains("address already in use") =>
                {
                    continue
                }
                _ => return Err(error),
            }
        };
        let etcd = LocalEtcd {
            child: Some(child),
            launch,
            version: opts.version,
            client_port,
            tls_port,
            root_password,
            etcdctl,
            _temp: temp,
        };
        if !reused {
            etcd.enable_auth().await?;
        }
        etcd.check_root().await?;
        Ok(etcd)
    }

    /// Starts a cluster of `size` members (`m0`, `m1`, ...) on free ports, with auth enabled as
    /// [`Self::start`] does and one root password; for tests of what the broker does when a
    /// member stops. `opts.client_port` and `opts.data_dir` are not used (each member gets
    /// free ports and a temporary directory). If a port is taken meanwhile (another test's
    /// etcd got it first), the whole cluster is started again on new ports, up to 3 times.
    pub async fn start_cluster(size: usize, opts: Options) -> Result<Vec<LocalEtcd>, Error> {
        let root_password = opts.root_password.clone().unwrap_or_else(random_password);
        let mut attempt = 0;
        loop {
            attempt += 1;
            match Self::start_cluster_once(size, &opts, &root_password).await {
                // The members started so far were dropped, which killed them.
                Err(Error::Exited { log_tail, .. })
                    if attempt < 3 && log_tail.contains("address already in use") => {}
                started => return started,
            }
        }
    }

    /// One try of [`Self::start_cluster`] on free ports.
    async fn start_cluster_once(
        size: usize,
        opts: &Options,
        root_password: &str,
    ) -> Result<Vec<LocalEtcd>, Error> {
        let etcd_bin = etcd_binary(opts.version)?;
        let etcdctl = etcdctl_binary(opts.version)?;
        let mut ports = Vec::new();
        for _ in 0..size {
            ports.push((free_port()?, free_port()?));
        }
        let initial_cluster: Vec<String> =
            ports.iter().enumerate().map(|(i, (_, peer))| format!("m{i}={}", endpoint(*peer))).collect();
        let mut members = Vec::new();
        let mut token: Option<String> = None;
        for (i, &(client_port, peer_port)) in ports.iter().enumerate() {
            let temp = temp_dir()?;
            let log = temp.path().join("etcd.log");
            // Every member signs and checks JWTs with the same key pair (kept in m0's directory).
            let auth_token = match &token {
                Some(token) => token.clone(),
                None => token.insert(auth_token(opts.signed_tokens, temp.path())?).clone(),
            };
            let member =
                Member { name: format!("m{i}"), initial_cluster: Some(initial_cluster.join(",")), tls: None };
            let launch = Launch {
                bin: etcd_bin.clone(),
                opts: opts.clone(),
                data_dir: temp.path().join("data"),
                log: log.clone(),
                ports: (client_port, peer_port),
                auth_token,
                member,
            };
            let child = launch.spawn()?;
            members.push((
                LocalEtcd {
                    child: Some(child),
                    launch,
                    version: opts.version,
                    client_port,
                    tls_port: None,
                    root_password: root_password.to_owned(),
                    etcdctl: etcdctl.clone(),
                    _temp: temp,
                },
                log,
            ));
        }
        // A member serves once a quorum is up, so all are started before any is waited for.
        for (member, log) in &mut members {
            let child = member.child.as_mut().expect("just started");
            if let Err(exit) = wait_ready(child, member.client_port).await {
                return Err(startup_error(opts.version, exit, member.client_port, log, root_password));
            }
        }
        let members: Vec<LocalEtcd> = members.into_iter().map(|(member, _)| member).collect();
        members[0].enable_auth().await?;
        for member in &members {
            member.check_root().await?;
        }
        Ok(members)
    }

    /// Creates user and role `root` and enables auth (on a fresh data directory).
    async fn enable_auth(&self) -> Result<(), Error> {
        let mut c = Client::connect([self.endpoint()], None).await.map_err(etcd_err("connecting to etcd"))?;
        c.user_add(ROOT, self.root_password.as_str(), None).await.map_err(etcd_err("adding user root"))?;
        c.role_add(ROOT).await.map_err(etcd_err("adding role root"))?;
        c.user_grant_role(ROOT, ROOT).await.map_err(etcd_err("granting role root to user root"))?;
        c.auth_enable().await.map_err(etcd_err("enabling auth"))?;
        Ok(())
    }

    /// Fails unless root can log in and read.
    async fn check_root(&self) -> Result<(), Error> {
        let mut c = self.root_client().await?;
        c.get("local-etcd/ready", None).await.map_err(etcd_err("reading as root"))?;
        Ok(())
    }

    /// The client URL to give to the broker and to etcdctl.
    pub fn endpoint(&self) -> String {
        endpoint(self.client_port)
    }

    /// The https client URL with client-certificate auth, when [`Options::client_cert_auth`]
    /// asked for one.
    pub fn tls_endpoint(&self) -> Option<String> {
        self.tls_port.map(|port| format!("https://127.0.0.1:{port}"))
    }

    /// The etcd process's id, for tests that stop and resume it (`kill -STOP`/`-CONT`).
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref()?.id()
    }

    /// Freezes the member (SIGSTOP): it accepts connections but answers nothing, like a hung
    /// or partitioned etcd. [`LocalEtcd::thaw`] lets it go on; a frozen one is still killed
    /// when dropped.
    pub fn freeze(&self) {
        self.signal(libc::SIGSTOP);
    }

    /// Lets a frozen member go on (SIGCONT).
    pub fn thaw(&self) {
        self.signal(libc::SIGCONT);
    }

    fn signal(&self, signal: libc::c_int) {
        if let Some(pid) = self.pid() {
            // SAFETY: kill(2) on our own child's pid; no memory is involved.
            unsafe {
                libc::kill(pid as libc::pid_t, signal);
            }
        }
    }

    /// The client port on 127.0.0.1.
    pub fn client_port(&self) -> u16 {
        self.client_port
    }

    /// Name of the administrative user the broker logs in as.
    pub fn root_username(&self) -> &str {
        ROOT
    }

    /// Password of [`Self::root_username`].
    pub fn root_password(&self) -> &str {
        &self.root_password
    }

    /// Which etcd is running.
    pub fn version(&self) -> EtcdVersion {
        self.version
    }

    /// The etcdctl matching this server's version.
    pub fn etcdctl(&self) -> PathBuf {
        self.etcdctl.clone()
    }

    /// An etcd client logged in as root, refreshing its token when it expires.
    pub async fn root_client(&self) -> Result<Client, Error> {
        let opts = ConnectOptions::new()
            .with_user(ROOT, self.root_password.as_str())
            .with_auto_token_refresh(true)
            .with_connect_timeout(Duration::from_secs(5));
        Client::connect([self.endpoint()], Some(opts)).await.map_err(etcd_err("connecting to etcd as root"))
    }

    /// Kills etcd with SIGKILL, as a crash would (no clean shutdown; a cluster member's peers
    /// see it vanish), for tests of what the broker does meanwhile; [`Self::restart`] brings it
    /// back.
    pub async fn kill(&mut self) -> Result<(), Error> {
        if let Some(mut child) = self.child.take() {
            child.kill().await.map_err(io_err("killing etcd"))?;
        }
        Ok(())
    }

    /// Starts etcd again after [`Self::kill`], with the same data directory, ports and flags
    /// (a cluster member rejoins its cluster), and returns once it serves.
    pub async fn restart(&mut self) -> Result<(), Error> {
        let mut child = self.launch.spawn()?;
        if let Err(exit) = wait_ready(&mut child, self.client_port).await {
            let _ = child.kill().await;
            return Err(startup_error(
                self.version,
                exit,
                self.client_port,
                &self.launch.log,
                &self.root_password,
            ));
        }
        self.child = Some(child);
        Ok(())
    }

    /// Whether etcd exited on its own (it crashed), and then its log (root password redacted),
    /// which says why; `None` while it runs or after [`Self::kill`].
    pub fn crashed(&mut self) -> Option<String> {
        let exited = matches!(self.child.as_mut()?.try_wait(), Ok(Some(_)));
        exited.then(|| {
            self.child = None;
            let log = std::fs::read_to_string(&self.launch.log).unwrap_or_default();
            log.replace(&self.root_password, "<redacted>")
        })
    }

    /// Stops etcd gracefully (SIGTERM, then SIGKILL after 5 s), e.g. at the end of `dev`.
    pub async fn stop(mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        if let Some(pid) = child.id() {
            // SAFETY: plain syscall on the pid of our own, not yet reaped, child.
            unsafe { libc::kill(pid as libc::pid_t, libc::SIGTERM) };
            if tokio::time::timeout(Duration::from_secs(5), child.wait()).await.is_ok() {
                return;
            }
        }
        let _ = child.kill().await;
    }
}

impl Drop for LocalEtcd {
    fn drop(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        let _ = child.start_kill();
        // Reap it so that no zombie is left and the port is free once we return.
        let deadline = Instant::now() + Duration::from_secs(5);
        while matches!(child.try_wait(), Ok(None)) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

fn endpoint(port: u16) -> String {
    format!("http://127.0.0.1:{port}")
}

fn random_password() -> String {
    let mut bytes = [0u8; 16];
    openssl::rand::rand_bytes(&mut bytes).expect("OpenSSL random generator failed");
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Writes an RSA key pair into `dir`; returns etcd's `--auth-token` value that uses it.
fn jwt_keys(dir: &Path) -> Result<String, Error> {
    let openssl_err =
        |e: openssl::error::ErrorStack| io_err("generating the JWT signing key")(std::io::Error::other(e));
    let rsa = openssl::rsa::Rsa::generate(2048).map_err(openssl_err)?;
    let (private, public) = (dir.join("jwt.key"), dir.join("jwt.pub"));
    std::fs::write(&private, rsa.private_key_to_pem().map_err(openssl_err)?)
        .map_err(io_err("writing the JWT signing key"))?;
    std::fs::write(&public, rsa.public_key_to_pem().map_err(openssl_err)?)
        .map_err(io_err("writing the JWT public key"))?;
    Ok(format!("jwt,pub-key={},priv-key={},sign-method=RS256,ttl=10m", public.display(), private.display()))
}

fn temp_dir() -> Result<tempfile::TempDir, Error> {
    tempfile::Builder::new().prefix("local-etcd-").tempdir().map_err(io_err("creating a temporary directory"))
}

/// etcd's `--auth-token`: JWTs signed with a key pair written into `dir`, or simple tokens.
fn auth_token(signed: bool, dir: &Path) -> Result<String, Error> {
    match signed {
        true => jwt_keys(dir),
        false => Ok("simple".to_owned()),
    }
}

/// Why an etcd on `port` did not come up ([`wait_ready`]'s `exit`), with its log's tail.
fn startup_error(
    version: EtcdVersion,
    exit: Option<ExitStatus>,
    port: u16,
    log: &Path,
    password: &str,
) -> Error {
    let log_tail = log_tail(log, password);
    match exit {
        Some(status) => Error::Exited { version, status, log_tail },
        None => Error::Timeout { version, endpoint: endpoint(port), log_tail },
    }
}

fn free_port() -> Result<u16, Error> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").map_err(io_err("finding a free port"))?;
    Ok(listener.local_addr().map_err(io_err("finding a free port"))?.port())
}

/// A member's name, in a cluster every member's peer URL (`--initial-cluster`), and its https
/// port with client-certificate auth, if any.
struct Member {
    name: String,
    initial_cluster: Option<String>,
    tls: Option<(u16, ClientCertAuth)>,
}

/// Everything an etcd process is started with.
struct Launch {
    bin: PathBuf,
    opts: Options,
    data_dir: PathBuf,
    log: PathBuf,
    /// Client and peer port.
    ports: (u16, u16),
    auth_token: String,
    member: Member,
}

impl Launch {
    fn spawn(&self) -> Result<Child, Error> {
        spawn(&self.bin, &self.opts, &self.data_dir, &self.log, self.ports, &self.auth_token, &self.member)
    }
}

fn spawn(
    bin: &Path,
    opts: &Options,
    data_dir: &Path,
    log: &Path,
    (client_port, peer_port): (u16, u16),
    auth_token: &str,
    member: &Member,
) -> Result<Child, Error> {
    // Appended to: a restarted member's log keeps what it said before.
    let log_file = File::options()
        .create(true)
        .append(true)
        .open(log)
        .map_err(io_err(format!("creating {}", log.display())))?;
    let log_err = log_file.try_clone().map_err(io_err("duplicating the log file"))?;
    let (client, peer) = (endpoint(client_port), endpoint(peer_port));
    let mut cmd = Command::new(bin);
    // etcd reads every ETCD_* variable as a flag (ETCD_VERSION among them): start it clean.
    for (name, _) in std::env::vars_os() {
        if name.to_string_lossy().starts_with("ETCD_") {
            cmd.env_remove(name);
        }
    }
    let initial_cluster = member.initial_cluster.clone().unwrap_or_else(|| format!("{}={peer}", member.name));
    cmd.arg("--name").arg(&member.name).arg("--data-dir").arg(data_dir);
    match &member.tls {
        None => cmd.args(["--listen-client-urls", &client, "--advertise-client-urls", &client]),
        Some((tls_port, files)) => {
            let https = format!("https://127.0.0.1:{tls_port}");
            cmd.args([
                "--listen-client-urls",
                &format!("{client},{https}"),
                "--advertise-client-urls",
                &client,
            ])
            .arg("--cert-file")
            .arg(&files.cert_file)
            .arg("--key-file")
            .arg(&files.key_file)
            .arg("--trusted-ca-file")
            .arg(&files.trusted_ca_file)
            .arg("--client-cert-auth")
        }
    };
    cmd.args(["--listen-peer-urls", &peer, "--initial-advertise-peer-urls", &peer]);
    cmd.args(["--initial-cluster", &initial_cluster]);
    cmd.args(["--auth-token", auth_token, "--log-level", "warn"]);
    if opts.version == EtcdVersion::V3_4 {
        cmd.args(["--logger", "zap"]);
    }
    if let Some(cost) = opts.bcrypt_cost {
        cmd.args(["--bcrypt-cost", &cost.to_string()]);
    }
    if let Some(ops) = opts.max_txn_ops {
        cmd.args(["--max-txn-ops", &ops.to_string()]);
    }
    if let Some(bytes) = opts.quota_backend_bytes {
        cmd.args(["--quota-backend-bytes", &bytes.to_string()]);
    }
    if let Some(retention) = opts.auto_compaction {
        // A Go duration: etcd reads a bare number as hours.
        let retention = format!("{}s", retention.as_secs().max(1));
        cmd.args(["--auto-compaction-mode", "periodic", "--auto-compaction-retention", &retention]);
    }
    cmd.stdin(Stdio::null()).stdout(log_file).stderr(log_err).kill_on_drop(true);
    cmd.spawn().map_err(io_err(format!("starting {}", bin.display())))
}

/// Waits until etcd serves requests: `Err(Some(status))` if it exited, `Err(None)` on timeout.
async fn wait_ready(child: &mut Child, port: u16) -> Result<(), Option<ExitStatus>> {
    let opts = ConnectOptions::new()
        .with_connect_timeout(Duration::from_secs(1))
        .with_timeout(Duration::from_secs(2));
    let answers = async {
        loop {
            if let Ok(mut c) = Client::connect([endpoint(port)], Some(opts.clone())).await {
                // Any answer from etcd itself (even "user name is empty" when auth is already
                // enabled in a reused data dir) means it is serving; transport failures do not.
                match c.get("local-etcd/ready", None).await {
                    Ok(_) => return,
                    Err(etcd_client::Error::GRpcStatus(s))
                        if matches!(s.code(), Code::InvalidArgument | Code::PermissionDenied) =>
                    {
                        return
                    }
                    Err(_) => {}
                }
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    };
    tokio::select! {
        () = answers => Ok(()),
        status = child.wait() => Err(status.ok()),
        () = tokio::time::sleep(START_TIMEOUT) => Err(None),
    }
}

/// The last lines of etcd's log, for error messages, with the root password scrubbed.
fn log_tail(log: &Path, password: &str) -> String {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    let tail = lines[lines.len().saturating_sub(20)..].join("\n");
    if password.is_empty() {
        tail
    } else {
        tail.replace(password, "<redacted>")
    }
}

//! The harness: a real etcd (auth on, `ETCD_VERSION`) with two tenants and the proxy's own
//! user, real proxy processes on free ports, a raw gRPC client (the proxy's generated one, so
//! that a test controls exactly which token a request carries), and etcdctl.

use std::io::Read;
use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use etcd_broker_proxy::pb::etcdserverpb::{
    auth_client::AuthClient, cluster_client::ClusterClient, kv_client::KvClient, lease_client::LeaseClient,
    maintenance_client::MaintenanceClient, watch_client::WatchClient, watch_request, AuthenticateRequest,
    LeaseGrantRequest, RangeRequest, WatchCreateRequest, WatchRequest, WatchResponse,
};
use etcd_client::Permission;
use local_etcd::{EtcdVersion, LocalEtcd, Options};
use tonic::transport::Channel;
use tonic::Request;

/// The tenants every test etcd has: each may read and write its own prefix only.
pub const TENANTS: [&str; 2] = ["alice", "bob"];
/// The proxy's own user: it may read and write the proxy's records, nothing else.
pub const PROXY_USER: &str = "proxy";
const PROXY_PASSWORD: &str = "proxy-password";
const PROXY_STATE: &str = "/etcd-broker/proxy/";
/// The broker's binding records, which the proxy's user reads to revoke unbound bindings.
pub const BROKER_BINDINGS: &str = "/etcd-broker/bindings/";
/// The broker's instance records, which hold the data keys of encrypting plans' instances.
pub const BROKER_INSTANCES: &str = "/etcd-broker/instances/";
/// The broker's data prefix (its default), which the proxy's user reads to count the usage of
/// instances with quotas.
pub const BROKER_DATA: &str = "/service_instances/";

/// A tenant's key prefix.
pub fn prefix(user: &str) -> String {
    format!("/tenants/{user}/")
}

/// A test user's password.
pub fn password(user: &str) -> String {
    format!("{user}-password")
}

/// etcd of `ETCD_VERSION` with root, the tenants and the proxy's user.
pub async fn start_etcd() -> LocalEtcd {
    start_etcd_with(Options::default()).await
}

/// The same with other options (the version and bcrypt cost are the tests').
pub async fn start_etcd_with(options: Options) -> LocalEtcd {
    let version = EtcdVersion::from_env().expect("ETCD_VERSION");
    let etcd =
        LocalEtcd::start(Options { version, bcrypt_cost: Some(4), ..options }).await.expect("etcd starts");
    add_users(&etcd).await;
    etcd
}

/// A cluster of `size` members of `ETCD_VERSION`, with root, the tenants and the proxy's user.
pub async fn start_cluster(size: usize) -> Vec<LocalEtcd> {
    let version = EtcdVersion::from_env().expect("ETCD_VERSION");
    let options = Options { version, bcrypt_cost: Some(4), ..Options::default() };
    let members = LocalEtcd::start_cluster(size, options).await.expect("the cluster starts");
    add_users(&members[0]).await;
    members
}

/// The tenants and the proxy's user with their roles, added as root.
async fn add_users(etcd: &LocalEtcd) {
    let mut root = etcd.root_client().await.unwrap();
    let grants = TENANTS.iter().map(|t| (t.to_string(), password(t), prefix(t)));
    let proxy = (PROXY_USER.to_owned(), PROXY_PASSWORD.to_owned(), PROXY_STATE.to_owned());
    for (user, password, prefix) in grants.chain([proxy]) {
        root.user_add(user.as_str(), password, None).await.unwrap();
        root.role_add(user.as_str()).await.unwrap();
        root.role_grant_permission(user.as_str(), Permission::read_write(prefix).with_prefix())
            .await
            .unwrap();
        root.user_grant_role(user.as_str(), user.as_str()).await.unwrap();
    }
    for records in [BROKER_BINDINGS, BROKER_INSTANCES, BROKER_DATA] {
        root.role_grant_permission(PROXY_USER, Permission::read(records).with_prefix()).await.unwrap();
    }
}

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// A running `etcd-broker-proxy`, killed when dropped.
pub struct ProxyProcess {
    child: Option<Child>,
    /// The URL clients use.
    pub url: String,
    args: Vec<String>,
    log: PathBuf,
    _dir: tempfile::TempDir,
}

impl ProxyProcess {
    /// A proxy in front of `etcd`, as the proxy's own user, root the only admin.
    pub async fn start(etcd: &LocalEtcd) -> Self {
        Self::start_with(etcd, &[]).await
    }

    /// The same with more flags (`--endpoints` replaces etcd's http endpoint; with
    /// `--tls-cert-file` the URL is https).
    pub async fn start_with(etcd: &LocalEtcd, extra: &[&str]) -> Self {
        Self::start_at(etcd, free_port(), extra).await
    }

    /// The same on a port chosen beforehand (a broker's config names the proxy's URL).
    pub async fn start_at(etcd: &LocalEtcd, port: u16, extra: &[&str]) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let endpoint = if extra.contains(&"--endpoints") {
            vec![]
        } else {
            vec!["--endpoints".to_owned(), etcd.endpoint()]
        };
        let scheme = if extra.contains(&"--tls-cert-file") { "https" } else { "http" };
        let mut args: Vec<String> =
            ["--listen", &format!("127.0.0.1:{port}"), "--user", PROXY_USER, "--log-level", "debug"]
                .iter()
                .map(|s| s.to_string())
                .collect();
        args.extend(endpoint);
        args.extend(extra.iter().map(|s| s.to_string()));
        let mut proxy = ProxyProcess {
            child: None,
            url: format!("{scheme}://127.0.0.1:{port}"),
            args,
            log: dir.path().join("proxy.log"),
            _dir: dir,
        };
        proxy.spawn().await;
        proxy
    }

    async fn spawn(&mut self) {
        let log = std::fs::OpenOptions::new().create(true).append(true).open(&self.log).unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_etcd-broker-proxy"))
            .args(&self.args)
            .env("ETCD_BROKER_PROXY_PASSWORD", PROXY_PASSWORD)
            .env_remove("RUST_LOG")
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap();
        self.child = Some(child);
        let port: u16 = self.url.rsplit(':').next().unwrap().parse().unwrap();
        let deadline = Instant::now() + Duration::from_secs(20);
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            if let Some(status) = self.child.as_mut().unwrap().try_wait().unwrap() {
                panic!("the proxy exited ({status}):\n{}", self.log_text());
            }
            assert!(Instant::now() < deadline, "the proxy does not listen:\n{}", self.log_text());
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Kills the process and starts it again with the same flags (same port).
    pub async fn restart(&mut self) {
        self.kill();
        self.spawn().await;
    }

    fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Whether the process is still running (it did not exit, e.g. on a panic).
    pub fn running(&mut self) -> bool {
        self.child.as_mut().is_some_and(|child| child.try_wait().unwrap().is_none())
    }

    /// The process's resident memory now, in KiB (`VmRSS` of `/proc/<pid>/status`).
    pub fn rss_kib(&self) -> u64 {
        let pid = self.child.as_ref().expect("running").id();
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
        let line = status.lines().find(|l| l.starts_with("VmRSS:")).expect("VmRSS");
        line.split_whitespace().nth(1).unwrap().parse().unwrap()
    }
}

impl Drop for ProxyProcess {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A raw gRPC connection to etcd or to the proxy, with the token of one login (or none): the
/// same requests can be sent to either, with exactly the token a test wants.
#[derive(Clone)]
pub struct Conn {
    channel: Channel,
    pub token: Option<String>,
}

impl Conn {
    /// Connects to `url` without logging in.
    pub async fn anonymous(url: &str) -> Conn {
        let channel = Channel::from_shared(url.to_owned()).unwrap().connect().await.unwrap();
        Conn { channel, token: None }
    }

    /// Connects to `url` and logs in as `user` (test password) there.
    pub async fn login(url: &str, user: &str) -> Conn {
        Self::login_as(url, user, &password(user)).await
    }

    /// Connects to `url` and logs in with a user name and password.
    pub async fn login_as(url: &str, user: &str, password: &str) -> Conn {
        let mut conn = Self::anonymous(url).await;
        let request = AuthenticateRequest { name: user.to_owned(), password: password.to_owned() };
        let answer = conn
            .auth()
            .authenticate(request)
            .await
            .unwrap_or_else(|e| panic!("{user} logs in at {url}: {e}"));
        conn.token = Some(answer.into_inner().token);
        conn
    }

    /// This connection with another's token (a token used where it was not issued).
    pub fn with_token_of(&self, other: &Conn) -> Conn {
        Conn { channel: self.channel.clone(), token: other.token.clone() }
    }

    /// A request with this connection's token.
    pub fn req<T>(&self, message: T) -> Request<T> {
        let mut request = Request::new(message);
        request.set_timeout(Duration::from_secs(10));
        if let Some(token) = &self.token {
            request.metadata_mut().insert("token", token.parse().unwrap());
        }
        request
    }

    pub fn kv(&self) -> KvClient<Channel> {
        KvClient::new(self.channel.clone())
    }
    pub fn lease(&self) -> LeaseClient<Channel> {
        LeaseClient::new(self.channel.clone())
    }
    pub fn auth(&self) -> AuthClient<Channel> {
        AuthClient::new(self.channel.clone())
    }
    pub fn maintenance(&self) -> MaintenanceClient<Channel> {
        MaintenanceClient::new(self.channel.clone())
    }
    pub fn cluster(&self) -> ClusterClient<Channel> {
        ClusterClient::new(self.channel.clone())
    }
    /// Watch responses as large as etcd's own clients accept (2 GiB - 1): etcd batches the
    /// events of up to 1,000 revisions in one response to a watcher that fell behind.
    pub fn watch(&self) -> WatchClient<Channel> {
        WatchClient::new(self.channel.clone()).max_decoding_message_size(i32::MAX as usize)
    }

    /// A watch of every key under `prefix`, opened with this connection's token; the sender
    /// keeps the request stream open.
    pub async fn watch_prefix(
        &self,
        prefix: &str,
    ) -> Result<(tokio::sync::mpsc::Sender<WatchRequest>, tonic::Streaming<WatchResponse>), tonic::Status>
    {
        let (requests, outbound) = tokio::sync::mpsc::channel(4);
        let create = WatchCreateRequest {
            key: prefix.as_bytes().to_vec(),
            range_end: prefix_end(prefix),
            ..Default::default()
        };
        requests
            .send(WatchRequest { request_union: Some(watch_request::RequestUnion::CreateRequest(create)) })
            .await
            .unwrap();
        let mut request = Request::new(tokio_stream::wrappers::ReceiverStream::new(outbound));
        if let Some(token) = &self.token {
            request.metadata_mut().insert("token", token.parse().unwrap());
        }
        let mut responses = self.watch().watch(request).await?.into_inner();
        // etcd answers the create first (or refuses it).
        let created = responses.message().await?.expect("a created answer");
        assert!(created.created && !created.canceled, "{created:?}");
        Ok((requests, responses))
    }
}

/// etcdctl of the test's etcd version at `endpoint`, as `user` with `password`.
pub fn etcdctl_as(etcd: &LocalEtcd, endpoint: &str, user: (&str, &str), args: &[&str]) -> Output {
    etcdctl_command_as(etcd, endpoint, user, args).output().unwrap()
}

/// `etcdctl txn` as `user` with `password`, the Txn on its standard input.
pub fn etcdctl_with_input_as(etcd: &LocalEtcd, endpoint: &str, user: (&str, &str), input: &str) -> Output {
    with_input(etcdctl_command_as(etcd, endpoint, user, &["txn"]), input)
}

/// etcdctl of the test's etcd version, as `user` (test password) at `endpoint`.
pub fn etcdctl(etcd: &LocalEtcd, endpoint: &str, user: &str, args: &[&str]) -> Output {
    etcdctl_with_input(etcd, endpoint, user, args, "")
}

/// The same with text on its standard input (e.g. `txn`).
pub fn etcdctl_with_input(
    etcd: &LocalEtcd,
    endpoint: &str,
    user: &str,
    args: &[&str],
    input: &str,
) -> Output {
    with_input(etcdctl_command(etcd, endpoint, user, args), input)
}

/// The etcdctl command line, for a process that keeps running (watch).
pub fn etcdctl_command(etcd: &LocalEtcd, endpoint: &str, user: &str, args: &[&str]) -> Command {
    etcdctl_command_as(etcd, endpoint, (user, &password(user)), args)
}

/// The etcdctl command line as `user` with `password`.
fn etcdctl_command_as(
    etcd: &LocalEtcd,
    endpoint: &str,
    (user, password): (&str, &str),
    args: &[&str],
) -> Command {
    let mut command = Command::new(etcd.etcdctl());
    command
        .env("ETCDCTL_API", "3")
        .args(["--endpoints", endpoint, "--command-timeout=10s", "--dial-timeout=5s"])
        .arg(format!("--user={user}:{password}"))
        .args(args);
    command
}

/// Runs `command` with `input` on its standard input; its output.
fn with_input(mut command: Command, input: &str) -> Output {
    let mut child =
        command.stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap();
    use std::io::Write;
    child.stdin.take().unwrap().write_all(input.as_bytes()).unwrap();
    child.wait_with_output().unwrap()
}

/// Reads a child's stdout into a string as it comes, on a thread.
pub fn collect_stdout(child: &mut Child) -> std::sync::Arc<std::sync::Mutex<String>> {
    let text = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
    let mut stdout = child.stdout.take().expect("piped stdout");
    let sink = text.clone();
    std::thread::spawn(move || {
        let mut buffer = [0u8; 4096];
        while let Ok(n) = stdout.read(&mut buffer) {
            if n == 0 {
                break;
            }
            sink.lock().unwrap().push_str(&String::from_utf8_lossy(&buffer[..n]));
        }
    });
    text
}

/// The end of the range of every key under `prefix`.
pub fn prefix_end(prefix: &str) -> Vec<u8> {
    let mut end = prefix.as_bytes().to_vec();
    *end.last_mut().unwrap() += 1;
    end
}

/// The message of a refusal, asserting its code.
pub fn refused<T: std::fmt::Debug>(result: Result<T, tonic::Status>, code: tonic::Code) -> String {
    match result {
        Ok(answer) => panic!("expected {code:?}, got an answer: {answer:?}"),
        Err(status) => {
            assert_eq!(status.code(), code, "{}", status.message());
            status.message().to_owned()
        }
    }
}

/// A lease of 60 s granted through `conn`; its id.
pub async fn grant(conn: &Conn) -> i64 {
    conn.lease().lease_grant(conn.req(LeaseGrantRequest { ttl: 60, id: 0 })).await.unwrap().into_inner().id
}

/// The cluster's current revision, as a range of `key` through `conn` reports it.
pub async fn revision(conn: &Conn, key: &str) -> i64 {
    let request = RangeRequest { key: key.as_bytes().to_vec(), ..Default::default() };
    conn.kv().range(conn.req(request)).await.unwrap().into_inner().header.unwrap().revision
}

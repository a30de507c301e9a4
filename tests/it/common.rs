//! Shared harness of the integration tests: a real etcd (auth enabled, version from
//! `ETCD_VERSION`, default 3.5) and real `etcd-broker` processes on free loopback ports.

use std::net::TcpListener;
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::Arc;
use std::time::{Duration, Instant};

use etcd_broker::config::{Cluster, Secret};
use etcd_broker::etcd::{EtcdStore, Observer};
use etcd_broker_ops::osb::{BrokerTarget, Incomplete, Offering, OsbClient};
use etcd_client::{Client, ConnectOptions, GetOptions};
use local_etcd::{EtcdVersion, LocalEtcd, Options};
use reqwest::Method;
use serde_json::{json, Value};
use tokio::process::{Child, Command};

pub const SERVICE_ID: &str = "6e2ab6a8-3b0c-4c52-9a6c-5f3f2c1d9e01";
pub const SHARED: &str = "0d2f3a4b-5c6d-4e7f-8a9b-0c1d2e3f4a5b";
pub const LARGE: &str = "1e3f4a5b-6c7d-4e8f-9a0b-1c2d3e4f5a6b";
pub const FAR: &str = "2f4a5b6c-7d8e-4f9a-8b1c-2d3e4f5a6b7c";
pub const USER: &str = "broker";
pub const PASSWORD: &str = "broker-secret-Ü\"'x";
pub const VERSION: &str = "2.17";

/// Starts etcd with auth enabled, at the version the test run asks for.
pub async fn start_etcd() -> LocalEtcd {
    let version = EtcdVersion::from_env().expect("ETCD_VERSION");
    LocalEtcd::start(Options { version, bcrypt_cost: Some(4), ..Options::default() })
        .await
        .expect("etcd starts")
}

/// The broker's real store on `etcd`, logged in as its root user, reporting to `observer`.
pub fn store_on(etcd: &LocalEtcd, observer: Observer) -> Arc<EtcdStore> {
    let endpoints = vec![url::Url::parse(&etcd.endpoint()).unwrap()];
    let cluster = Cluster {
        public_endpoints: endpoints.clone(),
        certificate_endpoints: endpoints.clone(),
        proxy_endpoints: vec![],
        endpoints,
        username: etcd.root_username().to_owned(),
        password: Secret::new(etcd.root_password()),
        tls: None,
    };
    EtcdStore::new(&cluster, "/etcd-broker/write-fence", observer).expect("no TLS to check")
}

/// The broker's `/metrics` text.
pub async fn scrape(broker: &BrokerProcess) -> String {
    reqwest::get(format!("{}/metrics", broker.metrics_url)).await.unwrap().text().await.unwrap()
}

/// [`scrape`] until every `(series, value)` of `expected` holds (the inventory gauges follow
/// etcd within about two `[metrics] inventory_seconds`, or a lease ttl more after a broker
/// that led stopped); fails after 20 s naming the text.
pub async fn scrape_until(broker: &BrokerProcess, expected: &[(&str, f64)]) -> String {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let text = scrape(broker).await;
        if expected.iter().all(|(series, value)| sample(&text, series) == *value) {
            return text;
        }
        assert!(Instant::now() < deadline, "never {expected:?}:\n{text}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The value of one sample line (`name{labels} value`) of [`scrape`]'s text, 0 when absent.
pub fn sample(text: &str, series: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(series).and_then(|rest| rest.strip_prefix(' ')))
        .map(|v| v.trim().parse().unwrap())
        .unwrap_or(0.0)
}

/// Starts a cluster of `size` etcd members (auth enabled, one root password), at the version
/// the test run asks for.
pub async fn start_etcd_cluster(size: usize) -> Vec<LocalEtcd> {
    let version = EtcdVersion::from_env().expect("ETCD_VERSION");
    LocalEtcd::start_cluster(size, Options { version, bcrypt_cost: Some(4), ..Options::default() })
        .await
        .expect("the etcd cluster starts")
}

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// The broker config for `main` (and optionally a second cluster `far`), sealing with a fresh
/// inline key: tests run with the default, sealing on.
pub fn config_toml(port: u16, metrics_port: u16, main: &LocalEtcd, far: Option<&LocalEtcd>) -> String {
    config_toml_without_secrets(port, metrics_port, main, far) + &sealing_toml()
}

/// A `[secrets]` table sealing with the key `test`, inline: one fresh key per test run, the
/// same for every broker, as brokers sharing an etcd share their keychain.
pub fn sealing_toml() -> String {
    static KEY: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    let key = KEY.get_or_init(|| {
        etcd_broker::sealing::Key::generate("test").unwrap().to_text().unwrap().as_str().to_owned()
    });
    format!("\n[secrets]\nactive = \"test\"\n[secrets.keys.test]\nvalue = {key:?}\n")
}

/// [`config_toml`] without a `[secrets]` table, for tests that write their own.
pub fn config_toml_without_secrets(
    port: u16,
    metrics_port: u16,
    main: &LocalEtcd,
    far: Option<&LocalEtcd>,
) -> String {
    let cluster = |name: &str, etcd: &LocalEtcd| {
        format!(
            "[clusters.{name}]\nendpoints = [{endpoint:?}]\nusername = \"root\"\npassword = {password:?}\n",
            endpoint = etcd.endpoint(),
            password = etcd.root_password()
        )
    };
    let mut text =
        format!("log_level = \"debug\"\nstate_cluster = \"main\"\n{}", listeners_toml(port, metrics_port));
    text += &cluster("main", main);
    let far_cluster = match far {
        Some(etcd) => {
            text += &cluster("far", etcd);
            "far"
        }
        None => "main",
    };
    text += &catalog_toml(far_cluster);
    text
}

/// The config's listeners (OSB API and metrics on loopback; the inventory gauges counted every
/// second, so that tests wait for them briefly) and the broker's credentials.
pub fn listeners_toml(port: u16, metrics_port: u16) -> String {
    format!(
        r#"[listen]
host = "127.0.0.1"
port = {port}
[metrics]
host = "127.0.0.1"
port = {metrics_port}
inventory_seconds = 1
[auth]
username = "{USER}"
password = {PASSWORD:?}
"#
    )
}

/// The test catalog: plans SHARED and LARGE on cluster `main`, FAR on `far_cluster`; LARGE
/// takes bind parameters.
pub fn catalog_toml(far_cluster: &str) -> String {
    format!(
        r#"
[[catalog.services]]
id = "{SERVICE_ID}"
name = "etcd"
description = "etcd namespaces"
plan_updateable = true
[[catalog.services.plans]]
id = "{SHARED}"
name = "shared"
description = "shared"
[[catalog.services.plans]]
id = "{LARGE}"
name = "large"
description = "large"
[[catalog.services.plans]]
id = "{FAR}"
name = "far"
description = "on another cluster"
[plan_configs."{SHARED}"]
cluster = "main"
[plan_configs."{LARGE}"]
cluster = "main"
binding_parameters = true
[plan_configs."{FAR}"]
cluster = "{far_cluster}"
"#
    )
}

/// Writes a fresh key named `name` into `dir/<name>.key`, readable by its owner only (the broker
/// refuses key files open to others); its path.
pub fn write_key(dir: &std::path::Path, name: &str) -> PathBuf {
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    let key = etcd_broker::sealing::Key::generate(name).unwrap();
    let path = dir.join(format!("{name}.key"));
    let mut file = std::fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(&path).unwrap();
    file.write_all(key.to_text().unwrap().as_bytes()).unwrap();
    path
}

/// A `[secrets]` table: `sealing` ("on" / "off"), the `active` key, and key files by name.
pub fn secrets_toml(sealing: &str, active: &str, keys: &[(&str, &std::path::Path)]) -> String {
    let mut text = format!("\n[secrets]\nsealing = \"{sealing}\"\nactive = \"{active}\"\n");
    for (name, file) in keys {
        text += &format!("[secrets.keys.{name}]\nfile = {:?}\n", file.display().to_string());
    }
    text
}

/// Runs `etcd-broker serve` with the config `make_config` makes until it exits (within 30 s):
/// its exit status and what it printed, for brokers that must refuse to start.
pub async fn serve_until_exit(
    make_config: impl FnOnce(u16, u16) -> String,
) -> (std::process::ExitStatus, String) {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("broker.toml");
    std::fs::write(&config, make_config(free_port(), free_port())).unwrap();
    let run = Command::new(env!("CARGO_BIN_EXE_etcd-broker"))
        .args(["serve", "--config"])
        .arg(&config)
        .env_remove("RUST_LOG")
        .kill_on_drop(true)
        .output();
    let out = tokio::time::timeout(Duration::from_secs(30), run).await.expect("the broker exits").unwrap();
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    (out.status, text)
}

/// A running `etcd-broker serve` process; killed on drop.
pub struct BrokerProcess {
    pub url: String,
    /// Base URL of the monitoring listener (`/metrics`, `/health`, `/ready`).
    pub metrics_url: String,
    child: Child,
    /// How it was started (`serve FLAG CONFIG` with `env`): a restart runs the same.
    flag: String,
    config: PathBuf,
    env: Vec<(String, String)>,
    _dir: tempfile::TempDir,
    pub log: PathBuf,
}

impl BrokerProcess {
    pub async fn start(main: &LocalEtcd, far: Option<&LocalEtcd>) -> Self {
        Self::start_with_env(main, far, &[]).await
    }

    /// Starts with extra environment variables (e.g. `ETCD_BROKER__LOG_FORMAT=json`).
    pub async fn start_with_env(main: &LocalEtcd, far: Option<&LocalEtcd>, env: &[(&str, &str)]) -> Self {
        Self::start_with_config(|port, metrics_port| config_toml(port, metrics_port, main, far), env).await
    }

    /// Starts with a config of the caller's making, given the OSB and metrics ports.
    pub async fn start_with_config(
        make_config: impl FnOnce(u16, u16) -> String,
        env: &[(&str, &str)],
    ) -> Self {
        Self::start_serving("--config", "broker.toml", make_config, env).await
    }

    /// Starts with `serve --bosh-properties`: the caller makes the properties JSON.
    pub async fn start_with_bosh_properties(make_json: impl FnOnce(u16, u16) -> String) -> Self {
        Self::start_serving("--bosh-properties", "properties.json", make_json, &[]).await
    }

    async fn start_serving(
        flag: &str,
        file: &str,
        make_input: impl FnOnce(u16, u16) -> String,
        env: &[(&str, &str)],
    ) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let (port, metrics_port) = (free_port(), free_port());
        let config = dir.path().join(file);
        std::fs::write(&config, make_input(port, metrics_port)).unwrap();
        let log = dir.path().join("broker.log");
        let env: Vec<(String, String)> = env.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        let child = spawn(flag, &config, &env, &log);
        let broker = Self {
            url: format!("http://127.0.0.1:{port}"),
            metrics_url: format!("http://127.0.0.1:{metrics_port}"),
            child,
            flag: flag.to_owned(),
            config,
            env,
            _dir: dir,
            log,
        };
        broker.wait_until_serving().await;
        broker
    }

    /// Waits (up to 20 s) until the OSB listener answers.
    async fn wait_until_serving(&self) {
        let deadline = Instant::now() + Duration::from_secs(20);
        let http = reqwest::Client::new();
        while http.get(format!("{}/v2/catalog", self.url)).send().await.is_err() {
            assert!(Instant::now() < deadline, "broker did not start: {}", self.log_text());
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Kills the process with SIGKILL, as a crash or the OOM killer would: no clean-up runs,
    /// requests in flight get no answer.
    pub async fn kill(&mut self) {
        self.child.kill().await.expect("the broker is killed");
    }

    /// Starts the process again after [`Self::kill`]: same config, same ports (URLs stay
    /// valid), its log appended to the same file; returns once it serves.
    pub async fn restart(&mut self) {
        self.child = spawn(&self.flag, &self.config, &self.env, &self.log);
        self.wait_until_serving().await;
    }

    /// The config it runs with (started with `--config`).
    pub fn config(&self) -> etcd_broker::config::Config {
        assert_eq!(self.flag, "--config", "a broker started from a config file");
        etcd_broker::config::Config::from_toml(&std::fs::read_to_string(&self.config).unwrap()).unwrap()
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub async fn stop(mut self) -> String {
        let _ = self.child.kill().await;
        self.log_text()
    }
}

/// `etcd-broker serve FLAG CONFIG` with `env`, its output appended to `log`.
fn spawn(flag: &str, config: &std::path::Path, env: &[(String, String)], log: &std::path::Path) -> Child {
    let output = || std::fs::File::options().create(true).append(true).open(log).unwrap();
    Command::new(env!("CARGO_BIN_EXE_etcd-broker"))
        .args(["serve", flag])
        .arg(config)
        .env_remove("RUST_LOG")
        .envs(env.iter().map(|(k, v)| (k, v)))
        .stdout(output())
        .stderr(Stdio::from(output()))
        .kill_on_drop(true)
        .spawn()
        .expect("etcd-broker starts")
}

impl Drop for BrokerProcess {
    /// A failing test shows what the broker logged.
    fn drop(&mut self) {
        if std::thread::panicking() {
            let log = self.log_text();
            let tail: Vec<&str> = log.lines().rev().take(60).collect();
            eprintln!("--- {} log (last lines) ---", self.url);
            for line in tail.iter().rev() {
                eprintln!("{line}");
            }
        }
    }
}

/// The ops crate's OSB client (the one blackbox and bench use) acting as the platform, with the
/// test broker's credentials; its shorthand calls panic only if the broker does not answer.
pub struct Osb(OsbClient);

/// An answer: status, JSON body (Null when the body is not JSON) and headers.
pub type Reply = etcd_broker_ops::osb::Answer;

impl std::ops::Deref for Osb {
    type Target = OsbClient;

    fn deref(&self) -> &OsbClient {
        &self.0
    }
}

impl Osb {
    pub fn new(url: &str) -> Self {
        let target = BrokerTarget {
            url: url.to_owned(),
            username: USER.to_owned(),
            password: PASSWORD.to_owned(),
            skip_tls_verification: false,
        };
        Self(OsbClient::new(target, Duration::from_secs(60)).expect("an HTTP client"))
    }

    /// The shared plan of the test catalog.
    pub fn shared() -> Offering {
        Offering {
            service_id: SERVICE_ID.to_owned(),
            plan_id: SHARED.to_owned(),
            bind_parameters: vec![],
            rotatable: false,
        }
    }

    pub async fn send(builder: reqwest::RequestBuilder) -> Reply {
        OsbClient::send(builder).await.expect("broker answers")
    }

    pub async fn call(&self, method: Method, path: &str, body: Option<Value>) -> Reply {
        self.0.call(method, path, body).await.expect("broker answers")
    }

    pub async fn provision(&self, id: &str, plan: &str) -> Reply {
        self.put_instance(id, &provision_body(plan), Incomplete::Refused).await.expect("broker answers")
    }

    pub async fn deprovision(&self, id: &str) -> Reply {
        self.delete_instance(&Self::shared(), id, Incomplete::Refused).await.expect("broker answers")
    }

    pub async fn bind(&self, id: &str, binding: &str) -> Reply {
        self.put_binding(id, binding, &bind_body(), Incomplete::Refused).await.expect("broker answers")
    }

    pub async fn get_binding(&self, id: &str, binding: &str) -> Reply {
        self.0.get_binding(id, binding).await.expect("broker answers")
    }

    pub async fn unbind(&self, id: &str, binding: &str) -> Reply {
        self.delete_binding(&Self::shared(), id, binding, Incomplete::Refused).await.expect("broker answers")
    }
}

/// The body of a bind to the shared plan, for app `app-1`.
pub fn bind_body() -> Value {
    json!({ "service_id": SERVICE_ID, "plan_id": SHARED, "bind_resource": { "app_guid": "app-1" } })
}

pub fn provision_body(plan: &str) -> Value {
    json!({
        "service_id": SERVICE_ID,
        "plan_id": plan,
        "organization_guid": "org-1",
        "space_guid": "space-1",
        "context": { "platform": "cloudfoundry" },
    })
}

/// An etcd client logged in with a binding's credentials.
pub async fn tenant_client(credentials: &Value) -> Result<Client, etcd_client::Error> {
    let endpoints: Vec<String> = serde_json::from_value(credentials["endpoints"].clone()).unwrap();
    let options = ConnectOptions::new()
        .with_user(credentials["username"].as_str().unwrap(), credentials["password"].as_str().unwrap())
        .with_connect_timeout(Duration::from_secs(5))
        .with_timeout(Duration::from_secs(5));
    Client::connect(endpoints, Some(options)).await
}

/// Everything a root client sees that the broker may have made: (keys, users, roles),
/// without etcd's own `root` user and role, once the role reaper is done. Leader keys are left
/// out: a running broker holds one on a lease (binding expiry), which etcd deletes once the
/// broker is gone and its lease's ttl has passed. So is the write fence: one key per cluster,
/// which stays once a slow write moved it (docs/reliability.md).
pub async fn broker_made_things(etcd: &LocalEtcd) -> (Vec<String>, Vec<String>, Vec<String>) {
    role_queue_drained(etcd).await;
    let mut root = etcd.root_client().await.unwrap();
    let keys = root
        .get("", Some(GetOptions::new().with_all_keys().with_keys_only()))
        .await
        .unwrap()
        .kvs()
        .iter()
        .map(|kv| String::from_utf8_lossy(kv.key()).into_owned())
        .filter(|key| {
            !key.starts_with("/etcd-broker/leaders/")
                && key != "/etcd-broker/write-fence"
                && key != "/etcd-broker/inventory"
        })
        .collect();
    let users = root.user_list().await.unwrap().users().iter().filter(|u| *u != "root").cloned().collect();
    let roles = root.role_list().await.unwrap().roles().iter().filter(|r| *r != "root").cloned().collect();
    (keys, users, roles)
}

/// The project-local tools folder (prometheus, promtool, etcd).
pub fn tool(path: &str) -> PathBuf {
    local_etcd::tools_dir().join(path)
}

/// Waits until the role reaper has drained its queue: unbinds leave their roles (and a late
/// bind's user) to it. Fails once the queue has not shrunk for 20 s (a long chaos run leaves
/// hundreds). Each look logs in afresh: the reaper's deletions outdate the tokens of earlier
/// logins.
pub async fn role_queue_drained(etcd: &LocalEtcd) {
    let (mut fewest, mut shrunk) = (i64::MAX, Instant::now());
    loop {
        let queue = GetOptions::new().with_prefix().with_count_only();
        let mut root = etcd.root_client().await.unwrap();
        let queued = root.get("/etcd-broker/role-deletions/", Some(queue)).await.map(|r| r.count());
        match queued {
            Ok(0) => break,
            Ok(n) if n < fewest => (fewest, shrunk) = (n, Instant::now()),
            _ => {}
        }
        assert!(shrunk.elapsed() < Duration::from_secs(20), "the role reaper left roles queued: {queued:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

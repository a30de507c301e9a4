//! A real broker process beside the proxy: `etcd-broker serve`'s code (config loaded from a
//! TOML file, `etcd_broker::server::run`) in a process of its own, talking OSB over HTTP, with
//! etcd's root user. Cargo builds no other package's binary for this crate's tests, so the
//! process is this test binary started again to run [`broker_process_host`] only, which
//! serves the broker until killed.

use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use etcd_broker_ops::osb::{BrokerTarget, Offering, OsbClient};
use local_etcd::LocalEtcd;

use crate::common::free_port;

pub const SERVICE_ID: &str = "6e2ab6a8-3b0c-4c52-9a6c-5f3f2c1d9e01";
/// A plan of plain bindings.
pub const PLAN: &str = "0d2f3a4b-5c6d-4e7f-8a9b-0c1d2e3f4a5b";
/// A plan whose bindings expire 2 s after they are made, revoked 1 s later.
pub const EXPIRING: &str = "1e3f4a5b-6c7d-4e8f-9a0b-1c2d3e4f5a6b";
/// A plan whose values the proxy encrypts (only with a proxy URL, see [`BrokerProcess::start_with`]).
pub const ENCRYPTED: &str = "2f4a5b6c-7d8e-4f9a-8b1c-2d3e4f5a6b7c";
/// A plan with key and byte quotas (only with a proxy URL): [`QUOTA_KEYS`], [`QUOTA_BYTES`].
pub const QUOTAS: &str = "3a5b6c7d-8e9f-4a0b-9c2d-3e4f5a6b7c8d";
pub const QUOTA_KEYS: u64 = 5;
pub const QUOTA_BYTES: u64 = 1000;
/// A plan with a request rate quota (only with a proxy URL): [`QUOTA_RATE`] per second.
pub const RATE_LIMITED: &str = "4b6c7d8e-9f0a-4b1c-8d3e-4f5a6b7c8d9e";
pub const QUOTA_RATE: u32 = 10;
const USER: &str = "broker";
const PASSWORD: &str = "broker-password";
const CONFIG_VAR: &str = "PROXY_IT_BROKER_CONFIG";

/// Not a test: the body of the broker process (see the module's doc); passes at once when
/// run as a test.
#[test]
fn broker_process_host() {
    let Ok(path) = std::env::var(CONFIG_VAR) else { return };
    let config = etcd_broker::config::Config::load(std::path::Path::new(&path)).expect("the broker's config");
    etcd_broker::logging::init(config.log_level, config.log_format);
    etcd_broker::server::run(&config).expect("the broker serves");
}

/// A running broker, killed when dropped.
pub struct BrokerProcess {
    child: Child,
    pub osb: OsbClient,
    /// The broker's own config file (etcd's root credentials): for the operators' tools
    /// (`etcd-broker-ops`), never for the proxy.
    pub config: PathBuf,
    /// A config file for the proxy holding only the broker's `[secrets]` (`--config`): the
    /// keys that unseal data keys, never the broker's root credentials.
    pub proxy_config: PathBuf,
    log: PathBuf,
    _dir: tempfile::TempDir,
}

impl BrokerProcess {
    /// A broker on `etcd` (root user, its default prefixes), sealing with a fresh key, the
    /// catalog above, expired bindings looked for every second.
    pub async fn start(etcd: &LocalEtcd) -> Self {
        Self::start_with(etcd, None).await
    }

    /// The same, and with `proxy_url` the plans [`ENCRYPTED`], [`QUOTAS`] and [`RATE_LIMITED`],
    /// whose bindings get that URL.
    pub async fn start_with(etcd: &LocalEtcd, proxy_url: Option<&str>) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let (port, metrics_port) = (free_port(), free_port());
        let key = etcd_broker::sealing::Key::generate("test").unwrap().to_text().unwrap().as_str().to_owned();
        let config = format!(
            r#"log_level = "debug"
state_cluster = "main"
[listen]
host = "127.0.0.1"
port = {port}
[metrics]
host = "127.0.0.1"
port = {metrics_port}
[auth]
username = "{USER}"
password = "{PASSWORD}"
[clusters.main]
endpoints = [{endpoint:?}]
username = "root"
password = {root:?}
[binding_expiry]
grace_seconds = 1
check_seconds = 1
leader_lease_seconds = 2
[[catalog.services]]
id = "{SERVICE_ID}"
name = "etcd"
description = "etcd namespaces"
[[catalog.services.plans]]
id = "{PLAN}"
name = "shared"
description = "shared"
[[catalog.services.plans]]
id = "{EXPIRING}"
name = "expiring"
description = "expiring bindings"
[plan_configs."{PLAN}"]
cluster = "main"
[plan_configs."{EXPIRING}"]
cluster = "main"
binding_ttl_seconds = 2
binding_renew_before_seconds = 1
[secrets]
active = "test"
[secrets.keys.test]
value = {key:?}
"#,
            endpoint = etcd.endpoint(),
            root = etcd.root_password(),
        );
        let mut config = config;
        if let Some(url) = proxy_url {
            config += &format!(
                r#"[[catalog.services.plans]]
id = "{ENCRYPTED}"
name = "encrypted"
description = "values encrypted by the proxy"
[plan_configs."{ENCRYPTED}"]
cluster = "main"
encryption = true
[[catalog.services.plans]]
id = "{QUOTAS}"
name = "quotas"
description = "keys and bytes limited by the proxy"
[plan_configs."{QUOTAS}"]
cluster = "main"
quota_keys = {QUOTA_KEYS}
quota_bytes = {QUOTA_BYTES}
[[catalog.services.plans]]
id = "{RATE_LIMITED}"
name = "rate-limited"
description = "requests limited by the proxy"
[plan_configs."{RATE_LIMITED}"]
cluster = "main"
quota_requests_per_second = {QUOTA_RATE}
"#
            );
            config = config
                .replace("[clusters.main]\n", &format!("[clusters.main]\nproxy_endpoints = [{url:?}]\n"));
        }
        let proxy_config = dir.path().join("proxy.toml");
        std::fs::write(
            &proxy_config,
            format!("[secrets]\nactive = \"test\"\n[secrets.keys.test]\nvalue = {key:?}\n"),
        )
        .unwrap();
        let path = dir.path().join("broker.toml");
        std::fs::write(&path, &config).unwrap();
        let log = dir.path().join("broker.log");
        let output = || std::fs::File::options().create(true).append(true).open(&log).unwrap();
        let child = Command::new(std::env::current_exe().unwrap())
            .args(["broker::broker_process_host", "--exact", "--nocapture", "--test-threads=1"])
            .env(CONFIG_VAR, &path)
            .env_remove("RUST_LOG")
            .stdout(output())
            .stderr(Stdio::from(output()))
            .spawn()
            .unwrap();
        let target = BrokerTarget {
            url: format!("http://127.0.0.1:{port}"),
            username: USER.to_owned(),
            password: PASSWORD.to_owned(),
            skip_tls_verification: false,
        };
        let mut broker = BrokerProcess {
            child,
            osb: OsbClient::new(target, Duration::from_secs(30)).unwrap(),
            config: path.clone(),
            proxy_config,
            log,
            _dir: dir,
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            if let Some(status) = broker.child.try_wait().unwrap() {
                panic!("the broker exited ({status}):\n{}", broker.log_text());
            }
            assert!(Instant::now() < deadline, "the broker does not listen:\n{}", broker.log_text());
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        broker
    }

    /// A plan of the catalog above.
    pub fn offering(plan: &str) -> Offering {
        Offering {
            service_id: SERVICE_ID.to_owned(),
            plan_id: plan.to_owned(),
            bind_parameters: vec![],
            rotatable: false,
        }
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for BrokerProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            eprintln!("--- broker log ---\n{}", self.log_text());
        }
    }
}

/// A binding of an instance of the encrypting plan, served by a proxy that encrypts: what a
/// client is handed (the proxy's URL, user name, password, prefix) and the processes behind it.
pub struct EncryptedBinding {
    pub broker: BrokerProcess,
    pub proxy: crate::common::ProxyProcess,
    pub url: String,
    pub user: String,
    pub password: String,
    pub prefix: String,
}

impl EncryptedBinding {
    /// A broker and a proxy (with its own config, see [`BrokerProcess::proxy_config`]) on `etcd`, an instance of [`ENCRYPTED`]
    /// provisioned and bound; its credentials name the proxy.
    pub async fn start(etcd: &LocalEtcd) -> Self {
        let port = free_port();
        let url = format!("http://127.0.0.1:{port}");
        let broker = BrokerProcess::start_with(etcd, Some(&url)).await;
        let config = broker.proxy_config.to_str().unwrap().to_owned();
        let proxy = crate::common::ProxyProcess::start_at(etcd, port, &["--config", &config]).await;
        let plan = BrokerProcess::offering(ENCRYPTED);
        broker.osb.provision(&plan, "sealed-1", Duration::from_secs(30)).await.unwrap();
        let (_, bound) = broker.osb.bind(&plan, "sealed-1", "binding-1").await.unwrap();
        assert_eq!(
            bound["endpoints"],
            serde_json::Value::from(vec![url.clone()]),
            "the credentials name the proxy"
        );
        let text = |field: &str| bound[field].as_str().unwrap().to_owned();
        let (user, password, prefix) = (text("username"), text("password"), text("prefix"));
        EncryptedBinding { broker, proxy, url, user, password, prefix }
    }
}

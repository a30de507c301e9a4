//! `xtask bench-proxy`: the tenant proxy against etcd directly, in the same run, with the same
//! clients (etcd-client, one connection per target, logged in as the same tenant), on
//! loopback: put, range (one key) and watch-event throughput and latency, through the proxy
//! with encryption off (an instance without data keys) and on (an instance with one), and
//! directly on etcd. Rounds alternate the targets so that a machine shared with other work
//! disturbs them alike. The issue's targets: throughput at least 0.8x of direct, p50 at most
//! 0.15 ms more than direct. See docs/performance.md.
//!
//! Two more targets put a relay of `relay.rs` in the proxy's place, in the same run: a TCP
//! relay (what a second process and two more loopback hops cost by themselves) and an HTTP/2
//! relay (what terminating HTTP/2 on both sides costs, without tonic, hyper or gRPC above it).
//!
//! It starts its own etcd (local-etcd, auth on) and the release proxy binary next to this
//! program (`--proxy-bin`), writes the instance record of the encrypted instance itself (a
//! data key sealed by a fresh keychain, as the broker would), and gives the proxy a config file
//! holding that keychain.

use std::io::Read;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use etcd_broker::broker::names::Names;
use etcd_broker::broker::records::data_key_name;
use etcd_broker::osb::ids::InstanceId;
use etcd_broker::sealing::{Key, Keychain};
use etcd_client::{Client, ConnectOptions, EventType, Permission, WatchOptions};
use local_etcd::{EtcdVersion, LocalEtcd, Options};
use serde_json::json;

use super::cpu::{CpuUse, Watched};
use super::load::{self, round, Measured};

/// Flags of `xtask bench-proxy`.
#[derive(Debug, Clone, clap::Args)]
pub struct ProxyBenchArgs {
    /// Operations per scenario, target and round.
    #[arg(long, default_value_t = 5000)]
    pub count: u64,
    /// Concurrent clients (tasks sharing one connection per target); a list runs each.
    #[arg(long, value_delimiter = ',', default_values_t = [1u64, 8])]
    pub clients: Vec<u64>,
    /// Rounds; each runs every target once per scenario, in turn.
    #[arg(long, default_value_t = 3)]
    pub rounds: u32,
    /// Bytes of each value put.
    #[arg(long, default_value_t = 256)]
    pub value_size: usize,
    /// etcd version: 3.5 or 3.4.
    #[arg(long, default_value = "3.5")]
    pub etcd_version: String,
    /// The proxy binary; default: etcd-broker-proxy next to this program.
    #[arg(long)]
    pub proxy_bin: Option<PathBuf>,
    /// Also write the report as JSON here.
    #[arg(long)]
    pub json: Option<PathBuf>,
}

const TENANT: &str = "bench-tenant";
const TENANT_PASSWORD: &str = "bench-tenant-password";
const PROXY_USER: &str = "bench-proxy";
const PROXY_PASSWORD: &str = "bench-proxy-password";
/// Instances of the broker's naming: one without data keys, one with.
const PLAIN: &str = "bench-plain";
const ENCRYPTED: &str = "bench-encrypted";

/// Where a scenario's requests go.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Target {
    Direct,
    TcpRelay,
    Http2Relay,
    Proxy,
    ProxyEncrypted,
}

impl Target {
    const ALL: [Target; 5] =
        [Target::Direct, Target::TcpRelay, Target::Http2Relay, Target::Proxy, Target::ProxyEncrypted];

    fn name(self) -> &'static str {
        match self {
            Target::Direct => "etcd directly",
            Target::TcpRelay => "TCP relay, no gRPC",
            Target::Http2Relay => "HTTP/2 relay, no gRPC",
            Target::Proxy => "proxy, encryption off",
            Target::ProxyEncrypted => "proxy, encryption on",
        }
    }

    /// The process between the clients and etcd: its [`ProxyChild::name`], which names its
    /// CPU figures too.
    fn middle(self) -> Option<&'static str> {
        match self {
            Target::Direct => None,
            Target::TcpRelay => Some(TCP_RELAY),
            Target::Http2Relay => Some(HTTP2_RELAY),
            Target::Proxy | Target::ProxyEncrypted => Some(PROXY),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Scenario {
    Put,
    Range,
    WatchEvents,
}

impl Scenario {
    const ALL: [Scenario; 3] = [Scenario::Put, Scenario::Range, Scenario::WatchEvents];

    fn name(self) -> &'static str {
        match self {
            Scenario::Put => "put",
            Scenario::Range => "range (1 key)",
            Scenario::WatchEvents => "watch events",
        }
    }
}

pub fn run(args: ProxyBenchArgs) -> Result<()> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?
        .block_on(run_async(args))
}

async fn run_async(args: ProxyBenchArgs) -> Result<()> {
    let proxy_bin = match &args.proxy_bin {
        Some(path) => path.clone(),
        None => std::env::current_exe()?.with_file_name("etcd-broker-proxy"),
    };
    ensure!(
        proxy_bin.exists(),
        "no proxy binary at {} (cargo build --release -p etcd-broker-proxy)",
        proxy_bin.display()
    );
    let version = EtcdVersion::parse(&args.etcd_version).context("--etcd-version")?;
    let etcd = LocalEtcd::start(Options { version, bcrypt_cost: Some(4), ..Options::default() })
        .await
        .context("starting etcd")?;
    let names = Names::default();
    let dir = tempfile::tempdir()?;
    let key_text = random_base64()?;
    setup_etcd(&etcd, &names, &key_text).await?;
    let config = dir.path().join("proxy.toml");
    std::fs::write(&config, proxy_config(&key_text))?;
    let proxy = ProxyChild::start(&proxy_bin, &etcd, &config, dir.path())?;
    let relay = ProxyChild::start_relay(TCP_RELAY, &etcd, dir.path())?;
    let http2_relay = ProxyChild::start_relay(HTTP2_RELAY, &etcd, dir.path())?;

    let direct = login(&etcd.endpoint()).await?;
    let tcp_relayed = login(&relay.url).await?;
    let http2_relayed = login(&http2_relay.url).await?;
    let through = login(&proxy.url).await?;
    let value = vec![b'v'; args.value_size];
    let mut watched =
        vec![Watched::this_process(), proxy.watched()?, relay.watched()?, http2_relay.watched()?];
    if let Some(pid) = etcd.pid() {
        watched.push(format!("etcd={pid}").parse()?);
    }
    let load = load_average();
    println!(
        "etcd {} on 127.0.0.1, {} operations per scenario, target and round, {} rounds, {}-byte values; \
         load average before: {load}",
        args.etcd_version, args.count, args.rounds, args.value_size
    );
    println!(
        "{:<14} {:>7} {:<22} {:>8} {:>6} {:>7} {:>7} {:>7} | {:>5} {:>5} {:>6}",
        "scenario",
        "clients",
        "target",
        "ops/s",
        "ratio",
        "p50 ms",
        "+p50",
        "p99 ms",
        "proxy",
        "etcd",
        "client"
    );
    let mut rows = Vec::new();
    for &clients in &args.clients {
        for scenario in Scenario::ALL {
            let mut results: Vec<Measured> = Target::ALL.iter().map(|_| Measured::empty()).collect();
            let mut cpu: Vec<CpuUse> = Target::ALL.iter().map(|_| CpuUse::default()).collect();
            for round_number in 0..args.rounds {
                // Each round starts with another target, so none is always first or last.
                for step in 0..Target::ALL.len() {
                    let t = (step + round_number as usize) % Target::ALL.len();
                    let target = Target::ALL[t];
                    let client = match target {
                        Target::Direct => &direct,
                        Target::TcpRelay => &tcp_relayed,
                        Target::Http2Relay => &http2_relayed,
                        Target::Proxy | Target::ProxyEncrypted => &through,
                    };
                    let instance = if target == Target::ProxyEncrypted { ENCRYPTED } else { PLAIN };
                    let prefix =
                        format!("{}{instance}/{}/", names.data_prefix(), scenario.name().replace(' ', "-"));
                    let (measured, used) = CpuUse::during(
                        &watched,
                        measure(scenario, client, &prefix, &value, args.count, clients as usize),
                    )
                    .await;
                    let measured = measured?;
                    ensure!(
                        measured.errors == 0,
                        "{} via {}: {} errors, the first: {:?}",
                        scenario.name(),
                        target.name(),
                        measured.errors,
                        measured.first_error
                    );
                    results[t].absorb(measured);
                    cpu[t].absorb(used);
                }
            }
            let direct_result = results[0].clone();
            for ((target, measured), used) in Target::ALL.iter().zip(results).zip(cpu) {
                let ratio = measured.throughput() / direct_result.throughput();
                let added = measured.quantile_ms(0.5) - direct_result.quantile_ms(0.5);
                let us = used.per_operation_us(measured.ok);
                let us_of = |name: &str| us.get(name).copied().unwrap_or(f64::NAN);
                println!(
                    "{:<14} {:>7} {:<22} {:>8.0} {:>5.2}x {:>7.3} {:>+7.3} {:>7.3} | {:>5} {:>5.0} {:>6.0}",
                    scenario.name(),
                    clients,
                    target.name(),
                    measured.throughput(),
                    ratio,
                    measured.quantile_ms(0.5),
                    added,
                    measured.quantile_ms(0.99),
                    target.middle().map_or("-".to_owned(), |name| format!("{:.0}", us_of(name))),
                    us_of("etcd"),
                    us_of("client"),
                );
                rows.push(json!({
                    "scenario": scenario.name(),
                    "clients": clients,
                    "target": target.name(),
                    "throughput_per_s": round(measured.throughput()),
                    "throughput_vs_direct": round(ratio),
                    "p50_ms": (measured.quantile_ms(0.5) * 1000.0).round() / 1000.0,
                    "p50_added_ms": (added * 1000.0).round() / 1000.0,
                    "p99_ms": (measured.quantile_ms(0.99) * 1000.0).round() / 1000.0,
                    "cpu_us_per_op": us.iter().map(|(name, us)| (name.clone(), json!(round(*us)))).collect::<serde_json::Map<_, _>>(),
                }));
            }
        }
    }
    println!(
        "ratio: ops/s against etcd directly; +p50: ms added to direct's p50; CPU µs per operation of \
         the proxy (of each relay in its rows), etcd and the bench's clients (/proc/PID/task/*/schedstat); \
         load average after: {}",
        load_average()
    );
    if let Some(path) = &args.json {
        let report =
            json!({ "load_average_before": load, "load_average_after": load_average(), "rows": rows });
        std::fs::write(path, serde_json::to_string_pretty(&report)?)?;
    }
    drop(proxy);
    drop(relay);
    drop(http2_relay);
    etcd.stop().await;
    Ok(())
}

/// One scenario on one target: `count` operations by `clients` concurrent tasks.
async fn measure(
    scenario: Scenario,
    client: &Client,
    prefix: &str,
    value: &[u8],
    count: u64,
    clients: usize,
) -> Result<Measured> {
    match scenario {
        Scenario::Put => {
            let (client, prefix, value) = (client.clone(), prefix.to_owned(), value.to_vec());
            Ok(load::run("put", count, clients, None, move |i| {
                let (mut client, key, value) =
                    (client.clone(), format!("{prefix}{}", i % 1000), value.clone());
                async move {
                    client.put(key, value, None).await?;
                    Ok(())
                }
            })
            .await)
        }
        Scenario::Range => {
            let key = format!("{prefix}the-key");
            client.clone().put(key.clone(), value.to_vec(), None).await?;
            let client = client.clone();
            Ok(load::run("range", count, clients, None, move |_| {
                let (mut client, key) = (client.clone(), key.clone());
                async move {
                    let answer = client.get(key, None).await?;
                    ensure!(answer.kvs().len() == 1, "the key is missing");
                    Ok(())
                }
            })
            .await)
        }
        Scenario::WatchEvents => watch_events(client, prefix, value, count, clients).await,
    }
}

/// `clients` writers put `count` keys under `prefix` while one watch receives their events:
/// throughput is events per second from the first put to the last event; latency, from a
/// put's start to its event's arrival.
async fn watch_events(
    client: &Client,
    prefix: &str,
    value: &[u8],
    count: u64,
    clients: usize,
) -> Result<Measured> {
    let run = format!("{prefix}{}/", random_base64()?.replace(['/', '+', '='], ""));
    let mut events = client.clone().watch(run.clone(), Some(WatchOptions::new().with_prefix())).await?;
    let start = Instant::now();
    let sent: Arc<Vec<AtomicU64>> = Arc::new((0..count).map(|_| AtomicU64::new(0)).collect());
    let receiver = {
        let (sent, run) = (sent.clone(), run.clone());
        tokio::spawn(async move {
            let mut measured = Measured::empty();
            while measured.ok < count {
                let Some(answer) = events.message().await? else { bail!("the watch ended") };
                let now = start.elapsed().as_micros() as u64;
                for event in answer.events() {
                    if event.event_type() != EventType::Put {
                        continue;
                    }
                    let key = event.kv().map(|kv| kv.key_str().unwrap_or("")).unwrap_or("");
                    let i: usize = key
                        .strip_prefix(run.as_str())
                        .and_then(|n| n.parse().ok())
                        .context("an event of another key")?;
                    let latency = now.saturating_sub(sent[i].load(Ordering::SeqCst)).max(1);
                    let _ = measured.latencies.record(latency);
                    measured.ok += 1;
                }
            }
            measured.elapsed = start.elapsed();
            Ok(measured)
        })
    };
    let (writer, value) = (client.clone(), value.to_vec());
    let written = load::run("watch", count, clients, None, move |i| {
        let (mut client, key, value, sent) =
            (writer.clone(), format!("{run}{i}"), value.clone(), sent.clone());
        async move {
            sent[i as usize].store(start.elapsed().as_micros() as u64, Ordering::SeqCst);
            client.put(key, value, None).await?;
            Ok(())
        }
    })
    .await;
    ensure!(written.errors == 0, "puts failed: {:?}", written.first_error);
    tokio::time::timeout(Duration::from_secs(60), receiver).await.context("events missing after 60 s")??
}

/// A client logged in as the tenant, connected as the broker connects (TCP_NODELAY: with
/// etcd-client's own OpenSSL connector every call waits ~40 ms for a delayed ACK).
async fn login(endpoint: &str) -> Result<Client> {
    let options = ConnectOptions::new().with_user(TENANT, TENANT_PASSWORD);
    etcd_broker::etcd::connect(&[endpoint.to_owned()], options, &Default::default())
        .await
        .with_context(|| format!("logging in at {endpoint}"))
}

/// The tenant (read-write on both instances' prefixes), the proxy's user, and the encrypted
/// instance's record with one data key sealed by the keychain of `key_text`.
async fn setup_etcd(etcd: &LocalEtcd, names: &Names, key_text: &str) -> Result<()> {
    let mut root = etcd.root_client().await?;
    root.user_add(TENANT, TENANT_PASSWORD, None).await?;
    root.role_add(TENANT).await?;
    for instance in [PLAIN, ENCRYPTED] {
        let prefix = format!("{}{instance}/", names.data_prefix());
        root.role_grant_permission(TENANT, Permission::read_write(prefix).with_prefix()).await?;
    }
    root.user_grant_role(TENANT, TENANT).await?;
    root.user_add(PROXY_USER, PROXY_PASSWORD, None).await?;
    root.role_add(PROXY_USER).await?;
    root.role_grant_permission(PROXY_USER, Permission::read_write("/etcd-broker/proxy/").with_prefix())
        .await?;
    for records in ["bindings/", "instances/"] {
        let prefix = format!("{}{records}", etcd_broker::broker::names::DEFAULT_STATE_PREFIX);
        root.role_grant_permission(PROXY_USER, Permission::read(prefix).with_prefix()).await?;
    }
    root.user_grant_role(PROXY_USER, PROXY_USER).await?;

    let keychain = Keychain::new("bench", [Key::from_text("bench", key_text)?])?;
    let record_key = names.instance_key(&InstanceId::parse(ENCRYPTED)?);
    let mut data_key = [0u8; 32];
    std::fs::File::open("/dev/urandom")?.read_exact(&mut data_key)?;
    let sealed = etcd_broker::sealing::seal(&keychain, &data_key_name(&record_key, 1), &data_key)?;
    let record = json!({ "data_keys": [{ "version": 1, "sealed": sealed }] });
    root.put(record_key, record.to_string(), None).await?;
    Ok(())
}

/// 32 random bytes as base64: a keychain key's text.
fn random_base64() -> Result<String> {
    use base64::Engine;
    let mut bytes = [0u8; 32];
    std::fs::File::open("/dev/urandom")?.read_exact(&mut bytes)?;
    Ok(base64::engine::general_purpose::STANDARD.encode(bytes))
}

/// The proxy's own config file: the keychain that unseals the encrypted instance's data key
/// (the broker's `[secrets]` table); the prefixes are the defaults.
fn proxy_config(key_text: &str) -> String {
    format!(
        r#"[secrets]
active = "bench"
[secrets.keys.bench]
value = {key_text:?}
"#
    )
}

/// The names of the processes between the clients and etcd: the relays' are their `xtask`
/// subcommands.
const PROXY: &str = "proxy";
const TCP_RELAY: &str = "tcp-relay";
const HTTP2_RELAY: &str = "http2-relay";

/// The proxy's (or a relay's) process, killed when dropped.
struct ProxyChild {
    child: Child,
    url: String,
    /// Names its log file and its CPU figures.
    name: &'static str,
}

impl ProxyChild {
    fn start(
        bin: &std::path::Path,
        etcd: &LocalEtcd,
        config: &std::path::Path,
        dir: &std::path::Path,
    ) -> Result<Self> {
        let mut command = Command::new(bin);
        command
            .args(["--endpoints", &etcd.endpoint()])
            .args(["--user", PROXY_USER, "--log-level", "warn", "--config"])
            .arg(config)
            .env("ETCD_BROKER_PROXY_PASSWORD", PROXY_PASSWORD);
        Self::listening(command, PROXY, dir)
    }

    /// `xtask <relay>` (this program: `tcp-relay` or `http2-relay`) from a port of its own to
    /// etcd's.
    fn start_relay(relay: &'static str, etcd: &LocalEtcd, dir: &std::path::Path) -> Result<Self> {
        let mut command = Command::new(std::env::current_exe()?);
        command.args([relay, "--to", etcd.endpoint().trim_start_matches("http://")]);
        Self::listening(command, relay, dir)
    }

    /// Runs `command --listen 127.0.0.1:<a free port>` and waits until it accepts there.
    fn listening(mut command: Command, name: &'static str, dir: &std::path::Path) -> Result<Self> {
        let port = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
        let log_path = dir.join(format!("{name}.log"));
        let log = std::fs::File::create(&log_path)?;
        let child = command
            .args(["--listen", &format!("127.0.0.1:{port}")])
            .stdout(log.try_clone()?)
            .stderr(Stdio::from(log))
            .spawn()
            .with_context(|| format!("starting the {name}"))?;
        let mut started = ProxyChild { child, url: format!("http://127.0.0.1:{port}"), name };
        let deadline = Instant::now() + Duration::from_secs(20);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            if let Some(status) = started.child.try_wait()? {
                let log = std::fs::read_to_string(&log_path).unwrap_or_default();
                bail!("the {name} exited ({status}):\n{log}");
            }
            ensure!(Instant::now() < deadline, "the {name} does not listen");
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(started)
    }

    /// This process for [`CpuUse::during`], under its name.
    fn watched(&self) -> Result<Watched> {
        format!("{}={}", self.name, self.child.id()).parse()
    }
}

impl Drop for ProxyChild {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// /proc/loadavg's first three fields: how busy the machine was.
fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}

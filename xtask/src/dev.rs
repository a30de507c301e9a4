//! `xtask dev`: a local etcd (auth enabled), the broker and the tenant proxy, for trying things
//! out.
//!
//! Writes the broker config to `<dir>/broker.toml` (the documented example catalog plus a plan
//! with certificate bindings, [`CERTIFICATE_PLAN_ID`], and a plan whose values the proxy
//! encrypts, [`PROXY_PLAN_ID`]; binding passwords, private keys and data keys sealed with a key
//! generated into `<dir>/keys/dev.key`, kept across runs), the proxy's own config to
//! `<dir>/proxy.toml` (its own etcd user, made by `etcd-broker-ops proxy-user`'s code, and the
//! same key; no root credentials) and, once
//! everything answers, `<dir>/env` with the `KEY=value` lines scripts use to drive the system
//! (stack.rs's `ENV_KEYS`; the file is the "ready" signal `DevProcess` waits for, known as this
//! stack's by its `BROKER_PID`, this process's pid).
//! Runs until SIGINT/SIGTERM, then stops the broker, the proxy and etcd and removes `<dir>/env`.
//!
//! etcd serves http (the broker, password bindings) and https with client-certificate auth
//! (certificate bindings), its server certificate and the client CA from `<dir>/certs/`: the CA
//! is generated on the first run and kept, so certificates a restarted stack handed out stay
//! valid; `ETCD_CA_FILE` in the env file names it.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use etcd_broker::config::Config;
use etcd_broker::pki::ClientCa;
use etcd_broker::{logging, secrets, server};
use etcd_broker_ops::private_file::{create_private, write_private};
use local_etcd::{ClientCertAuth, EtcdVersion, LocalEtcd, Options};

/// The example config shipped in docs/, used for its catalog.
const EXAMPLE_CONFIG: &str = include_str!("../../docs/etcd-broker.example.toml");
const BROKER_USERNAME: &str = "broker";
/// The local stack's plan whose bindings are client certificates (`credentials = "certificate"`).
pub const CERTIFICATE_PLAN_ID: &str = "7c1e5d2a-9b3f-4e6a-8d0c-5f2b1a3c4d5e";
/// The example catalog's plan whose bindings expire and can be rotated.
pub const ROTATING_PLAN_ID: &str = "4b6c7d8e-9f0a-4b1c-8d2e-4f5a6b7c8d9e";
/// The local stack's plan whose instances' values the tenant proxy encrypts
/// (`encryption = true`); its bindings name the proxy's endpoints.
pub const PROXY_PLAN_ID: &str = "9d3e5f7a-1b2c-4d6e-8f0a-3b5c7d9e1f2a";
/// The proxy's own etcd user (never root).
const PROXY_USER: &str = etcd_broker_ops::proxy_user::DEFAULT_USER;
/// How long the proxy may take to listen after it started.
const PROXY_START_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(20);
/// How long the local CA and etcd's server certificate are valid.
const DEV_CA_VALIDITY: std::time::Duration = std::time::Duration::from_secs(10 * 365 * 86_400);

/// What `dev` needs to know.
#[derive(Debug, Clone)]
pub struct DevOptions {
    pub broker_port: u16,
    pub metrics_port: u16,
    pub etcd_port: u16,
    /// The proxy's port on 127.0.0.1; 0 picks a free one.
    pub proxy_port: u16,
    /// Whether to run the tenant proxy (and the plan it serves); the bench runs without it, so
    /// that the process's CPU is the broker's alone.
    pub proxy: bool,
    pub etcd_version: EtcdVersion,
    pub bcrypt_cost: Option<u32>,
    pub dir: PathBuf,
}

/// The stack's etcd keeps five minutes of revisions, as production clusters are told to
/// (docs/reliability.md "Soak"): without compaction it keeps every revision, and the soak's
/// churn grew it from 35 MB to 1 GB in half an hour. Five minutes is far longer than any of
/// the broker's compares or the proxy's watch resumptions need, and short enough that a
/// stack left running does not grow.
const AUTO_COMPACTION: std::time::Duration = std::time::Duration::from_secs(300);

/// Runs the local stack until interrupted.
pub fn run(options: DevOptions) -> Result<()> {
    actix_web::rt::System::new().block_on(serve(options))
}

async fn serve(options: DevOptions) -> Result<()> {
    // Watched from the first line: until actix serves, nothing else handles SIGINT/SIGTERM, and
    // their default action would end this process with etcd still running and its temporary
    // folder left in /tmp.
    let mut stop = std::pin::pin!(stop_signal()?);
    let dir = &options.dir;
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let env_file = dir.join("env");
    let _ = std::fs::remove_file(&env_file);

    eprintln!("starting etcd {} (auth enabled, client certificates on https)...", options.etcd_version);
    let certs = dev_certificates(dir)?;
    let starting = LocalEtcd::start(Options {
        version: options.etcd_version,
        client_port: options.etcd_port,
        bcrypt_cost: options.bcrypt_cost,
        log_file: Some(dir.join("etcd.log")),
        client_cert_auth: Some(certs.clone()),
        auto_compaction: Some(AUTO_COMPACTION),
        ..Options::default()
    });
    // Dropping an unfinished start kills its etcd and removes its folder.
    let etcd = tokio::select! {
        etcd = starting => etcd.context("cannot start etcd")?,
        signal = &mut stop => {
            eprintln!("{signal} before etcd answered: stopped");
            return Ok(());
        }
    };

    let broker_password = secrets::random_password();
    let config_path = dir.join("broker.toml");
    let key = dev_key(dir)?;
    let proxy_port = match options.proxy_port {
        0 => std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port(),
        port => port,
    };
    let proxy_url = options.proxy.then(|| format!("http://127.0.0.1:{proxy_port}"));
    let ports = (options.broker_port, options.metrics_port);
    write_private(
        &config_path,
        &broker_config(&etcd, ports, &broker_password, &key, &certs, proxy_url.as_deref())?,
    )?;
    let config = Config::load(&config_path)?;
    logging::init(config.log_level, config.log_format);
    let running = server::start(&config)?;
    let broker_url = format!("http://{}", running.addr);
    let metrics_url = running.metrics_addr.map(|a| format!("http://{a}/metrics")).unwrap_or_default();
    let proxy = match proxy_url {
        Some(_) => Some(start_proxy(dir, &etcd, &config, proxy_port, &key).await?),
        None => None,
    };

    let env = env_lines(&broker_url, &metrics_url, &broker_password, &etcd, &certs, proxy_url.as_deref());
    write_private(&env_file, &env)?;
    println!("{}", instructions(&config, &broker_url, &metrics_url, &env_file));

    // actix-web stops the server gracefully on SIGINT/SIGTERM once it serves; a signal that
    // came before it listened is this select's, and stops it the same way.
    let handles = running.handles();
    let mut serving = std::pin::pin!(running.serve());
    let served = tokio::select! {
        served = &mut serving => served,
        _ = &mut stop => {
            // The server future must be polled for the stop to complete.
            let stopping = async {
                for handle in &handles {
                    handle.stop(true).await;
                }
            };
            tokio::join!(stopping, serving).1
        }
    };
    if let Some(proxy) = proxy {
        eprintln!("stopping the proxy...");
        proxy.stop();
    }
    eprintln!("stopping etcd...");
    etcd.stop().await;
    let _ = std::fs::remove_file(&env_file);
    served.context("the broker failed")
}

/// The tenant proxy, served on a runtime of its own (the broker's is actix's, one thread).
struct ProxyThread {
    stop: tokio::sync::oneshot::Sender<()>,
    thread: std::thread::JoinHandle<anyhow::Result<()>>,
}

impl ProxyThread {
    /// Stops accepting, lets calls in flight finish, waits for the thread.
    fn stop(self) {
        let _ = self.stop.send(());
        match self.thread.join() {
            Ok(Ok(())) => {}
            Ok(Err(e)) => eprintln!("the proxy failed: {e:#}"),
            Err(_) => eprintln!("the proxy's thread panicked"),
        }
    }
}

/// Makes the proxy's own etcd user (what `etcd-broker-ops proxy-user` does, with etcd's root),
/// writes `<dir>/proxy.toml` (its user, etcd, the dev key; no root credentials) and serves the
/// proxy from it, as an operator would run `etcd-broker-proxy --config`; returns once it
/// listens on `port`.
async fn start_proxy(
    dir: &Path,
    etcd: &LocalEtcd,
    broker: &Config,
    port: u16,
    key: &Path,
) -> Result<ProxyThread> {
    let password = secrets::random_password();
    let names = etcd_broker::broker::names::Names::new(&broker.prefixes.data, &broker.prefixes.state);
    let access = etcd_broker_ops::proxy_user::ProxyAccess::new(
        PROXY_USER,
        etcd_broker_ops::proxy_user::DEFAULT_STATE_PREFIX,
        &names,
    )?;
    let mut root = etcd.root_client().await.context("etcd's root cannot log in")?;
    etcd_broker_ops::proxy_user::ensure(&mut root, &access, &password).await?;
    let mut file = toml::Table::new();
    file.insert("listen".into(), format!("127.0.0.1:{port}").into());
    file.insert("endpoints".into(), toml::Value::Array(vec![etcd.endpoint().into()]));
    file.insert("user".into(), PROXY_USER.into());
    file.insert("password".into(), password.into());
    file.insert("broker_state_prefix".into(), broker.prefixes.state.clone().into());
    file.insert("data_prefix".into(), broker.prefixes.data.clone().into());
    file.insert("secrets".into(), toml::Value::Table(dev_secrets(key)));
    let path = dir.join("proxy.toml");
    write_private(&path, &toml::to_string(&file)?)?;
    let args = <etcd_broker_proxy::config::Args as clap::Parser>::try_parse_from([
        "etcd-broker-proxy".as_ref(),
        "--config".as_ref(),
        path.as_os_str(),
    ])?;
    let config = args.into_config(None).context("the proxy's config")?;
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let thread = std::thread::Builder::new().name("etcd-broker-proxy".into()).spawn(move || {
        let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
        runtime.block_on(etcd_broker_proxy::server::run(config, async {
            let _ = stopped.await;
        }))
    })?;
    let deadline = std::time::Instant::now() + PROXY_START_TIMEOUT;
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        if thread.is_finished() {
            let error = match thread.join() {
                Ok(Err(e)) => e,
                _ => anyhow::anyhow!("it stopped"),
            };
            return Err(error.context("the proxy did not start"));
        }
        if std::time::Instant::now() > deadline {
            anyhow::bail!("the proxy does not listen on 127.0.0.1:{port} after {PROXY_START_TIMEOUT:?}");
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    Ok(ProxyThread { stop, thread })
}

/// The `[secrets]` table of both configs: sealing on, the dev key file, named `dev`.
fn dev_secrets(key: &Path) -> toml::Table {
    let mut dev_key = toml::Table::new();
    dev_key.insert("file".into(), key.display().to_string().into());
    let mut keys = toml::Table::new();
    keys.insert("dev".into(), dev_key.into());
    let mut secrets = toml::Table::new();
    secrets.insert("sealing".into(), "on".into());
    secrets.insert("active".into(), "dev".into());
    secrets.insert("keys".into(), keys.into());
    secrets
}

/// Completes when SIGINT or SIGTERM arrives, with the signal's name; registered at once, so
/// a signal that arrives before the future is polled is not lost.
fn stop_signal() -> Result<impl std::future::Future<Output = &'static str>> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut interrupt = signal(SignalKind::interrupt()).context("cannot watch SIGINT")?;
    let mut terminate = signal(SignalKind::terminate()).context("cannot watch SIGTERM")?;
    Ok(async move {
        tokio::select! {
            _ = interrupt.recv() => "SIGINT",
            _ = terminate.recv() => "SIGTERM",
        }
    })
}

/// The local stack's sealing key, `<dir>/keys/dev.key`: generated (mode 0600) on the first run
/// and kept, so that a restarted stack still reads what it sealed.
fn dev_key(dir: &Path) -> Result<PathBuf> {
    let keys = dir.join("keys");
    let path = keys.join("dev.key");
    if !path.exists() {
        std::fs::create_dir_all(&keys).with_context(|| format!("cannot create {}", keys.display()))?;
        let key = etcd_broker::sealing::Key::generate("dev")?;
        let text = key.to_text().context("a generated key is local")?;
        create_private(&path, &format!("{}\n", text.as_str()))?;
    }
    Ok(path)
}

/// The local client CA (`<dir>/certs/ca.pem` and `ca.key`, generated on the first run and kept)
/// and a fresh server certificate for 127.0.0.1 signed by it: etcd's https listener trusts the
/// CA for client certificates, and clients verify etcd with it.
fn dev_certificates(dir: &Path) -> Result<ClientCertAuth> {
    let certs = dir.join("certs");
    std::fs::create_dir_all(&certs).with_context(|| format!("cannot create {}", certs.display()))?;
    let (ca_file, ca_key) = (certs.join("ca.pem"), certs.join("ca.key"));
    let ca = if ca_file.exists() && ca_key.exists() {
        let read =
            |path: &Path| std::fs::read(path).with_context(|| format!("cannot read {}", path.display()));
        ClientCa::from_pem(&read(&ca_file)?, &read(&ca_key)?)
            .with_context(|| format!("{} and {}", ca_file.display(), ca_key.display()))?
    } else {
        let ca = ClientCa::generate("etcd-broker dev CA", DEV_CA_VALIDITY)?;
        let _ = std::fs::remove_file(&ca_key);
        create_private(&ca_key, &ca.private_key_pem()?)?;
        std::fs::write(&ca_file, ca.certificate_pem())
            .with_context(|| format!("cannot write {}", ca_file.display()))?;
        ca
    };
    let server = ca.mint_server("127.0.0.1", DEV_CA_VALIDITY)?;
    let (cert_file, key_file) = (certs.join("server.pem"), certs.join("server.key"));
    std::fs::write(&cert_file, &server.certificate)
        .with_context(|| format!("cannot write {}", cert_file.display()))?;
    write_private(&key_file, &server.private_key)?;
    Ok(ClientCertAuth { cert_file, key_file, trusted_ca_file: ca_file })
}

/// The broker config: the example's catalog plus the certificate plan, this etcd (certificate
/// bindings on its https endpoint, minted by the local CA), a loopback listener, sealing on
/// with the key file `key` (named `dev`).
fn broker_config(
    etcd: &LocalEtcd,
    (port, metrics_port): (u16, u16),
    password: &str,
    key: &Path,
    certs: &ClientCertAuth,
    proxy_url: Option<&str>,
) -> Result<String> {
    let mut table: toml::Table = toml::from_str(EXAMPLE_CONFIG).context("docs/etcd-broker.example.toml")?;
    table.insert("listen".into(), toml::Value::Table(toml::toml! { host = "127.0.0.1" }));
    table["listen"].as_table_mut().unwrap().insert("port".into(), i64::from(port).into());
    let mut metrics = toml::Table::new();
    metrics.insert("host".into(), "127.0.0.1".into());
    metrics.insert("port".into(), i64::from(metrics_port).into());
    table.insert("metrics".into(), metrics.into());
    let mut auth = toml::Table::new();
    auth.insert("username".into(), BROKER_USERNAME.into());
    auth.insert("password".into(), password.into());
    table.insert("auth".into(), auth.into());
    let mut main = toml::Table::new();
    main.insert("endpoints".into(), toml::Value::Array(vec![etcd.endpoint().into()]));
    main.insert("username".into(), etcd.root_username().into());
    main.insert("password".into(), etcd.root_password().into());
    if let Some(url) = proxy_url {
        main.insert("proxy_endpoints".into(), toml::Value::Array(vec![url.into()]));
    }
    let tls_endpoint = etcd.tls_endpoint().context("etcd has no https endpoint")?;
    main.insert("certificate_endpoints".into(), toml::Value::Array(vec![tls_endpoint.into()]));
    let plans =
        table["catalog"]["services"][0]["plans"].as_array_mut().context("the example has no plans")?;
    plans.push(toml::Value::Table(toml::toml! {
        id = CERTIFICATE_PLAN_ID
        name = "certificate"
        description = "An etcd namespace; bindings are client certificates (no password, no bcrypt)"
    }));
    if proxy_url.is_some() {
        plans.push(toml::Value::Table(toml::toml! {
            id = PROXY_PLAN_ID
            name = "encrypted"
            description = "An etcd namespace served through the tenant proxy, which encrypts its values at rest"
        }));
    }
    table["plan_configs"].as_table_mut().context("the example has no plan_configs")?.insert(
        CERTIFICATE_PLAN_ID.into(),
        toml::Value::Table(toml::toml! { cluster = "main" credentials = "certificate" }),
    );
    if proxy_url.is_some() {
        table["plan_configs"].as_table_mut().context("the example has no plan_configs")?.insert(
            PROXY_PLAN_ID.into(),
            toml::Value::Table(toml::toml! { cluster = "main" encryption = true }),
        );
    }
    let mut certificates = toml::Table::new();
    certificates.insert("ca_file".into(), certs.trusted_ca_file.display().to_string().into());
    certificates.insert(
        "key_file".into(),
        certs.trusted_ca_file.with_file_name("ca.key").display().to_string().into(),
    );
    certificates.insert("validity_days".into(), 30.into());
    table.insert("certificates".into(), certificates.into());
    let mut clusters = toml::Table::new();
    clusters.insert("main".into(), main.into());
    table.insert("clusters".into(), clusters.into());
    table.insert("secrets".into(), dev_secrets(key).into());
    Ok(toml::to_string(&table)?)
}

/// The `.dev/env` contents.
fn env_lines(
    broker_url: &str,
    metrics_url: &str,
    broker_password: &str,
    etcd: &LocalEtcd,
    certs: &ClientCertAuth,
    proxy_url: Option<&str>,
) -> String {
    let mut out = String::new();
    let values = [
        broker_url.to_owned(),
        BROKER_USERNAME.to_owned(),
        broker_password.to_owned(),
        etcd.endpoint(),
        etcd.root_username().to_owned(),
        etcd.root_password().to_owned(),
        etcd.etcdctl().display().to_string(),
        metrics_url.to_owned(),
        // For `bench --cpu-of broker=$BROKER_PID --cpu-of etcd=$ETCD_PID`.
        std::process::id().to_string(),
        etcd.pid().map_or_else(String::new, |pid| pid.to_string()),
        etcd.tls_endpoint().unwrap_or_default(),
        certs.trusted_ca_file.display().to_string(),
        CERTIFICATE_PLAN_ID.to_owned(),
        ROTATING_PLAN_ID.to_owned(),
        // Empty without the proxy (`--no-proxy`).
        proxy_url.unwrap_or_default().to_owned(),
        proxy_url.map_or_else(String::new, |_| PROXY_PLAN_ID.to_owned()),
    ];
    for (key, value) in crate::stack::ENV_KEYS.iter().zip(values) {
        let _ = writeln!(out, "{key}={value}");
    }
    out
}

/// Ready-to-paste commands; secrets come from the env file, never from this text.
fn instructions(config: &Config, broker_url: &str, metrics_url: &str, env_file: &Path) -> String {
    let service = &config.catalog.services[0];
    let plan = &service.plans[0];
    let (sid, pid) = (&service.id, &plan.id);
    format!(
        r#"
etcd-broker is listening on {broker_url}; etcd is at {etcd}; metrics at {metrics_url};
the tenant proxy is at $PROXY_ENDPOINTS.
Credentials and endpoints: {env} (KEY=value lines). Stop with Ctrl-C.

  set -a; . {env}; set +a
  H='X-Broker-API-Version: 2.17'; A="$BROKER_USERNAME:$BROKER_PASSWORD"

  # catalog
  curl -s -u "$A" -H "$H" "$BROKER_URL/v2/catalog"
  # provision
  curl -s -u "$A" -H "$H" -X PUT "$BROKER_URL/v2/service_instances/demo" -H 'Content-Type: application/json' \
    -d '{{"service_id":"{sid}","plan_id":"{pid}","organization_guid":"org","space_guid":"space"}}'
  # bind (the answer holds the credentials)
  curl -s -u "$A" -H "$H" -X PUT "$BROKER_URL/v2/service_instances/demo/service_bindings/app1" -H 'Content-Type: application/json' \
    -d '{{"service_id":"{sid}","plan_id":"{pid}"}}'
  # use them: "$ETCDCTL" --endpoints "$ETCD_ENDPOINTS" --user "<username>" --password "<password>" put /service_instances/demo/hello world
  # an encrypted instance: plan_id "$PROXY_PLAN_ID"; its bindings name the proxy ("$PROXY_ENDPOINTS"), which
  #   stores the values sealed in etcd and hands them back in clear:
  #   "$ETCDCTL" --endpoints "$PROXY_ENDPOINTS" --user "<username>" --password "<password>" put /service_instances/<id>/k v
  # a certificate binding: plan_id "$CERTIFICATE_PLAN_ID"; save "cert" and "key" of the answer's credentials, then
  #   "$ETCDCTL" --endpoints "$ETCD_TLS_ENDPOINTS" --cacert "$ETCD_CA_FILE" --cert cert.pem --key key.pem get --prefix /service_instances/demo/
  # unbind
  curl -s -u "$A" -H "$H" -X DELETE "$BROKER_URL/v2/service_instances/demo/service_bindings/app1?service_id={sid}&plan_id={pid}"
  # deprovision
  curl -s -u "$A" -H "$H" -X DELETE "$BROKER_URL/v2/service_instances/demo?service_id={sid}&plan_id={pid}"
"#,
        etcd = config.clusters["main"].endpoints[0].as_str().trim_end_matches('/'),
        env = env_file.display(),
    )
}

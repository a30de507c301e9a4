//! The proxy's flags (clap: `--help` is their reference) and the typed [`Config`] they become,
//! checked once: URLs parsed, files read, prefixes and pairs of flags validated, so that
//! nothing after [`Args::into_config`] re-reads a file or re-parses a URL. Errors name the flag
//! and never quote a file's content (a key or a password).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use clap::Parser;
use etcd_broker::broker::names::{Names, DEFAULT_DATA_PREFIX};
use etcd_broker::config::{Secret, SecretsSection};
use etcd_broker::openbao::OpenBao;
use etcd_broker::sealing::Keychain;
use etcd_broker::tls::{ClientTls, Identity};
use serde::Deserialize;
use url::Url;

/// Where the proxy keeps its records in etcd unless told otherwise: beside the broker's state
/// (`/etcd-broker/`), which no tenant role may cover.
pub const DEFAULT_STATE_PREFIX: &str = "/etcd-broker/proxy/";

/// Between two sweeps of the records of ended leases unless told otherwise.
const DEFAULT_LEASE_SWEEP: std::time::Duration = std::time::Duration::from_secs(60);
/// The longest pause between two sweeps: records of ended leases should not wait for days.
const MAX_LEASE_SWEEP_SECONDS: u64 = 86_400;

/// At most this many worker threads (`--workers`).
const MAX_WORKERS: u16 = 256;

/// The broker's state prefix unless told otherwise: the broker's own default.
pub const DEFAULT_BROKER_STATE_PREFIX: &str = etcd_broker::broker::names::DEFAULT_STATE_PREFIX;

/// The address served unless told otherwise.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:2379";

/// The proxy's config template for BOSH (`--bosh-properties`): the job's properties.json in,
/// the proxy's TOML out, with the broker's BOSH helpers (`etcd_broker::render`).
pub const BOSH_TEMPLATE: &str = include_str!("../../templates/etcd-broker-proxy.toml.hbs");

/// The tenant proxy for etcd v3: etcd's gRPC API for unmodified clients (etcdctl, client
/// libraries), forwarded to a shared etcd cluster with each caller's own token, so that etcd's
/// RBAC still decides; cluster-wide operations are refused to tenants and leases belong to the
/// user who granted them (docs/proxy.md). Settings come from flags (and their environment
/// variables), which win, then from --config's file, then the defaults shown.
#[derive(Debug, Default, Parser)]
#[command(name = "etcd-broker-proxy", version, about, long_about = None)]
pub struct Args {
    /// The proxy's own config file (TOML, docs/proxy.md): every setting below under its flag's
    /// name (`listen`, `endpoints`, ...; PEM text in `[tls]` and `[endpoints_tls]`), and
    /// `[secrets]`, the keys that unseal encrypting plans' data keys, in the broker's format.
    #[arg(long, env = "ETCD_BROKER_PROXY_CONFIG", conflicts_with = "bosh_properties")]
    pub config: Option<PathBuf>,

    /// The BOSH job's properties.json, rendered into the config file's TOML
    /// (templates/etcd-broker-proxy.toml.hbs) and read like --config.
    #[arg(long, env = "ETCD_BROKER_PROXY_BOSH_PROPERTIES")]
    pub bosh_properties: Option<PathBuf>,

    /// Address to serve etcd's gRPC API on (port 0: a free port, printed at start)
    /// [default: 127.0.0.1:2379].
    #[arg(long, env = "ETCD_BROKER_PROXY_LISTEN")]
    pub listen: Option<String>,

    /// The client URLs the proxy answers MemberList with (comma-separated), so that clients
    /// which discover members keep talking to the proxy; default: the listen address, which
    /// must then not be a wildcard address.
    #[arg(long, env = "ETCD_BROKER_PROXY_ADVERTISE_CLIENT_URLS", value_delimiter = ',')]
    pub advertise_client_urls: Vec<String>,

    /// The etcd cluster's client URLs (comma-separated, http:// or https://) the proxy forwards
    /// to. Required (here or in the config file).
    #[arg(long, env = "ETCD_BROKER_PROXY_ENDPOINTS", value_delimiter = ',')]
    pub endpoints: Vec<String>,

    /// CA certificate (PEM) that verifies the https endpoints; default: the system's CAs.
    #[arg(long, env = "ETCD_BROKER_PROXY_ENDPOINTS_CA_FILE")]
    pub endpoints_ca_file: Option<PathBuf>,

    /// Client certificate (PEM, chain after it) the proxy presents to https endpoints; with
    /// --endpoints-key-file. Tenants' requests still carry their own tokens (docs/proxy.md).
    #[arg(long, env = "ETCD_BROKER_PROXY_ENDPOINTS_CERT_FILE", requires = "endpoints_key_file")]
    pub endpoints_cert_file: Option<PathBuf>,

    /// The private key (PEM) of --endpoints-cert-file.
    #[arg(long, env = "ETCD_BROKER_PROXY_ENDPOINTS_KEY_FILE", requires = "endpoints_cert_file")]
    pub endpoints_key_file: Option<PathBuf>,

    /// Serve TLS with this certificate (PEM, chain after it); with --tls-key-file. Without it
    /// the proxy serves plain gRPC.
    #[arg(long, env = "ETCD_BROKER_PROXY_TLS_CERT_FILE", requires = "tls_key_file")]
    pub tls_cert_file: Option<PathBuf>,

    /// The private key (PEM) of --tls-cert-file.
    #[arg(long, env = "ETCD_BROKER_PROXY_TLS_KEY_FILE", requires = "tls_cert_file")]
    pub tls_key_file: Option<PathBuf>,

    /// The proxy's own etcd user, which writes its records (the owners of leases) under
    /// --state-prefix and reads the broker's binding and instance records; it is never used
    /// on a tenant's behalf, and is not root. Required (here or in the config file).
    #[arg(long, env = "ETCD_BROKER_PROXY_USER")]
    pub user: Option<String>,

    /// File holding the password of --user (its first line); or the environment variable
    /// ETCD_BROKER_PROXY_PASSWORD, or `password`/`password_file` in the config file. Never a
    /// flag: flags show in `ps`.
    #[arg(long, env = "ETCD_BROKER_PROXY_PASSWORD_FILE")]
    pub password_file: Option<PathBuf>,

    /// etcd users who are operators, not tenants (comma-separated): the tenant firewall lets
    /// them compact and see etcd's own status [default: root].
    #[arg(long, env = "ETCD_BROKER_PROXY_ADMIN_USERS", value_delimiter = ',')]
    pub admin_users: Vec<String>,

    /// Key prefix of the proxy's records in etcd (leases under `<prefix>leases/`); only the
    /// proxy's user may read or write it. Must start and end with '/'
    /// [default: /etcd-broker/proxy/].
    #[arg(long, env = "ETCD_BROKER_PROXY_STATE_PREFIX")]
    pub state_prefix: Option<String>,

    /// The broker's state prefix (its `[prefixes] state`): the proxy watches its binding
    /// records (`<prefix>bindings/`) to revoke unbound and expired bindings' users at once,
    /// and reads instance records (`<prefix>instances/`) for their data keys, so its user
    /// needs read access to both. Must start and end with '/' [default: /etcd-broker/].
    #[arg(long, env = "ETCD_BROKER_PROXY_BROKER_STATE_PREFIX")]
    pub broker_state_prefix: Option<String>,

    /// The broker's data prefix (its `[prefixes] data`), under which instances' values are
    /// encrypted [default: /service_instances/].
    #[arg(long, env = "ETCD_BROKER_PROXY_DATA_PREFIX")]
    pub data_prefix: Option<String>,

    /// Removed: the broker's config file holds etcd's root credentials, which the proxy must
    /// not hold. Refused with a pointer to --config.
    #[arg(long, env = "ETCD_BROKER_PROXY_BROKER_CONFIG", hide = true)]
    pub broker_config: Option<PathBuf>,

    /// How often the proxy deletes its records of leases that no longer exist (expired, or
    /// revoked directly on etcd), in seconds (1-86400) [default: 60].
    #[arg(long, env = "ETCD_BROKER_PROXY_LEASE_SWEEP_SECONDS",
          value_parser = clap::value_parser!(u64).range(1..=MAX_LEASE_SWEEP_SECONDS))]
    pub lease_sweep_seconds: Option<u64>,

    /// How many instances' quota usage shares the metrics export (the fullest ones); 0: none.
    /// Bounds the series, whatever the number of instances [default: 10].
    #[arg(long, env = "ETCD_BROKER_PROXY_QUOTA_TOP_INSTANCES")]
    pub quota_top_instances: Option<usize>,

    /// Threads serving requests (1-256). With 1, one thread does everything (no request's
    /// tasks wake another thread): the least CPU per request; more only pay off with cores to
    /// spare for the proxy alone [default: 1].
    #[arg(long, env = "ETCD_BROKER_PROXY_WORKERS",
          value_parser = clap::value_parser!(u16).range(1..=MAX_WORKERS as i64))]
    pub workers: Option<u16>,

    /// Log filter: error, warn, info, debug, trace, or a tracing filter (`RUST_LOG` wins)
    /// [default: info].
    #[arg(long, env = "ETCD_BROKER_PROXY_LOG_LEVEL")]
    pub log_level: Option<String>,

    /// Address of the monitoring listener: /metrics (Prometheus), /health, /ready (plain
    /// HTTP, no authentication; keep it off the tenants' network). Default: none.
    #[arg(long, env = "ETCD_BROKER_PROXY_MONITORING_LISTEN")]
    pub monitoring_listen: Option<SocketAddr>,
}

/// The proxy's own config file (`--config`, or rendered from BOSH properties): the flags'
/// settings under their names, PEM text instead of certificate files, and `[secrets]`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConfigFile {
    pub listen: Option<String>,
    pub advertise_client_urls: Option<Vec<String>>,
    pub endpoints: Option<Vec<String>>,
    pub endpoints_tls: Option<EndpointsTlsFile>,
    pub tls: Option<TlsFile>,
    pub user: Option<String>,
    pub password: Option<Secret>,
    pub password_file: Option<PathBuf>,
    pub admin_users: Option<Vec<String>>,
    pub state_prefix: Option<String>,
    pub broker_state_prefix: Option<String>,
    pub data_prefix: Option<String>,
    pub lease_sweep_seconds: Option<u64>,
    pub quota_top_instances: Option<usize>,
    pub workers: Option<u16>,
    pub log_level: Option<String>,
    pub monitoring_listen: Option<SocketAddr>,
    /// The broker's `[secrets]` format: keys (file, value, passphrase or transit), `active`,
    /// `[secrets.openbao]`. Only what unseals data keys; no etcd credentials.
    pub secrets: Option<SecretsSection>,
}

/// `[endpoints_tls]`: how the proxy verifies etcd and presents itself (PEM text).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EndpointsTlsFile {
    pub ca: Option<String>,
    pub certificate: Option<String>,
    pub private_key: Option<Secret>,
}

/// `[tls]`: the listener's certificate (chain after it) and key (PEM text).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsFile {
    pub certificate: String,
    pub private_key: Secret,
}

/// The proxy's settings, valid by construction.
#[derive(Debug, Clone)]
pub struct Config {
    pub listen: SocketAddr,
    /// What MemberList answers: one member per URL.
    pub advertise_client_urls: Vec<Url>,
    /// etcd's client URLs.
    pub endpoints: Vec<Url>,
    /// How to verify and present ourselves to https endpoints.
    pub endpoints_tls: ClientTls,
    /// The listener's certificate and key when it serves TLS.
    pub tls: Option<Identity>,
    /// The proxy's own etcd user and password.
    pub user: String,
    pub password: Secret,
    pub admin_users: Vec<String>,
    pub state_prefix: String,
    /// The broker's key and name scheme: where its binding records are, how user names map
    /// to them.
    pub broker_names: Names,
    /// The keys of the config file's `[secrets]`: they unseal instances' data keys.
    pub keychain: Option<Keychain>,
    /// Between two sweeps of the records of leases that no longer exist.
    pub lease_sweep: std::time::Duration,
    /// The OpenBao of transit keys in `[secrets]`, whose token the server keeps renewed.
    pub openbao: Option<Arc<OpenBao>>,
    /// How many instances' shares the quota metrics export.
    pub quota_top_instances: usize,
    /// Threads of the runtime: 1 is a current-thread runtime (see `--workers`).
    pub workers: usize,
    pub log_level: String,
    /// Where /metrics, /health and /ready are served, if anywhere.
    pub monitoring_listen: Option<SocketAddr>,
}

/// A setting that cannot be used, named by its flag or by its key in the config file; never
/// quotes a file's content (a key or a password).
#[derive(Debug, thiserror::Error)]
#[error("{setting}: {problem}")]
pub struct ConfigError {
    setting: String,
    problem: String,
}

fn bad(setting: impl Into<String>, problem: impl Into<String>) -> ConfigError {
    ConfigError { setting: setting.into(), problem: problem.into() }
}

/// Where the config file came from, for naming its settings in errors.
struct FileSource {
    what: String,
}

impl FileSource {
    fn name(&self, key: &str) -> String {
        format!("{key} (in {})", self.what)
    }
}

/// A value from a flag if given, else from the config file, with the name to blame it on.
fn pick<T>(
    flag: (&'static str, Option<T>),
    key: (&str, Option<T>),
    source: &FileSource,
) -> Option<(String, T)> {
    match flag {
        (name, Some(value)) => Some((name.to_owned(), value)),
        (_, None) => key.1.map(|value| (source.name(key.0), value)),
    }
}

/// A list flag if given (non-empty), else the config file's list.
fn pick_list(
    flag: (&'static str, Vec<String>),
    key: (&str, Option<Vec<String>>),
    source: &FileSource,
) -> Option<(String, Vec<String>)> {
    let flag = (flag.0, Some(flag.1).filter(|v| !v.is_empty()));
    pick(flag, key, source)
}

impl Args {
    /// Reads the config file (`--config`, or the one rendered from `--bosh-properties`) if
    /// any, lets flags win over it, checks everything and reads the files named;
    /// `password_env` is the value of `ETCD_BROKER_PROXY_PASSWORD` (passed in, so tests need
    /// not touch the environment).
    pub fn into_config(self, password_env: Option<String>) -> Result<Config, ConfigError> {
        if let Some(path) = &self.broker_config {
            return Err(bad(
                "--broker-config",
                format!(
                    "is no longer read ({}): the broker's config holds etcd's root credentials, which \
                     the proxy must not hold; give the proxy its own file with --config, holding the \
                     broker's [secrets] table and its prefixes (docs/proxy.md)",
                    path.display()
                ),
            ));
        }
        let (file, source) = self.config_file()?;
        self.merge(file, &source, password_env)
    }

    /// The settings of a config file's TOML alone, checked like a start with `--config`
    /// (`etcd-broker-ops render` checks the BOSH job's rendered config with it); `what` names
    /// the file in errors.
    pub fn config_from_toml(text: &str, what: &str) -> Result<Config, ConfigError> {
        let file = parse_file(text).map_err(|problem| bad(what, problem))?;
        Args::default().merge(file, &FileSource { what: what.to_owned() }, None)
    }

    fn merge(
        self,
        file: ConfigFile,
        source: &FileSource,
        password_env: Option<String>,
    ) -> Result<Config, ConfigError> {
        let listen_text = pick(("--listen", self.listen), ("listen", file.listen), source)
            .unwrap_or_else(|| ("--listen".to_owned(), DEFAULT_LISTEN.to_owned()));
        let listen: SocketAddr = listen_text.1.trim().parse().map_err(|e| {
            bad(&listen_text.0, format!("'{}' is not an address (host:port): {e}", listen_text.1))
        })?;
        let (endpoints_name, endpoints) =
            pick_list(("--endpoints", self.endpoints), ("endpoints", file.endpoints), source)
                .ok_or_else(|| bad("--endpoints", "at least one etcd client URL is needed"))?;
        let endpoints =
            endpoints.iter().map(|e| client_url(&endpoints_name, e)).collect::<Result<Vec<_>, _>>()?;
        if endpoints.is_empty() {
            return Err(bad(endpoints_name, "at least one etcd client URL is needed"));
        }

        let tls = match (&self.tls_cert_file, &self.tls_key_file, file.tls) {
            (Some(cert), Some(key), _) => Some((
                "--tls-cert-file".to_owned(),
                Identity {
                    certificate: read("--tls-cert-file", cert)?,
                    private_key: read("--tls-key-file", key)?,
                },
            )),
            (None, None, Some(tls)) => Some((
                source.name("tls"),
                Identity {
                    certificate: tls.certificate.into_bytes(),
                    private_key: tls.private_key.expose().as_bytes().to_vec(),
                },
            )),
            (None, None, None) => None,
            _ => return Err(bad("--tls-cert-file", "--tls-cert-file and --tls-key-file go together")),
        };
        if let Some((name, identity)) = &tls {
            // Refused now, with the setting's name, rather than at the first connection.
            etcd_broker::tls::acceptor(identity).map_err(|e| bad(name, e.to_string()))?;
        }
        let tls = tls.map(|(_, identity)| identity);
        let scheme = if tls.is_some() { "https" } else { "http" };
        let advertise_client_urls = match pick_list(
            ("--advertise-client-urls", self.advertise_client_urls),
            ("advertise_client_urls", file.advertise_client_urls),
            source,
        ) {
            None => {
                if listen.ip().is_unspecified() {
                    return Err(bad(
                        "--advertise-client-urls",
                        format!("needed when --listen is a wildcard address ({listen})"),
                    ));
                }
                vec![client_url("--listen", &format!("{scheme}://{listen}"))?]
            }
            Some((name, urls)) => urls.iter().map(|u| client_url(&name, u)).collect::<Result<Vec<_>, _>>()?,
        };

        let file_tls = file.endpoints_tls.unwrap_or_default();
        let endpoints_tls = ClientTls {
            ca: match (&self.endpoints_ca_file, file_tls.ca) {
                (Some(path), _) => Some(read("--endpoints-ca-file", path)?),
                (None, ca) => ca.map(String::into_bytes),
            },
            identity: match (&self.endpoints_cert_file, &self.endpoints_key_file) {
                (Some(cert), Some(key)) => Some(Identity {
                    certificate: read("--endpoints-cert-file", cert)?,
                    private_key: read("--endpoints-key-file", key)?,
                }),
                (None, None) => match (file_tls.certificate, file_tls.private_key) {
                    (Some(certificate), Some(key)) => Some(Identity {
                        certificate: certificate.into_bytes(),
                        private_key: key.expose().as_bytes().to_vec(),
                    }),
                    (None, None) => None,
                    _ => {
                        return Err(bad(
                            source.name("endpoints_tls"),
                            "certificate and private_key go together",
                        ))
                    }
                },
                _ => {
                    return Err(bad(
                        "--endpoints-cert-file",
                        "--endpoints-cert-file and --endpoints-key-file go together",
                    ))
                }
            },
        };
        etcd_broker::tls::connector(&endpoints_tls).map_err(|e| bad("--endpoints-*-file", e.to_string()))?;

        let (user_name, user) = pick(("--user", self.user), ("user", file.user), source)
            .ok_or_else(|| bad("--user", "the proxy's own etcd user is needed"))?;
        if user.trim().is_empty() {
            return Err(bad(user_name, "must not be empty"));
        }
        if user == "root" {
            return Err(bad(
                user_name,
                "must not be root: the proxy needs only its own records and read access to the \
                 broker's (docs/security.md)",
            ));
        }
        let from_file = |flag: &'static str, path: &Path| -> Result<String, ConfigError> {
            let text = read(flag, path)?;
            let text = String::from_utf8(text).map_err(|_| bad(flag, "is not UTF-8"))?;
            Ok(text.lines().next().unwrap_or("").to_owned())
        };
        let password = match (&self.password_file, password_env, &file.password_file, file.password) {
            (Some(path), _, _, _) => from_file("--password-file", path)?,
            (None, Some(password), _, _) => password,
            (None, None, Some(path), _) => {
                let text =
                    read("password_file", path).map_err(|e| bad(source.name("password_file"), e.problem))?;
                let text =
                    String::from_utf8(text).map_err(|_| bad(source.name("password_file"), "is not UTF-8"))?;
                text.lines().next().unwrap_or("").to_owned()
            }
            (None, None, None, Some(password)) => password.expose().to_owned(),
            (None, None, None, None) => {
                return Err(bad(
                    "--password-file",
                    "the proxy's user needs a password: --password-file, ETCD_BROKER_PROXY_PASSWORD \
                     or the config file's password",
                ))
            }
        };
        if password.is_empty() {
            return Err(bad("--password-file", "the password is empty"));
        }
        let admin_users =
            pick_list(("--admin-users", self.admin_users), ("admin_users", file.admin_users), source)
                .map_or_else(|| vec!["root".to_owned()], |(_, users)| users);
        let admin_users: Vec<String> =
            admin_users.iter().map(|u| u.trim().to_owned()).filter(|u| !u.is_empty()).collect();
        let prefix_of =
            |flag: &'static str, value: Option<String>, key: &str, file: Option<String>, default: &str| {
                let (name, value) = pick((flag, value), (key, file), source)
                    .unwrap_or_else(|| (flag.to_owned(), default.to_owned()));
                prefix(&name, &value).map(|()| value)
            };
        let state_prefix = prefix_of(
            "--state-prefix",
            self.state_prefix,
            "state_prefix",
            file.state_prefix,
            DEFAULT_STATE_PREFIX,
        )?;
        let broker_state_prefix = prefix_of(
            "--broker-state-prefix",
            self.broker_state_prefix,
            "broker_state_prefix",
            file.broker_state_prefix,
            DEFAULT_BROKER_STATE_PREFIX,
        )?;
        let data_prefix = prefix_of(
            "--data-prefix",
            self.data_prefix,
            "data_prefix",
            file.data_prefix,
            DEFAULT_DATA_PREFIX,
        )?;
        let (log_name, log_level) =
            pick(("--log-level", self.log_level), ("log_level", file.log_level), source)
                .unwrap_or_else(|| ("--log-level".to_owned(), "info".to_owned()));
        tracing_subscriber::EnvFilter::try_new(&log_level)
            .map_err(|e| bad(log_name, format!("'{log_level}': {e}")))?;
        let lease_sweep = match pick(
            ("--lease-sweep-seconds", self.lease_sweep_seconds),
            ("lease_sweep_seconds", file.lease_sweep_seconds),
            source,
        ) {
            None => DEFAULT_LEASE_SWEEP,
            Some((_, seconds @ 1..=MAX_LEASE_SWEEP_SECONDS)) => std::time::Duration::from_secs(seconds),
            Some((name, _)) => {
                return Err(bad(name, format!("must be 1 to {MAX_LEASE_SWEEP_SECONDS} seconds")))
            }
        };
        let quota_top_instances = pick(
            ("--quota-top-instances", self.quota_top_instances),
            ("quota_top_instances", file.quota_top_instances),
            source,
        )
        .map_or(crate::quotas::metrics::DEFAULT_TOP_INSTANCES, |(_, top)| top);
        let workers = match pick(("--workers", self.workers), ("workers", file.workers), source) {
            None => 1,
            Some((_, workers @ 1..=MAX_WORKERS)) => usize::from(workers),
            Some((name, _)) => return Err(bad(name, format!("must be 1 to {MAX_WORKERS} threads"))),
        };
        let monitoring_listen = self.monitoring_listen.or(file.monitoring_listen);
        let (keychain, openbao) = match &file.secrets {
            None => (None, None),
            Some(secrets) => secrets.keychain().map_err(|e| bad(source.name("secrets"), e.to_string()))?,
        };
        Ok(Config {
            listen,
            advertise_client_urls,
            endpoints,
            endpoints_tls,
            tls,
            user,
            password: Secret::new(password),
            admin_users,
            state_prefix,
            broker_names: Names::new(&data_prefix, &broker_state_prefix),
            keychain,
            lease_sweep,
            openbao,
            quota_top_instances,
            workers,
            log_level,
            monitoring_listen,
        })
    }

    /// The config file's settings (empty without one) and how to name them.
    fn config_file(&self) -> Result<(ConfigFile, FileSource), ConfigError> {
        let (flag, path, text) = match (&self.config, &self.bosh_properties) {
            (Some(path), _) => ("--config", path, None),
            (None, Some(path)) => {
                let properties = read("--bosh-properties", path)?;
                let properties =
                    String::from_utf8(properties).map_err(|_| bad("--bosh-properties", "is not UTF-8"))?;
                let toml = etcd_broker::render::render_config(BOSH_TEMPLATE, &properties)
                    .map_err(|e| bad("--bosh-properties", format!("{}: {e}", path.display())))?;
                ("--bosh-properties", path, Some(toml))
            }
            (None, None) => return Ok((ConfigFile::default(), FileSource { what: String::new() })),
        };
        let text = match text {
            Some(text) => text,
            None => String::from_utf8(read(flag, path)?).map_err(|_| bad(flag, "is not UTF-8"))?,
        };
        let source = FileSource { what: format!("{flag} {}", path.display()) };
        let file = parse_file(&text).map_err(|problem| bad(format!("{flag} {}", path.display()), problem))?;
        Ok((file, source))
    }
}

/// The config file's TOML; the error gives the line but not the line's text, which may hold a
/// secret.
pub fn parse_file(text: &str) -> Result<ConfigFile, String> {
    toml::from_str(text).map_err(|e| {
        let message = e.message().trim_end();
        match e.span() {
            Some(span) => {
                let before = text.get(..span.start).unwrap_or(text);
                format!("line {}: {message}", before.matches('\n').count() + 1)
            }
            None => message.to_owned(),
        }
    })
}

/// A key prefix: starts and ends with '/', and is not '/'.
fn prefix(flag: &str, prefix: &str) -> Result<(), ConfigError> {
    if !prefix.starts_with('/') || !prefix.ends_with('/') || prefix == "/" {
        return Err(bad(flag, format!("'{prefix}' must start and end with '/' and not be '/'")));
    }
    Ok(())
}

/// An http(s) URL with a host and no path, query or credentials: what etcd calls a client URL.
fn client_url(flag: &str, text: &str) -> Result<Url, ConfigError> {
    let url = Url::parse(text.trim()).map_err(|e| bad(flag, format!("'{text}' is not a URL: {e}")))?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(bad(flag, format!("'{text}' must be an http:// or https:// URL")));
    }
    if url.host_str().map_or(true, str::is_empty) || url.port_or_known_default().is_none() {
        return Err(bad(flag, format!("'{text}' has no host")));
    }
    if !url.username().is_empty() || url.password().is_some() {
        // Not quoted: it holds credentials.
        return Err(bad(flag, "a URL must not hold credentials"));
    }
    if url.path() != "/" || url.query().is_some() || url.fragment().is_some() {
        return Err(bad(flag, format!("'{text}' must have no path, query or fragment")));
    }
    Ok(url)
}

/// A file's bytes; the error names the flag and the path, never the content.
fn read(flag: &str, path: &Path) -> Result<Vec<u8>, ConfigError> {
    std::fs::read(path).map_err(|e| bad(flag, format!("cannot read {}: {e}", path.display())))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<Config, String> {
        let args =
            Args::try_parse_from(["etcd-broker-proxy"].iter().chain(args)).map_err(|e| e.to_string())?;
        args.into_config(Some("pw".into())).map_err(|e| e.to_string())
    }

    const BASE: [&str; 4] =
        ["--endpoints", "http://127.0.0.1:2379,https://etcd.example:2379", "--user", "proxy"];

    #[test]
    fn defaults_advertise_the_listen_address() {
        let config = parse(&BASE).unwrap();
        assert_eq!(config.endpoints.len(), 2);
        assert_eq!(config.advertise_client_urls[0].as_str(), "http://127.0.0.1:2379/");
        assert_eq!(config.admin_users, ["root"]);
        assert_eq!(config.state_prefix, DEFAULT_STATE_PREFIX);
        assert_eq!(config.password.expose(), "pw");
        assert_eq!(config.workers, 1);
    }

    #[test]
    fn workers_are_1_to_256() {
        let with = |workers: &str| {
            let mut args = BASE.to_vec();
            args.extend(["--workers", workers]);
            parse(&args).map(|config| config.workers)
        };
        assert_eq!(with("4").unwrap(), 4);
        assert!(with("0").is_err());
        assert!(with("257").is_err());
    }

    #[test]
    fn bad_values_are_named_by_their_flag() {
        let cases: &[(&[&str], &str)] = &[
            (&["--endpoints", "ftp://x:1", "--user", "p"], "--endpoints: 'ftp://x:1' must be an http"),
            (
                &["--endpoints", "http://u:secret@x:1", "--user", "p"],
                "--endpoints: a URL must not hold credentials",
            ),
            (&["--endpoints", "http://x:1/v3", "--user", "p"], "must have no path"),
            (&["--endpoints", "nope", "--user", "p"], "--endpoints: 'nope' is not a URL"),
            (&["--state-prefix", "nope"], "--state-prefix: 'nope' must start and end with '/'"),
            (&["--broker-state-prefix", "/"], "--broker-state-prefix: '/' must start and end"),
            (&["--listen", "0.0.0.0:2379"], "--advertise-client-urls: needed when --listen is a wildcard"),
            (&["--password-file", "/nonexistent/pw"], "--password-file: cannot read /nonexistent/pw"),
            (&["--tls-cert-file", "/nonexistent/c"], "--tls-key-file"),
            (&["--listen", "localhost"], "--listen: 'localhost' is not an address"),
            (&["--data-prefix", "x/"], "--data-prefix: 'x/' must start and end with '/'"),
            (&["--config", "/nonexistent/proxy.toml"], "--config: cannot read /nonexistent/proxy.toml"),
            (&["--bosh-properties", "/nonexistent/p.json"], "--bosh-properties: cannot read"),
            (&["--endpoints-ca-file", "/nonexistent/ca"], "--endpoints-ca-file: cannot read"),
            (&["--log-level", "info,=[x"], "--log-level"),
        ];
        for (args, expected) in cases {
            let mut all: Vec<&str> = if args.contains(&"--endpoints") { vec![] } else { BASE.to_vec() };
            all.extend_from_slice(args);
            let error = parse(&all).unwrap_err();
            assert!(error.contains(expected), "{args:?}: {error}");
            assert!(!error.contains("secret"), "{error}");
        }
    }

    #[test]
    fn missing_settings_are_named() {
        let error = parse(&["--user", "p"]).unwrap_err();
        assert!(error.starts_with("--endpoints: at least one etcd client URL"), "{error}");
        let error = parse(&["--endpoints", "http://x:1"]).unwrap_err();
        assert!(error.starts_with("--user: the proxy's own etcd user is needed"), "{error}");
        let error = parse(&["--endpoints", "http://x:1", "--user", "root"]).unwrap_err();
        assert!(error.starts_with("--user: must not be root"), "{error}");
    }

    #[test]
    fn the_broker_config_is_refused_with_the_way_out() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("broker.toml");
        std::fs::write(&path, "[clusters.main]\npassword = \"root-secret\"\n").unwrap();
        let mut args = BASE.to_vec();
        args.extend(["--broker-config", path.to_str().unwrap()]);
        let error = parse(&args).unwrap_err();
        assert!(error.starts_with("--broker-config: is no longer read"), "{error}");
        assert!(error.contains("--config") && !error.contains("root-secret"), "{error}");
    }

    fn write(dir: &tempfile::TempDir, name: &str, text: &str) -> String {
        let path = dir.path().join(name);
        std::fs::write(&path, text).unwrap();
        path.to_str().unwrap().to_owned()
    }

    #[test]
    fn the_config_file_holds_every_setting_and_flags_win() {
        let dir = tempfile::tempdir().unwrap();
        let key = etcd_broker::sealing::Key::generate("k1").unwrap().to_text().unwrap().as_str().to_owned();
        let config = write(
            &dir,
            "proxy.toml",
            &format!(
                r#"listen = "0.0.0.0:2391"
advertise_client_urls = ["http://proxy.example:2391"]
endpoints = ["http://10.0.0.1:2379"]
user = "etcd-broker-proxy"
password = "from-the-file"
admin_users = ["root", "ops"]
state_prefix = "/p/"
broker_state_prefix = "/b/"
data_prefix = "/d/"
log_level = "debug"
[secrets]
active = "k1"
[secrets.keys.k1]
value = {key:?}
"#
            ),
        );
        let args = Args::try_parse_from(["etcd-broker-proxy", "--config", &config]).unwrap();
        let parsed = args.into_config(None).unwrap();
        assert_eq!(parsed.listen.to_string(), "0.0.0.0:2391");
        assert_eq!(parsed.advertise_client_urls[0].as_str(), "http://proxy.example:2391/");
        assert_eq!((parsed.user.as_str(), parsed.password.expose()), ("etcd-broker-proxy", "from-the-file"));
        assert_eq!(parsed.admin_users, ["root", "ops"]);
        assert_eq!(parsed.state_prefix, "/p/");
        assert_eq!(parsed.broker_names.all_bindings_prefix(), "/b/bindings/");
        assert_eq!(parsed.log_level, "debug");
        assert_eq!(parsed.keychain.as_ref().unwrap().active().name(), "k1");

        let args = Args::try_parse_from([
            "etcd-broker-proxy",
            "--config",
            &config,
            "--endpoints",
            "http://10.0.0.2:2379",
            "--state-prefix",
            "/q/",
        ])
        .unwrap();
        let parsed = args.into_config(Some("from-the-env".into())).unwrap();
        assert_eq!(parsed.endpoints[0].as_str(), "http://10.0.0.2:2379/");
        assert_eq!(parsed.state_prefix, "/q/");
        assert_eq!(parsed.password.expose(), "from-the-env");
    }

    #[test]
    fn bad_file_settings_are_named_by_key_and_file() {
        let dir = tempfile::tempdir().unwrap();
        let cases: &[(&str, &str)] = &[
            ("endpoints = [\"ftp://x:1\"]\nuser = \"p\"\n", "endpoints (in --config "),
            ("endpoints = [\"http://x:1\"]\nuser = \"p\"\nstate_prefix = \"x\"\n", "state_prefix (in --config "),
            ("endpoints = [\"http://x:1\"]\nuser = \"p\"\nsurprise = 1\n", "line 3: unknown field `surprise`"),
            (
                "endpoints = [\"http://x:1\"]\nuser = \"p\"\n[secrets]\nactive = \"k\"\n[secrets.keys.k]\nvalue = \"not-a-secret-key\"\n",
                "secrets (in --config ",
            ),
            ("endpoints = [\"http://x:1\"]\nuser = \"p\"\n[tls]\ncertificate = \"x\"\nprivate_key = \"y\"\n", "tls (in --config "),
        ];
        for (text, expected) in cases {
            let path = write(&dir, "proxy.toml", text);
            let error = parse(&["--config", &path]).unwrap_err();
            assert!(error.contains(expected), "{text}: {error}");
            assert!(!error.contains("not-a-secret-key"), "{error}");
        }
    }

    #[test]
    fn bosh_properties_render_into_the_config() {
        let dir = tempfile::tempdir().unwrap();
        let properties = serde_json::json!({
            "properties": {
                "log_level": "info", "listen": { "address": "0.0.0.0", "port": 2391 },
                "user": "etcd-broker-proxy", "password": "pw", "admin_users": ["root"],
                "state_prefix": "/etcd-broker/proxy/", "broker_state_prefix": "/etcd-broker/",
                "data_prefix": "/service_instances/",
                "secrets": { "active": "k1", "keys": { "k1": { "passphrase": "abcdefghijklmnopqrstuvwxyz0123456789ABCD" } } },
            },
            "links": { "etcd": { "instances": [{ "address": "10.0.0.5" }], "properties": { "port": 2379 } } },
            "spec": { "address": "10.0.0.9" },
        });
        let path = write(&dir, "properties.json", &properties.to_string());
        let parsed = Args::try_parse_from(["etcd-broker-proxy", "--bosh-properties", &path])
            .unwrap()
            .into_config(None)
            .unwrap();
        assert_eq!(parsed.endpoints[0].as_str(), "https://10.0.0.5:2379/");
        assert_eq!(parsed.advertise_client_urls[0].as_str(), "http://10.0.0.9:2391/");
        assert!(parsed.keychain.is_some());
        let mut missing = properties.clone();
        missing["properties"].as_object_mut().unwrap().remove("password");
        let path = write(&dir, "properties.json", &missing.to_string());
        let error = parse(&["--bosh-properties", &path]).unwrap_err();
        assert!(error.contains("Can't find property 'password'"), "{error}");
    }

    #[test]
    fn a_password_is_needed_and_never_printed() {
        let args = Args::try_parse_from(["etcd-broker-proxy"].iter().chain(&BASE)).unwrap();
        let error = args.into_config(None).unwrap_err().to_string();
        assert!(error.contains("needs a password"), "{error}");
        let config = parse(&BASE).unwrap();
        assert!(!format!("{config:?}").contains("\"pw\""), "{config:?}");
    }
}

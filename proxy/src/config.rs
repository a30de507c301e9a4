//! The proxy's flags (clap: `--help` is their reference) and the typed [`Config`] they become,
//! checked once: URLs parsed, files read, prefixes and pairs of flags validated, so that
//! nothing after [`Args::into_config`] re-reads a file or re-parses a URL. Errors name the flag
//! and never quote a file's content (a key or a password).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use clap::Parser;
use etcd_broker::broker::names::{Names, DEFAULT_DATA_PREFIX};
use etcd_broker::config::Secret;
use etcd_broker::sealing::Keychain;
use etcd_broker::tls::{ClientTls, Identity};
use url::Url;

/// Where the proxy keeps its records in etcd unless told otherwise: beside the broker's state
/// (`/etcd-broker/`), which no tenant role may cover.
pub const DEFAULT_STATE_PREFIX: &str = "/etcd-broker/proxy/";

/// The broker's state prefix unless told otherwise: the broker's own default.
pub const DEFAULT_BROKER_STATE_PREFIX: &str = etcd_broker::broker::names::DEFAULT_STATE_PREFIX;

/// The tenant proxy for etcd v3: etcd's gRPC API for unmodified clients (etcdctl, client
/// libraries), forwarded to a shared etcd cluster with each caller's own token, so that etcd's
/// RBAC still decides; cluster-wide operations are refused to tenants and leases belong to the
/// user who granted them (docs/proxy.md).
#[derive(Debug, Parser)]
#[command(name = "etcd-broker-proxy", version, about, long_about = None)]
pub struct Args {
    /// Address to serve etcd's gRPC API on (port 0: a free port, printed at start).
    #[arg(long, env = "ETCD_BROKER_PROXY_LISTEN", default_value = "127.0.0.1:2379")]
    pub listen: SocketAddr,

    /// The client URLs the proxy answers MemberList with (comma-separated), so that clients
    /// which discover members keep talking to the proxy; default: the listen address, which
    /// must then not be a wildcard address.
    #[arg(long, env = "ETCD_BROKER_PROXY_ADVERTISE_CLIENT_URLS", value_delimiter = ',')]
    pub advertise_client_urls: Vec<String>,

    /// The etcd cluster's client URLs (comma-separated, http:// or https://) the proxy forwards
    /// to.
    #[arg(long, env = "ETCD_BROKER_PROXY_ENDPOINTS", value_delimiter = ',', required = true)]
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
    /// --state-prefix; it is never used on a tenant's behalf.
    #[arg(long, env = "ETCD_BROKER_PROXY_USER")]
    pub user: String,

    /// File holding the password of --user (its first line); or the environment variable
    /// ETCD_BROKER_PROXY_PASSWORD. Never a flag: flags show in `ps`.
    #[arg(long, env = "ETCD_BROKER_PROXY_PASSWORD_FILE")]
    pub password_file: Option<PathBuf>,

    /// etcd users who are operators, not tenants (comma-separated): the tenant firewall lets
    /// them compact and see etcd's own status.
    #[arg(long, env = "ETCD_BROKER_PROXY_ADMIN_USERS", value_delimiter = ',', default_value = "root")]
    pub admin_users: Vec<String>,

    /// Key prefix of the proxy's records in etcd (leases under `<prefix>leases/`); only the
    /// proxy's user may read or write it. Must start and end with '/'.
    #[arg(long, env = "ETCD_BROKER_PROXY_STATE_PREFIX", default_value = DEFAULT_STATE_PREFIX)]
    pub state_prefix: String,

    /// The broker's state prefix: the proxy watches its binding records
    /// (`<prefix>bindings/`) to revoke unbound and expired bindings' users at once, so its
    /// user needs read access there. Must start and end with '/'.
    #[arg(long, env = "ETCD_BROKER_PROXY_BROKER_STATE_PREFIX", default_value = DEFAULT_BROKER_STATE_PREFIX)]
    pub broker_state_prefix: String,

    /// The broker's config file (TOML, with its `ETCD_BROKER__*` overrides): the proxy takes
    /// its prefixes (instead of --broker-state-prefix) and its keychain (`[secrets]`), which
    /// unseals the data keys of encrypting plans' instances, and nothing else of it. Without
    /// it, no value is encrypted.
    #[arg(long, env = "ETCD_BROKER_PROXY_BROKER_CONFIG")]
    pub broker_config: Option<PathBuf>,

    /// Log filter: error, warn, info, debug, trace, or a tracing filter (`RUST_LOG` wins).
    #[arg(long, env = "ETCD_BROKER_PROXY_LOG_LEVEL", default_value = "info")]
    pub log_level: String,

    /// Address of the monitoring listener: /metrics (Prometheus), /health, /ready (plain
    /// HTTP, no authentication; keep it off the tenants' network). Default: none.
    #[arg(long, env = "ETCD_BROKER_PROXY_MONITORING_LISTEN")]
    pub monitoring_listen: Option<SocketAddr>,
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
    /// The broker's keychain, from --broker-config: it unseals instances' data keys.
    pub keychain: Option<Keychain>,
    pub log_level: String,
    /// Where /metrics, /health and /ready are served, if anywhere.
    pub monitoring_listen: Option<SocketAddr>,
}

/// A flag's value that cannot be used, named by its flag; never quotes a file's content.
#[derive(Debug, thiserror::Error)]
#[error("{flag}: {problem}")]
pub struct ConfigError {
    flag: &'static str,
    problem: String,
}

fn bad(flag: &'static str, problem: impl Into<String>) -> ConfigError {
    ConfigError { flag, problem: problem.into() }
}

impl Args {
    /// Checks the flags and reads the files they name; `password_env` is the value of
    /// `ETCD_BROKER_PROXY_PASSWORD` (passed in, so tests need not touch the environment).
    pub fn into_config(self, password_env: Option<String>) -> Result<Config, ConfigError> {
        let (broker_names, keychain) = match &self.broker_config {
            None => (Names::new(DEFAULT_DATA_PREFIX, &self.broker_state_prefix), None),
            Some(path) => {
                let broker = etcd_broker::config::Config::load(path)
                    .map_err(|e| bad("--broker-config", format!("{}: {e}", path.display())))?;
                let names = Names::new(&broker.prefixes.data, &broker.prefixes.state);
                (names, broker.sealing.keychain().cloned())
            }
        };
        let endpoints =
            self.endpoints.iter().map(|e| client_url("--endpoints", e)).collect::<Result<Vec<_>, _>>()?;
        if endpoints.is_empty() {
            return Err(bad("--endpoints", "at least one etcd client URL is needed"));
        }
        let scheme = if self.tls_cert_file.is_some() { "https" } else { "http" };
        let advertise_client_urls = if self.advertise_client_urls.is_empty() {
            if self.listen.ip().is_unspecified() {
                return Err(bad(
                    "--advertise-client-urls",
                    format!("needed when --listen is a wildcard address ({})", self.listen),
                ));
            }
            vec![client_url("--listen", &format!("{scheme}://{}", self.listen))?]
        } else {
            self.advertise_client_urls
                .iter()
                .map(|u| client_url("--advertise-client-urls", u))
                .collect::<Result<Vec<_>, _>>()?
        };
        let endpoints_tls = ClientTls {
            ca: self.endpoints_ca_file.as_deref().map(|p| read("--endpoints-ca-file", p)).transpose()?,
            identity: identity(
                ("--endpoints-cert-file", self.endpoints_cert_file.as_deref()),
                ("--endpoints-key-file", self.endpoints_key_file.as_deref()),
            )?,
        };
        let tls = identity(
            ("--tls-cert-file", self.tls_cert_file.as_deref()),
            ("--tls-key-file", self.tls_key_file.as_deref()),
        )?;
        if let Some(identity) = &tls {
            // Refused now, with the flag's name, rather than at the first connection.
            etcd_broker::tls::acceptor(identity).map_err(|e| bad("--tls-cert-file", e.to_string()))?;
        }
        etcd_broker::tls::connector(&endpoints_tls).map_err(|e| bad("--endpoints-*-file", e.to_string()))?;
        if self.user.trim().is_empty() {
            return Err(bad("--user", "must not be empty"));
        }
        let password = match (&self.password_file, password_env) {
            (Some(path), _) => {
                let text = read("--password-file", path)?;
                let text = String::from_utf8(text).map_err(|_| bad("--password-file", "is not UTF-8"))?;
                text.lines().next().unwrap_or("").to_owned()
            }
            (None, Some(password)) => password,
            (None, None) => {
                return Err(bad(
                    "--password-file",
                    "the proxy's user needs a password: --password-file or ETCD_BROKER_PROXY_PASSWORD",
                ))
            }
        };
        if password.is_empty() {
            return Err(bad("--password-file", "the password is empty"));
        }
        let admin_users: Vec<String> =
            self.admin_users.iter().map(|u| u.trim().to_owned()).filter(|u| !u.is_empty()).collect();
        prefix("--state-prefix", &self.state_prefix)?;
        prefix("--broker-state-prefix", &self.broker_state_prefix)?;
        tracing_subscriber::EnvFilter::try_new(&self.log_level)
            .map_err(|e| bad("--log-level", format!("'{}': {e}", self.log_level)))?;
        Ok(Config {
            listen: self.listen,
            advertise_client_urls,
            endpoints,
            endpoints_tls,
            tls,
            user: self.user,
            password: Secret::new(password),
            admin_users,
            state_prefix: self.state_prefix,
            broker_names,
            keychain,
            log_level: self.log_level,
            monitoring_listen: self.monitoring_listen,
        })
    }
}

/// A key prefix: starts and ends with '/', and is not '/'.
fn prefix(flag: &'static str, prefix: &str) -> Result<(), ConfigError> {
    if !prefix.starts_with('/') || !prefix.ends_with('/') || prefix == "/" {
        return Err(bad(flag, format!("'{prefix}' must start and end with '/' and not be '/'")));
    }
    Ok(())
}

/// An http(s) URL with a host and no path, query or credentials: what etcd calls a client URL.
fn client_url(flag: &'static str, text: &str) -> Result<Url, ConfigError> {
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
fn read(flag: &'static str, path: &Path) -> Result<Vec<u8>, ConfigError> {
    std::fs::read(path).map_err(|e| bad(flag, format!("cannot read {}: {e}", path.display())))
}

/// A certificate and its key from a pair of flags (clap makes sure both or neither are given).
fn identity(
    (cert_flag, cert): (&'static str, Option<&Path>),
    (key_flag, key): (&'static str, Option<&Path>),
) -> Result<Option<Identity>, ConfigError> {
    match (cert, key) {
        (Some(cert), Some(key)) => {
            Ok(Some(Identity { certificate: read(cert_flag, cert)?, private_key: read(key_flag, key)? }))
        }
        (None, None) => Ok(None),
        _ => Err(bad(cert_flag, format!("{cert_flag} and {key_flag} go together"))),
    }
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
    fn missing_flags_are_usage_errors() {
        let error = Args::try_parse_from(["etcd-broker-proxy", "--user", "p"]).unwrap_err();
        assert_eq!(error.kind(), clap::error::ErrorKind::MissingRequiredArgument);
        let error = Args::try_parse_from(["etcd-broker-proxy", "--endpoints", "http://x:1"]).unwrap_err();
        assert_eq!(error.kind(), clap::error::ErrorKind::MissingRequiredArgument);
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

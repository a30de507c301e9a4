//! The broker's configuration: TOML (documented in `docs/config.md`) with `ETCD_BROKER__*`
//! environment overrides, loaded through the `config` crate and validated into a [`Config`].
//!
//! Validation happens once, at start-up, and names the offending field, so a broken deployment
//! fails loudly before it serves a request.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};

use serde::Deserialize;
use url::Url;

use crate::broker::names::{DEFAULT_DATA_PREFIX, DEFAULT_STATE_PREFIX};
use crate::osb::catalog::Catalog;

/// Environment variables starting with this (then `__`-separated paths) override the file.
pub const ENV_PREFIX: &str = "ETCD_BROKER";

/// A string that must never be printed: `Debug` shows `***`, and a value of the wrong type is
/// refused without echoing it (a YAML `password: 0123` would otherwise show up in the error).
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Secret(String);

impl<'de> Deserialize<'de> for Secret {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct SecretVisitor;
        impl serde::de::Visitor<'_> for SecretVisitor {
            type Value = Secret;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a string")
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Secret, E> {
                Ok(Secret(v.to_owned()))
            }
            fn visit_string<E: serde::de::Error>(self, v: String) -> Result<Secret, E> {
                Ok(Secret(v))
            }
            fn visit_bool<E: serde::de::Error>(self, _: bool) -> Result<Secret, E> {
                Err(E::custom(NOT_A_STRING))
            }
            fn visit_i64<E: serde::de::Error>(self, _: i64) -> Result<Secret, E> {
                Err(E::custom(NOT_A_STRING))
            }
            fn visit_u64<E: serde::de::Error>(self, _: u64) -> Result<Secret, E> {
                Err(E::custom(NOT_A_STRING))
            }
            fn visit_f64<E: serde::de::Error>(self, _: f64) -> Result<Secret, E> {
                Err(E::custom(NOT_A_STRING))
            }
        }
        deserializer.deserialize_string(SecretVisitor)
    }
}

const NOT_A_STRING: &str = "a secret must be a string (quote it in YAML or TOML)";

impl Secret {
    /// Wraps a secret.
    pub fn new(s: impl Into<String>) -> Self {
        Self(s.into())
    }
    /// The secret itself, for the one place that needs it.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

/// Log verbosity.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum LogLevel {
    Debug,
    #[default]
    Info,
    Warn,
    Error,
}

impl LogLevel {
    /// The tracing filter directive.
    pub fn as_str(self) -> &'static str {
        match self {
            LogLevel::Debug => "debug",
            LogLevel::Info => "info",
            LogLevel::Warn => "warn",
            LogLevel::Error => "error",
        }
    }
}

/// Log line format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable lines.
    #[default]
    Text,
    /// One JSON object per line, with the request span's fields.
    Json,
}

/// The monitoring listener: `/metrics`, `/health`, `/ready`, without basic auth.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MetricsConfig {
    #[serde(default = "yes")]
    pub enabled: bool,
    #[serde(default = "default_host")]
    pub host: String,
    #[serde(default = "default_metrics_port")]
    pub port: u16,
}

impl Default for MetricsConfig {
    fn default() -> Self {
        Self { enabled: true, host: default_host(), port: default_metrics_port() }
    }
}

fn yes() -> bool {
    true
}
fn default_metrics_port() -> u16 {
    9180
}

/// The whole configuration.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    #[serde(default)]
    pub log_level: LogLevel,
    #[serde(default)]
    pub log_format: LogFormat,
    #[serde(default)]
    pub listen: ListenConfig,
    #[serde(default)]
    pub metrics: MetricsConfig,
    pub auth: AuthConfig,
    #[serde(default)]
    pub prefixes: PrefixConfig,
    /// The cluster holding the broker's records; may be omitted when there is one cluster.
    #[serde(default)]
    pub state_cluster: Option<String>,
    /// etcd clusters by name.
    pub clusters: BTreeMap<String, ClusterConfig>,
    pub catalog: Catalog,
    /// Per-plan settings, keyed by plan id; must match the catalog's plans one to one.
    pub plan_configs: BTreeMap<String, PlanConfig>,
    #[serde(default)]
    pub role_reaper: RoleReaperConfig,
}

/// How the background deletion of unbound bindings' roles is paced (see
/// `broker/role_deletions.rs`: etcd's RoleDelete holds etcd's write lock for a time that grows
/// with the number of users).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RoleReaperConfig {
    /// The largest share of time the reaper keeps etcd busy: after a deletion that took `t`, it
    /// waits `t * (1 - busy_share) / busy_share`. 1 deletes back to back.
    #[serde(default = "default_busy_share")]
    pub busy_share: f64,
    /// How often to look for roles queued by other broker instances (or left by a crash);
    /// roles this broker queues are taken at once.
    #[serde(default = "default_poll_seconds")]
    pub poll_seconds: u64,
    /// The longest a deletion waits for a pause in this broker's OSB traffic (half a second
    /// without a request) before it runs anyway; 0 never waits. Deleting in the pauses keeps
    /// the write stall of each RoleDelete out of the platform's requests.
    #[serde(default = "default_yield_seconds")]
    pub yield_seconds: u64,
}

impl Default for RoleReaperConfig {
    fn default() -> Self {
        Self {
            busy_share: default_busy_share(),
            poll_seconds: default_poll_seconds(),
            yield_seconds: default_yield_seconds(),
        }
    }
}

fn default_busy_share() -> f64 {
    0.1
}
fn default_poll_seconds() -> u64 {
    10
}
fn default_yield_seconds() -> u64 {
    60
}

/// Where the OSB API listens.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListenConfig {
    #[serde(default = "default_host")]
    pub host: String,
    #[serde(default = "default_port")]
    pub port: u16,
    /// Serve the OSB API over HTTPS with this certificate (chain) and key; plain HTTP without.
    #[serde(default)]
    pub tls: Option<TlsConfig>,
    /// Threads serving the OSB API. One by default: the etcd connection then lives on the thread
    /// that handles the request, which saves a cross-thread hand-off per etcd call (measured:
    /// GET binding 0.39 ms instead of 0.48 ms at p50); one thread serves ~90,000 catalog
    /// requests/s, far beyond what platforms send.
    #[serde(default = "default_workers")]
    pub workers: usize,
}

impl Default for ListenConfig {
    fn default() -> Self {
        Self { host: default_host(), port: default_port(), tls: None, workers: default_workers() }
    }
}

/// Upper bound of `listen.workers`: more threads than this only add contention.
pub const MAX_WORKERS: usize = 64;

fn default_workers() -> usize {
    1
}

fn default_host() -> String {
    "0.0.0.0".into()
}
fn default_port() -> u16 {
    8080
}

/// Basic-auth credentials the platform uses.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuthConfig {
    pub username: String,
    pub password: Secret,
}

/// Key prefixes (see `docs/naming.md`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PrefixConfig {
    #[serde(default = "default_data_prefix")]
    pub data: String,
    #[serde(default = "default_state_prefix")]
    pub state: String,
}

impl Default for PrefixConfig {
    fn default() -> Self {
        Self { data: default_data_prefix(), state: default_state_prefix() }
    }
}

fn default_data_prefix() -> String {
    DEFAULT_DATA_PREFIX.into()
}
fn default_state_prefix() -> String {
    DEFAULT_STATE_PREFIX.into()
}

/// One etcd cluster.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClusterConfig {
    /// Client URLs the broker dials (it fails over between them).
    pub endpoints: Vec<String>,
    /// A user with etcd's `root` role.
    #[serde(default = "default_root")]
    pub username: String,
    pub password: Secret,
    /// Client URLs put into credentials; defaults to `endpoints`.
    #[serde(default)]
    pub public_endpoints: Vec<String>,
    #[serde(default)]
    pub tls: Option<TlsConfig>,
}

fn default_root() -> String {
    "root".into()
}

/// TLS towards etcd; the CA is also handed out in credentials when public endpoints use https.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    pub ca_file: Option<PathBuf>,
    pub cert_file: Option<PathBuf>,
    pub key_file: Option<PathBuf>,
    /// The CA as PEM text instead of `ca_file` (what BOSH certificate variables provide).
    pub ca: Option<String>,
    /// The client certificate as PEM text instead of `cert_file`.
    pub certificate: Option<String>,
    /// The client key as PEM text instead of `key_file`.
    pub private_key: Option<Secret>,
}

impl TlsConfig {
    /// File and inline forms are exclusive, inline text must be PEM and files must exist.
    /// `section` names the table in errors (`clusters.main.tls`, `listen.tls`).
    fn validate(&self, section: &str) -> Result<(), ConfigError> {
        for (file, inline, name) in [
            (self.ca_file.is_some(), self.ca.is_some(), "ca_file and ca"),
            (self.cert_file.is_some(), self.certificate.is_some(), "cert_file and certificate"),
            (self.key_file.is_some(), self.private_key.is_some(), "key_file and private_key"),
        ] {
            if file && inline {
                return Err(invalid(section, format!("set one of {name}, not both")));
            }
        }
        for (key, pem) in [
            ("ca", self.ca.as_deref()),
            ("certificate", self.certificate.as_deref()),
            ("private_key", self.private_key.as_ref().map(Secret::expose)),
        ] {
            if pem.is_some_and(|text| !text.contains("-----BEGIN ")) {
                return Err(invalid(
                    format!("{section}.{key}"),
                    "is not PEM text (-----BEGIN ...); a path goes into the *_file field",
                ));
            }
        }
        for (key, path) in
            [("ca_file", &self.ca_file), ("cert_file", &self.cert_file), ("key_file", &self.key_file)]
        {
            if let Some(path) = path {
                if !path.is_file() {
                    return Err(invalid(
                        format!("{section}.{key}"),
                        format!("{} does not exist or is not a file", path.display()),
                    ));
                }
            }
        }
        Ok(())
    }

    /// The CA certificate PEM, from the file or inline.
    pub fn ca_pem(&self) -> std::io::Result<Option<Vec<u8>>> {
        pem(&self.ca_file, self.ca.as_deref())
    }

    /// The client certificate and key PEMs, from files or inline.
    pub fn client_pems(&self) -> std::io::Result<Option<(Vec<u8>, Vec<u8>)>> {
        let cert = pem(&self.cert_file, self.certificate.as_deref())?;
        let key = pem(&self.key_file, self.private_key.as_ref().map(Secret::expose))?;
        Ok(cert.zip(key))
    }
}

fn pem(file: &Option<PathBuf>, inline: Option<&str>) -> std::io::Result<Option<Vec<u8>>> {
    match (file, inline) {
        (Some(path), _) => std::fs::read(path)
            .map(Some)
            .map_err(|e| std::io::Error::new(e.kind(), format!("cannot read {}: {e}", path.display()))),
        (None, Some(text)) => Ok(Some(text.as_bytes().to_vec())),
        (None, None) => Ok(None),
    }
}

/// Per-plan settings.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PlanConfig {
    /// Name of the cluster the plan's instances live on.
    pub cluster: String,
}

/// Why the configuration was refused.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot load configuration: {0}")]
    Load(String),
    #[error("invalid configuration: {field}: {message}")]
    Invalid { field: String, message: String },
}

fn invalid(field: impl Into<String>, message: impl Into<String>) -> ConfigError {
    ConfigError::Invalid { field: field.into(), message: message.into() }
}

impl Config {
    /// Loads a TOML file, applies `ETCD_BROKER__*` overrides, and validates.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let source = config::File::from(path).format(config::FileFormat::Toml).required(true);
        Self::build(config::Config::builder().add_source(source))
    }

    /// Renders the config from a BOSH `properties.json` (see [`crate::render`]) with `template`
    /// (the built-in one when `None`), then loads it like a file: environment overrides apply.
    pub fn from_bosh_properties(properties: &Path, template: Option<&Path>) -> Result<Config, ConfigError> {
        let toml = Self::render_bosh_properties(properties, template)?;
        let source = config::File::from_str(&toml, config::FileFormat::Toml);
        Self::build(config::Config::builder().add_source(source))
    }

    /// The TOML that [`Config::from_bosh_properties`] loads, for inspection.
    pub fn render_bosh_properties(properties: &Path, template: Option<&Path>) -> Result<String, ConfigError> {
        let read = |path: &Path| {
            std::fs::read_to_string(path)
                .map_err(|e| ConfigError::Load(format!("cannot read {}: {e}", path.display())))
        };
        let template = match template {
            Some(path) => read(path)?,
            None => crate::render::CONFIG_TEMPLATE.to_owned(),
        };
        crate::render::render_config(&template, &read(properties)?)
            .map_err(|e| ConfigError::Load(e.to_string()))
    }

    /// Parses TOML text (no environment overrides) and validates; for tests and tools.
    /// Errors give the line but not the line's text, which may hold a secret.
    pub fn from_toml(text: &str) -> Result<Config, ConfigError> {
        let config: Config = toml::from_str(text).map_err(|e| {
            let message = e.message().trim_end();
            ConfigError::Load(match e.span() {
                Some(span) => {
                    let before = text.get(..span.start).unwrap_or(text);
                    format!("line {}: {message}", before.matches('\n').count() + 1)
                }
                None => message.to_owned(),
            })
        })?;
        config.validate()?;
        Ok(config)
    }

    fn build(builder: config::ConfigBuilder<config::builder::DefaultState>) -> Result<Config, ConfigError> {
        let env = config::Environment::with_prefix(ENV_PREFIX).separator("__");
        let config: Config = builder
            .add_source(env)
            .build()
            .and_then(|c| c.try_deserialize())
            .map_err(|e| ConfigError::Load(e.to_string()))?;
        config.validate()?;
        Ok(config)
    }

    /// The cluster that holds broker records.
    pub fn state_cluster_name(&self) -> &str {
        match &self.state_cluster {
            Some(name) => name,
            None => self.clusters.keys().next().map(String::as_str).unwrap_or_default(),
        }
    }

    /// Checks everything that can be checked without dialling etcd.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let share = self.role_reaper.busy_share;
        if !(share > 0.0 && share <= 1.0) {
            return Err(invalid("role_reaper.busy_share", "must be above 0 and at most 1"));
        }
        if !(1..=3600).contains(&self.role_reaper.poll_seconds) {
            return Err(invalid("role_reaper.poll_seconds", "must be between 1 and 3600"));
        }
        if self.role_reaper.yield_seconds > 3600 {
            return Err(invalid("role_reaper.yield_seconds", "must be between 0 and 3600"));
        }
        if !(1..=MAX_WORKERS).contains(&self.listen.workers) {
            return Err(invalid("listen.workers", format!("must be between 1 and {MAX_WORKERS}")));
        }
        if let Some(tls) = &self.listen.tls {
            tls.validate("listen.tls")?;
            if tls.ca.is_some() || tls.ca_file.is_some() {
                return Err(invalid(
                    "listen.tls",
                    "takes a certificate and key only (client certificates: not yet)",
                ));
            }
            if tls.client_pems().ok().flatten().is_none() {
                return Err(invalid(
                    "listen.tls",
                    "needs certificate (or cert_file) and private_key (or key_file)",
                ));
            }
        }
        if self.auth.username.is_empty() {
            return Err(invalid("auth.username", "must not be empty"));
        }
        if self.auth.password.expose().is_empty() {
            return Err(invalid("auth.password", "must not be empty"));
        }
        for (field, prefix) in
            [("prefixes.data", &self.prefixes.data), ("prefixes.state", &self.prefixes.state)]
        {
            if !prefix.starts_with('/') || !prefix.ends_with('/') || prefix.len() < 2 {
                return Err(invalid(
                    field,
                    format!("'{prefix}' must start and end with '/' and not be just '/'"),
                ));
            }
        }
        let (data, state) = (&self.prefixes.data, &self.prefixes.state);
        if data.starts_with(state.as_str()) || state.starts_with(data.as_str()) {
            return Err(invalid(
                "prefixes",
                format!(
                "data prefix '{data}' and state prefix '{state}' overlap; tenants could reach broker records"
            ),
            ));
        }
        if self.metrics.enabled && self.metrics.port != 0 && self.metrics.port == self.listen.port {
            return Err(invalid("metrics.port", "must differ from listen.port"));
        }
        self.validate_clusters()?;
        self.validate_catalog()
    }

    fn validate_clusters(&self) -> Result<(), ConfigError> {
        if self.clusters.is_empty() {
            return Err(invalid("clusters", "at least one etcd cluster is required"));
        }
        for (name, cluster) in &self.clusters {
            let field = |f: &str| format!("clusters.{name}.{f}");
            if name.is_empty()
                || !name.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_' || c == '-')
            {
                return Err(invalid(format!("clusters.{name}"), "cluster names use a-z, 0-9, '_' and '-'"));
            }
            if cluster.endpoints.is_empty() {
                return Err(invalid(field("endpoints"), "at least one endpoint is required"));
            }
            for endpoint in &cluster.endpoints {
                parse_endpoint(endpoint).map_err(|m| invalid(field("endpoints"), m))?;
            }
            for endpoint in &cluster.public_endpoints {
                parse_endpoint(endpoint).map_err(|m| invalid(field("public_endpoints"), m))?;
            }
            if cluster.username.is_empty() {
                return Err(invalid(field("username"), "must not be empty"));
            }
            if cluster.password.expose().is_empty() {
                return Err(invalid(field("password"), "must not be empty"));
            }
            if let Some(tls) = &cluster.tls {
                tls.validate(&format!("clusters.{name}.tls"))?;
                let cert = tls.cert_file.is_some() || tls.certificate.is_some();
                let key = tls.key_file.is_some() || tls.private_key.is_some();
                if cert != key {
                    return Err(invalid(field("tls"), "a client certificate and its key go together"));
                }
            }
        }
        match &self.state_cluster {
            Some(name) if !self.clusters.contains_key(name) => {
                Err(invalid("state_cluster", format!("'{name}' is not one of the configured clusters")))
            }
            None if self.clusters.len() > 1 => Err(invalid(
                "state_cluster",
                "required when several clusters are configured: name the one that holds broker records",
            )),
            _ => Ok(()),
        }
    }

    fn validate_catalog(&self) -> Result<(), ConfigError> {
        if self.catalog.services.is_empty() {
            return Err(invalid("catalog.services", "at least one service is required"));
        }
        let mut service_ids = std::collections::BTreeSet::new();
        let mut plan_ids = std::collections::BTreeSet::new();
        for service in &self.catalog.services {
            let field = format!("catalog.services[{}]", service.name);
            if service.id.is_empty() || service.name.is_empty() {
                return Err(invalid(field, "id and name must not be empty"));
            }
            if !service_ids.insert(service.id.as_str()) {
                return Err(invalid(field, format!("service id '{}' is used twice", service.id)));
            }
            if service.plans.is_empty() {
                return Err(invalid(field, "a service needs at least one plan"));
            }
            let mut plan_names = std::collections::BTreeSet::new();
            for plan in &service.plans {
                if plan.id.is_empty() || plan.name.is_empty() {
                    return Err(invalid(format!("{field}.plans"), "plan id and name must not be empty"));
                }
                if plan.id.contains('/') || plan.id.chars().any(char::is_whitespace) {
                    return Err(invalid(
                        format!("{field}.plans"),
                        format!(
                            "plan id '{}' must not contain '/' or spaces (it becomes part of etcd keys)",
                            plan.id
                        ),
                    ));
                }
                if !plan_ids.insert(plan.id.as_str()) {
                    return Err(invalid(
                        format!("{field}.plans"),
                        format!("plan id '{}' is used twice", plan.id),
                    ));
                }
                if !plan_names.insert(plan.name.as_str()) {
                    return Err(invalid(
                        format!("{field}.plans"),
                        format!("plan name '{}' is used twice", plan.name),
                    ));
                }
                let Some(plan_config) = self.plan_configs.get(&plan.id) else {
                    return Err(invalid(
                        format!("plan_configs.\"{}\"", plan.id),
                        format!(
                            "plan '{}' of service '{}' has no plan_configs entry",
                            plan.name, service.name
                        ),
                    ));
                };
                if !self.clusters.contains_key(&plan_config.cluster) {
                    return Err(invalid(
                        format!("plan_configs.\"{}\".cluster", plan.id),
                        format!("'{}' is not one of the configured clusters", plan_config.cluster),
                    ));
                }
            }
        }
        if let Some(extra) = self.plan_configs.keys().find(|id| !plan_ids.contains(id.as_str())) {
            return Err(invalid(format!("plan_configs.\"{extra}\""), "names no plan of the catalog"));
        }
        Ok(())
    }
}

/// Parses an etcd client URL: `http(s)://host:port`.
pub fn parse_endpoint(raw: &str) -> Result<Url, String> {
    let url = Url::parse(raw).map_err(|e| format!("'{raw}' is not a URL: {e}"))?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(format!("'{raw}' must use http or https"));
    }
    if url.host_str().is_none() || url.port().is_none() {
        return Err(format!("'{raw}' needs a host and a port"));
    }
    if url.path() != "/" || url.query().is_some() || !url.username().is_empty() {
        return Err(format!("'{raw}' must be just scheme://host:port"));
    }
    Ok(url)
}

#[cfg(test)]
mod tests;

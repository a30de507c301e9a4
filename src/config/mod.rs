//! The broker's configuration: TOML (documented in `docs/config.md`) with `ETCD_BROKER__*`
//! environment overrides, loaded through the `config` crate, validated and turned into a typed
//! [`Config`] (in [`file`]).
//!
//! Parse, don't validate: loading happens once, at start-up, names the offending field, and
//! yields values no later code re-parses or indexes on faith (URLs, PEM text read from its
//! files, the state cluster and each plan's cluster resolved), so a broken deployment fails
//! loudly before it serves a request.

mod file;

use std::collections::BTreeMap;
use std::fmt;
use std::path::Path;

use serde::Deserialize;
use url::Url;

use crate::tls::{ClientTls, Identity};

use crate::broker::names::{DEFAULT_DATA_PREFIX, DEFAULT_STATE_PREFIX};
use crate::osb::catalog::Catalog;
use crate::osb::plan_options::{BrokerLimits, PlanOptions};

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
    /// Seconds between two counts of the inventory gauges (instances, bindings, queued roles,
    /// sealed records): one broker counts in etcd this often and publishes the counts, every
    /// broker reads them this often. A scrape only renders what was read (docs/observability.md).
    #[serde(default = "default_inventory_seconds")]
    pub inventory_seconds: u64,
}

impl Default for MetricsConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            host: default_host(),
            port: default_metrics_port(),
            inventory_seconds: default_inventory_seconds(),
        }
    }
}

fn yes() -> bool {
    true
}
fn default_metrics_port() -> u16 {
    9180
}
/// A minute: counts a few scrape intervals old at most, and at 1,000,000 instances 3 to 5 s
/// of etcd's time per minute, whatever the number of brokers (docs/observability.md).
fn default_inventory_seconds() -> u64 {
    60
}

/// The broker's settings, valid by construction: what [`Config::load`] and its siblings return.
#[derive(Debug, Clone)]
pub struct Config {
    pub log_level: LogLevel,
    pub log_format: LogFormat,
    pub listen: Listen,
    pub metrics: MetricsConfig,
    pub auth: AuthConfig,
    pub prefixes: PrefixConfig,
    /// etcd clusters by name.
    pub clusters: BTreeMap<String, Cluster>,
    /// The cluster holding the broker's records: a key of `clusters`.
    pub state_cluster: String,
    pub catalog: Catalog,
    /// Plan id -> the name of its cluster (a key of `clusters`), for every plan of the catalog.
    pub plan_clusters: BTreeMap<String, String>,
    /// Plan id -> what the plan offers (`plan_configs`), for every plan of the catalog.
    pub plan_options: BTreeMap<String, PlanOptions>,
    /// Limits across plans (`[limits]`).
    pub limits: BrokerLimits,
    pub role_reaper: RoleReaperConfig,
    pub reconcile: ReconcileConfig,
    pub binding_expiry: BindingExpiryConfig,
    /// Whether secrets are sealed at rest, and the keys that seal and unseal them (`[secrets]`).
    pub sealing: Sealing,
    /// The OpenBao of `[secrets.openbao]` (transit keys), whose token the server keeps renewed.
    pub openbao: Option<std::sync::Arc<crate::openbao::OpenBao>>,
    /// Where plans with `credential_store = "openbao"` keep their bindings' secrets (OpenBao
    /// KV v2); `None` when no plan does.
    pub credential_store: Option<std::sync::Arc<dyn crate::credential_store::CredentialStore>>,
    /// The plans' credential templates (`credentials_template[_file]`), compiled and rendered
    /// once against a sample binding.
    pub credential_templates: std::sync::Arc<crate::broker::templates::CredentialTemplates>,
    /// The client CA of certificate bindings (`[certificates]`), if configured.
    pub certificates: Option<crate::broker::certificates::Authority>,
    /// Plan id -> what its bindings get, for every plan of the catalog.
    pub plan_credentials: BTreeMap<String, crate::broker::certificates::CredentialKind>,
}

/// `[secrets]`, as the broker uses it (the type lives with the keychain, so that `broker/`
/// takes it without depending on the config). The keychain is loaded (files read, keys
/// checked) with the config, so a bad key stops the start.
pub use crate::sealing::Sealing;

/// `[secrets]` on its own, in the broker's format, for the tenant proxy: the keys that unseal
/// instances' data keys without the rest of the broker's file, which holds etcd's root
/// credentials the proxy must not have (docs/proxy.md). The same snippet serves both.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(transparent)]
pub struct SecretsSection(file::SecretsFile);

impl SecretsSection {
    /// The keychain (key files read once, keys checked; `sealing` does not matter here: the
    /// proxy seals no records) and the OpenBao client of its transit keys, whose token the
    /// caller keeps renewed; `None` without keys.
    #[allow(clippy::type_complexity)]
    pub fn keychain(
        &self,
    ) -> Result<
        (Option<crate::sealing::Keychain>, Option<std::sync::Arc<crate::openbao::OpenBao>>),
        ConfigError,
    > {
        self.0.keychain_only()
    }
}

/// Where the OSB API listens.
#[derive(Debug, Clone)]
pub struct Listen {
    pub host: String,
    pub port: u16,
    /// Serve the OSB API over HTTPS with this certificate (chain) and key; plain HTTP without.
    pub tls: Option<Identity>,
    /// Threads serving the OSB API (see docs/config.md for why one is the default).
    pub workers: usize,
    /// How long reading a request body may take before the request gets 408: a body that
    /// trickles in would otherwise hold its connection for ever.
    pub body_timeout: std::time::Duration,
    /// Open connections each worker thread serves at most, so slow clients cannot exhaust
    /// the process's file descriptors and memory.
    pub max_connections: usize,
    /// How long the request line and headers may take before the request gets 408: headers
    /// that trickle in would otherwise hold a connection.
    pub header_timeout: std::time::Duration,
    /// How long an idle keep-alive connection stays open: idle connections count towards
    /// `max_connections`, so they must not hold it for ever.
    pub idle_timeout: std::time::Duration,
    /// TLS handshakes each worker thread runs at once: a flood of new connections costs CPU
    /// for handshakes, which this bounds (no effect on plain HTTP).
    pub max_connection_rate: usize,
    /// How long a client may take to complete its TLS handshake: a connection that never
    /// finishes one holds one of `max_connection_rate`'s places until then.
    pub tls_handshake_timeout: std::time::Duration,
}

/// One etcd cluster.
#[derive(Debug, Clone)]
pub struct Cluster {
    /// Client URLs the broker dials (it fails over between them), `http(s)://host:port`.
    pub endpoints: Vec<Url>,
    /// Client URLs put into credentials: the configured ones, or `endpoints`. Never empty.
    pub public_endpoints: Vec<Url>,
    /// Client URLs put into certificate credentials: the configured ones, or
    /// `public_endpoints`. Never empty; https when a plan on the cluster hands out certificates.
    pub certificate_endpoints: Vec<Url>,
    /// The tenant proxy's client URLs in front of the cluster, put into the credentials of
    /// plans with `encryption` (which need them); empty when no proxy is configured.
    pub proxy_endpoints: Vec<Url>,
    /// A user with etcd's `root` role.
    pub username: String,
    pub password: Secret,
    /// TLS towards etcd; its CA is also handed out in credentials.
    pub tls: Option<ClientTls>,
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

/// The broker's periodic reconcile check (see `broker/reconcile/periodic.rs`): read-only, its
/// findings exported as the gauge `etcd_broker_reconcile_findings{kind}`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReconcileConfig {
    /// Seconds between two checks; 0 turns the check off. A finding counts once two checks in
    /// a row found it, so the gauge lags by one interval at least.
    #[serde(default = "default_reconcile_interval_seconds")]
    pub interval_seconds: u64,
    /// A record in `creating` or `deleting` (or a queued role deletion) unchanged for longer
    /// than this is stuck; younger ones are operations in flight.
    #[serde(default = "default_stuck_after_seconds")]
    pub stuck_after_seconds: u64,
}

impl Default for ReconcileConfig {
    fn default() -> Self {
        Self {
            interval_seconds: default_reconcile_interval_seconds(),
            stuck_after_seconds: default_stuck_after_seconds(),
        }
    }
}

/// `[binding_expiry]`: how expiring bindings (plan option `binding_ttl_seconds`) are revoked.
/// One broker at a time does it, elected through an etcd lease (`broker/leader.rs`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BindingExpiryConfig {
    /// How long after `expires_at` the binding's user is deleted: time for an app that rotated
    /// late to switch over. Also added to a certificate binding's validity.
    #[serde(default = "default_expiry_grace_seconds")]
    pub grace_seconds: u64,
    /// Seconds between two looks for bindings past their expiry and grace.
    #[serde(default = "default_expiry_check_seconds")]
    pub check_seconds: u64,
    /// The ttl of the leader's lease: after the leader dies, another broker takes over within
    /// about this long.
    #[serde(default = "default_leader_lease_seconds")]
    pub leader_lease_seconds: u64,
}

impl Default for BindingExpiryConfig {
    fn default() -> Self {
        Self {
            grace_seconds: default_expiry_grace_seconds(),
            check_seconds: default_expiry_check_seconds(),
            leader_lease_seconds: default_leader_lease_seconds(),
        }
    }
}

fn default_expiry_grace_seconds() -> u64 {
    300
}
fn default_expiry_check_seconds() -> u64 {
    10
}
fn default_leader_lease_seconds() -> u64 {
    5
}

fn default_reconcile_interval_seconds() -> u64 {
    3600
}
fn default_stuck_after_seconds() -> u64 {
    600
}

/// Upper bound of `listen.workers`: more threads than this only add contention.
pub const MAX_WORKERS: usize = 64;

fn default_workers() -> usize {
    1
}

/// Upper bound of `listen.body_timeout_seconds`: OSB bodies are a few kilobytes.
pub const MAX_BODY_TIMEOUT_SECONDS: u64 = 300;

fn default_body_timeout_seconds() -> u64 {
    10
}

/// Upper bound of `listen.header_timeout_seconds`: headers are a few hundred bytes.
pub const MAX_HEADER_TIMEOUT_SECONDS: u64 = 60;

fn default_header_timeout_seconds() -> u64 {
    5
}

/// Upper bound of `listen.idle_timeout_seconds`.
pub const MAX_IDLE_TIMEOUT_SECONDS: u64 = 3600;

fn default_idle_timeout_seconds() -> u64 {
    5
}

/// Upper bound of `listen.max_connection_rate` (per worker thread).
pub const MAX_CONNECTION_RATE: usize = 65_536;

fn default_max_connection_rate() -> usize {
    256
}

/// Upper bound of `listen.tls_handshake_timeout_seconds`: a handshake is a few round trips.
pub const MAX_TLS_HANDSHAKE_TIMEOUT_SECONDS: u64 = 60;

fn default_tls_handshake_timeout_seconds() -> u64 {
    3
}

/// Upper bound of `listen.max_connections` (per worker thread).
pub const MAX_CONNECTIONS: usize = 100_000;

fn default_max_connections() -> usize {
    1024
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
        let config: file::ConfigFile = toml::from_str(text).map_err(|e| {
            let message = e.message().trim_end();
            ConfigError::Load(match e.span() {
                Some(span) => {
                    let before = text.get(..span.start).unwrap_or(text);
                    format!("line {}: {message}", before.matches('\n').count() + 1)
                }
                None => message.to_owned(),
            })
        })?;
        config.check()
    }

    fn build(builder: config::ConfigBuilder<config::builder::DefaultState>) -> Result<Config, ConfigError> {
        let env = config::Environment::with_prefix(ENV_PREFIX).separator("__");
        let config: file::ConfigFile = builder
            .add_source(env)
            .build()
            .and_then(|c| c.try_deserialize())
            .map_err(|e| ConfigError::Load(e.to_string()))?;
        config.check()
    }
}

#[cfg(test)]
mod fuzz;
#[cfg(test)]
mod tests;

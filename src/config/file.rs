//! The config file as written (serde's view of the TOML), and [`ConfigFile::check`], which
//! validates it and turns it into the typed [`Config`] the broker runs on: endpoints parsed,
//! PEM files read, the state cluster and each plan's cluster resolved.

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::Deserialize;
use url::Url;

use super::{
    default_body_timeout_seconds, default_header_timeout_seconds, default_host, default_idle_timeout_seconds,
    default_max_connection_rate, default_max_connections, default_port,
    default_tls_handshake_timeout_seconds, default_workers, invalid, AuthConfig, BindingExpiryConfig,
    Cluster, Config, ConfigError, Listen, LogFormat, LogLevel, MetricsConfig, PrefixConfig, ReconcileConfig,
    RoleReaperConfig, Sealing, Secret, MAX_BODY_TIMEOUT_SECONDS, MAX_CONNECTIONS, MAX_CONNECTION_RATE,
    MAX_HEADER_TIMEOUT_SECONDS, MAX_IDLE_TIMEOUT_SECONDS, MAX_TLS_HANDSHAKE_TIMEOUT_SECONDS, MAX_WORKERS,
};
use crate::broker::certificates::{Authority, CredentialKind};
use crate::osb::catalog::Catalog;
use crate::osb::plan_options::{
    BindingExpiry, BrokerLimits, CredentialStoreKind, InstanceQuotas, PlanOptions,
};
use crate::pki::ClientCa;
use crate::sealing::keychain::is_key_name;
use crate::sealing::{Key, Keychain};
use crate::tls::{ClientTls, Identity};

/// The config file as written: what serde reads, before [`ConfigFile::check`].
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct ConfigFile {
    #[serde(default)]
    pub log_level: LogLevel,
    #[serde(default)]
    pub log_format: LogFormat,
    #[serde(default)]
    pub listen: ListenFile,
    #[serde(default)]
    pub metrics: MetricsConfig,
    pub auth: AuthConfig,
    #[serde(default)]
    pub prefixes: PrefixConfig,
    /// The cluster holding the broker's records; may be omitted when there is one cluster.
    #[serde(default)]
    pub state_cluster: Option<String>,
    /// etcd clusters by name.
    pub clusters: BTreeMap<String, ClusterFile>,
    pub catalog: Catalog,
    /// Per-plan settings, keyed by plan id; must match the catalog's plans one to one.
    pub plan_configs: BTreeMap<String, PlanFile>,
    #[serde(default)]
    pub role_reaper: RoleReaperConfig,
    #[serde(default)]
    pub reconcile: ReconcileConfig,
    #[serde(default)]
    pub binding_expiry: BindingExpiryConfig,
    #[serde(default)]
    pub secrets: SecretsFile,
    #[serde(default)]
    pub limits: LimitsFile,
    /// The client CA of certificate bindings; required when a plan hands out certificates.
    #[serde(default)]
    pub certificates: Option<CertificatesFile>,
}

/// `[certificates]`: the CA that signs certificate bindings' client certificates (the etcd
/// clusters trust it: `--client-cert-auth --trusted-ca-file`), and their validity.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct CertificatesFile {
    pub ca_file: Option<PathBuf>,
    /// The CA certificate as PEM text instead of `ca_file` (BOSH certificate variables).
    pub ca: Option<String>,
    pub key_file: Option<PathBuf>,
    /// The CA key as PEM text instead of `key_file`.
    pub key: Option<Secret>,
    /// The CA key sealed with the keychain (`etcd-broker-ops seal --record certificates.key`),
    /// so that the config holds no key in clear.
    pub key_sealed: Option<String>,
    /// How long a minted client certificate is valid, in days.
    #[serde(default = "default_validity_days")]
    pub validity_days: u32,
}

fn default_validity_days() -> u32 {
    365
}

/// The record name the CA key is sealed for (`key_sealed`).
pub(super) const CA_KEY_RECORD: &str = "certificates.key";

/// The longest validity of a minted certificate: ten years.
const MAX_VALIDITY_DAYS: u32 = 3650;

/// `[secrets]`: sealing at rest and the keychain.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct SecretsFile {
    #[serde(default)]
    pub sealing: SealingMode,
    /// The name of the key that seals; required when keys are configured.
    pub active: Option<String>,
    /// Keys by name; every one unseals.
    #[serde(default)]
    pub keys: BTreeMap<String, KeyFile>,
    /// The OpenBao (or Vault) that holds transit keys.
    pub openbao: Option<OpenBaoFile>,
}

/// `[secrets.openbao]`: where OpenBao is and how the broker logs in.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct OpenBaoFile {
    pub address: String,
    /// PEM CA bundle verifying OpenBao's certificate, as a file or inline.
    pub ca_file: Option<PathBuf>,
    pub ca: Option<String>,
    /// A file holding the broker's token (read once, at load).
    pub token_file: Option<PathBuf>,
    /// AppRole credentials instead of a token file.
    pub approle: Option<AppRoleFile>,
    #[serde(default = "default_openbao_timeout")]
    pub timeout_seconds: u64,
    /// The KV v2 engine of plans with `credential_store = "openbao"`.
    #[serde(default)]
    pub kv: KvFile,
}

/// `[secrets.openbao.kv]`: where bindings' secrets go, `<mount>/data/<prefix>/<instance>/<binding>`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct KvFile {
    #[serde(default = "default_kv_mount")]
    pub mount: String,
    #[serde(default = "default_kv_prefix")]
    pub prefix: String,
}

impl Default for KvFile {
    fn default() -> Self {
        KvFile { mount: default_kv_mount(), prefix: default_kv_prefix() }
    }
}

fn default_kv_mount() -> String {
    "secret".into()
}

fn default_kv_prefix() -> String {
    "etcd-broker".into()
}

fn default_openbao_timeout() -> u64 {
    crate::openbao::DEFAULT_TIMEOUT.as_secs()
}

/// `[secrets.openbao.approle]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct AppRoleFile {
    pub role_id: String,
    pub secret_id: Secret,
    #[serde(default = "default_approle_mount")]
    pub mount: String,
}

fn default_approle_mount() -> String {
    "approle".into()
}

/// The longest token file: a token is about 100 characters.
const MAX_TOKEN_FILE_BYTES: u64 = 4096;

/// `sealing = "on" | "off"`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(super) enum SealingMode {
    /// The default, so that a config without keys is refused rather than storing binding
    /// passwords in clear without anybody having decided so.
    #[default]
    On,
    Off,
}

/// By hand, to explain a boolean: the bosh CLI reads YAML 1.1, where a bare `off` in a manifest
/// is `false`, and a bare "invalid type" would not say why.
impl<'de> Deserialize<'de> for SealingMode {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl serde::de::Visitor<'_> for Visitor {
            type Value = SealingMode;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("\"on\" or \"off\"")
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<SealingMode, E> {
                match v {
                    "on" => Ok(SealingMode::On),
                    "off" => Ok(SealingMode::Off),
                    other => {
                        Err(E::custom(format!("secrets.sealing is '{other}': expected \"on\" or \"off\"")))
                    }
                }
            }
            fn visit_bool<E: serde::de::Error>(self, v: bool) -> Result<SealingMode, E> {
                Err(E::custom(format!(
                    "secrets.sealing is the boolean {v}: write \"on\" or \"off\" in quotes (YAML, as the \
                     bosh CLI reads it, takes a bare on/off for a boolean)"
                )))
            }
        }
        deserializer.deserialize_any(Visitor)
    }
}

/// One key of `[secrets.keys.<name>]`: a file or an inline value, in the text form of
/// `sealing::keychain`, or a passphrase the key is derived from (for CredHub `password`
/// variables on BOSH).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct KeyFile {
    pub file: Option<PathBuf>,
    pub value: Option<Secret>,
    pub passphrase: Option<Secret>,
    /// The name of a transit key in `[secrets.openbao]`'s OpenBao: a remote key.
    pub transit: Option<String>,
    /// The transit engine's mount (default `transit`).
    pub transit_mount: Option<String>,
}

/// Why a config with sealing on and no key is refused, and both ways out.
pub(super) const NO_KEYS: &str = "sealing is on (the default) and no key is configured: add one \
     (`etcd-broker-ops keys generate NAME --dir DIR`, then `active = \"NAME\"` and \
     `[secrets.keys.NAME] file = \"DIR/NAME.key\"`), or store binding passwords in clear by \
     saying so: `[secrets] sealing = \"off\"` (docs/config.md)";

/// Where the OSB API listens.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct ListenFile {
    #[serde(default = "default_host")]
    pub host: String,
    #[serde(default = "default_port")]
    pub port: u16,
    /// Serve the OSB API over HTTPS with this certificate (chain) and key; plain HTTP without.
    #[serde(default)]
    pub tls: Option<TlsFile>,
    /// Threads serving the OSB API. One by default: the etcd connection then lives on the thread
    /// that handles the request, with no cross-thread hand-off per etcd call, and one thread
    /// serves far more than platforms send (figures in docs/config.md).
    #[serde(default = "default_workers")]
    pub workers: usize,
    /// How long reading a request body may take, in seconds: a body that trickles in holds
    /// a connection and a request slot; the headers have their own 5 s bound.
    #[serde(default = "default_body_timeout_seconds")]
    pub body_timeout_seconds: u64,
    /// Open connections each worker thread serves at most; more wait in the listen backlog.
    #[serde(default = "default_max_connections")]
    pub max_connections: usize,
    /// How long the request line and headers may take to arrive, in seconds.
    #[serde(default = "default_header_timeout_seconds")]
    pub header_timeout_seconds: u64,
    /// How long an idle keep-alive connection stays open, in seconds.
    #[serde(default = "default_idle_timeout_seconds")]
    pub idle_timeout_seconds: u64,
    /// TLS handshakes each worker thread runs at once; more connections wait their turn.
    #[serde(default = "default_max_connection_rate")]
    pub max_connection_rate: usize,
    /// How long a TLS handshake may take, in seconds; a connection that has not completed one
    /// by then is closed.
    #[serde(default = "default_tls_handshake_timeout_seconds")]
    pub tls_handshake_timeout_seconds: u64,
}

impl Default for ListenFile {
    fn default() -> Self {
        Self {
            host: default_host(),
            port: default_port(),
            tls: None,
            workers: default_workers(),
            body_timeout_seconds: default_body_timeout_seconds(),
            max_connections: default_max_connections(),
            header_timeout_seconds: default_header_timeout_seconds(),
            idle_timeout_seconds: default_idle_timeout_seconds(),
            max_connection_rate: default_max_connection_rate(),
            tls_handshake_timeout_seconds: default_tls_handshake_timeout_seconds(),
        }
    }
}

/// One etcd cluster.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct ClusterFile {
    /// Client URLs the broker dials (it fails over between them).
    pub endpoints: Vec<String>,
    /// A user with etcd's `root` role.
    #[serde(default = "default_root")]
    pub username: String,
    pub password: Secret,
    /// Client URLs put into credentials; defaults to `endpoints`.
    #[serde(default)]
    pub public_endpoints: Vec<String>,
    /// https client URLs put into certificate credentials (etcd with `--client-cert-auth`);
    /// defaults to `public_endpoints`.
    #[serde(default)]
    pub certificate_endpoints: Vec<String>,
    /// The tenant proxy's client URLs in front of this cluster: put into the credentials of
    /// plans with `encryption`, which need them.
    #[serde(default)]
    pub proxy_endpoints: Vec<String>,
    #[serde(default)]
    pub tls: Option<TlsFile>,
}

fn default_root() -> String {
    "root".into()
}

/// TLS towards etcd; the CA is also handed out in credentials when public endpoints use https.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct TlsFile {
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

/// Per-plan settings.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct PlanFile {
    /// Name of the cluster the plan's instances live on.
    pub cluster: String,
    /// What bindings get: `password` (the default), `certificate` or `both`.
    #[serde(default)]
    pub credentials: CredentialKind,
    /// Binds take `access` / `key_prefix` parameters (`osb::bind_parameters`).
    #[serde(default)]
    pub binding_parameters: bool,
    /// At most this many instances of the plan.
    #[serde(default)]
    pub max_instances: Option<u64>,
    /// At most this many bindings per instance of the plan.
    #[serde(default)]
    pub max_bindings_per_instance: Option<u64>,
    /// Binds may rotate a binding (`predecessor_binding_id`, OSB 2.17); the catalog says so.
    #[serde(default)]
    pub binding_rotatable: bool,
    /// Bindings expire this long after they are made.
    #[serde(default)]
    pub binding_ttl_seconds: Option<u64>,
    /// Where bindings keep their secrets: `etcd` (their records, the default) or `openbao`
    /// (`[secrets.openbao.kv]`).
    #[serde(default)]
    pub credential_store: CredentialStoreKind,
    /// Binds answer the secrets' OpenBao address and path instead of the secrets.
    #[serde(default)]
    pub credentials_by_reference: bool,
    /// A handlebars template shaping the credentials JSON (`broker::templates`), inline.
    #[serde(default)]
    pub credentials_template: Option<String>,
    /// The same, from a file (read once, at load).
    #[serde(default)]
    pub credentials_template_file: Option<PathBuf>,
    /// How long before the expiry a binding should be renewed (`renew_before`); a fifth of
    /// the ttl by default.
    #[serde(default)]
    pub binding_renew_before_seconds: Option<u64>,
    /// Instances get a data key and bindings the proxy's endpoints (`proxy_endpoints` of the
    /// plan's cluster): the tenant proxy encrypts their values.
    #[serde(default)]
    pub encryption: bool,
    /// At most this many bytes (keys + stored values) per instance, enforced by the proxy.
    #[serde(default)]
    pub quota_bytes: Option<u64>,
    /// At most this many keys per instance, enforced by the proxy.
    #[serde(default)]
    pub quota_keys: Option<u64>,
    /// At most this many KV requests per second per instance (and proxy), enforced by the proxy.
    #[serde(default)]
    pub quota_requests_per_second: Option<u32>,
}

/// The longest ttl (and grace) of an expiring binding: ten years, far below where seconds since
/// the epoch overflow anything.
const MAX_BINDING_TTL_SECONDS: u64 = 10 * 365 * 86_400;

/// `[limits]`: limits across plans.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct LimitsFile {
    /// At most this many instances per organization, over all plans.
    #[serde(default)]
    pub max_instances_per_organization: Option<u64>,
}

impl PlanFile {
    /// The options the broker obeys for this plan.
    fn options(&self) -> PlanOptions {
        PlanOptions {
            binding_parameters: self.binding_parameters,
            max_instances: self.max_instances,
            max_bindings_per_instance: self.max_bindings_per_instance,
            binding_rotatable: self.binding_rotatable,
            binding_expiry: self.binding_ttl_seconds.map(|ttl| BindingExpiry {
                ttl,
                renew_before: self.binding_renew_before_seconds.unwrap_or(ttl / 5),
            }),
            encryption: self.encryption,
            credential_store: self.credential_store,
            credentials_by_reference: self.credentials_by_reference,
            quotas: InstanceQuotas {
                bytes: self.quota_bytes,
                keys: self.quota_keys,
                requests_per_second: self.quota_requests_per_second,
            },
        }
    }

    /// The expiry options: a ttl of at least a second and at most ten years, a renewal
    /// time before expiry shorter than the ttl, and no renewal time without a ttl.
    fn check_expiry(&self, plan: &str) -> Result<(), ConfigError> {
        let field = |name: &str| format!("plan_configs.\"{plan}\".{name}");
        match (self.binding_ttl_seconds, self.binding_renew_before_seconds) {
            (Some(ttl), _) if !(1..=MAX_BINDING_TTL_SECONDS).contains(&ttl) => Err(invalid(
                field("binding_ttl_seconds"),
                format!("must be between 1 and {MAX_BINDING_TTL_SECONDS} (ten years)"),
            )),
            (Some(ttl), Some(before)) if before >= ttl => Err(invalid(
                field("binding_renew_before_seconds"),
                format!("must be less than binding_ttl_seconds ({ttl})"),
            )),
            (None, Some(_)) => Err(invalid(
                field("binding_renew_before_seconds"),
                "applies to expiring bindings only: set binding_ttl_seconds too",
            )),
            _ => Ok(()),
        }
    }
}

impl ConfigFile {
    /// Validates everything that can be checked without dialling etcd, naming the offending
    /// field, and returns the typed config.
    pub(super) fn check(self) -> Result<Config, ConfigError> {
        self.validate()?;
        let listen_tls = match &self.listen.tls {
            Some(tls) => Some(tls.load_server("listen.tls")?),
            None => None,
        };
        let clusters = self.clusters()?;
        let state_cluster = self.state_cluster()?;
        let plan_clusters = self.plan_clusters()?;
        let openbao = self.secrets.openbao()?;
        let sealing = self.secrets.sealing(openbao.as_ref())?;
        let credential_store = self.credential_store(openbao.as_ref())?;
        let plan_options: BTreeMap<String, PlanOptions> =
            self.plan_configs.iter().map(|(plan, c)| (plan.clone(), c.options())).collect();
        for (plan, config) in self.plan_configs.iter().filter(|(_, c)| c.options().quotas.any()) {
            if clusters.get(&config.cluster).is_some_and(|c| c.proxy_endpoints.is_empty()) {
                let name = if config.quota_bytes.is_some() {
                    "quota_bytes"
                } else if config.quota_keys.is_some() {
                    "quota_keys"
                } else {
                    "quota_requests_per_second"
                };
                return Err(invalid(
                    format!("plan_configs.\"{plan}\".{name}"),
                    format!(
                        "the tenant proxy enforces quotas: set clusters.{}.proxy_endpoints",
                        config.cluster
                    ),
                ));
            }
            if config.quota_requests_per_second == Some(0) {
                return Err(invalid(
                    format!("plan_configs.\"{plan}\".quota_requests_per_second"),
                    "must be at least 1 (leave it out for no limit)",
                ));
            }
        }
        for (plan, config) in self.plan_configs.iter().filter(|(_, c)| c.encryption) {
            let field = format!("plan_configs.\"{plan}\".encryption");
            if sealing.keychain().is_none() {
                return Err(invalid(field, "needs a keychain ([secrets]) to seal the instances' data keys"));
            }
            // A client certificate cannot log in through the proxy: it terminates TLS and
            // forwards tokens, which only a password's Authenticate gives (docs/proxy.md).
            if !config.credentials.password() {
                return Err(invalid(
                    field,
                    "needs password bindings: the tenant proxy cannot pass a client certificate on to \
                     etcd; set credentials = \"password\" or \"both\"",
                ));
            }
            if clusters.get(&config.cluster).is_some_and(|c| c.proxy_endpoints.is_empty()) {
                return Err(invalid(
                    field,
                    format!("needs the tenant proxy's URLs: set clusters.{}.proxy_endpoints", config.cluster),
                ));
            }
        }
        let certificates = match &self.certificates {
            Some(file) => Some(file.load(sealing.keychain())?),
            None => None,
        };
        let plan_credentials = self.plan_credentials(&clusters, certificates.is_some())?;
        let credential_templates = std::sync::Arc::new(self.credential_templates(&plan_credentials)?);
        let ConfigFile {
            log_level,
            log_format,
            listen,
            metrics,
            auth,
            prefixes,
            mut catalog,
            role_reaper,
            reconcile,
            binding_expiry,
            limits,
            ..
        } = self;
        // The catalog publishes the schemas of what each plan offers.
        for plan in catalog.services.iter_mut().flat_map(|s| s.plans.iter_mut()) {
            let options = plan_options.get(&plan.id);
            plan.schemas = options.and_then(PlanOptions::schemas);
            plan.binding_rotatable = options.is_some_and(|o| o.binding_rotatable);
        }
        let listen = Listen {
            host: listen.host,
            port: listen.port,
            tls: listen_tls,
            workers: listen.workers,
            body_timeout: std::time::Duration::from_secs(listen.body_timeout_seconds),
            max_connections: listen.max_connections,
            header_timeout: std::time::Duration::from_secs(listen.header_timeout_seconds),
            tls_handshake_timeout: std::time::Duration::from_secs(listen.tls_handshake_timeout_seconds),
            idle_timeout: std::time::Duration::from_secs(listen.idle_timeout_seconds),
            max_connection_rate: listen.max_connection_rate,
        };
        Ok(Config {
            log_level,
            log_format,
            listen,
            metrics,
            auth,
            prefixes,
            clusters,
            state_cluster,
            catalog,
            plan_clusters,
            plan_options,
            limits: BrokerLimits { max_instances_per_organization: limits.max_instances_per_organization },
            role_reaper,
            reconcile,
            binding_expiry,
            sealing,
            openbao,
            credential_store,
            credential_templates,
            certificates,
            plan_credentials,
        })
    }

    /// Checks everything that can be checked without dialling etcd.
    fn validate(&self) -> Result<(), ConfigError> {
        for (plan, config) in &self.plan_configs {
            config.check_expiry(plan)?;
            if config.credentials_by_reference && config.credential_store != CredentialStoreKind::OpenBao {
                return Err(invalid(
                    format!("plan_configs.\"{plan}\".credentials_by_reference"),
                    "needs credential_store = \"openbao\": a reference names where OpenBao keeps the secrets",
                ));
            }
        }
        let expiry = &self.binding_expiry;
        if expiry.grace_seconds > MAX_BINDING_TTL_SECONDS {
            return Err(invalid("binding_expiry.grace_seconds", "must be at most 315360000 (ten years)"));
        }
        if !(1..=3600).contains(&expiry.check_seconds) {
            return Err(invalid("binding_expiry.check_seconds", "must be between 1 and 3600"));
        }
        if !(2..=60).contains(&expiry.leader_lease_seconds) {
            return Err(invalid("binding_expiry.leader_lease_seconds", "must be between 2 and 60"));
        }
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
        if self.reconcile.interval_seconds > 7 * 86_400 {
            return Err(invalid("reconcile.interval_seconds", "must be between 0 and 604800"));
        }
        if !(1..=7 * 86_400).contains(&self.reconcile.stuck_after_seconds) {
            return Err(invalid("reconcile.stuck_after_seconds", "must be between 1 and 604800"));
        }
        if !(1..=MAX_WORKERS).contains(&self.listen.workers) {
            return Err(invalid("listen.workers", format!("must be between 1 and {MAX_WORKERS}")));
        }
        if !(1..=MAX_BODY_TIMEOUT_SECONDS).contains(&self.listen.body_timeout_seconds) {
            return Err(invalid(
                "listen.body_timeout_seconds",
                format!("must be between 1 and {MAX_BODY_TIMEOUT_SECONDS}"),
            ));
        }
        if !(1..=MAX_CONNECTIONS).contains(&self.listen.max_connections) {
            return Err(invalid(
                "listen.max_connections",
                format!("must be between 1 and {MAX_CONNECTIONS}"),
            ));
        }
        let limits = [
            ("listen.header_timeout_seconds", self.listen.header_timeout_seconds, MAX_HEADER_TIMEOUT_SECONDS),
            ("listen.idle_timeout_seconds", self.listen.idle_timeout_seconds, MAX_IDLE_TIMEOUT_SECONDS),
            (
                "listen.tls_handshake_timeout_seconds",
                self.listen.tls_handshake_timeout_seconds,
                MAX_TLS_HANDSHAKE_TIMEOUT_SECONDS,
            ),
            (
                "listen.max_connection_rate",
                self.listen.max_connection_rate as u64,
                MAX_CONNECTION_RATE as u64,
            ),
        ];
        for (field, value, max) in limits {
            if !(1..=max).contains(&value) {
                return Err(invalid(field, format!("must be between 1 and {max}")));
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
        if !(1..=3600).contains(&self.metrics.inventory_seconds) {
            return Err(invalid("metrics.inventory_seconds", "must be between 1 and 3600"));
        }
        Ok(())
    }

    fn clusters(&self) -> Result<BTreeMap<String, Cluster>, ConfigError> {
        if self.clusters.is_empty() {
            return Err(invalid("clusters", "at least one etcd cluster is required"));
        }
        let mut clusters = BTreeMap::new();
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
            let parse = |list: &[String], key: &str| {
                list.iter()
                    .map(|e| parse_endpoint(e).map_err(|m| invalid(field(key), m)))
                    .collect::<Result<Vec<Url>, _>>()
            };
            let endpoints: Vec<Url> = parse(&cluster.endpoints, "endpoints")?;
            let mut public_endpoints: Vec<Url> = parse(&cluster.public_endpoints, "public_endpoints")?;
            if public_endpoints.is_empty() {
                public_endpoints = endpoints.clone();
            }
            let mut certificate_endpoints = parse(&cluster.certificate_endpoints, "certificate_endpoints")?;
            if certificate_endpoints.is_empty() {
                certificate_endpoints = public_endpoints.clone();
            }
            let proxy_endpoints = parse(&cluster.proxy_endpoints, "proxy_endpoints")?;
            if cluster.username.is_empty() {
                return Err(invalid(field("username"), "must not be empty"));
            }
            if cluster.password.expose().is_empty() {
                return Err(invalid(field("password"), "must not be empty"));
            }
            let tls = match &cluster.tls {
                Some(tls) => Some(tls.load_client(&format!("clusters.{name}.tls"))?),
                None => None,
            };
            clusters.insert(
                name.clone(),
                Cluster {
                    public_endpoints,
                    certificate_endpoints,
                    proxy_endpoints,
                    endpoints,
                    username: cluster.username.clone(),
                    password: cluster.password.clone(),
                    tls,
                },
            );
        }
        Ok(clusters)
    }

    /// The cluster that holds broker records: named, or the only one.
    fn state_cluster(&self) -> Result<String, ConfigError> {
        match &self.state_cluster {
            Some(name) if !self.clusters.contains_key(name) => {
                Err(invalid("state_cluster", format!("'{name}' is not one of the configured clusters")))
            }
            Some(name) => Ok(name.clone()),
            None if self.clusters.len() > 1 => Err(invalid(
                "state_cluster",
                "required when several clusters are configured: name the one that holds broker records",
            )),
            None => Ok(self.clusters.keys().next().cloned().unwrap_or_default()),
        }
    }

    /// Checks the catalog against `plan_configs` and `clusters`, and resolves each plan's cluster.
    fn plan_clusters(&self) -> Result<BTreeMap<String, String>, ConfigError> {
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
        Ok(self.plan_configs.iter().map(|(plan, c)| (plan.clone(), c.cluster.clone())).collect())
    }
}

impl ConfigFile {
    /// Each plan's credential kind; a plan that hands out certificates needs `[certificates]`
    /// and https certificate endpoints on its cluster.
    fn plan_credentials(
        &self,
        clusters: &BTreeMap<String, Cluster>,
        have_ca: bool,
    ) -> Result<BTreeMap<String, CredentialKind>, ConfigError> {
        let mut kinds = BTreeMap::new();
        for (plan, config) in &self.plan_configs {
            let kind = config.credentials;
            if kind.certificate() {
                let field = format!("plan_configs.\"{plan}\".credentials");
                if !have_ca {
                    return Err(invalid(
                        field,
                        format!(
                            "'{}' needs the client CA: add [certificates] (docs/config.md)",
                            kind.as_str()
                        ),
                    ));
                }
                let cluster = &config.cluster;
                if let Some(plain) = clusters
                    .get(cluster)
                    .and_then(|c| c.certificate_endpoints.iter().find(|url| url.scheme() != "https"))
                {
                    return Err(invalid(
                        format!("clusters.{cluster}.certificate_endpoints"),
                        format!(
                            "'{}' is not https: client certificates need TLS; plan '{plan}' hands out \
                             certificates (list the https client URLs of etcd with --client-cert-auth)",
                            plain.as_str().trim_end_matches('/')
                        ),
                    ));
                }
            }
            kinds.insert(plan.clone(), kind);
        }
        Ok(kinds)
    }
}

impl CertificatesFile {
    /// Reads the CA certificate and key (a sealed key unsealed with `keychain`) and checks
    /// that they belong together.
    fn load(&self, keychain: Option<&Keychain>) -> Result<Authority, ConfigError> {
        const SECTION: &str = "certificates";
        let field = |f: &str| format!("{SECTION}.{f}");
        if !(1..=MAX_VALIDITY_DAYS).contains(&self.validity_days) {
            return Err(invalid(
                field("validity_days"),
                format!("must be between 1 and {MAX_VALIDITY_DAYS}"),
            ));
        }
        let read = |key: &str, path: &PathBuf| {
            std::fs::read(path)
                .map_err(|e| invalid(field(key), format!("cannot read {}: {e}", path.display())))
        };
        let ca = match (&self.ca_file, &self.ca) {
            (Some(path), None) => read("ca_file", path)?,
            (None, Some(pem)) => pem.as_bytes().to_vec(),
            (None, None) => return Err(invalid(SECTION, "needs the CA certificate: ca_file or ca")),
            _ => return Err(invalid(SECTION, "set one of ca_file and ca, not both")),
        };
        let key = zeroize::Zeroizing::new(match (&self.key_file, &self.key, &self.key_sealed) {
            (Some(path), None, None) => read("key_file", path)?,
            (None, Some(pem), None) => pem.expose().as_bytes().to_vec(),
            (None, None, Some(sealed)) => {
                let Some(keychain) = keychain else {
                    return Err(invalid(field("key_sealed"), "needs the keychain: [secrets.keys] is empty"));
                };
                crate::sealing::unseal(keychain, CA_KEY_RECORD, sealed.trim())
                    .map_err(|e| invalid(field("key_sealed"), e.to_string()))?
            }
            (None, None, None) => {
                return Err(invalid(SECTION, "needs the CA key: key_file, key or key_sealed"))
            }
            _ => return Err(invalid(SECTION, "set one of key_file, key and key_sealed, not several")),
        });
        let ca = ClientCa::from_pem(&ca, &key).map_err(|e| invalid(SECTION, e.to_string()))?;
        let validity = std::time::Duration::from_secs(u64::from(self.validity_days) * 86_400);
        Ok(Authority { ca, validity })
    }
}

impl ConfigFile {
    /// The plans' credential templates, read (files once), compiled and rendered against a
    /// sample binding of each plan's kind: a failure names the plan's field.
    fn credential_templates(
        &self,
        kinds: &BTreeMap<String, CredentialKind>,
    ) -> Result<crate::broker::templates::CredentialTemplates, ConfigError> {
        use crate::broker::templates::{CredentialTemplates, SampleShape};
        let mut texts = BTreeMap::new();
        let mut shapes = BTreeMap::new();
        for (plan, config) in &self.plan_configs {
            let field = |name: &str| format!("plan_configs.\"{plan}\".{name}");
            let text = match (&config.credentials_template, &config.credentials_template_file) {
                (Some(_), Some(_)) => {
                    return Err(invalid(
                        field("credentials_template"),
                        "set one of credentials_template and credentials_template_file, not both",
                    ))
                }
                (Some(text), None) => text.clone(),
                (None, Some(path)) => std::fs::read_to_string(path).map_err(|e| {
                    invalid(
                        field("credentials_template_file"),
                        format!("cannot read {}: {e}", path.display()),
                    )
                })?,
                (None, None) => continue,
            };
            let kind = kinds.get(plan).copied().unwrap_or_default();
            let shape = SampleShape {
                password: kind.password(),
                certificate: kind.certificate(),
                by_reference: config.credentials_by_reference,
            };
            texts.insert(plan.clone(), text);
            shapes.insert(plan.clone(), shape);
        }
        CredentialTemplates::new(&texts, &shapes).map_err(|(plan, why)| {
            let config = &self.plan_configs[&plan];
            let name = if config.credentials_template.is_some() {
                "credentials_template"
            } else {
                "credentials_template_file"
            };
            invalid(format!("plan_configs.\"{plan}\".{name}"), format!("plan '{plan}': the template {why}"))
        })
    }

    /// The credential store of plans with `credential_store = "openbao"`: OpenBao's KV v2
    /// engine (`[secrets.openbao.kv]`); `None` when no plan keeps its secrets there.
    fn credential_store(
        &self,
        bao: Option<&std::sync::Arc<crate::openbao::OpenBao>>,
    ) -> Result<Option<std::sync::Arc<dyn crate::credential_store::CredentialStore>>, ConfigError> {
        let Some((plan, _)) =
            self.plan_configs.iter().find(|(_, c)| c.credential_store == CredentialStoreKind::OpenBao)
        else {
            return Ok(None);
        };
        let Some(bao) = bao else {
            return Err(invalid(
                format!("plan_configs.\"{plan}\".credential_store"),
                "'openbao' needs [secrets.openbao]: where OpenBao is and how the broker logs in",
            ));
        };
        let kv = &self.secrets.openbao.as_ref().expect("a client comes from the table").kv;
        if !is_path_segment(&kv.mount) {
            return Err(invalid(
                "secrets.openbao.kv.mount",
                format!("'{}' must be 1 to 128 of a-z, A-Z, 0-9, '_', '-' and '.'", kv.mount),
            ));
        }
        if kv.prefix.split('/').any(|segment| !is_path_segment(segment)) {
            return Err(invalid(
                "secrets.openbao.kv.prefix",
                format!(
                    "'{}' must be path segments of 1 to 128 of a-z, A-Z, 0-9, '_', '-' and '.', joined by '/'",
                    kv.prefix
                ),
            ));
        }
        Ok(Some(std::sync::Arc::new(crate::openbao::kv::KvStore::new(bao.clone(), &kv.mount, &kv.prefix))))
    }
}

impl SecretsFile {
    /// The OpenBao client of `[secrets.openbao]`, if configured (contacts nothing).
    fn openbao(&self) -> Result<Option<std::sync::Arc<crate::openbao::OpenBao>>, ConfigError> {
        match &self.openbao {
            Some(file) => Ok(Some(std::sync::Arc::new(file.client()?))),
            None => Ok(None),
        }
    }

    /// Loads the keychain (reading key files once) and checks it against `sealing`; `bao` is
    /// the OpenBao of transit keys.
    fn sealing(&self, bao: Option<&std::sync::Arc<crate::openbao::OpenBao>>) -> Result<Sealing, ConfigError> {
        let keychain = if !self.keys.is_empty() {
            Some(self.keychain(bao)?)
        } else if let Some(active) = &self.active {
            return Err(invalid("secrets.active", format!("'{active}' names no key: secrets.keys is empty")));
        } else {
            None
        };
        match (self.sealing, keychain) {
            (SealingMode::On, None) => Err(invalid("secrets", NO_KEYS)),
            (SealingMode::On, Some(keychain)) => Ok(Sealing::On(keychain)),
            (SealingMode::Off, keychain) => Ok(Sealing::Off { keychain }),
        }
    }

    /// The keychain and its OpenBao, whatever `sealing` says (for [`super::SecretsSection`]).
    #[allow(clippy::type_complexity)]
    pub(super) fn keychain_only(
        &self,
    ) -> Result<(Option<Keychain>, Option<std::sync::Arc<crate::openbao::OpenBao>>), ConfigError> {
        let bao = self.openbao()?;
        match self.sealing(bao.as_ref())? {
            Sealing::On(keychain) => Ok((Some(keychain), bao)),
            Sealing::Off { keychain } => Ok((keychain, bao)),
        }
    }

    fn keychain(
        &self,
        bao: Option<&std::sync::Arc<crate::openbao::OpenBao>>,
    ) -> Result<Keychain, ConfigError> {
        let mut keys = Vec::new();
        for (name, key) in &self.keys {
            let field = format!("secrets.keys.{name}");
            if !is_key_name(name) {
                return Err(invalid(field, "key names use 1 to 32 of a-z, 0-9, '_' and '-'"));
            }
            if key.transit_mount.is_some() && key.transit.is_none() {
                return Err(invalid(format!("{field}.transit_mount"), "goes with transit = \"<key name>\""));
            }
            if let Some(transit) = &key.transit {
                if key.file.is_some() || key.value.is_some() || key.passphrase.is_some() {
                    return Err(invalid(
                        field,
                        "set one of file, value, passphrase and transit, not several",
                    ));
                }
                let Some(bao) = bao else {
                    return Err(invalid(
                        format!("{field}.transit"),
                        "needs [secrets.openbao]: where OpenBao is",
                    ));
                };
                let mount = key.transit_mount.as_deref().unwrap_or("transit");
                for (what, value) in [("transit", transit.as_str()), ("transit_mount", mount)] {
                    if !is_path_segment(value) {
                        return Err(invalid(
                            format!("{field}.{what}"),
                            format!("'{value}' must be 1 to 128 of a-z, A-Z, 0-9, '_', '-' and '.'"),
                        ));
                    }
                }
                let backend = crate::openbao::transit::TransitKey::new(bao.clone(), mount, transit);
                keys.push(
                    Key::remote(name, std::sync::Arc::new(backend))
                        .map_err(|e| invalid(field, e.to_string()))?,
                );
                continue;
            }
            keys.push(match (&key.file, &key.value, &key.passphrase) {
                (Some(path), None, None) => {
                    Key::from_file(name, path).map_err(|e| invalid(format!("{field}.file"), e.to_string()))?
                }
                (None, Some(value), None) => Key::from_text(name, value.expose())
                    .map_err(|e| invalid(format!("{field}.value"), e.to_string()))?,
                (None, None, Some(passphrase)) => Key::from_passphrase(name, passphrase.expose())
                    .map_err(|e| invalid(format!("{field}.passphrase"), e.to_string()))?,
                (None, None, None) => return Err(invalid(field, "needs file, value, passphrase or transit")),
                _ => return Err(invalid(field, "set one of file, value and passphrase, not several")),
            });
        }
        let Some(active) = &self.active else {
            return Err(invalid(
                "secrets.active",
                "required when keys are configured: name the key that seals",
            ));
        };
        if !self.keys.contains_key(active) {
            return Err(invalid("secrets.active", format!("'{active}' is not one of secrets.keys")));
        }
        Keychain::new(active, keys).map_err(|e| invalid("secrets", e.to_string()))
    }
}

/// Whether `text` can be one segment of an OpenBao path as the config names it: a transit
/// key, a mount (no '/', nothing to escape).
fn is_path_segment(text: &str) -> bool {
    (1..=128).contains(&text.len())
        && text.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-' || b == b'.')
        && text != "."
        && text != ".."
}

impl OpenBaoFile {
    /// The client: address parsed, CA and token file read once; contacts nothing.
    fn client(&self) -> Result<crate::openbao::OpenBao, ConfigError> {
        let field = |name: &str| format!("secrets.openbao.{name}");
        let address = url::Url::parse(&self.address)
            .map_err(|e| invalid(field("address"), format!("'{}' is not a URL: {e}", self.address)))?;
        if !matches!(address.scheme(), "http" | "https") || address.host_str().is_none() {
            return Err(invalid(field("address"), format!("'{}' must be http(s)://host:port", self.address)));
        }
        if !address.username().is_empty() || address.password().is_some() || address.query().is_some() {
            return Err(invalid(
                field("address"),
                format!("'{}' must be just scheme://host:port", self.address),
            ));
        }
        let ca_pem = match (&self.ca_file, &self.ca) {
            (Some(_), Some(_)) => return Err(invalid(field("ca"), "set one of ca_file and ca, not both")),
            (Some(path), None) => Some(
                std::fs::read(path)
                    .map_err(|e| invalid(field("ca_file"), format!("cannot read {}: {e}", path.display())))?,
            ),
            (None, Some(pem)) if !pem.trim_start().starts_with("-----BEGIN") => {
                return Err(invalid(
                    field("ca"),
                    "is not PEM text (-----BEGIN ...); a path goes into ca_file",
                ))
            }
            (None, Some(pem)) => Some(pem.clone().into_bytes()),
            (None, None) => None,
        };
        let auth = match (&self.token_file, &self.approle) {
            (Some(_), Some(_)) => {
                return Err(invalid("secrets.openbao", "set one of token_file and approle, not both"))
            }
            (None, None) => {
                return Err(invalid("secrets.openbao", "needs token_file or [secrets.openbao.approle]"))
            }
            (Some(path), None) => crate::openbao::Auth::Token(read_token_file(path)?),
            (None, Some(approle)) => {
                if approle.role_id.trim().is_empty() || approle.secret_id.expose().trim().is_empty() {
                    return Err(invalid(field("approle"), "role_id and secret_id must not be empty"));
                }
                if !is_path_segment(&approle.mount) {
                    return Err(invalid(
                        field("approle.mount"),
                        format!("'{}' is not a mount name", approle.mount),
                    ));
                }
                crate::openbao::Auth::AppRole {
                    mount: approle.mount.clone(),
                    role_id: approle.role_id.clone(),
                    secret_id: zeroize::Zeroizing::new(approle.secret_id.expose().to_owned()),
                }
            }
        };
        if !(1..=300).contains(&self.timeout_seconds) {
            return Err(invalid(field("timeout_seconds"), "must be between 1 and 300"));
        }
        let settings = crate::openbao::Settings {
            address,
            ca_pem,
            auth,
            timeout: std::time::Duration::from_secs(self.timeout_seconds),
        };
        crate::openbao::OpenBao::new(settings).map_err(|e| invalid(field("ca"), e))
    }
}

/// The token in `path`: one line, surrounding white space trimmed; refused when others may
/// read the file. Errors name the file, never its contents.
fn read_token_file(path: &std::path::Path) -> Result<zeroize::Zeroizing<String>, ConfigError> {
    use std::io::Read as _;
    let field = "secrets.openbao.token_file";
    let unreadable = |e: std::io::Error| invalid(field, format!("cannot read {}: {e}", path.display()));
    let file = std::fs::File::open(path).map_err(unreadable)?;
    let metadata = file.metadata().map_err(unreadable)?;
    if !metadata.is_file() {
        return Err(invalid(field, format!("{} is not a regular file", path.display())));
    }
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        let mode = metadata.permissions().mode() & 0o777;
        if mode & 0o007 != 0 {
            return Err(invalid(
                field,
                format!("{} is open to others (mode {mode:03o}); chmod o-rwx it", path.display()),
            ));
        }
    }
    let mut raw = zeroize::Zeroizing::new(Vec::new());
    file.take(MAX_TOKEN_FILE_BYTES + 1).read_to_end(&mut raw).map_err(unreadable)?;
    let text = std::str::from_utf8(&raw)
        .ok()
        .map(str::trim)
        .filter(|t| !t.is_empty() && !t.contains(char::is_whitespace));
    match text {
        Some(token) if raw.len() as u64 <= MAX_TOKEN_FILE_BYTES => {
            Ok(zeroize::Zeroizing::new(token.to_owned()))
        }
        _ => Err(invalid(field, format!("{} does not hold one token", path.display()))),
    }
}

impl TlsFile {
    /// Checks the TLS table of `section` (`clusters.main.tls`, `listen.tls`): file and inline
    /// forms are exclusive, inline text must be PEM, a certificate and its key go together; and
    /// reads the files.
    fn load_client(&self, section: &str) -> Result<ClientTls, ConfigError> {
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
        let read = |key: &str, file: &Option<PathBuf>, inline: Option<&str>| match (file, inline) {
            (Some(path), _) if !path.is_file() => Err(invalid(
                format!("{section}.{key}"),
                format!("{} does not exist or is not a file", path.display()),
            )),
            (Some(path), _) => std::fs::read(path).map(Some).map_err(|e| {
                invalid(format!("{section}.{key}"), format!("cannot read {}: {e}", path.display()))
            }),
            (None, inline) => Ok(inline.map(|text| text.as_bytes().to_vec())),
        };
        let ca = read("ca_file", &self.ca_file, self.ca.as_deref())?;
        let certificate = read("cert_file", &self.cert_file, self.certificate.as_deref())?;
        let private_key = read("key_file", &self.key_file, self.private_key.as_ref().map(Secret::expose))?;
        let identity = match (certificate, private_key) {
            (Some(certificate), Some(private_key)) => Some(Identity { certificate, private_key }),
            (None, None) => None,
            _ => return Err(invalid(section, "a client certificate and its key go together")),
        };
        Ok(ClientTls { ca, identity })
    }

    /// [`Self::load_client`] for a listener: a certificate and key, and no CA.
    fn load_server(&self, section: &str) -> Result<Identity, ConfigError> {
        if self.ca.is_some() || self.ca_file.is_some() {
            return Err(invalid(section, "takes a certificate and key only (client certificates: not yet)"));
        }
        let needs = || invalid(section, "needs certificate (or cert_file) and private_key (or key_file)");
        if (self.cert_file.is_none() && self.certificate.is_none())
            || (self.key_file.is_none() && self.private_key.is_none())
        {
            return Err(needs());
        }
        self.load_client(section)?.identity.ok_or_else(needs)
    }
}

/// Parses an etcd client URL: `http(s)://host:port`.
fn parse_endpoint(raw: &str) -> Result<Url, String> {
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

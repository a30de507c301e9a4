//! `data-keys`: the data keys of an instance whose values the tenant proxy encrypts
//! (docs/proxy.md, "Data keys: rotation and migration").
//!
//! - `status`: the record's versions and how many values each seals, how many are in clear.
//! - `add`: a new version (256 random bits sealed by the keychain) appended to the instance
//!   record in one compare-and-swap; proxies watch the records, so new values are sealed with it
//!   within moments. On an instance without data keys (its plan turned `encryption` on after
//!   it was provisioned) this is version 1.
//! - `rewrite`: every value not sealed with the newest version (or in clear) rewritten
//!   *through the proxy*, which seals it: the tool never holds a data key. One
//!   compare-and-swap per key (the Txn compares the mod revision it read), so a tenant's
//!   concurrent write always wins; a lost race is read again and retried. Safe to stop and to
//!   run again: values already sealed with the newest version are skipped.
//! - `retire`: a version dropped from the record, refused while any value is sealed with it
//!   (or while it is the newest).
//!
//! Credentials: the broker config's cluster user (etcd's root role), like `reseal` and
//! `reconcile`. Reads that decide what to do go to etcd directly and look only at a value's
//! header (which version seals it); the rewrite goes through the proxy with the same user,
//! whose token the proxy forwards, as it forwards every caller's. Nothing secret is printed:
//! values neither sealed nor clear, keys by their names only.

use std::collections::BTreeMap;
use std::fmt;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context, Result};
use etcd_broker::broker::names::Names;
use etcd_broker::broker::records::{data_key_name, sealed_value_version, DataKey};
use etcd_broker::config::{Cluster, Config};
use etcd_broker::etcd::{connect, prefix_end, resend_on_auth_change};
use etcd_broker::osb::InstanceId;
use etcd_broker::tls::ClientTls;
use etcd_client::{Client, Compare, CompareOp, ConnectOptions, GetOptions, PutOptions, Txn, TxnOp};
use serde_json::Value;
use url::Url;

/// `data-keys` and its subcommands.
#[derive(Debug, clap::Subcommand)]
pub enum DataKeysCommand {
    /// Print the instance's data-key versions (the newest seals new values) and how many
    /// values each seals, and how many are in clear. Reads etcd directly; only values'
    /// headers are looked at.
    Status(InstanceArgs),
    /// Append a new data-key version to the instance record (compare-and-swap): proxies seal
    /// new values with it within seconds, and still unseal every older version. On an
    /// instance without data keys whose plan now encrypts, adds version 1. With --rewrite,
    /// then rewrites the values as `data-keys rewrite` does.
    Add(AddArgs),
    /// Rewrite every value of the instance that is not sealed with the newest version (or is
    /// in clear) through the proxy, which seals it with the newest; one compare-and-swap per
    /// key, so a tenant's concurrent write is never lost (the key is read again and retried).
    /// Progress on stderr, a summary on stdout. Safe to stop (Ctrl-C: exit 130) and to run
    /// again. Exit 0 when every value is sealed with the newest version, 1 when any is not.
    Rewrite(RewriteArgs),
    /// Remove a data-key version from the instance record, refused (exit 1) while any value
    /// is sealed with it or while it is the newest.
    Retire(RetireArgs),
}

/// The instance and the broker's config.
#[derive(Debug, Clone, clap::Args)]
pub struct InstanceArgs {
    /// The service instance id.
    pub instance_id: String,
    /// The broker's TOML config: its clusters (credentials), prefixes and [secrets] keychain
    /// (ETCD_BROKER__* variables apply).
    #[arg(long, value_name = "FILE")]
    pub config: PathBuf,
}

/// Where the proxy is.
#[derive(Debug, Clone, clap::Args)]
pub struct ProxyArgs {
    /// The tenant proxy's client URLs, comma-separated; default the instance's cluster's
    /// `proxy_endpoints`.
    #[arg(long, value_name = "URLS", value_delimiter = ',')]
    pub proxy: Vec<Url>,
    /// CA (PEM) verifying an https proxy; default the CA of the instance's cluster.
    #[arg(long, value_name = "FILE")]
    pub proxy_ca_file: Option<PathBuf>,
}

/// Flags of `data-keys add`.
#[derive(Debug, Clone, clap::Args)]
pub struct AddArgs {
    #[command(flatten)]
    pub instance: InstanceArgs,
    /// Then rewrite the instance's values under the new version (through the proxy).
    #[arg(long)]
    pub rewrite: bool,
    #[command(flatten)]
    pub proxy: ProxyArgs,
}

/// Flags of `data-keys rewrite`.
#[derive(Debug, Clone, clap::Args)]
pub struct RewriteArgs {
    #[command(flatten)]
    pub instance: InstanceArgs,
    #[command(flatten)]
    pub proxy: ProxyArgs,
    /// Count what would be rewritten, per source (clear, each version); write nothing.
    #[arg(long)]
    pub dry_run: bool,
}

/// Flags of `data-keys retire`.
#[derive(Debug, Clone, clap::Args)]
pub struct RetireArgs {
    #[command(flatten)]
    pub instance: InstanceArgs,
    /// The version to remove.
    pub version: u32,
}

/// How a command ended, for the exit code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Done: exit 0.
    Done,
    /// Refused, or some values are not done: exit 1.
    Failed,
    /// Ctrl-C: exit 130.
    Interrupted,
}

/// Compare-and-swap attempts on one key or record before giving up on it.
const ATTEMPTS: usize = 5;
/// Keys read from etcd per page.
const PAGE: i64 = 200;
/// How often the progress report prints a line.
const PROGRESS_EVERY: Duration = Duration::from_secs(1);
/// How long a request may take.
const TIMEOUT: Duration = Duration::from_secs(10);

/// Where a value was before its rewrite: in clear, or sealed with a version.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Source {
    Clear,
    Version(u32),
}

impl fmt::Display for Source {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Source::Clear => f.write_str("clear"),
            Source::Version(v) => write!(f, "version {v}"),
        }
    }
}

fn source_of(value: &[u8]) -> Source {
    sealed_value_version(value).map_or(Source::Clear, Source::Version)
}

/// How many values each source holds.
pub type Usage = BTreeMap<Source, u64>;

/// What `rewrite` did.
#[derive(Debug, Default)]
pub struct Summary {
    /// The version values are rewritten to.
    pub newest: u32,
    /// Rewritten (dry run: to rewrite), per source.
    pub rewritten: Usage,
    /// Already sealed with the newest version.
    pub already: u64,
    /// Compare-and-swaps lost to a concurrent write (the key read again).
    pub raced: u64,
    /// Deleted before their rewrite.
    pub gone: u64,
    /// Keys not done, and why.
    pub failed: Vec<(String, String)>,
    /// Ctrl-C stopped the walk.
    pub interrupted: bool,
}

impl Summary {
    fn outcome(&self) -> Outcome {
        match (self.interrupted, self.failed.is_empty()) {
            (true, _) => Outcome::Interrupted,
            (false, true) => Outcome::Done,
            (false, false) => Outcome::Failed,
        }
    }
}

/// One instance: its record's key, its tenant prefix and the clients reaching them.
struct Instance {
    config: Config,
    id: InstanceId,
    record_key: String,
    tenant_prefix: String,
    /// The state cluster (the record).
    state: Client,
    /// The instance's cluster (its values), directly.
    data: Client,
    /// The instance's cluster name and settings.
    cluster_name: String,
    cluster: Cluster,
    same_cluster: bool,
}

/// The instance record as read: the whole JSON (fields this tool does not know are kept) and
/// the revision its compare-and-swap compares.
struct Record {
    json: serde_json::Map<String, Value>,
    mod_revision: i64,
    data_keys: Vec<DataKey>,
}

impl Record {
    fn newest(&self) -> Option<u32> {
        self.data_keys.iter().map(|k| k.version).max()
    }

    fn text(&self, field: &str) -> &str {
        self.json.get(field).and_then(Value::as_str).unwrap_or("")
    }
}

async fn client_for(name: &str, cluster: &Cluster) -> Result<Client> {
    let endpoints: Vec<String> =
        cluster.endpoints.iter().map(|url| url.as_str().trim_end_matches('/').to_owned()).collect();
    client_at(&endpoints, cluster, &cluster.tls.clone().unwrap_or_default())
        .await
        .with_context(|| format!("cannot connect to etcd cluster '{name}'"))
}

async fn client_at(endpoints: &[String], cluster: &Cluster, tls: &ClientTls) -> Result<Client> {
    let options = ConnectOptions::new()
        .with_user(&cluster.username, cluster.password.expose())
        .with_connect_timeout(TIMEOUT)
        .with_timeout(TIMEOUT);
    Ok(connect(endpoints, options, tls).await?)
}

impl Instance {
    async fn open(args: &InstanceArgs) -> Result<(Instance, Record)> {
        let config = Config::load(&args.config)?;
        let id = InstanceId::parse(&args.instance_id)
            .map_err(|e| anyhow::anyhow!("instance id '{}': {e}", args.instance_id))?;
        let names = Names::new(&config.prefixes.data, &config.prefixes.state);
        let state_name = config.state_cluster.clone();
        let state_cluster = config
            .clusters
            .get(&state_name)
            .with_context(|| format!("state_cluster '{state_name}' is not configured"))?;
        let state = client_for(&state_name, state_cluster).await?;
        let record_key = names.instance_key(&id);
        let record = read_record(&state, &record_key).await?.with_context(|| {
            format!("instance '{}' has no record ({record_key}): not provisioned by this broker", id.as_str())
        })?;
        let cluster_name = record.text("cluster").to_owned();
        let cluster = config
            .clusters
            .get(&cluster_name)
            .with_context(|| format!("the instance's cluster '{cluster_name}' is not in the config"))?
            .clone();
        let same_cluster = cluster_name == state_name;
        let data = if same_cluster { state.clone() } else { client_for(&cluster_name, &cluster).await? };
        let tenant_prefix = names.tenant_prefix(&id);
        let instance = Instance {
            config,
            id,
            record_key,
            tenant_prefix,
            state,
            data,
            cluster_name,
            cluster,
            same_cluster,
        };
        Ok((instance, record))
    }

    async fn record(&self) -> Result<Record> {
        read_record(&self.state, &self.record_key)
            .await?
            .with_context(|| format!("instance '{}' was deprovisioned meanwhile", self.id.as_str()))
    }

    /// The proxy, logged in as the cluster's user.
    async fn proxy(&self, args: &ProxyArgs) -> Result<Client> {
        let urls = if args.proxy.is_empty() { &self.cluster.proxy_endpoints } else { &args.proxy };
        if urls.is_empty() {
            bail!("cluster '{}' has no proxy_endpoints: name the proxy with --proxy", self.cluster_name);
        }
        let endpoints: Vec<String> =
            urls.iter().map(|u| u.as_str().trim_end_matches('/').to_owned()).collect();
        let ca = match &args.proxy_ca_file {
            Some(path) => {
                Some(std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?)
            }
            None => self.cluster.tls.as_ref().and_then(|t| t.ca.clone()),
        };
        client_at(&endpoints, &self.cluster, &ClientTls { ca, identity: None })
            .await
            .with_context(|| format!("cannot connect to the proxy at {}", endpoints.join(",")))
    }

    /// Every value under the instance's prefix, a page at a time, at one revision (the
    /// first page's): `visit` gets each key, its mod revision and its source.
    async fn walk(
        &self,
        stop: &AtomicBool,
        visit: &mut (dyn FnMut(&[u8], i64, Source) + Send),
    ) -> Result<i64> {
        let end = prefix_end(self.tenant_prefix.as_bytes());
        let mut from = self.tenant_prefix.clone().into_bytes();
        let mut revision = 0;
        loop {
            if stop.load(Ordering::SeqCst) {
                return Ok(revision);
            }
            let mut options = GetOptions::new().with_range(end.clone()).with_limit(PAGE);
            if revision > 0 {
                options = options.with_revision(revision);
            }
            let page = resend_on_auth_change(|| {
                let (mut c, from, options) = (self.data.clone(), from.clone(), options.clone());
                async move { c.get(from, Some(options)).await }
            })
            .await
            .with_context(|| format!("cannot read the values of instance '{}'", self.id.as_str()))?;
            if revision == 0 {
                revision = page.header().map_or(0, |h| h.revision());
            }
            for kv in page.kvs() {
                visit(kv.key(), kv.mod_revision(), source_of(kv.value()));
            }
            match page.kvs().last() {
                Some(last) if page.more() => {
                    from = last.key().to_vec();
                    from.push(0);
                }
                _ => return Ok(revision),
            }
        }
    }

    /// How many values each source holds, and the revision they were counted at.
    async fn usage(&self) -> Result<(Usage, i64)> {
        let mut usage = Usage::new();
        let revision = self
            .walk(&AtomicBool::new(false), &mut |_, _, source| *usage.entry(source).or_default() += 1)
            .await?;
        Ok((usage, revision))
    }

    /// One compare-and-swap of the record: `change` edits the data keys of the record read.
    async fn change_record<F, Fut>(&self, mut change: F) -> Result<Vec<DataKey>>
    where
        F: FnMut(Record) -> Fut,
        Fut: std::future::Future<Output = Result<(Record, Vec<Compare>)>>,
    {
        for _ in 0..ATTEMPTS {
            let record = self.record().await?;
            let read_at = record.mod_revision;
            let (mut record, mut compares) = change(record).await?;
            record.json.insert("data_keys".into(), serde_json::to_value(&record.data_keys)?);
            let now = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
            record.json.insert("updated_at".into(), now.into());
            let value = serde_json::to_vec(&record.json)?;
            compares.push(Compare::mod_revision(self.record_key.as_str(), CompareOp::Equal, read_at));
            let txn = Txn::new().when(compares).and_then([TxnOp::put(self.record_key.as_str(), value, None)]);
            let done = resend_on_auth_change(|| {
                let (mut c, txn) = (self.state.clone(), txn.clone());
                async move { c.txn(txn).await }
            })
            .await
            .context("cannot write the instance record")?;
            if done.succeeded() {
                return Ok(record.data_keys);
            }
        }
        bail!("the instance record kept changing ({ATTEMPTS} attempts): run the command again")
    }
}

async fn read_record(client: &Client, key: &str) -> Result<Option<Record>> {
    let found = resend_on_auth_change(|| {
        let (mut c, key) = (client.clone(), key.to_owned());
        async move { c.get(key, None).await }
    })
    .await
    .with_context(|| format!("cannot read the instance record {key}"))?;
    let Some(kv) = found.kvs().first() else { return Ok(None) };
    let json: serde_json::Map<String, Value> = serde_json::from_slice(kv.value())
        .with_context(|| format!("the instance record {key} is not JSON"))?;
    let data_keys = match json.get("data_keys") {
        None => Vec::new(),
        Some(keys) => serde_json::from_value(keys.clone())
            .with_context(|| format!("the data keys of the instance record {key} are unreadable"))?,
    };
    Ok(Some(Record { json, mod_revision: kv.mod_revision(), data_keys }))
}

fn runtime() -> Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")
}

/// `data-keys ...`: runs one subcommand, prints its report.
pub fn run(command: &DataKeysCommand) -> Result<Outcome> {
    let runtime = runtime()?;
    let stop = Arc::new(AtomicBool::new(false));
    runtime.block_on(async {
        let on_signal = stop.clone();
        tokio::spawn(async move {
            if tokio::signal::ctrl_c().await.is_ok() {
                eprintln!("data-keys: stopping after the key being rewritten");
                on_signal.store(true, Ordering::SeqCst);
            }
        });
        let (text, outcome) = match command {
            DataKeysCommand::Status(args) => (status(args).await?, Outcome::Done),
            DataKeysCommand::Add(args) => {
                let mut text = add(&args.instance).await?;
                let mut outcome = Outcome::Done;
                if args.rewrite {
                    let summary = rewrite(&args.instance, &args.proxy, false, &stop).await?;
                    text.push_str(&summary_text(&summary, false));
                    outcome = summary.outcome();
                }
                (text, outcome)
            }
            DataKeysCommand::Rewrite(args) => {
                let summary = rewrite(&args.instance, &args.proxy, args.dry_run, &stop).await?;
                (summary_text(&summary, args.dry_run), summary.outcome())
            }
            DataKeysCommand::Retire(args) => match retire(&args.instance, args.version).await? {
                Ok(text) => (text, Outcome::Done),
                Err(refused) => (refused, Outcome::Failed),
            },
        };
        print!("{text}");
        Ok(outcome)
    })
}

fn usage_text(usage: &Usage) -> String {
    if usage.is_empty() {
        return "none".to_owned();
    }
    usage.iter().map(|(source, n)| format!("{source}: {n}")).collect::<Vec<_>>().join(", ")
}

/// `data-keys status`: the versions and the values each seals.
pub async fn status(args: &InstanceArgs) -> Result<String> {
    let (instance, record) = Instance::open(args).await?;
    let (usage, revision) = instance.usage().await?;
    let mut out = format!("instance {} (cluster '{}')\n", instance.id.as_str(), instance.cluster_name);
    match record.newest() {
        None => out.push_str("data keys: none (the proxy passes this instance's values through in clear)\n"),
        Some(newest) => {
            out.push_str("data keys:\n");
            let mut versions: Vec<u32> = record.data_keys.iter().map(|k| k.version).collect();
            versions.sort_unstable();
            for version in versions {
                let n = usage.get(&Source::Version(version)).copied().unwrap_or(0);
                let mark = if version == newest { " (newest: seals new values)" } else { "" };
                out.push_str(&format!("  version {version}{mark}: {n} values\n"));
            }
        }
    }
    let unknown: u64 = usage
        .iter()
        .filter(|(s, _)| matches!(s, Source::Version(v) if !record.data_keys.iter().any(|k| k.version == *v)))
        .map(|(_, n)| n)
        .sum();
    if unknown > 0 {
        out.push_str(&format!("sealed with a version the record lacks (unreadable): {unknown} values\n"));
    }
    out.push_str(&format!(
        "in clear: {} values\nat revision {revision}\n",
        usage.get(&Source::Clear).copied().unwrap_or(0)
    ));
    Ok(out)
}

/// `data-keys add`: a new version appended to the record; its text report.
pub async fn add(args: &InstanceArgs) -> Result<String> {
    let (instance, record) = Instance::open(args).await?;
    if record.text("state") == "deleting" {
        bail!("instance '{}' is being deprovisioned", instance.id.as_str());
    }
    if record.data_keys.is_empty() {
        // Without a data key the proxy passes the instance through; with one, it seals. A plan
        // that does not encrypt hands out etcd's own endpoints, where tenants would then read
        // ciphertext.
        let plan = record.text("plan_id");
        if !instance.config.plan_options.get(plan).is_some_and(|o| o.encryption) {
            bail!(
                "instance '{}' has no data key and its plan '{plan}' does not encrypt (plan option \
                 `encryption`): its bindings talk to etcd directly, where values sealed by the proxy \
                 would be unreadable",
                instance.id.as_str()
            );
        }
    }
    let keychain = instance
        .config
        .sealing
        .keychain()
        .context("the config has no keychain ([secrets.keys]) to seal a data key with")?
        .clone();
    let record_key = instance.record_key.clone();
    let keys = instance
        .change_record(|mut record| {
            let (keychain, record_key) = (keychain.clone(), record_key.clone());
            async move {
                let version = record.newest().unwrap_or(0) + 1;
                let mut bytes = zeroize::Zeroizing::new([0u8; 32]);
                openssl::rand::rand_bytes(&mut bytes[..]).context("OpenSSL's random generator failed")?;
                let sealed = etcd_broker::sealing::seal_async(
                    &keychain,
                    &data_key_name(&record_key, version),
                    &bytes[..],
                )
                .await
                .map_err(|e| anyhow::anyhow!("cannot seal the new data key: {e}"))?;
                record.data_keys.push(DataKey { version, sealed });
                Ok((record, Vec::new()))
            }
        })
        .await?;
    let newest = keys.iter().map(|k| k.version).max().unwrap_or(0);
    Ok(format!(
        "instance {}: data key version {newest} added; proxies seal new values with it once they \
         see the record (seconds); `data-keys rewrite` seals the older values with it\n",
        instance.id.as_str()
    ))
}

/// `data-keys retire`: `Ok(Err(why))` when refused.
pub async fn retire(args: &InstanceArgs, version: u32) -> Result<Result<String, String>> {
    let (instance, record) = Instance::open(args).await?;
    if !record.data_keys.iter().any(|k| k.version == version) {
        return Ok(Err(format!("instance {} holds no data key version {version}\n", instance.id.as_str())));
    }
    if record.newest() == Some(version) {
        return Ok(Err(format!(
            "version {version} is the newest, which seals new values: add a newer one (`data-keys add`) \
             and rewrite the values first\n"
        )));
    }
    let (usage, revision) = instance.usage().await?;
    let in_use = usage.get(&Source::Version(version)).copied().unwrap_or(0);
    if in_use > 0 {
        return Ok(Err(format!(
            "version {version} still seals {in_use} values of instance {}: run `data-keys rewrite` first\n",
            instance.id.as_str()
        )));
    }
    // No value may change between the count and the record's change (same cluster only: a
    // Txn spans one cluster). A value written meanwhile is sealed with the newest version
    // anyway; the compare makes that an invariant, not a timing argument.
    let prefix = instance.tenant_prefix.clone();
    let same_cluster = instance.same_cluster;
    let mut first = true;
    let outcome = instance
        .change_record(|mut record| {
            let prefix = prefix.clone();
            let again = !std::mem::replace(&mut first, false);
            async move {
                if again && same_cluster {
                    bail!("the instance's values or record changed during the check: run the command again");
                }
                record.data_keys.retain(|k| k.version != version);
                let compares = if same_cluster {
                    vec![Compare::mod_revision(prefix, CompareOp::Less, revision + 1).with_prefix()]
                } else {
                    Vec::new()
                };
                Ok((record, compares))
            }
        })
        .await?;
    let left: Vec<String> = outcome.iter().map(|k| k.version.to_string()).collect();
    Ok(Ok(format!(
        "instance {}: data key version {version} retired (versions left: {})\n",
        instance.id.as_str(),
        left.join(", ")
    )))
}

/// What happened to one key.
enum Done {
    Rewritten(Source),
    Already,
    Gone,
    Failed(String),
}

/// `data-keys rewrite` (`dry_run`: counts only).
pub async fn rewrite(
    instance: &InstanceArgs,
    proxy: &ProxyArgs,
    dry_run: bool,
    stop: &AtomicBool,
) -> Result<Summary> {
    let (instance, record) = Instance::open(instance).await?;
    let Some(newest) = record.newest() else {
        bail!(
            "instance '{}' has no data key: nothing would seal its values (`data-keys add` gives it one)",
            instance.id.as_str()
        );
    };
    let through = if dry_run { None } else { Some(instance.proxy(proxy).await?) };
    // The walk first collects the keys to rewrite (a page at a time would hold a read
    // revision open against compaction for as long as the rewrite takes).
    let mut summary = Summary { newest, ..Summary::default() };
    let mut todo: Vec<(Vec<u8>, i64, Source)> = Vec::new();
    instance
        .walk(stop, &mut |key, mod_revision, source| match source {
            Source::Version(v) if v >= newest => summary.already += 1,
            _ => todo.push((key.to_vec(), mod_revision, source)),
        })
        .await?;
    let Some(through) = through else {
        for (_, _, source) in &todo {
            *summary.rewritten.entry(*source).or_default() += 1;
        }
        summary.interrupted = stop.load(Ordering::SeqCst);
        return Ok(summary);
    };
    let mut report = ProgressReport::new(todo.len());
    for (key, mod_revision, source) in todo {
        if stop.load(Ordering::SeqCst) {
            summary.interrupted = true;
            break;
        }
        match rewrite_one(&instance.data, &through, &key, mod_revision, source, newest, &mut summary.raced)
            .await
        {
            Done::Rewritten(from) => *summary.rewritten.entry(from).or_default() += 1,
            Done::Already => summary.already += 1,
            Done::Gone => summary.gone += 1,
            Done::Failed(why) => summary.failed.push((String::from_utf8_lossy(&key).into_owned(), why)),
        }
        report.step();
    }
    report.line();
    Ok(summary)
}

/// One key rewritten through the proxy: its clear value read there and put back under a
/// compare of the mod revision read directly, then checked in etcd to be sealed with
/// `newest` (a proxy that has not yet seen the version, or a URL that is not a proxy, is
/// found here, not assumed away).
async fn rewrite_one(
    data: &Client,
    proxy: &Client,
    key: &[u8],
    mut mod_revision: i64,
    source: Source,
    newest: u32,
    raced: &mut u64,
) -> Done {
    let mut last_failure = String::new();
    for _ in 0..ATTEMPTS {
        let result: Result<Option<Done>, etcd_client::Error> = async {
            let got = resend_on_auth_change(|| {
                let (mut c, key) = (proxy.clone(), key.to_vec());
                async move { c.get(key, None).await }
            })
            .await?;
            let Some(kv) = got.kvs().first() else { return Ok(Some(Done::Gone)) };
            if kv.mod_revision() == mod_revision {
                let txn = Txn::new()
                    .when([Compare::mod_revision(key, CompareOp::Equal, mod_revision)])
                    .and_then([TxnOp::put(key, kv.value(), Some(PutOptions::new().with_ignore_lease()))]);
                let answer = resend_on_auth_change(|| {
                    let (mut c, txn) = (proxy.clone(), txn.clone());
                    async move { c.txn(txn).await }
                })
                .await?;
                if answer.succeeded() {
                    let at = answer.header().map_or(0, |h| h.revision());
                    let written = resend_on_auth_change(|| {
                        let (mut c, key) = (data.clone(), key.to_vec());
                        async move { c.get(key, Some(GetOptions::new().with_revision(at))).await }
                    })
                    .await?;
                    match written.kvs().first().map(|kv| source_of(kv.value())) {
                        Some(Source::Version(v)) if v >= newest => return Ok(Some(Done::Rewritten(source))),
                        Some(other) => {
                            // Give proxies that have not seen the newest version a moment.
                            last_failure = format!(
                                "the proxy wrote it {}, not sealed with version {newest}: is --proxy the tenant \
                                 proxy (with the keys in its --config), and has it seen the version?",
                                match other {
                                    Source::Clear => "in clear".to_owned(),
                                    Source::Version(v) => format!("sealed with version {v}"),
                                }
                            );
                            tokio::time::sleep(Duration::from_millis(500)).await;
                        }
                        None => {}
                    }
                } else {
                    *raced += 1;
                }
            } else {
                *raced += 1;
            }
            // Changed meanwhile (by a tenant, or by this rewrite): decide again from etcd.
            let now = resend_on_auth_change(|| {
                let (mut c, key) = (data.clone(), key.to_vec());
                async move { c.get(key, None).await }
            })
            .await?;
            let Some(kv) = now.kvs().first() else { return Ok(Some(Done::Gone)) };
            match source_of(kv.value()) {
                // A tenant's write through the proxy sealed it meanwhile.
                Source::Version(v) if v >= newest => Ok(Some(Done::Already)),
                _ => {
                    mod_revision = kv.mod_revision();
                    Ok(None)
                }
            }
        }
        .await;
        match result {
            Ok(Some(done)) => return done,
            Ok(None) => {}
            Err(e) => last_failure = e.to_string(),
        }
    }
    if last_failure.is_empty() {
        last_failure = format!("changed by a tenant during each of {ATTEMPTS} attempts");
    }
    Done::Failed(last_failure)
}

/// Lines on stderr: done/total and the rate, at most one per [`PROGRESS_EVERY`].
struct ProgressReport {
    started: Instant,
    last_line: Instant,
    done: usize,
    total: usize,
}

impl ProgressReport {
    fn new(total: usize) -> Self {
        Self { started: Instant::now(), last_line: Instant::now(), done: 0, total }
    }

    fn step(&mut self) {
        self.done += 1;
        if self.last_line.elapsed() >= PROGRESS_EVERY {
            self.last_line = Instant::now();
            self.line();
        }
    }

    fn line(&self) {
        let seconds = self.started.elapsed().as_secs_f64();
        let rate = if seconds > 0.0 { self.done as f64 / seconds } else { 0.0 };
        eprintln!(
            "data-keys rewrite: {}/{} values, {rate:.0} values/s, {seconds:.1} s",
            self.done, self.total
        );
    }
}

/// The summary of `rewrite`.
pub fn summary_text(summary: &Summary, dry_run: bool) -> String {
    let verb = if dry_run { "to rewrite (dry run, nothing written)" } else { "rewritten" };
    let total: u64 = summary.rewritten.values().sum();
    let mut out = format!("values {verb} to data key version {}: {total}", summary.newest);
    if !summary.rewritten.is_empty() {
        out.push_str(&format!(" ({})", usage_text(&summary.rewritten)));
    }
    out.push('\n');
    out.push_str(&format!("already sealed with version {}: {}\n", summary.newest, summary.already));
    out.push_str(&format!("raced with a tenant's write and read again: {}\n", summary.raced));
    out.push_str(&format!("deleted meanwhile: {}\n", summary.gone));
    out.push_str(&format!("failed: {}\n", summary.failed.len()));
    for (key, why) in &summary.failed {
        out.push_str(&format!("  {key}: {why}\n"));
    }
    if summary.interrupted {
        out.push_str("interrupted: run the same command again to finish (values done are skipped)\n");
    } else if !summary.failed.is_empty() {
        out.push_str("run the same command again to retry the failed values\n");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_are_sorted_by_the_version_that_seals_them() {
        assert_eq!(source_of(b"plain"), Source::Clear);
        assert_eq!(source_of(b"\0ebp\x01\0\0\0\x07rest"), Source::Version(7));
        assert_eq!(source_of(b"\0ebp\x01\0\0"), Source::Clear, "too short to be sealed");
    }

    #[test]
    fn the_summary_counts_per_source_names_failed_keys_and_how_to_resume() {
        let summary = Summary {
            newest: 3,
            rewritten: [(Source::Clear, 2), (Source::Version(1), 4)].into(),
            already: 5,
            raced: 1,
            failed: vec![("/service_instances/i/k".into(), "why".into())],
            interrupted: true,
            ..Summary::default()
        };
        let text = summary_text(&summary, false);
        assert!(
            text.starts_with("values rewritten to data key version 3: 6 (clear: 2, version 1: 4)\n"),
            "{text}"
        );
        assert!(text.contains("already sealed with version 3: 5\n"), "{text}");
        assert!(text.contains("failed: 1\n  /service_instances/i/k: why\n"), "{text}");
        assert!(text.contains("run the same command again"), "{text}");
        assert_eq!(summary.outcome(), Outcome::Interrupted);
        assert_eq!(Summary::default().outcome(), Outcome::Done);
        assert!(summary_text(&Summary::default(), true).contains("dry run"));
    }
}

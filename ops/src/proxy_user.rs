//! `etcd-broker-ops proxy-user`: the tenant proxy's own etcd user and role, made with the
//! broker's root credentials so that the proxy never needs them (docs/proxy.md, "Its etcd
//! user"). The role holds exactly what the proxy reads and writes: its own records read-write,
//! the broker's binding records (revocation) and instance records (data keys) read-only.
//! Every step is idempotent, so the command is safe to run again (a rotated password, a crash
//! halfway).

use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use etcd_broker::broker::names::Names;
use etcd_broker::config::Config;
use etcd_client::{Client, Permission};

/// The proxy's default user and role name.
pub const DEFAULT_USER: &str = "etcd-broker-proxy";
/// The proxy's default records prefix (its `--state-prefix`).
pub const DEFAULT_STATE_PREFIX: &str = "/etcd-broker/proxy/";

/// Flags of `etcd-broker-ops proxy-user`.
#[derive(Debug, Clone, clap::Args)]
pub struct ProxyUserArgs {
    /// The broker's config file: its state cluster's root credentials make the user, and its
    /// prefixes say which records the proxy reads.
    #[arg(
        long,
        value_name = "FILE",
        required_unless_present = "bosh_properties",
        conflicts_with = "bosh_properties"
    )]
    pub config: Option<PathBuf>,
    /// The broker job's properties.json instead of --config (on a broker VM:
    /// /var/vcap/jobs/etcd-broker/config/properties.json).
    #[arg(long, value_name = "FILE")]
    pub bosh_properties: Option<PathBuf>,
    /// The proxy's user (and role) name; never root.
    #[arg(long, default_value = DEFAULT_USER)]
    pub user: String,
    /// File holding the proxy user's password (first line); set again when the user exists.
    #[arg(long, value_name = "FILE", required_unless_present = "job_properties")]
    pub password_file: Option<PathBuf>,
    /// The proxy's records prefix (its --state-prefix), granted read-write.
    #[arg(long, default_value = DEFAULT_STATE_PREFIX)]
    pub state_prefix: String,
    /// The etcd-broker-proxy-user job's properties.json (its `user`, `password` and
    /// `state_prefix`) in place of --user, --password-file and --state-prefix: what the job's
    /// post-start passes on a broker VM.
    #[arg(long, value_name = "FILE", conflicts_with_all = ["password_file", "user", "state_prefix"])]
    pub job_properties: Option<PathBuf>,
}

/// What the etcd-broker-proxy-user job's properties.json holds (jobs/etcd-broker-proxy-user).
#[derive(serde::Deserialize)]
struct JobFile {
    properties: JobProperties,
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct JobProperties {
    user: Option<String>,
    password: Option<String>,
    state_prefix: Option<String>,
}

/// The user, its password and the state prefix, from the flags or the job's properties.
fn settings(args: &ProxyUserArgs) -> Result<(String, String, String)> {
    if let Some(path) = &args.job_properties {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("--job-properties: cannot read {}", path.display()))?;
        // Only the position of what does not parse: serde's message may quote a value.
        let file: JobFile = serde_json::from_str(&text).map_err(|e| {
            anyhow::anyhow!(
                "--job-properties: {} is not the etcd-broker-proxy-user job's properties.json (line {}, column {})",
                path.display(),
                e.line(),
                e.column()
            )
        })?;
        let job = file.properties;
        let password = job.password.unwrap_or_default();
        if password.is_empty() {
            bail!("--job-properties: {}: the job's `password` is not set", path.display());
        }
        return Ok((
            job.user.unwrap_or_else(|| DEFAULT_USER.to_owned()),
            password,
            job.state_prefix.unwrap_or_else(|| DEFAULT_STATE_PREFIX.to_owned()),
        ));
    }
    let Some(path) = &args.password_file else {
        bail!("--password-file or --job-properties: the proxy user's password is needed")
    };
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("--password-file: cannot read {}", path.display()))?;
    let password = text.lines().next().unwrap_or("").to_owned();
    if password.is_empty() {
        bail!("--password-file: the password is empty");
    }
    Ok((args.user.clone(), password, args.state_prefix.clone()))
}

/// What the proxy's role may do: (key prefix, read-write?) pairs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProxyAccess {
    pub user: String,
    /// The proxy's own records: read-write.
    pub state_prefix: String,
    /// The broker's binding records and instance records, and the tenants' data (quotas
    /// count each instance's keys and bytes): read-only.
    pub read_only: Vec<String>,
}

impl ProxyAccess {
    /// The access of a proxy in front of the broker whose key scheme is `names`.
    pub fn new(user: &str, state_prefix: &str, names: &Names) -> Result<Self> {
        if user.is_empty() || user == "root" {
            bail!("--user: the proxy's user must be named, and must not be root");
        }
        if !state_prefix.starts_with('/') || !state_prefix.ends_with('/') || state_prefix == "/" {
            bail!("--state-prefix: '{state_prefix}' must start and end with '/' and not be '/'");
        }
        Ok(ProxyAccess {
            user: user.to_owned(),
            state_prefix: state_prefix.to_owned(),
            read_only: vec![
                names.all_bindings_prefix(),
                names.instances_prefix(),
                names.data_prefix().to_owned(),
            ],
        })
    }
}

/// Makes (or brings back) the proxy's user with `password`, its role and the role's grants.
/// Safe to repeat: an existing user gets `password` again, existing grants stay.
pub async fn ensure(client: &mut Client, access: &ProxyAccess, password: &str) -> Result<()> {
    let user = access.user.as_str();
    match client.user_add(user, password, None).await {
        Ok(_) => {}
        Err(e) if e.to_string().contains("already exists") => {
            client
                .user_change_password(user, password)
                .await
                .context("cannot set the proxy user's password")?;
        }
        Err(e) => return Err(e).context(format!("cannot add the user '{user}'")),
    }
    match client.role_add(user).await {
        Ok(_) => {}
        Err(e) if e.to_string().contains("already exists") => {}
        Err(e) => return Err(e).context(format!("cannot add the role '{user}'")),
    }
    let mut grants = vec![Permission::read_write(access.state_prefix.as_str()).with_prefix()];
    grants.extend(access.read_only.iter().map(|p| Permission::read(p.as_str()).with_prefix()));
    for grant in grants {
        client
            .role_grant_permission(user, grant)
            .await
            .with_context(|| format!("cannot grant the role '{user}'"))?;
    }
    client
        .user_grant_role(user, user)
        .await
        .with_context(|| format!("cannot give the user '{user}' its role"))?;
    Ok(())
}

/// Runs `etcd-broker-ops proxy-user`.
pub fn run(args: &ProxyUserArgs) -> Result<()> {
    let config = match (&args.config, &args.bosh_properties) {
        (Some(path), _) => Config::load(path)?,
        (None, Some(path)) => Config::from_bosh_properties(path, None)?,
        (None, None) => bail!("--config or --bosh-properties: the broker's config is needed"),
    };
    let names = Names::new(&config.prefixes.data, &config.prefixes.state);
    let (user, password, state_prefix) = settings(args)?;
    let access = ProxyAccess::new(&user, &state_prefix, &names)?;
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    runtime.block_on(async {
        let mut client = crate::sealing::cluster_client(&config, &config.state_cluster).await?;
        ensure(&mut client, &access, &password).await
    })?;
    println!(
        "user '{}': read-write {}, read {}",
        access.user,
        access.state_prefix,
        access.read_only.join(", ")
    );
    Ok(())
}

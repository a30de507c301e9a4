//! `keys generate`, `keys list`, `seal`, `unseal`: the operators' side of secrets sealed at
//! rest (the format and the keychain: `etcd_broker::sealing`; the `[secrets]` table:
//! docs/config.md).
//!
//! Nothing secret is printed except what `unseal` is asked for: `keys generate` writes the key
//! into a new owner-only file and prints its path and name; errors name records, keys and
//! files only.

use std::io::{Read as _, Write as _};
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use etcd_broker::broker::names::Names;
use etcd_broker::config::{Config, Sealing};
use etcd_broker::etcd::{connect, prefix_end, resend_on_auth_change};
use etcd_broker::sealing::{self, Key, Keychain};
use etcd_client::{ConnectOptions, GetOptions};

/// The most `seal` and `unseal` read from stdin: more than etcd stores in one value (1.5 MiB by
/// default) cannot be a record's secret.
const MAX_INPUT_BYTES: u64 = 2 << 20;

/// Flags of `keys generate`.
#[derive(Debug, Clone, clap::Args)]
pub struct GenerateArgs {
    /// The key's name: 1 to 32 of a-z, 0-9, '_' and '-'; sealed values carry it.
    pub name: String,
    /// Write the key to DIR/NAME.key.
    #[arg(long, value_name = "DIR", required_unless_present = "out", conflicts_with = "out")]
    pub dir: Option<PathBuf>,
    /// Write the key to this file.
    #[arg(long, value_name = "FILE")]
    pub out: Option<PathBuf>,
}

/// Flags of `seal` and `unseal`.
#[derive(Debug, Clone, clap::Args)]
pub struct SealArgs {
    /// The broker's TOML config; its [secrets] keys seal and unseal (ETCD_BROKER__* apply).
    #[arg(long, value_name = "FILE")]
    pub config: PathBuf,
    /// The etcd key of the record the value belongs to; a value sealed for one record does not
    /// unseal for another.
    #[arg(long, value_name = "KEY", value_parser = clap::builder::NonEmptyStringValueParser::new())]
    pub record: String,
}

/// `keys generate`: a fresh key in a new file (mode 0600, never replacing one); returns what
/// to print.
pub fn generate(args: &GenerateArgs) -> Result<String> {
    let key = Key::generate(&args.name)?;
    let path = match (&args.out, &args.dir) {
        (Some(out), _) => out.clone(),
        (None, Some(dir)) => dir.join(format!("{}.key", key.name())),
        (None, None) => bail!("give --dir DIR or --out FILE"),
    };
    // A generated key is local: it has a text form.
    let Some(mut text) = key.to_text() else { bail!("key '{}' has no text form", key.name()) };
    text.push('\n');
    crate::private_file::create_private(&path, &text)?;
    Ok(format!(
        "wrote key '{name}' to {path}\nuse it in the broker's config:\n  [secrets.keys.{name}]\n  file = \"{path}\"\n",
        name = key.name(),
        path = path.display()
    ))
}

/// `keys list`: whether sealing is on, each key's name (the active one marked) and how many
/// records it seals, keys that seal records but are not configured, and the records in clear;
/// counted in the state cluster's etcd with the config's credentials. `offline`: the keys only.
pub fn list(config: &Path, offline: bool) -> Result<String> {
    let config = Config::load(config)?;
    if offline {
        return Ok(keys_text(&config, None));
    }
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?
        .block_on(list_with_counts(&config))
}

/// [`list`] for a loaded config, with the record counts.
pub async fn list_with_counts(config: &Config) -> Result<String> {
    Ok(keys_text(config, Some(&record_counts(config).await?)))
}

/// The listing: the keys, with their record counts when known.
fn keys_text(config: &Config, counts: Option<&RecordCounts>) -> String {
    let mode = match config.sealing {
        Sealing::On(_) => "on",
        Sealing::Off { .. } => "off",
    };
    let mut out = format!("sealing: {mode}\n");
    let records = |n: u64| if n == 1 { "1 record".to_owned() } else { format!("{n} records") };
    let keychain = config.sealing.keychain();
    match keychain {
        None => out.push_str("keys: none ([secrets.keys] is empty)\n"),
        Some(keychain) => {
            out.push_str("keys:\n");
            for key in keychain.keys() {
                let active = key.name() == keychain.active().name();
                let about = match (active, key.backend()) {
                    (true, None) => " (active)".to_owned(),
                    (false, None) => String::new(),
                    (true, Some(backend)) => format!(" (active, {})", backend.describe()),
                    (false, Some(backend)) => format!(" ({})", backend.describe()),
                };
                out.push_str(&format!("  {}{about}", key.name()));
                // A remote key's records are counted per version (`<name>.v<N>`).
                let versions: Vec<&(String, u64)> = match (counts, key.backend()) {
                    (Some(counts), Some(_)) => counts
                        .sealed
                        .iter()
                        .filter(|(name, _)| {
                            etcd_broker::sealing::keychain::split_version(name)
                                .is_some_and(|(base, _)| base == key.name())
                        })
                        .collect(),
                    _ => Vec::new(),
                };
                if let Some(counts) = counts {
                    let sealed = match key.backend() {
                        Some(_) => versions.iter().map(|(_, n)| n).sum(),
                        None => {
                            counts.sealed.iter().find(|(name, _)| name == key.name()).map_or(0, |(_, n)| *n)
                        }
                    };
                    out.push_str(&format!(": {}", records(sealed)));
                }
                out.push('\n');
                for (name, sealed) in versions {
                    out.push_str(&format!("    {name}: {}\n", records(*sealed)));
                }
            }
        }
    }
    let Some(counts) = counts else { return out };
    for (name, sealed) in &counts.sealed {
        if !keychain.is_some_and(|k| k.get(name).is_some()) {
            out.push_str(&format!("  {name} (not in the config): {}\n", records(*sealed)));
        }
    }
    out.push_str(&format!("in clear: {}\n", records(counts.clear_text)));
    if counts.in_credential_store > 0 {
        out.push_str(&format!(
            "in OpenBao KV (no secret in etcd): {}\n",
            records(counts.in_credential_store)
        ));
    }
    out
}

/// Sealed records per key name in use and records in clear.
struct RecordCounts {
    sealed: Vec<(String, u64)>,
    clear_text: u64,
    /// Records whose secrets live in OpenBao KV: neither sealed nor in clear.
    in_credential_store: u64,
}

/// A client of the config's etcd cluster `name`, logged in with the config's (root)
/// credentials; requests time out after 10 s.
pub async fn cluster_client(config: &Config, name: &str) -> Result<etcd_client::Client> {
    let cluster =
        config.clusters.get(name).with_context(|| format!("etcd cluster '{name}' is not configured"))?;
    let endpoints: Vec<String> =
        cluster.endpoints.iter().map(|url| url.as_str().trim_end_matches('/').to_owned()).collect();
    let timeout = std::time::Duration::from_secs(10);
    let options = ConnectOptions::new()
        .with_user(&cluster.username, cluster.password.expose())
        .with_connect_timeout(timeout)
        .with_timeout(timeout);
    connect(&endpoints, options, &cluster.tls.clone().unwrap_or_default())
        .await
        .with_context(|| format!("cannot connect to etcd cluster '{name}'"))
}

/// Reads the broker's indexes (see docs/naming.md) in the state cluster: one single-key read
/// per key name in use and one count per name, plus the count of all bindings; never a record.
async fn record_counts(config: &Config) -> Result<RecordCounts> {
    let name = &config.state_cluster;
    let client = cluster_client(config, name).await?;
    let names = Names::new(&config.prefixes.data, &config.prefixes.state);
    let count = |prefix: String| {
        let client = client.clone();
        async move {
            resend_on_auth_change(|| {
                let (mut client, prefix) = (client.clone(), prefix.clone());
                async move { client.get(prefix, Some(GetOptions::new().with_prefix().with_count_only())).await }
            })
            .await
            .map(|r| u64::try_from(r.count()).unwrap_or(0))
            .with_context(|| format!("cannot count the records in etcd cluster '{name}'"))
        }
    };
    let prefix = names.sealed_index_prefix();
    let mut sealed = Vec::new();
    let mut from = prefix.clone().into_bytes();
    loop {
        let options =
            GetOptions::new().with_range(prefix_end(prefix.as_bytes())).with_keys_only().with_limit(1);
        let found = resend_on_auth_change(|| {
            let (mut client, from, options) = (client.clone(), from.clone(), options.clone());
            async move { client.get(from, Some(options)).await }
        })
        .await
        .with_context(|| format!("cannot read the index of sealed records in etcd cluster '{name}'"))?;
        let Some(kv) = found.kvs().first() else { break };
        let key = String::from_utf8_lossy(kv.key()).into_owned();
        let key_name = key[prefix.len()..].split('/').next().unwrap_or_default().to_owned();
        // Past every entry of this key: '0' follows '/'.
        from = format!("{prefix}{key_name}0").into_bytes();
        let records = count(names.sealed_key_prefix(&key_name)).await?;
        sealed.push((key_name, records));
    }
    let bindings = count(names.all_bindings_index_prefix()).await?;
    let in_credential_store = count(names.stored_index_prefix()).await?;
    let clear_text =
        bindings.saturating_sub(sealed.iter().map(|(_, n)| n).sum::<u64>() + in_credential_store);
    Ok(RecordCounts { sealed, clear_text, in_credential_store })
}

/// `seal`: stdin (exactly, a final newline included) sealed for `--record` with the active
/// key; the sealed value and a newline on stdout.
pub fn seal(args: &SealArgs) -> Result<()> {
    let keychain = keychain(&args.config)?;
    let plaintext = read_stdin()?;
    let sealed = sealing::seal(&keychain, &args.record, &plaintext)?;
    write_stdout(format!("{sealed}\n").as_bytes())
}

/// `unseal`: the sealed value on stdin (surrounding white space ignored) unsealed for
/// `--record`; the secret, exactly, on stdout.
pub fn unseal(args: &SealArgs) -> Result<()> {
    let keychain = keychain(&args.config)?;
    let input = read_stdin()?;
    let text = std::str::from_utf8(&input).map_err(|_| {
        anyhow::anyhow!("record '{}': stdin is not a sealed value (it is not text)", args.record)
    })?;
    let plaintext = sealing::unseal(&keychain, &args.record, text.trim())?;
    write_stdout(&plaintext)
}

/// The config's keychain, or why there is none.
fn keychain(config: &Path) -> Result<Keychain> {
    let loaded = Config::load(config)?;
    match loaded.sealing.keychain() {
        Some(keychain) => Ok(keychain.clone()),
        None => bail!("{} configures no keys ([secrets.keys], see docs/config.md)", config.display()),
    }
}

fn read_stdin() -> Result<Vec<u8>> {
    let mut input = Vec::new();
    std::io::stdin().take(MAX_INPUT_BYTES + 1).read_to_end(&mut input).context("cannot read stdin")?;
    if input.len() as u64 > MAX_INPUT_BYTES {
        bail!("stdin holds more than {} MiB, more than an etcd value can", MAX_INPUT_BYTES >> 20);
    }
    Ok(input)
}

fn write_stdout(bytes: &[u8]) -> Result<()> {
    let mut stdout = std::io::stdout().lock();
    stdout.write_all(bytes).and_then(|()| stdout.flush()).context("cannot write stdout")
}

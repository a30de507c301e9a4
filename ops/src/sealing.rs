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
use etcd_broker::config::{Config, Sealing};
use etcd_broker::sealing::{self, Key, Keychain};

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
    let mut text = key.to_text();
    text.push('\n');
    crate::private_file::create_private(&path, &text)?;
    Ok(format!(
        "wrote key '{name}' to {path}\nuse it in the broker's config:\n  [secrets.keys.{name}]\n  file = \"{path}\"\n",
        name = key.name(),
        path = path.display()
    ))
}

/// `keys list`: whether sealing is on, and each key's name, the active one marked.
pub fn list(config: &Path) -> Result<String> {
    let config = Config::load(config)?;
    let mode = match config.sealing {
        Sealing::On(_) => "on",
        Sealing::Off { .. } => "off",
    };
    let mut out = format!("sealing: {mode}\n");
    match config.sealing.keychain() {
        None => out.push_str("keys: none ([secrets.keys] is empty)\n"),
        Some(keychain) => {
            out.push_str("keys:\n");
            for key in keychain.keys() {
                let active = if key.name() == keychain.active().name() { " (active)" } else { "" };
                out.push_str(&format!("  {}{active}\n", key.name()));
            }
        }
    }
    Ok(out)
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

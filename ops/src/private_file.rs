//! Files that hold secrets: written readable by their owner only.

use std::io::Write as _;
use std::path::Path;

use anyhow::{Context, Result};

/// Writes a file readable by its owner only (it holds passwords), atomically, so a reader
/// never sees half of it: `render` output and the dev stack's env file.
pub fn write_private(path: &Path, contents: &str) -> Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    let tmp = path.with_extension("tmp");
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)
        .with_context(|| format!("cannot write {}", tmp.display()))?;
    file.write_all(contents.as_bytes())?;
    std::fs::rename(&tmp, path).with_context(|| format!("cannot write {}", path.display()))?;
    Ok(())
}

//! Files that hold secrets: written readable by their owner only.

use std::io::Write as _;
use std::path::Path;

use anyhow::{Context, Result};

/// Writes a file readable by its owner only (it holds passwords), atomically, so a reader
/// never sees half of it: `render` output and the dev stack's env file.
pub fn write_private(path: &Path, contents: &str) -> Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    let tmp = path.with_extension("tmp");
    // The mode applies only to a file this call creates: a `.tmp` left by an interrupted write
    // (or made by someone else) would keep its own, say 0644, and the secret with it.
    match std::fs::remove_file(&tmp) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            return Err(e).with_context(|| format!("cannot remove the stale {}", tmp.display()))
        }
        _ => {}
    }
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&tmp)
        .with_context(|| format!("cannot write {}", tmp.display()))?;
    file.write_all(contents.as_bytes())?;
    std::fs::rename(&tmp, path).with_context(|| format!("cannot write {}", path.display()))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::*;

    fn mode(path: &Path) -> u32 {
        std::fs::metadata(path).unwrap().permissions().mode() & 0o777
    }

    #[test]
    fn a_stale_readable_tmp_file_does_not_lend_its_mode() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("env");
        let tmp = dir.path().join("env.tmp");
        std::fs::write(&tmp, "stale and longer than the secret").unwrap();
        std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o644)).unwrap();
        write_private(&path, "PASSWORD=s3cret\n").unwrap();
        assert_eq!(mode(&path), 0o600);
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "PASSWORD=s3cret\n");
        assert!(!tmp.exists());
        // And a second write replaces the first, still private.
        write_private(&path, "PASSWORD=other\n").unwrap();
        assert_eq!(
            (mode(&path), std::fs::read_to_string(&path).unwrap().as_str()),
            (0o600, "PASSWORD=other\n")
        );
    }
}

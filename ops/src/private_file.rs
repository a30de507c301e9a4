//! Files that hold secrets: written readable by their owner only.

use std::io::Write as _;
use std::os::unix::fs::OpenOptionsExt as _;
use std::path::Path;

use anyhow::{Context, Result};

/// Writes a file readable by its owner only (it holds passwords), atomically, so a reader
/// never sees half of it: `render` output and the dev stack's env file.
pub fn write_private(path: &Path, contents: &str) -> Result<()> {
    let tmp = path.with_extension("tmp");
    // The mode applies only to a file this call creates: a `.tmp` left by an interrupted write
    // (or made by someone else) would keep its own, say 0644, and the secret with it.
    match std::fs::remove_file(&tmp) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            return Err(e).with_context(|| format!("cannot remove the stale {}", tmp.display()))
        }
        _ => {}
    }
    new_private_file(&tmp, contents)?;
    std::fs::rename(&tmp, path).with_context(|| format!("cannot write {}", path.display()))?;
    Ok(())
}

/// Creates `path`, which must not exist, with mode 0600 (the mode applies only to a file the
/// call creates), and writes `contents` to disk.
fn new_private_file(path: &Path, contents: &str) -> Result<()> {
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("cannot create {}", path.display()))?;
    file.write_all(contents.as_bytes())
        .and_then(|()| file.sync_all())
        .with_context(|| format!("cannot write {}", path.display()))
}

/// Creates `path` readable by its owner only, never replacing a file that exists (a key file
/// replaced is a key lost), and atomically: the contents go into a new temporary file next to
/// it, which is then hard-linked to `path` (link fails if `path` exists), so `path` is never
/// seen half written, even after a crash.
pub fn create_private(path: &Path, contents: &str) -> Result<()> {
    let name = path.file_name().with_context(|| format!("{} names no file", path.display()))?;
    let tmp = path.with_file_name(format!(".{}.{}.tmp", name.to_string_lossy(), std::process::id()));
    let written = (|| {
        new_private_file(&tmp, contents)?;
        std::fs::hard_link(&tmp, path).map_err(|e| match e.kind() {
            std::io::ErrorKind::AlreadyExists => {
                anyhow::anyhow!("{} exists; refusing to replace it", path.display())
            }
            _ => anyhow::Error::new(e).context(format!("cannot create {}", path.display())),
        })
    })();
    let _ = std::fs::remove_file(&tmp);
    written
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt as _;

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

    #[test]
    fn create_private_makes_an_owner_only_file_and_never_replaces_one() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("k1.key");
        create_private(&path, "first\n").unwrap();
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "first\n");
        assert_eq!(mode(&path), 0o600);
        let again = create_private(&path, "second\n").unwrap_err().to_string();
        assert_eq!(again, format!("{} exists; refusing to replace it", path.display()));
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "first\n");
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1, "no temporary file is left");
        let nowhere = create_private(&dir.path().join("no/such/dir/k.key"), "x").unwrap_err();
        assert!(format!("{nowhere:#}").starts_with("cannot create "), "{nowhere:#}");
    }
}

//! The keychain: named 256-bit key-encryption keys, one of them active.
//!
//! A key's text form (in its file, or inline in the config) is its 32 bytes as standard base64
//! with padding: 44 characters, surrounding white space (a final newline) ignored. Base64,
//! not hex: the same encoding as the sealed values, short, held by TOML and CredHub `value`
//! variables without escaping, and `head -c 32 /dev/urandom | base64` makes one by hand.
//! Hex is refused (64 hex digits are valid base64 of 48 bytes: the error says so).
//!
//! A key can also be derived from a passphrase (HKDF-SHA256, see [`Key::from_passphrase`]):
//! CredHub, which BOSH deployments get their secrets from, generates passwords but not 32
//! random bytes as base64, and a key it generates never passes through an operator's hands.
//!
//! Invariants: a [`Key`] always holds exactly 32 bytes and a valid name; a [`Keychain`] always
//! has an active key that it holds; key bytes are overwritten when dropped and never appear in
//! `Debug`, `Display` or an error (errors name the key or its file, and say what is wrong with
//! the text without quoting it).

use std::collections::BTreeMap;
use std::fmt;
use std::io::Read as _;
use std::path::{Path, PathBuf};

use std::sync::Arc;

use base64::Engine as _;
use zeroize::Zeroizing;

use super::backend::KeyBackend;

/// Bytes of a key (AES-256).
pub const KEY_BYTES: usize = 32;

/// Characters of a key's text form (base64 of [`KEY_BYTES`] with padding).
pub const KEY_TEXT_CHARS: usize = 44;

/// Longest key name: names go into every sealed value and into config keys.
pub const MAX_NAME_CHARS: usize = 32;

/// Fewest characters of a passphrase: 32 characters of CredHub's default alphabet (62 symbols)
/// carry 190 bits, well beyond guessing; the BOSH manifests ask CredHub for 64.
pub const MIN_PASSPHRASE_CHARS: usize = 32;

/// Fewest distinct characters of a passphrase: catches a placeholder (`aaaa...`, `changeme`
/// repeated) that is long enough but has next to no entropy. A generated passphrase of 32
/// characters has about 24 distinct ones.
const MIN_PASSPHRASE_DISTINCT: usize = 12;

/// Longest passphrase (CredHub's own limit is 200).
const MAX_PASSPHRASE_CHARS: usize = 1024;

/// HKDF salt and info of passphrase keys: fixed, so that the same passphrase gives the same key
/// on every broker; versioned, so that a later derivation cannot collide with this one.
const PASSPHRASE_SALT: &[u8] = b"etcd-broker sealing passphrase";
const PASSPHRASE_INFO: &[u8] = b"etcd-broker key-encryption key v1";

/// A key file larger than this is not a key; reading stops there.
const MAX_FILE_BYTES: u64 = 1024;

/// Why a key or keychain was refused. Names the key or file, never its contents.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("key name '{0}' must be 1 to 32 characters of a-z, 0-9, '_' and '-'")]
    BadName(String),
    #[error("cannot read key file {path}: {reason}")]
    Unreadable { path: PathBuf, reason: std::io::Error },
    #[error("key file {path} is not a regular file")]
    NotAFile { path: PathBuf },
    #[error(
        "key file {path} is open to group or others (mode {mode:03o}); \
         it must be readable by its owner only (chmod 600)"
    )]
    Exposed { path: PathBuf, mode: u32 },
    /// `origin` is "key file <path>" or "key '<name>'"; `problem` never quotes the text.
    #[error("{origin} does not hold a key: {problem}")]
    NotAKey { origin: String, problem: String },
    #[error("a keychain needs at least one key")]
    NoKeys,
    #[error("the active key '{0}' is not one of the keychain's keys")]
    ActiveMissing(String),
    #[error("key name '{0}' is used twice")]
    Duplicate(String),
    #[error("OpenSSL's random generator failed")]
    Random,
    #[error("OpenSSL's HKDF failed")]
    Derive,
}

/// Whether `name` may name a key: 1 to 32 of `a-z`, `0-9`, `_`, `-`. Names appear in sealed
/// values (`:`-separated), in config keys and in file names, so nothing else is allowed.
pub fn is_key_name(name: &str) -> bool {
    (1..=MAX_NAME_CHARS).contains(&name.len())
        && name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-')
}

/// Whether `name` may name what sealed a value: a key name, or a remote key's name with the
/// version that wrapped the data key (`<key name>.v<version>`, see `backend`). Sealed values
/// and the index of sealed records carry these.
pub fn is_sealing_name(name: &str) -> bool {
    match split_version(name) {
        Some((base, _)) => is_key_name(base),
        None => is_key_name(name),
    }
}

/// `<key name>.v<version>` split into the name and the version (1 and up, at most 9 digits).
pub fn split_version(name: &str) -> Option<(&str, u32)> {
    let (base, version) = name.rsplit_once(".v")?;
    if version.is_empty() || version.len() > 9 || !version.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    version.parse().ok().filter(|v| *v > 0).map(|v| (base, v))
}

/// One named key-encryption key: 32 bytes the broker holds, or a key held by a backend
/// (OpenBao transit) that wraps data keys for it. `Debug` prints only the name; local bytes
/// are overwritten on drop.
#[derive(Clone)]
pub struct Key {
    name: String,
    material: Material,
}

/// Where a key's secret is.
#[derive(Clone)]
enum Material {
    Local(Zeroizing<[u8; KEY_BYTES]>),
    Remote(Arc<dyn KeyBackend>),
}

impl fmt::Debug for Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut debug = f.debug_struct("Key");
        debug.field("name", &self.name);
        if let Material::Remote(backend) = &self.material {
            debug.field("backend", &backend.describe());
        }
        debug.finish_non_exhaustive()
    }
}

impl Key {
    /// A fresh key from OpenSSL's CSPRNG, for `etcd-broker-ops keys generate`.
    pub fn generate(name: &str) -> Result<Key, KeyError> {
        check_name(name)?;
        let mut bytes = Zeroizing::new([0u8; KEY_BYTES]);
        openssl::rand::rand_bytes(&mut bytes[..]).map_err(|_| KeyError::Random)?;
        Ok(Key { name: name.to_owned(), material: Material::Local(bytes) })
    }

    /// A key from its text form (see the module doc), e.g. an inline config value. Errors name
    /// the key, not the text.
    pub fn from_text(name: &str, text: &str) -> Result<Key, KeyError> {
        check_name(name)?;
        Self::decode(name, text, || format!("key '{name}'"))
    }

    /// A key derived from a passphrase with HKDF-SHA256 (RFC 5869; fixed salt and info), for
    /// secrets CredHub generates as `password` variables. The passphrase is used exactly as
    /// given; it must have at least [`MIN_PASSPHRASE_CHARS`] characters, of which at least
    /// 12 differ, so that a placeholder is refused. Errors name the key, not the text.
    pub fn from_passphrase(name: &str, passphrase: &str) -> Result<Key, KeyError> {
        check_name(name)?;
        let not_a_key = |problem: String| KeyError::NotAKey { origin: format!("key '{name}'"), problem };
        let chars = passphrase.chars().count();
        if !(MIN_PASSPHRASE_CHARS..=MAX_PASSPHRASE_CHARS).contains(&chars) {
            return Err(not_a_key(format!(
                "a passphrase needs {MIN_PASSPHRASE_CHARS} to {MAX_PASSPHRASE_CHARS} characters; it has {chars}"
            )));
        }
        let distinct = passphrase.chars().collect::<std::collections::BTreeSet<_>>().len();
        if distinct < MIN_PASSPHRASE_DISTINCT {
            return Err(not_a_key(format!(
                "a passphrase needs at least {MIN_PASSPHRASE_DISTINCT} different characters (a generated \
                 one, e.g. a CredHub password); it has {distinct}"
            )));
        }
        let bytes = hkdf_sha256(passphrase.as_bytes(), PASSPHRASE_SALT, PASSPHRASE_INFO)?;
        Ok(Key { name: name.to_owned(), material: Material::Local(bytes) })
    }

    /// A key from its file, refused when the file is open to group or others (on unix) or does
    /// not hold exactly one key. Errors name the file, never its contents.
    pub fn from_file(name: &str, path: &Path) -> Result<Key, KeyError> {
        check_name(name)?;
        let unreadable = |reason| KeyError::Unreadable { path: path.to_owned(), reason };
        // Mode and contents from the same open file: no window to swap the file in between.
        let file = std::fs::File::open(path).map_err(unreadable)?;
        let metadata = file.metadata().map_err(unreadable)?;
        if !metadata.is_file() {
            return Err(KeyError::NotAFile { path: path.to_owned() });
        }
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt as _;
            let mode = metadata.permissions().mode() & 0o777;
            if mode & 0o077 != 0 {
                return Err(KeyError::Exposed { path: path.to_owned(), mode });
            }
        }
        let mut raw = Zeroizing::new(Vec::with_capacity(MAX_FILE_BYTES as usize + 1));
        file.take(MAX_FILE_BYTES + 1).read_to_end(&mut raw).map_err(unreadable)?;
        let origin = || format!("key file {}", path.display());
        if raw.len() as u64 > MAX_FILE_BYTES {
            return Err(KeyError::NotAKey { origin: origin(), problem: "the file is too large".into() });
        }
        let text = std::str::from_utf8(&raw)
            .map_err(|_| KeyError::NotAKey { origin: origin(), problem: "the file is not text".into() })?;
        Self::decode(name, text, origin)
    }

    fn decode(name: &str, text: &str, origin: impl Fn() -> String) -> Result<Key, KeyError> {
        let not_a_key = |problem: String| KeyError::NotAKey { origin: origin(), problem };
        let expected = format!("expected {KEY_BYTES} bytes as base64 ({KEY_TEXT_CHARS} characters)");
        // The decoder's own message quotes the offending byte: a byte of the key.
        let decoded = Zeroizing::new(
            base64::engine::general_purpose::STANDARD
                .decode(text.trim())
                .map_err(|_| not_a_key(format!("{expected}; it is not base64")))?,
        );
        let bytes: [u8; KEY_BYTES] = decoded[..]
            .try_into()
            .map_err(|_| not_a_key(format!("{expected}; it decodes to {} bytes", decoded.len())))?;
        Ok(Key { name: name.to_owned(), material: Material::Local(Zeroizing::new(bytes)) })
    }

    /// A key held by `backend` (OpenBao transit): the broker never sees its bytes; the
    /// backend wraps and unwraps data keys.
    pub fn remote(name: &str, backend: Arc<dyn KeyBackend>) -> Result<Key, KeyError> {
        check_name(name)?;
        Ok(Key { name: name.to_owned(), material: Material::Remote(backend) })
    }

    /// The key's name, as sealed values carry it (a remote key's with its version).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The text form (see the module doc) for the one place that writes a key file; `None`
    /// for a remote key, whose bytes the broker never has.
    pub fn to_text(&self) -> Option<Zeroizing<String>> {
        self.bytes().map(|b| Zeroizing::new(base64::engine::general_purpose::STANDARD.encode(&b[..])))
    }

    /// The key bytes of a local key, for the envelope only.
    pub(super) fn bytes(&self) -> Option<&[u8; KEY_BYTES]> {
        match &self.material {
            Material::Local(bytes) => Some(bytes),
            Material::Remote(_) => None,
        }
    }

    /// The backend of a remote key.
    pub fn backend(&self) -> Option<&Arc<dyn KeyBackend>> {
        match &self.material {
            Material::Local(_) => None,
            Material::Remote(backend) => Some(backend),
        }
    }
}

/// 32 bytes of HKDF-SHA256 (extract and expand) by OpenSSL.
fn hkdf_sha256(ikm: &[u8], salt: &[u8], info: &[u8]) -> Result<Zeroizing<[u8; KEY_BYTES]>, KeyError> {
    use openssl::md::Md;
    use openssl::pkey::Id;
    use openssl::pkey_ctx::PkeyCtx;
    let mut out = Zeroizing::new([0u8; KEY_BYTES]);
    let derived = (|| {
        let mut ctx = PkeyCtx::new_id(Id::HKDF)?;
        ctx.derive_init()?;
        ctx.set_hkdf_md(Md::sha256())?;
        ctx.set_hkdf_key(ikm)?;
        ctx.set_hkdf_salt(salt)?;
        ctx.add_hkdf_info(info)?;
        ctx.derive(Some(&mut out[..]))
    })();
    match derived {
        Ok(KEY_BYTES) => Ok(out),
        _ => Err(KeyError::Derive),
    }
}

fn check_name(name: &str) -> Result<(), KeyError> {
    if is_key_name(name) {
        Ok(())
    } else {
        Err(KeyError::BadName(name.to_owned()))
    }
}

/// Named keys, exactly one of them active: the active one seals, every one unseals, so a key
/// can be added (and made active) before the records it sealed are re-sealed and it is dropped.
#[derive(Clone)]
pub struct Keychain {
    /// Held on its own (a copy of the entry in `keys`) so that `active()` needs no lookup.
    active: Key,
    keys: BTreeMap<String, Key>,
}

impl fmt::Debug for Keychain {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Keychain")
            .field("active", &self.active.name)
            .field("keys", &self.keys.keys().collect::<Vec<_>>())
            .finish()
    }
}

impl Keychain {
    /// A keychain of `keys` whose key named `active` seals. Refuses no keys, a name used twice
    /// and an active name that names none of them.
    pub fn new(active: &str, keys: impl IntoIterator<Item = Key>) -> Result<Keychain, KeyError> {
        let mut by_name = BTreeMap::new();
        for key in keys {
            if by_name.contains_key(&key.name) {
                return Err(KeyError::Duplicate(key.name));
            }
            by_name.insert(key.name.clone(), key);
        }
        if by_name.is_empty() {
            return Err(KeyError::NoKeys);
        }
        let active =
            by_name.get(active).cloned().ok_or_else(|| KeyError::ActiveMissing(active.to_owned()))?;
        Ok(Keychain { active, keys: by_name })
    }

    /// The key that seals.
    pub fn active(&self) -> &Key {
        &self.active
    }

    /// The key that sealed values named `name` ([`is_sealing_name`]): a key of that name, or
    /// for `<name>.v<version>` the remote key `<name>`.
    pub fn get(&self, name: &str) -> Option<&Key> {
        if let Some(key) = self.keys.get(name) {
            return Some(key);
        }
        let (base, _) = split_version(name)?;
        self.keys.get(base).filter(|key| key.backend().is_some())
    }

    /// Every key, in name order.
    pub fn keys(&self) -> impl Iterator<Item = &Key> {
        self.keys.values()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A key's text form whose bytes are all `byte`.
    fn text_of(byte: u8) -> String {
        base64::engine::general_purpose::STANDARD.encode([byte; KEY_BYTES])
    }

    fn write_key(dir: &Path, name: &str, contents: &str, mode: u32) -> PathBuf {
        use std::os::unix::fs::PermissionsExt as _;
        let path = dir.join(name);
        std::fs::write(&path, contents).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
        path
    }

    #[test]
    fn names_follow_the_rule() {
        for good in ["a", "k2025-01", "old_key", &"x".repeat(32)] {
            assert!(is_key_name(good), "{good}");
        }
        for bad in ["", "Key", "a:b", "a b", "a/b", "ключ", &"x".repeat(33)] {
            assert!(!is_key_name(bad), "{bad}");
            assert!(matches!(Key::generate(bad), Err(KeyError::BadName(_))), "{bad}");
        }
    }

    #[test]
    fn text_round_trips_and_generated_keys_differ() {
        let key = Key::generate("k1").unwrap();
        let text = key.to_text().unwrap();
        assert_eq!(text.len(), KEY_TEXT_CHARS);
        let again = Key::from_text("k1", &format!("  {}\n", *text)).unwrap();
        assert_eq!(again.bytes(), key.bytes());
        assert_ne!(Key::generate("k1").unwrap().bytes(), key.bytes());
    }

    #[test]
    fn text_that_is_not_a_key_is_refused_without_quoting_it() {
        let hex = "ab".repeat(32);
        let short = base64::engine::general_purpose::STANDARD.encode([7u8; 16]);
        for (text, problem) in [
            ("not base64 at all!", "it is not base64"),
            (hex.as_str(), "it decodes to 48 bytes"),
            (short.as_str(), "it decodes to 16 bytes"),
            ("", "it decodes to 0 bytes"),
        ] {
            let error = Key::from_text("k1", text).unwrap_err().to_string();
            assert!(error.starts_with("key 'k1' does not hold a key: expected 32 bytes"), "{error}");
            assert!(error.ends_with(problem), "{error}");
            if !text.is_empty() {
                assert!(!error.contains(text), "{error}");
            }
        }
    }

    #[test]
    fn hkdf_matches_rfc_5869() {
        // RFC 5869, test case 1, the first 32 of its 42 output bytes.
        let out = hkdf_sha256(&[0x0b; 22], &hex("000102030405060708090a0b0c"), &hex("f0f1f2f3f4f5f6f7f8f9"))
            .unwrap();
        assert_eq!(out[..], hex("3cb25f25faacd57a90434f64d0362f2a2d2d0a90cf1a5a4c5db02d56ecc4c5bf")[..]);
    }

    fn hex(text: &str) -> Vec<u8> {
        (0..text.len()).step_by(2).map(|i| u8::from_str_radix(&text[i..i + 2], 16).unwrap()).collect()
    }

    #[test]
    fn passphrases_derive_the_same_key_everywhere_and_weak_ones_are_refused() {
        let passphrase = "Xq3vJ9mTzL2pR8wK5nB7cY4hG6dF1sA0eUoIiPlMkNjHbVgC";
        let key = Key::from_passphrase("k1", passphrase).unwrap();
        assert_eq!(key.bytes(), Key::from_passphrase("k2", passphrase).unwrap().bytes());
        assert_ne!(key.bytes(), Key::from_passphrase("k1", &passphrase[1..]).unwrap().bytes());
        // Not the text form: a passphrase that happens to be base64 still goes through HKDF.
        let text = Key::generate("k1").unwrap().to_text().unwrap();
        assert_ne!(
            Key::from_passphrase("k1", &text).unwrap().bytes(),
            Key::from_text("k1", &text).unwrap().bytes()
        );
        let short = &passphrase[..31];
        let placeholder = "changeme".repeat(5);
        for (weak, problem) in [
            (short, "a passphrase needs 32 to 1024 characters; it has 31"),
            ("", "a passphrase needs 32 to 1024 characters; it has 0"),
            (&placeholder, "a passphrase needs at least 12 different characters (a generated one, e.g. a CredHub password); it has 7"),
        ] {
            let error = Key::from_passphrase("k1", weak).unwrap_err().to_string();
            assert_eq!(error, format!("key 'k1' does not hold a key: {problem}"));
        }
        assert!(matches!(Key::from_passphrase("K1", passphrase), Err(KeyError::BadName(_))));
    }

    #[test]
    fn debug_shows_names_and_never_key_bytes() {
        let key = Key::from_text("k1", &text_of(0x41)).unwrap();
        let chain =
            Keychain::new("k1", [key.clone(), Key::from_text("k0", &text_of(0x42)).unwrap()]).unwrap();
        let printed = format!("{key:?} {chain:?} {chain:#?}");
        assert_eq!(format!("{key:?}"), "Key { name: \"k1\", .. }");
        assert_eq!(format!("{chain:?}"), "Keychain { active: \"k1\", keys: [\"k0\", \"k1\"] }");
        for secret in [text_of(0x41), text_of(0x42), "65, 65".into(), "AAAA".into(), "4141".into()] {
            assert!(!printed.contains(&secret), "{printed}");
        }
    }

    #[test]
    fn sealing_names_are_key_names_with_an_optional_version() {
        for good in ["k1", "bao.v1", "bao.v123456789", "a-b_c.v2"] {
            assert!(is_sealing_name(good), "{good}");
        }
        for bad in ["", "K1", "bao.v0", "bao.v", "bao.vx", ".v1", "bao.v1234567890", "bao.v1.v2x"] {
            assert!(!is_sealing_name(bad), "{bad}");
        }
        assert_eq!(split_version("bao.v3"), Some(("bao", 3)));
        assert_eq!(split_version("bao"), None);
    }

    #[test]
    fn keychains_need_keys_a_known_active_key_and_unique_names() {
        let key = |name: &str, byte| Key::from_text(name, &text_of(byte)).unwrap();
        let chain = Keychain::new("new", [key("old", 1), key("new", 2)]).unwrap();
        assert_eq!(chain.active().name(), "new");
        assert_eq!(chain.get("old").unwrap().bytes(), Some(&[1; KEY_BYTES]));
        assert!(chain.get("other").is_none());
        // A version suffix names a remote key's version only.
        assert!(chain.get("old.v1").is_none());
        assert_eq!(chain.keys().map(Key::name).collect::<Vec<_>>(), ["new", "old"]);
        assert!(matches!(Keychain::new("a", []), Err(KeyError::NoKeys)));
        let missing = Keychain::new("newest", [key("old", 1)]).unwrap_err().to_string();
        assert_eq!(missing, "the active key 'newest' is not one of the keychain's keys");
        assert!(
            matches!(Keychain::new("a", [key("a", 1), key("a", 2)]), Err(KeyError::Duplicate(n)) if n == "a")
        );
    }

    #[test]
    fn key_files_must_be_private_and_hold_one_key() {
        let dir = tempfile::tempdir().unwrap();
        let good = write_key(dir.path(), "good.key", &format!("{}\n", text_of(9)), 0o600);
        assert_eq!(Key::from_file("k1", &good).unwrap().bytes(), Some(&[9; KEY_BYTES]));
        let owner_only = write_key(dir.path(), "ro.key", &text_of(9), 0o400);
        assert!(Key::from_file("k1", &owner_only).is_ok());
        for mode in [0o644, 0o640, 0o604, 0o620, 0o602] {
            let open = write_key(dir.path(), "open.key", &text_of(9), mode);
            let error = Key::from_file("k1", &open).unwrap_err().to_string();
            assert_eq!(
                error,
                format!(
                    "key file {} is open to group or others (mode {mode:03o}); it must be readable \
                     by its owner only (chmod 600)",
                    open.display()
                )
            );
        }
        let hex = write_key(dir.path(), "hex.key", &"0f".repeat(32), 0o600);
        let error = Key::from_file("k1", &hex).unwrap_err().to_string();
        assert!(error.starts_with(&format!("key file {} does not hold a key", hex.display())), "{error}");
        assert!(!error.contains("0f0f"), "{error}");
        let big = write_key(dir.path(), "big.key", &"A".repeat(5000), 0o600);
        assert!(Key::from_file("k1", &big).unwrap_err().to_string().ends_with("the file is too large"));
        let missing = Key::from_file("k1", &dir.path().join("nope.key")).unwrap_err().to_string();
        assert!(missing.starts_with("cannot read key file ") && missing.contains("nope.key"), "{missing}");
        let directory = Key::from_file("k1", dir.path()).unwrap_err();
        assert!(matches!(directory, KeyError::NotAFile { .. }), "{directory}");
        assert!(matches!(Key::from_file("K1", &good), Err(KeyError::BadName(_))));
    }
}

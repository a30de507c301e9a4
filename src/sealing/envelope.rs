//! The envelope: one secret sealed into one self-describing, versioned text value.
//!
//! ```text
//! etcd-broker-sealed:v1:<key name>:<wrapped data key>:<nonce>:<ciphertext+tag>
//! ```
//!
//! - `etcd-broker-sealed`: tells sealed values from the clear-text ones earlier versions
//!   wrote ([`is_sealed`]).
//! - `v1`: the format version. An unknown version is refused by name, never guessed at.
//! - `<key name>`: the keychain key that wrapped the data key (`[a-z0-9_-]{1,32}`).
//! - `<wrapped data key>`: base64 of 60 bytes: a 12-byte nonce, then the 32-byte data key
//!   sealed with AES-256-GCM under the named key (with its 16-byte tag). Its authenticated data
//!   is `etcd-broker-sealed:v1:<key name>`, so the version and key name cannot be changed.
//! - `<nonce>`: base64 of the 12-byte AES-256-GCM nonce of the secret.
//! - `<ciphertext+tag>`: base64 of the secret sealed with AES-256-GCM under the data key,
//!   followed by its 16-byte tag. Its authenticated data is the record's etcd key, so a value
//!   copied into another record does not unseal.
//!
//! Base64 is the standard alphabet with padding (no `:` in it). Each seal draws a fresh data
//! key and fresh nonces from OpenSSL's CSPRNG, so sealing the same secret twice gives different
//! values, and a data key encrypts one message only. GCM wrapping (not RFC 3394) keeps every
//! key inside OpenSSL's EVP contexts, which are cleansed on free.
//!
//! Unsealing checks the shape before any key is used, and every failure is a [`SealError`]
//! naming the record (and the key when known): never a panic, never partial output.
//!
//! A remote key (`backend`: OpenBao transit) writes the same six fields with two differences:
//! `<key name>` is `<name>.v<version>`, the key version that wrapped the data key, and
//! `<wrapped data key>` is base64 of the backend's ciphertext text (`vault:v<version>:...`,
//! whose version must agree), the data key encrypted by the backend with
//! `etcd-broker-sealed:v1:<name>` as associated data. The secret itself is sealed locally
//! exactly as above. [`seal_async`] and [`unseal_async`] handle both kinds; [`seal`] and
//! [`unseal`], for callers without a runtime (the config's sealed CA key, `etcd-broker-ops
//! seal`), only local keys.

use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine as _;
use openssl::symm::{decrypt_aead, encrypt_aead, Cipher};
use zeroize::Zeroizing;

use super::backend::{wrapped_version, BackendError};
use super::keychain::{is_key_name, is_sealing_name, split_version, Key, Keychain, KEY_BYTES};

/// What every sealed value starts with (then `:`).
pub const PREFIX: &str = "etcd-broker-sealed";

/// The format version this code writes and reads.
pub const VERSION: &str = "v1";

const NONCE_BYTES: usize = 12;
const TAG_BYTES: usize = 16;
const WRAPPED_BYTES: usize = NONCE_BYTES + KEY_BYTES + TAG_BYTES;

/// Why a value does not seal or unseal. Messages name the record and the key, never a secret.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SealError {
    #[error("record '{record}' is sealed with key '{key}', which the keychain does not hold")]
    UnknownKey { record: String, key: String },
    #[error("record '{record}' is sealed in format {version}, which this version cannot read")]
    UnknownVersion { record: String, version: String },
    #[error("record '{record}' holds a malformed sealed value: {reason}")]
    Malformed { record: String, reason: &'static str },
    #[error(
        "record '{record}' does not unseal with key '{key}': the value was changed, the key is not \
         the one it was sealed with, or it was sealed for another record"
    )]
    Tampered { record: String, key: String },
    #[error("OpenSSL could not seal record '{record}'")]
    Failed { record: String },
    /// A remote key where only local keys can be used (no runtime to ask the backend).
    #[error("record '{record}': key '{key}' is held by {backend}; this command can use keychain keys only")]
    Remote { record: String, key: String, backend: String },
    /// The key's backend did not answer: the broker answers 503, a retry may succeed.
    #[error("record '{record}': key '{key}' ({backend}) is unavailable: {reason}")]
    Unavailable { record: String, key: String, backend: String, reason: String },
    /// The key's backend refused for another reason than a changed value.
    #[error("record '{record}': key '{key}' ({backend}) failed: {reason}")]
    Backend { record: String, key: String, backend: String, reason: String },
}

/// Whether `text` is a sealed value (of any version) rather than clear text, so that records
/// written before sealing keep working.
pub fn is_sealed(text: &str) -> bool {
    text.strip_prefix(PREFIX).is_some_and(|rest| rest.starts_with(':'))
}

/// The name of the key that sealed `text`, when it is a value of the version this code reads
/// with a well-formed key name: what the broker's per-key index of sealed records is keyed by.
/// Nothing is checked cryptographically: [`unseal`] does that.
pub fn sealed_with(text: &str) -> Option<&str> {
    let rest = text.strip_prefix(PREFIX)?.strip_prefix(':')?.strip_prefix(VERSION)?.strip_prefix(':')?;
    let name = rest.split(':').next()?;
    is_sealing_name(name).then_some(name)
}

/// Seals `plaintext` for the record whose etcd key is `record`, with the keychain's active key,
/// which must be local (see [`seal_async`]). Fails only if OpenSSL does (its random generator,
/// for instance).
pub fn seal(keychain: &Keychain, record: &str, plaintext: &[u8]) -> Result<String, SealError> {
    let failed = |_| SealError::Failed { record: record.to_owned() };
    let key = keychain.active();
    let Some(bytes) = key.bytes() else { return Err(remote(record, key)) };
    let mut data_key = Zeroizing::new([0u8; KEY_BYTES]);
    openssl::rand::rand_bytes(&mut data_key[..]).map_err(failed)?;
    let header = format!("{PREFIX}:{VERSION}:{}", key.name());
    let (wrap_nonce, wrapped) = encrypt(bytes, header.as_bytes(), &data_key[..]).map_err(failed)?;
    let (nonce, sealed) = encrypt(&data_key, record.as_bytes(), plaintext).map_err(failed)?;
    let wrapped = [&wrap_nonce[..], &wrapped[..]].concat();
    Ok(format!("{header}:{}:{}:{}", BASE64.encode(wrapped), BASE64.encode(nonce), BASE64.encode(sealed)))
}

/// Seals like [`seal`] with any active key: a remote one wraps the data key in its backend
/// (one request), which names the version it used.
pub async fn seal_async(keychain: &Keychain, record: &str, plaintext: &[u8]) -> Result<String, SealError> {
    let key = keychain.active();
    let Some(backend) = key.backend() else { return seal(keychain, record, plaintext) };
    let failed = |_| SealError::Failed { record: record.to_owned() };
    let mut data_key = Zeroizing::new([0u8; KEY_BYTES]);
    openssl::rand::rand_bytes(&mut data_key[..]).map_err(failed)?;
    let header = format!("{PREFIX}:{VERSION}:{}", key.name());
    let wrapped = backend
        .wrap(&data_key[..], header.as_bytes())
        .await
        .map_err(|e| backend_error(record, key.name(), key, e))?;
    if wrapped_version(&wrapped.text) != Some(wrapped.version) {
        return Err(SealError::Backend {
            record: record.to_owned(),
            key: key.name().to_owned(),
            backend: backend.describe(),
            reason: "its ciphertext does not name the key version it reported".into(),
        });
    }
    let (nonce, sealed) = encrypt(&data_key, record.as_bytes(), plaintext).map_err(failed)?;
    Ok(format!(
        "{header}.v{}:{}:{}:{}",
        wrapped.version,
        BASE64.encode(wrapped.text.as_bytes()),
        BASE64.encode(nonce),
        BASE64.encode(sealed)
    ))
}

/// Unseals like [`unseal`] values sealed by any key of `keychain`: a remote key's backend
/// unwraps the data key (one request).
pub async fn unseal_async(keychain: &Keychain, record: &str, text: &str) -> Result<Vec<u8>, SealError> {
    let fields = match parse(record, text)? {
        Parsed::Local => return unseal(keychain, record, text),
        Parsed::Remote(fields) => fields,
    };
    let Fields { name, base, version, wrapped, nonce, sealed } = fields;
    let malformed = |reason| SealError::Malformed { record: record.to_owned(), reason };
    let key = keychain
        .get(name)
        .filter(|key| key.backend().is_some())
        .ok_or_else(|| SealError::UnknownKey { record: record.to_owned(), key: name.to_owned() })?;
    let backend = key.backend().expect("filtered on a backend");
    let wrapped = String::from_utf8(wrapped).map_err(|_| malformed("its wrapped key is not text"))?;
    if wrapped_version(&wrapped) != Some(version) {
        return Err(malformed("its wrapped key does not name the key version the value names"));
    }
    let header = format!("{PREFIX}:{VERSION}:{base}");
    let data_key =
        backend.unwrap(&wrapped, header.as_bytes()).await.map_err(|e| backend_error(record, name, key, e))?;
    let tampered = || SealError::Tampered { record: record.to_owned(), key: name.to_owned() };
    if data_key.len() != KEY_BYTES {
        return Err(tampered());
    }
    let plaintext = decrypt(&data_key, &nonce, record.as_bytes(), &sealed).map_err(|_| tampered())?;
    Ok(plaintext.to_vec())
}

/// A remote key's sealed value, decoded (its shape checked, nothing cryptographic yet).
struct Fields<'a> {
    name: &'a str,
    base: &'a str,
    version: u32,
    wrapped: Vec<u8>,
    nonce: Vec<u8>,
    sealed: Vec<u8>,
}

enum Parsed<'a> {
    /// A local key's value (or one [`unseal`] refuses by itself).
    Local,
    Remote(Fields<'a>),
}

/// Tells a remote key's value from a local one's, and decodes the former.
fn parse<'a>(record: &str, text: &'a str) -> Result<Parsed<'a>, SealError> {
    let malformed = |reason| SealError::Malformed { record: record.to_owned(), reason };
    let Some(rest) = text.strip_prefix(PREFIX).and_then(|r| r.strip_prefix(':')) else {
        return Ok(Parsed::Local);
    };
    let fields: Vec<&str> = rest.split(':').collect();
    let (Some(name), Some(&VERSION)) = (fields.get(1), fields.first()) else { return Ok(Parsed::Local) };
    let Some((base, version)) = split_version(name).filter(|(base, _)| is_key_name(base)) else {
        return Ok(Parsed::Local);
    };
    let [_, _, wrapped, nonce, sealed] = fields[..] else {
        return Err(malformed("it does not have six ':'-separated fields"));
    };
    let decode = |field: &str, reason| BASE64.decode(field).map_err(|_| malformed(reason));
    let wrapped = decode(wrapped, "its wrapped key is not base64")?;
    let nonce = decode(nonce, "its nonce is not base64")?;
    let sealed = decode(sealed, "its ciphertext is not base64")?;
    if nonce.len() != NONCE_BYTES {
        return Err(malformed("its nonce has the wrong length"));
    }
    if sealed.len() < TAG_BYTES {
        return Err(malformed("its ciphertext is shorter than a tag"));
    }
    Ok(Parsed::Remote(Fields { name, base, version, wrapped, nonce, sealed }))
}

fn remote(record: &str, key: &Key) -> SealError {
    SealError::Remote {
        record: record.to_owned(),
        key: key.name().to_owned(),
        backend: key.backend().map(|b| b.describe()).unwrap_or_default(),
    }
}

/// A backend's failure for the record, naming the key (`name`: as the value names it).
fn backend_error(record: &str, name: &str, key: &Key, e: BackendError) -> SealError {
    let (record, key_name) = (record.to_owned(), name.to_owned());
    let backend = key.backend().map(|b| b.describe()).unwrap_or_default();
    match e {
        BackendError::Unavailable(reason) => {
            SealError::Unavailable { record, key: key_name, backend, reason }
        }
        BackendError::Rejected(_) => SealError::Tampered { record, key: key_name },
        BackendError::Failed(reason) => SealError::Backend { record, key: key_name, backend, reason },
    }
}

/// Unseals `text`, which must have been sealed for the record `record` by a local key of
/// `keychain` (see [`unseal_async`]).
pub fn unseal(keychain: &Keychain, record: &str, text: &str) -> Result<Vec<u8>, SealError> {
    let malformed = |reason| SealError::Malformed { record: record.to_owned(), reason };
    if let Parsed::Remote(fields) = parse(record, text)? {
        return Err(match keychain.get(fields.name) {
            Some(key) => remote(record, key),
            None => SealError::UnknownKey { record: record.to_owned(), key: fields.name.to_owned() },
        });
    }
    let fields: Vec<&str> = text
        .strip_prefix(PREFIX)
        .and_then(|rest| rest.strip_prefix(':'))
        .ok_or_else(|| malformed("it does not start with 'etcd-broker-sealed:'"))?
        .split(':')
        .collect();
    let version = fields[0];
    if version != VERSION {
        return Err(if is_version(version) {
            SealError::UnknownVersion { record: record.to_owned(), version: version.to_owned() }
        } else {
            malformed("its version field is not a version")
        });
    }
    let [_, name, wrapped, nonce, sealed] = fields[..] else {
        return Err(malformed("it does not have six ':'-separated fields"));
    };
    if !is_key_name(name) {
        return Err(malformed("its key name field is not a key name"));
    }
    let key = keychain
        .get(name)
        .ok_or_else(|| SealError::UnknownKey { record: record.to_owned(), key: name.to_owned() })?;
    let Some(bytes) = key.bytes() else { return Err(remote(record, key)) };
    let decode = |field: &str, reason| BASE64.decode(field).map_err(|_| malformed(reason));
    let wrapped = decode(wrapped, "its wrapped key is not base64")?;
    let nonce = decode(nonce, "its nonce is not base64")?;
    let sealed = decode(sealed, "its ciphertext is not base64")?;
    if wrapped.len() != WRAPPED_BYTES {
        return Err(malformed("its wrapped key has the wrong length"));
    }
    if nonce.len() != NONCE_BYTES {
        return Err(malformed("its nonce has the wrong length"));
    }
    if sealed.len() < TAG_BYTES {
        return Err(malformed("its ciphertext is shorter than a tag"));
    }
    let tampered = |_| SealError::Tampered { record: record.to_owned(), key: name.to_owned() };
    let header = format!("{PREFIX}:{VERSION}:{name}");
    let (wrap_nonce, wrapped) = wrapped.split_at(NONCE_BYTES);
    let data_key = decrypt(&bytes[..], wrap_nonce, header.as_bytes(), wrapped).map_err(tampered)?;
    let plaintext = decrypt(&data_key, &nonce, record.as_bytes(), &sealed).map_err(tampered)?;
    Ok(plaintext.to_vec())
}

/// `v` and 1 to 4 digits: what a later format version looks like, safe to quote in an error.
fn is_version(field: &str) -> bool {
    field
        .strip_prefix('v')
        .is_some_and(|n| (1..=4).contains(&n.len()) && n.bytes().all(|b| b.is_ascii_digit()))
}

/// AES-256-GCM under `key` with a fresh nonce: (nonce, ciphertext followed by the tag).
fn encrypt(
    key: &[u8; KEY_BYTES],
    aad: &[u8],
    plaintext: &[u8],
) -> Result<([u8; NONCE_BYTES], Vec<u8>), openssl::error::ErrorStack> {
    let mut nonce = [0u8; NONCE_BYTES];
    openssl::rand::rand_bytes(&mut nonce)?;
    let mut tag = [0u8; TAG_BYTES];
    let mut sealed = encrypt_aead(Cipher::aes_256_gcm(), key, Some(&nonce), aad, plaintext, &mut tag)?;
    sealed.extend_from_slice(&tag);
    Ok((nonce, sealed))
}

/// The inverse of [`encrypt`]; fails when the tag does not match (wrong key, changed bytes,
/// other authenticated data). `sealed` is at least a tag long (checked by the caller); `key` is
/// a keychain key or a data key it unwrapped (32 bytes: the wrapped key's length is checked).
fn decrypt(
    key: &[u8],
    nonce: &[u8],
    aad: &[u8],
    sealed: &[u8],
) -> Result<Zeroizing<Vec<u8>>, openssl::error::ErrorStack> {
    let (ciphertext, tag) = sealed.split_at(sealed.len() - TAG_BYTES);
    decrypt_aead(Cipher::aes_256_gcm(), key, Some(nonce), aad, ciphertext, tag).map(Zeroizing::new)
}

#[cfg(test)]
mod tests {
    use super::super::keychain::Key;
    use super::*;

    const RECORD: &str = "/etcd-broker/bindings/i1/b1";
    const SECRET: &[u8] = b"0123456789abcdef-the-password";

    fn key(name: &str, byte: u8) -> Key {
        Key::from_text(name, &BASE64.encode([byte; KEY_BYTES])).unwrap()
    }

    fn chain() -> Keychain {
        Keychain::new("k1", [key("k1", 1)]).unwrap()
    }

    /// The fields of a sealed value.
    fn fields(text: &str) -> Vec<String> {
        text.split(':').map(str::to_owned).collect()
    }

    /// `fields` joined back into a value.
    fn join(fields: &[String]) -> String {
        fields.join(":")
    }

    /// Flips one bit of the bytes of base64 field `index` and re-encodes it.
    fn flip(text: &str, index: usize, byte: usize) -> String {
        let mut parts = fields(text);
        let mut raw = BASE64.decode(&parts[index]).unwrap();
        raw[byte] ^= 0x01;
        parts[index] = BASE64.encode(raw);
        join(&parts)
    }

    fn error(chain: &Keychain, record: &str, text: &str) -> SealError {
        let error = unseal(chain, record, text).expect_err("it unsealed");
        let message = error.to_string();
        assert!(message.contains(&format!("record '{record}'")), "the record is not named: {message}");
        error
    }

    fn tampered(key: &str) -> SealError {
        SealError::Tampered { record: RECORD.into(), key: key.into() }
    }

    fn malformed(reason: &'static str) -> SealError {
        SealError::Malformed { record: RECORD.into(), reason }
    }

    #[test]
    fn a_sealed_value_unseals_and_has_the_documented_shape() {
        let sealed = seal(&chain(), RECORD, SECRET).unwrap();
        assert!(is_sealed(&sealed));
        let parts = fields(&sealed);
        assert_eq!(parts.len(), 6, "{sealed}");
        assert_eq!(parts[..3], ["etcd-broker-sealed", "v1", "k1"]);
        assert_eq!(BASE64.decode(&parts[3]).unwrap().len(), 60);
        assert_eq!(BASE64.decode(&parts[4]).unwrap().len(), 12);
        assert_eq!(BASE64.decode(&parts[5]).unwrap().len(), SECRET.len() + 16);
        assert_eq!(unseal(&chain(), RECORD, &sealed).unwrap(), SECRET);
        let empty = seal(&chain(), RECORD, b"").unwrap();
        assert_eq!(unseal(&chain(), RECORD, &empty).unwrap(), b"");
    }

    #[test]
    fn two_seals_of_the_same_value_differ_in_every_random_field() {
        let (a, b) = (seal(&chain(), RECORD, SECRET).unwrap(), seal(&chain(), RECORD, SECRET).unwrap());
        let (a, b) = (fields(&a), fields(&b));
        for field in 3..6 {
            assert_ne!(a[field], b[field], "field {field}");
        }
    }

    #[test]
    fn the_sealing_key_is_read_from_the_value_without_a_key() {
        let sealed = seal(&chain(), RECORD, SECRET).unwrap();
        assert_eq!(sealed_with(&sealed), Some("k1"));
        for other in
            ["the-clear-password", "etcd-broker-sealed:v2:k1:x:y:z", "etcd-broker-sealed:v1:K1:x", ""]
        {
            assert_eq!(sealed_with(other), None, "{other}");
        }
    }

    #[test]
    fn clear_text_is_not_taken_for_a_sealed_value() {
        assert!(!is_sealed("0123456789abcdef0123456789abcdef01234567"));
        assert!(!is_sealed("{\"password\":\"x\"}"));
        assert!(!is_sealed("etcd-broker-sealedv1"));
        assert!(is_sealed("etcd-broker-sealed:v9:anything"));
    }

    #[test]
    fn changed_bytes_in_any_field_are_tampering() {
        let sealed = seal(&chain(), RECORD, SECRET).unwrap();
        for (field, byte) in
            [(5, 0), (5, SECRET.len() - 1), (5, SECRET.len() + 15), (4, 11), (3, 0), (3, 30), (3, 59)]
        {
            assert_eq!(
                error(&chain(), RECORD, &flip(&sealed, field, byte)),
                tampered("k1"),
                "{field}/{byte}"
            );
        }
    }

    #[test]
    fn a_value_copied_into_another_record_does_not_unseal() {
        let sealed = seal(&chain(), RECORD, SECRET).unwrap();
        assert_eq!(
            error(&chain(), "/etcd-broker/bindings/i1/b2", &sealed),
            SealError::Tampered { record: "/etcd-broker/bindings/i1/b2".into(), key: "k1".into() }
        );
    }

    #[test]
    fn a_wrong_key_of_the_same_name_or_a_renamed_key_is_tampering() {
        let sealed = seal(&chain(), RECORD, SECRET).unwrap();
        let other = Keychain::new("k1", [key("k1", 2)]).unwrap();
        assert_eq!(error(&other, RECORD, &sealed), tampered("k1"));
        // The key name is authenticated: claiming another key of the chain fails too.
        let both = Keychain::new("k1", [key("k1", 1), key("k2", 1)]).unwrap();
        let mut parts = fields(&sealed);
        parts[2] = "k2".into();
        assert_eq!(error(&both, RECORD, &join(&parts)), tampered("k2"));
    }

    #[test]
    fn a_key_the_chain_does_not_hold_is_named() {
        let sealed = seal(&chain(), RECORD, SECRET).unwrap();
        let other = Keychain::new("k2", [key("k2", 1)]).unwrap();
        let error = error(&other, RECORD, &sealed);
        assert_eq!(error, SealError::UnknownKey { record: RECORD.into(), key: "k1".into() });
        assert_eq!(
            error.to_string(),
            "record '/etcd-broker/bindings/i1/b1' is sealed with key 'k1', which the keychain does not hold"
        );
    }

    #[test]
    fn unknown_versions_are_named_and_odd_ones_are_malformed() {
        let sealed = seal(&chain(), RECORD, SECRET).unwrap();
        let v2 = sealed.replacen(":v1:", ":v2:", 1);
        assert_eq!(
            error(&chain(), RECORD, &v2),
            SealError::UnknownVersion { record: RECORD.into(), version: "v2".into() }
        );
        assert_eq!(
            error(&chain(), RECORD, "etcd-broker-sealed:v10"),
            SealError::UnknownVersion { record: RECORD.into(), version: "v10".into() }
        );
        for odd in ["etcd-broker-sealed:", "etcd-broker-sealed:V1:k1", "etcd-broker-sealed:hunter2:x"] {
            let error = error(&chain(), RECORD, odd);
            assert_eq!(error, malformed("its version field is not a version"), "{odd}");
            assert!(!error.to_string().contains("hunter2"));
        }
    }

    #[test]
    fn every_truncation_is_an_error_naming_the_record() {
        let sealed = seal(&chain(), RECORD, SECRET).unwrap();
        for end in 0..sealed.len() {
            let error = error(&chain(), RECORD, &sealed[..end]);
            let message = error.to_string();
            assert!(!message.contains("0123456789abcdef"), "{message}");
        }
        // Whole base64 groups cut off the end: the tag no longer matches.
        let cut = &sealed[..sealed.len() - 4];
        assert_eq!(error(&chain(), RECORD, cut), tampered("k1"));
    }

    #[test]
    fn garbage_and_wrong_shapes_are_malformed() {
        let sealed = seal(&chain(), RECORD, SECRET).unwrap();
        let with = |field: usize, value: &str| {
            let mut parts = fields(&sealed);
            parts[field] = value.into();
            join(&parts)
        };
        let cases = [
            ("", "it does not start with 'etcd-broker-sealed:'"),
            ("the-clear-password", "it does not start with 'etcd-broker-sealed:'"),
            ("etcd-broker-sealed:v1:k1", "it does not have six ':'-separated fields"),
            (&format!("{sealed}:extra"), "it does not have six ':'-separated fields"),
            (&with(2, "K1"), "its key name field is not a key name"),
            (&with(2, ""), "its key name field is not a key name"),
            (&with(3, "!!!!"), "its wrapped key is not base64"),
            (&with(4, "not base64"), "its nonce is not base64"),
            (&with(5, "%%%%"), "its ciphertext is not base64"),
            (&with(3, &BASE64.encode([0u8; 40])), "its wrapped key has the wrong length"),
            (&with(4, &BASE64.encode([0u8; 16])), "its nonce has the wrong length"),
            (&with(5, &BASE64.encode([0u8; 15])), "its ciphertext is shorter than a tag"),
            (&with(5, ""), "its ciphertext is shorter than a tag"),
        ];
        for (text, reason) in cases {
            assert_eq!(error(&chain(), RECORD, text), malformed(reason), "{text}");
        }
        let garbage: Vec<u8> = (0..=255).collect();
        let garbage = format!("etcd-broker-sealed:v1:k1:{}", String::from_utf8_lossy(&garbage));
        assert!(unseal(&chain(), RECORD, &garbage).is_err());
    }

    #[test]
    fn values_sealed_by_an_old_key_unseal_after_a_new_active_key_is_added() {
        let old = seal(&chain(), RECORD, SECRET).unwrap();
        let rotated = Keychain::new("k2", [key("k1", 1), key("k2", 2)]).unwrap();
        assert_eq!(unseal(&rotated, RECORD, &old).unwrap(), SECRET);
        let new = seal(&rotated, RECORD, SECRET).unwrap();
        assert_eq!(fields(&new)[2], "k2");
        assert_eq!(unseal(&rotated, RECORD, &new).unwrap(), SECRET);
        assert_eq!(
            error(&chain(), RECORD, &new),
            SealError::UnknownKey { record: RECORD.into(), key: "k2".into() }
        );
    }

    #[test]
    fn errors_and_values_never_show_the_secret_or_key() {
        let sealed = seal(&chain(), RECORD, SECRET).unwrap();
        let key_text = BASE64.encode([1u8; KEY_BYTES]);
        assert!(!sealed.contains(&key_text) && !sealed.contains(&BASE64.encode(SECRET)));
        let other = Keychain::new("k1", [key("k1", 2)]).unwrap();
        let message = format!("{0} {0:?}", error(&other, RECORD, &sealed));
        for secret in
            [&String::from_utf8_lossy(SECRET).into_owned(), &key_text, &BASE64.encode([2u8; KEY_BYTES])]
        {
            assert!(!message.contains(secret.as_str()), "{message}");
        }
    }

    mod remote {
        use std::sync::atomic::Ordering;
        use std::sync::Arc;

        use super::*;
        use crate::sealing::backend::fake::FakeTransit;

        fn transit_chain(fake: &Arc<FakeTransit>) -> Keychain {
            Keychain::new("t1", [Key::remote("t1", fake.clone()).unwrap(), key("k1", 1)]).unwrap()
        }

        #[tokio::test]
        async fn a_transit_key_seals_with_its_version_and_unseals_after_a_rotation() {
            let fake = Arc::new(FakeTransit::default());
            let chain = transit_chain(&fake);
            let sealed = seal_async(&chain, RECORD, SECRET).await.unwrap();
            let parts = fields(&sealed);
            assert_eq!(parts[..3], ["etcd-broker-sealed", "v1", "t1.v1"]);
            assert!(String::from_utf8(BASE64.decode(&parts[3]).unwrap()).unwrap().starts_with("vault:v1:"));
            assert_eq!(sealed_with(&sealed), Some("t1.v1"));
            assert_eq!(unseal_async(&chain, RECORD, &sealed).await.unwrap(), SECRET);
            fake.rotate();
            let newer = seal_async(&chain, RECORD, SECRET).await.unwrap();
            assert_eq!(sealed_with(&newer), Some("t1.v2"));
            assert_eq!(unseal_async(&chain, RECORD, &sealed).await.unwrap(), SECRET);
            // Local keys of the same chain keep working through the async path too.
            let local = seal(&chain_with_k1(), RECORD, SECRET).unwrap();
            assert_eq!(unseal_async(&chain, RECORD, &local).await.unwrap(), SECRET);
        }

        fn chain_with_k1() -> Keychain {
            Keychain::new("k1", [key("k1", 1)]).unwrap()
        }

        #[tokio::test]
        async fn changed_copied_or_mislabelled_transit_values_do_not_unseal() {
            let fake = Arc::new(FakeTransit::default());
            let chain = transit_chain(&fake);
            let sealed = seal_async(&chain, RECORD, SECRET).await.unwrap();
            let other = "/etcd-broker/bindings/i1/b2";
            assert_eq!(
                unseal_async(&chain, other, &sealed).await.unwrap_err(),
                SealError::Tampered { record: other.into(), key: "t1.v1".into() }
            );
            assert_eq!(
                unseal_async(&chain, RECORD, &flip(&sealed, 5, 0)).await.unwrap_err(),
                SealError::Tampered { record: RECORD.into(), key: "t1.v1".into() }
            );
            let mut parts = fields(&sealed);
            parts[2] = "t1.v2".into();
            assert_eq!(
                unseal_async(&chain, RECORD, &join(&parts)).await.unwrap_err(),
                malformed("its wrapped key does not name the key version the value names")
            );
            // The transit key's name is authenticated by the backend: another name fails.
            let both = Keychain::new(
                "t1",
                [Key::remote("t1", fake.clone()).unwrap(), Key::remote("t2", fake.clone()).unwrap()],
            )
            .unwrap();
            parts[2] = "t2.v1".into();
            assert_eq!(
                unseal_async(&both, RECORD, &join(&parts)).await.unwrap_err(),
                SealError::Tampered { record: RECORD.into(), key: "t2.v1".into() }
            );
            assert_eq!(
                unseal_async(&chain_with_k1(), RECORD, &sealed).await.unwrap_err(),
                SealError::UnknownKey { record: RECORD.into(), key: "t1.v1".into() }
            );
        }

        #[tokio::test]
        async fn an_unavailable_backend_is_named_and_the_sync_path_refuses_remote_keys() {
            let fake = Arc::new(FakeTransit::default());
            let chain = transit_chain(&fake);
            let sealed = seal_async(&chain, RECORD, SECRET).await.unwrap();
            fake.down.store(true, Ordering::SeqCst);
            let error = unseal_async(&chain, RECORD, &sealed).await.unwrap_err();
            assert!(matches!(&error, SealError::Unavailable { key, .. } if key == "t1.v1"), "{error:?}");
            let error = seal_async(&chain, RECORD, SECRET).await.unwrap_err();
            assert!(matches!(&error, SealError::Unavailable { key, .. } if key == "t1"), "{error:?}");
            assert!(!error.to_string().contains("0123456789abcdef"));
            assert!(matches!(seal(&chain, RECORD, SECRET), Err(SealError::Remote { .. })));
            assert!(matches!(unseal(&chain, RECORD, &sealed), Err(SealError::Remote { .. })));
        }
    }
}

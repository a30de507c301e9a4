//! Key backends: who wraps and unwraps the data keys of sealed values when the key-encryption
//! key does not live in the broker.
//!
//! A keychain key is either local (32 bytes the broker holds: `keychain::Key`) or remote: a
//! [`KeyBackend`] such as an OpenBao/Vault transit key, which encrypts and decrypts data keys
//! for the broker and never hands out the key-encryption key. Remote keys have versions (transit
//! rotates a key by adding one); each wrapped data key names the version that wrapped it, and the
//! sealed value names it too (`<key name>.v<version>`), so `reseal` and `keys list` tell records
//! sealed by an older version from those sealed by the latest.
//!
//! The trait is what the envelope needs, and nothing of HTTP: the OpenBao implementation lives
//! in `crate::openbao`, and the unit tests use an in-memory fake.

use std::fmt;

use async_trait::async_trait;
use zeroize::Zeroizing;

/// A data key wrapped by a remote key: the backend's ciphertext, which names the version.
#[derive(Clone, PartialEq, Eq)]
pub struct Wrapped {
    /// The key version that wrapped it (1 and up).
    pub version: u32,
    /// The backend's own text form (transit: `vault:v<version>:<base64>`); never holds `:`-free
    /// guarantees, so the envelope stores it as base64.
    pub text: String,
}

impl fmt::Debug for Wrapped {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Wrapped").field("version", &self.version).finish_non_exhaustive()
    }
}

/// Why a remote key did not wrap or unwrap. Messages say what failed, never a key, data key,
/// token or plaintext.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BackendError {
    /// The backend did not answer, or answered that it cannot serve now (sealed, 5xx): a retry
    /// later may succeed. The broker answers 503.
    #[error("{0}")]
    Unavailable(String),
    /// The backend refused the wrapped key as not its own (authentication failed): the value
    /// was changed, sealed for another record, or by another key.
    #[error("{0}")]
    Rejected(String),
    /// Anything else: a permission, a missing key, a misconfiguration. The broker answers 500.
    #[error("{0}")]
    Failed(String),
}

/// A key-encryption key held by a backend outside the broker.
#[async_trait]
pub trait KeyBackend: Send + Sync {
    /// Where the key lives, for messages and `keys list` (no secret: e.g.
    /// "OpenBao transit key 'etcd-broker' at https://bao:8200").
    fn describe(&self) -> String;

    /// Encrypts `data_key` with the latest version of the key; `aad` is authenticated.
    async fn wrap(&self, data_key: &[u8], aad: &[u8]) -> Result<Wrapped, BackendError>;

    /// Decrypts what [`KeyBackend::wrap`] returned (any version the backend still decrypts),
    /// given the same `aad`.
    async fn unwrap(&self, wrapped: &str, aad: &[u8]) -> Result<Zeroizing<Vec<u8>>, BackendError>;

    /// The version new wraps use: what `reseal` moves records to.
    async fn latest_version(&self) -> Result<u32, BackendError>;
}

/// The version a wrapped text names (`vault:v<N>:...`), if it has that shape.
pub fn wrapped_version(text: &str) -> Option<u32> {
    let rest = text.strip_prefix("vault:v")?;
    let (digits, _) = rest.split_once(':')?;
    if digits.is_empty() || digits.len() > 9 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok().filter(|v| *v > 0)
}

#[cfg(test)]
pub(crate) mod fake {
    //! An in-memory stand-in for a transit key, for unit tests only: AES-256-GCM under
    //! per-version keys of its own, the same text form, and a switch that makes it unavailable.

    use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
    use std::sync::Mutex;

    use base64::engine::general_purpose::STANDARD as BASE64;
    use base64::Engine as _;
    use openssl::symm::{decrypt_aead, encrypt_aead, Cipher};

    use super::*;

    /// A fake transit key: versions 1..=latest, each 32 bytes drawn at rotation.
    pub struct FakeTransit {
        keys: Mutex<Vec<[u8; 32]>>,
        latest: AtomicU32,
        /// While set, every call fails as unavailable.
        pub down: AtomicBool,
        /// Calls made, for tests that count round trips.
        pub calls: AtomicU32,
    }

    impl Default for FakeTransit {
        fn default() -> Self {
            let fake = Self {
                keys: Mutex::new(Vec::new()),
                latest: AtomicU32::new(0),
                down: false.into(),
                calls: 0.into(),
            };
            fake.rotate();
            fake
        }
    }

    impl FakeTransit {
        /// Adds a version and makes it the latest.
        pub fn rotate(&self) {
            let mut key = [0u8; 32];
            openssl::rand::rand_bytes(&mut key).unwrap();
            let mut keys = self.keys.lock().unwrap();
            keys.push(key);
            self.latest.store(keys.len() as u32, Ordering::SeqCst);
        }

        fn check(&self) -> Result<(), BackendError> {
            self.calls.fetch_add(1, Ordering::SeqCst);
            if self.down.load(Ordering::SeqCst) {
                return Err(BackendError::Unavailable("fake transit is down".into()));
            }
            Ok(())
        }
    }

    #[async_trait]
    impl KeyBackend for FakeTransit {
        fn describe(&self) -> String {
            "fake transit key".into()
        }

        async fn wrap(&self, data_key: &[u8], aad: &[u8]) -> Result<Wrapped, BackendError> {
            self.check()?;
            let version = self.latest.load(Ordering::SeqCst);
            let key = self.keys.lock().unwrap()[version as usize - 1];
            let nonce = [version as u8; 12];
            let mut tag = [0u8; 16];
            let mut sealed =
                encrypt_aead(Cipher::aes_256_gcm(), &key, Some(&nonce), aad, data_key, &mut tag).unwrap();
            sealed.extend_from_slice(&tag);
            Ok(Wrapped { version, text: format!("vault:v{version}:{}", BASE64.encode(sealed)) })
        }

        async fn unwrap(&self, wrapped: &str, aad: &[u8]) -> Result<Zeroizing<Vec<u8>>, BackendError> {
            self.check()?;
            let rejected = || BackendError::Rejected("cipher: message authentication failed".into());
            let version = wrapped_version(wrapped).ok_or_else(rejected)?;
            let key = *self.keys.lock().unwrap().get(version as usize - 1).ok_or_else(rejected)?;
            let body = wrapped.splitn(3, ':').nth(2).ok_or_else(rejected)?;
            let sealed = BASE64.decode(body).map_err(|_| rejected())?;
            if sealed.len() < 16 {
                return Err(rejected());
            }
            let (ciphertext, tag) = sealed.split_at(sealed.len() - 16);
            let nonce = [version as u8; 12];
            decrypt_aead(Cipher::aes_256_gcm(), &key, Some(&nonce), aad, ciphertext, tag)
                .map(Zeroizing::new)
                .map_err(|_| rejected())
        }

        async fn latest_version(&self) -> Result<u32, BackendError> {
            self.check()?;
            Ok(self.latest.load(Ordering::SeqCst))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_are_read_from_transit_text_only_when_well_formed() {
        assert_eq!(wrapped_version("vault:v1:abc"), Some(1));
        assert_eq!(wrapped_version("vault:v12:abc"), Some(12));
        for bad in
            ["vault:v0:abc", "vault:v:abc", "vault:vx:abc", "vault:v1", "v1:abc", "", "vault:v9999999999:a"]
        {
            assert_eq!(wrapped_version(bad), None, "{bad}");
        }
    }
}

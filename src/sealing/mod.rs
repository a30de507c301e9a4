//! Secrets sealed at rest: what the broker stores in etcd that would hand out access (binding
//! passwords) is sealed before it is written, so a copy of etcd's data (a backup, a snapshot,
//! a misconfigured role) does not give it away.
//!
//! - [`keychain`]: named 256-bit key-encryption keys, one active; loaded from private files or
//!   inline config values.
//! - [`envelope`]: one secret sealed into one versioned text value under a fresh data key,
//!   which the active key wraps; the record's etcd key is authenticated, so a sealed value does
//!   not unseal in another record.
//! - [`backend`]: the trait of keys held outside the broker (OpenBao/Vault transit, implemented
//!   in `crate::openbao`), which wrap and unwrap data keys and have versions.
//!
//! How they combine: the config builds a [`Keychain`]; writing a record calls [`seal`] with
//! its etcd key; reading calls [`unseal`] when [`is_sealed`] says the value is sealed (records
//! written before sealing hold clear text). Rotation adds a key and makes it active; values
//! sealed by older keys keep unsealing while those keys stay in the chain.
//!
//! All cryptography is OpenSSL's (AES-256-GCM, its CSPRNG); nothing here is hand-rolled. This
//! module uses nothing else of the crate, neither actix-web nor etcd-client, and no key
//! material or plaintext leaves it through `Debug`, `Display` or an error.

pub mod backend;
pub mod envelope;
pub mod keychain;

pub use backend::{BackendError, KeyBackend, Wrapped};
pub use envelope::{is_sealed, seal, seal_async, sealed_with, unseal, unseal_async, SealError};
pub use keychain::{Key, KeyError, Keychain};

/// Whether the broker seals the secrets it stores (`[secrets] sealing`), and the keys that
/// seal and unseal them.
#[derive(Debug, Clone)]
pub enum Sealing {
    /// Secrets are stored in clear, as before sealing existed; only when the config says
    /// `sealing = "off"`, so that clear text is a decision. A keychain, when configured, is still loaded: the
    /// operators' `seal` / `unseal` use it, and values sealed while sealing was on still unseal.
    Off { keychain: Option<Keychain> },
    /// New and rewritten secrets are sealed with the keychain's active key.
    On(Keychain),
}

impl Sealing {
    /// The configured keychain, whether sealing is on or off.
    pub fn keychain(&self) -> Option<&Keychain> {
        match self {
            Sealing::Off { keychain } => keychain.as_ref(),
            Sealing::On(keychain) => Some(keychain),
        }
    }
}

#[cfg(test)]
mod fuzz;

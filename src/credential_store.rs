//! Credential stores: where a binding's secret material (its password, a certificate binding's
//! certificate and private key) lives when it is not in the broker's own records.
//!
//! By default the broker keeps that material in the binding's record in etcd, sealed
//! (`broker/sealed.rs`). A plan may instead keep it in a [`CredentialStore`], such as an
//! OpenBao/Vault KV v2 engine: the record then names the [`Location`] of its secret and holds
//! no secret at all, so a copy of etcd holds none, and the platform's security team revokes
//! or audits credentials in one place.
//!
//! The trait is what the broker needs, and nothing of HTTP: the OpenBao implementation lives
//! in `crate::openbao::kv`, the unit tests use a fake (`broker/fake_kv.rs`). Nothing else of
//! the crate is imported here.

use std::collections::BTreeMap;
use std::fmt;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

/// Where one secret lives in a store: a mount (OpenBao: the KV v2 engine's) and a path in it.
/// Stored in the binding record, so the record names its secret even if the config's mount or
/// prefix changes later.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Location {
    pub mount: String,
    pub path: String,
}

impl fmt::Display for Location {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.mount, self.path)
    }
}

/// A secret: named text fields (`password`, `certificate`, `private_key`), zeroed on drop.
/// `Debug` shows the field names only.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Secret {
    fields: BTreeMap<String, Zeroizing<String>>,
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Secret").field("fields", &self.fields.keys().collect::<Vec<_>>()).finish()
    }
}

impl Secret {
    /// Sets field `name` to `value`.
    pub fn insert(&mut self, name: &str, value: &str) {
        self.fields.insert(name.to_owned(), Zeroizing::new(value.to_owned()));
    }

    /// Field `name`, if the secret has it.
    pub fn get(&self, name: &str) -> Option<&str> {
        self.fields.get(name).map(|v| v.as_str())
    }

    /// Every field, in name order.
    pub fn fields(&self) -> impl Iterator<Item = (&str, &str)> {
        self.fields.iter().map(|(k, v)| (k.as_str(), v.as_str()))
    }
}

/// Why a store did not do what was asked. Messages name the store and the location, never a
/// secret or a token.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CredentialStoreError {
    /// The store did not answer, or answered that it cannot serve now (sealed, 5xx): a retry
    /// later may succeed. The broker answers 503.
    #[error("{0}")]
    Unavailable(String),
    /// Anything else: a permission, a missing mount, a misconfiguration. The broker answers 500.
    #[error("{0}")]
    Failed(String),
}

/// What [`CredentialStore::create`] found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Created {
    /// The secret was written: nothing was there.
    Written,
    /// A secret was there already (an earlier attempt of the same bind wrote it); it is kept,
    /// and this is it.
    Exists(Secret),
}

/// A place outside etcd that keeps bindings' secrets. Every method is idempotent, so a retry
/// after a crash or a lost answer repeats it safely.
#[async_trait]
pub trait CredentialStore: Send + Sync + fmt::Debug {
    /// What and where the store is, for messages (no secret: e.g. "OpenBao KV 'secret' at
    /// https://bao:8200").
    fn describe(&self) -> String;

    /// The address apps reach the store at, for binds answered with a reference.
    fn address(&self) -> String;

    /// The path an app reads the secret at `at` from, relative to the address's API root
    /// (OpenBao KV v2: `<mount>/data/<path>`, read as `GET /v1/<mount>/data/<path>`).
    fn read_path(&self, at: &Location) -> String;

    /// Where the secret of binding `binding` of instance `instance` goes (the config's mount
    /// and prefix: `<prefix>/<instance>/<binding>`).
    fn location(&self, instance: &str, binding: &str) -> Location;

    /// The folder of every secret of instance `instance` (`<prefix>/<instance>`).
    fn instance_folder(&self, instance: &str) -> Location;

    /// Writes `secret` at `at` only if nothing is there; otherwise keeps and returns what is
    /// there. Two binds racing for one location thus agree on the first secret written.
    async fn create(&self, at: &Location, secret: &Secret) -> Result<Created, CredentialStoreError>;

    /// The secret at `at`, `None` when there is none.
    async fn read(&self, at: &Location) -> Result<Option<Secret>, CredentialStoreError>;

    /// Deletes the secret at `at` for good, every version and its metadata; nothing there is
    /// fine.
    async fn delete(&self, at: &Location) -> Result<(), CredentialStoreError>;

    /// The secrets directly in `folder` (their locations); an empty or missing folder has none.
    async fn list(&self, folder: &Location) -> Result<Vec<Location>, CredentialStoreError>;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_secret_prints_its_field_names_only() {
        let mut secret = Secret::default();
        secret.insert("password", "hunter2hunter2");
        assert_eq!(format!("{secret:?}"), r#"Secret { fields: ["password"] }"#);
        assert_eq!(secret.get("password"), Some("hunter2hunter2"));
        let at = Location { mount: "secret".into(), path: "etcd-broker/i1/b1".into() };
        assert_eq!(at.to_string(), "secret/etcd-broker/i1/b1");
    }
}

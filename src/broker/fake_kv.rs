//! A stand-in for OpenBao KV v2, for unit tests only: each secret is a key of a [`Store`]
//! (`/openbao-kv/<mount>/<path>`, the fields as JSON), so that a [`FaultyStore`] wrapped around
//! the same store fails the KV calls too, counted with the etcd calls: the crash tests then
//! fail every call of an operation, in etcd and in the KV store alike. A switch makes it
//! unavailable, as OpenBao down.
//!
//! [`FaultyStore`]: crate::store::faulty::FaultyStore

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use async_trait::async_trait;

use crate::credential_store::{Created, CredentialStore, CredentialStoreError, Location, Secret};
use crate::store::{Guard, Store, StoreError, Write};

/// Where the fake keeps its secrets in the store.
pub const KV_PREFIX: &str = "/openbao-kv/";

/// The fake KV store.
pub struct FakeKv {
    store: Arc<dyn Store>,
    /// While set, every call fails as unavailable.
    pub down: AtomicBool,
}

impl std::fmt::Debug for FakeKv {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("FakeKv")
    }
}

impl FakeKv {
    /// A fake whose secrets are keys of `store`.
    pub fn on(store: Arc<dyn Store>) -> FakeKv {
        FakeKv { store, down: false.into() }
    }

    /// The store key of a location.
    pub fn key(at: &Location) -> String {
        format!("{KV_PREFIX}{at}")
    }

    fn check(&self) -> Result<(), CredentialStoreError> {
        if self.down.load(Ordering::SeqCst) {
            return Err(CredentialStoreError::Unavailable("fake OpenBao is down".into()));
        }
        Ok(())
    }
}

fn failed(e: StoreError) -> CredentialStoreError {
    CredentialStoreError::Unavailable(format!("fake OpenBao: {e}"))
}

/// A secret as the fake stores it.
pub fn decode(bytes: &[u8]) -> Secret {
    let fields: BTreeMap<String, String> = serde_json::from_slice(bytes).unwrap();
    let mut secret = Secret::default();
    for (name, value) in &fields {
        secret.insert(name, value);
    }
    secret
}

#[async_trait]
impl CredentialStore for FakeKv {
    fn describe(&self) -> String {
        "fake OpenBao KV".into()
    }

    fn address(&self) -> String {
        "https://bao.example:8200".into()
    }

    fn read_path(&self, at: &Location) -> String {
        format!("{}/data/{}", at.mount, at.path)
    }

    fn location(&self, instance: &str, binding: &str) -> Location {
        Location { mount: "secret".into(), path: format!("etcd-broker/{instance}/{binding}") }
    }

    fn instance_folder(&self, instance: &str) -> Location {
        Location { mount: "secret".into(), path: format!("etcd-broker/{instance}") }
    }

    async fn create(&self, at: &Location, secret: &Secret) -> Result<Created, CredentialStoreError> {
        self.check()?;
        let fields: BTreeMap<&str, &str> = secret.fields().collect();
        let put = Write::Put(Self::key(at), serde_json::to_vec(&fields).unwrap());
        match self.store.commit(&[Guard::Absent(Self::key(at))], &[put]).await.map_err(failed)? {
            Some(_) => Ok(Created::Written),
            None => match self.read(at).await? {
                Some(existing) => Ok(Created::Exists(existing)),
                None => Err(CredentialStoreError::Failed("fake OpenBao: raced with a delete".into())),
            },
        }
    }

    async fn read(&self, at: &Location) -> Result<Option<Secret>, CredentialStoreError> {
        self.check()?;
        Ok(self.store.get(&Self::key(at)).await.map_err(failed)?.map(|found| decode(&found.value)))
    }

    async fn delete(&self, at: &Location) -> Result<(), CredentialStoreError> {
        self.check()?;
        self.store.commit(&[], &[Write::Delete(Self::key(at))]).await.map_err(failed).map(|_| ())
    }

    async fn list(&self, folder: &Location) -> Result<Vec<Location>, CredentialStoreError> {
        self.check()?;
        let prefix = format!("{}/", Self::key(folder));
        let found = self.store.list(&prefix).await.map_err(failed)?;
        Ok(found
            .into_iter()
            .filter_map(|(key, _)| {
                let name = key.strip_prefix(&prefix)?;
                (!name.contains('/')).then(|| Location {
                    mount: folder.mount.clone(),
                    path: format!("{}/{name}", folder.path),
                })
            })
            .collect())
    }
}

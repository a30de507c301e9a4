//! A binding's secret material in clear (password, certificate, private key), wherever it
//! lives: in its record (sealed or not: `sealed.rs`), or in the credential store the record
//! names (`credential_store = "openbao"` plans: OpenBao KV v2).
//!
//! Ordering with a credential store, so that every secret the broker writes there is named by
//! a record (or by a role-deletion entry) at every crash point:
//! - bind: the store is read once before anything is written (a store that does not answer
//!   refuses the bind with a 503 that leaves nothing); the record (`creating`) names the
//!   location; then the secret is created there only if absent (check-and-set), so a retry or
//!   a racing attempt takes the secret already written; then the role and user;
//! - unbind: the user, then the secret (every version and its metadata), then the record (its
//!   role-deletion entry still names the location, and the reaper deletes it again: a bind in
//!   flight may have written it after the unbind deleted it);
//! - deprovision: after every binding, whatever is left in the instance's folder of the store
//!   (secrets of binds that died after their record was removed).

use zeroize::Zeroizing;

use crate::credential_store::{Created, CredentialStore, CredentialStoreError, Location, Secret};
use crate::osb::plan_options::CredentialStoreKind;
use crate::osb::{BrokerError, BrokerResult, InstanceId};
use crate::secrets::random_password;

use super::records::{BindingRecord, RecordState};
use super::EtcdBroker;

/// The names of a secret's fields in a credential store.
const PASSWORD: &str = "password";
const CERTIFICATE: &str = "certificate";
const PRIVATE_KEY: &str = "private_key";

/// A binding's secrets in clear, zeroed on drop.
#[derive(Default)]
pub(super) struct Material {
    pub password: Option<Zeroizing<String>>,
    /// The client certificate (PEM): public, but it belongs with its key.
    pub certificate: Option<String>,
    pub private_key: Option<Zeroizing<String>>,
}

impl Material {
    fn from_secret(secret: &Secret) -> Material {
        Material {
            password: secret.get(PASSWORD).map(|p| Zeroizing::new(p.to_owned())),
            certificate: secret.get(CERTIFICATE).map(str::to_owned),
            private_key: secret.get(PRIVATE_KEY).map(|k| Zeroizing::new(k.to_owned())),
        }
    }

    fn to_secret(&self) -> Secret {
        let mut secret = Secret::default();
        for (name, value) in [
            (PASSWORD, self.password.as_deref().map(String::as_str)),
            (CERTIFICATE, self.certificate.as_deref()),
            (PRIVATE_KEY, self.private_key.as_deref().map(String::as_str)),
        ] {
            if let Some(value) = value {
                secret.insert(name, value);
            }
        }
        secret
    }
}

/// A credential store's failure as the platform sees it: unavailable is a 503 to repeat, the
/// rest a 500 (both name the store, never a secret).
fn store_failed(e: CredentialStoreError) -> BrokerError {
    match e {
        CredentialStoreError::Unavailable(why) => BrokerError::Unavailable(format!(
            "{why}; the operation may be incomplete: repeat the request to finish it"
        )),
        CredentialStoreError::Failed(why) => BrokerError::Internal(why),
    }
}

impl EtcdBroker {
    /// The configured credential store; an internal error without one (the config refuses a
    /// plan that needs one without it, so only a record of an older config gets here).
    pub(super) fn credential_store(&self) -> BrokerResult<&dyn CredentialStore> {
        self.setup.credential_store.as_deref().ok_or_else(|| {
            BrokerError::Internal(
                "a binding keeps its secret in OpenBao, but the broker's config has no [secrets.openbao.kv]"
                    .into(),
            )
        })
    }

    /// The material of the binding record at `key`: unsealed from the record, or read from the
    /// store it names. A secret missing from the store is a 500 naming the location.
    pub(super) async fn material(&self, key: &str, record: &BindingRecord) -> BrokerResult<Material> {
        let Some(at) = &record.secret_location else {
            return Ok(Material {
                password: self.password(key, record).await?,
                certificate: record.certificate.clone(),
                private_key: self.private_key(key, record).await?,
            });
        };
        let store = self.credential_store()?;
        match store.read(at).await.map_err(store_failed)? {
            Some(secret) => Ok(Material::from_secret(&secret)),
            None => Err(BrokerError::Internal(format!(
                "binding {} keeps its secret at {at} in {}, but nothing is there",
                record.binding_id,
                store.describe()
            ))),
        }
    }

    /// The material a bind gives the user it creates: as [`Self::material`], except that for
    /// a record still `creating` whose secret lives in a store, the secret is made now and
    /// written there unless an earlier attempt wrote one (then that one is used).
    pub(super) async fn material_for_bind(
        &self,
        key: &str,
        record: &BindingRecord,
    ) -> BrokerResult<Material> {
        let Some(at) = record.secret_location.as_ref().filter(|_| record.state == RecordState::Creating)
        else {
            return self.material(key, record).await;
        };
        let fresh = self.fresh_material(record)?;
        match self.credential_store()?.create(at, &fresh.to_secret()).await.map_err(store_failed)? {
            Created::Written => Ok(fresh),
            Created::Exists(secret) => Ok(Material::from_secret(&secret)),
        }
    }

    /// New secrets for `record` as its plan's credential kind asks: a password, a client
    /// certificate (valid no longer than an expiring binding's user lives), or both.
    pub(super) fn fresh_material(&self, record: &BindingRecord) -> BrokerResult<Material> {
        let kind = self.setup.certificates.kind(&record.plan_id);
        let mut material = Material::default();
        if kind.password() {
            material.password = Some(Zeroizing::new(random_password()));
        }
        if kind.certificate() {
            let now = self.now();
            let lives_for = record.expires_at.map(|at| {
                std::time::Duration::from_secs(at.saturating_add(self.setup.expiry_grace).saturating_sub(now))
            });
            let minted = self.setup.certificates.mint(&record.username, lives_for)?;
            material.certificate = Some(minted.certificate);
            material.private_key = Some(minted.private_key);
        }
        Ok(material)
    }

    /// Where a new binding's secret goes, once the store has answered: one read before the
    /// record is written, so that a store that is down refuses the bind (503) with nothing
    /// written anywhere.
    pub(super) async fn secret_location_for(&self, record: &BindingRecord) -> BrokerResult<Location> {
        let store = self.credential_store()?;
        let at = store.location(&record.instance_id, &record.binding_id);
        store.read(&at).await.map_err(store_failed)?;
        Ok(at)
    }

    /// Deletes the secret at `at` (every version, metadata included); nothing there is fine.
    pub(super) async fn delete_secret(&self, at: Option<&Location>) -> BrokerResult<()> {
        match at {
            Some(at) => self.credential_store()?.delete(at).await.map_err(store_failed),
            None => Ok(()),
        }
    }

    /// Deprovision's sweep of the store: every secret left in the instance's folder once its
    /// binding records are gone (so no record names them: binds that died after their record
    /// was removed). Nothing without a store. An instance whose plan (`plan_id`) keeps its
    /// secrets in etcd is not held up by an OpenBao that does not answer: only a bind with
    /// another plan's id could have left one there, and the warning says so.
    pub(super) async fn sweep_secrets(&self, id: &InstanceId, plan_id: &str) -> BrokerResult<()> {
        let Some(store) = self.setup.credential_store.as_deref() else {
            return Ok(());
        };
        let listed = store.list(&store.instance_folder(id.as_str())).await;
        let in_etcd = self.plan_options(plan_id).credential_store == CredentialStoreKind::Etcd;
        let left = match listed {
            Err(CredentialStoreError::Unavailable(why)) if in_etcd => {
                tracing::warn!(instance_id = %id, %why, "OpenBao did not answer: secrets of this instance that no record names, if any, are left in it");
                return Ok(());
            }
            other => other.map_err(store_failed)?,
        };
        for at in &left {
            store.delete(at).await.map_err(store_failed)?;
        }
        if !left.is_empty() {
            tracing::warn!(instance_id = %id, secrets = left.len(), "deleted secrets in OpenBao that no record named");
        }
        Ok(())
    }
}

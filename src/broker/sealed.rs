//! Binding passwords sealed at rest (the envelope: `sealing`), and the index that counts them.
//!
//! A binding record holds its password in `password` (clear: sealing off, or written before
//! sealing existed) or in `password_sealed` (sealed with the record's etcd key authenticated);
//! a certificate binding's private key likewise in `private_key` or `private_key_sealed`
//! (sealed by the same key, at the same time, for `<record key>#private_key`).
//! With sealing on, every record the broker writes, new or rewritten, is sealed; records in
//! clear keep working until something rewrites them (or `reseal` migrates them).
//!
//! Invariant: a binding record has an entry `<state>index/sealed/<key name>/<instance>/<binding>`
//! exactly when its password is sealed, with the key named in the sealed value. The entry is
//! put and deleted in the same transactions as the record ([`binding_writes`], which the
//! broker and `reseal` both write with, and [`EtcdBroker::index_deletes`]), so counting a key's records is one count-only request, and the
//! key names in use are found with one read per name ([`EtcdBroker::sealing_keys_in_use`]),
//! never a scan of the records.

use zeroize::Zeroizing;

use crate::osb::{BrokerError, BrokerResult};
use crate::sealing::{self, Keychain, Sealing};
use crate::store::Write;

use super::names::Names;
use super::records::{data_key_name, encode, BindingRecord, DataKey, StoredPassword, PRIVATE_KEY_FIELD};
use super::EtcdBroker;

/// The index entries of a binding record: its plan's, its sealing key's when sealed, the
/// credential store's when its secrets live there, and its expiry's until its user is revoked
/// for it.
fn binding_index_keys(names: &Names, record: &BindingRecord) -> Vec<String> {
    let (instance, binding) = (&record.instance_id, &record.binding_id);
    let mut keys = vec![names.binding_index_key(&record.plan_id, instance, binding)];
    if let Some(name) = record.sealed_with() {
        keys.push(names.sealed_index_key(name, instance, binding));
    }
    if record.secret_location.is_some() {
        keys.push(names.stored_index_key(instance, binding));
    }
    if let (Some(at), None) = (record.expires_at, record.revoked_at) {
        keys.push(names.expiry_index_key(at, instance, binding));
    }
    keys
}

/// The writes that store binding `record` at `key` as it is (sealed or not), for one
/// transaction: the record and its index entries. A function of the names alone, so that
/// `reseal` writes records exactly as brokers do.
pub(super) fn binding_writes(names: &Names, key: &str, record: &BindingRecord) -> Vec<Write> {
    let mut writes = vec![Write::Put(key.to_owned(), encode(record))];
    writes.extend(binding_index_keys(names, record).into_iter().map(|k| Write::Put(k, Vec::new())));
    writes
}

/// How many records each key seals and how many hold their password in clear, for the gauges
/// and `keys list`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SealingInventory {
    /// Key name -> sealed records, in name order: every key of the keychain (0 when it seals
    /// none) and every key that seals records, configured or not.
    pub sealed: Vec<(String, u64)>,
    /// Binding records without a sealed password: all bindings (the per-plan index, which every
    /// record of this version and the one before sealing has) minus the sealed ones and those
    /// whose secrets live in a credential store.
    pub clear_text: u64,
    /// Binding records whose secrets live in a credential store (OpenBao KV): they hold none.
    pub in_credential_store: u64,
}

/// A sealing failure as the platform sees it: a key backend (OpenBao) that did not answer is a
/// 503 to retry; anything else (a changed value, a missing key) a 500 naming the record.
fn seal_failed(e: sealing::SealError) -> BrokerError {
    match e {
        sealing::SealError::Unavailable { .. } => BrokerError::Unavailable(format!(
            "{e}; the operation may be incomplete: repeat the request to finish it"
        )),
        _ => BrokerError::Internal(e.to_string()),
    }
}

impl EtcdBroker {
    /// A fresh data key (256 bits from OpenSSL's CSPRNG) for the instance record at
    /// `instance_key`, sealed by the keychain's active key; never in clear outside this call.
    pub(super) async fn new_data_key(&self, instance_key: &str, version: u32) -> BrokerResult<DataKey> {
        let Some(keychain) = self.setup.sealing.keychain() else {
            return Err(BrokerError::Internal(
                "the plan encrypts its instances' values, but the broker has no keychain ([secrets])".into(),
            ));
        };
        let mut bytes = Zeroizing::new([0u8; 32]);
        openssl::rand::rand_bytes(&mut bytes[..])
            .map_err(|_| BrokerError::Internal("OpenSSL's random generator failed".into()))?;
        let name = data_key_name(instance_key, version);
        let sealed = sealing::seal_async(keychain, &name, &bytes[..]).await.map_err(seal_failed)?;
        Ok(DataKey { version, sealed })
    }

    /// The clear password of the binding record at `key` (`None`: a certificate binding
    /// without one). A sealed one that does not unseal is an internal error naming the record
    /// (and the key when known), never the secret.
    pub(super) async fn password(
        &self,
        key: &str,
        record: &BindingRecord,
    ) -> BrokerResult<Option<Zeroizing<String>>> {
        let stored = record
            .stored_password()
            .map_err(|broken| BrokerError::Internal(format!("record '{key}' {broken}")))?;
        match stored {
            Some(stored) => self.clear_text(key, key, stored, "password").await.map(Some),
            None => Ok(None),
        }
    }

    /// The clear private key of a certificate binding's record at `key` (`None`: a password
    /// binding), unsealed like [`Self::password`].
    pub(super) async fn private_key(
        &self,
        key: &str,
        record: &BindingRecord,
    ) -> BrokerResult<Option<Zeroizing<String>>> {
        let stored = record
            .stored_private_key()
            .map_err(|broken| BrokerError::Internal(format!("record '{key}' {broken}")))?;
        let sealed_for = format!("{key}{PRIVATE_KEY_FIELD}");
        match stored {
            Some(stored) => self.clear_text(key, &sealed_for, stored, "private key").await.map(Some),
            None => Ok(None),
        }
    }

    /// One secret of the record at `key` in clear; `sealed_for` is the record name it was
    /// sealed for, `what` names it in errors.
    async fn clear_text(
        &self,
        key: &str,
        sealed_for: &str,
        stored: StoredPassword<'_>,
        what: &str,
    ) -> BrokerResult<Zeroizing<String>> {
        match stored {
            StoredPassword::Clear(clear) => Ok(Zeroizing::new(clear.to_owned())),
            StoredPassword::Sealed(sealed) => {
                let Some(keychain) = self.setup.sealing.keychain() else {
                    let name = sealing::sealed_with(sealed).unwrap_or("(unreadable)");
                    return Err(BrokerError::Internal(format!(
                        "record '{key}' is sealed with key '{name}', but the broker's config holds no keys \
                         ([secrets.keys])"
                    )));
                };
                let plaintext = Zeroizing::new(
                    sealing::unseal_async(keychain, sealed_for, sealed).await.map_err(seal_failed)?,
                );
                match std::str::from_utf8(&plaintext) {
                    Ok(text) => Ok(Zeroizing::new(text.to_owned())),
                    Err(_) => Err(BrokerError::Internal(format!(
                        "record '{key}' unseals to a {what} that is not text"
                    ))),
                }
            }
        }
    }

    /// `password` as a record holds it: sealed for the record at `key` when sealing is on.
    pub(super) async fn store_password(
        &self,
        key: &str,
        record: &mut BindingRecord,
        password: &str,
    ) -> BrokerResult<()> {
        record.password = Some(password.to_owned());
        record.password_sealed = None;
        self.seal_password(key, record).await
    }

    /// A certificate and its private key as a record holds them: the key sealed for the
    /// record at `key` when sealing is on.
    pub(super) async fn store_certificate(
        &self,
        key: &str,
        record: &mut BindingRecord,
        certificate: &str,
        private_key: &str,
    ) -> BrokerResult<()> {
        record.certificate = Some(certificate.to_owned());
        record.private_key = Some(private_key.to_owned());
        record.private_key_sealed = None;
        self.seal_password(key, record).await
    }

    /// With sealing on, moves a clear password into `password_sealed` and a clear private key
    /// into `private_key_sealed`.
    async fn seal_password(&self, key: &str, record: &mut BindingRecord) -> BrokerResult<()> {
        let Sealing::On(keychain) = &self.setup.sealing else {
            return Ok(());
        };
        if let Some(clear) = &record.password {
            let sealed = sealing::seal_async(keychain, key, clear.as_bytes()).await.map_err(seal_failed)?;
            record.password_sealed = Some(sealed);
            record.password = None;
        }
        if let Some(clear) = &record.private_key {
            let sealed =
                sealing::seal_async(keychain, &format!("{key}{PRIVATE_KEY_FIELD}"), clear.as_bytes())
                    .await
                    .map_err(|e| match e {
                    unavailable @ sealing::SealError::Unavailable { .. } => seal_failed(unavailable),
                    _ => BrokerError::Internal(format!("record '{key}': sealing its private key failed")),
                })?;
            record.private_key_sealed = Some(sealed);
            record.private_key = None;
        }
        Ok(())
    }

    /// The writes that store binding `record` at `key`, for one transaction: the record (its
    /// password sealed first when sealing is on: rewritten records are sealed too) and its
    /// index entries.
    pub(super) async fn record_writes(
        &self,
        key: &str,
        record: &mut BindingRecord,
    ) -> BrokerResult<Vec<Write>> {
        self.seal_password(key, record).await?;
        Ok(binding_writes(self.names(), key, record))
    }

    /// The deletes of a binding record's index entries, for the transaction that deletes it:
    /// those [`binding_writes`] puts, and its entry under every key of the keychain, so that
    /// a sealed value that no longer names its key (damaged, truncated) leaves no entry behind.
    /// Deleting a key that does not exist is a no-op in etcd.
    pub(super) fn index_deletes(&self, record: &BindingRecord) -> Vec<Write> {
        let mut keys = binding_index_keys(self.names(), record);
        for key in self.setup.sealing.keychain().into_iter().flat_map(Keychain::keys) {
            keys.push(self.names().sealed_index_key(key.name(), &record.instance_id, &record.binding_id));
        }
        keys.sort();
        keys.dedup();
        keys.into_iter().map(Write::Delete).collect()
    }

    /// The names of the keychain's keys (none without a keychain), for the gauge that lets
    /// an alert tell configured keys from the others.
    pub fn keychain_key_names(&self) -> Vec<String> {
        self.setup
            .sealing
            .keychain()
            .into_iter()
            .flat_map(|k| k.keys().map(|k| k.name().to_owned()))
            .collect()
    }

    /// Whether the keychain unseals what the sealing name `name` (a key's, or a remote key's
    /// with a version) sealed.
    pub fn keychain_holds(&self, name: &str) -> bool {
        self.setup.sealing.keychain().is_some_and(|k| k.get(name).is_some())
    }

    /// The names of the keys that seal at least one record, in name order: one single-key read
    /// per name in use (each skips past all entries of the name before), whatever the number
    /// of records.
    pub async fn sealing_keys_in_use(&self) -> BrokerResult<Vec<String>> {
        let prefix = self.names().sealed_index_prefix();
        let mut names = Vec::new();
        let mut after = None;
        while let Some((key, _)) =
            self.setup.state.next_after(&prefix, after.as_deref()).await.map_err(|e| self.state_failed(e))?
        {
            let name = key[prefix.len()..].split('/').next().unwrap_or_default().to_owned();
            // Every entry of `name` sorts before `<prefix><name>0` ('0' follows '/'), every
            // entry of a later name after it.
            after = Some(format!("{prefix}{name}0"));
            names.push(name);
        }
        Ok(names)
    }

    /// Why the broker must not start: records sealed with keys its keychain does not hold
    /// (their bindings could not be read). `None` when every key in use is configured.
    pub async fn missing_sealing_keys(&self) -> BrokerResult<Option<String>> {
        let keychain = self.setup.sealing.keychain();
        let missing: Vec<String> = self
            .sealing_keys_in_use()
            .await?
            .into_iter()
            .filter(|name| !keychain.is_some_and(|k| k.get(name).is_some()))
            .collect();
        Ok(match &missing[..] {
            [] => None,
            [one] => Some(format!("records are sealed with key '{one}', which the keychain does not hold")),
            many => Some(format!(
                "records are sealed with keys '{}', which the keychain does not hold",
                many.join("', '")
            )),
        })
    }
}

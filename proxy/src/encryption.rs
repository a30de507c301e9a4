//! Values encrypted at rest: the values under an instance's prefix whose record holds data
//! keys (plan option `encryption`) are sealed by the proxy before etcd stores them and
//! unsealed before a client sees them, so that etcd's disks, snapshots and backups hold no
//! tenant value in clear.
//!
//! - A sealed value is `MAGIC ‖ version (u32, big-endian) ‖ nonce (12) ‖ ciphertext ‖ tag
//!   (16)`: AES-256-GCM (OpenSSL) under the instance's data key of that version, a random
//!   nonce, and `MAGIC ‖ version ‖ the value's etcd key` authenticated, so that a sealed value
//!   copied under another key does not unseal. New values are sealed with the newest version;
//!   any version the record holds unseals.
//! - A value that does not start with [`MAGIC`] is passed through as it is (values written
//!   before the plan encrypted, or directly on etcd), so a prefix can be migrated in place.
//! - Data keys come from the instance records (`<broker state prefix>instances/<id>`,
//!   `data_keys`), unsealed with the broker's keychain, kept in memory and forgotten when the
//!   record changes ([`DataKeys::follow`]). A record that cannot be read fails the request
//!   (UNAVAILABLE): a value is never written in clear because a key was missing.
//!
//! Keys and values are never logged, nor put into errors.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use etcd_broker::broker::names::Names;
use etcd_broker::broker::records::{data_key_name, DataKey};
use etcd_broker::osb::InstanceId;
use etcd_broker::sealing::Keychain;
use etcd_client::{Client, WatchOptions};
use futures_util::StreamExt;
use openssl::symm::{decrypt_aead, encrypt_aead, Cipher};
use serde::Deserialize;
use tonic::Status;
use zeroize::Zeroizing;

use crate::firewall::PREFIX;
use crate::pb::etcdserverpb::{
    compare, range_request, request_op, response_op, PutRequest, RangeRequest, TxnRequest, TxnResponse,
    WatchResponse,
};
use crate::pb::mvccpb::KeyValue;
use crate::policy;

/// How a sealed value starts: a NUL byte, which text values do not hold, then a name and the
/// format's version (defined beside the instance record, where the operators' tools read it).
pub const MAGIC: &[u8] = etcd_broker::broker::records::SEALED_VALUE_MAGIC;
const NONCE: usize = 12;
const TAG: usize = 16;
const HEADER: usize = MAGIC.len() + 4;

/// One instance's data keys, unsealed; empty for an instance that is not encrypted.
#[derive(Default)]
pub struct InstanceKeys {
    /// (version, key), newest last.
    keys: Vec<(u32, Zeroizing<[u8; 32]>)>,
}

impl InstanceKeys {
    /// Whether the instance's values are encrypted.
    pub fn encrypts(&self) -> bool {
        !self.keys.is_empty()
    }

    /// Keys from raw bytes, for tests.
    pub fn from_bytes(keys: impl IntoIterator<Item = (u32, [u8; 32])>) -> Self {
        let mut keys: Vec<(u32, Zeroizing<[u8; 32]>)> =
            keys.into_iter().map(|(v, k)| (v, Zeroizing::new(k))).collect();
        keys.sort_by_key(|(v, _)| *v);
        InstanceKeys { keys }
    }

    /// `value` sealed for `key` with the newest data key (as it is when nothing encrypts).
    pub fn seal(&self, key: &[u8], value: &[u8]) -> Result<Vec<u8>, Status> {
        let Some((version, data_key)) = self.keys.last() else { return Ok(value.to_vec()) };
        let failed = |_| Status::internal(format!("{PREFIX}: OpenSSL failed to seal a value"));
        let mut nonce = [0u8; NONCE];
        openssl::rand::rand_bytes(&mut nonce).map_err(failed)?;
        let mut sealed = Vec::with_capacity(HEADER + NONCE + value.len() + TAG);
        sealed.extend_from_slice(MAGIC);
        sealed.extend_from_slice(&version.to_be_bytes());
        let aad = [&sealed[..], key].concat();
        let mut tag = [0u8; TAG];
        let ciphertext =
            encrypt_aead(Cipher::aes_256_gcm(), &data_key[..], Some(&nonce), &aad, value, &mut tag)
                .map_err(failed)?;
        sealed.extend_from_slice(&nonce);
        sealed.extend_from_slice(&ciphertext);
        sealed.extend_from_slice(&tag);
        Ok(sealed)
    }

    /// `value` of `key` unsealed; a value that is not sealed as it is.
    pub fn unseal(&self, key: &[u8], value: &[u8]) -> Result<Vec<u8>, Status> {
        if !value.starts_with(MAGIC) {
            return Ok(value.to_vec());
        }
        let lost = |why: &str| {
            Status::data_loss(format!("{PREFIX}: a value of this instance does not unseal: {why}"))
        };
        if value.len() < HEADER + NONCE + TAG {
            return Err(lost("it is too short"));
        }
        let version = u32::from_be_bytes(value[MAGIC.len()..HEADER].try_into().expect("4 bytes"));
        let Some((_, data_key)) = self.keys.iter().find(|(v, _)| *v == version) else {
            return Err(lost(&format!("the instance holds no data key version {version}")));
        };
        let aad = [&value[..HEADER], key].concat();
        let nonce = &value[HEADER..HEADER + NONCE];
        let (ciphertext, tag) = value[HEADER + NONCE..].split_at(value.len() - HEADER - NONCE - TAG);
        decrypt_aead(Cipher::aes_256_gcm(), &data_key[..], Some(nonce), &aad, ciphertext, tag)
            .map_err(|_| lost("it was altered, or sealed for another key"))
    }
}

/// The fields of an instance record the proxy reads.
#[derive(Deserialize)]
struct Instance {
    #[serde(default)]
    data_keys: Vec<DataKey>,
}

/// Every instance's data keys, as far as requests needed them.
#[derive(Clone)]
pub struct DataKeys {
    client: Client,
    names: Names,
    keychain: Option<Keychain>,
    cache: Arc<Mutex<HashMap<String, Arc<InstanceKeys>>>>,
    /// Changes seen by [`DataKeys::follow`]: a key read before a change is not cached.
    changes: Arc<AtomicU64>,
    /// Whether [`DataKeys::follow`] watches the records: nothing is cached otherwise.
    following: Arc<std::sync::atomic::AtomicBool>,
    /// Bytes of clear values sealed and unsealed (`etcd_broker_proxy_{en,de}crypted_bytes_total`).
    bytes: CryptoBytes,
}

/// The counters of bytes sealed and unsealed, registered by the server
/// ([`crate::metrics::Metrics::register`]).
#[derive(Clone)]
pub struct CryptoBytes {
    pub encrypted: prometheus::IntCounter,
    pub decrypted: prometheus::IntCounter,
}

impl CryptoBytes {
    fn new() -> Self {
        let counter = |name: &str, help: &str| prometheus::IntCounter::new(name, help).expect("valid metric");
        CryptoBytes {
            encrypted: counter(
                "etcd_broker_proxy_encrypted_bytes_total",
                "Bytes of values sealed (in clear, before encryption) on their way to etcd.",
            ),
            decrypted: counter(
                "etcd_broker_proxy_decrypted_bytes_total",
                "Bytes of values unsealed (in clear, after decryption) on their way to clients.",
            ),
        }
    }
}

/// The data keys of the instances a request touches, looked up before it is forwarded.
#[derive(Default)]
pub struct Resolved(HashMap<String, Arc<InstanceKeys>>);

impl Resolved {
    /// The data keys of the instance `key` belongs to, if it is encrypted.
    pub fn of(&self, names: &Names, key: &[u8]) -> Option<&InstanceKeys> {
        let instance = instance_of(names, key)?;
        self.0.get(instance).map(|k| &**k).filter(|k| k.encrypts())
    }

    /// Whether nothing a request touches is encrypted.
    pub fn is_empty(&self) -> bool {
        self.0.values().all(|k| !k.encrypts())
    }
}

/// The instance id of a key under `<data prefix><id>/`.
pub(crate) fn instance_of<'a>(names: &Names, key: &'a [u8]) -> Option<&'a str> {
    let rest = key.strip_prefix(names.data_prefix().as_bytes())?;
    let end = rest.iter().position(|b| *b == b'/')?;
    std::str::from_utf8(&rest[..end]).ok()
}

impl DataKeys {
    /// Data keys read by `client` from the records `names` locate, unsealed by `keychain`
    /// (`None`: the proxy encrypts nothing, and refuses requests to encrypted instances).
    pub fn new(client: Client, names: Names, keychain: Option<Keychain>) -> Self {
        DataKeys {
            client,
            names,
            keychain,
            cache: Arc::default(),
            changes: Arc::default(),
            following: Arc::default(),
            bytes: CryptoBytes::new(),
        }
    }

    /// The counters of bytes sealed and unsealed, to register.
    pub fn bytes(&self) -> CryptoBytes {
        self.bytes.clone()
    }

    pub fn names(&self) -> &Names {
        &self.names
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Arc<InstanceKeys>>> {
        self.cache.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// The data keys of the instances of `keys` (etcd keys of a request).
    /// (Owned keys: a borrowing iterator makes the services' futures not provably `Send`.)
    pub async fn resolve(&self, keys: Vec<Vec<u8>>) -> Result<Resolved, Status> {
        let mut resolved = Resolved::default();
        for key in &keys {
            let Some(instance) = instance_of(&self.names, key) else { continue };
            if resolved.0.contains_key(instance) {
                continue;
            }
            let keys = self.instance(instance).await?;
            resolved.0.insert(instance.to_owned(), keys);
        }
        Ok(resolved)
    }

    /// One instance's keys: from memory, else from its record.
    async fn instance(&self, instance: &str) -> Result<Arc<InstanceKeys>, Status> {
        if let Some(keys) = self.lock().get(instance) {
            return Ok(keys.clone());
        }
        let Ok(id) = InstanceId::parse(instance) else {
            // Not an id the broker makes: no record, nothing encrypted.
            return Ok(Arc::default());
        };
        let before = self.changes.load(Ordering::SeqCst);
        let record_key = self.names.instance_key(&id);
        let unavailable = |e: String| Status::unavailable(format!("{PREFIX}: the instance's record: {e}"));
        let call = etcd_broker::etcd::resend_on_auth_change(|| {
            let (mut client, key) = (self.client.clone(), record_key.clone());
            async move { client.get(key, None).await }
        });
        let found = tokio::time::timeout(policy::RECORD_TIMEOUT, call)
            .await
            .map_err(|_| unavailable(format!("etcd did not answer within {:?}", policy::RECORD_TIMEOUT)))?
            .map_err(|e| unavailable(e.to_string()))?;
        let data_keys = match found.kvs().first() {
            None => Vec::new(),
            Some(kv) => {
                serde_json::from_slice::<Instance>(kv.value())
                    .map_err(|_| Status::internal(format!("{PREFIX}: the instance's record is unreadable")))?
                    .data_keys
            }
        };
        let keys = Arc::new(self.unseal_keys(&record_key, &data_keys).await?);
        if self.following.load(Ordering::SeqCst) && self.changes.load(Ordering::SeqCst) == before {
            self.lock().insert(instance.to_owned(), keys.clone());
        }
        Ok(keys)
    }

    async fn unseal_keys(&self, record_key: &str, data_keys: &[DataKey]) -> Result<InstanceKeys, Status> {
        if data_keys.is_empty() {
            return Ok(InstanceKeys::default());
        }
        let Some(keychain) = &self.keychain else {
            return Err(Status::failed_precondition(format!(
                "{PREFIX}: the instance's values are encrypted, but this proxy has no keychain \
                 (the `[secrets]` of its --config)"
            )));
        };
        let mut keys = Vec::with_capacity(data_keys.len());
        for data_key in data_keys {
            keys.push((data_key.version, unseal_data_key(keychain, record_key, data_key).await?));
        }
        keys.sort_by_key(|(v, _)| *v);
        Ok(InstanceKeys { keys })
    }

    /// Forgets keys whose records change, for as long as the process runs; while it cannot
    /// watch, nothing is kept.
    pub async fn follow(self) {
        let prefix = self.names.instances_prefix();
        loop {
            let mut client = self.client.clone();
            match client.watch(prefix.as_str(), Some(WatchOptions::new().with_prefix())).await {
                Ok(mut watch) => {
                    // Anything read before the watch began may be stale.
                    self.changes.fetch_add(1, Ordering::SeqCst);
                    self.lock().clear();
                    self.following.store(true, Ordering::SeqCst);
                    while let Some(Ok(answer)) = watch.next().await {
                        if answer.canceled() {
                            break;
                        }
                        for event in answer.events() {
                            let Some(kv) = event.kv() else { continue };
                            self.changes.fetch_add(1, Ordering::SeqCst);
                            if let Some(instance) = kv.key().strip_prefix(prefix.as_bytes()) {
                                self.lock().remove(String::from_utf8_lossy(instance).as_ref());
                            }
                        }
                    }
                }
                Err(e) => {
                    tracing::warn!(error = %e, "cannot watch the broker's instance records; trying again")
                }
            }
            self.following.store(false, Ordering::SeqCst);
            self.lock().clear();
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    }
}

/// What a Compare on a value is refused with: etcd would compare ciphertext.
fn value_compare_refused() -> Status {
    Status::failed_precondition(format!(
        "{PREFIX}: a Txn may not compare the value of a key whose values are encrypted (etcd holds \
         only ciphertext); compare its version, create or mod revision, or lease instead"
    ))
}

/// What a Range sorted by value is refused with.
fn value_sort_refused() -> Status {
    Status::failed_precondition(format!(
        "{PREFIX}: a Range of encrypted values cannot be sorted by value (etcd holds only \
         ciphertext); sort by key, version or revision instead"
    ))
}

impl DataKeys {
    /// A Range's request checked: no sort by value over encrypted values.
    pub async fn check_range(&self, range: &RangeRequest) -> Result<(), Status> {
        if range.sort_target != range_request::SortTarget::Value as i32 {
            return Ok(());
        }
        let resolved = self.resolve(vec![range.key.clone()]).await?;
        match resolved.of(&self.names, &range.key) {
            Some(_) => Err(value_sort_refused()),
            None => Ok(()),
        }
    }

    /// A Put's value sealed when its key's instance encrypts.
    pub async fn seal_put(&self, put: &mut PutRequest) -> Result<(), Status> {
        let resolved = self.resolve(vec![put.key.clone()]).await?;
        let sealed = seal_put(&self.names, &resolved, put)?;
        self.bytes.encrypted.inc_by(sealed as u64);
        Ok(())
    }

    /// A Txn's puts sealed (nested Txns too); compares of encrypted values refused.
    pub async fn seal_txn(&self, txn: &mut TxnRequest) -> Result<(), Status> {
        let mut keys = Vec::new();
        txn_keys(txn, &mut keys);
        let resolved = self.resolve(keys).await?;
        let sealed = seal_txn(&self.names, &resolved, txn)?;
        self.bytes.encrypted.inc_by(sealed as u64);
        Ok(())
    }

    /// Unseals the values of `kvs` (empty values, of keys-only ranges, stay empty).
    pub async fn unseal_kvs(&self, mut kvs: Vec<&mut KeyValue>) -> Result<(), Status> {
        kvs.retain(|kv| !kv.value.is_empty());
        if kvs.is_empty() {
            return Ok(());
        }
        let keys: Vec<Vec<u8>> = kvs.iter().map(|kv| kv.key.clone()).collect();
        let resolved = self.resolve(keys).await?;
        if resolved.is_empty() {
            return Ok(());
        }
        for kv in kvs {
            if let Some(keys) = resolved.of(&self.names, &kv.key) {
                if kv.value.starts_with(MAGIC) {
                    kv.value = keys.unseal(&kv.key, &kv.value)?;
                    self.bytes.decrypted.inc_by(kv.value.len() as u64);
                }
            }
        }
        Ok(())
    }
}

/// Seals a put's value if its instance encrypts; how many clear bytes were sealed.
fn seal_put(names: &Names, resolved: &Resolved, put: &mut PutRequest) -> Result<usize, Status> {
    // ignore_value keeps the stored (sealed) value; its request carries none.
    match (resolved.of(names, &put.key), put.ignore_value) {
        (Some(keys), false) if keys.encrypts() => {
            let clear = put.value.len();
            put.value = keys.seal(&put.key, &put.value)?;
            Ok(clear)
        }
        _ => Ok(0),
    }
}

/// The keys of a Txn's puts and value compares, nested Txns included.
fn txn_keys(txn: &TxnRequest, keys: &mut Vec<Vec<u8>>) {
    for compare in &txn.compare {
        if compare.target == compare::CompareTarget::Value as i32 {
            keys.push(compare.key.clone());
        }
    }
    for op in txn.success.iter().chain(&txn.failure) {
        match &op.request {
            Some(request_op::Request::RequestPut(put)) => keys.push(put.key.clone()),
            Some(request_op::Request::RequestRange(range)) => keys.push(range.key.clone()),
            Some(request_op::Request::RequestTxn(nested)) => txn_keys(nested, keys),
            _ => {}
        }
    }
}

/// Seals a Txn's puts (see [`DataKeys::seal_txn`]); how many clear bytes were sealed.
fn seal_txn(names: &Names, resolved: &Resolved, txn: &mut TxnRequest) -> Result<usize, Status> {
    let mut sealed = 0;
    for compare in &txn.compare {
        if compare.target == compare::CompareTarget::Value as i32
            && resolved.of(names, &compare.key).is_some()
        {
            return Err(value_compare_refused());
        }
    }
    for op in txn.success.iter_mut().chain(txn.failure.iter_mut()) {
        match &mut op.request {
            Some(request_op::Request::RequestPut(put)) => sealed += seal_put(names, resolved, put)?,
            Some(request_op::Request::RequestRange(range))
                if range.sort_target == range_request::SortTarget::Value as i32
                    && resolved.of(names, &range.key).is_some() =>
            {
                return Err(value_sort_refused())
            }
            Some(request_op::Request::RequestTxn(nested)) => sealed += seal_txn(names, resolved, nested)?,
            _ => {}
        }
    }
    Ok(sealed)
}

/// Every key-value a Txn's response holds: ranges' kvs, puts' and deletes' previous ones,
/// nested Txns' too.
pub fn txn_response_kvs<'a>(response: &'a mut TxnResponse, kvs: &mut Vec<&'a mut KeyValue>) {
    for op in &mut response.responses {
        match &mut op.response {
            Some(response_op::Response::ResponseRange(range)) => kvs.extend(range.kvs.iter_mut()),
            Some(response_op::Response::ResponsePut(put)) => kvs.extend(put.prev_kv.as_mut()),
            Some(response_op::Response::ResponseDeleteRange(delete)) => {
                kvs.extend(delete.prev_kvs.iter_mut())
            }
            Some(response_op::Response::ResponseTxn(nested)) => txn_response_kvs(nested, kvs),
            None => {}
        }
    }
}

/// Every key-value of a watch response's events (the new and the previous one).
pub fn watch_response_kvs(response: &mut WatchResponse) -> Vec<&mut KeyValue> {
    let mut kvs = Vec::new();
    for event in &mut response.events {
        kvs.extend(event.kv.as_mut());
        kvs.extend(event.prev_kv.as_mut());
    }
    kvs
}

/// A data key of the instance record at `record_key`, unsealed by `keychain` (the broker's
/// keys, from the proxy's `[secrets]`): public so that a deployment's rendered keychain can be
/// tested against the broker's sealing. UNAVAILABLE when no key of the keychain unseals it
/// (e.g. sealed by a key the proxy was not given).
pub async fn unseal_data_key(
    keychain: &Keychain,
    record_key: &str,
    data_key: &DataKey,
) -> Result<Zeroizing<[u8; 32]>, Status> {
    let name = data_key_name(record_key, data_key.version);
    let bytes = etcd_broker::sealing::unseal_async(keychain, &name, &data_key.sealed)
        .await
        .map_err(|e| Status::unavailable(format!("{PREFIX}: the instance's data key: {e}")))?;
    let bytes = Zeroizing::new(bytes);
    let key: [u8; 32] = bytes[..]
        .try_into()
        .map_err(|_| Status::internal(format!("{PREFIX}: the instance's data key has the wrong length")))?;
    Ok(Zeroizing::new(key))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_seal_for_their_key_and_unseal_with_any_version() {
        let v1 = InstanceKeys::from_bytes([(1, [7u8; 32])]);
        let both = InstanceKeys::from_bytes([(2, [9u8; 32]), (1, [7u8; 32])]);
        let sealed = v1.seal(b"/k", b"clear text").unwrap();
        assert!(sealed.starts_with(MAGIC));
        assert!(!sealed.windows(10).any(|w| w == b"clear text"));
        assert_eq!(both.unseal(b"/k", &sealed).unwrap(), b"clear text");
        let newer = both.seal(b"/k", b"x").unwrap();
        assert_eq!(&newer[MAGIC.len()..HEADER], &2u32.to_be_bytes());
        let refused = v1.unseal(b"/k", &newer).unwrap_err();
        assert_eq!(refused.code(), tonic::Code::DataLoss);
        assert!(refused.message().contains("version 2"), "{}", refused.message());
        // Another key, an altered byte, a truncated value: refused, never garbage.
        assert!(v1.unseal(b"/other", &sealed).is_err());
        let mut altered = sealed.clone();
        *altered.last_mut().unwrap() ^= 1;
        assert!(v1.unseal(b"/k", &altered).is_err());
        assert!(v1.unseal(b"/k", &sealed[..HEADER + 3]).is_err());
        // Clear values pass through; nothing to seal with: clear.
        assert_eq!(v1.unseal(b"/k", b"plain").unwrap(), b"plain");
        assert_eq!(InstanceKeys::default().seal(b"/k", b"v").unwrap(), b"v");
    }

    #[test]
    fn keys_belong_to_the_instance_of_their_prefix() {
        let names = Names::new("/service_instances/", "/etcd-broker/");
        assert_eq!(instance_of(&names, b"/service_instances/abc/key"), Some("abc"));
        assert_eq!(instance_of(&names, b"/service_instances/abc/"), Some("abc"));
        assert_eq!(instance_of(&names, b"/service_instances/abc"), None);
        assert_eq!(instance_of(&names, b"/other/abc/key"), None);
    }
}

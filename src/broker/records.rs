//! The broker's own records, stored as JSON under the state prefix.
//!
//! A record is written *before* anything it describes exists and removed *after* everything it
//! describes is gone, so every etcd user or role the broker made is reachable from a record and
//! an interrupted operation can be finished (or undone) by a retry.

use serde::{de::DeserializeOwned, Deserialize, Serialize};

use crate::credential_store::Location;
use crate::osb::bind_parameters::BindAccess;
use crate::osb::model::JsonObject;
use crate::osb::plan_options::InstanceQuotas;
use crate::osb::BrokerError;
use crate::store::{Access, Permission};

/// Lifecycle of a record.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RecordState {
    /// Written; the etcd objects it describes may not all exist yet. Where every record starts.
    #[default]
    Creating,
    /// Everything exists.
    Ready,
    /// Being torn down; only a delete may touch it now.
    Deleting,
}

/// A service instance.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct InstanceRecord {
    pub instance_id: String,
    pub service_id: String,
    pub plan_id: String,
    /// Name of the etcd cluster holding the tenant data.
    pub cluster: String,
    pub organization_guid: String,
    pub space_guid: String,
    #[serde(default)]
    pub context: JsonObject,
    #[serde(default)]
    pub parameters: JsonObject,
    pub state: RecordState,
    /// Seconds since the Unix epoch.
    pub created_at: u64,
    pub updated_at: u64,
    /// The data keys of an instance of an encrypting plan (plan option `encryption`), which
    /// the tenant proxy encrypts the instance's values with: the newest seals new values, any
    /// unseals. Empty for other instances and in records written before encryption existed.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub data_keys: Vec<DataKey>,
    /// The plan's per-instance quotas, copied at provision and plan change: the tenant proxy
    /// enforces them from here (docs/proxy.md#quotas). Absent: no quota (also in records
    /// written before quotas existed).
    #[serde(default, skip_serializing_if = "InstanceQuotas::is_none")]
    pub quotas: InstanceQuotas,
}

/// One version of an instance's data key: 256 random bits sealed by the broker's keychain
/// (`sealing::seal`, with [`data_key_name`] authenticated, so that it unseals for this
/// instance and version only). Only the broker and the proxy, which hold the keychain, can
/// read it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DataKey {
    pub version: u32,
    pub sealed: String,
}

/// The record name a data key is sealed for: the instance record's etcd key and the version.
pub fn data_key_name(instance_key: &str, version: u32) -> String {
    format!("{instance_key}#data_key.v{version}")
}

/// How a value the tenant proxy sealed under an instance's data key starts: a NUL byte, which
/// text values do not hold, a name and the format's version; then the data key's version (u32,
/// big-endian). Here, not in the proxy, because the operators' `data-keys` commands read which
/// version seals each value without holding the keys.
pub const SEALED_VALUE_MAGIC: &[u8] = b"\0ebp\x01";

/// The data-key version a value is sealed with, `None` for a value that is not sealed (the
/// proxy passes those through in clear).
pub fn sealed_value_version(value: &[u8]) -> Option<u32> {
    let rest = value.strip_prefix(SEALED_VALUE_MAGIC)?;
    Some(u32::from_be_bytes(rest.get(..4)?.try_into().ok()?))
}

/// A service binding: one etcd user and role. `Default` for writing one field by field: the
/// optional fields absent, the state `creating`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct BindingRecord {
    pub instance_id: String,
    pub binding_id: String,
    pub service_id: String,
    pub plan_id: String,
    pub cluster: String,
    pub username: String,
    pub role: String,
    /// The binding's etcd password in clear, kept so GET binding and identical re-binds answer
    /// the same: records written with sealing off, or before sealing existed. A record holds
    /// this or `password_sealed`, never both.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub password: Option<String>,
    /// The password sealed for this record (`sealing::seal`, the record's etcd key
    /// authenticated). A field of its own, not the sealed text in `password`: a broker version
    /// that predates sealing then refuses the record as unreadable (500) instead of handing
    /// out the sealed text as the password.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub password_sealed: Option<String>,
    /// The keys the binding may reach: the instance's prefix, followed by the `key_prefix`
    /// bind parameter when there is one.
    pub prefix: String,
    /// What the role may do on `prefix` (the `access` bind parameter). Absent in records of
    /// read-write bindings, as in records written before the parameter existed.
    #[serde(default, skip_serializing_if = "is_read_write")]
    pub access: BindAccess,
    /// A certificate binding's client certificate (PEM; CN = `username`); public. Absent in
    /// password bindings and in records written before certificate bindings existed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub certificate: Option<String>,
    /// The certificate's private key (PEM) in clear: records written with sealing off. Like
    /// the password, a record holds this or `private_key_sealed`, never both.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub private_key: Option<String>,
    /// The private key sealed for this record (`sealing::seal` with the record's etcd key and
    /// [`PRIVATE_KEY_FIELD`] authenticated, so it does not unseal as the password).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub private_key_sealed: Option<String>,
    /// Where the binding's secrets live when its plan keeps them in a credential store
    /// (`credential_store = "openbao"`): written with the first record, before the secret, so
    /// that every secret the broker writes there is named by a record. Such a record holds no
    /// password, certificate or private key. Absent: the record holds them itself.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret_location: Option<Location>,
    #[serde(default)]
    pub app_guid: Option<String>,
    #[serde(default)]
    pub bind_resource: Option<JsonObject>,
    #[serde(default)]
    pub context: JsonObject,
    #[serde(default)]
    pub parameters: JsonObject,
    /// The binding this one rotated (OSB 2.17 `predecessor_binding_id`; it took that one's
    /// parameters). Part of the bind's identity: a repeated rotation answers 200.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub predecessor_binding_id: Option<String>,
    /// When an expiring binding's credentials stop being valid (seconds since the epoch);
    /// `None`: never. Its user is deleted once the config's grace has passed too.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<u64>,
    /// When the platform should renew an expiring binding (seconds since the epoch).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub renew_before: Option<u64>,
    /// When the binding's user was deleted for its expiry (seconds since the epoch); the
    /// record stays until the platform unbinds, and its user is never made again.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revoked_at: Option<u64>,
    pub state: RecordState,
    pub created_at: u64,
    pub updated_at: u64,
}

/// What the sealed private key's associated record name adds to the record's etcd key: a
/// sealed password copied into `private_key_sealed` (or the reverse) does not unseal.
pub const PRIVATE_KEY_FIELD: &str = "#private_key";

/// How a binding record holds its password: exactly one of the two fields.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StoredPassword<'a> {
    Clear(&'a str),
    Sealed(&'a str),
}

fn is_read_write(access: &BindAccess) -> bool {
    *access == BindAccess::ReadWrite
}

impl BindingRecord {
    /// The one permission the binding's role holds: `access` on exactly `prefix`.
    pub fn permission(&self) -> Permission {
        let access = match self.access {
            BindAccess::Read => Access::Read,
            BindAccess::ReadWrite => Access::ReadWrite,
        };
        Permission::prefix(access, &self.prefix)
    }

    /// The password as this record holds it, or why the record is broken (it names no secret).
    /// A certificate binding without a password holds none: `Ok(None)`.
    pub fn stored_password(&self) -> Result<Option<StoredPassword<'_>>, &'static str> {
        match (&self.password, &self.password_sealed) {
            (Some(clear), None) => Ok(Some(StoredPassword::Clear(clear))),
            (None, Some(sealed)) => Ok(Some(StoredPassword::Sealed(sealed))),
            (Some(_), Some(_)) => Err("holds both a clear and a sealed password"),
            (None, None) if self.certificate.is_some() || self.secret_location.is_some() => Ok(None),
            (None, None) => Err("holds no password"),
        }
    }

    /// The certificate's private key as this record holds it (same forms as the password);
    /// `Ok(None)` for a password binding.
    pub fn stored_private_key(&self) -> Result<Option<StoredPassword<'_>>, &'static str> {
        match (&self.certificate, &self.private_key, &self.private_key_sealed) {
            (None, None, None) => Ok(None),
            (Some(_), Some(clear), None) => Ok(Some(StoredPassword::Clear(clear))),
            (Some(_), None, Some(sealed)) => Ok(Some(StoredPassword::Sealed(sealed))),
            (Some(_), Some(_), Some(_)) => Err("holds both a clear and a sealed private key"),
            (Some(_), None, None) => Err("holds a certificate without its private key"),
            (None, _, _) => Err("holds a private key without its certificate"),
        }
    }

    /// Whether the binding's user must not exist because of its expiry: revoked already, or
    /// past its expiry and `grace` at `now` (the expiry leader may not have come by yet).
    pub fn expired(&self, now: u64, grace: u64) -> bool {
        self.revoked_at.is_some() || self.expires_at.is_some_and(|at| now >= at.saturating_add(grace))
    }

    /// The name of the key that seals this record's secrets, if it is sealed: the password's
    /// and the private key's are sealed together, by the same key.
    pub fn sealed_with(&self) -> Option<&str> {
        self.password_sealed
            .as_deref()
            .or(self.private_key_sealed.as_deref())
            .and_then(crate::sealing::sealed_with)
    }
}

/// A role whose binding is gone and whose user is deleted, queued for deletion: etcd's
/// RoleDelete reads every user (measured: 0.6 s at 100,000 users, holding etcd's write lock),
/// so unbind leaves it to a paced background task. A role without a user grants nothing.
///
/// It also names the binding's user, which the reaper deletes again before the role: a bind
/// still in flight when the unbind deleted the binding record may create that user after the
/// unbind deleted it, and if that bind then dies before its own clean-up, this entry is the
/// record from which the user is found.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RoleDeletion {
    pub role: String,
    /// The binding's user; `None` in entries for a role alone (queued by the deprovision
    /// sweep of brokers before bind markers) and in entries queued by brokers before this
    /// field existed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    /// Name of the etcd cluster that holds the role.
    pub cluster: String,
    /// Where the binding's secret lived in a credential store, deleted again with the user:
    /// a bind in flight during the unbind may have written it after the unbind deleted it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret_location: Option<Location>,
    /// Seconds since the Unix epoch.
    pub queued_at: u64,
}

/// A bind in flight (`names::bind_marker_key`), written in the transaction of the bind's first
/// record: the record alone cannot name the user the bind goes on to make, because an unbind
/// may delete the record meanwhile. Deprovision removes what its instance's markers name; a
/// bind deletes its marker in the swap that makes its record `ready`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BindMarker {
    /// Name of the etcd cluster the bind makes its user and role on (the instance's), so that
    /// reconcile finds them when the instance record is gone too.
    pub cluster: String,
    /// Seconds since the Unix epoch: a marker older than reconcile's threshold is no bind in
    /// flight any more.
    pub started_at: u64,
}

/// Serializes a record for etcd.
pub fn encode<T: Serialize>(record: &T) -> Vec<u8> {
    serde_json::to_vec(record).expect("records always serialize")
}

/// Parses a record read from etcd; a corrupt record is an internal error naming the key.
pub fn decode<T: DeserializeOwned>(key: &str, bytes: &[u8]) -> Result<T, BrokerError> {
    serde_json::from_slice(bytes)
        .map_err(|e| BrokerError::Internal(format!("the broker record at {key} is unreadable: {e}")))
}

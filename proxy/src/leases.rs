//! Who owns each lease. etcd checks no permission on a lease's keep-alive, time-to-live or
//! listing, and a tenant may attach its key to any lease it can name; so the proxy records, for
//! every lease granted through it, the user who granted it, and the firewall
//! ([`crate::firewall`]) lets only that user near it.
//!
//! The records live in etcd (`<state prefix>leases/<lease id, 16 hex digits>` -> JSON
//! `{"owner": user}`), written with the proxy's own credentials: they survive a restart and
//! every proxy in front of the cluster reads the same ones. They are not attached to the lease
//! itself: etcd refuses to revoke a lease to a user who may not write every key attached to
//! it, so the record would stop its owner from revoking its own lease. Instead a record is
//! deleted when its lease is revoked through the proxy or found expired, and every proxy
//! sweeps the records of leases etcd no longer lists (expired unseen, revoked directly) every
//! `--lease-sweep-seconds` ([`LeaseOwners::sweep`]): records are read before the leases are
//! listed, and each is deleted only if unchanged since, so a lease granted meanwhile (its
//! record is written after the grant) keeps its record. Several proxies sweeping at once
//! delete each record once; the others' compares fail.
//!
//! A lease without a record (granted directly on etcd, or by a proxy that crashed before
//! writing the record) belongs to nobody: tenants are refused it. Every check reads etcd
//! (linearizable): a lease id can be granted again after it expired, by another tenant through
//! another proxy, so a cached owner could be stale.

use std::collections::HashSet;

use std::time::Duration;

use etcd_client::{Client, Compare, CompareOp, GetOptions, Txn, TxnOp};
use serde::{Deserialize, Serialize};

use crate::policy;

/// The lease owners' records in etcd.
#[derive(Clone)]
pub struct LeaseOwners {
    client: Client,
    /// `<state prefix>leases/`.
    prefix: String,
}

/// A lease's record.
#[derive(Debug, Serialize, Deserialize)]
struct Record {
    owner: String,
}

/// The records could not be read or written: the request that needed them is refused
/// (UNAVAILABLE), never let through unchecked.
#[derive(Debug, thiserror::Error)]
pub enum RecordError {
    #[error("the proxy's records of lease owners are unavailable: {0}")]
    Etcd(#[from] etcd_client::Error),
    #[error("the proxy's records of lease owners are unavailable: etcd did not answer within {0:?}")]
    Timeout(std::time::Duration),
    #[error("the proxy's record of lease {0:016x} is not readable")]
    Unreadable(i64),
}

impl LeaseOwners {
    /// Records under `<state_prefix>leases/`, read and written by `client` (the proxy's own
    /// user).
    pub fn new(client: Client, state_prefix: &str) -> Self {
        LeaseOwners { client, prefix: format!("{state_prefix}leases/") }
    }

    /// The key of a lease's record.
    pub fn key(&self, lease: i64) -> String {
        format!("{}{:016x}", self.prefix, lease as u64)
    }

    /// Records that `owner` granted `lease` (replacing the record of an earlier lease with the
    /// same id, which etcd would not have granted while that one lived).
    pub async fn record(&self, lease: i64, owner: &str) -> Result<(), RecordError> {
        let value = serde_json::to_string(&Record { owner: owner.to_owned() }).expect("a string serializes");
        let key = self.key(lease);
        self.bounded(|mut c| {
            let (key, value) = (key.clone(), value.clone());
            async move { c.put(key, value, None).await.map(|_| ()) }
        })
        .await
    }

    /// Who granted `lease` through a proxy, if any proxy recorded it.
    pub async fn owner(&self, lease: i64) -> Result<Option<String>, RecordError> {
        let key = self.key(lease);
        let found = self
            .bounded(|mut c| {
                let key = key.clone();
                async move { c.get(key, None).await }
            })
            .await?;
        match found.kvs().first() {
            None => Ok(None),
            Some(kv) => serde_json::from_slice::<Record>(kv.value())
                .map(|r| Some(r.owner))
                .map_err(|_| RecordError::Unreadable(lease)),
        }
    }

    /// Forgets the record of a lease that was revoked or has expired.
    pub async fn forget(&self, lease: i64) -> Result<(), RecordError> {
        let key = self.key(lease);
        self.bounded(|mut c| {
            let key = key.clone();
            async move { c.delete(key, None).await.map(|_| ()) }
        })
        .await
    }

    /// The leases recorded as `owner`'s (one range over the records; unreadable ones belong to
    /// nobody).
    pub async fn owned_by(&self, owner: &str) -> Result<HashSet<i64>, RecordError> {
        let prefix = self.prefix.clone();
        let found = self
            .bounded(|mut c| {
                let prefix = prefix.clone();
                async move { c.get(prefix, Some(GetOptions::new().with_prefix())).await }
            })
            .await?;
        let mut owned = HashSet::new();
        for kv in found.kvs() {
            let Ok(record) = serde_json::from_slice::<Record>(kv.value()) else { continue };
            let id =
                kv.key().strip_prefix(self.prefix.as_bytes()).and_then(|hex| std::str::from_utf8(hex).ok());
            if let (true, Some(Ok(id))) = (record.owner == owner, id.map(|hex| u64::from_str_radix(hex, 16)))
            {
                owned.insert(id as i64);
            }
        }
        Ok(owned)
    }

    /// Deletes the records of leases etcd no longer lists; how many it deleted.
    pub async fn sweep(&self) -> Result<usize, RecordError> {
        // Records first: a record read here was written after its grant, so a lease missing
        // from the listing that follows has ended (an id granted again since rewrote the
        // record, which the delete's compare then protects).
        let prefix = self.prefix.clone();
        let records = self
            .bounded(|mut c| {
                let prefix = prefix.clone();
                async move { c.get(prefix, Some(GetOptions::new().with_prefix().with_keys_only())).await }
            })
            .await?;
        if records.kvs().is_empty() {
            return Ok(0);
        }
        let live: HashSet<i64> = self
            .bounded(|mut c| async move { c.leases().await })
            .await?
            .leases()
            .iter()
            .map(|l| l.id())
            .collect();
        let mut swept = 0;
        for kv in records.kvs() {
            let id =
                kv.key().strip_prefix(self.prefix.as_bytes()).and_then(|hex| std::str::from_utf8(hex).ok());
            let Some(Ok(id)) = id.map(|hex| u64::from_str_radix(hex, 16)) else { continue };
            if live.contains(&(id as i64)) {
                continue;
            }
            let (key, revision) = (kv.key().to_vec(), kv.mod_revision());
            let deleted = self
                .bounded(|mut c| {
                    let txn = Txn::new()
                        .when([Compare::mod_revision(key.clone(), CompareOp::Equal, revision)])
                        .and_then([TxnOp::delete(key.clone(), None)]);
                    async move { c.txn(txn).await }
                })
                .await?;
            swept += usize::from(deleted.succeeded());
        }
        Ok(swept)
    }

    /// [`LeaseOwners::sweep`] every `every`, for as long as the process runs.
    pub async fn sweep_every(self, every: Duration) {
        loop {
            tokio::time::sleep(every).await;
            match self.sweep().await {
                Ok(0) => {}
                Ok(swept) => tracing::debug!(swept, "deleted the records of leases that ended"),
                Err(e) => {
                    tracing::warn!(error = %e, "cannot sweep the records of ended leases; trying again later")
                }
            }
        }
    }

    /// One request of the proxy's client ([`policy::own_request`]).
    async fn bounded<T, F, Fut>(&self, op: F) -> Result<T, RecordError>
    where
        F: Fn(Client) -> Fut,
        Fut: std::future::Future<Output = Result<T, etcd_client::Error>>,
    {
        policy::own_request(&self.client, op, RecordError::Timeout).await
    }
}

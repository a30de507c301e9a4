//! The queue of roles to delete after unbinds and deprovisions.
//!
//! etcd's RoleDelete reads and rewrites every user to drop the role from them, holding etcd's
//! write lock meanwhile: 0.6 s per role at 100,000 users (etcd 3.5), so 64 unbinds at once
//! stalled the whole cluster for 38 s. Unbind therefore deletes the binding's user, which ends
//! the binding's access at once (its role is granted to that user only), and queues the role in
//! the same transaction that deletes the binding record. A background task (`role_reaper.rs`)
//! deletes queued roles one at a time, paced, and any broker instance may do it.
//!
//! The queue entry is the role's record: it is written before the binding record goes and
//! removed after the role is gone, so every role stays reachable from a record. It names the
//! binding's user too, and the reaper deletes that user again before the role: a bind in
//! flight while its binding was unbound may have created the user after the unbind deleted it.
//! For the same reason it names where the binding's secret lived in a credential store, and
//! the reaper deletes that secret again too.

use crate::osb::{BrokerError, BrokerResult};
use crate::store::{Versioned, Write};

use super::records::{decode, encode, BindingRecord, RoleDeletion};
use super::{unavailable, EtcdBroker};

/// What one step through the queue did.
#[derive(Debug)]
pub enum QueueStep {
    /// No queued role after the given key.
    Empty,
    /// The role of the entry at `key` is deleted, and so is the entry; `stall` is how long
    /// etcd took for the RoleDelete itself, the O(users) part the reaper's pacing bounds.
    Deleted { key: String, stall: std::time::Duration },
    /// The entry at `key` could not be handled; it stays queued for the next pass.
    Failed { key: String, error: BrokerError },
}

impl EtcdBroker {
    /// Signalled each time this broker queues a role, so the reaper starts at once instead of
    /// at its next poll.
    pub fn role_queued(&self) -> &tokio::sync::Notify {
        &self.role_queued
    }

    /// The write that queues the role of `record` (part of the transaction deleting the record).
    pub(super) fn queue_role(&self, record: &BindingRecord) -> Write {
        let entry = RoleDeletion {
            role: record.role.clone(),
            user: Some(record.username.clone()),
            cluster: record.cluster.clone(),
            secret_location: record.secret_location.clone(),
            queued_at: self.now(),
        };
        Write::Put(self.names().role_deletion_key(&record.role), encode(&entry))
    }

    /// The write that queues the user and role of a binding no record names, by their name
    /// (the same for both): deprovision's sweep of a bind marker.
    pub(super) fn queue_name(&self, name: &str, cluster: &str) -> Write {
        let entry = RoleDeletion {
            role: name.to_owned(),
            user: Some(name.to_owned()),
            cluster: cluster.to_owned(),
            secret_location: None,
            queued_at: self.now(),
        };
        Write::Put(self.names().role_deletion_key(name), encode(&entry))
    }

    /// Deletes the role of the first queue entry after the key `after` (from the start without
    /// it), then the entry. An entry that fails is left for the next pass, so one broken entry
    /// (an unknown cluster, an unreachable etcd) does not hold the others back.
    pub async fn delete_next_queued_role(&self, after: Option<&str>) -> BrokerResult<QueueStep> {
        let state = &*self.setup.state;
        let prefix = self.names().role_deletions_prefix();
        let next = state.next_after(&prefix, after).await.map_err(|e| self.state_failed(e))?;
        let Some((key, found)) = next else {
            return Ok(QueueStep::Empty);
        };
        Ok(match self.delete_queued(&key, &found).await {
            Ok(stall) => QueueStep::Deleted { key, stall },
            Err(error) => QueueStep::Failed { key, error },
        })
    }

    /// For a bind whose role name is still queued (a binding id used again after its unbind):
    /// deletes that role now, so the reaper cannot delete the new binding's role later.
    pub(super) async fn finish_queued_deletion(&self, role: &str) -> BrokerResult<()> {
        let key = self.names().role_deletion_key(role);
        match self.setup.state.get(&key).await.map_err(|e| self.state_failed(e))? {
            None => Ok(()),
            Some(found) => self.delete_queued(&key, &found).await.map(drop),
        }
    }

    /// Roles waiting in the queue, for the gauge: one count request.
    pub async fn queued_roles(&self) -> BrokerResult<u64> {
        let prefix = self.names().role_deletions_prefix();
        self.setup.state.count(&prefix).await.map_err(|e| self.state_failed(e))
    }

    /// Deletes the entry's user, its role, then the entry; how long the RoleDelete took.
    pub(super) async fn delete_queued(
        &self,
        key: &str,
        found: &Versioned,
    ) -> BrokerResult<std::time::Duration> {
        let entry: RoleDeletion = decode(key, &found.value)?;
        let store = &*self.cluster(&entry.cluster)?.store;
        let fail = |e| unavailable(&entry.cluster, e);
        // The user first: one that a bind created after its unbind would otherwise be left
        // with no record (see `RoleDeletion`).
        if let Some(user) = &entry.user {
            store.delete_user(user).await.map_err(fail)?;
        }
        // Its secret likewise, which such a bind may have written in the credential store.
        self.delete_secret(entry.secret_location.as_ref()).await?;
        let started = tokio::time::Instant::now();
        store.delete_role(&entry.role).await.map_err(fail)?;
        let stall = started.elapsed();
        // Removed only as read: an entry queued again meanwhile is the next pass's work.
        self.swap(key, found.mod_revision, &[Write::Delete(key.to_owned())]).await?;
        tracing::debug!(role = %entry.role, "deleted queued role");
        Ok(stall)
    }
}

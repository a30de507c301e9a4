//! The storage contract the broker needs from an etcd cluster.
//!
//! Owned by the broker logic (`broker/`), implemented for real by `etcd::EtcdStore` and, in unit
//! tests only, by an in-memory fake and a fault injector. Every method is idempotent: calling it
//! again after a failure or a crash converges to the same state, which is what makes the broker's
//! multi-step operations safe to retry.

use async_trait::async_trait;

#[cfg(test)]
pub mod faulty;
#[cfg(test)]
pub mod memory;
pub mod metered;

/// A value with the revision it was last modified at, for compare-and-swap.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Versioned {
    pub value: Vec<u8>,
    pub mod_revision: i64,
}

/// A precondition of [`Store::commit`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Guard {
    /// The key does not exist.
    Absent(String),
    /// The key exists and was last modified at this revision.
    Revision(String, i64),
}

/// A key that came or went under a followed prefix ([`Store::follow_keys`]); a put of a key
/// that exists already is no change: what is followed is which keys exist, for counts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeyChange {
    Created(String),
    Deleted(String),
}

/// Where [`Store::follow_keys`] sends each revision's key changes.
pub type KeyChangeSink = tokio::sync::mpsc::UnboundedSender<Vec<KeyChange>>;

/// A change made by [`Store::commit`] when every guard holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Write {
    Put(String, Vec<u8>),
    Delete(String),
}

/// What an etcd role permits: read, write or both.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Access {
    Read,
    Write,
    ReadWrite,
}

/// One permission of an etcd role: `access` on the keys from `key` up to `range_end`
/// (exclusive; empty: the key alone). Bytes as etcd holds them, so that a permission found by
/// [`Store::role_permissions`] can be revoked exactly.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Permission {
    pub access: Access,
    pub key: Vec<u8>,
    pub range_end: Vec<u8>,
}

impl Permission {
    /// `access` on exactly the keys starting with `prefix`: what a binding's role holds.
    pub fn prefix(access: Access, prefix: &str) -> Self {
        Self { access, key: prefix.as_bytes().to_vec(), range_end: prefix_end(prefix.as_bytes()) }
    }

    /// Read-write on exactly the keys starting with `prefix` (a binding without parameters).
    pub fn read_write_prefix(prefix: &str) -> Self {
        Self::prefix(Access::ReadWrite, prefix)
    }
}

impl std::fmt::Display for Permission {
    /// `readwrite prefix /service_instances/i1/`, or the range when it is not a prefix.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let access = match self.access {
            Access::Read => "read",
            Access::Write => "write",
            Access::ReadWrite => "readwrite",
        };
        let key = String::from_utf8_lossy(&self.key);
        if self.range_end.is_empty() {
            write!(f, "{access} key {key}")
        } else if self.range_end == prefix_end(&self.key) {
            write!(f, "{access} prefix {key}")
        } else {
            write!(f, "{access} range [{key}, {})", String::from_utf8_lossy(&self.range_end))
        }
    }
}

/// The smallest key after every key that starts with `prefix` (etcd's range end of a prefix).
pub fn prefix_end(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    vec![0]
}

/// Why a store call failed. Messages never contain passwords.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StoreError {
    /// etcd could not be reached, timed out, or is not healthy.
    #[error("etcd is unavailable: {0}")]
    Unavailable(String),
    /// etcd refused the broker's own credentials or permissions.
    #[error("etcd refused the broker's credentials: {0}")]
    Unauthorized(String),
    /// A user or role the call needs was deleted concurrently (by an unbind or deprovision).
    #[error("changed concurrently: {0}")]
    Conflict(String),
    /// Anything else etcd answered with.
    #[error("etcd request failed: {0}")]
    Failed(String),
}

/// One etcd cluster as the broker uses it: keys with compare-and-swap, plus users and roles.
#[async_trait]
pub trait Store: Send + Sync + 'static {
    /// Reads one key.
    async fn get(&self, key: &str) -> Result<Option<Versioned>, StoreError>;

    /// Reads one key as the answering member has applied it, without confirming with the
    /// leader that nothing newer was committed (etcd's serializable read): no raft round, so it
    /// does not wait behind writes in flight, but it may miss the newest ones. Only for a first
    /// look whose every use the following commit guards with a compare, and whose surprises
    /// ("absent", "being deleted") are read again with [`Store::get`].
    async fn get_local(&self, key: &str) -> Result<Option<Versioned>, StoreError> {
        self.get(key).await
    }

    /// [`Store::get_local`] of each of `keys`, answered in order: one request for all of them
    /// where the store can (etcd: a read-only Txn of serializable Ranges, which the member
    /// serves from its own state as it does a Range), so a first look of several keys costs
    /// the store and the broker one request, not one per key.
    async fn get_local_all(&self, keys: &[&str]) -> Result<Vec<Option<Versioned>>, StoreError> {
        let mut found = Vec::with_capacity(keys.len());
        for key in keys {
            found.push(self.get_local(key).await?);
        }
        Ok(found)
    }

    /// Reads every key starting with `prefix`, in key order.
    async fn list(&self, prefix: &str) -> Result<Vec<(String, Versioned)>, StoreError>;

    /// The first key starting with `prefix` that sorts after `after` (from the start without
    /// it): a queue is walked one entry at a time.
    async fn next_after(
        &self,
        prefix: &str,
        after: Option<&str>,
    ) -> Result<Option<(String, Versioned)>, StoreError> {
        // The smallest key after `after` is `after` followed by a zero byte.
        let from = after.map_or_else(|| prefix.to_owned(), |after| format!("{after}\0"));
        Ok(self.scan(prefix, &from, 1, false).await?.into_iter().next())
    }

    /// Up to `limit` keys starting with `prefix`, from the key `from` on (inclusive), in key
    /// order, with their values (empty when `keys_only`): a walk over many records in pages, or
    /// over the tenant prefixes one top-level name at a time (`reconcile`). A page costs about
    /// what it returns, not what follows it (the real store's ranges have bounded ends), so a
    /// walk in pages is O(keys).
    async fn scan(
        &self,
        prefix: &str,
        from: &str,
        limit: usize,
        keys_only: bool,
    ) -> Result<Vec<(String, Versioned)>, StoreError>;

    /// Counts the keys starting with `prefix` without reading them.
    async fn count(&self, prefix: &str) -> Result<u64, StoreError>;

    /// Counts the keys starting with each of `prefixes`, all at one revision of the store,
    /// and returns that revision too: where [`Store::follow_keys`] takes over, so that counts
    /// kept up to date from the changes stay exact. Each count is O(keys) in the store, like
    /// [`Store::count`]; this is for a count taken once and then followed.
    async fn count_at_one_revision(&self, prefixes: &[String]) -> Result<(Vec<u64>, i64), StoreError>;

    /// Sends `sink` each batch of keys created or deleted under `prefix` after `revision`
    /// (one batch per revision, in revision order) until `sink` closes, which ends the
    /// follow with `Ok`. An error ends it when the store cannot say what changed any more (a
    /// lost connection, the history after `revision` compacted away): the follower counts
    /// again ([`Store::count_at_one_revision`]) and follows from the new count's revision.
    async fn follow_keys(&self, prefix: &str, revision: i64, sink: KeyChangeSink) -> Result<(), StoreError>;

    /// Applies `writes` atomically if every guard holds; returns the revision of the write
    /// (the new `mod_revision` of every key it put), or `None` if a guard failed.
    async fn commit(&self, guards: &[Guard], writes: &[Write]) -> Result<Option<i64>, StoreError>;

    /// Deletes every key starting with `prefix` (the prefix must end with '/').
    async fn delete_prefix(&self, prefix: &str) -> Result<(), StoreError>;

    /// Makes sure `role` exists and grants `permission` (a binding's: [`Permission::prefix`]).
    async fn ensure_role(&self, role: &str, permission: &Permission) -> Result<(), StoreError>;

    /// Makes sure `user` exists with `password` (resetting it if the user exists) and has `role`.
    async fn ensure_user(&self, user: &str, password: &str, role: &str) -> Result<(), StoreError>;

    /// Makes sure `user` exists *without a password* and has `role`: a certificate binding's
    /// user, which authenticates with a client certificate whose common name is its name, so
    /// etcd hashes nothing (etcd 3.4.23+ and 3.5 honour UserAdd's `no_password`). A server that
    /// predates that option ignores it and hashes `unused_password` instead, which the caller
    /// draws at random, never stores and never hands out. A user that exists is kept as it is.
    async fn ensure_certificate_user(
        &self,
        user: &str,
        unused_password: &str,
        role: &str,
    ) -> Result<(), StoreError>;

    /// A binding's role with `permission`, and its `user` holding it: [`Store::ensure_role`],
    /// then [`Store::ensure_user`] with `password`, or without one ([`Store::ensure_certificate_user`]
    /// with `unused_password`). The real store adds the role and the user at once, then grants
    /// both at once: two rounds of etcd writes instead of four, which is most of a certificate
    /// bind's time (no bcrypt to wait for).
    async fn ensure_binding_user(
        &self,
        role: &str,
        permission: &Permission,
        user: &str,
        password: Option<&str>,
        unused_password: &str,
    ) -> Result<(), StoreError> {
        self.ensure_role(role, permission).await?;
        match password {
            Some(password) => self.ensure_user(user, password, role).await,
            None => self.ensure_certificate_user(user, unused_password, role).await,
        }
    }

    /// Deletes `user`; a missing user is fine.
    async fn delete_user(&self, user: &str) -> Result<(), StoreError>;

    /// Deletes `role`; a missing role is fine.
    async fn delete_role(&self, role: &str) -> Result<(), StoreError>;

    /// The users whose names start with `prefix`: how deprovision finds users that no record
    /// names (a bind that crashed after an unbind removed its record). etcd lists every user
    /// and the names are filtered here, so this is for rare operations only.
    async fn list_users(&self, prefix: &str) -> Result<Vec<String>, StoreError>;

    /// The roles whose names start with `prefix`, like [`Store::list_users`].
    async fn list_roles(&self, prefix: &str) -> Result<Vec<String>, StoreError>;

    /// The roles granted to `user`; `None` when the user does not exist (`reconcile` compares
    /// them with the binding record).
    async fn user_roles(&self, user: &str) -> Result<Option<Vec<String>>, StoreError>;

    /// The permissions of `role`; `None` when the role does not exist.
    async fn role_permissions(&self, role: &str) -> Result<Option<Vec<Permission>>, StoreError>;

    /// Takes `role` from `user`; a missing user or grant is fine.
    async fn revoke_role(&self, user: &str, role: &str) -> Result<(), StoreError>;

    /// Takes `permission` (as [`Store::role_permissions`] listed it) from `role`; a missing role
    /// or permission is fine.
    async fn revoke_permission(&self, role: &str, permission: &Permission) -> Result<(), StoreError>;

    /// The alarms the cluster has raised (etcd's NOSPACE, CORRUPT), each named with its member:
    /// a cluster that answers reads may still refuse every write, which readiness reports.
    async fn alarms(&self) -> Result<Vec<String>, StoreError> {
        Ok(Vec::new())
    }

    /// A lease that etcd ends `ttl` after its last renewal, taking the keys attached to it
    /// along: how a broker holds a task's leadership only for as long as it lives
    /// (`broker/leader.rs`). Returns the lease's id.
    async fn grant_lease(&self, ttl: std::time::Duration) -> Result<i64, StoreError>;

    /// Renews `lease` for another full ttl; `false` when it has already ended (its keys are
    /// gone).
    async fn renew_lease(&self, lease: i64) -> Result<bool, StoreError>;

    /// Ends `lease` now, deleting its keys; an ended lease is fine.
    async fn revoke_lease(&self, lease: i64) -> Result<(), StoreError>;

    /// Puts `key` = `value` attached to `lease` if `key` does not exist; `true` when it did
    /// not and now does.
    async fn put_if_absent_leased(&self, key: &str, value: &[u8], lease: i64) -> Result<bool, StoreError>;
}

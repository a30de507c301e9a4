//! An in-memory [`Store`] for unit tests: keys with revisions, users and roles.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Mutex;

use async_trait::async_trait;

use super::{Guard, KeyChange, KeyChangeSink, Permission, Store, StoreError, Versioned, Write};

/// What the fake holds; public so tests can assert on the final state.
#[derive(Debug, Default, Clone)]
pub struct MemoryState {
    pub revision: i64,
    pub keys: BTreeMap<String, Versioned>,
    /// role -> its permissions
    pub roles: BTreeMap<String, BTreeSet<Permission>>,
    /// user -> (password, roles)
    pub users: BTreeMap<String, (String, BTreeSet<String>)>,
    /// Live leases -> the keys attached to them. They never end by themselves here: a test
    /// ends one with [`MemoryStore::end_lease`], as etcd would once its ttl passed unrenewed.
    pub leases: BTreeMap<i64, BTreeSet<String>>,
    /// The last lease id granted.
    pub last_lease: i64,
    /// Every key created or deleted through the store's calls, with its revision, for
    /// [`Store::follow_keys`] (etcd's history, never compacted here).
    pub changes: Vec<(i64, KeyChange)>,
}

impl MemoryState {
    /// The keys starting with `prefix`, in key order.
    fn under<'a>(&'a self, prefix: &'a str) -> impl Iterator<Item = (&'a String, &'a Versioned)> + 'a {
        self.keys.range(prefix.to_owned()..).take_while(move |(k, _)| k.starts_with(prefix))
    }

    /// Puts `key` at `revision`, noting it in [`Self::changes`] when it is new.
    fn put(&mut self, key: &str, value: Vec<u8>, revision: i64) {
        let created = self.keys.insert(key.to_owned(), Versioned { value, mod_revision: revision }).is_none();
        if created {
            self.changes.push((revision, KeyChange::Created(key.to_owned())));
        }
    }

    /// Deletes `key` at `revision`, noting it in [`Self::changes`] when it existed.
    fn delete(&mut self, key: &str, revision: i64) {
        if self.keys.remove(key).is_some() {
            self.changes.push((revision, KeyChange::Deleted(key.to_owned())));
        }
    }
}

/// The fake store.
#[derive(Debug, Default)]
pub struct MemoryStore {
    pub state: Mutex<MemoryState>,
    /// What [`Store::get_local`] answers from while set: the keys as a lagging member would
    /// still have them ([`MemoryStore::lag`]); `None`: the current keys, like `get`.
    pub lagging: Mutex<Option<BTreeMap<String, Versioned>>>,
    /// How long each RoleDelete takes (on tokio's clock): etcd's, which the role reaper paces.
    pub role_delete_takes: Mutex<std::time::Duration>,
    /// Woken at every change of the keys, for [`Store::follow_keys`].
    changed: tokio::sync::Notify,
}

impl MemoryStore {
    /// A snapshot of everything, for assertions.
    pub fn snapshot(&self) -> MemoryState {
        self.state.lock().unwrap().clone()
    }

    /// From now on `get_local` answers with the keys as they are now, whatever is written
    /// later: a member that stopped applying the log.
    pub fn lag(&self) {
        let keys = self.state.lock().unwrap().keys.clone();
        *self.lagging.lock().unwrap() = Some(keys);
    }

    /// Ends `lease` as etcd does when its ttl passes without a renewal: its keys go.
    pub fn end_lease(&self, lease: i64) {
        let mut s = self.state.lock().unwrap();
        s.revision += 1;
        let revision = s.revision;
        for key in s.leases.remove(&lease).unwrap_or_default() {
            s.delete(&key, revision);
        }
        drop(s);
        self.changed.notify_waiters();
    }
}

#[async_trait]
impl Store for MemoryStore {
    async fn get(&self, key: &str) -> Result<Option<Versioned>, StoreError> {
        Ok(self.state.lock().unwrap().keys.get(key).cloned())
    }
    async fn get_local(&self, key: &str) -> Result<Option<Versioned>, StoreError> {
        match &*self.lagging.lock().unwrap() {
            Some(keys) => Ok(keys.get(key).cloned()),
            None => Ok(self.state.lock().unwrap().keys.get(key).cloned()),
        }
    }

    async fn list(&self, prefix: &str) -> Result<Vec<(String, Versioned)>, StoreError> {
        let s = self.state.lock().unwrap();
        Ok(s.under(prefix).map(|(k, v)| (k.clone(), v.clone())).collect())
    }

    async fn scan(
        &self,
        prefix: &str,
        from: &str,
        limit: usize,
        keys_only: bool,
    ) -> Result<Vec<(String, Versioned)>, StoreError> {
        let s = self.state.lock().unwrap();
        let from = if from < prefix { prefix } else { from };
        Ok(s.keys
            .range(from.to_owned()..)
            .take_while(|(k, _)| k.starts_with(prefix))
            .take(limit)
            .map(|(k, v)| {
                let value = if keys_only { Vec::new() } else { v.value.clone() };
                (k.clone(), Versioned { value, mod_revision: v.mod_revision })
            })
            .collect())
    }

    async fn count(&self, prefix: &str) -> Result<u64, StoreError> {
        Ok(self.list(prefix).await?.len() as u64)
    }

    async fn commit(&self, guards: &[Guard], writes: &[Write]) -> Result<Option<i64>, StoreError> {
        let mut s = self.state.lock().unwrap();
        let holds = guards.iter().all(|g| match g {
            Guard::Absent(k) => !s.keys.contains_key(k),
            Guard::Revision(k, r) => s.keys.get(k).map(|v| v.mod_revision) == Some(*r),
        });
        if !holds {
            return Ok(None);
        }
        s.revision += 1;
        let rev = s.revision;
        for w in writes {
            match w {
                Write::Put(k, v) => s.put(k, v.clone(), rev),
                Write::Delete(k) => s.delete(k, rev),
            }
        }
        drop(s);
        self.changed.notify_waiters();
        Ok(Some(rev))
    }

    async fn count_at_one_revision(&self, prefixes: &[String]) -> Result<(Vec<u64>, i64), StoreError> {
        let s = self.state.lock().unwrap();
        Ok((prefixes.iter().map(|p| s.under(p).count() as u64).collect(), s.revision))
    }

    async fn follow_keys(&self, prefix: &str, revision: i64, sink: KeyChangeSink) -> Result<(), StoreError> {
        let mut seen = revision;
        loop {
            // Registered before looking, so a change made between the look and the wait wakes it.
            let changed = self.changed.notified();
            let batches = {
                let s = self.state.lock().unwrap();
                let mut batches: Vec<(i64, Vec<KeyChange>)> = Vec::new();
                for (at, change) in s.changes.iter().filter(|(at, _)| *at > seen) {
                    let (KeyChange::Created(key) | KeyChange::Deleted(key)) = change;
                    if !key.starts_with(prefix) {
                        continue;
                    }
                    match batches.last_mut() {
                        Some((last, batch)) if last == at => batch.push(change.clone()),
                        _ => batches.push((*at, vec![change.clone()])),
                    }
                }
                seen = s.revision;
                batches
            };
            for (_, batch) in batches {
                if sink.send(batch).is_err() {
                    return Ok(());
                }
            }
            tokio::select! {
                () = changed => {}
                () = sink.closed() => return Ok(()),
            }
        }
    }

    async fn delete_prefix(&self, prefix: &str) -> Result<(), StoreError> {
        let mut s = self.state.lock().unwrap();
        s.revision += 1;
        let revision = s.revision;
        let doomed: Vec<String> = s.under(prefix).map(|(k, _)| k.clone()).collect();
        for key in doomed {
            s.delete(&key, revision);
        }
        drop(s);
        self.changed.notify_waiters();
        Ok(())
    }

    async fn ensure_role(&self, role: &str, permission: &Permission) -> Result<(), StoreError> {
        let mut s = self.state.lock().unwrap();
        s.roles.entry(role.to_owned()).or_default().insert(permission.clone());
        Ok(())
    }

    async fn ensure_user(&self, user: &str, password: &str, role: &str) -> Result<(), StoreError> {
        let mut s = self.state.lock().unwrap();
        if !s.roles.contains_key(role) {
            return Err(StoreError::Conflict("role name not found".into()));
        }
        let entry = s.users.entry(user.to_owned()).or_default();
        entry.0 = password.to_owned();
        entry.1.insert(role.to_owned());
        Ok(())
    }

    /// The user's password is held as the empty string: none.
    async fn ensure_certificate_user(&self, user: &str, _unused: &str, role: &str) -> Result<(), StoreError> {
        let mut s = self.state.lock().unwrap();
        if !s.roles.contains_key(role) {
            return Err(StoreError::Conflict("role name not found".into()));
        }
        s.users.entry(user.to_owned()).or_default().1.insert(role.to_owned());
        Ok(())
    }

    async fn delete_user(&self, user: &str) -> Result<(), StoreError> {
        self.state.lock().unwrap().users.remove(user);
        Ok(())
    }

    async fn delete_role(&self, role: &str) -> Result<(), StoreError> {
        let takes = *self.role_delete_takes.lock().unwrap();
        if !takes.is_zero() {
            tokio::time::sleep(takes).await;
        }
        let mut s = self.state.lock().unwrap();
        s.roles.remove(role);
        for (_, roles) in s.users.values_mut() {
            roles.remove(role);
        }
        Ok(())
    }

    async fn list_users(&self, prefix: &str) -> Result<Vec<String>, StoreError> {
        let s = self.state.lock().unwrap();
        Ok(s.users.keys().filter(|u| u.starts_with(prefix)).cloned().collect())
    }

    async fn list_roles(&self, prefix: &str) -> Result<Vec<String>, StoreError> {
        let s = self.state.lock().unwrap();
        Ok(s.roles.keys().filter(|r| r.starts_with(prefix)).cloned().collect())
    }

    async fn user_roles(&self, user: &str) -> Result<Option<Vec<String>>, StoreError> {
        let s = self.state.lock().unwrap();
        Ok(s.users.get(user).map(|(_, roles)| roles.iter().cloned().collect()))
    }

    async fn role_permissions(&self, role: &str) -> Result<Option<Vec<Permission>>, StoreError> {
        let s = self.state.lock().unwrap();
        Ok(s.roles.get(role).map(|permissions| permissions.iter().cloned().collect()))
    }

    async fn revoke_role(&self, user: &str, role: &str) -> Result<(), StoreError> {
        if let Some((_, roles)) = self.state.lock().unwrap().users.get_mut(user) {
            roles.remove(role);
        }
        Ok(())
    }

    async fn revoke_permission(&self, role: &str, permission: &Permission) -> Result<(), StoreError> {
        if let Some(permissions) = self.state.lock().unwrap().roles.get_mut(role) {
            permissions.remove(permission);
        }
        Ok(())
    }

    async fn grant_lease(&self, _ttl: std::time::Duration) -> Result<i64, StoreError> {
        let mut s = self.state.lock().unwrap();
        s.last_lease += 1;
        let lease = s.last_lease;
        s.leases.insert(lease, BTreeSet::new());
        Ok(lease)
    }

    async fn renew_lease(&self, lease: i64) -> Result<bool, StoreError> {
        Ok(self.state.lock().unwrap().leases.contains_key(&lease))
    }

    async fn revoke_lease(&self, lease: i64) -> Result<(), StoreError> {
        self.end_lease(lease);
        Ok(())
    }

    async fn put_if_absent_leased(&self, key: &str, value: &[u8], lease: i64) -> Result<bool, StoreError> {
        let mut s = self.state.lock().unwrap();
        if s.keys.contains_key(key) {
            return Ok(false);
        }
        let Some(attached) = s.leases.get_mut(&lease) else {
            return Err(StoreError::Failed("etcdserver: requested lease not found".into()));
        };
        attached.insert(key.to_owned());
        s.revision += 1;
        let mod_revision = s.revision;
        s.put(key, value.to_vec(), mod_revision);
        drop(s);
        self.changed.notify_waiters();
        Ok(true)
    }
}

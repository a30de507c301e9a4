//! A [`Store`] wrapper that fails one chosen call, for crash-safety tests.
//!
//! Call number `n` (counting every method from 0) fails with `Unavailable`, either *before* the
//! inner store runs it (the request never arrived) or *after* (it ran but the answer was lost), so
//! tests can simulate a crash between any two steps of an operation. Made [`FaultyStore::dying`],
//! that call never returns instead, like a broker killed with SIGKILL (the test drops the
//! operation), and [`FaultyStore::pausing_before`] holds the caller before another call until
//! the test lets it go on, so another operation can run in between.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use async_trait::async_trait;
use tokio::sync::Notify;

use super::{Guard, KeyChangeSink, Permission, Store, StoreError, Versioned, Write};

/// Whether the failing call reaches the inner store.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailMode {
    Before,
    After,
    /// A commit that applied answers as if its guards had failed: what a write sent again
    /// through another member sees when its first copy applied before the write fence moved
    /// (`src/etcd/fence.rs`). Other calls run as usual (sent again, they find their work done).
    AppliedAsLost,
}

/// The fault injector.
pub struct FaultyStore {
    inner: Arc<dyn Store>,
    calls: AtomicUsize,
    fail_at: Option<usize>,
    mode: FailMode,
    /// The failing call never returns (a killed process) instead of failing.
    dies: bool,
    pause_before: Option<usize>,
    /// Signalled when the caller reaches `pause_before`, and when it dies.
    pub paused: Notify,
    pub died: Notify,
    /// Lets a paused caller go on.
    pub resume: Notify,
}

impl FaultyStore {
    /// Fails call number `fail_at` (none if `None`).
    pub fn new(inner: Arc<dyn Store>, fail_at: Option<usize>, mode: FailMode) -> Self {
        Self {
            inner,
            calls: AtomicUsize::new(0),
            fail_at,
            mode,
            dies: false,
            pause_before: None,
            paused: Notify::new(),
            died: Notify::new(),
            resume: Notify::new(),
        }
    }

    /// The failing call never returns; `died` is signalled instead.
    pub fn dying(mut self) -> Self {
        self.dies = true;
        self
    }

    /// Holds the caller before call number `n` until `resume`; `paused` says it got there.
    pub fn pausing_before(mut self, n: usize) -> Self {
        self.pause_before = Some(n);
        self
    }

    /// Ends the failing call: an error, or never (see [`FaultyStore::dying`]).
    async fn fail<T>(&self, why: String) -> Result<T, StoreError> {
        if self.dies {
            self.died.notify_one();
            std::future::pending::<()>().await;
        }
        Err(StoreError::Unavailable(why))
    }

    /// How many calls were made so far.
    pub fn calls(&self) -> usize {
        self.calls.load(Ordering::SeqCst)
    }

    async fn run<T, F>(&self, call: F) -> Result<T, StoreError>
    where
        F: std::future::Future<Output = Result<T, StoreError>>,
    {
        let n = self.calls.fetch_add(1, Ordering::SeqCst);
        if self.pause_before == Some(n) {
            self.paused.notify_one();
            self.resume.notified().await;
        }
        let fail = self.fail_at == Some(n) && self.mode != FailMode::AppliedAsLost;
        if fail && self.mode == FailMode::Before {
            return self.fail(format!("injected fault before call {n}")).await;
        }
        let result = call.await;
        if fail {
            return self.fail(format!("injected fault after call {n}")).await;
        }
        result
    }
}

#[async_trait]
impl Store for FaultyStore {
    async fn get(&self, key: &str) -> Result<Option<Versioned>, StoreError> {
        self.run(self.inner.get(key)).await
    }
    async fn list(&self, prefix: &str) -> Result<Vec<(String, Versioned)>, StoreError> {
        self.run(self.inner.list(prefix)).await
    }
    async fn scan(
        &self,
        prefix: &str,
        from: &str,
        limit: usize,
        keys_only: bool,
    ) -> Result<Vec<(String, Versioned)>, StoreError> {
        self.run(self.inner.scan(prefix, from, limit, keys_only)).await
    }
    async fn count(&self, prefix: &str) -> Result<u64, StoreError> {
        self.run(self.inner.count(prefix)).await
    }
    async fn count_at_one_revision(&self, prefixes: &[String]) -> Result<(Vec<u64>, i64), StoreError> {
        self.run(self.inner.count_at_one_revision(prefixes)).await
    }
    async fn follow_keys(&self, prefix: &str, revision: i64, sink: KeyChangeSink) -> Result<(), StoreError> {
        self.run(self.inner.follow_keys(prefix, revision, sink)).await
    }
    async fn commit(&self, guards: &[Guard], writes: &[Write]) -> Result<Option<i64>, StoreError> {
        let n = self.calls.load(Ordering::SeqCst);
        let committed = self.run(self.inner.commit(guards, writes)).await;
        if self.mode == FailMode::AppliedAsLost && self.fail_at == Some(n) {
            return committed.map(|_| None);
        }
        committed
    }
    async fn delete_prefix(&self, prefix: &str) -> Result<(), StoreError> {
        self.run(self.inner.delete_prefix(prefix)).await
    }
    async fn ensure_role(&self, role: &str, permission: &Permission) -> Result<(), StoreError> {
        self.run(self.inner.ensure_role(role, permission)).await
    }
    async fn ensure_user(&self, user: &str, password: &str, role: &str) -> Result<(), StoreError> {
        self.run(self.inner.ensure_user(user, password, role)).await
    }
    async fn ensure_certificate_user(&self, user: &str, unused: &str, role: &str) -> Result<(), StoreError> {
        self.run(self.inner.ensure_certificate_user(user, unused, role)).await
    }
    async fn delete_user(&self, user: &str) -> Result<(), StoreError> {
        self.run(self.inner.delete_user(user)).await
    }
    async fn delete_role(&self, role: &str) -> Result<(), StoreError> {
        self.run(self.inner.delete_role(role)).await
    }
    async fn list_users(&self, prefix: &str) -> Result<Vec<String>, StoreError> {
        self.run(self.inner.list_users(prefix)).await
    }
    async fn list_roles(&self, prefix: &str) -> Result<Vec<String>, StoreError> {
        self.run(self.inner.list_roles(prefix)).await
    }
    async fn user_roles(&self, user: &str) -> Result<Option<Vec<String>>, StoreError> {
        self.run(self.inner.user_roles(user)).await
    }
    async fn role_permissions(&self, role: &str) -> Result<Option<Vec<Permission>>, StoreError> {
        self.run(self.inner.role_permissions(role)).await
    }
    async fn revoke_role(&self, user: &str, role: &str) -> Result<(), StoreError> {
        self.run(self.inner.revoke_role(user, role)).await
    }
    async fn revoke_permission(&self, role: &str, permission: &Permission) -> Result<(), StoreError> {
        self.run(self.inner.revoke_permission(role, permission)).await
    }

    async fn grant_lease(&self, ttl: std::time::Duration) -> Result<i64, StoreError> {
        self.run(self.inner.grant_lease(ttl)).await
    }

    async fn renew_lease(&self, lease: i64) -> Result<bool, StoreError> {
        self.run(self.inner.renew_lease(lease)).await
    }

    async fn revoke_lease(&self, lease: i64) -> Result<(), StoreError> {
        self.run(self.inner.revoke_lease(lease)).await
    }

    async fn put_if_absent_leased(&self, key: &str, value: &[u8], lease: i64) -> Result<bool, StoreError> {
        self.run(self.inner.put_if_absent_leased(key, value, lease)).await
    }
}

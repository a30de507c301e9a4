//! A [`Store`] decorator that times every etcd call and counts failures, per cluster and call
//! kind, for `etcd_broker_etcd_*` metrics.

use std::sync::Arc;
use std::time::Instant;

use async_trait::async_trait;

use super::{Guard, KeyChangeSink, Permission, Store, StoreError, Versioned, Write};
use crate::metrics::Metrics;

/// The `call` label values: one per [`Store`] method.
const CALLS: [&str; 19] = [
    "get",
    "get_local",
    "list",
    "next",
    "scan",
    "count",
    "txn",
    "delete_prefix",
    "ensure_role",
    "ensure_user",
    "ensure_certificate_user",
    "delete_user",
    "delete_role",
    "list_users",
    "list_roles",
    "user_roles",
    "role_permissions",
    "revoke_role",
    "revoke_permission",
];
/// The `kind` label values: one per [`StoreError`] variant.
const KINDS: [&str; 4] = ["unavailable", "unauthorized", "conflict", "failed"];

/// Wraps one cluster's store.
pub struct MeteredStore {
    inner: Arc<dyn Store>,
    metrics: Arc<Metrics>,
    cluster: String,
}

impl MeteredStore {
    /// Instruments `inner`, labelling its metrics with `cluster`.
    pub fn new(inner: Arc<dyn Store>, metrics: Arc<Metrics>, cluster: &str) -> Self {
        // Export every error series at zero from the start, so rate() and alerts see the
        // first failure as an increase rather than as a new series.
        for call in CALLS {
            for kind in KINDS {
                metrics.etcd_errors.with_label_values(&[cluster, call, kind]);
            }
        }
        Self { inner, metrics, cluster: cluster.to_owned() }
    }

    async fn observe<T>(
        &self,
        call: &str,
        future: impl std::future::Future<Output = Result<T, StoreError>>,
    ) -> Result<T, StoreError> {
        let started = Instant::now();
        let result = future.await;
        let labels = [self.cluster.as_str(), call];
        self.metrics.etcd_duration.with_label_values(&labels).observe(started.elapsed().as_secs_f64());
        if let Err(e) = &result {
            let kind = match e {
                StoreError::Unavailable(_) => KINDS[0],
                StoreError::Unauthorized(_) => KINDS[1],
                StoreError::Conflict(_) => KINDS[2],
                StoreError::Failed(_) => KINDS[3],
            };
            self.metrics.etcd_errors.with_label_values(&[self.cluster.as_str(), call, kind]).inc();
        }
        result
    }
}

#[async_trait]
impl Store for MeteredStore {
    async fn get(&self, key: &str) -> Result<Option<Versioned>, StoreError> {
        self.observe("get", self.inner.get(key)).await
    }
    async fn get_local(&self, key: &str) -> Result<Option<Versioned>, StoreError> {
        self.observe("get_local", self.inner.get_local(key)).await
    }
    /// Counted as one `get_local` call: one request, as the bench's floor replays it.
    async fn get_local_all(&self, keys: &[&str]) -> Result<Vec<Option<Versioned>>, StoreError> {
        self.observe("get_local", self.inner.get_local_all(keys)).await
    }
    async fn list(&self, prefix: &str) -> Result<Vec<(String, Versioned)>, StoreError> {
        self.observe("list", self.inner.list(prefix)).await
    }
    async fn scan(
        &self,
        prefix: &str,
        from: &str,
        limit: usize,
        keys_only: bool,
    ) -> Result<Vec<(String, Versioned)>, StoreError> {
        self.observe("scan", self.inner.scan(prefix, from, limit, keys_only)).await
    }
    async fn count(&self, prefix: &str) -> Result<u64, StoreError> {
        self.observe("count", self.inner.count(prefix)).await
    }
    async fn count_at_one_revision(&self, prefixes: &[String]) -> Result<(Vec<u64>, i64), StoreError> {
        self.observe("count_at_one_revision", self.inner.count_at_one_revision(prefixes)).await
    }
    /// Not timed: a follow lasts as long as its follower wants it.
    async fn follow_keys(&self, prefix: &str, revision: i64, sink: KeyChangeSink) -> Result<(), StoreError> {
        self.inner.follow_keys(prefix, revision, sink).await
    }
    async fn commit(&self, guards: &[Guard], writes: &[Write]) -> Result<Option<i64>, StoreError> {
        self.observe("txn", self.inner.commit(guards, writes)).await
    }
    async fn delete_prefix(&self, prefix: &str) -> Result<(), StoreError> {
        self.observe("delete_prefix", self.inner.delete_prefix(prefix)).await
    }
    async fn ensure_role(&self, role: &str, permission: &Permission) -> Result<(), StoreError> {
        self.observe("ensure_role", self.inner.ensure_role(role, permission)).await
    }
    async fn ensure_user(&self, user: &str, password: &str, role: &str) -> Result<(), StoreError> {
        self.observe("ensure_user", self.inner.ensure_user(user, password, role)).await
    }
    async fn ensure_certificate_user(&self, user: &str, unused: &str, role: &str) -> Result<(), StoreError> {
        self.observe("ensure_certificate_user", self.inner.ensure_certificate_user(user, unused, role)).await
    }
    async fn delete_user(&self, user: &str) -> Result<(), StoreError> {
        self.observe("delete_user", self.inner.delete_user(user)).await
    }
    async fn delete_role(&self, role: &str) -> Result<(), StoreError> {
        self.observe("delete_role", self.inner.delete_role(role)).await
    }
    async fn list_users(&self, prefix: &str) -> Result<Vec<String>, StoreError> {
        self.observe("list_users", self.inner.list_users(prefix)).await
    }
    async fn list_roles(&self, prefix: &str) -> Result<Vec<String>, StoreError> {
        self.observe("list_roles", self.inner.list_roles(prefix)).await
    }
    async fn user_roles(&self, user: &str) -> Result<Option<Vec<String>>, StoreError> {
        self.observe("user_roles", self.inner.user_roles(user)).await
    }
    async fn role_permissions(&self, role: &str) -> Result<Option<Vec<Permission>>, StoreError> {
        self.observe("role_permissions", self.inner.role_permissions(role)).await
    }
    async fn revoke_role(&self, user: &str, role: &str) -> Result<(), StoreError> {
        self.observe("revoke_role", self.inner.revoke_role(user, role)).await
    }
    async fn revoke_permission(&self, role: &str, permission: &Permission) -> Result<(), StoreError> {
        self.observe("revoke_permission", self.inner.revoke_permission(role, permission)).await
    }

    async fn ensure_binding_user(
        &self,
        role: &str,
        permission: &Permission,
        user: &str,
        password: Option<&str>,
        unused_password: &str,
    ) -> Result<(), StoreError> {
        let call = self.inner.ensure_binding_user(role, permission, user, password, unused_password);
        // Two kinds: etcd hashes a password with bcrypt, a certificate user costs it none.
        let kind = if password.is_some() { "ensure_binding_user" } else { "ensure_binding_certificate_user" };
        self.observe(kind, call).await
    }

    async fn alarms(&self) -> Result<Vec<String>, StoreError> {
        self.observe("alarms", self.inner.alarms()).await
    }

    async fn grant_lease(&self, ttl: std::time::Duration) -> Result<i64, StoreError> {
        self.observe("grant_lease", self.inner.grant_lease(ttl)).await
    }

    async fn renew_lease(&self, lease: i64) -> Result<bool, StoreError> {
        self.observe("renew_lease", self.inner.renew_lease(lease)).await
    }

    async fn revoke_lease(&self, lease: i64) -> Result<(), StoreError> {
        self.observe("revoke_lease", self.inner.revoke_lease(lease)).await
    }

    async fn put_if_absent_leased(&self, key: &str, value: &[u8], lease: i64) -> Result<bool, StoreError> {
        self.observe("put_if_absent_leased", self.inner.put_if_absent_leased(key, value, lease)).await
    }
}

//! Expiring bindings (plan option `binding_ttl_seconds`): once a binding is past its
//! `expires_at` and the config's grace, its etcd user is deleted, so its credentials stop
//! working; its record stays, marked `revoked_at`, until the platform unbinds.
//!
//! Due bindings are found through the expiry index (`Names::expiry_index_key`: one empty key
//! per unrevoked expiring binding, under its expiry time, written and deleted in the record's
//! own transactions), read oldest first up to the current time, so a pass costs one read per
//! due binding whatever the number of bindings. Each revocation deletes the user, then marks
//! the record and deletes its index entry in one compare-and-swap: a crash in between leaves
//! the entry, and the next pass deletes the (missing) user again and marks the record. A
//! record changed meanwhile (an unbind) is read again.
//!
//! The passes run on one broker at a time ([`super::leader`]); two at once would only repeat
//! each other's idempotent steps.

use std::sync::Arc;

use super::leader::{self, TaskSettings};
use super::records::{BindingRecord, RecordState};
use super::{lost_race, unavailable, EtcdBroker, CAS_ATTEMPTS};
use crate::osb::{BindingId, BrokerResult, InstanceId};
use crate::store::{Guard, Write};

/// Index entries read per request.
const PAGE: usize = 100;

/// The name of the expiry task's leader key.
pub const TASK: &str = "binding-expiry";

/// What one pass did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Pass {
    /// Bindings whose user was deleted.
    pub revoked: u64,
    /// Due bindings still being created: looked at again by the next pass.
    pub waiting: u64,
}

/// What became of one due index entry.
enum Outcome {
    Revoked,
    Waiting,
    /// Nothing was left to do: the record is gone, being deleted, or already revoked.
    Settled,
}

/// What the expiry task tells the broker's metrics, without this module knowing about them.
pub struct Observer {
    /// This broker became the leader (`true`) or stopped being it.
    pub leading: Box<dyn Fn(bool) + Send + Sync>,
    /// Bindings revoked by a pass.
    pub revoked: Box<dyn Fn(u64) + Send + Sync>,
    /// A pass failed (it is tried again after the interval).
    pub failed: Box<dyn Fn() + Send + Sync>,
}

/// Runs forever: campaigns for the expiry task's leadership and, while leading, revokes due
/// bindings every `settings.every`.
pub async fn run(broker: Arc<EtcdBroker>, settings: TaskSettings, observer: Observer) {
    let leadership = broker.leadership(TASK, &settings);
    let Observer { leading, revoked, failed } = observer;
    let pass = || async {
        match broker.revoke_expired_bindings().await {
            Ok(pass) => revoked(pass.revoked),
            Err(e) => {
                failed();
                tracing::warn!(error = %e, "revoking expired bindings failed; trying again later");
            }
        }
    };
    leadership.run(settings.every, pass, &leader::Observer { leading }).await;
}

impl EtcdBroker {
    /// One pass: every binding past its expiry and the grace loses its user.
    pub async fn revoke_expired_bindings(&self) -> BrokerResult<Pass> {
        let now = self.now();
        // Due: expires_at + grace <= now.
        let Some(due_until) = now.checked_sub(self.setup.expiry_grace) else {
            return Ok(Pass::default());
        };
        let state = &*self.setup.state;
        let prefix = self.names().expiry_index_prefix();
        let mut from = prefix.clone();
        let mut pass = Pass::default();
        loop {
            let page = state.scan(&prefix, &from, PAGE, true).await.map_err(|e| self.state_failed(e))?;
            for (entry, _) in &page {
                let Some((at, instance, binding)) = self.names().parse_expiry_index_key(entry) else {
                    continue;
                };
                if at > due_until {
                    return Ok(pass);
                }
                let (Ok(instance), Ok(binding)) = (InstanceId::parse(instance), BindingId::parse(binding))
                else {
                    continue;
                };
                match self.revoke_binding(entry, at, &instance, &binding, now).await? {
                    Outcome::Revoked => pass.revoked += 1,
                    Outcome::Waiting => pass.waiting += 1,
                    Outcome::Settled => {}
                }
            }
            match page.last() {
                Some((last, _)) if page.len() == PAGE => from = format!("{last}\0"),
                _ => return Ok(pass),
            }
        }
    }

    /// Revokes the binding a due index `entry` names (for expiry `at`).
    async fn revoke_binding(
        &self,
        entry: &str,
        at: u64,
        instance: &InstanceId,
        binding: &BindingId,
        now: u64,
    ) -> BrokerResult<Outcome> {
        let key = self.names().binding_key(instance, binding);
        let state = &*self.setup.state;
        for _ in 0..CAS_ATTEMPTS {
            let Some((record, revision)) = self.read::<BindingRecord>(state, &key).await? else {
                // No broker leaves an entry without its record; delete it unless one appears.
                let guard = [Guard::Absent(key.clone())];
                state
                    .commit(&guard, &[Write::Delete(entry.to_owned())])
                    .await
                    .map_err(|e| self.state_failed(e))?;
                return Ok(Outcome::Settled);
            };
            if record.expires_at != Some(at) || record.revoked_at.is_some() {
                // An entry the record no longer names.
                if self.swap(&key, revision, &[Write::Delete(entry.to_owned())]).await?.is_some() {
                    return Ok(Outcome::Settled);
                }
                continue;
            }
            match record.state {
                RecordState::Creating => return Ok(Outcome::Waiting),
                // The unbind deletes the entry with the record.
                RecordState::Deleting => return Ok(Outcome::Settled),
                RecordState::Ready => {}
            }
            let store = &*self.cluster(&record.cluster)?.store;
            store.delete_user(&record.username).await.map_err(|e| unavailable(&record.cluster, e))?;
            let mut revoked = record;
            revoked.revoked_at = Some(now);
            revoked.updated_at = now;
            // The record's writes no longer include the entry (it is revoked): delete it.
            let mut writes = self.record_writes(&key, &mut revoked).await?;
            writes.push(Write::Delete(entry.to_owned()));
            if self.swap(&key, revision, &writes).await?.is_some() {
                tracing::info!(
                    instance_id = %instance,
                    binding_id = %binding,
                    "revoked an expired service binding: its user is deleted, its record kept until unbind"
                );
                return Ok(Outcome::Revoked);
            }
        }
        Err(lost_race("the service binding"))
    }
}

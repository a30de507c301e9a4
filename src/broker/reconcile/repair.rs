//! `reconcile --repair`: each repair is a step the broker already takes, guarded the way the
//! broker guards it, so a repair never undoes a concurrent change and a crash at any point
//! leaves a state that the broker (or the next run) finishes:
//!
//! - a user or role that no record names: queued for deletion in one transaction that holds
//!   only while no binding record of that name exists and none is queued (a bind cannot start
//!   while the name is queued: its first transaction guards on it), then deleted by the role
//!   reaper's own step (user, role, then the entry by compare-and-swap). A crash in between
//!   leaves a queue entry, which any broker's reaper finishes;
//! - a ready binding whose user or role is missing, or holds grants the broker never makes:
//!   the foreign grants revoked (never granted by the broker, so never needed), then the bind's
//!   steps 2 to 4 with the recorded password, ending in a compare-and-swap on the revision the
//!   check read: a concurrent unbind wins, and the bind's own clean-up applies;
//! - a binding stuck in `deleting`: the unbind finished (what the platform asked for);
//! - a stale queued role deletion: the reaper's step;
//! - a stale bind marker: with no binding record, its name queued and deleted as an orphan
//!   user's (above: a bind of that id cannot start meanwhile, so it never loses its user); with
//!   a ready record, which names the user, nothing but the marker; then the marker deleted by
//!   compare-and-swap on the revision the check read (a bind that wrote it again keeps it).
//!   Not deprovision's sweep, which deletes the user before queueing it: safe only while the
//!   instance is `deleting`;
//! - an instance record without its per-plan or per-organization index entry (made before
//!   that index existed): the entry put in one transaction that holds only while the record
//!   is unchanged and the entry absent, rewriting the key of the limit that counts the index
//!   (when configured) so that a create that counted before it compares that key and counts
//!   again, as two creates do;
//! - orphan data (`--delete-orphan-data` only): the instance id claimed by an instance record
//!   in `deleting` written only while none exists (provision guards on its absence, and
//!   answers 422 while it is there), the tenant prefix deleted, then the claim by
//!   compare-and-swap. A crash leaves the claim, which the next run recognises and finishes;
//!   a platform's deprovision of that id would finish it too.

use crate::osb::{BrokerError, InstanceId};
use crate::store::{Guard, Versioned, Write};

use super::super::bindings::Attempt;
use super::super::records::{encode, BindingRecord, InstanceRecord, RecordState, RoleDeletion};
use super::super::{unavailable, EtcdBroker};
use super::{Finding, Kind, Repair, Repaired, Target};

/// The `context` of the claim record: what tells it from a platform's instance.
const CLAIM_CONTEXT: &str = "etcd_broker_reconcile";

/// Whether an instance record is reconcile's claim on orphan data.
pub(crate) fn is_claim(record: &InstanceRecord) -> bool {
    record.state == RecordState::Deleting && record.context.contains_key(CLAIM_CONTEXT)
}

impl EtcdBroker {
    /// Repairs one finding if `repair` allows it; `None` for findings never repaired.
    pub(super) async fn repair(&self, finding: &Finding, repair: Repair) -> Option<Repaired> {
        let result = match &finding.target {
            Target::None => return None,
            Target::Data { .. } if repair != Repair::SafeAndOrphanData => {
                return Some(Repaired::Skipped("tenant data: give --delete-orphan-data to delete it".into()))
            }
            Target::Name(name) => self.delete_unnamed(&finding.cluster, name).await,
            Target::Binding { key, revision } => self.rebind(key, *revision).await,
            Target::Deleting { key } => self.remove_binding(key, None).await.map(|()| Repaired::Repaired),
            Target::Queued { key } => self.reap(key).await,
            Target::Marker { key, revision } => {
                self.sweep_stale_marker(&finding.cluster, key, *revision).await
            }
            Target::Data { instance, claim } => {
                self.delete_orphan_data(&finding.cluster, instance, *claim).await
            }
            Target::Index { record, revision, entry, limit } => {
                self.add_index_entry(record, *revision, entry, limit.as_deref()).await
            }
        };
        let outcome = result.unwrap_or_else(|e| Repaired::Failed(e.to_string()));
        match &outcome {
            Repaired::Repaired => {
                tracing::info!(kind = finding.kind.name(), subject = %finding.subject, "reconcile repaired")
            }
            other => {
                tracing::warn!(kind = finding.kind.name(), subject = %finding.subject, ?other, "reconcile did not repair")
            }
        }
        Some(outcome)
    }

    /// Queues `name` (user and role) for deletion while no record names it, then deletes it.
    async fn delete_unnamed(&self, cluster: &str, name: &str) -> Result<Repaired, BrokerError> {
        let Some((instance, binding)) = self.names().parse_name(name) else {
            return Ok(Repaired::Skipped("not a name the broker makes".into()));
        };
        let record = self.names().binding_key(&instance, &binding);
        let queued = self.names().role_deletion_key(name);
        let entry = RoleDeletion {
            role: name.to_owned(),
            user: Some(name.to_owned()),
            cluster: cluster.to_owned(),
            secret_location: None,
            queued_at: self.now(),
        };
        let value = encode(&entry);
        let guards = [Guard::Absent(record), Guard::Absent(queued.clone())];
        let written = self
            .setup
            .state
            .commit(&guards, &[Write::Put(queued.clone(), value.clone())])
            .await
            .map_err(|e| self.state_failed(e))?;
        let Some(mod_revision) = written else {
            return Ok(Repaired::Skipped("a binding record or queued deletion names it now".into()));
        };
        self.role_queued.notify_one();
        self.delete_queued(&queued, &Versioned { value, mod_revision }).await?;
        Ok(Repaired::Repaired)
    }

    /// Removes what the stale bind marker at `key` (read at `revision`) names, then the marker.
    async fn sweep_stale_marker(
        &self,
        cluster: &str,
        key: &str,
        revision: i64,
    ) -> Result<Repaired, BrokerError> {
        let Some((instance, binding)) = self.names().parse_bind_marker_key(key) else {
            return Ok(Repaired::Skipped("the marker's key names no binding".into()));
        };
        let state = &*self.setup.state;
        let record = self.names().binding_key(&instance, &binding);
        match self.read::<BindingRecord>(state, &record).await? {
            Some((record, _)) if record.state != RecordState::Ready => {
                return Ok(Repaired::Skipped(
                    "a binding record in creating or deleting names its user now; finish that first".into(),
                ))
            }
            // The record names the user: the marker is all there is to remove.
            Some(_) => {}
            // Repaired, or skipped because a record or queue entry names the name now.
            None => match self.delete_unnamed(cluster, &self.names().user(&instance, &binding)).await? {
                Repaired::Failed(why) => return Ok(Repaired::Failed(why)),
                Repaired::Repaired | Repaired::Skipped(_) => {}
            },
        }
        let guards = [Guard::Revision(key.to_owned(), revision)];
        let deleted = state
            .commit(&guards, &[Write::Delete(key.to_owned())])
            .await
            .map_err(|e| self.state_failed(e))?;
        Ok(match deleted {
            Some(_) => Repaired::Repaired,
            None => Repaired::Skipped("a bind of that id wrote the marker again; run reconcile again".into()),
        })
    }

    /// Revokes what the broker never grants, then runs the bind's steps 2 to 4 again.
    async fn rebind(&self, key: &str, revision: i64) -> Result<Repaired, BrokerError> {
        let Some((record, now)) = self.read::<BindingRecord>(&*self.setup.state, key).await? else {
            return Ok(Repaired::Skipped("the binding was deleted meanwhile".into()));
        };
        if now != revision || record.state != RecordState::Ready {
            return Ok(Repaired::Skipped("the binding changed meanwhile; run reconcile again".into()));
        }
        let store = &*self.cluster(&record.cluster)?.store;
        let fail = |e| unavailable(&record.cluster, e);
        if let Some(roles) = store.user_roles(&record.username).await.map_err(fail)? {
            for role in roles.iter().filter(|r| **r != record.role) {
                store.revoke_role(&record.username, role).await.map_err(fail)?;
            }
        }
        let expected = record.permission();
        if let Some(permissions) = store.role_permissions(&record.role).await.map_err(fail)? {
            for permission in permissions.iter().filter(|p| **p != expected) {
                store.revoke_permission(&record.role, permission).await.map_err(fail)?;
            }
        }
        match self.complete_binding(key, record, revision).await? {
            Attempt::Done(_) => Ok(Repaired::Repaired),
            Attempt::Retry => {
                Ok(Repaired::Skipped("the binding changed meanwhile; run reconcile again".into()))
            }
        }
    }

    /// Puts the index `entry` of the instance record at `record` while the record is still at
    /// `revision` and the entry absent, and rewrites the `limit` key that counts the index.
    async fn add_index_entry(
        &self,
        record: &str,
        revision: i64,
        entry: &str,
        limit: Option<&str>,
    ) -> Result<Repaired, BrokerError> {
        let guards = [Guard::Revision(record.to_owned(), revision), Guard::Absent(entry.to_owned())];
        let mut writes = vec![Write::Put(entry.to_owned(), Vec::new())];
        writes.extend(limit.map(|key| Write::Put(key.to_owned(), Vec::new())));
        let written = self.setup.state.commit(&guards, &writes).await.map_err(|e| self.state_failed(e))?;
        Ok(match written {
            Some(_) => Repaired::Repaired,
            None => Repaired::Skipped(
                "the instance changed meanwhile, or has its entry now; run reconcile again".into(),
            ),
        })
    }

    /// The role reaper's step on the queue entry at `key`, as it is now.
    async fn reap(&self, key: &str) -> Result<Repaired, BrokerError> {
        match self.setup.state.get(key).await.map_err(|e| self.state_failed(e))? {
            None => Ok(Repaired::Skipped("the role reaper took it meanwhile".into())),
            Some(found) => self.delete_queued(key, &found).await.map(|_| Repaired::Repaired),
        }
    }

    /// Claims the instance id (unless `claim` is an interrupted run's), deletes the tenant
    /// prefix on `cluster`, then removes the claim.
    async fn delete_orphan_data(
        &self,
        cluster: &str,
        instance: &InstanceId,
        claim: Option<i64>,
    ) -> Result<Repaired, BrokerError> {
        let key = self.names().instance_key(instance);
        let state = &*self.setup.state;
        let revision = match claim {
            Some(revision) => revision,
            None => {
                let now = self.now();
                let record = InstanceRecord {
                    instance_id: instance.to_string(),
                    service_id: String::new(),
                    plan_id: String::new(),
                    cluster: cluster.to_owned(),
                    organization_guid: String::new(),
                    space_guid: String::new(),
                    context: [(CLAIM_CONTEXT.to_owned(), "orphan data being deleted".into())]
                        .into_iter()
                        .collect(),
                    parameters: Default::default(),
                    state: RecordState::Deleting,
                    created_at: now,
                    updated_at: now,
                    data_keys: Vec::new(),
                    quotas: Default::default(),
                };
                let guards = [Guard::Absent(key.clone())];
                let claimed = state
                    .commit(&guards, &[Write::Put(key.clone(), encode(&record))])
                    .await
                    .map_err(|e| self.state_failed(e))?;
                match claimed {
                    Some(revision) => revision,
                    None => return Ok(Repaired::Skipped("the instance was provisioned meanwhile".into())),
                }
            }
        };
        let store = &*self.cluster(cluster)?.store;
        store
            .delete_prefix(&self.names().tenant_prefix(instance))
            .await
            .map_err(|e| unavailable(cluster, e))?;
        if self.swap(&key, revision, &[Write::Delete(key.clone())]).await?.is_none() {
            // A platform's deprovision of that id finished it, or changed it: theirs now.
            return Ok(Repaired::Skipped("the instance record changed meanwhile".into()));
        }
        tracing::warn!(instance_id = %instance, cluster, kind = Kind::OrphanData.name(), "deleted orphan tenant data");
        Ok(Repaired::Repaired)
    }
}

//! Provision, update, deprovision and read service instances.

use crate::osb::model::*;
use crate::osb::{BrokerError, BrokerResult, InstanceId};
use crate::store::{Guard, Write};

use super::records::{decode, encode, InstanceRecord, RecordState};
use super::{lost_race, refuse_parameters, unavailable, EtcdBroker, CAS_ATTEMPTS};

impl EtcdBroker {
    pub(super) async fn provision_instance(&self, req: ProvisionRequest) -> BrokerResult<Provisioned> {
        let cluster = self.check_plan(&req.service_id, &req.plan_id)?.to_owned();
        refuse_parameters(&req.parameters)?;
        let key = self.names().instance_key(&req.instance_id);
        let now = self.now();
        let record = InstanceRecord {
            instance_id: req.instance_id.to_string(),
            service_id: req.service_id.clone(),
            plan_id: req.plan_id.clone(),
            cluster,
            organization_guid: req.organization_guid.clone(),
            space_guid: req.space_guid.clone(),
            context: req.context.clone(),
            parameters: req.parameters.clone(),
            state: RecordState::Ready,
            created_at: now,
            updated_at: now,
            data_keys: Vec::new(),
            quotas: self.plan_options(&req.plan_id).quotas,
        };
        let mut record = record;
        if self.plan_options(&req.plan_id).encryption {
            record.data_keys.push(self.new_data_key(&key, 1).await?);
        }
        let state = &*self.setup.state;
        let id = req.instance_id.as_str();
        for _ in 0..CAS_ATTEMPTS {
            // The limits first; a repeated provision of an existing instance is answered as
            // such even when a limit is reached.
            let counted = match self.instance_limits(&req.plan_id, &req.organization_guid).await {
                Ok(counted) => counted,
                Err(refused) => return self.existing_instance(&req, &key).await?.unwrap_or(Err(refused)),
            };
            let mut guards = vec![Guard::Absent(key.clone())];
            guards.extend(counted.guards);
            // The record and its index entries (per plan, per organization).
            let mut writes = vec![
                Write::Put(key.clone(), encode(&record)),
                Write::Put(self.names().instance_index_key(&record.plan_id, id), Vec::new()),
                Write::Put(self.names().organization_index_key(&record.organization_guid, id), Vec::new()),
            ];
            writes.extend(counted.writes);
            let created = state.commit(&guards, &writes).await.map_err(|e| self.state_failed(e))?;
            if created.is_some() {
                tracing::info!(instance_id = %req.instance_id, plan_id = %req.plan_id, "provisioned service instance");
                return Ok(Provisioned::Created);
            }
            if let Some(answer) = self.existing_instance(&req, &key).await? {
                return answer;
            }
            // Deleted in between, or another create counted against the same limit: again.
        }
        Err(lost_race("the service instance"))
    }

    /// The answer to a provision of an instance that exists (`None` if it does not).
    async fn existing_instance(
        &self,
        req: &ProvisionRequest,
        key: &str,
    ) -> BrokerResult<Option<BrokerResult<Provisioned>>> {
        let Some((existing, _)) = self.read::<InstanceRecord>(&*self.setup.state, key).await? else {
            return Ok(None);
        };
        if existing.state == RecordState::Deleting {
            return Ok(Some(Err(BrokerError::Concurrency(format!(
                "service instance {} is being deleted; retry once the delete has finished",
                req.instance_id
            )))));
        }
        let identical = existing.service_id == req.service_id
            && existing.plan_id == req.plan_id
            && existing.organization_guid == req.organization_guid
            && existing.space_guid == req.space_guid
            && existing.parameters == req.parameters;
        Ok(Some(if identical {
            Ok(Provisioned::AlreadyExists)
        } else {
            Err(BrokerError::Conflict(format!(
                "service instance {} already exists with different attributes",
                req.instance_id
            )))
        }))
    }

    pub(super) async fn update_instance(&self, req: UpdateRequest) -> BrokerResult<()> {
        if let Some(parameters) = &req.parameters {
            refuse_parameters(parameters)?;
        }
        let key = self.names().instance_key(&req.instance_id);
        for _ in 0..CAS_ATTEMPTS {
            let (mut record, revision) = self.ready_instance(&req.instance_id).await?;
            if record.service_id != req.service_id {
                return Err(BrokerError::BadRequest(format!(
                    "service_id '{}' does not match the instance's service '{}'",
                    req.service_id, record.service_id
                )));
            }
            let mut changed = false;
            let old_plan = record.plan_id.clone();
            if let Some(plan_id) = req.plan_id.as_deref().filter(|p| *p != record.plan_id) {
                let target_cluster = self.check_plan(&req.service_id, plan_id)?;
                let (service, current) =
                    self.setup.catalog.plan(&record.service_id, &record.plan_id).ok_or_else(|| {
                        BrokerError::Unprocessable(format!(
                            "the instance's plan '{}' is no longer in the catalog, so it cannot change plan",
                            record.plan_id
                        ))
                    })?;
                if !service.plan_updateable(current) {
                    return Err(BrokerError::Unprocessable(format!(
                        "plan '{}' does not allow plan changes",
                        current.name
                    )));
                }
                if target_cluster != record.cluster {
                    return Err(BrokerError::Unprocessable(format!(
                        "plan '{plan_id}' uses etcd cluster '{target_cluster}' but the instance lives on \
                         cluster '{}'; moving an instance between clusters is not supported yet",
                        record.cluster
                    )));
                }
                record.plan_id = plan_id.to_owned();
                record.quotas = self.plan_options(plan_id).quotas;
                changed = true;
            }
            if let Some(context) = req.context.as_ref().filter(|c| **c != record.context) {
                record.context = context.clone();
                changed = true;
            }
            if !changed {
                return Ok(());
            }
            record.updated_at = self.now();
            let mut guards = vec![Guard::Revision(key.clone(), revision)];
            let mut writes = vec![Write::Put(key.clone(), encode(&record))];
            if record.plan_id != old_plan {
                let id = req.instance_id.as_str();
                // The new plan's instance limit counts the instance from now on.
                let counted = self.plan_change_limits(&record.plan_id).await?;
                guards.extend(counted.guards);
                writes.extend(counted.writes);
                writes.push(Write::Delete(self.names().instance_index_key(&old_plan, id)));
                writes.push(Write::Put(self.names().instance_index_key(&record.plan_id, id), Vec::new()));
            }
            let written =
                self.setup.state.commit(&guards, &writes).await.map_err(|e| self.state_failed(e))?;
            if written.is_some() {
                tracing::info!(instance_id = %req.instance_id, plan_id = %record.plan_id, "updated service instance");
                return Ok(());
            }
        }
        Err(lost_race("the service instance"))
    }

    pub(super) async fn deprovision_instance(&self, req: DeprovisionRequest) -> BrokerResult<()> {
        let id = &req.instance_id;
        let key = self.names().instance_key(id);
        let state = &*self.setup.state;
        let Some((record, revision)) = self.read::<InstanceRecord>(state, &key).await? else {
            return Err(BrokerError::InstanceGone(id.to_string()));
        };
        self.check_delete_ids(&req.service_id, &req.plan_id, (&record.service_id, &record.plan_id))?;
        let mut known = Some((record, revision));
        for _ in 0..CAS_ATTEMPTS {
            let current = match known.take() {
                Some(found) => Some(found),
                None => self.read::<InstanceRecord>(state, &key).await?,
            };
            let Some((mut record, revision)) = current else {
                return Err(BrokerError::InstanceGone(id.to_string()));
            };
            // Step 1: mark the record, so no new binding can be created on it.
            let revision = if record.state == RecordState::Deleting {
                revision
            } else {
                record.state = RecordState::Deleting;
                record.updated_at = self.now();
                let marked = self.swap(&key, revision, &[Write::Put(key.clone(), encode(&record))]).await?;
                match marked {
                    Some(revision) => revision,
                    None => continue,
                }
            };
            // Step 2: every binding's user, role and record.
            let bindings =
                state.list(&self.names().bindings_prefix(id)).await.map_err(|e| self.state_failed(e))?;
            for (binding_key, found) in bindings {
                let record = decode(&binding_key, &found.value)?;
                self.remove_binding(&binding_key, Some((record, found.mod_revision))).await?;
            }
            // Still step 2: what binds interrupted after an unbind deleted their record made.
            self.sweep_bind_markers(id, &record.cluster).await?;
            // And secrets in the credential store that no record names.
            self.sweep_secrets(id, &record.plan_id).await?;
            // Step 3: the tenant's data.
            let cluster = self.cluster(&record.cluster)?;
            cluster
                .store
                .delete_prefix(&self.names().tenant_prefix(id))
                .await
                .map_err(|e| unavailable(&record.cluster, e))?;
            // Step 4: the record itself.
            let deleted = self
                .swap(
                    &key,
                    revision,
                    &[
                        Write::Delete(key.clone()),
                        Write::Delete(self.names().instance_index_key(&record.plan_id, id.as_str())),
                        Write::Delete(
                            self.names().organization_index_key(&record.organization_guid, id.as_str()),
                        ),
                        Write::Delete(self.names().instance_limit_key(id)),
                    ],
                )
                .await?;
            if deleted.is_some() || state.get(&key).await.map_err(|e| self.state_failed(e))?.is_none() {
                tracing::info!(instance_id = %id, "deprovisioned service instance");
                return Ok(());
            }
        }
        Err(lost_race("the service instance"))
    }

    /// Removes what the instance's bind markers name, then the markers: for each, the user is
    /// deleted (one never made is fine) and the role queued, unless already queued. Run once
    /// the instance is `deleting` (no bind can start: its first transaction guards on the
    /// instance's revision) and its binding records are gone, so each marker is of a bind that
    /// died after an unbind deleted its record, or that is still running and will find its
    /// record gone. One range read, empty unless a bind was interrupted: users and roles
    /// are never listed here (etcd answers such a list with every user of the cluster).
    async fn sweep_bind_markers(&self, id: &InstanceId, cluster_name: &str) -> BrokerResult<()> {
        let state = &*self.setup.state;
        let markers =
            state.list(&self.names().bind_markers_prefix(id)).await.map_err(|e| self.state_failed(e))?;
        for (key, _) in &markers {
            self.sweep_bind_marker(key, cluster_name).await?;
        }
        if !markers.is_empty() {
            self.role_queued.notify_one();
            tracing::warn!(instance_id = %id, binds = markers.len(), "swept the users and roles of interrupted binds");
        }
        Ok(())
    }

    /// One marker of [`Self::sweep_bind_markers`]: the user deleted, then the role queued and
    /// the marker deleted in one transaction (only the marker if the role is queued already:
    /// that entry may name more, such as a secret). The user and role share the binding's name.
    /// Each step is safe to repeat. Only while no bind of that id can start (the instance
    /// `deleting`): reconcile's repair queues first instead.
    async fn sweep_bind_marker(&self, key: &str, cluster_name: &str) -> BrokerResult<()> {
        let Some((instance, binding)) = self.names().parse_bind_marker_key(key) else {
            // Never written by a broker (ids hold no '/'): reconcile reports it; the delete
            // goes on.
            tracing::warn!(key, "a bind marker names no binding; left alone");
            return Ok(());
        };
        let name = self.names().user(&instance, &binding);
        let store = &*self.cluster(cluster_name)?.store;
        store.delete_user(&name).await.map_err(|e| unavailable(cluster_name, e))?;
        let state = &*self.setup.state;
        let entry = self.names().role_deletion_key(&name);
        let writes = [self.queue_name(&name, cluster_name), Write::Delete(key.to_owned())];
        let queued =
            state.commit(&[Guard::Absent(entry)], &writes).await.map_err(|e| self.state_failed(e))?;
        if queued.is_none() {
            state.commit(&[], &[Write::Delete(key.to_owned())]).await.map_err(|e| self.state_failed(e))?;
        }
        Ok(())
    }

    pub(super) async fn fetch_instance(&self, id: &InstanceId) -> BrokerResult<InstanceInfo> {
        let (record, _) = self.ready_instance(id).await.map_err(|e| match e {
            BrokerError::Concurrency(_) => BrokerError::InstanceNotFound(id.to_string()),
            other => other,
        })?;
        Ok(InstanceInfo {
            service_id: record.service_id,
            plan_id: record.plan_id,
            parameters: record.parameters,
        })
    }

    pub(super) async fn instance_operation(&self, id: &InstanceId) -> BrokerResult<LastOperation> {
        let key = self.names().instance_key(id);
        match self.read::<InstanceRecord>(&*self.setup.state, &key).await? {
            None => Err(BrokerError::InstanceGone(id.to_string())),
            Some((record, _)) => Ok(operation_of(record.state)),
        }
    }

    /// The instance record if it exists and is not being deleted.
    pub(super) async fn ready_instance(&self, id: &InstanceId) -> BrokerResult<(InstanceRecord, i64)> {
        let key = self.names().instance_key(id);
        match self.read::<InstanceRecord>(&*self.setup.state, &key).await? {
            None => Err(BrokerError::InstanceNotFound(id.to_string())),
            Some((record, _)) if record.state == RecordState::Deleting => {
                Err(BrokerError::Concurrency(format!("service instance {id} is being deleted")))
            }
            Some(found) => Ok(found),
        }
    }
}

/// What `last_operation` reports for a record state. Every operation of this broker finishes
/// synchronously, so "in progress" means an interrupted operation that a retry will finish.
pub(super) fn operation_of(state: RecordState) -> LastOperation {
    match state {
        RecordState::Ready => LastOperation { state: OperationState::Succeeded, description: None },
        RecordState::Creating | RecordState::Deleting => LastOperation {
            state: OperationState::InProgress,
            description: Some("an interrupted operation; repeat the request to finish it".into()),
        },
    }
}

//! Bind, unbind and read service bindings: one etcd user and role per binding. Unbind deletes
//! the user and queues the role (see `role_deletions.rs`).

use crate::osb::bind_parameters::{self, BindParameters};
use crate::osb::model::*;
use crate::osb::plan_options::{CredentialStoreKind, PlanOptions};
use crate::osb::{BindingId, BrokerError, BrokerResult, InstanceId};
use crate::secrets::random_password;
use crate::store::{Guard, StoreError, Write};

use super::credentials::{
    by_reference, certificate_credentials, credentials, CertificateCredentials, SecretReference,
};
use super::instances::operation_of;
use super::material::Material;
use super::records::{encode, BindMarker, BindingRecord, InstanceRecord, RecordState};
use super::{lost_race, refuse_parameters, unavailable, Cluster, EtcdBroker, CAS_ATTEMPTS};

/// How a bind attempt that did not finish ended.
pub(super) enum Attempt {
    Done(Bound),
    Retry,
}

/// How a bind attempt reads what it starts from: the first attempt from the member's own
/// state, a retry (after a stale look, or a lost race) linearizably.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Look {
    Local,
    Linearizable,
}

impl EtcdBroker {
    pub(super) async fn create_binding(&self, req: BindRequest) -> BrokerResult<Bound> {
        self.check_plan(&req.service_id, &req.plan_id)?;
        if let Some((service, plan)) = self.setup.catalog.plan(&req.service_id, &req.plan_id) {
            if !plan.bindable.unwrap_or(service.bindable) {
                return Err(BrokerError::BadRequest(format!("plan '{}' is not bindable", plan.name)));
            }
        }
        let options = self.plan_options(&req.plan_id);
        if let Some(predecessor) = &req.predecessor_binding_id {
            if !options.binding_rotatable {
                return Err(BrokerError::BadRequest(format!(
                    "plan_id '{}' does not offer binding rotation (its binding_rotatable is false): \
                     bind without predecessor_binding_id",
                    req.plan_id
                )));
            }
            if *predecessor == req.binding_id {
                return Err(BrokerError::BadRequest(
                    "predecessor_binding_id names the binding being created; name the binding to rotate"
                        .into(),
                ));
            }
        }
        let parameters = if options.binding_parameters {
            bind_parameters::parse(&req.parameters)?
        } else {
            refuse_parameters(&req.parameters)?;
            BindParameters::default()
        };
        for attempt in 0..CAS_ATTEMPTS {
            let look = if attempt == 0 { Look::Local } else { Look::Linearizable };
            if let Attempt::Done(bound) = self.try_bind(&req, &parameters, &options, look).await? {
                return Ok(bound);
            }
        }
        Err(lost_race("the service binding"))
    }

    /// A rotation's predecessor: a ready, unexpired binding of the same instance and plan,
    /// whose parameters the new binding takes (the request may repeat them, or send none).
    /// Its parameters as sent then, and as parsed.
    async fn predecessor(
        &self,
        req: &BindRequest,
        predecessor: &BindingId,
        options: &PlanOptions,
    ) -> BrokerResult<(JsonObject, BindParameters)> {
        let key = self.names().binding_key(&req.instance_id, predecessor);
        let refuse = |why: String| {
            Err(BrokerError::BadRequest(format!("predecessor_binding_id '{predecessor}' {why}")))
        };
        let record = match self.read::<BindingRecord>(&*self.setup.state, &key).await? {
            Some((record, _)) if record.state == RecordState::Ready => record,
            Some(_) => return refuse("is being created or deleted; rotate a binding that is ready".into()),
            None => return refuse(format!("is not a binding of service instance '{}'", req.instance_id)),
        };
        if record.revoked_at.is_some() || record.expires_at.is_some_and(|at| self.now() >= at) {
            return refuse("has expired; bind anew instead (without predecessor_binding_id)".into());
        }
        if record.plan_id != req.plan_id {
            return refuse(format!(
                "was made with plan_id '{}'; rotate it with the same plan_id",
                record.plan_id
            ));
        }
        if !req.parameters.is_empty() && req.parameters != record.parameters {
            return refuse(
                "has other parameters: a rotation takes its predecessor's parameters, so send none".into(),
            );
        }
        let parameters = if options.binding_parameters || !record.parameters.is_empty() {
            bind_parameters::parse(&record.parameters)?
        } else {
            BindParameters::default()
        };
        Ok((record.parameters, parameters))
    }

    async fn try_bind(
        &self,
        req: &BindRequest,
        parameters: &BindParameters,
        options: &PlanOptions,
        look: Look,
    ) -> BrokerResult<Attempt> {
        let key = self.names().binding_key(&req.instance_id, &req.binding_id);
        let state = &*self.setup.state;
        let (instance, existing) = self.first_look(&req.instance_id, &key, look).await;
        let (instance, instance_revision) = instance?;
        if instance.service_id != req.service_id {
            return Err(BrokerError::BadRequest(format!(
                "service_id '{}' does not match the instance's service '{}'",
                req.service_id, instance.service_id
            )));
        }
        if let Some((existing, revision)) = existing? {
            // The spec's "identical": every field of the request the record keeps, the plan
            // included (osb-checker expects 409 for another plan_id), the parameters as sent
            // (a rotation's are its predecessor's: the request may leave them out).
            let rotation = req.predecessor_binding_id.as_ref().map(BindingId::as_str);
            let same_parameters =
                existing.parameters == req.parameters || (rotation.is_some() && req.parameters.is_empty());
            let identical = existing.service_id == req.service_id
                && existing.plan_id == req.plan_id
                && existing.app_guid == req.app_guid
                && existing.predecessor_binding_id.as_deref() == rotation
                && same_parameters;
            return match (existing.state, identical) {
                (RecordState::Deleting, _) => Err(BrokerError::Concurrency(format!(
                    "service binding {} is being deleted; finish the unbind, then bind again",
                    req.binding_id
                ))),
                (_, false) => Err(BrokerError::Conflict(format!(
                    "service binding {} already exists with different attributes",
                    req.binding_id
                ))),
                (RecordState::Ready, true) => {
                    Ok(Attempt::Done(Bound::AlreadyExists(self.binding_of(&key, &existing).await?)))
                }
                // An earlier attempt was interrupted: finish it.
                (RecordState::Creating, true) => self.complete_binding(&key, existing, revision).await,
            };
        }

        let (sent_parameters, parameters) = match &req.predecessor_binding_id {
            Some(predecessor) => self.predecessor(req, predecessor, options).await?,
            None => (req.parameters.clone(), parameters.clone()),
        };

        // Step 1: the record, only while the instance is unchanged, the binding absent and no
        // earlier binding's role of the same name waits for deletion.
        let instance_key = self.names().instance_key(&req.instance_id);
        let now = self.now();
        let expiry = options.binding_expiry;
        let mut record = BindingRecord {
            instance_id: req.instance_id.to_string(),
            binding_id: req.binding_id.to_string(),
            service_id: req.service_id.clone(),
            plan_id: req.plan_id.clone(),
            cluster: instance.cluster.clone(),
            username: self.names().user(&req.instance_id, &req.binding_id),
            role: self.names().role(&req.instance_id, &req.binding_id),
            password: None,
            password_sealed: None,
            prefix: parameters.prefix_in(&self.names().tenant_prefix(&req.instance_id)),
            access: parameters.access,
            certificate: None,
            private_key: None,
            private_key_sealed: None,
            secret_location: None,
            app_guid: req.app_guid.clone(),
            bind_resource: req.bind_resource.clone(),
            context: req.context.clone(),
            parameters: sent_parameters,
            predecessor_binding_id: req.predecessor_binding_id.as_ref().map(ToString::to_string),
            expires_at: expiry.map(|e| now.saturating_add(e.ttl)),
            renew_before: expiry.map(|e| now.saturating_add(e.ttl - e.renew_before)),
            revoked_at: None,
            state: RecordState::Creating,
            created_at: now,
            updated_at: now,
        };
        let kind = self.setup.certificates.kind(&req.plan_id);
        if kind.certificate() && self.setup.certificates.endpoints_of(&instance.cluster).is_none() {
            // The bind plan_id is not checked against the instance's plan (api.md): one of
            // another cluster may reach here. Refused before anything is made.
            return Err(BrokerError::BadRequest(format!(
                "plan_id '{}' hands out client certificates, but the instance's etcd cluster '{}' \
                 has no https endpoints for them; bind with the instance's plan",
                req.plan_id, instance.cluster
            )));
        }
        // The secrets in clear when the record holds them, for the steps after the record
        // (they need not be unsealed from it again).
        let mut fresh = None;
        match options.credential_store {
            // The record names where the secret goes; complete_binding writes it there.
            CredentialStoreKind::OpenBao => {
                record.secret_location = Some(self.secret_location_for(&record).await?);
            }
            CredentialStoreKind::Etcd => {
                // Made once, before the record exists: every retry hands out these secrets.
                let material = self.fresh_material(&record)?;
                if let Some(password) = &material.password {
                    self.store_password(&key, &mut record, password).await?;
                }
                if let (Some(certificate), Some(private_key)) = (&material.certificate, &material.private_key)
                {
                    self.store_certificate(&key, &mut record, certificate, private_key).await?;
                }
                fresh = Some(material);
            }
        }
        let queued_role = self.names().role_deletion_key(&record.role);
        // The instance plan's limit of bindings, counted in the same transaction.
        let counted = self.binding_limits(&req.instance_id, &instance.plan_id).await?;
        let mut guards = vec![
            Guard::Revision(instance_key, instance_revision),
            Guard::Absent(key.clone()),
            Guard::Absent(queued_role),
        ];
        guards.extend(counted.guards);
        // The record and its index entries (per plan; per sealing key when sealed).
        let mut writes = self.record_writes(&key, &mut record).await?;
        writes.extend(counted.writes);
        // The marker of this bind in flight: from here on, what the bind makes can be found
        // from it even if an unbind deletes the record (deprovision's sweep reads it).
        let marker = BindMarker { cluster: record.cluster.clone(), started_at: now };
        writes.push(Write::Put(
            self.names().bind_marker_key(&record.instance_id, &record.binding_id),
            encode(&marker),
        ));
        let created = state.commit(&guards, &writes).await.map_err(|e| self.state_failed(e))?;
        match created {
            Some(revision) => self.complete_binding_with(&key, record, revision, fresh).await,
            None => {
                self.finish_queued_deletion(&record.role).await?;
                Ok(Attempt::Retry)
            }
        }
    }

    /// The instance (ready) and the binding's record, as a bind starts from.
    ///
    /// With [`Look::Local`], first from the answering member's own state, which costs no raft
    /// round (a linearizable read waits behind every write in flight: under load, as long as
    /// two writes). Its one conclusion kept is the common one, "instance ready, binding absent",
    /// and the create's commit guards both (the instance's revision, the binding's absence): a
    /// stale answer makes that commit fail and the next attempt reads linearizably. Anything
    /// else (instance absent or being deleted, a record already there) is read again
    /// linearizably before it is acted on, so a stale member never answers 404 or 409. A read
    /// that fails fails the bind, as it always did.
    async fn first_look(
        &self,
        instance: &InstanceId,
        key: &str,
        look: Look,
    ) -> (BrokerResult<(InstanceRecord, i64)>, BrokerResult<Option<(BindingRecord, i64)>>) {
        let state = &*self.setup.state;
        if look == Look::Local {
            let instance_key = self.names().instance_key(instance);
            // Both in one request. A key left unanswered counts as absent, which is safe here
            // like any stale answer: the commit guards it, or it is read again.
            let (found, existing) = match state.get_local_all(&[&instance_key, key]).await {
                Ok(answers) => {
                    let mut answers = answers.into_iter();
                    let (found, existing) = (answers.next().flatten(), answers.next().flatten());
                    (
                        self.record_from::<InstanceRecord>(&instance_key, Ok(found)),
                        self.record_from::<BindingRecord>(key, Ok(existing)),
                    )
                }
                Err(e) => (Err(self.state_failed(e)), Ok(None)),
            };
            match (found, existing) {
                (Ok(Some(found)), Ok(None)) if found.0.state != RecordState::Deleting => {
                    return (Ok(found), Ok(None));
                }
                // etcd did not answer: as a failed linearizable read would.
                (Err(e), _) | (_, Err(e)) => return (Err(e), Ok(None)),
                _ => {}
            }
        }
        // Both reads at once: the store sends concurrent gets as one etcd request. The
        // instance's answer is looked at first, as if it had been read alone.
        tokio::join!(self.ready_instance(instance), self.read::<BindingRecord>(state, key))
    }

    /// Steps 2 to 4 of a bind: role, user, then the record becomes `ready`. Also `reconcile`'s
    /// repair of a ready binding whose user or role is missing or lacks its grant: the same
    /// steps, with the same answer to a concurrent unbind.
    pub(super) async fn complete_binding(
        &self,
        key: &str,
        record: BindingRecord,
        revision: i64,
    ) -> BrokerResult<Attempt> {
        self.complete_binding_with(key, record, revision, None).await
    }

    /// [`Self::complete_binding`] with the secrets `record` holds, in clear, when the caller
    /// has them (it just made them and wrote the record); otherwise they are taken from the
    /// record or its credential store.
    async fn complete_binding_with(
        &self,
        key: &str,
        record: BindingRecord,
        revision: i64,
        known: Option<Material>,
    ) -> BrokerResult<Attempt> {
        let cluster = self.cluster(&record.cluster)?;
        let store = &*cluster.store;
        let material = match known {
            Some(material) => material,
            None => self.material_for_bind(key, &record).await?,
        };
        // A certificate binding has no password: etcd hashes none (`Store::ensure_certificate_user`).
        let created = store
            .ensure_binding_user(
                &record.role,
                &record.permission(),
                &record.username,
                material.password.as_deref().map(|p| p.as_str()),
                &random_password(),
            )
            .await;
        let state = &*self.setup.state;
        match created {
            Ok(()) => {
                // `record` stays as stored, to recognise it below if the swap loses.
                let mut ready = record.clone();
                ready.state = RecordState::Ready;
                ready.updated_at = self.now();
                let mut writes = self.record_writes(key, &mut ready).await?;
                // The record names the user from now on: the marker goes in the same swap.
                writes
                    .push(Write::Delete(self.names().bind_marker_key(&ready.instance_id, &ready.binding_id)));
                if self.swap(key, revision, &writes).await?.is_some() {
                    tracing::info!(instance_id = %ready.instance_id, binding_id = %ready.binding_id, "created service binding");
                    let binding = self.shaped(&ready, self.binding_from(key, &ready, &material)?).await?;
                    return Ok(Attempt::Done(Bound::Created(binding)));
                }
            }
            // The role or user vanished under us: an unbind or deprovision is running.
            Err(StoreError::Conflict(_)) => {}
            Err(e) => return Err(unavailable(&record.cluster, e)),
        }
        // Someone else changed the record meanwhile.
        match self.read::<BindingRecord>(state, key).await? {
            Some((now, _)) if same_password(&now, &record) && now.state == RecordState::Ready => {
                Ok(Attempt::Done(Bound::Created(self.binding_of(key, &now).await?)))
            }
            // Still ours and unfinished (a step raced): the platform's retry will finish it.
            Some((now, _)) if same_password(&now, &record) && now.state == RecordState::Creating => {
                Err(lost_race("the service binding"))
            }
            Some((now, _)) if now.state == RecordState::Deleting => {
                // An unbind or deprovision is removing it; make sure what we created goes too.
                self.drop_user_and_role(&record).await?;
                self.drop_bind_marker(&record, revision).await?;
                Err(deleted_while_binding(&record))
            }
            Some(_) => Err(lost_race("the service binding")),
            None => {
                // The record was deleted under us: re-create it as `deleting` so our user and
                // role stay reachable from a record until they are gone.
                let mut record = record;
                record.state = RecordState::Deleting;
                let writes = self.record_writes(key, &mut record).await?;
                let claimed = state
                    .commit(&[Guard::Absent(key.to_owned())], &writes)
                    .await
                    .map_err(|e| self.state_failed(e))?;
                if claimed.is_some() {
                    self.remove_binding(key, None).await?;
                    self.drop_bind_marker(&record, revision).await?;
                }
                Err(deleted_while_binding(&record))
            }
        }
    }

    pub(super) async fn delete_binding(&self, req: UnbindRequest) -> BrokerResult<()> {
        let key = self.names().binding_key(&req.instance_id, &req.binding_id);
        let Some((record, revision)) = self.read::<BindingRecord>(&*self.setup.state, &key).await? else {
            return Err(BrokerError::BindingGone(req.binding_id.to_string()));
        };
        self.check_delete_ids(&req.service_id, &req.plan_id, (&record.service_id, &record.plan_id))?;
        self.remove_binding(&key, Some((record, revision))).await
    }

    /// Marks a binding record `deleting`, deletes its user, then deletes the record and queues
    /// its role in one transaction. Idempotent; a record that is already gone is fine. `known`
    /// is the record if the caller just read it. The binding's bind marker stays: a bind of it
    /// may still be in flight, and may make the user again after this deleted it.
    pub(super) async fn remove_binding(
        &self,
        key: &str,
        mut known: Option<(BindingRecord, i64)>,
    ) -> BrokerResult<()> {
        let state = &*self.setup.state;
        for _ in 0..CAS_ATTEMPTS {
            let current = match known.take() {
                Some(found) => Some(found),
                None => self.read::<BindingRecord>(state, key).await?,
            };
            let Some((mut record, mut revision)) = current else {
                return Ok(());
            };
            if record.state != RecordState::Deleting {
                record.state = RecordState::Deleting;
                record.updated_at = self.now();
                let writes = self.record_writes(key, &mut record).await?;
                let marked = self.swap(key, revision, &writes).await?;
                match marked {
                    Some(new_revision) => revision = new_revision,
                    None => continue,
                }
            }
            let store = &*self.cluster(&record.cluster)?.store;
            store.delete_user(&record.username).await.map_err(|e| unavailable(&record.cluster, e))?;
            self.delete_secret(record.secret_location.as_ref()).await?;
            // The record, its index entries (as the record names them) and the queue entry.
            let mut writes = vec![Write::Delete(key.to_owned())];
            writes.extend(self.index_deletes(&record));
            writes.push(self.queue_role(&record));
            if self.swap(key, revision, &writes).await?.is_some() {
                self.role_queued.notify_one();
                tracing::info!(instance_id = %record.instance_id, binding_id = %record.binding_id, "deleted service binding");
                return Ok(());
            }
        }
        Err(lost_race("the service binding"))
    }

    /// Removes what a bind that lost to an unbind or deprovision created (rare: deleting the
    /// role right away is fine here).
    async fn drop_user_and_role(&self, record: &BindingRecord) -> BrokerResult<()> {
        let store = &*self.cluster(&record.cluster)?.store;
        let fail = |e| unavailable(&record.cluster, e);
        store.delete_user(&record.username).await.map_err(fail)?;
        self.delete_secret(record.secret_location.as_ref()).await?;
        store.delete_role(&record.role).await.map_err(fail)
    }

    /// Deletes a bind's marker once its clean-up removed the user and role it made. Only the
    /// marker written with the record this attempt started from (at `revision`): a later bind
    /// of the same id, after an unbind, has written its own, which must stay. A marker left
    /// (a crash, or a record rewritten since) is removed by deprovision or reconcile.
    async fn drop_bind_marker(&self, record: &BindingRecord, revision: i64) -> BrokerResult<()> {
        let marker = self.names().bind_marker_key(&record.instance_id, &record.binding_id);
        let guards = [Guard::Revision(marker.clone(), revision)];
        self.setup.state.commit(&guards, &[Write::Delete(marker)]).await.map_err(|e| self.state_failed(e))?;
        Ok(())
    }

    pub(super) async fn fetch_binding(
        &self,
        instance: &InstanceId,
        binding: &BindingId,
    ) -> BrokerResult<Binding> {
        let key = self.names().binding_key(instance, binding);
        match self.read::<BindingRecord>(&*self.setup.state, &key).await? {
            Some((record, _)) if record.state == RecordState::Ready => {
                let mut binding = self.binding_of(&key, &record).await?;
                binding.parameters = Some(record.parameters).filter(|p| !p.is_empty());
                Ok(binding)
            }
            _ => Err(BrokerError::BindingNotFound(binding.to_string())),
        }
    }

    pub(super) async fn binding_operation(
        &self,
        instance: &InstanceId,
        binding: &BindingId,
    ) -> BrokerResult<LastOperation> {
        let key = self.names().binding_key(instance, binding);
        match self.read::<BindingRecord>(&*self.setup.state, &key).await? {
            None => Err(BrokerError::BindingGone(binding.to_string())),
            Some((record, _)) => Ok(operation_of(record.state)),
        }
    }

    /// The binding as a bind answers it (GET adds the parameters); its secrets unsealed from
    /// the record at `key`, or read from the credential store it names.
    async fn binding_of(&self, key: &str, record: &BindingRecord) -> BrokerResult<Binding> {
        let material = self.material(key, record).await?;
        self.shaped(record, self.binding_from(key, record, &material)?).await
    }

    /// `binding` with its credentials shaped by its plan's template, if the plan has one (the
    /// instance record is read for its parameters); a template that fails is a 500 naming the
    /// plan, never a value.
    async fn shaped(&self, record: &BindingRecord, mut binding: Binding) -> BrokerResult<Binding> {
        let templates = &self.setup.templates;
        if !templates.has(&record.plan_id) {
            return Ok(binding);
        }
        let instance_key =
            self.names().instance_key(&InstanceId::parse(&record.instance_id).map_err(|e| {
                BrokerError::Internal(format!("binding {} names an invalid instance: {e}", record.binding_id))
            })?);
        let Some((instance, _)) = self.read::<InstanceRecord>(&*self.setup.state, &instance_key).await?
        else {
            return Err(BrokerError::Concurrency(format!(
                "service instance {} was deleted meanwhile",
                record.instance_id
            )));
        };
        let context = super::templates::context(&binding.credentials, record, &instance);
        binding.credentials = templates.render(&record.plan_id, &context).map_err(|why| {
            BrokerError::Internal(format!(
                "plan '{}': its credentials template failed for binding {}: {why}",
                record.plan_id, record.binding_id
            ))
        })?;
        Ok(binding)
    }

    /// The binding as a bind answers it, with `material`, the record's secrets in clear.
    fn binding_from(&self, key: &str, record: &BindingRecord, material: &Material) -> BrokerResult<Binding> {
        let cluster = self.cluster(&record.cluster)?;
        let Material { password, certificate, private_key } = material;
        let credentials = match (certificate, private_key, password) {
            (Some(cert), Some(key), password) => {
                let certificates = &self.setup.certificates;
                let endpoints = certificates.endpoints_of(&record.cluster);
                let ca = cluster.ca_certificate.as_deref().or(certificates.ca_certificate());
                let (Some(endpoints), Some(ca_certificate)) = (endpoints, ca) else {
                    return Err(BrokerError::Internal(format!(
                        "binding {} has a client certificate, but the broker's config has no [certificates] CA \
                         or no https endpoints for cluster '{}'",
                        record.binding_id, record.cluster
                    )));
                };
                let certificate = CertificateCredentials { cert, key, ca_certificate, endpoints };
                certificate_credentials(
                    record,
                    password.as_deref().map(|p| p.as_str()),
                    cluster,
                    &certificate,
                )
            }
            (_, _, Some(password)) if self.plan_options(&record.plan_id).proxied() => {
                // Values are encrypted or quotas enforced by the proxy: the tenant talks to it
                // only.
                let proxied =
                    Cluster { public_endpoints: cluster.proxy_endpoints.clone(), ..cluster.clone() };
                credentials(record, password, &proxied)
            }
            (_, _, Some(password)) => credentials(record, password, cluster),
            // `stored_password` and `stored_private_key` refuse a record with neither.
            _ => return Err(BrokerError::Internal(format!("record '{key}' holds no credentials"))),
        };
        let reference = record.secret_location.as_ref().filter(|_| {
            self.setup.plan_options.get(&record.plan_id).is_some_and(|o| o.credentials_by_reference)
        });
        let credentials = match reference {
            Some(at) => {
                let store = self.credential_store()?;
                let (address, read_path) = (store.address(), store.read_path(at));
                let fields = [
                    ("password", password.is_some()),
                    ("certificate", certificate.is_some()),
                    ("private_key", private_key.is_some()),
                ];
                let fields = fields.into_iter().filter(|(_, held)| *held).map(|(name, _)| name).collect();
                let reference =
                    SecretReference { address: &address, location: at, read_path: &read_path, fields };
                by_reference(credentials, &reference)
            }
            None => credentials,
        };
        let metadata = match (record.expires_at, record.renew_before) {
            (Some(expires_at), Some(renew_before)) => {
                Some(BindingMetadata::from_unix(expires_at, renew_before))
            }
            _ => None,
        };
        Ok(Binding { metadata, credentials, parameters: None })
    }
}

/// Whether two reads of a binding record hold the same stored password (clear or sealed) and
/// certificate (fresh serial and key per attempt): the same bind attempt's record.
fn same_password(a: &BindingRecord, b: &BindingRecord) -> bool {
    (&a.password, &a.password_sealed, &a.certificate, &a.secret_location)
        == (&b.password, &b.password_sealed, &b.certificate, &b.secret_location)
}

fn deleted_while_binding(record: &BindingRecord) -> BrokerError {
    BrokerError::Concurrency(format!(
        "service binding {} was deleted while it was being created; nothing of it is left, bind again",
        record.binding_id
    ))
}

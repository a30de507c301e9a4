//! `reconcile`: the broker's records compared with what etcd holds, and what is safe repaired.
//!
//! The crash-safety rules (docs/naming.md) promise that every user and role the broker made is
//! named by a binding record, a queued role deletion or a bind marker, that a ready binding
//! has its user with its one role and that role its one permission, and that tenant data lives
//! only under an instance's prefix. This module checks each promise against a live deployment, read-only, and
//! reports what breaks it as [`Finding`]s of a [`Kind`]:
//!
//! - the records, in pages (`Store::scan`): instances, bindings, queued role deletions, bind
//!   markers, with their states and ages;
//! - per cluster, the users and roles named `etcd-broker.*` (two list requests) and the tenant
//!   prefixes that hold keys (one single-key read per prefix: each read starts past the keys of
//!   the prefix before);
//! - with [`Settings::grants`], each ready binding's user roles and role permissions (two auth
//!   reads per binding), except expired bindings', whose users are deleted on purpose.
//!
//! **In-flight operations are not findings.** Every operation writes its record before what it
//! describes and removes it after (a bind: record `creating`, role, user, `ready`), so a user of
//! an operation in flight is named by a record, and the record's `creating` or `deleting` state
//! says that its user or role may be missing. A record in one of those states is a finding only
//! once its `updated_at` is older than [`Settings::stuck_after`] (an operation takes
//! milliseconds; a platform retries within minutes). Because records are read before users,
//! roles and data, an operation that starts between the two reads could look like an orphan: so
//! each candidate is confirmed by reading its record (or queue entry) again after the lists,
//! and a record that changed since the check read it drops its finding. What is left is a crash
//! window of a bind racing an unbind (a few milliseconds, docs/naming.md); the periodic check
//! ([`periodic`]) also counts a finding only when the check before found it too.
//!
//! **Repairs** ([`repair`]) are the broker's own crash-safe steps, each guarded by a
//! compare-and-swap, so they are safe while brokers serve and safe to run again after a crash.

mod periodic;
mod repair;
/// For the broker tests' index check: claims have no index entries.
#[cfg(test)]
pub(crate) use repair::is_claim;

use std::collections::{BTreeMap, BTreeSet};

use serde::Serialize;

use crate::osb::{BrokerError, BrokerResult, InstanceId};
use crate::sealing;
use crate::store::{Store, StoreError, Versioned};

use super::records::{decode, BindMarker, BindingRecord, InstanceRecord, RecordState, RoleDeletion};
use super::{unavailable, EtcdBroker};

pub use periodic::{run as run_periodically, Observer as PeriodicObserver};

/// Records read per request of the walk.
const PAGE: usize = 500;

/// The version of the report's JSON shape (docs/reconcile.md); raised when a field changes
/// meaning or goes away, not when one is added.
pub const REPORT_VERSION: u32 = 1;

/// How a check runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Settings {
    /// A record in `creating` or `deleting`, or a queued role deletion, unchanged for longer
    /// than this (seconds) is stuck; younger ones are operations in flight.
    pub stuck_after: u64,
    /// Compare each ready binding's user and role with its record (two auth reads per binding,
    /// which etcd serves through its consensus log): the CLI does, the periodic check does not.
    pub grants: bool,
}

/// What a run may change.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Repair {
    /// Read-only.
    Nothing,
    /// What is safe: never tenant data.
    Safe,
    /// What is safe, and tenant data that belongs to no instance (`--delete-orphan-data`).
    SafeAndOrphanData,
}

/// The kinds of findings; the gauge `etcd_broker_reconcile_findings{kind}` and the report's
/// JSON use these names (snake case).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    /// An `etcd-broker.*` user that no binding record or queued deletion names.
    OrphanUser,
    /// An `etcd-broker.*` role that no binding record or queued deletion names.
    OrphanRole,
    /// A ready binding whose user does not exist.
    MissingUser,
    /// A ready binding whose role does not exist.
    MissingRole,
    /// A ready binding whose user holds other roles than its own, or whose role permits other
    /// than the record's access on the record's prefix.
    WrongGrants,
    /// Keys under the data prefix that belong to no instance of that cluster.
    OrphanData,
    /// A binding record in `creating` for longer than the threshold.
    StuckCreating,
    /// An instance or binding record in `deleting` for longer than the threshold.
    StuckDeleting,
    /// A queued role deletion older than the threshold: no role reaper takes it.
    StaleRoleDeletion,
    /// A bind marker older than the threshold, or of an instance without a record: a bind
    /// that died (after an unbind deleted its record) may have left the user and role it names.
    StaleBindMarker,
    /// A binding record sealed by a key the keychain does not hold: its binding cannot be read.
    SealedWithUnknownKey,
    /// A record that does not decode, or names a cluster the config does not have.
    UnreadableRecord,
    /// A binding record whose instance record is gone.
    BindingWithoutInstance,
    /// An instance record without its entry in the per-plan or per-organization index, which
    /// the limits count (instances made before the organization index existed have none).
    MissingIndexEntry,
}

impl Kind {
    /// Every kind, in the order of the report.
    pub const ALL: [Kind; 14] = [
        Kind::OrphanUser,
        Kind::OrphanRole,
        Kind::MissingUser,
        Kind::MissingRole,
        Kind::WrongGrants,
        Kind::OrphanData,
        Kind::StuckCreating,
        Kind::StuckDeleting,
        Kind::StaleRoleDeletion,
        Kind::StaleBindMarker,
        Kind::SealedWithUnknownKey,
        Kind::UnreadableRecord,
        Kind::BindingWithoutInstance,
        Kind::MissingIndexEntry,
    ];

    /// The name in the JSON and the gauge's label.
    pub fn name(self) -> &'static str {
        match self {
            Kind::OrphanUser => "orphan_user",
            Kind::OrphanRole => "orphan_role",
            Kind::MissingUser => "missing_user",
            Kind::MissingRole => "missing_role",
            Kind::WrongGrants => "wrong_grants",
            Kind::OrphanData => "orphan_data",
            Kind::StuckCreating => "stuck_creating",
            Kind::StuckDeleting => "stuck_deleting",
            Kind::StaleRoleDeletion => "stale_role_deletion",
            Kind::StaleBindMarker => "stale_bind_marker",
            Kind::SealedWithUnknownKey => "sealed_with_unknown_key",
            Kind::UnreadableRecord => "unreadable_record",
            Kind::BindingWithoutInstance => "binding_without_instance",
            Kind::MissingIndexEntry => "missing_index_entry",
        }
    }
}

/// Whether `--repair` fixes a finding.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Repairable {
    /// With `--repair`.
    Safe,
    /// With `--repair --delete-orphan-data`: it deletes tenant data.
    OrphanData,
    /// Never by reconcile: the hint says who or what fixes it.
    Manual,
}

/// What a repair did.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case", tag = "result", content = "detail")]
pub enum Repaired {
    /// Fixed.
    Repaired,
    /// Not attempted: why (a concurrent change won, or a flag is missing).
    Skipped(String),
    /// Attempted and failed: why; a re-run tries again.
    Failed(String),
}

impl Repaired {
    /// `repaired`, `skipped` or `failed`, as in the JSON.
    pub fn name(&self) -> &'static str {
        match self {
            Repaired::Repaired => "repaired",
            Repaired::Skipped(_) => "skipped",
            Repaired::Failed(_) => "failed",
        }
    }
}

/// One inconsistency. Names keys, users, roles, clusters and key names; never a secret.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Finding {
    pub kind: Kind,
    /// The etcd cluster it is on (records: the state cluster).
    pub cluster: String,
    /// What it is about: a record's key, a user or role name, a tenant prefix.
    pub subject: String,
    /// What is wrong, in a sentence.
    pub detail: String,
    pub repairable: Repairable,
    /// What fixes it (by hand, or which flag).
    pub hint: String,
    /// What `--repair` did; `None` when not asked to repair.
    pub repair: Option<Repaired>,
    /// What the repair acts on, as the check saw it.
    #[serde(skip)]
    target: Target,
}

/// What a repair needs to know about a finding.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Target {
    /// Nothing to repair.
    None,
    /// A user or role name made from these ids that no record names.
    Name(String),
    /// A ready binding record at this key, read at this revision.
    Binding { key: String, revision: i64 },
    /// A binding record to finish deleting.
    Deleting { key: String },
    /// A queue entry to process.
    Queued { key: String },
    /// A bind marker at this key, read at this revision, whose user and role to remove.
    Marker { key: String, revision: i64 },
    /// A tenant prefix of this instance id without an instance record (`claim`: the revision
    /// of an interrupted repair's claim record, to finish).
    Data { instance: InstanceId, claim: Option<i64> },
    /// A missing index entry of the instance record at `record`, read at `revision`; `limit`:
    /// the key of the limit that counts that index, when the limit is configured.
    Index { record: String, revision: i64, entry: String, limit: Option<String> },
}

/// How much the check looked at.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Checked {
    pub instances: u64,
    pub bindings: u64,
    /// Role deletions queued now, young and old: the role reaper's backlog.
    pub queued_role_deletions: u64,
    /// Bind markers now, young (binds in flight) and old.
    pub bind_markers: u64,
    pub users: u64,
    pub roles: u64,
    /// Tenant prefixes holding keys, over all clusters.
    pub tenant_prefixes: u64,
}

/// The result of one run.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Report {
    pub version: u32,
    pub findings: Vec<Finding>,
    /// Findings per kind, every kind present (0 when none).
    pub counts: BTreeMap<&'static str, u64>,
    pub checked: Checked,
    /// Parts of the check that could not run, and why (the rest ran).
    pub skipped: Vec<String>,
}

impl Report {
    fn new() -> Self {
        Self {
            version: REPORT_VERSION,
            findings: Vec::new(),
            counts: BTreeMap::new(),
            checked: Checked::default(),
            skipped: Vec::new(),
        }
    }

    /// Findings per kind, every kind included.
    pub fn count_by_kind(&self) -> BTreeMap<Kind, u64> {
        let mut counts: BTreeMap<Kind, u64> = Kind::ALL.iter().map(|k| (*k, 0)).collect();
        for finding in &self.findings {
            *counts.entry(finding.kind).or_default() += 1;
        }
        counts
    }

    /// Sorted by kind (in [`Kind::ALL`]'s order), cluster and subject, so that two runs over
    /// the same state print the same report; the counts filled in.
    fn finish(mut self) -> Self {
        self.findings.sort_by(|a, b| (a.kind, &a.cluster, &a.subject).cmp(&(b.kind, &b.cluster, &b.subject)));
        self.counts = self.count_by_kind().into_iter().map(|(k, n)| (k.name(), n)).collect();
        self
    }
}

/// What the walk over the records saw, for the checks of names and data.
#[derive(Default)]
struct Seen {
    /// Instance id -> the cluster of its data.
    instances: BTreeMap<String, String>,
    /// (cluster, name) of every user and role that a binding record, a queued deletion or a
    /// bind marker names.
    named: BTreeSet<(String, String)>,
}

/// An instance record as the walk read it, and its index entries: (entry key, the key of the
/// limit that counts that index when the limit is configured).
struct Indexed {
    record: String,
    revision: i64,
    entries: Vec<(String, Option<String>)>,
}

/// Where a walk over records is: the key to read from next, `None` after the last page.
struct Pages {
    prefix: String,
    from: Option<String>,
}

impl Pages {
    fn new(prefix: &str) -> Self {
        Self { prefix: prefix.to_owned(), from: Some(prefix.to_owned()) }
    }
}

/// A finding in the making.
fn finding(kind: Kind, cluster: &str, subject: &str, detail: String) -> Finding {
    let (repairable, hint) = match kind {
        Kind::OrphanUser | Kind::OrphanRole => {
            (Repairable::Safe, "--repair queues it for deletion and deletes it (the role reaper's step)")
        }
        Kind::MissingUser | Kind::MissingRole | Kind::WrongGrants => (
            Repairable::Safe,
            "--repair runs the bind's steps again with the recorded password and revokes grants the broker never makes",
        ),
        Kind::OrphanData => (
            Repairable::OrphanData,
            "tenant data: --repair --delete-orphan-data deletes it; back it up first if anybody may need it",
        ),
        Kind::StuckCreating => (
            Repairable::Manual,
            "the platform's retry of the bind finishes it, its unbind removes it (cf bind-service / cf unbind-service)",
        ),
        Kind::StuckDeleting => (
            Repairable::Manual,
            "repeat the delete (cf delete-service / cf unbind-service); --repair finishes a binding's",
        ),
        Kind::StaleRoleDeletion => (
            Repairable::Safe,
            "is a broker running its role reaper? --repair deletes the queued user and role",
        ),
        Kind::StaleBindMarker => (
            Repairable::Safe,
            "--repair queues the user and role it names for deletion and deletes them (unless a binding record names them), then the marker",
        ),
        Kind::SealedWithUnknownKey => (
            Repairable::Manual,
            "add the key to [secrets.keys] of every broker (docs/config.md), then etcd-broker-ops reseal",
        ),
        Kind::UnreadableRecord => (Repairable::Manual, "inspect the record with etcdctl (docs/naming.md)"),
        Kind::BindingWithoutInstance => {
            (Repairable::Manual, "unbind it (cf unbind-service), or inspect it with etcdctl (docs/naming.md)")
        }
        Kind::MissingIndexEntry => (
            Repairable::Safe,
            "--repair adds the entry (compare-and-swap on the record), so the instance counts against its limits",
        ),
    };
    Finding {
        kind,
        cluster: cluster.to_owned(),
        subject: subject.to_owned(),
        detail,
        repairable,
        hint: hint.to_owned(),
        repair: None,
        target: Target::None,
    }
}

impl Finding {
    fn with(mut self, target: Target) -> Self {
        self.target = target;
        self
    }

    /// Reported, but not repaired: (e.g. a name the broker never makes).
    fn manual(mut self, hint: &str) -> Self {
        self.repairable = Repairable::Manual;
        self.hint = hint.to_owned();
        self
    }
}

impl EtcdBroker {
    /// Checks the whole deployment, and with `repair` fixes what is safe; see the module doc.
    /// `Err` when a record or list that the check needs cannot be read: a partial check would
    /// report orphans it did not see the records of.
    pub async fn reconcile(&self, settings: &Settings, repair: Repair) -> BrokerResult<Report> {
        let mut report = Report::new();
        let mut seen = Seen::default();
        let now = self.now();
        self.check_instances(settings, now, &mut seen, &mut report).await?;
        self.check_bindings(settings, now, &mut seen, &mut report).await?;
        self.check_queue(settings, now, &mut seen, &mut report).await?;
        self.check_bind_markers(settings, now, &mut seen, &mut report).await?;
        let mut clusters: Vec<&String> = self.setup.clusters.keys().collect();
        clusters.sort();
        for cluster in clusters {
            self.check_names(cluster, &seen, &mut report).await?;
            self.check_data(cluster, &seen, &mut report).await?;
        }
        if repair != Repair::Nothing {
            for finding in &mut report.findings {
                finding.repair = self.repair(finding, repair).await;
            }
        }
        Ok(report.finish())
    }

    /// The next page of records of a walk (empty after the last).
    async fn page(&self, pages: &mut Pages) -> BrokerResult<Vec<(String, Versioned)>> {
        let Some(from) = pages.from.take() else { return Ok(Vec::new()) };
        let page = self
            .setup
            .state
            .scan(&pages.prefix, &from, PAGE, false)
            .await
            .map_err(|e| self.state_failed(e))?;
        if page.len() == PAGE {
            pages.from = page.last().map(|(key, _)| format!("{key}\0"));
        }
        Ok(page)
    }

    /// Every record under `prefix`, a page at a time.
    async fn walk(&self, prefix: &str, each: &mut (dyn FnMut(String, Versioned) + Send)) -> BrokerResult<()> {
        let mut pages = Pages::new(prefix);
        loop {
            let page = self.page(&mut pages).await?;
            if page.is_empty() {
                return Ok(());
            }
            for (key, found) in page {
                each(key, found);
            }
        }
    }

    async fn check_instances(
        &self,
        settings: &Settings,
        now: u64,
        seen: &mut Seen,
        report: &mut Report,
    ) -> BrokerResult<()> {
        let mut pages = Pages::new(&self.names().instances_prefix());
        // A page at a time: its records' index entries are checked before the next page, so
        // memory stays one page whatever the number of instances.
        loop {
            let page = self.page(&mut pages).await?;
            if page.is_empty() {
                return Ok(());
            }
            let mut indexed = Vec::with_capacity(page.len());
            for (key, found) in page {
                report.checked.instances += 1;
                indexed.extend(self.instance_seen(settings, now, &key, &found, seen, report));
            }
            self.check_indexes(&indexed, report).await?;
        }
    }

    /// One instance record of the walk; the index entries it should have, when readable.
    fn instance_seen(
        &self,
        settings: &Settings,
        now: u64,
        key: &str,
        found: &Versioned,
        seen: &mut Seen,
        report: &mut Report,
    ) -> Option<Indexed> {
        let state_cluster = &self.setup.state_cluster;
        let id = key[self.names().instances_prefix().len()..].to_owned();
        let record: InstanceRecord = match decode(key, &found.value) {
            Ok(record) => record,
            Err(e) => {
                report.findings.push(finding(Kind::UnreadableRecord, state_cluster, key, e.to_string()));
                // Its data and bindings are not orphans: we cannot tell its cluster.
                seen.instances.insert(id, String::new());
                return None;
            }
        };
        if repair::is_claim(&record) {
            // An interrupted --delete-orphan-data: its data is still orphan data.
            if let Ok(instance) = InstanceId::parse(&id) {
                let prefix = self.names().tenant_prefix(&instance);
                let detail = "orphan data whose deletion by reconcile was interrupted".to_owned();
                let claim = Some(found.mod_revision);
                report.findings.push(
                    finding(Kind::OrphanData, &record.cluster, &prefix, detail)
                        .with(Target::Data { instance, claim }),
                );
            }
            return None;
        }
        if !self.setup.clusters.contains_key(&record.cluster) {
            let detail = format!("names cluster '{}', which the config does not have", record.cluster);
            report.findings.push(finding(Kind::UnreadableRecord, state_cluster, key, detail));
        }
        if record.state == RecordState::Deleting && stuck(settings, now, record.updated_at) {
            let detail = format!("deleting since {} s", now.saturating_sub(record.updated_at));
            report.findings.push(finding(Kind::StuckDeleting, state_cluster, key, detail));
        }
        let mut entries = vec![(
            self.names().instance_index_key(&record.plan_id, &id),
            self.plan_options(&record.plan_id)
                .max_instances
                .map(|_| self.names().plan_limit_key(&record.plan_id)),
        )];
        entries.push((
            self.names().organization_index_key(&record.organization_guid, &id),
            self.setup
                .limits
                .max_instances_per_organization
                .map(|_| self.names().organization_limit_key(&record.organization_guid)),
        ));
        seen.instances.insert(id, record.cluster);
        Some(Indexed { record: key.to_owned(), revision: found.mod_revision, entries })
    }

    /// Each instance record's entries in the per-plan and per-organization indexes, for one
    /// page of records: read after the records (an instance created since has its entries,
    /// written with its record), all at once (the store sends concurrent reads as one etcd
    /// request). A missing entry is confirmed by reading the record and the entry again: a
    /// deprovision deletes both at once.
    async fn check_indexes(&self, indexed: &[Indexed], report: &mut Report) -> BrokerResult<()> {
        let state = &*self.setup.state;
        let wanted =
            indexed.iter().flat_map(|i| i.entries.iter().map(move |(entry, limit)| (i, entry, limit)));
        let wanted: Vec<_> = wanted.collect();
        let found = futures_util::future::join_all(wanted.iter().map(|(_, entry, _)| state.get(entry))).await;
        for ((indexed, entry, limit), found) in wanted.into_iter().zip(found) {
            if found.map_err(|e| self.state_failed(e))?.is_some() {
                continue;
            }
            let Indexed { record, revision, .. } = indexed;
            if !self.unchanged(record, *revision).await?
                || state.get(entry).await.map_err(|e| self.state_failed(e))?.is_some()
            {
                continue;
            }
            let detail =
                format!("its index entry {entry} is missing: the instance is not counted against its limits");
            let target = Target::Index {
                record: record.clone(),
                revision: *revision,
                entry: entry.clone(),
                limit: limit.clone(),
            };
            report.findings.push(
                finding(Kind::MissingIndexEntry, &self.setup.state_cluster, record, detail).with(target),
            );
        }
        Ok(())
    }

    async fn check_bindings(
        &self,
        settings: &Settings,
        now: u64,
        seen: &mut Seen,
        report: &mut Report,
    ) -> BrokerResult<()> {
        let prefix = self.names().all_bindings_prefix();
        let state_cluster = self.setup.state_cluster.clone();
        let mut pages = Pages::new(&prefix);
        // A page at a time: the grants of a page's records are read before the next page.
        loop {
            let page = self.page(&mut pages).await?;
            if page.is_empty() {
                return Ok(());
            }
            for (key, found) in page {
                report.checked.bindings += 1;
                // Unreadable, its names are unknown: users and roles without a record are
                // reported, so look at this record first.
                let Some(record) = self.decoded::<BindingRecord>(&key, &found, report) else { continue };
                seen.named.insert((record.cluster.clone(), record.username.clone()));
                seen.named.insert((record.cluster.clone(), record.role.clone()));
                let finding_here = |kind, detail: String| finding(kind, &state_cluster, &key, detail);
                if !seen.instances.contains_key(&record.instance_id) {
                    let detail = format!("instance {} has no record", record.instance_id);
                    report.findings.push(finding_here(Kind::BindingWithoutInstance, detail));
                }
                self.check_password(&key, &record, report);
                let age = now.saturating_sub(record.updated_at);
                match record.state {
                    RecordState::Creating if stuck(settings, now, record.updated_at) => {
                        report
                            .findings
                            .push(finding_here(Kind::StuckCreating, format!("creating since {age} s")));
                    }
                    RecordState::Deleting if stuck(settings, now, record.updated_at) => {
                        let detail = format!("deleting since {age} s");
                        report.findings.push(
                            finding_here(Kind::StuckDeleting, detail)
                                .with(Target::Deleting { key: key.clone() }),
                        );
                    }
                    // An expired binding's user is gone on purpose (or goes at the expiry
                    // leader's next pass): no grant to check, nothing to make again.
                    RecordState::Ready
                        if settings.grants && !record.expired(now, self.setup.expiry_grace) =>
                    {
                        self.check_grants(&key, &record, found.mod_revision, report).await?;
                    }
                    _ => {}
                }
            }
        }
    }

    /// A record as read, or `None` with an `unreadable_record` finding.
    fn decoded<T: serde::de::DeserializeOwned>(
        &self,
        key: &str,
        found: &Versioned,
        report: &mut Report,
    ) -> Option<T> {
        match decode(key, &found.value) {
            Ok(record) => Some(record),
            Err(e) => {
                let state_cluster = &self.setup.state_cluster;
                report.findings.push(finding(Kind::UnreadableRecord, state_cluster, key, e.to_string()));
                None
            }
        }
    }

    /// A record's password fields: one of the two, sealed by a key of the keychain; and a
    /// certificate binding's private key fields likewise.
    fn check_password(&self, key: &str, record: &BindingRecord, report: &mut Report) {
        let state_cluster = &self.setup.state_cluster;
        for (what, stored) in
            [("password", record.stored_password()), ("private key", record.stored_private_key())]
        {
            match stored {
                Ok(None | Some(super::records::StoredPassword::Clear(_))) => {}
                Ok(Some(super::records::StoredPassword::Sealed(sealed))) => {
                    let known =
                        |name: &str| self.setup.sealing.keychain().is_some_and(|k| k.get(name).is_some());
                    match sealing::sealed_with(sealed) {
                        Some(name) if known(name) => {}
                        Some(name) => report.findings.push(finding(
                            Kind::SealedWithUnknownKey,
                            state_cluster,
                            key,
                            format!("sealed by key '{name}', which the keychain does not hold"),
                        )),
                        None => report.findings.push(finding(
                            Kind::UnreadableRecord,
                            state_cluster,
                            key,
                            format!("its sealed {what} names no key"),
                        )),
                    }
                }
                Err(broken) => report.findings.push(finding(
                    Kind::UnreadableRecord,
                    state_cluster,
                    key,
                    format!("it {broken}"),
                )),
            }
        }
    }

    /// A ready binding's user has exactly its role, and the role exactly the record's
    /// permission (its access on its prefix). A finding is kept only if the record is unchanged after the reads (an
    /// unbind that started meanwhile deletes the user on purpose).
    async fn check_grants(
        &self,
        key: &str,
        record: &BindingRecord,
        revision: i64,
        report: &mut Report,
    ) -> BrokerResult<()> {
        let Ok(cluster) = self.cluster(&record.cluster) else {
            let detail = format!("names cluster '{}', which the config does not have", record.cluster);
            report.findings.push(finding(Kind::UnreadableRecord, &self.setup.state_cluster, key, detail));
            return Ok(());
        };
        let store = &*cluster.store;
        let fail = |e| unavailable(&record.cluster, e);
        let mut found = Vec::new();
        match store.user_roles(&record.username).await.map_err(fail)? {
            None => found.push((Kind::MissingUser, format!("user {} does not exist", record.username))),
            Some(roles) if roles != [record.role.clone()] => found.push((
                Kind::WrongGrants,
                format!(
                    "user {} holds roles [{}], the record says [{}]",
                    record.username,
                    roles.join(", "),
                    record.role
                ),
            )),
            Some(_) => {}
        }
        let expected = record.permission();
        match store.role_permissions(&record.role).await.map_err(fail)? {
            None => found.push((Kind::MissingRole, format!("role {} does not exist", record.role))),
            Some(permissions) if permissions != [expected.clone()] => {
                let held: Vec<String> = permissions.iter().map(ToString::to_string).collect();
                found.push((
                    Kind::WrongGrants,
                    format!(
                        "role {} permits [{}], the record says [{expected}]",
                        record.role,
                        held.join(", ")
                    ),
                ))
            }
            Some(_) => {}
        }
        if found.is_empty() || !self.unchanged(key, revision).await? {
            return Ok(());
        }
        for (kind, detail) in found {
            let target = Target::Binding { key: key.to_owned(), revision };
            report.findings.push(finding(kind, &record.cluster, key, detail).with(target));
        }
        Ok(())
    }

    /// Whether the record at `key` is still at `revision`.
    async fn unchanged(&self, key: &str, revision: i64) -> BrokerResult<bool> {
        let now = self.setup.state.get(key).await.map_err(|e| self.state_failed(e))?;
        Ok(now.is_some_and(|v| v.mod_revision == revision))
    }

    async fn check_queue(
        &self,
        settings: &Settings,
        now: u64,
        seen: &mut Seen,
        report: &mut Report,
    ) -> BrokerResult<()> {
        let prefix = self.names().role_deletions_prefix();
        let state_cluster = self.setup.state_cluster.clone();
        self.walk(&prefix, &mut |key, found| {
            report.checked.queued_role_deletions += 1;
            let Some(entry) = self.decoded::<RoleDeletion>(&key, &found, report) else { return };
            seen.named.insert((entry.cluster.clone(), entry.role.clone()));
            if let Some(user) = &entry.user {
                seen.named.insert((entry.cluster.clone(), user.clone()));
            }
            if stuck(settings, now, entry.queued_at) {
                let detail = format!("queued {} s ago", now.saturating_sub(entry.queued_at));
                report.findings.push(
                    finding(Kind::StaleRoleDeletion, &state_cluster, &key, detail)
                        .with(Target::Queued { key: key.clone() }),
                );
            }
        })
        .await
    }

    /// Bind markers: each names its binding's user and role (a bind in flight may have made
    /// them after an unbind deleted the record). A marker is a finding when its instance has
    /// no record, or when it is older than the threshold and its user or role exists, and no
    /// `creating` or `deleting` record of its binding answers for them instead (that record is
    /// reported when stuck, and a platform's retry or unbind finishes it); all confirmed by
    /// reading them again after the walk.
    async fn check_bind_markers(
        &self,
        settings: &Settings,
        now: u64,
        seen: &mut Seen,
        report: &mut Report,
    ) -> BrokerResult<()> {
        let prefix = self.names().bind_markers_root();
        let state_cluster = self.setup.state_cluster.clone();
        let mut candidates = Vec::new();
        self.walk(&prefix, &mut |key, found| {
            report.checked.bind_markers += 1;
            let Some(marker) = self.decoded::<BindMarker>(&key, &found, report) else { return };
            let Some((instance, binding)) = self.names().parse_bind_marker_key(&key) else {
                let detail = "a bind marker whose key names no binding".to_owned();
                report.findings.push(finding(Kind::UnreadableRecord, &state_cluster, &key, detail));
                return;
            };
            seen.named.insert((marker.cluster.clone(), self.names().user(&instance, &binding)));
            seen.named.insert((marker.cluster.clone(), self.names().role(&instance, &binding)));
            let orphaned = !seen.instances.contains_key(instance.as_str());
            if orphaned || stuck(settings, now, marker.started_at) {
                candidates.push((key, found.mod_revision, marker, instance, binding));
            }
        })
        .await?;
        let state = &*self.setup.state;
        for (key, revision, marker, instance, binding) in candidates {
            let instance_gone = state
                .get(&self.names().instance_key(&instance))
                .await
                .map_err(|e| self.state_failed(e))?
                .is_none();
            if !instance_gone && !stuck(settings, now, marker.started_at) {
                continue; // provisioned after the walk: a bind in flight
            }
            let record = self.names().binding_key(&instance, &binding);
            match self.read::<BindingRecord>(state, &record).await {
                Ok(Some((record, _))) if record.state != RecordState::Ready => continue,
                Ok(_) => {}
                Err(BrokerError::Internal(_)) => continue, // unreadable: reported as such
                Err(e) => return Err(e),
            }
            let Ok(cluster) = self.cluster(&marker.cluster) else {
                let detail = format!("names cluster '{}', which the config does not have", marker.cluster);
                report.findings.push(finding(Kind::UnreadableRecord, &state_cluster, &key, detail));
                continue;
            };
            if !instance_gone {
                // An unbind of a bind that died (a platform's orphan mitigation) deleted the
                // user: a marker naming nothing harms nothing, and goes with the instance.
                let store = &*cluster.store;
                let name = self.names().user(&instance, &binding);
                let fail = |e| unavailable(&marker.cluster, e);
                if store.user_roles(&name).await.map_err(fail)?.is_none()
                    && store.role_permissions(&name).await.map_err(fail)?.is_none()
                {
                    continue;
                }
            }
            if !self.unchanged(&key, revision).await? {
                continue; // its bind finished, or another began
            }
            let age = now.saturating_sub(marker.started_at);
            let detail = if instance_gone {
                format!("a bind started {age} s ago, of an instance that has no record")
            } else {
                format!("a bind started {age} s ago never finished")
            };
            let target = Target::Marker { key: key.clone(), revision };
            report.findings.push(finding(Kind::StaleBindMarker, &marker.cluster, &key, detail).with(target));
        }
        Ok(())
    }

    /// Users and roles named like the broker's that no record names, on one cluster.
    async fn check_names(&self, cluster: &str, seen: &Seen, report: &mut Report) -> BrokerResult<()> {
        let store = &*self.setup.clusters[cluster].store;
        let prefix = self.names().all_names_prefix();
        let (users, roles) = match list_names(store, &prefix).await.map_err(|e| unavailable(cluster, e))? {
            Ok(found) => found,
            // Too many users for one gRPC answer (about 45,000): the rest of the check runs.
            Err(why) => {
                report.skipped.push(format!("cluster {cluster}: users and roles not listed: {why}"));
                return Ok(());
            }
        };
        report.checked.users += users.len() as u64;
        report.checked.roles += roles.len() as u64;
        for (kind, names) in [(Kind::OrphanUser, users), (Kind::OrphanRole, roles)] {
            for name in names {
                if seen.named.contains(&(cluster.to_owned(), name.clone()))
                    || self.named_now(cluster, &name).await?
                {
                    continue;
                }
                let what = if kind == Kind::OrphanUser { "user" } else { "role" };
                let detail = format!("no binding record, queued deletion or bind marker names this {what}");
                let found = finding(kind, cluster, &name, detail);
                report.findings.push(match self.names().parse_name(&name) {
                    Some(_) => found.with(Target::Name(name.clone())),
                    None => {
                        found.manual("not a name the broker makes: delete it with etcdctl if nobody uses it")
                    }
                });
            }
        }
        Ok(())
    }

    /// Whether a binding record, queue entry or bind marker on `cluster` names `name` now (read
    /// after the lists: a bind that started after the walk has written its record by now).
    async fn named_now(&self, cluster: &str, name: &str) -> BrokerResult<bool> {
        let Some((instance, binding)) = self.names().parse_name(name) else { return Ok(false) };
        let state = &*self.setup.state;
        let record_key = self.names().binding_key(&instance, &binding);
        if let Some(found) = state.get(&record_key).await.map_err(|e| self.state_failed(e))? {
            let record: Option<BindingRecord> = decode(&record_key, &found.value).ok();
            // An unreadable record may name it: not an orphan.
            if !matches!(record, Some(r) if r.cluster != cluster) {
                return Ok(true);
            }
        }
        let queue_key = self.names().role_deletion_key(name);
        if let Some(found) = state.get(&queue_key).await.map_err(|e| self.state_failed(e))? {
            let entry: Option<RoleDeletion> = decode(&queue_key, &found.value).ok();
            if !matches!(entry, Some(e) if e.cluster != cluster) {
                return Ok(true);
            }
        }
        let marker_key = self.names().bind_marker_key(instance.as_str(), binding.as_str());
        if let Some(found) = state.get(&marker_key).await.map_err(|e| self.state_failed(e))? {
            let marker: Option<BindMarker> = decode(&marker_key, &found.value).ok();
            if !matches!(marker, Some(m) if m.cluster != cluster) {
                return Ok(true);
            }
        }
        Ok(false)
    }

    /// Tenant prefixes on `cluster` whose instance has no record there, found with one
    /// single-key read per prefix that holds keys: each read starts past the prefix before.
    async fn check_data(&self, cluster: &str, seen: &Seen, report: &mut Report) -> BrokerResult<()> {
        let store = &*self.setup.clusters[cluster].store;
        let data = self.names().data_prefix().to_owned();
        let mut from = data.clone();
        loop {
            let first = store.scan(&data, &from, 1, true).await.map_err(|e| unavailable(cluster, e))?;
            let Some((key, _)) = first.into_iter().next() else { return Ok(()) };
            let rest = &key[data.len()..];
            let Some((name, _)) = rest.split_once('/') else {
                // A key right under the data prefix: no instance's.
                from = format!("{key}\0");
                report.findings.push(
                    finding(
                        Kind::OrphanData,
                        cluster,
                        &key,
                        "a key outside every instance's prefix".to_owned(),
                    )
                    .manual("delete it with etcdctl if nobody uses it"),
                );
                continue;
            };
            let prefix = format!("{data}{name}/");
            // Every key of the prefix sorts before `<data><name>0` ('0' follows '/').
            from = format!("{data}{name}0");
            report.checked.tenant_prefixes += 1;
            if seen.instances.get(name).is_some_and(|c| c == cluster || c.is_empty()) {
                continue;
            }
            let keys = store.count(&prefix).await.map_err(|e| unavailable(cluster, e))?;
            let detail = format!("{keys} key(s) of no instance on this cluster");
            let found = finding(Kind::OrphanData, cluster, &prefix, detail);
            report.findings.push(match InstanceId::parse(name) {
                Ok(instance) if !self.instance_on_now(&instance, cluster).await? => {
                    found.with(Target::Data { instance, claim: None })
                }
                Ok(_) => continue, // provisioned meanwhile
                Err(_) => found.manual(
                    "not an instance id the broker accepts: delete it with etcdctl if nobody uses it",
                ),
            });
        }
    }

    /// Whether an instance record on `cluster` exists now (read after the data).
    async fn instance_on_now(&self, instance: &InstanceId, cluster: &str) -> BrokerResult<bool> {
        let key = self.names().instance_key(instance);
        Ok(match self.read::<InstanceRecord>(&*self.setup.state, &key).await {
            Ok(Some((record, _))) => record.cluster == cluster,
            Ok(None) => false,
            Err(BrokerError::Internal(_)) => true, // unreadable: reported as such
            Err(e) => return Err(e),
        })
    }
}

/// The users and roles whose names start with `prefix`, or (inner `Err`) why etcd could not
/// list them: its answer holds every user and role of the cluster and is refused when larger
/// than gRPC's 4 MiB (about 45,000 users), which callers skip with a warning rather than fail.
async fn list_names(
    store: &dyn Store,
    prefix: &str,
) -> Result<Result<(Vec<String>, Vec<String>), String>, StoreError> {
    let listed = match store.list_users(prefix).await {
        Ok(users) => store.list_roles(prefix).await.map(|roles| (users, roles)),
        Err(e) => Err(e),
    };
    match listed {
        Ok(found) => Ok(Ok(found)),
        Err(StoreError::Failed(why)) => Ok(Err(why)),
        Err(e) => Err(e),
    }
}

/// Whether something last changed at `since` has been so for longer than the threshold.
fn stuck(settings: &Settings, now: u64, since: u64) -> bool {
    now.saturating_sub(since) > settings.stuck_after
}

#[cfg(test)]
mod tests;

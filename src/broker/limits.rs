//! Plan and organization limits, checked in the transaction that creates the record.
//!
//! What is counted is what the broker's indexes already hold, written in the same transactions
//! as their records (instances per plan: `index/instances/<plan>/`; per organization:
//! `index/organizations/<org>/`; bindings of an instance: its binding records), so the counts
//! are right at every crash point and need no repair. Counting alone would let two brokers
//! that both counted `max - 1` both create. So each limit has a *limit key*
//! (`limits/plans/<plan>`, `limits/organizations/<org>`, `limits/instances/<instance>`): a
//! create reads its revision *before* counting, and its transaction compares that revision and
//! rewrites the key. Of two creates that counted the same number, the second's compare fails;
//! it counts again and sees the first. Deletes do not touch limit keys: they only lower counts.
//! Only creates under a configured limit write its key, so unlimited plans pay nothing.
//!
//! The index entries that a count reads are written whether or not a limit is configured, so a
//! limit set later counts every record written since; the per-organization index exists from
//! this version on (instances created before are not counted against an organization limit
//! until `reconcile --repair` adds their entries: reconcile/repair.rs).

use std::sync::atomic::{AtomicU64, Ordering};

pub use crate::osb::plan_options::Limit;
use crate::osb::{BrokerError, BrokerResult, InstanceId};
use crate::store::{Guard, Write};

use super::EtcdBroker;

/// One configured limit of a plan, named as the metrics label it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlanLimit {
    pub service: String,
    pub plan: String,
    pub limit: Limit,
    pub max: u64,
}

/// Creates this broker process refused per limit, since it started.
#[derive(Debug, Default)]
pub struct LimitRefusals([AtomicU64; 3]);

impl LimitRefusals {
    /// Counts a refusal of `limit`.
    pub(super) fn count(&self, limit: Limit) {
        self.0[limit as usize].fetch_add(1, Ordering::Relaxed);
    }

    /// Each limit with its refusals.
    pub fn snapshot(&self) -> Vec<(Limit, u64)> {
        Limit::ALL.iter().map(|l| (*l, self.0[*l as usize].load(Ordering::Relaxed))).collect()
    }
}

/// The guards and writes a create adds to its transaction for the limits that apply.
#[derive(Debug, Default)]
pub(super) struct Counted {
    pub guards: Vec<Guard>,
    pub writes: Vec<Write>,
}

/// One limit to check: its key, what it counts, the maximum, and how to name it.
struct Check {
    limit: Limit,
    key: String,
    counted: String,
    max: u64,
    what: String,
}

impl EtcdBroker {
    /// The limits a new instance of `plan_id` for `organization` counts against; a 422 naming
    /// the first one reached.
    pub(super) async fn instance_limits(&self, plan_id: &str, organization: &str) -> BrokerResult<Counted> {
        let mut counted = self.plan_change_limits(plan_id).await?;
        if let Some(max) = self.setup.limits.max_instances_per_organization {
            let check = Check {
                limit: Limit::OrganizationInstances,
                key: self.names().organization_limit_key(organization),
                counted: self.names().organization_index_prefix(organization),
                max,
                what: format!("organization '{organization}'"),
            };
            self.check(check, &mut counted).await?;
        }
        Ok(counted)
    }

    /// The limit an instance changing to plan `plan_id` counts against (its organization's
    /// count does not change); also the plan's part of [`EtcdBroker::instance_limits`].
    pub(super) async fn plan_change_limits(&self, plan_id: &str) -> BrokerResult<Counted> {
        let mut counted = Counted::default();
        if let Some(max) = self.plan_options(plan_id).max_instances {
            let check = Check {
                limit: Limit::PlanInstances,
                key: self.names().plan_limit_key(plan_id),
                counted: self.names().instance_index_prefix(plan_id),
                max,
                what: format!("plan '{}'", self.plan_name(plan_id)),
            };
            self.check(check, &mut counted).await?;
        }
        Ok(counted)
    }

    /// The limit a new binding of `instance` (of plan `plan_id`) counts against.
    pub(super) async fn binding_limits(&self, instance: &InstanceId, plan_id: &str) -> BrokerResult<Counted> {
        let mut counted = Counted::default();
        if let Some(max) = self.plan_options(plan_id).max_bindings_per_instance {
            let check = Check {
                limit: Limit::BindingsPerInstance,
                key: self.names().instance_limit_key(instance),
                counted: self.names().bindings_prefix(instance),
                max,
                what: format!("service instance {instance} (plan '{}')", self.plan_name(plan_id)),
            };
            self.check(check, &mut counted).await?;
        }
        Ok(counted)
    }

    /// The limit key's revision first, then the count: a create that commits in between
    /// rewrote the key, so the compare added here fails and the caller counts again.
    async fn check(&self, check: Check, counted: &mut Counted) -> BrokerResult<()> {
        let state = &*self.setup.state;
        let key = state.get(&check.key).await.map_err(|e| self.state_failed(e))?;
        let count = state.count(&check.counted).await.map_err(|e| self.state_failed(e))?;
        if count >= check.max {
            let noun = match check.limit {
                Limit::BindingsPerInstance => "service bindings",
                Limit::PlanInstances | Limit::OrganizationInstances => "service instances",
            };
            let description = format!(
                "{} has reached its limit of {} {noun} ({}); delete one, or ask the operator to raise \
                 the limit",
                check.what,
                check.max,
                check.limit.name()
            );
            return Err(BrokerError::LimitReached { limit: check.limit, description });
        }
        counted.guards.push(match key {
            Some(found) => Guard::Revision(check.key.clone(), found.mod_revision),
            None => Guard::Absent(check.key.clone()),
        });
        counted.writes.push(Write::Put(check.key, Vec::new()));
        Ok(())
    }

    /// A plan's name for messages (its id when the catalog no longer has it).
    fn plan_name(&self, plan_id: &str) -> String {
        let plan = self.setup.catalog.plans().find(|(_, p)| p.id == plan_id);
        plan.map_or_else(|| plan_id.to_owned(), |(_, p)| p.name.clone())
    }

    /// Creates this broker refused per limit, for the metrics.
    pub fn limit_refusals(&self) -> Vec<(Limit, u64)> {
        self.limit_refusals.snapshot()
    }

    /// The configured limits, for the metrics: each catalog plan's, and the organization limit.
    pub fn configured_limits(&self) -> (Vec<PlanLimit>, Option<u64>) {
        let mut plans = Vec::new();
        for (service, plan) in self.setup.catalog.plans() {
            let options = self.plan_options(&plan.id);
            let limits = [
                (Limit::PlanInstances, options.max_instances),
                (Limit::BindingsPerInstance, options.max_bindings_per_instance),
            ];
            for (limit, max) in limits {
                if let Some(max) = max {
                    plans.push(PlanLimit {
                        service: service.name.clone(),
                        plan: plan.name.clone(),
                        limit,
                        max,
                    });
                }
            }
        }
        (plans, self.setup.limits.max_instances_per_organization)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::AtomicBool;
    use std::sync::Arc;

    use crate::broker::tests::*;
    use crate::osb::model::{Bound, ProvisionRequest, Provisioned};
    use crate::osb::{BrokerError, ServiceBroker};
    use crate::store::memory::{MemoryState, MemoryStore};
    use crate::store::Write;

    fn in_org(id: &str, plan: &str, org: &str) -> ProvisionRequest {
        ProvisionRequest { organization_guid: org.into(), ..provision_req(id, plan) }
    }

    fn refused(result: Result<impl std::fmt::Debug, BrokerError>, needle: &str) {
        match result {
            Err(BrokerError::LimitReached { description: message, .. }) => {
                assert!(message.contains(needle), "{message}")
            }
            other => panic!("not refused by a limit ({needle}): {other:?}"),
        }
    }

    #[tokio::test]
    async fn a_plan_takes_its_maximum_of_instances_and_no_more() {
        let broker = limited_broker_on(Arc::new(MemoryStore::default()));
        broker.provision(provision_req("i1", SMALL)).await.unwrap();
        broker.provision(in_org("i2", SMALL, "org-2")).await.unwrap();
        refused(
            broker.provision(in_org("i3", SMALL, "org-3")).await,
            "plan 'plan-small' has reached its limit of 2 service instances (max_instances)",
        );
        // A repeated provision of an existing instance is still 200; other plans are not limited.
        assert_eq!(broker.provision(provision_req("i1", SMALL)).await, Ok(Provisioned::AlreadyExists));
        broker.provision(in_org("l1", LARGE, "org-3")).await.unwrap();
        // A plan change into the full plan counts too.
        refused(broker.update(update_req("l1", SMALL)).await, "(max_instances)");
        // Deleting one frees a place.
        broker.deprovision(deprovision_req("i1")).await.unwrap();
        broker.provision(in_org("i3", SMALL, "org-3")).await.unwrap();
        let refusals = broker.limit_refusals();
        assert_eq!(refusals[0], (super::Limit::PlanInstances, 2));
    }

    #[tokio::test]
    async fn an_organization_takes_its_maximum_of_instances_over_all_plans() {
        let broker = limited_broker_on(Arc::new(MemoryStore::default()));
        broker.provision(in_org("i1", SMALL, "org/a")).await.unwrap();
        broker.provision(in_org("l1", LARGE, "org/a")).await.unwrap();
        broker.provision(in_org("l2", LARGE, "org/a")).await.unwrap();
        refused(
            broker.provision(in_org("l3", LARGE, "org/a")).await,
            "organization 'org/a' has reached its limit of 3 service instances (max_instances_per_organization)",
        );
        broker.provision(in_org("l3", LARGE, "org/b")).await.unwrap();
        broker.deprovision(deprovision_req("l1")).await.unwrap();
        broker.provision(in_org("l4", LARGE, "org/a")).await.unwrap();
    }

    #[tokio::test]
    async fn an_instance_takes_its_plans_maximum_of_bindings() {
        let store = Arc::new(MemoryStore::default());
        let broker = limited_broker_on(store.clone());
        broker.provision(provision_req("i1", SMALL)).await.unwrap();
        broker.provision(in_org("i2", SMALL, "org-2")).await.unwrap();
        broker.bind(bind_req("i1", "b1")).await.unwrap();
        broker.bind(bind_req("i1", "b2")).await.unwrap();
        refused(
            broker.bind(bind_req("i1", "b3")).await,
            "service instance i1 (plan 'plan-small') has reached its limit of 2 service bindings \
             (max_bindings_per_instance)",
        );
        assert!(matches!(broker.bind(bind_req("i1", "b1")).await, Ok(Bound::AlreadyExists(_))));
        broker.bind(bind_req("i2", "b1")).await.unwrap();
        broker.unbind(unbind_req("i1", "b1")).await.unwrap();
        broker.bind(bind_req("i1", "b3")).await.unwrap();
        // The instance's limit key goes with the instance.
        broker.deprovision(deprovision_req("i1")).await.unwrap();
        assert!(!store.snapshot().keys.keys().any(|k| k.contains("limits/instances/i1")));
        assert_consistent(&store.snapshot());
    }

    /// `store`, on which another broker writes `rival` right before the first commit.
    fn racing_once(store: &Arc<MemoryStore>, rival: Vec<Write>) -> HookedStore {
        let once = AtomicBool::new(false);
        HookedStore {
            inner: store.clone(),
            after_ensure_user: Box::new(Vec::new),
            before_commit: Box::new(move |_, _| {
                if once.swap(true, std::sync::atomic::Ordering::SeqCst) {
                    Vec::new()
                } else {
                    rival.clone()
                }
            }),
        }
    }

    /// What a provision of `id` by another broker writes, made on a scratch store.
    async fn rival_provision(id: &str) -> Vec<Write> {
        let scratch = Arc::new(MemoryStore::default());
        limited_broker_on(scratch.clone()).provision(in_org(id, SMALL, "rival")).await.unwrap();
        scratch.snapshot().keys.into_iter().map(|(k, v)| Write::Put(k, v.value)).collect()
    }

    #[tokio::test]
    async fn a_create_that_counted_before_a_racing_one_committed_counts_again() {
        // i1 exists; a second broker provisions i9 between this provision's count and its
        // commit: both counted 1 of 2, and without the limit key's compare both would commit.
        let store = Arc::new(MemoryStore::default());
        limited_broker_on(store.clone()).provision(provision_req("i1", SMALL)).await.unwrap();
        let rival = rival_provision("i9").await;
        let broker = limited_broker_on(Arc::new(racing_once(&store, rival)));
        refused(broker.provision(in_org("i2", SMALL, "org-2")).await, "(max_instances)");
        let state = store.snapshot();
        assert_eq!(state.keys.keys().filter(|k| k.starts_with("/etcd-broker/instances/")).count(), 2);
        assert_consistent(&state);
    }

    #[tokio::test]
    async fn a_bind_that_counted_before_a_racing_one_committed_counts_again() {
        let store = Arc::new(MemoryStore::default());
        let plain = limited_broker_on(store.clone());
        plain.provision(provision_req("i1", SMALL)).await.unwrap();
        plain.bind(bind_req("i1", "b1")).await.unwrap();
        // The racing bind's record, index entry and limit key, as another broker writes them.
        let scratch = Arc::new(MemoryStore::default());
        let other = limited_broker_on(scratch.clone());
        other.provision(provision_req("i1", SMALL)).await.unwrap();
        other.bind(bind_req("i1", "b9")).await.unwrap();
        let rival: Vec<Write> = scratch
            .snapshot()
            .keys
            .into_iter()
            .filter(|(k, _)| k.contains("b9") || k.contains("limits/instances/"))
            .map(|(k, v)| Write::Put(k, v.value))
            .collect();
        let broker = limited_broker_on(Arc::new(racing_once(&store, rival)));
        refused(broker.bind(bind_req("i1", "b2")).await, "(max_bindings_per_instance)");
        let records =
            store.snapshot().keys.into_keys().filter(|k| k.starts_with("/etcd-broker/bindings/i1/"));
        assert_eq!(records.count(), 2);
    }

    /// i1 and its binding b1 exist; one place is left for an instance and one for a binding.
    async fn one_place_left(_: MakeBroker) -> Arc<MemoryStore> {
        let store = Arc::new(MemoryStore::default());
        let broker = limited_broker_on(store.clone());
        broker.provision(provision_req("i1", SMALL)).await.unwrap();
        broker.bind(bind_req("i1", "b1")).await.unwrap();
        store
    }

    /// After any fault and a retry, the limits still count exactly what exists: the last
    /// place is taken, and the next create is refused.
    fn full(state: &MemoryState) {
        assert_consistent(state);
        let count = |prefix: &str| state.keys.keys().filter(|k| k.starts_with(prefix)).count();
        assert_eq!(count("/etcd-broker/instances/"), 2, "{:?}", state.keys.keys());
        assert_eq!(count("/etcd-broker/bindings/i1/"), 2, "{:?}", state.keys.keys());
    }

    #[tokio::test]
    async fn limited_creates_converge_after_a_fault_at_any_step() {
        let makers: (MakeBroker, MakeBroker) = (limited_broker_on, limited_broker_on);
        let setup = || -> std::pin::Pin<Box<dyn std::future::Future<Output = Arc<MemoryStore>>>> {
            Box::pin(one_place_left(limited_broker_on))
        };
        for_every_fault_with(
            "off",
            setup,
            makers,
            |broker| async move {
                broker.provision(in_org("i2", SMALL, "org-2")).await?;
                broker.bind(bind_req("i1", "b2")).await.map(|_| ())
            },
            full,
        )
        .await;
        // And then the limits refuse.
        let store = one_place_left(limited_broker_on).await;
        let broker = limited_broker_on(store.clone());
        broker.provision(in_org("i2", SMALL, "org-2")).await.unwrap();
        broker.bind(bind_req("i1", "b2")).await.unwrap();
        full(&store.snapshot());
        refused(broker.provision(in_org("i3", SMALL, "org-3")).await, "(max_instances)");
        refused(broker.bind(bind_req("i1", "b3")).await, "(max_bindings_per_instance)");
    }
}

//! The inventory behind the gauges (instances and bindings per plan, roles awaiting deletion,
//! sealed and clear-text records), counted by one broker at a time and published in etcd for
//! the others, so that a scrape costs etcd nothing.
//!
//! Counting is O(index entries) in etcd (count-only ranges still visit every key: 0.7 to 1.3 s
//! of etcd's time at 250,000 instances), so it is not done per scrape and per broker. The
//! leader of the task [`TASK`] ([`super::leader`]) counts every `every` and writes the counts,
//! with the time they were taken, to one key (`Names::inventory_key`); every broker reads that
//! key every `every` (one single-key read) and its gauges show what it read. Counts are of the
//! index entries that the records' own transactions write, so they are exact at the moment
//! they are taken, whatever crashed before; they are at most about `2 * every` old, and the
//! age is exported beside them. Two brokers that both think they lead for a moment both write
//! exact counts: the later write wins, and nothing is lost but a little etcd time.

use std::collections::BTreeMap;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use super::leader::{self, TaskSettings};
use super::{EtcdBroker, PlanInventory};
use crate::osb::{BrokerError, BrokerResult};
use crate::store::Write;

/// The name of the inventory task's leader key.
pub const TASK: &str = "inventory";

/// What the leader counted, as published in etcd (JSON).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct InventoryCounts {
    /// When the counts were taken, in seconds since the epoch (the counting broker's clock).
    pub counted_at: u64,
    /// Plan id -> its instances and bindings, for every plan of the counting broker's catalog.
    pub plans: BTreeMap<String, PlanCounts>,
    /// Roles of deleted bindings queued for the role reaper.
    pub queued_roles: u64,
    /// Key name -> binding records sealed with it, for every key that seals at least one
    /// (each broker adds its own keys at 0: [`EtcdBroker::sealed_per_key`]).
    pub sealed: BTreeMap<String, u64>,
    /// Binding records whose secrets are stored in clear.
    pub clear_text: u64,
}

/// One plan's counts.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PlanCounts {
    pub instances: u64,
    pub bindings: u64,
}

/// What the inventory task tells the broker's gauges, without this module knowing about them.
pub struct Observer {
    /// This broker became the inventory leader (`true`) or stopped being it.
    pub leading: Box<dyn Fn(bool) + Send + Sync>,
    /// Counts taken by this broker or read from etcd: what the gauges show from now on.
    pub counted: Box<dyn Fn(&InventoryCounts) + Send + Sync>,
}

/// Runs forever: while this broker leads the task, counts and publishes every `every`; on
/// every broker, reads the published counts at once and then every `every`.
pub async fn run(broker: Arc<EtcdBroker>, settings: TaskSettings, observer: Observer) {
    let leadership = broker.leadership(TASK, &settings);
    let Observer { leading, counted } = observer;
    let count = || async {
        match broker.count_and_publish_inventory().await {
            Ok(counts) => counted(&counts),
            Err(e) => tracing::warn!(error = %e, "counting the inventory failed; trying again later"),
        }
    };
    let read = async {
        loop {
            match broker.published_inventory().await {
                Ok(Some(counts)) => counted(&counts),
                Ok(None) => {}
                Err(e) => tracing::debug!(error = %e, "cannot read the published inventory"),
            }
            tokio::time::sleep(settings.every).await;
        }
    };
    let leader_observer = leader::Observer { leading };
    tokio::join!(leadership.run(settings.every, count, &leader_observer), read);
}

impl EtcdBroker {
    /// Counts the inventory in etcd: a few count-only requests per plan and key, each
    /// O(entries) in etcd. Only the inventory leader calls it (and tests).
    pub async fn count_inventory(&self) -> BrokerResult<InventoryCounts> {
        let counted_at = self.now();
        let plans = self.count_plans().await?;
        let queued_roles = self.queued_roles().await?;
        let sealing = self.sealing_inventory().await?;
        Ok(InventoryCounts {
            counted_at,
            plans,
            queued_roles,
            sealed: sealing.sealed.into_iter().filter(|(_, records)| *records > 0).collect(),
            clear_text: sealing.clear_text,
        })
    }

    /// Instances and bindings of every catalog plan, from the per-plan index keys: two
    /// count-only requests per plan.
    pub(super) async fn count_plans(&self) -> BrokerResult<BTreeMap<String, PlanCounts>> {
        let state = &*self.setup.state;
        let mut plans = BTreeMap::new();
        for (_, plan) in self.setup.catalog.plans() {
            let count =
                |prefix: String| async move { state.count(&prefix).await.map_err(|e| self.state_failed(e)) };
            let instances = count(self.names().instance_index_prefix(&plan.id)).await?;
            let bindings = count(self.names().binding_index_prefix(&plan.id)).await?;
            plans.insert(plan.id.clone(), PlanCounts { instances, bindings });
        }
        Ok(plans)
    }

    /// Counts and writes the counts to the inventory key (a plain put: any broker's exact
    /// counts may replace any other's).
    pub async fn count_and_publish_inventory(&self) -> BrokerResult<InventoryCounts> {
        let counts = self.count_inventory().await?;
        let value = serde_json::to_vec(&counts)
            .map_err(|e| BrokerError::Internal(format!("cannot encode the inventory: {e}")))?;
        let put = Write::Put(self.names().inventory_key(), value);
        self.setup.state.commit(&[], &[put]).await.map_err(|e| self.state_failed(e))?;
        Ok(counts)
    }

    /// The counts the inventory leader published last, if any: one single-key read.
    pub async fn published_inventory(&self) -> BrokerResult<Option<InventoryCounts>> {
        let key = self.names().inventory_key();
        Ok(self.read::<InventoryCounts>(&*self.setup.state, &key).await?.map(|(counts, _)| counts))
    }

    /// `counts` per plan of this broker's catalog, named for the gauges; plans the counting
    /// broker did not know (a catalog changing in a rolling deploy) are left out until a
    /// broker that knows them counts.
    pub fn plan_inventory(&self, counts: &InventoryCounts) -> Vec<PlanInventory> {
        self.setup
            .catalog
            .plans()
            .filter_map(|(service, plan)| {
                let found = counts.plans.get(&plan.id)?;
                Some(PlanInventory {
                    service: service.name.clone(),
                    plan: plan.name.clone(),
                    instances: found.instances,
                    bindings: found.bindings,
                })
            })
            .collect()
    }

    /// Sealed records per key for the gauges: `counts`' keys, and this broker's own local keys
    /// at 0 when they seal nothing (a key with records is in `counts` whatever the keychains:
    /// the index names it).
    pub fn sealed_per_key(&self, counts: &InventoryCounts) -> Vec<(String, u64)> {
        let mut sealed = counts.sealed.clone();
        for key in self.setup.sealing.keychain().into_iter().flat_map(|k| k.keys()) {
            if key.backend().is_none() {
                sealed.entry(key.name().to_owned()).or_insert(0);
            }
        }
        sealed.into_iter().collect()
    }

    /// How old counts taken at `counted_at` are by this broker's clock, in seconds (0 if they
    /// look newer: clocks of two hosts differ).
    pub fn inventory_age(&self, counted_at: u64) -> u64 {
        self.now().saturating_sub(counted_at)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use std::time::Duration;

    use super::*;
    use crate::broker::tests::*;
    use crate::osb::ServiceBroker;
    use crate::sealing::{Keychain, Sealing};
    use crate::store::memory::MemoryStore;

    #[tokio::test]
    async fn the_published_counts_are_what_the_indexes_hold_and_read_back_unchanged() {
        let store = Arc::new(MemoryStore::default());
        let broker = sealed_broker_on(store.clone());
        broker.provision(provision_req("i1", SMALL)).await.unwrap();
        broker.provision(provision_req("i2", LARGE)).await.unwrap();
        broker.bind(bind_req("i1", "b1")).await.unwrap();
        broker.bind(bind_req("i1", "b2")).await.unwrap();
        broker.unbind(unbind_req("i1", "b2")).await.unwrap();
        broker_on(store.clone()).bind(bind_req("i2", "b3")).await.unwrap();
        assert_eq!(broker.published_inventory().await.unwrap(), None);

        let counts = broker.count_and_publish_inventory().await.unwrap();
        let plan = |instances, bindings| PlanCounts { instances, bindings };
        // Bindings count under the plan their bind named (bind_req's: SMALL).
        assert_eq!(counts.plans[SMALL], plan(1, 2));
        assert_eq!(counts.plans[LARGE], plan(1, 0));
        assert_eq!(counts.plans[FAR], plan(0, 0));
        assert_eq!(counts.queued_roles, 1);
        assert_eq!(counts.sealed, BTreeMap::from([("k1".to_owned(), 1)]));
        assert_eq!(broker.sealed_per_key(&counts), [("k1".to_owned(), 1), ("k2".to_owned(), 0)]);
        assert_eq!(counts.clear_text, 1);
        assert_eq!(broker.published_inventory().await.unwrap(), Some(counts.clone()));
        assert_eq!(broker.inventory_age(counts.counted_at + 5), 0);
        assert!(broker.inventory_age(0) >= counts.counted_at);
        let small = broker.plan_inventory(&counts).into_iter().find(|p| p.plan == SMALL).unwrap();
        assert_eq!((small.service.as_str(), small.instances, small.bindings), ("etcd", 1, 2));
    }

    #[tokio::test]
    async fn a_broker_shows_its_own_keys_and_only_the_plans_it_knows() {
        let store = Arc::new(MemoryStore::default());
        let k2 =
            Keychain::new("k2", test_keychain("k2").keys().filter(|k| k.name() == "k2").cloned()).unwrap();
        let broker = broker_with(store, Sealing::On(k2));
        let counts = InventoryCounts {
            counted_at: 1,
            plans: [("retired-plan".to_owned(), PlanCounts { instances: 4, bindings: 2 })].into(),
            sealed: [("k1".to_owned(), 5)].into(),
            ..Default::default()
        };
        assert_eq!(broker.sealed_per_key(&counts), [("k1".to_owned(), 5), ("k2".to_owned(), 0)]);
        assert!(broker.plan_inventory(&counts).is_empty());
    }

    /// One broker's task on `store`: what it was told, and whether it leads.
    struct Running {
        seen: Arc<Mutex<Vec<InventoryCounts>>>,
        leading: Arc<Mutex<bool>>,
    }

    fn run_on(store: &Arc<MemoryStore>, holder: &str, clock: Arc<TestClock>) -> Running {
        let broker = Arc::new(rotating_broker_on(store.clone(), clock));
        let (seen, leading) = (Arc::new(Mutex::new(Vec::new())), Arc::new(Mutex::new(false)));
        let observer = Observer {
            leading: Box::new({
                let leading = leading.clone();
                move |now| *leading.lock().unwrap() = now
            }),
            counted: Box::new({
                let seen = seen.clone();
                move |counts| seen.lock().unwrap().push(counts.clone())
            }),
        };
        let settings = TaskSettings {
            every: Duration::from_secs(60),
            lease_ttl: Duration::from_secs(5),
            holder: holder.into(),
        };
        tokio::spawn(run(broker, settings, observer));
        Running { seen, leading }
    }

    #[tokio::test(start_paused = true)]
    async fn one_broker_counts_and_the_others_read_its_counts() {
        let store = Arc::new(MemoryStore::default());
        let clock = Arc::new(TestClock::default());
        clock.set(1_000);
        let writer = broker_on(store.clone());
        writer.provision(provision_req("i1", SMALL)).await.unwrap();
        let a = run_on(&store, "a", clock.clone());
        tokio::time::sleep(Duration::from_millis(100)).await;
        let b = run_on(&store, "b", clock.clone());
        tokio::time::sleep(Duration::from_secs(1)).await;
        assert!(*a.leading.lock().unwrap() && !*b.leading.lock().unwrap());
        let last = |r: &Running| r.seen.lock().unwrap().last().cloned();
        assert_eq!(last(&a).unwrap().plans[SMALL].instances, 1);
        // b started after a published: it shows a's counts at once, without counting.
        assert_eq!(last(&b), last(&a));

        // Nothing is counted again before the interval: the gauges keep the old counts.
        writer.provision(provision_req("i2", SMALL)).await.unwrap();
        clock.set(1_030);
        tokio::time::sleep(Duration::from_secs(30)).await;
        assert_eq!(last(&b).unwrap().plans[SMALL].instances, 1);
        // After it, a counts again and b reads it within one more interval.
        clock.set(1_121);
        tokio::time::sleep(Duration::from_secs(91)).await;
        let b_now = last(&b).unwrap();
        assert_eq!((b_now.plans[SMALL].instances, b_now.counted_at), (2, 1_121));
    }
}

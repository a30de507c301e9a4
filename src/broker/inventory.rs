//! The inventory behind the gauges (instances and bindings per plan, roles awaiting deletion,
//! sealed and clear-text records), kept by one broker at a time and published in etcd for the
//! others, so that a scrape costs etcd nothing.
//!
//! The counts are of the index entries that the records' own transactions write, so they are
//! exact whatever crashed before. Counting them is O(entries) in etcd, and etcd holds its
//! in-memory index for a count's whole walk: every write waits behind it (0.35 s at a million
//! instances). So the leader of the task [`TASK`] ([`super::leader`]) counts once, when it
//! starts leading, all prefixes at one revision ([`Store::count_at_one_revision`]), and from
//! then on follows the keys created and deleted after that revision ([`Store::follow_keys`]):
//! O(changes), never a walk. A follow that breaks (etcd restarted, history compacted) is
//! replaced by a new count. Every `every` the leader writes the counts, with the time, to one
//! key (`Names::inventory_key`); every broker reads that key every `every` (one single-key
//! read) and its gauges show what it read, at most about `2 * every` old (the age is exported
//! beside them). Two brokers that both think they lead for a moment both write exact counts:
//! the later write wins.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use tokio::sync::mpsc;

use super::leader::{self, TaskSettings};
use super::{EtcdBroker, PlanInventory, SealingInventory};
use crate::osb::{BrokerError, BrokerResult};
use crate::store::{KeyChange, Write};

/// The name of the inventory task's leader key.
pub const TASK: &str = "inventory";

/// What the leader counted, as published in etcd (JSON).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct InventoryCounts {
    /// When the counts were current, in seconds since the epoch (the leader's clock).
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

/// Runs forever: while this broker leads the task, counts once, follows the changes and
/// publishes every `every`; on every broker, reads the published counts at once and then
/// every `every`.
pub async fn run(broker: Arc<EtcdBroker>, settings: TaskSettings, observer: Observer) {
    let leadership = broker.leadership(TASK, &settings);
    let Observer { leading, counted } = observer;
    let keep = || keep_counts(&broker, settings.every, &counted);
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
    tokio::join!(leadership.lead(keep, &leader_observer), read);
}

/// The leader's work: a count, then the changes after it, published every `every`, until the
/// follow breaks (then it returns, and [`leader::Leadership::lead`] runs it again: a new count).
async fn keep_counts(
    broker: &EtcdBroker,
    every: Duration,
    counted: &(dyn Fn(&InventoryCounts) + Send + Sync),
) {
    let mut tally = match broker.count_tally().await {
        Ok(tally) => tally,
        Err(e) => {
            tracing::warn!(error = %e, "counting the inventory failed; trying again later");
            tokio::time::sleep(every).await;
            return;
        }
    };
    let (sink, mut changes) = mpsc::unbounded_channel();
    let state = &*broker.setup.state;
    let revision = tally.revision;
    let follows = tally.followed().into_iter().map(|prefix| {
        let sink = sink.clone();
        async move { state.follow_keys(&prefix, revision, sink).await }
    });
    let follow = futures_util::future::try_join_all(follows);
    tokio::pin!(follow);
    let mut publish = tokio::time::interval(every);
    publish.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let ended = loop {
        tokio::select! {
            Some(batch) = changes.recv() => tally.apply(&batch),
            _ = publish.tick() => {
                let counts = tally.counts(broker.now());
                match broker.publish_inventory(&counts).await {
                    Ok(()) => counted(&counts),
                    Err(e) => tracing::warn!(error = %e, "publishing the inventory failed; trying again later"),
                }
            }
            ended = &mut follow => break ended,
        }
    };
    match ended {
        Err(e) => tracing::warn!(error = %e, "following the inventory's keys stopped; counting again"),
        // Only when every sink is closed, which this task never does while it runs.
        Ok(_) => tracing::warn!("following the inventory's keys ended; counting again"),
    }
    // Not at once: a follow that cannot start (etcd unreachable) is not retried in a loop.
    tokio::time::sleep(FOLLOW_AGAIN_AFTER.min(every)).await;
}

/// The pause between a broken follow and the next count.
const FOLLOW_AGAIN_AFTER: Duration = Duration::from_secs(1);

/// Which of the inventory's counts an index key belongs to.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Slot {
    Instances(String),
    Bindings(String),
    AllBindings,
    InCredentialStore,
    Sealed(String),
    QueuedRoles,
}

/// The inventory's counts as of a revision plus every change followed since: each slot with
/// the prefix whose keys it counts. A key may count in several slots (a binding's index
/// entry counts for its plan and for all bindings).
#[derive(Debug, Clone)]
struct Tally {
    slots: Vec<(Slot, String, u64)>,
    /// Prefix of the sealed-records index, whose next segment is the sealing key's name: a
    /// key that seals its first record after the count gets its slot then.
    sealed_prefix: String,
    /// The revision of the count.
    revision: i64,
}

impl Tally {
    /// Counts a created key +1 and a deleted one -1 in every slot whose prefix it has.
    fn apply(&mut self, changes: &[KeyChange]) {
        for change in changes {
            let (KeyChange::Created(key) | KeyChange::Deleted(key)) = change;
            if let Some(name) = key.strip_prefix(&self.sealed_prefix).and_then(|rest| rest.split_once('/')) {
                let slot = Slot::Sealed(name.0.to_owned());
                if !self.slots.iter().any(|(s, _, _)| *s == slot) {
                    let prefix = format!("{}{}/", self.sealed_prefix, name.0);
                    self.slots.push((slot, prefix, 0));
                }
            }
            for (_, _, count) in
                self.slots.iter_mut().filter(|(_, prefix, _)| key.starts_with(prefix.as_str()))
            {
                *count = match change {
                    KeyChange::Created(_) => *count + 1,
                    KeyChange::Deleted(_) => count.saturating_sub(1),
                };
            }
        }
    }

    /// The prefixes to follow: the fewest whose keys include every slot's (and every sealing
    /// key's, known now or not).
    fn followed(&self) -> Vec<String> {
        let mut all: Vec<&str> = self.slots.iter().map(|(_, prefix, _)| prefix.as_str()).collect();
        all.push(&self.sealed_prefix);
        all.sort_unstable();
        let mut cover: Vec<String> = Vec::new();
        for prefix in all {
            if !cover.last().is_some_and(|kept| prefix.starts_with(kept.as_str())) {
                cover.push(prefix.to_owned());
            }
        }
        cover
    }

    /// The counts as published, taken at `counted_at`: sealing keys that seal nothing left out.
    fn counts(&self, counted_at: u64) -> InventoryCounts {
        let sealing = self.sealing();
        let mut counts = InventoryCounts {
            counted_at,
            sealed: sealing.sealed.into_iter().filter(|(_, records)| *records > 0).collect(),
            clear_text: sealing.clear_text,
            ..Default::default()
        };
        for (slot, _, count) in &self.slots {
            match slot {
                Slot::Instances(plan) => counts.plans.entry(plan.clone()).or_default().instances = *count,
                Slot::Bindings(plan) => counts.plans.entry(plan.clone()).or_default().bindings = *count,
                Slot::QueuedRoles => counts.queued_roles = *count,
                Slot::AllBindings | Slot::InCredentialStore | Slot::Sealed(_) => {}
            }
        }
        counts
    }

    /// Sealed records per sealing key (every key counted, in name order, 0 included), records
    /// in clear and records in a credential store.
    fn sealing(&self) -> SealingInventory {
        let count_of = |wanted: &Slot| {
            self.slots.iter().find(|(slot, _, _)| slot == wanted).map_or(0, |(_, _, count)| *count)
        };
        let mut sealed: Vec<(String, u64)> = self
            .slots
            .iter()
            .filter_map(|(slot, _, count)| match slot {
                Slot::Sealed(name) => Some((name.clone(), *count)),
                _ => None,
            })
            .collect();
        sealed.sort();
        let in_credential_store = count_of(&Slot::InCredentialStore);
        let sealed_total: u64 = sealed.iter().map(|(_, records)| records).sum();
        let clear_text = count_of(&Slot::AllBindings).saturating_sub(sealed_total + in_credential_store);
        SealingInventory { sealed, clear_text, in_credential_store }
    }
}

impl EtcdBroker {
    /// Counts the inventory in etcd: one request, O(index entries) in etcd. Only the inventory
    /// leader calls it, when it starts leading (and tests).
    pub async fn count_inventory(&self) -> BrokerResult<InventoryCounts> {
        Ok(self.count_tally().await?.counts(self.now()))
    }

    /// Sealed records per key (every key that seals records and every local key of the
    /// keychain, 0 when it seals none) and records in clear, from the index at one revision:
    /// one request, O(index entries) in etcd.
    pub async fn sealing_inventory(&self) -> BrokerResult<SealingInventory> {
        Ok(self.count_tally().await?.sealing())
    }

    /// Every count of the inventory at one revision. The sealing keys in use are looked up
    /// before and after the count: a key that sealed its first record in between would be
    /// missing from the count, so then it counts again with that key too.
    async fn count_tally(&self) -> BrokerResult<Tally> {
        let names = self.names();
        let mut sealing_keys = self.sealing_keys_in_use().await?;
        // A remote key's records are counted per version in use (`<name>.v<N>`), so its bare
        // name has no count of its own.
        for key in self.setup.sealing.keychain().into_iter().flat_map(|k| k.keys()) {
            if key.backend().is_none() {
                sealing_keys.push(key.name().to_owned());
            }
        }
        loop {
            sealing_keys.sort();
            sealing_keys.dedup();
            let mut slots = Vec::new();
            for (_, plan) in self.setup.catalog.plans() {
                slots.push((Slot::Instances(plan.id.clone()), names.instance_index_prefix(&plan.id)));
                slots.push((Slot::Bindings(plan.id.clone()), names.binding_index_prefix(&plan.id)));
            }
            slots.push((Slot::AllBindings, names.all_bindings_index_prefix()));
            slots.push((Slot::InCredentialStore, names.stored_index_prefix()));
            slots.push((Slot::QueuedRoles, names.role_deletions_prefix()));
            for key in &sealing_keys {
                slots.push((Slot::Sealed(key.clone()), names.sealed_key_prefix(key)));
            }
            let prefixes: Vec<String> = slots.iter().map(|(_, prefix)| prefix.clone()).collect();
            let (counts, revision) =
                self.setup.state.count_at_one_revision(&prefixes).await.map_err(|e| self.state_failed(e))?;
            let new_keys: Vec<String> =
                self.sealing_keys_in_use().await?.into_iter().filter(|k| !sealing_keys.contains(k)).collect();
            if new_keys.is_empty() {
                let slots =
                    slots.into_iter().zip(counts).map(|((slot, prefix), count)| (slot, prefix, count));
                return Ok(Tally {
                    slots: slots.collect(),
                    sealed_prefix: names.sealed_index_prefix(),
                    revision,
                });
            }
            sealing_keys.extend(new_keys);
        }
    }

    /// Writes `counts` to the inventory key (a plain put: any broker's exact counts may replace
    /// any other's).
    async fn publish_inventory(&self, counts: &InventoryCounts) -> BrokerResult<()> {
        let value = serde_json::to_vec(counts)
            .map_err(|e| BrokerError::Internal(format!("cannot encode the inventory: {e}")))?;
        let put = Write::Put(self.names().inventory_key(), value);
        self.setup.state.commit(&[], &[put]).await.map_err(|e| self.state_failed(e))?;
        Ok(())
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

        let counts = broker.count_inventory().await.unwrap();
        broker.publish_inventory(&counts).await.unwrap();
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

    #[tokio::test(start_paused = true)]
    async fn the_leader_counts_once_and_follows_every_change_after() {
        let store = Arc::new(MemoryStore::default());
        let clock = Arc::new(TestClock::default());
        let (plain, sealed) = (broker_on(store.clone()), sealed_broker_on(store.clone()));
        plain.provision(provision_req("i1", SMALL)).await.unwrap();
        plain.bind(bind_req("i1", "b1")).await.unwrap();
        let a = run_on(&store, "a", clock.clone());
        tokio::time::sleep(Duration::from_secs(1)).await;
        assert!(*a.leading.lock().unwrap());
        let counted = store.snapshot().revision;

        // After the count: a sealing key the leader's keychain does not hold seals its first
        // record, instances and bindings come and go, a role is queued.
        plain.provision(provision_req("i2", LARGE)).await.unwrap();
        sealed.bind(bind_req("i1", "b2")).await.unwrap();
        sealed.bind(bind_req("i2", "b3")).await.unwrap();
        plain.unbind(unbind_req("i1", "b1")).await.unwrap();
        plain.deprovision(deprovision_req("i2")).await.unwrap();
        assert!(store.snapshot().revision > counted);
        tokio::time::sleep(Duration::from_secs(60)).await;

        let last = a.seen.lock().unwrap().last().cloned().unwrap();
        let fresh = plain.count_inventory().await.unwrap();
        assert_eq!(
            InventoryCounts { counted_at: 0, ..last.clone() },
            InventoryCounts { counted_at: 0, ..fresh }
        );
        assert_eq!(last.plans[SMALL], PlanCounts { instances: 1, bindings: 1 });
        assert_eq!(last.plans[LARGE], PlanCounts { instances: 0, bindings: 0 });
        assert_eq!(last.sealed, BTreeMap::from([("k1".to_owned(), 1)]));
        assert_eq!((last.clear_text, last.queued_roles > 0), (0, true));
    }

    #[test]
    fn a_tally_follows_the_fewest_prefixes_and_counts_each_change_in_every_slot_it_falls_in() {
        let mut tally = Tally {
            slots: vec![
                (Slot::Bindings("p".into()), "/s/index/bindings/p/".into(), 2),
                (Slot::AllBindings, "/s/index/bindings/".into(), 3),
                (Slot::Instances("p".into()), "/s/index/instances/p/".into(), 1),
                (Slot::Sealed("k1".into()), "/s/index/sealed/k1/".into(), 1),
                (Slot::QueuedRoles, "/s/role-deletions/".into(), 0),
            ],
            sealed_prefix: "/s/index/sealed/".into(),
            revision: 7,
        };
        assert_eq!(
            tally.followed(),
            ["/s/index/bindings/", "/s/index/instances/p/", "/s/index/sealed/", "/s/role-deletions/"]
        );
        let created = |k: &str| KeyChange::Created(k.into());
        let deleted = |k: &str| KeyChange::Deleted(k.into());
        tally.apply(&[
            created("/s/index/bindings/p/i/b9"),
            created("/s/index/sealed/k2/i/b9"),
            deleted("/s/index/sealed/k1/i/b1"),
            deleted("/s/index/instances/p/i0"),
            deleted("/s/index/instances/p/i0"),
            created("/s/role-deletions/r"),
            created("/s/records/i/b9"),
        ]);
        let counts = tally.counts(5);
        assert_eq!(counts.plans["p"], PlanCounts { instances: 0, bindings: 3 });
        assert_eq!(counts.sealed, BTreeMap::from([("k2".to_owned(), 1)]));
        assert_eq!((counts.clear_text, counts.queued_roles, counts.counted_at), (3, 1, 5));
    }
}

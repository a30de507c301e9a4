//! The inventory gauges (instances and bindings per plan, roles awaiting deletion, sealed and
//! clear-text records, the keychain's keys) as a Prometheus collector over the broker's counts
//! in etcd, with the configured limits and this process's refusals by them beside.
//!
//! A scrape sends etcd nothing: one broker at a time counts in etcd every
//! `[metrics] inventory_seconds` and publishes the counts, every broker reads them as often
//! (`broker/inventory.rs`), and [`Inventory::apply`] sets the gauges from what was read. The
//! monitoring listener calls [`Inventory::before_scrape`], which only copies this process's
//! refusal counts and the counts' age. If etcd fails, the last counts stay and their age grows.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use prometheus::core::{Collector, Desc};
use prometheus::proto::MetricFamily;
use prometheus::{IntCounterVec, IntGauge, IntGaugeVec, Opts};

use crate::broker::inventory::InventoryCounts;
use crate::broker::limits::Limit;
use crate::broker::EtcdBroker;

/// The inventory gauges of one broker; clones share them.
#[derive(Clone)]
pub struct Inventory {
    broker: Arc<EtcdBroker>,
    /// Service instances by service and plan.
    instances: IntGaugeVec,
    /// Service bindings by service and plan.
    bindings: IntGaugeVec,
    /// Roles of deleted bindings that wait for the role reaper.
    roles_awaiting_deletion: IntGauge,
    /// Binding records whose password is sealed, by the key that sealed it (configured or not).
    sealed_records: IntGaugeVec,
    /// Binding records whose password is in clear.
    clear_text_records: IntGauge,
    /// 1 for each key of this broker's keychain: what the alert on records sealed with a key
    /// the config no longer holds compares `sealed_records` with. Fixed at start.
    keychain_keys: IntGaugeVec,
    /// The configured limits per plan (`max_instances`, `max_bindings_per_instance`), next to
    /// `instances` and `bindings`. Fixed at start.
    plan_limits: IntGaugeVec,
    /// `max_instances_per_organization`, when configured. Fixed at start.
    organization_limit: IntGaugeVec,
    /// Creates this process refused by a limit, by limit (caught up before each scrape).
    limit_refusals: IntCounterVec,
    /// Seconds since the counts shown were taken; exported once there are counts.
    age: IntGauge,
    /// When the counts shown were taken (seconds since the epoch); 0 before the first.
    counted_at: Arc<AtomicU64>,
    /// 1 while this broker leads the inventory task (it counts), else 0.
    leader: IntGauge,
}

impl Inventory {
    /// The gauges of `broker`'s inventory, at 0 until the first counts are applied.
    pub fn new(broker: Arc<EtcdBroker>) -> Self {
        let per_plan = |name: &str, help: &str| {
            IntGaugeVec::new(Opts::new(name, help), &["service", "plan"]).expect("valid metric")
        };
        let per_key =
            |name: &str, help: &str| IntGaugeVec::new(Opts::new(name, help), &["key"]).expect("valid metric");
        let keychain_keys = per_key("etcd_broker_keychain_keys", "1 for each key of the broker's keychain.");
        for name in broker.keychain_key_names() {
            keychain_keys.with_label_values(&[name.as_str()]).set(1);
        }
        let plan_limits = IntGaugeVec::new(
            Opts::new("etcd_broker_plan_limit", "The configured limits of a plan, by limit."),
            &["service", "plan", "limit"],
        )
        .expect("valid metric");
        let organization_limit = IntGaugeVec::new(
            Opts::new(
                "etcd_broker_organization_instances_limit",
                "The configured maximum of service instances per organization.",
            ),
            &[],
        )
        .expect("valid metric");
        let (plans, organization) = broker.configured_limits();
        for p in plans {
            plan_limits
                .with_label_values(&[p.service.as_str(), p.plan.as_str(), p.limit.name()])
                .set(p.max as i64);
        }
        if let Some(max) = organization {
            organization_limit.with_label_values(&[] as &[&str]).set(max as i64);
        }
        let limit_refusals = IntCounterVec::new(
            Opts::new(
                "etcd_broker_limit_refusals_total",
                "Provisions, plan changes and binds this process refused because a limit was reached.",
            ),
            &["limit"],
        )
        .expect("valid metric");
        for limit in Limit::ALL {
            limit_refusals.with_label_values(&[limit.name()]);
        }
        Self {
            plan_limits,
            organization_limit,
            limit_refusals,
            broker,
            instances: per_plan("etcd_broker_service_instances", "Service instances by service and plan."),
            bindings: per_plan("etcd_broker_service_bindings", "Service bindings by service and plan."),
            roles_awaiting_deletion: IntGauge::new(
                "etcd_broker_roles_awaiting_deletion",
                "Roles of deleted bindings queued for the role reaper (their users are gone).",
            )
            .expect("valid metric"),
            sealed_records: per_key(
                "etcd_broker_sealed_records",
                "Binding records whose password is sealed, by the key that sealed it.",
            ),
            clear_text_records: IntGauge::new(
                "etcd_broker_clear_text_records",
                "Binding records whose password is stored in clear (written with sealing off or before it).",
            )
            .expect("valid metric"),
            keychain_keys,
            age: IntGauge::new(
                "etcd_broker_inventory_age_seconds",
                "Seconds since the inventory gauges' counts were taken in etcd.",
            )
            .expect("valid metric"),
            counted_at: Arc::new(AtomicU64::new(0)),
            leader: IntGauge::new(
                "etcd_broker_inventory_leader",
                "1 while this broker leads the inventory task (counts in etcd for every broker), else 0.",
            )
            .expect("valid metric"),
        }
    }

    /// Sets the gauges to `counts` (taken by this broker or read from etcd).
    pub fn apply(&self, counts: &InventoryCounts) {
        for plan in self.broker.plan_inventory(counts) {
            let labels = [plan.service.as_str(), plan.plan.as_str()];
            self.instances.with_label_values(&labels).set(plan.instances as i64);
            self.bindings.with_label_values(&labels).set(plan.bindings as i64);
        }
        self.roles_awaiting_deletion.set(counts.queued_roles as i64);
        // A key whose records are all gone (and that is not configured) leaves the series.
        self.sealed_records.reset();
        for (key, records) in self.broker.sealed_per_key(counts) {
            self.sealed_records.with_label_values(&[key.as_str()]).set(records as i64);
            // A remote key's versions (`<name>.v<N>`) are held by the keychain's `<name>`:
            // the alert on unknown keys compares by these names.
            if self.broker.keychain_holds(&key) {
                self.keychain_keys.with_label_values(&[key.as_str()]).set(1);
            }
        }
        self.clear_text_records.set(counts.clear_text as i64);
        self.counted_at.store(counts.counted_at, Ordering::Relaxed);
    }

    /// Whether this broker leads the inventory task now.
    pub fn set_leading(&self, leading: bool) {
        self.leader.set(i64::from(leading));
    }

    /// Brings what lives in this process up to date for a scrape, without asking etcd: the
    /// refusals by limit, and the counts' age.
    pub fn before_scrape(&self) {
        for (limit, refused) in self.broker.limit_refusals() {
            let counter = self.limit_refusals.with_label_values(&[limit.name()]);
            counter.inc_by(refused.saturating_sub(counter.get()));
        }
        let counted_at = self.counted_at.load(Ordering::Relaxed);
        if counted_at > 0 {
            self.age.set(i64::try_from(self.broker.inventory_age(counted_at)).unwrap_or(i64::MAX));
        }
    }
}

impl Collector for Inventory {
    fn desc(&self) -> Vec<&Desc> {
        let mut descs = self.instances.desc();
        descs.extend(self.bindings.desc());
        descs.extend(self.roles_awaiting_deletion.desc());
        descs.extend(self.sealed_records.desc());
        descs.extend(self.clear_text_records.desc());
        descs.extend(self.keychain_keys.desc());
        descs.extend(self.plan_limits.desc());
        descs.extend(self.organization_limit.desc());
        descs.extend(self.limit_refusals.desc());
        descs.extend(self.age.desc());
        descs.extend(self.leader.desc());
        descs
    }

    fn collect(&self) -> Vec<MetricFamily> {
        let mut families = self.instances.collect();
        families.extend(self.bindings.collect());
        families.extend(self.roles_awaiting_deletion.collect());
        families.extend(self.sealed_records.collect());
        families.extend(self.clear_text_records.collect());
        families.extend(self.keychain_keys.collect());
        families.extend(self.plan_limits.collect());
        families.extend(self.organization_limit.collect());
        families.extend(self.limit_refusals.collect());
        // No age before the first counts: the gauges' zeros are not counts yet.
        if self.counted_at.load(Ordering::Relaxed) > 0 {
            families.extend(self.age.collect());
        }
        families.extend(self.leader.collect());
        families
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;
    use crate::broker::tests::{
        bind_req, broker_on, broker_with, limited_broker_on, provision_req, sealed_broker_on, test_keychain,
        unbind_req, SMALL,
    };
    use crate::metrics::Metrics;
    use crate::osb::ServiceBroker;
    use crate::sealing::{Keychain, Sealing};
    use crate::store::memory::MemoryStore;

    /// What the inventory task and a scrape do: `counter` counts, `inventory` shows it.
    async fn refresh(inventory: &Inventory, counter: &EtcdBroker) {
        inventory.apply(&counter.count_inventory().await.unwrap());
        inventory.before_scrape();
    }

    #[tokio::test]
    async fn a_scrape_after_a_refresh_shows_what_etcd_holds() {
        let broker = Arc::new(broker_on(Arc::new(MemoryStore::default())));
        let inventory = Inventory::new(broker.clone());
        let metrics = Metrics::new();
        metrics.register(Box::new(inventory.clone()));
        let instances = format!("etcd_broker_service_instances{{plan=\"{SMALL}\",service=\"etcd\"}}");
        let bindings = format!("etcd_broker_service_bindings{{plan=\"{SMALL}\",service=\"etcd\"}}");
        broker.provision(provision_req("i1", SMALL)).await.unwrap();
        broker.bind(bind_req("i1", "b1")).await.unwrap();
        broker.bind(bind_req("i1", "b2")).await.unwrap();
        assert!(!metrics.render().contains(&format!("{instances} 1")), "counted before a refresh");
        assert!(!metrics.render().contains("etcd_broker_inventory_age_seconds "), "an age without counts");
        refresh(&inventory, &broker).await;

        let text = metrics.render();
        let samples: HashMap<&str, &str> = text.lines().filter_map(|l| l.rsplit_once(' ')).collect();
        assert_eq!(samples.get(instances.as_str()), Some(&"1"), "{text}");
        assert_eq!(samples.get(bindings.as_str()), Some(&"2"), "{text}");
        assert_eq!(samples.get("etcd_broker_roles_awaiting_deletion"), Some(&"0"), "{text}");
        assert_eq!(samples.get("etcd_broker_clear_text_records"), Some(&"2"), "{text}");
        let age: u64 = samples.get("etcd_broker_inventory_age_seconds").expect("an age").parse().unwrap();
        assert!(age <= 1, "{text}");
        assert_eq!(samples.get("etcd_broker_inventory_leader"), Some(&"0"), "{text}");
    }

    #[tokio::test]
    async fn limits_and_refusals_are_reported() {
        let broker = Arc::new(limited_broker_on(Arc::new(MemoryStore::default())));
        let inventory = Inventory::new(broker.clone());
        let metrics = Metrics::new();
        metrics.register(Box::new(inventory.clone()));
        for id in ["i1", "i2", "i3", "i4"] {
            let _ = broker.provision(provision_req(id, SMALL)).await;
        }
        refresh(&inventory, &broker).await;
        let text = metrics.render();
        let samples: HashMap<&str, &str> = text.lines().filter_map(|l| l.rsplit_once(' ')).collect();
        let plan = |limit: &str| {
            format!("etcd_broker_plan_limit{{limit=\"{limit}\",plan=\"{SMALL}\",service=\"etcd\"}}")
        };
        assert_eq!(samples.get(plan("max_instances").as_str()), Some(&"2"), "{text}");
        assert_eq!(samples.get(plan("max_bindings_per_instance").as_str()), Some(&"2"), "{text}");
        assert_eq!(samples.get("etcd_broker_organization_instances_limit"), Some(&"3"), "{text}");
        let refusals = |limit: &str| format!("etcd_broker_limit_refusals_total{{limit=\"{limit}\"}}");
        assert_eq!(samples.get(refusals("max_instances").as_str()), Some(&"2"), "{text}");
        assert_eq!(samples.get(refusals("max_instances_per_organization").as_str()), Some(&"0"), "{text}");
        // A refresh catches up; it does not count twice.
        let _ = broker.provision(provision_req("i5", SMALL)).await;
        refresh(&inventory, &broker).await;
        refresh(&inventory, &broker).await;
        assert!(
            metrics.render().contains(&format!("{} 3", refusals("max_instances"))),
            "{}",
            metrics.render()
        );
    }

    #[tokio::test]
    async fn sealed_records_are_counted_per_key_next_to_the_keychains_keys() {
        let store = Arc::new(MemoryStore::default());
        let sealed = Arc::new(sealed_broker_on(store.clone()));
        sealed.provision(provision_req("i1", SMALL)).await.unwrap();
        sealed.bind(bind_req("i1", "b1")).await.unwrap();
        sealed.bind(bind_req("i1", "b2")).await.unwrap();
        broker_on(store.clone()).bind(bind_req("i1", "b3")).await.unwrap();
        // A broker that holds k2 only: k1's records are sealed with a key it lacks.
        let k2 =
            Keychain::new("k2", test_keychain("k2").keys().filter(|k| k.name() == "k2").cloned()).unwrap();
        let lacking = Arc::new(broker_with(store.clone(), Sealing::On(k2)));
        let inventory = Inventory::new(lacking);
        let metrics = Metrics::new();
        metrics.register(Box::new(inventory.clone()));
        // Counted by another broker (which holds k1): what a follower shows.
        refresh(&inventory, &sealed).await;
        let text = metrics.render();
        let samples: HashMap<&str, &str> = text.lines().filter_map(|l| l.rsplit_once(' ')).collect();
        assert_eq!(samples.get("etcd_broker_sealed_records{key=\"k1\"}"), Some(&"2"), "{text}");
        assert_eq!(samples.get("etcd_broker_sealed_records{key=\"k2\"}"), Some(&"0"), "{text}");
        assert_eq!(samples.get("etcd_broker_clear_text_records"), Some(&"1"), "{text}");
        assert_eq!(samples.get("etcd_broker_keychain_keys{key=\"k2\"}"), Some(&"1"), "{text}");
        assert_eq!(samples.get("etcd_broker_keychain_keys{key=\"k1\"}"), None, "{text}");
        // Once k1's records are gone, its series goes too.
        sealed.unbind(unbind_req("i1", "b1")).await.unwrap();
        sealed.unbind(unbind_req("i1", "b2")).await.unwrap();
        refresh(&inventory, &sealed).await;
        assert!(!metrics.render().contains("key=\"k1\""), "{}", metrics.render());
    }
}

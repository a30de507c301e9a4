//! The inventory gauges (instances and bindings per plan, roles awaiting deletion, sealed and
//! clear-text records, the keychain's keys) as a Prometheus collector over the broker's counts
//! in etcd, with the configured limits and this process's refusals by them beside.
//!
//! They are counted when a scrape asks, with a few count-only requests, rather than kept in
//! the process: other broker instances change them too. The monitoring listener calls
//! [`Inventory::refresh`] before it renders; if etcd fails, the last values stay and the etcd
//! error counters say why.

use std::sync::Arc;

use prometheus::core::{Collector, Desc};
use prometheus::proto::MetricFamily;
use prometheus::{IntCounterVec, IntGauge, IntGaugeVec, Opts};

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
    /// Creates this process refused by a limit, by limit (caught up at each refresh).
    limit_refusals: IntCounterVec,
}

impl Inventory {
    /// The gauges of `broker`'s inventory, at 0 until the first refresh.
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
        }
    }

    /// Counts again in etcd.
    pub async fn refresh(&self) {
        for (limit, refused) in self.broker.limit_refusals() {
            let counter = self.limit_refusals.with_label_values(&[limit.name()]);
            counter.inc_by(refused.saturating_sub(counter.get()));
        }
        if let Ok(plans) = self.broker.inventory().await {
            for plan in plans {
                let labels = [plan.service.as_str(), plan.plan.as_str()];
                self.instances.with_label_values(&labels).set(plan.instances as i64);
                self.bindings.with_label_values(&labels).set(plan.bindings as i64);
            }
        }
        if let Ok(queued) = self.broker.queued_roles().await {
            self.roles_awaiting_deletion.set(queued as i64);
        }
        if let Ok(sealing) = self.broker.sealing_inventory().await {
            // A key whose records are all gone (and that is not configured) leaves the series.
            self.sealed_records.reset();
            for (key, records) in sealing.sealed {
                self.sealed_records.with_label_values(&[key.as_str()]).set(records as i64);
                // A remote key's versions (`<name>.v<N>`) are held by the keychain's `<name>`:
                // the alert on unknown keys compares by these names.
                if self.broker.keychain_holds(&key) {
                    self.keychain_keys.with_label_values(&[key.as_str()]).set(1);
                }
            }
            self.clear_text_records.set(sealing.clear_text as i64);
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
        inventory.refresh().await;

        let text = metrics.render();
        let samples: HashMap<&str, &str> = text.lines().filter_map(|l| l.rsplit_once(' ')).collect();
        assert_eq!(samples.get(instances.as_str()), Some(&"1"), "{text}");
        assert_eq!(samples.get(bindings.as_str()), Some(&"2"), "{text}");
        assert_eq!(samples.get("etcd_broker_roles_awaiting_deletion"), Some(&"0"), "{text}");
        assert_eq!(samples.get("etcd_broker_clear_text_records"), Some(&"2"), "{text}");
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
        inventory.refresh().await;
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
        inventory.refresh().await;
        inventory.refresh().await;
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
        inventory.refresh().await;
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
        inventory.refresh().await;
        assert!(!metrics.render().contains("key=\"k1\""), "{}", metrics.render());
    }
}

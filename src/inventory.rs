//! The inventory gauges (instances and bindings per plan, roles awaiting deletion) as a
//! Prometheus collector over the broker's counts in etcd.
//!
//! They are counted when a scrape asks, with a few count-only requests, rather than kept in
//! the process: other broker instances change them too. The monitoring listener calls
//! [`Inventory::refresh`] before it renders; if etcd fails, the last values stay and the etcd
//! error counters say why.

use std::sync::Arc;

use prometheus::core::{Collector, Desc};
use prometheus::proto::MetricFamily;
use prometheus::{IntGauge, IntGaugeVec, Opts};

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
}

impl Inventory {
    /// The gauges of `broker`'s inventory, at 0 until the first refresh.
    pub fn new(broker: Arc<EtcdBroker>) -> Self {
        let per_plan = |name: &str, help: &str| {
            IntGaugeVec::new(Opts::new(name, help), &["service", "plan"]).expect("valid metric")
        };
        Self {
            broker,
            instances: per_plan("etcd_broker_service_instances", "Service instances by service and plan."),
            bindings: per_plan("etcd_broker_service_bindings", "Service bindings by service and plan."),
            roles_awaiting_deletion: IntGauge::new(
                "etcd_broker_roles_awaiting_deletion",
                "Roles of deleted bindings queued for the role reaper (their users are gone).",
            )
            .expect("valid metric"),
        }
    }

    /// Counts again in etcd.
    pub async fn refresh(&self) {
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
    }
}

impl Collector for Inventory {
    fn desc(&self) -> Vec<&Desc> {
        let mut descs = self.instances.desc();
        descs.extend(self.bindings.desc());
        descs.extend(self.roles_awaiting_deletion.desc());
        descs
    }

    fn collect(&self) -> Vec<MetricFamily> {
        let mut families = self.instances.collect();
        families.extend(self.bindings.collect());
        families.extend(self.roles_awaiting_deletion.collect());
        families
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;
    use crate::broker::tests::{bind_req, broker_on, provision_req, SMALL};
    use crate::metrics::Metrics;
    use crate::osb::ServiceBroker;
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
    }
}

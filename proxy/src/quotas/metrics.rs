//! The quotas' Prometheus metrics, with bounded cardinality: totals over the instances this
//! proxy counts, refusals by quota, and the shares of the `top` fullest instances only
//! (`--quota-top-instances`, default 10; 0: none), never one series per instance. Computed from
//! the counted usage when scraped, so that series of instances that left the top go away.
//!
//! | metric | labels | meaning |
//! | --- | --- | --- |
//! | `etcd_broker_proxy_quota_instances` | | instances with a keys or bytes quota whose usage this proxy counts |
//! | `etcd_broker_proxy_quota_used_keys` | | keys under their prefixes, in total |
//! | `etcd_broker_proxy_quota_used_bytes` | | keys' and stored values' bytes under their prefixes, in total |
//! | `etcd_broker_proxy_quota_refusals_total` | `quota` (`keys`, `bytes`, `requests_per_second`) | requests refused by this proxy for a quota |
//! | `etcd_broker_proxy_quota_top_usage_ratio` | `instance`, `quota` (`keys`, `bytes`) | used / limit of the `top` instances with the highest share |

use prometheus::core::{Collector, Desc};
use prometheus::proto::MetricFamily;
use prometheus::{GaugeVec, IntCounterVec, IntGauge, Opts};

use etcd_broker::osb::plan_options::InstanceQuotas;

use super::usage::{QuotaKind, Usage};

/// What the metrics are computed from: [`super::Quotas`], or a fake in unit tests.
pub trait QuotaSource: Send + Sync + 'static {
    /// (instance id, its quotas, its usage) of each instance with a keys or bytes quota whose
    /// usage is counted.
    fn snapshots(&self) -> Vec<(String, InstanceQuotas, Usage)>;
    /// Refusals so far, in [`QuotaKind::ALL`]'s order.
    fn refusals(&self) -> [u64; 3];
}

/// The number of instances whose shares are exported unless configured otherwise.
pub const DEFAULT_TOP_INSTANCES: usize = 10;

/// The quota metrics of one proxy, computed at each scrape.
pub struct QuotaCollector {
    source: Box<dyn QuotaSource>,
    top: usize,
    /// Empty metrics of each family: their descriptions.
    templates: Families,
}

struct Families {
    instances: IntGauge,
    keys: IntGauge,
    bytes: IntGauge,
    refusals: IntCounterVec,
    top: GaugeVec,
}

impl Families {
    fn new() -> Families {
        let gauge = |name: &str, help: &str| IntGauge::new(name, help).expect("a valid metric");
        Families {
            instances: gauge(
                "etcd_broker_proxy_quota_instances",
                "Instances with a keys or bytes quota whose usage this proxy counts.",
            ),
            keys: gauge("etcd_broker_proxy_quota_used_keys", "Keys under the counted instances' prefixes."),
            bytes: gauge(
                "etcd_broker_proxy_quota_used_bytes",
                "Bytes of keys and stored values under the counted instances' prefixes.",
            ),
            refusals: IntCounterVec::new(
                Opts::new(
                    "etcd_broker_proxy_quota_refusals_total",
                    "Requests this proxy refused (RESOURCE_EXHAUSTED) for an instance's quota.",
                ),
                &["quota"],
            )
            .expect("a valid metric"),
            top: GaugeVec::new(
                Opts::new(
                    "etcd_broker_proxy_quota_top_usage_ratio",
                    "Used / limit of the instances with the highest share of their keys or bytes quota \
                     (the top N only).",
                ),
                &["instance", "quota"],
            )
            .expect("a valid metric"),
        }
    }

    fn collectors(&self) -> [&dyn Collector; 5] {
        [&self.instances, &self.keys, &self.bytes, &self.refusals, &self.top]
    }
}

impl QuotaCollector {
    /// The metrics of `quotas`, with the shares of the `top` fullest instances.
    pub fn new(source: impl QuotaSource, top: usize) -> Self {
        QuotaCollector { source: Box::new(source), top, templates: Families::new() }
    }
}

impl Collector for QuotaCollector {
    fn desc(&self) -> Vec<&Desc> {
        self.templates.collectors().into_iter().flat_map(|c| c.desc()).collect()
    }

    fn collect(&self) -> Vec<MetricFamily> {
        let snapshots = self.source.snapshots();
        let families = Families::new();
        families.instances.set(snapshots.len() as i64);
        families.keys.set(snapshots.iter().map(|(_, _, u)| u.keys as i64).sum());
        families.bytes.set(snapshots.iter().map(|(_, _, u)| u.bytes as i64).sum());
        for (kind, refused) in QuotaKind::ALL.iter().zip(self.source.refusals()) {
            families.refusals.with_label_values(&[kind.label()]).inc_by(refused);
        }
        let mut ranked: Vec<_> = snapshots
            .iter()
            .map(|(id, quotas, usage)| (quotas.share(usage.keys, usage.bytes), id, quotas, usage))
            .collect();
        ranked.sort_by(|a, b| b.0.total_cmp(&a.0).then_with(|| a.1.cmp(b.1)));
        for (_, id, quotas, usage) in ranked.into_iter().take(self.top) {
            let shares =
                [(QuotaKind::Keys, quotas.keys, usage.keys), (QuotaKind::Bytes, quotas.bytes, usage.bytes)];
            for (kind, limit, used) in shares {
                let Some(limit) = limit else { continue };
                let share =
                    if limit == 0 { f64::from(u8::from(used > 0)) } else { used as f64 / limit as f64 };
                families.top.with_label_values(&[id.as_str(), kind.label()]).set(share);
            }
        }
        families.collectors().into_iter().flat_map(|c| c.collect()).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use prometheus::Registry;

    struct Fake(Vec<(String, InstanceQuotas, Usage)>);

    impl QuotaSource for Fake {
        fn snapshots(&self) -> Vec<(String, InstanceQuotas, Usage)> {
            self.0.clone()
        }
        fn refusals(&self) -> [u64; 3] {
            [4, 5, 6]
        }
    }

    fn instance(n: u64) -> (String, InstanceQuotas, Usage) {
        let quotas = InstanceQuotas { keys: Some(100), bytes: Some(1000), requests_per_second: None };
        (format!("i-{n:02}"), quotas, Usage { keys: n, bytes: 10 * n })
    }

    #[test]
    fn a_fresh_registry_gathers_totals_refusals_and_only_the_top_instances() {
        let registry = Registry::new();
        let source = Fake((1..=30).map(instance).collect());
        registry.register(Box::new(QuotaCollector::new(source, 3))).unwrap();
        let text = prometheus::TextEncoder::new().encode_to_string(&registry.gather()).unwrap();
        assert!(text.contains("etcd_broker_proxy_quota_instances 30"), "{text}");
        assert!(text.contains("etcd_broker_proxy_quota_used_keys 465"), "{text}");
        assert!(text.contains("etcd_broker_proxy_quota_used_bytes 4650"), "{text}");
        assert!(text.contains("etcd_broker_proxy_quota_refusals_total{quota=\"bytes\"} 4"), "{text}");
        assert!(
            text.contains("etcd_broker_proxy_quota_refusals_total{quota=\"requests_per_second\"} 6"),
            "{text}"
        );
        assert!(
            text.contains("etcd_broker_proxy_quota_top_usage_ratio{instance=\"i-30\",quota=\"keys\"} 0.3"),
            "{text}"
        );
        // Three instances, two quotas each: six series, whatever the number of instances.
        let top = text.lines().filter(|l| l.starts_with("etcd_broker_proxy_quota_top_usage_ratio{")).count();
        assert_eq!(top, 6, "{text}");
        assert!(!text.contains("i-27"), "{text}");
    }

    #[test]
    fn no_top_series_with_a_top_of_zero() {
        let registry = Registry::new();
        registry.register(Box::new(QuotaCollector::new(Fake(vec![instance(1)]), 0))).unwrap();
        let text = prometheus::TextEncoder::new().encode_to_string(&registry.gather()).unwrap();
        assert!(!text.contains("top_usage_ratio{"), "{text}");
        assert!(text.contains("etcd_broker_proxy_quota_instances 1"), "{text}");
    }
}

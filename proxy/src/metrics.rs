//! The proxy's Prometheus metrics: one [`Metrics`] per proxy, owned by the server, rendered on
//! the monitoring listener ([`crate::monitoring`]). Parts of the proxy that count something
//! of their own (bytes sealed by [`crate::encryption`], revocations by [`crate::caller`], the
//! open streams of [`crate::streams`]) keep their counters and are added as collectors with
//! [`Metrics::register`], as is any later collector (quotas).
//!
//! Names follow Prometheus conventions (`etcd_broker_proxy_` prefix, base units, `_total`
//! counters, `_seconds` histograms). Every label has a bounded set of values: etcd's gRPC
//! services and methods (anything else is `unknown`), gRPC status codes, firewall rules,
//! stream kinds. Never a tenant, instance, user, key, value or token. The list with meanings
//! is in `docs/observability.md`.

use prometheus::core::{Collector, Desc};
use prometheus::proto::MetricFamily;
use prometheus::{
    Encoder, HistogramOpts, HistogramVec, IntCounterVec, IntGaugeVec, Opts, Registry, TextEncoder,
};

use crate::streams::{Kind, OpenStreams};

/// Latency buckets from 0.1 ms to 10 s: a forwarded call on loopback takes a few hundred
/// microseconds, a login with bcrypt tens of milliseconds, a stopped etcd seconds.
const LATENCY_BUCKETS: &[f64] =
    &[0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0];

/// The metrics of one proxy.
pub struct Metrics {
    registry: Registry,
    /// Calls by gRPC service, method and status code (streams counted when they end).
    pub requests: IntCounterVec,
    /// Latency of unary calls by service and method, until their status.
    pub duration: HistogramVec,
    /// Calls the tenant firewall refused, by rule ([`crate::firewall::Rule`]).
    pub refusals: IntCounterVec,
}

impl Metrics {
    /// Registers the request metrics, the build info and the process collector.
    pub fn new() -> Self {
        let registry = Registry::new();
        let requests = IntCounterVec::new(
            Opts::new(
                "etcd_broker_proxy_requests_total",
                "gRPC calls served, by etcd service, method and gRPC status code; streams count when they end.",
            ),
            &["service", "method", "code"],
        )
        .expect("valid metric");
        let duration = HistogramVec::new(
            HistogramOpts::new(
                "etcd_broker_proxy_request_duration_seconds",
                "Latency of unary gRPC calls (streams excluded), by etcd service and method.",
            )
            .buckets(LATENCY_BUCKETS.to_vec()),
            &["service", "method"],
        )
        .expect("valid metric");
        let refusals = IntCounterVec::new(
            Opts::new(
                "etcd_broker_proxy_firewall_refusals_total",
                "Calls the tenant firewall refused, by rule.",
            ),
            &["rule"],
        )
        .expect("valid metric");
        let build_info = IntGaugeVec::new(
            Opts::new("etcd_broker_proxy_build_info", "Always 1; labels say which build is running."),
            &["version"],
        )
        .expect("valid metric");
        build_info.with_label_values(&[env!("CARGO_PKG_VERSION")]).set(1);
        let metrics = Metrics {
            registry,
            requests: requests.clone(),
            duration: duration.clone(),
            refusals: refusals.clone(),
        };
        let collectors: Vec<Box<dyn Collector>> = vec![
            Box::new(requests),
            Box::new(duration),
            Box::new(refusals),
            Box::new(build_info),
            Box::new(prometheus::process_collector::ProcessCollector::for_self()),
        ];
        for collector in collectors {
            metrics.register(collector);
        }
        metrics
    }

    /// Adds a collector of values that live elsewhere in the proxy.
    ///
    /// # Panics
    /// When one of its metric names is registered already: a programming error, found by the
    /// first test that starts a proxy.
    pub fn register(&self, collector: Box<dyn Collector>) {
        self.registry.register(collector).expect("metric names are unique");
    }

    /// The Prometheus text exposition of everything.
    pub fn render(&self) -> String {
        let mut buffer = Vec::new();
        // Encoding into a Vec cannot fail for valid metrics.
        let _ = TextEncoder::new().encode(&self.registry.gather(), &mut buffer);
        String::from_utf8(buffer).unwrap_or_default()
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

/// `etcd_broker_proxy_open_streams{kind}`: the watch and keep-alive streams open now, counted
/// at each scrape from the registrations revocation uses (so every one is there).
pub struct OpenStreamsGauge {
    streams: OpenStreams,
    gauge: IntGaugeVec,
}

impl OpenStreamsGauge {
    pub fn new(streams: OpenStreams) -> Self {
        let gauge = IntGaugeVec::new(
            Opts::new(
                "etcd_broker_proxy_open_streams",
                "Watch and lease keep-alive streams open through the proxy, by kind.",
            ),
            &["kind"],
        )
        .expect("valid metric");
        OpenStreamsGauge { streams, gauge }
    }
}

impl Collector for OpenStreamsGauge {
    fn desc(&self) -> Vec<&Desc> {
        self.gauge.desc()
    }

    fn collect(&self) -> Vec<MetricFamily> {
        for (kind, label) in [(Kind::Watch, "watch"), (Kind::KeepAlive, "keepalive")] {
            self.gauge.with_label_values(&[label]).set(self.streams.count(kind) as i64);
        }
        self.gauge.collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_every_family_and_counts_open_streams_at_scrape() {
        let metrics = Metrics::new();
        let streams = OpenStreams::default();
        metrics.register(Box::new(OpenStreamsGauge::new(streams.clone())));
        metrics.requests.with_label_values(&["etcdserverpb.KV", "Range", "Ok"]).inc();
        metrics.duration.with_label_values(&["etcdserverpb.KV", "Range"]).observe(0.0003);
        metrics.refusals.with_label_values(&["cluster_wide"]).inc();
        let _watch = streams.open("alice", Kind::Watch);
        let text = metrics.render();
        for expected in [
            "etcd_broker_proxy_requests_total{code=\"Ok\",method=\"Range\",service=\"etcdserverpb.KV\"} 1",
            "etcd_broker_proxy_request_duration_seconds_bucket{method=\"Range\",service=\"etcdserverpb.KV\",le=\"0.0005\"} 1",
            "etcd_broker_proxy_firewall_refusals_total{rule=\"cluster_wide\"} 1",
            "etcd_broker_proxy_open_streams{kind=\"watch\"} 1",
            "etcd_broker_proxy_open_streams{kind=\"keepalive\"} 0",
            "etcd_broker_proxy_build_info{version=",
            "process_resident_memory_bytes",
        ] {
            assert!(text.contains(expected), "{expected} missing from\n{text}");
        }
        drop(_watch);
        assert!(metrics.render().contains("etcd_broker_proxy_open_streams{kind=\"watch\"} 0"));
    }
}

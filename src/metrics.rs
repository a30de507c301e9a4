//! Prometheus metrics: one registry per broker process, rendered on the monitoring listener.
//!
//! Names follow Prometheus conventions (`etcd_broker_` prefix, base units, `_total` counters,
//! `_seconds` histograms). Every label has a bounded set of values: operation names, status
//! codes, cluster names and plan names from the config, etcd call kinds. Never an instance id,
//! binding id or user name. The list with meanings is in `docs/observability.md`. The inventory
//! gauges are a collector of their own ([`crate::inventory`]).

use prometheus::{
    Encoder, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry,
    TextEncoder,
};

/// Latency buckets from 0.5 ms to 10 s: etcd round trips are sub-millisecond on loopback,
/// bcrypt-bound binds tens of milliseconds, timeouts seconds.
const LATENCY_BUCKETS: &[f64] =
    &[0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0];

/// All metrics of the broker.
pub struct Metrics {
    registry: Registry,
    /// OSB requests by operation and status code.
    pub osb_requests: IntCounterVec,
    /// OSB request latency by operation.
    pub osb_duration: HistogramVec,
    /// OSB requests being served now.
    pub osb_in_flight: IntGauge,
    /// Requests with missing or wrong broker credentials.
    pub auth_failures: IntCounter,
    /// etcd call latency by cluster and call kind.
    pub etcd_duration: HistogramVec,
    /// Failed etcd calls by cluster, call kind and failure kind.
    pub etcd_errors: IntCounterVec,
    /// Calls per batched etcd request by cluster and call kind: how much the batching of
    /// concurrent gets and commits saves etcd.
    pub etcd_batch_size: HistogramVec,
    /// Copies of slow reads sent to another endpoint, by cluster: how often a member kept the
    /// broker's reads waiting.
    pub etcd_read_copies: IntCounterVec,
    /// Writes sent again through another endpoint, their own not answering (the write fence).
    pub etcd_write_resends: IntCounterVec,
    /// Requests etcd refused because a user or role changed while they were in flight (sent
    /// again), by cluster: how much auth changes cost the broker's other requests.
    pub etcd_stale_auth_refusals: IntCounterVec,
    /// Roles the role reaper deleted, and the queue entries it could not handle.
    pub roles_deleted: IntCounter,
    pub role_deletion_failures: IntCounter,
    /// What the periodic reconcile check found, by kind (findings two checks in a row agree on).
    pub reconcile_findings: IntGaugeVec,
    /// Periodic reconcile checks that could not finish.
    pub reconcile_failures: IntCounter,
    /// 1 while this broker leads the binding expiry task, else 0: the sum over brokers is 1.
    pub expiry_leader: IntGauge,
    /// Expired bindings whose user this broker deleted, and its expiry passes that failed.
    pub bindings_revoked: IntCounter,
    pub expiry_failures: IntCounter,
}

impl Metrics {
    /// Registers every metric, the build info and the process collector.
    pub fn new() -> Self {
        let registry = Registry::new();
        let osb_requests = IntCounterVec::new(
            Opts::new(
                "etcd_broker_osb_requests_total",
                "OSB API requests by operation and HTTP status code.",
            ),
            &["operation", "code"],
        )
        .expect("valid metric");
        let osb_duration = HistogramVec::new(
            HistogramOpts::new("etcd_broker_osb_request_duration_seconds", "OSB API request latency.")
                .buckets(LATENCY_BUCKETS.to_vec()),
            &["operation"],
        )
        .expect("valid metric");
        let osb_in_flight =
            IntGauge::new("etcd_broker_osb_requests_in_flight", "OSB API requests being served.")
                .expect("valid metric");
        let auth_failures = IntCounter::new(
            "etcd_broker_auth_failures_total",
            "OSB API requests refused for missing or wrong broker credentials.",
        )
        .expect("valid metric");
        let etcd_duration = HistogramVec::new(
            HistogramOpts::new(
                "etcd_broker_etcd_request_duration_seconds",
                "Latency of the broker's etcd calls.",
            )
            .buckets(LATENCY_BUCKETS.to_vec()),
            &["cluster", "call"],
        )
        .expect("valid metric");
        let etcd_errors = IntCounterVec::new(
            Opts::new("etcd_broker_etcd_request_errors_total", "Failed etcd calls by failure kind."),
            &["cluster", "call", "kind"],
        )
        .expect("valid metric");
        let etcd_batch_size = HistogramVec::new(
            HistogramOpts::new(
                "etcd_broker_etcd_batch_size",
                "Concurrent etcd calls the broker sent as one request (gets and commits).",
            )
            .buckets(vec![1.0, 2.0, 4.0, 8.0, 16.0]),
            &["cluster", "call"],
        )
        .expect("valid metric");
        let etcd_read_copies = IntCounterVec::new(
            Opts::new(
                "etcd_broker_etcd_read_copies_total",
                "Reads sent to another etcd endpoint as well, their own being slow to answer.",
            ),
            &["cluster"],
        )
        .expect("valid metric");
        let etcd_write_resends = IntCounterVec::new(
            Opts::new(
                "etcd_broker_etcd_write_resends_total",
                "Writes sent again through another etcd endpoint, their own not answering.",
            ),
            &["cluster"],
        )
        .expect("valid metric");
        let etcd_stale_auth_refusals = IntCounterVec::new(
            Opts::new(
                "etcd_broker_etcd_stale_auth_refusals_total",
                "Requests etcd refused because a user or role changed while they were in flight.",
            ),
            &["cluster"],
        )
        .expect("valid metric");
        let roles_deleted =
            IntCounter::new("etcd_broker_roles_deleted_total", "Queued roles the role reaper deleted.")
                .expect("valid metric");
        let role_deletion_failures = IntCounter::new(
            "etcd_broker_role_deletion_failures_total",
            "Queued roles the role reaper failed to delete (retried on its next pass).",
        )
        .expect("valid metric");
        let reconcile_findings = IntGaugeVec::new(
            Opts::new(
                "etcd_broker_reconcile_findings",
                "Inconsistencies between the broker's records and etcd found by the periodic reconcile check, by kind.",
            ),
            &["kind"],
        )
        .expect("valid metric");
        let reconcile_failures = IntCounter::new(
            "etcd_broker_reconcile_failures_total",
            "Periodic reconcile checks that could not finish (etcd failed).",
        )
        .expect("valid metric");
        let expiry_leader = IntGauge::new(
            "etcd_broker_binding_expiry_leader",
            "1 while this broker leads the binding expiry task (one broker at a time), else 0.",
        )
        .expect("valid metric");
        let bindings_revoked = IntCounter::new(
            "etcd_broker_bindings_revoked_total",
            "Expired bindings whose etcd user this broker deleted (their records stay until unbind).",
        )
        .expect("valid metric");
        let expiry_failures = IntCounter::new(
            "etcd_broker_binding_expiry_failures_total",
            "Passes of the binding expiry task that could not finish (retried on the next pass).",
        )
        .expect("valid metric");
        let build_info = IntGaugeVec::new(
            Opts::new("etcd_broker_build_info", "Always 1; labels say which build is running."),
            &["version", "rust_version"],
        )
        .expect("valid metric");
        build_info.with_label_values(&[env!("CARGO_PKG_VERSION"), env!("CARGO_PKG_RUST_VERSION")]).set(1);

        for collector in [
            Box::new(osb_requests.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(osb_duration.clone()),
            Box::new(osb_in_flight.clone()),
            Box::new(auth_failures.clone()),
            Box::new(etcd_duration.clone()),
            Box::new(etcd_errors.clone()),
            Box::new(etcd_batch_size.clone()),
            Box::new(etcd_read_copies.clone()),
            Box::new(etcd_write_resends.clone()),
            Box::new(etcd_stale_auth_refusals.clone()),
            Box::new(roles_deleted.clone()),
            Box::new(role_deletion_failures.clone()),
            Box::new(reconcile_findings.clone()),
            Box::new(reconcile_failures.clone()),
            Box::new(expiry_leader.clone()),
            Box::new(bindings_revoked.clone()),
            Box::new(expiry_failures.clone()),
            Box::new(build_info),
            Box::new(prometheus::process_collector::ProcessCollector::for_self()),
        ] {
            registry.register(collector).expect("metric names are unique");
        }
        Self {
            registry,
            osb_requests,
            osb_duration,
            osb_in_flight,
            auth_failures,
            etcd_duration,
            etcd_errors,
            etcd_batch_size,
            etcd_read_copies,
            etcd_write_resends,
            etcd_stale_auth_refusals,
            roles_deleted,
            role_deletion_failures,
            reconcile_findings,
            reconcile_failures,
            expiry_leader,
            bindings_revoked,
            expiry_failures,
        }
    }

    /// Exports `etcd_broker_sealing_enabled` (1 on, 0 off), on which the alert
    /// `EtcdBrokerSealingOff` fires. Set once at start: sealing changes only with the config.
    pub fn set_sealing_enabled(&self, on: bool) {
        let gauge = IntGauge::new(
            "etcd_broker_sealing_enabled",
            "1 when binding passwords are sealed at rest; 0 when [secrets] sealing = \"off\" stores them in clear.",
        )
        .expect("valid metric");
        gauge.set(i64::from(on));
        self.register(Box::new(gauge));
    }

    /// Adds a collector of values that live outside this struct (the inventory gauges).
    pub fn register(&self, collector: Box<dyn prometheus::core::Collector>) {
        self.registry.register(collector).expect("metric names are unique");
    }

    /// The Prometheus text exposition of everything.
    pub fn render(&self) -> String {
        let mut buffer = Vec::new();
        let encoder = TextEncoder::new();
        // Encoding into a Vec cannot fail for valid metrics.
        let _ = encoder.encode(&self.registry.gather(), &mut buffer);
        String::from_utf8(buffer).unwrap_or_default()
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_every_family_with_help() {
        let metrics = Metrics::new();
        metrics.osb_requests.with_label_values(&["provision", "201"]).inc();
        metrics.osb_duration.with_label_values(&["provision"]).observe(0.01);
        metrics.etcd_duration.with_label_values(&["main", "get"]).observe(0.001);
        metrics.etcd_errors.with_label_values(&["main", "get", "unavailable"]).inc();
        metrics.etcd_batch_size.with_label_values(&["main", "get"]).observe(3.0);
        let text = metrics.render();
        for name in [
            "etcd_broker_osb_requests_total{code=\"201\",operation=\"provision\"} 1",
            "etcd_broker_osb_request_duration_seconds_bucket",
            "etcd_broker_osb_requests_in_flight 0",
            "etcd_broker_auth_failures_total 0",
            "etcd_broker_etcd_request_duration_seconds_count{call=\"get\",cluster=\"main\"} 1",
            "etcd_broker_etcd_request_errors_total{call=\"get\",cluster=\"main\",kind=\"unavailable\"} 1",
            "etcd_broker_etcd_batch_size_sum{call=\"get\",cluster=\"main\"} 3",
            "etcd_broker_build_info{rust_version=",
            "process_resident_memory_bytes",
            "process_open_fds",
            "process_start_time_seconds",
            "process_cpu_seconds_total",
        ] {
            assert!(text.contains(name), "missing {name} in\n{text}");
        }
    }
}

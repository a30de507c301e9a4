//! The broker's periodic reconcile check: read-only, without the per-binding grant reads, its
//! findings per kind handed to an observer (the gauge `etcd_broker_reconcile_findings{kind}`).
//!
//! Why it does not report in-flight operations: besides the check's own rules (records in
//! `creating`/`deleting` count only once older than `stuck_after`; a name without a record is
//! confirmed by reading its record again after the lists), a finding counts only when the
//! check before found it too, one `interval` earlier. Every operation of the broker finishes in
//! milliseconds, and the one window the check cannot see through (a bind creating its user
//! while an unbind of the same binding completes and the reaper takes the queue entry, until
//! the bind writes its record back) closes as soon as that bind goes on; what two checks an
//! interval apart both find is left over, not in flight.
//!
//! Why it is cheap: records are read in pages of 500, users and roles with one list each per
//! cluster, tenant prefixes with one single-key read per prefix holding keys; no auth read per
//! binding (those go through etcd's consensus log). Every broker instance runs one; each
//! exports what it found, and the alert takes the largest.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use super::{Kind, Repair, Settings};
use crate::broker::EtcdBroker;
use crate::osb::BrokerError;

/// Findings per kind.
pub type Counts = BTreeMap<Kind, u64>;

/// What the check tells the broker's metrics, without this module knowing about them.
pub struct Observer {
    /// A check finished: findings per kind (every kind, 0 when none), counting only those the
    /// check before found too.
    pub found: Box<dyn Fn(&Counts) + Send + Sync>,
    /// A check could not finish (etcd failed); the gauges keep their values.
    pub failed: Box<dyn Fn(&BrokerError) + Send + Sync>,
}

/// Runs a check every `interval`, forever; meant to be raced against the servers.
pub async fn run(broker: Arc<EtcdBroker>, interval: Duration, stuck_after: u64, observer: Observer) {
    let settings = Settings { stuck_after, grants: false };
    let mut before: Option<BTreeSet<(Kind, String, String)>> = None;
    loop {
        tokio::time::sleep(interval).await;
        match broker.reconcile(&settings, Repair::Nothing).await {
            Ok(report) => {
                let now: BTreeSet<(Kind, String, String)> =
                    report.findings.iter().map(|f| (f.kind, f.cluster.clone(), f.subject.clone())).collect();
                let counts = persisting(before.as_ref(), &now);
                (observer.found)(&counts);
                if counts.values().any(|n| *n > 0) {
                    tracing::warn!(
                        ?counts,
                        "reconcile found inconsistencies: run etcd-broker-ops reconcile (docs/reconcile.md)"
                    );
                }
                before = Some(now);
            }
            Err(error) => {
                (observer.failed)(&error);
                tracing::warn!(%error, "the periodic reconcile check could not finish");
            }
        }
    }
}

/// Findings per kind found by both checks (none on the first).
fn persisting(
    before: Option<&BTreeSet<(Kind, String, String)>>,
    now: &BTreeSet<(Kind, String, String)>,
) -> BTreeMap<Kind, u64> {
    let mut counts: BTreeMap<Kind, u64> = Kind::ALL.iter().map(|k| (*k, 0)).collect();
    for finding in now.iter().filter(|f| before.is_some_and(|b| b.contains(*f))) {
        *counts.entry(finding.0).or_default() += 1;
    }
    counts
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_findings_of_two_checks_in_a_row_count() {
        let f = |kind, subject: &str| (kind, "main".to_owned(), subject.to_owned());
        let first: BTreeSet<_> = [f(Kind::OrphanUser, "etcd-broker.i1.b1")].into();
        assert!(persisting(None, &first).values().all(|n| *n == 0), "the first check counts nothing");
        let second: BTreeSet<_> =
            [f(Kind::OrphanUser, "etcd-broker.i1.b1"), f(Kind::OrphanUser, "etcd-broker.i2.b1")].into();
        let counts = persisting(Some(&first), &second);
        assert_eq!(counts[&Kind::OrphanUser], 1);
        assert_eq!(counts.len(), Kind::ALL.len());
        assert_eq!(persisting(Some(&second), &BTreeSet::new())[&Kind::OrphanUser], 0, "gone when fixed");
    }
}

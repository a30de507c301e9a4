//! One instance's usage and its quotas, as plain numbers: the accounting, with no etcd or gRPC
//! in it (the wiring is in [`super`]).
//!
//! Usage is counted once from etcd ([`InstanceUsage::counted`], at a revision), then kept
//! current by the watch's events ([`InstanceUsage::apply`]). Writes admitted but not yet seen
//! by the watch are held as reservations, so that this proxy's concurrent writes cannot each
//! take the same free space: a reservation lasts while the request is in flight, then until
//! the watch's events reach the write's revision (the write is then in the usage; a Txn
//! whose branch taken put none of the instance's keys is released when answered), or at most
//! [`crate::policy::QUOTA_RESERVATION_HOLD`] after the answer. Progress reports never
//! release one, nor move the usage's revision ([`InstanceUsage::seen`]).

use std::time::Instant;

use etcd_broker::osb::plan_options::InstanceQuotas;

use crate::policy;

/// Keys and bytes under an instance's prefix.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Usage {
    pub keys: u64,
    /// Keys' and stored values' bytes ([`etcd_broker::osb::plan_options::stored_bytes`]).
    pub bytes: u64,
}

/// The most a write may add to an instance's usage. A put of a key that may be new counts a
/// key and all its bytes; one that replaces a known key counts the growth only.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Demand {
    pub keys: u64,
    pub bytes: u64,
}

impl Demand {
    /// Both writes, one after the other.
    pub fn plus(self, other: Demand) -> Demand {
        Demand { keys: self.keys + other.keys, bytes: self.bytes + other.bytes }
    }

    /// The larger of two alternatives (a Txn's branches), quota by quota.
    pub fn max(self, other: Demand) -> Demand {
        Demand { keys: self.keys.max(other.keys), bytes: self.bytes.max(other.bytes) }
    }

    pub fn is_zero(&self) -> bool {
        self.keys == 0 && self.bytes == 0
    }
}

/// Which quota refused a request: the metric label and the plan option's name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum QuotaKind {
    Bytes,
    Keys,
    RequestsPerSecond,
}

impl QuotaKind {
    /// Every kind, in the order of the refusal counters.
    pub const ALL: [QuotaKind; 3] = [QuotaKind::Bytes, QuotaKind::Keys, QuotaKind::RequestsPerSecond];

    /// The metric label.
    pub fn label(self) -> &'static str {
        match self {
            QuotaKind::Bytes => "bytes",
            QuotaKind::Keys => "keys",
            QuotaKind::RequestsPerSecond => "requests_per_second",
        }
    }

    /// The plan option that sets it.
    pub fn option(self) -> &'static str {
        match self {
            QuotaKind::Bytes => "quota_bytes",
            QuotaKind::Keys => "quota_keys",
            QuotaKind::RequestsPerSecond => "quota_requests_per_second",
        }
    }
}

/// A write refused: the quota and its limit (never a key or a value).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Exceeded {
    pub quota: QuotaKind,
    pub limit: u64,
    /// The usage counted with the writes admitted and not yet seen.
    pub used: u64,
}

/// What the watch saw happen to one key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Change {
    /// A put: the key's stored bytes now, and before (`None`: the key is new).
    Put { bytes: u64, before: Option<u64> },
    /// A delete of a key that held `before` bytes.
    Delete { before: u64 },
}

/// A write admitted and not yet in the usage.
#[derive(Debug, Clone, Copy)]
struct Reservation {
    id: u64,
    demand: Demand,
    /// Set when etcd answered: released once the watch's events reach this revision.
    until_revision: Option<i64>,
    /// When etcd answered: released [`policy::QUOTA_RESERVATION_HOLD`] later at the latest.
    answered: Option<Instant>,
}

/// One instance's usage as this proxy knows it.
#[derive(Debug, Default)]
pub struct InstanceUsage {
    quotas: InstanceQuotas,
    /// `None` until counted (and again while the count is being redone).
    usage: Option<Usage>,
    /// The revision the usage is current at: of the count, then of the events applied.
    revision: i64,
    /// The highest revision a progress report gave: only for waiting (see [`Self::seen`]).
    progress: i64,
    reservations: Vec<Reservation>,
    next_id: u64,
}

impl InstanceUsage {
    pub fn new(quotas: InstanceQuotas) -> Self {
        InstanceUsage { quotas, ..Default::default() }
    }

    pub fn quotas(&self) -> InstanceQuotas {
        self.quotas
    }

    /// The revision the usage is current at.
    pub fn revision(&self) -> i64 {
        self.revision
    }

    /// The revision the watch has reported, by events or by a progress report: what a write
    /// refused waits for before it is refused for good.
    pub fn reported(&self) -> i64 {
        self.revision.max(self.progress)
    }

    /// The usage, once counted.
    pub fn usage(&self) -> Option<Usage> {
        self.usage
    }

    /// The count from etcd at `revision` replaces what was known; reservations stay (their
    /// writes may still be on their way).
    pub fn counted(&mut self, usage: Usage, revision: i64) {
        self.usage = Some(usage);
        self.revision = revision;
        self.release_seen();
    }

    /// The usage is no longer known (the watch broke): requests wait for the next count.
    pub fn forget(&mut self) {
        self.usage = None;
    }

    /// The watch's changes at `revision` (ignored if counted already).
    pub fn apply(&mut self, revision: i64, changes: impl IntoIterator<Item = Change>) {
        let Some(usage) = &mut self.usage else { return };
        if revision <= self.revision {
            return;
        }
        for change in changes {
            match change {
                Change::Put { bytes, before: None } => {
                    usage.keys += 1;
                    usage.bytes += bytes;
                }
                Change::Put { bytes, before: Some(before) } => {
                    usage.bytes = (usage.bytes + bytes).saturating_sub(before);
                }
                Change::Delete { before } => {
                    usage.keys = usage.keys.saturating_sub(1);
                    usage.bytes = usage.bytes.saturating_sub(before);
                }
            }
        }
        self.revision = revision;
        self.release_seen();
    }

    /// A progress report of the watch at `revision`. Recorded for waiting only: it neither
    /// releases reservations nor moves the usage's revision, because etcd before 3.5.8 /
    /// 3.4.25 (etcd issue 15220; the 3.5.1 and 3.4.23 of the tests among them) may send it
    /// ahead of events up to that revision. Taking it for the usage's revision dropped those
    /// events (undercounting for good), and releasing on it let a write still on its way be
    /// counted by neither: either way one proxy admitted beyond a quota.
    pub fn seen(&mut self, revision: i64) {
        if self.usage.is_some() {
            self.progress = self.progress.max(revision);
        }
    }

    fn release_seen(&mut self) {
        let revision = self.revision;
        self.reservations.retain(|r| r.until_revision.map_or(true, |until| until > revision));
    }

    /// The usage with the reservations still held (`now` expires those held long enough).
    fn committed(&mut self, now: Instant) -> Usage {
        self.reservations.retain(|r| r.answered.map_or(true, |at| now < at + policy::QUOTA_RESERVATION_HOLD));
        let mut usage = self.usage.unwrap_or_default();
        for r in &self.reservations {
            usage.keys += r.demand.keys;
            usage.bytes += r.demand.bytes;
        }
        usage
    }

    /// Admits a write that may add `demand`, reserving it (the id to [`Self::answered`] or
    /// [`Self::release`]), or says which quota it would exceed. A write that adds nothing is
    /// always admitted: deletes and shrinking puts work over a quota. Call only once counted.
    pub fn admit(&mut self, demand: Demand, now: Instant) -> Result<u64, Exceeded> {
        let used = self.committed(now);
        let checks = [
            (QuotaKind::Keys, self.quotas.keys, used.keys, demand.keys),
            (QuotaKind::Bytes, self.quotas.bytes, used.bytes, demand.bytes),
        ];
        for (quota, limit, used, more) in checks {
            if let Some(limit) = limit {
                if more > 0 && used + more > limit {
                    return Err(Exceeded { quota, limit, used });
                }
            }
        }
        self.next_id += 1;
        let id = self.next_id;
        self.reservations.push(Reservation { id, demand, until_revision: None, answered: None });
        Ok(id)
    }

    /// etcd answered the write at `revision`: its reservation lasts until the watch's events
    /// have reached it. `wrote`: whether it changed keys of this instance (a Txn whose taken
    /// branch has no put of them did not: released at once).
    pub fn answered(&mut self, id: u64, revision: i64, wrote: bool, now: Instant) {
        if !wrote || revision <= self.revision {
            return self.release(id);
        }
        if let Some(r) = self.reservations.iter_mut().find(|r| r.id == id) {
            r.until_revision = Some(revision);
            r.answered = Some(now);
        }
    }

    /// The write failed or was abandoned: its reservation is dropped.
    pub fn release(&mut self, id: u64) {
        self.reservations.retain(|r| r.id != id);
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn limited(keys: u64, bytes: u64) -> InstanceUsage {
        let mut usage = InstanceUsage::new(InstanceQuotas {
            keys: Some(keys),
            bytes: Some(bytes),
            requests_per_second: None,
        });
        usage.counted(Usage::default(), 10);
        usage
    }

    fn put(bytes: u64) -> Demand {
        Demand { keys: 1, bytes }
    }

    #[test]
    fn a_write_beyond_a_quota_is_refused_with_the_quota_and_its_limit() {
        let mut usage = limited(2, 100);
        let now = Instant::now();
        let first = usage.admit(put(40), now).unwrap();
        usage.answered(first, 11, true, now);
        usage.apply(11, [Change::Put { bytes: 40, before: None }]);
        let second = usage.admit(put(40), now).unwrap();
        usage.answered(second, 12, true, now);
        usage.apply(12, [Change::Put { bytes: 40, before: None }]);
        assert_eq!(usage.usage(), Some(Usage { keys: 2, bytes: 80 }));
        assert_eq!(usage.admit(put(1), now), Err(Exceeded { quota: QuotaKind::Keys, limit: 2, used: 2 }));
        // Replacing a key: no new key, only the growth counts.
        assert!(usage.admit(Demand { keys: 0, bytes: 20 }, now).is_ok());
        assert_eq!(
            usage.admit(Demand { keys: 0, bytes: 1 }, now),
            Err(Exceeded { quota: QuotaKind::Bytes, limit: 100, used: 100 })
        );
    }

    #[test]
    fn deletes_and_shrinking_puts_free_usage() {
        let mut usage = limited(1, 100);
        let now = Instant::now();
        usage.apply(11, [Change::Put { bytes: 90, before: None }]);
        assert!(usage.admit(put(1), now).is_err());
        usage.apply(12, [Change::Put { bytes: 30, before: Some(90) }]);
        assert_eq!(usage.usage(), Some(Usage { keys: 1, bytes: 30 }));
        assert!(usage.admit(Demand::default(), now).is_ok(), "a write adding nothing always passes");
        usage.apply(13, [Change::Delete { before: 30 }]);
        assert_eq!(usage.usage(), Some(Usage::default()));
        assert!(usage.admit(put(100), now).is_ok());
    }

    #[test]
    fn concurrent_writes_cannot_share_the_same_free_space() {
        let mut usage = limited(10, 100);
        let now = Instant::now();
        let first = usage.admit(put(60), now).unwrap();
        // In flight, not yet seen by the watch: it still holds its share.
        assert_eq!(usage.admit(put(60), now).unwrap_err().quota, QuotaKind::Bytes);
        usage.answered(first, 11, true, now);
        assert!(usage.admit(put(60), now).is_err(), "answered but not yet seen");
        usage.apply(11, [Change::Put { bytes: 60, before: None }]);
        assert_eq!(usage.committed(now), Usage { keys: 1, bytes: 60 }, "counted once");
        // A failed write gives its share back at once.
        let failed = usage.admit(put(40), now).unwrap();
        usage.release(failed);
        assert!(usage.admit(put(40), now).is_ok());
    }

    #[test]
    fn an_answered_write_the_watch_never_shows_is_released_after_the_hold() {
        let mut usage = limited(10, 100);
        let now = Instant::now();
        let txn = usage.admit(put(100), now).unwrap();
        // A Txn whose put ran, yet no event comes (an instance record changed meanwhile).
        usage.answered(txn, 20, true, now);
        assert!(usage.admit(put(1), now).is_err());
        let later = now + policy::QUOTA_RESERVATION_HOLD + Duration::from_millis(1);
        assert!(usage.admit(put(1), later).is_ok());
        // A revision the watch's events have passed releases at once.
        let mut usage = limited(10, 100);
        usage.apply(30, []);
        let old = usage.admit(put(100), now).unwrap();
        usage.answered(old, 25, true, now);
        let again = usage.admit(put(100), now).expect("released");
        usage.release(again);
        // A Txn whose taken branch put nothing of this instance releases at once.
        let other_branch = usage.admit(put(100), now).unwrap();
        usage.answered(other_branch, 40, false, now);
        assert!(usage.admit(put(100), now).is_ok());
    }

    #[test]
    fn a_progress_report_ahead_of_events_neither_drops_them_nor_releases_writes() {
        let mut usage = limited(2, 1000);
        let now = Instant::now();
        let first = usage.admit(put(10), now).unwrap();
        usage.answered(first, 11, true, now);
        // etcd 3.5.1 may report progress at 12 before the events of 11 and 12.
        usage.seen(12);
        assert_eq!(usage.reported(), 12);
        assert!(usage.admit(put(10), now).is_ok(), "the second key fits");
        assert!(usage.admit(put(10), now).is_err(), "the first write still holds its key");
        usage.apply(11, [Change::Put { bytes: 10, before: None }]);
        usage.apply(12, [Change::Put { bytes: 10, before: None }]);
        assert_eq!(usage.usage(), Some(Usage { keys: 2, bytes: 20 }), "no event dropped");
    }

    #[test]
    fn events_at_or_before_the_count_are_not_counted_twice() {
        let mut usage = limited(10, 1000);
        usage.counted(Usage { keys: 3, bytes: 30 }, 50);
        usage.apply(50, [Change::Put { bytes: 10, before: None }]);
        usage.apply(49, [Change::Delete { before: 10 }]);
        assert_eq!(usage.usage(), Some(Usage { keys: 3, bytes: 30 }));
        usage.apply(51, [Change::Put { bytes: 5, before: None }, Change::Delete { before: 10 }]);
        assert_eq!(usage.usage(), Some(Usage { keys: 3, bytes: 25 }));
        usage.forget();
        usage.apply(52, [Change::Delete { before: 5 }]);
        assert_eq!(usage.usage(), None, "not known until counted again");
    }

    #[test]
    fn a_txns_branches_demand_the_larger_of_the_two() {
        let success = put(10).plus(put(20));
        let failure = Demand { keys: 0, bytes: 50 };
        assert_eq!(success.max(failure), Demand { keys: 2, bytes: 50 });
        assert!(Demand::default().is_zero());
    }
}

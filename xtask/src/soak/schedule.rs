//! The churn's shared schedule (`xtask soak --rate`): when each lifecycle may start, across all
//! clients, so that the churn runs at one steady rate instead of as fast as a shared machine
//! lets it at the moment.
//!
//! Why steady: etcd keeps the last five minutes of revisions (the stack's auto-compaction), so
//! its memory follows the churn rate of the minutes before, and the role reaper's queue settles
//! where its share deletes as fast as unbinds queue (docs/config.md `[role_reaper]`). A churn
//! whose rate wanders 2.4x makes both series wander with it, and their slopes say more about
//! the machine's load than about a leak.

use std::time::Duration;

/// Start times handed out one `interval` apart, from the start of the churn.
///
/// Invariant: a slot is never earlier than the time it is asked for, and two slots are at least
/// `interval` apart. A client that asks late (the machine was slow) gets "now", and the next
/// slot is one interval after it: the slots missed are lost, not made up with a burst, so a
/// slow minute shows as a short minute and the next one runs at the rate asked again.
#[derive(Debug, Clone)]
pub struct Schedule {
    interval: Duration,
    next: Duration,
}

impl Schedule {
    /// The schedule for `rate` lifecycles per second; `None` for 0, as fast as the clients go.
    pub fn new(rate: f64) -> Option<Self> {
        (rate > 0.0).then(|| Schedule { interval: Duration::from_secs_f64(1.0 / rate), next: Duration::ZERO })
    }

    /// The next start time (since the churn started) for a client asking at `now`.
    pub fn take(&mut self, now: Duration) -> Duration {
        let slot = self.next.max(now);
        self.next = slot + self.interval;
        slot
    }
}

/// Parses `--rate`: lifecycles per second, 0 or more (0: as fast as the clients go).
pub fn parse_rate(text: &str) -> Result<f64, String> {
    match text.parse::<f64>() {
        Ok(rate) if rate.is_finite() && (0.0..=10_000.0).contains(&rate) => Ok(rate),
        Ok(_) => Err(format!("'{text}' must be between 0 and 10000 lifecycles per second")),
        Err(_) => Err(format!("'{text}' is not a number of lifecycles per second")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: fn(u64) -> Duration = Duration::from_millis;

    #[test]
    fn clients_on_time_get_slots_one_interval_apart() {
        let mut schedule = Schedule::new(10.0).unwrap();
        // Four clients asking at once: the first starts now, the others 100 ms apart.
        let slots: Vec<Duration> = (0..4).map(|_| schedule.take(Duration::ZERO)).collect();
        assert_eq!(slots, [MS(0), MS(100), MS(200), MS(300)]);
        // A client back early waits for the next free slot.
        assert_eq!(schedule.take(MS(250)), MS(400));
    }

    #[test]
    fn a_slow_stretch_is_not_made_up_with_a_burst() {
        let mut schedule = Schedule::new(10.0).unwrap();
        assert_eq!(schedule.take(Duration::ZERO), MS(0));
        // The clients were stuck for 5 s (50 slots missed): they get "now", then one interval
        // apart again, not 50 lifecycles at once.
        let slots: Vec<Duration> = (0..3).map(|_| schedule.take(MS(5000))).collect();
        assert_eq!(slots, [MS(5000), MS(5100), MS(5200)]);
        // Over any stretch, starts never exceed the rate: 10 slots span at least 0.9 s.
        let mut schedule = Schedule::new(10.0).unwrap();
        let slots: Vec<Duration> = (0..10).map(|i| schedule.take(MS(i * 37))).collect();
        assert!(slots.windows(2).all(|w| w[1] - w[0] >= MS(100)), "{slots:?}");
    }

    #[test]
    fn rate_zero_means_no_schedule_and_bad_rates_are_refused() {
        assert!(Schedule::new(0.0).is_none());
        assert_eq!(parse_rate("0"), Ok(0.0));
        assert_eq!(parse_rate("2.5"), Ok(2.5));
        assert!(parse_rate("-1").unwrap_err().contains("between 0 and 10000"));
        assert!(parse_rate("NaN").unwrap_err().contains("between 0 and 10000"));
        assert!(parse_rate("fast").unwrap_err().contains("not a number"));
    }
}

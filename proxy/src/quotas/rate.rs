//! An instance's request rate: a token bucket per instance and proxy, as plain numbers (the
//! clock is passed in).

use std::time::Instant;

/// At most `rate` requests per second on average, and bursts of up to `rate` requests (one
/// second's worth) after a quiet second.
#[derive(Debug, Clone)]
pub struct RateLimit {
    rate: f64,
    tokens: f64,
    last: Instant,
}

impl RateLimit {
    /// A full bucket of `rate` (≥ 1) requests per second.
    pub fn new(rate: u32, now: Instant) -> Self {
        let rate = f64::from(rate.max(1));
        RateLimit { rate, tokens: rate, last: now }
    }

    /// Takes one request's token; `false` when none is left (the request is refused).
    pub fn take(&mut self, now: Instant) -> bool {
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        self.tokens = (self.tokens + elapsed * self.rate).min(self.rate);
        self.last = now;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn a_burst_beyond_a_seconds_worth_is_refused_and_the_bucket_refills() {
        let start = Instant::now();
        let mut limit = RateLimit::new(5, start);
        let passed = (0..8).filter(|_| limit.take(start)).count();
        assert_eq!(passed, 5);
        // A fifth of a second later: one more.
        let later = start + Duration::from_millis(200);
        assert!(limit.take(later));
        assert!(!limit.take(later));
        // After a long pause the bucket holds one second's worth, not more.
        let much_later = later + Duration::from_secs(60);
        assert_eq!((0..20).filter(|_| limit.take(much_later)).count(), 5);
    }
}

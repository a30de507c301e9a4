//! The soak's report: a row per sample, the rate asked against the rate achieved, and each
//! series' least-squares slope per hour, over the whole churn and over its steady part (after
//! the warm-up), with the steady part's min and max. "Flat" is a slope near zero beside a
//! narrow min..max, stated, not eyeballed.

use std::time::Duration;

use super::{Sample, OWN_KEYS};

/// What the report says about the run besides its samples.
#[derive(Debug, Clone)]
pub(super) struct Run {
    pub duration: Duration,
    pub clients: u64,
    /// Lifecycles per second asked (`--rate`); 0: as fast as the clients go.
    pub rate: f64,
    /// How long the churn runs before its steady part.
    pub warm_up: Duration,
    pub lifecycles: u64,
    pub errors: u64,
}

/// A sample whose rate is below this share of the rate asked is flagged short: a lifecycle
/// counts when it ends, so a minute's count is off by at most the clients' lifecycles in
/// flight (4 of 600 at 10/s), well inside 5 %.
const SHORT: f64 = 0.95;

/// The series the slopes are given for: name, unit, value.
type Series = (&'static str, fn(&Sample) -> f64);
const SERIES: [Series; 9] = [
    ("broker A RSS MB", |s| s.broker_a.rss_mb),
    ("broker A fds", |s| s.broker_a.fds as f64),
    ("broker B RSS MB", |s| s.broker_b.rss_mb),
    ("broker B fds", |s| s.broker_b.fds as f64),
    ("etcd RSS MB", |s| s.etcd_rss_mb),
    ("keys", |s| s.keys as f64),
    ("users", |s| s.users as f64),
    ("roles", |s| s.roles as f64),
    ("queued roles", |s| s.queued as f64),
];

/// The report, as the fenced block that goes into the document. `samples` are the one at the
/// start, those taken during the churn, and the one after it (the reaper drained).
pub(super) fn report(samples: &[Sample], run: &Run) -> String {
    let asked = if run.rate > 0.0 { format!("{:.1}/s asked", run.rate) } else { "as fast as they go".into() };
    let mut out = format!(
        "```\nsoak: {:.0} minutes, 2 brokers on one etcd (--bcrypt-cost 4), {} clients, {asked}; {} lifecycles \
         ({:.1}/s), {} failed\n\n",
        run.duration.as_secs_f64() / 60.0,
        run.clients,
        run.lifecycles,
        run.lifecycles as f64 / run.duration.as_secs_f64().max(1.0),
        run.errors,
    );
    out.push_str(
        "   min  lifecycles  rate/s  A RSS MB  A fds  B RSS MB  B fds  etcd RSS MB   keys  users  roles  queued\n",
    );
    let during = churn_samples(samples);
    let mut short = Vec::new();
    for (i, s) in samples.iter().enumerate() {
        // The rate of the minute before this sample; none for the first and the drained last.
        let rate = (i > 0 && i <= during.len()).then(|| achieved(&samples[i - 1], s));
        let flag = match rate {
            Some(r) if run.rate > 0.0 && r < SHORT * run.rate => {
                short.push(s.at / 60.0);
                "  short"
            }
            _ => "",
        };
        out.push_str(&format!(
            "{:>6.1}  {:>10}  {:>6}  {:>8.1}  {:>5}  {:>8.1}  {:>5}  {:>11.1}  {:>5}  {:>5}  {:>5}  {:>6}{flag}\n",
            s.at / 60.0,
            s.lifecycles,
            rate.map_or("-".into(), |r| format!("{r:.1}")),
            s.broker_a.rss_mb,
            s.broker_a.fds,
            s.broker_b.rss_mb,
            s.broker_b.fds,
            s.etcd_rss_mb,
            s.keys,
            s.users,
            s.roles,
            s.queued
        ));
    }
    if run.rate > 0.0 {
        let minutes: Vec<String> = short.iter().map(|m| format!("{m:.0}")).collect();
        out.push_str(&format!(
            "\n{} of {} samples fell short of {:.1}/s (below {:.0} %){}{}\n",
            short.len(),
            during.len(),
            run.rate,
            SHORT * 100.0,
            if short.is_empty() { "" } else { ": minutes " },
            minutes.join(", ")
        ));
    }
    let steady = steady_samples(&during, run.warm_up);
    out.push_str(&format!(
        "\nslopes per hour (least squares) over the churn's samples ({}, minutes {}) and over its steady \
         part, after a warm-up of {:.0} min ({}):\n",
        during.len(),
        span(&during),
        run.warm_up.as_secs_f64() / 60.0,
        if steady.len() < 2 {
            "none: the churn is not longer than the warm-up".to_string()
        } else {
            format!("{} samples, minutes {}", steady.len(), span(&steady))
        },
    ));
    out.push_str("  series             all churn   steady part   steady min..max\n");
    for (name, value) in SERIES {
        let (all, part) = (per_hour(&during, value), per_hour(&steady, value));
        let range = min_max(&steady, value).map_or("-".into(), |(lo, hi)| format!("{lo:.1}..{hi:.1}"));
        out.push_str(&format!("  {name:<17}  {all:>+9.2}   {part:>+11.2}   {range}\n"));
    }
    if let Some(last) = samples.last() {
        out.push_str(&format!(
            "after the churn: {} keys, {} users, {} roles, {} queued left (etcd's root excluded; the running \
             brokers' own keys are {OWN_KEYS}: the expiry and inventory leaders', the inventory's counts)\n",
            last.keys, last.users, last.roles, last.queued
        ));
    }
    out.push_str("```\n");
    out
}

/// The samples taken during the churn after the first: not the start-up, not the drained end.
fn churn_samples(samples: &[Sample]) -> Vec<&Sample> {
    samples.iter().skip(1).take(samples.len().saturating_sub(2)).collect()
}

/// The churn's samples from `warm_up` on (a second's slack: a sample is taken at or just after
/// its minute).
fn steady_samples<'a>(during: &[&'a Sample], warm_up: Duration) -> Vec<&'a Sample> {
    during.iter().copied().filter(|s| s.at + 1.0 >= warm_up.as_secs_f64()).collect()
}

/// Lifecycles per second between two samples.
fn achieved(before: &Sample, after: &Sample) -> f64 {
    let seconds = after.at - before.at;
    if seconds <= 0.0 {
        return 0.0;
    }
    after.lifecycles.saturating_sub(before.lifecycles) as f64 / seconds
}

/// "a to b", the minutes of the first and last sample.
fn span(samples: &[&Sample]) -> String {
    match (samples.first(), samples.last()) {
        (Some(first), Some(last)) => format!("{:.0} to {:.0}", first.at / 60.0, last.at / 60.0),
        _ => "none".into(),
    }
}

fn per_hour(samples: &[&Sample], value: fn(&Sample) -> f64) -> f64 {
    let hours: Vec<f64> = samples.iter().map(|s| s.at / 3600.0).collect();
    slope(&hours, &samples.iter().map(|s| value(s)).collect::<Vec<_>>())
}

fn min_max(samples: &[&Sample], value: fn(&Sample) -> f64) -> Option<(f64, f64)> {
    samples.iter().map(|s| value(s)).fold(None, |range, v| match range {
        None => Some((v, v)),
        Some((lo, hi)) => Some((f64::min(lo, v), f64::max(hi, v))),
    })
}

/// The least-squares slope of `ys` over `xs` (per unit of x); 0 with fewer than two points.
fn slope(xs: &[f64], ys: &[f64]) -> f64 {
    let n = xs.len().min(ys.len()) as f64;
    if n < 2.0 {
        return 0.0;
    }
    let (mx, my) = (xs.iter().sum::<f64>() / n, ys.iter().sum::<f64>() / n);
    let covariance: f64 = xs.iter().zip(ys).map(|(x, y)| (x - mx) * (y - my)).sum();
    let variance: f64 = xs.iter().map(|x| (x - mx).powi(2)).sum();
    if variance == 0.0 {
        0.0
    } else {
        covariance / variance
    }
}

#[cfg(test)]
mod tests {
    use super::super::Process;
    use super::*;

    #[test]
    fn the_slope_of_a_line_is_its_gradient_and_of_a_flat_series_zero() {
        assert!((slope(&[0.0, 1.0, 2.0, 3.0], &[1.0, 3.0, 5.0, 7.0]) - 2.0).abs() < 1e-9);
        assert_eq!(slope(&[0.0, 1.0, 2.0], &[4.0, 4.0, 4.0]), 0.0);
        assert_eq!(slope(&[1.0], &[4.0]), 0.0);
        assert_eq!(slope(&[2.0, 2.0], &[1.0, 5.0]), 0.0);
    }

    /// A sample at `minute` after `lifecycles`, with etcd's memory `etcd` and `queued` roles.
    fn at(minute: f64, lifecycles: u64, etcd: f64, queued: u64) -> Sample {
        let broker = Process { rss_mb: 20.0, fds: 30 };
        Sample {
            at: minute * 60.0 + 0.3,
            lifecycles,
            broker_a: broker,
            broker_b: broker,
            etcd_rss_mb: etcd,
            keys: queued + 3,
            users: 1,
            roles: queued,
            queued,
        }
    }

    fn run(minutes: u64, rate: f64, warm_up: u64) -> Run {
        Run {
            duration: Duration::from_secs(minutes * 60),
            clients: 4,
            rate,
            warm_up: Duration::from_secs(warm_up * 60),
            lifecycles: 0,
            errors: 0,
        }
    }

    /// Minutes 0 to 6 then the drained sample; etcd rises 100 MB a minute during the warm-up
    /// (minutes 1 to 3) and is flat from minute 3 on; minute 5 ran at half the rate.
    fn six_minutes() -> Vec<Sample> {
        vec![
            at(0.0, 0, 30.0, 0),
            at(1.0, 600, 130.0, 500),
            at(2.0, 1200, 230.0, 900),
            at(3.0, 1800, 250.0, 1000),
            at(4.0, 2400, 250.0, 1000),
            at(5.0, 2700, 250.0, 1000),
            at(6.0, 3300, 250.0, 1000),
            at(6.5, 3304, 200.0, 0),
        ]
    }

    #[test]
    fn the_steady_part_starts_after_the_warm_up_and_leaves_out_the_drained_end() {
        let samples = six_minutes();
        let during = churn_samples(&samples);
        assert_eq!(during.len(), 6);
        let steady = steady_samples(&during, Duration::from_secs(180));
        assert_eq!(span(&steady), "3 to 6");
        let etcd: fn(&Sample) -> f64 = |s| s.etcd_rss_mb;
        assert!(per_hour(&during, etcd) > 1000.0, "the warm-up's rise shows over all the churn");
        assert_eq!(per_hour(&steady, etcd), 0.0);
        assert_eq!(min_max(&steady, etcd), Some((250.0, 250.0)));
        assert_eq!(min_max(&[], etcd), None);
    }

    #[test]
    fn each_minute_shows_its_rate_and_the_short_ones_are_flagged() {
        let text = report(&six_minutes(), &run(6, 10.0, 3));
        assert!(text.contains("10.0/s asked"), "{text}");
        let minute = |m: &str| text.lines().find(|l| l.trim_start().starts_with(m)).unwrap().to_string();
        assert!(minute("1.0 ").contains("  10.0  ") && !minute("1.0 ").ends_with("short"), "{text}");
        assert!(minute("5.0 ").contains("   5.0  ") && minute("5.0 ").ends_with("short"), "{text}");
        assert!(text.contains("1 of 6 samples fell short of 10.0/s (below 95 %): minutes 5"), "{text}");
        assert!(text.contains("steady part, after a warm-up of 3 min (4 samples, minutes 3 to 6)"), "{text}");
        let etcd = text.lines().find(|l| l.trim_start().starts_with("etcd RSS MB")).unwrap();
        assert!(etcd.ends_with("+0.00   250.0..250.0"), "{etcd}");
        // As fast as they go: nothing is short.
        let text = report(&six_minutes(), &run(6, 0.0, 3));
        assert!(text.contains("as fast as they go") && !text.contains("short"), "{text}");
    }

    #[test]
    fn a_run_no_longer_than_its_warm_up_says_it_has_no_steady_part() {
        let text = report(&six_minutes()[..4], &run(2, 10.0, 10));
        assert!(text.contains("none: the churn is not longer than the warm-up"), "{text}");
    }
}

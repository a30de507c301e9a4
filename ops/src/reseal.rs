//! `reseal`: every binding record sealed by a key other than the active one, or in clear,
//! rewritten sealed by the active key, while brokers serve (the walk and its guarantees:
//! `etcd_broker::broker::reseal`, reached through `etcd_broker::reseal`).
//!
//! Output: a progress report on stderr (a line a second), the summary on stdout. Nothing secret
//! is printed: records are named by their etcd keys, keys by their names.

use std::num::NonZeroU32;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use etcd_broker::config::Config;
use etcd_broker::reseal::{Pace, Progress, Stopped, Summary};

/// Flags of `reseal`.
#[derive(Debug, Clone, clap::Args)]
pub struct ResealArgs {
    /// The broker's TOML config: its [secrets] keychain (the active key seals, the others
    /// unseal) and its state cluster (ETCD_BROKER__* variables apply).
    #[arg(long, value_name = "FILE")]
    pub config: PathBuf,
    /// Count what would be rewritten, per source (clear text, each key); write nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Records rewritten at once (1-64). Each waits for an fsynced etcd transaction: more finish
    /// sooner and take more of etcd's time from the brokers serving meanwhile.
    #[arg(long, default_value_t = etcd_broker::reseal::DEFAULT_PARALLEL,
          value_parser = parse_parallel)]
    pub parallel: usize,
    /// At most this many records rewritten per second, evenly spaced (default: no limit), to
    /// keep a large run to a share of etcd's write capacity while brokers serve.
    #[arg(long, value_name = "RECORDS", value_parser = parse_max_rate)]
    pub max_rate: Option<NonZeroU32>,
}

/// `--parallel`: 1 to 64 (a page of the walk).
fn parse_parallel(text: &str) -> Result<usize, String> {
    match text.parse::<usize>() {
        Ok(n) if (1..=64).contains(&n) => Ok(n),
        _ => Err(format!("'{text}' is not a number from 1 to 64")),
    }
}

/// `--max-rate`: a whole number of records per second, at least 1.
fn parse_max_rate(text: &str) -> Result<NonZeroU32, String> {
    text.parse::<NonZeroU32>()
        .map_err(|_| format!("'{text}' is not a whole number of records per second, at least 1"))
}

/// How a run ended, for the exit code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Every record is sealed by the active key (or deleting): exit 0.
    Done,
    /// Some records failed, or etcd failed: exit 1.
    Failed,
    /// Ctrl-C: exit 130.
    Interrupted,
}

/// How often the progress report prints a line.
const PROGRESS_EVERY: Duration = Duration::from_secs(1);

/// `reseal`: runs the walk, prints the progress report and the summary; Ctrl-C stops it after
/// the record being rewritten.
pub fn run(args: &ResealArgs) -> Result<Outcome> {
    let config = Config::load(&args.config)?;
    let active = config.sealing.keychain().map(|k| k.active().name().to_owned()).with_context(|| {
        format!("{} configures no keys ([secrets.keys], see docs/config.md)", args.config.display())
    })?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    let stop = Arc::new(AtomicBool::new(false));
    let summary = runtime.block_on(async {
        let on_signal = stop.clone();
        tokio::spawn(async move {
            if tokio::signal::ctrl_c().await.is_ok() {
                eprintln!("reseal: stopping after the records being rewritten");
                on_signal.store(true, Ordering::SeqCst);
            }
        });
        let mut report = ProgressReport::new();
        let pace = Pace { parallel: args.parallel, max_rate: args.max_rate };
        let summary =
            etcd_broker::reseal::reseal(&config, args.dry_run, pace, &stop, &mut |p| report.heard(p)).await;
        if let Ok(summary) = &summary {
            report.last(summary.done());
        }
        summary
    });
    let summary = summary.map_err(anyhow::Error::msg)?;
    print!("{}", summary_text(&summary, &active, args.dry_run));
    Ok(outcome(&summary))
}

/// Lines on stderr: done/total and the rate, at most one per [`PROGRESS_EVERY`].
struct ProgressReport {
    started: Instant,
    last_line: Instant,
    total: u64,
}

impl ProgressReport {
    fn new() -> Self {
        Self { started: Instant::now(), last_line: Instant::now(), total: 0 }
    }

    fn heard(&mut self, progress: Progress) {
        self.total = progress.total;
        if self.last_line.elapsed() >= PROGRESS_EVERY {
            self.last_line = Instant::now();
            self.line(progress.done);
        }
    }

    fn last(&self, done: u64) {
        self.line(done);
    }

    fn line(&self, done: u64) {
        let seconds = self.started.elapsed().as_secs_f64();
        let rate = if seconds > 0.0 { done as f64 / seconds } else { 0.0 };
        eprintln!("reseal: {done}/{} records, {rate:.0} records/s, {seconds:.1} s", self.total);
    }
}

fn outcome(summary: &Summary) -> Outcome {
    match &summary.stopped {
        Some(Stopped::Interrupted) => Outcome::Interrupted,
        Some(Stopped::Store(_) | Stopped::Key(_)) => Outcome::Failed,
        None if summary.failed.is_empty() => Outcome::Done,
        None => Outcome::Failed,
    }
}

/// The summary: what was rewritten per source, skipped, raced, failed (record keys and the
/// reason), and how to continue a run that stopped.
pub fn summary_text(summary: &Summary, active: &str, dry_run: bool) -> String {
    let rewritten: u64 = summary.rewritten.values().sum();
    let per_source: Vec<String> =
        summary.rewritten.iter().map(|(source, n)| format!("{source}: {n}")).collect();
    let verb = if dry_run { "to rewrite (dry run, nothing written)" } else { "rewritten" };
    let mut out = format!("records {verb} to key '{active}': {rewritten}");
    if !per_source.is_empty() {
        out.push_str(&format!(" ({})", per_source.join(", ")));
    }
    out.push('\n');
    out.push_str(&format!("already sealed by '{active}': {}\n", summary.already_active));
    out.push_str(&format!("deleting (left to their unbind): {}\n", summary.deleting));
    if summary.in_credential_store > 0 {
        out.push_str(&format!("secrets in OpenBao KV (nothing to seal): {}\n", summary.in_credential_store));
    }
    out.push_str(&format!("raced with a broker and retried: {}\n", summary.raced));
    out.push_str(&format!("deleted meanwhile: {}\n", summary.gone));
    out.push_str(&format!("failed: {}\n", summary.failed.len()));
    for (key, why) in &summary.failed {
        out.push_str(&format!("  {key}: {why}\n"));
    }
    match &summary.stopped {
        None => {}
        Some(Stopped::Interrupted) => out.push_str(
            "interrupted: run the same command again to finish (records already sealed by the active key are skipped)\n",
        ),
        Some(Stopped::Store(e)) => {
            out.push_str(&format!("stopped: {e}\nrun the same command again to continue\n"));
        }
        Some(Stopped::Key(e)) => {
            out.push_str(&format!("stopped before any record: {e}\nrun the same command again once it answers\n"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use etcd_broker::reseal::Source;

    use super::*;

    #[test]
    fn the_summary_counts_per_source_names_failed_records_and_how_to_resume() {
        let summary = Summary {
            rewritten: [(Source::Clear, 2), (Source::Key("k1".into()), 3)].into(),
            already_active: 4,
            failed: vec![("/etcd-broker/bindings/i/b".into(), "it holds no password".into())],
            stopped: Some(Stopped::Interrupted),
            ..Summary::default()
        };
        let text = summary_text(&summary, "k2", false);
        assert!(
            text.starts_with("records rewritten to key 'k2': 5 (clear text: 2, key 'k1': 3)\n"),
            "{text}"
        );
        assert!(text.contains("already sealed by 'k2': 4\n"), "{text}");
        assert!(text.contains("failed: 1\n  /etcd-broker/bindings/i/b: it holds no password\n"), "{text}");
        assert!(text.contains("run the same command again"), "{text}");
        assert_eq!(outcome(&summary), Outcome::Interrupted);
        let done = Summary { already_active: 1, ..Summary::default() };
        assert_eq!(outcome(&done), Outcome::Done);
        let failed = Summary { failed: summary.failed.clone(), ..Summary::default() };
        assert_eq!(outcome(&failed), Outcome::Failed);
        assert!(summary_text(&done, "k2", true).contains("dry run"));
    }
}

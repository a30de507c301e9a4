//! `reconcile`: the broker's records compared with etcd's users, roles, grants and tenant
//! data; what is safe repaired on request (the check and its guarantees:
//! `etcd_broker::broker::reconcile`, reached through `etcd_broker::reconcile`).
//!
//! Output: a report on stdout, as text or (`--json`) the report's JSON (docs/reconcile.md).
//! Nothing secret is printed: findings name record keys, users, roles, prefixes and key names.
//! Exit codes: 0 nothing found, 1 findings (repaired or not), 2 the check could not run.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use etcd_broker::config::Config;
use etcd_broker::reconcile::{Kind, Repair, Repaired, Report, Settings};
use serde::Deserialize;

/// Default of `--stuck-after-seconds`: an operation takes milliseconds and a platform retries
/// a failed one within minutes; a record unchanged for 10 minutes is not in flight.
pub const DEFAULT_STUCK_AFTER_SECONDS: u64 = 600;

/// Flags of `reconcile`.
#[derive(Debug, Clone, clap::Args)]
#[command(group(clap::ArgGroup::new("source").required(true).args(["config", "bosh_properties"])))]
pub struct ReconcileArgs {
    /// The broker's TOML config: its clusters (with the root credentials), prefixes, catalog
    /// and keychain (ETCD_BROKER__* variables apply).
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// The broker job's BOSH properties.json instead of --config (what the errand uses:
    /// /var/vcap/jobs/etcd-broker/config/properties.json).
    #[arg(long, value_name = "FILE")]
    pub bosh_properties: Option<PathBuf>,
    /// The reconcile errand's properties.json: its `repair`, `delete_orphan_data`,
    /// `stuck_after_seconds` and `check_grants` properties, in place of the flags.
    #[arg(long, value_name = "FILE")]
    pub errand_properties: Option<PathBuf>,
    /// Fix what is safe to fix (orphan users and roles, missing users and roles, foreign
    /// grants, bindings stuck in deleting, stale queued role deletions), each with the broker's
    /// own compare-and-swap steps: safe while brokers serve, safe to run again after a crash.
    /// Never deletes tenant data.
    #[arg(long)]
    pub repair: bool,
    /// With --repair, also delete keys under the data prefix that belong to no instance.
    /// Tenant data: back it up first if anybody may need it.
    #[arg(long, requires = "repair")]
    pub delete_orphan_data: bool,
    /// A record in creating or deleting (or a queued role deletion) unchanged for longer than
    /// this is stuck; younger ones are operations in flight and not reported.
    #[arg(long, value_name = "SECONDS", default_value_t = DEFAULT_STUCK_AFTER_SECONDS)]
    pub stuck_after_seconds: u64,
    /// Do not compare each ready binding's user roles and role permissions with its record
    /// (two etcd auth reads per binding, which etcd serves through its consensus log).
    #[arg(long)]
    pub skip_grants: bool,
    /// Print the report as JSON (its shape: docs/reconcile.md).
    #[arg(long)]
    pub json: bool,
}

/// How a run ended, for the exit code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Nothing found: exit 0.
    Clean,
    /// Findings (repaired or not): exit 1.
    Findings,
}

/// What the reconcile errand's properties.json holds (jobs/etcd-broker-reconcile).
#[derive(Debug, Deserialize)]
struct ErrandFile {
    properties: ErrandProperties,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct ErrandProperties {
    #[serde(default)]
    repair: bool,
    #[serde(default)]
    delete_orphan_data: bool,
    stuck_after_seconds: Option<u64>,
    check_grants: Option<bool>,
}

/// `reconcile`: loads the config, runs the check (and repairs), prints the report.
pub fn run(args: &ReconcileArgs) -> Result<Outcome> {
    let args = with_errand_properties(args)?;
    let config = match (&args.config, &args.bosh_properties) {
        (Some(path), _) => Config::load(path)?,
        (None, Some(path)) => Config::from_bosh_properties(path, None)?,
        (None, None) => anyhow::bail!("give --config or --bosh-properties"),
    };
    let settings = Settings { stuck_after: args.stuck_after_seconds, grants: !args.skip_grants };
    let repair = match (args.repair, args.delete_orphan_data) {
        (false, _) => Repair::Nothing,
        (true, false) => Repair::Safe,
        (true, true) => Repair::SafeAndOrphanData,
    };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    let report = runtime
        .block_on(etcd_broker::reconcile::reconcile(&config, &settings, repair))
        .map_err(anyhow::Error::msg)
        .context("reconcile could not check the deployment")?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report).context("the report does not serialize")?);
    } else {
        print!("{}", report_text(&report));
    }
    Ok(if report.findings.is_empty() { Outcome::Clean } else { Outcome::Findings })
}

/// `args` with the errand's properties applied (an errand passes no other flags).
fn with_errand_properties(args: &ReconcileArgs) -> Result<ReconcileArgs> {
    let mut args = args.clone();
    let Some(path) = &args.errand_properties else { return Ok(args) };
    let errand = read_errand_properties(path)?;
    args.repair |= errand.repair;
    args.delete_orphan_data |= errand.delete_orphan_data;
    if args.delete_orphan_data && !args.repair {
        anyhow::bail!("{}: delete_orphan_data needs repair", path.display());
    }
    if let Some(seconds) = errand.stuck_after_seconds {
        args.stuck_after_seconds = seconds;
    }
    if errand.check_grants == Some(false) {
        args.skip_grants = true;
    }
    Ok(args)
}

fn read_errand_properties(path: &Path) -> Result<ErrandProperties> {
    let text = std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    let file: ErrandFile = serde_json::from_str(&text)
        .with_context(|| format!("{} is not the errand's properties", path.display()))?;
    Ok(file.properties)
}

/// The report as text: what was checked, each finding under its kind with the fix and what
/// the repair did, what was skipped, and a closing line.
pub fn report_text(report: &Report) -> String {
    let c = &report.checked;
    let mut out = format!(
        "checked: {} instances, {} bindings, {} users, {} roles, {} tenant prefixes with keys, {} queued role deletions, {} bind markers\n",
        c.instances, c.bindings, c.users, c.roles, c.tenant_prefixes, c.queued_role_deletions, c.bind_markers
    );
    for kind in Kind::ALL {
        let findings: Vec<_> = report.findings.iter().filter(|f| f.kind == kind).collect();
        if findings.is_empty() {
            continue;
        }
        out.push_str(&format!("{} ({}):\n", kind.name(), findings.len()));
        for f in findings {
            out.push_str(&format!("  {} {}: {}\n", f.cluster, f.subject, f.detail));
            match &f.repair {
                None => out.push_str(&format!("    fix: {}\n", f.hint)),
                Some(Repaired::Repaired) => out.push_str("    repaired\n"),
                Some(Repaired::Skipped(why)) => out.push_str(&format!("    not repaired: {why}\n")),
                Some(Repaired::Failed(why)) => {
                    out.push_str(&format!("    repair failed: {why} (run reconcile again)\n"))
                }
            }
        }
    }
    for skipped in &report.skipped {
        out.push_str(&format!("not checked: {skipped}\n"));
    }
    let total = report.findings.len();
    if total == 0 {
        out.push_str("nothing found\n");
    } else {
        let repaired = report.findings.iter().filter(|f| f.repair == Some(Repaired::Repaired)).count();
        let attempted = report.findings.iter().filter(|f| f.repair.is_some()).count();
        if attempted == 0 {
            out.push_str(&format!("findings: {total} (read-only: --repair fixes the safe ones)\n"));
        } else {
            out.push_str(&format!(
                "findings: {total}, repaired: {repaired} (run reconcile again to confirm)\n"
            ));
        }
    }
    out
}

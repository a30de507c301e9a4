//! `usage`: one instance's usage against its plan's quotas (docs/proxy.md#quotas), counted by a
//! range over its prefix at one revision with the config's credentials: keys, bytes (keys'
//! and stored values' bytes, as the tenant proxy counts them), the plan's quotas, and the
//! share of the fuller quota. Names no key and prints no value.
//!
//! Exit codes: 0 printed, 1 the instance or its cluster could not be read (no record, etcd
//! unreachable), 2 bad usage.

use std::fmt::Write;
use std::path::PathBuf;

use anyhow::{Context, Result};
use etcd_broker::broker::names::Names;
use etcd_broker::config::Config;
use etcd_broker::etcd::resend_on_auth_change;
use etcd_broker::osb::plan_options::{stored_bytes, InstanceQuotas};
use etcd_broker::osb::InstanceId;
use serde::{Deserialize, Serialize};

/// Flags of `usage`.
#[derive(Debug, Clone, clap::Args)]
pub struct UsageArgs {
    /// The service instance id.
    pub instance_id: String,
    /// The broker's TOML config: its clusters (with the root credentials), prefixes and plan
    /// options (ETCD_BROKER__* variables apply).
    #[arg(long, value_name = "FILE")]
    pub config: PathBuf,
    /// Print a JSON object instead of lines.
    #[arg(long)]
    pub json: bool,
}

/// One instance's usage and its plan's quotas.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Report {
    pub instance_id: String,
    pub plan_id: String,
    pub cluster: String,
    pub prefix: String,
    pub keys: u64,
    pub bytes: u64,
    /// The revision counted at.
    pub revision: i64,
    pub quota_keys: Option<u64>,
    pub quota_bytes: Option<u64>,
    pub quota_requests_per_second: Option<u32>,
    /// Used / limit of the fuller of the keys and bytes quotas; `None` without either.
    pub share: Option<f64>,
}

/// The fields of an instance record (docs/naming.md) the report needs.
#[derive(Deserialize)]
struct InstanceRecord {
    plan_id: String,
    /// The etcd cluster holding the instance's data.
    cluster: String,
    /// The quotas the proxy enforces (copied from the plan at provision and plan change).
    #[serde(default)]
    quotas: InstanceQuotas,
}

/// `usage`: the report, as text or JSON.
pub fn run(args: &UsageArgs) -> Result<String> {
    let config = Config::load(&args.config)?;
    let report = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?
        .block_on(usage(&config, &args.instance_id))?;
    if args.json {
        return Ok(serde_json::to_string_pretty(&report)? + "\n");
    }
    Ok(text(&report))
}

/// Reads the instance's record (state cluster) and counts its prefix (its cluster).
pub async fn usage(config: &Config, instance: &str) -> Result<Report> {
    let instance = InstanceId::parse(instance)?;
    let names = Names::new(&config.prefixes.data, &config.prefixes.state);
    let state = crate::sealing::cluster_client(config, &config.state_cluster).await?;
    let key = names.instance_key(&instance);
    let found = resend_on_auth_change(|| {
        let (mut client, key) = (state.clone(), key.clone());
        async move { client.get(key, None).await }
    })
    .await
    .with_context(|| format!("cannot read the instance record {key}"))?;
    let record =
        found.kvs().first().with_context(|| format!("no instance {instance}: no record at {key}"))?;
    let record: InstanceRecord =
        serde_json::from_slice(record.value()).with_context(|| format!("the record {key} is unreadable"))?;
    let data = crate::sealing::cluster_client(config, &record.cluster).await?;
    let prefix = names.tenant_prefix(&instance);
    let counted = etcd_broker::etcd::prefix_usage(&data, &prefix, stored_bytes)
        .await
        .with_context(|| format!("cannot count the keys under {prefix}"))?;
    let quotas = record.quotas;
    let share =
        (quotas.keys.is_some() || quotas.bytes.is_some()).then(|| quotas.share(counted.keys, counted.bytes));
    Ok(Report {
        instance_id: instance.to_string(),
        plan_id: record.plan_id,
        cluster: record.cluster,
        prefix,
        keys: counted.keys,
        bytes: counted.bytes,
        revision: counted.revision,
        quota_keys: quotas.keys,
        quota_bytes: quotas.bytes,
        quota_requests_per_second: quotas.requests_per_second,
        share,
    })
}

/// The report as `label: value` lines.
pub fn text(report: &Report) -> String {
    let limit = |limit: Option<u64>| limit.map_or("none".to_owned(), |l| l.to_string());
    let rows = [
        ("instance_id", report.instance_id.clone()),
        ("plan_id", report.plan_id.clone()),
        ("cluster", report.cluster.clone()),
        ("prefix", report.prefix.clone()),
        ("keys", format!("{} of {}", report.keys, limit(report.quota_keys))),
        ("bytes", format!("{} of {}", report.bytes, limit(report.quota_bytes))),
        ("requests_per_second", limit(report.quota_requests_per_second.map(u64::from))),
        ("share", report.share.map_or("no keys or bytes quota".to_owned(), |s| format!("{:.1}%", s * 100.0))),
        ("revision", report.revision.to_string()),
    ];
    let mut out = String::new();
    for (label, value) in rows {
        let _ = writeln!(out, "{:<21}{value}", format!("{label}:"));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_text_names_each_figure_and_its_quota() {
        let report = Report {
            instance_id: "i1".into(),
            plan_id: "p".into(),
            cluster: "main".into(),
            prefix: "/service_instances/i1/".into(),
            keys: 3,
            bytes: 120,
            revision: 9,
            quota_keys: Some(4),
            quota_bytes: None,
            quota_requests_per_second: Some(50),
            share: Some(0.75),
        };
        let text = text(&report);
        assert!(text.contains("keys:                3 of 4\n"), "{text}");
        assert!(text.contains("bytes:               120 of none\n"), "{text}");
        assert!(
            text.contains("requests_per_second:  50\n") || text.contains("requests_per_second: 50\n"),
            "{text}"
        );
        assert!(text.contains("share:               75.0%\n"), "{text}");
    }
}

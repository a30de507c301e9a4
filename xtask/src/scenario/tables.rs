//! The markdown tables of docs/performance.md computed from the bench's JSON reports: the
//! empty against preloaded comparison and the performance targets. Pure functions of
//! the reports, so a missing figure leaves out its row instead of failing the run.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use serde_json::Value;

/// Runs whose broker/floor ratios count towards the targets, in the document's order.
pub const RUNS: [&str; 6] =
    ["default-8", "default-8-certificate", "default-64", "cost4-1", "cost4-8", "preload-8"];

/// Password bind p50 / certificate bind p50 at etcd's default bcrypt cost and 8 clients, in the
/// same run: at least this (a certificate user costs etcd no bcrypt hash).
const CERTIFICATE_SPEEDUP_TARGET: f64 = 20.0;

/// The tenant proxy (issue 20): throughput at least this share of etcd's directly, in the same
/// run, every scenario, client count and encryption setting.
const PROXY_THROUGHPUT_TARGET: f64 = 0.8;

/// The tenant proxy: at most this many ms added to the p50 of etcd directly, with 1 client
/// (latency without queueing, on loopback).
const PROXY_ADDED_P50_TARGET_MS: f64 = 0.15;

/// Each operation's target: broker p50 within this factor of its floor's p50.
const RATIO_TARGETS: [(&str, f64); 5] =
    [("provision", 1.5), ("unbind", 1.5), ("deprovision", 1.5), ("get-binding", 1.5), ("bind", 1.2)];

/// Operation name -> a figure of it, in the report's order.
fn per_operation(report: &Value, figure: impl Fn(&Value) -> Option<f64>) -> Vec<(String, Option<f64>)> {
    let operations = report["operations"].as_array().map(Vec::as_slice).unwrap_or_default();
    operations.iter().filter_map(|o| Some((o["operation"].as_str()?.to_owned(), figure(o)))).collect()
}

fn broker_p50(o: &Value) -> Option<f64> {
    o["broker"]["p50_ms"].as_f64()
}

fn floor_p50(o: &Value) -> Option<f64> {
    o["floor"]["p50_ms"].as_f64()
}

fn lookup(pairs: &[(String, Option<f64>)], op: &str) -> Option<f64> {
    pairs.iter().find(|(name, _)| name == op).and_then(|(_, v)| *v)
}

/// The run of an empty stack started while the preloaded stack is still up: the empty case
/// the scale target compares with. A preload leaves the 2-core machine changed for every
/// process (etcd's heap of gigabytes, the page cache): the catalog, which never reaches etcd,
/// and the load generator's own CPU per operation were slower after it.
pub const EMPTY_BESIDE: &str = "cost4-8-beside";

/// How many times the scale scenario measures the preloaded stack and the empty one beside it,
/// in turn (preloaded, empty, preloaded, ...): one run per stack moved single ratios by up to
/// 0.5 between two scenarios with nothing changed, so each side's figures are the mean of its
/// runs ([`mean_report`]).
pub const SCALE_RUNS_PER_STACK: usize = 2;

/// One report whose operations' latency figures (the broker's and the floor's p50, their
/// ratio, the CPU per operation) are the means of `reports`' (operations matched by name; a
/// figure missing from a run is left out of its mean). Everything else (counts, errors, RSS,
/// orphans) is the first report's.
pub fn mean_report(reports: &[&Value]) -> Value {
    let Some((first, _)) = reports.split_first() else { return Value::Null };
    let mut merged = (*first).clone();
    let Some(operations) = merged["operations"].as_array_mut() else { return merged };
    for operation in operations {
        let name = operation["operation"].clone();
        let same: Vec<&Value> = reports
            .iter()
            .filter_map(|r| r["operations"].as_array()?.iter().find(|o| o["operation"] == name))
            .collect();
        for figure in ["/broker/p50_ms", "/floor/p50_ms", "/p50_ratio"] {
            if let Some(value) = operation.pointer_mut(figure) {
                average_into(value, &same.iter().filter_map(|o| o.pointer(figure)).collect::<Vec<_>>());
            }
        }
        if let Some(cpu) = operation.get_mut("cpu_us_per_operation") {
            let runs: Vec<&Value> = same.iter().map(|o| &o["cpu_us_per_operation"]).collect();
            average_into(cpu, &runs);
        }
    }
    merged
}

/// Replaces each number in `target` by the mean of the numbers at the same place in `runs`.
fn average_into(target: &mut Value, runs: &[&Value]) {
    match target {
        Value::Number(_) => {
            let numbers: Vec<f64> = runs.iter().filter_map(|v| v.as_f64()).collect();
            let mean = numbers.iter().sum::<f64>() / numbers.len() as f64;
            if let Some(mean) = serde_json::Number::from_f64(mean) {
                *target = Value::Number(mean);
            }
        }
        Value::Object(fields) => {
            for (key, value) in fields.iter_mut() {
                let at: Vec<&Value> = runs.iter().map(|r| &r[key.as_str()]).collect();
                average_into(value, &at);
            }
        }
        _ => {}
    }
}

/// p50 per operation with the preload against an empty stack measured beside it
/// ([`EMPTY_BESIDE`]), with the floors' p50s (the bare etcd calls drift between two runs too),
/// how the CPU per operation of the load generator and of the broker moved (the client does the
/// same work at any deployment size, so its ratio is what the machine alone changed: the
/// control for the broker's), and the same ratio against the empty run made before the preload.
pub fn scale_table(before: &Value, empty: &Value, large: &Value) -> String {
    let (b, e, l) = (
        per_operation(before, broker_p50),
        per_operation(empty, broker_p50),
        per_operation(large, broker_p50),
    );
    let (fe, fl) = (per_operation(empty, floor_p50), per_operation(large, floor_p50));
    let cpu = |report: &Value, process: &'static str| {
        per_operation(report, move |o| o["cpu_us_per_operation"]["broker"][process].as_f64())
    };
    let (ce, cl) = (cpu(empty, "client"), cpu(large, "client"));
    let (be, bl) = (cpu(empty, "broker"), cpu(large, "broker"));
    let change = |before: Option<f64>, after: Option<f64>| match (before, after) {
        (Some(a), Some(b)) if a > 0.0 && b > 0.0 => format!("{:.2}", b / a),
        _ => "-".to_owned(),
    };
    let mut out = String::from(
        "| operation | p50 empty (ms) | p50 preloaded (ms) | preloaded / empty | floor: empty | preloaded | preloaded / empty | CPU/op preloaded / empty: client | broker | p50 empty, before the preload (ms) | preloaded / that |\n\
         | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |\n",
    );
    for (op, empty_p50) in &e {
        let (Some(empty_p50), Some(large_p50)) = (*empty_p50, lookup(&l, op)) else { continue };
        if empty_p50 <= 0.0 {
            continue;
        }
        let floors = match (lookup(&fe, op), lookup(&fl, op)) {
            (Some(a), Some(b)) if a != 0.0 && b != 0.0 => format!("| {a:.2} | {b:.2} | {:.2} |", b / a),
            _ => "| - | - | - |".to_owned(),
        };
        let client = change(lookup(&ce, op), lookup(&cl, op));
        let broker = change(lookup(&be, op), lookup(&bl, op));
        let earlier = match lookup(&b, op).filter(|p50| *p50 > 0.0) {
            Some(p50) => format!("{p50:.2} | {:.2}", large_p50 / p50),
            None => "- | -".to_owned(),
        };
        let _ = writeln!(
            out,
            "| {op} | {empty_p50:.2} | {large_p50:.2} | {:.2} {floors} {client} | {broker} | {earlier} |",
            large_p50 / empty_p50
        );
    }
    out
}

fn verdict(ok: bool) -> &'static str {
    if ok {
        "met"
    } else {
        "**missed**"
    }
}

/// The smallest and largest of `values` and the name of the (first) largest.
fn spread(values: &[(&str, f64)]) -> Option<(f64, f64, String)> {
    let mut worst = values.first()?;
    for value in values {
        if value.1 > worst.1 {
            worst = value;
        }
    }
    let min = values.iter().map(|v| v.1).fold(f64::INFINITY, f64::min);
    Some((min, worst.1, worst.0.to_owned()))
}

/// `12345.6` -> `12,346`.
fn thousands(value: f64) -> String {
    let digits = format!("{:.0}", value.abs());
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    if value < 0.0 && digits != "0" {
        out.insert(0, '-');
    }
    out
}

/// Operations whose p50 sealing must not move by more than [`SEALING_TARGET`]: the ones that
/// seal (bind) and unseal (GET binding) a password.
const SEALED_OPERATIONS: [&str; 2] = ["bind", "get-binding"];

/// Sealed p50 / unsealed p50 at most this.
const SEALING_TARGET: f64 = 1.1;

/// How much slower bind and GET binding may be with a plan's secrets in OpenBao KV than in etcd
/// (a read and a write to OpenBao per bind, a read per GET, on loopback; bcrypt cost 4, which
/// makes the bind's own etcd work small and OpenBao's share large): a first target, from the
/// first measurement.
const CREDENTIAL_STORE_TARGET: f64 = 2.0;

/// The median of some figures (the mean of the middle two of an even count).
fn median(mut values: Vec<f64>) -> Option<f64> {
    values.sort_by(f64::total_cmp);
    let middle = values.len() / 2;
    match values.len() {
        0 => None,
        n if n % 2 == 1 => Some(values[middle]),
        _ => Some((values[middle - 1] + values[middle]) / 2.0),
    }
}

/// The sealed broker's runs against the unsealed one's: per operation, each run's p50 and the
/// broker's CPU per operation, their medians and the ratio of the medians; and those ratios for
/// [`targets_table`]. Runs alternated, so the median compares like with like.
pub fn sealing_table(sealed: &[Value], unsealed: &[Value]) -> (String, Vec<(String, f64)>) {
    comparison_table(sealed, unsealed, ("sealed", "unsealed"))
}

/// Bind with a plan's secrets in OpenBao KV against the same with them in etcd (the stack's
/// broker): [`comparison_table`]'s table and ratios (OpenBao / etcd).
pub fn credential_store_table(openbao: &[Value], etcd: &[Value]) -> (String, Vec<(String, f64)>) {
    comparison_table(openbao, etcd, ("OpenBao KV", "etcd"))
}

/// Two brokers' runs taken in turn, per operation: each run's p50, the medians, their ratio
/// (`a` / `b`) and each broker's CPU per operation; `labels` name `a` and `b`.
fn comparison_table(a: &[Value], b: &[Value], labels: (&str, &str)) -> (String, Vec<(String, f64)>) {
    let (sealed, unsealed) = (a, b);
    let (la, lb) = labels;
    let figures = |reports: &[Value], op: &str, figure: fn(&Value) -> Option<f64>| -> Vec<f64> {
        reports.iter().filter_map(|r| lookup(&per_operation(r, figure), op)).collect()
    };
    // The broker process's CPU in the broker's rounds (`bench --cpu-of broker=PID`).
    let broker_cpu = |o: &Value| o["cpu_us_per_operation"]["broker"]["broker"].as_f64();
    let list = |values: &[f64]| values.iter().map(|v| format!("{v:.2}")).collect::<Vec<_>>().join(", ");
    let mut out = format!(
        "| operation | p50 {la} (ms), each run | {lb} | median {la} | median {lb} | {la} / {lb} | broker CPU us/op: {la} | {lb} |\n\
         | --- | --- | --- | ---: | ---: | ---: | ---: | ---: |\n",
    );
    let mut ratios = Vec::new();
    let operations = sealed.first().map(|r| per_operation(r, broker_p50)).unwrap_or_default();
    for (op, _) in operations {
        let (on, off) = (figures(sealed, &op, broker_p50), figures(unsealed, &op, broker_p50));
        let (Some(median_on), Some(median_off)) = (median(on.clone()), median(off.clone())) else { continue };
        if median_off <= 0.0 {
            continue;
        }
        let cpu =
            |reports| median(figures(reports, &op, broker_cpu)).map_or("-".to_owned(), |c| format!("{c:.0}"));
        let ratio = median_on / median_off;
        let _ = writeln!(
            out,
            "| {op} | {} | {} | {median_on:.2} | {median_off:.2} | {ratio:.2} | {} | {} |",
            list(&on),
            list(&off),
            cpu(sealed),
            cpu(unsealed)
        );
        ratios.push((op, ratio));
    }
    (out, ratios)
}

/// The targets against one run of the scenario: `reports` by run name (see [`RUNS`]),
/// wrk's catalog requests/s, the start-up time, when measured, and the sealed / unsealed p50
/// ratios of [`sealing_table`].
pub fn targets_table(
    reports: &BTreeMap<String, Value>,
    wrk_rps: Option<f64>,
    startup_ms: Option<u64>,
    sealing: &[(String, f64)],
    credential_store: &[(String, f64)],
) -> String {
    let mut rows: Vec<[String; 3]> = Vec::new();
    for (op, target) in RATIO_TARGETS {
        let ratios: Vec<(&str, f64)> = RUNS
            .iter()
            .filter_map(|run| {
                let report = reports.get(*run)?;
                let row = report["operations"].as_array()?.iter().find(|o| o["operation"] == op)?;
                Some((*run, row["p50_ratio"].as_f64()?))
            })
            .collect();
        if let Some((min, max, worst)) = spread(&ratios) {
            rows.push([
                format!("{op} p50 within {target}x of its floor"),
                format!("{min:.2}-{max:.2}x (worst: {worst})"),
                verdict(max <= target).to_owned(),
            ]);
        }
    }
    let bind_p50 = |run: &str| lookup(&per_operation(reports.get(run)?, broker_p50), "bind");
    if let (Some(password), Some(certificate)) = (bind_p50("default-8"), bind_p50("default-8-certificate")) {
        if certificate > 0.0 {
            let speedup = password / certificate;
            rows.push([
                format!("certificate bind p50 >= {CERTIFICATE_SPEEDUP_TARGET}x faster than password bind (default cost, 8 clients)"),
                format!("{speedup:.1}x ({password:.2} ms / {certificate:.2} ms)"),
                verdict(speedup >= CERTIFICATE_SPEEDUP_TARGET).to_owned(),
            ]);
        }
    }
    if let Some(rps) = wrk_rps {
        rows.push([
            "catalog >= 32,000 requests/s (wrk -t2 -c32)".to_owned(),
            format!("{}/s", thousands(rps)),
            verdict(rps >= 32000.0).to_owned(),
        ]);
    }
    if let (Some(empty), Some(large)) = (reports.get(EMPTY_BESIDE), reports.get("preload-8")) {
        let (e, l) = (per_operation(empty, broker_p50), per_operation(large, broker_p50));
        let scale: Vec<(&str, f64)> = e
            .iter()
            .filter_map(|(op, empty_p50)| {
                let (empty_p50, large_p50) = ((*empty_p50)?, lookup(&l, op)?);
                (empty_p50 != 0.0 && large_p50 != 0.0).then_some((op.as_str(), large_p50 / empty_p50))
            })
            .collect();
        if let Some((min, max, worst)) = spread(&scale) {
            rows.push([
                "preloaded p50 within 1.2x of an empty stack beside it, every operation".to_owned(),
                format!("{min:.2}-{max:.2}x (worst: {worst})"),
                verdict(max <= 1.2).to_owned(),
            ]);
        }
        if let Some(rss) = large["rss_bytes"]["end"].as_f64().filter(|rss| *rss != 0.0) {
            rows.push([
                "broker RSS < 64 MB with the preload".to_owned(),
                format!("{:.1} MB", rss / 1e6),
                verdict(rss < 64e6).to_owned(),
            ]);
        }
    }
    if let Some(ms) = startup_ms {
        rows.push([
            "start-up < 1 s with the preload".to_owned(),
            format!("{ms} ms"),
            verdict(ms < 1000).to_owned(),
        ]);
    }
    let sealing: Vec<(&str, f64)> = sealing
        .iter()
        .filter(|(op, _)| SEALED_OPERATIONS.contains(&op.as_str()))
        .map(|(op, ratio)| (op.as_str(), *ratio))
        .collect();
    if let Some((min, max, worst)) = spread(&sealing) {
        rows.push([
            format!("sealing: bind and get-binding p50 within {SEALING_TARGET}x of unsealed"),
            format!("{min:.2}-{max:.2}x (worst: {worst})"),
            verdict(max <= SEALING_TARGET).to_owned(),
        ]);
    }
    let stored: Vec<(&str, f64)> = credential_store
        .iter()
        .filter(|(op, _)| SEALED_OPERATIONS.contains(&op.as_str()))
        .map(|(op, ratio)| (op.as_str(), *ratio))
        .collect();
    if let Some((min, max, worst)) = spread(&stored) {
        rows.push([
            format!("OpenBao KV store: bind and get-binding p50 within {CREDENTIAL_STORE_TARGET}x of the etcd store"),
            format!("{min:.2}-{max:.2}x (worst: {worst})"),
            verdict(max <= CREDENTIAL_STORE_TARGET).to_owned(),
        ]);
    }
    if let Some(busy) = reports.get("default-64") {
        let operations = busy["operations"].as_array().map(Vec::as_slice).unwrap_or_default();
        let errors: u64 = operations.iter().filter_map(|o| o["broker"]["errors"].as_u64()).sum();
        let orphans = busy["orphans"].as_array().map(Vec::len);
        rows.push([
            "64 clients: no errors, no orphans".to_owned(),
            format!("{errors} errors, {} orphans", orphans.unwrap_or(0)),
            verdict(errors == 0 && orphans == Some(0)).to_owned(),
        ]);
    }
    if let Some(proxy) = reports.get("proxy") {
        rows.extend(proxy_targets(proxy));
    }
    let mut out = String::from("| target | this run | |\n| --- | --- | --- |\n");
    for row in rows {
        let _ = writeln!(out, "| {} |", row.join(" | "));
    }
    out
}

/// The proxy's two targets from `xtask bench-proxy`'s report: the lowest throughput ratio and
/// the largest p50 added at 1 client, each naming its row.
fn proxy_targets(report: &Value) -> Vec<[String; 3]> {
    let rows = report["rows"].as_array().map(Vec::as_slice).unwrap_or_default();
    let through_proxy = rows.iter().filter(|r| r["target"].as_str().is_some_and(|t| t.starts_with("proxy")));
    let name = |r: &Value| {
        format!(
            "{}, {} client(s), {}",
            r["scenario"].as_str().unwrap_or("?"),
            r["clients"].as_u64().unwrap_or(0),
            r["target"].as_str().unwrap_or("?")
        )
    };
    let mut out = Vec::new();
    // The lowest ratio is the worst: negated, spread's largest is it.
    let ratios: Vec<(String, f64)> =
        through_proxy.clone().filter_map(|r| Some((name(r), -r["throughput_vs_direct"].as_f64()?))).collect();
    let ratios: Vec<(&str, f64)> = ratios.iter().map(|(n, v)| (n.as_str(), *v)).collect();
    if let Some((best, worst, which)) = spread(&ratios) {
        out.push([
            format!(
                "proxy throughput >= {PROXY_THROUGHPUT_TARGET}x of etcd directly (put, range, watch events)"
            ),
            format!("{:.2}-{:.2}x (worst: {which})", -worst, -best),
            verdict(-worst >= PROXY_THROUGHPUT_TARGET).to_owned(),
        ]);
    }
    let added: Vec<(String, f64)> = through_proxy
        .filter(|r| r["clients"].as_u64() == Some(1))
        .filter_map(|r| Some((name(r), r["p50_added_ms"].as_f64()?)))
        .collect();
    let added: Vec<(&str, f64)> = added.iter().map(|(n, v)| (n.as_str(), *v)).collect();
    if let Some((min, max, which)) = spread(&added) {
        out.push([
            format!(
                "proxy p50 at most +{PROXY_ADDED_P50_TARGET_MS} ms over etcd directly (1 client, loopback)"
            ),
            format!("{min:+.3} to {max:+.3} ms (worst: {which})"),
            verdict(max <= PROXY_ADDED_P50_TARGET_MS).to_owned(),
        ]);
    }
    out
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn op(name: &str, p50: f64, floor: Option<f64>, ratio: Option<f64>) -> Value {
        json!({ "operation": name, "broker": { "p50_ms": p50, "errors": 0 },
                "floor": floor.map(|f| json!({ "p50_ms": f })), "p50_ratio": ratio })
    }

    #[test]
    fn a_mean_report_averages_the_latencies_and_keeps_the_rest() {
        let run = |p50: f64, floor: Option<f64>, client: f64| {
            let mut o = op("bind", p50, floor, floor.map(|f| p50 / f));
            o["cpu_us_per_operation"] = json!({ "broker": { "client": client } });
            json!({ "operations": [o, op("catalog", p50 / 10.0, None, None)], "rss_bytes": { "end": p50 } })
        };
        let (a, b) = (run(20.0, Some(10.0), 100.0), run(30.0, None, 200.0));
        let mean = mean_report(&[&a, &b]);
        let bind = &mean["operations"][0];
        assert_eq!(bind["broker"]["p50_ms"], 25.0);
        assert_eq!(bind["floor"]["p50_ms"], 10.0, "a run without the figure is left out");
        assert_eq!(bind["p50_ratio"], 2.0);
        assert_eq!(bind["cpu_us_per_operation"]["broker"]["client"], 150.0);
        assert_eq!(bind["broker"]["errors"], 0, "counts are the first run's");
        assert_eq!(mean["operations"][1]["broker"]["p50_ms"], 2.5);
        assert_eq!(mean["rss_bytes"]["end"], 20.0);
    }

    #[test]
    fn the_scale_table_compares_each_operation_and_its_floor() {
        let with_cpu = |mut o: Value, client: f64, broker: f64| {
            o["cpu_us_per_operation"] = json!({ "broker": { "client": client, "broker": broker } });
            o
        };
        let before = json!({ "operations": [op("catalog", 0.20, None, None)] });
        let empty = json!({ "operations": [
            with_cpu(op("catalog", 0.25, None, None), 40.0, 20.0),
            op("bind", 20.0, Some(22.0), Some(0.9)),
        ] });
        let large = json!({ "operations": [
            with_cpu(op("catalog", 0.33, None, None), 50.0, 26.0),
            op("bind", 25.0, Some(27.5), Some(0.9)),
        ] });
        assert_eq!(
            scale_table(&before, &empty, &large),
            "| operation | p50 empty (ms) | p50 preloaded (ms) | preloaded / empty | floor: empty | preloaded | preloaded / empty | CPU/op preloaded / empty: client | broker | p50 empty, before the preload (ms) | preloaded / that |\n\
             | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |\n\
             | catalog | 0.25 | 0.33 | 1.32 | - | - | - | 1.25 | 1.30 | 0.20 | 1.65 |\n\
             | bind | 20.00 | 25.00 | 1.25 | 22.00 | 27.50 | 1.25 | - | - | - | - |\n"
        );
    }

    #[test]
    fn targets_name_the_worst_run_and_miss_when_it_is_over() {
        let mut reports = BTreeMap::new();
        reports.insert(
            "cost4-1".to_owned(),
            json!({ "operations": [op("provision", 1.0, Some(0.5), Some(1.38)), op("get-binding", 1.0, Some(0.5), Some(1.56))] }),
        );
        reports.insert(
            "cost4-8".to_owned(),
            json!({ "operations": [op("provision", 2.0, Some(2.0), Some(0.95)), op("get-binding", 1.0, Some(1.0), Some(1.48))] }),
        );
        // The scale target compares with the empty stack beside the preload, not cost4-8.
        reports.insert(
            EMPTY_BESIDE.to_owned(),
            json!({ "operations": [op("provision", 2.0, None, None), op("get-binding", 0.5, None, None)] }),
        );
        reports.insert(
            "preload-8".to_owned(),
            json!({ "operations": [op("provision", 2.2, None, None), op("get-binding", 1.0, None, None)],
                    "rss_bytes": { "end": 27.0e6 } }),
        );
        reports.insert(
            "default-64".to_owned(),
            json!({ "operations": [op("provision", 1.0, None, None)], "orphans": [] }),
        );
        reports.insert("default-8".to_owned(), json!({ "operations": [op("bind", 270.0, None, None)] }));
        reports.insert(
            "default-8-certificate".to_owned(),
            json!({ "operations": [op("bind", 9.0, None, None)] }),
        );
        let sealing =
            [("provision".to_owned(), 1.5), ("bind".to_owned(), 1.04), ("get-binding".to_owned(), 1.08)];
        let stored = [("bind".to_owned(), 1.4), ("get-binding".to_owned(), 1.9)];
        let table = targets_table(&reports, Some(63300.84), Some(90), &sealing, &stored);
        let lines: Vec<&str> = table.lines().collect();
        assert_eq!(
            lines,
            [
                "| target | this run | |",
                "| --- | --- | --- |",
                "| provision p50 within 1.5x of its floor | 0.95-1.38x (worst: cost4-1) | met |",
                "| get-binding p50 within 1.5x of its floor | 1.48-1.56x (worst: cost4-1) | **missed** |",
                "| certificate bind p50 >= 20x faster than password bind (default cost, 8 clients) | 30.0x (270.00 ms / 9.00 ms) | met |",
                "| catalog >= 32,000 requests/s (wrk -t2 -c32) | 63,301/s | met |",
                "| preloaded p50 within 1.2x of an empty stack beside it, every operation | 1.10-2.00x (worst: get-binding) | **missed** |",
                "| broker RSS < 64 MB with the preload | 27.0 MB | met |",
                "| start-up < 1 s with the preload | 90 ms | met |",
                "| sealing: bind and get-binding p50 within 1.1x of unsealed | 1.04-1.08x (worst: get-binding) | met |",
                "| OpenBao KV store: bind and get-binding p50 within 2x of the etcd store | 1.40-1.90x (worst: get-binding) | met |",
                "| 64 clients: no errors, no orphans | 0 errors, 0 orphans | met |",
            ]
        );
        // No orphan list (the check did not run) is no pass.
        reports.insert("default-64".to_owned(), json!({ "operations": [] }));
        assert!(
            targets_table(&reports, None, None, &[], &[]).contains("| 0 errors, 0 orphans | **missed** |")
        );
    }

    #[test]
    fn the_sealing_table_compares_medians_of_alternating_runs() {
        let run = |bind: f64, get: f64, cpu: f64| {
            let mut report =
                json!({ "operations": [op("bind", bind, None, None), op("get-binding", get, None, None)] });
            report["operations"][0]["cpu_us_per_operation"] = json!({ "broker": { "broker": cpu } });
            report
        };
        let sealed = [run(21.0, 1.3, 700.0), run(20.0, 1.2, 720.0), run(30.0, 1.1, 760.0)];
        let unsealed = [run(20.0, 1.0, 690.0), run(19.0, 1.2, 700.0)];
        let (table, ratios) = sealing_table(&sealed, &unsealed);
        let lines: Vec<&str> = table.lines().collect();
        assert_eq!(
            lines[2],
            "| bind | 21.00, 20.00, 30.00 | 20.00, 19.00 | 21.00 | 19.50 | 1.08 | 720 | 695 |"
        );
        assert_eq!(lines[3], "| get-binding | 1.30, 1.20, 1.10 | 1.00, 1.20 | 1.20 | 1.10 | 1.09 | - | - |");
        assert_eq!(ratios.len(), 2);
        assert!((ratios[0].1 - 21.0 / 19.5).abs() < 1e-9, "{ratios:?}");
        // A run without the operation leaves it out rather than failing.
        let (table, ratios) = sealing_table(&sealed, &[json!({ "operations": [] })]);
        assert_eq!((table.lines().count(), ratios.len()), (2, 0));
    }

    #[test]
    fn thousands_are_grouped() {
        assert_eq!(thousands(63300.84), "63,301");
        assert_eq!(thousands(999.4), "999");
        assert_eq!(thousands(1234567.0), "1,234,567");
    }
}

//! A few seconds of `xtask soak`: two brokers churn, the report has a row per sample and the
//! slopes, the churn fails nothing, nothing is left behind, and the report lands in the
//! document's region.

use std::process::Command;

#[test]
fn a_short_soak_reports_every_sample_and_leaves_nothing_behind() {
    let dir = tempfile::tempdir().unwrap();
    let doc = dir.path().join("reliability.md");
    std::fs::write(&doc, "# Reliability\n\n<!-- generated: soak -->\nold\n<!-- end generated -->\n\nafter\n")
        .unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_xtask"))
        .args(["soak", "--seconds", "6", "--sample-seconds", "2", "--clients", "2", "--out"])
        .arg(&doc)
        .output()
        .unwrap();
    let report = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(out.status.success(), "{report}\n{}", String::from_utf8_lossy(&out.stderr));
    assert!(report.contains(" lifecycles ("), "{report}");
    assert!(report.contains(", 0 failed"), "{report}");
    // The first sample, three during the churn, and the one after it.
    let rows =
        report.lines().filter(|l| l.trim_start().chars().next().is_some_and(|c| c.is_ascii_digit())).count();
    assert!(rows >= 4, "{report}");
    assert!(report.contains("slopes per hour"), "{report}");
    // The brokers' own keys: the expiry and inventory leaders', the inventory's counts.
    assert!(report.contains("after the churn: 3 keys, 0 users, 0 roles, 0 queued left"), "{report}");
    let written = std::fs::read_to_string(&doc).unwrap();
    assert!(
        written.contains(&report) && written.ends_with("after\n") && !written.contains("old"),
        "{written}"
    );
}

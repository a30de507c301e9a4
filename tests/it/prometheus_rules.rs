//! The alert rules pass `promtool check rules` and their unit tests (`promtool test rules`).

use std::path::Path;
use std::process::Command;

fn promtool(args: &[&str]) {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("manifests/prometheus");
    let out = Command::new(crate::common::tool("prometheus/bin/promtool"))
        .args(args)
        .current_dir(&dir)
        .output()
        .expect("promtool (scripts/install-tools.sh)");
    assert!(
        out.status.success(),
        "promtool {args:?} failed:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn alert_rules_are_valid() {
    promtool(&["check", "rules", "alerts.yml"]);
}

#[test]
fn alert_rules_fire_when_they_should_and_only_then() {
    promtool(&["test", "rules", "alerts_test.yml"]);
}

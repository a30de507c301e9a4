//! Step results of a blackbox run: one line each on the terminal, a summary, and JSON.

use std::time::Duration;

use serde_json::{json, Value};

/// How a step ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Pass,
    Fail,
    /// Not run: a step it needs failed, or its prerequisite (e.g. root credentials) is absent.
    Skip,
}

impl Outcome {
    fn label(self) -> &'static str {
        match self {
            Outcome::Pass => "PASS",
            Outcome::Fail => "FAIL",
            Outcome::Skip => "SKIP",
        }
    }
}

/// One step: its name, outcome, how long it took and, unless it passed, why.
#[derive(Debug, Clone)]
pub struct StepResult {
    pub name: String,
    pub outcome: Outcome,
    pub duration: Duration,
    pub detail: Option<String>,
}

impl StepResult {
    /// `PASS  provision A                              41 ms` (+ `: reason`).
    pub fn line(&self) -> String {
        let mut line =
            format!("{}  {:<50} {:>7} ms", self.outcome.label(), self.name, self.duration.as_millis());
        if let Some(detail) = &self.detail {
            line += &format!("  {detail}");
        }
        line
    }
}

/// A whole run.
#[derive(Debug, Clone, Default)]
pub struct Report {
    pub steps: Vec<StepResult>,
}

impl Report {
    /// How many steps ended with `outcome`.
    pub fn count(&self, outcome: Outcome) -> usize {
        self.steps.iter().filter(|s| s.outcome == outcome).count()
    }

    /// True when no step failed and every step that could run did (a skip only for the
    /// optional root check is fine; a skip caused by a failure comes with that failure).
    pub fn passed(&self) -> bool {
        self.count(Outcome::Fail) == 0 && !self.steps.is_empty()
    }

    /// `blackbox: 17 passed, 0 failed, 1 skipped in 2.3 s`.
    pub fn summary(&self) -> String {
        let total: Duration = self.steps.iter().map(|s| s.duration).sum();
        format!(
            "blackbox: {} passed, {} failed, {} skipped in {:.1} s",
            self.count(Outcome::Pass),
            self.count(Outcome::Fail),
            self.count(Outcome::Skip),
            total.as_secs_f64()
        )
    }

    /// `{"passed": bool, "steps": [{"name", "outcome", "duration_ms", "detail"}]}`.
    pub fn to_json(&self) -> Value {
        let steps: Vec<Value> = self
            .steps
            .iter()
            .map(|s| {
                json!({
                    "name": s.name,
                    "outcome": s.outcome.label().to_lowercase(),
                    "duration_ms": s.duration.as_secs_f64() * 1000.0,
                    "detail": s.detail,
                })
            })
            .collect();
        json!({ "passed": self.passed(), "steps": steps })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn step(name: &str, outcome: Outcome, ms: u64, detail: Option<&str>) -> StepResult {
        StepResult {
            name: name.into(),
            outcome,
            duration: Duration::from_millis(ms),
            detail: detail.map(Into::into),
        }
    }

    #[test]
    fn lines_summary_and_json_agree() {
        let report = Report {
            steps: vec![
                step("catalog", Outcome::Pass, 3, None),
                step("provision A", Outcome::Fail, 40, Some("provision answered 500")),
                step("bind A", Outcome::Skip, 0, Some("needs: provision A")),
            ],
        };
        assert!(report.steps[1].line().starts_with("FAIL  provision A "));
        assert!(report.steps[1].line().ends_with("40 ms  provision answered 500"));
        assert_eq!(report.summary(), "blackbox: 1 passed, 1 failed, 1 skipped in 0.0 s");
        assert!(!report.passed());
        let json = report.to_json();
        assert_eq!(json["passed"], false);
        assert_eq!(json["steps"][2]["outcome"], "skip");
        assert_eq!(json["steps"][1]["duration_ms"], 40.0);

        assert!(!Report::default().passed(), "an empty run is no pass");
    }
}

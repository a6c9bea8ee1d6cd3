//! Counters for `/metrics` (Prometheus text) and the byte totals in `/api/status`.

use std::collections::BTreeMap;
use std::fmt::Write;

#[derive(Default)]
pub struct Metrics {
    pub updates_accepted: u64,
    pub updates_rejected: BTreeMap<&'static str, u64>,
    pub rounds_abandoned: u64,
    /// Encoded update bytes accepted in the open round (moved into its record when it settles).
    pub bytes_up_this_round: u64,
    pub bytes_up_total: u64,
    /// Model bytes served (downloads) in the open round and in total.
    pub bytes_down_this_round: u64,
    pub bytes_down_total: u64,
}

/// What `/metrics` shows besides the counters.
pub struct Gauges {
    pub model_version: u64,
    pub rounds_completed: u64,
    pub test_accuracy: Option<f64>,
}

impl Metrics {
    /// The Prometheus text exposition.
    pub fn render(&self, g: &Gauges) -> String {
        let mut out = String::new();
        let mut metric = |name: &str, kind: &str, help: &str, lines: Vec<(String, String)>| {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
            for (labels, value) in lines {
                let _ = writeln!(out, "{name}{labels} {value}");
            }
        };
        let one = |v: String| vec![(String::new(), v)];
        metric("webfl_model_version", "gauge", "Current committed model version.", one(g.model_version.to_string()));
        metric(
            "webfl_rounds_completed_total",
            "counter",
            "Rounds that produced a new version.",
            one(g.rounds_completed.to_string()),
        );
        metric(
            "webfl_rounds_abandoned_total",
            "counter",
            "Rounds abandoned at their deadline with too few updates.",
            one(self.rounds_abandoned.to_string()),
        );
        metric(
            "webfl_updates_accepted_total",
            "counter",
            "Client updates accepted into a round.",
            one(self.updates_accepted.to_string()),
        );
        metric(
            "webfl_updates_rejected_total",
            "counter",
            "Client updates refused, by reason.",
            self.updates_rejected.iter().map(|(r, n)| (format!("{{reason=\"{r}\"}}"), n.to_string())).collect(),
        );
        metric(
            "webfl_test_accuracy",
            "gauge",
            "Held-out accuracy of the current version (NaN before the first round).",
            one(g.test_accuracy.map_or_else(|| "NaN".to_string(), |a| a.to_string())),
        );
        out
    }
}

//! What a simulation reports: one history row per settled round (`history.json`,
//! `history.csv`), the run's summary, comparison tables and charts.

use std::path::Path;

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};
use webfl_shared::protocol::{RoundOutcome, SecAggRecord};

use crate::plot;

/// One row of `history.json` / `history.csv`: a settled round.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct HistoryRow {
    pub round: u64,
    pub outcome: RoundOutcome,
    /// Clients selected for the round.
    pub selected: usize,
    /// Updates the round accepted.
    pub clients: usize,
    pub examples: usize,
    /// Example-weighted means over the round's accepted updates.
    pub train_loss: f64,
    pub train_accuracy: f64,
    /// The model after the round (unchanged by an abandoned round) on the test split.
    pub test_loss: f64,
    pub test_accuracy: f64,
    /// ‖aggregate update‖; 0 for an abandoned round.
    pub update_norm: f64,
    /// Updates the server clipped.
    pub clipped: usize,
    /// Encoded bytes of the accepted updates.
    pub bytes_up: usize,
    /// (ε, δ) spent so far; `None` without DP.
    pub epsilon: Option<f64>,
    /// Wall-clock seconds the round took to simulate.
    pub seconds: f64,
    /// Virtual time when the round settled.
    pub sim_time_s: f64,
    /// Virtual duration of the round, from opening to settling.
    pub round_s: f64,
    /// In a secure round: who took part in each stage (survivors; dropouts are the differences).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secagg: Option<SecAggRecord>,
}

const CSV_HEADER: &str = "round,outcome,selected,clients,examples,train_loss,train_accuracy,test_loss,test_accuracy,\
                          update_norm,clipped,bytes_up,epsilon,seconds,sim_time_s,round_s,\
                          secagg_cohort,secagg_advertised,secagg_shared,secagg_masked,secagg_unmasked\n";

pub fn write_history(dir: &Path, history: &[HistoryRow]) -> Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    std::fs::write(dir.join("history.json"), serde_json::to_string_pretty(history)?)?;
    let mut csv = String::from(CSV_HEADER);
    for r in history {
        let secagg = r.secagg.map_or(",,,,".to_string(), |s| {
            format!("{},{},{},{},{}", s.cohort, s.advertised, s.shared, s.masked, s.unmasked)
        });
        csv.push_str(&format!(
            "{},{},{},{},{},{},{},{},{},{},{},{},{},{},{},{},{secagg}\n",
            r.round,
            r.outcome.as_str(),
            r.selected,
            r.clients,
            r.examples,
            r.train_loss,
            r.train_accuracy,
            r.test_loss,
            r.test_accuracy,
            r.update_norm,
            r.clipped,
            r.bytes_up,
            r.epsilon.map_or(String::new(), |e| e.to_string()),
            r.seconds,
            r.sim_time_s,
            r.round_s,
        ));
    }
    std::fs::write(dir.join("history.csv"), csv)?;
    Ok(())
}

pub const TABLE_HEADER: &str = "round outcome     clients train_loss test_loss  test_acc  round_s   seconds";

pub fn table_row(r: &HistoryRow) -> String {
    let outcome = match r.outcome {
        RoundOutcome::Closed => "closed",
        RoundOutcome::ClosedByDeadline => "deadline",
        RoundOutcome::Abandoned => "abandoned",
        RoundOutcome::StoreFailed => "store_failed",
    };
    let row = format!(
        "{:>5} {:<11} {:>7} {:>10.4} {:>9.4} {:>9.4} {:>8.1} {:>9.2}",
        r.round, outcome, r.clients, r.train_loss, r.test_loss, r.test_accuracy, r.round_s, r.seconds
    );
    match &r.secagg {
        Some(s) => format!("{row}  {}", s.describe()),
        None => row,
    }
}

/// How a run went, in a few numbers.
#[derive(Clone, Debug, PartialEq)]
pub struct RunSummary {
    pub closed: usize,
    pub closed_by_deadline: usize,
    pub abandoned: usize,
    /// Median virtual duration of a round, seconds.
    pub median_round_s: f64,
    /// Uploads refused because their round had moved on (HTTP 409).
    pub stale_uploads: u64,
    /// Selected clients that vanished mid-round.
    pub dropouts: u64,
    /// Virtual time at the end, seconds.
    pub sim_time_s: f64,
    /// Why the run stopped.
    pub stopped: String,
}

impl RunSummary {
    pub fn of(history: &[HistoryRow], stale_uploads: u64, dropouts: u64, sim_time_s: f64, stopped: String) -> Self {
        let count = |o: RoundOutcome| history.iter().filter(|r| r.outcome == o).count();
        let mut durations: Vec<f64> = history.iter().map(|r| r.round_s).collect();
        durations.sort_by(f64::total_cmp);
        let median_round_s = match durations.len() {
            0 => 0.0,
            n if n % 2 == 1 => durations[n / 2],
            n => (durations[n / 2 - 1] + durations[n / 2]) / 2.0,
        };
        Self {
            closed: count(RoundOutcome::Closed),
            closed_by_deadline: count(RoundOutcome::ClosedByDeadline),
            abandoned: count(RoundOutcome::Abandoned),
            median_round_s,
            stale_uploads,
            dropouts,
            sim_time_s,
            stopped,
        }
    }

    pub fn describe(&self) -> String {
        format!(
            "rounds closed by target {}, by deadline {}, abandoned {}; median round {:.1} s of virtual time \
             ({:.0} s in all); stale uploads refused {}; dropouts {}; {}",
            self.closed,
            self.closed_by_deadline,
            self.abandoned,
            self.median_round_s,
            self.sim_time_s,
            self.stale_uploads,
            self.dropouts,
            self.stopped
        )
    }
}

/// First round whose test accuracy reaches `target`.
pub fn rounds_to(history: &[HistoryRow], target: f64) -> Option<u64> {
    history.iter().find(|r| r.test_accuracy >= target).map(|r| r.round)
}

pub fn series(history: &[HistoryRow], label: &str) -> (plot::Series, plot::Series) {
    let acc = history.iter().map(|r| (r.round as f64, r.test_accuracy)).collect();
    let loss = history.iter().map(|r| (r.round as f64, r.test_loss)).collect();
    (plot::Series { label: label.to_string(), points: acc }, plot::Series { label: label.to_string(), points: loss })
}

/// One configuration's line in `summary.csv` and the printed table.
pub struct SummaryRow {
    pub label: String,
    pub last: f64,
    pub best: f64,
    pub reach: Option<Option<u64>>,
    pub rounds: usize,
    /// Mean encoded bytes one client uploads per round.
    pub bytes_per_update: f64,
    /// ε spent by the end (`None` without DP).
    pub epsilon: Option<f64>,
    pub median_round_s: f64,
}

pub fn write_summary(out: &Path, rows: &[SummaryRow]) -> Result<()> {
    let mut summary = String::from(
        "configuration,final_accuracy,best_accuracy,rounds_to_target,bytes_per_update,epsilon,median_round_s\n",
    );
    println!(
        "\n{:<44} {:>8} {:>8} {:>8} {:>14} {:>8} {:>8}",
        "configuration", "final", "best", "to target", "bytes/update", "ε", "round_s"
    );
    for r in rows {
        let reach = match r.reach {
            Some(Some(n)) => n.to_string(),
            Some(None) => format!(">{}", r.rounds),
            None => "-".into(),
        };
        let eps = r.epsilon.map_or("∞".to_string(), |e| format!("{e:.3}"));
        println!(
            "{:<44} {:>8.4} {:>8.4} {:>8} {:>14.0} {:>8} {:>8.1}",
            r.label, r.last, r.best, reach, r.bytes_per_update, eps, r.median_round_s
        );
        summary.push_str(&format!(
            "\"{}\",{},{},{reach},{:.0},{},{}\n",
            r.label.replace('"', "\"\""),
            r.last,
            r.best,
            r.bytes_per_update,
            r.epsilon.map_or(String::new(), |e| e.to_string()),
            r.median_round_s,
        ));
    }
    std::fs::write(out.join("summary.csv"), summary)?;
    Ok(())
}

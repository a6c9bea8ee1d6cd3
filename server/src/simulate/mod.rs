//! `webfl simulate`: many federated clients in one process. Each client is a participant
//! [`Session`](webfl_shared::participant::Session), the server is the same
//! [`SyncCoordinator`](webfl_shared::coordinator::SyncCoordinator) `webfl serve` drives, both
//! built from the same [`TaskConfig`]; [`events`] runs them on a virtual clock, with client
//! speeds, network times and dropouts from [`behaviour`]. Training and evaluation are real and
//! run on all cores.
//!
//! Determinism: every random choice draws from a stream derived from the seed and its role
//! (initialisation, partition, arrival order, each client's training, noise, compression and
//! behaviour), so the same seed and settings give the same history on the same platform.

pub mod behaviour;
pub mod events;
pub mod report;

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use indicatif::{ProgressBar, ProgressStyle};
use webfl_shared::data::Split;
use webfl_shared::data::partition::{histogram_table, partition};
use webfl_shared::pipeline::DpMode;
use webfl_shared::protocol::AssignmentTerms;
use webfl_shared::rng;

use crate::config::TaskConfig;
use crate::plot;
use behaviour::Behaviour;
use events::{Run, World};
use report::{HistoryRow, SummaryRow, rounds_to, series, write_history, write_summary};

/// The data a run trains on, loaded once and shared by every configuration of a comparison
/// that uses the same dataset.
pub struct Prepared {
    pub split: Split,
}

pub fn prepare(cfg: &TaskConfig) -> Result<Prepared> {
    Ok(Prepared { split: cfg.load_data()? })
}

pub use crate::eval::evaluate;

/// The simulated world of `cfg`: its clients' data, model, coordinator settings and behaviour.
pub fn world(cfg: &TaskConfig, prepared: &Prepared) -> Result<World> {
    cfg.validate()?;
    let Split { train, test } = &prepared.split;
    let spec = cfg.model_spec(&train.sample_shape, train.classes)?;
    let initial = cfg.initial_params(&spec)?;
    let (update, central_dp, privacy) = cfg.simulation_pipeline()?;
    let mut strategy = cfg.strategy.clone();
    strategy.central_dp = central_dp;
    let sim = &cfg.simulation;
    let parts = partition(&train.labels, train.classes, sim.clients, &sim.partition, rng::partition_seed(cfg.seed))?;
    if sim.show_partition {
        println!("{}", histogram_table(&train.labels, train.classes, &parts));
    }
    let policy = cfg.policy(train.len() as u64)?;
    let terms = AssignmentTerms {
        plan: cfg.plan.clone(),
        model: spec,
        upload_limit_bytes: crate::config::upload_limit_bytes(cfg.upload_limit_bytes, initial.len()),
        update,
        secure_aggregation: cfg.secure_aggregation.as_ref().map(|s| s.terms(&policy, cfg.strategy.kind)),
    };
    Ok(World {
        terms,
        policy,
        secure: cfg.secure_aggregation.clone(),
        strategy,
        initial,
        privacy,
        local_dp: cfg.privacy.mode == DpMode::Local,
        clients: parts.iter().map(|p| train.subset(p)).collect(),
        test: test.clone(),
        behaviour: Behaviour::new(cfg.seed, sim),
        seed: cfg.seed,
        rounds: sim.rounds,
        backend: sim.backend,
    })
}

/// Runs one configuration, with a progress bar (and, with `show_table`, a row per round).
pub fn run(cfg: &TaskConfig, prepared: &Prepared, label: &str, show_table: bool) -> Result<Run> {
    let world = world(cfg, prepared)?;
    let bar = ProgressBar::new(cfg.simulation.rounds as u64);
    bar.set_style(
        ProgressStyle::with_template("{prefix} [{bar:30}] round {pos}/{len} {msg} ({elapsed}, eta {eta})")
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> "),
    );
    bar.set_prefix(label.to_string());
    if show_table {
        say(&bar, report::TABLE_HEADER.to_string());
    }
    let run = events::drive(&world, &mut |record: &HistoryRow| {
        if show_table {
            say(&bar, report::table_row(record));
        }
        bar.set_message(format!("acc {:.4}", record.test_accuracy));
        bar.inc(1);
    })?;
    bar.finish();
    Ok(run)
}

/// Prints above the progress bar, or plainly when the bar is hidden (not a terminal).
fn say(bar: &ProgressBar, line: String) {
    if bar.is_hidden() { println!("{line}") } else { bar.println(line) }
}

/// Expands compare entries into the cartesian product of labelled configurations. An entry is
/// either `key=v1,v2,...` (one setting, several values) or alternatives joined by `|`, each a
/// set of `key=value` assignments joined by `&`, for settings that only make sense together:
/// `strategy=fedavg | strategy=fedadam&server_lr=0.01`. Keys name settings by field or flag.
pub fn expand_compare(base: &TaskConfig, compare: &[String]) -> Result<Vec<(String, TaskConfig)>> {
    let mut runs = vec![(String::new(), base.clone())];
    for entry in compare {
        let alternatives: Vec<Vec<(String, String)>> = if entry.contains('|') {
            entry
                .split('|')
                .map(|alt| alt.split('&').map(assignment).collect::<Result<Vec<_>>>())
                .collect::<Result<_>>()?
        } else {
            let (key, values) = assignment(entry)?;
            values
                .split(',')
                .map(str::trim)
                .filter(|v| !v.is_empty())
                .map(|v| vec![(key.clone(), v.to_string())])
                .collect()
        };
        let mut next = Vec::new();
        for (label, cfg) in &runs {
            for alt in &alternatives {
                let mut cfg = cfg.clone();
                for (key, value) in alt {
                    cfg = cfg.with_override(key, value)?;
                }
                let text = alt.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>().join(" ");
                next.push((if label.is_empty() { text } else { format!("{label} {text}") }, cfg));
            }
        }
        runs = next;
    }
    Ok(runs)
}

fn assignment(text: &str) -> Result<(String, String)> {
    let (k, v) = text.split_once('=').with_context(|| format!("--compare {text:?}: expected KEY=VALUE"))?;
    Ok((k.trim().to_string(), v.trim().to_string()))
}

/// Runs the configuration (or, with `compare`, every configuration of the comparison) and writes
/// histories, CSVs and PNG charts into `out`.
pub fn run_all(base: &TaskConfig, compare: &[String], out: &Path) -> Result<()> {
    let runs = expand_compare(base, compare)?;
    for (label, cfg) in &runs {
        cfg.validate().with_context(|| {
            if label.is_empty() { "invalid settings".into() } else { format!("invalid settings for {label}") }
        })?;
    }
    std::fs::create_dir_all(out).with_context(|| format!("creating {}", out.display()))?;
    std::fs::write(out.join("config.toml"), toml::to_string(base)?)?;
    if compare.is_empty() {
        let prepared = prepare(base)?;
        let run = run(base, &prepared, "simulate", true)?;
        let history = &run.history;
        write_history(out, history)?;
        let label = format!("{} {} {}", base.model, base.strategy.kind, base.simulation.partition);
        let (acc, loss) = series(history, &label);
        plot::accuracy_and_loss(&out.join("history.png"), "webfl simulate", &[acc], &[loss])?;
        if let Some(t) = base.simulation.target_accuracy {
            match rounds_to(history, t) {
                Some(r) => println!("reached test accuracy {t} in {r} rounds"),
                None => println!("did not reach test accuracy {t} in {} rounds", history.len()),
            }
        }
        println!("{}", run.summary.describe());
        println!("wrote {}", out.join("history.json").display());
        return Ok(());
    }
    let mut prepared: Option<(String, Prepared)> = None;
    let (mut accs, mut losses, mut rows) = (Vec::new(), Vec::new(), Vec::new());
    for (label, cfg) in &runs {
        if prepared.as_ref().is_none_or(|(d, _)| *d != cfg.dataset) {
            prepared = Some((cfg.dataset.clone(), prepare(cfg)?));
        }
        let data = &prepared.as_ref().context("dataset not loaded")?.1;
        let run = run(cfg, data, label, false)?;
        let history = &run.history;
        let dir: PathBuf = out.join(slug(label));
        write_history(&dir, history)?;
        let (a, l) = series(history, label);
        accs.push(a);
        losses.push(l);
        let last = history.last().context("no round settled")?;
        let best = history.iter().map(|r| r.test_accuracy).fold(0.0, f64::max);
        let reach = cfg.simulation.target_accuracy.map(|t| rounds_to(history, t));
        let bytes =
            history.iter().map(|r| r.bytes_up as f64 / r.clients.max(1) as f64).sum::<f64>() / history.len() as f64;
        rows.push(SummaryRow {
            label: label.clone(),
            last: last.test_accuracy,
            best,
            reach,
            rounds: cfg.simulation.rounds,
            bytes_per_update: bytes,
            epsilon: last.epsilon,
            median_round_s: run.summary.median_round_s,
        });
    }
    plot::accuracy_and_loss(&out.join("comparison.png"), "webfl simulate: comparison", &accs, &losses)?;
    write_summary(out, &rows)?;
    // Trade-off charts when the runs differ in what they cost.
    if rows.iter().any(|r| r.epsilon.is_some()) {
        let points: Vec<plot::TradeoffPoint> = rows
            .iter()
            .map(|r| plot::TradeoffPoint {
                label: r.label.clone(),
                x: r.epsilon.unwrap_or(f64::INFINITY),
                accuracy: r.last,
            })
            .collect();
        plot::tradeoff(&out.join("privacy_utility.png"), "privacy vs utility", "ε (δ as configured)", &points)?;
        println!("wrote {}", out.join("privacy_utility.png").display());
    }
    let dense = rows.first().map(|r| r.bytes_per_update);
    if rows.iter().any(|r| Some(r.bytes_per_update) != dense) {
        let points: Vec<plot::TradeoffPoint> = rows
            .iter()
            .map(|r| plot::TradeoffPoint { label: r.label.clone(), x: r.bytes_per_update, accuracy: r.last })
            .collect();
        plot::tradeoff(&out.join("compression_accuracy.png"), "compression vs accuracy", "bytes per update", &points)?;
        println!("wrote {}", out.join("compression_accuracy.png").display());
    }
    println!("wrote {}", out.join("comparison.png").display());
    Ok(())
}

fn slug(label: &str) -> String {
    label.chars().map(|c| if c.is_ascii_alphanumeric() || c == '.' || c == '-' { c } else { '_' }).collect()
}

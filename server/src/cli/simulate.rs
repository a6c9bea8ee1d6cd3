//! `webfl simulate`: a task's flags (every section of [`TaskConfig`], flattened) over an
//! optional task file, plus comparison and output settings.

use std::path::PathBuf;

use anyhow::Result;
use clap::{ArgMatches, Args};
use webfl_shared::pipeline::DpMode;

use crate::config::TaskConfig;
use crate::simulate;

/// Flags of `webfl simulate`; each one given overrides the `--config` file, which overrides
/// the defaults.
#[derive(Args)]
pub struct SimulateArgs {
    /// Task file (TOML), e.g. the one `webfl serve --config` serves; flags override it.
    #[arg(long)]
    pub config: Option<PathBuf>,
    #[command(flatten)]
    pub task: TaskConfig,
    /// Secure aggregation (SecAgg+) with the `[secure_aggregation]` defaults: the coordinator
    /// sees only each round's sum (any `--secagg-*` flag turns it on too).
    #[arg(long, group = "SecAggPolicy", help_heading = "Secure aggregation [secure_aggregation]")]
    pub secagg: bool,
    /// A ready-made comparison: privacy-utility (central DP at ε ∈ {0.5,1,2,4,8,∞}) or
    /// compression (dense, 8-bit, top-k 10%/1% with error feedback, top-k 1% + 8-bit,
    /// random-k 10%, QSGD s=16). Writes tables and a trade-off chart into --out.
    #[arg(long, help_heading = "Comparison and output")]
    pub preset: Option<Preset>,
    /// Compare configurations: KEY=V1,V2,... (repeatable; runs the cartesian product), e.g.
    /// `--compare partition=iid,shards:2,dirichlet:0.3 --compare strategy=fedavg,fedadam`.
    /// Keys are settings' field names or flags.
    #[arg(long, help_heading = "Comparison and output")]
    pub compare: Vec<String>,
    /// Folder for history.json/csv, charts and summaries.
    #[arg(long, default_value = "out", help_heading = "Comparison and output")]
    pub out: PathBuf,
}

#[derive(Clone, Copy, Debug, clap::ValueEnum)]
pub enum Preset {
    PrivacyUtility,
    Compression,
}

pub fn run(args: &SimulateArgs, matches: &ArgMatches) -> Result<()> {
    let mut task = TaskConfig::from_matches(matches, args.config.as_deref())?;
    let mut compare = Vec::new();
    match args.preset {
        Some(Preset::PrivacyUtility) => {
            // Central DP at a fixed number of rounds and clients per round; ∞ is no noise.
            task.privacy.mode = DpMode::Central;
            task.privacy.clip.get_or_insert(1.0);
            task.privacy.noise_multiplier = None;
            compare.push(
                "dp=off | target_epsilon=8 | target_epsilon=4 | target_epsilon=2 | target_epsilon=1 \
                 | target_epsilon=0.5"
                    .into(),
            );
        }
        Some(Preset::Compression) => {
            compare.push("compress=none,q8,topk:0.1,topk:0.01,topk:0.01+q8,randk:0.1,qsgd:16".into());
        }
        None => {}
    }
    compare.extend(args.compare.iter().cloned());
    simulate::run_all(&task, &compare, &args.out)
}

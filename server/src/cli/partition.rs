//! `webfl partition`: the per-client class histogram of a partition, exactly the split
//! `webfl simulate` trains on for the same seed.

use anyhow::{Context, Result};
use clap::Args;
use webfl_shared::data::partition::{Partition, histogram_table, partition};
use webfl_shared::rng;

use crate::datasets;

#[derive(Args)]
pub struct PartitionArgs {
    /// mnist | PATH.csv
    #[arg(long, default_value = "mnist")]
    pub dataset: String,
    /// Clients to split the training data among.
    #[arg(long, default_value_t = 10)]
    pub clients: usize,
    /// iid | shards:K | dirichlet:ALPHA | quantity:SIGMA
    #[arg(long, default_value = "iid")]
    pub partition: Partition,
    /// The run's seed (the partitioner draws from its `Partition` stream).
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
}

pub fn run(args: &PartitionArgs) -> Result<()> {
    let split = datasets::load(&args.dataset, &Default::default(), 0.2, args.seed)?;
    let parts = partition(
        &split.train.labels,
        split.train.classes,
        args.clients,
        &args.partition,
        rng::partition_seed(args.seed),
    )
    .context("partitioning")?;
    println!("{}", histogram_table(&split.train.labels, split.train.classes, &parts));
    Ok(())
}

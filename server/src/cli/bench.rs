//! `webfl bench`: the engines' throughput (see [`crate::bench`]).

use anyhow::Result;

pub fn run(args: &crate::bench::BenchArgs) -> Result<()> {
    crate::bench::run(args)
}

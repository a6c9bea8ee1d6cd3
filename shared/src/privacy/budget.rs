//! A task's privacy budget: what each committed round costs and when to stop.

use serde::{Deserialize, Serialize};

use super::accountant;

/// How a private task spends its privacy: each committed round is one step of a (subsampled)
/// Gaussian mechanism with this noise multiplier and sampling rate.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PrivacyBudget {
    /// `local` or `central`, for display.
    pub mode: String,
    pub noise_multiplier: f64,
    pub sampling_rate: f64,
    pub delta: f64,
    /// Stop taking rounds once the next one would exceed this ε.
    pub target_epsilon: Option<f64>,
}

impl PrivacyBudget {
    /// ε after `steps` steps (committed rounds, or one client's participations under local DP).
    pub fn epsilon(&self, steps: u64) -> Option<f64> {
        accountant::epsilon(self.noise_multiplier, self.sampling_rate, steps, self.delta, &accountant::DEFAULT_ORDERS)
            .ok()
            .map(|(eps, _)| eps)
    }

    /// Whether one more step fits the budget.
    pub fn allows(&self, steps_done: u64) -> bool {
        match (self.target_epsilon, self.epsilon(steps_done + 1)) {
            (Some(target), Some(next)) => next <= target,
            (Some(_), None) => false,
            (None, _) => true,
        }
    }

    /// What `/api/status` reports after `steps` committed rounds.
    pub fn status(&self, steps: u64) -> crate::protocol::PrivacyStatus {
        crate::protocol::PrivacyStatus {
            mode: self.mode.clone(),
            epsilon: self.epsilon(steps),
            delta: self.delta,
            target_epsilon: self.target_epsilon,
            noise_multiplier: self.noise_multiplier,
            sampling_rate: self.sampling_rate,
            budget_left: self.allows(steps),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_budget_stops_before_the_round_that_would_overspend_it() {
        // σ = 1.0, q = 0.1 costs ε ≈ 7.899 over 100 steps (Opacus, δ = 1e-5).
        let budget = PrivacyBudget {
            mode: "central".into(),
            noise_multiplier: 1.0,
            sampling_rate: 0.1,
            delta: 1e-5,
            target_epsilon: Some(7.9),
        };
        assert!((budget.epsilon(100).unwrap() - 7.899).abs() < 0.01);
        assert!(budget.allows(99));
        assert!(!budget.allows(100 + 5));
        assert!(PrivacyBudget { target_epsilon: None, ..budget }.allows(10_000));
    }
}

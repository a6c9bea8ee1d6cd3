//! Differential privacy: accounting of what the noise added to training buys in (ε, δ).

pub mod accountant;

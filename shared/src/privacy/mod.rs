//! Differential privacy: accounting of what the noise added to training buys in (ε, δ).

pub mod accountant;
pub mod budget;

pub use budget::PrivacyBudget;

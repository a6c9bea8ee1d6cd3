//! Differential privacy: accounting of what the noise added to training buys in (ε, δ).

pub mod accountant;
pub mod budget;
pub mod distributed;

pub use budget::PrivacyBudget;

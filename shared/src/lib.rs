//! webfl-shared: everything both the browser client and the server compute.
//!
//! No I/O and no platform code: this crate compiles for `wasm32-unknown-unknown` and native
//! alike, so simulation and production run the very same training and aggregation code.

pub mod backend;
pub mod codec;
pub mod coordinator;
pub mod data;
pub mod engine;
#[cfg(feature = "gpu")]
pub mod gpu;
pub mod model;
pub mod params;
pub mod participant;
pub mod pipeline;
pub mod privacy;
pub mod protocol;
pub mod rng;
pub mod secagg;
pub mod strategy;
pub mod train;
pub mod update;

pub use params::{Layout, Params, TensorSpec};
pub use update::Update;

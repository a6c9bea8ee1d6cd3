//! webfl-server: everything behind the `webfl` command line — simulation, dataset preparation,
//! charts, benchmarks, and round orchestration for the production server.

pub mod api;
pub mod bench;
pub mod datasets;
pub mod eval;
pub mod plot;
pub mod service;
pub mod simulate;
pub mod store;
pub mod task;

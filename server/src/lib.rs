//! webfl-server: everything behind the `webfl` command line — task configuration, simulation,
//! dataset preparation, charts, benchmarks, and the production server.

pub mod api;
pub mod bench;
pub mod cli;
pub mod config;
pub mod datasets;
pub mod eval;
pub mod loadtest;
pub mod plot;
pub mod serve;
pub mod service;
pub mod simulate;
pub mod store;

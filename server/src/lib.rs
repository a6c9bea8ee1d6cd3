//! webfl-server: everything behind the `webfl` command line — simulation, dataset preparation,
//! charts, benchmarks, and round orchestration for the production server.

pub mod bench;
pub mod datasets;
pub mod http;
pub mod openapi;
pub mod plot;
pub mod simulate;
pub mod store;
pub mod task;

//! Every message that crosses between a participant and a coordinator, and every record the
//! server shows its operators: the one place to version them. Client, server, `webfl simulate`
//! and the pages all use these types (the pages through TypeScript generated from the OpenAPI
//! document); database rows and internal state are separate.

pub mod operator;
pub mod v1;

pub use operator::{ClientRecord, ClientsPage, PrivacyStatus, RoundOutcome, RoundRecord, SecAggRecord, Status};
pub use v1::*;

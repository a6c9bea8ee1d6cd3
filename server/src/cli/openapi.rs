//! `webfl openapi`: the server's OpenAPI document.

use anyhow::{Context, Result};

/// Prints the OpenAPI document; `scripts/build-web` generates the pages' API types from it.
pub fn run() -> Result<()> {
    println!("{}", crate::api::document().to_pretty_json().context("serialising the OpenAPI document")?);
    Ok(())
}

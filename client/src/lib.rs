//! webfl-client: the browser side. Until the browser issue lands this only proves that the
//! shared engine links into a wasm-bindgen module; the worker, transport and storage come next.

use wasm_bindgen::prelude::*;
use webfl_shared::model::ModelSpec;

/// The crate version, so a page can check which client it loaded.
#[wasm_bindgen]
pub fn version() -> String {
    env!("CARGO_PKG_VERSION").to_string()
}

/// Number of parameters of a built-in model (`mlp`, `2nn`, `cnn`) for 28×28 inputs and 10
/// classes, or an error naming the problem.
#[wasm_bindgen(js_name = parameterCount)]
pub fn parameter_count(model: &str) -> Result<usize, JsError> {
    let spec = ModelSpec::builtin(model, &[1, 28, 28], 10)?;
    Ok(spec.layout()?.len())
}

#[cfg(test)]
mod tests {
    #[test]
    fn counts_builtin_parameters() {
        assert_eq!(super::parameter_count("2nn").ok(), Some(199_210));
    }
}

//! webfl-client: the browser side. Placeholder until the browser issue: it proves that the
//! shared engine links into a wasm-bindgen module.

//! CSV text as users give it (`data::csv`): the first byte picks the options (see
//! `webfl_fuzz::csv_options`), the rest is the text. Errors are fine; a panic or a dataset that
//! breaks `Dataset`'s invariants (or holds a non-finite feature) is a bug.
#![no_main]

use libfuzzer_sys::fuzz_target;
use webfl_shared::data::Dataset;
use webfl_shared::data::csv::{parse_csv, parse_csv_split};

fn check(ds: &Dataset) {
    assert_eq!(ds.sample_shape.len(), 1);
    assert_eq!(ds.features.len(), ds.labels.len() * ds.sample_len());
    assert_eq!(ds.class_names.len(), ds.classes);
    assert!(ds.labels.iter().all(|&l| (l as usize) < ds.classes));
    assert!(ds.features.iter().all(|v| v.is_finite()), "a non-finite feature: {:?}", ds.features);
}

fuzz_target!(init: webfl_fuzz::seeds::plant("csv", webfl_fuzz::seeds::csv()), |bytes: &[u8]| {
    let Some((&selector, text)) = bytes.split_first() else { return };
    let Ok(text) = std::str::from_utf8(text) else { return };
    let (opts, test_fraction) = webfl_fuzz::csv_options(selector);
    if let Ok(ds) = parse_csv(text, &opts) {
        assert!(!ds.is_empty());
        check(&ds);
    }
    if let Ok(split) = parse_csv_split(text, &opts, test_fraction, u64::from(selector)) {
        check(&split.train);
        check(&split.test);
    }
});

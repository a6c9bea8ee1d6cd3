//! WFDS dataset files (`data::mnist::decode`). Errors are fine; a panic, an out-of-memory or a
//! decoded split that does not encode back to the same bytes is a bug (the format has one
//! encoding per split).
#![no_main]

use libfuzzer_sys::fuzz_target;
use webfl_shared::data::mnist;

fuzz_target!(init: webfl_fuzz::seeds::plant("wfds", webfl_fuzz::seeds::wfds()), |bytes: &[u8]| {
    if let Ok(split) = mnist::decode(bytes) {
        for ds in [&split.train, &split.test] {
            assert_eq!(ds.features.len(), ds.labels.len() * ds.sample_len());
            assert!(ds.labels.iter().all(|&l| (l as usize) < ds.classes));
        }
        assert_eq!(mnist::encode(&split).as_deref(), Ok(bytes));
    }
});

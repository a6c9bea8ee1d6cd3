//! Safetensors files as clients upload them and as `webfl` reads models: `Params::from_safetensors`
//! for the fuzzing 2NN's layout, and `from_safetensors_any`, which takes its layout from the file.
//! Errors are fine; a panic, an out-of-memory or a parse that does not round-trip is a bug.
#![no_main]

use libfuzzer_sys::fuzz_target;
use webfl_shared::params::Params;

fuzz_target!(init: webfl_fuzz::seeds::plant("safetensors", webfl_fuzz::seeds::safetensors()), |bytes: &[u8]| {
    let layout = webfl_fuzz::layout();
    if let Ok(params) = Params::from_safetensors(layout.clone(), bytes) {
        assert_eq!(params.len(), layout.len());
        let again = params.to_safetensors().expect("parsed parameters serialise");
        let back = Params::from_safetensors(layout, &again).expect("serialised parameters parse");
        assert_eq!(back.as_slice().len(), params.as_slice().len());
        assert!(back.as_slice().iter().zip(params.as_slice()).all(|(a, b)| a.to_bits() == b.to_bits()));
    }
    if let Ok(params) = Params::from_safetensors_any(bytes) {
        let again = params.to_safetensors().expect("parsed parameters serialise");
        let back = Params::from_safetensors_any(&again).expect("serialised parameters parse");
        assert_eq!(back.layout(), params.layout());
    }
});

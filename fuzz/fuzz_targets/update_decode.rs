//! The server's update decoder on untrusted upload bodies: `pipeline::decode` under each codec a
//! task can announce, and the raw codec decoder at other lengths. Errors are fine; a panic, an
//! out-of-memory or a decoded update the spec rules out is a bug.
#![no_main]

use libfuzzer_sys::fuzz_target;
use webfl_shared::codec::{self, Compression};
use webfl_shared::pipeline;
use webfl_shared::rng;

fuzz_target!(init: webfl_fuzz::seeds::plant("update_decode", webfl_fuzz::seeds::update_decode()), |body: &[u8]| {
    let layout = webfl_fuzz::layout();
    let bytes = bytes::Bytes::copy_from_slice(body);
    for spec in webfl_fuzz::update_specs() {
        let Ok(update) = pipeline::decode(&bytes, layout.clone(), &spec) else { continue };
        assert_eq!(update.len(), layout.len());
        // An `Update` is finite by construction; check what it holds all the same.
        let dense = update.to_dense();
        assert!(dense.all_finite(), "decode let a non-finite value through");
        if let (Compression::None, Some(clip)) = (&spec.compression, spec.clip) {
            assert!(update.l2_norm() <= clip * (1.0 + 1e-5), "decode let an update over the clip bound through");
            // The dense format has one encoding per vector: encoding it again gives the body back.
            let again = codec::encode(dense.as_slice(), &spec.compression, None, &mut rng::derive(0, &[]));
            assert_eq!(again.as_deref(), Ok(body));
        }
    }
    for len in webfl_fuzz::CODEC_LENGTHS {
        if let Ok(values) = codec::decode(body, len) {
            assert_eq!(values.len(), len);
            assert!(values.iter().all(|v| v.is_finite()));
        }
    }
});

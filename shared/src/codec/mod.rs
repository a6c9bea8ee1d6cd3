//! Update compression: the codecs a client applies to its update `Δ` before upload, and their
//! compact binary encoding.
//!
//! | [`Compression`]  | string       | what is sent                                                      | bytes for n values        |
//! |------------------|--------------|-------------------------------------------------------------------|---------------------------|
//! | `None`           | `none`       | every value as f32                                                | 4n                        |
//! | `Q8`             | `q8`         | every value as an 8-bit code on its chunk's [min, max]            | ≈ 1.008n                  |
//! | `TopK`           | `topk:F`     | the k = max(1, round(F·n)) largest \|values\|, error feedback     | ≈ k·(4 + index gap bytes) |
//! | `RandK`          | `randk:F`    | k uniformly random values scaled by n/k, and the 64-bit seed      | 4k                        |
//! | `Qsgd`           | `qsgd:S`     | ‖v‖₂, and per value a sign and a stochastic level in 0..=S        | n·(1 + ⌈log₂(S+1)⌉)/8     |
//! | `TopKQ8`         | `topk:F+q8`  | top-k, the kept values 8-bit quantised, error feedback            | ≈ k·(1 + index gap bytes) |
//!
//! Properties:
//! - `none` is exact; `topk` is exact on the kept entries.
//! - `q8` rounds to the nearest of 256 levels on each chunk's `[min, max]` (chunks of
//!   1,024 values): deterministic, so biased, but bounded — every value is off by at most
//!   `(max − min)/510` (plus f32 rounding of the result).
//! - `randk` and `qsgd` are unbiased: `E[decode(encode(v))] = v` over the encoder's randomness
//!   (random-k: each index is kept with probability k/n and scaled by n/k; QSGD: Alistarh et al.
//!   2017, stochastic rounding of `|v_i|/‖v‖·s`, with one bucket, the whole vector).
//! - The top-k codecs use error feedback (Stich et al. 2018; Karimireddy et al. 2019): the client
//!   keeps an [`ErrorFeedback`] residual `e`, sends the top-k of `a = Δ + e` and keeps
//!   `e ← a − sent`, where `sent` is what the server decodes (for `topk:F+q8`, the dequantised
//!   values), so nothing is lost, only delayed.
//!
//! # Wire format, version 1
//!
//! Multi-byte numbers are little endian (`f32`, `f64`, `u64`); `varint` is an unsigned LEB128
//! varint (7 bits per byte, least significant first, at most 10 bytes, minimally encoded).
//!
//! | field      | size     | contents                                                                       |
//! |------------|----------|--------------------------------------------------------------------------------|
//! | version    | 1        | `1`                                                                            |
//! | tag        | 1        | `0` none, `1` q8, `2` topk, `3` randk, `4` qsgd, `5` topk+q8                   |
//! | n          | varint   | vector length; must equal the model size the decoder is given                 |
//! | fraction   | 8        | `f64` F in (0, 1] — topk, randk and topk+q8 only                               |
//! | levels     | varint   | S in 1..=65536 — qsgd only                                                     |
//! | body       | …        | per codec, below                                                               |
//!
//! Nothing may follow the body. Bodies:
//!
//! - **none**: `n × f32`, each finite.
//! - **q8**: a *Q8 block* of the n values.
//! - **topk**: `k` varint, which must be `max(1, round(F·n))` capped at n (0 when n = 0); `k`
//!   index varints, the first the index itself and each later one its gap (≥ 1) from the previous
//!   index, so indices are strictly increasing and `< n`; then `k × f32` values, finite, in index
//!   order.
//! - **randk**: `k` varint (as for topk); `seed` u64; `k × f32` values, finite, already scaled by
//!   n/k, for the indices in increasing order. The indices are not sent: both sides compute them
//!   from the seed: Floyd's algorithm (for j in n−k..n, draw t uniform in 0..=j; keep t, or j if t
//!   is kept already) with t drawn by Lemire's multiply-and-reject on the raw `next_u32` output of
//!   [`crate::rng::derive`]`(seed, [0x7261_6e64_6b00_0001])` (see `sparsify::random_k`; pinned by
//!   a test), integer-only and identical on wasm32 and native.
//! - **qsgd**: `‖v‖₂` f32, finite and ≥ 0; then ⌈n·b/8⌉ bytes holding one `b`-bit code per value,
//!   `b = 1 + ⌈log₂(S+1)⌉` (e.g. 6 for S = 16), packed least significant bit first into a bit
//!   stream whose bit `j` is bit `j mod 8` of byte `⌊j/8⌋`. Code = `level << 1 | sign`, level ≤ S,
//!   sign 1 for negative (never with level 0); the value is `sign · ‖v‖ · level/S`. Padding bits
//!   are 0. Bit-packing rather than varints: every code fits in b bits (6 for S = 16), where a
//!   varint spends at least 8.
//! - **topk+q8**: `k` varint and the indices as for topk; then a Q8 block of the k values.
//!
//! A **Q8 block** of m values: `chunk` varint ≥ 1 (the encoder writes 1,024), then for each of
//! the ⌈m/chunk⌉ chunks: `min` f32, `max` f32 (finite, min ≤ max), and one byte `c` per value of
//! the chunk (the last may be short). The encoder writes `c = ⌊(x − min)·255/(max − min) + ½⌋`
//! (0 when max = min); `c` decodes to `min + c·(max − min)/255`, computed in f64, rounded to f32
//! and clamped to [min, max].
//!
//! The decoder checks every declared count against the bytes left before allocating anything of
//! that size, and never panics on malformed input.

mod format;
mod quantize;
mod sparsify;
mod varint;

#[cfg(test)]
mod tests;

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::rng::Rng;
pub use format::{MAX_LEVELS, VERSION};
use format::{Reader, put_f32s};

/// Longest vector the codecs handle (indices are 32-bit).
/// (Checked as `u32::try_from`, which also reads right where `usize` is 32 bits.)
pub const MAX_LEN: usize = u32::MAX as usize;

/// What a client applies to its (already clipped/noised) update before upload. As a string (and
/// in serde): `none`, `q8`, `topk:F`, `randk:F`, `qsgd:S`, `topk:F+q8`, F in (0, 1], S in
/// 1..=65536.
#[derive(Clone, Debug, Default, PartialEq)]
pub enum Compression {
    /// Dense f32.
    #[default]
    None,
    /// 8-bit linear quantisation per chunk of 1,024 values.
    Q8,
    /// Top-k by magnitude with error feedback, k = max(1, round(fraction · n)).
    TopK { fraction: f64 },
    /// k uniformly random coordinates, scaled by n/k (unbiased).
    RandK { fraction: f64 },
    /// QSGD with `levels` levels (unbiased).
    Qsgd { levels: u32 },
    /// Top-k with error feedback, the kept values 8-bit quantised.
    TopKQ8 { fraction: f64 },
}

const SYNTAX: &str = "expected none, q8, topk:F, randk:F, qsgd:S or topk:F+q8";
const BAD_FRACTION: &str = "the fraction F must be a number in (0, 1]";
const BAD_LEVELS: &str = "the level count S must be an integer from 1 to 65536";

impl Compression {
    /// Whether [`encode`] uses (and updates) an [`ErrorFeedback`] memory: the top-k variants.
    pub fn uses_error_feedback(&self) -> bool {
        matches!(self, Compression::TopK { .. } | Compression::TopKQ8 { .. })
    }

    /// Checks the parameters (the enum can be built with any numbers).
    pub fn validate(&self) -> Result<(), CodecError> {
        match self.problem() {
            None => Ok(()),
            Some(reason) => Err(CodecError::InvalidCompression { spec: self.to_string(), reason }),
        }
    }

    fn problem(&self) -> Option<&'static str> {
        match *self {
            Compression::None | Compression::Q8 => None,
            Compression::TopK { fraction } | Compression::RandK { fraction } | Compression::TopKQ8 { fraction } => {
                (!(fraction > 0.0 && fraction <= 1.0)).then_some(BAD_FRACTION)
            }
            Compression::Qsgd { levels } => (!(1..=MAX_LEVELS).contains(&levels)).then_some(BAD_LEVELS),
        }
    }

    /// How many values a sparsifying codec keeps of `len`: `max(1, round(fraction · len))`, at
    /// most `len`. `None` for the dense codecs.
    pub fn kept(&self, len: usize) -> Option<usize> {
        match *self {
            Compression::TopK { fraction } | Compression::RandK { fraction } | Compression::TopKQ8 { fraction } => {
                Some(kept_for(fraction, len))
            }
            _ => None,
        }
    }
}

fn kept_for(fraction: f64, len: usize) -> usize {
    if len == 0 {
        return 0;
    }
    // `as usize` saturates; fraction ≤ 1 keeps the product ≤ len anyway.
    ((fraction * len as f64).round() as usize).clamp(1, len)
}

impl FromStr for Compression {
    type Err = CodecError;

    fn from_str(s: &str) -> Result<Self, CodecError> {
        let bad = |reason| CodecError::InvalidCompression { spec: s.to_string(), reason };
        let fraction = |f: &str| f.parse::<f64>().map_err(|_| bad(BAD_FRACTION));
        let how = match s {
            "none" => Compression::None,
            "q8" => Compression::Q8,
            _ => {
                if let Some(rest) = s.strip_prefix("topk:") {
                    match rest.strip_suffix("+q8") {
                        Some(f) => Compression::TopKQ8 { fraction: fraction(f)? },
                        None => Compression::TopK { fraction: fraction(rest)? },
                    }
                } else if let Some(f) = s.strip_prefix("randk:") {
                    Compression::RandK { fraction: fraction(f)? }
                } else if let Some(levels) = s.strip_prefix("qsgd:") {
                    Compression::Qsgd { levels: levels.parse().map_err(|_| bad(BAD_LEVELS))? }
                } else {
                    return Err(bad(SYNTAX));
                }
            }
        };
        match how.problem() {
            None => Ok(how),
            Some(reason) => Err(bad(reason)),
        }
    }
}

impl fmt::Display for Compression {
    /// The string [`FromStr`] reads; fractions print in Rust's shortest round-trip form, so
    /// `s.parse::<Compression>()?.to_string().parse()` gives back the same value.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Compression::None => f.write_str("none"),
            Compression::Q8 => f.write_str("q8"),
            Compression::TopK { fraction } => write!(f, "topk:{fraction}"),
            Compression::RandK { fraction } => write!(f, "randk:{fraction}"),
            Compression::Qsgd { levels } => write!(f, "qsgd:{levels}"),
            Compression::TopKQ8 { fraction } => write!(f, "topk:{fraction}+q8"),
        }
    }
}

impl Serialize for Compression {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Compression {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let s = String::deserialize(deserializer)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// Error-feedback memory a client keeps across rounds: the residual, i.e. what earlier rounds did
/// not send. Starts at zero ([`ErrorFeedback::new`]); persisted with [`to_bytes`](Self::to_bytes).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ErrorFeedback {
    residual: Vec<f32>,
}

impl ErrorFeedback {
    /// A zero residual for a model of `len` parameters.
    pub fn new(len: usize) -> Self {
        Self { residual: vec![0.0; len] }
    }

    pub fn from_vec(residual: Vec<f32>) -> Self {
        Self { residual }
    }

    pub fn as_slice(&self) -> &[f32] {
        &self.residual
    }

    pub fn into_vec(self) -> Vec<f32> {
        self.residual
    }

    pub fn len(&self) -> usize {
        self.residual.len()
    }

    pub fn is_empty(&self) -> bool {
        self.residual.is_empty()
    }

    /// Forgets the residual (sets it to zero), e.g. when a task's model changes.
    pub fn clear(&mut self) {
        self.residual.fill(0.0);
    }

    /// The residual as a `none`-coded vector of this wire format (version, tag 0, length, f32s).
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(12 + 4 * self.residual.len());
        format::write_header(&mut out, &Compression::None, self.residual.len());
        put_f32s(&mut out, self.residual.iter().copied());
        out
    }

    /// Reads what [`to_bytes`](Self::to_bytes) wrote, for a model of `len` parameters: rejects any
    /// other codec, another length and non-finite values.
    pub fn from_bytes(bytes: &[u8], len: usize) -> Result<Self, CodecError> {
        let found = peek_compression(bytes)?;
        if found != Compression::None {
            return Err(CodecError::WrongCodec { found: found.to_string(), expected: "none".to_string() });
        }
        Ok(Self { residual: decode(bytes, len)? })
    }
}

/// Why an update could not be encoded or decoded. Decoding errors name what was malformed.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum CodecError {
    #[error("invalid compression {spec:?}: {reason}")]
    InvalidCompression { spec: String, reason: &'static str },
    #[error("update value {index} is {value}; only finite values can be encoded")]
    NonFiniteInput { index: usize, value: f32 },
    #[error("the error-feedback memory has {memory} values but the update has {update}")]
    MemoryLength { memory: usize, update: usize },
    #[error("{what} overflows f32; the update is too large for this codec")]
    Overflow { what: &'static str },
    #[error("a vector of {0} values is too long (the codecs handle at most 2^32 − 1)")]
    TooLong(usize),
    #[error("unsupported update encoding version {0} (this build reads version {VERSION})")]
    UnsupportedVersion(u8),
    #[error("unknown codec tag {0}")]
    UnknownCodec(u8),
    #[error("expected a {expected}-coded vector, found {found}")]
    WrongCodec { found: String, expected: String },
    #[error("truncated update: {what} needs {needed} bytes at offset {offset}, but only {available} are left")]
    Truncated { what: &'static str, offset: usize, needed: u64, available: usize },
    #[error("malformed varint for {what} at offset {offset}: {reason}")]
    BadVarint { what: &'static str, offset: usize, reason: &'static str },
    #[error("the update declares {declared} values but the model has {expected}")]
    LengthMismatch { declared: u64, expected: usize },
    #[error("{0} trailing bytes after the update")]
    TrailingBytes(usize),
    #[error("the update keeps {found} values where its fraction of the vector means {expected}")]
    BadCount { found: u64, expected: usize },
    #[error("index {index} at position {position} is out of range for {len} values")]
    IndexOutOfRange { position: usize, index: u64, len: usize },
    #[error("indices are not strictly increasing at position {position} (a zero gap)")]
    IndicesNotIncreasing { position: usize },
    #[error("{what} {position} is {value}, not a finite number")]
    NonFiniteValue { what: &'static str, position: usize, value: f32 },
    #[error("Q8 chunk size 0")]
    BadChunkSize,
    #[error("Q8 chunk {chunk} has range [{min}, {max}]; min and max must be finite with min ≤ max")]
    BadRange { chunk: usize, min: f32, max: f32 },
    #[error("QSGD level {level} at position {position} exceeds the {levels} levels")]
    BadLevel { position: usize, level: u64, levels: u32 },
    #[error("non-canonical encoding: {0}")]
    NonCanonical(&'static str),
}

/// Compresses and encodes `update`.
///
/// `memory` is used and updated when the codec uses error feedback
/// ([`Compression::uses_error_feedback`]); it must then have the update's length. Other codecs
/// ignore it, and a top-k codec without memory simply sends the top-k of `update`. `rng` draws
/// random-k's seed and QSGD's stochastic rounding. On error nothing (memory included) changes.
pub fn encode(
    update: &[f32],
    how: &Compression,
    memory: Option<&mut ErrorFeedback>,
    rng: &mut Rng,
) -> Result<Vec<u8>, CodecError> {
    how.validate()?;
    let n = update.len();
    if u32::try_from(n).is_err() {
        return Err(CodecError::TooLong(n));
    }
    if let Some(index) = update.iter().position(|x| !x.is_finite()) {
        return Err(CodecError::NonFiniteInput { index, value: update[index] });
    }
    let mut out = Vec::new();
    format::write_header(&mut out, how, n);
    match *how {
        Compression::None => {
            out.reserve(4 * n);
            put_f32s(&mut out, update.iter().copied());
        }
        Compression::Q8 => quantize::q8_encode(update, &mut out),
        Compression::Qsgd { levels } => quantize::qsgd_encode(update, levels, rng, &mut out)?,
        Compression::RandK { fraction } => {
            let k = kept_for(fraction, n);
            let seed = sparsify::draw_seed(rng);
            varint::put(&mut out, k as u64);
            out.extend_from_slice(&seed.to_le_bytes());
            out.reserve(4 * k);
            let scale = n as f64 / k.max(1) as f64;
            for i in sparsify::random_k(seed, n, k) {
                let v = (update[i as usize] as f64 * scale) as f32;
                if !v.is_finite() {
                    return Err(CodecError::Overflow { what: "a random-k value scaled by n/k" });
                }
                out.extend_from_slice(&v.to_le_bytes());
            }
        }
        Compression::TopK { fraction } => encode_top_k(update, fraction, false, memory, &mut out)?,
        Compression::TopKQ8 { fraction } => encode_top_k(update, fraction, true, memory, &mut out)?,
    }
    Ok(out)
}

fn encode_top_k(
    update: &[f32],
    fraction: f64,
    q8: bool,
    memory: Option<&mut ErrorFeedback>,
    out: &mut Vec<u8>,
) -> Result<(), CodecError> {
    let n = update.len();
    // a = update + residual, in a new buffer that becomes the next residual.
    let corrected = match &memory {
        Some(m) if m.len() != n => return Err(CodecError::MemoryLength { memory: m.len(), update: n }),
        Some(m) => {
            let a: Vec<f32> = update.iter().zip(&m.residual).map(|(u, e)| u + e).collect();
            if !a.iter().all(|x| x.is_finite()) {
                return Err(CodecError::Overflow { what: "the update plus the error-feedback residual" });
            }
            Some(a)
        }
        None => None,
    };
    let a = corrected.as_deref().unwrap_or(update);
    let k = kept_for(fraction, n);
    let idx = sparsify::top_k(a, k);
    varint::put(out, k as u64);
    sparsify::write_indices(out, &idx);
    let values: Vec<f32> = idx.iter().map(|&i| a[i as usize]).collect();
    let sent = if q8 {
        let start = out.len();
        quantize::q8_encode(&values, out);
        // What the server will see, decoded by the decoder itself so the two cannot differ.
        quantize::q8_decode(&mut Reader::new(&out[start..]), k)?
    } else {
        out.reserve(4 * k);
        put_f32s(out, values.iter().copied());
        values
    };
    if let (Some(memory), Some(mut residual)) = (memory, corrected) {
        for (&i, &s) in idx.iter().zip(&sent) {
            residual[i as usize] -= s;
        }
        memory.residual = residual;
    }
    Ok(())
}

/// Decodes untrusted bytes into a dense vector of exactly `len` values (the model size; the
/// header's declared length must equal it). Never panics; rejects anything malformed with an
/// error that names the problem, and allocates nothing of a declared size before the input is
/// known to be long enough to back it (the output's `len` comes from the caller).
pub fn decode(bytes: &[u8], len: usize) -> Result<Vec<f32>, CodecError> {
    Ok(decode_values(bytes, len)?.into_dense(len))
}

/// What an update body holds, in the form it was sent: the sparsifying codecs' kept coordinates
/// stay sparse, so a server can add them without expanding them to the model's size.
#[derive(Clone, Debug, PartialEq)]
pub enum Decoded<'a> {
    /// All values as they are in the body (`none`): little-endian f32s, all checked finite and
    /// not copied.
    Raw(&'a [u8]),
    /// All values (`q8`, `qsgd`).
    Dense(Vec<f32>),
    /// The kept coordinates of `topk`, `randk` and `topk+q8`: indices strictly increasing and
    /// below the length, one value each; every other coordinate is zero.
    Sparse { indices: Vec<u32>, values: Vec<f32> },
}

impl Decoded<'_> {
    /// The dense vector of `len` values.
    pub fn into_dense(self, len: usize) -> Vec<f32> {
        match self {
            Decoded::Raw(bytes) => {
                let mut out = Vec::with_capacity(len);
                crate::params::extend_f32s_from_le_bytes(&mut out, bytes);
                out
            }
            Decoded::Dense(values) => values,
            Decoded::Sparse { indices, values } => {
                let mut out = vec![0.0; len];
                for (&i, &v) in indices.iter().zip(&values) {
                    out[i as usize] = v;
                }
                out
            }
        }
    }
}

/// [`decode`] without expanding sparse codecs. Every decoded value is finite: the decoder
/// checks each f32 it reads, and Q8 and QSGD values lie within finite ranges by construction.
pub fn decode_values(bytes: &[u8], len: usize) -> Result<Decoded<'_>, CodecError> {
    let mut r = Reader::new(bytes);
    let header = format::read_header(&mut r)?;
    if header.len != len as u64 {
        return Err(CodecError::LengthMismatch { declared: header.len, expected: len });
    }
    if u32::try_from(len).is_err() {
        return Err(CodecError::TooLong(len));
    }
    let out = match header.compression {
        Compression::None => Decoded::Raw(read_raw_f32s(&mut r, len, "value")?),
        Compression::Q8 => Decoded::Dense(quantize::q8_decode(&mut r, len)?),
        Compression::Qsgd { levels } => Decoded::Dense(quantize::qsgd_decode(&mut r, len, levels)?),
        Compression::TopK { fraction } | Compression::TopKQ8 { fraction } => {
            let k = read_kept(&mut r, fraction, len)?;
            let indices = sparsify::read_indices(&mut r, k, len)?;
            let values = match header.compression {
                Compression::TopK { .. } => read_f32s(&mut r, k, "top-k value")?,
                _ => quantize::q8_decode(&mut r, k)?,
            };
            Decoded::Sparse { indices, values }
        }
        Compression::RandK { fraction } => {
            let k = read_kept(&mut r, fraction, len)?;
            let seed = r.u64("random-k seed")?;
            let values = read_f32s(&mut r, k, "random-k value")?;
            Decoded::Sparse { indices: sparsify::random_k(seed, len, k), values }
        }
    };
    r.finish()?;
    Ok(out)
}

/// Which codec (with its parameters) encoded these bytes, from the header alone; for servers that
/// accept only the task's codec. Does not check the body: [`decode`] does.
pub fn peek_compression(bytes: &[u8]) -> Result<Compression, CodecError> {
    Ok(format::read_header(&mut Reader::new(bytes))?.compression)
}

fn read_kept(r: &mut Reader<'_>, fraction: f64, len: usize) -> Result<usize, CodecError> {
    let found = r.varint("kept count")?;
    let expected = kept_for(fraction, len);
    if found != expected as u64 {
        return Err(CodecError::BadCount { found, expected });
    }
    Ok(expected)
}

/// `count` little-endian f32s left where they are, after one read-only pass that checks them.
fn read_raw_f32s<'a>(r: &mut Reader<'a>, count: usize, what: &'static str) -> Result<&'a [u8], CodecError> {
    let bytes = r.take_u64((count as u64).saturating_mul(4), what)?;
    if !crate::params::le_f32s_all_finite(bytes) {
        let values = bytes.chunks_exact(4).map(|c| f32::from_le_bytes(c.try_into().expect("chunks of 4")));
        if let Some((position, value)) = values.enumerate().find(|(_, v)| !v.is_finite()) {
            return Err(CodecError::NonFiniteValue { what, position, value });
        }
    }
    Ok(bytes)
}

fn read_f32s(r: &mut Reader<'_>, count: usize, what: &'static str) -> Result<Vec<f32>, CodecError> {
    let bytes = r.take_u64((count as u64).saturating_mul(4), what)?;
    let mut out = Vec::with_capacity(count);
    // One pass converts and validates; only a refused body is searched for the value to name.
    if !crate::params::extend_f32s_from_le_bytes(&mut out, bytes) {
        if let Some((position, &value)) = out.iter().enumerate().find(|(_, v)| !v.is_finite()) {
            return Err(CodecError::NonFiniteValue { what, position, value });
        }
    }
    Ok(out)
}

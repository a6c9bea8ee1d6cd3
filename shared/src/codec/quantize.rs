//! Quantisation: Q8 (8-bit linear per chunk) and QSGD (stochastic, bit-packed).

use rand::RngCore;

use super::format::{Reader, put_f32s};
use super::{CodecError, varint};
use crate::rng::Rng;

/// Values per Q8 chunk (each chunk has its own min/max, 8 bytes, i.e. 0.8% overhead). Chunks keep
/// one tensor's outliers from flattening another tensor's resolution without the codec needing
/// the layout. The decoder accepts any chunk size ≥ 1 from the header.
pub(crate) const Q8_CHUNK: usize = 1024;

/// Appends a Q8 block: `chunk` varint, then per chunk `min` f32, `max` f32 and one code per value,
/// `code = round((x − min) / (max − min) · 255)` (rounding half up; all codes 0 when max = min).
/// Values must be finite.
pub(crate) fn q8_encode(values: &[f32], out: &mut Vec<u8>) {
    varint::put(out, Q8_CHUNK as u64);
    out.reserve(values.len() + values.len().div_ceil(Q8_CHUNK) * 8);
    for chunk in values.chunks(Q8_CHUNK) {
        let (lo, hi) = chunk.iter().fold((f32::INFINITY, f32::NEG_INFINITY), |(lo, hi), &x| (lo.min(x), hi.max(x)));
        put_f32s(out, [lo, hi]);
        // f64: max − min of finite f32s can exceed f32::MAX.
        let range = hi as f64 - lo as f64;
        let scale = if range > 0.0 { 255.0 / range } else { 0.0 };
        let lo = lo as f64;
        // (x − min)·scale is in [0, 255] up to rounding; `as u8` saturates, `+ 0.5` rounds.
        out.extend(chunk.iter().map(|&x| ((x as f64 - lo) * scale + 0.5) as u8));
    }
}

/// Reads a Q8 block of `n` values. Checks the block's exact size before allocating, and that
/// every chunk's min and max are finite with min ≤ max. Decoded values lie in [min, max].
pub(crate) fn q8_decode(r: &mut Reader<'_>, n: usize) -> Result<Vec<f32>, CodecError> {
    let chunk = r.varint("Q8 chunk size")?;
    if chunk == 0 {
        return Err(CodecError::BadChunkSize);
    }
    let chunks = (n as u64).div_ceil(chunk);
    r.need(chunks.saturating_mul(8).saturating_add(n as u64), "Q8 ranges and codes")?;
    // Both are now bounded by the input length.
    let chunk = chunk.min(n as u64) as usize;
    let mut out = Vec::with_capacity(n);
    let mut table = [0f32; 256];
    for c in 0..chunks as usize {
        let lo = r.f32("Q8 chunk min")?;
        let hi = r.f32("Q8 chunk max")?;
        if !(lo.is_finite() && hi.is_finite() && lo <= hi) {
            return Err(CodecError::BadRange { chunk: c, min: lo, max: hi });
        }
        let step = (hi as f64 - lo as f64) / 255.0;
        for (code, t) in table.iter_mut().enumerate() {
            *t = ((lo as f64 + code as f64 * step) as f32).clamp(lo, hi);
        }
        let m = chunk.min(n - c * chunk);
        out.extend(r.take(m, "Q8 codes")?.iter().map(|&code| table[code as usize]));
    }
    Ok(out)
}

/// Bits per packed QSGD code: one sign bit plus the minimal width for levels `0..=s`.
pub(crate) fn qsgd_code_bits(levels: u32) -> u32 {
    1 + (32 - levels.leading_zeros())
}

/// Appends a QSGD body (Alistarh et al. 2017, one bucket = the whole vector): `‖v‖₂` as f32, then
/// per coordinate the code `level << 1 | sign`, packed LSB-first at [`qsgd_code_bits`] bits each,
/// zero-padded to a byte. `level` is `|v_i|/‖v‖·s` rounded stochastically (up with probability
/// equal to the fractional part, one `next_u32` per coordinate that has one), so the decoded
/// `sign · ‖v‖ · level/s` is unbiased. Values must be finite.
pub(crate) fn qsgd_encode(v: &[f32], levels: u32, rng: &mut Rng, out: &mut Vec<u8>) -> Result<(), CodecError> {
    let norm = v.iter().map(|&x| x as f64 * x as f64).sum::<f64>().sqrt() as f32;
    if !norm.is_finite() {
        return Err(CodecError::Overflow { what: "the QSGD norm" });
    }
    out.extend_from_slice(&norm.to_le_bytes());
    let bits = qsgd_code_bits(levels);
    out.reserve((v.len() as u64 * bits as u64).div_ceil(8) as usize);
    let s = levels as f64;
    // The decoder sees the f32 norm, so levels are relative to it (clamped at s for the one case
    // where rounding made the f32 norm smaller than |v_i|).
    let scale = if norm > 0.0 { s / norm as f64 } else { 0.0 };
    let mut acc = 0u64;
    let mut filled = 0u32;
    for &x in v {
        let r = (x.abs() as f64 * scale).min(s);
        let mut level = r as u32;
        let frac = r - level as f64;
        if frac > 0.0 && (rng.next_u32() as f64) < frac * 4_294_967_296.0 {
            level += 1;
        }
        let sign = (level > 0 && x < 0.0) as u64;
        acc |= ((level as u64) << 1 | sign) << filled;
        filled += bits;
        if filled >= 32 {
            out.extend_from_slice(&(acc as u32).to_le_bytes());
            acc >>= 32;
            filled -= 32;
        }
    }
    out.extend_from_slice(&acc.to_le_bytes()[..filled.div_ceil(8) as usize]);
    Ok(())
}

/// Reads a QSGD body of `n` values with `levels` levels. Rejects a non-finite or negative norm,
/// levels above `s`, a sign bit on level 0 and nonzero padding bits.
pub(crate) fn qsgd_decode(r: &mut Reader<'_>, n: usize, levels: u32) -> Result<Vec<f32>, CodecError> {
    let norm = r.f32("QSGD norm")?;
    if !(norm.is_finite() && norm >= 0.0) {
        return Err(CodecError::NonFiniteValue { what: "QSGD norm", position: 0, value: norm });
    }
    let bits = qsgd_code_bits(levels);
    let packed = r.take_u64((n as u64).saturating_mul(bits as u64).div_ceil(8), "QSGD codes")?;
    let step = norm as f64 / levels as f64;
    let mask = (1u64 << bits) - 1;
    let mut out = Vec::with_capacity(n);
    let mut bytes = packed.iter();
    let mut acc = 0u64;
    let mut filled = 0u32;
    for position in 0..n {
        while filled < bits {
            // The length check above guarantees n·bits bits are there.
            acc |= (*bytes.next().unwrap_or(&0) as u64) << filled;
            filled += 8;
        }
        let code = acc & mask;
        acc >>= bits;
        filled -= bits;
        let (level, negative) = (code >> 1, code & 1 == 1);
        if level > levels as u64 {
            return Err(CodecError::BadLevel { position, level, levels });
        }
        if negative && level == 0 {
            return Err(CodecError::NonCanonical("a QSGD zero with its sign bit set"));
        }
        let magnitude = (step * level as f64) as f32;
        out.push(if negative { -magnitude } else { magnitude });
    }
    if acc != 0 {
        return Err(CodecError::NonCanonical("nonzero padding bits after the last QSGD code"));
    }
    Ok(out)
}

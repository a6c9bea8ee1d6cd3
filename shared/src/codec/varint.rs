//! Unsigned LEB128 varints: seven bits per byte, least significant group first, the high bit of
//! each byte set while more bytes follow. `0` is one byte `0x00`, `300` is `0xAC 0x02`.
//!
//! Decoding is strict so that every value has exactly one encoding: at most ten bytes, the tenth
//! may only carry the 64th bit, and a multi-byte encoding may not end in a zero group.

/// Why a varint could not be read.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum VarintError {
    /// The input ended while the continuation bit was still set.
    Truncated,
    /// The value does not fit in 64 bits.
    Overflow,
    /// A longer encoding than needed (a final zero group), e.g. `0x80 0x00` for 0.
    Overlong,
}

impl VarintError {
    pub(crate) fn reason(self) -> &'static str {
        match self {
            VarintError::Truncated => "the input ends inside it",
            VarintError::Overflow => "it does not fit in 64 bits",
            VarintError::Overlong => "it is not minimally encoded",
        }
    }
}

/// Appends `v` to `out`.
pub(crate) fn put(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8 & 0x7f) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

/// Number of bytes [`put`] writes for `v` (1 to 10).
#[cfg(test)]
pub(crate) fn encoded_len(v: u64) -> usize {
    let bits = 64 - (v | 1).leading_zeros() as usize;
    bits.div_ceil(7)
}

/// Reads one varint from the start of `bytes`; returns the value and the bytes it used.
pub(crate) fn get(bytes: &[u8]) -> Result<(u64, usize), VarintError> {
    let mut value = 0u64;
    for (i, &b) in bytes.iter().enumerate().take(10) {
        let group = (b & 0x7f) as u64;
        if i == 9 && group > 1 {
            return Err(VarintError::Overflow);
        }
        value |= group << (7 * i);
        if b & 0x80 == 0 {
            if i > 0 && group == 0 {
                return Err(VarintError::Overlong);
            }
            return Ok((value, i + 1));
        }
    }
    if bytes.len() >= 10 { Err(VarintError::Overflow) } else { Err(VarintError::Truncated) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_encodings() {
        for (v, bytes) in [
            (0u64, vec![0x00]),
            (1, vec![0x01]),
            (127, vec![0x7f]),
            (128, vec![0x80, 0x01]),
            (300, vec![0xac, 0x02]),
            (u64::MAX, vec![0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01]),
        ] {
            let mut out = Vec::new();
            put(&mut out, v);
            assert_eq!(out, bytes, "{v}");
            assert_eq!(encoded_len(v), bytes.len(), "{v}");
            assert_eq!(get(&bytes), Ok((v, bytes.len())), "{v}");
        }
    }

    #[test]
    fn round_trips_every_width() {
        for shift in 0..64 {
            for v in [1u64 << shift, (1u64 << shift) - 1, (1u64 << shift) + 1] {
                let mut out = Vec::new();
                put(&mut out, v);
                out.push(0xaa); // whatever follows is not consumed
                assert_eq!(get(&out), Ok((v, encoded_len(v))));
            }
        }
    }

    #[test]
    fn rejects_malformed() {
        assert_eq!(get(&[]), Err(VarintError::Truncated));
        assert_eq!(get(&[0x80]), Err(VarintError::Truncated));
        assert_eq!(get(&[0xff; 9]), Err(VarintError::Truncated));
        assert_eq!(get(&[0x80, 0x00]), Err(VarintError::Overlong));
        assert_eq!(get(&[0xff, 0x80, 0x00]), Err(VarintError::Overlong));
        // The tenth byte may carry only bit 63.
        let mut too_big = vec![0xff; 9];
        too_big.push(0x02);
        assert_eq!(get(&too_big), Err(VarintError::Overflow));
        assert_eq!(get(&[0xff; 11]), Err(VarintError::Overflow));
    }
}

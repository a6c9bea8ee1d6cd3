//! The byte-level pieces of the wire format (described in the [module docs](super)): codec tags,
//! the header, and a bounds-checked reader whose every failure names what it was reading.

use super::varint::{self, VarintError};
use super::{CodecError, Compression};

/// The format version this build writes and reads (byte 0).
pub const VERSION: u8 = 1;

/// Codec tags (byte 1).
pub const TAG_NONE: u8 = 0;
pub const TAG_Q8: u8 = 1;
pub const TAG_TOPK: u8 = 2;
pub const TAG_RANDK: u8 = 3;
pub const TAG_QSGD: u8 = 4;
pub const TAG_TOPK_Q8: u8 = 5;

/// Largest QSGD level count `s`; a level then needs at most 17 bits.
pub const MAX_LEVELS: u32 = 1 << 16;

/// What the header says: the codec with its parameters and the declared vector length.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct Header {
    pub compression: Compression,
    pub len: u64,
}

/// Writes version, tag, length and the codec's parameters.
pub(crate) fn write_header(out: &mut Vec<u8>, how: &Compression, len: usize) {
    out.push(VERSION);
    out.push(tag(how));
    varint::put(out, len as u64);
    match *how {
        Compression::None | Compression::Q8 => {}
        Compression::TopK { fraction } | Compression::RandK { fraction } | Compression::TopKQ8 { fraction } => {
            out.extend_from_slice(&fraction.to_le_bytes())
        }
        Compression::Qsgd { levels } => varint::put(out, levels as u64),
    }
}

pub(crate) fn tag(how: &Compression) -> u8 {
    match how {
        Compression::None => TAG_NONE,
        Compression::Q8 => TAG_Q8,
        Compression::TopK { .. } => TAG_TOPK,
        Compression::RandK { .. } => TAG_RANDK,
        Compression::Qsgd { .. } => TAG_QSGD,
        Compression::TopKQ8 { .. } => TAG_TOPK_Q8,
    }
}

/// Reads and validates the header (the codec's parameters must be ones [`encode`](super::encode)
/// accepts).
pub(crate) fn read_header(r: &mut Reader<'_>) -> Result<Header, CodecError> {
    let version = r.u8("version byte")?;
    if version != VERSION {
        return Err(CodecError::UnsupportedVersion(version));
    }
    let tag = r.u8("codec tag")?;
    if tag > TAG_TOPK_Q8 {
        return Err(CodecError::UnknownCodec(tag));
    }
    let len = r.varint("vector length")?;
    let compression = match tag {
        TAG_NONE => Compression::None,
        TAG_Q8 => Compression::Q8,
        TAG_TOPK | TAG_RANDK | TAG_TOPK_Q8 => {
            let fraction = r.f64("fraction")?;
            match tag {
                TAG_TOPK => Compression::TopK { fraction },
                TAG_RANDK => Compression::RandK { fraction },
                _ => Compression::TopKQ8 { fraction },
            }
        }
        _ => {
            let levels = r.varint("QSGD level count")?;
            // An out-of-range count is reported through validate() below, saturated to u32.
            Compression::Qsgd { levels: u32::try_from(levels).unwrap_or(u32::MAX) }
        }
    };
    compression.validate()?;
    Ok(Header { compression, len })
}

/// A bounds-checked cursor over untrusted bytes.
pub(crate) struct Reader<'a> {
    bytes: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    pub fn new(bytes: &'a [u8]) -> Self {
        Self { bytes, pos: 0 }
    }

    pub fn remaining(&self) -> usize {
        self.bytes.len() - self.pos
    }

    /// Fails with [`CodecError::Truncated`] unless at least `needed` bytes are left. Called with
    /// the size a declared count implies, before anything of that size is allocated.
    pub fn need(&self, needed: u64, what: &'static str) -> Result<(), CodecError> {
        let available = self.remaining();
        if needed > available as u64 {
            return Err(CodecError::Truncated { what, offset: self.pos, needed, available });
        }
        Ok(())
    }

    pub fn take(&mut self, len: usize, what: &'static str) -> Result<&'a [u8], CodecError> {
        self.take_u64(len as u64, what)
    }

    pub fn take_u64(&mut self, len: u64, what: &'static str) -> Result<&'a [u8], CodecError> {
        self.need(len, what)?;
        // `need` bounds len by the remaining input, so it fits usize.
        let slice = &self.bytes[self.pos..self.pos + len as usize];
        self.pos += len as usize;
        Ok(slice)
    }

    fn array<const N: usize>(&mut self, what: &'static str) -> Result<[u8; N], CodecError> {
        let mut a = [0u8; N];
        a.copy_from_slice(self.take(N, what)?);
        Ok(a)
    }

    pub fn u8(&mut self, what: &'static str) -> Result<u8, CodecError> {
        Ok(self.array::<1>(what)?[0])
    }

    pub fn u64(&mut self, what: &'static str) -> Result<u64, CodecError> {
        Ok(u64::from_le_bytes(self.array(what)?))
    }

    pub fn f32(&mut self, what: &'static str) -> Result<f32, CodecError> {
        Ok(f32::from_le_bytes(self.array(what)?))
    }

    pub fn f64(&mut self, what: &'static str) -> Result<f64, CodecError> {
        Ok(f64::from_le_bytes(self.array(what)?))
    }

    pub fn varint(&mut self, what: &'static str) -> Result<u64, CodecError> {
        match varint::get(&self.bytes[self.pos..]) {
            Ok((v, used)) => {
                self.pos += used;
                Ok(v)
            }
            Err(VarintError::Truncated) => Err(CodecError::Truncated {
                what,
                offset: self.pos,
                needed: self.remaining() as u64 + 1,
                available: self.remaining(),
            }),
            Err(e) => Err(CodecError::BadVarint { what, offset: self.pos, reason: e.reason() }),
        }
    }

    /// Fails with [`CodecError::TrailingBytes`] unless the input is used up.
    pub fn finish(&self) -> Result<(), CodecError> {
        match self.remaining() {
            0 => Ok(()),
            n => Err(CodecError::TrailingBytes(n)),
        }
    }
}

pub(crate) fn put_f32s(out: &mut Vec<u8>, values: impl IntoIterator<Item = f32>) {
    for v in values {
        out.extend_from_slice(&v.to_le_bytes());
    }
}

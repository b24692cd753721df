//! Protocol-buffer wire format as gogoproto's generated code writes and reads it:
//! fields in ascending number order, proto3 defaults omitted, non-nullable sub-messages
//! always written, unknown fields skipped on read.

/// Wire types.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WireType {
    Varint = 0,
    Fixed64 = 1,
    Len = 2,
    StartGroup = 3,
    EndGroup = 4,
    Fixed32 = 5,
}

/// The default cap on one decoded message, well above the 20 MB relay body limit that
/// relayminers use by default.
pub const DEFAULT_MAX_MESSAGE_LEN: usize = 64 << 20;
/// How deeply unknown groups may nest before the input is refused.
const MAX_GROUP_DEPTH: usize = 32;

/// Why bytes are not a valid message.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ProtoError {
    #[error("proto: message of {len} bytes exceeds the limit of {limit}")]
    TooLarge { len: usize, limit: usize },
    #[error("proto: unexpected end of input")]
    UnexpectedEof,
    #[error("proto: integer overflow")]
    IntOverflow,
    #[error("proto: illegal tag 0")]
    ZeroTag,
    #[error("proto: illegal wire type {0}")]
    BadWireType(u8),
    #[error("proto: wrong wire type {got:?} for field {field} of {message}")]
    WrongWireType {
        message: &'static str,
        field: u32,
        got: WireType,
    },
    #[error("proto: field {field} of {message} is not valid UTF-8")]
    InvalidUtf8 { message: &'static str, field: u32 },
    #[error("proto: unexpected end of group")]
    UnexpectedEndOfGroup,
    #[error("proto: groups nested too deeply")]
    TooDeep,
    #[error("proto: invalid enum value {0}")]
    BadEnum(i64),
}

/// Size of `x` as a varint.
pub fn varint_len(x: u64) -> usize {
    (64 - (x | 1).leading_zeros() as usize).div_ceil(7)
}

pub fn put_varint(out: &mut Vec<u8>, mut x: u64) {
    while x >= 0x80 {
        out.push((x as u8) | 0x80);
        x >>= 7;
    }
    out.push(x as u8);
}

pub fn key_len(field: u32) -> usize {
    varint_len((field as u64) << 3)
}

pub fn put_key(out: &mut Vec<u8>, field: u32, wt: WireType) {
    put_varint(out, ((field as u64) << 3) | wt as u64);
}

/// A message that can be written and read.
pub trait Message: Default {
    /// Name for error messages.
    const NAME: &'static str;

    /// Encoded size in bytes.
    fn encoded_len(&self) -> usize;

    /// Appends the encoding.
    fn encode_to(&self, out: &mut Vec<u8>);

    /// Reads one field whose key was just read.
    fn merge_field(
        &mut self,
        field: u32,
        wt: WireType,
        r: &mut Reader<'_>,
    ) -> Result<(), ProtoError>;

    fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.encoded_len());
        self.encode_to(&mut out);
        out
    }

    /// Decodes, refusing inputs over [`DEFAULT_MAX_MESSAGE_LEN`].
    fn decode(bytes: &[u8]) -> Result<Self, ProtoError> {
        Self::decode_limited(bytes, DEFAULT_MAX_MESSAGE_LEN)
    }

    /// Decodes, refusing inputs over `limit` bytes.
    fn decode_limited(bytes: &[u8], limit: usize) -> Result<Self, ProtoError> {
        if bytes.len() > limit {
            return Err(ProtoError::TooLarge {
                len: bytes.len(),
                limit,
            });
        }
        let mut m = Self::default();
        m.merge(&mut Reader { buf: bytes })?;
        Ok(m)
    }

    /// Merges every field of `r` into `self` (later values win; sub-messages merge).
    fn merge(&mut self, r: &mut Reader<'_>) -> Result<(), ProtoError> {
        while !r.buf.is_empty() {
            let (field, wt) = r.read_key()?;
            self.merge_field(field, wt, r)?;
        }
        Ok(())
    }
}

/// Reads fields from a byte slice.
#[derive(Debug)]
pub struct Reader<'a> {
    buf: &'a [u8],
}

impl<'a> Reader<'a> {
    pub fn varint(&mut self) -> Result<u64, ProtoError> {
        let mut x = 0u64;
        for i in 0..10 {
            let (&b, rest) = self.buf.split_first().ok_or(ProtoError::UnexpectedEof)?;
            self.buf = rest;
            if i == 9 && b > 1 {
                return Err(ProtoError::IntOverflow);
            }
            x |= ((b & 0x7f) as u64) << (7 * i);
            if b < 0x80 {
                return Ok(x);
            }
        }
        Err(ProtoError::IntOverflow)
    }

    /// Bytes left to read.
    pub fn remaining(&self) -> usize {
        self.buf.len()
    }

    /// A field key: its number and wire type.
    pub fn read_key(&mut self) -> Result<(u32, WireType), ProtoError> {
        let k = self.varint()?;
        let field = k >> 3;
        if field == 0 {
            return Err(ProtoError::ZeroTag);
        }
        let field = u32::try_from(field).map_err(|_| ProtoError::IntOverflow)?;
        let wt = match k & 7 {
            0 => WireType::Varint,
            1 => WireType::Fixed64,
            2 => WireType::Len,
            3 => WireType::StartGroup,
            4 => WireType::EndGroup,
            5 => WireType::Fixed32,
            other => return Err(ProtoError::BadWireType(other as u8)),
        };
        Ok((field, wt))
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8], ProtoError> {
        if n > self.buf.len() {
            return Err(ProtoError::UnexpectedEof);
        }
        let (head, rest) = self.buf.split_at(n);
        self.buf = rest;
        Ok(head)
    }

    /// A length-delimited field's bytes.
    pub fn bytes(&mut self) -> Result<&'a [u8], ProtoError> {
        let n = self.varint()?;
        let n = usize::try_from(n).map_err(|_| ProtoError::UnexpectedEof)?;
        self.take(n)
    }

    /// Skips a field of an unknown number, as gogo's `skip` does (groups included).
    pub fn skip(&mut self, wt: WireType) -> Result<(), ProtoError> {
        let mut depth = 0usize;
        let mut wt = wt;
        loop {
            match wt {
                WireType::Varint => {
                    self.varint()?;
                }
                WireType::Fixed64 => {
                    self.take(8)?;
                }
                WireType::Fixed32 => {
                    self.take(4)?;
                }
                WireType::Len => {
                    self.bytes()?;
                }
                WireType::StartGroup => {
                    depth += 1;
                    if depth > MAX_GROUP_DEPTH {
                        return Err(ProtoError::TooDeep);
                    }
                }
                WireType::EndGroup => {
                    if depth == 0 {
                        return Err(ProtoError::UnexpectedEndOfGroup);
                    }
                    depth -= 1;
                }
            }
            if depth == 0 {
                return Ok(());
            }
            wt = self.read_key()?.1;
        }
    }

    /// A sub-reader over a length-delimited field.
    pub fn sub(&mut self) -> Result<Reader<'a>, ProtoError> {
        Ok(Reader { buf: self.bytes()? })
    }
}

/// Checks the wire type of a known field.
pub fn expect(
    message: &'static str,
    field: u32,
    got: WireType,
    want: WireType,
) -> Result<(), ProtoError> {
    if got == want {
        Ok(())
    } else {
        Err(ProtoError::WrongWireType {
            message,
            field,
            got,
        })
    }
}

pub fn read_string(
    message: &'static str,
    field: u32,
    r: &mut Reader<'_>,
) -> Result<String, ProtoError> {
    let b = r.bytes()?;
    String::from_utf8(b.to_vec()).map_err(|_| ProtoError::InvalidUtf8 { message, field })
}

// Field writers and their sizes. Each writer omits the proto3 default, as gogo does.

pub fn bytes_len(field: u32, b: &[u8]) -> usize {
    if b.is_empty() {
        0
    } else {
        key_len(field) + varint_len(b.len() as u64) + b.len()
    }
}

pub fn put_bytes(out: &mut Vec<u8>, field: u32, b: &[u8]) {
    if !b.is_empty() {
        put_key(out, field, WireType::Len);
        put_varint(out, b.len() as u64);
        out.extend_from_slice(b);
    }
}

/// A repeated string element or map key: written even when empty.
pub fn always_bytes_len(field: u32, b: &[u8]) -> usize {
    key_len(field) + varint_len(b.len() as u64) + b.len()
}

pub fn put_always_bytes(out: &mut Vec<u8>, field: u32, b: &[u8]) {
    put_key(out, field, WireType::Len);
    put_varint(out, b.len() as u64);
    out.extend_from_slice(b);
}

pub fn varint_field_len(field: u32, x: u64) -> usize {
    if x == 0 {
        0
    } else {
        key_len(field) + varint_len(x)
    }
}

pub fn put_varint_field(out: &mut Vec<u8>, field: u32, x: u64) {
    if x != 0 {
        put_key(out, field, WireType::Varint);
        put_varint(out, x);
    }
}

/// A sub-message that is always written (gogoproto non-nullable).
pub fn message_len<M: Message>(field: u32, m: &M) -> usize {
    let n = m.encoded_len();
    key_len(field) + varint_len(n as u64) + n
}

pub fn put_message<M: Message>(out: &mut Vec<u8>, field: u32, m: &M) {
    put_key(out, field, WireType::Len);
    put_varint(out, m.encoded_len() as u64);
    m.encode_to(out);
}

/// A nullable sub-message: written when present, even if empty.
pub fn opt_message_len<M: Message>(field: u32, m: &Option<M>) -> usize {
    m.as_ref().map_or(0, |m| message_len(field, m))
}

pub fn put_opt_message<M: Message>(out: &mut Vec<u8>, field: u32, m: &Option<M>) {
    if let Some(m) = m {
        put_message(out, field, m);
    }
}

/// Merges a length-delimited sub-message into `m`.
pub fn merge_message<M: Message>(m: &mut M, r: &mut Reader<'_>) -> Result<(), ProtoError> {
    m.merge(&mut r.sub()?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn varints_round_trip_with_their_lengths() {
        for x in [
            0u64,
            1,
            127,
            128,
            300,
            u32::MAX as u64,
            u64::MAX,
            (-1i64) as u64,
        ] {
            let mut out = Vec::new();
            put_varint(&mut out, x);
            assert_eq!(out.len(), varint_len(x), "{x}");
            assert_eq!(Reader { buf: &out }.varint(), Ok(x));
        }
        // An 11-byte varint and a 10th byte above 1 overflow.
        assert_eq!(
            Reader { buf: &[0xff; 11] }.varint(),
            Err(ProtoError::IntOverflow)
        );
        let mut ten = [0xffu8; 10];
        ten[9] = 2;
        assert_eq!(Reader { buf: &ten }.varint(), Err(ProtoError::IntOverflow));
    }

    #[test]
    fn groups_are_skipped_and_unbalanced_ones_refused() {
        // field 1 start group, field 2 varint 5, field 1 end group
        let mut r = Reader {
            buf: &[0x10, 0x05, 0x0c],
        };
        assert_eq!(r.skip(WireType::StartGroup), Ok(()));
        assert!(r.buf.is_empty());
        let mut r = Reader { buf: &[] };
        assert_eq!(
            r.skip(WireType::EndGroup),
            Err(ProtoError::UnexpectedEndOfGroup)
        );
    }
}

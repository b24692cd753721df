//! The subset of Go's `encoding/gob` that smt proofs travel in (spec `smst.md` §7).
//!
//! The encoder writes what a fresh Go process writes when its first gob use is the given
//! type ("canonical": user type ids 64, 65, … in pre-order). The decoder is generic over
//! the wire: it reads type definitions with any ids in any order, matches struct fields
//! by name, skips fields it does not know, checks type compatibility the way Go does, and
//! turns every malformed input into an error — never a panic.

mod decode;
pub(crate) mod encode;
pub(crate) mod schema;

pub use decode::{DecodeError, Value, decode};
pub use encode::{Encoder, type_prefix};
pub use schema::{Kind, Schema};

/// Builtin type ids of gob.
pub(crate) mod ids {
    pub const BOOL: i64 = 1;
    pub const INT: i64 = 2;
    pub const UINT: i64 = 3;
    pub const FLOAT: i64 = 4;
    pub const BYTES: i64 = 5;
    pub const STRING: i64 = 6;
    pub const COMPLEX: i64 = 7;
    pub const INTERFACE: i64 = 8;
    /// First id handed out to user types.
    pub const FIRST_USER: i64 = 64;
}

/// Appends gob's unsigned integer encoding.
pub(crate) fn put_uint(out: &mut Vec<u8>, x: u64) {
    if x < 128 {
        out.push(x as u8);
        return;
    }
    let b = x.to_be_bytes();
    let skip = (x.leading_zeros() / 8) as usize;
    out.push((256 - (8 - skip)) as u8);
    out.extend_from_slice(&b[skip..]);
}

/// Appends gob's signed integer encoding (zig-zag with the sign in bit 0).
pub(crate) fn put_int(out: &mut Vec<u8>, x: i64) {
    let u = if x < 0 {
        (!(x as u64) << 1) | 1
    } else {
        (x as u64) << 1
    };
    put_uint(out, u);
}

/// Appends a length-prefixed byte string.
pub(crate) fn put_bytes(out: &mut Vec<u8>, b: &[u8]) {
    put_uint(out, b.len() as u64);
    out.extend_from_slice(b);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn integers_encode_as_go_does() {
        let enc = |f: &dyn Fn(&mut Vec<u8>)| {
            let mut v = Vec::new();
            f(&mut v);
            v
        };
        assert_eq!(enc(&|v| put_uint(v, 128)), [0xff, 0x80]);
        assert_eq!(enc(&|v| put_uint(v, 300)), [0xfe, 0x01, 0x2c]);
        assert_eq!(enc(&|v| put_int(v, 1)), [0x02]);
        assert_eq!(enc(&|v| put_int(v, 64)), [0xff, 0x80]);
        assert_eq!(enc(&|v| put_int(v, -64)), [0x7f]);
        assert_eq!(enc(&|v| put_int(v, -65)), [0xff, 0x81]);
        assert_eq!(
            enc(&|v| put_int(v, i64::MIN)),
            [0xf8, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff]
        );
    }
}

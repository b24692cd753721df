//! How each kind of field is sized, written and read. The `proto_message!` macro picks
//! one of these modules per field, so every message follows the same rules.

use std::collections::BTreeMap;

use super::wire::{
    Message, ProtoError, Reader, WireType, always_bytes_len, bytes_len, expect, key_len,
    merge_message, message_len, put_always_bytes, put_bytes, put_key, put_message, put_varint,
    put_varint_field, read_string, varint_field_len, varint_len,
};

/// `string`: omitted when empty; must be UTF-8.
pub mod string {
    use super::*;

    pub fn len(field: u32, v: &str) -> usize {
        bytes_len(field, v.as_bytes())
    }
    pub fn put(out: &mut Vec<u8>, field: u32, v: &str) {
        put_bytes(out, field, v.as_bytes());
    }
    pub fn merge(
        v: &mut String,
        msg: &'static str,
        field: u32,
        wt: WireType,
        r: &mut Reader<'_>,
    ) -> Result<(), ProtoError> {
        expect(msg, field, wt, WireType::Len)?;
        *v = read_string(msg, field, r)?;
        Ok(())
    }
}

/// `bytes`: omitted when empty.
pub mod bytes {
    use super::*;

    pub fn len(field: u32, v: &[u8]) -> usize {
        bytes_len(field, v)
    }
    pub fn put(out: &mut Vec<u8>, field: u32, v: &[u8]) {
        put_bytes(out, field, v);
    }
    pub fn merge(
        v: &mut Vec<u8>,
        msg: &'static str,
        field: u32,
        wt: WireType,
        r: &mut Reader<'_>,
    ) -> Result<(), ProtoError> {
        expect(msg, field, wt, WireType::Len)?;
        *v = r.bytes()?.to_vec();
        Ok(())
    }
}

/// A varint-encoded integer kind: omitted when 0, with its conversions to and from the
/// wire's u64.
macro_rules! varint_kind {
    ($(#[$doc:meta])* $name:ident, $ty:ty, $to_wire:expr, $from_wire:expr) => {
        $(#[$doc])*
        pub mod $name {
            use super::*;

            pub fn len(field: u32, v: &$ty) -> usize {
                varint_field_len(field, $to_wire(*v))
            }
            pub fn put(out: &mut Vec<u8>, field: u32, v: &$ty) {
                put_varint_field(out, field, $to_wire(*v));
            }
            pub fn merge(v: &mut $ty, msg: &'static str, field: u32, wt: WireType, r: &mut Reader<'_>) -> Result<(), ProtoError> {
                expect(msg, field, wt, WireType::Varint)?;
                *v = $from_wire(r.varint()?);
                Ok(())
            }
        }
    };
}

varint_kind!(
    /// `int64`: two's complement, ten bytes when negative.
    int64, i64, |v: i64| v as u64, |x: u64| x as i64
);
varint_kind!(
    /// `uint64`.
    uint64, u64, |v: u64| v, |x: u64| x
);
varint_kind!(
    /// `uint32`: wider varints are truncated on read, as gogo does.
    uint32, u32, |v: u32| v as u64, |x: u64| x as u32
);
varint_kind!(
    /// `int32` and enums: sign-extended to ten bytes when negative, truncated on read.
    int32, i32, |v: i32| v as i64 as u64, |x: u64| x as i32
);

/// A gogoproto non-nullable sub-message: always written, even when empty.
pub mod message {
    use super::*;

    pub fn len<M: Message>(field: u32, v: &M) -> usize {
        message_len(field, v)
    }
    pub fn put<M: Message>(out: &mut Vec<u8>, field: u32, v: &M) {
        put_message(out, field, v);
    }
    pub fn merge<M: Message>(
        v: &mut M,
        msg: &'static str,
        field: u32,
        wt: WireType,
        r: &mut Reader<'_>,
    ) -> Result<(), ProtoError> {
        expect(msg, field, wt, WireType::Len)?;
        merge_message(v, r)
    }
}

/// A nullable sub-message: written when present (even if empty); repeats merge.
pub mod optional {
    use super::*;

    pub fn len<M: Message>(field: u32, v: &Option<M>) -> usize {
        v.as_ref().map_or(0, |m| message_len(field, m))
    }
    pub fn put<M: Message>(out: &mut Vec<u8>, field: u32, v: &Option<M>) {
        if let Some(m) = v {
            put_message(out, field, m);
        }
    }
    pub fn merge<M: Message>(
        v: &mut Option<M>,
        msg: &'static str,
        field: u32,
        wt: WireType,
        r: &mut Reader<'_>,
    ) -> Result<(), ProtoError> {
        expect(msg, field, wt, WireType::Len)?;
        merge_message(v.get_or_insert_with(M::default), r)
    }
}

/// `repeated string`: every element written, empty ones included.
pub mod strings {
    use super::*;

    pub fn len(field: u32, v: &[String]) -> usize {
        v.iter()
            .map(|s| always_bytes_len(field, s.as_bytes()))
            .sum()
    }
    pub fn put(out: &mut Vec<u8>, field: u32, v: &[String]) {
        v.iter()
            .for_each(|s| put_always_bytes(out, field, s.as_bytes()));
    }
    pub fn merge(
        v: &mut Vec<String>,
        msg: &'static str,
        field: u32,
        wt: WireType,
        r: &mut Reader<'_>,
    ) -> Result<(), ProtoError> {
        expect(msg, field, wt, WireType::Len)?;
        v.push(read_string(msg, field, r)?);
        Ok(())
    }
}

/// `map<string, M>` as Go's deterministic marshaling writes it: entries sorted by key,
/// each with its key and value always present. On read a missing key or value is the
/// default and a repeated key wins.
pub mod map {
    use super::*;

    fn entry_len<M: Message>(key: &str, value: &M) -> usize {
        always_bytes_len(1, key.as_bytes()) + message_len(2, value)
    }

    pub fn len<M: Message>(field: u32, v: &BTreeMap<String, M>) -> usize {
        v.iter()
            .map(|(k, m)| {
                let n = entry_len(k, m);
                key_len(field) + varint_len(n as u64) + n
            })
            .sum()
    }
    pub fn put<M: Message>(out: &mut Vec<u8>, field: u32, v: &BTreeMap<String, M>) {
        for (k, m) in v {
            put_key(out, field, WireType::Len);
            put_varint(out, entry_len(k, m) as u64);
            put_always_bytes(out, 1, k.as_bytes());
            put_message(out, 2, m);
        }
    }
    pub fn merge<M: Message>(
        v: &mut BTreeMap<String, M>,
        msg: &'static str,
        field: u32,
        wt: WireType,
        r: &mut Reader<'_>,
    ) -> Result<(), ProtoError> {
        expect(msg, field, wt, WireType::Len)?;
        let mut entry = r.sub()?;
        let (mut key, mut value) = (String::new(), M::default());
        while entry.remaining() > 0 {
            let (f, wt) = entry.read_key()?;
            match f {
                1 => string::merge(&mut key, msg, field, wt, &mut entry)?,
                2 => message::merge(&mut value, msg, field, wt, &mut entry)?,
                _ => entry.skip(wt)?,
            }
        }
        v.insert(key, value);
        Ok(())
    }
}

/// `repeated M`: every element written, empty ones included.
pub mod messages {
    use super::*;

    pub fn len<M: Message>(field: u32, v: &[M]) -> usize {
        v.iter().map(|m| message_len(field, m)).sum()
    }
    pub fn put<M: Message>(out: &mut Vec<u8>, field: u32, v: &[M]) {
        v.iter().for_each(|m| put_message(out, field, m));
    }
    pub fn merge<M: Message>(
        v: &mut Vec<M>,
        msg: &'static str,
        field: u32,
        wt: WireType,
        r: &mut Reader<'_>,
    ) -> Result<(), ProtoError> {
        expect(msg, field, wt, WireType::Len)?;
        let mut m = M::default();
        merge_message(&mut m, r)?;
        v.push(m);
        Ok(())
    }
}

/// `repeated bytes`: every element written, empty ones included.
pub mod bytes_list {
    use super::*;

    pub fn len(field: u32, v: &[Vec<u8>]) -> usize {
        v.iter().map(|b| always_bytes_len(field, b)).sum()
    }
    pub fn put(out: &mut Vec<u8>, field: u32, v: &[Vec<u8>]) {
        v.iter().for_each(|b| put_always_bytes(out, field, b));
    }
    pub fn merge(
        v: &mut Vec<Vec<u8>>,
        msg: &'static str,
        field: u32,
        wt: WireType,
        r: &mut Reader<'_>,
    ) -> Result<(), ProtoError> {
        expect(msg, field, wt, WireType::Len)?;
        v.push(r.bytes()?.to_vec());
        Ok(())
    }
}

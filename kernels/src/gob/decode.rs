//! A generic gob decoder for struct values described by a [`Schema`].

use std::collections::HashMap;

use super::ids;
use super::schema::{Kind, Schema};

/// Why a gob stream was rejected.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    #[error("unexpected EOF")]
    UnexpectedEof,
    #[error("empty input")]
    Empty,
    #[error("gob: encoded unsigned integer out of range")]
    BadUint,
    #[error("gob: bad data: field numbers out of bounds")]
    FieldOutOfBounds,
    #[error("gob: {what} length {len} exceeds input size")]
    TooLong { what: &'static str, len: u64 },
    #[error("gob: duplicate type {0} received")]
    DuplicateType(i64),
    #[error("gob: bad data: undefined type {0}")]
    UndefinedType(i64),
    #[error("gob: type definition for {0} is malformed")]
    BadTypeDefinition(i64),
    #[error("gob: extra data in buffer after a type definition")]
    ExtraData,
    #[error("gob: type mismatch: {0}")]
    TypeMismatch(String),
    #[error("gob: unsupported wire type {0}")]
    Unsupported(i64),
    #[error("gob: nesting deeper than {MAX_NESTING}")]
    TooDeep,
}

/// How deep values and type references may nest.
const MAX_NESTING: usize = 64;

/// A decoded value, shaped by the local schema.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Value {
    Int(i64),
    Bytes(Vec<u8>),
    List(Vec<Value>),
    /// Local fields in declaration order; `None` where the wire did not carry them.
    Struct(Vec<Option<Value>>),
}

/// A type as defined on the wire.
#[derive(Debug)]
enum Wire {
    Array {
        elem: i64,
        len: i64,
    },
    Slice {
        elem: i64,
    },
    Struct {
        name: String,
        fields: Vec<(String, i64)>,
    },
    Map {
        key: i64,
        elem: i64,
    },
    /// GobEncoder, BinaryMarshaler, TextMarshaler: an opaque byte string.
    Opaque,
}

struct Reader<'a> {
    buf: &'a [u8],
}

impl<'a> Reader<'a> {
    fn byte(&mut self) -> Result<u8, DecodeError> {
        let (&b, rest) = self.buf.split_first().ok_or(DecodeError::UnexpectedEof)?;
        self.buf = rest;
        Ok(b)
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8], DecodeError> {
        if n > self.buf.len() {
            return Err(DecodeError::UnexpectedEof);
        }
        let (head, rest) = self.buf.split_at(n);
        self.buf = rest;
        Ok(head)
    }

    fn uint(&mut self) -> Result<u64, DecodeError> {
        let b = self.byte()?;
        if b < 0x80 {
            return Ok(b as u64);
        }
        let n = -(b as i8 as i32) as usize;
        if n > 8 {
            return Err(DecodeError::BadUint);
        }
        Ok(self.take(n)?.iter().fold(0u64, |x, &v| (x << 8) | v as u64))
    }

    fn int(&mut self) -> Result<i64, DecodeError> {
        let u = self.uint()?;
        Ok(if u & 1 == 1 {
            !(u >> 1) as i64
        } else {
            (u >> 1) as i64
        })
    }

    fn bytes(&mut self, what: &'static str) -> Result<&'a [u8], DecodeError> {
        let n = self.uint()?;
        if n > self.buf.len() as u64 {
            return Err(DecodeError::TooLong { what, len: n });
        }
        self.take(n as usize)
    }

    /// Element count of a slice, map or array: each element takes at least one byte.
    fn count(&mut self, what: &'static str) -> Result<usize, DecodeError> {
        let n = self.uint()?;
        if n > self.buf.len() as u64 {
            return Err(DecodeError::TooLong { what, len: n });
        }
        Ok(n as usize)
    }

    /// Walks a struct encoding, handing each present field index to `f`.
    fn fields(
        &mut self,
        nfields: usize,
        mut f: impl FnMut(usize, &mut Self) -> Result<(), DecodeError>,
    ) -> Result<(), DecodeError> {
        let mut index: i64 = -1;
        loop {
            let delta = self.uint()?;
            if delta == 0 {
                return Ok(());
            }
            let next = i64::try_from(delta).ok().and_then(|d| index.checked_add(d));
            match next {
                Some(i) if (i as u64) < nfields as u64 => index = i,
                _ => return Err(DecodeError::FieldOutOfBounds),
            }
            f(index as usize, self)?;
        }
    }
}

/// Decodes the first value of a gob stream into the shape of `schema` (a struct).
/// Trailing bytes after the value's message are ignored, as a single Go `Decode` does.
pub fn decode(input: &[u8], schema: &'static Schema) -> Result<Value, DecodeError> {
    if input.is_empty() {
        return Err(DecodeError::Empty);
    }
    let mut stream = Reader { buf: input };
    let mut defs: HashMap<i64, Wire> = HashMap::new();
    loop {
        let len = stream.uint()?;
        if len > stream.buf.len() as u64 {
            return Err(DecodeError::UnexpectedEof);
        }
        let mut msg = Reader {
            buf: stream.take(len as usize)?,
        };
        if msg.buf.is_empty() {
            continue;
        }
        let id = msg.int()?;
        if id < 0 {
            let id = id.checked_neg().ok_or(DecodeError::BadTypeDefinition(id))?;
            if defs.contains_key(&id) || id <= ids::INTERFACE || (16..=23).contains(&id) {
                return Err(DecodeError::DuplicateType(id));
            }
            let wire = read_wire_type(&mut msg).map_err(|e| match e {
                DecodeError::UnexpectedEof | DecodeError::FieldOutOfBounds => {
                    DecodeError::BadTypeDefinition(id)
                }
                e => e,
            })?;
            if !msg.buf.is_empty() {
                return Err(DecodeError::ExtraData);
            }
            defs.insert(id, wire);
            continue;
        }
        let types = Types { defs: &defs };
        types.check(id, schema, 0)?;
        return types.value(&mut msg, id, schema, 0);
    }
}

fn read_common(r: &mut Reader<'_>) -> Result<(String, i64), DecodeError> {
    let (mut name, mut id) = (String::new(), 0);
    r.fields(2, |i, r| {
        match i {
            0 => name = String::from_utf8_lossy(r.bytes("type name")?).into_owned(),
            _ => id = r.int()?,
        }
        Ok(())
    })?;
    Ok((name, id))
}

fn read_wire_type(r: &mut Reader<'_>) -> Result<Wire, DecodeError> {
    let mut wire = None;
    r.fields(7, |variant, r| {
        let mut name = String::new();
        let (mut a, mut b) = (0i64, 0i64);
        let mut fields = Vec::new();
        let nfields = match variant {
            0 | 3 => 3, // ArrayType{Common, Elem, Len}, MapType{Common, Key, Elem}
            1 | 2 => 2, // SliceType{Common, Elem}, StructType{Common, Field}
            _ => 1,     // GobEncoderType{Common} and friends
        };
        r.fields(nfields, |i, r| {
            match (variant, i) {
                (_, 0) => name = read_common(r)?.0,
                (2, 1) => {
                    let n = r.count("field list")?;
                    for _ in 0..n {
                        let (mut fname, mut fid) = (String::new(), 0);
                        r.fields(2, |j, r| {
                            match j {
                                0 => {
                                    fname =
                                        String::from_utf8_lossy(r.bytes("field name")?).into_owned()
                                }
                                _ => fid = r.int()?,
                            }
                            Ok(())
                        })?;
                        fields.push((fname, fid));
                    }
                }
                (_, 1) => a = r.int()?,
                (_, _) => b = r.int()?,
            }
            Ok(())
        })?;
        wire = Some(match variant {
            0 => Wire::Array { elem: a, len: b },
            1 => Wire::Slice { elem: a },
            2 => Wire::Struct { name, fields },
            3 => Wire::Map { key: a, elem: b },
            _ => Wire::Opaque,
        });
        Ok(())
    })?;
    wire.ok_or(DecodeError::BadTypeDefinition(0))
}

struct Types<'d> {
    defs: &'d HashMap<i64, Wire>,
}

impl Types<'_> {
    fn def(&self, id: i64) -> Result<&Wire, DecodeError> {
        self.defs.get(&id).ok_or(DecodeError::UndefinedType(id))
    }

    /// Go's compile-time compatibility check between a wire type and a local type.
    fn check(&self, wire: i64, local: &'static Schema, depth: usize) -> Result<(), DecodeError> {
        if depth > MAX_NESTING {
            return Err(DecodeError::TooDeep);
        }
        let local = local.deref();
        let mismatch = || {
            DecodeError::TypeMismatch(format!(
                "local type {} received wire type {wire}",
                local.name
            ))
        };
        match local.kind {
            Kind::Int if wire == ids::INT => Ok(()),
            Kind::Bytes if wire == ids::BYTES => Ok(()),
            Kind::Int | Kind::Bytes => Err(mismatch()),
            Kind::Slice(elem) => match self.def(wire) {
                Ok(Wire::Slice { elem: w }) => self.check(*w, elem, depth + 1),
                _ => Err(mismatch()),
            },
            Kind::Struct(fields) => {
                let Ok(Wire::Struct {
                    name,
                    fields: wfields,
                }) = self.def(wire)
                else {
                    return Err(mismatch());
                };
                let mut matched = 0;
                for (wname, wid) in wfields {
                    match fields.iter().find(|(n, _)| n == wname) {
                        Some((_, ty)) => {
                            self.check(*wid, ty, depth + 1)?;
                            matched += 1;
                        }
                        None => self.check_skippable(*wid, depth + 1)?,
                    }
                }
                if matched == 0 {
                    return Err(DecodeError::TypeMismatch(format!(
                        "no fields matched compiling decoder for {name}"
                    )));
                }
                Ok(())
            }
            Kind::Ptr(_) => unreachable!("deref removes pointers"),
        }
    }

    /// Whether values of wire type `id` can be skipped (every type they use is known).
    fn check_skippable(&self, id: i64, depth: usize) -> Result<(), DecodeError> {
        if depth > MAX_NESTING {
            return Err(DecodeError::TooDeep);
        }
        if (ids::BOOL..=ids::COMPLEX).contains(&id) {
            return Ok(());
        }
        if id < ids::FIRST_USER && !self.defs.contains_key(&id) {
            return Err(DecodeError::Unsupported(id));
        }
        match self.def(id)? {
            Wire::Array { elem, .. } | Wire::Slice { elem } => {
                self.check_skippable(*elem, depth + 1)
            }
            Wire::Map { key, elem } => {
                self.check_skippable(*key, depth + 1)?;
                self.check_skippable(*elem, depth + 1)
            }
            // A struct may refer to itself; its fields are checked when skipped.
            Wire::Struct { .. } | Wire::Opaque => Ok(()),
        }
    }

    fn value(
        &self,
        r: &mut Reader<'_>,
        wire: i64,
        local: &'static Schema,
        depth: usize,
    ) -> Result<Value, DecodeError> {
        if depth > MAX_NESTING {
            return Err(DecodeError::TooDeep);
        }
        let local = local.deref();
        Ok(match local.kind {
            Kind::Int => Value::Int(r.int()?),
            Kind::Bytes => Value::Bytes(r.bytes("byte slice")?.to_vec()),
            Kind::Slice(elem) => {
                let Wire::Slice { elem: welem } = self.def(wire)? else {
                    return Err(DecodeError::TypeMismatch(local.name.to_string()));
                };
                let n = r.count("slice")?;
                let mut items = Vec::with_capacity(n);
                for _ in 0..n {
                    items.push(self.value(r, *welem, elem, depth + 1)?);
                }
                Value::List(items)
            }
            Kind::Struct(fields) => {
                let Wire::Struct {
                    fields: wfields, ..
                } = self.def(wire)?
                else {
                    return Err(DecodeError::TypeMismatch(local.name.to_string()));
                };
                let mut out = vec![None; fields.len()];
                r.fields(wfields.len(), |i, r| {
                    let (wname, wid) = &wfields[i];
                    match fields.iter().position(|(n, _)| n == wname) {
                        Some(k) => out[k] = Some(self.value(r, *wid, fields[k].1, depth + 1)?),
                        None => self.skip(r, *wid, depth + 1)?,
                    }
                    Ok(())
                })?;
                Value::Struct(out)
            }
            Kind::Ptr(_) => unreachable!("deref removes pointers"),
        })
    }

    /// Skips one value of wire type `id` (a field the local type does not have).
    fn skip(&self, r: &mut Reader<'_>, id: i64, depth: usize) -> Result<(), DecodeError> {
        if depth > MAX_NESTING {
            return Err(DecodeError::TooDeep);
        }
        match id {
            ids::BOOL | ids::INT | ids::UINT | ids::FLOAT => r.uint().map(drop),
            ids::COMPLEX => r.uint().and_then(|_| r.uint()).map(drop),
            ids::BYTES | ids::STRING => r.bytes("string").map(drop),
            _ => match self.def(id).map_err(|_| DecodeError::Unsupported(id))? {
                Wire::Opaque => r.bytes("encoded value").map(drop),
                Wire::Slice { elem } => {
                    let n = r.count("slice")?;
                    (0..n).try_for_each(|_| self.skip(r, *elem, depth + 1))
                }
                Wire::Array { elem, len } => {
                    let n = r.count("array")?;
                    if n as i64 != *len {
                        return Err(DecodeError::TypeMismatch("array length".into()));
                    }
                    (0..n).try_for_each(|_| self.skip(r, *elem, depth + 1))
                }
                Wire::Map { key, elem } => {
                    let n = r.count("map")?;
                    (0..n).try_for_each(|_| {
                        self.skip(r, *key, depth + 1)?;
                        self.skip(r, *elem, depth + 1)
                    })
                }
                Wire::Struct { fields, .. } => {
                    r.fields(fields.len(), |i, r| self.skip(r, fields[i].1, depth + 1))
                }
            },
        }
    }
}

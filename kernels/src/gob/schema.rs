//! Local type descriptions: what a Go struct looks like to gob.

/// The Go type of a value, as far as gob cares.
#[derive(Debug)]
pub enum Kind {
    /// `int` (any signed integer).
    Int,
    /// `[]byte`.
    Bytes,
    /// A named slice type such as `[][]uint8` or `[]int`.
    Slice(&'static Schema),
    /// A struct, fields in declaration order.
    Struct(&'static [(&'static str, &'static Schema)]),
    /// A pointer to a struct: encoded inline like the struct, omitted when nil.
    Ptr(&'static Schema),
}

/// A named Go type.
#[derive(Debug)]
pub struct Schema {
    /// Name as gob sends it (`[][]uint8`, or the struct name without package).
    pub name: &'static str,
    pub kind: Kind,
}

impl Schema {
    /// The type this schema stands for once pointers are dereferenced.
    pub(crate) fn deref(&'static self) -> &'static Schema {
        match self.kind {
            Kind::Ptr(inner) => inner.deref(),
            _ => self,
        }
    }

    /// Whether the type is a builtin (it has a fixed id and no definition on the wire).
    pub(crate) fn builtin_id(&self) -> Option<i64> {
        match self.kind {
            Kind::Int => Some(super::ids::INT),
            Kind::Bytes => Some(super::ids::BYTES),
            _ => None,
        }
    }
}

/// `int`.
pub static INT: Schema = Schema {
    name: "int",
    kind: Kind::Int,
};
/// `[]byte`.
pub static BYTES: Schema = Schema {
    name: "[]byte",
    kind: Kind::Bytes,
};

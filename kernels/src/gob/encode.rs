//! Canonical gob encoding: type definitions in pre-order from id 64, then one value.

use super::schema::{Kind, Schema};
use super::{ids, put_bytes, put_int, put_uint};

/// The type-definition messages a fresh Go process sends before the first value of
/// `schema` (the "canonical" prefix). The value's own type gets id 64.
pub fn type_prefix(schema: &'static Schema) -> Vec<u8> {
    let mut order: Vec<&'static Schema> = Vec::new();
    assign_ids(schema.deref(), &mut order);
    let id_of = |s: &'static Schema| -> i64 {
        let s = s.deref();
        s.builtin_id().unwrap_or_else(|| {
            let pos = order
                .iter()
                .position(|o| std::ptr::eq(*o, s))
                .expect("every user type was assigned an id");
            ids::FIRST_USER + pos as i64
        })
    };
    let mut out = Vec::new();
    for (pos, s) in order.iter().enumerate() {
        let id = ids::FIRST_USER + pos as i64;
        let mut body = Vec::new();
        put_int(&mut body, -id);
        match s.kind {
            Kind::Slice(elem) => {
                body.push(2); // wireType field 1: SliceT
                common_type(&mut body, s.name, id);
                body.push(1); // Elem
                put_int(&mut body, id_of(elem));
                body.extend_from_slice(&[0, 0]);
            }
            Kind::Struct(fields) => {
                body.push(3); // wireType field 2: StructT
                common_type(&mut body, s.name, id);
                body.push(1); // Field
                put_uint(&mut body, fields.len() as u64);
                for (name, ty) in fields {
                    body.push(1);
                    put_bytes(&mut body, name.as_bytes());
                    body.push(1);
                    put_int(&mut body, id_of(ty));
                    body.push(0);
                }
                body.extend_from_slice(&[0, 0]);
            }
            Kind::Int | Kind::Bytes | Kind::Ptr(_) => {
                unreachable!("builtins and pointers get no definition")
            }
        }
        put_uint(&mut out, body.len() as u64);
        out.extend_from_slice(&body);
    }
    out
}

fn common_type(body: &mut Vec<u8>, name: &str, id: i64) {
    body.extend_from_slice(&[1, 1]); // field 0 CommonType, its field 0 Name
    put_bytes(body, name.as_bytes());
    body.push(1); // Id
    put_int(body, id);
    body.push(0);
}

/// Pre-order id assignment: the type, then its fields' types in order, recursively;
/// builtins and already-numbered types are skipped.
fn assign_ids(s: &'static Schema, order: &mut Vec<&'static Schema>) {
    let s = s.deref();
    if s.builtin_id().is_some() || order.iter().any(|o| std::ptr::eq(*o, s)) {
        return;
    }
    order.push(s);
    match s.kind {
        Kind::Slice(elem) => assign_ids(elem, order),
        Kind::Struct(fields) => fields.iter().for_each(|(_, ty)| assign_ids(ty, order)),
        _ => {}
    }
}

/// Writes the fields of one struct value; zero values are omitted as gob does.
#[derive(Debug)]
pub struct Encoder<'a> {
    out: &'a mut Vec<u8>,
    last: i64,
}

impl<'a> Encoder<'a> {
    /// Starts a struct body at the end of `out`.
    pub fn new(out: &'a mut Vec<u8>) -> Self {
        Self { out, last: -1 }
    }

    fn field(&mut self, index: i64) {
        debug_assert!(index > self.last, "fields are written in declaration order");
        put_uint(self.out, (index - self.last) as u64);
        self.last = index;
    }

    /// A `[]byte` field; omitted when empty.
    pub fn bytes(&mut self, index: i64, b: &[u8]) {
        if !b.is_empty() {
            self.field(index);
            put_bytes(self.out, b);
        }
    }

    /// An `int` field; omitted when zero.
    pub fn int(&mut self, index: i64, x: i64) {
        if x != 0 {
            self.field(index);
            put_int(self.out, x);
        }
    }

    /// A `[][]byte` field; omitted when empty. Empty elements are still written.
    pub fn bytes_list<T: AsRef<[u8]>>(&mut self, index: i64, items: &[T]) {
        if !items.is_empty() {
            self.field(index);
            put_uint(self.out, items.len() as u64);
            items.iter().for_each(|b| put_bytes(self.out, b.as_ref()));
        }
    }

    /// A `[][]byte` field from `count` borrowed elements; omitted when `count` is 0.
    pub fn bytes_iter<'b>(
        &mut self,
        index: i64,
        count: usize,
        items: impl Iterator<Item = &'b [u8]>,
    ) {
        if count > 0 {
            self.field(index);
            put_uint(self.out, count as u64);
            let mut written = 0;
            for b in items {
                put_bytes(self.out, b);
                written += 1;
            }
            debug_assert_eq!(written, count, "count matches the items");
        }
    }

    /// An `[]int` field; omitted when empty.
    pub fn int_list(&mut self, index: i64, items: &[i64]) {
        if !items.is_empty() {
            self.field(index);
            put_uint(self.out, items.len() as u64);
            items.iter().for_each(|&x| put_int(self.out, x));
        }
    }

    /// A non-nil pointer-to-struct field, written inline (even when all its fields are
    /// zero).
    pub fn nested(&mut self, index: i64, write: impl FnOnce(&mut Encoder<'_>)) {
        self.field(index);
        let mut inner = Encoder::new(self.out);
        write(&mut inner);
        inner.end();
    }

    /// Terminates the struct.
    pub fn end(self) {
        self.out.push(0);
    }
}

/// Frames one value message of type id 64 after `prefix`: `uint(len) ‖ int(64) ‖ body`.
pub(crate) fn frame_value(prefix: &[u8], body: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(prefix.len() + body.len() + 6);
    out.extend_from_slice(prefix);
    let mut id = Vec::with_capacity(2);
    put_int(&mut id, ids::FIRST_USER);
    put_uint(&mut out, (id.len() + body.len()) as u64);
    out.extend_from_slice(&id);
    out.extend_from_slice(body);
    out
}

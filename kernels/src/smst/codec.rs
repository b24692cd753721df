//! Gob encoding of the four proof types, byte-identical to `Marshal()` in smt v0.14.1
//! (spec `smst.md` §7), and decoding that accepts any gob type ids.

use std::sync::OnceLock;

use crate::gob::schema::{BYTES, INT};
use crate::gob::{self, DecodeError, Encoder, Kind, Schema, Value};

use super::proof::{
    SparseCompactMerkleClosestProof, SparseCompactMerkleProof, SparseMerkleClosestProof,
    SparseMerkleProof,
};

static BYTES_LIST: Schema = Schema {
    name: "[][]uint8",
    kind: Kind::Slice(&BYTES),
};
static INT_LIST: Schema = Schema {
    name: "[]int",
    kind: Kind::Slice(&INT),
};
static PROOF: Schema = Schema {
    name: "SparseMerkleProof",
    kind: Kind::Struct(&[
        ("SideNodes", &BYTES_LIST),
        ("NonMembershipLeafData", &BYTES),
        ("SiblingData", &BYTES),
    ]),
};
static PROOF_PTR: Schema = Schema {
    name: "*SparseMerkleProof",
    kind: Kind::Ptr(&PROOF),
};
static COMPACT_PROOF: Schema = Schema {
    name: "SparseCompactMerkleProof",
    kind: Kind::Struct(&[
        ("SideNodes", &BYTES_LIST),
        ("NonMembershipLeafData", &BYTES),
        ("BitMask", &BYTES),
        ("NumSideNodes", &INT),
        ("SiblingData", &BYTES),
    ]),
};
static COMPACT_PROOF_PTR: Schema = Schema {
    name: "*SparseCompactMerkleProof",
    kind: Kind::Ptr(&COMPACT_PROOF),
};
static CLOSEST_PROOF: Schema = Schema {
    name: "SparseMerkleClosestProof",
    kind: Kind::Struct(&[
        ("Path", &BYTES),
        ("FlippedBits", &INT_LIST),
        ("Depth", &INT),
        ("ClosestPath", &BYTES),
        ("ClosestValueHash", &BYTES),
        ("ClosestProof", &PROOF_PTR),
    ]),
};
static COMPACT_CLOSEST_PROOF: Schema = Schema {
    name: "SparseCompactMerkleClosestProof",
    kind: Kind::Struct(&[
        ("Path", &BYTES),
        ("FlippedBits", &BYTES_LIST),
        ("Depth", &BYTES),
        ("ClosestPath", &BYTES),
        ("ClosestValueHash", &BYTES),
        ("ClosestProof", &COMPACT_PROOF_PTR),
    ]),
};

/// The canonical type-definition prefix of `schema`, computed once.
fn prefix(schema: &'static Schema, cell: &'static OnceLock<Vec<u8>>) -> &'static [u8] {
    cell.get_or_init(|| gob::type_prefix(schema))
}

fn opt(b: &Option<Vec<u8>>) -> &[u8] {
    b.as_deref().unwrap_or_default()
}

fn write_proof(e: &mut Encoder<'_>, p: &SparseMerkleProof) {
    e.bytes_list(0, &p.side_nodes);
    e.bytes(1, opt(&p.non_membership_leaf_data));
    e.bytes(2, opt(&p.sibling_data));
}

fn write_compact_proof(e: &mut Encoder<'_>, p: &SparseCompactMerkleProof) {
    e.bytes_list(0, &p.side_nodes);
    e.bytes(1, opt(&p.non_membership_leaf_data));
    e.bytes(2, &p.bit_mask);
    e.int(3, p.num_side_nodes);
    e.bytes(4, opt(&p.sibling_data));
}

fn encode_with(
    schema: &'static Schema,
    cell: &'static OnceLock<Vec<u8>>,
    write: impl FnOnce(&mut Encoder<'_>),
) -> Vec<u8> {
    let mut body = Vec::with_capacity(512);
    let mut e = Encoder::new(&mut body);
    write(&mut e);
    e.end();
    gob::encode::frame_value(prefix(schema, cell), &body)
}

impl SparseMerkleProof {
    /// Gob bytes as Go's `Marshal()` writes them.
    pub fn to_gob(&self) -> Vec<u8> {
        static P: OnceLock<Vec<u8>> = OnceLock::new();
        encode_with(&PROOF, &P, |e| write_proof(e, self))
    }

    /// Decodes gob bytes with any type ids (Go's `Unmarshal()`).
    pub fn from_gob(bytes: &[u8]) -> Result<Self, DecodeError> {
        Ok(proof_from(gob::decode(bytes, &PROOF)?))
    }
}

impl SparseCompactMerkleProof {
    /// Gob bytes as Go's `Marshal()` writes them.
    pub fn to_gob(&self) -> Vec<u8> {
        static P: OnceLock<Vec<u8>> = OnceLock::new();
        encode_with(&COMPACT_PROOF, &P, |e| write_compact_proof(e, self))
    }

    /// Decodes gob bytes with any type ids.
    pub fn from_gob(bytes: &[u8]) -> Result<Self, DecodeError> {
        Ok(compact_proof_from(gob::decode(bytes, &COMPACT_PROOF)?))
    }
}

impl SparseMerkleClosestProof {
    /// Gob bytes as Go's `Marshal()` writes them.
    pub fn to_gob(&self) -> Vec<u8> {
        static P: OnceLock<Vec<u8>> = OnceLock::new();
        encode_with(&CLOSEST_PROOF, &P, |e| {
            e.bytes(0, &self.path);
            e.int_list(1, &self.flipped_bits);
            e.int(2, self.depth);
            e.bytes(3, &self.closest_path);
            e.bytes(4, opt(&self.closest_value_hash));
            if let Some(p) = &self.closest_proof {
                e.nested(5, |e| write_proof(e, p));
            }
        })
    }

    /// Decodes gob bytes with any type ids.
    pub fn from_gob(bytes: &[u8]) -> Result<Self, DecodeError> {
        let mut f = fields(gob::decode(bytes, &CLOSEST_PROOF)?);
        Ok(Self {
            path: bytes_or_empty(f[0].take()),
            flipped_bits: list(f[1].take()).into_iter().map(int).collect(),
            depth: f[2].take().map(int).unwrap_or(0),
            closest_path: bytes_or_empty(f[3].take()),
            closest_value_hash: bytes_opt(f[4].take()),
            closest_proof: f[5].take().map(proof_from),
        })
    }
}

/// Minimal big-endian bytes of a non-negative integer, on the stack.
fn min_be(x: i64) -> ([u8; 8], usize) {
    let b = (x as u64).to_be_bytes();
    (b, (x.max(1).leading_zeros() / 8) as usize)
}

impl SparseMerkleClosestProof {
    /// Compacts and gob-encodes in one pass: the same bytes as
    /// `compact_closest_proof(self)?.to_gob()`, without the intermediate copies. Only for
    /// proofs this crate generated (already known to be well formed).
    pub(crate) fn to_compact_gob_unchecked(&self) -> Vec<u8> {
        static P: OnceLock<Vec<u8>> = OnceLock::new();
        encode_with(&COMPACT_CLOSEST_PROOF, &P, |e| {
            e.bytes(0, &self.path);
            let flipped: Vec<([u8; 8], usize)> =
                self.flipped_bits.iter().map(|&b| min_be(b)).collect();
            e.bytes_iter(1, flipped.len(), flipped.iter().map(|(b, at)| &b[*at..]));
            let (depth, at) = min_be(self.depth);
            e.bytes(2, &depth[at..]);
            e.bytes(3, &self.closest_path);
            e.bytes(4, opt(&self.closest_value_hash));
            if let Some(p) = &self.closest_proof {
                e.nested(5, |e| {
                    let is_empty = |n: &&Vec<u8>| n.as_slice() == super::hash::EMPTY.as_slice();
                    let kept = p.side_nodes.iter().filter(|n| !is_empty(n));
                    e.bytes_iter(0, kept.clone().count(), kept.map(Vec::as_slice));
                    e.bytes(1, opt(&p.non_membership_leaf_data));
                    let n = p.side_nodes.len();
                    let mut mask = [0u8; 32];
                    for (i, node) in p.side_nodes.iter().enumerate() {
                        if is_empty(&node) {
                            mask[i / 8] |= 0x80 >> (i % 8);
                        }
                    }
                    e.bytes(2, &mask[..n.div_ceil(8)]);
                    e.int(3, n as i64);
                    e.bytes(4, opt(&p.sibling_data));
                });
            }
        })
    }
}

impl SparseCompactMerkleClosestProof {
    /// Gob bytes as Go's `Marshal()` writes them: the `MsgSubmitProof.proof` format.
    pub fn to_gob(&self) -> Vec<u8> {
        static P: OnceLock<Vec<u8>> = OnceLock::new();
        encode_with(&COMPACT_CLOSEST_PROOF, &P, |e| {
            e.bytes(0, &self.path);
            e.bytes_list(1, &self.flipped_bits);
            e.bytes(2, &self.depth);
            e.bytes(3, &self.closest_path);
            e.bytes(4, opt(&self.closest_value_hash));
            if let Some(p) = &self.closest_proof {
                e.nested(5, |e| write_compact_proof(e, p));
            }
        })
    }

    /// Decodes gob bytes with any type ids.
    pub fn from_gob(bytes: &[u8]) -> Result<Self, DecodeError> {
        let mut f = fields(gob::decode(bytes, &COMPACT_CLOSEST_PROOF)?);
        Ok(Self {
            path: bytes_or_empty(f[0].take()),
            flipped_bits: list(f[1].take())
                .into_iter()
                .map(bytes_or_empty_v)
                .collect(),
            depth: bytes_or_empty(f[2].take()),
            closest_path: bytes_or_empty(f[3].take()),
            closest_value_hash: bytes_opt(f[4].take()),
            closest_proof: f[5].take().map(compact_proof_from),
        })
    }
}

// The decoder guarantees each value has its schema's shape; anything else is a bug in
// the schema tables above.

fn fields(v: Value) -> Vec<Option<Value>> {
    match v {
        Value::Struct(f) => f,
        other => unreachable!("schema says struct, decoder gave {other:?}"),
    }
}

fn list(v: Option<Value>) -> Vec<Value> {
    match v {
        None => Vec::new(),
        Some(Value::List(items)) => items,
        Some(other) => unreachable!("schema says list, decoder gave {other:?}"),
    }
}

fn int(v: Value) -> i64 {
    match v {
        Value::Int(x) => x,
        other => unreachable!("schema says int, decoder gave {other:?}"),
    }
}

/// gob cannot tell an empty slice from nil; both decode as nil (`None`).
fn bytes_opt(v: Option<Value>) -> Option<Vec<u8>> {
    match v {
        None => None,
        Some(Value::Bytes(b)) if b.is_empty() => None,
        Some(Value::Bytes(b)) => Some(b),
        Some(other) => unreachable!("schema says bytes, decoder gave {other:?}"),
    }
}

fn bytes_or_empty(v: Option<Value>) -> Vec<u8> {
    bytes_opt(v).unwrap_or_default()
}

fn bytes_or_empty_v(v: Value) -> Vec<u8> {
    bytes_or_empty(Some(v))
}

fn proof_from(v: Value) -> SparseMerkleProof {
    let mut f = fields(v);
    SparseMerkleProof {
        side_nodes: list(f[0].take())
            .into_iter()
            .map(bytes_or_empty_v)
            .collect(),
        non_membership_leaf_data: bytes_opt(f[1].take()),
        sibling_data: bytes_opt(f[2].take()),
    }
}

fn compact_proof_from(v: Value) -> SparseCompactMerkleProof {
    let mut f = fields(v);
    SparseCompactMerkleProof {
        side_nodes: list(f[0].take())
            .into_iter()
            .map(bytes_or_empty_v)
            .collect(),
        non_membership_leaf_data: bytes_opt(f[1].take()),
        bit_mask: bytes_or_empty(f[2].take()),
        num_side_nodes: f[3].take().map(int).unwrap_or(0),
        sibling_data: bytes_opt(f[4].take()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The canonical on-chain prefix quoted in spec §7.2 (286 bytes).
    #[test]
    fn compact_closest_prefix_is_the_go_constant() {
        let p = gob::type_prefix(&COMPACT_CLOSEST_PROOF);
        assert_eq!(p.len(), 286);
        assert_eq!(&p[..4], &[0xff, 0x87, 0x7f, 0x03]);
        assert_eq!(gob::type_prefix(&CLOSEST_PROOF).len(), 263);
        assert_eq!(gob::type_prefix(&PROOF).len(), 112);
        assert_eq!(gob::type_prefix(&COMPACT_PROOF).len(), 148);
    }
}

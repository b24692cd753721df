//! Proof types (Go field for Go field) and their compact forms (spec `smst.md` §5).

use super::hash::{EMPTY, MAX_DEPTH, bit};
use super::verify::{self, ProofError};

/// A plain proof (`SparseMerkleProof`). Side nodes are deepest first. Byte fields are
/// `None` where Go holds a nil slice; decoding maps empty to `None` as gob does.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SparseMerkleProof {
    pub side_nodes: Vec<Vec<u8>>,
    pub non_membership_leaf_data: Option<Vec<u8>>,
    pub sibling_data: Option<Vec<u8>>,
}

/// `SparseCompactMerkleProof`: the side nodes equal to the empty digest are replaced by
/// bits in `bit_mask`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SparseCompactMerkleProof {
    pub side_nodes: Vec<Vec<u8>>,
    pub non_membership_leaf_data: Option<Vec<u8>>,
    pub bit_mask: Vec<u8>,
    pub num_side_nodes: i64,
    pub sibling_data: Option<Vec<u8>>,
}

/// `SparseMerkleClosestProof`: proof of the leaf whose path is closest (XOR metric) to
/// `path`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SparseMerkleClosestProof {
    pub path: Vec<u8>,
    pub flipped_bits: Vec<i64>,
    pub depth: i64,
    pub closest_path: Vec<u8>,
    pub closest_value_hash: Option<Vec<u8>>,
    /// `None` only for hostile input (a nil pointer in Go).
    pub closest_proof: Option<SparseMerkleProof>,
}

/// `SparseCompactMerkleClosestProof`, gob-encoded this is `MsgSubmitProof.proof`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SparseCompactMerkleClosestProof {
    pub path: Vec<u8>,
    /// Each entry a minimal big-endian integer.
    pub flipped_bits: Vec<Vec<u8>>,
    /// Minimal big-endian integer (0 is `[0]`).
    pub depth: Vec<u8>,
    pub closest_path: Vec<u8>,
    pub closest_value_hash: Option<Vec<u8>>,
    pub closest_proof: Option<SparseCompactMerkleProof>,
}

/// What proof generation includes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ProofOptions {
    /// Include `SiblingData` (the serialized sibling of the proven leaf). The chain
    /// verifies without it, and proofs without it are smaller; Go always includes it.
    pub sibling_data: bool,
}

impl Default for ProofOptions {
    fn default() -> Self {
        Self { sibling_data: true }
    }
}

impl ProofOptions {
    /// Leaves `SiblingData` out: the smallest proof the chain accepts.
    pub const SMALL: Self = Self {
        sibling_data: false,
    };
}

impl SparseMerkleClosestProof {
    /// The proven leaf's value: `ClosestValueHash` without its sum and count (in poktroll,
    /// the serialized relay). `None` for the empty trie or a value hash shorter than 16.
    pub fn value(&self) -> Option<&[u8]> {
        let v = self.closest_value_hash.as_deref()?;
        v.len().checked_sub(16).map(|n| &v[..n])
    }
}

/// Minimal big-endian bytes of a non-negative integer: 0 → `[0]`, 256 → `[1, 0]`.
pub fn int_to_min_be(x: i64) -> Vec<u8> {
    let b = (x as u64).to_be_bytes();
    let skip = b.iter().take_while(|&&v| v == 0).count().min(7);
    b[skip..].to_vec()
}

/// Big-endian bytes to an integer; empty is 0 (Go's `bytesToInt`). Callers bound the
/// length first.
pub fn min_be_to_int(b: &[u8]) -> i64 {
    b.iter().fold(0i64, |acc, &v| (acc << 8) | v as i64)
}

/// Compacts a plain proof (Go's `CompactProof`), after the same sanity checks a verifier
/// runs.
pub fn compact_proof(proof: &SparseMerkleProof) -> Result<SparseCompactMerkleProof, ProofError> {
    verify::validate_proof(proof)?;
    Ok(compact_unchecked(proof))
}

pub(crate) fn compact_unchecked(proof: &SparseMerkleProof) -> SparseCompactMerkleProof {
    let n = proof.side_nodes.len();
    let mut bit_mask = vec![0u8; n.div_ceil(8)];
    let mut side_nodes = Vec::with_capacity(n);
    for (i, node) in proof.side_nodes.iter().enumerate() {
        if node.as_slice() == EMPTY.as_slice() {
            bit_mask[i / 8] |= 1 << (7 - i % 8);
        } else {
            side_nodes.push(node.clone());
        }
    }
    SparseCompactMerkleProof {
        side_nodes,
        non_membership_leaf_data: proof.non_membership_leaf_data.clone(),
        bit_mask,
        num_side_nodes: n as i64,
        sibling_data: proof.sibling_data.clone(),
    }
}

/// Expands a compact proof (Go's `DecompactProof`), rejecting every inconsistency Go
/// rejects or panics on.
pub fn decompact_proof(proof: &SparseCompactMerkleProof) -> Result<SparseMerkleProof, ProofError> {
    let n = proof.num_side_nodes;
    if !(0..=MAX_DEPTH as i64).contains(&n) {
        return Err(ProofError::NumSideNodesOutOfRange(n));
    }
    let n = n as usize;
    if proof.bit_mask.len() != n.div_ceil(8) {
        return Err(ProofError::BitMaskLength {
            got: proof.bit_mask.len(),
            want: n.div_ceil(8),
        });
    }
    // Go counts every bit of the mask, padding included.
    let empties: usize = proof.bit_mask.iter().map(|b| b.count_ones() as usize).sum();
    if n > 0 && proof.side_nodes.len() + empties != n {
        return Err(ProofError::SideNodeCount {
            got: proof.side_nodes.len(),
            want: n as i64 - empties as i64,
        });
    }
    let mut given = proof.side_nodes.iter();
    let mut side_nodes = Vec::with_capacity(n);
    for i in 0..n {
        if bit(&proof.bit_mask, i) == 1 {
            side_nodes.push(EMPTY.to_vec());
        } else {
            // Padding bits set in the mask make the counts agree while nodes run out;
            // Go indexes past the end and panics.
            let node = given.next().ok_or(ProofError::Malformed(
                "bit mask padding bits leave too few side nodes",
            ))?;
            side_nodes.push(node.clone());
        }
    }
    Ok(SparseMerkleProof {
        side_nodes,
        non_membership_leaf_data: proof.non_membership_leaf_data.clone(),
        sibling_data: proof.sibling_data.clone(),
    })
}

/// Compacts a closest proof (Go's `CompactClosestProof`), after its sanity checks.
pub fn compact_closest_proof(
    proof: &SparseMerkleClosestProof,
) -> Result<SparseCompactMerkleClosestProof, ProofError> {
    verify::validate_closest(proof)?;
    Ok(compact_closest_unchecked(proof))
}

/// Compaction of a proof this crate generated (already known to be well formed).
pub(crate) fn compact_closest_unchecked(
    proof: &SparseMerkleClosestProof,
) -> SparseCompactMerkleClosestProof {
    SparseCompactMerkleClosestProof {
        path: proof.path.clone(),
        flipped_bits: proof
            .flipped_bits
            .iter()
            .map(|&b| int_to_min_be(b))
            .collect(),
        depth: int_to_min_be(proof.depth),
        closest_path: proof.closest_path.clone(),
        closest_value_hash: proof.closest_value_hash.clone(),
        closest_proof: proof.closest_proof.as_ref().map(compact_unchecked),
    }
}

/// Expands a compact closest proof (Go's `DecompactClosestProof`).
pub fn decompact_closest_proof(
    proof: &SparseCompactMerkleClosestProof,
) -> Result<SparseMerkleClosestProof, ProofError> {
    if proof.path.len() != 32 {
        return Err(ProofError::PathLength(proof.path.len()));
    }
    if proof.depth.len() > 2 {
        return Err(ProofError::DepthTooLong(proof.depth.len()));
    }
    if let Some(b) = proof.flipped_bits.iter().find(|b| b.len() > 2) {
        return Err(ProofError::FlippedBitTooLong(b.len()));
    }
    let inner = proof
        .closest_proof
        .as_ref()
        .ok_or(ProofError::Malformed("closest proof is missing"))?;
    let closest_proof = decompact_proof(inner)?;
    Ok(SparseMerkleClosestProof {
        path: proof.path.clone(),
        flipped_bits: proof
            .flipped_bits
            .iter()
            .map(|b| min_be_to_int(b))
            .collect(),
        depth: min_be_to_int(&proof.depth),
        closest_path: proof.closest_path.clone(),
        closest_value_hash: proof.closest_value_hash.clone(),
        closest_proof: Some(closest_proof),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn minimal_big_endian_round_trips() {
        for (x, b) in [
            (0i64, vec![0u8]),
            (7, vec![7]),
            (255, vec![255]),
            (256, vec![1, 0]),
        ] {
            assert_eq!(int_to_min_be(x), b);
            assert_eq!(min_be_to_int(&b), x);
        }
        assert_eq!(min_be_to_int(&[]), 0);
    }

    #[test]
    fn compaction_round_trips_and_masks_empty_nodes() {
        let full = vec![7u8; 48];
        let proof = SparseMerkleProof {
            side_nodes: vec![full.clone(), EMPTY.to_vec(), EMPTY.to_vec(), full.clone()],
            non_membership_leaf_data: None,
            sibling_data: None,
        };
        let c = compact_proof(&proof).expect("valid proof compacts");
        assert_eq!(c.bit_mask, vec![0b0110_0000]);
        assert_eq!(c.side_nodes, vec![full.clone(), full]);
        assert_eq!(c.num_side_nodes, 4);
        assert_eq!(decompact_proof(&c).expect("decompacts"), proof);
    }

    #[test]
    fn decompaction_rejects_padding_bits_that_starve_it() {
        let c = SparseCompactMerkleProof {
            side_nodes: vec![vec![1; 48]],
            bit_mask: vec![0b0000_0001],
            num_side_nodes: 2,
            ..Default::default()
        };
        assert!(matches!(decompact_proof(&c), Err(ProofError::Malformed(_))));
    }
}

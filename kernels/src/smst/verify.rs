//! Verification exactly as the chain runs it (spec `smst.md` §6).
//!
//! Every place where Go returns an error is a [`ProofError`]; every place where Go would
//! panic (which fails the transaction on chain) is [`ProofError::Malformed`]. A proof that
//! is well formed but does not lead to the root is `Ok(false)`.

use super::hash::{
    DIGEST_LEN, Digest, EMPTY, MAX_DEPTH, PATH_LEN, SUM_COUNT_LEN, be_u64, bit, digest_of_encoding,
    flip_bit, hash_serialization, inner_digest, leaf_digest, path_of,
};
use super::proof::{
    SparseCompactMerkleClosestProof, SparseCompactMerkleProof, SparseMerkleClosestProof,
    SparseMerkleProof, decompact_closest_proof, decompact_proof,
};

/// Why a proof was rejected before its root was compared.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ProofError {
    #[error("too many side nodes: got {0} but max is 256")]
    TooManySideNodes(usize),
    #[error("invalid non-membership leaf data size: got {0} but min is 33")]
    NonMembershipLeafDataSize(usize),
    #[error("invalid side node size: got {0} but want 48")]
    SideNodeSize(usize),
    #[error("invalid sibling data hash")]
    SiblingDataHash,
    #[error("non-membership proof on related leaf")]
    NonMembershipOnRelatedLeaf,
    #[error("invalid number of side nodes: got {0}, min is 0 and max is 256")]
    NumSideNodesOutOfRange(i64),
    #[error("invalid bit mask length: got {got} but want {want}")]
    BitMaskLength { got: usize, want: usize },
    #[error("invalid number of side nodes: got {got} want {want}")]
    SideNodeCount { got: usize, want: i64 },
    #[error("invalid path length: got {0}, want 32")]
    PathLength(usize),
    #[error("invalid depth: encoded in {0} bytes but max is 2")]
    DepthTooLong(usize),
    #[error("invalid flipped bit: encoded in {0} bytes but max is 2")]
    FlippedBitTooLong(usize),
    #[error("invalid depth: got {0}, outside of [0, 256]")]
    DepthOutOfRange(i64),
    #[error("invalid flipped bit index {bit}: outside of [0, {depth}]")]
    FlippedBitOutOfRange { bit: i64, depth: i64 },
    #[error("invalid closest path (not equal at bit: {0})")]
    ClosestPathPrefix(usize),
    /// Input on which the Go implementation panics; the chain rejects the transaction.
    #[error("malformed proof: {0}")]
    Malformed(&'static str),
}

impl ProofError {
    /// Short static category, for metrics and logs.
    pub fn category(&self) -> &'static str {
        match self {
            Self::Malformed(_) => "malformed",
            Self::SiblingDataHash => "sibling_data",
            Self::NumSideNodesOutOfRange(_)
            | Self::BitMaskLength { .. }
            | Self::SideNodeCount { .. } => "compact",
            _ => "invalid",
        }
    }
}

/// The plain-proof sanity checks (Go's `SparseMerkleProof.validateBasic`).
pub fn validate_proof(proof: &SparseMerkleProof) -> Result<(), ProofError> {
    if proof.side_nodes.len() > MAX_DEPTH {
        return Err(ProofError::TooManySideNodes(proof.side_nodes.len()));
    }
    if let Some(d) = proof
        .non_membership_leaf_data
        .as_ref()
        .filter(|d| d.len() < 1 + PATH_LEN)
    {
        return Err(ProofError::NonMembershipLeafDataSize(d.len()));
    }
    let Some(sibling) = &proof.sibling_data else {
        return Ok(());
    };
    if proof.side_nodes.is_empty() {
        return Ok(());
    }
    // Side-node sizes are only enforced together with SiblingData, as in Go.
    if let Some(n) = proof.side_nodes.iter().find(|n| n.len() != DIGEST_LEN) {
        return Err(ProofError::SideNodeSize(n.len()));
    }
    if sibling.is_empty() {
        return Err(ProofError::Malformed("empty sibling data"));
    }
    let digest =
        hash_serialization(sibling).ok_or(ProofError::Malformed("sibling data too short"))?;
    if digest != proof.side_nodes[0] {
        return Err(ProofError::SiblingDataHash);
    }
    Ok(())
}

/// The closest-proof sanity checks (Go's `SparseMerkleClosestProof.validateBasic`).
pub fn validate_closest(proof: &SparseMerkleClosestProof) -> Result<(), ProofError> {
    if proof.path.len() != PATH_LEN {
        return Err(ProofError::PathLength(proof.path.len()));
    }
    if !(0..=MAX_DEPTH as i64).contains(&proof.depth) {
        return Err(ProofError::DepthOutOfRange(proof.depth));
    }
    let depth = proof.depth as usize;
    let mut working = proof.path.clone();
    for &b in &proof.flipped_bits {
        if b < 0 || b > proof.depth {
            return Err(ProofError::FlippedBitOutOfRange {
                bit: b,
                depth: proof.depth,
            });
        }
        if b as usize >= MAX_DEPTH {
            return Err(ProofError::Malformed("flipped bit 256 is outside the path"));
        }
        flip_bit(&mut working, b as usize);
    }
    // Go counts matching bits until the first difference, reading ClosestPath as far as
    // it needs to; running off its end is a panic.
    let mut prefix = MAX_DEPTH;
    for i in 0..MAX_DEPTH {
        if i / 8 >= proof.closest_path.len() {
            return Err(ProofError::Malformed(
                "closest path shorter than its prefix",
            ));
        }
        if bit(&working, i) != bit(&proof.closest_path, i) {
            prefix = i;
            break;
        }
    }
    if prefix < depth {
        return Err(ProofError::ClosestPathPrefix(prefix));
    }
    let inner = proof
        .closest_proof
        .as_ref()
        .ok_or(ProofError::Malformed("closest proof is missing"))?;
    validate_proof(inner)
}

/// Recomputes the root from a leaf digest (or the empty digest) and the side nodes.
fn root_from(path: &[u8], mut current: Digest, side_nodes: &[Vec<u8>]) -> Digest {
    let n = side_nodes.len();
    for (i, node) in side_nodes.iter().enumerate() {
        // Go copies each node into a 48-byte buffer: short ones are zero-padded, long
        // ones truncated. Only reachable without SiblingData.
        let mut s = [0u8; DIGEST_LEN];
        let k = node.len().min(DIGEST_LEN);
        s[..k].copy_from_slice(&node[..k]);
        current = if bit(path, n - 1 - i) == 0 {
            inner_digest(&current, &s)
        } else {
            inner_digest(&s, &current)
        };
    }
    current
}

/// Go's `VerifySumProof` with the path already computed: `path` is the leaf path (only
/// its first 32 bytes are read), `value` the raw value.
fn verify_sum_at_path(
    proof: &SparseMerkleProof,
    root: &[u8],
    path: &[u8],
    value: &[u8],
    sum: u64,
    count: u64,
) -> Result<bool, ProofError> {
    validate_proof(proof)?;
    let path = &path[..PATH_LEN];
    let start = if value.is_empty() && sum == 0 {
        // Non-membership claim.
        match &proof.non_membership_leaf_data {
            None => EMPTY,
            Some(data) => {
                if data[0] != 0x00 {
                    return Err(ProofError::Malformed(
                        "non-membership leaf data is not a leaf",
                    ));
                }
                if &data[1..1 + PATH_LEN] == path {
                    return Err(ProofError::NonMembershipOnRelatedLeaf);
                }
                digest_of_encoding(data).ok_or(ProofError::Malformed("leaf data too short"))?
            }
        }
    } else {
        let mut vh = Vec::with_capacity(value.len() + SUM_COUNT_LEN);
        vh.extend_from_slice(value);
        vh.extend_from_slice(&sum.to_be_bytes());
        vh.extend_from_slice(&count.to_be_bytes());
        leaf_digest(path, &vh)
    };
    Ok(root_from(path, start, &proof.side_nodes).as_slice() == root)
}

/// `VerifySumProof(proof, root, key, value, sum, count)`: membership of `key` with
/// `value`, `sum` and `count`, or non-membership when `value` is empty and `sum` is 0.
pub fn verify_sum_proof(
    proof: &SparseMerkleProof,
    root: &[u8],
    key: &[u8],
    value: &[u8],
    sum: u64,
    count: u64,
) -> Result<bool, ProofError> {
    verify_sum_at_path(proof, root, &path_of(key), value, sum, count)
}

/// `VerifyCompactSumProof`: decompaction, then [`verify_sum_proof`].
pub fn verify_compact_sum_proof(
    proof: &SparseCompactMerkleProof,
    root: &[u8],
    key: &[u8],
    value: &[u8],
    sum: u64,
    count: u64,
) -> Result<bool, ProofError> {
    verify_sum_proof(&decompact_proof(proof)?, root, key, value, sum, count)
}

/// `VerifyClosestProof(proof, root)` as the chain runs it.
pub fn verify_closest_proof(
    proof: &SparseMerkleClosestProof,
    root: &[u8],
) -> Result<bool, ProofError> {
    validate_closest(proof)?;
    if proof.closest_path.len() < PATH_LEN {
        return Err(ProofError::Malformed("closest path shorter than 32 bytes"));
    }
    let inner = proof
        .closest_proof
        .as_ref()
        .ok_or(ProofError::Malformed("closest proof is missing"))?;
    match &proof.closest_value_hash {
        None => verify_sum_at_path(inner, root, &proof.closest_path, &[], 0, 0),
        Some(data) => {
            if data.len() < SUM_COUNT_LEN {
                return Err(ProofError::Malformed(
                    "closest value hash shorter than 16 bytes",
                ));
            }
            let n = data.len() - SUM_COUNT_LEN;
            let (sum, count) = (be_u64(data, n), be_u64(data, n + 8));
            verify_sum_at_path(inner, root, &proof.closest_path, &data[..n], sum, count)
        }
    }
}

/// `VerifyCompactClosestProof`: decompaction, then [`verify_closest_proof`].
pub fn verify_compact_closest_proof(
    proof: &SparseCompactMerkleClosestProof,
    root: &[u8],
) -> Result<bool, ProofError> {
    verify_closest_proof(&decompact_closest_proof(proof)?, root)
}

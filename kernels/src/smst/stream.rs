//! Roots and closest proofs from leaves streamed in ascending path order.
//!
//! The compact trie is a pure function of its sorted leaf set (spec §2.1), so a single
//! pass with a stack computes it: each new leaf closes every pending subtree that lies
//! deeper than its divergence from the previous leaf. The stack never holds more than
//! 257 subtrees, so memory is independent of the number of leaves. The same pass can
//! follow one target path and collect its closest proof (spec §5.2): at every branching
//! the subtree on the target's side is kept, the other becomes a side node.

use super::hash::{
    Digest, EMPTY, MAX_DEPTH, PATH_LEN, Path, bit, ext_encoding, first_diff_bit, inner_digest,
    inner_encoding, leaf_digest_parts, wrap,
};
use super::proof::{ProofOptions, SparseMerkleClosestProof, SparseMerkleProof};
use super::{ProveError, Root};

/// A leaf pushed out of order.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum OrderError {
    #[error("leaf paths must be strictly ascending: {} follows {}", hex32(.next), hex32(.prev))]
    NotAscending { prev: Path, next: Path },
}

fn hex32(p: &Path) -> String {
    crate::hex::encode(p)
}

/// The proof-tracking state of one pending subtree: the leaf the target's walk reaches
/// inside it, and the side nodes met on the way (deepest first).
#[derive(Debug)]
struct Track {
    leaf_path: Path,
    value_hash: Vec<u8>,
    side_nodes: Vec<Digest>,
    sibling_data: Option<Vec<u8>>,
}

/// A completed subtree waiting for its parent.
#[derive(Debug)]
struct Pending {
    /// Digest of the subtree as rooted at `split` (a leaf's digest for a single leaf).
    digest: Digest,
    /// Depth of the subtree's first branching; `MAX_DEPTH` for a single leaf.
    split: usize,
    /// Path of the subtree's first leaf: its bits above `split` are the subtree's.
    first: Path,
    /// The branching node's children (after lifting), for `SiblingData`.
    children: Option<Box<(Digest, Digest)>>,
    track: Option<Track>,
}

impl Pending {
    fn is_leaf(&self) -> bool {
        self.split == MAX_DEPTH
    }

    /// The subtree's digest when hung at depth `top` (≤ its split).
    fn lifted(&self, top: usize) -> Digest {
        if self.is_leaf() {
            self.digest
        } else {
            wrap(self.digest, &self.first, top, self.split)
        }
    }

    /// What Go would serialize for this subtree hung at `top` when it is the proven
    /// leaf's sibling: a leaf, an inner node, or an extension. An extension's stored path
    /// is the subtree's first leaf here; Go stores the path of whichever key created the
    /// extension, so those bytes can differ from Go's (only past `split`).
    fn encoding_at(&self, top: usize, leaf: &Track) -> Vec<u8> {
        if self.is_leaf() {
            let mut v = Vec::with_capacity(1 + PATH_LEN + leaf.value_hash.len());
            v.push(0);
            v.extend_from_slice(&leaf.leaf_path);
            v.extend_from_slice(&leaf.value_hash);
            return v;
        }
        if self.split == top {
            let (l, r) = self
                .children
                .as_deref()
                .expect("branching subtrees keep their children");
            inner_encoding(l, r).to_vec()
        } else {
            ext_encoding(top as u8, self.split as u8, &self.first, &self.digest).to_vec()
        }
    }
}

/// Builds the root (and optionally one closest proof) from leaves pushed in strictly
/// ascending path order.
#[derive(Debug)]
pub struct SortedBuilder {
    stack: Vec<Pending>,
    /// `bounds[k]` is the depth where `stack[k]` and `stack[k + 1]` diverge; strictly
    /// increasing.
    bounds: Vec<usize>,
    last: Option<Path>,
    target: Option<(Path, ProofOptions)>,
}

impl Default for SortedBuilder {
    fn default() -> Self {
        Self::new()
    }
}

impl SortedBuilder {
    /// A builder that computes the root only.
    pub fn new() -> Self {
        Self {
            stack: Vec::with_capacity(MAX_DEPTH + 1),
            bounds: Vec::with_capacity(MAX_DEPTH),
            last: None,
            target: None,
        }
    }

    /// A builder that also collects the closest proof toward `target` (32 bytes).
    pub fn with_target(target: &[u8], opts: ProofOptions) -> Result<Self, ProveError> {
        let target: Path = target
            .try_into()
            .map_err(|_| ProveError::PathLength(target.len()))?;
        let mut b = Self::new();
        b.target = Some((target, opts));
        Ok(b)
    }

    /// Adds the leaf at `path` with its raw `value` and `weight`. Paths must be strictly
    /// ascending; a repeated or smaller path is refused and the builder is unchanged.
    pub fn push(&mut self, path: &Path, value: &[u8], weight: u64) -> Result<(), OrderError> {
        if let Some(prev) = &self.last {
            let Some(split) = first_diff_bit(prev, path, 0).filter(|_| prev < path) else {
                return Err(OrderError::NotAscending {
                    prev: *prev,
                    next: *path,
                });
            };
            while self.bounds.last().is_some_and(|&b| b > split) {
                self.merge_top();
            }
            self.bounds.push(split);
        }
        self.last = Some(*path);
        let track = self.target.is_some().then(|| {
            let mut value_hash = Vec::with_capacity(value.len() + 16);
            value_hash.extend_from_slice(value);
            value_hash.extend_from_slice(&weight.to_be_bytes());
            value_hash.extend_from_slice(&1u64.to_be_bytes());
            Track {
                leaf_path: *path,
                value_hash,
                side_nodes: Vec::new(),
                sibling_data: None,
            }
        });
        self.stack.push(Pending {
            digest: leaf_digest_parts(path, value, weight),
            split: MAX_DEPTH,
            first: *path,
            children: None,
            track,
        });
        Ok(())
    }

    /// Merges the two topmost subtrees at their divergence depth.
    fn merge_top(&mut self) {
        let split = self.bounds.pop().expect("merge needs a boundary");
        let right = self.stack.pop().expect("merge needs two subtrees");
        let left = self.stack.pop().expect("merge needs two subtrees");
        let (l, r) = (left.lifted(split + 1), right.lifted(split + 1));
        let digest = inner_digest(&l, &r);
        let first = left.first;
        let track = self.target.as_ref().map(|(target, opts)| {
            let (chosen, other, other_digest) = if bit(target, split) == 0 {
                (left, right, r)
            } else {
                (right, left, l)
            };
            let chosen_is_leaf = chosen.is_leaf();
            let chosen_split = chosen.split;
            let mut track = chosen.track.expect("tracked builders track every subtree");
            if chosen_is_leaf && opts.sibling_data {
                let other_leaf = other.track.as_ref().expect("tracked");
                track.sibling_data = Some(other.encoding_at(split + 1, other_leaf));
            }
            if !chosen_is_leaf {
                let levels = chosen_split - (split + 1);
                track.side_nodes.extend(std::iter::repeat_n(EMPTY, levels));
            }
            track.side_nodes.push(other_digest);
            track
        });
        let children = self.target.is_some().then(|| Box::new((l, r)));
        self.stack.push(Pending {
            digest,
            split,
            first,
            children,
            track,
        });
    }

    fn collapse(&mut self) -> Option<Pending> {
        while self.stack.len() > 1 {
            self.merge_top();
        }
        self.stack.pop()
    }

    /// The root of everything pushed.
    pub fn finish(mut self) -> Root {
        Root(self.collapse().map_or(EMPTY, |top| top.lifted(0)))
    }

    /// The root and the closest proof toward the target given at construction (the
    /// builder must have been made with [`SortedBuilder::with_target`]).
    pub fn finish_with_proof(mut self) -> (Root, SparseMerkleClosestProof) {
        let (target, _) = self.target.expect("finish_with_proof needs a target");
        let Some(top) = self.collapse() else {
            return (Root(EMPTY), super::empty_trie_closest_proof(&target));
        };
        let root = Root(top.lifted(0));
        let top_is_leaf = top.is_leaf();
        let mut track = top.track.expect("tracked");
        if !top_is_leaf {
            track
                .side_nodes
                .extend(std::iter::repeat_n(EMPTY, top.split));
        }
        let depth = track.side_nodes.len();
        // Branchings always follow the target; the bits the walk had to flip are exactly
        // those above the leaf where its path and the target differ.
        let flipped_bits = (0..depth)
            .filter(|&i| bit(&track.leaf_path, i) != bit(&target, i))
            .map(|i| i as i64)
            .collect();
        let proof = SparseMerkleClosestProof {
            path: target.to_vec(),
            flipped_bits,
            depth: depth as i64,
            closest_path: track.leaf_path.to_vec(),
            closest_value_hash: Some(track.value_hash),
            closest_proof: Some(SparseMerkleProof {
                side_nodes: track.side_nodes.iter().map(|d| d.to_vec()).collect(),
                non_membership_leaf_data: None,
                sibling_data: track.sibling_data,
            }),
        };
        (root, proof)
    }
}

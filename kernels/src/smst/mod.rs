//! The sparse Merkle sum trie (SMST) exactly as poktroll uses it: pokt-network/smt
//! v0.14.1 with SHA-256 and no value hasher (spec `smst.md`).
//!
//! Two ways to compute a session's root and closest proof, behind one trait
//! ([`SessionTrie`]):
//! - [`MemTrie`]: an in-memory trie with Go's node shapes; proofs are byte-identical to
//!   Go's, `SiblingData` included. For small sessions and tests.
//! - [`SortedLeaves`] / [`SortedBuilder`]: a single pass over leaves sorted by path with
//!   memory independent of their number. This is what a store keyed by leaf path uses.
//!
//! Verification ([`verify_closest_proof`], [`verify_chain_proof`], …) accepts and rejects
//! exactly what the chain does; Go panics become errors.
//!
//! ```
//! use lode_kernels::smst::{self, MemTrie, ProofOptions, SessionTrie, SortedBuilder};
//!
//! // A session of three relays: key = relay hash, value = relay bytes, weight = compute units.
//! let relays: [(&[u8], &[u8], u64); 3] = [(b"r1", b"relay one", 10), (b"r2", b"relay two", 20), (b"r3", b"three", 5)];
//! let mut trie = MemTrie::new();
//! for (key, value, cu) in relays {
//!     trie.update(key, value, cu);
//! }
//! let root = trie.root();
//! assert_eq!((root.sum(), root.count()), (35, 3));
//!
//! // The streaming form gives the same root from leaves sorted by path.
//! let mut leaves: Vec<_> = relays.iter().map(|(k, v, w)| (smst::path_of(k), *v, *w)).collect();
//! leaves.sort();
//! let mut builder = SortedBuilder::new();
//! for (path, value, weight) in &leaves {
//!     builder.push(path, value, *weight).unwrap();
//! }
//! assert_eq!(builder.finish(), root);
//!
//! // The proof the chain asks for, and the chain's check of it.
//! let proof = trie.prove_closest_for_chain(&smst::sha256(b"seed block hash and session id"), ProofOptions::SMALL).unwrap();
//! assert_eq!(smst::verify_chain_proof(&proof, root.as_bytes()), Ok(true));
//! ```

mod codec;
mod hash;
mod memory;
mod proof;
mod stream;
mod verify;

pub use hash::{
    DIGEST_LEN, Digest, EMPTY, MAX_DEPTH, PATH_LEN, Path, bit, count_of, digest_of_encoding,
    hash_serialization, inner_digest, leaf_digest, leaf_digest_parts, leaf_value_hash, path_of,
    sha256, sum_of, wrap,
};
pub use memory::{KeyNotFound, MemTrie};
pub use proof::{
    ProofOptions, SparseCompactMerkleClosestProof, SparseCompactMerkleProof,
    SparseMerkleClosestProof, SparseMerkleProof, compact_closest_proof, compact_proof,
    decompact_closest_proof, decompact_proof, int_to_min_be, min_be_to_int,
};
pub use stream::{OrderError, SortedBuilder};
pub use verify::{
    ProofError, validate_closest, validate_proof, verify_closest_proof,
    verify_compact_closest_proof, verify_compact_sum_proof, verify_sum_proof,
};

use crate::gob::DecodeError;

/// A 48-byte trie root: hash ‖ total weight ‖ number of leaves. The empty trie's root is
/// 48 zero bytes.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Root(pub Digest);

impl Root {
    /// The 32-byte hash part.
    pub fn hash(&self) -> &[u8] {
        &self.0[..32]
    }

    /// Total weight (compute units in poktroll), modulo 2^64.
    pub fn sum(&self) -> u64 {
        sum_of(&self.0)
    }

    /// Number of leaves (relays in poktroll).
    pub fn count(&self) -> u64 {
        count_of(&self.0)
    }

    pub fn as_bytes(&self) -> &[u8; DIGEST_LEN] {
        &self.0
    }
}

impl std::fmt::Debug for Root {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Root({})", crate::hex::encode(&self.0))
    }
}

/// Why a proof could not be produced.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ProveError {
    #[error("invalid path does not match path hasher size: got {0} bytes, want 32")]
    PathLength(usize),
}

/// The closest proof of an empty trie, as Go builds it: the path flips at bit 0, and the
/// closest path is the 48-byte empty digest.
pub(crate) fn empty_trie_closest_proof(target: &Path) -> SparseMerkleClosestProof {
    SparseMerkleClosestProof {
        path: target.to_vec(),
        flipped_bits: vec![0],
        depth: 0,
        closest_path: EMPTY.to_vec(),
        closest_value_hash: None,
        closest_proof: Some(SparseMerkleProof::default()),
    }
}

/// What both trie forms offer: the session's root and its closest proof.
pub trait SessionTrie {
    type Error;

    /// The 48-byte root.
    fn root(&mut self) -> Result<Root, Self::Error>;

    /// The closest proof toward the 32-byte `path` (in poktroll,
    /// SHA-256(seed block hash ‖ session id)).
    fn prove_closest(
        &mut self,
        path: &[u8],
        opts: ProofOptions,
    ) -> Result<SparseMerkleClosestProof, Self::Error>;

    /// The proof as submitted on chain: compacted and gob-encoded
    /// (`MsgSubmitProof.proof`).
    fn prove_closest_for_chain(
        &mut self,
        path: &[u8],
        opts: ProofOptions,
    ) -> Result<Vec<u8>, Self::Error> {
        Ok(self.prove_closest(path, opts)?.to_compact_gob_unchecked())
    }
}

impl SessionTrie for MemTrie {
    type Error = ProveError;

    fn root(&mut self) -> Result<Root, ProveError> {
        Ok(MemTrie::root(self))
    }

    fn prove_closest(
        &mut self,
        path: &[u8],
        opts: ProofOptions,
    ) -> Result<SparseMerkleClosestProof, ProveError> {
        MemTrie::prove_closest(self, path, opts)
    }
}

/// One leaf as a sorted source yields it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Leaf {
    pub path: Path,
    pub value: Vec<u8>,
    pub weight: u64,
}

/// Errors of the streaming form: the source's own, or leaves out of order.
#[derive(Debug, thiserror::Error)]
pub enum StreamError<E> {
    #[error(transparent)]
    Prove(#[from] ProveError),
    #[error(transparent)]
    Order(#[from] OrderError),
    #[error("leaf source: {0}")]
    Source(#[source] E),
}

/// A session trie given as a function that opens a fresh iterator over its leaves in
/// ascending path order (e.g. a database range scan). Each call to `root` or
/// `prove_closest` makes one pass.
#[derive(Debug)]
pub struct SortedLeaves<F> {
    open: F,
}

impl<F, I, E> SortedLeaves<F>
where
    F: FnMut() -> I,
    I: Iterator<Item = Result<Leaf, E>>,
{
    pub fn new(open: F) -> Self {
        Self { open }
    }

    fn feed(&mut self, builder: &mut SortedBuilder) -> Result<(), StreamError<E>> {
        for leaf in (self.open)() {
            let leaf = leaf.map_err(StreamError::Source)?;
            builder.push(&leaf.path, &leaf.value, leaf.weight)?;
        }
        Ok(())
    }
}

impl<F, I, E> SessionTrie for SortedLeaves<F>
where
    F: FnMut() -> I,
    I: Iterator<Item = Result<Leaf, E>>,
{
    type Error = StreamError<E>;

    fn root(&mut self) -> Result<Root, Self::Error> {
        let mut b = SortedBuilder::new();
        self.feed(&mut b)?;
        Ok(b.finish())
    }

    fn prove_closest(
        &mut self,
        path: &[u8],
        opts: ProofOptions,
    ) -> Result<SparseMerkleClosestProof, Self::Error> {
        let mut b = SortedBuilder::with_target(path, opts)?;
        self.feed(&mut b)?;
        Ok(b.finish_with_proof().1)
    }
}

/// The stage of the chain's proof pipeline that rejected a proof.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ChainProofError {
    #[error("proof bytes: {0}")]
    Unmarshal(#[from] DecodeError),
    #[error("decompacting proof: {0}")]
    Decompact(#[source] ProofError),
    #[error("verifying proof: {0}")]
    Verify(#[source] ProofError),
}

/// What the chain does with `MsgSubmitProof.proof`: gob-decode, decompact, and verify
/// the closest proof against the claimed root. `Ok(false)` means a well-formed proof that
/// does not lead to `root`.
pub fn verify_chain_proof(proof_gob: &[u8], root: &[u8]) -> Result<bool, ChainProofError> {
    let compact = SparseCompactMerkleClosestProof::from_gob(proof_gob)?;
    let proof = decompact_closest_proof(&compact).map_err(ChainProofError::Decompact)?;
    verify_closest_proof(&proof, root).map_err(ChainProofError::Verify)
}

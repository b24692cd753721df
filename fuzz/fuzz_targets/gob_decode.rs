//! All four proof decoders on arbitrary bytes; whatever decodes must re-encode to bytes
//! that decode to the same value.
#![no_main]

use libfuzzer_sys::fuzz_target;
use lode_kernels::smst::{
    self, SparseCompactMerkleClosestProof, SparseCompactMerkleProof, SparseMerkleClosestProof,
    SparseMerkleProof,
};

fuzz_target!(|data: &[u8]| {
    if let Ok(p) = SparseMerkleProof::from_gob(data) {
        assert_eq!(SparseMerkleProof::from_gob(&p.to_gob()).ok(), Some(p));
    }
    if let Ok(p) = SparseCompactMerkleProof::from_gob(data) {
        assert_eq!(SparseCompactMerkleProof::from_gob(&p.to_gob()).ok(), Some(p.clone()));
        let _ = smst::decompact_proof(&p);
    }
    if let Ok(p) = SparseMerkleClosestProof::from_gob(data) {
        assert_eq!(SparseMerkleClosestProof::from_gob(&p.to_gob()).ok(), Some(p.clone()));
        let _ = smst::compact_closest_proof(&p);
    }
    if let Ok(p) = SparseCompactMerkleClosestProof::from_gob(data) {
        assert_eq!(SparseCompactMerkleClosestProof::from_gob(&p.to_gob()).ok(), Some(p.clone()));
        let _ = smst::decompact_closest_proof(&p);
    }
});

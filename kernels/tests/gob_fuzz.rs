//! Fuzz-style tests run in CI: arbitrary and mutated bytes through the gob decoders and
//! the chain's proof pipeline never panic; they decode, or fail with an error.

mod common;

use lode_kernels::smst::{
    self, SparseCompactMerkleClosestProof, SparseCompactMerkleProof, SparseMerkleClosestProof,
    SparseMerkleProof,
};
use proptest::prelude::*;

/// Every decoder and verifier that takes bytes from the network.
fn exercise(bytes: &[u8], root: &[u8]) {
    let _ = SparseMerkleProof::from_gob(bytes);
    let _ = SparseCompactMerkleProof::from_gob(bytes);
    if let Ok(p) = SparseMerkleClosestProof::from_gob(bytes) {
        let _ = smst::verify_closest_proof(&p, root);
        let _ = smst::compact_closest_proof(&p);
    }
    if let Ok(p) = SparseCompactMerkleClosestProof::from_gob(bytes) {
        // A decoded proof re-encodes and decodes to itself.
        let again = SparseCompactMerkleClosestProof::from_gob(&p.to_gob())
            .expect("re-encoded proof decodes");
        assert_eq!(again, p);
    }
    let _ = smst::verify_chain_proof(bytes, root);
}

/// Valid on-chain proofs from the vectors, to mutate.
fn seeds() -> Vec<(Vec<u8>, Vec<u8>)> {
    let v = common::load("smst/smst_vectors.json");
    let mut out = Vec::new();
    for case in v["cases"].as_array().expect("cases") {
        for p in case["closest_proofs"].as_array().into_iter().flatten() {
            if let Some(g) = p.get("compact_proof_gob") {
                out.push((common::hex(g), common::hex(&case["root"])));
            }
        }
    }
    assert!(!out.is_empty(), "vector file holds proofs to mutate");
    out
}

#[derive(Debug, Clone)]
enum Mutation {
    Flip(usize, u8),
    Set(usize, u8),
    Insert(usize, Vec<u8>),
    Remove(usize, usize),
    Truncate(usize),
}

fn mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        (any::<usize>(), 1u8..).prop_map(|(i, x)| Mutation::Flip(i, x)),
        (any::<usize>(), any::<u8>()).prop_map(|(i, x)| Mutation::Set(i, x)),
        (any::<usize>(), prop::collection::vec(any::<u8>(), 1..12))
            .prop_map(|(i, b)| Mutation::Insert(i, b)),
        (any::<usize>(), 1usize..40).prop_map(|(i, n)| Mutation::Remove(i, n)),
        any::<usize>().prop_map(Mutation::Truncate),
    ]
}

fn apply(bytes: &mut Vec<u8>, m: &Mutation) {
    let n = bytes.len().max(1);
    match m {
        Mutation::Flip(i, x) => {
            if let Some(b) = bytes.get_mut(i % n) {
                *b ^= x;
            }
        }
        Mutation::Set(i, x) => {
            if let Some(b) = bytes.get_mut(i % n) {
                *b = *x;
            }
        }
        Mutation::Insert(i, b) => {
            let at = i % (bytes.len() + 1);
            bytes.splice(at..at, b.iter().copied());
        }
        Mutation::Remove(i, k) => {
            let at = i % n;
            let end = (at + k).min(bytes.len());
            if at < end {
                bytes.drain(at..end);
            }
        }
        Mutation::Truncate(i) => bytes.truncate(i % n),
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 20_000, ..ProptestConfig::default() })]

    #[test]
    fn arbitrary_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..700), root in prop::collection::vec(any::<u8>(), 0..60)) {
        exercise(&bytes, &root);
    }

    #[test]
    fn mutated_valid_proofs_never_panic(pick in any::<prop::sample::Index>(), muts in prop::collection::vec(mutation(), 1..6)) {
        let seeds = seeds_cached();
        let (gob, root) = &seeds[pick.index(seeds.len())];
        let mut bytes = gob.clone();
        for m in &muts {
            apply(&mut bytes, m);
        }
        exercise(&bytes, root);
    }
}

fn seeds_cached() -> &'static [(Vec<u8>, Vec<u8>)] {
    static SEEDS: std::sync::OnceLock<Vec<(Vec<u8>, Vec<u8>)>> = std::sync::OnceLock::new();
    SEEDS.get_or_init(seeds)
}

#[test]
fn hostile_streams_get_errors() {
    // Huge declared lengths, deep nesting and redefined builtins are errors, not panics
    // or allocations.
    let cases: &[&[u8]] = &[
        &[],
        &[0xf8, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff],
        &[0x05, 0x7f, 0x03, 0x01, 0x01],
        &[0x03, 0x03, 0x02, 0x00], // a definition of builtin id 1
        &[0x02, 0xff, 0x80],       // a value of an undefined type
    ];
    for c in cases {
        assert!(
            SparseCompactMerkleClosestProof::from_gob(c).is_err(),
            "{c:02x?} must be rejected"
        );
    }
}

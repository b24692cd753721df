//! Property tests: both trie forms agree with each other and with themselves under any
//! insertion order, every generated proof verifies, and tampering never makes a
//! different claim verify.

use lode_kernels::smst::{
    self, Leaf, MemTrie, Path, ProofOptions, SessionTrie, SortedBuilder, SortedLeaves,
    SparseCompactMerkleClosestProof,
};
use proptest::prelude::*;

/// Leaves whose paths share long prefixes (so extension nodes of every length appear):
/// each path is a common base with a random tail of 1..=32 bytes.
fn leaves() -> impl Strategy<Value = Vec<(Path, Vec<u8>, u64)>> {
    (
        any::<[u8; 32]>(),
        prop::collection::vec(
            (
                1usize..=32,
                any::<[u8; 32]>(),
                prop::collection::vec(any::<u8>(), 1..40),
                any::<u64>(),
            ),
            0..48,
        ),
    )
        .prop_map(|(base, items)| {
            let mut out: Vec<(Path, Vec<u8>, u64)> = Vec::new();
            for (tail, rnd, value, weight) in items {
                let mut path = base;
                path[32 - tail..].copy_from_slice(&rnd[32 - tail..]);
                if !out.iter().any(|(p, ..)| *p == path) {
                    out.push((path, value, weight % 1_000_000));
                }
            }
            out
        })
}

fn mem_trie(leaves: &[(Path, Vec<u8>, u64)]) -> MemTrie {
    let mut t = MemTrie::new();
    for (path, value, weight) in leaves {
        t.update_path(*path, smst::leaf_value_hash(value, *weight));
    }
    t
}

fn sorted(leaves: &[(Path, Vec<u8>, u64)]) -> Vec<Leaf> {
    let mut v: Vec<Leaf> = leaves
        .iter()
        .map(|(path, value, weight)| Leaf {
            path: *path,
            value: value.clone(),
            weight: *weight,
        })
        .collect();
    v.sort_by_key(|l| l.path);
    v
}

fn stream_of(
    leaves: Vec<Leaf>,
) -> SortedLeaves<impl FnMut() -> std::vec::IntoIter<Result<Leaf, std::convert::Infallible>>> {
    SortedLeaves::new(move || {
        leaves
            .iter()
            .cloned()
            .map(Ok)
            .collect::<Vec<_>>()
            .into_iter()
    })
}

/// Bits of an extension `SiblingData`'s stored path past its end may differ between the
/// forms (Go stores the creating key's path); everything else is equal.
fn sibling_data_equivalent(a: &Option<Vec<u8>>, b: &Option<Vec<u8>>) -> bool {
    match (a, b) {
        (Some(a), Some(b)) if a.len() == 99 && b.len() == 99 && a[0] == 2 && b[0] == 2 => {
            a[..3] == b[..3]
                && a[35..] == b[35..]
                && (0..a[2] as usize).all(|i| smst::bit(&a[3..35], i) == smst::bit(&b[3..35], i))
        }
        (a, b) => a == b,
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 192, ..ProptestConfig::default() })]

    #[test]
    fn roots_agree_across_forms_and_insertion_orders(leaves in leaves(), seed in any::<u64>()) {
        let mut forward = mem_trie(&leaves);
        let mut shuffled = leaves.clone();
        // A deterministic shuffle from the seed.
        let mut s = seed | 1;
        for i in (1..shuffled.len()).rev() {
            s ^= s << 13; s ^= s >> 7; s ^= s << 17;
            shuffled.swap(i, (s % (i as u64 + 1)) as usize);
        }
        let mut other = mem_trie(&shuffled);
        let root = forward.root();
        prop_assert_eq!(root, other.root());
        prop_assert_eq!(root, stream_of(sorted(&leaves)).root().expect("sorted"));
        prop_assert_eq!(root.count(), leaves.len() as u64);
        prop_assert_eq!(root.sum(), leaves.iter().map(|l| l.2).sum::<u64>());
    }

    #[test]
    fn closest_proofs_verify_and_forms_agree(leaves in leaves(), target in any::<[u8; 32]>()) {
        let mut trie = mem_trie(&leaves);
        let root = trie.root();
        let mem = trie.prove_closest(&target, ProofOptions::default()).expect("32 bytes");
        prop_assert_eq!(smst::verify_closest_proof(&mem, &root.0), Ok(true));
        let mut stream = stream_of(sorted(&leaves));
        let st = stream.prove_closest(&target, ProofOptions::default()).expect("sorted");
        prop_assert!(sibling_data_equivalent(
            &st.closest_proof.as_ref().expect("present").sibling_data,
            &mem.closest_proof.as_ref().expect("present").sibling_data
        ));
        let strip = |mut p: smst::SparseMerkleClosestProof| { p.closest_proof.as_mut().expect("present").sibling_data = None; p };
        prop_assert_eq!(strip(st.clone()), strip(mem.clone()));
        prop_assert_eq!(smst::verify_closest_proof(&st, &root.0), Ok(true));
        // The leaf reached minimizes path XOR target.
        if let Some(best) = leaves.iter().map(|l| l.0).min_by_key(|p| std::array::from_fn::<u8, 32, _>(|i| p[i] ^ target[i])) {
            prop_assert_eq!(&mem.closest_path[..], &best[..]);
        }
        // The one-pass on-chain encoding equals compaction followed by gob.
        prop_assert_eq!(
            trie.prove_closest_for_chain(&target, ProofOptions::default()).expect("ok"),
            smst::compact_closest_proof(&mem).expect("valid").to_gob()
        );
        // What goes on chain decodes and verifies, with or without SiblingData.
        for opts in [ProofOptions::default(), ProofOptions::SMALL] {
            for gob in [trie.prove_closest_for_chain(&target, opts).expect("ok"), stream.prove_closest_for_chain(&target, opts).expect("ok")] {
                prop_assert_eq!(smst::verify_chain_proof(&gob, &root.0), Ok(true));
                let back = SparseCompactMerkleClosestProof::from_gob(&gob).expect("decodes");
                prop_assert_eq!(back.to_gob(), gob);
            }
        }
    }

    #[test]
    fn plain_proofs_verify(leaves in leaves(), absent in any::<[u8; 8]>()) {
        // Keys are hashed into paths here, so use real keys.
        let mut trie = MemTrie::new();
        for (i, (_, value, weight)) in leaves.iter().enumerate() {
            trie.update(&(i as u64).to_be_bytes(), value, *weight);
        }
        let root = trie.root();
        for (i, (_, value, weight)) in leaves.iter().enumerate() {
            let key = (i as u64).to_be_bytes();
            let p = trie.prove(&key, ProofOptions::default());
            prop_assert_eq!(smst::verify_sum_proof(&p, &root.0, &key, value, *weight, 1), Ok(true));
            prop_assert_eq!(smst::verify_sum_proof(&p, &root.0, &key, value, weight + 1, 1), Ok(false));
            let c = smst::compact_proof(&p).expect("valid");
            prop_assert_eq!(smst::verify_compact_sum_proof(&c, &root.0, &key, value, *weight, 1), Ok(true));
        }
        let key = [&b"absent-"[..], &absent[..]].concat();
        let p = trie.prove(&key, ProofOptions::default());
        prop_assert_eq!(smst::verify_sum_proof(&p, &root.0, &key, &[], 0, 0), Ok(true));
    }

    #[test]
    fn deletes_give_the_root_of_the_remaining_leaves(leaves in leaves(), mask in any::<u64>(), target in any::<[u8; 32]>()) {
        let mut trie = MemTrie::new();
        for (i, (_, value, weight)) in leaves.iter().enumerate() {
            trie.update(&(i as u64).to_be_bytes(), value, *weight);
        }
        let mut fresh = MemTrie::new();
        for (i, (_, value, weight)) in leaves.iter().enumerate() {
            if mask >> (i % 64) & 1 == 1 {
                prop_assert_eq!(trie.delete(&(i as u64).to_be_bytes()), Ok(()));
            } else {
                fresh.update(&(i as u64).to_be_bytes(), value, *weight);
            }
        }
        prop_assert_eq!(trie.delete(b"never inserted"), Err(smst::KeyNotFound));
        let root = trie.root();
        prop_assert_eq!(root, fresh.root());
        let p = trie.prove_closest(&target, ProofOptions::default()).expect("32 bytes");
        prop_assert_eq!(smst::verify_closest_proof(&p, &root.0), Ok(true));
    }

    #[test]
    fn single_bit_tampering_never_proves_a_different_claim(leaves in leaves().prop_filter("non-empty", |l| !l.is_empty()), target in any::<[u8; 32]>(), bit in any::<prop::sample::Index>(), root_bit in 0usize..384) {
        let mut trie = mem_trie(&leaves);
        let root = trie.root();
        let gob = trie.prove_closest_for_chain(&target, ProofOptions::default()).expect("ok");
        let honest = SparseCompactMerkleClosestProof::from_gob(&gob).expect("decodes");

        let mut bad_root = root.0;
        bad_root[root_bit / 8] ^= 0x80 >> (root_bit % 8);
        prop_assert!(!matches!(smst::verify_chain_proof(&gob, &bad_root), Ok(true)));

        let i = bit.index(gob.len() * 8);
        let mut bad = gob.clone();
        bad[i / 8] ^= 0x80 >> (i % 8);
        if let Ok(true) = smst::verify_chain_proof(&bad, &root.0) {
            // Accepted only if it still proves the same leaf with the same value and sum.
            let p = SparseCompactMerkleClosestProof::from_gob(&bad).expect("accepted proofs decode");
            prop_assert_eq!(&p.closest_path[..32], &honest.closest_path[..32]);
            prop_assert_eq!(p.closest_value_hash, honest.closest_value_hash);
        }
    }
}

#[test]
fn sorted_builder_refuses_out_of_order_and_duplicate_leaves() {
    let mut b = SortedBuilder::new();
    let (a, z) = ([1u8; 32], [9u8; 32]);
    b.push(&z, b"v", 1).expect("first leaf");
    assert!(b.push(&a, b"v", 1).is_err(), "smaller path refused");
    assert!(b.push(&z, b"v", 1).is_err(), "duplicate path refused");
    // A refusal leaves the builder usable and unchanged.
    let mut t = MemTrie::new();
    t.update_path(z, smst::leaf_value_hash(b"v", 1));
    assert_eq!(b.finish(), t.root());
}

#[test]
fn empty_trie_forms_agree() {
    let mut t = MemTrie::new();
    let target = [7u8; 32];
    let mem = t
        .prove_closest(&target, ProofOptions::default())
        .expect("32 bytes");
    let (root, st) = SortedBuilder::with_target(&target, ProofOptions::default())
        .expect("32 bytes")
        .finish_with_proof();
    assert_eq!(root, t.root());
    assert_eq!(root.0, smst::EMPTY);
    assert_eq!(mem, st);
    assert_eq!(smst::verify_closest_proof(&mem, &root.0), Ok(true));
    assert_eq!(mem.flipped_bits, vec![0]);
    assert_eq!(mem.closest_path.len(), 48);
}

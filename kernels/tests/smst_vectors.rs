//! Every case of `smst/smst_vectors.json` (produced by smt v0.14.1 in Go).

mod common;

use common::{Checker, hex, hex_opt, load, u64_str};
use lode_kernels::smst::{
    self, ChainProofError, Leaf, MemTrie, ProofOptions, SessionTrie, SortedLeaves,
    SparseCompactMerkleClosestProof, SparseCompactMerkleProof, SparseMerkleClosestProof,
    SparseMerkleProof,
};
use serde_json::Value;

fn plain_proof(v: &Value) -> SparseMerkleProof {
    SparseMerkleProof {
        side_nodes: v["side_nodes"]
            .as_array()
            .expect("side_nodes")
            .iter()
            .map(hex)
            .collect(),
        non_membership_leaf_data: hex_opt(&v["non_membership_leaf_data"]),
        sibling_data: hex_opt(&v["sibling_data"]),
    }
}

fn compact_proof(v: &Value) -> SparseCompactMerkleProof {
    SparseCompactMerkleProof {
        side_nodes: v["side_nodes"]
            .as_array()
            .expect("side_nodes")
            .iter()
            .map(hex)
            .collect(),
        non_membership_leaf_data: hex_opt(&v["non_membership_leaf_data"]),
        bit_mask: hex(&v["bit_mask"]),
        num_side_nodes: v["num_side_nodes"].as_i64().expect("num_side_nodes"),
        sibling_data: hex_opt(&v["sibling_data"]),
    }
}

fn closest_proof(v: &Value) -> SparseMerkleClosestProof {
    SparseMerkleClosestProof {
        path: hex(&v["path"]),
        flipped_bits: v["flipped_bits"]
            .as_array()
            .expect("flipped_bits")
            .iter()
            .map(|b| b.as_i64().expect("int"))
            .collect(),
        depth: v["depth"].as_i64().expect("depth"),
        closest_path: hex(&v["closest_path"]),
        closest_value_hash: hex_opt(&v["closest_value_hash"]),
        closest_proof: Some(plain_proof(&v["closest_proof"])),
    }
}

fn compact_closest(v: &Value) -> SparseCompactMerkleClosestProof {
    SparseCompactMerkleClosestProof {
        path: hex(&v["path"]),
        flipped_bits: v["flipped_bits"]
            .as_array()
            .expect("flipped_bits")
            .iter()
            .map(hex)
            .collect(),
        depth: hex(&v["depth"]),
        closest_path: hex(&v["closest_path"]),
        closest_value_hash: hex_opt(&v["closest_value_hash"]),
        closest_proof: Some(compact_proof(&v["closest_proof"])),
    }
}

/// The four proof types' gob codec, for one round-trip check.
trait Gob: Sized + PartialEq + std::fmt::Debug {
    fn encode(&self) -> Vec<u8>;
    fn decode(bytes: &[u8]) -> Option<Self>;
}

macro_rules! impl_gob {
    ($($t:ty),*) => {$(
        impl Gob for $t {
            fn encode(&self) -> Vec<u8> {
                self.to_gob()
            }
            fn decode(bytes: &[u8]) -> Option<Self> {
                <$t>::from_gob(bytes).ok()
            }
        }
    )*};
}
impl_gob!(
    SparseMerkleProof,
    SparseCompactMerkleProof,
    SparseMerkleClosestProof,
    SparseCompactMerkleClosestProof
);

/// `value` encodes to exactly Go's `bytes`, and Go's `bytes` decode to `value`.
fn check_gob<T: Gob>(c: &mut Checker, what: &str, value: &T, bytes: &[u8]) {
    c.eq(
        || format!("{what}: gob bytes"),
        value.encode(),
        bytes.to_vec(),
    );
    c.eq(
        || format!("{what}: gob decodes"),
        T::decode(bytes).as_ref(),
        Some(value),
    );
}

fn valid(v: &Value) -> bool {
    v["valid"].as_bool().expect("result object has `valid`")
}

/// The pipeline stage a Go failure happened in, as our error names it.
fn stage(e: &ChainProofError) -> &'static str {
    match e {
        ChainProofError::Unmarshal(_) => "unmarshal",
        ChainProofError::Decompact(smst::ProofError::Malformed(_))
        | ChainProofError::Verify(smst::ProofError::Malformed(_)) => "panic",
        ChainProofError::Decompact(_) => "decompact",
        ChainProofError::Verify(_) => "verify",
    }
}

/// Checks one result object against the chain pipeline on `gob` and `root`.
fn check_pipeline(c: &mut Checker, what: &str, gob: &[u8], root: &[u8], want: &Value) {
    let got = smst::verify_chain_proof(gob, root);
    c.eq(
        || format!("{what}: chain pipeline valid"),
        matches!(got, Ok(true)),
        valid(want),
    );
    if let (Err(e), Some(want_stage)) = (&got, want["failed_stage"].as_str()) {
        c.eq(
            || format!("{what}: failed stage ({e})"),
            stage(e),
            want_stage,
        );
    }
}

/// Where Go's sibling is an extension node, its stored path is whichever key created it;
/// the streaming prover stores the subtree's first leaf instead. Equal but for bits past
/// the extension's end (which no verifier reads).
fn same_up_to_extension_path(ours: &[u8], go: &[u8]) -> bool {
    if ours == go {
        return true;
    }
    if ours.len() != 99
        || go.len() != 99
        || ours[0] != 2
        || go[0] != 2
        || ours[..3] != go[..3]
        || ours[35..] != go[35..]
    {
        return false;
    }
    let end = go[2] as usize;
    (0..end).all(|i| smst::bit(&ours[3..35], i) == smst::bit(&go[3..35], i))
}

fn apply_ops(c: &mut Checker, name: &str, ops: &Value) -> MemTrie {
    let mut trie = MemTrie::new();
    // `null` is an empty op list (the empty trie).
    for (i, op) in ops.as_array().into_iter().flatten().enumerate() {
        let key = hex(&op["key"]);
        match op["op"].as_str().expect("op") {
            "update" => trie.update(&key, &hex(&op["value"]), u64_str(&op["weight"])),
            "delete" => {
                let before = trie.root();
                let got = trie.delete(&key);
                match op["expect_error"].as_str() {
                    Some(want) => {
                        c.eq(
                            || format!("{name} op {i}: delete error"),
                            got.map_err(|e| e.to_string()),
                            Err(want.to_string()),
                        );
                        c.eq(
                            || format!("{name} op {i}: failed delete leaves the trie unchanged"),
                            trie.root(),
                            before,
                        );
                    }
                    None => c.eq(|| format!("{name} op {i}: delete"), got, Ok(())),
                }
            }
            other => panic!("unknown op {other}"),
        }
    }
    trie
}

fn streamed(
    trie: &MemTrie,
) -> SortedLeaves<impl FnMut() -> std::vec::IntoIter<Result<Leaf, std::convert::Infallible>> + use<>>
{
    let leaves: Vec<Leaf> = trie
        .leaves()
        .into_iter()
        .map(|(path, vh)| Leaf {
            path,
            value: vh[..vh.len() - 16].to_vec(),
            weight: u64::from_be_bytes(
                vh[vh.len() - 16..vh.len() - 8].try_into().expect("8 bytes"),
            ),
        })
        .collect();
    SortedLeaves::new(move || {
        leaves
            .clone()
            .into_iter()
            .map(Ok)
            .collect::<Vec<_>>()
            .into_iter()
    })
}

#[test]
fn smst_vectors() {
    let v = load("smst/smst_vectors.json");
    let mut c = Checker::default();
    let (mut n_cases, mut n_proofs, mut n_closest, mut n_tampered) = (0, 0, 0, 0);
    let mut n_ext_siblings = 0;
    let cases = v["cases"].as_array().expect("cases");
    for case in cases {
        n_cases += 1;
        let name = case["name"].as_str().expect("name");
        let mut trie = apply_ops(&mut c, name, &case["ops"]);
        let root = trie.root();
        c.eq(
            || format!("{name}: root"),
            root.0.to_vec(),
            hex(&case["root"]),
        );

        if let Some(bad) = case.get("prove_closest_path") {
            let want = case["expect_error"].as_str().expect("expect_error");
            let got = trie.prove_closest(&hex(bad), ProofOptions::default());
            c.ok(
                || format!("{name}: bad path length must fail with {want}, got {got:?}"),
                matches!(&got, Err(e) if e.to_string().starts_with(want)),
            );
            let got = streamed(&trie).prove_closest(&hex(bad), ProofOptions::default());
            c.ok(
                || format!("{name}: streaming bad path length must fail"),
                got.is_err(),
            );
            continue;
        }

        c.eq(
            || format!("{name}: root digest"),
            root.hash().to_vec(),
            hex(&case["root_digest"]),
        );
        c.eq(|| format!("{name}: sum"), root.sum(), u64_str(&case["sum"]));
        c.eq(
            || format!("{name}: count"),
            root.count(),
            u64_str(&case["count"]),
        );
        let mut stream = streamed(&trie);
        c.eq(
            || format!("{name}: streaming root"),
            stream.root().expect("sorted"),
            root,
        );

        for g in case["gets"].as_array().expect("gets") {
            let key = hex(&g["key"]);
            let got = trie.get(&key).map(|(v, w)| (v.to_vec(), w));
            let want = g["present"]
                .as_bool()
                .expect("present")
                .then(|| (hex(&g["value"]), u64_str(&g["weight"])));
            c.eq(|| format!("{name}: get {}", g["key"]), got, want);
        }

        for (i, p) in case["proofs"]
            .as_array()
            .expect("proofs")
            .iter()
            .enumerate()
        {
            n_proofs += 1;
            let what = format!("{name} proofs[{i}]");
            let key = hex(&p["key"]);
            let want = plain_proof(&p["proof"]);
            let got = trie.prove(&key, ProofOptions::default());
            c.eq(|| format!("{what}: proof"), &got, &want);
            check_gob(
                &mut c,
                &format!("{what} proof"),
                &want,
                &hex(&p["proof_gob"]),
            );
            let want_compact = compact_proof(&p["compact_proof"]);
            c.eq(
                || format!("{what}: compact"),
                smst::compact_proof(&got).ok(),
                Some(want_compact.clone()),
            );
            check_gob(
                &mut c,
                &format!("{what} compact"),
                &want_compact,
                &hex(&p["compact_proof_gob"]),
            );
            c.eq(
                || format!("{what}: decompact"),
                smst::decompact_proof(&want_compact).ok(),
                Some(want.clone()),
            );
            let (value, weight, count) = if p["membership"].as_bool().expect("membership") {
                (hex(&p["value"]), u64_str(&p["weight"]), 1)
            } else {
                (Vec::new(), 0, 0)
            };
            let verify = smst::verify_sum_proof(&want, &root.0, &key, &value, weight, count);
            c.eq(
                || format!("{what}: verify ({verify:?})"),
                matches!(verify, Ok(true)),
                valid(&p["verify"]),
            );
            let verify =
                smst::verify_compact_sum_proof(&want_compact, &root.0, &key, &value, weight, count);
            c.eq(
                || format!("{what}: verify compact"),
                matches!(verify, Ok(true)),
                valid(&p["verify_compact"]),
            );
            if let Some(w) = p.get("verify_wrong_weight") {
                let verify = smst::verify_sum_proof(
                    &want,
                    &root.0,
                    &key,
                    &value,
                    weight.wrapping_add(1),
                    count,
                );
                c.eq(
                    || format!("{what}: verify wrong weight"),
                    matches!(verify, Ok(true)),
                    valid(w),
                );
            }
            // Without SiblingData the proof still verifies.
            let small = trie.prove(&key, ProofOptions::SMALL);
            c.ok(
                || format!("{what}: small proof has no sibling data"),
                small.sibling_data.is_none(),
            );
            let verify = smst::verify_sum_proof(&small, &root.0, &key, &value, weight, count);
            c.eq(
                || format!("{what}: small proof verifies like the full one"),
                matches!(verify, Ok(true)),
                valid(&p["verify"]),
            );
        }

        for (i, p) in case["closest_proofs"]
            .as_array()
            .expect("closest_proofs")
            .iter()
            .enumerate()
        {
            n_closest += 1;
            let what = format!("{name} closest_proofs[{i}]");
            let path = hex(&p["path"]);
            if let Some(panic) = p.get("prove_closest_panic") {
                // Go panics ("depth != extNode.pathStart") after deletions; we return the
                // logically closest leaf's proof, which must verify, and both forms agree.
                let got = trie
                    .prove_closest(&path, ProofOptions::default())
                    .expect("32-byte path");
                let v = smst::verify_closest_proof(&got, &root.0);
                c.ok(
                    || format!("{what}: where Go panicked ({panic}) our proof verifies: {v:?}"),
                    matches!(v, Ok(true)),
                );
                let s = stream
                    .prove_closest(&path, ProofOptions::default())
                    .expect("sorted");
                c.eq(
                    || format!("{what}: streaming = in-memory closest leaf"),
                    &s.closest_path,
                    &got.closest_path,
                );
                continue;
            }
            let want = closest_proof(&p["proof"]);
            let got = trie
                .prove_closest(&path, ProofOptions::default())
                .expect("32-byte path");
            c.eq(|| format!("{what}: proof"), &got, &want);
            check_gob(
                &mut c,
                &format!("{what} proof"),
                &want,
                &hex(&p["proof_gob"]),
            );
            let want_compact = compact_closest(&p["compact_proof"]);
            c.eq(
                || format!("{what}: compact"),
                smst::compact_closest_proof(&got).ok(),
                Some(want_compact.clone()),
            );
            let chain_gob = hex(&p["compact_proof_gob"]);
            check_gob(
                &mut c,
                &format!("{what} compact"),
                &want_compact,
                &chain_gob,
            );
            c.eq(
                || format!("{what}: prove_closest_for_chain"),
                trie.prove_closest_for_chain(&path, ProofOptions::default())
                    .ok(),
                Some(chain_gob.clone()),
            );
            c.eq(
                || format!("{what}: value"),
                want.value().map(<[u8]>::to_vec),
                hex_opt(&p["value"]),
            );
            let verify = smst::verify_closest_proof(&want, &root.0);
            c.eq(
                || format!("{what}: verify ({verify:?})"),
                matches!(verify, Ok(true)),
                valid(&p["verify"]),
            );
            let verify = smst::verify_compact_closest_proof(&want_compact, &root.0);
            c.eq(
                || format!("{what}: verify compact"),
                matches!(verify, Ok(true)),
                valid(&p["verify_compact"]),
            );
            check_pipeline(&mut c, &what, &chain_gob, &root.0, &p["chain_pipeline"]);

            // The streaming form: identical, except an extension sibling's stored path.
            let mut s = stream
                .prove_closest(&path, ProofOptions::default())
                .expect("sorted");
            let (ours, go) = (
                s.closest_proof.as_mut().and_then(|p| p.sibling_data.take()),
                want.closest_proof
                    .as_ref()
                    .and_then(|p| p.sibling_data.clone()),
            );
            c.ok(
                || format!("{what}: streaming sibling data {ours:?} vs Go {go:?}"),
                match (&ours, &go) {
                    (Some(a), Some(b)) => same_up_to_extension_path(a, b),
                    (a, b) => a == b,
                },
            );
            let mut want_stripped = want.clone();
            if let Some(p) = want_stripped.closest_proof.as_mut() {
                p.sibling_data = None;
            }
            c.eq(|| format!("{what}: streaming proof"), &s, &want_stripped);
            if let Some(sd) = ours {
                s.closest_proof.as_mut().expect("present").sibling_data = Some(sd);
            }
            let verify = smst::verify_closest_proof(&s, &root.0);
            c.eq(
                || format!("{what}: streaming proof verifies"),
                matches!(verify, Ok(true)),
                valid(&p["verify"]),
            );
            let small = stream
                .prove_closest(&path, ProofOptions::SMALL)
                .expect("sorted");
            let verify = smst::verify_closest_proof(&small, &root.0);
            c.eq(
                || format!("{what}: small streaming proof verifies"),
                matches!(verify, Ok(true)),
                valid(&p["verify"]),
            );
            // Wherever Go's sibling is a leaf, an inner node or absent, the streaming
            // form's on-chain bytes are Go's bytes.
            let go_sibling_is_extension = go.as_ref().is_some_and(|d| d.first() == Some(&2));
            if go_sibling_is_extension {
                n_ext_siblings += 1;
            } else {
                c.eq(
                    || format!("{what}: streaming on-chain gob"),
                    stream
                        .prove_closest_for_chain(&path, ProofOptions::default())
                        .ok(),
                    Some(chain_gob.clone()),
                );
            }
        }

        for (i, t) in case
            .get("tampered")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .enumerate()
        {
            n_tampered += 1;
            let what = format!("{name} tampered[{i}] {}", t["name"].as_str().unwrap_or("?"));
            check_pipeline(
                &mut c,
                &what,
                &hex(&t["compact_proof_gob"]),
                &hex(&t["root"]),
                &t["chain_pipeline"],
            );
            c.eq(
                || format!("{what}: must_fail"),
                t["must_fail"].as_bool(),
                Some(!valid(&t["chain_pipeline"])),
            );
        }
    }

    let variants = v["gob_type_id_variants"]
        .as_array()
        .expect("gob_type_id_variants");
    for (i, g) in variants.iter().enumerate() {
        let what = format!("gob_type_id_variants[{i}]");
        let case = cases
            .iter()
            .find(|c| c["name"] == g["case"])
            .expect("variant names a case");
        let idx = g["closest_proof_index"].as_u64().expect("index") as usize;
        let canonical = hex(&case["closest_proofs"][idx]["compact_proof_gob"]);
        if let Some(cg) = g.get("canonical_compact_proof_gob") {
            c.eq(
                || format!("{what}: canonical bytes"),
                hex(cg),
                canonical.clone(),
            );
        }
        let got = SparseCompactMerkleClosestProof::from_gob(&hex(&g["compact_proof_gob"]));
        c.eq(
            || format!("{what}: decodes like the canonical stream"),
            got.ok(),
            SparseCompactMerkleClosestProof::from_gob(&canonical).ok(),
        );
        let verify = smst::verify_chain_proof(&hex(&g["compact_proof_gob"]), &hex(&g["root"]));
        c.ok(
            || format!("{what}: verifies: {verify:?}"),
            matches!(verify, Ok(true)),
        );
    }

    println!(
        "smst vectors: {n_ext_siblings} closest proofs whose Go sibling is an extension node (streaming bytes differ only in its stored path)"
    );
    println!(
        "smst vectors: {n_cases} cases, {n_proofs} plain proofs, {n_closest} closest proofs, {n_tampered} tampered proofs, {} gob id variants",
        variants.len()
    );
    // Every entry of the file was visited.
    assert_eq!(n_cases, cases.len());
    let count = |field: &str| {
        cases
            .iter()
            .map(|c| c.get(field).and_then(Value::as_array).map_or(0, Vec::len))
            .sum::<usize>()
    };
    assert_eq!(
        (n_proofs, n_closest, n_tampered),
        (count("proofs"), count("closest_proofs"), count("tampered"))
    );
    assert!(n_cases > 0 && c.checked > 0);
    c.finish("smst vectors");
}

//! The chain's proof pipeline on arbitrary bytes: the first 48 bytes are the claimed
//! root, the rest the gob-encoded compact closest proof. Must never panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use lode_kernels::smst;

fuzz_target!(|data: &[u8]| {
    let (root, proof) = data.split_at(data.len().min(48));
    let _ = smst::verify_chain_proof(proof, root);
});

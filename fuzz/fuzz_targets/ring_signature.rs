//! Ring-signature parsing and verification on arbitrary bytes (the first 32 bytes are
//! the message): errors, never panics.
#![no_main]

use libfuzzer_sys::fuzz_target;
use lode_kernels::crypto::ring::RingSignature;

fuzz_target!(|data: &[u8]| {
    let (msg, sig) = data.split_at(data.len().min(32));
    let mut m = [0u8; 32];
    m[..msg.len()].copy_from_slice(msg);
    if let Ok(s) = RingSignature::from_bytes(sig) {
        let _ = s.verify(&m);
    }
});

//! The relay tier's prefix keys on arbitrary request bodies (the skimmer reads bytes
//! from outside). Must never panic, and keys stay bounded and in order.
#![no_main]

use libfuzzer_sys::fuzz_target;
use lode_kernels::prefix::{KeyBudget, MAX_BLOCKS, conversation_key, prefix_keys};

fuzz_target!(|data: &[u8]| {
    // Small blocks, so short inputs reach the block and tree paths too.
    let budget = KeyBudget {
        block_bytes: 64,
        max_bytes: 1 << 20,
    };
    if let Ok(k) = prefix_keys(data, budget) {
        assert!(!k.is_empty());
        assert_eq!(k.keys.len(), k.ends.len());
        assert!(k.len() <= MAX_BLOCKS + 4);
        assert!(k.ends.windows(2).all(|w| w[0] < w[1]));
        assert!(k.bytes(k.len()) as usize <= data.len());
    }
    let _ = conversation_key(data, budget);
});

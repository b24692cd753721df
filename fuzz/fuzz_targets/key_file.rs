//! Signing key files on arbitrary text: hex keys and `pocketd keys export` armor. Never
//! a panic; an accepted hex key round-trips through its hex form; refusals name the file.
#![no_main]

use libfuzzer_sys::fuzz_target;
use lode_chain_tx::keys;

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let result = if text.contains("-----BEGIN") {
        keys::parse_armored_key(&text, "fuzz passphrase", "fuzz.key")
    } else {
        keys::parse_hex_key(&text, "fuzz.key")
    };
    match result {
        Ok(key) => {
            let hex = lode_kernels::hex::encode(&key.to_bytes());
            let again = keys::parse_hex_key(&hex, "again").expect("a key's own hex parses");
            assert_eq!(again.to_bytes(), key.to_bytes());
        }
        Err(e) => assert!(e.to_string().contains("fuzz.key"), "{e}"),
    }
});

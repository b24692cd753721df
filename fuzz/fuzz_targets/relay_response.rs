//! `RelayResponse` decoding on arbitrary bytes: an error or a message, never a panic; what
//! decodes re-encodes to bytes that decode to the same message.
#![no_main]

use libfuzzer_sys::fuzz_target;
use lode_kernels::proto::{Message, RelayResponse};

fuzz_target!(|data: &[u8]| {
    if let Ok(m) = RelayResponse::decode(data) {
        assert_eq!(RelayResponse::decode(&m.encode()).ok(), Some(m));
    }
});

//! `relayminer serve` config files (lode's YAML and poktroll's relayminer YAML) on
//! arbitrary text: never a panic, and whatever is accepted is usable — at least one
//! service, every service id a valid on-chain id with an http(s) backend and a positive
//! timeout, a positive store queue, finite batching.
#![no_main]

use libfuzzer_sys::fuzz_target;
use lode_relayminer::serve::config;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    // A keys directory so that poktroll configs (named keys) are translated, not refused.
    match config::parse(text, Some(std::path::Path::new("/keys"))) {
        Ok(c) => {
            assert!(!c.services.is_empty());
            assert!(!c.signing_key_files.is_empty());
            for s in &c.services {
                assert!((1..=42).contains(&s.service_id.len()), "{:?}", s.service_id);
                assert!(s.backend_url.starts_with("http://") || s.backend_url.starts_with("https://"));
                assert!(s.request_timeout_seconds > 0);
            }
            assert!(c.store.queue_capacity > 0);
            let _ = c.stream_batch_interval();
        }
        Err(e) => assert!(!e.is_empty(), "a refusal without a reason"),
    }
});

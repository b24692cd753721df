//! `lode-gateway` config files on arbitrary text: never a panic, and whatever is
//! accepted can run — applications and models present, addresses `pokt1…`, rates finite
//! and positive (a NaN or infinite rate would disable rate limiting), at least one attempt.
#![no_main]

use libfuzzer_sys::fuzz_target;
use lode_gateway::config::GatewayConfig;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    match GatewayConfig::from_yaml(text) {
        Ok(c) => {
            assert!(!c.applications.is_empty() && !c.models.is_empty());
            let rate_ok = |r: f64| r.is_finite() && r > 0.0;
            assert!(rate_ok(c.requests_per_second), "{}", c.requests_per_second);
            for a in &c.applications {
                assert!(a.address.starts_with("pokt1"));
                assert!(a.requests_per_second.is_none_or(rate_ok), "{:?}", a.requests_per_second);
            }
            assert!(c.max_attempts > 0);
        }
        Err(e) => assert!(!e.0.is_empty(), "a refusal without a reason"),
    }
});

//! Per-application rate limits: a token bucket each.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Instant;

#[derive(Debug)]
struct Bucket {
    tokens: f64,
    at: Instant,
}

/// Token buckets keyed by application.
#[derive(Debug, Default)]
pub struct RateLimits {
    buckets: Mutex<HashMap<String, Bucket>>,
}

impl RateLimits {
    /// Takes one token from `app`'s bucket (refilled at `rate` per second up to `burst`);
    /// `Err(seconds)` says when the next one is available.
    pub fn take(&self, app: &str, rate: f64, burst: f64, now: Instant) -> Result<(), f64> {
        let mut m = self.buckets.lock().expect("limits lock");
        let b = m.entry(app.to_string()).or_insert(Bucket {
            tokens: burst,
            at: now,
        });
        let elapsed = now.saturating_duration_since(b.at).as_secs_f64();
        b.tokens = (b.tokens + elapsed * rate).min(burst);
        b.at = now;
        if b.tokens >= 1.0 {
            b.tokens -= 1.0;
            Ok(())
        } else {
            Err((1.0 - b.tokens) / rate)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn bursts_then_the_rate() {
        let l = RateLimits::default();
        let t0 = Instant::now();
        for _ in 0..3 {
            assert!(l.take("app", 2.0, 3.0, t0).is_ok());
        }
        let wait = l.take("app", 2.0, 3.0, t0).expect_err("burst spent");
        assert!((wait - 0.5).abs() < 1e-9, "{wait}");
        // Another application has its own bucket.
        assert!(l.take("other", 2.0, 3.0, t0).is_ok());
        // Half a second later one token is back.
        let t1 = t0 + Duration::from_millis(500);
        assert!(l.take("app", 2.0, 3.0, t1).is_ok());
        assert!(l.take("app", 2.0, 3.0, t1).is_err());
    }
}

//! Supplier health and latency scores, and the order suppliers are tried in.

use std::collections::HashMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use serde::Serialize;

use crate::config::Routing;

/// Weight of the newest observation in the moving averages.
const ALPHA: f64 = 0.2;
/// How much a failure rate of 1 multiplies a supplier's latency score.
const ERROR_PENALTY: f64 = 20.0;
/// The latency assumed for a supplier that has failed and never succeeded.
const NEVER_SUCCEEDED_MS: f64 = 1_000.0;

/// What is known about one supplier.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize)]
pub struct Score {
    /// Moving average of successful relay latency (time to the response head), ms.
    pub latency_ms: f64,
    /// Moving average of failures (1) and successes (0).
    pub error_rate: f64,
    pub successes: u64,
    pub failures: u64,
}

impl Score {
    /// Lower is better. A supplier never tried scores 0, so it is tried early.
    pub fn value(&self) -> f64 {
        if self.successes + self.failures == 0 {
            return 0.0;
        }
        let latency = if self.successes == 0 {
            NEVER_SUCCEEDED_MS
        } else {
            self.latency_ms.max(0.1)
        };
        latency * (1.0 + ERROR_PENALTY * self.error_rate)
    }
}

/// Scores of every supplier seen.
#[derive(Debug, Default)]
pub struct Scores {
    map: Mutex<HashMap<String, Score>>,
    turn: AtomicUsize,
}

impl Scores {
    pub fn success(&self, supplier: &str, latency: Duration) {
        let mut m = self.map.lock().expect("scores lock");
        let s = m.entry(supplier.to_string()).or_default();
        let ms = latency.as_secs_f64() * 1e3;
        s.latency_ms = if s.successes == 0 {
            ms
        } else {
            s.latency_ms + ALPHA * (ms - s.latency_ms)
        };
        s.error_rate *= 1.0 - ALPHA;
        s.successes += 1;
    }

    pub fn failure(&self, supplier: &str) {
        let mut m = self.map.lock().expect("scores lock");
        let s = m.entry(supplier.to_string()).or_default();
        s.error_rate += ALPHA * (1.0 - s.error_rate);
        s.failures += 1;
    }

    pub fn get(&self, supplier: &str) -> Score {
        self.map
            .lock()
            .expect("scores lock")
            .get(supplier)
            .copied()
            .unwrap_or_default()
    }

    pub fn all(&self) -> HashMap<String, Score> {
        self.map.lock().expect("scores lock").clone()
    }

    /// The order to try `candidates` in.
    pub fn order(&self, candidates: &[String], routing: Routing) -> Vec<String> {
        let mut out = candidates.to_vec();
        match routing {
            Routing::Scored => {
                let m = self.map.lock().expect("scores lock");
                let v = |s: &String| m.get(s).copied().unwrap_or_default().value();
                out.sort_by(|a, b| v(a).total_cmp(&v(b)).then_with(|| a.cmp(b)));
            }
            Routing::RoundRobin => {
                if !out.is_empty() {
                    let n = self.turn.fetch_add(1, Ordering::Relaxed) % out.len();
                    out.rotate_left(n);
                }
            }
            Routing::Random => {
                let mut seed = [0u8; 8];
                rand_core::RngCore::fill_bytes(&mut rand_core::OsRng, &mut seed);
                let mut x = u64::from_le_bytes(seed) | 1;
                for i in (1..out.len()).rev() {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    out.swap(i, (x % (i as u64 + 1)) as usize);
                }
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn failing_suppliers_sink_and_new_ones_are_tried() {
        let s = Scores::default();
        let all = names(&["a", "b", "c"]);
        s.success("a", Duration::from_millis(20));
        s.success("b", Duration::from_millis(5));
        // c is unknown: tried first; b is faster than a.
        assert_eq!(s.order(&all, Routing::Scored), names(&["c", "b", "a"]));
        s.success("c", Duration::from_millis(10));
        for _ in 0..3 {
            s.failure("b");
        }
        assert_eq!(s.order(&all, Routing::Scored), names(&["c", "a", "b"]));
        assert!(s.get("b").error_rate > 0.4);
        // Recovering lowers the penalty again.
        for _ in 0..30 {
            s.success("b", Duration::from_millis(5));
        }
        assert_eq!(s.order(&all, Routing::Scored)[0], "b");
        // A supplier that only ever failed goes behind every working one.
        s.failure("d");
        let with_d = names(&["a", "b", "c", "d"]);
        assert_eq!(
            s.order(&with_d, Routing::Scored).last().map(String::as_str),
            Some("d")
        );
    }

    #[test]
    fn round_robin_rotates_and_random_permutes() {
        let s = Scores::default();
        let all = names(&["a", "b", "c"]);
        let firsts: Vec<String> = (0..3)
            .map(|_| s.order(&all, Routing::RoundRobin)[0].clone())
            .collect();
        assert_eq!(firsts, all);
        let mut r = s.order(&all, Routing::Random);
        r.sort();
        assert_eq!(r, all, "a permutation");
    }
}

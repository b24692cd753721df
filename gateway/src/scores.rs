//! Supplier health and latency scores, and the order suppliers are tried in.

use std::collections::HashMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

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

/// The longest a supplier is remembered as waking up, whatever its `Retry-After` says.
pub const MAX_WAKING: Duration = Duration::from_secs(300);

/// Scores of every supplier seen.
#[derive(Debug, Default)]
pub struct Scores {
    map: Mutex<HashMap<String, Score>>,
    turn: AtomicUsize,
    /// Suppliers whose model is waking up from zero engines, until when: tried after
    /// every other supplier meanwhile.
    waking: Mutex<HashMap<String, Instant>>,
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

    /// `supplier` answered that its model is waking up, to come back after `retry_after`
    /// (at most [`MAX_WAKING`]). Not a failure: its score is left as it was.
    pub fn waking(&self, supplier: &str, retry_after: Duration) {
        let now = Instant::now();
        let mut w = self.waking.lock().expect("waking lock");
        w.retain(|_, until| *until > now);
        w.insert(supplier.to_string(), now + retry_after.min(MAX_WAKING));
    }

    /// How long `supplier` is still remembered as waking up.
    pub fn waking_for(&self, supplier: &str) -> Option<Duration> {
        let w = self.waking.lock().expect("waking lock");
        let left = w.get(supplier)?.saturating_duration_since(Instant::now());
        (!left.is_zero()).then_some(left)
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
        self.order_for(candidates, routing, None)
    }

    /// [`Scores::order`] for a request of the conversation `conversation`
    /// ([`lode_kernels::prefix::conversation_key`]): with `scored` routing, the
    /// suppliers in weighted rendezvous order (weight: the inverse of the score), so
    /// every turn of a conversation goes first to the same supplier, where its prefix is
    /// cached, while that supplier stays healthy; one that fails or slows down loses
    /// its weight, and its conversations move to their next supplier.
    pub fn order_for(
        &self,
        candidates: &[String],
        routing: Routing,
        conversation: Option<u64>,
    ) -> Vec<String> {
        let mut out = candidates.to_vec();
        match routing {
            Routing::Scored if conversation.is_some() => {
                let key = conversation.unwrap_or_default();
                let m = self.map.lock().expect("scores lock");
                let values: Vec<f64> = out
                    .iter()
                    .map(|s| m.get(s).copied().unwrap_or_default().value())
                    .collect();
                // A supplier not yet measured weighs like a typical measured one.
                let known: Vec<f64> = values.iter().copied().filter(|v| *v > 0.0).collect();
                let typical = if known.is_empty() {
                    1.0
                } else {
                    known.iter().sum::<f64>() / known.len() as f64
                };
                let mut ranked: Vec<(f64, String)> = out
                    .drain(..)
                    .zip(values)
                    .map(|(s, v)| {
                        let weight = 1.0 / if v > 0.0 { v } else { typical };
                        (rendezvous(key, &s, weight), s)
                    })
                    .collect();
                ranked.sort_by(|a, b| b.0.total_cmp(&a.0).then_with(|| a.1.cmp(&b.1)));
                out = ranked.into_iter().map(|(_, s)| s).collect();
            }
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
        // Suppliers waking up go last (still tried when no other answers), in order.
        let waking = self.waking.lock().expect("waking lock");
        if !waking.is_empty() {
            let now = Instant::now();
            out.sort_by_key(|s| waking.get(s).is_some_and(|until| *until > now));
        }
        out
    }
}

/// Weighted rendezvous score of `supplier` for `key`: `-weight / ln(u)`, `u` uniform in
/// (0, 1) from a hash of both; the highest wins, and each supplier wins a share of
/// keys proportional to its weight.
fn rendezvous(key: u64, supplier: &str, weight: f64) -> f64 {
    use std::hash::{DefaultHasher, Hash, Hasher};
    let mut h = DefaultHasher::new();
    key.hash(&mut h);
    supplier.hash(&mut h);
    let u = ((h.finish() >> 11) as f64 + 0.5) / (1u64 << 53) as f64;
    -weight / u.ln()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn a_conversation_stays_with_its_supplier_while_it_is_healthy() {
        let s = Scores::default();
        let all = names(&["a", "b", "c", "d"]);
        for x in &all {
            s.success(x, Duration::from_millis(10));
        }
        let first = |k: u64| s.order_for(&all, Routing::Scored, Some(k))[0].clone();
        // The same conversation, the same supplier, every time.
        for k in 0..50u64 {
            assert_eq!(first(k), first(k));
        }
        // Conversations spread over the suppliers, about evenly at equal scores.
        let mut count = HashMap::new();
        for k in 0..4000u64 {
            *count.entry(first(k)).or_insert(0) += 1;
        }
        assert_eq!(count.len(), 4);
        assert!(
            count.values().all(|&n| (800..1200).contains(&n)),
            "{count:?}"
        );
        // Its supplier fails: its conversations move to their next one; the others
        // stay where they were.
        let before: Vec<String> = (0..400u64).map(first).collect();
        for _ in 0..10 {
            s.failure("a");
        }
        let after: Vec<String> = (0..400u64).map(first).collect();
        let moved = before.iter().zip(&after).filter(|(b, a)| b != a).count();
        let on_a = before.iter().filter(|b| *b == "a").count();
        assert!(after.iter().filter(|a| *a == "a").count() < on_a / 5);
        assert!(
            moved <= on_a,
            "only a's conversations moved: {moved} of {on_a}"
        );
        // Every order still holds every supplier (failover).
        let mut o = s.order_for(&all, Routing::Scored, Some(7));
        o.sort();
        assert_eq!(o, all);
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
    fn a_waking_supplier_goes_last_until_its_retry_after_without_losing_its_score() {
        let s = Scores::default();
        let all = names(&["a", "b", "c"]);
        for x in &all {
            s.success(x, Duration::from_millis(10));
        }
        s.success("a", Duration::from_millis(1));
        let first = s.order(&all, Routing::Scored)[0].clone();
        assert_eq!(first, "a");
        s.waking("a", Duration::from_millis(150));
        for routing in [Routing::Scored, Routing::RoundRobin, Routing::Random] {
            for k in 0..20u64 {
                let o = s.order_for(&all, routing, Some(k));
                assert_eq!(o.last().map(String::as_str), Some("a"), "{routing:?}");
                assert_eq!(o.len(), 3, "still tried last");
            }
        }
        assert_eq!(s.get("a").failures, 0, "waking is not a failure");
        assert!(s.waking_for("a").is_some());
        std::thread::sleep(Duration::from_millis(200));
        assert_eq!(s.waking_for("a"), None);
        assert_eq!(s.order(&all, Routing::Scored)[0], "a", "back first");
        // A hostile Retry-After is bounded.
        s.waking("b", Duration::from_secs(u64::MAX / 4));
        assert!(s.waking_for("b").expect("waking") <= MAX_WAKING);
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

//! The scaling decision, pure: demand in, replicas out.
//!
//! - **Desired** replicas: in-flight relays over the per-replica target; when their
//!   targets are set, completion tokens per second over theirs, and the engines' own
//!   signals (requests waiting per engine, KV-cache use) scaled from the ready engines
//!   (HPA's rule: ready × value ÷ target). The largest wins, clamped to `min..=max`, and
//!   the decision's reason names it.
//! - **Up** at once, at most doubling (at least +1) per decision: a spike is followed
//!   within one scrape, overshoot is bounded by the demand itself.
//! - **Down** only to the highest desire seen over the whole stabilization window (the
//!   HPA's rule), and only once the window is covered by samples: a load that dips and
//!   comes back never shrinks the fleet, so steady load changes replicas at most once per
//!   window.
//! - **To zero** (with `min` 0) only after `idle_seconds` without any demand, the first
//!   sample after a restart counting as demand.
//! - **Never to zero while engines start**: until the replicas a scale-up asked for are
//!   ready (at most [`STARTING_HOLD_SECONDS`]), the model counts as busy, so the idle
//!   window starts once they serve and a cold start longer than it is not undone by it.
//!   (Scaling down to a replica or more follows the stabilization window as usual: a pod
//!   waiting for a GPU node that never comes must not pin a model's size.)

use std::collections::VecDeque;

/// The longest engines that do not turn ready hold a scale-up (a pod that can never be
/// scheduled must not keep a model from scaling down for ever).
pub const STARTING_HOLD_SECONDS: f64 = 1800.0;

/// What the serving pods report, summed over the ready ones.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Signals {
    pub in_flight: u64,
    pub completion_tokens_per_second: f64,
    /// What the engines report of themselves.
    pub engines: EngineLoad,
    /// Engine replicas wanted are not all ready yet (scheduling, a GPU node coming,
    /// weights, engine load).
    pub starting: bool,
    /// A relay found no engine ready lately: at least one replica is wanted.
    pub waking: bool,
}

/// The engines' own signals, over the ready engines whose metrics could be read (one
/// that cannot be read is left out, never waited for).
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct EngineLoad {
    /// Ready engine replicas.
    pub ready: u32,
    /// Requests waiting per engine, the mean over those that report it.
    pub waiting: Option<f64>,
    /// KV-cache use (0 to 1), the mean over those that report it.
    pub kv_usage: Option<f64>,
}

/// The bounds and targets of one ServiceModel.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Policy {
    pub min: i32,
    pub max: i32,
    /// In-flight relays per replica to aim for.
    pub target_in_flight: i32,
    /// Completion tokens per second per replica to aim for (`None`: not a signal).
    pub target_tokens_per_second: Option<f64>,
    /// Requests waiting per engine to aim for (`None`: not a signal).
    pub target_waiting: Option<f64>,
    /// KV-cache use per engine to aim for, 0 to 1 (`None`: not a signal).
    pub target_kv_usage: Option<f64>,
    /// Seconds of lower demand before scaling down.
    pub window_seconds: f64,
    /// With `min` 0: seconds without demand before the last replica goes.
    pub idle_seconds: f64,
}

/// A change of replicas and why.
#[derive(Clone, Debug, PartialEq)]
pub struct Decision {
    pub from: i32,
    pub to: i32,
    pub reason: String,
}

/// The memory one ServiceModel's decisions need: recent desires.
#[derive(Clone, Debug, Default)]
pub struct Recommender {
    /// (seconds, desired replicas), oldest first.
    history: VecDeque<(f64, i32)>,
    /// The last sample with any demand (or the first sample seen).
    last_busy: Option<f64>,
    /// Since when engines wanted have not all been ready.
    starting_since: Option<f64>,
}

impl Recommender {
    /// Replicas the demand alone asks for, within bounds.
    pub fn desired(s: &Signals, p: &Policy) -> i32 {
        Self::desires(s, p).0
    }

    /// Each signal's desire, the largest within bounds, the signal that gave it, and
    /// whether any signal wants a replica at all.
    fn desires(s: &Signals, p: &Policy) -> (i32, &'static str, String, bool) {
        let mut wants = vec![(
            (s.in_flight as f64 / f64::from(p.target_in_flight.max(1))).ceil(),
            "relays in flight",
        )];
        if s.waking {
            wants.push((1.0, "relays waiting for an engine"));
        }
        if let Some(t) = p.target_tokens_per_second.filter(|t| *t > 0.0) {
            wants.push((
                (s.completion_tokens_per_second / t).ceil(),
                "completion tokens/s",
            ));
        }
        let ready = f64::from(s.engines.ready);
        if let (Some(t), Some(w)) = (p.target_waiting.filter(|t| *t > 0.0), s.engines.waiting) {
            wants.push(((ready * w / t).ceil(), "requests waiting"));
        }
        if let (Some(t), Some(u)) = (p.target_kv_usage.filter(|t| *t > 0.0), s.engines.kv_usage) {
            wants.push(((ready * u / t).ceil(), "KV-cache use"));
        }
        let (want, by) = wants.iter().copied().filter(|(w, _)| w.is_finite()).fold(
            (0.0, "relays in flight"),
            |a, b| if b.0 > a.0 { b } else { a },
        );
        let want = want.clamp(0.0, f64::from(i32::MAX)) as i32;
        let all = wants
            .iter()
            .map(|(w, name)| format!("{name} → {w}"))
            .collect::<Vec<_>>()
            .join(", ");
        (want.clamp(p.min, p.max.max(p.min)), by, all, want > 0)
    }

    /// The decision at time `now` (seconds, monotonic) with `current` replicas, if any.
    pub fn decide(&mut self, now: f64, current: i32, s: &Signals, p: &Policy) -> Option<Decision> {
        let (desired, by, wants, busy) = Self::desires(s, p);
        let starting = if s.starting {
            let since = *self.starting_since.get_or_insert(now);
            now - since < STARTING_HOLD_SECONDS
        } else {
            self.starting_since = None;
            false
        };
        // Engines starting keep the model awake: the idle window starts once they serve.
        if busy || starting || self.last_busy.is_none() {
            self.last_busy = Some(now);
        }
        self.history.push_back((now, desired));
        // Keep one sample older than the window: it proves the window is covered.
        while self.history.len() > 2 && self.history[1].0 <= now - p.window_seconds {
            self.history.pop_front();
        }
        let mut signals = match p.target_tokens_per_second {
            Some(t) => format!(
                "{} in flight (target {} per replica), {:.0} completion tokens/s (target {t:.0})",
                s.in_flight, p.target_in_flight, s.completion_tokens_per_second
            ),
            None => format!(
                "{} in flight (target {} per replica)",
                s.in_flight, p.target_in_flight
            ),
        };
        if let (Some(t), Some(w)) = (p.target_waiting, s.engines.waiting) {
            signals += &format!(", {w:.1} waiting per engine (target {t})");
        }
        if let (Some(t), Some(u)) = (p.target_kv_usage, s.engines.kv_usage) {
            signals += &format!(
                ", KV cache {:.0} % used (target {:.0} %)",
                u * 100.0,
                t * 100.0
            );
        }
        if p.target_waiting.is_some() || p.target_kv_usage.is_some() {
            signals += &format!("; {by} decided ({wants})");
        }
        if current < p.min || current > p.max {
            let to = current.clamp(p.min, p.max.max(p.min));
            return Some(Decision {
                from: current,
                to,
                reason: format!("outside minReplicas..maxReplicas ({}..{})", p.min, p.max),
            });
        }
        if desired > current {
            let step = current.max(1);
            let to = desired.min(current.saturating_add(step)).min(p.max);
            return (to != current).then(|| Decision {
                from: current,
                to,
                reason: format!("scale up: {signals}"),
            });
        }
        let covered = self
            .history
            .front()
            .is_some_and(|(t, _)| *t <= now - p.window_seconds);
        let highest = self
            .history
            .iter()
            .map(|(_, d)| *d)
            .max()
            .unwrap_or(desired);
        if desired < current && covered && highest < current {
            let idle_for = now - self.last_busy.unwrap_or(now);
            if highest == 0 && idle_for >= p.idle_seconds {
                return Some(Decision {
                    from: current,
                    to: 0,
                    reason: format!(
                        "scale to zero: no demand for {idle_for:.0} s (idle window {:.0} s); {signals}",
                        p.idle_seconds
                    ),
                });
            }
            let to = highest.max(1);
            return (to < current).then(|| Decision {
                from: current,
                to,
                reason: format!(
                    "scale down: at most {highest} wanted for {:.0} s; {signals}",
                    p.window_seconds
                ),
            });
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy() -> Policy {
        Policy {
            min: 1,
            max: 10,
            target_in_flight: 4,
            target_tokens_per_second: None,
            target_waiting: None,
            target_kv_usage: None,
            window_seconds: 60.0,
            idle_seconds: 600.0,
        }
    }

    /// Replays a trace of in-flight relays (one sample a second) and returns the replica
    /// count after each sample and the times of changes.
    fn replay(trace: &[u64], p: &Policy, start: i32) -> (Vec<i32>, Vec<usize>) {
        let mut r = Recommender::default();
        let mut current = start;
        let mut out = Vec::new();
        let mut changes = Vec::new();
        for (t, inflight) in trace.iter().enumerate() {
            let s = Signals {
                in_flight: *inflight,
                completion_tokens_per_second: 0.0,
                ..Signals::default()
            };
            if let Some(d) = r.decide(t as f64, current, &s, p) {
                assert_eq!(d.from, current);
                current = d.to;
                changes.push(t);
            }
            out.push(current);
        }
        (out, changes)
    }

    #[test]
    fn a_step_scales_up_within_seconds_and_down_after_the_window() {
        let p = policy();
        // 30 s idle, 120 s at 24 in flight (6 replicas' worth), then idle again.
        let trace: Vec<u64> = [vec![0; 30], vec![24; 120], vec![0; 120]].concat();
        let (replicas, changes) = replay(&trace, &p, 1);
        assert_eq!(replicas[30], 2, "first step doubles");
        assert_eq!(replicas[31], 4);
        assert_eq!(
            replicas[32], 6,
            "at the demand in 3 decisions, no overshoot"
        );
        assert!(replicas[32..150].iter().all(|r| *r == 6));
        assert_eq!(replicas[150 + 59], 6, "held through the window");
        assert_eq!(replicas[150 + 61], 1, "then down in one move");
        assert_eq!(changes.len(), 4);
        assert!(replicas.iter().all(|r| (1..=10).contains(r)));
    }

    #[test]
    fn a_ramp_is_followed_without_overshoot() {
        let p = policy();
        let trace: Vec<u64> = (0..200).map(|t| t / 5).collect();
        let (replicas, _) = replay(&trace, &p, 1);
        for (t, r) in replicas.iter().enumerate() {
            let need = Recommender::desired(
                &Signals {
                    in_flight: trace[t],
                    completion_tokens_per_second: 0.0,
                    ..Signals::default()
                },
                &p,
            );
            assert!(*r >= need.min(p.max) || t == 0, "behind the ramp at {t}");
            assert!(*r <= need.max(1), "overshoot at {t}: {r} for {need}");
        }
        assert_eq!(*replicas.last().expect("last"), 10, "capped at max");
    }

    #[test]
    fn a_spike_is_bounded_by_max_and_does_not_stick_past_the_window() {
        let p = policy();
        let trace: Vec<u64> = [vec![4; 30], vec![400; 3], vec![4; 150]].concat();
        let (replicas, _) = replay(&trace, &p, 1);
        assert_eq!(replicas[29], 1);
        assert_eq!(
            &replicas[30..33],
            &[2, 4, 8],
            "doubling, never past the demand"
        );
        assert_eq!(*replicas.iter().max().expect("max"), 8);
        assert_eq!(replicas[33 + 58], 8, "kept through the window");
        assert_eq!(*replicas.last().expect("last"), 1);
    }

    #[test]
    fn oscillating_load_changes_replicas_at_most_once_per_window() {
        let p = policy();
        // Noise around 3 replicas' worth: 9..=13 in flight.
        let trace: Vec<u64> = (0..600).map(|t| 9 + (t * 7 % 5)).collect();
        let (replicas, changes) = replay(&trace, &p, 3);
        for w in changes.windows(2) {
            assert!(
                w[1] - w[0] >= 60 || w[1] - w[0] <= 2,
                "flapping: {changes:?}"
            );
        }
        let after_warmup: std::collections::BTreeSet<i32> = replicas[5..].iter().copied().collect();
        assert_eq!(
            after_warmup.len(),
            1,
            "steady at one size: {after_warmup:?}"
        );
        assert_eq!(replicas[599], 4, "the highest need of the noise (13 / 4)");
    }

    #[test]
    fn tokens_are_a_second_signal_and_bounds_are_enforced() {
        let mut p = policy();
        p.target_tokens_per_second = Some(100.0);
        let s = Signals {
            in_flight: 1,
            completion_tokens_per_second: 450.0,
            ..Signals::default()
        };
        assert_eq!(
            Recommender::desired(&s, &p),
            5,
            "tokens ask for more than relays"
        );
        let mut r = Recommender::default();
        let d = r.decide(0.0, 12, &Signals::default(), &p).expect("clamp");
        assert_eq!((d.from, d.to), (12, 10));
        assert!(d.reason.contains("outside"), "{}", d.reason);
        p.min = 2;
        assert_eq!(
            Recommender::desired(&Signals::default(), &p),
            2,
            "never below min"
        );
    }

    /// A KV-cache-bound load: long prompts fill the engines' caches with few relays in
    /// flight. The relays alone would not scale; the KV signal does, says so, and
    /// settles once the cache use per engine is at its target.
    #[test]
    fn a_kv_cache_bound_load_scales_up_on_the_engines_signal() {
        let mut p = policy();
        p.target_kv_usage = Some(0.7);
        p.target_waiting = Some(2.0);
        let kv = |ready: u32, usage: f64| Signals {
            in_flight: 3,
            engines: EngineLoad {
                ready,
                waiting: Some(0.0),
                kv_usage: Some(usage),
            },
            ..Signals::default()
        };
        assert_eq!(
            Recommender::desired(&kv(1, 0.95), &policy()),
            1,
            "relays alone: 1"
        );
        assert_eq!(Recommender::desired(&kv(1, 0.95), &p), 2);
        let mut r = Recommender::default();
        let d = r.decide(0.0, 1, &kv(1, 0.95), &p).expect("scales up");
        assert_eq!((d.from, d.to), (1, 2));
        assert!(d.reason.contains("KV-cache use decided"), "{}", d.reason);
        assert!(
            d.reason.contains("KV cache 95 % used (target 70 %)"),
            "{}",
            d.reason
        );
        // The cache spread over four engines, 60 % each: no change.
        assert_eq!(r.decide(1.0, 4, &kv(4, 0.6), &p), None);
        // A queue on the engines: 5 waiting per engine against 2, on 3 engines.
        let queued = Signals {
            engines: EngineLoad {
                ready: 3,
                waiting: Some(5.0),
                kv_usage: Some(0.2),
            },
            ..Signals::default()
        };
        assert_eq!(Recommender::desired(&queued, &p), 8);
        let d = Recommender::default()
            .decide(0.0, 3, &queued, &p)
            .expect("up");
        assert!(
            d.reason.contains("requests waiting decided"),
            "{}",
            d.reason
        );
    }

    /// No engine could be read: the engine signals are absent and the relays decide;
    /// garbage (NaN, infinity) from an engine never decides.
    #[test]
    fn unread_or_absurd_engine_signals_never_decide() {
        let mut p = policy();
        p.target_kv_usage = Some(0.5);
        let unread = Signals {
            in_flight: 8,
            engines: EngineLoad {
                ready: 2,
                waiting: None,
                kv_usage: None,
            },
            ..Signals::default()
        };
        assert_eq!(Recommender::desired(&unread, &p), 2, "8 in flight / 4");
        for bad in [f64::NAN, f64::INFINITY] {
            let absurd = Signals {
                engines: EngineLoad {
                    kv_usage: Some(bad),
                    ..unread.engines
                },
                ..unread
            };
            assert_eq!(Recommender::desired(&absurd, &p), 2, "{bad}");
        }
    }

    fn at(in_flight: u64, starting: bool) -> Signals {
        Signals {
            in_flight,
            starting,
            ..Signals::default()
        }
    }

    /// A model at zero wakes on its first (held) relay at once, is not scaled down while
    /// its engine starts, and goes back to zero only after the idle window without any
    /// relay; the stabilization window alone never takes the last replica.
    #[test]
    fn a_model_at_zero_wakes_on_one_relay_and_sleeps_after_the_idle_window() {
        let mut p = policy();
        (p.min, p.window_seconds, p.idle_seconds) = (0, 10.0, 60.0);
        let mut r = Recommender::default();
        let mut current = 0;
        let mut changes = Vec::new();
        for t in 0..200 {
            let s = match t {
                0..5 => at(0, false),
                // One relay held while the engine starts (20 s), then served.
                5..25 => at(1, current > 0),
                25 => at(1, false),
                _ => at(0, false),
            };
            if let Some(d) = r.decide(f64::from(t), current, &s, &p) {
                changes.push((t, d.from, d.to, d.reason.clone()));
                current = d.to;
            }
        }
        assert_eq!(changes.len(), 2, "{changes:?}");
        assert_eq!(
            (changes[0].0, changes[0].1, changes[0].2),
            (5, 0, 1),
            "woken at once"
        );
        let (t, from, to, why) = &changes[1];
        assert_eq!((*from, *to), (1, 0));
        assert_eq!(
            *t,
            25 + 60,
            "60 s after the last relay, not after the 10 s window"
        );
        assert!(
            why.starts_with("scale to zero: no demand for 60 s"),
            "{why}"
        );

        // A relay refused at once (hold full, deadline passed) still wakes the model.
        let refused = Signals {
            waking: true,
            ..Signals::default()
        };
        assert_eq!(Recommender::desired(&refused, &p), 1);
        let d = Recommender::default()
            .decide(0.0, 0, &refused, &p)
            .expect("wakes");
        assert!(d.reason.contains("scale up"), "{}", d.reason);
        // An operator that restarts next to an idle replica waits a whole idle window.
        let mut fresh = Recommender::default();
        for t in 0..60 {
            assert_eq!(
                fresh.decide(f64::from(1000 + t), 1, &at(0, false), &p),
                None
            );
        }
        let d = fresh.decide(1060.0, 1, &at(0, false), &p).expect("to zero");
        assert_eq!(d.to, 0);
        // With min 1 the idle window plays no part.
        p.min = 1;
        let mut r = Recommender::default();
        for t in 0..400 {
            if let Some(d) = r.decide(f64::from(t), 1, &at(0, false), &p) {
                panic!("{d:?}");
            }
        }
    }

    /// The first relay wakes a model at zero; its engine takes 60 s to start, longer
    /// than the 10 s idle window, and the relay goes elsewhere at 3 s: the model does
    /// not go back to zero while the engine starts, only an idle window after it is
    /// ready. An engine that never becomes ready keeps it awake at most
    /// STARTING_HOLD_SECONDS. Scaling down to one replica is not held: a pod waiting for
    /// a GPU node that never comes does not pin the model's size.
    #[test]
    fn a_cold_start_longer_than_the_idle_window_is_not_undone_by_it() {
        let mut p = policy();
        (p.min, p.window_seconds, p.idle_seconds) = (0, 5.0, 10.0);
        let mut r = Recommender::default();
        let mut current = 0;
        let mut changes = Vec::new();
        for t in 0..120 {
            let s = match t {
                0..3 => at(1, t > 0),
                3..63 => at(0, true),
                _ => at(0, false),
            };
            if let Some(d) = r.decide(f64::from(t), current, &s, &p) {
                changes.push((t, d.to));
                current = d.to;
            }
        }
        // Last seen starting at 62: zero one idle window later.
        assert_eq!(changes, vec![(0, 1), (62 + 10, 0)], "{changes:?}");

        // Never ready: awake for STARTING_HOLD_SECONDS, then the idle window applies.
        let mut r = Recommender::default();
        let mut current = r.decide(0.0, 0, &at(1, false), &p).expect("up").to;
        let mut zero_at = None;
        for t in 1..2000 {
            if let Some(d) = r.decide(f64::from(t), current, &at(0, true), &p) {
                current = d.to;
                zero_at.get_or_insert(t);
            }
        }
        let t = zero_at.expect("to zero at last");
        let hold = STARTING_HOLD_SECONDS as i32;
        assert!((hold..hold + 15).contains(&t), "{t}");

        // A burst to 4 whose fourth pod never starts: down after the window as usual.
        p.min = 1;
        let mut r = Recommender::default();
        let mut current = 4;
        let mut downs = Vec::new();
        for t in 0..30 {
            if let Some(d) = r.decide(f64::from(t), current, &at(0, true), &p) {
                downs.push((t, d.to));
                current = d.to;
            }
        }
        assert_eq!(downs, vec![(5, 1)], "{downs:?}");
    }
}

//! Counters for `/metrics` and the demand signals (`/demand`) the autoscaler reads.

use std::collections::{BTreeMap, VecDeque};
use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Per-service counters.
#[derive(Debug, Default)]
pub struct ServiceMetrics {
    pub in_flight: AtomicU64,
    /// Relays answered by the backend (any status).
    pub relays: AtomicU64,
    pub mined: AtomicU64,
    /// Served but not mined: engine errors (4xx, 5xx), past the claim window, or above the target.
    pub not_mined: AtomicU64,
    /// Streams the gateway (or the backend) abandoned before the end.
    pub aborted: AtomicU64,
    pub prompt_tokens: AtomicU64,
    pub completion_tokens: AtomicU64,
    /// How relays were spread over the service's engine replicas.
    pub route: RouteMetrics,
    /// Relays held now for want of a ready engine replica, and ever.
    pub held: AtomicU64,
    pub held_total: AtomicU64,
    /// Held relays answered 503 at their deadline, and relays refused because the hold
    /// was full.
    pub hold_expired: AtomicU64,
    pub hold_full: AtomicU64,
    /// The last wake-up, first held relay to first engine ready, milliseconds.
    pub last_wake_ms: AtomicU64,
    /// When a relay last found no engine ready (held, or refused with the hold full).
    pub last_held: Mutex<Option<Instant>>,
}

/// How long a relay that found no engine keeps asking the autoscaler for one: long
/// enough for a scrape to see it even when it was refused or expired at once.
pub const WAKE_MEMORY: Duration = Duration::from_secs(10);

impl ServiceMetrics {
    /// A relay found no engine ready: the service wants to wake.
    pub fn wants_engine(&self) {
        *self.last_held.lock().expect("lock") = Some(Instant::now());
    }

    /// Whether a relay found no engine within [`WAKE_MEMORY`].
    pub fn waking(&self) -> bool {
        self.last_held
            .lock()
            .expect("lock")
            .is_some_and(|t| t.elapsed() < WAKE_MEMORY)
    }
}

/// The router's counters ([`super::route`]).
#[derive(Debug, Default)]
pub struct RouteMetrics {
    /// Relays sent where a prefix of theirs went before.
    pub prefix_hits: AtomicU64,
    /// Relays with keys and no usable match (sent least-loaded).
    pub prefix_misses: AtomicU64,
    /// Relays without keys, by reason ([`lode_kernels::prefix::Unkeyed::label`]).
    pub unkeyed_not_json: AtomicU64,
    pub unkeyed_no_prompt: AtomicU64,
    pub unkeyed_too_large: AtomicU64,
    /// Prompt bytes keyed, and of them the bytes matched on the chosen engine.
    pub prompt_bytes: AtomicU64,
    pub matched_bytes: AtomicU64,
    /// Relays whose best-matching engine was at the load bound.
    pub spilled: AtomicU64,
    /// Relays sent to another engine after theirs refused the connection.
    pub retried: AtomicU64,
    /// Engine replicas taking relays now (discovery sets it).
    pub engines_ready: AtomicU64,
    /// Reads of the engine Service's EndpointSlices that failed (the last list known
    /// stays in use).
    pub discovery_errors: AtomicU64,
}

/// Latency buckets (seconds) of served relays.
const BUCKETS: [f64; 12] = [
    0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0, 5.0, 30.0,
];

/// One sample of the per-service counters, for rates.
#[derive(Clone, Copy, Debug)]
struct Sample {
    at: Instant,
    relays: u64,
    prompt: u64,
    completion: u64,
}

#[derive(Debug, Default)]
pub struct Metrics {
    pub requests: AtomicU64,
    /// Ring signatures checked in a task of their own while the engine started.
    pub concurrent_checks: AtomicU64,
    refused: Mutex<BTreeMap<u32, u64>>,
    services: Mutex<BTreeMap<String, Arc<ServiceMetrics>>>,
    latency_buckets: [AtomicU64; BUCKETS.len()],
    latency_count: AtomicU64,
    latency_sum_us: AtomicU64,
    samples: Mutex<BTreeMap<String, VecDeque<Sample>>>,
}

/// The demand of one service, as the autoscaler reads it (`GET /demand`).
pub use lode_contracts::demand::ServiceDemand as Demand;

/// The window rates are averaged over.
pub const RATE_WINDOW: Duration = Duration::from_secs(10);

impl Metrics {
    pub fn service(&self, id: &str) -> Arc<ServiceMetrics> {
        self.services
            .lock()
            .expect("lock")
            .entry(id.to_string())
            .or_default()
            .clone()
    }

    pub fn refused(&self, code: u32) {
        *self.refused.lock().expect("lock").entry(code).or_default() += 1;
    }

    pub fn refused_count(&self, code: u32) -> u64 {
        self.refused
            .lock()
            .expect("lock")
            .get(&code)
            .copied()
            .unwrap_or(0)
    }

    pub fn observe_latency(&self, d: Duration) {
        let s = d.as_secs_f64();
        for (i, b) in BUCKETS.iter().enumerate() {
            if s <= *b {
                self.latency_buckets[i].fetch_add(1, Ordering::Relaxed);
            }
        }
        self.latency_count.fetch_add(1, Ordering::Relaxed);
        self.latency_sum_us
            .fetch_add(d.as_micros() as u64, Ordering::Relaxed);
    }

    /// Records the counters now; rates compare against the oldest sample in the window.
    pub fn sample(&self) {
        let now = Instant::now();
        let services = self.services.lock().expect("lock").clone();
        let mut samples = self.samples.lock().expect("lock");
        for (id, m) in services {
            let q = samples.entry(id).or_default();
            q.push_back(Sample {
                at: now,
                relays: m.relays.load(Ordering::Relaxed),
                prompt: m.prompt_tokens.load(Ordering::Relaxed),
                completion: m.completion_tokens.load(Ordering::Relaxed),
            });
            while q.len() > 2 && now.duration_since(q[0].at) > RATE_WINDOW {
                q.pop_front();
            }
        }
    }

    /// Demand per service (`queued` is the store queue, shared by all services).
    pub fn demand(&self, queued: u64) -> Vec<Demand> {
        let services = self.services.lock().expect("lock").clone();
        let samples = self.samples.lock().expect("lock");
        services
            .into_iter()
            .map(|(id, m)| {
                let now = Sample {
                    at: Instant::now(),
                    relays: m.relays.load(Ordering::Relaxed),
                    prompt: m.prompt_tokens.load(Ordering::Relaxed),
                    completion: m.completion_tokens.load(Ordering::Relaxed),
                };
                let rate = |f: fn(&Sample) -> u64| -> f64 {
                    match samples.get(&id).and_then(|q| q.front()) {
                        Some(old) => {
                            let secs = now.at.duration_since(old.at).as_secs_f64();
                            if secs < 0.05 {
                                0.0
                            } else {
                                (f(&now) - f(old)) as f64 / secs
                            }
                        }
                        None => 0.0,
                    }
                };
                Demand {
                    prefix_prompt_bytes: m.route.prompt_bytes.load(Ordering::Relaxed),
                    prefix_matched_bytes: m.route.matched_bytes.load(Ordering::Relaxed),
                    in_flight: m.in_flight.load(Ordering::Relaxed),
                    held: m.held.load(Ordering::Relaxed),
                    waking: m.waking(),
                    queued,
                    relays_per_second: rate(|s| s.relays),
                    prompt_tokens_per_second: rate(|s| s.prompt),
                    completion_tokens_per_second: rate(|s| s.completion),
                    service_id: id,
                }
            })
            .collect()
    }

    /// Prometheus text exposition.
    pub fn render(
        &self,
        queued: u64,
        acknowledged: u64,
        append_failures: u64,
        height: i64,
        ring_tables: u64,
    ) -> String {
        let mut o = String::new();
        let _ = writeln!(
            o,
            "# HELP lode_serve_requests_total Relay requests received.\n# TYPE lode_serve_requests_total counter\nlode_serve_requests_total {}",
            self.requests.load(Ordering::Relaxed)
        );
        let _ = writeln!(
            o,
            "# HELP lode_serve_refused_total Relays refused, by relayer_proxy error code.\n# TYPE lode_serve_refused_total counter"
        );
        for (code, n) in self.refused.lock().expect("lock").iter() {
            let _ = writeln!(o, "lode_serve_refused_total{{code=\"{code}\"}} {n}");
        }
        let services = self.services.lock().expect("lock").clone();
        for (name, help, get) in [
            (
                "lode_serve_in_flight",
                "Relays being served.",
                (|m: &ServiceMetrics| m.in_flight.load(Ordering::Relaxed))
                    as fn(&ServiceMetrics) -> u64,
            ),
            (
                "lode_serve_relays_total",
                "Relays answered by the backend.",
                |m| m.relays.load(Ordering::Relaxed),
            ),
            (
                "lode_serve_mined_total",
                "Relays mined and shipped to the store.",
                |m| m.mined.load(Ordering::Relaxed),
            ),
            (
                "lode_serve_not_mined_total",
                "Relays served but not mined (engine 4xx/5xx, late, above target).",
                |m| m.not_mined.load(Ordering::Relaxed),
            ),
            (
                "lode_serve_aborted_streams_total",
                "Streams abandoned before the end (not mined).",
                |m| m.aborted.load(Ordering::Relaxed),
            ),
            (
                "lode_serve_prompt_tokens_total",
                "Prompt tokens reported by the engine's usage.",
                |m| m.prompt_tokens.load(Ordering::Relaxed),
            ),
            (
                "lode_serve_completion_tokens_total",
                "Completion tokens reported by the engine's usage.",
                |m| m.completion_tokens.load(Ordering::Relaxed),
            ),
            (
                "lode_serve_route_prompt_bytes_total",
                "Prompt bytes of relays routed by prefix.",
                |m| m.route.prompt_bytes.load(Ordering::Relaxed),
            ),
            (
                "lode_serve_route_matched_bytes_total",
                "Of them, the prefix bytes the chosen engine was sent before (the hit rate is the ratio).",
                |m| m.route.matched_bytes.load(Ordering::Relaxed),
            ),
            (
                "lode_serve_route_spilled_total",
                "Relays whose best-matching engine was at the load bound.",
                |m| m.route.spilled.load(Ordering::Relaxed),
            ),
            (
                "lode_serve_route_retried_total",
                "Relays sent to another engine replica after theirs refused the connection.",
                |m| m.route.retried.load(Ordering::Relaxed),
            ),
            (
                "lode_serve_engines_ready",
                "Engine replicas taking relays (found ready in the engine Service's EndpointSlices, or configured).",
                |m| m.route.engines_ready.load(Ordering::Relaxed),
            ),
            (
                "lode_serve_held_relays",
                "Relays held now for want of a ready engine replica (the service is waking up).",
                |m| m.held.load(Ordering::Relaxed),
            ),
            (
                "lode_serve_held_total",
                "Relays held for want of a ready engine replica.",
                |m| m.held_total.load(Ordering::Relaxed),
            ),
            (
                "lode_serve_hold_expired_total",
                "Held relays answered 503 with Retry-After at their deadline.",
                |m| m.hold_expired.load(Ordering::Relaxed),
            ),
            (
                "lode_serve_hold_full_total",
                "Relays answered 503 at once because the hold was full (relays or bytes).",
                |m| m.hold_full.load(Ordering::Relaxed),
            ),
            (
                "lode_serve_last_wake_milliseconds",
                "The last wake-up from zero engines: first held relay to first engine ready.",
                |m| m.last_wake_ms.load(Ordering::Relaxed),
            ),
            (
                "lode_serve_discovery_errors_total",
                "Reads of the engine Service's EndpointSlices that failed (the last list known stays in use).",
                |m| m.route.discovery_errors.load(Ordering::Relaxed),
            ),
        ] {
            let kind = if name.ends_with("_total") {
                "counter"
            } else {
                "gauge"
            };
            let _ = writeln!(o, "# HELP {name} {help}\n# TYPE {name} {kind}");
            for (id, m) in &services {
                let _ = writeln!(o, "{name}{{service=\"{id}\"}} {}", get(m));
            }
        }
        let _ = writeln!(
            o,
            "# HELP lode_serve_routed_total Relays routed to an engine replica, by how: on a prefix match, least-loaded for want of one, or unkeyed (and why).\n# TYPE lode_serve_routed_total counter"
        );
        for (id, m) in &services {
            let r = &m.route;
            for (how, c) in [
                ("prefix_hit", &r.prefix_hits),
                ("prefix_miss", &r.prefix_misses),
                ("unkeyed_not_json", &r.unkeyed_not_json),
                ("unkeyed_no_prompt", &r.unkeyed_no_prompt),
                ("unkeyed_too_large", &r.unkeyed_too_large),
            ] {
                let _ = writeln!(
                    o,
                    "lode_serve_routed_total{{service=\"{id}\",how=\"{how}\"}} {}",
                    c.load(Ordering::Relaxed)
                );
            }
        }
        for (name, kind, help, v) in [
            (
                "lode_serve_store_queue",
                "gauge",
                "Mined relays waiting for the store's acknowledgement (and reserved slots).",
                queued as i64,
            ),
            (
                "lode_serve_store_acknowledged_total",
                "counter",
                "Mined relays the store acknowledged.",
                acknowledged as i64,
            ),
            (
                "lode_serve_store_refused_total",
                "counter",
                "Mined relays the store refused for good (logged as errors).",
                append_failures as i64,
            ),
            (
                "lode_serve_chain_height",
                "gauge",
                "Latest block height seen.",
                height,
            ),
            (
                "lode_serve_ring_tables",
                "gauge",
                "Point tables held for fast ring-signature verification (600 KiB each).",
                ring_tables as i64,
            ),
            (
                "lode_serve_concurrent_signature_checks_total",
                "counter",
                "Ring signatures of busy sessions checked while the engine started.",
                self.concurrent_checks.load(Ordering::Relaxed) as i64,
            ),
        ] {
            let _ = writeln!(o, "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {v}");
        }
        let _ = writeln!(
            o,
            "# HELP lode_serve_relay_seconds Time from request to the last byte of a served relay.\n# TYPE lode_serve_relay_seconds histogram"
        );
        for (i, b) in BUCKETS.iter().enumerate() {
            let _ = writeln!(
                o,
                "lode_serve_relay_seconds_bucket{{le=\"{b}\"}} {}",
                self.latency_buckets[i].load(Ordering::Relaxed)
            );
        }
        let count = self.latency_count.load(Ordering::Relaxed);
        let _ = writeln!(o, "lode_serve_relay_seconds_bucket{{le=\"+Inf\"}} {count}");
        let _ = writeln!(
            o,
            "lode_serve_relay_seconds_sum {}",
            self.latency_sum_us.load(Ordering::Relaxed) as f64 / 1e6
        );
        let _ = writeln!(o, "lode_serve_relay_seconds_count {count}");
        o
    }
}

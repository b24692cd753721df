//! The store's Prometheus metrics (`lode_store_*`).

use std::time::Duration;

use lode_store_api::{SessionInfo, SessionState};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StateLabel {
    pub state: &'static str,
}

/// Every metric the store exports.
#[derive(Debug)]
pub struct Metrics {
    pub relays_ingested: Counter,
    /// Durable: restored from the database when the store opens.
    pub relays_acknowledged: Counter,
    pub relays_duplicate: Counter,
    pub commits: Counter,
    pub commit_ops: Counter,
    pub write_errors: Counter,
    pub compactions: Counter,
    pub commit_seconds: Histogram,
    pub root_seconds: Histogram,
    pub sessions: Family<StateLabel, Gauge>,
    pub leaves: Gauge,
    pub disk_bytes: Gauge,
    pub backend: Family<StatLabel, Gauge>,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StatLabel {
    pub stat: &'static str,
}

impl Default for Metrics {
    fn default() -> Self {
        Self {
            relays_ingested: Counter::default(),
            relays_acknowledged: Counter::default(),
            relays_duplicate: Counter::default(),
            commits: Counter::default(),
            commit_ops: Counter::default(),
            write_errors: Counter::default(),
            compactions: Counter::default(),
            commit_seconds: Histogram::new(exponential_buckets(0.0001, 2.0, 16)),
            root_seconds: Histogram::new(exponential_buckets(0.001, 2.0, 16)),
            sessions: Family::default(),
            leaves: Gauge::default(),
            disk_bytes: Gauge::default(),
            backend: Family::default(),
        }
    }
}

const STATES: [(SessionState, &str); 7] = [
    (SessionState::Open, "open"),
    (SessionState::Freezing, "freezing"),
    (SessionState::Frozen, "frozen"),
    (SessionState::Claimed, "claimed"),
    (SessionState::Proven, "proven"),
    (SessionState::Settled, "settled"),
    (SessionState::Expired, "expired"),
];

impl Metrics {
    pub fn register(&self, r: &mut Registry) {
        let r = r.sub_registry_with_prefix("lode_store");
        r.register(
            "relays_ingested",
            "Relays stored as new leaves",
            self.relays_ingested.clone(),
        );
        r.register(
            "relays_acknowledged",
            "Relays acknowledged (stored as new leaves) since the database was created; kept in the database, so it survives restarts",
            self.relays_acknowledged.clone(),
        );
        r.register(
            "relays_duplicate",
            "Relays received again (already a leaf)",
            self.relays_duplicate.clone(),
        );
        r.register(
            "commits",
            "Durable writes (each a group of operations)",
            self.commits.clone(),
        );
        r.register(
            "commit_operations",
            "Operations committed",
            self.commit_ops.clone(),
        );
        r.register(
            "write_errors",
            "Writes the storage refused",
            self.write_errors.clone(),
        );
        r.register(
            "commit_duration_seconds",
            "Time to commit one group durably",
            self.commit_seconds.clone(),
        );
        r.register(
            "root_duration_seconds",
            "Time to compute a session root",
            self.root_seconds.clone(),
        );
        r.register("sessions", "Sessions by state", self.sessions.clone());
        r.register("leaves", "Leaves held across sessions", self.leaves.clone());
        r.register(
            "disk_bytes",
            "Bytes of the database on disk",
            self.disk_bytes.clone(),
        );
        r.register("backend", "Storage engine statistics", self.backend.clone());
    }

    pub fn observe_commit(&self, took: Duration, accepted: u64, duplicates: u64, ops: usize) {
        self.commits.inc();
        self.commit_ops.inc_by(ops as u64);
        self.relays_ingested.inc_by(accepted);
        self.relays_duplicate.inc_by(duplicates);
        self.commit_seconds.observe(took.as_secs_f64());
    }

    pub fn observe_root(&self, took: Duration) {
        self.root_seconds.observe(took.as_secs_f64());
    }

    /// The sessions by state as `set_sessions` last counted them (`GET /sessions`).
    pub fn session_counts(&self) -> lode_contracts::store::SessionCounts {
        lode_contracts::store::SessionCounts {
            sessions: STATES
                .iter()
                .map(|(_, name)| {
                    let n = self
                        .sessions
                        .get_or_create(&StateLabel { state: name })
                        .get();
                    (name.to_string(), n.max(0) as u64)
                })
                .collect(),
        }
    }

    pub fn set_sessions<'a>(&self, sessions: impl Iterator<Item = &'a SessionInfo>) {
        let mut counts = [0i64; STATES.len()];
        let mut leaves = 0u64;
        for s in sessions {
            if let Some(i) = STATES.iter().position(|(st, _)| *st as i32 == s.state) {
                counts[i] += 1;
            }
            leaves += s.leaves;
        }
        for ((_, name), n) in STATES.iter().zip(counts) {
            self.sessions
                .get_or_create(&StateLabel { state: name })
                .set(n);
        }
        self.leaves.set(leaves as i64);
    }
}

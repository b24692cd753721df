//! `GET /demand` of `relayminer serve`'s admin port: what the operator's autoscaler
//! scales on.

use serde::{Deserialize, Serialize};

/// Largest `/demand` answer a reader accepts (a pod serves a handful of services).
pub const MAX_DEMAND_BYTES: usize = 64 << 10;

/// The demand of one service.
#[derive(Clone, Debug, Default, PartialEq, Deserialize, Serialize)]
pub struct ServiceDemand {
    pub service_id: String,
    /// Relays between arrival and their last byte (waiting for the engine included).
    pub in_flight: u64,
    /// Of them, relays held for want of a ready engine replica (the service is at zero
    /// or waking up).
    #[serde(default)]
    pub held: u64,
    /// A relay found no engine replica ready within the last seconds (held, or refused
    /// because the hold was full or its deadline passed): the service wants at least
    /// one engine, even when no relay is held at the moment it is read.
    #[serde(default)]
    pub waking: bool,
    /// Mined relays waiting for the store (shared by every service of the pod).
    pub queued: u64,
    pub relays_per_second: f64,
    pub prompt_tokens_per_second: f64,
    pub completion_tokens_per_second: f64,
    /// Prompt bytes of the relays routed by prefix so far, and of them the bytes the
    /// chosen engine had been sent before (the relay tier's prefix hit rate).
    #[serde(default)]
    pub prefix_prompt_bytes: u64,
    #[serde(default)]
    pub prefix_matched_bytes: u64,
}

/// One serve pod's demand.
#[derive(Clone, Debug, Default, PartialEq, Deserialize, Serialize)]
pub struct DemandReport {
    /// The chain height serve last saw.
    pub height: i64,
    pub services: Vec<ServiceDemand>,
}

//! `GET /sessions` of the store's admin port: how many sessions it holds, by state, for
//! the Supplier's `status.sessionsInFlight`.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// Largest `/sessions` answer a reader accepts.
pub const MAX_SESSION_COUNTS_BYTES: usize = 16 << 10;

/// The store's sessions by state (`open`, `freezing`, `frozen`, `claimed`, `proven`,
/// `settled`, `expired`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize, Serialize)]
pub struct SessionCounts {
    pub sessions: BTreeMap<String, u64>,
}

impl SessionCounts {
    /// Sessions whose reward is not settled yet: open (taking relays), being frozen,
    /// frozen (claim coming) or claimed (proof or settlement coming).
    pub fn in_flight(&self) -> u64 {
        ["open", "freezing", "frozen", "claimed"]
            .iter()
            .filter_map(|s| self.sessions.get(*s))
            .sum()
    }
}

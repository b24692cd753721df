//! How long a public port waits for a client and how much request body it holds at
//! once: the bounds serve's relay port and the gateway's API share.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::Invalid;

/// A request's headers must arrive within this long, seconds (HTTP/1.1: also the
/// longest a kept-alive connection waits for its next request's first line).
pub const DEFAULT_HEADER_READ_TIMEOUT_SECONDS: u64 = 10;
/// A request's whole body must arrive within this long of its headers, seconds.
pub const DEFAULT_BODY_READ_TIMEOUT_SECONDS: u64 = 30;
/// A connection with no request in flight is closed after this long, seconds.
pub const DEFAULT_IDLE_TIMEOUT_SECONDS: u64 = 60;

/// Bounds on what clients of a public port can hold.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ConnectionLimits {
    #[serde(default = "default_header_read")]
    pub header_read_timeout_seconds: u64,
    #[serde(default = "default_body_read")]
    pub body_read_timeout_seconds: u64,
    #[serde(default = "default_idle")]
    pub idle_timeout_seconds: u64,
    /// Request body bytes held at once across all requests being read; a request that
    /// would go over waits for room (until its body-read timeout), then gets 503.
    pub in_flight_body_bytes: usize,
}

fn default_header_read() -> u64 {
    DEFAULT_HEADER_READ_TIMEOUT_SECONDS
}
fn default_body_read() -> u64 {
    DEFAULT_BODY_READ_TIMEOUT_SECONDS
}
fn default_idle() -> u64 {
    DEFAULT_IDLE_TIMEOUT_SECONDS
}

impl ConnectionLimits {
    /// The default timeouts, with `in_flight_body_bytes` for the body budget.
    pub fn with_body_budget(in_flight_body_bytes: usize) -> Self {
        Self {
            header_read_timeout_seconds: DEFAULT_HEADER_READ_TIMEOUT_SECONDS,
            body_read_timeout_seconds: DEFAULT_BODY_READ_TIMEOUT_SECONDS,
            idle_timeout_seconds: DEFAULT_IDLE_TIMEOUT_SECONDS,
            in_flight_body_bytes,
        }
    }

    pub fn header_read_timeout(&self) -> Duration {
        Duration::from_secs(self.header_read_timeout_seconds)
    }
    pub fn body_read_timeout(&self) -> Duration {
        Duration::from_secs(self.body_read_timeout_seconds)
    }
    pub fn idle_timeout(&self) -> Duration {
        Duration::from_secs(self.idle_timeout_seconds)
    }

    /// Every timeout positive, and a budget that holds at least one largest body.
    pub fn validate(&self, max_body_bytes: usize) -> Result<(), Invalid> {
        for (name, v) in [
            (
                "header_read_timeout_seconds",
                self.header_read_timeout_seconds,
            ),
            ("body_read_timeout_seconds", self.body_read_timeout_seconds),
            ("idle_timeout_seconds", self.idle_timeout_seconds),
        ] {
            if v == 0 {
                return Err(Invalid(format!("limits.{name} must be positive")));
            }
        }
        if self.in_flight_body_bytes < max_body_bytes {
            return Err(Invalid(format!(
                "limits.in_flight_body_bytes ({}) must hold at least one largest body ({max_body_bytes} bytes)",
                self.in_flight_body_bytes
            )));
        }
        Ok(())
    }
}

//! lode's gateway: an OpenAI-compatible front door to POKT suppliers.
//!
//! A request's model picks the POKT service, its API key the application; the gateway
//! finds the application's current session, orders the session's suppliers by score
//! (latency × error penalty), ring-signs a `RelayRequest` for the first, verifies the
//! supplier's signature on the answer (every batch of a stream) and hands the engine's
//! response back as plain JSON or SSE. A supplier that fails (unreachable, refused, bad
//! signature, engine 5xx) loses score and the next one is tried.

pub mod config;
pub mod limits;
pub mod metrics;
pub mod relay;
pub mod scores;
pub mod server;
pub mod sessions;

pub use config::GatewayConfig;
pub use server::{GatewayHandle, start};

//! The documents that cross a process boundary in lode, as serde types that the writer
//! serializes and the reader deserializes:
//!
//! | document | written by | read by |
//! | --- | --- | --- |
//! | [`serve::ServeConfig`] (YAML) | the operator's ConfigMap, people | `relayminer serve`, `run`, the jobs |
//! | [`gateway::GatewayConfig`] (YAML) | the operator's ConfigMap, people | `lode-gateway` |
//! | [`stake::StakeSpec`] (JSON) | the operator's stake Job | `relayminer stake` |
//! | [`report::JobReport`] (JSON, stdout) | `relayminer claim` / `prove` | people, scripts |
//! | [`report::JobSummary`] (JSON, termination message) | `relayminer claim` / `prove` | the operator |
//! | [`report::StakeReport`] (JSON, stdout) | `relayminer stake` / `unstake` | people, scripts |
//! | [`demand::DemandReport`] (JSON, `GET /demand`) | `relayminer serve` | the operator's autoscaler |
//! | [`store::SessionCounts`] (JSON, `GET /sessions`) | `relayminer store` | the operator |
//!
//! Nothing here does I/O; loading files and serving endpoints stay with the binaries.
//! Round-trip tests (`tests/round_trip.rs`) hold writers and readers together.

pub mod chain;
pub mod demand;
pub mod gateway;
pub mod limits;
pub mod report;
pub mod serve;
pub mod stake;
pub mod store;

pub use chain::NodeConfig;

use serde::Serialize;
use serde::de::DeserializeOwned;

/// Why a document was refused: what is wrong, in words a person can act on.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct Invalid(pub String);

impl Invalid {
    pub fn new(reason: impl Into<String>) -> Self {
        Self(reason.into())
    }
}

/// A document as YAML (what the operator puts in a ConfigMap). Strings are quoted by
/// the serializer, so a quote, a newline or a `#` in a value cannot change the shape of
/// the document.
pub fn to_yaml<T: Serialize>(doc: &T) -> String {
    serde_saphyr::to_string(doc).expect("lode's documents are plain data and always serialize")
}

/// A document from YAML (unknown keys are refused where the type says so).
pub fn from_yaml<T: DeserializeOwned>(text: &str) -> Result<T, Invalid> {
    serde_saphyr::from_str(text).map_err(|e| Invalid(e.to_string()))
}

/// A document as one line of JSON.
pub fn to_json<T: Serialize>(doc: &T) -> String {
    serde_json::to_string(doc).expect("lode's documents are plain data and always serialize")
}

/// A document from JSON.
pub fn from_json<T: DeserializeOwned>(text: &str) -> Result<T, Invalid> {
    serde_json::from_str(text).map_err(|e| Invalid(e.to_string()))
}

/// A valid on-chain service id: 1–42 of `[a-zA-Z0-9_-]`.
pub fn is_service_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 42
        && id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
}

/// An `http://` or `https://` URL.
pub fn is_http_url(url: &str) -> bool {
    url.starts_with("http://") || url.starts_with("https://")
}

//! The gateway's YAML configuration.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Deserialize;

/// How a supplier is picked among a session's suppliers.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Routing {
    /// Lowest latency × error penalty first; suppliers not tried yet are tried early.
    #[default]
    Scored,
    RoundRobin,
    Random,
}

/// Where the chain is.
pub use lode_chain::NodeConfig as ChainConfig;

/// An application this gateway serves (it must have delegated to the gateway key, or
/// the key is the application's own).
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApplicationConfig {
    pub address: String,
    /// Bearer tokens (`Authorization: Bearer …`, the OpenAI SDK's `api_key`) that select
    /// this application. When no application has keys, any token is accepted and a
    /// request names its application with `X-Pokt-Application` (or gets the first).
    #[serde(default)]
    pub api_keys: Vec<String>,
    /// Sustained requests per second for this application (default: the gateway's).
    #[serde(default)]
    pub requests_per_second: Option<f64>,
    /// Requests allowed at once above the rate (default: 2 × the rate, at least 1).
    #[serde(default)]
    pub burst: Option<f64>,
}

fn default_listen() -> String {
    "0.0.0.0:8080".into()
}
fn default_admin() -> String {
    "0.0.0.0:9095".into()
}
fn default_attempts() -> usize {
    3
}
fn default_timeout() -> u64 {
    600
}
fn default_body() -> usize {
    20 << 20
}
fn default_rps() -> f64 {
    50.0
}

fn default_max_connections() -> usize {
    16_384
}

/// lode-gateway's configuration.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GatewayConfig {
    /// OpenAI API port.
    #[serde(default = "default_listen")]
    pub listen: String,
    /// Admin port: `/metrics`, `/healthz`, `/readyz`, `/suppliers`.
    #[serde(default = "default_admin")]
    pub admin: String,
    pub chain: ChainConfig,
    /// The key relays are ring-signed with: the gateway's (applications delegate to it)
    /// or an application's own. Hex or `pocketd keys export` armor.
    pub signing_key_file: PathBuf,
    /// Passphrase of an armored key (prefer `LODE_KEY_PASSPHRASE`).
    #[serde(default)]
    pub key_passphrase: Option<String>,
    pub applications: Vec<ApplicationConfig>,
    /// OpenAI model name → POKT service id.
    pub models: BTreeMap<String, String>,
    #[serde(default)]
    pub routing: Routing,
    /// Suppliers tried per request (failover) before the error is returned.
    #[serde(default = "default_attempts")]
    pub max_attempts: usize,
    /// Whole-request timeout toward a supplier (streams included), seconds.
    #[serde(default = "default_timeout")]
    pub request_timeout_seconds: u64,
    /// Largest request body, bytes.
    #[serde(default = "default_body")]
    pub max_body_bytes: usize,
    /// Default per-application rate (requests per second).
    #[serde(default = "default_rps")]
    pub requests_per_second: f64,
    /// Open client connections, at most; later ones wait until one closes.
    #[serde(default = "default_max_connections")]
    pub max_connections: usize,
}

/// Why a configuration was refused.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("reading {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("{path}: {reason}")]
    Invalid { path: String, reason: String },
}

impl GatewayConfig {
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let shown = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: shown.clone(),
            source,
        })?;
        Self::parse(&text).map_err(|reason| ConfigError::Invalid {
            path: shown,
            reason,
        })
    }

    pub fn parse(text: &str) -> Result<Self, String> {
        let c: Self = serde_saphyr::from_str(text).map_err(|e| e.to_string())?;
        c.validate()?;
        Ok(c)
    }

    fn validate(&self) -> Result<(), String> {
        if self.applications.is_empty() {
            return Err("at least one application is required".into());
        }
        if self.models.is_empty() {
            return Err("models: map at least one OpenAI model name to a service id".into());
        }
        if self.applications.len() > 1 && self.applications.iter().any(|a| a.api_keys.is_empty()) {
            return Err(
                "with several applications every one needs api_keys (they select the application)"
                    .into(),
            );
        }
        let mut keys = std::collections::BTreeSet::new();
        for a in &self.applications {
            if !a.address.starts_with("pokt1") {
                return Err(format!(
                    "application {:?} is not a pokt1… address",
                    a.address
                ));
            }
            for k in &a.api_keys {
                if !keys.insert(k) {
                    return Err("an api key is given to two applications".into());
                }
            }
            if a.requests_per_second.is_some_and(|r| !positive_rate(r)) {
                return Err(format!(
                    "application {}: requests_per_second must be a positive number",
                    a.address
                ));
            }
        }
        if self.max_connections == 0 {
            return Err("max_connections must be positive".into());
        }
        if self.max_attempts == 0 {
            return Err("max_attempts must be at least 1".into());
        }
        if !positive_rate(self.requests_per_second) {
            return Err("requests_per_second must be a positive number".into());
        }
        Ok(())
    }
}

/// A usable rate: YAML's `.nan` and `.inf` parse as floats but would switch limiting off.
fn positive_rate(r: f64) -> bool {
    r.is_finite() && r > 0.0
}

#[cfg(test)]
mod tests {
    use super::*;

    const BASE: &str = "chain: {grpc_url: 'http://n:9090', rpc_url: 'http://n:26657'}\nsigning_key_file: /k\nmodels: {m: llm}\n";

    #[test]
    fn defaults_and_refusals() {
        let c = GatewayConfig::parse(&format!("{BASE}applications: [{{address: pokt1abc}}]\n"))
            .expect("valid");
        assert_eq!(c.listen, "0.0.0.0:8080");
        assert_eq!(c.max_attempts, 3);
        assert_eq!(c.routing, Routing::Scored);
        assert_eq!(c.max_connections, 16_384);
        let err = |yaml: String| GatewayConfig::parse(&yaml).expect_err("refused");
        assert!(
            err(format!(
                "{BASE}applications: [{{address: pokt1a, api_keys: [k]}}, {{address: pokt1b, api_keys: [k]}}]\n"
            ))
            .contains("two applications")
        );
        assert!(err(format!("{BASE}applications: []\n")).contains("at least one application"));
        assert!(err(format!("{BASE}applications: [{{address: x}}]\n")).contains("pokt1"));
        assert!(
            err(format!(
                "{BASE}applications: [{{address: pokt1a}}]\nbogus: 1\n"
            ))
            .contains("bogus")
        );
        assert!(
            err(format!(
                "{BASE}applications: [{{address: pokt1a}}]\nmax_connections: 0\n"
            ))
            .contains("max_connections must be positive")
        );
        for rate in [".nan", ".inf", "0", "-1"] {
            assert!(
                err(format!(
                    "{BASE}applications: [{{address: pokt1a, requests_per_second: {rate}}}]\n"
                ))
                .contains("requests_per_second must be a positive number"),
                "{rate}"
            );
            assert!(
                err(format!(
                    "{BASE}applications: [{{address: pokt1a}}]\nrequests_per_second: {rate}\n"
                ))
                .contains("requests_per_second must be a positive number"),
                "{rate}"
            );
        }
    }
}

//! `lode-gateway`'s configuration (YAML). The operator writes it into each GatewayPool's
//! ConfigMap; the gateway reads it.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::limits::ConnectionLimits;
use crate::{Invalid, NodeConfig};

/// OpenAI API port.
pub const DEFAULT_LISTEN: &str = "0.0.0.0:8080";
/// Admin port: `/metrics`, `/healthz`, `/readyz`, `/suppliers`.
pub const DEFAULT_ADMIN: &str = "0.0.0.0:9095";
/// Suppliers tried per request before the error is returned.
pub const DEFAULT_MAX_ATTEMPTS: usize = 3;
/// Whole-request timeout toward a supplier (streams included), seconds.
pub const DEFAULT_REQUEST_TIMEOUT_SECONDS: u64 = 600;
/// Largest request body, bytes.
pub const DEFAULT_MAX_BODY_BYTES: usize = 20 << 20;
/// Default per-application rate, requests per second.
pub const DEFAULT_REQUESTS_PER_SECOND: f64 = 50.0;
/// Open client connections, at most.
pub const DEFAULT_MAX_CONNECTIONS: usize = 16_384;
/// Request body bytes the API port holds at once across all requests being read (each
/// body is held about three times over while it is signed into a relay).
pub const DEFAULT_IN_FLIGHT_BODY_BYTES: usize = 128 << 20;

/// How a supplier is picked among a session's suppliers.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Routing {
    /// Lowest latency × error penalty first; suppliers not tried yet are tried early.
    #[default]
    Scored,
    RoundRobin,
    Random,
}

/// An application this gateway serves (it must have delegated to the gateway key, or
/// the key is the application's own).
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ApplicationConfig {
    pub address: String,
    /// Bearer tokens (`Authorization: Bearer …`, the OpenAI SDK's `api_key`) that select
    /// this application. When no application has keys, any token is accepted and a
    /// request names its application with `X-Pokt-Application` (or gets the first).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub api_keys: Vec<String>,
    /// A file of more API keys for this application, one per line (blank lines and
    /// lines starting with `#` are skipped), read when the gateway starts: how keys
    /// come from a Kubernetes Secret without being written into a ConfigMap.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub api_keys_file: Option<PathBuf>,
    /// Sustained requests per second for this application (default: the gateway's).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub requests_per_second: Option<f64>,
    /// Requests allowed at once above the rate (default: 2 × the rate, at least 1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub burst: Option<f64>,
}

impl ApplicationConfig {
    /// Whether requests select this application by API key.
    pub fn has_keys(&self) -> bool {
        !self.api_keys.is_empty() || self.api_keys_file.is_some()
    }

    /// An application with no API keys and the gateway's rate.
    pub fn new(address: &str) -> Self {
        Self {
            address: address.to_string(),
            api_keys: Vec::new(),
            api_keys_file: None,
            requests_per_second: None,
            burst: None,
        }
    }
}

/// lode-gateway's configuration.
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct GatewayConfig {
    /// OpenAI API port.
    #[serde(default = "default_listen")]
    pub listen: String,
    /// Admin port: `/metrics`, `/healthz`, `/readyz`, `/suppliers`.
    #[serde(default = "default_admin")]
    pub admin: String,
    pub chain: NodeConfig,
    /// The key relays are ring-signed with: the gateway's (applications delegate to it)
    /// or an application's own. Hex or `pocketd keys export` armor.
    pub signing_key_file: PathBuf,
    /// Passphrase of an armored key (prefer `LODE_KEY_PASSPHRASE`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
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
    /// Timeouts and the in-flight body budget of the API port.
    #[serde(default = "default_limits")]
    pub limits: ConnectionLimits,
}

fn default_listen() -> String {
    DEFAULT_LISTEN.into()
}
fn default_admin() -> String {
    DEFAULT_ADMIN.into()
}
fn default_attempts() -> usize {
    DEFAULT_MAX_ATTEMPTS
}
fn default_timeout() -> u64 {
    DEFAULT_REQUEST_TIMEOUT_SECONDS
}
fn default_body() -> usize {
    DEFAULT_MAX_BODY_BYTES
}
fn default_rps() -> f64 {
    DEFAULT_REQUESTS_PER_SECOND
}
fn default_max_connections() -> usize {
    DEFAULT_MAX_CONNECTIONS
}
fn default_limits() -> ConnectionLimits {
    ConnectionLimits::with_body_budget(DEFAULT_IN_FLIGHT_BODY_BYTES)
}

impl GatewayConfig {
    /// A gateway for `applications` that maps `models` to services, with the defaults
    /// for everything else.
    pub fn new(
        chain: NodeConfig,
        signing_key_file: impl Into<PathBuf>,
        applications: Vec<ApplicationConfig>,
        models: BTreeMap<String, String>,
    ) -> Self {
        Self {
            listen: default_listen(),
            admin: default_admin(),
            chain,
            signing_key_file: signing_key_file.into(),
            key_passphrase: None,
            applications,
            models,
            routing: Routing::default(),
            max_attempts: DEFAULT_MAX_ATTEMPTS,
            request_timeout_seconds: DEFAULT_REQUEST_TIMEOUT_SECONDS,
            max_body_bytes: DEFAULT_MAX_BODY_BYTES,
            requests_per_second: DEFAULT_REQUESTS_PER_SECOND,
            max_connections: DEFAULT_MAX_CONNECTIONS,
            limits: default_limits(),
        }
    }

    /// Parses the YAML and checks it ([`Self::validate`]).
    pub fn from_yaml(text: &str) -> Result<Self, Invalid> {
        let c: Self = crate::from_yaml(text)?;
        c.validate()?;
        Ok(c)
    }

    /// The YAML the gateway reads back as this configuration.
    pub fn to_yaml(&self) -> String {
        crate::to_yaml(self)
    }

    /// What the gateway needs to run: applications (each with its own API keys when
    /// there are several) at `pokt1…` addresses, models, finite positive rates, at least
    /// one attempt, room for connections.
    pub fn validate(&self) -> Result<(), Invalid> {
        if self.applications.is_empty() {
            return Err(Invalid::new("at least one application is required"));
        }
        self.limits.validate(self.max_body_bytes)?;
        if self.models.is_empty() {
            return Err(Invalid::new(
                "models: map at least one OpenAI model name to a service id",
            ));
        }
        if self.applications.len() > 1 && self.applications.iter().any(|a| !a.has_keys()) {
            return Err(Invalid::new(
                "with several applications every one needs api_keys or an api_keys_file (the key selects the application)",
            ));
        }
        let mut keys = BTreeSet::new();
        for a in &self.applications {
            if !a.address.starts_with("pokt1") {
                return Err(Invalid(format!(
                    "application {:?} is not a pokt1… address",
                    a.address
                )));
            }
            for k in &a.api_keys {
                if !is_api_key(k) {
                    return Err(Invalid(format!(
                        "application {}: an api key must be 1 to {MAX_API_KEY_BYTES} printable ASCII characters without spaces",
                        a.address
                    )));
                }
                if !keys.insert(k) {
                    return Err(Invalid::new("an api key is given to two applications"));
                }
            }
            if a.requests_per_second.is_some_and(|r| !positive_rate(r)) {
                return Err(Invalid(format!(
                    "application {}: requests_per_second must be a positive number",
                    a.address
                )));
            }
        }
        if self.max_connections == 0 {
            return Err(Invalid::new("max_connections must be positive"));
        }
        if self.max_attempts == 0 {
            return Err(Invalid::new("max_attempts must be at least 1"));
        }
        if !positive_rate(self.requests_per_second) {
            return Err(Invalid::new(
                "requests_per_second must be a positive number",
            ));
        }
        Ok(())
    }
}

/// Longest API key, bytes.
pub const MAX_API_KEY_BYTES: usize = 256;

/// What a bearer token can be: printable ASCII, no spaces, bounded.
pub fn is_api_key(k: &str) -> bool {
    !k.is_empty() && k.len() <= MAX_API_KEY_BYTES && k.bytes().all(|b| b.is_ascii_graphic())
}

/// A usable rate: YAML's `.nan` and `.inf` parse as floats but would switch limiting off.
fn positive_rate(r: f64) -> bool {
    r.is_finite() && r > 0.0
}

#[cfg(test)]
mod tests {
    use super::*;

    const BASE: &str = "chain: {grpc_url: 'http://n:9090', rpc_url: 'http://n:26657'}\nsigning_key_file: /k\nmodels: {m: llm}\n";

    fn parse(yaml: &str) -> Result<GatewayConfig, String> {
        GatewayConfig::from_yaml(yaml).map_err(|e| e.0)
    }

    #[test]
    fn defaults_and_refusals() {
        let c = parse(&format!("{BASE}applications: [{{address: pokt1abc}}]\n")).expect("valid");
        assert_eq!(c.listen, "0.0.0.0:8080");
        assert_eq!(c.max_attempts, 3);
        assert_eq!(c.routing, Routing::Scored);
        assert_eq!(c.max_connections, 16_384);
        let err = |yaml: String| parse(&yaml).expect_err("refused");
        assert!(
            err(format!(
                "{BASE}applications: [{{address: pokt1a, api_keys: [k]}}, {{address: pokt1b, api_keys: [k]}}]\n"
            ))
            .contains("two applications")
        );
        assert!(
            err(format!(
                "{BASE}applications: [{{address: pokt1a, api_keys: [k]}}, {{address: pokt1b}}]\n"
            ))
            .contains("every one needs api_keys")
        );
        assert!(
            err(format!(
                "{BASE}applications: [{{address: pokt1a, api_keys: ['two words']}}]\n"
            ))
            .contains("printable ASCII")
        );
        // Keys from a file count: the gateway reads them when it starts.
        parse(&format!(
            "{BASE}applications: [{{address: pokt1a, api_keys: [k]}}, {{address: pokt1b, api_keys_file: /keys/b}}]\n"
        ))
        .expect("a key file selects the second application");
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

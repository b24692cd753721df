//! The gateway's configuration: the YAML document of [`lode_contracts::gateway`] (what
//! the operator writes into a GatewayPool's ConfigMap), read from a file.

use std::path::Path;

pub use lode_contracts::NodeConfig as ChainConfig;
pub use lode_contracts::gateway::{ApplicationConfig, GatewayConfig, Routing};

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

/// Reads and checks the configuration file at `path`.
pub fn load(path: &Path) -> Result<GatewayConfig, ConfigError> {
    let shown = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: shown.clone(),
        source,
    })?;
    GatewayConfig::from_yaml(&text).map_err(|e| ConfigError::Invalid {
        path: shown,
        reason: e.0,
    })
}

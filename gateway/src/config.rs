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

/// Largest API key file read, bytes (about 4,000 keys).
pub const MAX_KEY_FILE_BYTES: u64 = 1 << 20;

/// Reads and checks the configuration file at `path`, then each application's
/// `api_keys_file`, whose keys join the application's `api_keys`.
pub fn load(path: &Path) -> Result<GatewayConfig, ConfigError> {
    let shown = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: shown.clone(),
        source,
    })?;
    let mut config = GatewayConfig::from_yaml(&text).map_err(|e| ConfigError::Invalid {
        path: shown.clone(),
        reason: e.0,
    })?;
    read_key_files(&mut config)?;
    // Keys from files obey the same rules (format, one application per key).
    config.validate().map_err(|e| ConfigError::Invalid {
        path: shown,
        reason: e.0,
    })?;
    Ok(config)
}

/// Adds the keys of every `api_keys_file` to its application. A file that cannot be
/// read, is larger than [`MAX_KEY_FILE_BYTES`] or holds no key is refused: an
/// application whose keys went missing must not silently become unreachable.
pub fn read_key_files(config: &mut GatewayConfig) -> Result<(), ConfigError> {
    use std::io::Read;
    for app in &mut config.applications {
        let Some(file) = &app.api_keys_file else {
            continue;
        };
        let shown = file.display().to_string();
        let read_err = |source| ConfigError::Read {
            path: shown.clone(),
            source,
        };
        let mut text = String::new();
        std::fs::File::open(file)
            .map_err(read_err)?
            .take(MAX_KEY_FILE_BYTES + 1)
            .read_to_string(&mut text)
            .map_err(read_err)?;
        let invalid = |reason: String| ConfigError::Invalid {
            path: shown.clone(),
            reason,
        };
        if text.len() as u64 > MAX_KEY_FILE_BYTES {
            return Err(invalid(format!("larger than {MAX_KEY_FILE_BYTES} bytes")));
        }
        let before = app.api_keys.len();
        for (n, line) in text.lines().enumerate() {
            let key = line.trim();
            if key.is_empty() || key.starts_with('#') {
                continue;
            }
            if !lode_contracts::gateway::is_api_key(key) {
                // The line number only: the file holds secrets.
                return Err(invalid(format!(
                    "line {}: an api key must be 1 to {} printable ASCII characters without spaces",
                    n + 1,
                    lode_contracts::gateway::MAX_API_KEY_BYTES
                )));
            }
            app.api_keys.push(key.to_string());
        }
        if app.api_keys.len() == before {
            return Err(invalid(format!(
                "no API key for application {} (one key per line)",
                app.address
            )));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(dir: &Path, name: &str, text: &str) -> std::path::PathBuf {
        let p = dir.join(name);
        std::fs::write(&p, text).expect("write");
        p
    }

    #[test]
    fn keys_from_files_select_applications_and_bad_files_are_refused() {
        let dir = std::env::temp_dir().join(format!("lode-gw-keys-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let a = write(&dir, "a", "# keys of a\nsk-a1\n\n  sk-a2  \n");
        let b = write(&dir, "b", "sk-b\n");
        let yaml = format!(
            "chain: {{grpc_url: 'http://n:9090', rpc_url: 'http://n:26657'}}\nsigning_key_file: /k\nmodels: {{m: llm}}\napplications: [{{address: pokt1a, api_keys_file: {}}}, {{address: pokt1b, api_keys: [sk-b0], api_keys_file: {}}}]\n",
            a.display(),
            b.display()
        );
        let config_file = write(&dir, "gateway.yaml", &yaml);
        let c = load(&config_file).expect("loads");
        assert_eq!(c.applications[0].api_keys, ["sk-a1", "sk-a2"]);
        assert_eq!(c.applications[1].api_keys, ["sk-b0", "sk-b"]);

        let refused = |text: &str| {
            write(&dir, "b", text);
            load(&config_file).expect_err("refused").to_string()
        };
        assert!(refused("# only a comment\n").contains("no API key for application pokt1b"));
        assert!(refused("sk-a1\n").contains("two applications"));
        let e = refused("has a space\n");
        assert!(e.contains("line 1") && !e.contains("has a space"), "{e}");
        let e = refused(&"k".repeat(MAX_KEY_FILE_BYTES as usize + 10));
        assert!(e.contains("larger than"), "{e}");
        std::fs::remove_file(&b).expect("rm");
        assert!(
            load(&config_file)
                .expect_err("missing")
                .to_string()
                .contains("reading")
        );
        std::fs::remove_dir_all(&dir).ok();
    }
}

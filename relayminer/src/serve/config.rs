//! `relayminer serve` configuration: lode's own YAML, or poktroll's relayminer YAML
//! (spec §7) translated into it, so a supplier can switch without rewriting config.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

/// What to do with mined relays when the store is slow or down.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StorePolicy {
    /// Answer the gateway only after the store acknowledged the relay.
    Hold,
    /// Answer at once and queue the relay for the store; new relays are refused (503)
    /// while the queue is full. Nothing is ever dropped silently.
    #[default]
    Queue,
}

/// The API the engine speaks.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BackendKind {
    /// OpenAI-compatible HTTP: vLLM, TensorRT-LLM `trtllm-serve`, SGLang, llama.cpp.
    #[default]
    Openai,
    /// Triton's KServe v2 gRPC (`ModelInfer`, `ModelStreamInfer`) with TensorRT-LLM's
    /// text tensors; gateways still send OpenAI requests, serve translates.
    Triton,
}

/// One service this relayminer serves.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServiceConfig {
    pub service_id: String,
    /// The engine's base URL, e.g. `http://127.0.0.1:8000` (vLLM's OpenAI server), or
    /// Triton's gRPC port (`http://127.0.0.1:8001`) with `backend: triton`.
    pub backend_url: String,
    #[serde(default)]
    pub backend: BackendKind,
    /// The Triton model to call (TensorRT-LLM's `ensemble` by default).
    #[serde(default = "default_triton_model")]
    pub triton_model: String,
    /// Headers added to every backend request (overriding the gateway's).
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    /// HTTP basic authentication toward the backend.
    #[serde(default)]
    pub basic_auth: Option<BasicAuth>,
    /// Add `Pocket-Supplier`, `Pocket-Service`, `Pocket-Session-Id`, … to backend requests.
    #[serde(default)]
    pub forward_pocket_headers: bool,
    /// Whole-request timeout toward the backend (streams included), seconds.
    #[serde(default = "default_timeout")]
    pub request_timeout_seconds: u64,
    /// Largest request and (non-streamed) response body, bytes.
    #[serde(default = "default_max_body")]
    pub max_body_bytes: usize,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BasicAuth {
    pub username: String,
    pub password: String,
}

fn default_triton_model() -> String {
    "ensemble".into()
}
fn default_timeout() -> u64 {
    600
}
fn default_max_body() -> usize {
    20 << 20
}
fn default_listen() -> String {
    "0.0.0.0:8545".into()
}
fn default_admin() -> String {
    "0.0.0.0:9091".into()
}
fn default_queue() -> usize {
    10_000
}
fn default_batch_ms() -> u64 {
    20
}
fn default_batch_bytes() -> usize {
    16 << 10
}

/// Open connections on the relay port, at most (beyond: new ones wait in the backlog).
/// Each concurrent relay or stream needs one (HTTP/1.1) or shares one (HTTP/2).
pub fn default_max_connections() -> usize {
    16_384
}

fn default_ring_table_mib() -> usize {
    128
}

/// Where the chain is.
pub use lode_chain::NodeConfig as ChainConfig;

/// Where mined relays go.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StoreConfig {
    /// The store's gRPC URL, e.g. `http://supplier-store:7070`.
    pub url: String,
    /// File holding the store's token (a mounted Secret).
    pub token_file: PathBuf,
    #[serde(default)]
    pub policy: StorePolicy,
    /// Mined relays waiting for the store's acknowledgement, at most.
    #[serde(default = "default_queue")]
    pub queue_capacity: usize,
}

/// lode's serve configuration.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServeConfig {
    /// Relay port (HTTP/1.1 and HTTP/2 cleartext).
    #[serde(default = "default_listen")]
    pub listen: String,
    /// Admin port: `/metrics`, `/healthz`, `/readyz`, `/demand`.
    #[serde(default = "default_admin")]
    pub admin: String,
    pub chain: ChainConfig,
    pub store: StoreConfig,
    /// Supplier operator key files (hex or `pocketd keys export` armor); relays for
    /// other suppliers are refused.
    pub signing_key_files: Vec<PathBuf>,
    /// Passphrase of armored key files (prefer `LODE_KEY_PASSPHRASE`).
    #[serde(default)]
    pub key_passphrase: Option<String>,
    pub services: Vec<ServiceConfig>,
    /// Serve relays beyond the application's per-session budget (spec §5.3).
    #[serde(default)]
    pub enable_over_servicing: bool,
    /// Streams: later chunks are flushed to the gateway after this long…
    #[serde(default = "default_batch_ms")]
    pub stream_batch_ms: u64,
    /// …or once this many bytes are pending. The first chunk is always sent at once.
    #[serde(default = "default_batch_bytes")]
    pub stream_batch_bytes: usize,
    /// Open connections on the relay port, at most; later ones wait until one closes.
    #[serde(default = "default_max_connections")]
    pub max_connections: usize,
    /// Memory (MiB) for the point tables that speed up the ring signatures of busy
    /// applications (about 0.6 MiB per point; least recently used out first). 0: none.
    #[serde(default = "default_ring_table_mib")]
    pub ring_table_mib: usize,
}

impl ServeConfig {
    pub fn stream_batch_interval(&self) -> Duration {
        Duration::from_millis(self.stream_batch_ms)
    }
}

/// The smallest lode serve configuration: one service in front of one OpenAI-compatible
/// engine, signing keys from files, no `store` section (what `relayminer run` takes; serve
/// alone needs one added). The local fleet and the tests write these.
pub fn minimal_yaml(
    listen: &str,
    admin: &str,
    chain: &ChainConfig,
    key_files: &[PathBuf],
    service_id: &str,
    backend_url: &str,
) -> String {
    let keys: Vec<String> = key_files
        .iter()
        .map(|k| format!("'{}'", k.display()))
        .collect();
    format!(
        "listen: '{listen}'\nadmin: '{admin}'\n\
         chain: {{grpc_url: '{}', rpc_url: '{}'}}\n\
         signing_key_files: [{}]\n\
         services:\n  - service_id: {service_id}\n    backend_url: '{backend_url}'\n",
        chain.grpc_url,
        chain.rpc_url,
        keys.join(", ")
    )
}

/// poktroll's relayminer YAML (the parts that map onto lode).
#[derive(Debug, Deserialize)]
struct PoktrollConfig {
    #[serde(default)]
    default_signing_key_names: Vec<String>,
    #[serde(default)]
    default_request_timeout_seconds: Option<u64>,
    #[serde(default)]
    default_max_body_size: Option<String>,
    #[serde(default)]
    enable_over_servicing: bool,
    pocket_node: PoktrollNode,
    suppliers: Vec<PoktrollSupplier>,
    #[serde(default)]
    metrics: Option<PoktrollAddr>,
}

#[derive(Debug, Deserialize)]
struct PoktrollNode {
    #[serde(default)]
    query_node_rpc_url: Option<String>,
    query_node_grpc_url: String,
    tx_node_rpc_url: String,
}

#[derive(Debug, Deserialize)]
struct PoktrollAddr {
    #[serde(default)]
    addr: Option<String>,
}

#[derive(Debug, Deserialize)]
struct PoktrollSupplier {
    service_id: String,
    listen_url: String,
    #[serde(default)]
    signing_key_names: Vec<String>,
    #[serde(default)]
    request_timeout_seconds: Option<u64>,
    #[serde(default)]
    max_body_size: Option<String>,
    service_config: PoktrollBackend,
}

#[derive(Debug, Deserialize)]
struct PoktrollBackend {
    backend_url: String,
    #[serde(default)]
    authentication: Option<BasicAuth>,
    #[serde(default)]
    headers: BTreeMap<String, String>,
    #[serde(default)]
    forward_pocket_headers: bool,
}

/// poktroll configs name nodes `tcp://host:port`; lode's clients speak HTTP to them.
fn http_url(u: &str) -> String {
    match u.strip_prefix("tcp://") {
        Some(rest) => format!("http://{rest}"),
        None => u.to_string(),
    }
}

/// Parses sizes like poktroll's `20MB`, `512KB`, `1GiB` or plain bytes.
pub fn parse_size(s: &str) -> Result<usize, String> {
    let t = s.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let n: usize = num
        .parse()
        .map_err(|_| format!("{s:?} is not a size like 20MB"))?;
    let mult = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "kb" => 1_000,
        "kib" => 1 << 10,
        "mb" => 1_000_000,
        "mib" => 1 << 20,
        "gb" => 1_000_000_000,
        "gib" => 1 << 30,
        other => return Err(format!("unknown size unit {other:?} in {s:?}")),
    };
    n.checked_mul(mult)
        .ok_or_else(|| format!("{s:?} is too large"))
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

impl ServeConfig {
    /// Reads lode's format, or poktroll's (recognized by its `pocket_node` key).
    /// poktroll's key names become files `<keys_dir>/<name>`.
    pub fn load(path: &Path, keys_dir: Option<&Path>) -> Result<Self, ConfigError> {
        let shown = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: shown.clone(),
            source,
        })?;
        Self::parse(&text, keys_dir).map_err(|reason| ConfigError::Invalid {
            path: shown,
            reason,
        })
    }

    /// Reads a configuration for `relayminer run`, which runs its own store at `url`
    /// with the token in `token_file`: a `store` section is optional (its policy and
    /// queue size are kept) and its address and token are replaced.
    pub fn load_for_run(
        path: &Path,
        keys_dir: Option<&Path>,
        url: &str,
        token_file: &Path,
    ) -> Result<Self, ConfigError> {
        let shown = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: shown.clone(),
            source,
        })?;
        let invalid = |reason: String| ConfigError::Invalid {
            path: shown.clone(),
            reason,
        };
        let mut probe: serde_json::Value =
            serde_saphyr::from_str(&text).map_err(|e| invalid(e.to_string()))?;
        let text = match probe.as_object_mut() {
            Some(top) if !top.contains_key("pocket_node") && !top.contains_key("store") => {
                top.insert(
                    "store".into(),
                    serde_json::json!({"url": url, "token_file": token_file}),
                );
                // JSON is YAML.
                probe.to_string()
            }
            _ => text,
        };
        let mut config = Self::parse(&text, keys_dir).map_err(invalid)?;
        config.store.url = url.to_string();
        config.store.token_file = token_file.to_path_buf();
        Ok(config)
    }

    pub fn parse(text: &str, keys_dir: Option<&Path>) -> Result<Self, String> {
        let probe: serde_json::Value = serde_saphyr::from_str(text).map_err(|e| e.to_string())?;
        let config = if probe.get("pocket_node").is_some() {
            let p: PoktrollConfig = serde_saphyr::from_str(text).map_err(|e| e.to_string())?;
            from_poktroll(p, keys_dir)?
        } else {
            serde_saphyr::from_str::<Self>(text).map_err(|e| e.to_string())?
        };
        config.validate()?;
        Ok(config)
    }

    fn validate(&self) -> Result<(), String> {
        if self.services.is_empty() {
            return Err("at least one service is required".into());
        }
        if self.signing_key_files.is_empty() {
            return Err("at least one signing key file is required".into());
        }
        let mut seen = std::collections::BTreeSet::new();
        for s in &self.services {
            if !seen.insert(&s.service_id) {
                return Err(format!("service {:?} is configured twice", s.service_id));
            }
            let valid_id = !s.service_id.is_empty()
                && s.service_id.len() <= 42
                && s.service_id
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
            if !valid_id {
                return Err(format!(
                    "service id {:?} is not a valid on-chain id (1–42 of [a-zA-Z0-9_-])",
                    s.service_id
                ));
            }
            if !(s.backend_url.starts_with("http://") || s.backend_url.starts_with("https://")) {
                return Err(format!(
                    "service {:?}: backend_url {:?} must be http:// or https://",
                    s.service_id, s.backend_url
                ));
            }
            if s.request_timeout_seconds == 0 {
                return Err(format!(
                    "service {:?}: request_timeout_seconds must be positive",
                    s.service_id
                ));
            }
        }
        if self.store.queue_capacity == 0 {
            return Err("store.queue_capacity must be positive".into());
        }
        if self.max_connections == 0 {
            return Err("max_connections must be positive".into());
        }
        Ok(())
    }
}

fn from_poktroll(p: PoktrollConfig, keys_dir: Option<&Path>) -> Result<ServeConfig, String> {
    let listen = p
        .suppliers
        .first()
        .map(|s| s.listen_url.clone())
        .ok_or("poktroll config: no suppliers")?;
    if p.suppliers.iter().any(|s| s.listen_url != listen) {
        return Err("poktroll config: lode serves every service on one listen address; give all suppliers the same listen_url".into());
    }
    let listen = listen
        .trim_start_matches("http://")
        .trim_start_matches("ws://")
        .trim_end_matches('/')
        .to_string();
    let dir = keys_dir
        .ok_or("poktroll config names keyring keys: pass --keys-dir with one key file per name")?;
    let mut names: Vec<String> = p.default_signing_key_names.clone();
    for s in &p.suppliers {
        names.extend(s.signing_key_names.iter().cloned());
    }
    names.sort();
    names.dedup();
    if names.is_empty() {
        return Err("poktroll config: no signing_key_names".into());
    }
    let default_body = p
        .default_max_body_size
        .as_deref()
        .map(parse_size)
        .transpose()?
        .unwrap_or(20_000_000);
    let services = p
        .suppliers
        .iter()
        .map(|s| {
            Ok(ServiceConfig {
                service_id: s.service_id.clone(),
                backend_url: s.service_config.backend_url.clone(),
                backend: BackendKind::Openai,
                triton_model: default_triton_model(),
                headers: s.service_config.headers.clone(),
                basic_auth: s.service_config.authentication.clone(),
                forward_pocket_headers: s.service_config.forward_pocket_headers,
                request_timeout_seconds: s
                    .request_timeout_seconds
                    .or(p.default_request_timeout_seconds)
                    .unwrap_or(10),
                max_body_bytes: s
                    .max_body_size
                    .as_deref()
                    .map(parse_size)
                    .transpose()?
                    .unwrap_or(default_body),
            })
        })
        .collect::<Result<_, String>>()?;
    Ok(ServeConfig {
        listen,
        admin: p
            .metrics
            .and_then(|m| m.addr)
            .map_or_else(default_admin, |a| {
                if a.starts_with(':') {
                    format!("0.0.0.0{a}")
                } else {
                    a
                }
            }),
        chain: ChainConfig {
            grpc_url: http_url(&p.pocket_node.query_node_grpc_url),
            rpc_url: http_url(
                &p.pocket_node
                    .query_node_rpc_url
                    .unwrap_or(p.pocket_node.tx_node_rpc_url),
            ),
        },
        store: StoreConfig {
            url: std::env::var("LODE_STORE_URL").unwrap_or_else(|_| "http://127.0.0.1:7070".into()),
            token_file: std::env::var("LODE_STORE_TOKEN_FILE")
                .map_or_else(|_| dir.join("store-token"), PathBuf::from),
            policy: StorePolicy::Queue,
            queue_capacity: default_queue(),
        },
        signing_key_files: names.iter().map(|n| dir.join(n)).collect(),
        key_passphrase: None,
        services,
        enable_over_servicing: p.enable_over_servicing,
        stream_batch_ms: default_batch_ms(),
        stream_batch_bytes: default_batch_bytes(),
        max_connections: default_max_connections(),
        ring_table_mib: default_ring_table_mib(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lode_config_with_defaults() {
        let c = ServeConfig::parse(
            "chain: {grpc_url: 'http://n:9090', rpc_url: 'http://n:26657'}\n\
             store: {url: 'http://s:7070', token_file: /t, policy: hold}\n\
             signing_key_files: [/keys/op]\n\
             services:\n  - service_id: llm\n    backend_url: http://127.0.0.1:8000\n",
            None,
        )
        .expect("valid");
        assert_eq!(c.listen, "0.0.0.0:8545");
        assert_eq!(c.store.policy, StorePolicy::Hold);
        assert_eq!(c.services[0].max_body_bytes, 20 << 20);
        assert_eq!(c.services[0].request_timeout_seconds, 600);
        assert_eq!(c.max_connections, 16_384);
        assert_eq!(c.ring_table_mib, 128);
    }

    #[test]
    fn poktroll_config_translates() {
        let yaml = r#"
default_signing_key_names: [supplier1]
default_request_timeout_seconds: 30
default_max_body_size: 10MB
smt_store_path: /home/pocket/.pocket/smt
metrics: {enabled: true, addr: ":9090"}
pocket_node:
  query_node_rpc_url: tcp://node:26657
  query_node_grpc_url: tcp://node:9090
  tx_node_rpc_url: tcp://node:26657
suppliers:
  - service_id: llm
    listen_url: http://0.0.0.0:8545
    service_config:
      backend_url: http://vllm:8000
      headers: {X-Api-Key: secret}
      authentication: {username: u, password: p}
      forward_pocket_headers: true
"#;
        let c = ServeConfig::parse(yaml, Some(Path::new("/keys"))).expect("valid");
        assert_eq!(c.listen, "0.0.0.0:8545");
        assert_eq!(c.admin, "0.0.0.0:9090");
        assert_eq!(c.chain.grpc_url, "http://node:9090");
        assert_eq!(c.signing_key_files, vec![PathBuf::from("/keys/supplier1")]);
        let s = &c.services[0];
        assert_eq!(
            (s.request_timeout_seconds, s.max_body_bytes),
            (30, 10_000_000)
        );
        assert!(s.forward_pocket_headers);
        assert_eq!(s.basic_auth.as_ref().expect("auth").username, "u");
        let e = ServeConfig::parse(yaml, None).expect_err("needs keys dir");
        assert!(e.contains("--keys-dir"), "{e}");
    }

    #[test]
    fn bad_configs_say_what_is_wrong() {
        let base = "chain: {grpc_url: g, rpc_url: r}\nstore: {url: s, token_file: /t}\nsigning_key_files: [/k]\n";
        let e =
            ServeConfig::parse(&format!("{base}services: []\n"), None).expect_err("no services");
        assert!(e.contains("at least one service"), "{e}");
        let e = ServeConfig::parse(
            &format!(
                "{base}services: [{{service_id: 'ollama:mistral', backend_url: 'http://x'}}]\n"
            ),
            None,
        )
        .expect_err("bad id");
        assert!(e.contains("not a valid on-chain id"), "{e}");
        let e = ServeConfig::parse(
            &format!("{base}services: [{{service_id: llm, backend_url: 'ftp://x'}}]\n"),
            None,
        )
        .expect_err("bad url");
        assert!(e.contains("http://"), "{e}");
        let e = ServeConfig::parse(
            &format!(
                "{base}services: [{{service_id: llm, backend_url: 'http://x', colour: red}}]\n"
            ),
            None,
        )
        .expect_err("unknown key");
        assert!(e.contains("colour"), "{e}");
        let e = ServeConfig::parse(
            &format!("{base}max_connections: 0\nservices: [{{service_id: llm, backend_url: 'http://x'}}]\n"),
            None,
        )
        .expect_err("no connections");
        assert!(e.contains("max_connections must be positive"), "{e}");
        assert_eq!(parse_size("20MB"), Ok(20_000_000));
        assert_eq!(parse_size("1GiB"), Ok(1 << 30));
        assert!(parse_size("lots").is_err());
    }
}

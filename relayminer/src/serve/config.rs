//! `relayminer serve` configuration: lode's own YAML ([`lode_contracts::serve`], the type
//! the operator writes), or poktroll's relayminer YAML (spec §7) translated into it, so a
//! supplier can switch without rewriting config.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Deserialize;

pub use lode_contracts::NodeConfig as ChainConfig;
pub use lode_contracts::serve::{
    BackendKind, BasicAuth, Routing, RoutingConfig, ServeConfig, ServiceConfig, StoreConfig,
    StorePolicy,
};
use lode_contracts::serve::{DEFAULT_ADMIN, DEFAULT_TRITON_MODEL};

/// The smallest lode serve configuration: one service in front of one OpenAI-compatible
/// engine, signing keys from files, the store on loopback (what `relayminer run` takes;
/// it puts its own store there). The local fleet and the tests write these.
pub fn minimal_yaml(
    listen: &str,
    admin: &str,
    chain: &ChainConfig,
    key_files: &[PathBuf],
    service_id: &str,
    backend_url: &str,
) -> String {
    routed_yaml(
        listen,
        admin,
        chain,
        key_files,
        service_id,
        &[backend_url.to_string()],
        RoutingConfig::default(),
    )
}

/// [`minimal_yaml`] in front of several engine replicas (the first is `backend_url`),
/// routed by `routing`.
pub fn routed_yaml(
    listen: &str,
    admin: &str,
    chain: &ChainConfig,
    key_files: &[PathBuf],
    service_id: &str,
    engines: &[String],
    routing: RoutingConfig,
) -> String {
    let mut service = ServiceConfig::new(
        service_id,
        engines.first().map_or("", String::as_str),
        BackendKind::Openai,
    );
    service.engines = engines.iter().skip(1).cloned().collect();
    service.routing = routing;
    let mut c = ServeConfig::new(
        chain.clone(),
        StoreConfig::new("http://127.0.0.1:7070", "store-token"),
        key_files.to_vec(),
        vec![service],
    );
    c.listen = listen.to_string();
    c.admin = admin.to_string();
    c.to_yaml()
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

/// Reads lode's format, or poktroll's (recognized by its `pocket_node` key). poktroll's
/// key names become files `<keys_dir>/<name>`.
pub fn load(path: &Path, keys_dir: Option<&Path>) -> Result<ServeConfig, ConfigError> {
    let shown = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: shown.clone(),
        source,
    })?;
    parse(&text, keys_dir).map_err(|reason| ConfigError::Invalid {
        path: shown,
        reason,
    })
}

/// Reads a configuration for `relayminer run`, which runs its own store at `url` with
/// the token in `token_file`: a `store` section is optional (its policy and queue size
/// are kept) and its address and token are replaced.
pub fn load_for_run(
    path: &Path,
    keys_dir: Option<&Path>,
    url: &str,
    token_file: &Path,
) -> Result<ServeConfig, ConfigError> {
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
    let mut config = parse(&text, keys_dir).map_err(invalid)?;
    config.store.url = url.to_string();
    config.store.token_file = token_file.to_path_buf();
    Ok(config)
}

/// lode's YAML or poktroll's, checked.
pub fn parse(text: &str, keys_dir: Option<&Path>) -> Result<ServeConfig, String> {
    let probe: serde_json::Value = serde_saphyr::from_str(text).map_err(|e| e.to_string())?;
    if probe.get("pocket_node").is_some() {
        let p: PoktrollConfig = serde_saphyr::from_str(text).map_err(|e| e.to_string())?;
        let config = from_poktroll(p, keys_dir)?;
        config.validate().map_err(|e| e.0)?;
        Ok(config)
    } else {
        ServeConfig::from_yaml(text).map_err(|e| e.0)
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
                triton_model: DEFAULT_TRITON_MODEL.into(),
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
                // poktroll forwards any path; lode forwards inference only.
                routes: lode_contracts::serve::default_routes(),
                // poktroll has one backend per service.
                engines: Vec::new(),
                routing: RoutingConfig::default(),
                discovery: None,
                hold: None,
            })
        })
        .collect::<Result<_, String>>()?;
    let store = StoreConfig::new(
        &std::env::var("LODE_STORE_URL").unwrap_or_else(|_| "http://127.0.0.1:7070".into()),
        std::env::var("LODE_STORE_TOKEN_FILE")
            .map_or_else(|_| dir.join("store-token"), PathBuf::from),
    );
    let chain = ChainConfig {
        grpc_url: http_url(&p.pocket_node.query_node_grpc_url),
        rpc_url: http_url(
            &p.pocket_node
                .query_node_rpc_url
                .unwrap_or(p.pocket_node.tx_node_rpc_url),
        ),
    };
    let key_files = names.iter().map(|n| dir.join(n)).collect();
    let mut config = ServeConfig::new(chain, store, key_files, services);
    config.listen = listen;
    config.enable_over_servicing = p.enable_over_servicing;
    config.admin = p.metrics.and_then(|m| m.addr).map_or_else(
        || DEFAULT_ADMIN.to_string(),
        |a| {
            if a.starts_with(':') {
                format!("0.0.0.0{a}")
            } else {
                a
            }
        },
    );
    Ok(config)
}

/// How serve and the jobs check a store that speaks TLS with a private CA.
pub fn store_tls(store: &StoreConfig) -> Option<lode_store_api::StoreTls> {
    store
        .tls_parts()
        .map(|(ca_file, server_name)| lode_store_api::StoreTls {
            ca_file,
            server_name,
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lode_config_with_defaults() {
        let c = parse(
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
        let c = parse(yaml, Some(Path::new("/keys"))).expect("valid");
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
        let e = parse(yaml, None).expect_err("needs keys dir");
        assert!(e.contains("--keys-dir"), "{e}");
    }

    #[test]
    fn bad_configs_say_what_is_wrong() {
        let base = "chain: {grpc_url: g, rpc_url: r}\nstore: {url: s, token_file: /t}\nsigning_key_files: [/k]\n";
        let e = parse(&format!("{base}services: []\n"), None).expect_err("no services");
        assert!(e.contains("at least one service"), "{e}");
        let e = parse(
            &format!(
                "{base}services: [{{service_id: 'ollama:mistral', backend_url: 'http://x'}}]\n"
            ),
            None,
        )
        .expect_err("bad id");
        assert!(e.contains("not a valid on-chain id"), "{e}");
        let e = parse(
            &format!("{base}services: [{{service_id: llm, backend_url: 'ftp://x'}}]\n"),
            None,
        )
        .expect_err("bad url");
        assert!(e.contains("http://"), "{e}");
        let e = parse(
            &format!(
                "{base}services: [{{service_id: llm, backend_url: 'http://x', colour: red}}]\n"
            ),
            None,
        )
        .expect_err("unknown key");
        assert!(e.contains("colour"), "{e}");
        let e = parse(
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

//! Engine replicas found at run time.
//!
//! A service with `discovery` set follows the EndpointSlices of its engine Service, the
//! way kube-proxy and every Kubernetes load balancer follow a Service's pods: each
//! period serve lists them (`GET /apis/discovery.k8s.io/v1/namespaces/<ns>/endpointslices
//! ?labelSelector=kubernetes.io/service-name=<service>`), keeps the endpoints whose
//! `ready` condition is not false (a terminating pod is never ready), and hands the set
//! to the service's [`Router`](super::route::Router): a new replica takes relays at once,
//! one that left takes nothing new and finishes what it has.
//!
//! **The API server.** In a pod: `https://$KUBERNETES_SERVICE_HOST:$KUBERNETES_SERVICE_PORT`,
//! trusting only the service account's `ca.crt`, with its token (read again each time:
//! Kubernetes rotates it). The discovery's `api_url`, else `LODE_KUBE_API`, replaces it
//! (a development API server without TLS: kubesim sets `LODE_KUBE_API` in its pods); the
//! token is then sent only if the service account's token file exists.
//!
//! **Bounds.** An answer is read within [`ANSWER_TIMEOUT`] and at most
//! [`MAX_ANSWER_BYTES`]; at most [`MAX_ENGINES`] replicas are kept. A failed read (the
//! API server down, a refusal, a malformed or oversized answer) is counted
//! (`lode_serve_discovery_errors_total`) and changes nothing: the last set known stays
//! in use.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use axum::http::Uri;
use bytes::Bytes;
use http_body_util::{BodyExt, Empty, Limited};
use hyper::Request;
use hyper_util::client::legacy::Client;
use lode_contracts::serve::EngineDiscovery;
use serde_json::Value;

use super::relay::RelayState;

/// The service account's files in a pod.
const SERVICE_ACCOUNT: &str = "/var/run/secrets/kubernetes.io/serviceaccount";
/// The largest EndpointSlice list read.
pub const MAX_ANSWER_BYTES: usize = 4 << 20;
/// The longest wait for one answer, whole body included.
pub const ANSWER_TIMEOUT: Duration = Duration::from_secs(5);
/// The most engine replicas one service follows.
pub const MAX_ENGINES: usize = 1024;
/// The largest token file read.
const MAX_TOKEN_BYTES: u64 = 64 << 10;

type Http = Client<lode_net::tls::HttpsConnector, Empty<Bytes>>;

/// A read-only client of the Kubernetes API server.
#[derive(Clone, Debug)]
pub struct KubeApi {
    base: String,
    token_file: Option<PathBuf>,
    client: Http,
}

impl KubeApi {
    /// The API server for `d`: its `api_url`, else as a pod sees it (see the module's
    /// text).
    pub fn for_discovery(d: &EngineDiscovery) -> Result<Self, String> {
        let sa = Path::new(SERVICE_ACCOUNT);
        if let Some(url) = d
            .api_url
            .clone()
            .or_else(|| std::env::var("LODE_KUBE_API").ok())
        {
            let token = sa.join("token");
            return Self::new(
                url.trim_end_matches('/'),
                token.exists().then_some(token),
                None,
            );
        }
        let (Ok(host), Ok(port)) = (
            std::env::var("KUBERNETES_SERVICE_HOST"),
            std::env::var("KUBERNETES_SERVICE_PORT"),
        ) else {
            return Err("engine discovery needs the Kubernetes API: KUBERNETES_SERVICE_HOST and KUBERNETES_SERVICE_PORT are not set (not in a pod?); set LODE_KUBE_API to its URL".into());
        };
        let host = if host.contains(':') {
            format!("[{host}]")
        } else {
            host
        };
        let ca = std::fs::read(sa.join("ca.crt")).map_err(|e| {
            format!(
                "reading the service account's CA {}: {e} (is automountServiceAccountToken off?)",
                sa.join("ca.crt").display()
            )
        })?;
        Self::new(
            &format!("https://{host}:{port}"),
            Some(sa.join("token")),
            Some(&ca),
        )
    }

    /// A client of the API server at `base`, sending the token in `token_file` if set,
    /// trusting `ca_pem` (else the process's roots) for `https://`.
    pub fn new(
        base: &str,
        token_file: Option<PathBuf>,
        ca_pem: Option<&[u8]>,
    ) -> Result<Self, String> {
        if !(base.starts_with("http://") || base.starts_with("https://")) {
            return Err(format!(
                "the Kubernetes API URL {base:?} must be http:// or https://"
            ));
        }
        let timeout = Duration::from_secs(5);
        let connector = match ca_pem {
            Some(pem) => lode_net::tls::https_connector_trusting(pem, timeout)?,
            None => lode_net::tls::https_connector(timeout),
        };
        let client = Client::builder(hyper_util::rt::TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(30))
            .build(connector);
        Ok(Self {
            base: base.to_string(),
            token_file,
            client,
        })
    }

    /// `GET path` as JSON, bounded in time and size.
    async fn get(&self, path: &str) -> Result<Value, String> {
        let mut req =
            Request::get(format!("{}{path}", self.base)).header("accept", "application/json");
        if let Some(f) = &self.token_file {
            let token = read_token(f).await?;
            req = req.header("authorization", format!("Bearer {token}"));
        }
        let req = req
            .body(Empty::new())
            .map_err(|e| format!("building the request: {e}"))?;
        let read = async {
            let answer = self
                .client
                .request(req)
                .await
                .map_err(|e| format!("the API server: {e}"))?;
            let status = answer.status();
            let body = Limited::new(answer.into_body(), MAX_ANSWER_BYTES)
                .collect()
                .await
                .map_err(|e| format!("reading the answer (at most {MAX_ANSWER_BYTES} bytes): {e}"))?
                .to_bytes();
            if !status.is_success() {
                let text = String::from_utf8_lossy(&body[..body.len().min(300)]).into_owned();
                return Err(format!("the API server answered {status}: {text}"));
            }
            serde_json::from_slice(&body).map_err(|e| format!("the answer is not JSON: {e}"))
        };
        tokio::time::timeout(ANSWER_TIMEOUT, read)
            .await
            .map_err(|_| format!("no whole answer within {ANSWER_TIMEOUT:?}"))?
    }

    /// The ready engine replicas of `d`'s Service.
    pub async fn engines(&self, d: &EngineDiscovery) -> Result<Vec<Uri>, String> {
        let list = self
            .get(&format!(
                "/apis/discovery.k8s.io/v1/namespaces/{}/endpointslices?labelSelector=kubernetes.io%2Fservice-name%3D{}",
                d.namespace, d.service
            ))
            .await?;
        ready_engines(&list, &d.port)
    }
}

async fn read_token(f: &Path) -> Result<String, String> {
    use tokio::io::AsyncReadExt;
    let file = tokio::fs::File::open(f)
        .await
        .map_err(|e| format!("reading the token {}: {e}", f.display()))?;
    let mut token = String::new();
    file.take(MAX_TOKEN_BYTES)
        .read_to_string(&mut token)
        .await
        .map_err(|e| format!("reading the token {}: {e}", f.display()))?;
    let token = token.trim();
    if token.is_empty() || !token.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(format!(
            "the token in {} is not a bearer token",
            f.display()
        ));
    }
    Ok(token.to_string())
}

/// The base URLs (`http://address:port`) of the ready endpoints in an EndpointSliceList,
/// at the port named `port`; sorted, without duplicates, at most [`MAX_ENGINES`].
pub fn ready_engines(list: &Value, port: &str) -> Result<Vec<Uri>, String> {
    let items = list["items"]
        .as_array()
        .ok_or("the answer is not an EndpointSliceList (no items)")?;
    let mut out = Vec::new();
    for slice in items {
        let Some(number) = slice["ports"].as_array().and_then(|ps| {
            ps.iter()
                .find(|p| p["name"].as_str() == Some(port))
                .and_then(|p| p["port"].as_u64())
                .filter(|n| (1..=65535).contains(n))
        }) else {
            continue;
        };
        let v6 = slice["addressType"].as_str() == Some("IPv6");
        for e in slice["endpoints"].as_array().into_iter().flatten() {
            // `ready` unset means unknown, which consumers take as ready; a terminating
            // endpoint is never ready.
            if e["conditions"]["ready"] == Value::Bool(false) {
                continue;
            }
            // Every address of one endpoint is the same pod: the first serves.
            let Some(addr) = e["addresses"].as_array().and_then(|a| a.first()?.as_str()) else {
                continue;
            };
            let host = match (v6, addr.parse::<std::net::IpAddr>()) {
                (_, Ok(std::net::IpAddr::V6(a))) => format!("[{a}]"),
                (false, Ok(a)) => a.to_string(),
                _ => continue,
            };
            let Ok(url) = format!("http://{host}:{number}").parse::<Uri>() else {
                continue;
            };
            if out.len() >= MAX_ENGINES {
                return Err(format!(
                    "more than {MAX_ENGINES} ready endpoints: refused, the last set stays"
                ));
            }
            out.push(url);
        }
    }
    out.sort_by_key(Uri::to_string);
    out.dedup();
    Ok(out)
}

/// How often the EndpointSlices are read while relays are held for want of an engine.
pub const HELD_PERIOD: Duration = Duration::from_millis(200);

/// Follows the engine replicas of `service_id` until the task is aborted.
pub async fn follow(api: KubeApi, state: Arc<RelayState>, service_id: String) {
    let Some(service) = state.services.get(&service_id) else {
        return;
    };
    let Some(d) = service.config.discovery.clone() else {
        return;
    };
    let period = Duration::from_millis(d.period_ms);
    let mut last: Option<Vec<Uri>> = None;
    let mut failing = false;
    let mut read_at: Option<tokio::time::Instant> = None;
    loop {
        // Every period; while relays are held for want of an engine, every
        // HELD_PERIOD, so the first engine to turn ready serves them at once.
        if let Some(at) = read_at {
            loop {
                let held = service.metrics.held.load(Ordering::Relaxed) > 0;
                let due = at
                    + if held {
                        period.min(HELD_PERIOD)
                    } else {
                        period
                    };
                let now = tokio::time::Instant::now();
                if now >= due {
                    break;
                }
                tokio::time::sleep((due - now).min(HELD_PERIOD)).await;
            }
        }
        read_at = Some(tokio::time::Instant::now());
        match api.engines(&d).await {
            Ok(found) => {
                if failing {
                    tracing::info!(service = %service_id, "engine discovery works again");
                    failing = false;
                }
                service.router.set_engines(&found);
                if last.as_ref() != Some(&found) {
                    tracing::info!(
                        service = %service_id,
                        engines = found.len(),
                        list = %found.iter().map(Uri::to_string).collect::<Vec<_>>().join(" "),
                        "engine replicas"
                    );
                    last = Some(found);
                }
            }
            Err(e) => {
                service
                    .metrics
                    .route
                    .discovery_errors
                    .fetch_add(1, Ordering::Relaxed);
                if failing {
                    tracing::debug!(service = %service_id, error = %e, "engine discovery");
                } else {
                    tracing::warn!(
                        service = %service_id,
                        error = %e,
                        service_name = %d.service,
                        namespace = %d.namespace,
                        "reading the engine Service's EndpointSlices failed; the last replicas known stay in use"
                    );
                    failing = true;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn slice(port: &str, n: u64, endpoints: Value) -> Value {
        json!({"addressType": "IPv4", "ports": [{"name": "admin", "port": 9}, {"name": port, "port": n}], "endpoints": endpoints})
    }

    #[test]
    fn ready_endpoints_at_the_named_port_only() {
        let list = json!({"kind": "EndpointSliceList", "items": [
            slice("engine", 8000, json!([
                {"addresses": ["10.0.0.2"], "conditions": {"ready": true}},
                {"addresses": ["10.0.0.1"], "conditions": {}},
                {"addresses": ["10.0.0.3"], "conditions": {"ready": false, "serving": true, "terminating": true}},
                {"addresses": ["not an address"], "conditions": {"ready": true}},
                {"addresses": [], "conditions": {"ready": true}},
            ])),
            slice("engine", 8000, json!([{"addresses": ["10.0.0.2"]}])),
            slice("other", 7000, json!([{"addresses": ["10.0.0.9"]}])),
            {"addressType": "IPv6", "ports": [{"name": "engine", "port": 8001}],
             "endpoints": [{"addresses": ["fd00::1"], "conditions": {"ready": true}}]},
            {"ports": [{"name": "engine", "port": 70000}], "endpoints": [{"addresses": ["10.0.0.8"]}]},
        ]});
        let got: Vec<String> = ready_engines(&list, "engine")
            .expect("a list")
            .iter()
            .map(Uri::to_string)
            .collect();
        assert_eq!(
            got,
            [
                "http://10.0.0.1:8000/",
                "http://10.0.0.2:8000/",
                "http://[fd00::1]:8001/"
            ]
        );
        assert!(ready_engines(&json!({"kind": "Status"}), "engine").is_err());
        assert_eq!(ready_engines(&json!({"items": []}), "engine"), Ok(vec![]));
    }

    #[test]
    fn a_list_of_too_many_endpoints_is_refused() {
        let many: Vec<Value> = (0..=MAX_ENGINES)
            .map(|i| json!({"addresses": [format!("10.1.{}.{}", i / 250, i % 250 + 1)]}))
            .collect();
        let list = json!({"items": [slice("engine", 8000, Value::Array(many))]});
        let e = ready_engines(&list, "engine").expect_err("too many");
        assert!(e.contains("more than 1024"), "{e}");
    }
}

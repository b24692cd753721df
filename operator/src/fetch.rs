//! The reads of reconciling (I/O): the objects, chain state and pod reports a decision
//! needs, gathered before anything is decided. Every read of bytes from a pod or a chain
//! node is bounded in size and time.

use std::time::Duration;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, ListParams};
use kube::{Client, ResourceExt};
use lode_chain::proto::pocket::shared;
use lode_contracts::store::{MAX_SESSION_COUNTS_BYTES, SessionCounts};
use lode_crds::{ServiceModel, Supplier};
use serde::de::DeserializeOwned;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::build::{SUPPLIER_LABEL, component, ports};
use crate::outcomes::Outcomes;

/// How long a pod's admin port has to answer one request.
pub const ADMIN_TIMEOUT: Duration = Duration::from_millis(800);

/// The namespace's Suppliers (a ServiceModel is served by the one that lists it).
pub async fn suppliers(client: &Client, ns: &str) -> Result<Vec<Supplier>, kube::Error> {
    Ok(Api::<Supplier>::namespaced(client.clone(), ns)
        .list(&ListParams::default())
        .await?
        .items)
}

/// What a Supplier's status and stake decision are made from.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct SupplierFacts {
    /// Serving pods ready across the ServiceModels it lists.
    pub ready_serving: i32,
    /// The supplier on chain (`None` inside: not staked), or why it could not be read;
    /// not asked (`None`) while no serving pod is ready.
    pub onchain: Option<Result<Option<shared::Supplier>, String>>,
    pub outcomes: Outcomes,
    /// The store's sessions, when its pod answered.
    pub sessions: Option<SessionCounts>,
}

/// Reads everything a Supplier's reconcile decides on.
pub async fn supplier(client: &Client, s: &Supplier) -> Result<SupplierFacts, kube::Error> {
    let ns = s.namespace().unwrap_or_default();
    let name = s.name_any();
    let ready_serving = ready_serving(client, &ns, s).await?;
    // The chain is only asked once something serves: the stake waits for that anyway.
    let onchain = if ready_serving > 0 {
        Some(onchain_supplier(s).await)
    } else {
        None
    };
    let outcomes = job_outcomes(client, &ns, &name).await?;
    let sessions = store_sessions(client, &ns, &name).await?;
    Ok(SupplierFacts {
        ready_serving,
        onchain,
        outcomes,
        sessions,
    })
}

/// Engine replicas ready across the Supplier's ServiceModels whose relay tier has a
/// ready pod (what can serve a relay now); a model scaled to zero counts one, since its
/// relay tier holds the relay and wakes an engine for it.
async fn ready_serving(client: &Client, ns: &str, s: &Supplier) -> Result<i32, kube::Error> {
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), ns);
    let ready_of = |d: &Option<Deployment>| {
        d.as_ref()
            .and_then(|d| d.status.as_ref())
            .and_then(|st| st.ready_replicas)
            .unwrap_or(0)
    };
    let mut ready = 0;
    for svc in &s.spec.services {
        let relay = deployments
            .get_opt(&format!("{}-relay", svc.service_model))
            .await?;
        if ready_of(&relay) == 0 {
            continue;
        }
        let engines = deployments.get_opt(&svc.service_model).await?;
        let at_zero = engines
            .as_ref()
            .and_then(|d| d.spec.as_ref())
            .and_then(|s| s.replicas)
            == Some(0);
        ready += ready_of(&engines).max(i32::from(at_zero));
    }
    Ok(ready)
}

/// The supplier as the chain has it (read-only, one attempt, 5 s).
async fn onchain_supplier(s: &Supplier) -> Result<Option<shared::Supplier>, String> {
    let retry = lode_chain::RetryPolicy {
        attempts: 1,
        first_backoff: Duration::from_millis(100),
        max_backoff: Duration::from_secs(1),
        timeout: Duration::from_secs(5),
    };
    let grpc = lode_chain::ChainGrpc::new(&s.spec.chain.grpc_url, retry)
        .map_err(|e| format!("reading the supplier from {}: {e}", s.spec.chain.grpc_url))?;
    lode_chain::pocket::PocketQuery::new(grpc)
        .supplier(&s.spec.operator_address)
        .await
        .map_err(|e| format!("reading the supplier from {}: {e}", s.spec.chain.grpc_url))
}

/// The Supplier's claim and prove Jobs and what their pods reported.
async fn job_outcomes(client: &Client, ns: &str, supplier: &str) -> Result<Outcomes, kube::Error> {
    let sel = format!(
        "{SUPPLIER_LABEL}={supplier},app.kubernetes.io/component in ({},{})",
        component::CLAIM,
        component::PROVE
    );
    let lp = ListParams::default().labels(&sel);
    let jobs = Api::<Job>::namespaced(client.clone(), ns)
        .list(&lp)
        .await?
        .items;
    if jobs.is_empty() {
        return Ok(Outcomes::default());
    }
    let pods = Api::<Pod>::namespaced(client.clone(), ns)
        .list(&lp)
        .await?
        .items;
    Ok(Outcomes::of(&jobs, &pods))
}

/// The store's session counts (`GET /sessions` of its admin port), from its running pod;
/// `None` when there is none or it does not answer in time.
async fn store_sessions(
    client: &Client,
    ns: &str,
    supplier: &str,
) -> Result<Option<SessionCounts>, kube::Error> {
    let sel = format!(
        "{SUPPLIER_LABEL}={supplier},app.kubernetes.io/component={}",
        component::STORE
    );
    let pods = Api::<Pod>::namespaced(client.clone(), ns)
        .list(&ListParams::default().labels(&sel))
        .await?
        .items;
    let ip = pods
        .iter()
        .filter(|p| p.metadata.deletion_timestamp.is_none())
        .find_map(|p| p.status.as_ref()?.pod_ip.clone());
    Ok(match ip {
        Some(ip) => {
            let addr = format!("{ip}:{}", ports::STORE_ADMIN);
            admin_get(&addr, "/sessions", MAX_SESSION_COUNTS_BYTES, ADMIN_TIMEOUT).await
        }
        None => None,
    })
}

/// The engine pods of a ServiceModel.
pub async fn engine_pods(client: &Client, sm: &ServiceModel) -> Result<Vec<Pod>, kube::Error> {
    pods_of(client, sm, component::ENGINE).await
}

/// The relay-tier pods of a ServiceModel (`relayminer serve`).
pub async fn relay_pods(client: &Client, sm: &ServiceModel) -> Result<Vec<Pod>, kube::Error> {
    pods_of(client, sm, component::SERVE).await
}

async fn pods_of(
    client: &Client,
    sm: &ServiceModel,
    component: &str,
) -> Result<Vec<Pod>, kube::Error> {
    let selector = format!(
        "app.kubernetes.io/component={component},app.kubernetes.io/instance={}",
        sm.name_any()
    );
    Ok(
        Api::<Pod>::namespaced(client.clone(), &sm.namespace().unwrap_or_default())
            .list(&ListParams::default().labels(&selector))
            .await?
            .items,
    )
}

/// `GET path` of a pod's admin port at `addr`, read as JSON: `None` unless a 200 with a
/// body of at most `max_body` bytes arrives within `timeout` (a pod that is slow,
/// answers garbage or answers too much is not read at all).
pub async fn admin_get<T: DeserializeOwned>(
    addr: &str,
    path: &str,
    max_body: usize,
    timeout: Duration,
) -> Option<T> {
    let body = get_bounded(addr, path, max_body, timeout).await?;
    serde_json::from_slice(&body).ok()
}

/// The body of `GET path` at `addr` (HTTP/1.0): `None` unless a 200 with a body of at
/// most `max_body` bytes arrives within `timeout`.
pub async fn get_bounded(
    addr: &str,
    path: &str,
    max_body: usize,
    timeout: Duration,
) -> Option<Vec<u8>> {
    let attempt = async {
        let mut s = tokio::net::TcpStream::connect(addr).await.ok()?;
        s.write_all(format!("GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n").as_bytes())
            .await
            .ok()?;
        // Headers are small; a response longer than this is refused, never buffered.
        let limit = max_body + 8192;
        let mut buf = Vec::new();
        let n = (&mut s)
            .take(limit as u64 + 1)
            .read_to_end(&mut buf)
            .await
            .ok()?;
        if n > limit {
            return None;
        }
        let split = buf.windows(4).position(|w| w == b"\r\n\r\n")?;
        let head = std::str::from_utf8(&buf[..split]).ok()?;
        let ok = head
            .lines()
            .next()
            .is_some_and(|status| status.split_whitespace().nth(1) == Some("200"));
        let body = buf.split_off(split + 4);
        (ok && body.len() <= max_body).then_some(body)
    };
    tokio::time::timeout(timeout, attempt).await.ok().flatten()
}

#[cfg(test)]
mod tests {
    use super::*;
    use lode_contracts::demand::DemandReport;
    use tokio::net::TcpListener;

    /// A one-connection-at-a-time server that answers every request with `answer`
    /// (written, then the connection held open for `hold`).
    async fn server(answer: Vec<u8>, hold: Duration) -> String {
        let l = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = l.local_addr().expect("addr").to_string();
        tokio::spawn(async move {
            loop {
                let Ok((mut s, _)) = l.accept().await else {
                    return;
                };
                let answer = answer.clone();
                tokio::spawn(async move {
                    let mut req = [0u8; 1024];
                    let _ = s.read(&mut req).await;
                    let _ = s.write_all(&answer).await;
                    tokio::time::sleep(hold).await;
                });
            }
        });
        addr
    }

    fn http(status: &str, body: &[u8]) -> Vec<u8> {
        let mut out =
            format!("HTTP/1.1 {status}\r\ncontent-type: application/json\r\n\r\n").into_bytes();
        out.extend_from_slice(body);
        out
    }

    #[tokio::test]
    async fn admin_reads_are_bounded_in_size_and_time() {
        let report = DemandReport::default();
        let good = server(
            http("200 OK", lode_contracts::to_json(&report).as_bytes()),
            Duration::ZERO,
        )
        .await;
        let got: Option<DemandReport> = admin_get(&good, "/demand", 1024, ADMIN_TIMEOUT).await;
        assert_eq!(got, Some(report));

        // 64 MiB of body: refused after reading at most the limit, not buffered whole.
        let mut huge = b"{\"height\":1,\"services\":[".to_vec();
        huge.resize(64 << 20, b' ');
        let big = server(http("200 OK", &huge), Duration::ZERO).await;
        let got: Option<DemandReport> = admin_get(&big, "/demand", 1024, ADMIN_TIMEOUT).await;
        assert_eq!(got, None);

        // Headers and never a body end: the timeout ends it.
        let slow = server(
            b"HTTP/1.1 200 OK\r\n\r\n{".to_vec(),
            Duration::from_secs(30),
        )
        .await;
        let started = std::time::Instant::now();
        let got: Option<DemandReport> =
            admin_get(&slow, "/demand", 1024, Duration::from_millis(200)).await;
        assert_eq!(got, None);
        assert!(started.elapsed() < Duration::from_secs(5));

        // Not a 200, or not the document: nothing.
        let err = server(http("500 Internal Server Error", b"{}"), Duration::ZERO).await;
        assert_eq!(
            admin_get::<DemandReport>(&err, "/demand", 1024, ADMIN_TIMEOUT).await,
            None
        );
        let junk = server(http("200 OK", b"not json"), Duration::ZERO).await;
        assert_eq!(
            admin_get::<DemandReport>(&junk, "/demand", 1024, ADMIN_TIMEOUT).await,
            None
        );
    }
}

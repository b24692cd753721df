//! The relay port: `RelayRequest` in, signed `RelayResponse` (or a stream of signed
//! batches) out, the finished relay mined and shipped to the store. A relay goes
//! through [`super::admit`] (every check, in order), then [`super::proxy`] (the engine,
//! the signed answer, mining) or [`super::stream`].

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use axum::body::{Body, Bytes};
use axum::http::{Request, Uri};
use axum::response::Response;
use http_body_util::Full;
use hyper_util::client::legacy::Client as HttpClient;
use hyper_util::client::legacy::connect::HttpConnector;
use lode_kernels::crypto::ring::BaseTables;

use super::admit::admit;
use super::config::{BackendKind, ServeConfig, ServiceConfig};
use super::metrics::{Metrics, ServiceMetrics};
use super::proxy::{Ctx, join_uri};
use super::session::Sessions;
use super::ship::Shipper;
use super::signer::Signer;

pub use super::failure::{RelayFailure, codes};

type Backend = HttpClient<HttpConnector, Full<Bytes>>;

/// A backend's response body as it arrives.
pub(super) type ChunkStream =
    std::pin::Pin<Box<dyn futures_util::Stream<Item = Result<Bytes, String>> + Send>>;

/// One configured service, ready to proxy.
#[derive(Debug)]
pub struct Service {
    pub config: ServiceConfig,
    base: Uri,
    pub metrics: Arc<ServiceMetrics>,
    /// The engine replicas and how relays are spread over them.
    pub router: super::route::Router,
    /// Triton's gRPC client, for `backend: triton`.
    triton: Option<super::triton::Triton>,
    /// Where relays wait while no engine replica is ready, when configured.
    pub hold: Option<super::hold::Hold>,
}

impl Service {
    /// Triton's gRPC client, for `backend: triton`.
    pub(super) fn triton(&self) -> Option<&super::triton::Triton> {
        self.triton.as_ref()
    }

    pub(super) fn is_triton(&self) -> bool {
        self.triton.is_some()
    }
}

/// Everything the relay handler shares.
#[derive(Debug)]
pub struct RelayState {
    pub config: Arc<ServeConfig>,
    /// Supplier operator address → its signer.
    pub keys: HashMap<String, Arc<Signer>>,
    pub services: HashMap<String, Service>,
    pub sessions: Arc<Sessions>,
    pub shipper: Shipper,
    pub metrics: Arc<Metrics>,
    pub(super) backend: Backend,
    pub(super) max_body: usize,
    /// Point tables for ring verification, shared by every session's ring.
    pub(super) tables: Arc<BaseTables>,
}

impl RelayState {
    pub fn new(
        config: Arc<ServeConfig>,
        keys: HashMap<String, Arc<Signer>>,
        sessions: Arc<Sessions>,
        shipper: Shipper,
        metrics: Arc<Metrics>,
    ) -> Result<Self, String> {
        let mut services = HashMap::new();
        for s in &config.services {
            let base: Uri = s.backend_url.parse().map_err(|e| {
                format!(
                    "service {}: backend_url {:?}: {e}",
                    s.service_id, s.backend_url
                )
            })?;
            // Discovered replicas replace the configured ones (none until found).
            let mut engines = if s.discovery.is_some() {
                Vec::new()
            } else {
                vec![base.clone()]
            };
            for e in &s.engines {
                let u: Uri = e
                    .parse()
                    .map_err(|err| format!("service {}: engine {e:?}: {err}", s.service_id))?;
                if u.authority().is_none() {
                    return Err(format!(
                        "service {}: engine {e:?} has no host",
                        s.service_id
                    ));
                }
                if !engines.contains(&u) {
                    engines.push(u);
                }
            }
            let service_metrics = metrics.service(&s.service_id);
            services.insert(
                s.service_id.clone(),
                Service {
                    router: super::route::Router::new(s.routing, &engines, service_metrics.clone()),
                    triton: match s.backend {
                        BackendKind::Openai => None,
                        BackendKind::Triton => Some(super::triton::Triton::new(s)?),
                    },
                    hold: s.hold.map(super::hold::Hold::new),
                    config: s.clone(),
                    base,
                    metrics: service_metrics,
                },
            );
        }
        let mut http = HttpConnector::new();
        http.set_nodelay(true);
        http.set_connect_timeout(Some(Duration::from_secs(5)));
        let backend = HttpClient::builder(hyper_util::rt::TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(90))
            .pool_max_idle_per_host(1024)
            .build(http);
        let max_body = config
            .services
            .iter()
            .map(|s| s.max_body_bytes)
            .max()
            .unwrap_or(20 << 20);
        let tables = Arc::new(BaseTables::new(config.ring_table_mib << 20));
        Ok(Self {
            config,
            keys,
            services,
            sessions,
            shipper,
            metrics,
            backend,
            max_body,
            tables,
        })
    }

    /// The largest request body of any service.
    pub fn max_body(&self) -> usize {
        self.max_body
    }

    /// Point tables held for ring verification.
    pub fn ring_tables(&self) -> usize {
        self.tables.len()
    }

    /// Whether a backend answers (`GET /v1/models`, any status but a connection error).
    pub async fn backend_reachable(&self, service: &Service) -> bool {
        if let Some(t) = &service.triton {
            return t.ready().await;
        }
        if service.config.discovery.is_some() {
            // With a hold, a relay tier with no engine yet is ready: it holds relays
            // and wakes the engines.
            return service.router.ready() > 0 || service.hold.is_some();
        }
        let Ok(uri) = join_uri(&service.base, "/v1/models") else {
            return false;
        };
        let req = Request::get(uri)
            .body(Full::new(Bytes::new()))
            .expect("static request");
        matches!(
            tokio::time::timeout(Duration::from_secs(2), self.backend.request(req)).await,
            Ok(Ok(_))
        )
    }
}

/// The relay endpoint (any path: routing is by the request's service and supplier; the
/// `Rpc-Type` header is not needed, one backend per service). Each relay is a `relay`
/// span with its session, supplier and service once admission has read them (a debug
/// span: `RUST_LOG=info,lode_relayminer::serve=debug` follows every relay).
#[tracing::instrument(
    name = "relay",
    level = "debug",
    skip_all,
    fields(session = tracing::field::Empty, supplier = tracing::field::Empty, service = tracing::field::Empty)
)]
pub async fn handle(state: Arc<RelayState>, body: Body) -> Response {
    let started = Instant::now();
    state.metrics.requests.fetch_add(1, Ordering::Relaxed);
    let mut admitted = match admit(&state, body).await {
        Ok(a) => a,
        Err(refused) => return refused.respond(&state.metrics),
    };
    let (service, http_req) = (admitted.service, std::mem::take(&mut admitted.http_req));
    let ctx = Ctx::new(state.clone(), admitted, started);
    ctx.proxy(service, http_req).await
}

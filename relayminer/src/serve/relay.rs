//! The relay port: `RelayRequest` in, signed `RelayResponse` (or a stream of signed
//! batches) out, the finished relay mined and shipped to the store.

use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use axum::body::{Body, Bytes};
use axum::http::{HeaderMap, HeaderValue, Method, Request, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use http_body_util::{BodyExt, Full, Limited};
use hyper_util::client::legacy::Client as HttpClient;
use hyper_util::client::legacy::connect::HttpConnector;
use lode_kernels::crypto::ring::{BaseTables, RingError};
use lode_kernels::proto::{
    Header, Message, PoktHttpRequest, PoktHttpResponse, RelayMinerError, RelayRequest,
    RelayResponse, SessionHeader,
};
use lode_kernels::relay::{STREAM_DELIMITER, mine, request_signable_hash, verify_request};
use tokio::sync::{OwnedSemaphorePermit, mpsc, oneshot};

use super::config::{ServeConfig, ServiceConfig, StorePolicy};
use super::metrics::{Metrics, ServiceMetrics};
use super::session::{SessionEntry, SessionError, Sessions};
use super::ship::{Shipment, Shipper};
use super::signer::Signer;

/// poktroll's `relayer_proxy` codespace and the codes lode answers with (1, 3, 5, 7, 9,
/// 10, 11 and 14 are poktroll's; 2 and 4 are lode's own).
pub mod codes {
    pub const CODESPACE: &str = "relayer_proxy";
    pub const INVALID_SESSION: u32 = 1;
    pub const INVALID_REQUEST: u32 = 2;
    pub const SERVICE_NOT_HANDLED: u32 = 3;
    pub const SUPPLIER_NOT_HANDLED: u32 = 4;
    pub const INTERNAL: u32 = 5;
    pub const RATE_LIMITED: u32 = 7;
    pub const BACKEND_UNREACHABLE: u32 = 9;
    pub const TIMEOUT: u32 = 10;
    pub const MAX_BODY: u32 = 11;
    pub const UNMARSHAL: u32 = 14;
}

/// A refused or failed relay: HTTP status, poktroll code, message.
#[derive(Debug)]
pub struct RelayFailure {
    pub status: StatusCode,
    pub code: u32,
    pub message: String,
}

pub(super) fn fail(status: StatusCode, code: u32, message: impl Into<String>) -> RelayFailure {
    RelayFailure {
        status,
        code,
        message: message.into(),
    }
}

fn describe(code: u32) -> &'static str {
    match code {
        codes::INVALID_SESSION => "invalid session",
        codes::INVALID_REQUEST => "invalid relay request",
        codes::SERVICE_NOT_HANDLED => "service endpoint not handled by relayer proxy",
        codes::SUPPLIER_NOT_HANDLED => "supplier not handled by this relayminer",
        codes::RATE_LIMITED => "offchain rate limit exceeded by relay",
        codes::BACKEND_UNREACHABLE => "supplier service not reachable",
        codes::TIMEOUT => "relay request timed out",
        codes::MAX_BODY => "max body size exceeded",
        codes::UNMARSHAL => "failed to unmarshal relay request",
        _ => "internal error",
    }
}

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
    /// Triton's gRPC client, for `backend: triton`.
    triton: Option<super::triton::Triton>,
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
    backend: Backend,
    max_body: usize,
    /// Point tables for ring verification, shared by every session's ring.
    tables: Arc<BaseTables>,
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
            services.insert(
                s.service_id.clone(),
                Service {
                    triton: match s.backend {
                        super::config::BackendKind::Openai => None,
                        super::config::BackendKind::Triton => Some(super::triton::Triton::new(s)?),
                    },
                    config: s.clone(),
                    base,
                    metrics: metrics.service(&s.service_id),
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

    /// Point tables held for ring verification.
    pub fn ring_tables(&self) -> usize {
        self.tables.len()
    }

    /// Whether a backend answers (`GET /v1/models`, any status but a connection error).
    pub async fn backend_reachable(&self, service: &Service) -> bool {
        if let Some(t) = &service.triton {
            return t.ready().await;
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

/// An error reply: an unsigned (or, once the supplier is known, signed) `RelayResponse`
/// carrying `RelayMinerError`, with a meaningful HTTP status.
fn error_reply(f: &RelayFailure, header: Option<&SessionHeader>, key: Option<&Signer>) -> Response {
    let mut res = RelayResponse {
        payload: f.message.clone().into_bytes(),
        relay_miner_error: Some(RelayMinerError {
            codespace: codes::CODESPACE.into(),
            code: f.code,
            description: describe(f.code).into(),
            message: f.message.clone(),
        }),
        ..Default::default()
    };
    res.meta.session_header = header.cloned();
    if let Some(k) = key {
        k.sign(&mut res);
    }
    (
        f.status,
        [(header::CONTENT_TYPE, "application/x-protobuf")],
        res.encode(),
    )
        .into_response()
}

/// The relay endpoint (any path: routing is by the request's service and supplier).
/// Routing is by the request's service and supplier; the `Rpc-Type` header is not
/// needed (one backend per service).
pub async fn handle(state: Arc<RelayState>, body: Body) -> Response {
    let started = Instant::now();
    let m = &state.metrics;
    m.requests.fetch_add(1, Ordering::Relaxed);
    // 1. The body, within the largest configured limit.
    let bytes = match Limited::new(body, state.max_body).collect().await {
        Ok(c) => c.to_bytes(),
        Err(e) if e.is::<http_body_util::LengthLimitError>() => {
            return refuse(
                m,
                fail(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    codes::MAX_BODY,
                    format!("relay request body exceeds {} bytes", state.max_body),
                ),
                None,
                None,
            );
        }
        Err(e) => {
            return refuse(
                m,
                fail(
                    StatusCode::BAD_REQUEST,
                    codes::INVALID_REQUEST,
                    format!("reading the request body: {e}"),
                ),
                None,
                None,
            );
        }
    };
    // 2. The protobuf.
    let req = match RelayRequest::decode(&bytes) {
        Ok(r) => r,
        Err(e) => {
            return refuse(
                m,
                fail(
                    StatusCode::BAD_REQUEST,
                    codes::UNMARSHAL,
                    format!("relay request is not a RelayRequest: {e}"),
                ),
                None,
                None,
            );
        }
    };
    let Some(session_header) = req.meta.session_header.clone() else {
        return refuse(
            m,
            fail(
                StatusCode::BAD_REQUEST,
                codes::INVALID_REQUEST,
                "relay request has no session header",
            ),
            None,
            None,
        );
    };
    let hdr = Some(&session_header);
    if req.meta.signature.is_empty() {
        return refuse(
            m,
            fail(
                StatusCode::BAD_REQUEST,
                codes::INVALID_REQUEST,
                "relay request is not signed",
            ),
            hdr,
            None,
        );
    }
    // 3. Ours: the supplier and the service.
    let supplier = req.meta.supplier_operator_address.clone();
    let Some(key) = state.keys.get(&supplier) else {
        return refuse(
            m,
            fail(
                StatusCode::FORBIDDEN,
                codes::SUPPLIER_NOT_HANDLED,
                format!("supplier {supplier:?} is not served by this relayminer"),
            ),
            hdr,
            None,
        );
    };
    let Some(service) = state.services.get(&session_header.service_id) else {
        return refuse(
            m,
            fail(
                StatusCode::NOT_FOUND,
                codes::SERVICE_NOT_HANDLED,
                format!(
                    "service {:?} is not served by this relayminer",
                    session_header.service_id
                ),
            ),
            hdr,
            Some(key),
        );
    };
    if bytes.len() > service.config.max_body_bytes {
        return refuse(
            m,
            fail(
                StatusCode::PAYLOAD_TOO_LARGE,
                codes::MAX_BODY,
                format!(
                    "relay request body exceeds {} bytes",
                    service.config.max_body_bytes
                ),
            ),
            hdr,
            Some(key),
        );
    }
    // 4. The session, on chain.
    let session = match state.sessions.validate(&session_header, &supplier).await {
        Ok(s) => s,
        Err(e) => {
            let status = if e.is_unavailable() {
                StatusCode::SERVICE_UNAVAILABLE
            } else {
                StatusCode::BAD_REQUEST
            };
            let code = if e.is_unavailable() {
                codes::INTERNAL
            } else {
                codes::INVALID_SESSION
            };
            if let SessionError::Chain(ref q) = e {
                tracing::warn!(error = %q, "session validation needs the chain");
            }
            return refuse(m, fail(status, code, e.to_string()), hdr, Some(key));
        }
    };
    // 5. The application's (or its gateway's) ring signature. A busy session that has
    //    never seen a bad one has it checked in a task of its own while the engine starts
    //    (nothing reaches the client, and nothing is mined or kept charged, before it
    //    passes: `Ctx::after_verdict`); any other relay is checked first.
    let speculate = service.triton.is_none()
        && bytes.len() <= SPECULATE_MAX_BODY
        && session.ring.is_accelerated()
        && !session.refused_signature.load(Ordering::Relaxed);
    let gate = if speculate {
        m.concurrent_checks.fetch_add(1, Ordering::Relaxed);
        let (session, hash) = (session.clone(), request_signable_hash(&req));
        let signature = req.meta.signature.clone();
        // A task of its own on the runtime, not the blocking pool: the check is short
        // (~80 µs), and a pool thread per check in flight had the OS switching between
        // as many threads (twice the context switches per relay at 2,500 relays/s).
        Some(tokio::spawn(async move {
            let ring = &session.ring;
            ring.parse(&signature)
                .and_then(|sig| ring.verify(&sig, &hash))
        }))
    } else {
        if let Err(f) = signature_verdict(&state, &session, Ok(verify_request(&req, &session.ring)))
        {
            return refuse(m, f, hdr, Some(key));
        }
        None
    };
    // 6. Over-servicing (refunded if a signature checked meanwhile fails).
    let charged = session.charge();
    if !charged && !state.config.enable_over_servicing {
        return refuse(
            m,
            fail(
                StatusCode::TOO_MANY_REQUESTS,
                codes::RATE_LIMITED,
                "the application's stake for this session is spent",
            ),
            hdr,
            Some(key),
        );
    }
    // 7. A place in the store queue, reserved before any work is done.
    let Some(slot) = state.shipper.reserve() else {
        return refuse(
            m,
            fail(
                StatusCode::SERVICE_UNAVAILABLE,
                codes::INTERNAL,
                "the session store is not keeping up; try again",
            ),
            hdr,
            Some(key),
        );
    };
    let http_req = match PoktHttpRequest::decode(&req.payload) {
        Ok(r) => r,
        Err(e) => {
            return refuse(
                m,
                fail(
                    StatusCode::BAD_REQUEST,
                    codes::UNMARSHAL,
                    format!("relay payload is not a POKTHTTPRequest: {e}"),
                ),
                hdr,
                Some(key),
            );
        }
    };
    let guard = InFlight::new(service.metrics.clone());
    let ctx = Ctx {
        state: state.clone(),
        req,
        session,
        supplier,
        key: key.clone(),
        slot,
        started,
        gate,
        charged,
        _guard: guard,
    };
    ctx.proxy(service, http_req).await
}

pub(super) fn refuse(
    m: &Metrics,
    f: RelayFailure,
    header: Option<&SessionHeader>,
    key: Option<&Signer>,
) -> Response {
    m.refused(f.code);
    tracing::debug!(code = f.code, message = %f.message, "relay refused");
    error_reply(&f, header, key)
}

/// Counts a relay in flight for its service while alive.
#[derive(Debug)]
struct InFlight(Arc<ServiceMetrics>);

impl InFlight {
    fn new(m: Arc<ServiceMetrics>) -> Self {
        m.in_flight.fetch_add(1, Ordering::Relaxed);
        Self(m)
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

/// A validated relay on its way through the backend.
pub(super) struct Ctx {
    pub(super) state: Arc<RelayState>,
    pub(super) req: RelayRequest,
    pub(super) session: Arc<SessionEntry>,
    pub(super) supplier: String,
    pub(super) key: Arc<Signer>,
    pub(super) slot: OwnedSemaphorePermit,
    pub(super) started: Instant,
    /// The ring-signature check still running in its own task, if any.
    gate: Option<Gate>,
    /// Whether the relay was charged to the session's budget.
    charged: bool,
    _guard: InFlight,
}

/// A ring-signature check running in a task of its own.
type Gate = tokio::task::JoinHandle<Result<bool, RingError>>;

/// Largest relay whose signature may be checked while the engine starts; a larger one
/// is checked first (an engine that began on a forged relay stops when it is refused,
/// but reading a large body is work already done).
const SPECULATE_MAX_BODY: usize = 64 << 10;

/// What a ring-signature check means for the relay: `Ok` to go on, or the refusal. A
/// refusal marks the session so that its later relays are checked before the engine
/// sees them; a pass may start building the ring's tables.
fn signature_verdict(
    state: &Arc<RelayState>,
    session: &Arc<SessionEntry>,
    checked: Result<Result<bool, RingError>, String>,
) -> Result<(), RelayFailure> {
    let failure = match checked {
        Ok(Ok(true)) => {
            // A busy ring gets point tables, built off the request path.
            if state.config.ring_table_mib > 0 && session.ring.wants_acceleration() {
                let (session, tables) = (session.clone(), state.tables.clone());
                tokio::task::spawn_blocking(move || session.ring.accelerate(&tables));
            }
            return Ok(());
        }
        Ok(Ok(false)) => fail(
            StatusCode::UNAUTHORIZED,
            codes::INVALID_REQUEST,
            "invalid ring signature",
        ),
        Ok(Err(e)) => fail(
            StatusCode::UNAUTHORIZED,
            codes::INVALID_REQUEST,
            format!("invalid ring signature: {e}"),
        ),
        Err(e) => fail(
            StatusCode::INTERNAL_SERVER_ERROR,
            codes::INTERNAL,
            format!("checking the ring signature: {e}"),
        ),
    };
    session.refused_signature.store(true, Ordering::Relaxed);
    Err(failure)
}

/// Joins the backend base URL with the relay's path and query (spec §2.2).
fn join_uri(base: &Uri, request_url: &str) -> Result<Uri, String> {
    // The gateway's URL may be absolute or just a path.
    let path_and_query = match if request_url.is_empty() {
        Ok(Uri::from_static("/"))
    } else {
        request_url.parse::<Uri>()
    } {
        Ok(u) => u
            .path_and_query()
            .map(|p| p.as_str().to_string())
            .unwrap_or_else(|| "/".into()),
        Err(_) => return Err(format!("relay URL {request_url:?} is not a URL")),
    };
    let (req_path, req_query) = match path_and_query.split_once('?') {
        Some((p, q)) => (p.to_string(), Some(q.to_string())),
        None => (path_and_query, None),
    };
    let base_path = base.path().trim_end_matches('/');
    let mut out = format!("{base_path}{req_path}");
    if out.is_empty() {
        out.push('/');
    }
    let queries: Vec<&str> = [base.query(), req_query.as_deref()]
        .into_iter()
        .flatten()
        .filter(|q| !q.is_empty())
        .collect();
    if !queries.is_empty() {
        out.push('?');
        out.push_str(&queries.join("&"));
    }
    let authority = base.authority().ok_or("backend URL has no host")?;
    Uri::builder()
        .scheme(base.scheme_str().unwrap_or("http"))
        .authority(authority.as_str())
        .path_and_query(out)
        .build()
        .map_err(|e| e.to_string())
}

const HOP_BY_HOP: [&str; 9] = [
    "connection",
    "keep-alive",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
    "host",
];

fn skip_header(name: &str) -> bool {
    let n = name.to_ascii_lowercase();
    HOP_BY_HOP.contains(&n.as_str()) || n == "content-length"
}

fn response_headers(h: &HeaderMap) -> BTreeMap<String, Header> {
    let mut out: BTreeMap<String, Header> = BTreeMap::new();
    for (name, value) in h {
        if skip_header(name.as_str()) {
            continue;
        }
        let e = out
            .entry(name.as_str().to_string())
            .or_insert_with(|| Header {
                key: name.as_str().to_string(),
                values: Vec::new(),
            });
        e.values
            .push(String::from_utf8_lossy(value.as_bytes()).into_owned());
    }
    out
}

/// A supplier-signed response carrying an HTTP response.
pub(super) fn signed(
    status: u32,
    header: BTreeMap<String, Header>,
    body: Vec<u8>,
    session: &SessionHeader,
    key: &Signer,
) -> RelayResponse {
    let payload = PoktHttpResponse {
        status_code: status,
        header,
        body_bz: body,
    };
    let mut res = RelayResponse {
        payload: payload.encode(),
        ..Default::default()
    };
    res.meta.session_header = Some(session.clone());
    key.sign(&mut res);
    res
}

/// `usage` of an OpenAI response body (or of the last SSE event carrying one).
fn usage_of(body: &[u8]) -> Option<(u64, u64)> {
    let text = std::str::from_utf8(body).ok()?;
    let json_text = if text.trim_start().starts_with('{') {
        text
    } else {
        text.rsplit("data: ")
            .find(|e| e.contains("\"usage\"") && e.trim_start().starts_with('{'))?
    };
    // Only `usage` is read; serde skips the rest (the generated text) without building it.
    #[derive(serde::Deserialize)]
    struct Body {
        usage: Option<Usage>,
    }
    #[derive(serde::Deserialize)]
    struct Usage {
        prompt_tokens: Option<serde_json::Value>,
        completion_tokens: Option<serde_json::Value>,
    }
    let usage = serde_json::from_str::<Body>(json_text.trim()).ok()?.usage?;
    let count = |v: Option<serde_json::Value>| v.and_then(|v| v.as_u64()).unwrap_or(0);
    Some((count(usage.prompt_tokens), count(usage.completion_tokens)))
}

impl Ctx {
    /// Runs `work` (the engine call) while a pending signature check finishes, and
    /// returns its output only once the signature passed. A refused signature drops
    /// `work` (the engine request is cancelled), refunds the session's charge and gives
    /// the refusal the relay would have had if checked first.
    pub(super) async fn after_verdict<F: Future>(
        &mut self,
        work: F,
    ) -> Result<F::Output, Response> {
        let Some(mut gate) = self.gate.take() else {
            return Ok(work.await);
        };
        tokio::pin!(work);
        let (checked, done) = tokio::select! {
            biased;
            checked = &mut gate => (checked, None),
            out = &mut work => ((&mut gate).await, Some(out)),
        };
        let checked = checked.map_err(|e| e.to_string());
        if let Err(f) = signature_verdict(&self.state, &self.session, checked) {
            if self.charged {
                self.session.refund();
            }
            return Err(self.fail(f));
        }
        Ok(match done {
            Some(out) => out,
            None => work.await,
        })
    }

    pub(super) fn fail(&self, f: RelayFailure) -> Response {
        refuse(
            &self.state.metrics,
            f,
            self.req.meta.session_header.as_ref(),
            Some(&*self.key),
        )
    }

    fn backend_request(
        &self,
        service: &Service,
        http_req: &PoktHttpRequest,
    ) -> Result<Request<Full<Bytes>>, RelayFailure> {
        let uri = join_uri(&service.base, &http_req.url)
            .map_err(|e| fail(StatusCode::BAD_REQUEST, codes::INVALID_REQUEST, e))?;
        let method = Method::from_bytes(if http_req.method.is_empty() {
            b"POST"
        } else {
            http_req.method.as_bytes()
        })
        .map_err(|_| {
            fail(
                StatusCode::BAD_REQUEST,
                codes::INVALID_REQUEST,
                format!("bad HTTP method {:?}", http_req.method),
            )
        })?;
        let mut b = Request::builder().method(method).uri(uri);
        let h = b.headers_mut().expect("fresh builder");
        for (name, hv) in &http_req.header {
            if skip_header(name) {
                continue;
            }
            for v in &hv.values {
                if let (Ok(n), Ok(v)) = (
                    header::HeaderName::from_bytes(name.as_bytes()),
                    HeaderValue::from_str(v),
                ) {
                    h.append(n, v);
                }
            }
        }
        let c = &service.config;
        if c.forward_pocket_headers {
            let s = &self.session.header;
            for (n, v) in [
                ("pocket-supplier", self.supplier.clone()),
                ("pocket-service", s.service_id.clone()),
                ("pocket-session-id", s.session_id.clone()),
                ("pocket-application", s.application_address.clone()),
                (
                    "pocket-session-start-height",
                    s.session_start_block_height.to_string(),
                ),
                (
                    "pocket-session-end-height",
                    s.session_end_block_height.to_string(),
                ),
            ] {
                if let Ok(v) = HeaderValue::from_str(&v) {
                    h.insert(n, v);
                }
            }
        }
        if let Some(a) = &c.basic_auth {
            let token =
                lode_chain::comet::base64(format!("{}:{}", a.username, a.password).as_bytes());
            if let Ok(v) = HeaderValue::from_str(&format!("Basic {token}")) {
                h.insert(header::AUTHORIZATION, v);
            }
        }
        for (n, v) in &c.headers {
            if let (Ok(n), Ok(v)) = (
                header::HeaderName::from_bytes(n.as_bytes()),
                HeaderValue::from_str(v),
            ) {
                h.insert(n, v);
            }
        }
        b.body(Full::new(Bytes::from(http_req.body_bz.clone())))
            .map_err(|e| {
                fail(
                    StatusCode::BAD_REQUEST,
                    codes::INVALID_REQUEST,
                    e.to_string(),
                )
            })
    }

    async fn proxy(mut self, service: &Service, http_req: PoktHttpRequest) -> Response {
        if let Some(triton) = &service.triton {
            if let Err(refused) = self.after_verdict(async {}).await {
                return refused;
            }
            return self.proxy_triton(service, triton, http_req).await;
        }
        let backend_req = match self.backend_request(service, &http_req) {
            Ok(r) => r,
            Err(f) => {
                return match self.after_verdict(async {}).await {
                    Ok(()) => self.fail(f),
                    Err(refused) => refused,
                };
            }
        };
        let timeout = Duration::from_secs(service.config.request_timeout_seconds);
        let deadline = tokio::time::Instant::now() + timeout;
        let engine = tokio::time::timeout_at(deadline, self.state.backend.request(backend_req));
        let engine = match self.after_verdict(engine).await {
            Ok(r) => r,
            Err(refused) => return refused,
        };
        let res = match engine {
            Err(_) => {
                return self.fail(fail(
                    StatusCode::GATEWAY_TIMEOUT,
                    codes::TIMEOUT,
                    format!("the backend did not answer within {timeout:?}"),
                ));
            }
            Ok(Err(e)) => {
                return self.fail(fail(
                    StatusCode::BAD_GATEWAY,
                    codes::BACKEND_UNREACHABLE,
                    format!("backend {} unreachable: {e}", service.config.backend_url),
                ));
            }
            Ok(Ok(r)) => r,
        };
        let (parts, body) = res.into_parts();
        let streaming = parts
            .headers
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|ct| {
                ct.starts_with("text/event-stream") || ct.starts_with("application/x-ndjson")
            });
        let status = parts.status.as_u16() as u32;
        let headers = response_headers(&parts.headers);
        if streaming {
            let content_type = parts
                .headers
                .get(header::CONTENT_TYPE)
                .cloned()
                .unwrap_or(HeaderValue::from_static("text/event-stream"));
            let chunks: ChunkStream = Box::pin(futures_util::TryStreamExt::map_err(
                http_body_util::BodyDataStream::new(body),
                |e| e.to_string(),
            ));
            return self
                .stream(service, status, headers, chunks, deadline, content_type)
                .await;
        }
        let body = match tokio::time::timeout_at(
            deadline,
            Limited::new(body, service.config.max_body_bytes).collect(),
        )
        .await
        {
            Err(_) => {
                return self.fail(fail(
                    StatusCode::GATEWAY_TIMEOUT,
                    codes::TIMEOUT,
                    format!("the backend's response did not finish within {timeout:?}"),
                ));
            }
            Ok(Err(e)) if e.is::<http_body_util::LengthLimitError>() => {
                return self.fail(fail(
                    StatusCode::BAD_GATEWAY,
                    codes::MAX_BODY,
                    format!(
                        "the backend's response exceeds {} bytes",
                        service.config.max_body_bytes
                    ),
                ));
            }
            Ok(Err(e)) => {
                return self.fail(fail(
                    StatusCode::BAD_GATEWAY,
                    codes::BACKEND_UNREACHABLE,
                    format!("reading the backend's response: {e}"),
                ));
            }
            Ok(Ok(c)) => c.to_bytes(),
        };
        if let Some((p, c)) = usage_of(&body) {
            service
                .metrics
                .prompt_tokens
                .fetch_add(p, Ordering::Relaxed);
            service
                .metrics
                .completion_tokens
                .fetch_add(c, Ordering::Relaxed);
        }
        let res = signed(
            status,
            headers,
            body.to_vec(),
            &self.session.header,
            &self.key,
        );
        self.answer(&service.metrics, status, res).await
    }

    /// Sends a finished non-streamed relay: mined and shipped (with `policy: hold`, only
    /// once the store acknowledged it), then the signed response.
    pub(super) async fn answer(
        self,
        metrics: &ServiceMetrics,
        status: u32,
        res: RelayResponse,
    ) -> Response {
        let reply = res.encode();
        let policy = self.state.config.store.policy;
        let (state, session, key) = (self.state.clone(), self.session.clone(), self.key.clone());
        let ack = self.finish(metrics, status, &res);
        if let (StorePolicy::Hold, Some(ack)) = (policy, ack)
            && ack.await.is_err()
        {
            let f = fail(
                StatusCode::SERVICE_UNAVAILABLE,
                codes::INTERNAL,
                "the store did not acknowledge the relay",
            );
            return refuse(&state.metrics, f, Some(&session.header), Some(&*key));
        }
        (
            StatusCode::OK,
            [(header::CONTENT_TYPE, "application/x-protobuf")],
            reply,
        )
            .into_response()
    }

    /// Mines a finished relay and ships it; returns the acknowledgement to wait for
    /// when it was mined. Consumes the queue slot either way.
    pub(super) fn finish(
        self,
        service: &ServiceMetrics,
        backend_status: u32,
        res: &RelayResponse,
    ) -> Option<oneshot::Receiver<()>> {
        service.relays.fetch_add(1, Ordering::Relaxed);
        self.state.metrics.observe_latency(self.started.elapsed());
        // Backend errors are not mined. A relay of a session whose claim is already
        // being made is refused by the store (it froze the session's trie).
        if backend_status >= 500 {
            service.not_mined.fetch_add(1, Ordering::Relaxed);
            return None;
        }
        let Some(relay) = mine(
            &self.req,
            res,
            &self.session.target,
            self.session.compute_units_per_relay,
        ) else {
            service.not_mined.fetch_add(1, Ordering::Relaxed);
            return None;
        };
        service.mined.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = oneshot::channel();
        self.state.shipper.send(Shipment {
            supplier: self.supplier.clone(),
            header: self.session.header.clone(),
            relay,
            ack: Some(tx),
            slot: self.slot,
        });
        Some(rx)
    }

    /// Streams the backend's chunks as signed batches: the first at once, later ones
    /// every `stream_batch_ms` or `stream_batch_bytes`; the relay mined from the whole
    /// body once the backend finishes.
    pub(super) async fn stream(
        self,
        service: &Service,
        status: u32,
        headers: BTreeMap<String, Header>,
        mut body: ChunkStream,
        deadline: tokio::time::Instant,
        content_type: HeaderValue,
    ) -> Response {
        let (tx, rx) = mpsc::channel::<Result<Bytes, std::io::Error>>(4);
        let metrics = service.metrics.clone();
        let interval = self.state.config.stream_batch_interval();
        let max_pending = self.state.config.stream_batch_bytes;
        let header_for_batches = self.session.header.clone();
        let key = self.key.clone();
        let policy = self.state.config.store.policy;
        let batch = move |first: bool,
                          status: u32,
                          headers: &BTreeMap<String, Header>,
                          chunk: &[u8]|
              -> Bytes {
            let batch_headers = if first {
                headers.clone()
            } else {
                BTreeMap::new()
            };
            let res = signed(
                status,
                batch_headers,
                chunk.to_vec(),
                &header_for_batches,
                &key,
            );
            let mut out = Vec::with_capacity(res.encoded_len() + STREAM_DELIMITER.len());
            if !first {
                out.extend_from_slice(STREAM_DELIMITER);
            }
            res.encode_to(&mut out);
            Bytes::from(out)
        };
        // With `policy: hold` the newest chunk stays back until the store acknowledged
        // the relay (it carries the end of the stream, `data: [DONE]`), so a client
        // holds a complete stream only of a relay the supplier will be paid for.
        let hold = policy == StorePolicy::Hold;
        tokio::spawn(async move {
            let mut full: Vec<u8> = Vec::new();
            let mut pending: Vec<u8> = Vec::new();
            // Bytes at the end of `pending` held back (the newest chunk, under `hold`).
            let mut held = 0usize;
            let mut sent_first = false;
            let mut aborted = false;
            let mut tick = tokio::time::interval(interval);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    frame = futures_util::StreamExt::next(&mut body) => match frame {
                        Some(Ok(data)) => {
                            full.extend_from_slice(&data);
                            if !sent_first {
                                sent_first = true;
                                if tx.send(Ok(batch(true, status, &headers, &data))).await.is_err() { aborted = true; break; }
                            } else {
                                pending.extend_from_slice(&data);
                                if hold { held = data.len(); }
                                if pending.len() - held >= max_pending {
                                    let n = pending.len() - held;
                                    let b = batch(false, status, &headers, &pending[..n]);
                                    pending.drain(..n);
                                    if tx.send(Ok(b)).await.is_err() { aborted = true; break; }
                                }
                            }
                        }
                        Some(Err(e)) => {
                            tracing::warn!(error = %e, "backend stream broke");
                            aborted = true;
                            break;
                        }
                        None => break,
                    },
                    _ = tick.tick(), if pending.len() > held => {
                        let n = pending.len() - held;
                        let b = batch(false, status, &headers, &pending[..n]);
                        pending.drain(..n);
                        if tx.send(Ok(b)).await.is_err() { aborted = true; break; }
                    }
                    _ = tokio::time::sleep_until(deadline) => {
                        tracing::warn!("stream exceeded the request timeout");
                        aborted = true;
                        break;
                    }
                    _ = tx.closed() => { aborted = true; break; }
                }
            }
            if aborted {
                // The gateway did not get the whole response: nothing to mine.
                metrics.aborted.fetch_add(1, Ordering::Relaxed);
                drop(self);
                return;
            }
            if let Some((p, c)) = usage_of(&full) {
                metrics.prompt_tokens.fetch_add(p, Ordering::Relaxed);
                metrics.completion_tokens.fetch_add(c, Ordering::Relaxed);
            }
            // What is left to send: the rest, or for an empty stream one batch with the
            // status and headers.
            let last = if !sent_first {
                Some(batch(true, status, &headers, &[]))
            } else {
                (!pending.is_empty()).then(|| batch(false, status, &headers, &pending))
            };
            // The relay that is mined: the whole response, signed.
            let res = signed(status, headers, full, &self.session.header, &self.key);
            if hold {
                if let Some(ack) = self.finish(&metrics, status, &res)
                    && ack.await.is_err()
                {
                    // Not acknowledged (the store refused it: its session is already
                    // being claimed): the stream breaks instead of completing.
                    let _ = tx
                        .send(Err(std::io::Error::other(
                            "the store did not acknowledge the relay",
                        )))
                        .await;
                    return;
                }
                if let Some(b) = last {
                    let _ = tx.send(Ok(b)).await;
                }
            } else {
                if let Some(b) = last
                    && tx.send(Ok(b)).await.is_err()
                    && sent_first
                {
                    // The gateway left before the end: nothing to mine.
                    metrics.aborted.fetch_add(1, Ordering::Relaxed);
                    return;
                }
                self.finish(&metrics, status, &res);
            }
            drop(tx);
        });
        Response::builder()
            .status(StatusCode::OK)
            .header(header::CONTENT_TYPE, content_type)
            .header(header::CACHE_CONTROL, "no-cache")
            .body(Body::from_stream(
                tokio_stream::wrappers::ReceiverStream::new(rx),
            ))
            .expect("static response")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backend_urls_join_like_poktroll() {
        let base: Uri = "http://vllm:8000/prefix?key=1".parse().expect("uri");
        assert_eq!(
            join_uri(&base, "https://gateway.example/v1/chat/completions?x=2")
                .expect("join")
                .to_string(),
            "http://vllm:8000/prefix/v1/chat/completions?key=1&x=2"
        );
        let base: Uri = "http://vllm:8000".parse().expect("uri");
        assert_eq!(
            join_uri(&base, "/v1/models").expect("join").to_string(),
            "http://vllm:8000/v1/models"
        );
        assert_eq!(
            join_uri(&base, "").expect("join").to_string(),
            "http://vllm:8000/"
        );
    }

    #[test]
    fn usage_is_read_from_bodies_and_streams() {
        assert_eq!(
            usage_of(br#"{"usage":{"prompt_tokens":3,"completion_tokens":5}}"#),
            Some((3, 5))
        );
        let sse = b"data: {\"choices\":[]}\n\ndata: {\"choices\":[],\"usage\":{\"prompt_tokens\":2,\"completion_tokens\":4}}\n\ndata: [DONE]\n\n";
        assert_eq!(usage_of(sse), Some((2, 4)));
        assert_eq!(usage_of(b"data: [DONE]\n\n"), None);
        // No usage, a null one, counts that are not whole numbers, and broken JSON.
        assert_eq!(usage_of(br#"{"choices":[{"text":"hi"}]}"#), None);
        assert_eq!(usage_of(br#"{"usage":null}"#), None);
        assert_eq!(
            usage_of(br#"{"usage":{"prompt_tokens":"3","completion_tokens":2.5}}"#),
            Some((0, 0))
        );
        assert_eq!(
            usage_of(br#"{"usage":{"completion_tokens":7,"total_tokens":7}}"#),
            Some((0, 7))
        );
        assert_eq!(usage_of(br#"{"usage":{"prompt_tokens":3"#), None);
    }
}

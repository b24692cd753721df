//! Proxying an admitted relay: the request the engine gets, waiting for a pending
//! signature verdict before anything leaves, the engine's answer signed, mined and
//! shipped. Streams are [`super::stream`]; Triton's gRPC is [`super::triton`].

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::http::{HeaderMap, HeaderValue, Method, Request, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use http_body_util::{BodyExt, Full, Limited};
use lode_kernels::proto::{
    Header, Message, PoktHttpRequest, PoktHttpResponse, RelayRequest, RelayResponse, SessionHeader,
};
use lode_kernels::relay::mine;
use tokio::sync::{OwnedSemaphorePermit, oneshot};

use super::admit::{Admitted, Gate, signature_verdict};
use super::config::StorePolicy;
use super::failure::{RelayFailure, codes, fail, refuse};
use super::metrics::ServiceMetrics;
use super::relay::{ChunkStream, RelayState, Service};
use super::session::SessionEntry;
use super::ship::Shipment;
use super::signer::Signer;

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
    pub(super) gate: Option<Gate>,
    /// Whether the relay was charged to the session's budget.
    pub(super) charged: bool,
    /// The engine replica serving it, counted in flight there until the relay ends.
    engine: Option<super::route::Pick>,
    _guard: InFlight,
}

impl Ctx {
    /// An admitted relay, counted in flight for its service until it is answered.
    pub(super) fn new(state: Arc<RelayState>, a: Admitted<'_>, started: Instant) -> Self {
        Self {
            _guard: InFlight::new(a.service.metrics.clone()),
            state,
            req: a.req,
            session: a.session,
            supplier: a.supplier,
            key: a.key,
            slot: a.slot,
            started,
            gate: a.gate,
            charged: a.charged,
            engine: None,
        }
    }
}

/// Joins the backend base URL with the relay's path and query (spec §2.2).
pub(super) fn join_uri(base: &Uri, request_url: &str) -> Result<Uri, String> {
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
pub(super) fn usage_of(body: &[u8]) -> Option<(u64, u64)> {
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
        base: &Uri,
        http_req: &PoktHttpRequest,
    ) -> Result<Request<Full<Bytes>>, RelayFailure> {
        let uri = join_uri(base, &http_req.url)
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

    pub(super) async fn proxy(mut self, service: &Service, http_req: PoktHttpRequest) -> Response {
        if let Some(triton) = service.triton() {
            if let Err(refused) = self.after_verdict(async {}).await {
                return refused;
            }
            return self.proxy_triton(service, triton, http_req).await;
        }
        let pick = match service.router.pick(&http_req.body_bz) {
            Some(p) => p,
            None => match self.held(service, &http_req.body_bz).await {
                Ok(p) => p,
                Err(answer) => return answer,
            },
        };
        let engine_url = pick.engine.url.clone();
        self.engine = Some(pick);
        let backend_req = match self.backend_request(service, &engine_url, &http_req) {
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
        let mut engine = match self.after_verdict(engine).await {
            Ok(r) => r,
            Err(refused) => return refused,
        };
        // An engine that refused the connection never saw the relay: it goes to another
        // replica, once (the one that failed is going away; discovery will drop it).
        let mut engine_url = engine_url;
        if let Ok(Err(e)) = &engine
            && e.is_connect()
            && let Some(other) = service
                .router
                .pick_except(&http_req.body_bz, Some(&engine_url))
        {
            tracing::warn!(engine = %engine_url, error = %e, "engine refused the connection; relay sent to another");
            service
                .metrics
                .route
                .retried
                .fetch_add(1, Ordering::Relaxed);
            engine_url = other.engine.url.clone();
            self.engine = Some(other);
            engine = match self.backend_request(service, &engine_url, &http_req) {
                Ok(req) => tokio::time::timeout_at(deadline, self.state.backend.request(req)).await,
                Err(f) => return self.fail(f),
            };
        }
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
                    format!("backend {engine_url} unreachable: {e}"),
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

    /// A relay that found no engine replica ready: held until one is (its service has a
    /// hold), or refused. A relay past its deadline, or with the hold full, is answered
    /// 503 with `Retry-After` and [`codes::SERVICE_WAKING`], and its charge is given
    /// back: it is charged and mined only once it is served.
    async fn held(
        &mut self,
        service: &Service,
        body: &[u8],
    ) -> Result<super::route::Pick, Response> {
        let Some(hold) = service.hold.as_ref() else {
            let f = fail(
                StatusCode::SERVICE_UNAVAILABLE,
                codes::BACKEND_UNREACHABLE,
                "no engine replica of this service is ready",
            );
            return Err(match self.after_verdict(async {}).await {
                Ok(()) => self.fail(f),
                Err(refused) => refused,
            });
        };
        let waking = |why: String| {
            let mut f = fail(StatusCode::SERVICE_UNAVAILABLE, codes::SERVICE_WAKING, why);
            f.retry_after = Some(hold.retry_after());
            f
        };
        let Some(seat) = hold.seat(body.len(), &service.metrics) else {
            service.metrics.hold_full.fetch_add(1, Ordering::Relaxed);
            if self.charged {
                self.session.refund();
                self.charged = false;
            }
            let f = waking("the service is waking up and holds as many relays as it can".into());
            return Err(match self.after_verdict(async {}).await {
                Ok(()) => self.fail(f),
                Err(refused) => refused,
            });
        };
        let router = &service.router;
        let mut ready = router.watch_ready();
        let wait = async {
            loop {
                if let Some(p) = router.pick(body) {
                    return Some(p);
                }
                if ready.changed().await.is_err() {
                    return None;
                }
            }
        };
        let deadline = hold.deadline();
        match self
            .after_verdict(tokio::time::timeout(deadline, wait))
            .await
        {
            Err(refused) => Err(refused),
            Ok(Ok(Some(pick))) => {
                hold.woke(&service.metrics);
                drop(seat);
                Ok(pick)
            }
            Ok(_) => {
                drop(seat);
                service.metrics.hold_expired.fetch_add(1, Ordering::Relaxed);
                if self.charged {
                    self.session.refund();
                    self.charged = false;
                }
                Err(self.fail(waking(format!(
                    "the service is waking up: no engine replica was ready within {deadline:?}"
                ))))
            }
        }
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
        // Engine errors are not mined: its own failures (5xx) and the requests it
        // refused (4xx: a prompt over its context window, an unknown model), which
        // the application is not charged for. A relay of a session whose claim is
        // already being made is refused by the store (it froze the session's trie).
        if backend_status >= 400 {
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
        if relay.bytes.len() > lode_store_api::MAX_RELAY_BYTES {
            // The store would refuse it: answered, but not mined.
            tracing::warn!(
                bytes = relay.bytes.len(),
                "a relay larger than the store takes is not mined"
            );
            service.not_mined.fetch_add(1, Ordering::Relaxed);
            return None;
        }
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

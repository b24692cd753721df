//! The OpenAI API (`/v1/chat/completions`, `/v1/completions`, `/v1/models`) and the
//! admin port.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use lode_chain::pocket::PocketQuery;
use lode_chain::{ChainGrpc, CometRpc, RetryPolicy};
use tokio::sync::oneshot;

use crate::config::{ApplicationConfig, GatewayConfig};
use crate::limits::RateLimits;
use crate::metrics::{Metrics, usage};
use crate::relay::{Answer, AttemptError, HttpClient, attempt, build_request};
use crate::scores::Scores;
use crate::sessions::Sessions;

/// Everything the handlers share.
#[derive(Debug)]
pub struct GatewayState {
    pub config: GatewayConfig,
    pub sessions: Arc<Sessions>,
    pub scores: Scores,
    pub metrics: Metrics,
    limits: RateLimits,
    http: HttpClient,
    /// API key → application.
    by_api_key: HashMap<String, ApplicationConfig>,
}

/// A running gateway.
#[derive(Debug)]
pub struct GatewayHandle {
    pub addr: SocketAddr,
    pub admin_addr: SocketAddr,
    pub state: Arc<GatewayState>,
    stop: Option<oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<()>,
}

impl GatewayHandle {
    /// Stops accepting and waits for requests in flight.
    pub async fn shutdown(mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        let _ = self.task.await;
    }
}

/// Concurrent requests on one HTTP/2 connection, at most.
const MAX_STREAMS: u32 = 256;

/// An error in the OpenAI API's shape.
fn openai_error(
    status: StatusCode,
    kind: &str,
    code: &str,
    message: impl Into<String>,
) -> Response {
    let body = serde_json::json!({
        "error": {"message": message.into(), "type": kind, "param": null, "code": code}
    });
    (status, axum::Json(body)).into_response()
}

/// Why the gateway could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Key(#[from] lode_chain_tx::keys::KeyFileError),
    #[error(transparent)]
    Chain(#[from] lode_chain::QueryError),
    #[error(transparent)]
    Bind(#[from] lode_net::BindError),
}

/// Starts the API and admin ports and block following.
pub async fn start(config: GatewayConfig) -> Result<GatewayHandle, StartError> {
    let passphrase = std::env::var("LODE_KEY_PASSPHRASE")
        .ok()
        .or_else(|| config.key_passphrase.clone());
    let key = lode_chain_tx::keys::load_key(&config.signing_key_file, passphrase.as_deref())?;
    let retry = RetryPolicy {
        attempts: 3,
        first_backoff: Duration::from_millis(100),
        max_backoff: Duration::from_secs(1),
        timeout: Duration::from_secs(5),
    };
    let sessions = Sessions::new(
        PocketQuery::new(ChainGrpc::new(&config.chain.grpc_url, retry)?),
        key,
    );
    let tracker = sessions.track(CometRpc::new(&config.chain.rpc_url, retry));
    // Suppliers staked `http://` or `https://` endpoints; TLS trusts the system's roots
    // (or SSL_CERT_FILE).
    let connector = lode_net::tls::https_connector(SUPPLIER_CONNECT_TIMEOUT);
    let http = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .pool_idle_timeout(Duration::from_secs(90))
        .build(connector);
    let by_api_key = config
        .applications
        .iter()
        .flat_map(|a| a.api_keys.iter().map(move |k| (k.clone(), a.clone())))
        .collect();
    let (listener, addr) = lode_net::bind("API", &config.listen).await?;
    let (admin, admin_addr) = lode_net::bind("admin", &config.admin).await?;
    let max_connections = config.max_connections;
    let state = Arc::new(GatewayState {
        config,
        sessions,
        scores: Scores::default(),
        metrics: Metrics::default(),
        limits: RateLimits::default(),
        http,
        by_api_key,
    });
    let limits = &state.config.limits;
    let budget = lode_net::server::BodyBudget::new(
        limits.in_flight_body_bytes,
        state.config.max_body_bytes,
        limits.body_read_timeout(),
        |status, message| openai_error(status, "api_error", "overloaded", message),
    );
    let timeouts = lode_net::server::Timeouts {
        header_read: limits.header_read_timeout(),
        idle: limits.idle_timeout(),
        max_streams: MAX_STREAMS,
    };
    let api = Router::new()
        .route("/v1/chat/completions", post(relay_openai))
        .route("/v1/completions", post(relay_openai))
        .route("/v1/models", get(models))
        .layer(axum::extract::DefaultBodyLimit::max(
            state.config.max_body_bytes,
        ))
        .with_state(state.clone())
        .layer(axum::middleware::from_fn_with_state(
            budget,
            lode_net::server::BodyBudget::guard,
        ));
    let admin_app = Router::new()
        .route("/metrics", get(metrics_page))
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(readyz))
        .route("/suppliers", get(suppliers))
        .with_state(state.clone());
    let (stop_tx, stop_rx) = oneshot::channel::<()>();
    let task = tokio::spawn(async move {
        let (admin_stop_tx, admin_stop_rx) = oneshot::channel::<()>();
        let admin_task = tokio::spawn(async move {
            let _ = axum::serve(admin, admin_app)
                .with_graceful_shutdown(async {
                    let _ = admin_stop_rx.await;
                })
                .await;
        });
        // Capped connections, no Nagle, timeouts for slow and idle clients.
        let listener = lode_net::CappedListener::new(listener, max_connections);
        lode_net::server::serve(listener, api, timeouts, async {
            let _ = stop_rx.await;
        })
        .await;
        tracker.abort();
        let _ = admin_stop_tx.send(());
        let _ = admin_task.await;
    });
    Ok(GatewayHandle {
        addr,
        admin_addr,
        state,
        stop: Some(stop_tx),
        task,
    })
}

/// Longest wait for a supplier's TCP connection (the request deadline bounds the rest).
const SUPPLIER_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

impl GatewayState {
    /// The application a request is for: by its bearer token when keys are configured;
    /// otherwise by `X-Pokt-Application`, or the first.
    fn application(&self, headers: &HeaderMap) -> Result<&ApplicationConfig, Box<Response>> {
        let token = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .map(str::trim);
        if self.by_api_key.is_empty() {
            let apps = &self.config.applications;
            let named = headers
                .get("x-pokt-application")
                .and_then(|v| v.to_str().ok());
            return match named {
                None => Ok(&apps[0]),
                Some(n) => apps.iter().find(|a| a.address == n).ok_or_else(|| {
                    Box::new(openai_error(
                        StatusCode::NOT_FOUND,
                        "invalid_request_error",
                        "unknown_application",
                        format!("This gateway does not serve application {n}."),
                    ))
                }),
            };
        }
        match token.and_then(|t| self.by_api_key.get(t)) {
            Some(a) => Ok(a),
            None => Err(Box::new(openai_error(
                StatusCode::UNAUTHORIZED,
                "invalid_request_error",
                "invalid_api_key",
                "Incorrect API key provided.",
            ))),
        }
    }

    fn rate_limit(&self, app: &ApplicationConfig) -> Result<(), Box<Response>> {
        let rate = app
            .requests_per_second
            .unwrap_or(self.config.requests_per_second);
        let burst = app.burst.unwrap_or((2.0 * rate).max(1.0));
        self.limits
            .take(&app.address, rate, burst, Instant::now())
            .map_err(|wait| {
                self.metrics.rate_limited(&app.address);
                let mut r = openai_error(
                    StatusCode::TOO_MANY_REQUESTS,
                    "requests",
                    "rate_limit_exceeded",
                    format!(
                        "Rate limit reached for application {}: {rate} requests/s. Retry in {wait:.2}s.",
                        app.address
                    ),
                );
                if let Ok(v) = format!("{}", wait.ceil().max(1.0) as u64).parse() {
                    r.headers_mut().insert(header::RETRY_AFTER, v);
                }
                Box::new(r)
            })
    }
}

async fn relay_openai(
    State(s): State<Arc<GatewayState>>,
    uri: axum::http::Uri,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let r = match read_body(body, s.config.max_body_bytes).await {
        Ok(body) => relay_inner(&s, uri.path(), &headers, body).await,
        Err(r) => r,
    };
    s.metrics.response(r.status().as_u16());
    r
}

/// The request body, within `max` bytes and its deadline (408 when it did not arrive in
/// time, 413 when it is larger).
async fn read_body(body: Body, max: usize) -> Result<Bytes, Response> {
    use http_body_util::BodyExt;
    match http_body_util::Limited::new(body, max).collect().await {
        Ok(c) => Ok(c.to_bytes()),
        Err(e) if e.is::<http_body_util::LengthLimitError>() => Err(openai_error(
            StatusCode::PAYLOAD_TOO_LARGE,
            "invalid_request_error",
            "body_too_large",
            format!("The request body exceeds {max} bytes."),
        )),
        Err(e) if lode_net::server::is_body_timeout(&*e) => Err(openai_error(
            StatusCode::REQUEST_TIMEOUT,
            "invalid_request_error",
            "body_timeout",
            format!("Reading the request body: {e}"),
        )),
        Err(e) => Err(openai_error(
            StatusCode::BAD_REQUEST,
            "invalid_request_error",
            "body_unreadable",
            format!("Reading the request body: {e}"),
        )),
    }
}

/// What the gateway reads of an OpenAI request: its model. The rest is checked to be JSON
/// and skipped without being built (a request is relayed as its bytes).
#[derive(serde::Deserialize)]
struct RequestHead<'a> {
    #[serde(borrow, default)]
    model: Option<std::borrow::Cow<'a, str>>,
}

async fn relay_inner(
    s: &Arc<GatewayState>,
    path: &str,
    headers: &HeaderMap,
    body: Bytes,
) -> Response {
    let app = match s.application(headers) {
        Ok(a) => a.clone(),
        Err(r) => return *r,
    };
    let head: RequestHead<'_> = match serde_json::from_slice(&body) {
        Ok(v) => v,
        Err(e) => {
            return openai_error(
                StatusCode::BAD_REQUEST,
                "invalid_request_error",
                "invalid_json",
                format!("The body is not valid JSON: {e}"),
            );
        }
    };
    let Some(model) = head.model.as_deref() else {
        return openai_error(
            StatusCode::BAD_REQUEST,
            "invalid_request_error",
            "missing_model",
            "The request needs a model.",
        );
    };
    let Some(service) = s.config.models.get(model).cloned() else {
        return openai_error(
            StatusCode::NOT_FOUND,
            "invalid_request_error",
            "model_not_found",
            format!(
                "The model `{model}` does not exist here; models: {}",
                s.config
                    .models
                    .keys()
                    .cloned()
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        );
    };
    if let Err(r) = s.rate_limit(&app) {
        return *r;
    }
    let session = match s.sessions.get(&app.address, &service).await {
        Ok(x) => x,
        Err(e) => {
            return openai_error(
                StatusCode::SERVICE_UNAVAILABLE,
                "api_error",
                "no_session",
                format!(
                    "No session for application {} and service {service}: {e}",
                    app.address
                ),
            );
        }
    };
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("application/json")
        .to_string();
    let timeout = Duration::from_secs(s.config.request_timeout_seconds);
    let addresses: Vec<String> = session
        .suppliers
        .iter()
        .map(|x| x.address.clone())
        .collect();
    // A conversation's turns go first to one supplier (its prefix is cached there).
    let conversation =
        lode_kernels::prefix::conversation_key(&body, lode_kernels::prefix::KeyBudget::default());
    let order = s
        .scores
        .order_for(&addresses, s.config.routing, conversation);
    let mut last: Option<AttemptError> = None;
    let mut all_waking = true;
    for address in order.iter().take(s.config.max_attempts) {
        let supplier = session
            .suppliers
            .iter()
            .find(|x| &x.address == address)
            .expect("from the session");
        let req = match build_request(&session, address, path, &content_type, &body) {
            Ok(r) => r,
            Err(e) => {
                return openai_error(StatusCode::INTERNAL_SERVER_ERROR, "api_error", "signing", e);
            }
        };
        let started = Instant::now();
        let deadline = tokio::time::Instant::now() + timeout;
        match attempt(&s.http, supplier, &req, deadline).await {
            Ok(answer) => {
                s.scores.success(address, started.elapsed());
                s.metrics.success(&service, address, started.elapsed());
                return respond(s.clone(), answer, service, address.clone());
            }
            Err(e) => {
                tracing::warn!(supplier = %address, service = %service, error = %e, "relay attempt failed");
                s.metrics.failure(&service, address, e.kind());
                if e.is_client_error() {
                    return openai_error(
                        StatusCode::BAD_REQUEST,
                        "invalid_request_error",
                        e.kind(),
                        e.to_string(),
                    );
                }
                match e.waking() {
                    // Waking up is not a failure: tried after the others until then.
                    Some(after) => s.scores.waking(address, after),
                    None => {
                        s.scores.failure(address);
                        all_waking = false;
                    }
                }
                last = Some(e);
            }
        }
    }
    // Every supplier tried is waking up: the client is told when to come back.
    if let Some(after) = last
        .as_ref()
        .and_then(AttemptError::waking)
        .filter(|_| all_waking)
    {
        let after = order
            .iter()
            .take(s.config.max_attempts)
            .filter_map(|a| s.scores.waking_for(a))
            .min()
            .unwrap_or(after);
        let mut res = openai_error(
            StatusCode::SERVICE_UNAVAILABLE,
            "api_error",
            "model_waking",
            format!(
                "The model `{model}` is starting on the session's suppliers; retry in {} s.",
                after.as_secs().max(1)
            ),
        );
        res.headers_mut().insert(
            header::RETRY_AFTER,
            header::HeaderValue::from(after.as_secs().max(1)),
        );
        return res;
    }
    let why = last.map_or_else(|| "no supplier to try".to_string(), |e| e.to_string());
    openai_error(
        StatusCode::BAD_GATEWAY,
        "api_error",
        "suppliers_failed",
        format!(
            "No supplier of the session answered ({} tried): {why}",
            order.len().min(s.config.max_attempts)
        ),
    )
}

/// The engine's answer as the client's HTTP response; streams are passed on batch by
/// batch as plain SSE.
fn respond(s: Arc<GatewayState>, answer: Answer, service: String, supplier: String) -> Response {
    match answer {
        Answer::Full {
            status,
            content_type,
            body,
        } => {
            if let Some((p, c)) = usage(&body) {
                s.metrics.tokens(&service, &supplier, p, c);
            }
            let mut r = Response::new(Body::from(body));
            *r.status_mut() = StatusCode::from_u16(status).unwrap_or(StatusCode::BAD_GATEWAY);
            if let Some(ct) = content_type.and_then(|c| c.parse().ok()) {
                r.headers_mut().insert(header::CONTENT_TYPE, ct);
            }
            r
        }
        Answer::Stream {
            status,
            content_type,
            first,
            mut rest,
            deadline,
        } => {
            let stream = async_stream(first, move |tx| async move {
                // Usage arrives in the last events; keep a tail to find it.
                let mut tail: Vec<u8> = Vec::new();
                while let Some(chunk) = rest.recv().await {
                    match chunk {
                        Ok(b) => {
                            tail.extend_from_slice(&b);
                            if tail.len() > 8192 {
                                tail.drain(..tail.len() - 8192);
                            }
                            // A client that stopped reading is let go at the deadline.
                            let sent = tokio::time::timeout_at(deadline, tx.send(Ok(b))).await;
                            if !matches!(sent, Ok(Ok(()))) {
                                return;
                            }
                        }
                        Err(e) => {
                            tracing::warn!(supplier = %supplier, error = %e, "stream aborted");
                            s.metrics.failure(&service, &supplier, "stream_aborted");
                            s.scores.failure(&supplier);
                            let _ = tx.send(Err(std::io::Error::other(e))).await;
                            return;
                        }
                    }
                }
                let tail = tail
                    .iter()
                    .position(|&b| b == b'\n')
                    .map_or(&tail[..], |i| &tail[i + 1..]);
                if let Some((p, c)) = usage(tail) {
                    s.metrics.tokens(&service, &supplier, p, c);
                }
            });
            let mut r = Response::new(Body::from_stream(stream));
            *r.status_mut() = StatusCode::from_u16(status).unwrap_or(StatusCode::OK);
            let ct = content_type.unwrap_or_else(|| "text/event-stream".into());
            if let Ok(v) = ct.parse() {
                r.headers_mut().insert(header::CONTENT_TYPE, v);
            }
            r.headers_mut()
                .insert(header::CACHE_CONTROL, "no-cache".parse().expect("static"));
            r
        }
    }
}

/// A body stream that yields `first`, then what `produce` sends.
fn async_stream<F, Fut>(
    first: Bytes,
    produce: F,
) -> impl futures_util::Stream<Item = Result<Bytes, std::io::Error>>
where
    F: FnOnce(tokio::sync::mpsc::Sender<Result<Bytes, std::io::Error>>) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    let (tx, rx) = tokio::sync::mpsc::channel(16);
    tokio::spawn(produce(tx));
    let rest = futures_util::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|item| (item, rx))
    });
    futures_util::StreamExt::chain(futures_util::stream::iter([Ok(first)]), rest)
}

async fn models(State(s): State<Arc<GatewayState>>) -> Response {
    let data: Vec<serde_json::Value> = s
        .config
        .models
        .iter()
        .map(|(m, svc)| {
            serde_json::json!({"id": m, "object": "model", "created": 0, "owned_by": format!("pokt:{svc}")})
        })
        .collect();
    axum::Json(serde_json::json!({"object": "list", "data": data})).into_response()
}

async fn metrics_page(State(s): State<Arc<GatewayState>>) -> Response {
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        s.metrics.render(s.sessions.height()),
    )
        .into_response()
}

async fn readyz(State(s): State<Arc<GatewayState>>) -> Response {
    if s.sessions.height() > 0 {
        (StatusCode::OK, "ready").into_response()
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            "no block seen from the chain yet",
        )
            .into_response()
    }
}

async fn suppliers(State(s): State<Arc<GatewayState>>) -> Response {
    let scores: std::collections::BTreeMap<_, _> = s
        .scores
        .all()
        .into_iter()
        .map(|(k, v)| (k, serde_json::json!({"score": v.value(), "latency_ms": v.latency_ms, "error_rate": v.error_rate, "successes": v.successes, "failures": v.failures})))
        .collect();
    axum::Json(scores).into_response()
}

//! engine-sim: an OpenAI-compatible server that behaves like a vLLM engine, without a
//! GPU. Time to first token and tokens per second are tunable, responses stream as SSE
//! with `usage`, `/metrics` has vLLM's metric names, and failure modes (5xx, hang) can be
//! switched on at run time through `POST /sim/mode`.
//!
//! Tokens are words: a prompt's tokens are its whitespace-separated words, and the
//! completion is `max_tokens` deterministic words, so tests can predict `usage`.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU8, AtomicU64, Ordering};
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::{Query, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde_json::{Value, json};
use tokio::sync::Semaphore;

pub mod kv;
pub use kv::{KvCache, KvConfig};

/// How the engine behaves.
#[derive(Clone, Debug)]
pub struct SimConfig {
    /// The model it serves (and reports in `/v1/models`).
    pub model: String,
    /// Delay before the first token.
    pub ttft: Duration,
    /// Tokens per second per request after the first (0: all at once).
    pub tokens_per_second: f64,
    /// Completion length when the request names no `max_tokens`.
    pub default_max_tokens: u64,
    /// Requests generating at once; more wait (vLLM's `max_num_seqs`).
    pub max_num_seqs: usize,
    /// A KV cache: prefill then costs per token not cached (on one lane), decode per
    /// output token, instead of `ttft` and `tokens_per_second`.
    pub kv: Option<KvConfig>,
}

impl Default for SimConfig {
    fn default() -> Self {
        Self {
            model: "sim-model".into(),
            ttft: Duration::from_millis(20),
            tokens_per_second: 200.0,
            default_max_tokens: 16,
            max_num_seqs: 256,
            kv: None,
        }
    }
}

/// Failure modes, switchable at run time.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum Mode {
    /// Answer normally.
    Ok = 0,
    /// Answer every completion with HTTP 500.
    Error500 = 1,
    /// Accept requests and never answer.
    Hang = 2,
}

impl Mode {
    fn parse(s: &str) -> Option<Self> {
        match s {
            "ok" => Some(Self::Ok),
            "error500" => Some(Self::Error500),
            "hang" => Some(Self::Hang),
            _ => None,
        }
    }
}

#[derive(Debug, Default)]
struct Counters {
    running: AtomicU64,
    waiting: AtomicU64,
    prompt_tokens: AtomicU64,
    generation_tokens: AtomicU64,
    success: AtomicU64,
    failed: AtomicU64,
    admin_calls: AtomicU64,
}

/// A simulated engine.
#[derive(Clone, Debug)]
pub struct EngineSim {
    config: Arc<SimConfig>,
    mode: Arc<AtomicU8>,
    counters: Arc<Counters>,
    seqs: Arc<Semaphore>,
    kv: Option<Arc<KvCache>>,
}

/// The `i`-th word of every completion.
/// Waits out a generation time. A zero time answers at once: tokio's timer works in
/// 1 ms ticks, so even `sleep(0)` would hold a reply until the next tick and release
/// the replies of a tick together.
async fn generate(time: Duration) {
    if !time.is_zero() {
        tokio::time::sleep(time).await;
    }
}

fn word(i: u64) -> String {
    const WORDS: [&str; 8] = [
        "lorem",
        "ipsum",
        "dolor",
        "sit",
        "amet",
        "consectetur",
        "adipiscing",
        "elit",
    ];
    format!("{} ", WORDS[(i % 8) as usize])
}

/// Whitespace-separated words of every message's content (or the prompt).
fn prompt_tokens(req: &Value) -> u64 {
    let count = |v: &Value| {
        v.as_str()
            .map_or(0, |s| s.split_whitespace().count() as u64)
    };
    match req.get("messages").and_then(Value::as_array) {
        Some(msgs) => msgs.iter().map(|m| count(&m["content"])).sum(),
        None => count(&req["prompt"]),
    }
}

/// An administrative route: counted, and answered as vLLM does (200, no body).
async fn admin(State(sim): State<EngineSim>) -> StatusCode {
    sim.counters.admin_calls.fetch_add(1, Ordering::Relaxed);
    StatusCode::OK
}

fn error(status: StatusCode, message: &str) -> Response {
    (
        status,
        axum::Json(json!({"error": {"message": message, "type": "invalid_request_error"}})),
    )
        .into_response()
}

impl EngineSim {
    pub fn new(config: SimConfig) -> Self {
        let seqs = Arc::new(Semaphore::new(config.max_num_seqs.max(1)));
        Self {
            kv: config.kv.clone().map(|c| Arc::new(KvCache::new(c))),
            config: Arc::new(config),
            mode: Arc::new(AtomicU8::new(Mode::Ok as u8)),
            counters: Arc::default(),
            seqs,
        }
    }

    pub fn set_mode(&self, mode: Mode) {
        self.mode.store(mode as u8, Ordering::SeqCst);
    }

    fn mode(&self) -> Mode {
        match self.mode.load(Ordering::SeqCst) {
            1 => Mode::Error500,
            2 => Mode::Hang,
            _ => Mode::Ok,
        }
    }

    /// Completion tokens generated so far.
    pub fn generation_tokens(&self) -> u64 {
        self.counters.generation_tokens.load(Ordering::Relaxed)
    }

    /// Requests answered successfully so far.
    pub fn successes(&self) -> u64 {
        self.counters.success.load(Ordering::Relaxed)
    }

    /// Calls to the engine's administrative routes so far (vLLM's
    /// `/reset_prefix_cache`, `/sleep`, `/wake_up`, `/start_profile`, `/stop_profile`,
    /// SGLang's `/update_weights_from_disk`): what relays must never reach.
    pub fn admin_calls(&self) -> u64 {
        self.counters.admin_calls.load(Ordering::Relaxed)
    }

    /// The KV cache, when the engine models one: for benchmarks, its true state.
    pub fn kv(&self) -> Option<&KvCache> {
        self.kv.as_deref()
    }

    /// Prompt tokens of `body` this engine holds in its KV cache now (0 without one, or
    /// for a body that is not JSON). For benchmarks: what an oracle router knows.
    pub fn cached_prefix_tokens(&self, body: &[u8]) -> u64 {
        let (Some(kv), Ok(req)) = (&self.kv, serde_json::from_slice::<Value>(body)) else {
            return 0;
        };
        kv.cached_tokens(&kv::blocks(&req, kv.config.block_tokens).0)
    }

    /// Requests running and waiting now.
    pub fn load(&self) -> u64 {
        self.counters.running.load(Ordering::Relaxed)
            + self.counters.waiting.load(Ordering::Relaxed)
    }

    fn per_token(&self) -> Duration {
        if self.config.tokens_per_second > 0.0 {
            Duration::from_secs_f64(1.0 / self.config.tokens_per_second)
        } else {
            Duration::ZERO
        }
    }

    pub fn router(&self) -> Router {
        Router::new()
            .route("/v1/chat/completions", post(chat))
            .route("/v1/completions", post(completions))
            .route("/v1/models", get(models))
            .route("/metrics", get(metrics))
            .route("/health", get(|| async { StatusCode::OK }))
            .route("/sim/mode", post(set_mode))
            .route("/reset_prefix_cache", post(admin))
            .route("/sleep", post(admin))
            .route("/wake_up", post(admin))
            .route("/start_profile", post(admin))
            .route("/stop_profile", post(admin))
            .route("/update_weights_from_disk", post(admin))
            .with_state(self.clone())
    }

    /// Serves on `addr` (port 0 picks one) until `shutdown` resolves; returns the bound
    /// address and the server task.
    pub async fn serve(
        &self,
        addr: SocketAddr,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> std::io::Result<(SocketAddr, tokio::task::JoinHandle<()>)> {
        let listener = tokio::net::TcpListener::bind(addr).await?;
        let bound = listener.local_addr()?;
        let app = self.router();
        // Like uvicorn (vLLM's server): no Nagle, so each SSE event leaves at once.
        let listener = axum::serve::ListenerExt::tap_io(listener, |tcp| {
            let _ = tcp.set_nodelay(true);
        });
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app)
                .with_graceful_shutdown(shutdown)
                .await;
        });
        Ok((bound, task))
    }

    async fn complete(&self, body: axum::body::Bytes, chat: bool) -> Response {
        let req: Value = match serde_json::from_slice(&body) {
            Ok(v) => v,
            Err(e) => return error(StatusCode::BAD_REQUEST, &format!("invalid JSON: {e}")),
        };
        if req
            .get("model")
            .and_then(Value::as_str)
            .is_some_and(|m| m != self.config.model)
        {
            return error(
                StatusCode::NOT_FOUND,
                &format!(
                    "The model `{}` does not exist.",
                    req["model"].as_str().unwrap_or_default()
                ),
            );
        }
        match self.mode() {
            Mode::Ok => {}
            Mode::Error500 => {
                self.counters.failed.fetch_add(1, Ordering::Relaxed);
                return error(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "simulated engine failure",
                );
            }
            Mode::Hang => std::future::pending::<()>().await,
        }
        let prompt = prompt_tokens(&req);
        let n = req
            .get("max_tokens")
            .and_then(Value::as_u64)
            .unwrap_or(self.config.default_max_tokens);
        let stream = req.get("stream").and_then(Value::as_bool).unwrap_or(false);
        let include_usage = req["stream_options"]["include_usage"]
            .as_bool()
            .unwrap_or(false);
        self.counters.waiting.fetch_add(1, Ordering::Relaxed);
        let permit = self
            .seqs
            .clone()
            .acquire_owned()
            .await
            .expect("semaphore open");
        self.counters.waiting.fetch_sub(1, Ordering::Relaxed);
        self.counters.running.fetch_add(1, Ordering::Relaxed);
        self.counters
            .prompt_tokens
            .fetch_add(prompt, Ordering::Relaxed);
        // With a KV cache, time to first token is the prefill of what is not cached.
        let (mut ttft, mut per_token) = (self.config.ttft, self.per_token());
        let mut cached = 0;
        let mut held = None;
        if let Some(kv) = &self.kv {
            let (blocks, tokens) = kv::blocks(&req, kv.config.block_tokens);
            // The sequence's KV (prompt and answer) is in use until it finishes.
            held = Some(kv::InUse::new(kv.clone(), tokens + n));
            cached = kv.prefill(&blocks, tokens).await.min(prompt);
            (ttft, per_token) = (Duration::ZERO, kv.config.decode_per_token);
        }
        let permit = (permit, held);
        let id = format!(
            "cmpl-{}",
            self.counters.success.load(Ordering::Relaxed)
                + self.counters.running.load(Ordering::Relaxed)
        );
        let object = if chat {
            "chat.completion"
        } else {
            "text_completion"
        };
        let usage = json!({"prompt_tokens": prompt, "completion_tokens": n, "total_tokens": prompt + n,
            "prompt_tokens_details": {"cached_tokens": cached}});
        let model = self.config.model.clone();
        if !stream {
            generate(ttft + per_token * n.saturating_sub(1) as u32).await;
            let text: String = (0..n).map(word).collect();
            self.counters
                .generation_tokens
                .fetch_add(n, Ordering::Relaxed);
            self.counters.running.fetch_sub(1, Ordering::Relaxed);
            self.counters.success.fetch_add(1, Ordering::Relaxed);
            drop(permit);
            let choice = if chat {
                json!({"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "length"})
            } else {
                json!({"index": 0, "text": text, "finish_reason": "length"})
            };
            return axum::Json(
                json!({"id": id, "object": object, "created": 1_767_225_600, "model": model,
                "choices": [choice], "usage": usage}),
            )
            .into_response();
        }
        let me = self.clone();
        let chunk_object = if chat {
            "chat.completion.chunk"
        } else {
            "text_completion"
        };
        let events = async_stream(move |tx| async move {
            if !ttft.is_zero() {
                tokio::time::sleep(ttft).await;
            }
            for i in 0..n {
                if i > 0 && !per_token.is_zero() {
                    tokio::time::sleep(per_token).await;
                }
                let delta = if chat {
                    json!({"index": 0, "delta": {"content": word(i)}, "finish_reason": Value::Null})
                } else {
                    json!({"index": 0, "text": word(i), "finish_reason": Value::Null})
                };
                let chunk =
                    json!({"id": id, "object": chunk_object, "model": model, "choices": [delta]});
                me.counters
                    .generation_tokens
                    .fetch_add(1, Ordering::Relaxed);
                if tx.send(format!("data: {chunk}\n\n")).await.is_err() {
                    break; // the client went away
                }
            }
            let last = if chat {
                json!({"index": 0, "delta": {}, "finish_reason": "length"})
            } else {
                json!({"index": 0, "text": "", "finish_reason": "length"})
            };
            let _ = tx
                .send(format!(
                    "data: {}\n\n",
                    json!({"id": id, "object": chunk_object, "model": model, "choices": [last]})
                ))
                .await;
            if include_usage {
                let _ = tx.send(format!("data: {}\n\n", json!({"id": id, "object": chunk_object, "model": model, "choices": [], "usage": usage}))).await;
            }
            let _ = tx.send("data: [DONE]\n\n".to_string()).await;
            me.counters.running.fetch_sub(1, Ordering::Relaxed);
            me.counters.success.fetch_add(1, Ordering::Relaxed);
            drop(permit);
        });
        Response::builder()
            .header(header::CONTENT_TYPE, "text/event-stream")
            .header(header::CACHE_CONTROL, "no-cache")
            .body(Body::from_stream(events))
            .expect("static response")
    }
}

/// A stream fed by a task through a small channel. The response head leaves before
/// the first event, as vLLM's does.
fn async_stream<F, Fut>(
    f: F,
) -> impl futures_util::Stream<Item = Result<bytes::Bytes, std::io::Error>>
where
    F: FnOnce(tokio::sync::mpsc::Sender<String>) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    let (tx, rx) = tokio::sync::mpsc::channel::<String>(8);
    tokio::spawn(f(tx));
    futures_util::StreamExt::map(tokio_stream::wrappers::ReceiverStream::new(rx), |s| {
        Ok(bytes::Bytes::from(s))
    })
}

async fn chat(State(s): State<EngineSim>, body: axum::body::Bytes) -> Response {
    s.complete(body, true).await
}

async fn completions(State(s): State<EngineSim>, body: axum::body::Bytes) -> Response {
    s.complete(body, false).await
}

async fn models(State(s): State<EngineSim>) -> Response {
    axum::Json(json!({"object": "list", "data": [{"id": s.config.model, "object": "model", "owned_by": "engine-sim"}]})).into_response()
}

async fn metrics(State(s): State<EngineSim>) -> Response {
    let c = &s.counters;
    let model = &s.config.model;
    let mut out = String::new();
    for (name, kind, help, v) in [
        (
            "vllm:num_requests_running",
            "gauge",
            "Number of requests currently running on GPU.",
            c.running.load(Ordering::Relaxed),
        ),
        (
            "vllm:num_requests_waiting",
            "gauge",
            "Number of requests waiting to be processed.",
            c.waiting.load(Ordering::Relaxed),
        ),
        (
            "vllm:prompt_tokens_total",
            "counter",
            "Number of prefill tokens processed.",
            c.prompt_tokens.load(Ordering::Relaxed),
        ),
        (
            "vllm:generation_tokens_total",
            "counter",
            "Number of generation tokens processed.",
            c.generation_tokens.load(Ordering::Relaxed),
        ),
        (
            "vllm:request_success_total",
            "counter",
            "Count of successfully processed requests.",
            c.success.load(Ordering::Relaxed),
        ),
        (
            "vllm:request_failure_total",
            "counter",
            "Count of failed requests (engine-sim).",
            c.failed.load(Ordering::Relaxed),
        ),
    ] {
        out.push_str(&format!(
            "# HELP {name} {help}\n# TYPE {name} {kind}\n{name}{{model_name=\"{model}\"}} {v}\n"
        ));
    }
    if let Some(kv) = &s.kv {
        for (name, kind, help, v) in [
            (
                "vllm:prefix_cache_queries_total",
                "counter",
                "Prefix cache queries, in terms of number of queried tokens.",
                kv.queried.load(Ordering::Relaxed) as f64,
            ),
            (
                "vllm:prefix_cache_hits_total",
                "counter",
                "Prefix cache hits, in terms of number of cached tokens.",
                kv.hits.load(Ordering::Relaxed) as f64,
            ),
            (
                "vllm:kv_cache_usage_perc",
                "gauge",
                "KV-cache usage. 1 means 100 percent usage.",
                kv.usage(),
            ),
        ] {
            out.push_str(&format!(
                "# HELP {name} {help}\n# TYPE {name} {kind}\n{name}{{model_name=\"{model}\"}} {v}\n"
            ));
        }
    }
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], out).into_response()
}

async fn set_mode(
    State(s): State<EngineSim>,
    Query(q): Query<std::collections::HashMap<String, String>>,
) -> Response {
    match q.get("mode").and_then(|m| Mode::parse(m)) {
        Some(m) => {
            s.set_mode(m);
            StatusCode::NO_CONTENT.into_response()
        }
        None => error(StatusCode::BAD_REQUEST, "mode must be ok, error500 or hang"),
    }
}

/// The same engine behind Triton's KServe v2 gRPC API, as TensorRT-LLM's text models
/// answer it: `text_input`, `max_tokens`, `stream` in; `text_output` out; streamed
/// responses flagged `triton_final_response` at the end.
mod triton {
    use std::pin::Pin;
    use std::sync::atomic::Ordering;

    use lode_kserve_api as kserve;
    use tonic::{Request, Response, Status, Streaming};

    use super::{EngineSim, Mode, generate, word};

    fn text_response(model: &str, text: &str, last: Option<bool>) -> kserve::ModelInferResponse {
        let mut parameters = std::collections::HashMap::new();
        if let Some(f) = last {
            parameters.insert(
                "triton_final_response".to_string(),
                kserve::InferParameter {
                    parameter_choice: Some(kserve::infer_parameter::ParameterChoice::BoolParam(f)),
                },
            );
        }
        kserve::ModelInferResponse {
            model_name: model.into(),
            parameters,
            outputs: vec![kserve::model_infer_response::InferOutputTensor {
                name: "text_output".into(),
                datatype: "BYTES".into(),
                shape: vec![1, 1],
                contents: Some(kserve::InferTensorContents {
                    bytes_contents: vec![text.as_bytes().to_vec()],
                    ..Default::default()
                }),
                ..Default::default()
            }],
            ..Default::default()
        }
    }

    impl EngineSim {
        async fn triton_gate(&self, req: &kserve::ModelInferRequest) -> Result<(u64, u64), Status> {
            match self.mode() {
                Mode::Ok => {}
                Mode::Error500 => return Err(Status::internal("simulated engine failure")),
                Mode::Hang => std::future::pending::<()>().await,
            }
            let prompt = kserve::input_bytes(req, "text_input")
                .ok_or_else(|| Status::invalid_argument("input 'text_input' is required"))?;
            let prompt_tokens = String::from_utf8_lossy(prompt).split_whitespace().count() as u64;
            let n = kserve::input_int(req, "max_tokens")
                .map_or(self.config.default_max_tokens, |v| v.max(0) as u64);
            self.counters
                .prompt_tokens
                .fetch_add(prompt_tokens, Ordering::Relaxed);
            Ok((prompt_tokens, n))
        }
    }

    type InferStream = Pin<
        Box<
            dyn futures_util::Stream<Item = Result<kserve::ModelStreamInferResponse, Status>>
                + Send,
        >,
    >;

    #[tonic::async_trait]
    impl kserve::GrpcInferenceService for EngineSim {
        async fn server_ready(
            &self,
            _: Request<kserve::ServerReadyRequest>,
        ) -> Result<Response<kserve::ServerReadyResponse>, Status> {
            Ok(Response::new(kserve::ServerReadyResponse { ready: true }))
        }

        async fn model_infer(
            &self,
            req: Request<kserve::ModelInferRequest>,
        ) -> Result<Response<kserve::ModelInferResponse>, Status> {
            let req = req.into_inner();
            let (_, n) = self.triton_gate(&req).await?;
            generate(self.config.ttft + self.per_token() * n.saturating_sub(1) as u32).await;
            let text: String = (0..n).map(word).collect();
            self.counters
                .generation_tokens
                .fetch_add(n, Ordering::Relaxed);
            self.counters.success.fetch_add(1, Ordering::Relaxed);
            Ok(Response::new(text_response(&req.model_name, &text, None)))
        }

        type ModelStreamInferStream = InferStream;

        async fn model_stream_infer(
            &self,
            req: Request<Streaming<kserve::ModelInferRequest>>,
        ) -> Result<Response<Self::ModelStreamInferStream>, Status> {
            let mut incoming = req.into_inner();
            let first = incoming
                .message()
                .await?
                .ok_or_else(|| Status::invalid_argument("no request on the stream"))?;
            let (_, n) = self.triton_gate(&first).await?;
            let (tx, rx) = tokio::sync::mpsc::channel(8);
            let me = self.clone();
            let (ttft, per_token) = (self.config.ttft, self.per_token());
            tokio::spawn(async move {
                if !ttft.is_zero() {
                    tokio::time::sleep(ttft).await;
                }
                for i in 0..n {
                    if i > 0 && !per_token.is_zero() {
                        tokio::time::sleep(per_token).await;
                    }
                    me.counters
                        .generation_tokens
                        .fetch_add(1, Ordering::Relaxed);
                    let r = kserve::ModelStreamInferResponse {
                        infer_response: Some(text_response(
                            &first.model_name,
                            &word(i),
                            Some(false),
                        )),
                        ..Default::default()
                    };
                    if tx.send(Ok(r)).await.is_err() {
                        return;
                    }
                }
                let _ = tx
                    .send(Ok(kserve::ModelStreamInferResponse {
                        infer_response: Some(text_response(&first.model_name, "", Some(true))),
                        ..Default::default()
                    }))
                    .await;
                me.counters.success.fetch_add(1, Ordering::Relaxed);
            });
            Ok(Response::new(Box::pin(
                tokio_stream::wrappers::ReceiverStream::new(rx),
            )))
        }
    }
}

impl EngineSim {
    /// Serves the KServe v2 gRPC API (Triton) on `addr` until `shutdown` resolves.
    pub async fn serve_triton(
        &self,
        addr: SocketAddr,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> std::io::Result<(SocketAddr, tokio::task::JoinHandle<()>)> {
        let listener = tokio::net::TcpListener::bind(addr).await?;
        let bound = listener.local_addr()?;
        let svc = lode_kserve_api::GrpcInferenceServiceServer::new(self.clone());
        let task = tokio::spawn(async move {
            let incoming =
                tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true));
            let _ = tonic::transport::Server::builder()
                .add_service(svc)
                .serve_with_incoming_shutdown(incoming, shutdown)
                .await;
        });
        Ok((bound, task))
    }
}

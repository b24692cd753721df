//! The Triton backend: gateways send OpenAI requests; serve calls Triton's KServe v2
//! gRPC with TensorRT-LLM's text tensors (`text_input`, `max_tokens`, `stream` in,
//! `text_output` out) and answers in OpenAI's shapes, streamed as SSE when asked.
//!
//! Token counts in `usage` are whitespace words (Triton's text models report none).

use std::collections::BTreeMap;
use std::sync::atomic::Ordering;
use std::time::Duration;

use axum::http::{HeaderValue, StatusCode};
use axum::response::Response;
use bytes::Bytes;
use lode_kernels::proto::{Header, PoktHttpRequest};
use lode_kserve_api as kserve;
use serde_json::{Value, json};
use tonic::transport::Channel;

use super::config::ServiceConfig;
use super::failure::{RelayFailure, codes, fail};
use super::proxy::{Ctx, signed};
use super::relay::{ChunkStream, Service};

/// A Triton model behind a lazily connecting gRPC channel.
#[derive(Clone, Debug)]
pub struct Triton {
    client: kserve::GrpcInferenceServiceClient<Channel>,
    model: String,
}

impl Triton {
    pub fn new(s: &ServiceConfig) -> Result<Self, String> {
        let channel = tonic::transport::Endpoint::from_shared(s.backend_url.clone())
            .map_err(|e| {
                format!(
                    "service {}: backend_url {:?}: {e}",
                    s.service_id, s.backend_url
                )
            })?
            .connect_timeout(Duration::from_secs(5))
            .tcp_nodelay(true)
            .connect_lazy();
        Ok(Self {
            client: kserve::GrpcInferenceServiceClient::new(channel),
            model: s.triton_model.clone(),
        })
    }

    pub async fn ready(&self) -> bool {
        let mut client = self.client.clone();
        let call = client.server_ready(kserve::ServerReadyRequest {});
        matches!(tokio::time::timeout(Duration::from_secs(2), call).await, Ok(Ok(r)) if r.get_ref().ready)
    }
}

/// What an OpenAI request asks of a text model.
struct Ask {
    prompt: String,
    max_tokens: i32,
    stream: bool,
    include_usage: bool,
    chat: bool,
    model: String,
}

fn ask(body: &[u8]) -> Result<Ask, String> {
    let v: Value =
        serde_json::from_slice(body).map_err(|e| format!("the request body is not JSON: {e}"))?;
    let chat = v.get("messages").is_some();
    let prompt = match v.get("messages").and_then(Value::as_array) {
        Some(msgs) => msgs
            .iter()
            .map(|m| {
                format!(
                    "{}: {}",
                    m["role"].as_str().unwrap_or("user"),
                    m["content"].as_str().unwrap_or_default()
                )
            })
            .collect::<Vec<_>>()
            .join("\n"),
        None => v["prompt"]
            .as_str()
            .ok_or("a completion request needs `prompt` or `messages`")?
            .to_string(),
    };
    Ok(Ask {
        prompt,
        max_tokens: v
            .get("max_tokens")
            .and_then(Value::as_i64)
            .unwrap_or(256)
            .clamp(1, i32::MAX as i64) as i32,
        stream: v.get("stream").and_then(Value::as_bool).unwrap_or(false),
        include_usage: v["stream_options"]["include_usage"]
            .as_bool()
            .unwrap_or(false),
        chat,
        model: v
            .get("model")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string(),
    })
}

fn words(s: &str) -> u64 {
    s.split_whitespace().count() as u64
}

fn json_headers() -> BTreeMap<String, Header> {
    BTreeMap::from([(
        "content-type".to_string(),
        Header {
            key: "content-type".into(),
            values: vec!["application/json".into()],
        },
    )])
}

impl Ctx {
    pub(super) async fn proxy_triton(
        self,
        service: &Service,
        triton: &Triton,
        http_req: PoktHttpRequest,
    ) -> Response {
        let a = match ask(&http_req.body_bz) {
            Ok(a) => a,
            Err(e) => return self.fail(fail(StatusCode::BAD_REQUEST, codes::INVALID_REQUEST, e)),
        };
        let req = kserve::ModelInferRequest {
            model_name: triton.model.clone(),
            inputs: vec![
                kserve::bytes_input("text_input", a.prompt.as_bytes()),
                kserve::int32_input("max_tokens", a.max_tokens),
                kserve::bool_input("stream", a.stream),
            ],
            outputs: vec![kserve::model_infer_request::InferRequestedOutputTensor {
                name: "text_output".into(),
                ..Default::default()
            }],
            ..Default::default()
        };
        let timeout = Duration::from_secs(service.config.request_timeout_seconds);
        let deadline = tokio::time::Instant::now() + timeout;
        let model = if a.model.is_empty() {
            triton.model.clone()
        } else {
            a.model.clone()
        };
        let (object, chunk_object) = if a.chat {
            ("chat.completion", "chat.completion.chunk")
        } else {
            ("text_completion", "text_completion")
        };
        let prompt_tokens = words(&a.prompt);
        let map_status = |s: tonic::Status| -> Result<(u32, String), RelayFailure> {
            match s.code() {
                tonic::Code::Unavailable => Err(fail(
                    StatusCode::BAD_GATEWAY,
                    codes::BACKEND_UNREACHABLE,
                    format!("Triton unreachable: {}", s.message()),
                )),
                tonic::Code::DeadlineExceeded => Err(fail(
                    StatusCode::GATEWAY_TIMEOUT,
                    codes::TIMEOUT,
                    "Triton did not answer in time",
                )),
                tonic::Code::InvalidArgument | tonic::Code::NotFound => {
                    Ok((400, s.message().to_string()))
                }
                _ => Ok((500, s.message().to_string())),
            }
        };
        if !a.stream {
            let mut client = triton.client.clone();
            let call = client.model_infer(req);
            let (status, body) = match tokio::time::timeout_at(deadline, call).await {
                Err(_) => {
                    return self.fail(fail(
                        StatusCode::GATEWAY_TIMEOUT,
                        codes::TIMEOUT,
                        format!("Triton did not answer within {timeout:?}"),
                    ));
                }
                Ok(Err(s)) => match map_status(s) {
                    Err(f) => return self.fail(f),
                    Ok((code, msg)) => (
                        code,
                        json!({"error": {"message": msg, "type": "engine_error"}}),
                    ),
                },
                Ok(Ok(r)) => {
                    let text = String::from_utf8_lossy(
                        kserve::output_bytes(r.get_ref(), "text_output").unwrap_or_default(),
                    )
                    .into_owned();
                    let completion_tokens = words(&text);
                    service
                        .metrics
                        .prompt_tokens
                        .fetch_add(prompt_tokens, Ordering::Relaxed);
                    service
                        .metrics
                        .completion_tokens
                        .fetch_add(completion_tokens, Ordering::Relaxed);
                    let choice = if a.chat {
                        json!({"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"})
                    } else {
                        json!({"index": 0, "text": text, "finish_reason": "stop"})
                    };
                    (
                        200,
                        json!({"id": format!("triton-{}", self.session.header.session_id), "object": object, "model": model, "choices": [choice],
                        "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens, "total_tokens": prompt_tokens + completion_tokens}}),
                    )
                }
            };
            let res = signed(
                status,
                json_headers(),
                body.to_string().into_bytes(),
                &self.session.header,
                &self.key,
            );
            return self.answer(&service.metrics, status, res).await;
        }
        let mut client = triton.client.clone();
        let call = client.model_stream_infer(futures_util::stream::iter([req]));
        let responses = match tokio::time::timeout_at(deadline, call).await {
            Err(_) => {
                return self.fail(fail(
                    StatusCode::GATEWAY_TIMEOUT,
                    codes::TIMEOUT,
                    format!("Triton did not answer within {timeout:?}"),
                ));
            }
            Ok(Err(s)) => {
                return match map_status(s) {
                    Err(f) => self.fail(f),
                    Ok((_, msg)) => self.fail(fail(
                        StatusCode::BAD_GATEWAY,
                        codes::BACKEND_UNREACHABLE,
                        format!("Triton refused the stream: {msg}"),
                    )),
                };
            }
            Ok(Ok(r)) => r.into_inner(),
        };
        // Triton's responses as OpenAI SSE events.
        let id = format!("triton-{}", self.session.header.session_id);
        let metrics = service.metrics.clone();
        let chat = a.chat;
        let include_usage = a.include_usage;
        let sse = async_stream_sse(
            responses,
            move |text: Option<String>, completion: u64| -> Vec<String> {
                let event = |v: Value| format!("data: {v}\n\n");
                match text {
                    Some(t) => {
                        let delta = if chat {
                            json!({"index": 0, "delta": {"content": t}, "finish_reason": Value::Null})
                        } else {
                            json!({"index": 0, "text": t, "finish_reason": Value::Null})
                        };
                        vec![event(
                            json!({"id": id, "object": chunk_object, "model": model, "choices": [delta]}),
                        )]
                    }
                    None => {
                        metrics
                            .prompt_tokens
                            .fetch_add(prompt_tokens, Ordering::Relaxed);
                        metrics
                            .completion_tokens
                            .fetch_add(completion, Ordering::Relaxed);
                        let last = if chat {
                            json!({"index": 0, "delta": {}, "finish_reason": "stop"})
                        } else {
                            json!({"index": 0, "text": "", "finish_reason": "stop"})
                        };
                        let mut out = vec![event(
                            json!({"id": id, "object": chunk_object, "model": model, "choices": [last]}),
                        )];
                        if include_usage {
                            out.push(event(json!({"id": id, "object": chunk_object, "model": model, "choices": [],
                            "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": completion, "total_tokens": prompt_tokens + completion}})));
                        }
                        out.push("data: [DONE]\n\n".to_string());
                        out
                    }
                }
            },
        );
        let headers = BTreeMap::from([(
            "content-type".to_string(),
            Header {
                key: "content-type".into(),
                values: vec!["text/event-stream".into()],
            },
        )]);
        self.stream(
            service,
            200,
            headers,
            sse,
            deadline,
            HeaderValue::from_static("text/event-stream"),
        )
        .await
    }
}

/// Turns Triton's streamed responses into SSE bytes: `render(Some(text), _)` per token
/// response, `render(None, completion_tokens)` once the final response arrives.
fn async_stream_sse(
    mut responses: tonic::Streaming<kserve::ModelStreamInferResponse>,
    render: impl Fn(Option<String>, u64) -> Vec<String> + Send + 'static,
) -> ChunkStream {
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<Bytes, String>>(8);
    tokio::spawn(async move {
        let mut completion = 0u64;
        loop {
            match responses.message().await {
                Ok(Some(r)) => {
                    if !r.error_message.is_empty() {
                        let _ = tx.send(Err(format!("Triton: {}", r.error_message))).await;
                        return;
                    }
                    let Some(res) = r.infer_response else {
                        continue;
                    };
                    let text = String::from_utf8_lossy(
                        kserve::output_bytes(&res, "text_output").unwrap_or_default(),
                    )
                    .into_owned();
                    if !text.is_empty() {
                        completion += words(&text);
                        for e in render(Some(text), completion) {
                            if tx.send(Ok(Bytes::from(e))).await.is_err() {
                                return;
                            }
                        }
                    }
                    if kserve::is_final(&res) {
                        for e in render(None, completion) {
                            if tx.send(Ok(Bytes::from(e))).await.is_err() {
                                return;
                            }
                        }
                        return;
                    }
                }
                Ok(None) => {
                    for e in render(None, completion) {
                        let _ = tx.send(Ok(Bytes::from(e))).await;
                    }
                    return;
                }
                Err(s) => {
                    let _ = tx
                        .send(Err(format!("Triton stream: {}", s.message())))
                        .await;
                    return;
                }
            }
        }
    });
    Box::pin(tokio_stream::wrappers::ReceiverStream::new(rx))
}

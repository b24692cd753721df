//! One relay to one supplier: build and ring-sign the `RelayRequest`, post it, verify the
//! supplier's signature on the response (on every batch of a stream), and turn it back
//! into the engine's plain HTTP response or SSE stream.

use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use lode_contracts::serve::SERVICE_WAKING;
use lode_kernels::proto::{
    Header, Message, PoktHttpRequest, PoktHttpResponse, RelayRequest, RelayResponse,
};
use lode_kernels::relay::{StreamDecoder, sign_request_presigned, verify_response};
use lode_net::tls::HttpsConnector;
use tokio::sync::mpsc;

use crate::sessions::{Session, SessionSupplier};

pub type HttpClient = Client<HttpsConnector, Full<Bytes>>;

/// Largest non-streamed response accepted from a supplier.
const MAX_RESPONSE: usize = 64 << 20;
/// Largest batch of a stream accepted from a supplier (serve sends 16 KiB batches).
const MAX_STREAM_BATCH: usize = 4 << 20;

/// The engine's answer, relayed and verified.
#[derive(Debug)]
pub enum Answer {
    Full {
        status: u16,
        content_type: Option<String>,
        body: Bytes,
    },
    /// A stream: the first batch is in hand (so failover is over); the rest of the body
    /// arrives on `rest`, each batch verified before it is passed on.
    Stream {
        status: u16,
        content_type: Option<String>,
        first: Bytes,
        rest: mpsc::Receiver<Result<Bytes, String>>,
        /// The end of the whole request: the client must have read the stream by then.
        deadline: tokio::time::Instant,
    },
}

/// Why an attempt failed.
#[derive(Debug, thiserror::Error)]
pub enum AttemptError {
    #[error("supplier unreachable: {0}")]
    Transport(String),
    #[error("supplier did not answer within {0:?}")]
    Timeout(Duration),
    #[error("supplier refused the relay (HTTP {status}, code {code}): {message}")]
    Refused {
        status: u16,
        code: u32,
        message: String,
        /// Its `Retry-After`, in seconds, when it sent one.
        retry_after: Option<u64>,
    },
    #[error("response not signed by the session's supplier")]
    BadSignature,
    #[error("malformed response: {0}")]
    Malformed(String),
    #[error("the engine behind the supplier failed (HTTP {0})")]
    Engine(u16),
}

impl AttemptError {
    /// A short static category (metric label).
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Transport(_) => "unreachable",
            Self::Timeout(_) => "timeout",
            Self::Refused { code, .. } if *code == SERVICE_WAKING => "waking",
            Self::Refused { .. } => "refused",
            Self::BadSignature => "bad_signature",
            Self::Malformed(_) => "malformed",
            Self::Engine(_) => "engine_error",
        }
    }

    /// Whether the client's request is at fault (another supplier would refuse it too).
    pub fn is_client_error(&self) -> bool {
        // relayer_proxy codes: 2 invalid request, 11 body too large.
        matches!(self, Self::Refused { code: 2 | 11, .. })
    }

    /// When the supplier's model is waking up from zero engines: how long until it
    /// expects to serve (its `Retry-After`, else a second).
    pub fn waking(&self) -> Option<Duration> {
        match self {
            Self::Refused {
                code, retry_after, ..
            } if *code == SERVICE_WAKING => {
                Some(Duration::from_secs(retry_after.unwrap_or(1).max(1)))
            }
            _ => None,
        }
    }
}

/// The relay for `supplier`, ring-signed with the session's signer.
pub fn build_request(
    session: &Session,
    supplier: &str,
    path: &str,
    content_type: &str,
    body: &[u8],
) -> Result<RelayRequest, String> {
    let mut header = std::collections::BTreeMap::new();
    header.insert(
        "Content-Type".to_string(),
        Header {
            key: "Content-Type".into(),
            values: vec![content_type.to_string()],
        },
    );
    let mut req = RelayRequest {
        payload: PoktHttpRequest {
            method: "POST".into(),
            header,
            url: path.to_string(),
            body_bz: body.to_vec(),
        }
        .encode(),
        ..Default::default()
    };
    req.meta.session_header = Some(session.header.clone());
    req.meta.supplier_operator_address = supplier.to_string();
    let half = session.presigned.take(&session.signer);
    sign_request_presigned(&mut req, &session.signer, half)
        .map_err(|e| format!("ring signing: {e}"))?;
    Ok(req)
}

fn content_type_of(h: &PoktHttpResponse) -> Option<String> {
    h.header
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case("content-type"))
        .and_then(|(_, v)| v.values.first().cloned())
}

/// Checks one signed response (or batch) and returns its HTTP payload.
fn open(res: &RelayResponse, supplier: &SessionSupplier) -> Result<PoktHttpResponse, AttemptError> {
    if let Some(e) = &res.relay_miner_error {
        return Err(AttemptError::Refused {
            status: 0,
            code: e.code,
            message: e.message.clone(),
            retry_after: None,
        });
    }
    if !verify_response(res, &supplier.key) {
        return Err(AttemptError::BadSignature);
    }
    PoktHttpResponse::decode(&res.payload).map_err(|e| AttemptError::Malformed(e.to_string()))
}

/// Posts `req` to the supplier and returns the verified answer. `deadline` bounds the
/// whole request, a stream to its last batch included (also when the client reads it
/// slowly): past it the stream ends with an error.
pub async fn attempt(
    http: &HttpClient,
    supplier: &SessionSupplier,
    req: &RelayRequest,
    deadline: tokio::time::Instant,
) -> Result<Answer, AttemptError> {
    let timeout = deadline.saturating_duration_since(tokio::time::Instant::now());
    let late = || AttemptError::Timeout(timeout);
    let post = hyper::Request::post(&supplier.url)
        .header("content-type", "application/x-protobuf")
        .header("rpc-type", "4")
        .body(Full::new(Bytes::from(req.encode())))
        .map_err(|e| AttemptError::Transport(format!("endpoint {}: {e}", supplier.url)))?;
    let res = tokio::time::timeout_at(deadline, http.request(post))
        .await
        .map_err(|_| late())?
        .map_err(|e| AttemptError::Transport(lode_net::error_chain(&e)))?;
    let http_status = res.status().as_u16();
    // Whole seconds only (an HTTP date is not worth a clock comparison here).
    let retry_after = res
        .headers()
        .get("retry-after")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok());
    let streamed = res
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|ct| !ct.starts_with("application/x-protobuf"));
    let mut body = res.into_body();
    if !streamed || http_status != 200 {
        let bytes = tokio::time::timeout_at(
            deadline,
            http_body_util::Limited::new(body, MAX_RESPONSE).collect(),
        )
        .await
        .map_err(|_| late())?
        .map_err(|e| AttemptError::Transport(e.to_string()))?
        .to_bytes();
        let r = RelayResponse::decode(&bytes)
            .map_err(|e| AttemptError::Malformed(format!("HTTP {http_status}: {e}")))?;
        let payload = open(&r, supplier).map_err(|e| match e {
            AttemptError::Refused { code, message, .. } => AttemptError::Refused {
                status: http_status,
                code,
                message,
                retry_after,
            },
            other => other,
        })?;
        let status = payload.status_code as u16;
        if status >= 500 {
            return Err(AttemptError::Engine(status));
        }
        return Ok(Answer::Full {
            status,
            content_type: content_type_of(&payload),
            body: Bytes::from(payload.body_bz),
        });
    }
    // A stream of signed batches: wait for the first one (failover is still possible
    // until then), then pass the rest on as they come.
    let mut decoder = StreamDecoder::with_max_batch(MAX_STREAM_BATCH);
    let mut pending = std::collections::VecDeque::new();
    let mut ended = false;
    while pending.is_empty() {
        match tokio::time::timeout_at(deadline, body.frame()).await {
            Err(_) => return Err(late()),
            Ok(None) => {
                ended = true;
                break;
            }
            Ok(Some(Err(e))) => return Err(AttemptError::Transport(e.to_string())),
            Ok(Some(Ok(frame))) => {
                if let Ok(data) = frame.into_data() {
                    let batches = decoder
                        .push(&data)
                        .map_err(|e| AttemptError::Malformed(e.to_string()))?;
                    pending.extend(batches);
                }
            }
        }
    }
    if ended {
        let last = std::mem::take(&mut decoder)
            .finish()
            .map_err(|e| AttemptError::Malformed(e.to_string()))?;
        pending.extend(last);
    }
    let first = pending
        .pop_front()
        .ok_or_else(|| AttemptError::Malformed("an empty stream".into()))?;
    let head = open(&first, supplier)?;
    let status = head.status_code as u16;
    if status >= 500 {
        return Err(AttemptError::Engine(status));
    }
    let (tx, rx) = mpsc::channel(16);
    let supplier = supplier.clone();
    tokio::spawn(async move {
        // Every send, like every read, ends at the deadline: a client that stopped
        // reading holds nothing past it.
        let send = |b: Result<Bytes, String>| {
            let tx = tx.clone();
            async move {
                matches!(
                    tokio::time::timeout_at(deadline, tx.send(b)).await,
                    Ok(Ok(()))
                )
            }
        };
        for batch in pending {
            let chunk = open(&batch, &supplier).map(|p| Bytes::from(p.body_bz));
            let failed = chunk.is_err();
            if !send(chunk.map_err(|e| e.to_string())).await || failed {
                return;
            }
        }
        if ended {
            return;
        }
        loop {
            let frame = match tokio::time::timeout_at(deadline, body.frame()).await {
                Err(_) => {
                    let _ = tx.try_send(Err(format!(
                        "the stream did not finish within the request timeout ({timeout:?})"
                    )));
                    return;
                }
                Ok(None) => break,
                Ok(Some(Err(e))) => {
                    send(Err(e.to_string())).await;
                    return;
                }
                Ok(Some(Ok(f))) => f,
            };
            let Ok(data) = frame.into_data() else {
                continue;
            };
            let batches = match decoder.push(&data) {
                Ok(b) => b,
                Err(e) => {
                    send(Err(format!("malformed stream: {e}"))).await;
                    return;
                }
            };
            for batch in batches {
                let chunk = open(&batch, &supplier).map(|p| Bytes::from(p.body_bz));
                let failed = chunk.is_err();
                if !send(chunk.map_err(|e| e.to_string())).await || failed {
                    return;
                }
            }
        }
        match decoder.finish() {
            Ok(Some(batch)) => {
                let chunk = open(&batch, &supplier).map(|p| Bytes::from(p.body_bz));
                send(chunk.map_err(|e| e.to_string())).await;
            }
            Ok(None) => {}
            Err(e) => {
                send(Err(format!("malformed last batch: {e}"))).await;
            }
        }
    });
    Ok(Answer::Stream {
        status,
        content_type: content_type_of(&head),
        first: Bytes::from(head.body_bz),
        rest: rx,
        deadline,
    })
}

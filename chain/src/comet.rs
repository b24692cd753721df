//! CometBFT RPC: the node's status, blocks by height, the application version, and new
//! blocks as they are committed (websocket `NewBlockHeader`), with timeouts, bounded
//! retries and errors that say what went wrong.

use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Bytes;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use lode_net::tls::HttpsConnector;
use serde::Deserialize;
use serde_json::Value;
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::Message as WsMessage;

/// Why a CometBFT call failed.
#[derive(Debug, thiserror::Error)]
pub enum RpcError {
    #[error("CometBFT RPC {url} is unreachable: {reason}")]
    Unreachable { url: String, reason: String },
    #[error("CometBFT RPC {url} did not answer within {timeout:?}")]
    Timeout { url: String, timeout: Duration },
    #[error("CometBFT RPC {url} answered HTTP {status}")]
    Http { url: String, status: u16 },
    #[error("CometBFT RPC error {code}: {message} {data}")]
    Rpc {
        code: i64,
        message: String,
        data: String,
    },
    #[error("unexpected CometBFT response from {url}: {reason}")]
    BadResponse { url: String, reason: String },
    #[error(
        "transaction {hash} was not included by its timeout height {timeout_height} (chain at {height})"
    )]
    NotIncluded {
        hash: String,
        timeout_height: i64,
        height: i64,
    },
}

/// A transaction's fate once in a block: `code` 0 is success.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TxResult {
    pub height: i64,
    pub code: u32,
    pub codespace: String,
    pub log: String,
}

/// Standard base64 (CometBFT's JSON encoding of bytes).
pub fn base64(data: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(data.len().div_ceil(3) * 4);
    for chunk in data.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = (b[0] as u32) << 16 | (b[1] as u32) << 8 | b[2] as u32;
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(ALPHABET[(n >> (18 - 6 * i)) as usize & 63] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// Decodes standard base64 (padding optional); `None` for any other character or a
/// dangling single character.
pub fn unbase64(s: &str) -> Option<Vec<u8>> {
    let val = |c: u8| -> Option<u32> {
        Some(match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' => 62,
            b'/' => 63,
            _ => return None,
        } as u32)
    };
    let body = s.trim_end_matches('=').as_bytes();
    if body.len() % 4 == 1 {
        return None;
    }
    let mut out = Vec::with_capacity(body.len() * 3 / 4);
    for chunk in body.chunks(4) {
        let mut n = 0u32;
        for (i, &c) in chunk.iter().enumerate() {
            n |= val(c)? << (18 - 6 * i);
        }
        out.extend_from_slice(&n.to_be_bytes()[1..chunk.len()]);
    }
    Some(out)
}

impl RpcError {
    /// Whether trying again may help (the node is down or slow, not wrong).
    pub fn is_transient(&self) -> bool {
        // RPC errors, bad responses and NotIncluded are answers, not outages.
        matches!(self, Self::Unreachable { .. } | Self::Timeout { .. })
            || matches!(self, Self::Http { status, .. } if *status >= 500)
    }
}

/// A committed block as lode uses it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Block {
    pub height: i64,
    /// The header hash (CometBFT `block_id.hash`).
    pub hash: Vec<u8>,
    pub chain_id: String,
    /// RFC 3339.
    pub time: String,
}

/// The node's view of the chain.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Status {
    pub chain_id: String,
    pub latest_height: i64,
    pub latest_hash: Vec<u8>,
    pub catching_up: bool,
}

/// How calls are retried.
#[derive(Clone, Copy, Debug)]
pub struct RetryPolicy {
    pub attempts: u32,
    pub first_backoff: Duration,
    pub max_backoff: Duration,
    pub timeout: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            attempts: 5,
            first_backoff: Duration::from_millis(200),
            max_backoff: Duration::from_secs(5),
            timeout: Duration::from_secs(10),
        }
    }
}

/// Largest RPC response accepted (a block with its transactions).
const MAX_RESPONSE: usize = 64 << 20;

/// A CometBFT RPC client (`http://host:26657`).
#[derive(Clone, Debug)]
pub struct CometRpc {
    base: String,
    http: Client<HttpsConnector, Full<Bytes>>,
    retry: RetryPolicy,
}

/// `"123"` or `123`, as CometBFT writes int64s.
fn int(v: &Value, what: &str) -> Result<i64, String> {
    match v {
        Value::String(s) => s
            .parse()
            .map_err(|_| format!("{what} is not an integer: {s:?}")),
        Value::Number(n) => n.as_i64().ok_or_else(|| format!("{what} is out of range")),
        _ => Err(format!("{what} is missing")),
    }
}

fn hex_hash(v: &Value, what: &str) -> Result<Vec<u8>, String> {
    let s = v.as_str().ok_or_else(|| format!("{what} is missing"))?;
    lode_kernels::hex::decode(s).ok_or_else(|| format!("{what} is not hex: {s:?}"))
}

#[derive(Deserialize)]
struct Envelope {
    result: Option<Value>,
    error: Option<RpcErrorBody>,
}

#[derive(Deserialize)]
struct RpcErrorBody {
    code: i64,
    message: String,
    #[serde(default)]
    data: Value,
}

impl CometRpc {
    pub fn new(base: &str, retry: RetryPolicy) -> Self {
        Self {
            base: base.trim_end_matches('/').to_string(),
            // `https://` (and `wss://`) through TLS: the system's roots, or SSL_CERT_FILE.
            http: Client::builder(TokioExecutor::new())
                .build(lode_net::tls::https_connector(retry.timeout)),
            retry,
        }
    }

    /// One HTTP call: a GET of `path`, or a JSON-RPC POST when `body` is given. Returns
    /// the JSON-RPC `result`.
    async fn call_once(&self, path: &str, body: Option<&Value>) -> Result<Value, RpcError> {
        let url = format!("{}{path}", self.base);
        let unreachable = |reason: String| RpcError::Unreachable {
            url: url.clone(),
            reason,
        };
        let req = match body {
            None => hyper::Request::get(&url).body(Full::new(Bytes::new())),
            Some(b) => hyper::Request::post(&url)
                .header(hyper::header::CONTENT_TYPE, "application/json")
                .body(Full::new(Bytes::from(b.to_string()))),
        }
        .map_err(|e| unreachable(format!("bad request: {e}")))?;
        let call = async {
            let res = self
                .http
                .request(req)
                .await
                .map_err(|e| unreachable(lode_net::error_chain(&e)))?;
            let status = res.status().as_u16();
            let body = Limited::new(res.into_body(), MAX_RESPONSE)
                .collect()
                .await
                .map_err(|e| unreachable(e.to_string()))?
                .to_bytes();
            Ok::<_, RpcError>((status, body))
        };
        let (status, body) = tokio::time::timeout(self.retry.timeout, call)
            .await
            .map_err(|_| RpcError::Timeout {
                url: url.clone(),
                timeout: self.retry.timeout,
            })??;
        let env: Envelope = serde_json::from_slice(&body).map_err(|e| {
            if status != 200 {
                RpcError::Http {
                    url: url.clone(),
                    status,
                }
            } else {
                RpcError::BadResponse {
                    url: url.clone(),
                    reason: format!("not JSON-RPC: {e}"),
                }
            }
        })?;
        if let Some(e) = env.error {
            let data = match e.data {
                Value::String(s) => s,
                Value::Null => String::new(),
                other => other.to_string(),
            };
            return Err(RpcError::Rpc {
                code: e.code,
                message: e.message,
                data,
            });
        }
        env.result.ok_or(RpcError::BadResponse {
            url,
            reason: "no result".into(),
        })
    }

    /// GET with retries (exponential backoff) on transient failures only.
    async fn get(&self, path: &str) -> Result<Value, RpcError> {
        let mut backoff = self.retry.first_backoff;
        let mut attempt = 1;
        loop {
            match self.call_once(path, None).await {
                Err(e) if e.is_transient() && attempt < self.retry.attempts => {
                    tracing::warn!(error = %e, attempt, "CometBFT call failed; retrying");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(self.retry.max_backoff);
                    attempt += 1;
                }
                other => return other,
            }
        }
    }

    fn bad(&self, reason: String) -> RpcError {
        RpcError::BadResponse {
            url: self.base.clone(),
            reason,
        }
    }

    /// `/status`.
    pub async fn status(&self) -> Result<Status, RpcError> {
        let r = self.get("/status").await?;
        let sync = &r["sync_info"];
        Ok(Status {
            chain_id: r["node_info"]["network"]
                .as_str()
                .unwrap_or_default()
                .to_string(),
            latest_height: int(&sync["latest_block_height"], "latest_block_height")
                .map_err(|e| self.bad(e))?,
            latest_hash: hex_hash(&sync["latest_block_hash"], "latest_block_hash")
                .map_err(|e| self.bad(e))?,
            catching_up: sync["catching_up"].as_bool().unwrap_or(false),
        })
    }

    /// `/block?height=h`: exactly that height, never a substitute (a proof seeded from
    /// the wrong block is slashed).
    pub async fn block(&self, height: i64) -> Result<Block, RpcError> {
        let r = self.get(&format!("/block?height={height}")).await?;
        let header = &r["block"]["header"];
        let got = int(&header["height"], "block height").map_err(|e| self.bad(e))?;
        if got != height {
            return Err(self.bad(format!("asked for block {height}, got {got}")));
        }
        Ok(Block {
            height,
            hash: hex_hash(&r["block_id"]["hash"], "block_id.hash").map_err(|e| self.bad(e))?,
            chain_id: header["chain_id"].as_str().unwrap_or_default().to_string(),
            time: header["time"].as_str().unwrap_or_default().to_string(),
        })
    }

    /// `/abci_info`: the application's version and protocol version.
    pub async fn abci_info(&self) -> Result<(String, u64), RpcError> {
        let r = self.get("/abci_info").await?;
        let resp = &r["response"];
        let app_version = int(&resp["app_version"], "app_version").unwrap_or(0).max(0) as u64;
        Ok((
            resp["version"].as_str().unwrap_or_default().to_string(),
            app_version,
        ))
    }

    /// One JSON-RPC call (`POST /`), not retried: what it does may not be safe to do
    /// twice, so the caller decides (broadcasting a transaction is
    /// `lode_chain_tx::broadcast_tx_sync`).
    pub async fn call(&self, method: &str, params: Value) -> Result<Value, RpcError> {
        let body =
            serde_json::json!({"jsonrpc": "2.0", "id": 1, "method": method, "params": params});
        self.call_once("/", Some(&body)).await
    }

    /// `/tx?hash=`: the transaction's inclusion, or `None` while it is not in a block.
    pub async fn tx(&self, hash: &str) -> Result<Option<TxResult>, RpcError> {
        match self.get(&format!("/tx?hash=0x{hash}")).await {
            Ok(r) => Ok(Some(TxResult {
                height: int(&r["height"], "tx height").map_err(|e| self.bad(e))?,
                code: r["tx_result"]["code"].as_u64().unwrap_or(0) as u32,
                codespace: r["tx_result"]["codespace"]
                    .as_str()
                    .unwrap_or_default()
                    .to_string(),
                log: r["tx_result"]["log"]
                    .as_str()
                    .unwrap_or_default()
                    .to_string(),
            })),
            Err(RpcError::Rpc { data, .. }) if data.contains("not found") => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Polls until the transaction is in a block, or the chain passes `timeout_height`
    /// without it (it can then never be included).
    pub async fn wait_for_inclusion(
        &self,
        hash: &str,
        timeout_height: i64,
        poll: Duration,
    ) -> Result<TxResult, RpcError> {
        loop {
            if let Some(r) = self.tx(hash).await? {
                return Ok(r);
            }
            let height = self.status().await?.latest_height;
            if height > timeout_height {
                return Err(RpcError::NotIncluded {
                    hash: hash.to_string(),
                    timeout_height,
                    height,
                });
            }
            tokio::time::sleep(poll).await;
        }
    }

    /// Follows committed blocks from `from_height` on: replays any missed heights from
    /// `/block`, then listens on the websocket for `NewBlockHeader` events, filling gaps
    /// and reconnecting (with backoff) when the connection drops. Blocks arrive in order,
    /// each exactly once. The task ends when the receiver is dropped.
    pub fn follow(
        &self,
        from_height: i64,
        buffer: usize,
    ) -> mpsc::Receiver<Result<Block, RpcError>> {
        let (tx, rx) = mpsc::channel(buffer);
        let this = self.clone();
        tokio::spawn(async move { this.follow_loop(from_height, tx).await });
        rx
    }

    async fn follow_loop(self, mut next: i64, tx: mpsc::Sender<Result<Block, RpcError>>) {
        let ws_url = format!("{}/websocket", self.base.replacen("http", "ws", 1));
        let mut backoff = self.retry.first_backoff;
        loop {
            if tx.is_closed() {
                return;
            }
            match self.follow_session(&ws_url, &mut next, &tx).await {
                Ok(()) => return, // receiver gone
                Err(e) => {
                    tracing::warn!(error = %e, next, "block subscription interrupted; reconnecting");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(self.retry.max_backoff);
                }
            }
        }
    }

    /// Delivers every block from `*next` up to `height`.
    async fn catch_up(
        &self,
        next: &mut i64,
        height: i64,
        tx: &mpsc::Sender<Result<Block, RpcError>>,
    ) -> Result<bool, RpcError> {
        while *next <= height {
            let b = self.block(*next).await?;
            if tx.send(Ok(b)).await.is_err() {
                return Ok(false);
            }
            *next += 1;
        }
        Ok(true)
    }

    /// One websocket connection's worth of following. `Ok(())` when the receiver is gone.
    async fn follow_session(
        &self,
        ws_url: &str,
        next: &mut i64,
        tx: &mpsc::Sender<Result<Block, RpcError>>,
    ) -> Result<(), RpcError> {
        let unreachable = |e: String| RpcError::Unreachable {
            url: ws_url.to_string(),
            reason: e,
        };
        let uri: hyper::Uri = ws_url
            .parse()
            .map_err(|e: hyper::http::uri::InvalidUri| unreachable(e.to_string()))?;
        let tls = uri.scheme_str() == Some("wss");
        let host = uri.host().unwrap_or_default().to_string();
        let port = uri.port_u16().unwrap_or(if tls { 443 } else { 80 });
        let handshake = async {
            let stream = lode_net::tls::connect(&host, port, tls)
                .await
                .map_err(|e| unreachable(lode_net::error_chain(&e)))?;
            tokio_tungstenite::client_async(ws_url, stream)
                .await
                .map_err(|e| unreachable(e.to_string()))
        };
        let (mut ws, _) = tokio::time::timeout(self.retry.timeout, handshake)
            .await
            .map_err(|_| RpcError::Timeout {
                url: ws_url.to_string(),
                timeout: self.retry.timeout,
            })??;
        let subscribe = serde_json::json!({"jsonrpc": "2.0", "method": "subscribe", "id": 1, "params": {"query": "tm.event='NewBlockHeader'"}});
        ws.send(WsMessage::Text(subscribe.to_string().into()))
            .await
            .map_err(|e| unreachable(e.to_string()))?;
        // Blocks committed while we were away, up to the node's current height.
        let status = self.status().await?;
        if !self.catch_up(next, status.latest_height, tx).await? {
            return Ok(());
        }
        while let Some(msg) = ws.next().await {
            let text = match msg.map_err(|e| unreachable(e.to_string()))? {
                WsMessage::Text(t) => t.to_string(),
                WsMessage::Close(_) => {
                    return Err(unreachable("the node closed the websocket".into()));
                }
                _ => continue,
            };
            let v: Value = serde_json::from_str(&text)
                .map_err(|e| self.bad(format!("websocket event is not JSON: {e}")))?;
            if let Some(err) = v.get("error") {
                return Err(self.bad(format!("subscription refused: {err}")));
            }
            let header = &v["result"]["data"]["value"]["header"];
            if header.is_null() {
                continue; // the subscription's acknowledgement
            }
            let height = int(&header["height"], "event height").map_err(|e| self.bad(e))?;
            // The event carries no hash: read the block (which also fills any gap).
            if !self.catch_up(next, height, tx).await? {
                return Ok(());
            }
        }
        Err(unreachable("the websocket ended".into()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_matches_rfc_4648_vectors() {
        for (plain, encoded) in [
            ("", ""),
            ("f", "Zg=="),
            ("fo", "Zm8="),
            ("foo", "Zm9v"),
            ("foob", "Zm9vYg=="),
            ("fooba", "Zm9vYmE="),
            ("foobar", "Zm9vYmFy"),
        ] {
            assert_eq!(base64(plain.as_bytes()), encoded);
        }
        assert_eq!(base64(&[0xfb, 0xff]), "+/8=");
        for len in 0..40u8 {
            let data: Vec<u8> = (0..len).map(|i| i.wrapping_mul(37) ^ 0xa5).collect();
            assert_eq!(unbase64(&base64(&data)).as_deref(), Some(&data[..]));
        }
        assert_eq!(unbase64("Zm9v!"), None);
        assert_eq!(unbase64("Z"), None);
    }
}

//! The devnet's CometBFT RPC port: `/status`, `/block`, `/block_results`, `/tx`,
//! `/abci_info`, JSON-RPC over POST (`broadcast_tx_sync` and the same queries), and the
//! `/websocket` event stream (`NewBlockHeader`, and `Tx` filtered by `message.sender`).
//! Plus `/devnet/...` endpoints that drive the chain (produce blocks, read settlements).

use std::collections::HashMap;

use axum::Router;
use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};
use axum::extract::{Query, State};
use axum::response::{IntoResponse, Json, Response};
use axum::routing::{get, post};
use lode_chain::comet::{base64, unbase64};
use serde_json::{Value, json};

use crate::Devnet;
use crate::chain::{BlockInfo, Chain, Event, TxOutcome};

fn upper_hex(b: &[u8]) -> String {
    lode_kernels::hex::encode_upper(b)
}

/// RFC 3339 UTC time of a Unix time in milliseconds (civil-from-days).
pub fn rfc3339(unix_ms: u64) -> String {
    let secs = unix_ms / 1000;
    let (days, rem) = ((secs / 86_400) as i64, secs % 86_400);
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:03}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60,
        unix_ms % 1000
    )
}

fn ok(result: Value) -> Json<Value> {
    Json(json!({"jsonrpc": "2.0", "id": -1, "result": result}))
}

fn rpc_error(data: String) -> Json<Value> {
    Json(
        json!({"jsonrpc": "2.0", "id": -1, "error": {"code": -32603, "message": "Internal error", "data": data}}),
    )
}

fn events_json(events: &[Event]) -> Value {
    Value::Array(
        events
            .iter()
            .map(|e| {
                json!({"type": e.kind, "attributes": e.attributes.iter()
                    .map(|(k, v)| json!({"key": k, "value": v, "index": true})).collect::<Vec<_>>()})
            })
            .collect(),
    )
}

fn block_json(c: &Chain, b: &BlockInfo) -> Value {
    let txs: Vec<String> = b
        .txs
        .iter()
        .filter_map(|h| c.txs.get(h))
        .map(|t| base64(&t.tx))
        .collect();
    json!({
        "block_id": {"hash": upper_hex(&b.hash)},
        "block": {
            "header": {
                "chain_id": c.genesis.chain_id,
                "height": b.height.to_string(),
                "time": rfc3339(b.time_unix_ms),
                "last_block_id": {"hash": c.block(b.height - 1).map(|p| upper_hex(&p.hash)).unwrap_or_default()},
            },
            "data": {"txs": txs},
        }
    })
}

fn tx_result_json(t: &TxOutcome) -> Value {
    json!({
        "code": t.code,
        "codespace": t.codespace,
        "log": t.log,
        "gas_wanted": t.gas_wanted.to_string(),
        "gas_used": t.gas_used.to_string(),
        "events": events_json(&t.events),
    })
}

fn tx_json(hash: &str, t: &TxOutcome) -> Value {
    json!({
        "hash": hash,
        "height": t.height.to_string(),
        "index": t.index,
        "tx_result": tx_result_json(t),
        "tx": base64(&t.tx),
    })
}

/// One JSON-RPC method with its parameters, for GET and POST alike.
fn dispatch(d: &Devnet, method: &str, params: &HashMap<String, String>) -> Result<Value, String> {
    let height = |c: &Chain| -> Result<i64, String> {
        match params.get("height").map(|h| h.trim_matches('"')) {
            None | Some("") => Ok(c.height()),
            Some(h) => h.parse().map_err(|_| format!("invalid height {h:?}")),
        }
    };
    match method {
        "status" => {
            let c = d.chain();
            let latest = c.block(c.height()).expect("genesis exists");
            Ok(json!({
                "node_info": {"network": c.genesis.chain_id, "version": "0.38.17"},
                "sync_info": {
                    "latest_block_hash": upper_hex(&latest.hash),
                    "latest_block_height": latest.height.to_string(),
                    "latest_block_time": rfc3339(latest.time_unix_ms),
                    "catching_up": false,
                },
            }))
        }
        "block" => {
            let c = d.chain();
            let h = height(&c)?;
            let b = c.block(h).ok_or_else(|| {
                format!(
                    "height {h} must be less than or equal to the current blockchain height {}",
                    c.height()
                )
            })?;
            Ok(block_json(&c, b))
        }
        "block_results" => {
            let c = d.chain();
            let h = height(&c)?;
            let b = c.block(h).ok_or_else(|| {
                format!(
                    "height {h} must be less than or equal to the current blockchain height {}",
                    c.height()
                )
            })?;
            let results: Vec<Value> = b
                .txs
                .iter()
                .filter_map(|t| c.txs.get(t))
                .map(tx_result_json)
                .collect();
            Ok(json!({
                "height": h.to_string(),
                "txs_results": results,
                "finalize_block_events": events_json(&b.end_events),
            }))
        }
        "tx" => {
            let c = d.chain();
            let want = params
                .get("hash")
                .map(|h| h.trim_matches('"').trim_start_matches("0x").to_uppercase())
                .unwrap_or_default();
            c.txs
                .get(&want)
                .map(|t| tx_json(&want, t))
                .ok_or_else(|| format!("tx ({want}) not found"))
        }
        "abci_info" => Ok(json!({"response": {
            "data": "pocket", "version": "v0.1.35-devnet", "app_version": "1",
            "last_block_height": d.chain().height().to_string(),
        }})),
        "broadcast_tx_sync" => {
            let raw = params
                .get("tx")
                .map(|t| t.trim_matches('"'))
                .unwrap_or_default();
            let tx = unbase64(raw).ok_or("tx is not base64")?;
            let hash = lode_kernels::proto::cosmos::tx_hash(&tx);
            Ok(match d.chain().check_tx(&tx) {
                Ok(_) => json!({"code": 0, "codespace": "", "log": "[]", "data": "", "hash": hash}),
                Err(e) => {
                    json!({"code": e.code, "codespace": e.codespace, "log": e.log, "data": "", "hash": hash})
                }
            })
        }
        other => Err(format!("method {other:?} not found")),
    }
}

async fn get_method(
    State(d): State<Devnet>,
    axum::extract::Path(method): axum::extract::Path<String>,
    Query(params): Query<HashMap<String, String>>,
) -> Json<Value> {
    match dispatch(&d, &method, &params) {
        Ok(v) => ok(v),
        Err(e) => rpc_error(e),
    }
}

async fn json_rpc(State(d): State<Devnet>, Json(req): Json<Value>) -> Json<Value> {
    let id = req.get("id").cloned().unwrap_or(json!(-1));
    let method = req["method"].as_str().unwrap_or_default();
    let params: HashMap<String, String> = req["params"]
        .as_object()
        .map(|o| {
            o.iter()
                .map(|(k, v)| {
                    (
                        k.clone(),
                        v.as_str().map_or_else(|| v.to_string(), str::to_string),
                    )
                })
                .collect()
        })
        .unwrap_or_default();
    let reply = match dispatch(&d, method, &params) {
        Ok(v) => json!({"jsonrpc": "2.0", "id": id, "result": v}),
        Err(e) => {
            json!({"jsonrpc": "2.0", "id": id, "error": {"code": -32603, "message": "Internal error", "data": e}})
        }
    };
    Json(reply)
}

/// `POST /devnet/advance?blocks=n`: produce `n` blocks now (default 1).
async fn advance(State(d): State<Devnet>, Query(q): Query<HashMap<String, String>>) -> Response {
    let n: u32 = match q.get("blocks").map(|b| b.parse()) {
        None => 1,
        Some(Ok(n)) if n <= 10_000 => n,
        _ => {
            return (
                axum::http::StatusCode::BAD_REQUEST,
                "blocks must be an integer ≤ 10000",
            )
                .into_response();
        }
    };
    let height = d.advance(n);
    Json(json!({"height": height})).into_response()
}

/// `GET /devnet/settlements`: every settled or expired claim so far.
async fn settlements(State(d): State<Devnet>) -> Json<Value> {
    let c = d.chain();
    Json(Value::Array(
        c.settlements
            .iter()
            .map(|s| {
                json!({"height": s.height, "session_id": s.session_id, "supplier": s.supplier,
                    "application": s.application, "service_id": s.service_id, "num_relays": s.num_relays,
                    "compute_units": s.compute_units, "reward_upokt": s.reward.to_string(),
                    "slashed_upokt": s.slashed.to_string(), "outcome": s.outcome})
            })
            .collect(),
    ))
}

async fn websocket(State(d): State<Devnet>, ws: WebSocketUpgrade) -> Response {
    ws.on_upgrade(move |socket| serve_ws(d, socket))
}

/// A websocket subscription: new block headers, or transactions of one sender.
#[derive(Clone, Debug)]
enum Subscription {
    NewBlockHeader {
        id: Value,
        query: String,
    },
    Tx {
        id: Value,
        query: String,
        sender: Option<String>,
    },
}

fn parse_subscription(id: Value, query: &str) -> Result<Subscription, String> {
    let q = query.replace(' ', "");
    if q == "tm.event='NewBlockHeader'" {
        return Ok(Subscription::NewBlockHeader {
            id,
            query: query.into(),
        });
    }
    if let Some(rest) = q.strip_prefix("tm.event='Tx'") {
        let sender = match rest.strip_prefix("ANDmessage.sender='") {
            Some(s) => Some(
                s.strip_suffix('\'')
                    .ok_or("unterminated message.sender")?
                    .to_string(),
            ),
            None if rest.is_empty() => None,
            None => return Err(format!("unsupported query {query:?}")),
        };
        return Ok(Subscription::Tx {
            id,
            query: query.into(),
            sender,
        });
    }
    Err(format!(
        "unsupported query {query:?}: the devnet serves tm.event='NewBlockHeader' and tm.event='Tx' [AND message.sender='…']"
    ))
}

async fn serve_ws(d: Devnet, mut socket: WebSocket) {
    let mut blocks = d.events.subscribe();
    let mut subs: Vec<Subscription> = Vec::new();
    loop {
        tokio::select! {
            msg = socket.recv() => {
                let Some(Ok(msg)) = msg else { return };
                let Message::Text(text) = msg else { continue };
                let Ok(req) = serde_json::from_str::<Value>(&text) else { continue };
                let id = req.get("id").cloned().unwrap_or(json!(-1));
                let reply = match req["method"].as_str() {
                    Some("subscribe") => match parse_subscription(id.clone(), req["params"]["query"].as_str().unwrap_or_default()) {
                        Ok(s) => { subs.push(s); json!({"jsonrpc": "2.0", "id": id, "result": {}}) }
                        Err(e) => json!({"jsonrpc": "2.0", "id": id, "error": {"code": -32602, "message": "Invalid params", "data": e}}),
                    },
                    Some("unsubscribe_all") => { subs.clear(); json!({"jsonrpc": "2.0", "id": id, "result": {}}) }
                    _ => json!({"jsonrpc": "2.0", "id": id, "error": {"code": -32601, "message": "Method not found"}}),
                };
                if socket.send(Message::Text(reply.to_string().into())).await.is_err() { return; }
            }
            ev = blocks.recv() => {
                let height = match ev {
                    Ok(Some(h)) => h,
                    Ok(None) => { let _ = socket.send(Message::Close(None)).await; return; }
                    // A slow reader that missed heights: they are on /block.
                    Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => continue,
                    Err(_) => return,
                };
                let messages = events_for(&d, height, &subs);
                for m in messages {
                    if socket.send(Message::Text(m.to_string().into())).await.is_err() { return; }
                }
            }
        }
    }
}

fn events_for(d: &Devnet, height: i64, subs: &[Subscription]) -> Vec<Value> {
    let c = d.chain();
    let Some(b) = c.block(height) else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for s in subs {
        match s {
            Subscription::NewBlockHeader { id, query } => out.push(json!({"jsonrpc": "2.0", "id": id, "result": {
                "query": query,
                "data": {"type": "tendermint/event/NewBlockHeader", "value": {"header": {
                    "chain_id": c.genesis.chain_id, "height": height.to_string(), "time": rfc3339(b.time_unix_ms)}}},
                "events": {"tm.event": ["NewBlockHeader"]},
            }})),
            Subscription::Tx { id, query, sender } => {
                for hash in &b.txs {
                    let Some(t) = c.txs.get(hash) else { continue };
                    if sender.as_ref().is_some_and(|s| *s != t.signer) {
                        continue;
                    }
                    out.push(json!({"jsonrpc": "2.0", "id": id, "result": {
                        "query": query,
                        "data": {"type": "tendermint/event/Tx", "value": {"TxResult": {
                            "height": height.to_string(), "index": t.index, "tx": base64(&t.tx),
                            "result": tx_result_json(t)}}},
                        "events": {"tm.event": ["Tx"], "tx.hash": [hash], "tx.height": [height.to_string()],
                            "message.sender": [t.signer]},
                    }}));
                }
            }
        }
    }
    out
}

pub fn router(d: Devnet) -> Router {
    Router::new()
        .route("/", post(json_rpc))
        .route("/websocket", get(websocket))
        .route("/devnet/advance", post(advance))
        .route("/devnet/settlements", get(settlements))
        .route("/{method}", get(get_method))
        .with_state(d)
}

#[cfg(test)]
mod tests {
    #[test]
    fn rfc3339_of_known_instants() {
        assert_eq!(super::rfc3339(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(super::rfc3339(951_782_400_000), "2000-02-29T00:00:00.000Z");
        assert_eq!(
            super::rfc3339(1_795_597_845_123),
            "2026-11-25T09:10:45.123Z"
        );
    }

    #[test]
    fn subscriptions_parse_like_cometbft_queries() {
        use super::{Subscription, parse_subscription};
        let id = serde_json::json!(1);
        assert!(matches!(
            parse_subscription(id.clone(), "tm.event='NewBlockHeader'"),
            Ok(Subscription::NewBlockHeader { .. })
        ));
        match parse_subscription(id.clone(), "tm.event='Tx' AND message.sender='pokt1abc'") {
            Ok(Subscription::Tx { sender, .. }) => assert_eq!(sender.as_deref(), Some("pokt1abc")),
            other => panic!("unexpected {other:?}"),
        }
        assert!(parse_subscription(id, "tm.event='Vote'").is_err());
    }
}

//! A CometBFT-shaped node on loopback: a height tests advance, blocks whose hash comes
//! from the height, a websocket announcing new heights, and broadcast/tx endpoints.
#![allow(dead_code)]

use std::sync::Arc;
use std::sync::atomic::{AtomicI64, AtomicU32, Ordering};
use std::time::Duration;

use axum::Router;
use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};
use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Json, Response};
use axum::routing::get;
use lode_chain::RetryPolicy;
use serde_json::{Value, json};
use tokio::sync::broadcast;

/// A fake node: a height that tests advance, blocks whose hash is derived from the
/// height, and a websocket that announces new heights.
#[derive(Clone)]
pub struct Node {
    /// Broadcast transactions by hash, with the height that includes them.
    pub txs: Arc<std::sync::Mutex<std::collections::HashMap<String, i64>>>,
    /// The bytes of every transaction accepted, in order.
    pub raw: Arc<std::sync::Mutex<Vec<Vec<u8>>>>,
    pub height: Arc<AtomicI64>,
    pub fail_next: Arc<AtomicU32>,
    pub events: broadcast::Sender<Option<i64>>,
}

pub fn hash_of(h: i64) -> String {
    format!("{:064X}", h as u128 * 0x1_0000_0001)
}

pub async fn status(State(n): State<Node>) -> Response {
    if n.fail_next.load(Ordering::SeqCst) > 0 {
        n.fail_next.fetch_sub(1, Ordering::SeqCst);
        return (StatusCode::SERVICE_UNAVAILABLE, "overloaded").into_response();
    }
    let h = n.height.load(Ordering::SeqCst);
    Json(json!({"jsonrpc": "2.0", "id": -1, "result": {
        "node_info": {"network": "pocket-test"},
        "sync_info": {"latest_block_hash": hash_of(h), "latest_block_height": h.to_string(), "catching_up": false}
    }}))
    .into_response()
}

pub async fn block(
    State(n): State<Node>,
    Query(q): Query<std::collections::HashMap<String, String>>,
) -> Json<Value> {
    let want: i64 = q.get("height").and_then(|h| h.parse().ok()).unwrap_or(0);
    let h = n.height.load(Ordering::SeqCst);
    if want > h {
        return Json(
            json!({"jsonrpc": "2.0", "id": -1, "error": {"code": -32603, "message": "Internal error",
            "data": format!("height {want} must be less than or equal to the current blockchain height {h}")}}),
        );
    }
    Json(json!({"jsonrpc": "2.0", "id": -1, "result": {
        "block_id": {"hash": hash_of(want)},
        "block": {"header": {"chain_id": "pocket-test", "height": want.to_string(), "time": "2026-11-25T00:00:00Z"}}
    }}))
}

/// JSON-RPC over POST: `broadcast_tx_sync` only. Transactions starting with 0xff fail
/// CheckTx; others are included in the next block.
pub async fn json_rpc(State(n): State<Node>, Json(req): Json<Value>) -> Json<Value> {
    use sha2::Digest;
    assert_eq!(req["method"], "broadcast_tx_sync");
    let tx =
        lode_chain::comet::unbase64(req["params"]["tx"].as_str().expect("tx")).expect("base64");
    let hash: String = sha2::Sha256::digest(&tx)
        .iter()
        .map(|b| format!("{b:02X}"))
        .collect();
    if tx.first() == Some(&0xff) {
        return Json(
            json!({"jsonrpc": "2.0", "id": 1, "result": {"code": 13, "codespace": "sdk", "log": "insufficient fee", "hash": hash}}),
        );
    }
    n.txs
        .lock()
        .expect("txs")
        .insert(hash.clone(), n.height.load(Ordering::SeqCst) + 1);
    n.raw.lock().expect("raw").push(tx);
    Json(
        json!({"jsonrpc": "2.0", "id": 1, "result": {"code": 0, "codespace": "", "log": "[]", "hash": hash}}),
    )
}

pub async fn tx(
    State(n): State<Node>,
    Query(q): Query<std::collections::HashMap<String, String>>,
) -> Json<Value> {
    let hash = q
        .get("hash")
        .map(|h| h.trim_start_matches("0x").to_uppercase())
        .unwrap_or_default();
    let included = n
        .txs
        .lock()
        .expect("txs")
        .get(&hash)
        .copied()
        .filter(|h| *h <= n.height.load(Ordering::SeqCst));
    match included {
        Some(h) => Json(
            json!({"jsonrpc": "2.0", "id": -1, "result": {"hash": hash, "height": h.to_string(), "tx_result": {"code": 0, "log": "ok"}}}),
        ),
        None => Json(
            json!({"jsonrpc": "2.0", "id": -1, "error": {"code": -32603, "message": "Internal error", "data": format!("tx ({hash}) not found")}}),
        ),
    }
}

pub async fn abci_info() -> Json<Value> {
    Json(
        json!({"jsonrpc": "2.0", "id": -1, "result": {"response": {"data": "pocket", "version": "v0.1.35", "app_version": "1"}}}),
    )
}

pub async fn slow() -> Json<Value> {
    tokio::time::sleep(Duration::from_secs(5)).await;
    Json(json!({}))
}

pub async fn websocket(State(n): State<Node>, ws: WebSocketUpgrade) -> Response {
    ws.on_upgrade(move |socket| serve_ws(n, socket))
}

pub async fn serve_ws(n: Node, mut socket: WebSocket) {
    let mut events = n.events.subscribe();
    // The subscribe request, then its acknowledgement.
    let _ = socket.recv().await;
    let _ = socket
        .send(Message::Text(
            json!({"jsonrpc": "2.0", "id": 1, "result": {}})
                .to_string()
                .into(),
        ))
        .await;
    while let Ok(ev) = events.recv().await {
        let Some(h) = ev else {
            let _ = socket.send(Message::Close(None)).await;
            return;
        };
        let msg = json!({"jsonrpc": "2.0", "id": 1, "result": {"query": "tm.event='NewBlockHeader'",
            "data": {"type": "tendermint/event/NewBlockHeader", "value": {"header": {"height": h.to_string()}}}}});
        if socket
            .send(Message::Text(msg.to_string().into()))
            .await
            .is_err()
        {
            return;
        }
    }
}

pub async fn start() -> (Node, String) {
    let (events, _) = broadcast::channel(64);
    let node = Node {
        txs: Default::default(),
        raw: Default::default(),
        height: Arc::new(AtomicI64::new(3)),
        fail_next: Arc::new(AtomicU32::new(0)),
        events,
    };
    let app = Router::new()
        .route("/status", get(status))
        .route("/block", get(block))
        .route("/abci_info", get(abci_info))
        .route("/slow", get(slow))
        .route("/websocket", get(websocket))
        .route("/", axum::routing::post(json_rpc))
        .route("/tx", get(tx))
        .with_state(node.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let url = format!("http://{}", listener.local_addr().expect("addr"));
    tokio::spawn(async move { axum::serve(listener, app).await });
    (node, url)
}

pub fn quick() -> RetryPolicy {
    RetryPolicy {
        attempts: 3,
        first_backoff: Duration::from_millis(10),
        max_backoff: Duration::from_millis(40),
        timeout: Duration::from_millis(500),
    }
}

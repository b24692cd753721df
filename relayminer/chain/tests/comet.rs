//! The CometBFT client against a small CometBFT-shaped server on loopback.

use std::sync::Arc;
use std::sync::atomic::{AtomicI64, AtomicU32, Ordering};
use std::time::Duration;

use axum::Router;
use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};
use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Json, Response};
use axum::routing::get;
use lode_chain::{CometRpc, RetryPolicy, RpcError};
use serde_json::{Value, json};
use tokio::sync::broadcast;

/// A fake node: a height that tests advance, blocks whose hash is derived from the
/// height, and a websocket that announces new heights.
#[derive(Clone)]
struct Node {
    /// Broadcast transactions by hash, with the height that includes them.
    txs: Arc<std::sync::Mutex<std::collections::HashMap<String, i64>>>,
    height: Arc<AtomicI64>,
    fail_next: Arc<AtomicU32>,
    events: broadcast::Sender<Option<i64>>,
}

fn hash_of(h: i64) -> String {
    format!("{:064X}", h as u128 * 0x1_0000_0001)
}

async fn status(State(n): State<Node>) -> Response {
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

async fn block(
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

fn unbase64(s: &str) -> Vec<u8> {
    let val = |c: u8| match c {
        b'A'..=b'Z' => c - b'A',
        b'a'..=b'z' => c - b'a' + 26,
        b'0'..=b'9' => c - b'0' + 52,
        b'+' => 62,
        _ => 63,
    };
    let bytes: Vec<u8> = s.bytes().filter(|&c| c != b'=').collect();
    let mut out = Vec::new();
    for chunk in bytes.chunks(4) {
        let n = chunk
            .iter()
            .enumerate()
            .fold(0u32, |n, (i, &c)| n | (val(c) as u32) << (18 - 6 * i));
        out.extend_from_slice(&n.to_be_bytes()[1..chunk.len()]);
    }
    out
}

/// JSON-RPC over POST: `broadcast_tx_sync` only. Transactions starting with 0xff fail
/// CheckTx; others are included in the next block.
async fn json_rpc(State(n): State<Node>, Json(req): Json<Value>) -> Json<Value> {
    use sha2::Digest;
    assert_eq!(req["method"], "broadcast_tx_sync");
    let tx = unbase64(req["params"]["tx"].as_str().expect("tx"));
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
    Json(
        json!({"jsonrpc": "2.0", "id": 1, "result": {"code": 0, "codespace": "", "log": "[]", "hash": hash}}),
    )
}

async fn tx(
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

async fn abci_info() -> Json<Value> {
    Json(
        json!({"jsonrpc": "2.0", "id": -1, "result": {"response": {"data": "pocket", "version": "v0.1.35", "app_version": "1"}}}),
    )
}

async fn slow() -> Json<Value> {
    tokio::time::sleep(Duration::from_secs(5)).await;
    Json(json!({}))
}

async fn websocket(State(n): State<Node>, ws: WebSocketUpgrade) -> Response {
    ws.on_upgrade(move |socket| serve_ws(n, socket))
}

async fn serve_ws(n: Node, mut socket: WebSocket) {
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

async fn start() -> (Node, String) {
    let (events, _) = broadcast::channel(64);
    let node = Node {
        txs: Default::default(),
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

fn quick() -> RetryPolicy {
    RetryPolicy {
        attempts: 3,
        first_backoff: Duration::from_millis(10),
        max_backoff: Duration::from_millis(40),
        timeout: Duration::from_millis(500),
    }
}

#[tokio::test]
async fn status_blocks_and_errors() {
    let (node, url) = start().await;
    let rpc = CometRpc::new(&url, quick());
    let s = rpc.status().await.expect("status");
    assert_eq!(
        (s.chain_id.as_str(), s.latest_height, s.catching_up),
        ("pocket-test", 3, false)
    );
    assert_eq!(s.latest_hash.len(), 32);
    let b = rpc.block(2).await.expect("block 2");
    assert_eq!((b.height, b.chain_id.as_str()), (2, "pocket-test"));
    assert_eq!(b.hash, rpc.block(2).await.expect("again").hash);
    assert_ne!(b.hash, rpc.block(3).await.expect("block 3").hash);
    assert_eq!(
        rpc.abci_info().await.expect("abci_info"),
        ("v0.1.35".to_string(), 1)
    );

    // A height the node does not have yet is an RPC error carrying the node's words.
    match rpc.block(9).await {
        Err(RpcError::Rpc { code, data, .. }) => {
            assert_eq!(code, -32603);
            assert!(data.contains("current blockchain height 3"), "{data}");
        }
        other => panic!("expected an RPC error, got {other:?}"),
    }

    // Transient failures are retried: two 503s, then an answer.
    node.fail_next.store(2, Ordering::SeqCst);
    assert_eq!(
        rpc.status()
            .await
            .expect("third attempt succeeds")
            .latest_height,
        3
    );
    // More failures than attempts: a clear HTTP error, not a hang.
    node.fail_next.store(10, Ordering::SeqCst);
    assert!(matches!(
        rpc.status().await,
        Err(RpcError::Http { status: 503, .. })
    ));
    node.fail_next.store(0, Ordering::SeqCst);

    // A slow node times out.
    let slow = CometRpc::new(
        &format!("{url}/slow?"),
        RetryPolicy {
            attempts: 1,
            ..quick()
        },
    );
    assert!(matches!(slow.status().await, Err(RpcError::Timeout { .. })));
}

#[tokio::test]
async fn a_node_that_is_down_is_a_clear_error() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr");
    let rpc = CometRpc::new(&format!("http://{port}"), quick());
    let e = rpc.status().await.expect_err("nothing listens");
    assert!(matches!(e, RpcError::Unreachable { .. }), "{e}");
    assert!(e.to_string().contains("unreachable"), "{e}");
}

#[tokio::test]
async fn following_blocks_in_order_across_gaps_and_reconnects() {
    let (node, url) = start().await;
    let rpc = CometRpc::new(&url, quick());
    let mut blocks = rpc.follow(1, 16);
    // Heights 1..=3 already exist: replayed from /block.
    for h in 1..=3 {
        next(&mut blocks, h).await;
    }
    // The node commits 4, 5, 6 but only announces 6: the gap is filled, in order.
    tokio::time::sleep(Duration::from_millis(100)).await;
    node.height.store(6, Ordering::SeqCst);
    let _ = node.events.send(Some(6));
    for h in 4..=6 {
        next(&mut blocks, h).await;
    }
    // The node drops the websocket; blocks committed meanwhile still arrive.
    let _ = node.events.send(None);
    node.height.store(8, Ordering::SeqCst);
    for h in 7..=8 {
        next(&mut blocks, h).await;
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    node.height.store(9, Ordering::SeqCst);
    let _ = node.events.send(Some(9));
    next(&mut blocks, 9).await;
}

/// The next followed block, which must be `expected`.
async fn next(
    rx: &mut tokio::sync::mpsc::Receiver<Result<lode_chain::Block, RpcError>>,
    expected: i64,
) {
    let b = tokio::time::timeout(Duration::from_secs(5), rx.recv())
        .await
        .expect("a block in time")
        .expect("open")
        .expect("ok");
    assert_eq!(b.height, expected);
}

#[tokio::test]
async fn broadcast_and_inclusion() {
    let (node, url) = start().await;
    let rpc = CometRpc::new(&url, quick());
    let tx = b"a signed transaction".to_vec();
    let r = rpc.broadcast_tx_sync(&tx).await.expect("broadcast");
    assert_eq!(r.code, 0);
    {
        use sha2::Digest;
        let want: String = sha2::Sha256::digest(&tx)
            .iter()
            .map(|b| format!("{b:02X}"))
            .collect();
        assert_eq!(
            r.hash, want,
            "the node hashed exactly our bytes (base64 round trip)"
        );
    }
    assert_eq!(
        rpc.tx(&r.hash).await.expect("query"),
        None,
        "not in a block yet"
    );
    // Included once the next block is committed.
    let waiter = {
        let rpc = rpc.clone();
        let hash = r.hash.clone();
        tokio::spawn(async move {
            rpc.wait_for_inclusion(&hash, 10, Duration::from_millis(20))
                .await
        })
    };
    tokio::time::sleep(Duration::from_millis(60)).await;
    node.height.store(4, Ordering::SeqCst);
    let included = waiter.await.expect("join").expect("included");
    assert_eq!((included.height, included.code), (4, 0));

    // CheckTx refusals come back with their code and log.
    let refused = rpc
        .broadcast_tx_sync(&[0xff, 1, 2])
        .await
        .expect("answered");
    assert_eq!(
        (refused.code, refused.log.as_str()),
        (13, "insufficient fee")
    );
    // A transaction never included past its timeout height is reported as such.
    node.height.store(12, Ordering::SeqCst);
    match rpc
        .wait_for_inclusion(&refused.hash, 10, Duration::from_millis(10))
        .await
    {
        Err(RpcError::NotIncluded {
            timeout_height: 10,
            height: 12,
            ..
        }) => {}
        other => panic!("expected NotIncluded, got {other:?}"),
    }
}

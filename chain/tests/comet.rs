//! The CometBFT client against a small CometBFT-shaped server on loopback.

mod common;

use std::sync::atomic::Ordering;
use std::time::Duration;

use common::comet_node::{quick, start};
use lode_chain::{CometRpc, RetryPolicy, RpcError};

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

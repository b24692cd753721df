//! Sending a claim transaction end to end against the loopback nodes: account, gas by
//! simulation, fee, signature, broadcast, inclusion.

#[path = "../../tests/common/mod.rs"]
mod common;

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use common::{comet_node, grpc_node};
use lode_chain::{ChainGrpc, CometRpc, RpcError};
use lode_chain_tx::{SendConfig, SendError, TxSender, broadcast_tx_sync};
use lode_kernels::crypto::SecretKey;
use lode_kernels::proto::cosmos::{self, Any};
use lode_kernels::proto::{Message, MsgCreateClaim, SessionHeader};

#[tokio::test]
async fn a_claim_goes_from_signing_to_a_block() {
    let (comet, comet_url) = comet_node::start().await;
    let grpc_url = grpc_node::start(Arc::new(grpc_node::Node::default())).await;
    let key = SecretKey::from_secret(b"supplier operator");
    let config = SendConfig {
        poll: Duration::from_millis(20),
        ..SendConfig::pocket("pocket-test")
    };
    let sender = TxSender::new(
        CometRpc::new(&comet_url, comet_node::quick()),
        ChainGrpc::new(&grpc_url, grpc_node::quick()).expect("client"),
        key.clone(),
        config,
    );
    let claim = MsgCreateClaim {
        supplier_operator_address: sender.address().to_string(),
        session_header: Some(SessionHeader {
            session_id: "s".into(),
            ..Default::default()
        }),
        root_hash: vec![1; 48],
    };
    let messages = vec![Any::pack(cosmos::MSG_CREATE_CLAIM_TYPE_URL, &claim)];

    // Blocks keep coming (up to height 9); the node includes the transaction in the
    // block after its broadcast.
    let advance = {
        let comet = comet.clone();
        tokio::spawn(async move {
            for h in 4..=9 {
                tokio::time::sleep(Duration::from_millis(60)).await;
                comet.height.store(h, Ordering::SeqCst);
            }
        })
    };
    let sent = sender
        .send(messages.clone(), "lode", 10)
        .await
        .expect("included");
    advance.await.expect("join");
    assert!((4..=9).contains(&sent.height), "{}", sent.height);
    assert!(
        comet.txs.lock().expect("txs").contains_key(&sent.hash),
        "the node holds exactly our transaction"
    );
    // Gas: the simulated amount (50,000 + 10/byte on this node) × 1.5, rounded up; fee at
    // 0.0001 per gas, rounded up.
    assert!(
        sent.gas_limit > 75_000 && sent.gas_limit < 90_000,
        "{}",
        sent.gas_limit
    );
    assert_eq!(sent.fee, (sent.gas_limit as f64 * 0.0001).ceil() as u128);

    // Past its timeout height without inclusion, the send fails with the reason.
    comet.height.store(20, Ordering::SeqCst);
    let late = SessionHeader {
        session_id: "late".into(),
        ..Default::default()
    };
    let claim = MsgCreateClaim {
        session_header: Some(late),
        ..claim
    };
    let e = sender
        .send(
            vec![Any::pack(cosmos::MSG_CREATE_CLAIM_TYPE_URL, &claim)],
            "",
            10,
        )
        .await
        .expect_err("too late");
    assert!(
        matches!(e, SendError::Rpc(RpcError::NotIncluded { .. })),
        "{e}"
    );
}

/// Issue 23 §7: the fee was simulated gas × price with no cap, so a node lying in
/// simulation made the key sign away its balance. Now a fee above the cap is refused
/// before anything is signed or broadcast; and a transaction sent without a timeout
/// height gets one.
#[tokio::test]
async fn a_fee_above_the_cap_is_never_signed_and_every_transaction_times_out() {
    let (comet, comet_url) = comet_node::start().await;
    let node = Arc::new(grpc_node::Node::default());
    let grpc_url = grpc_node::start(node.clone()).await;
    let sender = TxSender::new(
        CometRpc::new(&comet_url, comet_node::quick()),
        ChainGrpc::new(&grpc_url, grpc_node::quick()).expect("client"),
        SecretKey::from_secret(b"supplier operator"),
        SendConfig {
            poll: Duration::from_millis(20),
            ..SendConfig::pocket("pocket-test")
        },
    );
    let claim = |id: &str| {
        let claim = MsgCreateClaim {
            supplier_operator_address: sender.address().to_string(),
            session_header: Some(SessionHeader {
                session_id: id.into(),
                ..Default::default()
            }),
            root_hash: vec![1; 48],
        };
        vec![Any::pack(cosmos::MSG_CREATE_CLAIM_TYPE_URL, &claim)]
    };
    // 10^13 gas at 0.0001 uPOKT: a fee of 1.5 billion uPOKT asked.
    node.lying_gas.store(10_000_000_000_000, Ordering::SeqCst);
    let e = sender
        .send(claim("lie"), "", 10)
        .await
        .expect_err("refused");
    match &e {
        SendError::FeeAboveCap { fee, cap, .. } => {
            assert_eq!(*cap, lode_chain_tx::DEFAULT_MAX_FEE_UPOKT);
            assert!(*fee > 1_000_000_000, "{fee}");
        }
        other => panic!("{other}"),
    }
    assert!(e.to_string().contains("--max-fee-upokt"), "{e}");
    assert!(
        comet.txs.lock().expect("txs").is_empty(),
        "nothing broadcast"
    );

    // An honest simulation, sent with no timeout height: it gets the latest height +
    // DEFAULT_TIMEOUT_BLOCKS, so it cannot sit in a mempool forever.
    node.lying_gas.store(0, Ordering::SeqCst);
    let advance = {
        let comet = comet.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(100)).await;
            comet.height.fetch_add(1, Ordering::SeqCst);
        })
    };
    let sent = sender.send(claim("honest"), "", 0).await.expect("included");
    advance.await.expect("join");
    assert!(comet.txs.lock().expect("txs").contains_key(&sent.hash));
    let bytes = comet
        .raw
        .lock()
        .expect("raw")
        .last()
        .cloned()
        .expect("ours");
    let raw = cosmos::TxRaw::decode(&bytes).expect("a tx");
    let body = cosmos::TxBody::decode(&raw.body_bytes).expect("a body");
    // The node was at height 3 when it was sent.
    assert_eq!(
        body.timeout_height,
        3 + lode_chain_tx::send::DEFAULT_TIMEOUT_BLOCKS as u64
    );
}

#[tokio::test]
async fn broadcast_and_inclusion() {
    let (node, url) = comet_node::start().await;
    let rpc = CometRpc::new(&url, comet_node::quick());
    let tx = b"a signed transaction".to_vec();
    let r = broadcast_tx_sync(&rpc, &tx).await.expect("broadcast");
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
    let refused = broadcast_tx_sync(&rpc, &[0xff, 1, 2])
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

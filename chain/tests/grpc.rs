//! The Cosmos query client against a gRPC server on loopback that implements the same
//! services.

mod common;

use std::sync::Arc;
use std::sync::atomic::Ordering;

use common::grpc_node::{Node, quick, start};
use lode_chain::Account;
use lode_chain::grpc::{ChainGrpc, QueryError};

#[tokio::test]
async fn accounts_and_balances() {
    let node = Arc::new(Node::default());
    let client = ChainGrpc::new(&start(node.clone()).await, quick()).expect("client");
    assert_eq!(
        client.account("pokt1supplier").await.expect("account"),
        Account {
            account_number: 42,
            sequence: 7,
            public_key: None,
        }
    );
    assert!(
        matches!(client.account("pokt1nobody").await, Err(QueryError::AccountNotFound(a)) if a == "pokt1nobody")
    );
    let e = client
        .account("pokt1module")
        .await
        .expect_err("not a base account");
    assert!(e.to_string().contains("unsupported account type"), "{e}");
    assert_eq!(
        client
            .balance("pokt1supplier", "upokt")
            .await
            .expect("balance"),
        123_456_789_012_345_678_901_234
    );
    assert_eq!(
        client
            .balance("pokt1nobody", "upokt")
            .await
            .expect("balance"),
        0
    );

    // Simulation: the gas used, then the adjusted limit to sign with.
    let used = client.simulate(&[7; 300]).await.expect("simulate");
    assert_eq!(used, 53_000);
    assert_eq!(lode_chain::grpc::gas_limit(used, 1.5), 79_500);
    let e = client.simulate(&[]).await.expect_err("invalid");
    assert!(
        matches!(&e, QueryError::Status { status, .. } if status.code() == tonic::Code::InvalidArgument),
        "{e}"
    );

    // A node that answers UNAVAILABLE twice is retried; more than the attempts is an error.
    node.unavailable_first.store(2, Ordering::SeqCst);
    assert_eq!(
        client
            .account("pokt1supplier")
            .await
            .expect("third try")
            .sequence,
        7
    );
    node.unavailable_first.store(5, Ordering::SeqCst);
    assert!(matches!(
        client.account("pokt1supplier").await,
        Err(QueryError::Status { .. })
    ));
}

#[tokio::test]
async fn a_node_that_is_down_is_a_clear_error() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr");
    let client = ChainGrpc::new(&format!("http://{port}"), quick()).expect("client");
    let e = client
        .account("pokt1supplier")
        .await
        .expect_err("nothing listens");
    assert!(
        matches!(e, QueryError::Status { .. } | QueryError::Timeout { .. }),
        "{e}"
    );
}

//! The Cosmos query client against a gRPC server on loopback that implements the same
//! services.

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use lode_chain::grpc::proto::{auth, bank, tx};
use lode_chain::grpc::{BASE_ACCOUNT_TYPE_URL, ChainGrpc, QueryError};
use lode_chain::{Account, RetryPolicy};
use prost::Message as _;
use tonic::{Request, Response, Status};

#[derive(Default)]
struct Node {
    unavailable_first: AtomicU32,
}

/// The node as a service (a local type, so the generated traits can be implemented).
#[derive(Clone)]
struct Svc(Arc<Node>);

#[tonic::async_trait]
impl auth::query_server::Query for Svc {
    async fn account(
        &self,
        req: Request<auth::QueryAccountRequest>,
    ) -> Result<Response<auth::QueryAccountResponse>, Status> {
        if self.0.unavailable_first.load(Ordering::SeqCst) > 0 {
            self.0.unavailable_first.fetch_sub(1, Ordering::SeqCst);
            return Err(Status::unavailable("node is starting"));
        }
        let address = req.into_inner().address;
        let account = match address.as_str() {
            "pokt1supplier" => prost_types::Any {
                type_url: BASE_ACCOUNT_TYPE_URL.into(),
                value: auth::BaseAccount {
                    address,
                    pub_key: None,
                    account_number: 42,
                    sequence: 7,
                }
                .encode_to_vec(),
            },
            "pokt1module" => prost_types::Any {
                type_url: "/cosmos.auth.v1beta1.ModuleAccount".into(),
                value: vec![],
            },
            _ => return Err(Status::not_found(format!("account {address} not found"))),
        };
        Ok(Response::new(auth::QueryAccountResponse {
            account: Some(account),
        }))
    }
}

#[tonic::async_trait]
impl bank::query_server::Query for Svc {
    async fn balance(
        &self,
        req: Request<bank::QueryBalanceRequest>,
    ) -> Result<Response<bank::QueryBalanceResponse>, Status> {
        let r = req.into_inner();
        let amount = if r.address == "pokt1supplier" && r.denom == "upokt" {
            "123456789012345678901234"
        } else {
            ""
        };
        Ok(Response::new(bank::QueryBalanceResponse {
            balance: Some(bank::Coin {
                denom: r.denom,
                amount: amount.into(),
            }),
        }))
    }
}

#[tonic::async_trait]
impl tx::service_server::Service for Svc {
    async fn simulate(
        &self,
        req: Request<tx::SimulateRequest>,
    ) -> Result<Response<tx::SimulateResponse>, Status> {
        let bytes = req.into_inner().tx_bytes;
        if bytes.is_empty() {
            return Err(Status::invalid_argument("empty tx"));
        }
        // Gas proportional to the size, as a real node's would roughly be.
        let used = 50_000 + 10 * bytes.len() as u64;
        Ok(Response::new(tx::SimulateResponse {
            gas_info: Some(tx::GasInfo {
                gas_wanted: 0,
                gas_used: used,
            }),
        }))
    }
}

async fn start(node: Arc<Node>) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let url = format!("http://{}", listener.local_addr().expect("addr"));
    tokio::spawn(async move {
        tonic::transport::Server::builder()
            .add_service(auth::query_server::QueryServer::new(Svc(node.clone())))
            .add_service(bank::query_server::QueryServer::new(Svc(node.clone())))
            .add_service(tx::service_server::ServiceServer::new(Svc(node)))
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener))
            .await
    });
    url
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
async fn accounts_and_balances() {
    let node = Arc::new(Node::default());
    let client = ChainGrpc::new(&start(node.clone()).await, quick()).expect("client");
    assert_eq!(
        client.account("pokt1supplier").await.expect("account"),
        Account {
            account_number: 42,
            sequence: 7
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

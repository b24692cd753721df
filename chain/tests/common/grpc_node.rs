//! A Cosmos gRPC node on loopback: accounts, balances and simulation.
#![allow(dead_code)]

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use lode_chain::RetryPolicy;
use lode_chain::grpc::BASE_ACCOUNT_TYPE_URL;
use lode_chain::grpc::proto::{auth, bank, tx};
use prost::Message as _;
use tonic::{Request, Response, Status};

#[derive(Default)]
pub struct Node {
    pub unavailable_first: AtomicU32,
    /// When set, the gas every simulation reports (a node that lies).
    pub lying_gas: std::sync::atomic::AtomicU64,
}

/// The node as a service (a local type, so the generated traits can be implemented).
#[derive(Clone)]
pub struct Svc(pub Arc<Node>);

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
        // Every account exists (number 42, sequence 7) but these two.
        let account = match address.as_str() {
            "pokt1nobody" => return Err(Status::not_found(format!("account {address} not found"))),
            "pokt1module" => prost_types::Any {
                type_url: "/cosmos.auth.v1beta1.ModuleAccount".into(),
                value: vec![],
            },
            _ => prost_types::Any {
                type_url: BASE_ACCOUNT_TYPE_URL.into(),
                value: auth::BaseAccount {
                    address,
                    pub_key: None,
                    account_number: 42,
                    sequence: 7,
                }
                .encode_to_vec(),
            },
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
            balance: Some(lode_chain::grpc::proto::base::Coin {
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
        let used = match self.0.lying_gas.load(Ordering::SeqCst) {
            0 => 50_000 + 10 * bytes.len() as u64,
            lie => lie,
        };
        Ok(Response::new(tx::SimulateResponse {
            gas_info: Some(tx::GasInfo {
                gas_wanted: 0,
                gas_used: used,
            }),
        }))
    }
}

pub async fn start(node: Arc<Node>) -> String {
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

pub fn quick() -> RetryPolicy {
    RetryPolicy {
        attempts: 3,
        first_backoff: Duration::from_millis(10),
        max_backoff: Duration::from_millis(40),
        timeout: Duration::from_millis(500),
    }
}

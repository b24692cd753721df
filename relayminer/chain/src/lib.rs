//! The client side of a POKT node: CometBFT RPC block tracking and transaction
//! broadcast/inclusion ([`comet`]), the Cosmos account, balance and simulation queries
//! ([`grpc`]), poktroll's queries ([`pocket`]), and sending signed transactions through
//! to inclusion ([`tx`]). The transaction encoding itself is in
//! `lode_kernels::proto::cosmos`.

pub mod comet;
pub mod grpc;
pub mod keys;
pub mod pocket;
pub mod stake;
pub mod tx;

pub use comet::{Block, BroadcastResult, CometRpc, RetryPolicy, RpcError, Status, TxResult};
pub use grpc::{Account, ChainGrpc, QueryError};
pub use pocket::{ChainParams, PocketQuery, ProofModuleParams};
pub use tx::{SendConfig, SendError, Sent, TxSender};

/// Where a node is, as lode's configuration files name it.
#[derive(Clone, Debug, PartialEq, Eq, serde::Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct NodeConfig {
    /// Cosmos/poktroll gRPC, e.g. `http://node:9090`.
    pub grpc_url: String,
    /// CometBFT RPC, e.g. `http://node:26657`.
    pub rpc_url: String,
}

/// Messages, clients and servers generated from `proto/` (one module per protobuf
/// package, as the generated code's cross-package paths expect).
#[allow(clippy::all, missing_debug_implementations, unused_qualifications)]
pub mod proto {
    pub mod cosmos {
        pub mod auth {
            pub mod v1beta1 {
                tonic::include_proto!("cosmos.auth.v1beta1");
            }
        }
        pub mod bank {
            pub mod v1beta1 {
                tonic::include_proto!("cosmos.bank.v1beta1");
            }
        }
        pub mod base {
            pub mod v1beta1 {
                tonic::include_proto!("cosmos.base.v1beta1");
            }
        }
        pub mod tx {
            pub mod v1beta1 {
                tonic::include_proto!("cosmos.tx.v1beta1");
            }
        }
    }
    pub mod pocket {
        pub mod application {
            tonic::include_proto!("pocket.application");
        }
        pub mod proof {
            tonic::include_proto!("pocket.proof");
        }
        pub mod service {
            tonic::include_proto!("pocket.service");
        }
        pub mod session {
            tonic::include_proto!("pocket.session");
        }
        pub mod shared {
            tonic::include_proto!("pocket.shared");
        }
        pub mod supplier {
            tonic::include_proto!("pocket.supplier");
        }
    }
}

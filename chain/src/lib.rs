//! The read-only client of a POKT node: CometBFT RPC block tracking and transaction
//! inclusion ([`comet`]), the Cosmos account, balance and simulation queries ([`grpc`]),
//! poktroll's queries ([`pocket`]) and whether the chain already has a wanted stake
//! ([`stake`]). Nothing here holds a key or signs: sending transactions is
//! `lode_chain_tx`, which the operator does not link.

pub mod comet;
pub mod grpc;
pub mod pocket;
pub mod stake;

pub use comet::{Block, CometRpc, RetryPolicy, RpcError, Status, TxResult};
pub use grpc::{Account, ChainGrpc, QueryError};
pub use pocket::{ChainParams, PocketQuery, ProofModuleParams};

/// Where a node is, as lode's configuration files name it.
pub use lode_contracts::NodeConfig;

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

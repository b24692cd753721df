//! The client side of a POKT node.
//!
//! Today: CometBFT RPC block tracking and transaction broadcast/inclusion ([`comet`]),
//! and the Cosmos account and balance queries ([`grpc`]). The poktroll gRPC queries and
//! transaction broadcasting join it (issue "chain"); the transaction encoding itself is in
//! `lode_kernels::proto::cosmos`.

pub mod comet;
pub mod grpc;
pub mod keys;

pub use comet::{Block, BroadcastResult, CometRpc, RetryPolicy, RpcError, Status, TxResult};
pub use grpc::{Account, ChainGrpc, QueryError};

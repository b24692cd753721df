//! The client side of a POKT node.
//!
//! Today: CometBFT RPC block tracking and transaction broadcast/inclusion ([`comet`]),
//! the Cosmos account, balance and simulation queries ([`grpc`]), and sending signed
//! transactions through to inclusion ([`tx`]). The poktroll gRPC queries and
//! transaction broadcasting join it (issue "chain"); the transaction encoding itself is in
//! `lode_kernels::proto::cosmos`.

pub mod comet;
pub mod grpc;
pub mod keys;
pub mod tx;

pub use comet::{Block, BroadcastResult, CometRpc, RetryPolicy, RpcError, Status, TxResult};
pub use grpc::{Account, ChainGrpc, QueryError};
pub use tx::{SendConfig, SendError, Sent, TxSender};

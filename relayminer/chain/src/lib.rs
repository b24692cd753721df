//! The client side of a POKT node.
//!
//! Today: CometBFT RPC block tracking and transaction broadcast/inclusion ([`comet`]). The poktroll gRPC queries and
//! transaction broadcasting join it (issue "chain"); the transaction encoding itself is in
//! `lode_kernels::proto::cosmos`.

pub mod comet;
pub mod keys;

pub use comet::{Block, BroadcastResult, CometRpc, RetryPolicy, RpcError, Status, TxResult};

//! Where a POKT node is.

use serde::{Deserialize, Serialize};

/// A node's two endpoints, as lode's configuration files name them.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct NodeConfig {
    /// Cosmos/poktroll gRPC, e.g. `http://node:9090`.
    pub grpc_url: String,
    /// CometBFT RPC, e.g. `http://node:26657`.
    pub rpc_url: String,
}

//! Sending a transaction the way a supplier's jobs need it: read the account, simulate
//! for gas, sign with the adjusted gas limit and its fee, broadcast, and wait for
//! inclusion before the timeout height.

use std::time::Duration;

use lode_kernels::crypto::SecretKey;
use lode_kernels::proto::Message;
use lode_kernels::proto::cosmos::{self, Any, Coin, TxParams};

use lode_chain::comet::{CometRpc, RpcError, TxResult, base64};
use lode_chain::grpc::{ChainGrpc, QueryError, gas_limit};

/// Blocks without inclusion after which the identical bytes are broadcast again (a node
/// that restarted or evicted its mempool has forgotten them).
pub const REBROADCAST_AFTER_BLOCKS: i64 = 3;
/// At most this many re-broadcasts per transaction (poktroll's relayminer does 2).
pub const MAX_REBROADCASTS: u32 = 2;

/// The timeout height [`TxSender::send`] gives a transaction sent without one: this many
/// blocks after the chain's latest (no transaction stays valid forever).
pub const DEFAULT_TIMEOUT_BLOCKS: i64 = 20;

/// The largest fee a transaction may carry unless configured otherwise: 1 POKT. A claim
/// or proof costs a few hundred uPOKT at poktroll's gas price; the cap stops a node that
/// lies in simulation from making the key sign away its balance.
pub const DEFAULT_MAX_FEE_UPOKT: u128 = 1_000_000;

/// What every transaction of one signer shares.
#[derive(Clone, Debug)]
pub struct SendConfig {
    pub chain_id: String,
    /// Multiplies the simulated gas (`--gas-adjustment`).
    pub gas_adjustment: f64,
    /// Fee per unit of gas, in `fee_denom` (`--gas-prices`).
    pub gas_price: f64,
    pub fee_denom: String,
    /// The largest fee signed, in `fee_denom` (`--max-fee-upokt`): above it the
    /// transaction is refused before it is signed.
    pub max_fee: u128,
    /// How often inclusion is checked.
    pub poll: Duration,
}

impl SendConfig {
    /// poktroll's relayminer defaults: gas adjustment 1.5, 0.0001 upokt per gas.
    pub fn pocket(chain_id: &str) -> Self {
        Self {
            chain_id: chain_id.to_string(),
            gas_adjustment: 1.5,
            gas_price: 0.0001,
            fee_denom: "upokt".into(),
            max_fee: DEFAULT_MAX_FEE_UPOKT,
            poll: Duration::from_secs(1),
        }
    }
}

/// The chain id to sign for: the node's, which must be `want` when one is configured (a
/// key is never used to sign for a chain it was not meant for).
pub async fn signing_chain_id(rpc: &CometRpc, want: Option<&str>) -> Result<String, SendError> {
    let node = rpc.status().await?.chain_id;
    match want {
        Some(want) if want != node => Err(SendError::WrongChain {
            node,
            want: want.to_string(),
        }),
        _ => Ok(node),
    }
}

/// CheckTx's verdict on a broadcast transaction: `code` 0 accepted into the mempool.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BroadcastResult {
    pub code: u32,
    pub codespace: String,
    pub log: String,
    /// Uppercase hex SHA-256 of the transaction bytes.
    pub hash: String,
}

/// `broadcast_tx_sync`: submits signed transaction bytes and returns CheckTx's verdict.
/// Not retried automatically: re-broadcasting the same bytes is safe, but the caller
/// decides when (the window may have closed).
pub async fn broadcast_tx_sync(rpc: &CometRpc, tx: &[u8]) -> Result<BroadcastResult, RpcError> {
    let r = rpc
        .call("broadcast_tx_sync", serde_json::json!({"tx": base64(tx)}))
        .await?;
    Ok(BroadcastResult {
        code: r["code"].as_u64().unwrap_or(0) as u32,
        codespace: r["codespace"].as_str().unwrap_or_default().to_string(),
        log: r["log"].as_str().unwrap_or_default().to_string(),
        hash: r["hash"].as_str().unwrap_or_default().to_string(),
    })
}

/// Why a transaction did not make it.
#[derive(Debug, thiserror::Error)]
pub enum SendError {
    #[error(transparent)]
    Query(#[from] QueryError),
    #[error(transparent)]
    Rpc(#[from] RpcError),
    #[error("the node refused the transaction (CheckTx code {code} {codespace}): {log}")]
    CheckTx {
        code: u32,
        codespace: String,
        log: String,
    },
    #[error("transaction {hash} failed in block {height} (code {code} {codespace}): {log}")]
    DeliverTx {
        hash: String,
        height: i64,
        code: u32,
        codespace: String,
        log: String,
    },
    #[error("the node reports hash {node} for a transaction whose hash is {ours}")]
    HashMismatch { ours: String, node: String },
    #[error("the node is on chain {node:?}, not the configured {want:?}: refusing to sign")]
    WrongChain { node: String, want: String },
    #[error(
        "the fee would be {fee} {denom} ({gas} gas simulated by the node), above the cap of {cap}: not signed (raise --max-fee-upokt if the chain really needs it)"
    )]
    FeeAboveCap {
        fee: u128,
        cap: u128,
        gas: u64,
        denom: String,
    },
}

impl SendError {
    /// Whether the node was unreachable (the transaction may or may not have been
    /// broadcast): look on chain before sending again.
    pub fn is_transient(&self) -> bool {
        match self {
            Self::Query(e) => e.is_transient(),
            Self::Rpc(e) => e.is_transient(),
            _ => false,
        }
    }
}

/// A transaction in a block, successfully executed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Sent {
    pub hash: String,
    pub height: i64,
    pub gas_limit: u64,
    pub fee: u128,
}

/// Signs and sends transactions for one key.
#[derive(Debug)]
pub struct TxSender {
    rpc: CometRpc,
    grpc: ChainGrpc,
    key: SecretKey,
    address: String,
    config: SendConfig,
}

impl TxSender {
    pub fn new(rpc: CometRpc, grpc: ChainGrpc, key: SecretKey, config: SendConfig) -> Self {
        let address = key.public_key().address().to_bech32("pokt");
        Self {
            rpc,
            grpc,
            key,
            address,
            config,
        }
    }

    /// The signer's address.
    pub fn address(&self) -> &str {
        &self.address
    }

    /// Sends `messages` in one transaction that is only valid up to `timeout_height` (0:
    /// [`DEFAULT_TIMEOUT_BLOCKS`] after the latest block), and waits until it is in a
    /// block. A fee above the configured cap is refused before anything is signed.
    pub async fn send(
        &self,
        messages: Vec<Any>,
        memo: &str,
        timeout_height: u64,
    ) -> Result<Sent, SendError> {
        let timeout_height = if timeout_height == 0 {
            let latest = self.rpc.status().await?.latest_height;
            (latest + DEFAULT_TIMEOUT_BLOCKS).max(1) as u64
        } else {
            timeout_height
        };
        let account = self.grpc.account(&self.address).await?;
        let mut params = TxParams {
            chain_id: self.config.chain_id.clone(),
            account_number: account.account_number,
            sequence: account.sequence,
            fee: Vec::new(),
            gas_limit: 0,
            memo: memo.to_string(),
            timeout_height,
        };
        let simulated = self
            .grpc
            .simulate(&cosmos::sign_tx(messages.clone(), &params, &self.key).encode())
            .await?;
        params.gas_limit = gas_limit(simulated, self.config.gas_adjustment);
        let fee = (params.gas_limit as f64 * self.config.gas_price).ceil() as u128;
        if fee > self.config.max_fee {
            return Err(SendError::FeeAboveCap {
                fee,
                cap: self.config.max_fee,
                gas: params.gas_limit,
                denom: self.config.fee_denom.clone(),
            });
        }
        if fee > 0 {
            params.fee = vec![Coin {
                denom: self.config.fee_denom.clone(),
                amount: fee.to_string(),
            }];
        }
        let tx = cosmos::sign_tx(messages, &params, &self.key).encode();
        let ours = cosmos::tx_hash(&tx);
        let checked = broadcast_tx_sync(&self.rpc, &tx).await?;
        if checked.code != 0 {
            return Err(SendError::CheckTx {
                code: checked.code,
                codespace: checked.codespace,
                log: checked.log,
            });
        }
        if !checked.hash.eq_ignore_ascii_case(&ours) {
            return Err(SendError::HashMismatch {
                ours,
                node: checked.hash,
            });
        }
        let broadcast_height = self.rpc.status().await?.latest_height;
        let wait_until = timeout_height as i64;
        let included = self
            .await_inclusion(&tx, &ours, broadcast_height, wait_until)
            .await?;
        if included.code != 0 {
            return Err(SendError::DeliverTx {
                hash: ours,
                height: included.height,
                code: included.code,
                codespace: included.codespace,
                log: included.log,
            });
        }
        Ok(Sent {
            hash: ours,
            height: included.height,
            gas_limit: params.gas_limit,
            fee,
        })
    }

    /// Polls until the transaction is in a block, re-broadcasting the same bytes when
    /// [`REBROADCAST_AFTER_BLOCKS`] pass without it, until the chain passes `wait_until`.
    async fn await_inclusion(
        &self,
        tx: &[u8],
        hash: &str,
        mut last_broadcast: i64,
        wait_until: i64,
    ) -> Result<TxResult, SendError> {
        let mut rebroadcasts = 0;
        loop {
            if let Some(r) = self.rpc.tx(hash).await? {
                return Ok(r);
            }
            let height = self.rpc.status().await?.latest_height;
            if height > wait_until {
                return Err(RpcError::NotIncluded {
                    hash: hash.to_string(),
                    timeout_height: wait_until,
                    height,
                }
                .into());
            }
            if height >= last_broadcast + REBROADCAST_AFTER_BLOCKS
                && rebroadcasts < MAX_REBROADCASTS
            {
                rebroadcasts += 1;
                last_broadcast = height;
                let again = broadcast_tx_sync(&self.rpc, tx).await?;
                tracing::warn!(
                    hash,
                    height,
                    attempt = rebroadcasts,
                    code = again.code,
                    "transaction not included yet; broadcast again"
                );
                // 19: the node still has it (tx already in mempool/cache). Anything else
                // means the bytes can no longer be included (e.g. the sequence moved on
                // because it *was* included): the next `tx` lookup tells.
            }
            tokio::time::sleep(self.config.poll).await;
        }
    }
}

//! `relayminer stake`: makes the supplier's on-chain stake, owner, services and endpoints
//! what they should be, and does nothing when they already are (a Job that runs twice
//! sends one transaction).

use lode_chain::pocket::PocketQuery;
use lode_chain::stake::StakeSpec;
use lode_chain::{ChainGrpc, CometRpc, RetryPolicy, SendConfig, TxSender};
use lode_kernels::crypto::SecretKey;
use serde::Serialize;

/// What a stake run did.
#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct StakeReport {
    pub operator: String,
    /// `unchanged` (the chain already matched), `staked` or `unstaking` (a transaction
    /// was included).
    pub outcome: String,
    pub tx_hash: Option<String>,
    pub height: Option<i64>,
}

impl StakeReport {
    fn unchanged(operator: String) -> Self {
        Self {
            operator,
            outcome: "unchanged".into(),
            tx_hash: None,
            height: None,
        }
    }
}

/// Transaction settings of a stake run.
#[derive(Clone, Debug)]
pub struct StakeConfig {
    pub grpc_url: String,
    pub rpc_url: String,
    /// When set, the node must be on this chain.
    pub chain_id: Option<String>,
    pub gas_adjustment: f64,
    pub gas_price: f64,
    pub poll: std::time::Duration,
}

/// Starts unbonding the supplier unless it is not staked or already unbonding.
pub async fn unstake(config: &StakeConfig, key: SecretKey) -> anyhow::Result<StakeReport> {
    let operator = key.public_key().address().to_bech32("pokt");
    let retry = RetryPolicy::default();
    let grpc = ChainGrpc::new(&config.grpc_url, retry)?;
    let rpc = CometRpc::new(&config.rpc_url, retry);
    let onchain = PocketQuery::new(grpc.clone()).supplier(&operator).await?;
    if onchain.is_none_or(|s| s.unstake_session_end_height != 0) {
        return Ok(StakeReport::unchanged(operator));
    }
    let sender = signer(config, rpc, grpc, key).await?;
    let sent = sender
        .send(
            vec![lode_chain::stake::unstake_message(&operator)],
            "lode unstake",
            0,
        )
        .await?;
    Ok(StakeReport {
        operator,
        outcome: "unstaking".into(),
        tx_hash: Some(sent.hash),
        height: Some(sent.height),
    })
}

/// A transaction sender for `key` on the node's chain (checked against the configured
/// one).
async fn signer(
    config: &StakeConfig,
    rpc: CometRpc,
    grpc: ChainGrpc,
    key: SecretKey,
) -> anyhow::Result<TxSender> {
    let node = rpc.status().await?.chain_id;
    if let Some(want) = &config.chain_id {
        anyhow::ensure!(
            *want == node,
            "the node is on chain {node:?}, not the configured {want:?}: refusing to sign"
        );
    }
    Ok(TxSender::new(
        rpc,
        grpc,
        key,
        SendConfig {
            gas_adjustment: config.gas_adjustment,
            gas_price: config.gas_price,
            poll: config.poll,
            ..SendConfig::pocket(&node)
        },
    ))
}

pub async fn stake(
    config: &StakeConfig,
    key: SecretKey,
    spec: &StakeSpec,
) -> anyhow::Result<StakeReport> {
    let operator = key.public_key().address().to_bech32("pokt");
    anyhow::ensure!(
        operator == spec.operator,
        "the key is {operator}'s, not the operator {}'s",
        spec.operator
    );
    let retry = RetryPolicy::default();
    let grpc = ChainGrpc::new(&config.grpc_url, retry)?;
    let rpc = CometRpc::new(&config.rpc_url, retry);
    let query = PocketQuery::new(grpc.clone());
    if let Some(onchain) = query.supplier(&operator).await?
        && spec.is_met_by(&onchain)
    {
        return Ok(StakeReport::unchanged(operator));
    }
    let sender = signer(config, rpc, grpc, key).await?;
    let sent = sender.send(vec![spec.message()], "lode stake", 0).await?;
    Ok(StakeReport {
        operator,
        outcome: "staked".into(),
        tx_hash: Some(sent.hash),
        height: Some(sent.height),
    })
}

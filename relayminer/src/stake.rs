//! `relayminer stake`: makes the supplier's on-chain stake, owner, services and endpoints
//! what its [`StakeSpec`] says, and does nothing when they already are (a Job that runs
//! twice sends one transaction). `relayminer unstake` starts unbonding.

use lode_chain::pocket::PocketQuery;
use lode_chain::{ChainGrpc, CometRpc, QueryError, RetryPolicy, RpcError};
use lode_chain_tx::{SendConfig, SendError, TxSender};
use lode_contracts::report::{StakeOutcome, StakeReport};
use lode_contracts::stake::StakeSpec;
use lode_kernels::crypto::SecretKey;

/// Transaction settings of a stake run.
#[derive(Clone, Debug)]
pub struct StakeConfig {
    pub grpc_url: String,
    pub rpc_url: String,
    /// When set, the node must be on this chain.
    pub chain_id: Option<String>,
    pub gas_adjustment: f64,
    pub gas_price: f64,
    /// The largest fee signed, uPOKT.
    pub max_fee_upokt: u128,
    pub poll: std::time::Duration,
}

/// Why a stake or unstake run did not finish.
#[derive(Debug, thiserror::Error)]
pub enum StakeError {
    #[error(transparent)]
    Query(#[from] QueryError),
    #[error(transparent)]
    Rpc(#[from] RpcError),
    #[error(transparent)]
    Send(#[from] SendError),
    #[error("the key is {key}'s, not the operator {operator}'s")]
    WrongKey { key: String, operator: String },
    #[error("the stake spec is refused: {0}")]
    Invalid(#[from] lode_contracts::Invalid),
}

/// Starts unbonding the supplier unless it is not staked or already unbonding.
#[tracing::instrument(skip_all, fields(supplier = tracing::field::Empty))]
pub async fn unstake(config: &StakeConfig, key: SecretKey) -> Result<StakeReport, StakeError> {
    let operator = key.public_key().address().to_bech32("pokt");
    tracing::Span::current().record("supplier", operator.as_str());
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
            vec![lode_chain_tx::stake::unstake_message(&operator)],
            "lode unstake",
            0,
        )
        .await?;
    Ok(StakeReport {
        operator,
        outcome: StakeOutcome::Unstaking,
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
) -> Result<TxSender, StakeError> {
    let node = lode_chain_tx::signing_chain_id(&rpc, config.chain_id.as_deref()).await?;
    Ok(TxSender::new(
        rpc,
        grpc,
        key,
        SendConfig {
            gas_adjustment: config.gas_adjustment,
            gas_price: config.gas_price,
            max_fee: config.max_fee_upokt,
            poll: config.poll,
            ..SendConfig::pocket(&node)
        },
    ))
}

/// Stakes (or updates) the supplier unless the chain already has `spec`.
#[tracing::instrument(skip_all, fields(supplier = %spec.operator))]
pub async fn stake(
    config: &StakeConfig,
    key: SecretKey,
    spec: &StakeSpec,
) -> Result<StakeReport, StakeError> {
    spec.validate()?;
    let operator = key.public_key().address().to_bech32("pokt");
    if operator != spec.operator {
        return Err(StakeError::WrongKey {
            key: operator,
            operator: spec.operator.clone(),
        });
    }
    let retry = RetryPolicy::default();
    let grpc = ChainGrpc::new(&config.grpc_url, retry)?;
    let rpc = CometRpc::new(&config.rpc_url, retry);
    let query = PocketQuery::new(grpc.clone());
    if let Some(onchain) = query.supplier(&operator).await?
        && lode_chain::stake::is_met_by(spec, &onchain)
    {
        return Ok(StakeReport::unchanged(operator));
    }
    let sender = signer(config, rpc, grpc, key).await?;
    let message = lode_chain_tx::stake::stake_message(spec);
    let sent = sender.send(vec![message], "lode stake", 0).await?;
    Ok(StakeReport {
        operator,
        outcome: StakeOutcome::Staked,
        tx_hash: Some(sent.hash),
        height: Some(sent.height),
    })
}

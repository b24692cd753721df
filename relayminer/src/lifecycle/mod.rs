//! Getting paid: the claim and prove passes behind `relayminer claim`, `relayminer prove`
//! and the block-driven scheduler of `relayminer run`.
//!
//! Both passes read the session list from the store and decide per session from chain
//! state, so they are idempotent: running one twice, or after a crash at any point,
//! neither double-claims nor loses a claim. They only act on sessions whose window is open
//! at the chain's current height (windows from the shared params at the session end;
//! value from difficulty and pricing at the session start, spec §5.1).

mod claim;
pub mod metrics;
mod prove;
pub mod report;
pub mod schedule;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use lode_chain::pocket::{PocketQuery, ProofStatus};
use lode_chain::{ChainGrpc, CometRpc, QueryError, RetryPolicy, RpcError};
use lode_chain_tx::{SendConfig, SendError, Sent, TxSender};
use lode_kernels::crypto::SecretKey;
use lode_kernels::mining::claimed_upokt;
use lode_kernels::session::SessionWindows;
use lode_store_api::{SessionInfo, SessionKey, SessionState};

pub use metrics::LifecycleMetrics;
pub use report::{JobKind, JobReport, Outcome, SessionReport, session_report};

/// Gas one `MsgCreateClaim` is assumed to use when judging profit (before simulation).
pub const CLAIM_GAS_ESTIMATE: u64 = 100_000;
/// Gas one `MsgSubmitProof` is assumed to use when judging profit.
pub const PROOF_GAS_ESTIMATE: u64 = 250_000;
/// Transactions a pass sends for one batch before giving up on it (each after the
/// previous one was refused or failed; the window is re-checked before each).
pub const MAX_TX_ATTEMPTS: u32 = 3;

/// Everything the claim and prove passes need.
#[derive(Clone, Debug)]
pub struct LifecycleConfig {
    /// Cosmos/poktroll gRPC of a node.
    pub grpc_url: String,
    /// CometBFT RPC of a node (blocks, broadcast).
    pub rpc_url: String,
    /// When set, the node must report this chain id (otherwise the node's is used).
    pub chain_id: Option<String>,
    pub store_url: String,
    pub store_token: String,
    /// The store's CA and certificate name when it speaks TLS.
    pub store_tls: Option<lode_store_api::StoreTls>,
    /// Supplier operator keys: every session of these suppliers in the store is handled.
    pub keys: Vec<SecretKey>,
    /// `--gas-adjustment`: simulated gas × this.
    pub gas_adjustment: f64,
    /// `--gas-prices` in uPOKT per gas.
    pub gas_price: f64,
    /// `--max-fee-upokt`: the largest fee signed.
    pub max_fee_upokt: u128,
    /// How often inclusion and new blocks are polled.
    pub poll: Duration,
    /// How long a pass keeps retrying while the chain node or the store is unreachable.
    pub outage_budget: Duration,
    /// Include SiblingData in proofs (larger; the chain accepts both).
    pub sibling_data: bool,
}

impl LifecycleConfig {
    /// Defaults for everything but the endpoints and keys.
    pub fn new(grpc_url: &str, rpc_url: &str, store_url: &str, store_token: &str) -> Self {
        Self {
            grpc_url: grpc_url.to_string(),
            rpc_url: rpc_url.to_string(),
            chain_id: None,
            store_url: store_url.to_string(),
            store_token: store_token.to_string(),
            store_tls: None,
            keys: Vec::new(),
            gas_adjustment: 1.5,
            gas_price: 0.0001,
            max_fee_upokt: lode_chain_tx::DEFAULT_MAX_FEE_UPOKT,
            poll: Duration::from_secs(1),
            outage_budget: Duration::from_secs(300),
            sibling_data: false,
        }
    }
}

/// The claim and prove passes over one store and one chain.
#[derive(Debug)]
pub struct Lifecycle {
    config: LifecycleConfig,
    rpc: CometRpc,
    grpc: ChainGrpc,
    query: PocketQuery,
    store: lode_store_api::Client,
    /// Supplier address → key.
    keys: BTreeMap<String, SecretKey>,
    chain_id: tokio::sync::OnceCell<String>,
    metrics: Arc<LifecycleMetrics>,
}

/// Why a pass (or setting one up) stopped before it finished.
#[derive(Debug, thiserror::Error)]
pub enum PassError {
    #[error("no supplier key: give at least one key file")]
    NoKeys,
    #[error("store URL {url}: {reason}")]
    StoreUrl { url: String, reason: String },
    #[error(transparent)]
    Query(#[from] QueryError),
    #[error(transparent)]
    Rpc(#[from] RpcError),
    #[error(transparent)]
    Send(#[from] SendError),
    #[error("{what}: {source}")]
    Chain {
        what: String,
        #[source]
        source: RpcError,
    },
    #[error("{what}: {status}")]
    Store { what: String, status: tonic::Status },
    #[error("no key for supplier {0}")]
    NoKey(String),
    #[error("store session {0} has no header")]
    NoHeader(String),
}

impl PassError {
    pub(crate) fn chain(what: impl Into<String>, source: RpcError) -> Self {
        Self::Chain {
            what: what.into(),
            source,
        }
    }

    pub(crate) fn store(what: impl Into<String>, status: tonic::Status) -> Self {
        Self::Store {
            what: what.into(),
            status,
        }
    }

    /// Whether the chain node or the store was unreachable for now (the whole pass is
    /// worth running again), rather than answering something definite.
    pub fn is_transient(&self) -> bool {
        match self {
            Self::Query(e) => e.is_transient(),
            Self::Rpc(e) | Self::Chain { source: e, .. } => e.is_transient(),
            Self::Send(e) => e.is_transient(),
            Self::Store { status, .. } => matches!(
                status.code(),
                tonic::Code::Unavailable | tonic::Code::DeadlineExceeded | tonic::Code::Unknown
            ),
            Self::NoKeys | Self::StoreUrl { .. } | Self::NoKey(_) | Self::NoHeader(_) => false,
        }
    }
}

/// A session decided without a transaction: what the store records, the outcome, and
/// why.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Done {
    pub store: StoreAction,
    pub outcome: Outcome,
    pub detail: String,
}

pub(crate) fn done(store: StoreAction, outcome: Outcome, detail: impl Into<String>) -> Done {
    Done {
        store,
        outcome,
        detail: detail.into(),
    }
}

/// What a decided session leaves in the store.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum StoreAction {
    /// Nothing changes (a later pass may do better).
    Keep,
    /// Marked expired (never acted on again) and deleted.
    Drop,
    /// Marked with its final state and deleted.
    Finish(SessionState),
    /// Marked claimed and kept for its proof.
    MarkClaimed,
}

/// The chain's code for "proof not required" (`x/proof` ErrProofNotRequired).
const PROOF_NOT_REQUIRED_CODE: u32 = 1129;

/// A message waiting to be sent for one session.
struct Pending {
    report: SessionReport,
    msg: lode_kernels::proto::cosmos::Any,
    /// The last height of the session's window.
    close: i64,
}

/// How a batch ended.
#[derive(Default)]
struct Delivery {
    /// Included, all in one transaction.
    sent: Option<(Sent, Vec<Pending>)>,
    /// On chain anyway after a failed attempt (or from an earlier run).
    landed: Vec<Pending>,
    /// Given up on (attempts spent or the window closing), with why.
    failed: Vec<(Pending, String)>,
    /// A lone proof the chain refused as not required.
    not_required: Vec<Pending>,
}

fn address(key: &SecretKey) -> String {
    key.public_key().address().to_bech32("pokt")
}

impl Lifecycle {
    /// Builds the clients; nothing is contacted yet (an unreachable node or store shows
    /// up as a retried error in the first pass).
    pub fn new(config: LifecycleConfig) -> Result<Self, PassError> {
        if config.keys.is_empty() {
            return Err(PassError::NoKeys);
        }
        let retry = RetryPolicy {
            attempts: 3,
            first_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_secs(2),
            timeout: Duration::from_secs(10),
        };
        let grpc = ChainGrpc::new(&config.grpc_url, retry)?;
        let rpc = CometRpc::new(&config.rpc_url, retry);
        let store = lode_store_api::connect_lazy(
            &config.store_url,
            &config.store_token,
            Duration::from_secs(10),
            config.store_tls.as_ref(),
        )
        .map_err(|e| PassError::StoreUrl {
            url: config.store_url.clone(),
            reason: e.to_string(),
        })?;
        let keys = config
            .keys
            .iter()
            .map(|k| (address(k), k.clone()))
            .collect();
        Ok(Self {
            query: PocketQuery::new(grpc.clone()),
            grpc,
            rpc,
            store,
            keys,
            chain_id: tokio::sync::OnceCell::new(),
            metrics: Arc::default(),
            config,
        })
    }

    pub fn metrics(&self) -> &Arc<LifecycleMetrics> {
        &self.metrics
    }

    /// The supplier operator addresses handled.
    pub fn suppliers(&self) -> impl Iterator<Item = &str> {
        self.keys.keys().map(String::as_str)
    }

    pub fn rpc(&self) -> &CometRpc {
        &self.rpc
    }

    /// One claim pass: claims every session whose claim window is open, retrying while
    /// the chain or the store is unreachable (up to the outage budget).
    pub async fn claim(&self) -> JobReport {
        self.with_outage_retries(JobKind::Claim).await
    }

    /// One prove pass: proves (or settles without a proof) every claimed session whose
    /// proof window is open, and deletes finished sessions from the store.
    pub async fn prove(&self) -> JobReport {
        self.with_outage_retries(JobKind::Prove).await
    }

    #[tracing::instrument(name = "pass", skip_all, fields(job = job.as_str()))]
    async fn with_outage_retries(&self, job: JobKind) -> JobReport {
        let started = Instant::now();
        let mut backoff = Duration::from_millis(200);
        loop {
            // Every attempt rebuilds the report: a pass is idempotent.
            let mut report = JobReport::new(job);
            let result = match job {
                JobKind::Claim => self.claim_pass(&mut report).await,
                JobKind::Prove => self.prove_pass(&mut report).await,
            };
            match result {
                Ok(()) => {
                    self.metrics.record(&report);
                    return report;
                }
                Err(e) if e.is_transient() && started.elapsed() < self.config.outage_budget => {
                    tracing::warn!(job = job.as_str(), error = %e, retry_in = ?backoff, "chain or store unreachable; the pass will run again");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(1));
                }
                Err(e) => {
                    report.errors.push(e.to_string());
                    self.metrics.record(&report);
                    return report;
                }
            }
        }
    }

    /// The chain id transactions are signed for: the node's, checked against the
    /// configured one.
    async fn chain_id(&self) -> Result<&str, PassError> {
        let id = self
            .chain_id
            .get_or_try_init(|| {
                lode_chain_tx::signing_chain_id(&self.rpc, self.config.chain_id.as_deref())
            })
            .await?;
        Ok(id)
    }

    async fn sender(&self, supplier: &str) -> Result<TxSender, PassError> {
        let key = self
            .keys
            .get(supplier)
            .ok_or_else(|| PassError::NoKey(supplier.to_string()))?;
        let config = SendConfig {
            gas_adjustment: self.config.gas_adjustment,
            gas_price: self.config.gas_price,
            max_fee: self.config.max_fee_upokt,
            poll: self.config.poll,
            ..SendConfig::pocket(self.chain_id().await?)
        };
        Ok(TxSender::new(
            self.rpc.clone(),
            self.grpc.clone(),
            key.clone(),
            config,
        ))
    }

    /// Sends `batch` in one transaction valid until the earliest window close. After a
    /// refused or failed attempt, what is on chain anyway is taken out (never claim or
    /// prove twice) and the rest is sent again in a later block, at most
    /// [`MAX_TX_ATTEMPTS`] times and never past the window. An outage is returned as an
    /// error: the pass runs again and looks on chain before sending anything.
    #[tracing::instrument(skip_all, fields(job = job.as_str(), supplier = %supplier, sessions = batch.len()))]
    async fn deliver(
        &self,
        job: JobKind,
        supplier: &str,
        mut batch: Vec<Pending>,
    ) -> Result<Delivery, PassError> {
        let sender = self.sender(supplier).await?;
        let mut out = Delivery::default();
        let close = |b: &[Pending]| b.iter().map(|p| p.close).min().unwrap_or(0).max(0);
        let mut attempt = 0;
        loop {
            attempt += 1;
            let messages = batch.iter().map(|p| p.msg.clone()).collect();
            let memo = format!("lode {}", job.as_str());
            let error = match sender.send(messages, &memo, close(&batch) as u64).await {
                Ok(sent) => {
                    out.sent = Some((sent, batch));
                    return Ok(out);
                }
                Err(e) if e.is_transient() => return Err(e.into()),
                Err(e) => e,
            };
            tracing::warn!(job = job.as_str(), %supplier, attempt, error = %error, "transaction failed");
            let not_required = match &error {
                SendError::CheckTx { code, log, .. } | SendError::DeliverTx { code, log, .. } => {
                    *code == PROOF_NOT_REQUIRED_CODE || log.contains("not required")
                }
                _ => false,
            };
            if matches!(job, JobKind::Prove) && not_required && batch.len() == 1 {
                out.not_required = batch;
                return Ok(out);
            }
            let mut left = Vec::new();
            for p in batch {
                let on_chain = self.query.claim(&p.report.session_id, supplier).await?;
                let landed = on_chain.is_some_and(|c| match job {
                    JobKind::Claim => lode_kernels::hex::encode(&c.root_hash) == p.report.root,
                    JobKind::Prove => ProofStatus::of(&c) != ProofStatus::PendingValidation,
                });
                if landed {
                    out.landed.push(p);
                } else {
                    left.push(p);
                }
            }
            batch = left;
            if batch.is_empty() {
                return Ok(out);
            }
            let height = self.height().await?;
            if attempt >= MAX_TX_ATTEMPTS || height >= close(&batch) {
                let why = format!("not included after {attempt} attempts (last: {error})");
                out.failed = batch.into_iter().map(|p| (p, why.clone())).collect();
                return Ok(out);
            }
            self.next_block(height).await?;
        }
    }

    async fn height(&self) -> Result<i64, PassError> {
        Ok(self.rpc.status().await?.latest_height)
    }

    /// Waits until the chain is past `height`.
    async fn next_block(&self, height: i64) -> Result<i64, PassError> {
        loop {
            let h = self.height().await?;
            if h > height {
                return Ok(h);
            }
            tokio::time::sleep(self.config.poll).await;
        }
    }

    /// A session's windows, from the shared params at its end height (for a session
    /// that has not ended, the params now: the chain answers no future heights).
    async fn windows(&self, end: i64, now: i64) -> Result<SessionWindows, PassError> {
        let at = end.min(now).max(1);
        Ok(self.query.shared_params_at(at).await?.shared.windows(end))
    }

    /// A store session's header and its windows.
    async fn header_and_windows(
        &self,
        info: &SessionInfo,
        now: i64,
    ) -> Result<(lode_store_api::SessionHeader, SessionWindows), PassError> {
        let header = info
            .session_header
            .clone()
            .ok_or_else(|| PassError::NoHeader(lode_kernels::hex::encode(&info.root)))?;
        let w = self.windows(header.session_end_block_height, now).await?;
        Ok((header, w))
    }

    /// What a claim with `sum` compute units and `count` relays is worth, checked the way
    /// the chain checks it.
    async fn claim_value(
        &self,
        header: &lode_store_api::SessionHeader,
        sum: u64,
        count: u64,
    ) -> Result<Result<u128, String>, PassError> {
        let start = header.session_start_block_height;
        let cupr = self
            .query
            .compute_units_per_relay_at(&header.service_id, start)
            .await?;
        if !lode_kernels::mining::claim_sum_is_valid(sum, count, cupr) {
            return Ok(Err(format!(
                "the trie holds {sum} compute units for {count} relays, but the service costs {cupr} per relay: the chain would refuse the claim"
            )));
        }
        let target = self.query.difficulty_at(&header.service_id, start).await?;
        let pricing = self.query.shared_params_at(start).await?.pricing;
        Ok(claimed_upokt(sum, &target, pricing)
            .ok_or_else(|| "the chain's pricing params have a zero granularity".to_string()))
    }

    async fn list(&self, supplier: &str) -> Result<Vec<SessionInfo>, PassError> {
        Ok(self
            .store
            .clone()
            .list_sessions(lode_store_api::ListSessionsRequest {
                supplier_operator_address: supplier.to_string(),
            })
            .await
            .map_err(|e| PassError::store("listing the store's sessions", e))?
            .into_inner()
            .sessions)
    }

    async fn mark(
        &self,
        supplier: &str,
        session_id: &str,
        state: SessionState,
        tx: &str,
    ) -> Result<(), PassError> {
        self.store
            .clone()
            .mark_session(lode_store_api::MarkSessionRequest {
                key: Some(key(supplier, session_id)),
                state: state as i32,
                tx_hash: tx.to_string(),
            })
            .await
            .map_err(|e| {
                PassError::store(format!("recording session {session_id} as {state:?}"), e)
            })?;
        Ok(())
    }

    async fn delete(&self, supplier: &str, session_id: &str) -> Result<(), PassError> {
        self.store
            .clone()
            .delete_session(key(supplier, session_id))
            .await
            .map_err(|e| PassError::store(format!("deleting session {session_id}"), e))?;
        Ok(())
    }

    /// Acts on a session decided without a transaction: records it in the store and
    /// reports it.
    async fn close(
        &self,
        supplier: &str,
        id: &str,
        mut r: SessionReport,
        d: Done,
        report: &mut JobReport,
    ) -> Result<(), PassError> {
        self.record(supplier, id, d.store).await?;
        r.set(d.outcome, d.detail);
        report.sessions.push(r);
        Ok(())
    }

    /// Records what a decision leaves in the store.
    async fn record(
        &self,
        supplier: &str,
        session_id: &str,
        action: StoreAction,
    ) -> Result<(), PassError> {
        match action {
            StoreAction::Keep => Ok(()),
            StoreAction::Drop => {
                self.mark(supplier, session_id, SessionState::Expired, "")
                    .await?;
                self.delete(supplier, session_id).await
            }
            StoreAction::Finish(state) => {
                self.mark(supplier, session_id, state, "").await?;
                self.delete(supplier, session_id).await
            }
            StoreAction::MarkClaimed => {
                self.mark(supplier, session_id, SessionState::Claimed, "")
                    .await
            }
        }
    }

    /// Deletes sessions whose lifecycle is over (a crash between marking and deleting
    /// leaves them behind).
    async fn clean_up(&self, supplier: &str, info: &SessionInfo) -> Result<bool, PassError> {
        let done = matches!(
            info.state(),
            SessionState::Expired | SessionState::Settled | SessionState::Proven
        );
        if done {
            let id = info
                .session_header
                .as_ref()
                .map(|h| h.session_id.clone())
                .unwrap_or_default();
            self.delete(supplier, &id).await?;
        }
        Ok(done)
    }
}

fn key(supplier: &str, session_id: &str) -> SessionKey {
    SessionKey {
        supplier_operator_address: supplier.to_string(),
        session_id: session_id.to_string(),
    }
}

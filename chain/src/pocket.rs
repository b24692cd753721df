//! poktroll's gRPC queries (spec `poktroll.md` §6.2): sessions, parameters, services and
//! their relay mining difficulty, applications, suppliers and claims.
//!
//! Every call has the client's timeout and retry policy. Answers that are fixed once a
//! height is committed (parameters, difficulty and compute units *at a height*) are cached
//! in bounded maps, which is what the relayminer needs on its hot path: params for each
//! session, difficulty until the session settles.

use std::collections::BTreeMap;
use std::sync::Mutex;

use lode_kernels::claim::ProofParams;
use lode_kernels::crypto::PublicKey;
use lode_kernels::crypto::ring::{placeholder_address, placeholder_key, ring_addresses};
use lode_kernels::mining::Pricing;
use lode_kernels::session::SharedParams;
use tonic::Code;

use crate::grpc::{ChainGrpc, QueryError};
use crate::proto::pocket::{application, proof, service, session, shared, supplier};

/// How many heights (or service/height pairs) each cache keeps.
const CACHE_ENTRIES: usize = 256;

/// Why an application's ring (or a signer's key) could not be assembled.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error(transparent)]
    Query(#[from] QueryError),
    #[error("{0} has no public key on chain (it never signed a transaction)")]
    NoPublicKey(String),
}

/// The shared module's parameters, split into what the kernels use.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ChainParams {
    pub shared: SharedParams,
    pub pricing: Pricing,
}

/// The proof module's parameters, in uPOKT.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct ProofModuleParams {
    pub requirement: ProofParams,
    pub proof_missing_penalty: u128,
    pub proof_submission_fee: u128,
}

/// poktroll's query client, sharing the connection and retry policy of a [`ChainGrpc`].
#[derive(Debug)]
pub struct PocketQuery {
    grpc: ChainGrpc,
    /// Account public keys (ring members, suppliers): fixed once an account signed.
    public_keys: Mutex<BTreeMap<String, PublicKey>>,
    params_at: Mutex<BTreeMap<i64, ChainParams>>,
    difficulty_at: Mutex<BTreeMap<(String, i64), [u8; 32]>>,
    cupr_at: Mutex<BTreeMap<(String, i64), u64>>,
}

fn remember<K: Ord, V>(cache: &Mutex<BTreeMap<K, V>>, key: K, value: V) {
    let mut map = cache.lock().expect("cache lock");
    if map.len() >= CACHE_ENTRIES {
        map.pop_first();
    }
    map.insert(key, value);
}

fn recall<K: Ord, V: Clone>(cache: &Mutex<BTreeMap<K, V>>, key: &K) -> Option<V> {
    cache.lock().expect("cache lock").get(key).cloned()
}

fn to_i64(what: &'static str, field: &str, v: u64) -> Result<i64, QueryError> {
    i64::try_from(v).map_err(|_| QueryError::BadResponse {
        what,
        reason: format!("{field} = {v} does not fit a block height"),
    })
}

fn amount(
    what: &'static str,
    coin: Option<crate::grpc::proto::base::Coin>,
) -> Result<u128, QueryError> {
    let Some(coin) = coin else { return Ok(0) };
    if coin.amount.is_empty() {
        return Ok(0);
    }
    coin.amount.parse().map_err(|_| QueryError::BadResponse {
        what,
        reason: format!("amount {:?} is not an integer", coin.amount),
    })
}

/// Converts the shared module's wire parameters. The session grid anchor is not on the
/// wire (it is derived on chain); the genesis grid starting at block 1 is assumed.
pub fn chain_params(p: &shared::Params) -> Result<ChainParams, QueryError> {
    const WHAT: &str = "shared params";
    if p.num_blocks_per_session == 0 {
        return Err(QueryError::BadResponse {
            what: WHAT,
            reason: "num_blocks_per_session is 0".into(),
        });
    }
    Ok(ChainParams {
        shared: SharedParams {
            num_blocks_per_session: to_i64(
                WHAT,
                "num_blocks_per_session",
                p.num_blocks_per_session,
            )?,
            grace_period_end_offset_blocks: to_i64(
                WHAT,
                "grace_period_end_offset_blocks",
                p.grace_period_end_offset_blocks,
            )?,
            claim_window_open_offset_blocks: to_i64(
                WHAT,
                "claim_window_open_offset_blocks",
                p.claim_window_open_offset_blocks,
            )?,
            claim_window_close_offset_blocks: to_i64(
                WHAT,
                "claim_window_close_offset_blocks",
                p.claim_window_close_offset_blocks,
            )?,
            proof_window_open_offset_blocks: to_i64(
                WHAT,
                "proof_window_open_offset_blocks",
                p.proof_window_open_offset_blocks,
            )?,
            proof_window_close_offset_blocks: to_i64(
                WHAT,
                "proof_window_close_offset_blocks",
                p.proof_window_close_offset_blocks,
            )?,
            session_grid_anchor_height: 1,
            session_number_at_anchor: 1,
        },
        pricing: Pricing {
            compute_units_to_tokens_multiplier: p.compute_units_to_tokens_multiplier,
            compute_unit_cost_granularity: p.compute_unit_cost_granularity.max(1),
        },
    })
}

/// A target hash from the wire: exactly 32 bytes.
fn target(
    what: &'static str,
    d: Option<service::RelayMiningDifficulty>,
) -> Result<[u8; 32], QueryError> {
    let d = d.ok_or(QueryError::BadResponse {
        what,
        reason: "no difficulty in the answer".into(),
    })?;
    d.target_hash
        .as_slice()
        .try_into()
        .map_err(|_| QueryError::BadResponse {
            what,
            reason: format!("target hash has {} bytes, not 32", d.target_hash.len()),
        })
}

macro_rules! query {
    ($self:ident, $what:expr, $client:path, $method:ident, $req:expr) => {{
        let req = $req;
        $self
            .grpc
            .with_retries($what, |ch| {
                let req = req.clone();
                async move { <$client>::new(ch).$method(req).await }
            })
            .await
            .map(|r| r.into_inner())
    }};
}

/// `NotFound` as `None`, everything else as the error.
fn optional<T>(r: Result<T, QueryError>) -> Result<Option<T>, QueryError> {
    match r {
        Ok(v) => Ok(Some(v)),
        Err(QueryError::Status { status, .. }) if status.code() == Code::NotFound => Ok(None),
        Err(e) => Err(e),
    }
}

impl PocketQuery {
    pub fn new(grpc: ChainGrpc) -> Self {
        Self {
            grpc,
            public_keys: Mutex::default(),
            params_at: Mutex::default(),
            difficulty_at: Mutex::default(),
            cupr_at: Mutex::default(),
        }
    }

    /// The underlying Cosmos client (accounts, balances, simulation).
    pub fn cosmos(&self) -> &ChainGrpc {
        &self.grpc
    }

    /// `pocket.session.Query/GetSession`: the session of `application` for `service_id`
    /// at `height` (which must not exceed the latest committed height).
    pub async fn session(
        &self,
        application: &str,
        service_id: &str,
        height: i64,
    ) -> Result<session::Session, QueryError> {
        const WHAT: &str = "session query";
        let res = query!(
            self,
            WHAT,
            session::query_client::QueryClient<tonic::transport::Channel>,
            get_session,
            session::QueryGetSessionRequest {
                application_address: application.to_string(),
                service_id: service_id.to_string(),
                block_height: height,
            }
        )?;
        let s = res.session.ok_or(QueryError::BadResponse {
            what: WHAT,
            reason: "no session in the answer".into(),
        })?;
        if s.header.is_none() {
            return Err(QueryError::BadResponse {
                what: WHAT,
                reason: "session without a header".into(),
            });
        }
        Ok(s)
    }

    /// `pocket.session.Query/Params`: how many suppliers a session holds at most.
    pub async fn num_suppliers_per_session(&self) -> Result<u64, QueryError> {
        let res = query!(
            self,
            "session params",
            session::query_client::QueryClient<tonic::transport::Channel>,
            params,
            session::QueryParamsRequest {}
        )?;
        Ok(res.params.unwrap_or_default().num_suppliers_per_session)
    }

    /// `pocket.shared.Query/Params`: the parameters in effect now (not cached).
    pub async fn shared_params(&self) -> Result<ChainParams, QueryError> {
        let res = query!(
            self,
            "shared params",
            shared::query_client::QueryClient<tonic::transport::Channel>,
            params,
            shared::QueryParamsRequest {}
        )?;
        chain_params(&res.params.unwrap_or_default())
    }

    /// `pocket.shared.Query/ParamsAtHeight`: the parameters in effect at `height`
    /// (cached: they never change once the height is committed).
    pub async fn shared_params_at(&self, height: i64) -> Result<ChainParams, QueryError> {
        if let Some(p) = recall(&self.params_at, &height) {
            return Ok(p);
        }
        let res = query!(
            self,
            "shared params at height",
            shared::query_client::QueryClient<tonic::transport::Channel>,
            params_at_height,
            shared::QueryParamsAtHeightRequest { height }
        )?;
        let p = chain_params(&res.params.unwrap_or_default())?;
        remember(&self.params_at, height, p);
        Ok(p)
    }

    /// `pocket.proof.Query/Params`.
    pub async fn proof_params(&self) -> Result<ProofModuleParams, QueryError> {
        const WHAT: &str = "proof params";
        let res = query!(
            self,
            WHAT,
            proof::query_client::QueryClient<tonic::transport::Channel>,
            params,
            proof::QueryParamsRequest {}
        )?;
        let p = res.params.unwrap_or_default();
        Ok(ProofModuleParams {
            requirement: ProofParams {
                proof_request_probability: p.proof_request_probability,
                proof_requirement_threshold: amount(WHAT, p.proof_requirement_threshold)?,
            },
            proof_missing_penalty: amount(WHAT, p.proof_missing_penalty)?,
            proof_submission_fee: amount(WHAT, p.proof_submission_fee)?,
        })
    }

    /// `pocket.service.Query/Service`; `None` when the service does not exist.
    pub async fn service(&self, id: &str) -> Result<Option<shared::Service>, QueryError> {
        let res = optional(query!(
            self,
            "service query",
            service::query_client::QueryClient<tonic::transport::Channel>,
            service,
            service::QueryGetServiceRequest { id: id.to_string() }
        ))?;
        Ok(res.and_then(|r| r.service))
    }

    /// `pocket.service.Query/RelayMiningDifficultyAtHeight`: the target hash relays of
    /// `service_id` had to meet at `height` (cached).
    pub async fn difficulty_at(
        &self,
        service_id: &str,
        height: i64,
    ) -> Result<[u8; 32], QueryError> {
        let key = (service_id.to_string(), height);
        if let Some(t) = recall(&self.difficulty_at, &key) {
            return Ok(t);
        }
        const WHAT: &str = "relay mining difficulty at height";
        let res = query!(
            self,
            WHAT,
            service::query_client::QueryClient<tonic::transport::Channel>,
            relay_mining_difficulty_at_height,
            service::QueryGetRelayMiningDifficultyAtHeightRequest {
                service_id: service_id.to_string(),
                block_height: height,
            }
        )?;
        let t = target(WHAT, res.relay_mining_difficulty)?;
        remember(&self.difficulty_at, key, t);
        Ok(t)
    }

    /// `pocket.service.Query/ComputeUnitsPerRelayAtHeight` (cached).
    pub async fn compute_units_per_relay_at(
        &self,
        service_id: &str,
        height: i64,
    ) -> Result<u64, QueryError> {
        let key = (service_id.to_string(), height);
        if let Some(c) = recall(&self.cupr_at, &key) {
            return Ok(c);
        }
        let res = query!(
            self,
            "compute units per relay at height",
            service::query_client::QueryClient<tonic::transport::Channel>,
            compute_units_per_relay_at_height,
            service::QueryGetComputeUnitsPerRelayAtHeightRequest {
                service_id: service_id.to_string(),
                block_height: height,
            }
        )?;
        remember(&self.cupr_at, key, res.compute_units_per_relay);
        Ok(res.compute_units_per_relay)
    }

    /// `pocket.application.Query/Application`; `None` when not staked.
    pub async fn application(
        &self,
        address: &str,
    ) -> Result<Option<application::Application>, QueryError> {
        let res = optional(query!(
            self,
            "application query",
            application::query_client::QueryClient<tonic::transport::Channel>,
            application,
            application::QueryGetApplicationRequest {
                address: address.to_string(),
            }
        ))?;
        Ok(res.and_then(|r| r.application))
    }

    /// `pocket.supplier.Query/Supplier`; `None` when not staked.
    pub async fn supplier(&self, operator: &str) -> Result<Option<shared::Supplier>, QueryError> {
        let res = optional(query!(
            self,
            "supplier query",
            supplier::query_client::QueryClient<tonic::transport::Channel>,
            supplier,
            supplier::QueryGetSupplierRequest {
                operator_address: operator.to_string(),
            }
        ))?;
        Ok(res.and_then(|r| r.supplier))
    }

    /// `pocket.proof.Query/Claim`; `None` when the supplier has no claim for the session
    /// (used on restart to find what was already claimed).
    pub async fn claim(
        &self,
        session_id: &str,
        operator: &str,
    ) -> Result<Option<proof::Claim>, QueryError> {
        let res = optional(query!(
            self,
            "claim query",
            proof::query_client::QueryClient<tonic::transport::Channel>,
            claim,
            proof::QueryGetClaimRequest {
                session_id: session_id.to_string(),
                supplier_operator_address: operator.to_string(),
            }
        ))?;
        Ok(res.and_then(|r| r.claim))
    }
}

/// Where the chain is with a claim's proof (poktroll's `ClaimProofStatus`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ProofStatus {
    /// No proof validated yet (none submitted, or one waiting for the end of its block).
    PendingValidation,
    /// A proof was submitted and the chain found it valid.
    Validated,
    /// A proof was submitted and the chain found it invalid.
    Invalid,
}

impl ProofStatus {
    /// The status of a claim as the chain answers it (an unknown value counts as
    /// pending).
    pub fn of(claim: &proof::Claim) -> Self {
        match claim.proof_validation_status {
            1 => Self::Validated,
            2 => Self::Invalid,
            _ => Self::PendingValidation,
        }
    }
}

impl PocketQuery {
    /// An account's public key (cached: it never changes once known).
    pub async fn public_key(&self, address: &str) -> Result<PublicKey, KeyError> {
        if address == placeholder_address() {
            return Ok(placeholder_key());
        }
        if let Some(k) = recall(&self.public_keys, &address.to_string()) {
            return Ok(k);
        }
        let k = self
            .grpc
            .account(address)
            .await?
            .public_key
            .ok_or_else(|| KeyError::NoPublicKey(address.to_string()))?;
        remember(&self.public_keys, address.to_string(), k);
        Ok(k)
    }

    /// The public keys of an application's ring for a session ending at `session_end`
    /// (the application, its gateways, pending undelegations; spec §2.4), in ring order.
    pub async fn ring_keys(
        &self,
        app: &application::Application,
        session_end: i64,
    ) -> Result<Vec<PublicKey>, KeyError> {
        let pending: Vec<(i64, &str)> = app
            .pending_undelegations
            .iter()
            .flat_map(|(h, l)| {
                l.gateway_addresses
                    .iter()
                    .map(move |g| (*h as i64, g.as_str()))
            })
            .collect();
        let members = ring_addresses(
            &app.address,
            app.delegatee_gateway_addresses.iter().map(String::as_str),
            pending,
            session_end,
        );
        let mut keys = Vec::with_capacity(members.len());
        for m in &members {
            keys.push(self.public_key(m).await?);
        }
        Ok(keys)
    }
}

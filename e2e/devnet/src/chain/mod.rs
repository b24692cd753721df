//! The chain itself: state and blocks here; transaction execution with poktroll's rules
//! split the way poktroll splits its modules: [`ante`] (signatures, sequences, fees),
//! [`session`], [`supplier`] (staking), [`proof`] (claims and proofs) and [`tokenomics`]
//! (the end of every block: proof validation, settlement, relay mining difficulty).
//!
//! Everything here is synchronous and deterministic for a given seed and sequence of
//! transactions; the servers in [`crate::rpc`] and [`crate::grpc`] only translate.

use std::collections::{BTreeMap, HashMap};

use lode_kernels::claim::{ProofParams, claim_hash, proof_requirement};
use lode_kernels::crypto::ring::{AppRing, placeholder_key, ring_addresses};
use lode_kernels::crypto::{PublicKey, SecretKey};
use lode_kernels::mining::{
    Pricing, claim_sum_is_valid, claimed_upokt, new_difficulty_target, relays_ema,
};
use lode_kernels::proto::cosmos::{
    self, AuthInfo, MSG_CREATE_CLAIM_TYPE_URL, MSG_STAKE_SUPPLIER_TYPE_URL,
    MSG_SUBMIT_PROOF_TYPE_URL, MSG_UNSTAKE_SUPPLIER_TYPE_URL, MsgStakeSupplier, MsgUnstakeSupplier,
    SECP256K1_PUBKEY_TYPE_URL, Secp256k1PubKey, SupplierServiceConfig, TxBody, TxRaw,
};
use lode_kernels::proto::{Claim, Message, MsgCreateClaim, MsgSubmitProof, Relay, SessionHeader};
use lode_kernels::relay::{
    BASE_TARGET, is_mined, relay_hash, verify_mined_response, verify_request,
};
use lode_kernels::session::{
    SharedParams, proof_path, session_id, session_id_preimage, suppliers_by_weight,
};
use lode_kernels::smst::{
    self, SparseCompactMerkleClosestProof, decompact_closest_proof, verify_closest_proof,
};
use sha2::{Digest, Sha256};

mod ante;
mod proof;
mod session;
mod supplier;
mod tokenomics;

/// The bech32 prefix of every address.
pub const HRP: &str = "pokt";
/// The only denomination.
pub const DENOM: &str = "upokt";

/// A Cosmos-style failure: codespace, code and log, as CheckTx/DeliverTx report them.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{log} (codespace {codespace}, code {code})")]
pub struct TxError {
    pub codespace: &'static str,
    pub code: u32,
    pub log: String,
}

fn sdk(code: u32, log: impl Into<String>) -> TxError {
    TxError {
        codespace: "sdk",
        code,
        log: log.into(),
    }
}

/// poktroll's proof-module errors (`x/proof/types/errors.go`), by their registered codes.
fn proof_err(code: u32, what: &str, detail: impl std::fmt::Display) -> TxError {
    TxError {
        codespace: "proof",
        code,
        log: format!("{detail}: {what}"),
    }
}

/// The supplier module's errors.
fn supplier_err(code: u32, what: &str, detail: impl std::fmt::Display) -> TxError {
    TxError {
        codespace: "supplier",
        code,
        log: format!("{detail}: {what}"),
    }
}

const INVALID_PROOF: (u32, &str) = (1108, "invalid proof");
const INVALID_RELAY: (u32, &str) = (1109, "invalid relay");
const INVALID_RELAY_REQUEST: (u32, &str) = (1110, "invalid relay request");
const INVALID_RELAY_RESPONSE: (u32, &str) = (1111, "invalid relay response");
const CLAIM_NOT_FOUND: (u32, &str) = (1106, "claim not found");
const SUPPLIER_NOT_FOUND: (u32, &str) = (1102, "supplier not found");
const INVALID_ROOT: (u32, &str) = (1104, "invalid root hash");
const INVALID_SESSION_ID: (u32, &str) = (1116, "invalid session ID");
const INVALID_SESSION_END: (u32, &str) = (1117, "invalid session end height");
const INVALID_SESSION_START: (u32, &str) = (1118, "invalid session start height");
const INVALID_SESSION_HEADER: (u32, &str) = (1115, "invalid session header");
const CLAIM_OUTSIDE_WINDOW: (u32, &str) = (
    1121,
    "claim attempted outside of the session's claim window",
);
const PROOF_OUTSIDE_WINDOW: (u32, &str) = (
    1122,
    "proof attempted outside of the session's proof window",
);
const COMPUTE_UNITS_MISMATCH: (u32, &str) = (
    1126,
    "mismatch: claim compute units != number of relays * service compute units per relay",
);

fn perr(e: (u32, &str), detail: impl std::fmt::Display) -> TxError {
    proof_err(e.0, e.1, detail)
}

/// A service and how its relays are priced and mined.
#[derive(Clone, Debug)]
pub struct ServiceDef {
    pub id: String,
    pub name: String,
    pub compute_units_per_relay: u64,
    /// Relays per session the difficulty aims for (poktroll's `target_num_relays`).
    pub target_num_relays: u64,
    pub owner: String,
}

/// Everything configurable at genesis.
#[derive(Clone, Debug)]
pub struct Genesis {
    pub chain_id: String,
    pub seed: u64,
    pub shared: SharedParams,
    pub pricing: Pricing,
    pub proof: ProofParams,
    pub proof_missing_penalty: u128,
    pub proof_submission_fee: u128,
    pub num_suppliers_per_session: u64,
    pub supplier_min_stake: u128,
    pub supplier_unbonding_period_sessions: u64,
    pub services: Vec<ServiceDef>,
    /// Applications: key, stake, service, delegated gateway addresses.
    pub applications: Vec<(SecretKey, u128, String, Vec<String>)>,
    pub gateways: Vec<(SecretKey, u128)>,
    /// Funded accounts (suppliers' operators and owners, anyone else).
    pub accounts: Vec<(SecretKey, u128)>,
}

/// An account: number, sequence, public key once known, balance.
#[derive(Clone, Debug, Default)]
pub struct Account {
    pub number: u64,
    pub sequence: u64,
    pub pub_key: Option<PublicKey>,
    pub balance: u128,
}

/// One service config of a supplier and when it is active.
#[derive(Clone, Debug)]
pub struct ServiceConfigUpdate {
    pub service: SupplierServiceConfig,
    pub activation_height: i64,
    /// 0 while active.
    pub deactivation_height: i64,
}

impl ServiceConfigUpdate {
    fn active_at(&self, h: i64) -> bool {
        self.activation_height <= h
            && (self.deactivation_height == 0 || h < self.deactivation_height)
    }
}

#[derive(Clone, Debug)]
pub struct SupplierState {
    pub owner: String,
    pub operator: String,
    pub stake: u128,
    pub services: Vec<SupplierServiceConfig>,
    pub history: Vec<ServiceConfigUpdate>,
    /// 0 unless unbonding.
    pub unstake_session_end_height: u64,
}

#[derive(Clone, Debug)]
pub struct ApplicationState {
    pub address: String,
    pub stake: u128,
    pub service_id: String,
    pub delegatees: Vec<String>,
}

#[derive(Clone, Debug)]
pub struct GatewayState {
    pub address: String,
    pub stake: u128,
}

/// A claim with what settlement needs.
#[derive(Clone, Debug)]
pub struct ClaimState {
    pub claim: Claim,
    /// Set when a proof was submitted; validated at the end of that block.
    pub proof: Option<Vec<u8>>,
    pub proof_height: i64,
}

/// The relay mining difficulty of a service from `height` on.
#[derive(Clone, Debug)]
pub struct Difficulty {
    pub block_height: i64,
    pub num_relays_ema: u64,
    pub target: [u8; 32],
}

/// What happened to a claim at settlement (or when its proof was checked).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Settlement {
    pub height: i64,
    pub session_id: String,
    pub supplier: String,
    pub application: String,
    pub service_id: String,
    pub num_relays: u64,
    pub compute_units: u64,
    /// uPOKT minted to the supplier's revenue shares (0 when not paid).
    pub reward: u128,
    /// uPOKT slashed from the supplier's stake.
    pub slashed: u128,
    /// `settled`, `expired` (proof missing or invalid), with the reason.
    pub outcome: String,
}

/// An event emitted in a block (CometBFT's `finalize_block_events` / tx events).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Event {
    pub kind: String,
    pub attributes: Vec<(String, String)>,
}

/// The result of a transaction in a block.
#[derive(Clone, Debug)]
pub struct TxOutcome {
    pub height: i64,
    pub index: u32,
    pub code: u32,
    pub codespace: String,
    pub log: String,
    pub gas_wanted: u64,
    pub gas_used: u64,
    pub signer: String,
    pub tx: Vec<u8>,
    pub events: Vec<Event>,
}

#[derive(Clone, Debug)]
pub struct BlockInfo {
    pub height: i64,
    pub hash: [u8; 32],
    pub time_unix_ms: u64,
    pub txs: Vec<String>,
    pub end_events: Vec<Event>,
}

/// The parts of state a transaction can change: cloned before running a transaction's
/// messages and restored when one fails (transactions are atomic).
#[derive(Clone, Debug, Default)]
pub struct Modules {
    pub accounts: BTreeMap<String, Account>,
    pub suppliers: BTreeMap<String, SupplierState>,
    pub applications: BTreeMap<String, ApplicationState>,
    pub gateways: BTreeMap<String, GatewayState>,
    /// By (session id, supplier operator).
    pub claims: BTreeMap<(String, String), ClaimState>,
    pub next_account_number: u64,
}

/// The whole chain.
#[derive(Debug)]
pub struct Chain {
    pub genesis: Genesis,
    pub m: Modules,
    pub services: BTreeMap<String, ServiceDef>,
    /// Per service, every difficulty change in height order.
    pub difficulty: BTreeMap<String, Vec<Difficulty>>,
    pub blocks: Vec<BlockInfo>,
    pub txs: HashMap<String, TxOutcome>,
    pub mempool: Vec<Vec<u8>>,
    /// Sequences as CheckTx sees them (committed state plus the mempool).
    check_sequences: HashMap<String, u64>,
    pub settlements: Vec<Settlement>,
    /// Relays settled per service since the last difficulty update.
    settled_relays: BTreeMap<String, u64>,
    /// Fault injection: CheckTx refuses this many of the next transactions as a full
    /// mempool would (code 20).
    pub refuse_next_txs: u32,
    /// `GetSession` queries answered (tests measure a client's load on the node with it).
    pub session_queries: u64,
    /// Fault injection: `GetSession` answers this much later (a slow node).
    pub session_query_delay: std::time::Duration,
}

/// Gas a transaction of `len` bytes with `msgs` messages uses.
pub fn gas_used(len: usize, msgs: usize) -> u64 {
    40_000 + 30_000 * msgs as u64 + 10 * len as u64
}

fn address_of(k: &PublicKey) -> String {
    k.address().to_bech32(HRP)
}

impl Chain {
    pub fn new(genesis: Genesis) -> Self {
        let mut chain = Self {
            m: Modules::default(),
            services: genesis
                .services
                .iter()
                .map(|s| (s.id.clone(), s.clone()))
                .collect(),
            difficulty: BTreeMap::new(),
            blocks: Vec::new(),
            txs: HashMap::new(),
            mempool: Vec::new(),
            check_sequences: HashMap::new(),
            settlements: Vec::new(),
            settled_relays: BTreeMap::new(),
            refuse_next_txs: 0,
            session_queries: 0,
            session_query_delay: std::time::Duration::ZERO,
            genesis,
        };
        let g = chain.genesis.clone();
        for (key, balance) in &g.accounts {
            chain.fund(&address_of(&key.public_key()), *balance);
        }
        for (key, stake) in &g.gateways {
            let address = address_of(&key.public_key());
            chain.fund(&address, 0);
            chain.m.accounts.get_mut(&address).expect("funded").pub_key = Some(key.public_key());
            chain.m.gateways.insert(
                address.clone(),
                GatewayState {
                    address,
                    stake: *stake,
                },
            );
        }
        for (key, stake, service, delegatees) in &g.applications {
            let address = address_of(&key.public_key());
            chain.fund(&address, 0);
            chain.m.accounts.get_mut(&address).expect("funded").pub_key = Some(key.public_key());
            chain.m.applications.insert(
                address.clone(),
                ApplicationState {
                    address,
                    stake: *stake,
                    service_id: service.clone(),
                    delegatees: delegatees.clone(),
                },
            );
        }
        // Block 1, the genesis block.
        chain.commit(Vec::new(), 0);
        chain
    }
    fn fund(&mut self, address: &str, amount: u128) {
        let next = &mut self.m.next_account_number;
        let acc = self
            .m
            .accounts
            .entry(address.to_string())
            .or_insert_with(|| {
                let a = Account {
                    number: *next,
                    ..Default::default()
                };
                *next += 1;
                a
            });
        acc.balance += amount;
    }
    pub fn height(&self) -> i64 {
        self.blocks.len() as i64
    }
    pub fn block(&self, height: i64) -> Option<&BlockInfo> {
        usize::try_from(height - 1)
            .ok()
            .and_then(|i| self.blocks.get(i))
    }
    pub fn block_hash(&self, height: i64) -> Vec<u8> {
        self.block(height)
            .map(|b| b.hash.to_vec())
            .unwrap_or_default()
    }
    pub fn shared(&self) -> SharedParams {
        self.genesis.shared
    }
    /// The difficulty target of a service in effect at `height`.
    pub fn difficulty_at(&self, service_id: &str, height: i64) -> Difficulty {
        self.difficulty
            .get(service_id)
            .and_then(|v| v.iter().rev().find(|d| d.block_height <= height))
            .cloned()
            .unwrap_or(Difficulty {
                block_height: 0,
                num_relays_ema: 0,
                target: BASE_TARGET,
            })
    }
    /// Produces the next block: delivers the mempool, runs the end of block, commits.
    pub fn produce_block(&mut self, time_unix_ms: u64) -> i64 {
        let h = self.height() + 1;
        let txs = std::mem::take(&mut self.mempool);
        self.check_sequences.clear();
        let mut hashes = Vec::new();
        for (index, tx) in txs.into_iter().enumerate() {
            let hash = cosmos::tx_hash(&tx);
            let outcome = self.deliver_tx(h, index as u32, tx);
            self.txs.insert(hash.clone(), outcome);
            hashes.push(hash);
        }
        let end_events = self.end_block(h);
        self.commit_with(hashes, end_events, time_unix_ms);
        h
    }
    fn commit(&mut self, txs: Vec<String>, time_unix_ms: u64) {
        self.commit_with(txs, Vec::new(), time_unix_ms);
    }
    fn commit_with(&mut self, txs: Vec<String>, end_events: Vec<Event>, time_unix_ms: u64) {
        let height = self.height() + 1;
        let prev = self.blocks.last().map(|b| b.hash).unwrap_or([0; 32]);
        let mut h = Sha256::new();
        h.update(self.genesis.chain_id.as_bytes());
        h.update(self.genesis.seed.to_be_bytes());
        h.update(height.to_be_bytes());
        h.update(prev);
        for t in &txs {
            h.update(t.as_bytes());
        }
        self.blocks.push(BlockInfo {
            height,
            hash: h.finalize().into(),
            time_unix_ms,
            txs,
            end_events,
        });
    }
    fn deliver_tx(&mut self, h: i64, index: u32, tx: Vec<u8>) -> TxOutcome {
        let mut outcome = TxOutcome {
            height: h,
            index,
            code: 0,
            codespace: String::new(),
            log: String::new(),
            gas_wanted: 0,
            gas_used: 0,
            signer: String::new(),
            tx: tx.clone(),
            events: Vec::new(),
        };
        let mut after_ante = self.m.clone();
        let checked = match self.ante(&mut after_ante, &tx, None, true) {
            Ok(c) => c,
            Err(e) => {
                outcome.code = e.code;
                outcome.codespace = e.codespace.into();
                outcome.log = e.log;
                return outcome;
            }
        };
        outcome.signer = checked.signer.clone();
        outcome.gas_wanted = checked.gas_limit;
        outcome.gas_used = checked.gas_used;
        if checked.gas_limit < checked.gas_used {
            // The fee is spent and the sequence used even when the messages do not run.
            self.m = after_ante;
            outcome.code = 11;
            outcome.codespace = "sdk".into();
            outcome.log = format!(
                "out of gas: gasWanted: {}, gasUsed: {}",
                checked.gas_limit, checked.gas_used
            );
            return outcome;
        }
        let mut state = after_ante.clone();
        let mut events = vec![Event {
            kind: "message".into(),
            attributes: vec![("sender".into(), checked.signer.clone())],
        }];
        for (i, any) in checked.body.messages.iter().enumerate() {
            if let Err(e) = self.deliver_msg(&mut state, h, &any.type_url, &any.value, &mut events)
            {
                self.m = after_ante;
                outcome.code = e.code;
                outcome.codespace = e.codespace.into();
                outcome.log = format!("failed to execute message; message index: {i}: {}", e.log);
                return outcome;
            }
        }
        let _ = (checked.fee, checked.pub_key);
        self.m = state;
        outcome.events = events;
        outcome.log = "[]".into();
        outcome
    }
    fn deliver_msg(
        &self,
        m: &mut Modules,
        h: i64,
        type_url: &str,
        value: &[u8],
        events: &mut Vec<Event>,
    ) -> Result<(), TxError> {
        let parse = |e: lode_kernels::proto::ProtoError| sdk(2, format!("tx parse error: {e}"));
        match type_url {
            MSG_STAKE_SUPPLIER_TYPE_URL => self.stake_supplier(
                m,
                h,
                MsgStakeSupplier::decode(value).map_err(parse)?,
                events,
            ),
            MSG_UNSTAKE_SUPPLIER_TYPE_URL => self.unstake_supplier(
                m,
                h,
                MsgUnstakeSupplier::decode(value).map_err(parse)?,
                events,
            ),
            MSG_CREATE_CLAIM_TYPE_URL => {
                self.create_claim(m, h, MsgCreateClaim::decode(value).map_err(parse)?, events)
            }
            MSG_SUBMIT_PROOF_TYPE_URL => {
                self.submit_proof(m, h, MsgSubmitProof::decode(value).map_err(parse)?, events)
            }
            other => Err(sdk(
                6,
                format!("unable to resolve type URL {other}: tx parse error"),
            )),
        }
    }
}

/// A session as hydrated by the chain.
#[derive(Clone, Debug)]
pub struct HydratedSession {
    pub header: SessionHeader,
    pub number: i64,
    pub num_blocks: i64,
    pub suppliers: Vec<String>,
}

//! The chain itself: state, transaction execution with poktroll's rules, and the end of
//! every block (proof validation, settlement, relay mining difficulty).
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

/// The signer a message declares (`cosmos.msg.v1.signer`).
fn declared_signer(type_url: &str, value: &[u8]) -> Result<String, TxError> {
    let bad =
        |e: lode_kernels::proto::ProtoError| sdk(2, format!("tx parse error: {type_url}: {e}"));
    Ok(match type_url {
        MSG_CREATE_CLAIM_TYPE_URL => {
            MsgCreateClaim::decode(value)
                .map_err(bad)?
                .supplier_operator_address
        }
        MSG_SUBMIT_PROOF_TYPE_URL => {
            MsgSubmitProof::decode(value)
                .map_err(bad)?
                .supplier_operator_address
        }
        MSG_STAKE_SUPPLIER_TYPE_URL => MsgStakeSupplier::decode(value).map_err(bad)?.signer,
        MSG_UNSTAKE_SUPPLIER_TYPE_URL => MsgUnstakeSupplier::decode(value).map_err(bad)?.signer,
        other => {
            return Err(sdk(
                6,
                format!("unable to resolve type URL {other}: tx parse error"),
            ));
        }
    })
}

/// A decoded transaction with the facts the ante handler established.
struct Checked {
    body: TxBody,
    signer: String,
    pub_key: PublicKey,
    sequence: u64,
    fee: u128,
    gas_limit: u64,
    gas_used: u64,
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

    /// Session hydration (`x/session/keeper/session_hydrator.go`).
    pub fn session(
        &self,
        application: &str,
        service_id: &str,
        height: i64,
    ) -> Result<HydratedSession, String> {
        if height > self.height() {
            return Err(format!(
                "session block height {height} is greater than the current height {}",
                self.height()
            ));
        }
        let app = self
            .m
            .applications
            .get(application)
            .ok_or_else(|| format!("application {application} not found"))?;
        if app.service_id != service_id {
            return Err(format!(
                "application {application} is not staked for service {service_id}"
            ));
        }
        if !self.services.contains_key(service_id) {
            return Err(format!("service {service_id} not found"));
        }
        let shared = self.shared();
        let start = shared.session_start_height(height);
        let end = shared.session_end_height(height);
        let hash = self.block_hash(start);
        let id = session_id(&hash, service_id, application, start);
        let preimage = session_id_preimage(&hash, service_id, application, start);
        let candidates: Vec<&str> = self
            .m
            .suppliers
            .values()
            .filter(|s| {
                s.history
                    .iter()
                    .any(|u| u.service.service_id == service_id && u.active_at(height))
            })
            .map(|s| s.operator.as_str())
            .collect();
        let n = self.genesis.num_suppliers_per_session as usize;
        let chosen: Vec<String> = if candidates.len() > n {
            suppliers_by_weight(&preimage, candidates)
                .into_iter()
                .take(n)
                .map(str::to_string)
                .collect()
        } else {
            candidates.into_iter().map(str::to_string).collect()
        };
        Ok(HydratedSession {
            header: SessionHeader {
                application_address: application.to_string(),
                service_id: service_id.to_string(),
                session_id: id,
                session_start_block_height: start,
                session_end_block_height: end,
            },
            number: shared.session_number(height),
            num_blocks: shared.num_blocks_per_session,
            suppliers: chosen,
        })
    }

    /// The ring an application's relays are signed with at `height`.
    fn app_ring(&self, application: &str) -> Result<AppRing, String> {
        let app = self
            .m
            .applications
            .get(application)
            .ok_or("application not found")?;
        let addresses = ring_addresses(
            application,
            app.delegatees.iter().map(String::as_str),
            [],
            0,
        );
        let keys: Vec<PublicKey> = addresses
            .iter()
            .map(|a| {
                if *a == lode_kernels::crypto::ring::placeholder_address() {
                    Ok(placeholder_key())
                } else {
                    self.m
                        .accounts
                        .get(a)
                        .and_then(|acc| acc.pub_key)
                        .ok_or_else(|| format!("public key of ring member {a} not found"))
                }
            })
            .collect::<Result<_, _>>()?;
        AppRing::new(&keys).map_err(|e| e.to_string())
    }

    /// Decodes a transaction and runs the ante handler against `m`: signature, sequence,
    /// fee and gas. `check_sig` is off for simulation (as Cosmos nodes do).
    fn ante(
        &self,
        m: &mut Modules,
        tx_bytes: &[u8],
        sequence_override: Option<u64>,
        check_sig: bool,
    ) -> Result<Checked, TxError> {
        let tx = TxRaw::decode(tx_bytes).map_err(|e| sdk(2, format!("tx parse error: {e}")))?;
        let body = TxBody::decode(&tx.body_bytes)
            .map_err(|e| sdk(2, format!("tx parse error: body: {e}")))?;
        let auth = AuthInfo::decode(&tx.auth_info_bytes)
            .map_err(|e| sdk(2, format!("tx parse error: auth info: {e}")))?;
        if body.messages.is_empty() {
            return Err(sdk(
                18,
                "must contain at least one message: invalid request",
            ));
        }
        let [info] = auth.signer_infos.as_slice() else {
            return Err(sdk(
                4,
                format!(
                    "wrong number of signers; expected 1, got {}: unauthorized",
                    auth.signer_infos.len()
                ),
            ));
        };
        let pk_any = info
            .public_key
            .as_ref()
            .ok_or_else(|| sdk(8, "no public key in signer info: invalid pubkey"))?;
        if pk_any.type_url != SECP256K1_PUBKEY_TYPE_URL {
            return Err(sdk(
                8,
                format!(
                    "unsupported public key type {}: invalid pubkey",
                    pk_any.type_url
                ),
            ));
        }
        let pk = Secp256k1PubKey::decode(&pk_any.value)
            .ok()
            .and_then(|k| PublicKey::from_sec1(&k.key).ok())
            .ok_or_else(|| sdk(8, "malformed secp256k1 public key: invalid pubkey"))?;
        let signer = address_of(&pk);
        for (i, any) in body.messages.iter().enumerate() {
            let declared = declared_signer(&any.type_url, &any.value)?;
            if declared != signer {
                return Err(sdk(
                    8,
                    format!(
                        "pubKey does not match signer address {declared} with signer index: {i}: invalid pubkey"
                    ),
                ));
            }
        }
        let h = self.height() + 1;
        if body.timeout_height != 0 && h as u64 > body.timeout_height {
            return Err(sdk(
                30,
                format!(
                    "block height: {h}, timeout height: {}: tx timeout height",
                    body.timeout_height
                ),
            ));
        }
        let acc = m
            .accounts
            .get(&signer)
            .cloned()
            .ok_or_else(|| sdk(9, format!("account {signer} not found: unknown address")))?;
        let expected = sequence_override.unwrap_or(acc.sequence);
        if info.sequence != expected {
            return Err(sdk(
                32,
                format!(
                    "account sequence mismatch, expected {expected}, got {}: incorrect account sequence",
                    info.sequence
                ),
            ));
        }
        if check_sig {
            if let Some(known) = acc.pub_key
                && known != pk
            {
                return Err(sdk(
                    8,
                    format!("pubKey does not match signer address {signer}: invalid pubkey"),
                ));
            }
            if !cosmos::verify_tx(&tx, &pk, &self.genesis.chain_id, acc.number) {
                return Err(sdk(
                    4,
                    format!(
                        "signature verification failed; please verify account number ({}) and chain-id ({}): unauthorized",
                        acc.number, self.genesis.chain_id
                    ),
                ));
            }
        }
        let fee_info = auth.fee.unwrap_or_default();
        let mut fee = 0u128;
        for c in &fee_info.amount {
            if c.denom != DENOM {
                return Err(sdk(
                    13,
                    format!("fee denom {} is not {DENOM}: insufficient fee", c.denom),
                ));
            }
            fee += c.amount.parse::<u128>().map_err(|_| {
                sdk(
                    10,
                    format!("invalid fee amount {:?}: invalid coins", c.amount),
                )
            })?;
        }
        if acc.balance < fee {
            return Err(sdk(
                5,
                format!(
                    "{} {DENOM} is smaller than {fee} {DENOM}: insufficient funds",
                    acc.balance
                ),
            ));
        }
        let used = gas_used(tx_bytes.len(), body.messages.len());
        let a = m.accounts.get_mut(&signer).expect("checked above");
        a.balance -= fee;
        a.sequence += 1;
        a.pub_key = Some(pk);
        Ok(Checked {
            signer,
            pub_key: pk,
            sequence: info.sequence,
            fee,
            gas_limit: fee_info.gas_limit,
            gas_used: used,
            body,
        })
    }

    /// CheckTx: the ante handler against committed state plus the mempool. On success the
    /// transaction joins the mempool for the next block.
    pub fn check_tx(&mut self, tx_bytes: &[u8]) -> Result<String, TxError> {
        let hash = cosmos::tx_hash(tx_bytes);
        if self.txs.contains_key(&hash) || self.mempool.iter().any(|t| t == tx_bytes) {
            return Err(sdk(19, "tx already exists in cache"));
        }
        if self.refuse_next_txs > 0 {
            self.refuse_next_txs -= 1;
            return Err(sdk(20, "mempool is full (devnet fault injection)"));
        }
        let mut scratch = self.m.clone();
        let pending = {
            let tx = TxRaw::decode(tx_bytes).ok();
            let signer = tx
                .and_then(|t| AuthInfo::decode(&t.auth_info_bytes).ok())
                .and_then(|a| a.signer_infos.first().cloned())
                .and_then(|i| i.public_key)
                .and_then(|k| Secp256k1PubKey::decode(&k.value).ok())
                .and_then(|k| PublicKey::from_sec1(&k.key).ok())
                .map(|k| address_of(&k));
            signer.and_then(|s| self.check_sequences.get(&s).copied())
        };
        let checked = self.ante(&mut scratch, tx_bytes, pending, true)?;
        if checked.gas_limit < checked.gas_used {
            return Err(sdk(
                11,
                format!(
                    "out of gas: gasWanted: {}, gasUsed: {}",
                    checked.gas_limit, checked.gas_used
                ),
            ));
        }
        self.check_sequences
            .insert(checked.signer, checked.sequence + 1);
        self.mempool.push(tx_bytes.to_vec());
        Ok(hash)
    }

    /// Forgets the sequences of transactions that are no longer in the mempool.
    pub fn forget_pending(&mut self) {
        self.check_sequences.clear();
    }

    /// Simulation: the ante handler (without signature checks) and the messages against
    /// a copy of the state at the next height. Returns the gas used.
    pub fn simulate(&self, tx_bytes: &[u8]) -> Result<u64, TxError> {
        let mut scratch = self.m.clone();
        let checked = self.ante(&mut scratch, tx_bytes, None, false)?;
        let mut events = Vec::new();
        for (i, any) in checked.body.messages.iter().enumerate() {
            self.deliver_msg(
                &mut scratch,
                self.height() + 1,
                &any.type_url,
                &any.value,
                &mut events,
            )
            .map_err(|e| TxError {
                log: format!("failed to execute message; message index: {i}: {}", e.log),
                ..e
            })?;
        }
        Ok(checked.gas_used)
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

    fn stake_supplier(
        &self,
        m: &mut Modules,
        h: i64,
        msg: MsgStakeSupplier,
        events: &mut Vec<Event>,
    ) -> Result<(), TxError> {
        const INVALID_STAKE: u32 = 1103;
        const INVALID_SERVICE: u32 = 1104;
        const UNAUTHORIZED: u32 = 1106;
        if msg.owner_address.is_empty() || msg.operator_address.is_empty() {
            return Err(supplier_err(
                1101,
                "invalid address",
                "owner and operator addresses are required",
            ));
        }
        if msg.signer != msg.owner_address && msg.signer != msg.operator_address {
            return Err(supplier_err(
                UNAUTHORIZED,
                "unauthorized supplier signer",
                format!(
                    "signer {} is neither the owner nor the operator",
                    msg.signer
                ),
            ));
        }
        let stake = msg.stake.as_ref().ok_or_else(|| {
            supplier_err(INVALID_STAKE, "invalid supplier stake", "stake is required")
        })?;
        if stake.denom != DENOM {
            return Err(supplier_err(
                INVALID_STAKE,
                "invalid supplier stake",
                format!("denom {} is not {DENOM}", stake.denom),
            ));
        }
        let amount: u128 = stake.amount.parse().map_err(|_| {
            supplier_err(
                INVALID_STAKE,
                "invalid supplier stake",
                format!("amount {:?} is not an integer", stake.amount),
            )
        })?;
        if amount < self.genesis.supplier_min_stake {
            return Err(supplier_err(
                INVALID_STAKE,
                "invalid supplier stake",
                format!(
                    "stake {amount}{DENOM} is below the minimum {}{DENOM}",
                    self.genesis.supplier_min_stake
                ),
            ));
        }
        if msg.services.is_empty() {
            return Err(supplier_err(
                INVALID_SERVICE,
                "invalid service config",
                "at least one service is required",
            ));
        }
        for s in &msg.services {
            if !self.services.contains_key(&s.service_id) {
                return Err(supplier_err(
                    INVALID_SERVICE,
                    "invalid service config",
                    format!("service {:?} not found", s.service_id),
                ));
            }
            if s.endpoints.is_empty() || s.endpoints.iter().any(|e| e.url.is_empty()) {
                return Err(supplier_err(
                    INVALID_SERVICE,
                    "invalid service config",
                    format!("service {:?} needs an endpoint URL", s.service_id),
                ));
            }
        }
        // Changes take effect at the next session start: a session's suppliers never
        // change while it runs.
        let activation = self.shared().session_end_height(h) + 1;
        let existing = m.suppliers.get(&msg.operator_address).cloned();
        let previous_stake = existing.as_ref().map_or(0, |s| s.stake);
        if let Some(s) = &existing
            && s.owner != msg.owner_address
        {
            return Err(supplier_err(
                UNAUTHORIZED,
                "unauthorized supplier signer",
                "the owner of a staked supplier cannot be changed",
            ));
        }
        if amount < previous_stake {
            return Err(supplier_err(
                INVALID_STAKE,
                "invalid supplier stake",
                format!("stake {amount}{DENOM} is below the current stake {previous_stake}{DENOM}"),
            ));
        }
        let owner = m.accounts.get_mut(&msg.owner_address).ok_or_else(|| {
            sdk(
                5,
                format!(
                    "owner {} has no funds: insufficient funds",
                    msg.owner_address
                ),
            )
        })?;
        let due = amount - previous_stake;
        if owner.balance < due {
            return Err(sdk(
                5,
                format!(
                    "{}{DENOM} is smaller than {due}{DENOM}: insufficient funds",
                    owner.balance
                ),
            ));
        }
        owner.balance -= due;
        let mut supplier = existing.unwrap_or(SupplierState {
            owner: msg.owner_address.clone(),
            operator: msg.operator_address.clone(),
            stake: 0,
            services: Vec::new(),
            history: Vec::new(),
            unstake_session_end_height: 0,
        });
        for u in supplier
            .history
            .iter_mut()
            .filter(|u| u.deactivation_height == 0)
        {
            u.deactivation_height = activation;
        }
        supplier
            .history
            .retain(|u| u.deactivation_height == 0 || u.deactivation_height > u.activation_height);
        for s in &msg.services {
            supplier.history.push(ServiceConfigUpdate {
                service: s.clone(),
                activation_height: activation,
                deactivation_height: 0,
            });
        }
        supplier.stake = amount;
        supplier.services = msg.services.clone();
        supplier.unstake_session_end_height = 0;
        m.suppliers.insert(msg.operator_address.clone(), supplier);
        if !m.accounts.contains_key(&msg.operator_address) {
            let number = m.next_account_number;
            m.next_account_number += 1;
            m.accounts.insert(
                msg.operator_address.clone(),
                Account {
                    number,
                    ..Default::default()
                },
            );
        }
        events.push(Event {
            kind: "pocket.supplier.EventSupplierStaked".into(),
            attributes: vec![
                ("operator_address".into(), msg.operator_address),
                ("stake".into(), format!("{amount}{DENOM}")),
                ("session_end_height".into(), (activation - 1).to_string()),
            ],
        });
        Ok(())
    }

    fn unstake_supplier(
        &self,
        m: &mut Modules,
        h: i64,
        msg: MsgUnstakeSupplier,
        events: &mut Vec<Event>,
    ) -> Result<(), TxError> {
        let s = m.suppliers.get_mut(&msg.operator_address).ok_or_else(|| {
            supplier_err(
                1105,
                "supplier not found",
                format!("operator {}", msg.operator_address),
            )
        })?;
        if msg.signer != s.owner && msg.signer != s.operator {
            return Err(supplier_err(
                1106,
                "unauthorized supplier signer",
                format!(
                    "signer {} is neither the owner nor the operator",
                    msg.signer
                ),
            ));
        }
        if s.unstake_session_end_height != 0 {
            return Err(supplier_err(
                1108,
                "supplier is in unbonding period",
                format!("operator {}", msg.operator_address),
            ));
        }
        let end = self.shared().session_end_height(h);
        s.unstake_session_end_height = end as u64;
        for u in s.history.iter_mut().filter(|u| u.deactivation_height == 0) {
            u.deactivation_height = end + 1;
        }
        events.push(Event {
            kind: "pocket.supplier.EventSupplierUnbondingBegin".into(),
            attributes: vec![
                ("operator_address".into(), msg.operator_address),
                ("session_end_height".into(), end.to_string()),
            ],
        });
        Ok(())
    }

    /// The checks every claim and proof share: the header names a real session and the
    /// supplier is in it.
    fn validate_session(
        &self,
        header: Option<&SessionHeader>,
        supplier: &str,
    ) -> Result<SessionHeader, TxError> {
        let header =
            header.ok_or_else(|| perr(INVALID_SESSION_HEADER, "the session header is missing"))?;
        if header.session_start_block_height <= 0
            || header.session_start_block_height > self.height()
        {
            return Err(perr(
                INVALID_SESSION_START,
                format!("session start height {}", header.session_start_block_height),
            ));
        }
        let onchain = self
            .session(
                &header.application_address,
                &header.service_id,
                header.session_start_block_height,
            )
            .map_err(|e| perr(INVALID_SESSION_HEADER, e))?;
        if onchain.header.session_id != header.session_id {
            return Err(perr(
                INVALID_SESSION_ID,
                format!(
                    "session ID does not match onchain session ID; expected {:?}, got {:?}",
                    onchain.header.session_id, header.session_id
                ),
            ));
        }
        if onchain.header.session_start_block_height != header.session_start_block_height {
            return Err(perr(
                INVALID_SESSION_START,
                format!(
                    "expected {}, got {}",
                    onchain.header.session_start_block_height, header.session_start_block_height
                ),
            ));
        }
        if onchain.header.session_end_block_height != header.session_end_block_height {
            return Err(perr(
                INVALID_SESSION_END,
                format!(
                    "expected {}, got {}",
                    onchain.header.session_end_block_height, header.session_end_block_height
                ),
            ));
        }
        if !onchain.suppliers.iter().any(|s| s == supplier) {
            return Err(perr(
                SUPPLIER_NOT_FOUND,
                format!(
                    "supplier operator address {supplier:?} not found in session ID {:?}",
                    header.session_id
                ),
            ));
        }
        Ok(onchain.header)
    }

    fn create_claim(
        &self,
        m: &mut Modules,
        h: i64,
        msg: MsgCreateClaim,
        events: &mut Vec<Event>,
    ) -> Result<(), TxError> {
        let header =
            self.validate_session(msg.session_header.as_ref(), &msg.supplier_operator_address)?;
        let w = self.shared().windows(header.session_end_block_height);
        if h < w.earliest_supplier_claim_commit_height {
            return Err(perr(
                CLAIM_OUTSIDE_WINDOW,
                format!(
                    "current block height ({h}) is less than the session's earliest claim commit height ({})",
                    w.earliest_supplier_claim_commit_height
                ),
            ));
        }
        if h > w.claim_window_close_height {
            return Err(perr(
                CLAIM_OUTSIDE_WINDOW,
                format!(
                    "current block height ({h}) is greater than session claim window close height ({})",
                    w.claim_window_close_height
                ),
            ));
        }
        if msg.root_hash.len() != smst::DIGEST_LEN {
            return Err(perr(
                INVALID_ROOT,
                format!(
                    "root hash has {} bytes, expected {}",
                    msg.root_hash.len(),
                    smst::DIGEST_LEN
                ),
            ));
        }
        let (count, sum) = (smst::count_of(&msg.root_hash), smst::sum_of(&msg.root_hash));
        let cupr = self.services[&header.service_id].compute_units_per_relay;
        if count == 0 || sum == 0 {
            return Err(perr(INVALID_ROOT, "the claim has no relays"));
        }
        if !claim_sum_is_valid(sum, count, cupr) {
            return Err(perr(
                COMPUTE_UNITS_MISMATCH,
                format!("claim compute units {sum} != {count} relays × {cupr}"),
            ));
        }
        let key = (
            header.session_id.clone(),
            msg.supplier_operator_address.clone(),
        );
        // poktroll upserts: a second claim for the same session replaces the first, so a
        // session is never claimed (or paid) twice.
        let updated = m.claims.contains_key(&key);
        m.claims.insert(
            key,
            ClaimState {
                claim: Claim {
                    supplier_operator_address: msg.supplier_operator_address.clone(),
                    session_header: msg.session_header.clone(),
                    root_hash: msg.root_hash.clone(),
                    proof_validation_status: 0,
                },
                proof: None,
                proof_height: 0,
            },
        );
        events.push(Event {
            kind: if updated {
                "pocket.proof.EventClaimUpdated"
            } else {
                "pocket.proof.EventClaimCreated"
            }
            .into(),
            attributes: vec![
                ("session_id".into(), header.session_id),
                (
                    "supplier_operator_address".into(),
                    msg.supplier_operator_address,
                ),
                ("num_relays".into(), count.to_string()),
                ("num_claimed_compute_units".into(), sum.to_string()),
            ],
        });
        Ok(())
    }

    /// The uPOKT a claim is worth, with difficulty and pricing at the session start.
    fn claim_value(&self, claim: &Claim) -> u128 {
        let header = claim.session_header.clone().unwrap_or_default();
        let target = self
            .difficulty_at(&header.service_id, header.session_start_block_height)
            .target;
        claimed_upokt(
            smst::sum_of(&claim.root_hash),
            &target,
            self.genesis.pricing,
        )
        .unwrap_or(u128::MAX)
    }

    /// Whether the chain requires a proof for `claim`.
    pub fn proof_required(&self, claim: &Claim) -> bool {
        let header = claim.session_header.clone().unwrap_or_default();
        let w = self.shared().windows(header.session_end_block_height);
        let seed = self.block_hash(w.proof_window_open_height - 1);
        let stored = Claim {
            proof_validation_status: 0,
            ..claim.clone()
        };
        proof_requirement(
            self.claim_value(claim),
            &claim_hash(&stored),
            &seed,
            self.genesis.proof,
        )
        .is_required()
    }

    fn submit_proof(
        &self,
        m: &mut Modules,
        h: i64,
        msg: MsgSubmitProof,
        events: &mut Vec<Event>,
    ) -> Result<(), TxError> {
        let header =
            self.validate_session(msg.session_header.as_ref(), &msg.supplier_operator_address)?;
        let w = self.shared().windows(header.session_end_block_height);
        if h < w.earliest_supplier_proof_commit_height {
            return Err(perr(
                PROOF_OUTSIDE_WINDOW,
                format!(
                    "current block height ({h}) is less than session's earliest proof commit height ({})",
                    w.earliest_supplier_proof_commit_height
                ),
            ));
        }
        if h > w.proof_window_close_height {
            return Err(perr(
                PROOF_OUTSIDE_WINDOW,
                format!(
                    "current block height ({h}) is greater than session proof window close height ({})",
                    w.proof_window_close_height
                ),
            ));
        }
        let key = (
            header.session_id.clone(),
            msg.supplier_operator_address.clone(),
        );
        let claim = m.claims.get(&key).ok_or_else(|| {
            perr(
                CLAIM_NOT_FOUND,
                format!(
                    "no claim for session {:?} and supplier {:?}",
                    header.session_id, msg.supplier_operator_address
                ),
            )
        })?;
        if claim.proof.is_some() {
            return Err(perr(
                INVALID_PROOF,
                "a proof was already submitted for this claim",
            ));
        }
        if !self.proof_required(&claim.claim) {
            return Err(TxError {
                codespace: "proof",
                code: 1129,
                log: format!(
                    "proof not required for session {:?}: the claim was neither above the threshold nor sampled",
                    header.session_id
                ),
            });
        }
        let fee = self.genesis.proof_submission_fee;
        let acc = m
            .accounts
            .get_mut(&msg.supplier_operator_address)
            .ok_or_else(|| perr((1124, "account not found"), &msg.supplier_operator_address))?;
        if acc.balance < fee {
            return Err(perr(
                (1127, "not enough funds to submit proof"),
                format!("{} < {fee}", acc.balance),
            ));
        }
        acc.balance -= fee;
        let c = m.claims.get_mut(&key).expect("found above");
        c.proof = Some(msg.proof);
        c.proof_height = h;
        events.push(Event {
            kind: "pocket.proof.EventProofSubmitted".into(),
            attributes: vec![
                ("session_id".into(), header.session_id),
                (
                    "supplier_operator_address".into(),
                    msg.supplier_operator_address,
                ),
            ],
        });
        Ok(())
    }

    /// The chain's proof validation (run at the end of the block that includes the
    /// proof): relay, signatures, difficulty, path from the seed block, closest proof.
    pub fn validate_proof(&self, claim: &Claim, proof_bytes: &[u8]) -> Result<(), TxError> {
        let header = claim.session_header.clone().unwrap_or_default();
        let compact = SparseCompactMerkleClosestProof::from_gob(proof_bytes).map_err(|e| {
            perr(
                INVALID_PROOF,
                format!("failed to unmarshal closest merkle proof: {e}"),
            )
        })?;
        let proof = decompact_closest_proof(&compact)
            .map_err(|e| perr(INVALID_PROOF, format!("failed to decompact proof: {e}")))?;
        let relay_bytes = proof
            .value()
            .ok_or_else(|| perr(INVALID_RELAY, "the proof holds no relay"))?;
        let relay = Relay::decode(relay_bytes)
            .map_err(|e| perr(INVALID_RELAY, format!("failed to unmarshal relay: {e}")))?;
        let (Some(req), Some(res)) = (&relay.req, &relay.res) else {
            return Err(perr(INVALID_RELAY, "relay without a request or a response"));
        };
        if req.meta.session_header.as_ref() != Some(&header) {
            return Err(perr(
                INVALID_RELAY_REQUEST,
                "the relay request's session header differs from the claim's",
            ));
        }
        if res.meta.session_header.as_ref() != Some(&header) {
            return Err(perr(
                INVALID_RELAY_RESPONSE,
                "the relay response's session header differs from the claim's",
            ));
        }
        if req.meta.supplier_operator_address != claim.supplier_operator_address {
            return Err(perr(
                INVALID_RELAY_REQUEST,
                "the relay request names another supplier",
            ));
        }
        let ring = self
            .app_ring(&header.application_address)
            .map_err(|e| perr(INVALID_RELAY_REQUEST, e))?;
        match verify_request(req, &ring) {
            Ok(true) => {}
            Ok(false) => return Err(perr(INVALID_RELAY_REQUEST, "invalid ring signature")),
            Err(e) => {
                return Err(perr(
                    INVALID_RELAY_REQUEST,
                    format!("invalid ring signature: {e}"),
                ));
            }
        }
        let supplier_key = self
            .m
            .accounts
            .get(&claim.supplier_operator_address)
            .and_then(|a| a.pub_key)
            .ok_or_else(|| {
                perr(
                    (1114, "public key not found"),
                    &claim.supplier_operator_address,
                )
            })?;
        if !verify_mined_response(res, &supplier_key) {
            return Err(perr(
                INVALID_RELAY_RESPONSE,
                "invalid supplier signature on the relay response",
            ));
        }
        let target = self
            .difficulty_at(&header.service_id, header.session_start_block_height)
            .target;
        if !is_mined(&relay_hash(relay_bytes), &target) {
            return Err(perr(
                INVALID_RELAY,
                "relay difficulty is below the service's target",
            ));
        }
        let w = self.shared().windows(header.session_end_block_height);
        let expected = proof_path(
            &self.block_hash(w.proof_window_open_height - 1),
            &header.session_id,
        );
        if proof.path != expected {
            return Err(perr(
                INVALID_PROOF,
                format!(
                    "the path of the proof provided ({}) does not match one expected by the onchain protocol ({})",
                    lode_kernels::hex::encode(&proof.path),
                    lode_kernels::hex::encode(&expected)
                ),
            ));
        }
        match verify_closest_proof(&proof, &claim.root_hash) {
            Ok(true) => Ok(()),
            Ok(false) => Err(perr(
                INVALID_PROOF,
                "the proof does not lead to the claimed root",
            )),
            Err(e) => Err(perr(
                INVALID_PROOF,
                format!("failed to verify closest merkle proof: {e}"),
            )),
        }
    }

    fn end_block(&mut self, h: i64) -> Vec<Event> {
        let mut events = Vec::new();
        // Proofs included in this block.
        let submitted: Vec<(String, String)> = self
            .m
            .claims
            .iter()
            .filter(|(_, c)| c.proof.is_some() && c.proof_height == h)
            .map(|(k, _)| k.clone())
            .collect();
        for key in submitted {
            let c = &self.m.claims[&key];
            let verdict = self.validate_proof(&c.claim, c.proof.as_deref().unwrap_or_default());
            let status = if verdict.is_ok() { 1 } else { 2 };
            let mut attributes = vec![
                ("session_id".into(), key.0.clone()),
                ("supplier_operator_address".into(), key.1.clone()),
                (
                    "proof_status".into(),
                    if status == 1 { "VALIDATED" } else { "INVALID" }.to_string(),
                ),
            ];
            if let Err(e) = verdict {
                attributes.push(("failure_reason".into(), e.log));
                attributes.push(("failure_code".into(), e.code.to_string()));
            }
            events.push(Event {
                kind: "pocket.proof.EventProofValidityChecked".into(),
                attributes,
            });
            self.m
                .claims
                .get_mut(&key)
                .expect("exists")
                .claim
                .proof_validation_status = status;
        }
        // Settle the claims whose proof window closed at the previous height.
        let due: Vec<(String, String)> = self
            .m
            .claims
            .iter()
            .filter(|(_, c)| {
                let end = c
                    .claim
                    .session_header
                    .as_ref()
                    .map_or(0, |h| h.session_end_block_height);
                self.shared().windows(end).proof_window_close_height < h
            })
            .map(|(k, _)| k.clone())
            .collect();
        for key in due {
            let c = self.m.claims.remove(&key).expect("exists");
            let s = self.settle(h, c);
            events.push(Event {
                kind: "pocket.tokenomics.EventClaimSettled".into(),
                attributes: vec![
                    ("session_id".into(), s.session_id.clone()),
                    ("supplier_operator_address".into(), s.supplier.clone()),
                    ("num_relays".into(), s.num_relays.to_string()),
                    (
                        "num_claimed_compute_units".into(),
                        s.compute_units.to_string(),
                    ),
                    ("reward_upokt".into(), s.reward.to_string()),
                    ("slashed_upokt".into(), s.slashed.to_string()),
                    ("outcome".into(), s.outcome.clone()),
                ],
            });
            self.settlements.push(s);
        }
        // Difficulty: updated from the relays settled this block, effective from the
        // next session start.
        let settled = std::mem::take(&mut self.settled_relays);
        let next_start = self.shared().session_end_height(h) + 1;
        for (service, relays) in settled {
            let prev = self.difficulty_at(&service, h);
            let ema = relays_ema(prev.num_relays_ema, relays);
            let target_num = self
                .services
                .get(&service)
                .map_or(u64::MAX, |s| s.target_num_relays);
            let d = Difficulty {
                block_height: next_start,
                num_relays_ema: ema,
                target: new_difficulty_target(ema, target_num),
            };
            let v = self.difficulty.entry(service.clone()).or_default();
            v.retain(|x| x.block_height < next_start);
            v.push(d);
        }
        // Unbonded suppliers get their stake back.
        let unbonding = self.genesis.supplier_unbonding_period_sessions as i64
            * self.shared().num_blocks_per_session;
        let done: Vec<String> = self
            .m
            .suppliers
            .values()
            .filter(|s| {
                s.unstake_session_end_height != 0
                    && h > s.unstake_session_end_height as i64 + unbonding
            })
            .map(|s| s.operator.clone())
            .collect();
        for op in done {
            let s = self.m.suppliers.remove(&op).expect("exists");
            self.fund(&s.owner, s.stake);
        }
        events
    }

    fn settle(&mut self, h: i64, c: ClaimState) -> Settlement {
        let header = c.claim.session_header.clone().unwrap_or_default();
        let num_relays = smst::count_of(&c.claim.root_hash);
        let compute_units = smst::sum_of(&c.claim.root_hash);
        let required = self.proof_required(&c.claim);
        let mut s = Settlement {
            height: h,
            session_id: header.session_id.clone(),
            supplier: c.claim.supplier_operator_address.clone(),
            application: header.application_address.clone(),
            service_id: header.service_id.clone(),
            num_relays,
            compute_units,
            reward: 0,
            slashed: 0,
            outcome: String::new(),
        };
        let valid = c.claim.proof_validation_status == 1;
        if required && !valid {
            let penalty = self.genesis.proof_missing_penalty;
            if let Some(sup) = self.m.suppliers.get_mut(&s.supplier) {
                s.slashed = penalty.min(sup.stake);
                sup.stake -= s.slashed;
            }
            s.outcome = if c.proof.is_some() {
                "expired: invalid proof"
            } else {
                "expired: proof missing"
            }
            .into();
            return s;
        }
        let value = self.claim_value(&c.claim);
        let app_stake = self
            .m
            .applications
            .get(&s.application)
            .map_or(0, |a| a.stake);
        let reward = value.min(app_stake);
        if let Some(app) = self.m.applications.get_mut(&s.application) {
            app.stake -= reward;
        }
        // Revenue shares of the supplier's config for this service; the rest (rounding)
        // goes to the owner.
        let (owner, shares) = match self.m.suppliers.get(&s.supplier) {
            Some(sup) => (
                sup.owner.clone(),
                sup.services
                    .iter()
                    .find(|x| x.service_id == s.service_id)
                    .map(|x| x.rev_share.clone())
                    .unwrap_or_default(),
            ),
            None => (s.supplier.clone(), Vec::new()),
        };
        let mut paid = 0u128;
        for share in &shares {
            let part = reward * share.rev_share_percentage as u128 / 100;
            self.fund(&share.address, part);
            paid += part;
        }
        self.fund(&owner, reward - paid);
        s.reward = reward;
        s.outcome = if required {
            "settled: proof validated"
        } else {
            "settled: proof not required"
        }
        .into();
        *self.settled_relays.entry(s.service_id.clone()).or_default() += num_relays;
        s
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

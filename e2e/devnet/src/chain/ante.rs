//! The ante handler: a transaction's signature, signer, sequence, gas and fee checked
//! before its messages run (CheckTx, simulation and DeliverTx share it).

use super::*;

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
pub(super) struct Checked {
    pub(super) body: TxBody,
    pub(super) signer: String,
    pub(super) pub_key: PublicKey,
    pub(super) sequence: u64,
    pub(super) fee: u128,
    pub(super) gas_limit: u64,
    pub(super) gas_used: u64,
}

impl Chain {
    /// Decodes a transaction and runs the ante handler against `m`: signature, sequence,
    /// fee and gas. `check_sig` is off for simulation (as Cosmos nodes do).
    pub(super) fn ante(
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
}

//! The proof module: claims (`MsgCreateClaim`) and proofs (`MsgSubmitProof`) inside
//! their windows, and whether a claim needs a proof.

use super::*;

impl Chain {
    pub(super) fn create_claim(
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
    pub(super) fn submit_proof(
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
}

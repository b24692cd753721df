//! The end of every block: proofs validated, claims settled (rewards minted, missing
//! required proofs slashed), relay mining difficulty adjusted.

use super::*;

impl Chain {
    pub(super) fn end_block(&mut self, h: i64) -> Vec<Event> {
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
    pub(super) fn settle(&mut self, h: i64, c: ClaimState) -> Settlement {
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
    /// The uPOKT a claim is worth, with difficulty and pricing at the session start.
    pub(super) fn claim_value(&self, claim: &Claim) -> u128 {
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
}

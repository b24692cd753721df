//! The claim pass: for every session whose claim window is open, gather the facts and
//! decide with pure functions — [`decide_late`] (the window closed), [`decide_frozen`]
//! (once the store froze the session's root: already claimed? empty?), [`decide_value`]
//! (worth claiming?) — then act: freeze, record, drop, or claim the rest in one
//! transaction per supplier.

use lode_chain::pocket::ProofModuleParams;
use lode_kernels::proto::MsgCreateClaim;
use lode_kernels::proto::cosmos::{self, Any};
use lode_store_api::{SessionInfo, SessionState};

use super::{
    CLAIM_GAS_ESTIMATE, Done, JobReport, PROOF_GAS_ESTIMATE, PassError, StoreAction, done,
};
use super::{JobKind, Lifecycle, Outcome, Pending, key, session_report};

/// What claiming a session worth `value` is expected to cost: the claim's fee, plus the
/// proof's submission fee and gas times the chance a proof will be required.
pub(super) fn expected_cost(
    value: u128,
    proof: &ProofModuleParams,
    gas_price: f64,
    gas_adjustment: f64,
) -> u128 {
    let fee = |gas: u64| (gas as f64 * gas_adjustment * gas_price).ceil();
    let p_proof = if value >= proof.requirement.proof_requirement_threshold {
        1.0
    } else {
        proof.requirement.proof_request_probability.clamp(0.0, 1.0)
    };
    let proof_cost = proof.proof_submission_fee as f64 + fee(PROOF_GAS_ESTIMATE);
    (fee(CLAIM_GAS_ESTIMATE) + p_proof * proof_cost).ceil() as u128
}

/// What to do with one unclaimed session.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) enum Step {
    /// Done with it, without a claim.
    Report(Done),
    /// Claim it.
    Claim,
}

fn report(store: StoreAction, outcome: Outcome, detail: impl Into<String>) -> Step {
    Step::Report(done(store, outcome, detail))
}

/// Past the claim window: recorded as claimed when the chain has the claim anyway,
/// dropped as missed when it does not. `None` while the window is open.
pub(super) fn decide_late(
    height: i64,
    (open, close): (i64, i64),
    on_chain: bool,
    relays: u64,
) -> Option<Done> {
    if height <= close {
        return None;
    }
    Some(if on_chain {
        done(
            StoreAction::MarkClaimed,
            Outcome::AlreadyClaimed,
            "found on chain after the window closed",
        )
    } else {
        done(
            StoreAction::Drop,
            Outcome::Missed,
            format!(
                "the claim window [{open}, {close}] closed (chain at {height}) before the session was claimed: its {relays} relays cannot be paid"
            ),
        )
    })
}

/// Once the session is frozen: already claimed (the chain holds this root), or empty.
/// `None` to go on.
pub(super) fn decide_frozen(on_chain_root: Option<&[u8]>, frozen_root: &[u8]) -> Option<Done> {
    if on_chain_root == Some(frozen_root) {
        return Some(done(
            StoreAction::MarkClaimed,
            Outcome::AlreadyClaimed,
            "the chain has this claim",
        ));
    }
    if lode_kernels::smst::count_of(frozen_root) == 0 {
        return Some(done(
            StoreAction::Drop,
            Outcome::Empty,
            "no relays were mined",
        ));
    }
    None
}

/// Whether a claim worth `value` (or refused by the chain's arithmetic, with why) is
/// worth its expected `cost`.
pub(super) fn decide_value(value: &Result<u128, String>, cost: impl FnOnce(u128) -> u128) -> Step {
    match value {
        Err(why) => report(StoreAction::Keep, Outcome::Failed, why.clone()),
        Ok(v) => {
            let cost = cost(*v);
            if *v <= cost {
                report(
                    StoreAction::Drop,
                    Outcome::Unprofitable,
                    format!("worth {v} uPOKT, expected to cost {cost} uPOKT to claim and prove"),
                )
            } else {
                Step::Claim
            }
        }
    }
}

impl Lifecycle {
    pub(super) async fn claim_pass(&self, report: &mut JobReport) -> Result<(), PassError> {
        report.height = self.height().await?;
        let proof_params = self.query.proof_params().await?;
        for supplier in self.keys.keys() {
            let mut ready = Vec::new();
            for info in self.list(supplier).await? {
                if self.clean_up(supplier, &info).await? || info.state() >= SessionState::Claimed {
                    continue;
                }
                if let Some(r) = self
                    .claim_session(supplier, info, report, &proof_params)
                    .await?
                {
                    ready.push(r);
                }
            }
            if !ready.is_empty() {
                self.send_claims(supplier, ready, report).await?;
            }
        }
        Ok(())
    }

    /// One unclaimed session: `Some` when it is to be claimed now.
    #[tracing::instrument(skip_all, fields(supplier = %supplier, session = tracing::field::Empty))]
    async fn claim_session(
        &self,
        supplier: &str,
        info: SessionInfo,
        report: &mut JobReport,
        proof_params: &ProofModuleParams,
    ) -> Result<Option<Pending>, PassError> {
        let height = report.height;
        let (header, w) = self.header_and_windows(&info, height).await?;
        let id = header.session_id.clone();
        tracing::Span::current().record("session", id.as_str());
        let mut r = session_report(supplier, &info);
        let (open, close) = (w.claim_window_open_height, w.claim_window_close_height);
        if height < open {
            r.set(
                Outcome::NotYet,
                format!("claim window [{open}, {close}] opens later"),
            );
            report.sessions.push(r);
            return Ok(None);
        }
        // Serving pods accept the session's relays until its grace period ends; freezing
        // it earlier would turn away the ones still on their way to the store. Wait for
        // the block after it when the window leaves room.
        let grace = w.grace_period_end_height;
        let height = if height <= grace && grace < close {
            self.next_block(grace).await?
        } else {
            height
        };
        let on_chain = self.query.claim(&id, supplier).await?;
        if let Some(d) = decide_late(height, (open, close), on_chain.is_some(), info.leaves) {
            self.close(supplier, &id, r, d, report).await?;
            return Ok(None);
        }
        let frozen = self
            .store
            .clone()
            .freeze_session(key(supplier, &id))
            .await
            .map_err(|e| PassError::store(format!("freezing session {id}"), e))?
            .into_inner();
        r = session_report(supplier, &frozen);
        let on_chain_root = on_chain.as_ref().map(|c| c.root_hash.as_slice());
        if let Some(d) = decide_frozen(on_chain_root, &frozen.root) {
            r.tx_hash = Some(frozen.claim_tx_hash.clone()).filter(|t| !t.is_empty());
            self.close(supplier, &id, r, d, report).await?;
            return Ok(None);
        }
        let (sum, count) = (
            lode_kernels::smst::sum_of(&frozen.root),
            lode_kernels::smst::count_of(&frozen.root),
        );
        let value = self.claim_value(&header, sum, count).await?;
        r.estimated_reward_upokt = value.as_ref().ok().copied();
        let cost = |v| {
            expected_cost(
                v,
                proof_params,
                self.config.gas_price,
                self.config.gas_adjustment,
            )
        };
        if let Step::Report(d) = decide_value(&value, cost) {
            self.close(supplier, &id, r, d, report).await?;
            return Ok(None);
        }
        let msg = MsgCreateClaim {
            supplier_operator_address: supplier.to_string(),
            session_header: Some(header.clone()),
            root_hash: frozen.root.clone(),
        };
        Ok(Some(Pending {
            report: r,
            msg: Any::pack(cosmos::MSG_CREATE_CLAIM_TYPE_URL, &msg),
            close,
        }))
    }

    /// Sends one supplier's claims in one transaction, most valuable first.
    async fn send_claims(
        &self,
        supplier: &str,
        mut ready: Vec<Pending>,
        report: &mut JobReport,
    ) -> Result<(), PassError> {
        ready.sort_by(|a, b| {
            b.report
                .estimated_reward_upokt
                .cmp(&a.report.estimated_reward_upokt)
        });
        let d = self.deliver(JobKind::Claim, supplier, ready).await?;
        if let Some((sent, claimed)) = d.sent {
            for mut p in claimed {
                let id = p.report.session_id.clone();
                self.mark(supplier, &id, SessionState::Claimed, &sent.hash)
                    .await?;
                p.report.tx_hash = Some(sent.hash.clone());
                p.report.set(
                    Outcome::Claimed,
                    format!("in block {} (fee {} uPOKT)", sent.height, sent.fee),
                );
                report.sessions.push(p.report);
            }
        }
        for mut p in d.landed {
            let id = p.report.session_id.clone();
            self.mark(supplier, &id, SessionState::Claimed, "").await?;
            p.report
                .set(Outcome::AlreadyClaimed, "on chain after a failed attempt");
            report.sessions.push(p.report);
        }
        for (mut p, why) in d.failed {
            p.report.set(Outcome::Failed, format!("claim {why}"));
            report.sessions.push(p.report);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use lode_kernels::claim::ProofParams;

    fn params(threshold: u128, probability: f64, fee: u128) -> ProofModuleParams {
        ProofModuleParams {
            requirement: ProofParams {
                proof_request_probability: probability,
                proof_requirement_threshold: threshold,
            },
            proof_missing_penalty: 0,
            proof_submission_fee: fee,
        }
    }

    fn stored(d: Option<Done>) -> Option<(StoreAction, Outcome)> {
        d.map(|d| (d.store, d.outcome))
    }

    fn step(s: Step) -> Option<(StoreAction, Outcome)> {
        match s {
            Step::Report(d) => Some((d.store, d.outcome)),
            Step::Claim => None,
        }
    }

    #[test]
    fn the_claim_decision_tables() {
        use Outcome::*;
        use StoreAction::*;
        // The window: [12, 16].
        assert_eq!(stored(decide_late(16, (12, 16), false, 3)), None, "open");
        assert_eq!(
            stored(decide_late(17, (12, 16), true, 3)),
            Some((MarkClaimed, AlreadyClaimed))
        );
        assert_eq!(
            stored(decide_late(17, (12, 16), false, 3)),
            Some((Drop, Missed))
        );
        // Frozen: 48-byte roots whose last 8 bytes count the relays.
        let mut root = vec![7u8; 48];
        root[40..].copy_from_slice(&3u64.to_be_bytes());
        let mut empty = vec![0u8; 48];
        empty[40..].copy_from_slice(&0u64.to_be_bytes());
        assert_eq!(
            stored(decide_frozen(Some(&root), &root)),
            Some((MarkClaimed, AlreadyClaimed))
        );
        assert_eq!(stored(decide_frozen(None, &empty)), Some((Drop, Empty)));
        assert_eq!(
            stored(decide_frozen(Some(&empty), &root)),
            None,
            "another root: claim ours"
        );
        assert_eq!(stored(decide_frozen(None, &root)), None);
        // Worth it?
        assert_eq!(decide_value(&Ok(1_000), |_| 999), Step::Claim);
        assert_eq!(
            step(decide_value(&Ok(1_000), |_| 1_000)),
            Some((Drop, Unprofitable))
        );
        assert_eq!(
            step(decide_value(&Err("cupr".into()), |_| 0)),
            Some((Keep, Failed))
        );
    }

    #[test]
    fn cost_weighs_the_proof_by_its_chance() {
        // 0.0001 uPOKT/gas × 1.5: claim 15, proof 37.5 → 38.
        let p = params(20_000_000, 0.25, 1_000_000);
        assert_eq!(expected_cost(1_000, &p, 0.0001, 1.5), 15 + 250_010);
        // Above the threshold a proof is certain.
        assert_eq!(
            expected_cost(20_000_000, &p, 0.0001, 1.5),
            (15.0f64 + 1_000_038.0).ceil() as u128
        );
        // No fees, no proofs: claiming costs only gas.
        assert_eq!(expected_cost(1, &params(u128::MAX, 0.0, 0), 0.0, 1.5), 0);
    }
}

//! The claim pass: freeze the sessions whose claim window is open, drop the ones not
//! worth claiming, and claim the rest in one transaction per supplier.

use anyhow::Context;
use lode_chain::pocket::ProofModuleParams;
use lode_kernels::proto::MsgCreateClaim;
use lode_kernels::proto::cosmos::{self, Any};
use lode_store_api::{SessionInfo, SessionState};

use super::{CLAIM_GAS_ESTIMATE, JobReport, PROOF_GAS_ESTIMATE};
use super::{Job, Lifecycle, Outcome, Pending, SessionReport, kernel_header, key};

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

impl Lifecycle {
    pub(super) async fn claim_pass(&self, report: &mut JobReport) -> anyhow::Result<()> {
        report.height = self.height().await?;
        let proof_params = self.query.proof_params().await?;
        for supplier in self.keys.keys() {
            let mut ready = Vec::new();
            for info in self.list(supplier).await? {
                if self.clean_up(supplier, &info).await? || info.state() >= SessionState::Claimed {
                    continue;
                }
                if let Some(r) = self
                    .claim_decision(supplier, info, report, &proof_params)
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

    /// Decides one unclaimed session; `Some` when it is to be claimed now.
    async fn claim_decision(
        &self,
        supplier: &str,
        info: SessionInfo,
        report: &mut JobReport,
        proof_params: &ProofModuleParams,
    ) -> anyhow::Result<Option<Pending>> {
        let height = report.height;
        let (header, w) = self.header_and_windows(&info, height).await?;
        let id = header.session_id.clone();
        let mut r = SessionReport::new(supplier, &info);
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
        if height > close {
            if on_chain.is_some() {
                self.mark(supplier, &id, SessionState::Claimed, "").await?;
                r.set(
                    Outcome::AlreadyClaimed,
                    "found on chain after the window closed",
                );
            } else {
                self.drop_session(supplier, &id).await?;
                r.set(
                    Outcome::Missed,
                    format!(
                        "the claim window [{open}, {close}] closed (chain at {height}) before the session was claimed: its {} relays cannot be paid",
                        info.leaves
                    ),
                );
            }
            report.sessions.push(r);
            return Ok(None);
        }
        let frozen = self
            .store
            .clone()
            .freeze_session(key(supplier, &id))
            .await
            .with_context(|| format!("freezing session {id}"))?
            .into_inner();
        r = SessionReport::new(supplier, &frozen);
        if let Some(c) = &on_chain
            && c.root_hash == frozen.root
        {
            self.mark(supplier, &id, SessionState::Claimed, "").await?;
            r.tx_hash = Some(frozen.claim_tx_hash.clone()).filter(|t| !t.is_empty());
            r.set(Outcome::AlreadyClaimed, "the chain has this claim");
            report.sessions.push(r);
            return Ok(None);
        }
        let (sum, count) = (
            lode_kernels::smst::sum_of(&frozen.root),
            lode_kernels::smst::count_of(&frozen.root),
        );
        if count == 0 {
            self.drop_session(supplier, &id).await?;
            r.set(Outcome::Empty, "no relays were mined");
            report.sessions.push(r);
            return Ok(None);
        }
        let value = match self.claim_value(&header, sum, count).await? {
            Ok(v) => v,
            Err(why) => {
                r.set(Outcome::Failed, why);
                report.sessions.push(r);
                return Ok(None);
            }
        };
        r.estimated_reward_upokt = Some(value);
        let cost = expected_cost(
            value,
            proof_params,
            self.config.gas_price,
            self.config.gas_adjustment,
        );
        if value <= cost {
            self.drop_session(supplier, &id).await?;
            r.set(
                Outcome::Unprofitable,
                format!("worth {value} uPOKT, expected to cost {cost} uPOKT to claim and prove"),
            );
            report.sessions.push(r);
            return Ok(None);
        }
        let msg = MsgCreateClaim {
            supplier_operator_address: supplier.to_string(),
            session_header: Some(kernel_header(&header)),
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
    ) -> anyhow::Result<()> {
        ready.sort_by(|a, b| {
            b.report
                .estimated_reward_upokt
                .cmp(&a.report.estimated_reward_upokt)
        });
        let d = self.deliver(Job::Claim, supplier, ready).await?;
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

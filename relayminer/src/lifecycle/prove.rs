//! The prove pass: for every claimed session whose proof window is open, fetch the seed
//! block (exactly proof-window-open − 1), decide whether the chain requires a proof,
//! build the closest proof from the store, submit, confirm, and delete the session.
//!
//! Certain proofs of one supplier share one transaction. A doubtful one (the decision is
//! within a hair of the threshold or of the sampling probability, where a params change
//! could flip it) goes alone: an unrequired proof makes its transaction fail, which must
//! not take required proofs down with it, while a missing required proof is slashed —
//! so doubtful proofs are sent, separately.

use anyhow::Context;
use lode_chain::pocket::ProofModuleParams;
use lode_kernels::claim::{
    ProofRequirement, claim_hash, proof_requirement, proof_requirement_sample,
};
use lode_kernels::proto::cosmos::{self, Any};
use lode_kernels::proto::{Claim, MsgSubmitProof};
use lode_kernels::session::proof_path;
use lode_kernels::smst::SparseCompactMerkleClosestProof;
use lode_store_api::{SessionInfo, SessionState};

use super::{Job, JobReport, Lifecycle, Outcome, Pending, SessionReport, kernel_header, key};

/// Relative distance from the threshold, and absolute distance of the sample from the
/// probability, within which a decision counts as doubtful.
const THRESHOLD_MARGIN: f64 = 0.01;
const SAMPLE_MARGIN: f64 = 0.001;

/// The chain's decision, and whether it is too close to call.
pub(super) fn decide(
    value: u128,
    claim_hash: &[u8; 32],
    seed: &[u8],
    params: &ProofModuleParams,
) -> (ProofRequirement, bool) {
    let p = params.requirement;
    let requirement = proof_requirement(value, claim_hash, seed, p);
    let threshold = p.proof_requirement_threshold as f64;
    let near_threshold = (value as f64 - threshold).abs() <= threshold * THRESHOLD_MARGIN;
    let doubtful = match requirement {
        ProofRequirement::Threshold => near_threshold,
        ProofRequirement::Probabilistic | ProofRequirement::NotRequired => {
            near_threshold
                || (proof_requirement_sample(claim_hash, seed) - p.proof_request_probability).abs()
                    <= SAMPLE_MARGIN
        }
    };
    (requirement, doubtful)
}

fn describe(r: ProofRequirement, doubtful: bool) -> String {
    let name = match r {
        ProofRequirement::Threshold => "threshold",
        ProofRequirement::Probabilistic => "probabilistic",
        ProofRequirement::NotRequired => "not_required",
    };
    if doubtful {
        format!("{name} (doubtful)")
    } else {
        name.to_string()
    }
}

impl Lifecycle {
    pub(super) async fn prove_pass(&self, report: &mut JobReport) -> anyhow::Result<()> {
        report.height = self.height().await?;
        let params = self.query.proof_params().await?;
        for supplier in self.keys.keys() {
            let (mut certain, mut doubtful) = (Vec::new(), Vec::new());
            for info in self.list(supplier).await? {
                if self.clean_up(supplier, &info).await? || info.state() < SessionState::Claimed {
                    continue;
                }
                if let Some((ready, is_doubtful)) =
                    self.prove_decision(supplier, info, report, &params).await?
                {
                    if is_doubtful {
                        doubtful.push(vec![ready]);
                    } else {
                        certain.push(ready);
                    }
                }
            }
            if !certain.is_empty() {
                doubtful.insert(0, certain);
            }
            for batch in doubtful {
                self.send_proofs(supplier, batch, report).await?;
            }
        }
        Ok(())
    }

    /// Decides one claimed session; `Some((proof, doubtful))` when a proof is to be sent.
    async fn prove_decision(
        &self,
        supplier: &str,
        info: SessionInfo,
        report: &mut JobReport,
        params: &ProofModuleParams,
    ) -> anyhow::Result<Option<(Pending, bool)>> {
        let height = report.height;
        let (header, w) = self.header_and_windows(&info, height).await?;
        let id = header.session_id.clone();
        let (open, close) = (w.proof_window_open_height, w.proof_window_close_height);
        let mut r = SessionReport::new(supplier, &info);
        r.tx_hash = Some(info.claim_tx_hash.clone()).filter(|t| !t.is_empty());
        if height < open {
            r.set(
                Outcome::NotYet,
                format!("proof window [{open}, {close}] opens later"),
            );
            report.sessions.push(r);
            return Ok(None);
        }
        // Exactly the block before the window opens: any other block gives a different
        // path, and the chain slashes the proof.
        let seed = self
            .rpc
            .block(open - 1)
            .await
            .with_context(|| format!("fetching the seed block {}", open - 1))?
            .hash;
        let (sum, count) = (
            lode_kernels::smst::sum_of(&info.root),
            lode_kernels::smst::count_of(&info.root),
        );
        let value = match self.claim_value(&header, sum, count).await? {
            Ok(v) => v,
            Err(why) => {
                r.set(Outcome::Failed, why);
                report.sessions.push(r);
                return Ok(None);
            }
        };
        r.estimated_reward_upokt = Some(value);
        let ours = Claim {
            supplier_operator_address: supplier.to_string(),
            session_header: Some(kernel_header(&header)),
            root_hash: info.root.clone(),
            proof_validation_status: 0,
        };
        let (requirement, is_doubtful) = decide(value, &claim_hash(&ours), &seed, params);
        r.proof = Some(describe(requirement, is_doubtful));
        let on_chain = self.query.claim(&id, supplier).await?;
        let Some(on_chain) = on_chain else {
            // Claims leave the chain's state when they settle (after the proof window).
            self.drop_session(supplier, &id).await?;
            if height > close && !requirement.is_required() {
                r.set(
                    Outcome::ProofNotRequired,
                    "settled without a proof after the window",
                );
            } else if height > close {
                r.set(
                    Outcome::Missed,
                    format!(
                        "the proof window [{open}, {close}] closed (chain at {height}) without a proof: the chain slashes a missing required proof"
                    ),
                );
            } else {
                r.set(
                    Outcome::Missed,
                    "the store records a claim but the chain has none: it cannot be proven",
                );
            }
            report.sessions.push(r);
            return Ok(None);
        };
        if on_chain.root_hash != info.root {
            r.set(
                Outcome::Failed,
                format!(
                    "the chain's claimed root {} is not the store's: refusing to prove",
                    lode_kernels::hex::encode(&on_chain.root_hash)
                ),
            );
            report.sessions.push(r);
            return Ok(None);
        }
        match on_chain.proof_validation_status {
            1 => {
                self.mark(supplier, &id, SessionState::Proven, "").await?;
                self.delete(supplier, &id).await?;
                r.set(Outcome::AlreadyProven, "the chain validated a proof");
                report.sessions.push(r);
                return Ok(None);
            }
            2 => {
                self.drop_session(supplier, &id).await?;
                r.set(
                    Outcome::Failed,
                    "the chain found this session's proof invalid",
                );
                report.sessions.push(r);
                return Ok(None);
            }
            _ => {}
        }
        if height > close {
            self.drop_session(supplier, &id).await?;
            r.set(
                Outcome::Missed,
                format!("the proof window [{open}, {close}] closed (chain at {height})"),
            );
            report.sessions.push(r);
            return Ok(None);
        }
        if !requirement.is_required() && !is_doubtful {
            self.mark(supplier, &id, SessionState::Settled, "").await?;
            self.delete(supplier, &id).await?;
            r.set(
                Outcome::ProofNotRequired,
                "the claim settles without a proof",
            );
            report.sessions.push(r);
            return Ok(None);
        }
        let path = proof_path(&seed, &id);
        let proof = self
            .store
            .clone()
            .prove_closest(lode_store_api::ProveClosestRequest {
                key: Some(key(supplier, &id)),
                path: path.to_vec(),
                sibling_data: self.config.sibling_data,
            })
            .await
            .with_context(|| format!("building the closest proof of session {id}"))?
            .into_inner()
            .proof;
        // Check it the way the chain will before paying for it.
        let sound = SparseCompactMerkleClosestProof::from_gob(&proof)
            .map(|p| p.path == path)
            .unwrap_or(false)
            && lode_kernels::smst::verify_chain_proof(&proof, &info.root).unwrap_or(false);
        if !sound {
            r.set(
                Outcome::Failed,
                "the store's proof does not verify against the claimed root",
            );
            report.sessions.push(r);
            return Ok(None);
        }
        let msg = MsgSubmitProof {
            supplier_operator_address: supplier.to_string(),
            session_header: Some(kernel_header(&header)),
            proof,
        };
        Ok(Some((
            Pending {
                report: r,
                msg: Any::pack(cosmos::MSG_SUBMIT_PROOF_TYPE_URL, &msg),
                close,
            },
            is_doubtful,
        )))
    }

    /// Sends proofs in one transaction; then reads the chain's verdict and deletes the
    /// proven sessions.
    async fn send_proofs(
        &self,
        supplier: &str,
        ready: Vec<Pending>,
        report: &mut JobReport,
    ) -> anyhow::Result<()> {
        let d = self.deliver(Job::Prove, supplier, ready).await?;
        if let Some((sent, proven)) = d.sent {
            for p in proven {
                self.settle_proven(supplier, p, Some(&sent.hash), report)
                    .await?;
            }
        }
        for p in d.landed {
            self.settle_proven(supplier, p, None, report).await?;
        }
        for mut p in d.not_required {
            let id = p.report.session_id.clone();
            self.mark(supplier, &id, SessionState::Settled, "").await?;
            self.delete(supplier, &id).await?;
            p.report.set(
                Outcome::ProofNotRequired,
                "the chain refused the doubtful proof as not required",
            );
            report.sessions.push(p.report);
        }
        for (mut p, why) in d.failed {
            p.report.set(Outcome::Failed, format!("proof {why}"));
            report.sessions.push(p.report);
        }
        Ok(())
    }

    /// After inclusion: the chain validated the proof in that block's end-block; record
    /// its verdict and delete the session.
    async fn settle_proven(
        &self,
        supplier: &str,
        mut r: Pending,
        tx: Option<&str>,
        report: &mut JobReport,
    ) -> anyhow::Result<()> {
        let id = r.report.session_id.clone();
        let status = self
            .query
            .claim(&id, supplier)
            .await?
            .map(|c| c.proof_validation_status);
        if let Some(tx) = tx {
            r.report.tx_hash = Some(tx.to_string());
        }
        self.mark(supplier, &id, SessionState::Proven, tx.unwrap_or(""))
            .await?;
        match status {
            Some(2) => {
                self.delete(supplier, &id).await?;
                r.report
                    .set(Outcome::Failed, "the chain found the proof invalid");
            }
            Some(1) | None => {
                self.delete(supplier, &id).await?;
                let outcome = if tx.is_some() {
                    Outcome::Proven
                } else {
                    Outcome::AlreadyProven
                };
                r.report.set(outcome, "the chain validated the proof");
            }
            Some(_) => {
                // Not validated yet (a chain that validates later): keep the session
                // until a later pass sees the verdict.
                r.report.set(
                    Outcome::Proven,
                    "included; the chain has not validated it yet",
                );
            }
        }
        report.sessions.push(r.report);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use lode_kernels::claim::ProofParams;

    fn params(threshold: u128, probability: f64) -> ProofModuleParams {
        ProofModuleParams {
            requirement: ProofParams {
                proof_request_probability: probability,
                proof_requirement_threshold: threshold,
            },
            proof_missing_penalty: 0,
            proof_submission_fee: 0,
        }
    }

    #[test]
    fn decisions_near_a_boundary_are_doubtful() {
        let hash = [7u8; 32];
        let seed = [9u8; 32];
        let sample = proof_requirement_sample(&hash, &seed);
        // Far above the threshold: certain.
        assert_eq!(
            decide(2_000, &hash, &seed, &params(1_000, 0.0)),
            (ProofRequirement::Threshold, false)
        );
        // Within 1 % of it, either side: doubtful.
        assert_eq!(
            decide(1_005, &hash, &seed, &params(1_000, 0.0)),
            (ProofRequirement::Threshold, true)
        );
        assert!(
            decide(995, &hash, &seed, &params(1_000, 0.0)).1,
            "just under the threshold"
        );
        // Sampling: clearly in, clearly out, and on the edge.
        let far_below = params(u128::MAX, (sample + 0.1).min(1.0));
        assert_eq!(
            decide(1, &hash, &seed, &far_below),
            (ProofRequirement::Probabilistic, false)
        );
        let far_above = params(u128::MAX, (sample - 0.1).max(0.0));
        assert_eq!(
            decide(1, &hash, &seed, &far_above),
            (ProofRequirement::NotRequired, false)
        );
        let edge = params(u128::MAX, sample - 0.0005);
        assert_eq!(
            decide(1, &hash, &seed, &edge),
            (ProofRequirement::NotRequired, true)
        );
    }
}

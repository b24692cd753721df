//! The prove pass: for every claimed session whose proof window is open, gather the
//! facts (the seed block — exactly proof-window-open − 1 —, the claim's value, the claim
//! on chain), decide what to do ([`decide`], pure), act: build the closest proof from
//! the store, check it, submit, confirm, and delete the session.
//!
//! Certain proofs of one supplier share one transaction. A doubtful one (the decision is
//! within a hair of the threshold or of the sampling probability, where a params change
//! could flip it) goes alone: an unrequired proof makes its transaction fail, which must
//! not take required proofs down with it, while a missing required proof is slashed —
//! so doubtful proofs are sent, separately.

use lode_chain::pocket::{ProofModuleParams, ProofStatus};
use lode_kernels::claim::{
    ProofRequirement, claim_hash, proof_requirement, proof_requirement_sample,
};
use lode_kernels::proto::cosmos::{self, Any};
use lode_kernels::proto::{Claim, MsgSubmitProof};
use lode_kernels::session::proof_path;
use lode_kernels::smst::SparseCompactMerkleClosestProof;
use lode_store_api::{SessionInfo, SessionState};

use super::{
    Done, JobKind, JobReport, Lifecycle, Outcome, PassError, Pending, StoreAction, done, key,
    session_report,
};

/// Relative distance from the threshold, and absolute distance of the sample from the
/// probability, within which a decision counts as doubtful.
const THRESHOLD_MARGIN: f64 = 0.01;
const SAMPLE_MARGIN: f64 = 0.001;

/// The chain's decision, and whether it is too close to call.
pub(super) fn requirement(
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

/// A claim as the chain holds it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) struct OnChain {
    pub root: Vec<u8>,
    pub status: ProofStatus,
}

/// What the prove decision is made from (gathered once the proof window is open).
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) struct Facts {
    pub height: i64,
    pub open: i64,
    pub close: i64,
    /// The claim's value by the chain's arithmetic, or why the chain would refuse it.
    pub value: Result<u128, String>,
    /// The proof requirement and whether it is doubtful (known when the value is).
    pub requirement: Option<(ProofRequirement, bool)>,
    /// The claim on chain; none once it settled (or if it never landed).
    pub on_chain: Option<OnChain>,
    /// The root the store froze.
    pub root: Vec<u8>,
}

/// What to do with one claimed session.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) enum Step {
    /// Done with it, without a proof.
    Report(Done),
    /// Build, check and send its proof.
    Prove { doubtful: bool },
}

fn report(store: StoreAction, outcome: Outcome, detail: impl Into<String>) -> Step {
    Step::Report(done(store, outcome, detail))
}

/// The decision, from the facts alone.
pub(super) fn decide(f: &Facts) -> Step {
    let (height, open, close) = (f.height, f.open, f.close);
    let (required, doubtful) = match (&f.value, f.requirement) {
        (Err(why), _) => return report(StoreAction::Keep, Outcome::Failed, why.clone()),
        (Ok(_), Some((r, d))) => (r.is_required(), d),
        (Ok(_), None) => (true, true),
    };
    let Some(on_chain) = &f.on_chain else {
        // Claims leave the chain's state when they settle (after the proof window).
        return if height > close && !required {
            report(
                StoreAction::Drop,
                Outcome::ProofNotRequired,
                "settled without a proof after the window",
            )
        } else if height > close {
            report(
                StoreAction::Drop,
                Outcome::Missed,
                format!(
                    "the proof window [{open}, {close}] closed (chain at {height}) without a proof: the chain slashes a missing required proof"
                ),
            )
        } else {
            report(
                StoreAction::Drop,
                Outcome::Missed,
                "the store records a claim but the chain has none: it cannot be proven",
            )
        };
    };
    if on_chain.root != f.root {
        return report(
            StoreAction::Keep,
            Outcome::Failed,
            format!(
                "the chain's claimed root {} is not the store's: refusing to prove",
                lode_kernels::hex::encode(&on_chain.root)
            ),
        );
    }
    match on_chain.status {
        ProofStatus::Validated => {
            return report(
                StoreAction::Finish(SessionState::Proven),
                Outcome::AlreadyProven,
                "the chain validated a proof",
            );
        }
        ProofStatus::Invalid => {
            return report(
                StoreAction::Drop,
                Outcome::Failed,
                "the chain found this session's proof invalid",
            );
        }
        ProofStatus::PendingValidation => {}
    }
    if height > close {
        return report(
            StoreAction::Drop,
            Outcome::Missed,
            format!("the proof window [{open}, {close}] closed (chain at {height})"),
        );
    }
    if !required && !doubtful {
        return report(
            StoreAction::Finish(SessionState::Settled),
            Outcome::ProofNotRequired,
            "the claim settles without a proof",
        );
    }
    Step::Prove { doubtful }
}

/// Whether `proof` (gob) leads along `path` to `root`, as the chain will check it.
fn proof_is_sound(proof: &[u8], path: &[u8], root: &[u8]) -> bool {
    SparseCompactMerkleClosestProof::from_gob(proof).is_ok_and(|p| p.path == path)
        && lode_kernels::smst::verify_chain_proof(proof, root).unwrap_or(false)
}

impl Lifecycle {
    pub(super) async fn prove_pass(&self, report: &mut JobReport) -> Result<(), PassError> {
        report.height = self.height().await?;
        let params = self.query.proof_params().await?;
        for supplier in self.keys.keys() {
            let (mut certain, mut doubtful) = (Vec::new(), Vec::new());
            for info in self.list(supplier).await? {
                if self.clean_up(supplier, &info).await? || info.state() < SessionState::Claimed {
                    continue;
                }
                if let Some((ready, is_doubtful)) =
                    self.prove_session(supplier, info, report, &params).await?
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

    /// One claimed session: gather the facts (the seed block, the claim's value, the
    /// claim on chain), decide ([`decide`]), act (record and delete settled sessions, or
    /// build and check the proof). `Some((proof, doubtful))` when a proof is to be sent.
    #[tracing::instrument(skip_all, fields(supplier = %supplier, session = tracing::field::Empty))]
    async fn prove_session(
        &self,
        supplier: &str,
        info: SessionInfo,
        report: &mut JobReport,
        params: &ProofModuleParams,
    ) -> Result<Option<(Pending, bool)>, PassError> {
        let height = report.height;
        let (header, w) = self.header_and_windows(&info, height).await?;
        let id = header.session_id.clone();
        tracing::Span::current().record("session", id.as_str());
        let (open, close) = (w.proof_window_open_height, w.proof_window_close_height);
        let mut r = session_report(supplier, &info);
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
            .map_err(|e| PassError::chain(format!("fetching the seed block {}", open - 1), e))?
            .hash;
        let (sum, count) = (
            lode_kernels::smst::sum_of(&info.root),
            lode_kernels::smst::count_of(&info.root),
        );
        let value = self.claim_value(&header, sum, count).await?;
        let on_chain = self.query.claim(&id, supplier).await?;
        let facts = Facts {
            height,
            open,
            close,
            value: value.clone(),
            requirement: value.as_ref().ok().map(|v| {
                let ours = Claim {
                    supplier_operator_address: supplier.to_string(),
                    session_header: Some(header.clone()),
                    root_hash: info.root.clone(),
                    proof_validation_status: 0,
                };
                requirement(*v, &claim_hash(&ours), &seed, params)
            }),
            on_chain: on_chain.as_ref().map(|c| OnChain {
                root: c.root_hash.clone(),
                status: ProofStatus::of(c),
            }),
            root: info.root.clone(),
        };
        r.estimated_reward_upokt = value.ok();
        if let Some((req, doubtful)) = facts.requirement {
            r.proof = Some(describe(req, doubtful));
        }
        match decide(&facts) {
            Step::Report(d) => {
                self.close(supplier, &id, r, d, report).await?;
                Ok(None)
            }
            Step::Prove { doubtful } => {
                let path = proof_path(&seed, &id);
                let proof = self.closest_proof(supplier, &id, &path).await?;
                // Check it the way the chain will before paying for it.
                if !proof_is_sound(&proof, &path, &info.root) {
                    r.set(
                        Outcome::Failed,
                        "the store's proof does not verify against the claimed root",
                    );
                    report.sessions.push(r);
                    return Ok(None);
                }
                let msg = MsgSubmitProof {
                    supplier_operator_address: supplier.to_string(),
                    session_header: Some(header),
                    proof,
                };
                Ok(Some((
                    Pending {
                        report: r,
                        msg: Any::pack(cosmos::MSG_SUBMIT_PROOF_TYPE_URL, &msg),
                        close,
                    },
                    doubtful,
                )))
            }
        }
    }

    /// The compact closest proof of a frozen session toward `path`, from the store.
    async fn closest_proof(
        &self,
        supplier: &str,
        id: &str,
        path: &[u8],
    ) -> Result<Vec<u8>, PassError> {
        Ok(self
            .store
            .clone()
            .prove_closest(lode_store_api::ProveClosestRequest {
                key: Some(key(supplier, id)),
                path: path.to_vec(),
                sibling_data: self.config.sibling_data,
            })
            .await
            .map_err(|e| {
                PassError::store(format!("building the closest proof of session {id}"), e)
            })?
            .into_inner()
            .proof)
    }

    /// Sends proofs in one transaction; then reads the chain's verdict and deletes the
    /// proven sessions.
    async fn send_proofs(
        &self,
        supplier: &str,
        ready: Vec<Pending>,
        report: &mut JobReport,
    ) -> Result<(), PassError> {
        let d = self.deliver(JobKind::Prove, supplier, ready).await?;
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
            self.record(supplier, &id, StoreAction::Finish(SessionState::Settled))
                .await?;
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
    ) -> Result<(), PassError> {
        let id = r.report.session_id.clone();
        let status = self
            .query
            .claim(&id, supplier)
            .await?
            .map(|c| ProofStatus::of(&c));
        if let Some(tx) = tx {
            r.report.tx_hash = Some(tx.to_string());
        }
        self.mark(supplier, &id, SessionState::Proven, tx.unwrap_or(""))
            .await?;
        match status {
            Some(ProofStatus::Invalid) => {
                self.delete(supplier, &id).await?;
                r.report
                    .set(Outcome::Failed, "the chain found the proof invalid");
            }
            Some(ProofStatus::Validated) | None => {
                self.delete(supplier, &id).await?;
                let outcome = if tx.is_some() {
                    Outcome::Proven
                } else {
                    Outcome::AlreadyProven
                };
                r.report.set(outcome, "the chain validated the proof");
            }
            Some(ProofStatus::PendingValidation) => {
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

    fn facts(height: i64) -> Facts {
        Facts {
            height,
            open: 16,
            close: 20,
            value: Ok(5_000),
            requirement: Some((ProofRequirement::Threshold, false)),
            on_chain: Some(OnChain {
                root: vec![1; 48],
                status: ProofStatus::PendingValidation,
            }),
            root: vec![1; 48],
        }
    }

    fn outcome(s: Step) -> (StoreAction, Outcome) {
        match s {
            Step::Report(d) => (d.store, d.outcome),
            Step::Prove { .. } => panic!("a proof"),
        }
    }

    #[test]
    fn the_prove_decision_table() {
        use Outcome::*;
        use StoreAction::*;
        let not_required = Some((ProofRequirement::NotRequired, false));
        // (case, facts, what is recorded and reported; none: a proof is built)
        type Case = (&'static str, Facts, Option<(StoreAction, Outcome)>);
        let cases: Vec<Case> = vec![
            ("required, in the window", facts(17), None),
            (
                "value refused",
                Facts {
                    value: Err("cupr".into()),
                    requirement: None,
                    ..facts(17)
                },
                Some((Keep, Failed)),
            ),
            (
                "settled without a proof after the window",
                Facts {
                    on_chain: None,
                    requirement: not_required,
                    ..facts(25)
                },
                Some((Drop, ProofNotRequired)),
            ),
            (
                "settled after the window, proof required",
                Facts {
                    on_chain: None,
                    ..facts(25)
                },
                Some((Drop, Missed)),
            ),
            (
                "no claim on chain in the window",
                Facts {
                    on_chain: None,
                    ..facts(17)
                },
                Some((Drop, Missed)),
            ),
            (
                "another root on chain",
                Facts {
                    root: vec![2; 48],
                    ..facts(17)
                },
                Some((Keep, Failed)),
            ),
            (
                "validated already",
                Facts {
                    on_chain: Some(OnChain {
                        root: vec![1; 48],
                        status: ProofStatus::Validated,
                    }),
                    ..facts(17)
                },
                Some((Finish(SessionState::Proven), AlreadyProven)),
            ),
            (
                "invalid already",
                Facts {
                    on_chain: Some(OnChain {
                        root: vec![1; 48],
                        status: ProofStatus::Invalid,
                    }),
                    ..facts(17)
                },
                Some((Drop, Failed)),
            ),
            (
                "window closed, claim still on chain",
                facts(21),
                Some((Drop, Missed)),
            ),
            (
                "not required, certain",
                Facts {
                    requirement: not_required,
                    ..facts(17)
                },
                Some((Finish(SessionState::Settled), ProofNotRequired)),
            ),
        ];
        for (what, f, want) in cases {
            let step = decide(&f);
            match want {
                Some(w) => assert_eq!(outcome(step), w, "{what}"),
                None => assert_eq!(step, Step::Prove { doubtful: false }, "{what}"),
            }
        }
        // A doubtful "not required" is proven anyway, alone.
        let doubtful = Facts {
            requirement: Some((ProofRequirement::NotRequired, true)),
            ..facts(17)
        };
        assert_eq!(decide(&doubtful), Step::Prove { doubtful: true });
    }

    #[test]
    fn decisions_near_a_boundary_are_doubtful() {
        let hash = [7u8; 32];
        let seed = [9u8; 32];
        let sample = proof_requirement_sample(&hash, &seed);
        // Far above the threshold: certain.
        assert_eq!(
            requirement(2_000, &hash, &seed, &params(1_000, 0.0)),
            (ProofRequirement::Threshold, false)
        );
        // Within 1 % of it, either side: doubtful.
        assert_eq!(
            requirement(1_005, &hash, &seed, &params(1_000, 0.0)),
            (ProofRequirement::Threshold, true)
        );
        assert!(
            requirement(995, &hash, &seed, &params(1_000, 0.0)).1,
            "just under the threshold"
        );
        // Sampling: clearly in, clearly out, and on the edge.
        let far_below = params(u128::MAX, (sample + 0.1).min(1.0));
        assert_eq!(
            requirement(1, &hash, &seed, &far_below),
            (ProofRequirement::Probabilistic, false)
        );
        let far_above = params(u128::MAX, (sample - 0.1).max(0.0));
        assert_eq!(
            requirement(1, &hash, &seed, &far_above),
            (ProofRequirement::NotRequired, false)
        );
        let edge = params(u128::MAX, sample - 0.0005);
        assert_eq!(
            requirement(1, &hash, &seed, &edge),
            (ProofRequirement::NotRequired, true)
        );
    }
}

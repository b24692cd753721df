//! What a claim or prove pass did, per session: printed by the jobs, logged by `run`,
//! counted in metrics.

use serde::Serialize;

/// What happened to one session in a pass.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    /// Its window is not open yet; nothing done.
    NotYet,
    /// The claim is in a block (this pass sent it).
    Claimed,
    /// The chain already had this claim (an earlier run sent it).
    AlreadyClaimed,
    /// Worth less than claiming (and maybe proving) costs; dropped.
    Unprofitable,
    /// No relays.
    Empty,
    /// The proof is in a block and the chain validated it.
    Proven,
    /// The chain already validated a proof for this claim.
    AlreadyProven,
    /// The chain does not require a proof; the claim settles without one.
    ProofNotRequired,
    /// The window closed before the work was done: the session's reward is lost (and a
    /// required proof that was missed is slashed).
    Missed,
    /// Something went wrong; see the detail. Retrying within the window may help.
    Failed,
}

impl Outcome {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::NotYet => "not_yet",
            Self::Claimed => "claimed",
            Self::AlreadyClaimed => "already_claimed",
            Self::Unprofitable => "unprofitable",
            Self::Empty => "empty",
            Self::Proven => "proven",
            Self::AlreadyProven => "already_proven",
            Self::ProofNotRequired => "proof_not_required",
            Self::Missed => "missed",
            Self::Failed => "failed",
        }
    }

    /// Whether this outcome makes a job exit non-zero.
    pub fn is_problem(self) -> bool {
        matches!(self, Self::Missed | Self::Failed)
    }
}

/// One session's line in a report.
#[derive(Clone, Debug, Serialize)]
pub struct SessionReport {
    pub supplier: String,
    pub session_id: String,
    pub service_id: String,
    pub application: String,
    pub session_end_height: i64,
    pub relays: u64,
    pub compute_units: u64,
    /// Hex of the 48-byte root once frozen.
    pub root: String,
    /// What the claim is worth by the chain's arithmetic (difficulty and pricing at the
    /// session start), in uPOKT.
    pub estimated_reward_upokt: Option<u128>,
    /// `threshold`, `probabilistic` or `not_required`, with `doubtful` when the decision
    /// is too close to call with certainty.
    pub proof: Option<String>,
    pub tx_hash: Option<String>,
    pub outcome: Outcome,
    pub detail: String,
}

impl SessionReport {
    pub fn new(supplier: &str, info: &lode_store_api::SessionInfo) -> Self {
        let h = info.session_header.clone().unwrap_or_default();
        Self {
            supplier: supplier.to_string(),
            session_id: h.session_id,
            service_id: h.service_id,
            application: h.application_address,
            session_end_height: h.session_end_block_height,
            relays: info.leaves,
            compute_units: info.compute_units,
            root: lode_kernels::hex::encode(&info.root),
            estimated_reward_upokt: None,
            proof: None,
            tx_hash: None,
            outcome: Outcome::NotYet,
            detail: String::new(),
        }
    }

    pub fn set(&mut self, outcome: Outcome, detail: impl Into<String>) {
        self.outcome = outcome;
        self.detail = detail.into();
    }
}

/// One pass of `claim` or `prove`.
#[derive(Clone, Debug, Default, Serialize)]
pub struct JobReport {
    pub job: &'static str,
    /// The chain height the pass started at.
    pub height: i64,
    pub sessions: Vec<SessionReport>,
    /// Problems not tied to one session (the chain or the store unreachable, …).
    pub errors: Vec<String>,
}

impl JobReport {
    pub fn new(job: &'static str) -> Self {
        Self {
            job,
            ..Self::default()
        }
    }

    /// Whether the job failed: an error, or a session missed or failed.
    pub fn failed(&self) -> bool {
        !self.errors.is_empty() || self.sessions.iter().any(|s| s.outcome.is_problem())
    }

    /// How many sessions ended with `outcome`.
    pub fn count(&self, outcome: Outcome) -> usize {
        self.sessions
            .iter()
            .filter(|s| s.outcome == outcome)
            .count()
    }

    /// A one-line summary for logs and the end of a job.
    pub fn summary(&self) -> String {
        let mut counts = std::collections::BTreeMap::<Outcome, usize>::new();
        for s in &self.sessions {
            *counts.entry(s.outcome).or_default() += 1;
        }
        let parts: Vec<String> = counts
            .iter()
            .map(|(o, n)| format!("{n} {}", o.as_str()))
            .collect();
        let sessions = if parts.is_empty() {
            "no sessions".to_string()
        } else {
            parts.join(", ")
        };
        let errors = if self.errors.is_empty() {
            String::new()
        } else {
            format!("; errors: {}", self.errors.join("; "))
        };
        format!("{} at height {}: {sessions}{errors}", self.job, self.height)
    }

    /// Logs every session that was acted on (at warn for problems).
    pub fn log(&self) {
        for s in self
            .sessions
            .iter()
            .filter(|s| s.outcome != Outcome::NotYet)
        {
            if s.outcome.is_problem() {
                tracing::warn!(job = self.job, supplier = %s.supplier, session = %s.session_id, service = %s.service_id, end = s.session_end_height, relays = s.relays, compute_units = s.compute_units, reward_upokt = ?s.estimated_reward_upokt, proof = ?s.proof, tx = ?s.tx_hash, outcome = s.outcome.as_str(), detail = %s.detail, "session");
            } else {
                tracing::info!(job = self.job, supplier = %s.supplier, session = %s.session_id, service = %s.service_id, end = s.session_end_height, relays = s.relays, compute_units = s.compute_units, root = %s.root, reward_upokt = ?s.estimated_reward_upokt, proof = ?s.proof, tx = ?s.tx_hash, outcome = s.outcome.as_str(), detail = %s.detail, "session");
            }
        }
        for e in &self.errors {
            tracing::error!(job = self.job, error = %e, "pass failed");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn session(outcome: Outcome) -> SessionReport {
        let mut s = SessionReport::new("pokt1s", &lode_store_api::SessionInfo::default());
        s.outcome = outcome;
        s
    }

    #[test]
    fn problems_fail_the_job_and_show_in_the_summary() {
        let mut r = JobReport::new("claim");
        r.height = 12;
        r.sessions = vec![
            session(Outcome::Claimed),
            session(Outcome::NotYet),
            session(Outcome::Claimed),
        ];
        assert!(!r.failed());
        assert_eq!(
            r.summary(),
            "claim at height 12: 1 not_yet, 2 claimed",
            "counts in outcome order"
        );
        r.sessions.push(session(Outcome::Missed));
        assert!(r.failed());
        let mut e = JobReport::new("prove");
        e.errors.push("chain down".into());
        assert!(e.failed());
        assert!(e.summary().ends_with("no sessions; errors: chain down"));
        let json = serde_json::to_value(&r).expect("json");
        assert_eq!(json["sessions"][3]["outcome"], "missed");
    }
}

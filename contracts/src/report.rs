//! What the claim, prove, stake and unstake jobs did: the full report on stdout, and
//! (claim/prove) a bounded summary in the pod's termination message, which the operator
//! reads for the Supplier's `status.lastClaim` / `status.lastProof`.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// Which pass a report is of.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum JobKind {
    #[default]
    Claim,
    Prove,
}

impl JobKind {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Claim => "claim",
            Self::Prove => "prove",
        }
    }
}

/// What happened to one session in a pass.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Deserialize, Serialize)]
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

    /// Whether this outcome makes a job exit non-zero (and puts money at risk).
    pub fn is_problem(self) -> bool {
        matches!(self, Self::Missed | Self::Failed)
    }
}

/// One session's line in a report.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize, Serialize)]
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
    pub fn set(&mut self, outcome: Outcome, detail: impl Into<String>) {
        self.outcome = outcome;
        self.detail = detail.into();
    }
}

/// One pass of `claim` or `prove`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize, Serialize)]
pub struct JobReport {
    pub job: JobKind,
    /// The chain height the pass started at.
    pub height: i64,
    pub sessions: Vec<SessionReport>,
    /// Problems not tied to one session (the chain or the store unreachable, …).
    pub errors: Vec<String>,
}

impl JobReport {
    pub fn new(job: JobKind) -> Self {
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
        let parts: Vec<String> = self
            .counts()
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
        format!(
            "{} at height {}: {sessions}{errors}",
            self.job.as_str(),
            self.height
        )
    }

    fn counts(&self) -> BTreeMap<Outcome, u64> {
        let mut counts = BTreeMap::new();
        for s in &self.sessions {
            *counts.entry(s.outcome).or_default() += 1;
        }
        counts
    }

    /// The summary the operator reads from the pod's termination message: the latest
    /// session the pass acted on (the largest end height; sessions whose window had not
    /// opened were not acted on), how many others it acted on, the counts, and the first
    /// errors, cut short. Whatever the pass did, it fits in [`MAX_SUMMARY_BYTES`].
    pub fn status_summary(&self) -> JobSummary {
        let acted: Vec<&SessionReport> = self
            .sessions
            .iter()
            .filter(|s| s.outcome != Outcome::NotYet)
            .collect();
        // The first of the sessions sharing the largest end height.
        let latest = acted
            .iter()
            .rev()
            .max_by_key(|s| s.session_end_height)
            .map(|s| SessionOutcome {
                session_end_height: s.session_end_height,
                outcome: s.outcome,
                tx_hash: s.tx_hash.as_deref().map(|t| clip(t, MAX_TX_HASH_CHARS)),
            });
        JobSummary {
            job: self.job,
            height: self.height,
            latest,
            more_sessions: acted.len().saturating_sub(1) as u64,
            outcomes: self.counts(),
            errors: self
                .errors
                .iter()
                .take(MAX_SUMMARY_ERRORS)
                .map(|e| clip(e, MAX_ERROR_CHARS))
                .collect(),
        }
    }
}

/// Kubernetes keeps 4096 bytes of a termination message; a summary stays well within.
pub const MAX_SUMMARY_BYTES: usize = 4096;
const MAX_SUMMARY_ERRORS: usize = 3;
const MAX_ERROR_CHARS: usize = 300;
const MAX_TX_HASH_CHARS: usize = 128;

/// `s`, cut to at most `max` characters (with `…` when cut).
fn clip(s: &str, max: usize) -> String {
    match s.char_indices().nth(max) {
        Some((i, _)) => format!("{}…", &s[..i]),
        None => s.to_string(),
    }
}

/// One session's outcome, as a Supplier's status shows it.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize, Serialize)]
pub struct SessionOutcome {
    pub session_end_height: i64,
    pub outcome: Outcome,
    pub tx_hash: Option<String>,
}

/// What a claim or prove pass leaves for the operator (its pod's termination message).
#[derive(Clone, Debug, PartialEq, Eq, Deserialize, Serialize)]
pub struct JobSummary {
    pub job: JobKind,
    pub height: i64,
    /// The latest session acted on; none when the pass acted on none.
    pub latest: Option<SessionOutcome>,
    /// Sessions acted on besides `latest`.
    pub more_sessions: u64,
    /// Sessions by outcome.
    pub outcomes: BTreeMap<Outcome, u64>,
    /// The pass's first errors, cut short.
    pub errors: Vec<String>,
}

/// What a `relayminer stake` or `unstake` run did.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum StakeOutcome {
    /// The chain already matched; nothing was sent.
    Unchanged,
    /// A `MsgStakeSupplier` was included.
    Staked,
    /// A `MsgUnstakeSupplier` was included: unbonding started.
    Unstaking,
}

/// The JSON line `relayminer stake` and `unstake` print.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize, Serialize)]
pub struct StakeReport {
    pub operator: String,
    pub outcome: StakeOutcome,
    pub tx_hash: Option<String>,
    pub height: Option<i64>,
}

impl StakeReport {
    /// Nothing sent: the chain already has what was asked.
    pub fn unchanged(operator: String) -> Self {
        Self {
            operator,
            outcome: StakeOutcome::Unchanged,
            tx_hash: None,
            height: None,
        }
    }
}

//! What the last claim and prove Jobs of a Supplier achieved, read from their pods'
//! termination messages (the [`JobSummary`] `relayminer claim|prove` writes to
//! `/dev/termination-log`), for `status.lastClaim` / `status.lastProof` and the
//! `ClaimsHealthy` condition. Pure: the Jobs and pods come from `fetch`.

use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::Pod;
use kube::ResourceExt;
use lode_contracts::report::{JobSummary, SessionOutcome};
use lode_crds::WindowOutcome;

use crate::build::jobs::Window;

const OPEN_HEIGHT: &str = "lode.pokt.network/window-open-height";

fn open_height(j: &Job) -> i64 {
    j.annotations()
        .get(OPEN_HEIGHT)
        .and_then(|h| h.parse().ok())
        .unwrap_or(0)
}

/// `Some(true)` for a Job that completed, `Some(false)` for one that failed.
pub fn finished(j: &Job) -> Option<bool> {
    let st = j.status.as_ref()?;
    st.conditions.iter().flatten().find_map(|c| {
        (c.status == "True")
            .then_some(c.type_.as_str())
            .and_then(|t| match t {
                "Complete" => Some(true),
                "Failed" => Some(false),
                _ => None,
            })
    })
}

/// The termination message of the job's last finished pod.
fn message_of<'a>(job: &str, pods: &'a [Pod]) -> Option<&'a str> {
    pods.iter()
        .filter(|p| p.labels().get("job-name").map(String::as_str) == Some(job))
        .filter_map(|p| {
            let st = p.status.as_ref()?.container_statuses.as_ref()?.first()?;
            let t = st.state.as_ref()?.terminated.as_ref()?;
            Some((t.finished_at.clone(), t.message.as_deref()?))
        })
        .max_by(|a, b| a.0.cmp(&b.0))
        .map(|(_, m)| m)
}

/// The latest outcome of a window's Jobs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LastOutcome {
    /// The latest session a Job acted on, and how many others that Job acted on.
    Session {
        session: SessionOutcome,
        more_sessions: u64,
    },
    /// A Job failed without acting on a session: no summary, or only errors.
    JobFailed { job: String, reason: String },
}

impl LastOutcome {
    /// Whether money is at risk: a session failed or was missed, or a Job failed.
    pub fn at_risk(&self) -> bool {
        match self {
            Self::Session { session, .. } => session.outcome.is_problem(),
            Self::JobFailed { .. } => true,
        }
    }

    /// As the Supplier's status shows it.
    pub fn to_status(&self) -> WindowOutcome {
        match self {
            Self::Session {
                session,
                more_sessions,
            } => {
                let mut outcome = session.outcome.as_str().to_string();
                if *more_sessions > 0 {
                    outcome = format!("{outcome} (+{more_sessions} more sessions)");
                }
                WindowOutcome {
                    session_end_height: session.session_end_height,
                    outcome,
                    tx_hash: session.tx_hash.clone(),
                }
            }
            Self::JobFailed { job, reason } => WindowOutcome {
                session_end_height: 0,
                outcome: format!("failed: Job {job} {reason}"),
                tx_hash: None,
            },
        }
    }
}

/// The outcome of the latest finished `window` Job that dealt with a session (Jobs that
/// found nothing to do, or only sessions whose window had not opened, are passed over);
/// a failed Job without a readable summary, or whose summary holds only errors, counts
/// as failed.
pub fn last_outcome(jobs: &[Job], pods: &[Pod], window: Window) -> Option<LastOutcome> {
    let mut mine: Vec<&Job> = jobs
        .iter()
        .filter(|j| {
            j.labels()
                .get("app.kubernetes.io/component")
                .map(String::as_str)
                == Some(window.command())
        })
        .filter(|j| finished(j).is_some())
        .collect();
    mine.sort_by_key(|j| std::cmp::Reverse(open_height(j)));
    for j in mine {
        let failed = finished(j) == Some(false);
        let summary = message_of(&j.name_any(), pods)
            .and_then(|m| lode_contracts::from_json::<JobSummary>(m).ok());
        match summary {
            Some(JobSummary {
                latest: Some(session),
                more_sessions,
                ..
            }) => {
                return Some(LastOutcome::Session {
                    session,
                    more_sessions,
                });
            }
            Some(s) if failed => {
                let reason = s
                    .errors
                    .first()
                    .map_or_else(|| "failed".to_string(), |e| format!("failed: {e}"));
                return Some(LastOutcome::JobFailed {
                    job: j.name_any(),
                    reason,
                });
            }
            None if failed => {
                return Some(LastOutcome::JobFailed {
                    job: j.name_any(),
                    reason: "failed without a report".into(),
                });
            }
            _ => continue,
        }
    }
    None
}

/// What the Supplier's claim and prove Jobs show.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Outcomes {
    pub last_claim: Option<LastOutcome>,
    pub last_proof: Option<LastOutcome>,
    /// Claim/prove Jobs that failed (kept until their TTL): a window may be at risk.
    pub failed_jobs: u64,
}

impl Outcomes {
    /// From the Supplier's claim and prove Jobs and their pods.
    pub fn of(jobs: &[Job], pods: &[Pod]) -> Self {
        Self {
            last_claim: last_outcome(jobs, pods, Window::Claim),
            last_proof: last_outcome(jobs, pods, Window::Prove),
            failed_jobs: jobs.iter().filter(|j| finished(j) == Some(false)).count() as u64,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use lode_contracts::report::{JobKind, JobReport, Outcome, SessionReport};
    use serde_json::json;

    fn job(name: &str, component: &str, height: i64, cond: &str) -> Job {
        serde_json::from_value(json!({
            "metadata": {"name": name, "labels": {"app.kubernetes.io/component": component},
                "annotations": {OPEN_HEIGHT: height.to_string()}},
            "status": {"conditions": [{"type": cond, "status": "True"}]},
        }))
        .expect("job")
    }

    fn pod(job: &str, message: &str) -> Pod {
        serde_json::from_value(json!({
            "metadata": {"name": format!("{job}-x"), "labels": {"job-name": job}},
            "status": {"containerStatuses": [{"name": "c", "image": "i", "imageID": "", "ready": false, "restartCount": 0,
                "state": {"terminated": {"exitCode": 0, "message": message, "finishedAt": "2026-01-01T00:00:00Z"}}}]},
        }))
        .expect("pod")
    }

    /// The termination message a pass over `sessions` (end height, outcome, tx) leaves.
    fn summary(height: i64, sessions: &[(i64, Outcome, Option<&str>)], errors: &[&str]) -> String {
        let mut r = JobReport::new(JobKind::Claim);
        r.height = height;
        r.sessions = sessions
            .iter()
            .map(|(end, outcome, tx)| SessionReport {
                supplier: "pokt1s".into(),
                session_id: format!("s{end}"),
                service_id: "llm".into(),
                application: "pokt1a".into(),
                session_end_height: *end,
                relays: 1,
                compute_units: 1,
                root: String::new(),
                estimated_reward_upokt: None,
                proof: None,
                tx_hash: tx.map(String::from),
                outcome: *outcome,
                detail: String::new(),
            })
            .collect();
        r.errors = errors.iter().map(|e| e.to_string()).collect();
        lode_contracts::to_json(&r.status_summary())
    }

    #[test]
    fn the_latest_job_with_sessions_gives_the_outcome() {
        let jobs = vec![
            job("s-claim-12", "claim", 12, "Complete"),
            job("s-claim-22", "claim", 22, "Complete"),
            job("s-claim-32", "claim", 32, "Complete"),
            job("s-prove-16", "prove", 16, "Failed"),
        ];
        let pods = vec![
            pod(
                "s-claim-12",
                &summary(12, &[(10, Outcome::Claimed, Some("AB"))], &[]),
            ),
            pod(
                "s-claim-22",
                &summary(
                    22,
                    &[
                        (20, Outcome::Claimed, Some("CD")),
                        (20, Outcome::Unprofitable, None),
                    ],
                    &[],
                ),
            ),
            pod("s-claim-32", &summary(32, &[], &[])),
        ];
        let claim = last_outcome(&jobs, &pods, Window::Claim).expect("claim");
        let shown = claim.to_status();
        assert_eq!(
            shown.session_end_height, 20,
            "the empty pass at 32 is skipped"
        );
        assert_eq!(shown.outcome, "claimed (+1 more sessions)");
        assert_eq!(shown.tx_hash.as_deref(), Some("CD"));
        assert!(!claim.at_risk());
        let prove = last_outcome(&jobs, &pods, Window::Prove).expect("prove");
        assert!(
            prove
                .to_status()
                .outcome
                .starts_with("failed: Job s-prove-16"),
            "{:?}",
            prove
        );
        assert!(prove.at_risk());
        assert_eq!(last_outcome(&jobs[..0], &pods, Window::Claim), None);
    }

    #[test]
    fn a_failed_job_that_only_saw_errors_is_an_outcome_not_a_pass_over() {
        // The chain was down for the whole pass: no session was acted on, the Job failed.
        let jobs = vec![
            job("s-claim-12", "claim", 12, "Complete"),
            job("s-claim-22", "claim", 22, "Failed"),
        ];
        let pods = vec![
            pod(
                "s-claim-12",
                &summary(12, &[(10, Outcome::Claimed, Some("AB"))], &[]),
            ),
            pod(
                "s-claim-22",
                &summary(22, &[], &["the chain node is unreachable"]),
            ),
        ];
        let claim = last_outcome(&jobs, &pods, Window::Claim).expect("claim");
        assert!(claim.at_risk());
        assert_eq!(
            claim.to_status().outcome,
            "failed: Job s-claim-22 failed: the chain node is unreachable"
        );
        // A missed session puts money at risk too.
        let pods = vec![pod(
            "s-claim-12",
            &summary(12, &[(10, Outcome::Missed, None)], &[]),
        )];
        let missed = last_outcome(&jobs[..1], &pods, Window::Claim).expect("claim");
        assert!(missed.at_risk());
        assert_eq!(missed.to_status().outcome, "missed");
        // Text that is not a summary is not read.
        let pods = vec![pod("s-claim-22", "{\"job\":\"claim\",\"sessions\":[")];
        assert_eq!(
            last_outcome(&jobs[1..], &pods, Window::Claim)
                .expect("failed")
                .to_status()
                .outcome,
            "failed: Job s-claim-22 failed without a report"
        );
    }
}

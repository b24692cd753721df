//! What the last claim and prove Jobs of a Supplier achieved, read from their pods'
//! termination messages (the JSON report `relayminer claim|prove` writes to
//! `/dev/termination-log`), for `status.lastClaim` / `status.lastProof` and the
//! `ClaimsHealthy` condition.

use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::Pod;
use kube::ResourceExt;
use kube::api::{Api, ListParams};
use lode_crds::WindowOutcome;

use crate::build::jobs::Window;
use crate::build::{SUPPLIER_LABEL, component};

const OPEN_HEIGHT: &str = "lode.pokt.network/window-open-height";

fn open_height(j: &Job) -> i64 {
    j.annotations()
        .get(OPEN_HEIGHT)
        .and_then(|h| h.parse().ok())
        .unwrap_or(0)
}

fn finished(j: &Job) -> Option<bool> {
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
fn report_of<'a>(job: &str, pods: &'a [Pod]) -> Option<&'a str> {
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

/// The outcome of the latest finished `window` Job that dealt with a session (Jobs that
/// found nothing to do, or only sessions whose window had not opened, are passed over); a failed Job without a readable report counts
/// as `failed`.
pub fn last_outcome(jobs: &[Job], pods: &[Pod], window: Window) -> Option<WindowOutcome> {
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
        let report = report_of(&j.name_any(), pods)
            .and_then(|m| serde_json::from_str::<serde_json::Value>(m).ok());
        let Some(report) = report else {
            if finished(j) == Some(false) {
                return Some(WindowOutcome {
                    session_end_height: 0,
                    outcome: format!("failed: Job {} failed without a report", j.name_any()),
                    tx_hash: None,
                });
            }
            continue;
        };
        // Sessions whose window had not opened yet were not acted on by this Job.
        let sessions: Vec<serde_json::Value> = report["sessions"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|s| s["outcome"] != "not_yet")
            .cloned()
            .collect();
        let Some(s) = sessions
            .iter()
            .rev()
            .max_by_key(|s| s["session_end_height"].as_i64().unwrap_or(0))
        else {
            continue;
        };
        let mut outcome = s["outcome"].as_str().unwrap_or("unknown").to_string();
        if sessions.len() > 1 {
            outcome = format!("{outcome} (+{} more sessions)", sessions.len() - 1);
        }
        return Some(WindowOutcome {
            session_end_height: s["session_end_height"].as_i64().unwrap_or(0),
            outcome,
            tx_hash: s["tx_hash"].as_str().map(String::from),
        });
    }
    None
}

/// Whether an outcome means money is at risk.
pub fn unhealthy(o: &WindowOutcome) -> bool {
    o.outcome.starts_with("failed") || o.outcome.starts_with("missed")
}

/// What the Supplier's claim and prove Jobs show.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Outcomes {
    pub last_claim: Option<WindowOutcome>,
    pub last_proof: Option<WindowOutcome>,
    /// Claim/prove Jobs that failed (kept until their TTL): a window may be at risk.
    pub failed_jobs: u64,
}

/// Reads the Supplier's claim and prove Jobs and their pods.
pub async fn fetch(
    client: &kube::Client,
    ns: &str,
    supplier: &str,
) -> Result<Outcomes, kube::Error> {
    let sel = format!(
        "{SUPPLIER_LABEL}={supplier},app.kubernetes.io/component in ({},{})",
        component::CLAIM,
        component::PROVE
    );
    let lp = ListParams::default().labels(&sel);
    let jobs = Api::<Job>::namespaced(client.clone(), ns)
        .list(&lp)
        .await?
        .items;
    if jobs.is_empty() {
        return Ok(Outcomes::default());
    }
    let pods = Api::<Pod>::namespaced(client.clone(), ns)
        .list(&lp)
        .await?
        .items;
    Ok(Outcomes {
        last_claim: last_outcome(&jobs, &pods, Window::Claim),
        last_proof: last_outcome(&jobs, &pods, Window::Prove),
        failed_jobs: jobs.iter().filter(|j| finished(j) == Some(false)).count() as u64,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
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
                r#"{"job":"claim","height":12,"sessions":[{"session_end_height":10,"outcome":"claimed","tx_hash":"AB"}],"errors":[]}"#,
            ),
            pod(
                "s-claim-22",
                r#"{"job":"claim","height":22,"sessions":[{"session_end_height":20,"outcome":"claimed","tx_hash":"CD"},{"session_end_height":20,"outcome":"unprofitable"}],"errors":[]}"#,
            ),
            pod(
                "s-claim-32",
                r#"{"job":"claim","height":32,"sessions":[],"errors":[]}"#,
            ),
        ];
        let claim = last_outcome(&jobs, &pods, Window::Claim).expect("claim");
        assert_eq!(
            claim.session_end_height, 20,
            "the empty pass at 32 is skipped"
        );
        assert_eq!(claim.outcome, "claimed (+1 more sessions)");
        assert_eq!(claim.tx_hash.as_deref(), Some("CD"));
        assert!(!unhealthy(&claim));
        let prove = last_outcome(&jobs, &pods, Window::Prove).expect("prove");
        assert!(
            prove.outcome.starts_with("failed: Job s-prove-16"),
            "{}",
            prove.outcome
        );
        assert!(unhealthy(&prove));
        assert_eq!(last_outcome(&jobs[..0], &pods, Window::Claim), None);
    }
}

//! What a claim or prove pass did, per session: the report types are the contract the
//! jobs print ([`lode_contracts::report`]); here a store session becomes a report line,
//! and a report becomes log lines.

pub use lode_contracts::report::{JobKind, JobReport, JobSummary, Outcome, SessionReport};

/// A session's report line before the pass decides its outcome.
pub fn session_report(supplier: &str, info: &lode_store_api::SessionInfo) -> SessionReport {
    let h = info.session_header.clone().unwrap_or_default();
    SessionReport {
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

/// Logs every session that was acted on (at warn for problems), and the pass's errors.
pub fn log(report: &JobReport) {
    let job = report.job.as_str();
    for s in report
        .sessions
        .iter()
        .filter(|s| s.outcome != Outcome::NotYet)
    {
        if s.outcome.is_problem() {
            tracing::warn!(job, supplier = %s.supplier, session = %s.session_id, service = %s.service_id, end = s.session_end_height, relays = s.relays, compute_units = s.compute_units, reward_upokt = ?s.estimated_reward_upokt, proof = ?s.proof, tx = ?s.tx_hash, outcome = s.outcome.as_str(), detail = %s.detail, "session");
        } else {
            tracing::info!(job, supplier = %s.supplier, session = %s.session_id, service = %s.service_id, end = s.session_end_height, relays = s.relays, compute_units = s.compute_units, root = %s.root, reward_upokt = ?s.estimated_reward_upokt, proof = ?s.proof, tx = ?s.tx_hash, outcome = s.outcome.as_str(), detail = %s.detail, "session");
        }
    }
    for e in &report.errors {
        tracing::error!(job, error = %e, "pass failed");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn session(outcome: Outcome) -> SessionReport {
        let mut s = session_report("pokt1s", &lode_store_api::SessionInfo::default());
        s.outcome = outcome;
        s
    }

    #[test]
    fn problems_fail_the_job_and_show_in_the_summary() {
        let mut r = JobReport::new(JobKind::Claim);
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
        let mut e = JobReport::new(JobKind::Prove);
        e.errors.push("chain down".into());
        assert!(e.failed());
        assert!(e.summary().ends_with("no sessions; errors: chain down"));
        let json = serde_json::to_value(&r).expect("json");
        assert_eq!(json["sessions"][3]["outcome"], "missed");
    }
}

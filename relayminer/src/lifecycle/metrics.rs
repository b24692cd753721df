//! Claim and proof counters for `/metrics` (in `relayminer run`).

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::Mutex;

use super::report::{JobReport, Outcome};

#[derive(Debug, Default)]
struct Inner {
    /// Sessions by (job, outcome).
    outcomes: BTreeMap<(&'static str, &'static str), u64>,
    /// uPOKT claimed (estimated by the chain's arithmetic) by claims this relayminer sent.
    claimed_upokt: u128,
    /// Sessions whose window is open and whose work is not done after the last pass.
    at_risk: BTreeMap<&'static str, u64>,
    failed_passes: BTreeMap<&'static str, u64>,
    last_height: BTreeMap<&'static str, i64>,
}

/// What the claim and prove passes did, accumulated.
#[derive(Debug, Default)]
pub struct LifecycleMetrics {
    inner: Mutex<Inner>,
}

impl LifecycleMetrics {
    /// Counts one pass.
    pub fn record(&self, report: &JobReport) {
        let mut m = self.inner.lock().expect("metrics lock");
        let job = report.job.as_str();
        let mut at_risk = 0;
        for s in &report.sessions {
            if s.outcome == Outcome::NotYet {
                continue;
            }
            *m.outcomes.entry((job, s.outcome.as_str())).or_default() += 1;
            if s.outcome == Outcome::Claimed {
                m.claimed_upokt += s.estimated_reward_upokt.unwrap_or(0);
            }
            if s.outcome == Outcome::Failed {
                at_risk += 1;
            }
        }
        m.at_risk.insert(job, at_risk);
        if !report.errors.is_empty() {
            *m.failed_passes.entry(job).or_default() += 1;
        }
        m.last_height.insert(job, report.height);
    }

    /// Sessions of `job` with `outcome` so far.
    pub fn outcomes(&self, job: &str, outcome: Outcome) -> u64 {
        let m = self.inner.lock().expect("metrics lock");
        m.outcomes
            .iter()
            .filter(|((j, o), _)| *j == job && *o == outcome.as_str())
            .map(|(_, n)| n)
            .sum()
    }

    /// Prometheus text exposition.
    pub fn render(&self) -> String {
        let m = self.inner.lock().expect("metrics lock");
        let mut out = String::new();
        out.push_str("# HELP lode_lifecycle_sessions_total Sessions handled by claim and prove passes, by outcome.\n# TYPE lode_lifecycle_sessions_total counter\n");
        for ((job, outcome), n) in &m.outcomes {
            let _ = writeln!(
                out,
                "lode_lifecycle_sessions_total{{job=\"{job}\",outcome=\"{outcome}\"}} {n}"
            );
        }
        out.push_str("# HELP lode_claimed_upokt_total uPOKT claimed (the chain's arithmetic at session start).\n# TYPE lode_claimed_upokt_total counter\n");
        let _ = writeln!(out, "lode_claimed_upokt_total {}", m.claimed_upokt);
        out.push_str("# HELP lode_lifecycle_sessions_at_risk Sessions in an open window whose claim or proof failed in the last pass: alert on > 0.\n# TYPE lode_lifecycle_sessions_at_risk gauge\n");
        for (job, n) in &m.at_risk {
            let _ = writeln!(out, "lode_lifecycle_sessions_at_risk{{job=\"{job}\"}} {n}");
        }
        out.push_str("# HELP lode_lifecycle_failed_passes_total Passes that could not finish (chain or store unreachable beyond the outage budget).\n# TYPE lode_lifecycle_failed_passes_total counter\n");
        for (job, n) in &m.failed_passes {
            let _ = writeln!(
                out,
                "lode_lifecycle_failed_passes_total{{job=\"{job}\"}} {n}"
            );
        }
        out.push_str("# HELP lode_lifecycle_last_pass_height Chain height of the last pass.\n# TYPE lode_lifecycle_last_pass_height gauge\n");
        for (job, h) in &m.last_height {
            let _ = writeln!(out, "lode_lifecycle_last_pass_height{{job=\"{job}\"}} {h}");
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passes_accumulate_into_the_exposition() {
        let m = LifecycleMetrics::default();
        let mut r = JobReport::new(crate::lifecycle::JobKind::Claim);
        r.height = 7;
        let mut s =
            crate::lifecycle::session_report("pokt1s", &lode_store_api::SessionInfo::default());
        s.outcome = Outcome::Claimed;
        s.estimated_reward_upokt = Some(4200);
        r.sessions = vec![s.clone(), s.clone()];
        s.outcome = Outcome::Failed;
        r.sessions.push(s);
        m.record(&r);
        assert_eq!(m.outcomes("claim", Outcome::Claimed), 2);
        let text = m.render();
        assert!(
            text.contains("lode_lifecycle_sessions_total{job=\"claim\",outcome=\"claimed\"} 2")
        );
        assert!(text.contains("lode_claimed_upokt_total 8400"));
        assert!(text.contains("lode_lifecycle_sessions_at_risk{job=\"claim\"} 1"));
        assert!(text.contains("lode_lifecycle_last_pass_height{job=\"claim\"} 7"));
    }
}

//! The window scheduler: follows each Supplier's chain (read-only: height and shared
//! params, no keys) and starts a `relayminer claim` Job when a claim window opens and a
//! `relayminer prove` Job when a proof window opens. Job names carry the window's opening
//! height, so a restarted operator (or a second pass) finds the Job instead of starting
//! another; the jobs themselves are idempotent.

use std::collections::BTreeMap;
use std::time::Duration;

use kube::api::{Api, ListParams};
use kube::{Client, ResourceExt};
use lode_chain::pocket::PocketQuery;
use lode_chain::{ChainGrpc, CometRpc, RetryPolicy};
use lode_crds::Supplier;
use lode_kernels::session::SharedParams;

use crate::build::Images;
use crate::build::jobs::{Window, due, window_job};

/// Session end heights whose claim or proof window can still be open at `height`.
pub fn live_session_ends(height: i64, p: &SharedParams) -> Vec<i64> {
    let mut out = Vec::new();
    let mut end = p.session_end_height(height);
    // The current session has not ended; start with the previous one.
    if end >= height {
        end -= p.num_blocks_per_session;
    }
    while end > 0 && p.windows(end).proof_window_close_height >= height {
        out.push(end);
        end -= p.num_blocks_per_session;
    }
    out
}

/// The Jobs due at `height` for a supplier, as (window, opening height).
pub fn jobs_due(height: i64, p: &SharedParams) -> Vec<(Window, i64)> {
    due(height, live_session_ends(height, p), |end| {
        let w = p.windows(end);
        (
            w.claim_window_open_height,
            w.claim_window_close_height,
            w.proof_window_open_height,
            w.proof_window_close_height,
        )
    })
}

/// The chain clients of each (RPC, gRPC) pair of endpoints, kept between passes.
pub type Chains = BTreeMap<(String, String), (CometRpc, PocketQuery)>;

/// One pass: for every Supplier, the Jobs due at its chain's current height.
pub async fn pass(
    client: &Client,
    images: &Images,
    chains: &mut Chains,
) -> Result<usize, kube::Error> {
    let suppliers = Api::<Supplier>::all(client.clone())
        .list(&ListParams::default())
        .await?
        .items;
    let mut created = 0;
    for s in suppliers {
        created += supplier_pass(client, images, chains, &s).await?;
    }
    Ok(created)
}

/// The Jobs due for one Supplier; how many this call created. A chain that cannot be
/// read is logged and skipped (the next pass tries again).
#[tracing::instrument(skip_all, fields(namespace = s.namespace().unwrap_or_default(), supplier = %s.name_any(), height = tracing::field::Empty))]
async fn supplier_pass(
    client: &Client,
    images: &Images,
    chains: &mut Chains,
    s: &Supplier,
) -> Result<usize, kube::Error> {
    let key = (s.spec.chain.rpc_url.clone(), s.spec.chain.grpc_url.clone());
    if !chains.contains_key(&key) {
        let retry = RetryPolicy::default();
        let Ok(grpc) = ChainGrpc::new(&key.1, retry) else {
            tracing::warn!(url = %key.1, "bad chain gRPC URL");
            return Ok(0);
        };
        chains.insert(
            key.clone(),
            (CometRpc::new(&key.0, retry), PocketQuery::new(grpc)),
        );
    }
    let (rpc, query) = &chains[&key];
    let height = match rpc.status().await {
        Ok(st) => st.latest_height,
        Err(e) => {
            tracing::warn!(error = %e, "chain node unreachable");
            return Ok(0);
        }
    };
    tracing::Span::current().record("height", height);
    let params = match query.shared_params_at(height).await {
        Ok(p) => p.shared,
        Err(e) => {
            tracing::warn!(error = %e, "shared params");
            return Ok(0);
        }
    };
    let mut created = 0;
    for (window, open) in jobs_due(height, &params) {
        let job = match window_job(s, window, open, images) {
            Ok(j) => j,
            Err(e) => {
                tracing::warn!(error = %e, "job not built");
                continue;
            }
        };
        if crate::apply::ensure_job(client, &job).await? {
            created += 1;
            tracing::info!(job = %job.name_any(), "window job started");
        }
    }
    Ok(created)
}

/// Runs passes every `period` until the process stops.
pub async fn run(
    client: Client,
    images: Images,
    period: Duration,
    metrics: std::sync::Arc<crate::admin::OperatorMetrics>,
) {
    let mut chains = BTreeMap::new();
    loop {
        match pass(&client, &images, &mut chains).await {
            Ok(n) => {
                metrics
                    .jobs_created
                    .fetch_add(n as u64, std::sync::atomic::Ordering::Relaxed);
            }
            Err(e) => tracing::warn!(error = %e, "window scheduler pass failed"),
        }
        tokio::time::sleep(period).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jobs_come_due_at_each_window_opening() {
        // Code defaults: 10-block sessions ending at 10, 20, …; claim window
        // [E+2, E+6], proof window [E+6, E+10].
        let p = SharedParams::default();
        assert_eq!(live_session_ends(15, &p), vec![10]);
        assert_eq!(
            live_session_ends(20, &p),
            vec![10],
            "session 20 is still on"
        );
        assert_eq!(
            live_session_ends(21, &p),
            vec![20],
            "session 10 settled at 20"
        );
        assert_eq!(jobs_due(11, &p), vec![], "no window open yet");
        assert_eq!(jobs_due(12, &p), vec![(Window::Claim, 12)]);
        assert_eq!(
            jobs_due(16, &p),
            vec![(Window::Claim, 12), (Window::Prove, 16)]
        );
        assert_eq!(
            jobs_due(22, &p),
            vec![(Window::Claim, 22)],
            "session 10's proof window closed at 20"
        );
        // Every opening shows up at its own height, once per window.
        let mut seen = std::collections::BTreeSet::new();
        for h in 1..=60 {
            seen.extend(jobs_due(h, &p));
        }
        let claims: Vec<i64> = seen
            .iter()
            .filter(|(w, _)| *w == Window::Claim)
            .map(|(_, h)| *h)
            .collect();
        assert_eq!(claims, vec![12, 22, 32, 42, 52]);
    }
}

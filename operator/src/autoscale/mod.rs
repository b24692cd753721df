//! The demand autoscaler: for every ServiceModel in `lode` mode, read the demand of its
//! ready serving pods straight from their admin ports (`GET /demand` of `relayminer
//! serve`; no Prometheus needed), decide (`decide`), and write replicas through the
//! ServiceModel's scale subresource. Each change is an Event and an entry in
//! `status.decisions` (the last `HISTORY`), with the signal values that drove it.
//!
//! Demand is relays in flight: a relay waiting for the engine is in flight, so engine
//! queueing shows there. serve's store queue is not demand (more GPUs would not empty
//! it) and is left to the store's own alerts. Scale-down removes pods through the
//! Deployment; each serve pod then drains on SIGTERM (stops accepting, finishes in-flight
//! relays and streams, flushes mined relays to the store) within its grace period.

pub mod decide;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, ListParams, Patch, PatchParams};
use kube::{Client, ResourceExt};
use lode_contracts::demand::{DemandReport, MAX_DEMAND_BYTES};
use lode_crds::{AutoscalingMode, ScaleDecision, ServiceModel, ServiceModelStatus};

use crate::build::{ports, servicemodel::desired_replicas};
use crate::context::Context;
use crate::{fetch, status};

/// A merge patch of the scale subresource: the replicas wanted.
#[derive(Debug, serde::Serialize)]
struct Scale {
    spec: ScaleSpec,
}

#[derive(Debug, serde::Serialize)]
struct ScaleSpec {
    replicas: i32,
}
use decide::{Decision, Policy, Recommender, Signals};

/// Decisions kept in `status.decisions`.
pub const HISTORY: usize = 10;

/// The in-flight relays and completion tokens per second of `service` on one serve pod
/// (its `GET /demand`, bounded in size and time); `None` when it does not answer.
async fn demand(addr: &str, service: &str) -> Option<Signals> {
    let report: DemandReport =
        fetch::admin_get(addr, "/demand", MAX_DEMAND_BYTES, fetch::ADMIN_TIMEOUT).await?;
    let mut out = Signals::default();
    for d in report.services.iter().filter(|d| d.service_id == service) {
        out.in_flight += d.in_flight;
        out.completion_tokens_per_second += d.completion_tokens_per_second;
    }
    Some(out)
}

fn ready(p: &Pod) -> bool {
    p.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
        && p.metadata.deletion_timestamp.is_none()
}

fn unschedulable(p: &Pod) -> bool {
    p.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|c| {
            c.iter()
                .any(|c| c.type_ == "PodScheduled" && c.status == "False")
        })
}

/// The policy a ServiceModel's spec sets.
pub fn policy(sm: &ServiceModel) -> Policy {
    let a = &sm.spec.autoscaling;
    Policy {
        min: sm.spec.min_replicas,
        max: sm.spec.max_replicas,
        target_in_flight: a.target_in_flight_per_replica,
        target_tokens_per_second: a
            .target_completion_tokens_per_second_per_replica
            .map(f64::from),
        window_seconds: f64::from(a.scale_down_stabilization_seconds),
    }
}

/// Runs passes every `period` until the process stops.
pub async fn run(ctx: Arc<Context>, period: Duration) {
    let epoch = Instant::now();
    let mut state: HashMap<(String, String), Recommender> = HashMap::new();
    loop {
        if let Err(e) = pass(&ctx, &mut state, epoch).await {
            tracing::warn!(error = %e, "autoscaler pass failed");
        }
        tokio::time::sleep(period).await;
    }
}

async fn pass(
    ctx: &Context,
    state: &mut HashMap<(String, String), Recommender>,
    epoch: Instant,
) -> Result<(), kube::Error> {
    let client: &Client = &ctx.client;
    let models = Api::<ServiceModel>::all(client.clone())
        .list(&ListParams::default())
        .await?
        .items;
    let live: std::collections::HashSet<(String, String)> = models
        .iter()
        .map(|m| (m.namespace().unwrap_or_default(), m.name_any()))
        .collect();
    state.retain(|k, _| live.contains(k));
    for sm in models {
        if sm.metadata.deletion_timestamp.is_none() {
            model_pass(ctx, state, epoch, &sm).await?;
        }
    }
    Ok(())
}

/// One ServiceModel: its pods' demand read, a decision made, written when it changes.
#[tracing::instrument(skip_all, fields(namespace = sm.namespace().unwrap_or_default(), model = %sm.name_any()))]
async fn model_pass(
    ctx: &Context,
    state: &mut HashMap<(String, String), Recommender>,
    epoch: Instant,
    sm: &ServiceModel,
) -> Result<(), kube::Error> {
    let client: &Client = &ctx.client;
    let ns = sm.namespace().unwrap_or_default();
    let name = sm.name_any();
    let pods = fetch::serving_pods(client, sm).await?;
    let pending = pods.iter().filter(|p| unschedulable(p)).count() as i32;
    let status = sm.status.clone().unwrap_or_default();
    if sm.spec.autoscaling.mode != AutoscalingMode::Lode {
        // Replicas are someone else's; pods waiting for a GPU node are still shown.
        if status.pending_replicas != Some(pending) {
            let mine = owned(&status, status.observed_demand, pending);
            status::write(client, sm, status::AUTOSCALER, &mine).await?;
        }
        return Ok(());
    }
    let mut signals = Signals::default();
    let mut heard = 0;
    let ready_pods: Vec<&Pod> = pods.iter().filter(|p| ready(p)).collect();
    for p in &ready_pods {
        let Some(ip) = p.status.as_ref().and_then(|s| s.pod_ip.clone()) else {
            continue;
        };
        if let Some(s) = demand(&format!("{ip}:{}", ports::SERVE_ADMIN), &sm.spec.service_id).await
        {
            signals.in_flight += s.in_flight;
            signals.completion_tokens_per_second += s.completion_tokens_per_second;
            heard += 1;
        }
    }
    if heard < ready_pods.len() {
        // A pod that does not answer could be the busiest: no decision on half a view.
        tracing::debug!(heard, ready = ready_pods.len(), "demand incomplete");
        return Ok(());
    }
    let current = desired_replicas(sm);
    let rec = state.entry((ns, name)).or_default();
    let now = epoch.elapsed().as_secs_f64();
    let decision = rec.decide(now, current, &signals, &policy(sm));
    let demand_now = signals.in_flight as i64;
    match decision {
        Some(d) => apply(ctx, sm, &d, &signals, pending).await?,
        None if status.observed_demand != Some(demand_now)
            || status.pending_replicas != Some(pending) =>
        {
            let mine = owned(&status, Some(demand_now), pending);
            status::write(client, sm, status::AUTOSCALER, &mine).await?;
        }
        None => {}
    }
    Ok(())
}

/// The autoscaler's part of a status: the decisions kept, the demand and the pending
/// pods. Sent whole every time (server-side apply removes what a manager stops sending).
fn owned(status: &ServiceModelStatus, demand: Option<i64>, pending: i32) -> ServiceModelStatus {
    ServiceModelStatus {
        decisions: status.decisions.clone(),
        observed_demand: demand,
        pending_replicas: Some(pending),
        ..ServiceModelStatus::default()
    }
}

/// Writes a decision: the scale subresource, an Event, the status history.
async fn apply(
    ctx: &Context,
    sm: &ServiceModel,
    d: &Decision,
    s: &Signals,
    pending: i32,
) -> Result<(), kube::Error> {
    let ns = sm.namespace().unwrap_or_default();
    let name = sm.name_any();
    let api = Api::<ServiceModel>::namespaced(ctx.client.clone(), &ns);
    api.patch_scale(
        &name,
        &PatchParams::default(),
        &Patch::Merge(Scale {
            spec: ScaleSpec { replicas: d.to },
        }),
    )
    .await?;
    tracing::info!(model = %name, from = d.from, to = d.to, reason = %d.reason, "scaled");
    let mut decisions = sm
        .status
        .as_ref()
        .map(|st| st.decisions.clone())
        .unwrap_or_default();
    decisions.push(ScaleDecision {
        time: k8s_openapi::jiff::Timestamp::now()
            .strftime("%Y-%m-%dT%H:%M:%SZ")
            .to_string(),
        from: d.from,
        to: d.to,
        reason: d.reason.clone(),
        in_flight: s.in_flight as i64,
        completion_tokens_per_second: s.completion_tokens_per_second.round() as i64,
    });
    let skip = decisions.len().saturating_sub(HISTORY);
    decisions.drain(..skip);
    let mine = ServiceModelStatus {
        decisions,
        observed_demand: Some(s.in_flight as i64),
        pending_replicas: Some(pending),
        ..ServiceModelStatus::default()
    };
    status::write(&ctx.client, sm, status::AUTOSCALER, &mine).await?;
    ctx.metrics
        .scale_decisions
        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    ctx.event(
        sm,
        false,
        if d.to > d.from {
            "ScaledUp"
        } else {
            "ScaledDown"
        },
        format!("{} → {} replicas: {}", d.from, d.to, d.reason),
    )
    .await;
    Ok(())
}

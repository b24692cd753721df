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
use lode_crds::{AutoscalingMode, ScaleDecision, ServiceModel};
use serde_json::json;

use crate::build::{component, ports, servicemodel::desired_replicas};
use crate::controller::Context;
use decide::{Decision, Policy, Recommender, Signals};

/// Decisions kept in `status.decisions`.
pub const HISTORY: usize = 10;

/// `GET /demand` of one serve pod (`{"height": …, "services": [{"service_id", "in_flight",
/// "completion_tokens_per_second", …}]}`): the in-flight relays and completion tokens
/// per second of `service`.
async fn demand(addr: &str, service: &str) -> Option<Signals> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let attempt = async {
        let mut s = tokio::net::TcpStream::connect(addr).await.ok()?;
        s.write_all(format!("GET /demand HTTP/1.0\r\nHost: {addr}\r\n\r\n").as_bytes())
            .await
            .ok()?;
        let mut buf = Vec::new();
        s.read_to_end(&mut buf).await.ok()?;
        let text = String::from_utf8_lossy(&buf);
        let (_, body) = text.split_once("\r\n\r\n")?;
        let v: serde_json::Value = serde_json::from_str(body).ok()?;
        let mut out = Signals::default();
        for d in v["services"]
            .as_array()?
            .iter()
            .filter(|d| d["service_id"] == service)
        {
            out.in_flight += d["in_flight"].as_u64().unwrap_or(0);
            out.completion_tokens_per_second +=
                d["completion_tokens_per_second"].as_f64().unwrap_or(0.0);
        }
        Some(out)
    };
    tokio::time::timeout(Duration::from_millis(800), attempt)
        .await
        .ok()
        .flatten()
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
        if sm.metadata.deletion_timestamp.is_some() {
            continue;
        }
        let ns = sm.namespace().unwrap_or_default();
        let name = sm.name_any();
        let selector = format!(
            "app.kubernetes.io/component={},app.kubernetes.io/instance={name}",
            component::SERVE
        );
        let pods = Api::<Pod>::namespaced(client.clone(), &ns)
            .list(&ListParams::default().labels(&selector))
            .await?
            .items;
        let pending = pods.iter().filter(|p| unschedulable(p)).count() as i32;
        let status = sm.status.clone().unwrap_or_default();
        if sm.spec.autoscaling.mode != AutoscalingMode::Lode {
            // Replicas are someone else's; pods waiting for a GPU node are still shown.
            if status.pending_replicas != pending {
                patch_status(client, &sm, json!({"pendingReplicas": pending})).await?;
            }
            continue;
        }
        let mut signals = Signals::default();
        let mut heard = 0;
        let ready_pods: Vec<&Pod> = pods.iter().filter(|p| ready(p)).collect();
        for p in &ready_pods {
            let Some(ip) = p.status.as_ref().and_then(|s| s.pod_ip.clone()) else {
                continue;
            };
            if let Some(s) =
                demand(&format!("{ip}:{}", ports::SERVE_ADMIN), &sm.spec.service_id).await
            {
                signals.in_flight += s.in_flight;
                signals.completion_tokens_per_second += s.completion_tokens_per_second;
                heard += 1;
            }
        }
        if heard < ready_pods.len() {
            // A pod that does not answer could be the busiest: no decision on half a view.
            tracing::debug!(model = %name, heard, ready = ready_pods.len(), "demand incomplete");
            continue;
        }
        let current = desired_replicas(&sm);
        let rec = state.entry((ns.clone(), name.clone())).or_default();
        let now = epoch.elapsed().as_secs_f64();
        let decision = rec.decide(now, current, &signals, &policy(&sm));
        let demand_now = signals.in_flight as i64;
        match decision {
            Some(d) => apply(ctx, &sm, &d, &signals, pending).await?,
            None if status.observed_demand != demand_now || status.pending_replicas != pending => {
                patch_status(
                    client,
                    &sm,
                    json!({"observedDemand": demand_now, "pendingReplicas": pending}),
                )
                .await?;
            }
            None => {}
        }
    }
    Ok(())
}

async fn patch_status(
    client: &Client,
    sm: &ServiceModel,
    status: serde_json::Value,
) -> Result<(), kube::Error> {
    Api::<ServiceModel>::namespaced(client.clone(), &sm.namespace().unwrap_or_default())
        .patch_status(
            &sm.name_any(),
            &PatchParams::default(),
            &Patch::Merge(json!({ "status": status })),
        )
        .await
        .map(|_| ())
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
        &Patch::Merge(json!({"spec": {"replicas": d.to}})),
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
    patch_status(
        &ctx.client,
        sm,
        json!({"decisions": decisions, "observedDemand": s.in_flight, "pendingReplicas": pending}),
    )
    .await?;
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

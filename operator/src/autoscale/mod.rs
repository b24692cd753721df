//! The demand autoscaler: for every ServiceModel in `lode` mode, read the demand of its
//! ready relay pods straight from their admin ports (`GET /demand` of `relayminer
//! serve`; no Prometheus needed), decide (`decide`), and write the engine replicas
//! through the ServiceModel's scale subresource. The relay tier is scaled apart, by its
//! own relays in flight against `relay.targetInFlightPerReplica` (`spec.relay.replicas`),
//! and the relay pods' prefix counters become `status.prefixHitPercent`. Each change is an Event and an entry in
//! `status.decisions` (the last `HISTORY`), with the signal values that drove it.
//!
//! Demand is relays in flight: a relay waiting for the engine is in flight, so engine
//! queueing shows there. serve's store queue is not demand (more GPUs would not empty
//! it) and is left to the store's own alerts. Scale-down removes pods through the
//! Deployment; each serve pod then drains on SIGTERM (stops accepting, finishes in-flight
//! relays and streams, flushes mined relays to the store) within its grace period.

pub mod decide;
pub mod engines;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, ListParams, Patch, PatchParams};
use kube::{Client, ResourceExt};
use lode_contracts::demand::{DemandReport, MAX_DEMAND_BYTES};
use lode_crds::{AutoscalingMode, ScaleDecision, ServiceModel, ServiceModelStatus};

use crate::build::ports;
use crate::build::servicemodel::{desired_relay_replicas, desired_replicas};
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
use decide::{Decision, EngineLoad, Policy, Recommender, Signals};

/// Decisions kept in `status.decisions`.
pub const HISTORY: usize = 10;

/// What one relay pod reports for a service.
#[derive(Clone, Copy, Debug, Default)]
struct PodDemand {
    signals: Signals,
    /// Prompt bytes routed by prefix, and of them the bytes matched (cumulative).
    prompt_bytes: u64,
    matched_bytes: u64,
}

/// The demand of `service` on one relay pod (its `GET /demand`, bounded in size and
/// time); `None` when it does not answer.
async fn demand(addr: &str, service: &str) -> Option<PodDemand> {
    let report: DemandReport =
        fetch::admin_get(addr, "/demand", MAX_DEMAND_BYTES, fetch::ADMIN_TIMEOUT).await?;
    let mut out = PodDemand::default();
    for d in report.services.iter().filter(|d| d.service_id == service) {
        out.signals.in_flight = out.signals.in_flight.saturating_add(d.in_flight);
        out.signals.completion_tokens_per_second += d.completion_tokens_per_second;
        out.signals.waking |= d.waking;
        out.prompt_bytes = out.prompt_bytes.saturating_add(d.prefix_prompt_bytes);
        out.matched_bytes = out.matched_bytes.saturating_add(d.prefix_matched_bytes);
    }
    Some(out)
}

/// The percentage of prompt bytes that went where their prefix had gone before.
pub fn hit_percent(prompt_bytes: u64, matched_bytes: u64) -> Option<i32> {
    (prompt_bytes > 0).then(|| {
        (u128::from(matched_bytes.min(prompt_bytes)) * 100 / u128::from(prompt_bytes)) as i32
    })
}

/// The relay tier's policy: its bounds and its own in-flight target.
pub fn relay_policy(sm: &ServiceModel) -> Policy {
    let r = &sm.spec.relay;
    Policy {
        min: r.min_replicas,
        max: r.max_replicas.max(r.min_replicas),
        target_in_flight: r.target_in_flight_per_replica,
        target_tokens_per_second: None,
        target_waiting: None,
        target_kv_usage: None,
        window_seconds: f64::from(sm.spec.autoscaling.scale_down_stabilization_seconds),
        idle_seconds: 0.0,
    }
}

/// The memory of one ServiceModel's two tiers.
#[derive(Debug, Default)]
pub struct ModelState {
    engines: Recommender,
    relay: Recommender,
    /// A scale-up whose engines are not all ready yet: when it was decided (the first
    /// of several in a row) and the replicas it asked for.
    cold: Option<(f64, i32)>,
}

impl ModelState {
    /// Follows a scale-up to Ready: returns its cold start, in milliseconds, on the pass
    /// that sees `ready` reach the replicas asked for. A scale-down forgets it.
    fn cold_start(&mut self, now: f64, ready: i32, wanted: i32) -> Option<i64> {
        let (since, to) = self.cold?;
        if wanted < to {
            self.cold = None;
            return None;
        }
        if ready < to {
            return None;
        }
        self.cold = None;
        Some(((now - since) * 1000.0).round() as i64)
    }

    /// A scale-up was decided at `now`, to `to` replicas.
    fn scaled_up(&mut self, now: f64, to: i32) {
        let since = self.cold.map_or(now, |(t, _)| t);
        self.cold = Some((since, to));
    }
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
        target_waiting: a.target_waiting.map(f64::from),
        target_kv_usage: a.target_kv_cache_usage.map(|p| f64::from(p) / 100.0),
        window_seconds: f64::from(a.scale_down_stabilization_seconds),
        idle_seconds: f64::from(a.scale_to_zero_idle_seconds),
    }
}

/// Runs passes every `period` until the process stops.
pub async fn run(ctx: Arc<Context>, period: Duration) {
    let epoch = Instant::now();
    let mut state: HashMap<(String, String), ModelState> = HashMap::new();
    loop {
        if let Err(e) = pass(&ctx, &mut state, epoch).await {
            tracing::warn!(error = %e, "autoscaler pass failed");
        }
        tokio::time::sleep(period).await;
    }
}

async fn pass(
    ctx: &Context,
    state: &mut HashMap<(String, String), ModelState>,
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
    state: &mut HashMap<(String, String), ModelState>,
    epoch: Instant,
    sm: &ServiceModel,
) -> Result<(), kube::Error> {
    let client: &Client = &ctx.client;
    let ns = sm.namespace().unwrap_or_default();
    let name = sm.name_any();
    // Engine pods waiting for a GPU node; demand from the relay tier, which sees every
    // relay (in flight includes relays waiting for an engine).
    let pods = fetch::engine_pods(client, sm).await?;
    let pending = pods.iter().filter(|p| unschedulable(p)).count() as i32;
    let status = sm.status.clone().unwrap_or_default();
    if sm.spec.autoscaling.mode != AutoscalingMode::Lode {
        // Replicas are someone else's; pods waiting for a GPU node are still shown.
        if status.pending_replicas != Some(pending) {
            let mine = Autoscaled {
                demand: status.observed_demand,
                pending,
                hit: status.prefix_hit_percent,
                cold: status.cold_start_milliseconds,
            };
            status::write(client, sm, status::AUTOSCALER, &mine.status(&status)).await?;
        }
        return Ok(());
    }
    let relay_pods = fetch::relay_pods(client, sm).await?;
    let mut total = PodDemand::default();
    let mut heard = 0;
    let ready_pods: Vec<&Pod> = relay_pods.iter().filter(|p| ready(p)).collect();
    for p in &ready_pods {
        let Some(ip) = p.status.as_ref().and_then(|s| s.pod_ip.clone()) else {
            continue;
        };
        if let Some(d) = demand(&format!("{ip}:{}", ports::SERVE_ADMIN), &sm.spec.service_id).await
        {
            total.signals.in_flight = total.signals.in_flight.saturating_add(d.signals.in_flight);
            total.signals.waking |= d.signals.waking;
            total.signals.completion_tokens_per_second += d.signals.completion_tokens_per_second;
            // Counters a pod reports: summed without overflow whatever they say.
            total.prompt_bytes = total.prompt_bytes.saturating_add(d.prompt_bytes);
            total.matched_bytes = total.matched_bytes.saturating_add(d.matched_bytes);
            heard += 1;
        }
    }
    if heard < ready_pods.len() {
        // A pod that does not answer could be the busiest: no decision on half a view.
        tracing::debug!(heard, ready = ready_pods.len(), "demand incomplete");
        return Ok(());
    }
    let mut signals = total.signals;
    let engine_policy = policy(sm);
    if engine_policy.target_waiting.is_some() || engine_policy.target_kv_usage.is_some() {
        signals.engines = engine_load(sm, &pods).await;
    }
    let hit = hit_percent(total.prompt_bytes, total.matched_bytes).or(status.prefix_hit_percent);
    let rec = state.entry((ns, name)).or_default();
    let now = epoch.elapsed().as_secs_f64();
    let wanted = desired_replicas(sm);
    let ready_engines = pods.iter().filter(|p| ready(p)).count() as i32;
    signals.starting = ready_engines < wanted;
    let cold = rec
        .cold_start(now, ready_engines, wanted)
        .or(status.cold_start_milliseconds);
    if cold != status.cold_start_milliseconds
        && let Some(ms) = cold
    {
        tracing::info!(cold_start_ms = ms, "engines ready after scale-up");
    }
    // The relay tier scales by its own relays in flight, apart from the engines.
    let relay_now = desired_relay_replicas(sm);
    let relay_signals = Signals {
        starting: false,
        ..signals
    };
    if let Some(d) = rec
        .relay
        .decide(now, relay_now, &relay_signals, &relay_policy(sm))
    {
        scale_relay(ctx, sm, &d).await?;
    }
    let decision = rec.engines.decide(now, wanted, &signals, &policy(sm));
    let demand_now = signals.in_flight as i64;
    let mine = Autoscaled {
        demand: Some(demand_now),
        pending,
        hit,
        cold,
    };
    match decision {
        Some(d) => {
            if d.to > d.from {
                rec.scaled_up(now, d.to);
            }
            apply(ctx, sm, &d, &signals, &mine).await?
        }
        None if status.observed_demand != mine.demand
            || status.pending_replicas != Some(pending)
            || status.prefix_hit_percent != hit
            || status.cold_start_milliseconds != cold =>
        {
            status::write(client, sm, status::AUTOSCALER, &mine.status(&status)).await?;
        }
        None => {}
    }
    Ok(())
}

/// The ready engine pods' own signals, their `/metrics` read at once (each within its
/// bound; one that does not answer is left out and named in the log).
async fn engine_load(sm: &ServiceModel, pods: &[Pod]) -> EngineLoad {
    // Triton serves its metrics on their own port; the OpenAI servers on theirs.
    let port = if sm.spec.engine.kind == lode_crds::EngineKind::Triton {
        crate::build::servicemodel::TRITON_METRICS_PORT
    } else {
        sm.spec.engine.port
    };
    let serving: Vec<(String, String)> = pods
        .iter()
        .filter(|p| ready(p))
        .filter_map(|p| Some((p.name_any(), p.status.as_ref()?.pod_ip.clone()?)))
        .collect();
    let reads = serving.iter().map(|(_, ip)| async move {
        let page = fetch::get_bounded(
            &format!("{ip}:{port}"),
            "/metrics",
            engines::MAX_METRICS_BYTES,
            engines::METRICS_TIMEOUT,
        )
        .await?;
        Some(engines::parse(&String::from_utf8_lossy(&page)))
    });
    let samples = futures_util::future::join_all(reads).await;
    let unread: Vec<&str> = serving
        .iter()
        .zip(&samples)
        .filter(|(_, s)| s.is_none())
        .map(|((name, _), _)| name.as_str())
        .collect();
    if !unread.is_empty() {
        tracing::info!(?unread, "engine metrics not read; the other engines decide");
    }
    engines::combine(serving.len() as u32, &samples)
}

/// A merge patch of the ServiceModel: the relay pods wanted.
#[derive(Debug, serde::Serialize)]
struct RelayScale {
    spec: RelaySpecPatch,
}

#[derive(Debug, serde::Serialize)]
struct RelaySpecPatch {
    relay: ScaleSpec,
}

/// Writes a relay-tier decision (`spec.relay.replicas`) and says so in an Event.
async fn scale_relay(ctx: &Context, sm: &ServiceModel, d: &Decision) -> Result<(), kube::Error> {
    let api =
        Api::<ServiceModel>::namespaced(ctx.client.clone(), &sm.namespace().unwrap_or_default());
    api.patch(
        &sm.name_any(),
        &PatchParams::default(),
        &Patch::Merge(RelayScale {
            spec: RelaySpecPatch {
                relay: ScaleSpec { replicas: d.to },
            },
        }),
    )
    .await?;
    tracing::info!(model = %sm.name_any(), from = d.from, to = d.to, reason = %d.reason, "relay tier scaled");
    ctx.event(
        sm,
        false,
        "RelayTierScaled",
        format!("relay tier {} → {} pods: {}", d.from, d.to, d.reason),
    )
    .await;
    Ok(())
}

/// The autoscaler's part of a status besides the decisions: the demand, the pending
/// pods, the prefix hit rate and the last cold start. Sent whole every time (server-side
/// apply removes what a manager stops sending).
#[derive(Clone, Copy, Debug)]
struct Autoscaled {
    demand: Option<i64>,
    pending: i32,
    hit: Option<i32>,
    cold: Option<i64>,
}

impl Autoscaled {
    fn status(&self, status: &ServiceModelStatus) -> ServiceModelStatus {
        ServiceModelStatus {
            decisions: status.decisions.clone(),
            observed_demand: self.demand,
            pending_replicas: Some(self.pending),
            prefix_hit_percent: self.hit,
            cold_start_milliseconds: self.cold,
            ..ServiceModelStatus::default()
        }
    }
}

/// Writes a decision: the scale subresource, an Event, the status history.
async fn apply(
    ctx: &Context,
    sm: &ServiceModel,
    d: &Decision,
    s: &Signals,
    mine: &Autoscaled,
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
        ..mine.status(&ServiceModelStatus::default())
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

#[cfg(test)]
mod tests {
    use super::*;

    /// The relay tier scales by its own relays in flight, within its bounds, and never
    /// with the engines' token target.
    #[test]
    fn the_relay_tier_has_its_own_policy() {
        let mut sm = crate::build::tests::sample_model();
        sm.spec.relay.target_in_flight_per_replica = 100;
        sm.spec
            .autoscaling
            .target_completion_tokens_per_second_per_replica = Some(10);
        let p = relay_policy(&sm);
        assert_eq!((p.min, p.max, p.target_tokens_per_second), (2, 8, None));
        let busy = Signals {
            in_flight: 450,
            completion_tokens_per_second: 1e6,
            ..Signals::default()
        };
        assert_eq!(Recommender::desired(&busy, &p), 5);
        assert_eq!(
            Recommender::desired(&Signals::default(), &p),
            2,
            "never below relay.minReplicas"
        );
        let mut r = Recommender::default();
        let d = r.decide(0.0, 2, &busy, &p).expect("scale up at once");
        assert_eq!((d.from, d.to), (2, 4), "at most doubling per step");
    }

    #[test]
    fn the_hit_rate_is_matched_over_prompt_bytes() {
        assert_eq!(hit_percent(0, 0), None, "nothing routed by prefix yet");
        assert_eq!(hit_percent(1000, 934), Some(93));
        assert_eq!(hit_percent(1000, 5000), Some(100), "bounded");
        assert_eq!(hit_percent(u64::MAX, u64::MAX / 2), Some(49), "no overflow");
    }

    /// The cold start runs from the first scale-up of a row to all its replicas ready;
    /// a scale-down before then forgets it.
    #[test]
    fn a_cold_start_is_measured_from_the_decision_to_ready() {
        let mut m = ModelState::default();
        assert_eq!(m.cold_start(0.0, 0, 0), None, "nothing asked for");
        m.scaled_up(10.0, 1);
        assert_eq!(m.cold_start(11.0, 0, 1), None, "starting");
        m.scaled_up(12.0, 2);
        assert_eq!(m.cold_start(20.0, 1, 2), None, "one of two");
        assert_eq!(m.cold_start(34.5, 2, 2), Some(24_500));
        assert_eq!(m.cold_start(40.0, 2, 2), None, "measured once");
        m.scaled_up(50.0, 3);
        assert_eq!(m.cold_start(51.0, 2, 2), None, "scaled down before ready");
        assert_eq!(m.cold_start(60.0, 3, 3), None, "forgotten");
    }

    /// A ready engine pod at `ip`.
    fn engine_pod(name: &str, ip: &str) -> Pod {
        serde_json::from_value(serde_json::json!({
            "metadata": {"name": name},
            "status": {"podIP": ip, "conditions": [{"type": "Ready", "status": "True"}]}
        }))
        .expect("pod")
    }

    /// Three ready engines on one port: one answers its metrics, one accepts the
    /// connection and never answers, one refuses it. The pass takes the metrics
    /// timeout, not longer, and the live engine's signals decide (AIBrix's #1032).
    #[tokio::test]
    async fn a_dead_metrics_endpoint_does_not_stall_the_others() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let live = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let port = live.local_addr().expect("addr").port();
        let stalled = tokio::net::TcpListener::bind(("127.0.0.2", port))
            .await
            .expect("bind 127.0.0.2 on the same port");
        tokio::spawn(async move {
            while let Ok((mut c, _)) = live.accept().await {
                let mut buf = [0u8; 1024];
                let _ = c.read(&mut buf).await;
                let body = "vllm:num_requests_waiting{model_name=\"m\"} 3\nvllm:kv_cache_usage_perc{model_name=\"m\"} 0.8\n";
                let _ = c
                    .write_all(
                        format!(
                            "HTTP/1.1 200 OK\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                            body.len()
                        )
                        .as_bytes(),
                    )
                    .await;
            }
        });
        let held = tokio::spawn(async move {
            let mut conns = Vec::new();
            while let Ok((c, _)) = stalled.accept().await {
                conns.push(c);
            }
        });
        let mut sm = crate::build::tests::sample_model();
        sm.spec.engine.port = i32::from(port);
        let pods = [
            engine_pod("live", "127.0.0.1"),
            engine_pod("stalled", "127.0.0.2"),
            engine_pod("refusing", "127.0.0.3"),
        ];
        let t = Instant::now();
        let load = engine_load(&sm, &pods).await;
        let took = t.elapsed();
        assert_eq!(load.ready, 3);
        assert_eq!(load.waiting, Some(3.0), "the live engine's queue");
        assert_eq!(load.kv_usage, Some(0.8));
        assert!(
            took < engines::METRICS_TIMEOUT + Duration::from_millis(800),
            "bounded by the timeout: {took:?}"
        );
        held.abort();
    }
}

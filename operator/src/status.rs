//! The last step of reconciling: what the status of a custom resource says, decided
//! from the facts and what the API server accepted (pure), and written through the
//! typed status structs with server-side apply, each writer owning its fields.

use std::collections::BTreeSet;

use k8s_openapi::api::apps::v1::DeploymentStatus;
use k8s_openapi::api::core::v1::{ContainerStateTerminated, Pod};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::api::{Api, Patch, PatchParams};
use kube::{Client, Resource, ResourceExt};
use lode_chain::proto::pocket::shared;
use lode_contracts::stake::StakeSpec;
use lode_crds::{
    GatewayPool, GatewayPoolStatus, ServiceModel, ServiceModelStatus, Supplier, SupplierStatus,
};
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::build::{self, BuildError};
use crate::fetch::SupplierFacts;

/// The field manager of the controllers' status writes.
pub const MANAGER: &str = build::MANAGER;
/// The field manager of the autoscaler's status writes (`pendingReplicas`,
/// `observedDemand`, `decisions`).
pub const AUTOSCALER: &str = "lode-operator-autoscaler";

/// `conditions` with `type_` set; `lastTransitionTime` changes only when the status flips.
pub fn set_condition(
    conditions: &[Condition],
    type_: &str,
    status: bool,
    reason: &str,
    message: String,
    generation: Option<i64>,
) -> Vec<Condition> {
    let status = if status { "True" } else { "False" };
    let mut out: Vec<Condition> = conditions
        .iter()
        .filter(|c| c.type_ != type_)
        .cloned()
        .collect();
    let since = conditions
        .iter()
        .find(|c| c.type_ == type_ && c.status == status)
        .map(|c| c.last_transition_time.clone())
        .unwrap_or_else(|| Time(k8s_openapi::jiff::Timestamp::now()));
    out.push(Condition {
        type_: type_.into(),
        status: status.into(),
        reason: reason.into(),
        message,
        observed_generation: generation,
        last_transition_time: since,
    });
    out.sort_by(|a, b| a.type_.cmp(&b.type_));
    out
}

/// Server-side applies `status` to `obj`'s status subresource as `manager`: the fields it
/// sends become (or stay) that manager's, the ones it sent before and no longer sends are
/// removed, the other managers' fields are left alone.
pub async fn write<K, S>(
    client: &Client,
    obj: &K,
    manager: &str,
    status: &S,
) -> Result<(), kube::Error>
where
    K: Resource<DynamicType = (), Scope = kube::core::NamespaceResourceScope>,
    K: Clone + DeserializeOwned + std::fmt::Debug,
    S: Serialize + std::fmt::Debug,
{
    #[derive(Debug, Serialize)]
    #[serde(rename_all = "camelCase")]
    struct StatusApply<'a, S> {
        api_version: &'a str,
        kind: &'a str,
        status: &'a S,
    }
    let api: Api<K> = Api::namespaced(client.clone(), &obj.namespace().unwrap_or_default());
    api.patch_status(
        &obj.name_any(),
        &PatchParams::apply(manager).force(),
        &Patch::Apply(StatusApply {
            api_version: &K::api_version(&()),
            kind: &K::kind(&()),
            status,
        }),
    )
    .await?;
    Ok(())
}

fn conditions_of(c: Option<&Vec<Condition>>) -> &[Condition] {
    c.map(Vec::as_slice).unwrap_or_default()
}

/// A ServiceModel that serves nothing: `Ready` False with why (the serving controller's
/// fields only).
pub fn model_not_ready(sm: &ServiceModel, reason: &str, message: String) -> ServiceModelStatus {
    let generation = sm.metadata.generation;
    let conditions = conditions_of(sm.status.as_ref().map(|s| &s.conditions));
    ServiceModelStatus {
        observed_generation: generation,
        conditions: set_condition(conditions, "Ready", false, reason, message, generation),
        ..ServiceModelStatus::default()
    }
}

/// What the serving pods' `weights-digest` init steps reported (their termination
/// messages).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct WeightsReport {
    /// The digests reported by pods whose step succeeded: one when the pods agree.
    pub digests: BTreeSet<String>,
    /// Why a pod's weights were refused (its step's latest failure), bounded.
    pub refused: Option<String>,
    /// Pods whose step has not reported yet.
    pub checking: usize,
}

impl WeightsReport {
    /// Reads the step's outcome from each pod that is not being deleted.
    pub fn of(pods: &[Pod]) -> Self {
        let mut r = Self::default();
        for pod in pods
            .iter()
            .filter(|p| p.metadata.deletion_timestamp.is_none())
        {
            let Some(step) = pod
                .status
                .as_ref()
                .and_then(|s| s.init_container_statuses.as_ref())
                .and_then(|cs| {
                    cs.iter()
                        .find(|c| c.name == build::servicemodel::WEIGHTS_DIGEST)
                })
            else {
                continue;
            };
            let now = step.state.as_ref().and_then(|s| s.terminated.as_ref());
            let last = step.last_state.as_ref().and_then(|s| s.terminated.as_ref());
            match (now, last) {
                (Some(t), _) if t.exit_code == 0 => match report_digest(t) {
                    Some(d) => {
                        r.digests.insert(d);
                    }
                    None => r.refused = Some("the weights-digest step reported no digest".into()),
                },
                (Some(t), _) | (None, Some(t)) => r.refused = Some(report_message(t)),
                (None, None) => r.checking += 1,
            }
        }
        r
    }
}

/// `blake3:<64 hex>` from a successful step's message.
fn report_digest(t: &ContainerStateTerminated) -> Option<String> {
    let m = t.message.as_deref()?.trim();
    let hex = m.strip_prefix("blake3:")?;
    (hex.len() == 64 && hex.bytes().all(|b| b.is_ascii_hexdigit()))
        .then(|| format!("blake3:{}", hex.to_ascii_lowercase()))
}

/// A failed step's message: its first line, at most 512 bytes (the kubelet keeps up to
/// 4 KiB of whatever the container wrote).
fn report_message(t: &ContainerStateTerminated) -> String {
    let m = t.message.as_deref().unwrap_or("").trim();
    let line = m.lines().find(|l| !l.trim().is_empty()).unwrap_or("");
    let mut end = line.len().min(512);
    while !line.is_char_boundary(end) {
        end -= 1;
    }
    if line.is_empty() {
        format!("the weights-digest step failed (exit code {})", t.exit_code)
    } else {
        line[..end].to_string()
    }
}

/// A served ServiceModel, from its engine and relay-tier Deployments as the API server
/// stored them and what its engine pods' weights-digest steps reported.
pub fn model_serving(
    sm: &ServiceModel,
    deployment: Option<&DeploymentStatus>,
    relay: Option<&DeploymentStatus>,
    weights: &WeightsReport,
) -> ServiceModelStatus {
    let generation = sm.metadata.generation;
    let conditions = conditions_of(sm.status.as_ref().map(|s| &s.conditions));
    let desired = build::servicemodel::desired_replicas(sm);
    let ready = deployment.and_then(|d| d.ready_replicas).unwrap_or(0);
    let replicas = deployment.and_then(|d| d.replicas).unwrap_or(0);
    let relay_ready = relay.and_then(|d| d.ready_replicas).unwrap_or(0);
    let relay_replicas = relay.and_then(|d| d.replicas).unwrap_or(0);
    let selector = build::selector(&sm.name_any(), build::component::ENGINE)
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(",");
    // At zero engines a ready relay tier serves by holding relays and waking them.
    let serving = ready >= desired && relay_ready > 0;
    let mut conds = set_condition(
        conditions,
        "Ready",
        serving,
        if serving && desired == 0 {
            "ScaledToZero"
        } else if serving {
            "Serving"
        } else if relay_ready == 0 {
            "NoRelayTier"
        } else {
            "Starting"
        },
        format!(
            "{ready} of {desired} engine replicas ready, {relay_ready} of {relay_replicas} relay pods ready"
        ),
        generation,
    );
    conds = set_condition(
        &conds,
        "Progressing",
        replicas != desired || ready < desired,
        "Rollout",
        format!("{replicas} pods, {desired} desired"),
        generation,
    );
    // The weights' digest, as the pods' digest steps report it: published when they
    // agree (a pinned digest is all a step lets through).
    let model_digest = (weights.digests.len() == 1 && weights.refused.is_none())
        .then(|| weights.digests.first().cloned())
        .flatten();
    let pinned = sm.spec.model.digest.is_some();
    if let Some(why) = &weights.refused {
        let reason = if pinned {
            "DigestMismatch"
        } else {
            "DigestFailed"
        };
        conds = set_condition(
            &conds,
            "WeightsVerified",
            false,
            reason,
            why.clone(),
            generation,
        );
    } else if weights.digests.len() > 1 {
        let all: Vec<&str> = weights.digests.iter().map(String::as_str).collect();
        conds = set_condition(
            &conds,
            "WeightsVerified",
            false,
            "DigestsDiffer",
            format!("serving pods hold different weights: {}", all.join(", ")),
            generation,
        );
    } else if let Some(d) = &model_digest {
        let (reason, message) = if pinned {
            ("Verified", format!("weights match the pinned {d}"))
        } else {
            (
                "Digested",
                format!("weights digested: {d} (pin it in spec.model.digest)"),
            )
        };
        conds = set_condition(&conds, "WeightsVerified", true, reason, message, generation);
    }
    ServiceModelStatus {
        replicas: Some(replicas),
        ready_replicas: Some(ready),
        relay_replicas: Some(relay_replicas),
        relay_ready_replicas: Some(relay_ready),
        model_digest,
        selector: Some(selector),
        observed_generation: generation,
        conditions: conds,
        ..ServiceModelStatus::default()
    }
}

/// A GatewayPool's status from its Deployment as stored.
pub fn gateway(g: &GatewayPool, deployment: Option<&DeploymentStatus>) -> GatewayPoolStatus {
    let ready = deployment.and_then(|d| d.ready_replicas).unwrap_or(0);
    let generation = g.metadata.generation;
    let conditions = conditions_of(g.status.as_ref().map(|s| &s.conditions));
    let wanted = g.spec.min_replicas;
    GatewayPoolStatus {
        ready_replicas: ready,
        observed_generation: generation,
        conditions: set_condition(
            conditions,
            "Ready",
            ready >= wanted,
            if ready >= wanted {
                "Serving"
            } else {
                "Starting"
            },
            format!("{ready} of {wanted} gateway pods ready"),
            generation,
        ),
    }
}

/// Where a Supplier stands on chain, decided from the facts.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Stake {
    /// The spec asks for a stake the chain would refuse (the reason, the message).
    Invalid(&'static str, String),
    /// Nothing serves yet: the chain must not advertise an endpoint that is not serving.
    WaitingForServingPods,
    /// The chain could not be read; nothing is started.
    ChainUnreachable(String),
    /// The chain has exactly the wanted state.
    Staked { upokt: Option<String> },
    /// The chain differs: a stake Job makes it match.
    Differs { upokt: Option<String> },
}

/// Compares the chain (read-only) with the wanted stake.
pub fn stake(
    want: Result<&StakeSpec, &BuildError>,
    onchain: Option<&Result<Option<shared::Supplier>, String>>,
) -> Stake {
    let want = match want {
        Ok(w) => w,
        Err(e) => return Stake::Invalid(e.reason(), e.to_string()),
    };
    let onchain = match onchain {
        None => return Stake::WaitingForServingPods,
        Some(Err(e)) => return Stake::ChainUnreachable(e.clone()),
        Some(Ok(o)) => o.as_ref(),
    };
    let upokt = onchain
        .and_then(|o| o.stake.as_ref())
        .map(|c| c.amount.clone());
    if onchain.is_some_and(|o| lode_chain::stake::is_met_by(want, o)) {
        Stake::Staked { upokt }
    } else {
        Stake::Differs { upokt }
    }
}

impl Stake {
    /// The `Staked` condition: (status, reason, message). `job` names the stake Job that
    /// was started when the chain differs.
    fn condition(
        &self,
        want: Option<&StakeSpec>,
        endpoint: &str,
        job: Option<&str>,
    ) -> (bool, &'static str, String) {
        match self {
            Self::Invalid(reason, message) => (false, reason, message.clone()),
            Self::WaitingForServingPods => (
                false,
                "WaitingForServingPods",
                "the stake Job starts once a serving pod is ready".into(),
            ),
            Self::ChainUnreachable(e) => (false, "ChainUnreachable", e.clone()),
            Self::Staked { .. } => (
                true,
                "Staked",
                format!(
                    "{} uPOKT for {} at {endpoint}",
                    want.map_or(0, |w| w.stake_upokt),
                    want.map(|w| {
                        w.services
                            .iter()
                            .map(|x| x.service_id.as_str())
                            .collect::<Vec<_>>()
                            .join(",")
                    })
                    .unwrap_or_default()
                ),
            ),
            Self::Differs { .. } => (
                false,
                "StakeJobStarted",
                format!(
                    "the chain differs from the spec; Job {} stakes it",
                    job.unwrap_or("(none)")
                ),
            ),
        }
    }

    fn upokt(&self) -> Option<String> {
        match self {
            Self::Staked { upokt } | Self::Differs { upokt } => upokt.clone(),
            _ => None,
        }
    }
}

/// A Supplier's status: its conditions (`Staked`, `StoreReady`, `Ready`,
/// `ClaimsHealthy`) and what the facts show.
pub fn supplier(
    s: &Supplier,
    facts: &SupplierFacts,
    store_ready: bool,
    want: Option<&StakeSpec>,
    stake: &Stake,
    stake_job: Option<&str>,
) -> SupplierStatus {
    let generation = s.metadata.generation;
    let conditions = conditions_of(s.status.as_ref().map(|st| &st.conditions));
    let (staked, reason, message) = stake.condition(want, &s.spec.public_endpoint, stake_job);
    let mut conds = set_condition(conditions, "Staked", staked, reason, message, generation);
    conds = set_condition(
        &conds,
        "StoreReady",
        store_ready,
        if store_ready {
            "StoreServing"
        } else {
            "StoreStarting"
        },
        format!("store {}", build::supplier::store_name(&s.name_any())),
        generation,
    );
    let ready_serving = facts.ready_serving;
    let ready = store_ready && ready_serving > 0;
    conds = set_condition(
        &conds,
        "Ready",
        ready,
        if ready { "Serving" } else { "NotServing" },
        format!("store ready: {store_ready}; {ready_serving} serving pods ready"),
        generation,
    );
    let o = &facts.outcomes;
    let at_risk: Vec<String> = [("claim", &o.last_claim), ("proof", &o.last_proof)]
        .into_iter()
        .filter_map(|(w, o)| {
            o.as_ref()
                .filter(|o| o.at_risk())
                .map(|o| format!("last {w}: {}", o.to_status().outcome))
        })
        .collect();
    conds = set_condition(
        &conds,
        "ClaimsHealthy",
        at_risk.is_empty(),
        if at_risk.is_empty() {
            "ClaimsLanding"
        } else {
            "ClaimsFailing"
        },
        if at_risk.is_empty() {
            "no failed or missed claim or proof in the latest windows".to_string()
        } else {
            at_risk.join("; ")
        },
        generation,
    );
    SupplierStatus {
        staked_upokt: stake.upokt(),
        services: Some(
            s.spec
                .services
                .iter()
                .map(|x| x.service_id.clone())
                .collect::<Vec<_>>()
                .join(","),
        ),
        ready_replicas: ready_serving,
        sessions_in_flight: facts.sessions.as_ref().map(|c| c.in_flight() as i64),
        last_claim: o.last_claim.as_ref().map(|o| o.to_status()),
        last_proof: o.last_proof.as_ref().map(|o| o.to_status()),
        observed_generation: generation,
        conditions: conds,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::build::tests::sample_supplier;
    use crate::outcomes::{LastOutcome, Outcomes};
    use lode_contracts::report::{Outcome, SessionOutcome};
    use lode_contracts::store::SessionCounts;

    fn onchain(stake: &str) -> shared::Supplier {
        shared::Supplier {
            owner_address: sample_supplier().spec.operator_address,
            stake: Some(lode_chain::proto::cosmos::base::v1beta1::Coin {
                denom: "upokt".into(),
                amount: stake.into(),
            }),
            services: vec![shared::SupplierServiceConfig {
                service_id: "llm".into(),
                endpoints: vec![shared::SupplierEndpoint {
                    url: "https://relay.example.com".into(),
                    rpc_type: lode_chain::stake::RPC_TYPE_REST,
                    configs: Vec::new(),
                }],
                rev_share: Vec::new(),
            }],
            ..Default::default()
        }
    }

    /// A serving pod whose weights-digest step is in `state` (and `last`, a failure
    /// before it).
    fn digest_pod(state: serde_json::Value, last: serde_json::Value) -> Pod {
        serde_json::from_value(serde_json::json!({
            "metadata": {"name": "p"},
            "status": {"initContainerStatuses": [
                {"name": "model", "ready": true, "restartCount": 0, "image": "i", "imageID": "",
                 "state": {"terminated": {"exitCode": 0}}},
                {"name": "weights-digest", "ready": false, "restartCount": 1, "image": "i", "imageID": "",
                 "state": state, "lastState": last}]}
        }))
        .expect("pod")
    }

    #[test]
    fn the_digest_the_pods_report_is_published_and_a_refusal_is_a_condition() {
        let mut sm = build::tests::sample_model();
        sm.spec.model.uri = None;
        sm.spec.model.pvc = Some("weights".into());
        let d = format!("blake3:{}", "0f".repeat(32));
        let ok = |m: &str| serde_json::json!({"terminated": {"exitCode": 0, "message": m}});
        let none = serde_json::json!({});
        let deployment = DeploymentStatus {
            replicas: Some(2),
            ready_replicas: Some(1),
            ..DeploymentStatus::default()
        };
        let verified = |st: &ServiceModelStatus| {
            st.conditions
                .iter()
                .find(|c| c.type_ == "WeightsVerified")
                .map(|c| (c.status.clone(), c.reason.clone(), c.message.clone()))
        };

        // Unpinned: the digest the pods agree on, uppercase or with a newline.
        let pods = [
            digest_pod(ok(&format!("{d}\n")), none.clone()),
            digest_pod(
                ok(&d.to_uppercase().replace("BLAKE3", "blake3")),
                none.clone(),
            ),
        ];
        let report = WeightsReport::of(&pods);
        assert_eq!(report.digests.len(), 1);
        let st = model_serving(&sm, Some(&deployment), Some(&deployment), &report);
        assert_eq!(st.model_digest, Some(d.clone()));
        let (status, reason, message) = verified(&st).expect("condition");
        assert_eq!((status.as_str(), reason.as_str()), ("True", "Digested"));
        assert!(message.contains(&d), "{message}");

        // Pinned and verified.
        sm.spec.model.digest = Some(d.clone());
        let st = model_serving(&sm, Some(&deployment), Some(&deployment), &report);
        assert_eq!(st.model_digest, Some(d.clone()));
        assert_eq!(verified(&st).expect("condition").1, "Verified");

        // One pod refuses its weights (crash looping: waiting, the failure its last
        // state): the condition says why, nothing is published.
        let why = format!(
            "the weights in /models have digest blake3:{}, not the pinned {d}",
            "aa".repeat(32)
        );
        let refusing = digest_pod(
            serde_json::json!({"waiting": {"reason": "CrashLoopBackOff"}}),
            serde_json::json!({"terminated": {"exitCode": 1, "message": format!("{why}\nmore log")}}),
        );
        let report = WeightsReport::of(&[pods[0].clone(), refusing]);
        assert_eq!(report.refused.as_deref(), Some(why.as_str()));
        let st = model_serving(&sm, Some(&deployment), Some(&deployment), &report);
        assert_eq!(st.model_digest, None);
        assert_eq!(
            verified(&st),
            Some(("False".into(), "DigestMismatch".into(), why))
        );

        // Pods holding different weights (a PVC changed under a rollout).
        let other = format!("blake3:{}", "1e".repeat(32));
        let report = WeightsReport::of(&[pods[0].clone(), digest_pod(ok(&other), none.clone())]);
        let st = model_serving(&sm, Some(&deployment), Some(&deployment), &report);
        assert_eq!(st.model_digest, None);
        assert_eq!(verified(&st).expect("condition").1, "DigestsDiffer");

        // Still digesting, a garbage report, a huge message: bounded and said.
        let running = digest_pod(serde_json::json!({"running": {}}), none.clone());
        assert_eq!(WeightsReport::of(&[running]).checking, 1);
        let garbage = WeightsReport::of(&[digest_pod(ok("sha256:00"), none.clone())]);
        assert!(garbage.refused.expect("refused").contains("no digest"));
        let huge = digest_pod(
            serde_json::json!({"terminated": {"exitCode": 1, "message": "é".repeat(4000)}}),
            none,
        );
        let refused = WeightsReport::of(&[huge]).refused.expect("refused");
        assert!(refused.len() <= 512, "{}", refused.len());
        // Weights the engine downloads: no step, nothing said.
        let st = model_serving(
            &build::tests::sample_model(),
            Some(&deployment),
            Some(&deployment),
            &WeightsReport::default(),
        );
        assert_eq!((st.model_digest.clone(), verified(&st)), (None, None));
    }

    /// Ready needs the engines wanted and a ready relay pod in front of them; the
    /// status counts both tiers.
    #[test]
    fn a_model_is_ready_with_its_engines_and_a_relay_tier() {
        let sm = build::tests::sample_model();
        let want = build::servicemodel::desired_replicas(&sm);
        let engines = DeploymentStatus {
            replicas: Some(want),
            ready_replicas: Some(want),
            ..DeploymentStatus::default()
        };
        let ready = |st: &ServiceModelStatus| {
            st.conditions
                .iter()
                .find(|c| c.type_ == "Ready")
                .map(|c| (c.status.clone(), c.reason.clone()))
                .expect("Ready")
        };
        let none_ready = DeploymentStatus {
            replicas: Some(2),
            ready_replicas: Some(0),
            ..DeploymentStatus::default()
        };
        let st = model_serving(
            &sm,
            Some(&engines),
            Some(&none_ready),
            &WeightsReport::default(),
        );
        assert_eq!(ready(&st), ("False".into(), "NoRelayTier".into()));
        assert_eq!(
            (st.relay_replicas, st.relay_ready_replicas),
            (Some(2), Some(0))
        );
        let relay = DeploymentStatus {
            replicas: Some(2),
            ready_replicas: Some(2),
            ..DeploymentStatus::default()
        };
        let st = model_serving(&sm, Some(&engines), Some(&relay), &WeightsReport::default());
        assert_eq!(ready(&st), ("True".into(), "Serving".into()));
        assert!(
            st.selector
                .clone()
                .expect("selector")
                .contains("component=engine"),
            "the scale subresource counts engine pods"
        );
        // Scaled to zero: the relay tier serves by holding relays and waking engines.
        let mut idle = sm.clone();
        idle.spec.min_replicas = 0;
        idle.spec.replicas = Some(0);
        let gone = DeploymentStatus::default();
        let st = model_serving(&idle, Some(&gone), Some(&relay), &WeightsReport::default());
        assert_eq!(ready(&st), ("True".into(), "ScaledToZero".into()));
        let st = model_serving(
            &idle,
            Some(&gone),
            Some(&none_ready),
            &WeightsReport::default(),
        );
        assert_eq!(ready(&st), ("False".into(), "NoRelayTier".into()));
    }

    #[test]
    fn the_stake_decision_table() {
        let want = crate::validate::stake_spec(&sample_supplier()).expect("valid");
        let same = onchain("100000000");
        let less = onchain("5");
        for (onchain, expected) in [
            (None, Stake::WaitingForServingPods),
            (
                Some(Err("node down".to_string())),
                Stake::ChainUnreachable("node down".into()),
            ),
            (Some(Ok(None)), Stake::Differs { upokt: None }),
            (
                Some(Ok(Some(less))),
                Stake::Differs {
                    upokt: Some("5".into()),
                },
            ),
            (
                Some(Ok(Some(same))),
                Stake::Staked {
                    upokt: Some("100000000".into()),
                },
            ),
        ] {
            assert_eq!(stake(Ok(&want), onchain.as_ref()), expected);
        }
        let invalid = BuildError::Invalid("stakeUpokt \"x\" is not a number".into());
        assert_eq!(
            stake(Err(&invalid), None),
            Stake::Invalid("InvalidSpec", "stakeUpokt \"x\" is not a number".into())
        );
    }

    #[test]
    fn a_suppliers_conditions_follow_the_facts() {
        let s = sample_supplier();
        let want = crate::validate::stake_spec(&s).expect("valid");
        let cond = |st: &SupplierStatus, t: &str| {
            let c = st
                .conditions
                .iter()
                .find(|c| c.type_ == t)
                .expect("condition");
            (c.status.clone(), c.reason.clone())
        };
        // Nothing serves yet; the store is starting.
        let facts = SupplierFacts::default();
        let st = supplier(
            &s,
            &facts,
            false,
            Some(&want),
            &Stake::WaitingForServingPods,
            None,
        );
        assert_eq!(cond(&st, "Ready"), ("False".into(), "NotServing".into()));
        assert_eq!(
            cond(&st, "StoreReady"),
            ("False".into(), "StoreStarting".into())
        );
        assert_eq!(
            cond(&st, "Staked"),
            ("False".into(), "WaitingForServingPods".into())
        );
        assert_eq!(
            cond(&st, "ClaimsHealthy"),
            ("True".into(), "ClaimsLanding".into())
        );
        assert_eq!(st.sessions_in_flight, None, "the store did not answer");
        // Serving, staked, a missed proof, three sessions not settled.
        let facts = SupplierFacts {
            ready_serving: 2,
            onchain: None,
            outcomes: Outcomes {
                last_claim: None,
                last_proof: Some(LastOutcome::Session {
                    session: SessionOutcome {
                        session_end_height: 30,
                        outcome: Outcome::Missed,
                        tx_hash: None,
                    },
                    more_sessions: 0,
                }),
                failed_jobs: 0,
            },
            sessions: Some(SessionCounts {
                sessions: [("open", 2), ("claimed", 1), ("settled", 4)]
                    .into_iter()
                    .map(|(k, v)| (k.to_string(), v))
                    .collect(),
            }),
        };
        let staked = Stake::Staked {
            upokt: Some("100000000".into()),
        };
        let st = supplier(&s, &facts, true, Some(&want), &staked, None);
        assert_eq!(cond(&st, "Ready"), ("True".into(), "Serving".into()));
        assert_eq!(cond(&st, "Staked"), ("True".into(), "Staked".into()));
        assert_eq!(
            cond(&st, "ClaimsHealthy"),
            ("False".into(), "ClaimsFailing".into())
        );
        assert_eq!(st.sessions_in_flight, Some(3));
        assert_eq!(st.staked_upokt.as_deref(), Some("100000000"));
        assert_eq!(st.last_proof.expect("proof").outcome, "missed");
        // The chain differs: the Job that stakes it is named.
        let differs = Stake::Differs { upokt: None };
        let st = supplier(
            &s,
            &facts,
            true,
            Some(&want),
            &differs,
            Some("supplier-1-stake-ab12cd34"),
        );
        let c = st
            .conditions
            .iter()
            .find(|c| c.type_ == "Staked")
            .expect("Staked");
        assert!(
            c.message.contains("supplier-1-stake-ab12cd34"),
            "{}",
            c.message
        );
    }
}

//! The last step of reconciling: what the status of a custom resource says, decided
//! from the facts and what the API server accepted (pure), and written through the
//! typed status structs with server-side apply, each writer owning its fields.

use k8s_openapi::api::apps::v1::DeploymentStatus;
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

/// A served ServiceModel, from its Deployment as the API server stored it.
pub fn model_serving(
    sm: &ServiceModel,
    deployment: Option<&DeploymentStatus>,
) -> ServiceModelStatus {
    let generation = sm.metadata.generation;
    let conditions = conditions_of(sm.status.as_ref().map(|s| &s.conditions));
    let desired = build::servicemodel::desired_replicas(sm);
    let ready = deployment.and_then(|d| d.ready_replicas).unwrap_or(0);
    let replicas = deployment.and_then(|d| d.replicas).unwrap_or(0);
    let selector = build::selector(&sm.name_any(), build::component::SERVE)
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(",");
    let mut conds = set_condition(
        conditions,
        "Ready",
        ready >= desired && desired > 0,
        if ready >= desired {
            "Serving"
        } else {
            "Starting"
        },
        format!("{ready} of {desired} serving pods ready"),
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
    // A pinned digest is what every pod of the current template checked before its
    // engine started: published once all pods are on that template and one is ready.
    let updated = deployment.and_then(|d| d.updated_replicas).unwrap_or(0);
    let model_digest = sm
        .spec
        .model
        .digest
        .clone()
        .filter(|_| ready > 0 && updated == replicas);
    ServiceModelStatus {
        replicas: Some(replicas),
        ready_replicas: Some(ready),
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

    #[test]
    fn a_pinned_digest_is_published_once_the_current_pods_checked_it() {
        let mut sm = build::tests::sample_model();
        let deployment = |replicas, updated, ready| DeploymentStatus {
            replicas: Some(replicas),
            updated_replicas: Some(updated),
            ready_replicas: Some(ready),
            ..DeploymentStatus::default()
        };
        assert_eq!(
            model_serving(&sm, Some(&deployment(1, 1, 1))).model_digest,
            None,
            "nothing pinned"
        );
        let pin = format!("blake3:{}", "0f".repeat(32));
        sm.spec.model.digest = Some(pin.clone());
        assert_eq!(
            model_serving(&sm, Some(&deployment(2, 2, 1))).model_digest,
            Some(pin)
        );
        // Rolling out (old pods may hold other weights), or nothing ready yet: absent.
        assert_eq!(
            model_serving(&sm, Some(&deployment(2, 1, 2))).model_digest,
            None
        );
        assert_eq!(
            model_serving(&sm, Some(&deployment(1, 1, 0))).model_digest,
            None
        );
        assert_eq!(model_serving(&sm, None).model_digest, None);
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

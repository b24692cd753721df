//! The controllers. Each reconcile is the same pipeline, one module a step:
//! [`fetch`](crate::fetch) (reads) → [`validate`](crate::validate) (pure) →
//! [`build`](crate::build) (pure objects) → [`apply`](crate::apply) (server-side apply)
//! → [`status`](crate::status) (decided from what the API server accepted, written
//! typed). The functions here only put the steps in order.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use k8s_openapi::api::apps::v1::{Deployment, StatefulSet};
use k8s_openapi::api::batch::v1::Job;
use kube::ResourceExt;
use kube::api::Api;
use kube::runtime::controller::{Action, Controller};
use kube::runtime::reflector::ObjectRef;
use kube::runtime::watcher;
use lode_crds::{GatewayPool, ServiceModel, Supplier};

use crate::status::Stake;
use crate::{apply, build, fetch, status, validate};

pub use crate::apply::apply;
pub use crate::context::{Context, Error, error_policy};
pub use crate::status::set_condition;

/// ServiceModel: serving Deployment, Service, PDB, NetworkPolicy and serve ConfigMap for
/// the Supplier that lists it; status from the Deployment.
#[tracing::instrument(skip_all, fields(namespace = sm.namespace().unwrap_or_default(), model = %sm.name_any(), service = %sm.spec.service_id))]
pub async fn reconcile_model(sm: Arc<ServiceModel>, ctx: Arc<Context>) -> Result<Action, Error> {
    let ns = sm.namespace().unwrap_or_default();
    let suppliers = fetch::suppliers(&ctx.client, &ns).await?;
    let supplier = match validate::supplier_of(&sm, &suppliers) {
        Ok(Some(s)) => s,
        Ok(None) => return unlisted_model(&sm, &ctx).await,
        Err(e) => return invalid_model(&sm, &ctx, "SharedModel", e.to_string()).await,
    };
    let objects = match build::servicemodel::serving(&sm, supplier, &ctx.images) {
        Ok(o) => o,
        Err(e) => return invalid_model(&sm, &ctx, e.reason(), e.to_string()).await,
    };
    let (engines, relay) = apply::serving(&ctx.client, &objects).await?;
    let pods = fetch::engine_pods(&ctx.client, &sm).await?;
    let weights = status::WeightsReport::of(&pods);
    let st = status::model_serving(
        &sm,
        engines.status.as_ref(),
        relay.status.as_ref(),
        &weights,
    );
    // Refused weights: an Event when the refusal is new (the condition keeps it).
    let refused = |conds: &[k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition]| {
        conds
            .iter()
            .find(|c| c.type_ == "WeightsVerified" && c.status == "False")
            .map(|c| (c.reason.clone(), c.message.clone()))
    };
    let before = sm.status.as_ref().and_then(|s| refused(&s.conditions));
    if let Some((reason, message)) = refused(&st.conditions)
        && before.as_ref() != Some(&(reason.clone(), message.clone()))
    {
        ctx.event(sm.as_ref(), true, &reason, message).await;
    }
    status::write(&ctx.client, sm.as_ref(), status::MANAGER, &st).await?;
    // Pods still starting, digesting their weights or refusing them change no
    // Deployment status when their init steps finish: look again soon.
    let settled =
        st.ready_replicas == st.replicas && pods.len() == st.ready_replicas.unwrap_or(0) as usize;
    if !settled || weights.checking > 0 || weights.refused.is_some() {
        return Ok(Action::requeue(Duration::from_secs(5)));
    }
    Ok(Action::requeue(Duration::from_secs(300)))
}

/// No Supplier lists the model: serving pods hold a supplier's key, so none may run for
/// it any more.
async fn unlisted_model(sm: &ServiceModel, ctx: &Context) -> Result<Action, Error> {
    let removed = apply::remove_serving(&ctx.client, sm).await?;
    if removed > 0 {
        ctx.event(
            sm,
            false,
            "NoSupplier",
            format!("no Supplier lists this ServiceModel; removed {removed} serving objects"),
        )
        .await;
    }
    let msg = "no Supplier lists this ServiceModel in spec.services; nothing serves it";
    let st = status::model_not_ready(sm, "NoSupplier", msg.to_string());
    status::write(&ctx.client, sm, status::MANAGER, &st).await?;
    Ok(Action::await_change())
}

/// A model that cannot be served as it is: an Event, a condition, and no retry until it
/// changes.
async fn invalid_model(
    sm: &ServiceModel,
    ctx: &Context,
    reason: &str,
    message: String,
) -> Result<Action, Error> {
    ctx.event(sm, true, reason, message.clone()).await;
    let st = status::model_not_ready(sm, reason, message);
    status::write(&ctx.client, sm, status::MANAGER, &st).await?;
    Ok(Action::await_change())
}

/// A random token for a new store: 256 bits from the operating system as 64 hex
/// characters. Without randomness it fails (the reconcile is retried) instead of falling
/// back to anything guessable.
fn new_token() -> Result<String, Error> {
    token_from(std::path::Path::new("/dev/urandom"))
}

fn token_from(source: &std::path::Path) -> Result<String, Error> {
    use std::io::Read;
    let mut bytes = [0u8; 32];
    std::fs::File::open(source)
        .and_then(|mut f| f.read_exact(&mut bytes))
        .map_err(Error::Randomness)?;
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}

/// The finalizer a Supplier with `unstakeOnDelete` carries until it is unstaked.
pub const UNSTAKE_FINALIZER: &str = "lode.pokt.network/unstake";

/// The Supplier's finalizers other than lode's.
fn other_finalizers(s: &Supplier) -> Vec<String> {
    s.finalizers()
        .iter()
        .filter(|f| *f != UNSTAKE_FINALIZER)
        .cloned()
        .collect()
}

/// A deleted Supplier holding the unstake finalizer: run the unstake Job, and release the
/// Supplier once it succeeded.
async fn finish_deletion(s: &Supplier, ctx: &Context) -> Result<Action, Error> {
    let job = build::jobs::unstake_job(s, &ctx.images)?;
    let jobs: Api<Job> = Api::namespaced(ctx.client.clone(), &s.namespace().unwrap_or_default());
    let Some(existing) = jobs.get_opt(&job.name_any()).await? else {
        if apply::ensure_job(&ctx.client, &job).await? {
            ctx.job_created();
            ctx.event(
                s,
                false,
                "UnstakeJobStarted",
                format!("deleting: Job {} unstakes the supplier", job.name_any()),
            )
            .await;
        }
        return Ok(Action::requeue(Duration::from_secs(10)));
    };
    let status = existing.status.unwrap_or_default();
    if status.succeeded.unwrap_or(0) > 0 {
        apply::set_finalizers(&ctx.client, s, other_finalizers(s)).await?;
        ctx.event(
            s,
            false,
            "Unstaked",
            "unbonding started; the Supplier is released".into(),
        )
        .await;
        return Ok(Action::await_change());
    }
    if status.failed.unwrap_or(0) > s.spec.jobs.backoff_limit {
        ctx.event(
            s,
            true,
            "UnstakeFailed",
            format!(
                "Job {} failed; the finalizer {UNSTAKE_FINALIZER} stays until it succeeds (see the Job's logs, or remove the finalizer to leave the supplier staked)",
                job.name_any()
            ),
        )
        .await;
        return Ok(Action::requeue(Duration::from_secs(60)));
    }
    Ok(Action::requeue(Duration::from_secs(10)))
}

/// Supplier: the store (token Secret created once, StatefulSet, Service, NetworkPolicy),
/// the stake Job when the chain differs from the spec, and a status from the store, the
/// serving Deployments, the chain, the claim/prove Jobs and the store's sessions; the
/// unstake finalizer when `unstakeOnDelete` is set.
#[tracing::instrument(skip_all, fields(namespace = s.namespace().unwrap_or_default(), supplier = %s.name_any()))]
pub async fn reconcile_supplier(s: Arc<Supplier>, ctx: Arc<Context>) -> Result<Action, Error> {
    let has_finalizer = s.finalizers().iter().any(|f| f == UNSTAKE_FINALIZER);
    if s.metadata.deletion_timestamp.is_some() {
        return if has_finalizer {
            finish_deletion(&s, &ctx).await
        } else {
            Ok(Action::await_change())
        };
    }
    if s.spec.unstake_on_delete != has_finalizer {
        let mut finalizers = other_finalizers(&s);
        if s.spec.unstake_on_delete {
            finalizers.push(UNSTAKE_FINALIZER.into());
        }
        apply::set_finalizers(&ctx.client, &s, finalizers).await?;
        // The patch comes back as a watch event; the next reconcile does the rest.
        return Ok(Action::await_change());
    }
    let facts = fetch::supplier(&ctx.client, &s).await?;
    let want = validate::stake_spec(&s);
    let stake = status::stake(want.as_ref(), facts.onchain.as_ref());
    if let Stake::Invalid(reason, message) = &stake {
        // The store still runs; only the stake waits for a spec the chain would accept.
        ctx.event(s.as_ref(), true, reason, message.clone()).await;
    }
    let secret = build::supplier::token_secret(&s, &new_token()?)?;
    let name = s.name_any();
    let tls = build::supplier::tls_secret(&s, &build::supplier::store_certificate(&name)?)?;
    let store = build::supplier::store(&s, &ctx.images)?;
    let stake_job = match stake {
        Stake::Differs { .. } => Some(build::jobs::stake_job(&s, &ctx.images)?),
        _ => None,
    };
    if apply::create_secret(&ctx.client, &secret).await? {
        ctx.event(
            s.as_ref(),
            false,
            "StoreTokenCreated",
            format!("created Secret {}", secret.name_any()),
        )
        .await;
    }
    if apply::create_secret(&ctx.client, &tls).await? {
        ctx.event(
            s.as_ref(),
            false,
            "StoreCertificateIssued",
            format!(
                "created Secret {} (the store's TLS certificate and its CA)",
                tls.name_any()
            ),
        )
        .await;
    }
    let sts = apply::store(&ctx.client, &store).await?;
    let store_ready = sts.status.and_then(|st| st.ready_replicas).unwrap_or(0) >= 1;
    if let Some(job) = &stake_job
        && apply::ensure_job(&ctx.client, job).await?
    {
        ctx.job_created();
        ctx.event(
            s.as_ref(),
            false,
            "StakeJobStarted",
            format!(
                "the chain differs from the spec; started Job {}",
                job.name_any()
            ),
        )
        .await;
    }
    let job_name = stake_job.as_ref().map(|j| j.name_any());
    let st = status::supplier(
        &s,
        &facts,
        store_ready,
        want.as_ref().ok(),
        &stake,
        job_name.as_deref(),
    );
    ctx.metrics.supplier(
        &s.namespace().unwrap_or_default(),
        &s.name_any(),
        st.conditions
            .iter()
            .map(|c| (c.type_.clone(), c.status == "True"))
            .collect(),
        facts.outcomes.failed_jobs,
    );
    status::write(&ctx.client, s.as_ref(), status::MANAGER, &st).await?;
    Ok(Action::requeue(Duration::from_secs(300)))
}

/// GatewayPool: gateway Deployment, Service, NetworkPolicy and ConfigMap; status from the
/// Deployment.
#[tracing::instrument(skip_all, fields(namespace = g.namespace().unwrap_or_default(), gateway = %g.name_any()))]
pub async fn reconcile_gateway(g: Arc<GatewayPool>, ctx: Arc<Context>) -> Result<Action, Error> {
    let objects = build::gateway::gateway(&g, &ctx.images)?;
    let d = apply::gateway(&ctx.client, &objects).await?;
    let st = status::gateway(&g, d.status.as_ref());
    status::write(&ctx.client, g.as_ref(), status::MANAGER, &st).await?;
    Ok(Action::requeue(Duration::from_secs(300)))
}

/// Logs what a controller stream reports as failed (error_policy already retried it).
fn log_error<T, E: std::fmt::Display>(
    controller: &'static str,
) -> impl FnMut(Result<T, E>) -> std::future::Ready<()> {
    move |r| {
        if let Err(e) = r {
            tracing::debug!(error = %e, controller, "controller");
        }
        std::future::ready(())
    }
}

/// Counts a reconcile's outcome.
fn counted(ctx: &Context, kind: &'static str, r: &Result<Action, Error>) {
    ctx.metrics
        .reconciled(kind, r.as_ref().map_or_else(|e| e.category(), |_| "ok"));
}

/// Runs the three controllers until the process is stopped.
pub async fn run(ctx: Arc<Context>) {
    let client = ctx.client.clone();
    let wc = watcher::Config::default();
    let models = Controller::new(Api::<ServiceModel>::all(client.clone()), wc.clone())
        .owns(Api::<Deployment>::all(client.clone()), wc.clone())
        .watches(
            Api::<Supplier>::all(client.clone()),
            wc.clone(),
            |s: Supplier| {
                let ns = s.namespace();
                s.spec
                    .services
                    .iter()
                    .map(|x| {
                        let mut r = ObjectRef::<ServiceModel>::new(&x.service_model);
                        if let Some(ns) = &ns {
                            r = r.within(ns);
                        }
                        r
                    })
                    .collect::<Vec<_>>()
            },
        )
        .shutdown_on_signal()
        .run(
            |o, c| async move {
                let r = reconcile_model(o, c.clone()).await;
                counted(&c, "ServiceModel", &r);
                r
            },
            error_policy,
            ctx.clone(),
        )
        .for_each(log_error("servicemodel"));
    // A Supplier's status follows its store, its serving Deployments (readiness gates
    // the stake Job) and its claim/prove Jobs (last outcomes).
    let supplier_of_child = |labels: &BTreeMap<String, String>, ns: Option<String>| {
        labels.get(build::SUPPLIER_LABEL).map(|s| {
            let r = ObjectRef::<Supplier>::new(s);
            match ns {
                Some(ns) => r.within(&ns),
                None => r,
            }
        })
    };
    let suppliers = Controller::new(Api::<Supplier>::all(client.clone()), wc.clone())
        .owns(Api::<StatefulSet>::all(client.clone()), wc.clone())
        .owns(Api::<Job>::all(client.clone()), wc.clone())
        .watches(
            Api::<Deployment>::all(client.clone()),
            wc.clone(),
            move |d: Deployment| supplier_of_child(d.labels(), d.namespace()),
        )
        .shutdown_on_signal()
        .run(
            |o, c| async move {
                let r = reconcile_supplier(o, c.clone()).await;
                counted(&c, "Supplier", &r);
                r
            },
            error_policy,
            ctx.clone(),
        )
        .for_each(log_error("supplier"));
    let gateways = Controller::new(Api::<GatewayPool>::all(client.clone()), wc.clone())
        .owns(Api::<Deployment>::all(client), wc)
        .shutdown_on_signal()
        .run(
            |o, c| async move {
                let r = reconcile_gateway(o, c.clone()).await;
                counted(&c, "GatewayPool", &r);
                r
            },
            error_policy,
            ctx,
        )
        .for_each(log_error("gatewaypool"));
    tokio::join!(models, suppliers, gateways);
}

/// Labels of the CRs' children as a map (for tests and cleanup selectors).
pub fn owner_selector(owner: &str) -> BTreeMap<String, String> {
    BTreeMap::from([(build::OWNER_LABEL.to_string(), owner.to_string())])
}

#[cfg(test)]
mod token_tests {
    use super::*;

    #[test]
    fn a_token_is_256_random_bits_or_an_error() {
        let (a, b) = (new_token().expect("token"), new_token().expect("token"));
        assert_eq!(a.len(), 64);
        assert!(a.bytes().all(|c| c.is_ascii_hexdigit()));
        assert_ne!(a, b);
        // No randomness: an error, never a fallback.
        let e = token_from(std::path::Path::new("/nonexistent/urandom")).expect_err("fails");
        assert_eq!(e.category(), "NoRandomness");
        // Too little randomness is no better.
        let dir = tempfile::tempdir().expect("tempdir");
        let short = dir.path().join("short");
        std::fs::write(&short, [1u8; 8]).expect("write");
        assert!(token_from(&short).is_err());
    }
}

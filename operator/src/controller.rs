//! The controllers: fetch → build (pure, `crate::build`) → apply (server-side apply, one
//! field manager, forced) → status (from what the API server accepted).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use k8s_openapi::api::apps::v1::{Deployment, StatefulSet};
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::{ConfigMap, Secret, Service};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::api::{Api, ListParams, Patch, PatchParams, PostParams};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::runtime::reflector::ObjectRef;
use kube::runtime::watcher;
use kube::{Client, Resource, ResourceExt};
use lode_crds::{GatewayPool, ServiceModel, Supplier};
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::build::{self, BuildError, Images, MANAGER};
use crate::render::supplier_of;

/// Why a reconcile failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("Kubernetes API: {0}")]
    Kube(#[from] kube::Error),
    #[error(transparent)]
    Build(#[from] BuildError),
}

impl Error {
    /// A short category: metric label and Event reason.
    pub fn category(&self) -> &'static str {
        match self {
            Self::Kube(_) => "ApiError",
            Self::Build(b) => b.reason(),
        }
    }
}

/// What every reconcile shares.
pub struct Context {
    pub client: Client,
    pub images: Images,
    pub recorder: Recorder,
    pub metrics: Arc<crate::admin::OperatorMetrics>,
}

impl std::fmt::Debug for Context {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Context")
            .field("images", &self.images)
            .finish_non_exhaustive()
    }
}

impl Context {
    pub fn new(client: Client, images: Images) -> Arc<Self> {
        let recorder = Recorder::new(
            client.clone(),
            Reporter {
                controller: MANAGER.into(),
                instance: std::env::var("POD_NAME").ok(),
            },
        );
        Arc::new(Self {
            client,
            images,
            recorder,
            metrics: Arc::default(),
        })
    }

    pub(crate) async fn event<K: Resource<DynamicType = ()>>(
        &self,
        obj: &K,
        warning: bool,
        reason: &str,
        note: String,
    ) {
        let ev = Event {
            type_: if warning {
                EventType::Warning
            } else {
                EventType::Normal
            },
            reason: reason.into(),
            note: Some(note),
            action: "Reconcile".into(),
            secondary: None,
        };
        if let Err(e) = self.recorder.publish(&ev, &obj.object_ref(&())).await {
            tracing::warn!(error = %e, "could not publish an event");
        }
    }
}

/// Server-side applies `obj` (field manager `lode-operator`, forced: the operator owns
/// these fields) and returns what the API server stored.
pub async fn apply<K>(client: &Client, obj: &K) -> Result<K, kube::Error>
where
    K: Resource<DynamicType = ()> + Clone + Serialize + DeserializeOwned + std::fmt::Debug,
    K: Resource<Scope = kube::core::NamespaceResourceScope>,
{
    let ns = obj.meta().namespace.clone().unwrap_or_default();
    let name = obj.meta().name.clone().unwrap_or_default();
    let api: Api<K> = Api::namespaced(client.clone(), &ns);
    api.patch(
        &name,
        &PatchParams::apply(MANAGER).force(),
        &Patch::Apply(obj),
    )
    .await
}

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

async fn patch_status<K>(client: &Client, obj: &K, status: serde_json::Value) -> Result<(), Error>
where
    K: Resource<DynamicType = ()> + Clone + DeserializeOwned + std::fmt::Debug,
    K: Resource<Scope = kube::core::NamespaceResourceScope>,
{
    let api: Api<K> = Api::namespaced(client.clone(), &obj.namespace().unwrap_or_default());
    api.patch_status(
        &obj.name_any(),
        &PatchParams::default(),
        &Patch::Merge(serde_json::json!({ "status": status })),
    )
    .await?;
    Ok(())
}

/// ServiceModel: serving Deployment, Service, PDB and serve ConfigMap for the Supplier
/// that lists it; status from the Deployment.
pub async fn reconcile_model(sm: Arc<ServiceModel>, ctx: Arc<Context>) -> Result<Action, Error> {
    let ns = sm.namespace().unwrap_or_default();
    let suppliers = Api::<Supplier>::namespaced(ctx.client.clone(), &ns)
        .list(&ListParams::default())
        .await?
        .items;
    let conditions = sm
        .status
        .as_ref()
        .map(|s| s.conditions.clone())
        .unwrap_or_default();
    let generation = sm.metadata.generation;
    let not_ready = |reason: &str, message: String| {
        serde_json::json!({
            "observedGeneration": generation,
            "conditions": set_condition(&conditions, "Ready", false, reason, message, generation),
        })
    };
    let supplier = match supplier_of(&sm, &suppliers) {
        Ok(Some(s)) => s,
        Ok(None) => {
            // Serving pods hold a supplier's key: none may run for a model no Supplier
            // lists any more.
            let removed = remove_serving(&ctx.client, &sm).await?;
            if removed > 0 {
                ctx.event(
                    sm.as_ref(),
                    false,
                    "NoSupplier",
                    format!(
                        "no Supplier lists this ServiceModel; removed {removed} serving objects"
                    ),
                )
                .await;
            }
            let msg = "no Supplier lists this ServiceModel in spec.services; nothing serves it"
                .to_string();
            patch_status(&ctx.client, sm.as_ref(), not_ready("NoSupplier", msg)).await?;
            return Ok(Action::await_change());
        }
        Err(e) => {
            ctx.event(sm.as_ref(), true, "SharedModel", e.to_string())
                .await;
            patch_status(
                &ctx.client,
                sm.as_ref(),
                not_ready("SharedModel", e.to_string()),
            )
            .await?;
            return Ok(Action::await_change());
        }
    };
    let objects = match build::servicemodel::serving(&sm, supplier, &ctx.images) {
        Ok(o) => o,
        Err(e) => {
            ctx.event(sm.as_ref(), true, e.reason(), e.to_string())
                .await;
            patch_status(
                &ctx.client,
                sm.as_ref(),
                not_ready(e.reason(), e.to_string()),
            )
            .await?;
            return Ok(Action::await_change());
        }
    };
    apply::<ConfigMap>(&ctx.client, &objects.config).await?;
    let deployment = apply::<Deployment>(&ctx.client, &objects.deployment).await?;
    apply::<Service>(&ctx.client, &objects.service).await?;
    apply::<PodDisruptionBudget>(&ctx.client, &objects.pdb).await?;
    apply::<NetworkPolicy>(&ctx.client, &objects.network_policy).await?;
    let desired = build::servicemodel::desired_replicas(&sm);
    let st = deployment.status.unwrap_or_default();
    let ready = st.ready_replicas.unwrap_or(0);
    let replicas = st.replicas.unwrap_or(0);
    let selector = build::selector(&sm.name_any(), build::component::SERVE)
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(",");
    let mut conds = set_condition(
        &conditions,
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
    patch_status(
        &ctx.client,
        sm.as_ref(),
        serde_json::json!({
            "replicas": replicas,
            "readyReplicas": ready,
            "selector": selector,
            "observedGeneration": generation,
            "conditions": conds,
        }),
    )
    .await?;
    Ok(Action::requeue(Duration::from_secs(300)))
}

/// Deletes a ServiceModel's serving objects; how many existed.
async fn remove_serving(client: &Client, sm: &ServiceModel) -> Result<usize, Error> {
    let ns = sm.namespace().unwrap_or_default();
    let name = sm.name_any();
    let dp = kube::api::DeleteParams::default();
    let mut removed = 0;
    macro_rules! remove {
        ($kind:ty, $name:expr) => {{
            let api: Api<$kind> = Api::namespaced(client.clone(), &ns);
            match api.delete(&$name, &dp).await {
                Ok(_) => removed += 1,
                Err(kube::Error::Api(e)) if e.code == 404 => {}
                Err(e) => return Err(e.into()),
            }
        }};
    }
    remove!(Deployment, name.clone());
    remove!(Service, name.clone());
    remove!(PodDisruptionBudget, name.clone());
    remove!(NetworkPolicy, name.clone());
    remove!(ConfigMap, format!("{name}-serve"));
    Ok(removed)
}

/// A random token for a new store (64 hex characters).
fn new_token() -> String {
    use sha2::Digest;
    let mut seed = Vec::new();
    seed.extend_from_slice(&std::process::id().to_le_bytes());
    seed.extend_from_slice(
        &std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default()
            .as_nanos()
            .to_le_bytes(),
    );
    let mut urandom = [0u8; 32];
    if let Ok(mut f) = std::fs::File::open("/dev/urandom") {
        use std::io::Read;
        let _ = f.read_exact(&mut urandom);
    }
    seed.extend_from_slice(&urandom);
    sha2::Sha256::digest(&seed)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
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

/// Replaces the Supplier's finalizers (a merge patch guarded by its resourceVersion).
async fn set_finalizers(
    client: &Client,
    s: &Supplier,
    finalizers: Vec<String>,
) -> Result<(), Error> {
    let api: Api<Supplier> = Api::namespaced(client.clone(), &s.namespace().unwrap_or_default());
    api.patch(
        &s.name_any(),
        &PatchParams::default(),
        &Patch::Merge(serde_json::json!({
            "metadata": {"finalizers": finalizers, "resourceVersion": s.resource_version()}
        })),
    )
    .await?;
    Ok(())
}

/// A deleted Supplier holding the unstake finalizer: run the unstake Job, and release the
/// Supplier once it succeeded.
async fn finish_deletion(s: &Supplier, ctx: &Context) -> Result<Action, Error> {
    let job = build::jobs::unstake_job(s, &ctx.images)?;
    let jobs: Api<Job> = Api::namespaced(ctx.client.clone(), &s.namespace().unwrap_or_default());
    let Some(existing) = jobs.get_opt(&job.name_any()).await? else {
        if crate::scheduler::ensure_job(&ctx.client, &job).await? {
            ctx.metrics
                .jobs_created
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
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
        set_finalizers(&ctx.client, s, other_finalizers(s)).await?;
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

/// Supplier: the store (token Secret created once, StatefulSet, Service, NetworkPolicy);
/// status from the store and the serving Deployments of its ServiceModels; the unstake
/// finalizer when `unstakeOnDelete` is set.
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
        set_finalizers(&ctx.client, &s, finalizers).await?;
        // The patch comes back as a watch event; the next reconcile does the rest.
        return Ok(Action::await_change());
    }
    let ns = s.namespace().unwrap_or_default();
    let name = s.name_any();
    let secrets: Api<Secret> = Api::namespaced(ctx.client.clone(), &ns);
    let token_name = build::supplier::token_secret_name(&name);
    // Create-only, so the operator needs no right to read Secrets: an existing token
    // answers 409 and is kept.
    let secret = build::supplier::token_secret(&s, &new_token())?;
    match secrets.create(&PostParams::default(), &secret).await {
        Ok(_) => {
            ctx.event(
                s.as_ref(),
                false,
                "StoreTokenCreated",
                format!("created Secret {token_name}"),
            )
            .await
        }
        Err(kube::Error::Api(e)) if e.code == 409 => {}
        Err(e) => return Err(e.into()),
    }
    let store = build::supplier::store(&s, &ctx.images)?;
    let sts = apply::<StatefulSet>(&ctx.client, &store.stateful_set).await?;
    apply::<Service>(&ctx.client, &store.service).await?;
    apply::<NetworkPolicy>(&ctx.client, &store.network_policy).await?;
    let store_ready = sts.status.and_then(|st| st.ready_replicas).unwrap_or(0) >= 1;
    // Serving pods of every ServiceModel it lists.
    let deployments: Api<Deployment> = Api::namespaced(ctx.client.clone(), &ns);
    let mut ready_serving = 0;
    for svc in &s.spec.services {
        if let Some(d) = deployments.get_opt(&svc.service_model).await? {
            ready_serving += d.status.and_then(|st| st.ready_replicas).unwrap_or(0);
        }
    }
    let generation = s.metadata.generation;
    let conditions = s
        .status
        .as_ref()
        .map(|st| st.conditions.clone())
        .unwrap_or_default();
    let stake = stake_state(&s, &ctx, ready_serving).await?;
    let mut conds = set_condition(
        &conditions,
        "Staked",
        stake.staked,
        stake.reason,
        stake.message,
        generation,
    );
    conds = set_condition(
        &conds,
        "StoreReady",
        store_ready,
        if store_ready {
            "StoreServing"
        } else {
            "StoreStarting"
        },
        format!("store {}", build::supplier::store_name(&name)),
        generation,
    );
    let ready = store_ready && ready_serving > 0;
    conds = set_condition(
        &conds,
        "Ready",
        ready,
        if ready { "Serving" } else { "NotServing" },
        format!("store ready: {store_ready}; {ready_serving} serving pods ready"),
        generation,
    );
    let crate::outcomes::Outcomes {
        last_claim,
        last_proof,
        failed_jobs,
    } = crate::outcomes::fetch(&ctx.client, &ns, &name).await?;
    let at_risk: Vec<String> = [("claim", &last_claim), ("proof", &last_proof)]
        .into_iter()
        .filter_map(|(w, o)| {
            o.as_ref()
                .filter(|o| crate::outcomes::unhealthy(o))
                .map(|o| format!("last {w}: {}", o.outcome))
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
    ctx.metrics.supplier(
        &ns,
        &name,
        conds
            .iter()
            .map(|c| (c.type_.clone(), c.status == "True"))
            .collect(),
        failed_jobs,
    );
    let services = s
        .spec
        .services
        .iter()
        .map(|x| x.service_id.clone())
        .collect::<Vec<_>>()
        .join(",");
    patch_status(
        &ctx.client,
        s.as_ref(),
        serde_json::json!({
            "readyReplicas": ready_serving,
            "stakedUpokt": stake.staked_upokt,
            "services": services,
            "lastClaim": last_claim,
            "lastProof": last_proof,
            "observedGeneration": generation,
            "conditions": conds,
        }),
    )
    .await?;
    Ok(Action::requeue(Duration::from_secs(300)))
}

/// Where a Supplier stands on chain.
struct StakeState {
    staked: bool,
    reason: &'static str,
    message: String,
    staked_upokt: Option<String>,
}

/// Compares the chain (read-only) with the Supplier's spec and starts the stake Job when
/// they differ, but only once serving pods are ready: the chain never advertises an
/// endpoint that is not serving.
async fn stake_state(s: &Supplier, ctx: &Context, ready_serving: i32) -> Result<StakeState, Error> {
    if ready_serving == 0 {
        return Ok(StakeState {
            staked: false,
            reason: "WaitingForServingPods",
            message: "the stake Job starts once a serving pod is ready".into(),
            staked_upokt: None,
        });
    }
    let want = build::jobs::stake_spec(s)?;
    let retry = lode_chain::RetryPolicy {
        attempts: 1,
        first_backoff: Duration::from_millis(100),
        max_backoff: Duration::from_secs(1),
        timeout: Duration::from_secs(5),
    };
    let onchain = match lode_chain::ChainGrpc::new(&s.spec.chain.grpc_url, retry) {
        Ok(grpc) => lode_chain::pocket::PocketQuery::new(grpc)
            .supplier(&s.spec.operator_address)
            .await
            .map_err(|e| e.to_string()),
        Err(e) => Err(e.to_string()),
    };
    let onchain = match onchain {
        Ok(o) => o,
        Err(e) => {
            return Ok(StakeState {
                staked: false,
                reason: "ChainUnreachable",
                message: format!("reading the supplier from {}: {e}", s.spec.chain.grpc_url),
                staked_upokt: None,
            });
        }
    };
    let staked_upokt = onchain
        .as_ref()
        .and_then(|o| o.stake.as_ref())
        .map(|c| c.amount.clone());
    if onchain.as_ref().is_some_and(|o| want.is_met_by(o)) {
        return Ok(StakeState {
            staked: true,
            reason: "Staked",
            message: format!(
                "{} uPOKT for {} at {}",
                want.stake_upokt,
                want.services
                    .iter()
                    .map(|x| x.service_id.as_str())
                    .collect::<Vec<_>>()
                    .join(","),
                s.spec.public_endpoint
            ),
            staked_upokt,
        });
    }
    let job = build::jobs::stake_job(s, &ctx.images)?;
    let job_name = job.name_any();
    if crate::scheduler::ensure_job(&ctx.client, &job).await? {
        ctx.metrics
            .jobs_created
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        ctx.event(
            s,
            false,
            "StakeJobStarted",
            format!("the chain differs from the spec; started Job {job_name}"),
        )
        .await;
    }
    Ok(StakeState {
        staked: false,
        reason: "StakeJobStarted",
        message: format!("the chain differs from the spec; Job {job_name} stakes it"),
        staked_upokt,
    })
}

/// GatewayPool: gateway Deployment, Service and ConfigMap; status from the Deployment.
pub async fn reconcile_gateway(g: Arc<GatewayPool>, ctx: Arc<Context>) -> Result<Action, Error> {
    let objects = build::gateway::gateway(&g, &ctx.images)?;
    apply::<ConfigMap>(&ctx.client, &objects.config).await?;
    let d = apply::<Deployment>(&ctx.client, &objects.deployment).await?;
    apply::<Service>(&ctx.client, &objects.service).await?;
    let ready = d.status.and_then(|s| s.ready_replicas).unwrap_or(0);
    let generation = g.metadata.generation;
    let conditions = g
        .status
        .as_ref()
        .map(|s| s.conditions.clone())
        .unwrap_or_default();
    let conds = set_condition(
        &conditions,
        "Ready",
        ready >= g.spec.min_replicas,
        if ready >= g.spec.min_replicas {
            "Serving"
        } else {
            "Starting"
        },
        format!("{ready} of {} gateway pods ready", g.spec.min_replicas),
        generation,
    );
    patch_status(
        &ctx.client,
        g.as_ref(),
        serde_json::json!({
            "readyReplicas": ready,
            "observedGeneration": generation,
            "conditions": conds,
        }),
    )
    .await?;
    Ok(Action::requeue(Duration::from_secs(300)))
}

/// Failed reconciles are retried with a delay (never a hot loop); invalid specs already
/// returned `await_change` with a condition and an Event.
pub fn error_policy<K>(obj: Arc<K>, e: &Error, _ctx: Arc<Context>) -> Action
where
    K: Resource,
{
    tracing::warn!(name = %obj.meta().name.clone().unwrap_or_default(), category = e.category(), error = %e, "reconcile failed");
    Action::requeue(Duration::from_secs(15))
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

//! The writes of reconciling (I/O): server-side apply of built objects (one field
//! manager, forced: the operator owns these fields), create-only Secrets and Jobs, the
//! cleanup of objects no longer wanted, and finalizers.

use k8s_openapi::api::apps::v1::{Deployment, StatefulSet};
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::{
    ConfigMap, PersistentVolumeClaim, Secret, Service, ServiceAccount,
};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::api::rbac::v1::{Role, RoleBinding};
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
use kube::{Client, Resource, ResourceExt};
use lode_crds::{ServiceModel, Supplier};
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::build::MANAGER;
use crate::build::gateway::GatewayObjects;
use crate::build::servicemodel::ServingObjects;
use crate::build::supplier::StoreObjects;

/// Server-side applies `obj` and returns what the API server stored.
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

/// A ServiceModel's serving objects; the engine and relay-tier Deployments as stored
/// (their status).
pub async fn serving(
    client: &Client,
    o: &ServingObjects,
) -> Result<(Deployment, Deployment), kube::Error> {
    if let Some(cache) = &o.weight_cache {
        apply::<PersistentVolumeClaim>(client, cache).await?;
    }
    let engines = apply::<Deployment>(client, &o.deployment).await?;
    apply::<Service>(client, &o.engine_service).await?;
    apply::<PodDisruptionBudget>(client, &o.pdb).await?;
    apply::<NetworkPolicy>(client, &o.network_policy).await?;
    let r = &o.relay;
    apply::<ServiceAccount>(client, &r.service_account).await?;
    apply::<Role>(client, &r.role).await?;
    apply::<RoleBinding>(client, &r.role_binding).await?;
    apply::<ConfigMap>(client, &r.config).await?;
    let relay = apply::<Deployment>(client, &r.deployment).await?;
    apply::<Service>(client, &r.service).await?;
    apply::<PodDisruptionBudget>(client, &r.pdb).await?;
    apply::<NetworkPolicy>(client, &r.network_policy).await?;
    Ok((engines, relay))
}

/// A Supplier's store; the StatefulSet as stored.
pub async fn store(client: &Client, o: &StoreObjects) -> Result<StatefulSet, kube::Error> {
    let sts = apply::<StatefulSet>(client, &o.stateful_set).await?;
    apply::<Service>(client, &o.service).await?;
    apply::<NetworkPolicy>(client, &o.network_policy).await?;
    Ok(sts)
}

/// A GatewayPool's objects; the Deployment as stored.
pub async fn gateway(client: &Client, o: &GatewayObjects) -> Result<Deployment, kube::Error> {
    apply::<ConfigMap>(client, &o.config).await?;
    let d = apply::<Deployment>(client, &o.deployment).await?;
    apply::<Service>(client, &o.service).await?;
    apply::<NetworkPolicy>(client, &o.network_policy).await?;
    Ok(d)
}

/// Creates `secret` unless it exists (`true` when this call created it). Create-only, so
/// the operator needs no right to read Secrets: an existing one answers 409 and is kept.
pub async fn create_secret(client: &Client, secret: &Secret) -> Result<bool, kube::Error> {
    let api: Api<Secret> = Api::namespaced(client.clone(), &secret.namespace().unwrap_or_default());
    match api.create(&PostParams::default(), secret).await {
        Ok(_) => Ok(true),
        Err(kube::Error::Api(e)) if e.code == 409 => Ok(false),
        Err(e) => Err(e),
    }
}

/// Creates `job` unless it exists; `true` when this call created it.
pub async fn ensure_job(client: &Client, job: &Job) -> Result<bool, kube::Error> {
    let api: Api<Job> = Api::namespaced(client.clone(), &job.namespace().unwrap_or_default());
    match api.create(&PostParams::default(), job).await {
        Ok(_) => Ok(true),
        Err(kube::Error::Api(e)) if e.code == 409 => Ok(false),
        Err(e) => Err(e),
    }
}

/// Deletes a ServiceModel's serving objects; how many existed.
pub async fn remove_serving(client: &Client, sm: &ServiceModel) -> Result<usize, kube::Error> {
    let ns = sm.namespace().unwrap_or_default();
    let name = sm.name_any();
    let mut removed = 0;
    let (engines, relay) = (format!("{name}-engines"), format!("{name}-relay"));
    removed += delete::<Deployment>(client, &ns, &relay).await?;
    removed += delete::<Deployment>(client, &ns, &name).await?;
    removed += delete::<Service>(client, &ns, &name).await?;
    removed += delete::<Service>(client, &ns, &engines).await?;
    removed += delete::<PodDisruptionBudget>(client, &ns, &name).await?;
    removed += delete::<PodDisruptionBudget>(client, &ns, &relay).await?;
    removed += delete::<NetworkPolicy>(client, &ns, &name).await?;
    removed += delete::<NetworkPolicy>(client, &ns, &engines).await?;
    removed += delete::<ConfigMap>(client, &ns, &format!("{name}-serve")).await?;
    removed += delete::<RoleBinding>(client, &ns, &relay).await?;
    removed += delete::<Role>(client, &ns, &relay).await?;
    removed += delete::<ServiceAccount>(client, &ns, &relay).await?;
    Ok(removed)
}

/// Deletes one object: 1 when it existed, 0 when it did not.
async fn delete<K>(client: &Client, ns: &str, name: &str) -> Result<usize, kube::Error>
where
    K: Resource<DynamicType = (), Scope = kube::core::NamespaceResourceScope>,
    K: Clone + DeserializeOwned + std::fmt::Debug,
{
    let api: Api<K> = Api::namespaced(client.clone(), ns);
    match api.delete(name, &DeleteParams::default()).await {
        Ok(_) => Ok(1),
        Err(kube::Error::Api(e)) if e.code == 404 => Ok(0),
        Err(e) => Err(e),
    }
}

/// Replaces the Supplier's finalizers (a merge patch guarded by its resourceVersion).
pub async fn set_finalizers(
    client: &Client,
    s: &Supplier,
    finalizers: Vec<String>,
) -> Result<(), kube::Error> {
    #[derive(Debug, Serialize)]
    #[serde(rename_all = "camelCase")]
    struct Meta {
        finalizers: Vec<String>,
        resource_version: Option<String>,
    }
    #[derive(Debug, Serialize)]
    struct Body {
        metadata: Meta,
    }
    let api: Api<Supplier> = Api::namespaced(client.clone(), &s.namespace().unwrap_or_default());
    api.patch(
        &s.name_any(),
        &PatchParams::default(),
        &Patch::Merge(Body {
            metadata: Meta {
                finalizers,
                resource_version: s.resource_version(),
            },
        }),
    )
    .await?;
    Ok(())
}

//! A ServiceModel served for its Supplier, in two tiers that scale apart:
//!
//! - the **engines** (`<name>`): GPU pods running the engine alone (no key, no
//!   sidecar, no API access), behind the engine Service `<name>-engines`, reachable
//!   only from the relay tier;
//! - the **relay tier** (`<name>-relay`): CPU pods running `relayminer serve` with the
//!   supplier's key, which follow the engine Service's EndpointSlices and route each
//!   relay to an engine replica (prefix affinity with bounded load by default), behind
//!   the public relay Service `<name>`.
//!
//! Each tier has its PodDisruptionBudget and NetworkPolicy; serve's configuration is
//! the ConfigMap `<name>-serve`.

use std::collections::BTreeMap;

use k8s_openapi::api::apps::v1::{
    Deployment, DeploymentSpec, DeploymentStrategy, RollingUpdateDeployment,
};
use k8s_openapi::api::core::v1::{
    ConfigMap, Container, ContainerPort, EmptyDirVolumeSource, EnvVar, EnvVarSource,
    ObjectFieldSelector, PersistentVolumeClaim, PersistentVolumeClaimSpec,
    PersistentVolumeClaimVolumeSource, PodSpec, PodTemplateSpec, Probe, ResourceRequirements,
    SecretKeySelector, SecurityContext, Service, ServiceSpec, TCPSocketAction, Toleration, Volume,
    VolumeMount, VolumeResourceRequirements,
};
use k8s_openapi::api::core::v1::{Lifecycle, LifecycleHandler, ServiceAccount, SleepAction};
use k8s_openapi::api::networking::v1::NetworkPolicyPeer;
use k8s_openapi::api::networking::v1::{NetworkPolicy, NetworkPolicyIngressRule};
use k8s_openapi::api::policy::v1::{PodDisruptionBudget, PodDisruptionBudgetSpec};
use k8s_openapi::api::rbac::v1::{PolicyRule, Role, RoleBinding, RoleRef, Subject};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use lode_contracts::NodeConfig;
use lode_contracts::serve::{
    BackendKind, DEFAULT_DISCOVERY_PERIOD_MS, EngineDiscovery, HoldConfig, Routing, RoutingConfig,
    ServeConfig, ServiceConfig, StoreConfig, StorePolicy,
};
use lode_crds::{EngineKind, EngineRouting, ServiceModel, Supplier};
use sha2::{Digest, Sha256};

use super::supplier::token_secret_name;
use super::{
    BuildError, Images, STORE_TOKEN_KEY, SUPPLIER_LABEL, child_meta, component, config_volume,
    container_ports, http_probe, ingress_policy, labels, locked_down, mount, name_of, paths,
    pod_security, ports, resources, secret_volume, selector, service_ports, store_url, tcp_port,
};

/// Annotation on the pod template carrying a hash of serve's configuration, so a changed
/// configuration rolls the pods.
pub const CONFIG_HASH: &str = "lode.pokt.network/config-hash";
/// Where model weights are (PVC, copied image contents, or the engine's download cache).
const MODELS: &str = "/models";
/// The init container that digests the weights; its termination message is the report.
pub const WEIGHTS_DIGEST: &str = "weights-digest";
const TERMINATION_LOG: &str = "/dev/termination-log";
/// Where the fetch step mounts the weight cache (the weights are its `weights/`).
const CACHE: &str = "/cache";
/// The init container that fetches a URI's weights into the weight cache.
pub const WEIGHTS_FETCH: &str = "weights-fetch";

/// The weight cache's claim name.
pub fn weight_cache_name(sm: &ServiceModel) -> String {
    format!("{}-weights", name_of(sm))
}

/// Whether lode fetches the model's weights (an `hf://` or `https://` URI).
fn fetched(sm: &ServiceModel) -> bool {
    sm.spec
        .model
        .uri
        .as_deref()
        .is_some_and(lode_crds::fetched_uri)
}

/// The weight cache of a fetched model: owned by the ServiceModel, so it outlives pods
/// and goes with the model.
fn weight_cache(sm: &ServiceModel) -> Result<Option<PersistentVolumeClaim>, BuildError> {
    if !fetched(sm) {
        return Ok(None);
    }
    let cache = sm.spec.model.cache.clone().unwrap_or_default();
    Ok(Some(PersistentVolumeClaim {
        metadata: child_meta(
            sm,
            weight_cache_name(sm),
            labels(&name_of(sm), component::SERVE),
        )?,
        spec: Some(PersistentVolumeClaimSpec {
            access_modes: Some(vec![cache.access_mode.name().into()]),
            storage_class_name: cache.storage_class_name.clone(),
            resources: Some(VolumeResourceRequirements {
                requests: Some(BTreeMap::from([(
                    "storage".to_string(),
                    Quantity(cache.size.clone()),
                )])),
                ..VolumeResourceRequirements::default()
            }),
            ..PersistentVolumeClaimSpec::default()
        }),
        ..PersistentVolumeClaim::default()
    }))
}

/// The init step that fetches a URI's weights into the cache (once: a restarted pod
/// finds them there), before they are digested: `relayminer fetch`.
fn fetch_step(sm: &ServiceModel, images: &Images) -> Container {
    let m = &sm.spec.model;
    let mut args = vec![
        "fetch".to_string(),
        m.uri.clone().unwrap_or_default(),
        "--cache".into(),
        CACHE.into(),
    ];
    if let Some(f) = &m.file {
        args.extend(["--file".into(), f.clone()]);
    }
    if let Some(hub) = m.cache.as_ref().and_then(|c| c.hub_url.as_ref()) {
        args.extend(["--hub".into(), hub.clone()]);
    }
    let mut env = vec![EnvVar {
        name: "POD_NAME".into(),
        value_from: Some(EnvVarSource {
            field_ref: Some(ObjectFieldSelector {
                field_path: "metadata.name".into(),
                ..ObjectFieldSelector::default()
            }),
            ..EnvVarSource::default()
        }),
        ..EnvVar::default()
    }];
    if let Some(t) = m.cache.as_ref().and_then(|c| c.token_secret_ref.as_ref()) {
        env.push(EnvVar {
            name: "HF_TOKEN".into(),
            value_from: Some(EnvVarSource {
                secret_key_ref: Some(SecretKeySelector {
                    name: t.name.clone(),
                    key: t.key.clone(),
                    ..SecretKeySelector::default()
                }),
                ..EnvVarSource::default()
            }),
            ..EnvVar::default()
        });
    }
    Container {
        name: WEIGHTS_FETCH.into(),
        image: Some(images.relayminer.clone()),
        args: Some(args),
        env: Some(env),
        volume_mounts: Some(vec![VolumeMount {
            name: "models".into(),
            mount_path: CACHE.into(),
            ..VolumeMount::default()
        }]),
        termination_message_policy: Some("FallbackToLogsOnError".into()),
        security_context: Some(locked_down()),
        ..Container::default()
    }
}
/// The engine's `$HOME` (an emptyDir).
const ENGINE_HOME: &str = "/home/engine";

/// Everything one ServiceModel becomes: the engine replicas, and the relay tier in
/// front of them.
#[derive(Clone, Debug, PartialEq)]
pub struct ServingObjects {
    /// The weight cache of a fetched model (`<name>-weights`).
    pub weight_cache: Option<PersistentVolumeClaim>,
    /// The engine replicas (`<name>`): GPU pods running the engine alone, no key.
    pub deployment: Deployment,
    /// `<name>-engines`: its EndpointSlices are the replicas the relay tier routes to.
    pub engine_service: Service,
    /// The engines' PodDisruptionBudget (`<name>`).
    pub pdb: PodDisruptionBudget,
    /// `<name>-engines`: only the relay tier (and metrics readers) reach the engines.
    pub network_policy: NetworkPolicy,
    pub relay: RelayObjects,
}

/// The relay tier of a ServiceModel.
#[derive(Clone, Debug, PartialEq)]
pub struct RelayObjects {
    /// serve's configuration (`<name>-serve`).
    pub config: ConfigMap,
    /// `<name>-relay`: CPU pods running `relayminer serve` with the supplier's key.
    pub deployment: Deployment,
    /// `<name>`: the supplier's relay endpoint for this service.
    pub service: Service,
    pub pdb: PodDisruptionBudget,
    /// `<name>`: the relay port open, the admin port to the namespace and readers.
    pub network_policy: NetworkPolicy,
    /// `<name>-relay`, allowed to read EndpointSlices in the namespace, no more.
    pub service_account: ServiceAccount,
    pub role: Role,
    pub role_binding: RoleBinding,
}

/// How long a terminating engine keeps serving before its SIGTERM: several times the
/// relay tier's discovery period, so that no new relay reaches it after.
pub const ENGINE_PRE_STOP_SECONDS: i64 = 5;

/// The engine port's name (the engine container's, and the engine Service's).
pub const ENGINE_PORT_NAME: &str = "engine";

/// The replicas the Deployment runs: `spec.replicas` (written by the autoscaler through
/// the scale subresource) or the minimum.
pub fn desired_replicas(sm: &ServiceModel) -> i32 {
    sm.spec
        .replicas
        .unwrap_or(sm.spec.min_replicas)
        .clamp(sm.spec.min_replicas, sm.spec.max_replicas)
}

/// serve's configuration for `sm` under `supplier`: the typed document serve reads.
pub fn serve_config(sm: &ServiceModel, supplier: &Supplier) -> ServeConfig {
    let s = &supplier.spec;
    let backend = if sm.spec.engine.kind == EngineKind::Triton {
        BackendKind::Triton
    } else {
        BackendKind::Openai
    };
    let mut store = StoreConfig::new(
        &store_url(&name_of(supplier)),
        format!("{}/{STORE_TOKEN_KEY}", paths::STORE_TOKEN),
    );
    // The store speaks TLS with the certificate the operator issued.
    store.ca_file = Some(super::store_ca_file().into());
    store.policy = match s.store.relay_policy {
        lode_crds::RelayPolicy::Hold => StorePolicy::Hold,
        lode_crds::RelayPolicy::Queue => StorePolicy::Queue,
    };
    // The engine Service: Triton's gRPC goes through it; an OpenAI-compatible engine's
    // replicas are found in its EndpointSlices and routed between.
    let mut service = ServiceConfig::new(
        &sm.spec.service_id,
        &format!("http://{}:{}", engine_service_name(sm), sm.spec.engine.port),
        backend,
    );
    if backend == BackendKind::Openai {
        let relay = &sm.spec.relay;
        service.routing = RoutingConfig {
            mode: match relay.routing {
                EngineRouting::Prefix => Routing::Prefix,
                EngineRouting::LeastLoaded => Routing::LeastLoaded,
                EngineRouting::RoundRobin => Routing::RoundRobin,
            },
            load_epsilon: f64::from(relay.load_epsilon_percent) / 100.0,
            keys_per_engine: relay.keys_per_engine.max(1) as usize,
            ..RoutingConfig::default()
        };
        service.discovery = Some(EngineDiscovery {
            service: engine_service_name(sm),
            namespace: sm.metadata.namespace.clone().unwrap_or_default(),
            port: ENGINE_PORT_NAME.into(),
            period_ms: DEFAULT_DISCOVERY_PERIOD_MS,
            api_url: None,
        });
        // While no engine is ready (the model at zero, waking up), relays wait here.
        service.hold = Some(HoldConfig {
            max_relays: relay.hold_relays.max(1) as usize,
            max_bytes: (relay.hold_mib.max(1) as usize) << 20,
            deadline_ms: u64::from(relay.hold_seconds.max(1).unsigned_abs()) * 1000,
        });
    }
    let mut config = ServeConfig::new(
        NodeConfig {
            grpc_url: s.chain.grpc_url.clone(),
            rpc_url: s.chain.rpc_url.clone(),
        },
        store,
        vec![format!("{}/{}", paths::KEYS, s.key_secret_ref.key).into()],
        vec![service],
    );
    config.listen = format!("0.0.0.0:{}", ports::RELAY);
    config.admin = format!("0.0.0.0:{}", ports::SERVE_ADMIN);
    config.refuse_placeholder_ring = s.refuse_placeholder_ring;
    config
}

/// Whether the pods digest the weights before the engine starts (lode reads them).
fn digested(sm: &ServiceModel) -> bool {
    sm.spec.model.uri.is_none() || fetched(sm)
}

/// The text of serve's ConfigMap: a line saying where it comes from, then the YAML.
pub fn serve_config_yaml(sm: &ServiceModel, supplier: &Supplier) -> String {
    format!(
        "# serve's configuration, written by lode-operator for ServiceModel {} (Supplier {}).\n{}",
        name_of(sm),
        name_of(supplier),
        serve_config(sm, supplier).to_yaml()
    )
}

/// `key[=value]:Effect` or `key` (any effect) as a toleration.
pub fn parse_toleration(t: &str) -> Result<Toleration, BuildError> {
    let bad = || BuildError::Toleration(t.to_string());
    let (kv, effect) = match t.rsplit_once(':') {
        Some((kv, e)) => {
            if !matches!(e, "NoSchedule" | "PreferNoSchedule" | "NoExecute") {
                return Err(bad());
            }
            (kv, Some(e.to_string()))
        }
        None => (t, None),
    };
    if kv.is_empty() {
        return Err(bad());
    }
    Ok(match kv.split_once('=') {
        Some((k, v)) if !k.is_empty() => Toleration {
            key: Some(k.into()),
            operator: Some("Equal".into()),
            value: Some(v.into()),
            effect,
            ..Toleration::default()
        },
        Some(_) => return Err(bad()),
        None => Toleration {
            key: Some(kv.into()),
            operator: Some("Exists".into()),
            effect,
            ..Toleration::default()
        },
    })
}

/// The init step that digests the weights (after the image copy, when there is one):
/// `relayminer digest`, whose one-line report (`blake3:<digest>`, or why the weights
/// were refused) is the container's termination message, read by the operator into
/// `status.modelDigest` and the `WeightsVerified` condition. With `model.digest` pinned
/// it exits 1 naming both digests, so the engine never starts on other weights.
fn digest_check(images: &Images, pin: Option<&str>) -> Container {
    let mut args = vec![
        "digest".to_string(),
        MODELS.into(),
        "--report".into(),
        TERMINATION_LOG.into(),
    ];
    if let Some(pin) = pin {
        args.extend(["--expect".into(), pin.into()]);
    }
    Container {
        name: WEIGHTS_DIGEST.into(),
        image: Some(images.relayminer.clone()),
        args: Some(args),
        volume_mounts: Some(vec![VolumeMount {
            name: "models".into(),
            mount_path: MODELS.into(),
            read_only: Some(true),
            ..VolumeMount::default()
        }]),
        termination_message_policy: Some("FallbackToLogsOnError".into()),
        security_context: Some(locked_down()),
        ..Container::default()
    }
}

/// The model argument the engine gets, and the volumes that provide it.
fn model_source(sm: &ServiceModel, images: &Images) -> (String, Vec<Volume>, Vec<Container>) {
    let _ = images;
    let m = &sm.spec.model;
    let models_volume = |source: Volume| vec![source];
    if let Some(pvc) = &m.pvc {
        let v = Volume {
            name: "models".into(),
            persistent_volume_claim: Some(PersistentVolumeClaimVolumeSource {
                claim_name: pvc.clone(),
                read_only: Some(true),
            }),
            ..Volume::default()
        };
        return (MODELS.into(), models_volume(v), Vec::new());
    }
    let empty = Volume {
        name: "models".into(),
        empty_dir: Some(EmptyDirVolumeSource::default()),
        ..Volume::default()
    };
    if let Some(image) = &m.image {
        // An image whose /model holds the weights: copied once into the pod's volume.
        let init = Container {
            name: "model".into(),
            image: Some(image.clone()),
            command: Some(vec![
                "cp".into(),
                "-a".into(),
                "/model/.".into(),
                MODELS.into(),
            ]),
            volume_mounts: Some(vec![VolumeMount {
                name: "models".into(),
                mount_path: MODELS.into(),
                ..VolumeMount::default()
            }]),
            // A copy needs no privilege: lode's user, the pod's group owns the volume.
            security_context: Some(locked_down()),
            ..Container::default()
        };
        return (MODELS.into(), models_volume(empty), vec![init]);
    }
    // An `hf://` or `https://` URI: fetched into the weight cache, whose `weights/` the
    // engine reads as its model directory.
    if fetched(sm) {
        let v = Volume {
            name: "models".into(),
            persistent_volume_claim: Some(PersistentVolumeClaimVolumeSource {
                claim_name: weight_cache_name(sm),
                read_only: None,
            }),
            ..Volume::default()
        };
        return (
            MODELS.into(),
            models_volume(v),
            vec![fetch_step(sm, images)],
        );
    }
    // Other schemes (`s3://…`) are passed to the engine, which loads them itself.
    (
        m.uri.clone().unwrap_or_default(),
        models_volume(empty),
        Vec::new(),
    )
}

/// The engine container for the ServiceModel's kind.
fn engine_container(sm: &ServiceModel, images: &Images, model: &str) -> Container {
    let e = &sm.spec.engine;
    let port = e.port;
    let name = sm.spec.model_name.clone();
    let (image, command, mut args, probe): (String, Option<Vec<String>>, Vec<String>, Probe) =
        match e.kind {
            EngineKind::Vllm => (
                images.vllm.clone(),
                None,
                vec![
                    "--model".into(),
                    model.into(),
                    "--served-model-name".into(),
                    name,
                    "--host".into(),
                    "0.0.0.0".into(),
                    "--port".into(),
                    port.to_string(),
                ],
                http_probe("/health", port, 10),
            ),
            EngineKind::Sglang => (
                images.sglang.clone(),
                Some(vec![
                    "python3".into(),
                    "-m".into(),
                    "sglang.launch_server".into(),
                ]),
                vec![
                    "--model-path".into(),
                    model.into(),
                    "--served-model-name".into(),
                    name,
                    "--host".into(),
                    "0.0.0.0".into(),
                    "--port".into(),
                    port.to_string(),
                ],
                http_probe("/health", port, 10),
            ),
            EngineKind::TensorrtLlm => (
                images.tensorrt_llm.clone(),
                Some(vec!["trtllm-serve".into()]),
                vec![
                    model.into(),
                    "--host".into(),
                    "0.0.0.0".into(),
                    "--port".into(),
                    port.to_string(),
                ],
                http_probe("/health", port, 10),
            ),
            EngineKind::Triton => (
                images.triton.clone(),
                Some(vec!["tritonserver".into()]),
                vec![
                    format!("--model-repository={model}"),
                    format!("--grpc-port={port}"),
                    format!("--http-port={}", port + 1),
                ],
                http_probe("/v2/health/ready", port + 1, 10),
            ),
            EngineKind::Llamacpp => (
                if sm.spec.gpus.count > 0 {
                    images.llamacpp_cuda.clone()
                } else {
                    images.llamacpp.clone()
                },
                None,
                llamacpp_args(sm, model, port),
                http_probe("/health", port, 10),
            ),
            EngineKind::Custom => (
                String::new(),
                None,
                Vec::new(),
                Probe {
                    tcp_socket: Some(TCPSocketAction {
                        port: IntOrString::Int(port),
                        ..TCPSocketAction::default()
                    }),
                    period_seconds: Some(10),
                    ..Probe::default()
                },
            ),
        };
    args.extend(e.args.iter().cloned());
    let gpus = &sm.spec.gpus;
    let limits = (gpus.count > 0)
        .then(|| BTreeMap::from([(gpus.resource_name.clone(), Quantity(gpus.count.to_string()))]));
    Container {
        name: "engine".into(),
        image: Some(e.image.clone().unwrap_or(image)),
        command,
        args: Some(args),
        ports: Some(vec![ContainerPort {
            name: Some(ENGINE_PORT_NAME.into()),
            container_port: port,
            ..ContainerPort::default()
        }]),
        env: Some(vec![
            EnvVar {
                name: "HF_HOME".into(),
                value: Some(format!("{MODELS}/.cache")),
                ..EnvVar::default()
            },
            // llama.cpp's downloads (`--hf-repo`, `--model-url`).
            EnvVar {
                name: "LLAMA_CACHE".into(),
                value: Some(format!("{MODELS}/.cache/llama.cpp")),
                ..EnvVar::default()
            },
            // Engines write caches (compiled kernels, configs) under $HOME; an
            // unprivileged user has none of its own.
            EnvVar {
                name: "HOME".into(),
                value: Some(ENGINE_HOME.into()),
                ..EnvVar::default()
            },
        ]),
        resources: Some(ResourceRequirements {
            limits,
            ..ResourceRequirements::default()
        }),
        // Loading weights takes minutes: the startup probe waits up to 30 of them.
        startup_probe: Some(Probe {
            failure_threshold: Some(180),
            ..probe.clone()
        }),
        readiness_probe: Some(probe),
        volume_mounts: Some(vec![
            VolumeMount {
                name: "models".into(),
                mount_path: MODELS.into(),
                ..VolumeMount::default()
            },
            VolumeMount {
                name: "engine-home".into(),
                mount_path: ENGINE_HOME.into(),
                ..VolumeMount::default()
            },
        ]),
        security_context: Some(engine_security(e)),
        ..Container::default()
    }
}

/// `llama-server`'s arguments: the GGUF file (in the model directory, from an `hf://`
/// repository, or at a URL), the served name, the port, Prometheus metrics, and every
/// layer on the GPUs when the pod has any. llama.cpp answers `/health` 503 while it
/// loads and 200 once it serves.
fn llamacpp_args(sm: &ServiceModel, model_dir: &str, port: i32) -> Vec<String> {
    let m = &sm.spec.model;
    let file = m.file.clone().unwrap_or_default();
    // Fetched and local weights are a file in the model directory; another URI is
    // llama.cpp's to download.
    let mut args: Vec<String> = match m.uri.as_deref() {
        Some(uri) if !lode_crds::fetched_uri(uri) => vec![
            "--model-url".into(),
            format!("{}/{file}", uri.trim_end_matches('/')),
        ],
        _ => vec!["--model".into(), format!("{model_dir}/{file}")],
    };
    args.extend([
        "--alias".into(),
        sm.spec.model_name.clone(),
        "--host".into(),
        "0.0.0.0".into(),
        "--port".into(),
        port.to_string(),
        "--metrics".into(),
    ]);
    if sm.spec.gpus.count > 0 {
        args.extend(["--n-gpu-layers".into(), "999".into()]);
    }
    args
}

/// The engine shares the pod (and its network) with the relayminer, which holds the
/// supplier's key and the store token: it gets no capability (no raw sockets to sniff
/// with), no privilege escalation, and lode's unprivileged user unless the
/// ServiceModel says its image needs root. Its root filesystem stays writable: engines
/// write to /tmp.
fn engine_security(e: &lode_crds::EngineSpec) -> SecurityContext {
    let mut c = locked_down();
    c.read_only_root_filesystem = None;
    if e.run_as_root {
        // The image's own user, root included.
        c.run_as_non_root = None;
        c.run_as_user = None;
        c.run_as_group = None;
    }
    c
}

fn serve_container(supplier: &Supplier, images: &Images) -> Container {
    let mut env = vec![EnvVar {
        name: "LODE_LOG_JSON".into(),
        value: Some("true".into()),
        ..EnvVar::default()
    }];
    if let Some(p) = &supplier.spec.key_passphrase_secret_ref {
        env.push(EnvVar {
            name: "LODE_KEY_PASSPHRASE".into(),
            value_from: Some(EnvVarSource {
                secret_key_ref: Some(SecretKeySelector {
                    name: p.name.clone(),
                    key: p.key.clone(),
                    ..SecretKeySelector::default()
                }),
                ..EnvVarSource::default()
            }),
            ..EnvVar::default()
        });
    }
    Container {
        name: "relayminer".into(),
        image: Some(images.relayminer.clone()),
        args: Some(vec![
            "serve".into(),
            "--config".into(),
            format!("{}/serve.yaml", paths::CONFIG),
        ]),
        env: Some(env),
        ports: Some(container_ports(&[
            ("relay", ports::RELAY),
            ("admin", ports::SERVE_ADMIN),
        ])),
        readiness_probe: Some(http_probe("/readyz", ports::SERVE_ADMIN, 5)),
        liveness_probe: Some(http_probe("/healthz", ports::SERVE_ADMIN, 10)),
        resources: Some(resources("500m", "256Mi", "2Gi")),
        security_context: Some(locked_down()),
        volume_mounts: Some(vec![
            mount("config", paths::CONFIG),
            mount("keys", paths::KEYS),
            mount("store-token", paths::STORE_TOKEN),
            mount("store-ca", paths::STORE_CA),
        ]),
        ..Container::default()
    }
}

/// The objects serving `sm` for `supplier`.
pub fn serving(
    sm: &ServiceModel,
    supplier: &Supplier,
    images: &Images,
) -> Result<ServingObjects, BuildError> {
    crate::validate::service_model(sm)?;
    let name = name_of(sm);
    let supplier_name = name_of(supplier);
    let mut engine_labels = labels(&name, component::ENGINE);
    engine_labels.insert(SUPPLIER_LABEL.into(), supplier_name.clone());
    let engine_select = selector(&name, component::ENGINE);
    let gpus = &sm.spec.gpus;
    let mut tolerations = gpus
        .tolerations
        .iter()
        .map(|t| parse_toleration(t))
        .collect::<Result<Vec<_>, _>>()?;
    if gpus.count > 0 {
        tolerations.push(Toleration {
            key: Some(gpus.resource_name.clone()),
            operator: Some("Exists".into()),
            effect: Some("NoSchedule".into()),
            ..Toleration::default()
        });
    }
    let node_selector = gpus
        .product
        .as_ref()
        .map(|p| BTreeMap::from([("nvidia.com/gpu.product".to_string(), p.clone())]));
    let (model, mut volumes, mut init) = model_source(sm, images);
    // Weights lode reads (a volume, an image, a fetch) are digested before the engine
    // starts (another URI is the engine's own download; validation refuses a pin on it).
    if digested(sm) {
        init.push(digest_check(images, sm.spec.model.digest.as_deref()));
    }
    volumes.push(Volume {
        name: "engine-home".into(),
        empty_dir: Some(EmptyDirVolumeSource::default()),
        ..Volume::default()
    });
    let mut engine = engine_container(sm, images, &model);
    // A terminating engine keeps serving until the relay tier has read its EndpointSlice
    // (each second) and sends it nothing new; its SIGTERM comes after.
    engine.lifecycle = Some(Lifecycle {
        pre_stop: Some(LifecycleHandler {
            sleep: Some(SleepAction {
                seconds: ENGINE_PRE_STOP_SECONDS,
            }),
            ..LifecycleHandler::default()
        }),
        ..Lifecycle::default()
    });
    if fetched(sm) {
        // The engine and the digest step see the cache's `weights/` as /models.
        for c in init
            .iter_mut()
            .filter(|c| c.name == WEIGHTS_DIGEST)
            .chain(std::iter::once(&mut engine))
        {
            for m in c.volume_mounts.iter_mut().flatten() {
                if m.name == "models" && m.mount_path == MODELS {
                    m.sub_path = Some("weights".into());
                }
            }
        }
    }
    let template = PodTemplateSpec {
        metadata: Some(ObjectMeta {
            labels: Some(engine_labels.clone()),
            ..ObjectMeta::default()
        }),
        spec: Some(PodSpec {
            init_containers: (!init.is_empty()).then_some(init),
            containers: vec![engine],
            volumes: Some(volumes),
            tolerations: (!tolerations.is_empty()).then_some(tolerations),
            node_selector,
            security_context: Some(pod_security()),
            // No key, no API access: an engine pod only answers the relay tier.
            automount_service_account_token: Some(false),
            // A terminating engine gets no new relay (the relay tier reads its
            // EndpointSlice) and finishes the ones in flight.
            termination_grace_period_seconds: Some(120),
            ..PodSpec::default()
        }),
    };
    // GPUs are scarce: a rollout replaces pods one by one without a surge pod.
    let deployment = rolling_deployment(
        child_meta(sm, name.clone(), engine_labels.clone())?,
        desired_replicas(sm),
        engine_select.clone(),
        template,
        (0, 1),
    );
    let engine_service = Service {
        metadata: child_meta(sm, engine_service_name(sm), engine_labels.clone())?,
        spec: Some(ServiceSpec {
            selector: Some(engine_select.clone()),
            ports: Some(service_ports(&[(ENGINE_PORT_NAME, sm.spec.engine.port)])),
            ..ServiceSpec::default()
        }),
        ..Service::default()
    };
    let pdb = disruption_budget(
        child_meta(sm, name.clone(), engine_labels.clone())?,
        engine_select.clone(),
    );
    let relay_select = selector(&name, component::SERVE);
    // Only the relay tier reaches the engines (and the operator and Prometheus, for the
    // engines' metrics on the same port).
    let network_policy = ingress_policy(
        child_meta(sm, engine_service_name(sm), engine_labels)?,
        engine_select,
        vec![NetworkPolicyIngressRule {
            from: Some(vec![
                NetworkPolicyPeer {
                    pod_selector: Some(LabelSelector {
                        match_labels: Some(relay_select),
                        ..LabelSelector::default()
                    }),
                    ..NetworkPolicyPeer::default()
                },
                super::operator_peer(),
                super::app_peer("prometheus"),
            ]),
            ports: Some(engine_ports(sm).into_iter().map(tcp_port).collect()),
        }],
    );
    Ok(ServingObjects {
        weight_cache: weight_cache(sm)?,
        deployment,
        engine_service,
        pdb,
        network_policy,
        relay: relay_tier(sm, supplier, images)?,
    })
}

/// The ports of an engine pod others reach: the engine's, and Triton's metrics port
/// (the autoscaler reads the engines' own signals there).
fn engine_ports(sm: &ServiceModel) -> Vec<i32> {
    let mut ports = vec![sm.spec.engine.port];
    if sm.spec.engine.kind == EngineKind::Triton {
        ports.push(TRITON_METRICS_PORT);
    }
    ports
}

/// Triton's Prometheus port.
pub const TRITON_METRICS_PORT: i32 = 8002;

/// The engine Service's name: its EndpointSlices are the engine replicas.
pub fn engine_service_name(sm: &ServiceModel) -> String {
    format!("{}-engines", name_of(sm))
}

/// The relay tier's Deployment (and ServiceAccount, Role, PDB) name.
pub fn relay_name(sm: &ServiceModel) -> String {
    format!("{}-relay", name_of(sm))
}

/// The relay pods the tier runs: `spec.relay.replicas` (the autoscaler writes it) or
/// the minimum, within the bounds.
pub fn desired_relay_replicas(sm: &ServiceModel) -> i32 {
    let r = &sm.spec.relay;
    r.replicas
        .unwrap_or(r.min_replicas)
        .clamp(r.min_replicas, r.max_replicas.max(r.min_replicas))
}

/// A Deployment of `replicas` pods from `template`, rolled with `(max surge, max
/// unavailable)` pods.
fn rolling_deployment(
    metadata: ObjectMeta,
    replicas: i32,
    select: BTreeMap<String, String>,
    template: PodTemplateSpec,
    (surge, unavailable): (i32, i32),
) -> Deployment {
    Deployment {
        metadata,
        spec: Some(DeploymentSpec {
            replicas: Some(replicas),
            selector: LabelSelector {
                match_labels: Some(select),
                ..LabelSelector::default()
            },
            strategy: Some(DeploymentStrategy {
                type_: Some("RollingUpdate".into()),
                rolling_update: Some(RollingUpdateDeployment {
                    max_surge: Some(IntOrString::Int(surge)),
                    max_unavailable: Some(IntOrString::Int(unavailable)),
                }),
            }),
            template,
            ..DeploymentSpec::default()
        }),
        ..Deployment::default()
    }
}

fn disruption_budget(
    metadata: ObjectMeta,
    select: BTreeMap<String, String>,
) -> PodDisruptionBudget {
    PodDisruptionBudget {
        metadata,
        spec: Some(PodDisruptionBudgetSpec {
            max_unavailable: Some(IntOrString::Int(1)),
            selector: Some(LabelSelector {
                match_labels: Some(select),
                ..LabelSelector::default()
            }),
            ..PodDisruptionBudgetSpec::default()
        }),
        ..PodDisruptionBudget::default()
    }
}

/// The relay tier of `sm`: CPU pods running `relayminer serve` with the supplier's key,
/// reading the engine Service's EndpointSlices (their own ServiceAccount may do only
/// that), behind the public relay Service.
fn relay_tier(
    sm: &ServiceModel,
    supplier: &Supplier,
    images: &Images,
) -> Result<RelayObjects, BuildError> {
    let name = name_of(sm);
    let relay = relay_name(sm);
    let supplier_name = name_of(supplier);
    let mut labels = labels(&name, component::SERVE);
    labels.insert(SUPPLIER_LABEL.into(), supplier_name.clone());
    let select = selector(&name, component::SERVE);
    let yaml = serve_config_yaml(sm, supplier);
    let config_name = format!("{name}-serve");
    let config = ConfigMap {
        metadata: child_meta(sm, config_name.clone(), labels.clone())?,
        data: Some(BTreeMap::from([("serve.yaml".to_string(), yaml.clone())])),
        ..ConfigMap::default()
    };
    let hash = Sha256::digest(yaml.as_bytes());
    let hash: String = hash[..8].iter().map(|b| format!("{b:02x}")).collect();
    let template = PodTemplateSpec {
        metadata: Some(ObjectMeta {
            labels: Some(labels.clone()),
            annotations: Some(BTreeMap::from([(CONFIG_HASH.to_string(), hash)])),
            ..ObjectMeta::default()
        }),
        spec: Some(PodSpec {
            containers: vec![serve_container(supplier, images)],
            volumes: Some(vec![
                config_volume("config", &config_name),
                secret_volume(
                    "keys",
                    &supplier.spec.key_secret_ref.name,
                    &supplier.spec.key_secret_ref.key,
                    0o440,
                ),
                secret_volume(
                    "store-token",
                    &token_secret_name(&supplier_name),
                    STORE_TOKEN_KEY,
                    0o440,
                ),
                super::store_ca_volume(&supplier_name),
            ]),
            security_context: Some(pod_security()),
            service_account_name: Some(relay.clone()),
            // serve reads the engine Service's EndpointSlices with this token.
            automount_service_account_token: Some(true),
            // Streams in flight are finished before serve exits.
            termination_grace_period_seconds: Some(120),
            ..PodSpec::default()
        }),
    };
    // CPU pods: a rollout starts the new pod before an old one drains.
    let deployment = rolling_deployment(
        child_meta(sm, relay.clone(), labels.clone())?,
        desired_relay_replicas(sm),
        select.clone(),
        template,
        (1, 0),
    );
    let service = Service {
        metadata: child_meta(sm, name.clone(), labels.clone())?,
        spec: Some(ServiceSpec {
            selector: Some(select.clone()),
            ports: Some(service_ports(&[
                ("relay", ports::RELAY),
                ("admin", ports::SERVE_ADMIN),
            ])),
            ..ServiceSpec::default()
        }),
        ..Service::default()
    };
    let service_account = ServiceAccount {
        metadata: child_meta(sm, relay.clone(), labels.clone())?,
        ..ServiceAccount::default()
    };
    let role = Role {
        metadata: child_meta(sm, relay.clone(), labels.clone())?,
        rules: Some(vec![PolicyRule {
            api_groups: Some(vec!["discovery.k8s.io".into()]),
            resources: Some(vec!["endpointslices".into()]),
            verbs: vec!["get".into(), "list".into(), "watch".into()],
            ..PolicyRule::default()
        }]),
    };
    let role_binding = RoleBinding {
        metadata: child_meta(sm, relay.clone(), labels.clone())?,
        role_ref: RoleRef {
            api_group: "rbac.authorization.k8s.io".into(),
            kind: "Role".into(),
            name: relay.clone(),
        },
        subjects: Some(vec![Subject {
            kind: "ServiceAccount".into(),
            name: relay.clone(),
            namespace: sm.metadata.namespace.clone(),
            ..Subject::default()
        }]),
    };
    Ok(RelayObjects {
        config,
        deployment,
        service,
        pdb: disruption_budget(child_meta(sm, relay, labels.clone())?, select.clone()),
        network_policy: relay_network_policy(child_meta(sm, name, labels)?, select),
        service_account,
        role,
        role_binding,
    })
}

/// Relay pods: the relay port open to every gateway; the admin port (metrics,
/// `/demand`) only from the namespace, the lode operator (the autoscaler reads
/// `/demand`) and Prometheus pods, wherever they run.
fn relay_network_policy(metadata: ObjectMeta, select: BTreeMap<String, String>) -> NetworkPolicy {
    ingress_policy(
        metadata,
        select,
        vec![
            NetworkPolicyIngressRule {
                from: None,
                ports: Some(vec![tcp_port(ports::RELAY)]),
            },
            super::admin_rule(ports::SERVE_ADMIN),
        ],
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::build::tests::{sample_model, sample_supplier};

    fn pod(o: &ServingObjects) -> PodSpec {
        o.deployment
            .spec
            .clone()
            .expect("spec")
            .template
            .spec
            .expect("pod")
    }

    fn relay_pod(o: &ServingObjects) -> PodSpec {
        o.relay
            .deployment
            .spec
            .clone()
            .expect("spec")
            .template
            .spec
            .expect("pod")
    }

    #[test]
    fn engines_and_the_relay_tier_are_apart() {
        let (sm, s) = (sample_model(), sample_supplier());
        let o = serving(&sm, &s, &Images::default()).expect("builds");
        // The engine pods: the engine alone, on a GPU, no key, no API token.
        let p = pod(&o);
        assert_eq!(p.containers.len(), 1, "no sidecar");
        let engine = &p.containers[0];
        assert_eq!(engine.image.as_deref(), Some("vllm/vllm-openai:v0.11.0"));
        let args = engine.args.clone().expect("args");
        // hf:// weights are fetched into the weight cache: the engine reads a directory.
        assert_eq!(&args[..2], ["--model", MODELS]);
        assert!(
            args.ends_with(&["--max-model-len".into(), "8192".into()]),
            "spec args last"
        );
        assert_eq!(
            engine.resources.clone().expect("r").limits.expect("limits")["nvidia.com/gpu"],
            Quantity("1".into())
        );
        assert_eq!(
            p.node_selector.clone().expect("selector")["nvidia.com/gpu.product"],
            "NVIDIA-H100-80GB-HBM3"
        );
        let volumes: Vec<String> = p
            .volumes
            .clone()
            .expect("v")
            .into_iter()
            .map(|v| v.name)
            .collect();
        assert!(
            !volumes.iter().any(|v| v == "keys" || v == "store-token"),
            "{volumes:?}"
        );
        assert_eq!(p.automount_service_account_token, Some(false));
        // Terminating, it serves on until the relay tier has dropped it.
        let stop = engine
            .lifecycle
            .clone()
            .expect("lifecycle")
            .pre_stop
            .expect("preStop");
        assert_eq!(stop.sleep.expect("sleep").seconds, ENGINE_PRE_STOP_SECONDS);
        assert!(ENGINE_PRE_STOP_SECONDS * 1000 >= 3 * DEFAULT_DISCOVERY_PERIOD_MS as i64);
        assert_eq!(
            o.deployment.spec.clone().expect("s").replicas,
            Some(1),
            "minReplicas"
        );
        let labels = p_labels(&o);
        assert_eq!(labels["app.kubernetes.io/component"], "engine");
        // The engine Service names its port: the relay tier reads it in the slices.
        let es = o.engine_service.spec.clone().expect("spec");
        assert_eq!(
            o.engine_service.metadata.name.as_deref(),
            Some("qwen-7b-engines")
        );
        assert_eq!(
            es.ports.expect("ports")[0].name.as_deref(),
            Some(ENGINE_PORT_NAME)
        );
        assert_eq!(
            es.selector.expect("sel")["app.kubernetes.io/component"],
            "engine"
        );
        // Only the relay tier (and metrics readers) reach the engines.
        let np = o.network_policy.spec.clone().expect("spec");
        let rule = &np.ingress.expect("ingress")[0];
        assert_eq!(
            rule.ports.clone().expect("ports")[0].port,
            Some(IntOrString::Int(8000))
        );
        let from = rule.from.clone().expect("from");
        assert_eq!(
            from[0]
                .pod_selector
                .clone()
                .expect("pods")
                .match_labels
                .expect("labels")["app.kubernetes.io/component"],
            "serve"
        );
        assert!(
            from[0].namespace_selector.is_none(),
            "this namespace's relay pods only"
        );

        // The relay tier: serve with the key, its own ServiceAccount, CPU only.
        let r = relay_pod(&o);
        assert_eq!(r.containers.len(), 1);
        let serve = &r.containers[0];
        assert_eq!(serve.args.clone().expect("args")[0], "serve");
        assert_eq!(
            serve
                .security_context
                .clone()
                .expect("sc")
                .read_only_root_filesystem,
            Some(true)
        );
        assert!(
            !serve
                .resources
                .clone()
                .expect("r")
                .limits
                .unwrap_or_default()
                .contains_key("nvidia.com/gpu")
        );
        assert_eq!(r.service_account_name.as_deref(), Some("qwen-7b-relay"));
        assert_eq!(r.automount_service_account_token, Some(true));
        assert_eq!(
            o.relay.deployment.spec.clone().expect("s").replicas,
            Some(2),
            "relay.minReplicas by default"
        );
        let rules = o.relay.role.rules.clone().expect("rules");
        assert_eq!(rules.len(), 1, "EndpointSlices only");
        assert_eq!(rules[0].resources, Some(vec!["endpointslices".to_string()]));
        assert_eq!(rules[0].verbs, ["get", "list", "watch"]);
        assert_eq!(o.relay.role_binding.role_ref.name, "qwen-7b-relay");
        // The public relay Service keeps the ServiceModel's name.
        assert_eq!(o.relay.service.metadata.name.as_deref(), Some("qwen-7b"));
        let rlabels = o
            .relay
            .deployment
            .spec
            .clone()
            .expect("s")
            .template
            .metadata
            .expect("m")
            .labels
            .expect("l");
        assert_eq!(rlabels[SUPPLIER_LABEL], "supplier-1", "reaches the store");
        // serve's configuration points at the store, the key, and the engine Service,
        // routes between its replicas, and is what serve reads back from the ConfigMap.
        let yaml = &o.relay.config.data.clone().expect("data")["serve.yaml"];
        let config = ServeConfig::from_yaml(yaml).expect("serve accepts it");
        assert_eq!(config, serve_config(&sm, &s));
        assert_eq!(config.store.url, "https://supplier-1-store:7070");
        assert_eq!(
            config.store.tls_parts(),
            Some((
                "/var/run/lode/store-ca/ca.crt".into(),
                "store.lode.internal".to_string()
            ))
        );
        assert_eq!(
            config.signing_key_files,
            vec![std::path::PathBuf::from("/var/run/lode/keys/operator.key")]
        );
        let service = &config.services[0];
        assert_eq!(service.backend_url, "http://qwen-7b-engines:8000");
        assert_eq!(service.service_id, "llm");
        assert_eq!(service.backend, BackendKind::Openai);
        assert_eq!(service.routing.mode, Routing::Prefix);
        assert_eq!(service.routing.load_epsilon, 0.25);
        let d = service.discovery.clone().expect("discovery");
        assert_eq!(
            (d.service.as_str(), d.port.as_str(), d.namespace.as_str()),
            ("qwen-7b-engines", "engine", "lode")
        );
        // Relays wait for an engine (the model at zero, waking up) as spec.relay says.
        assert_eq!(
            service.hold,
            Some(HoldConfig {
                max_relays: 256,
                max_bytes: 64 << 20,
                deadline_ms: 30_000
            })
        );
        config.validate().expect("serve takes it");
        // The routing the spec asks for, and the relay pods the autoscaler wants.
        let mut other = sm.clone();
        other.spec.relay.routing = EngineRouting::RoundRobin;
        other.spec.relay.load_epsilon_percent = 50;
        other.spec.relay.replicas = Some(5);
        let config = serve_config(&other, &s);
        assert_eq!(config.services[0].routing.mode, Routing::RoundRobin);
        assert_eq!(config.services[0].routing.load_epsilon, 0.5);
        assert_eq!(desired_relay_replicas(&other), 5);
        other.spec.relay.replicas = Some(50);
        assert_eq!(
            desired_relay_replicas(&other),
            8,
            "within relay.maxReplicas"
        );
    }

    fn p_labels(o: &ServingObjects) -> BTreeMap<String, String> {
        o.deployment
            .spec
            .clone()
            .expect("s")
            .template
            .metadata
            .expect("m")
            .labels
            .expect("labels")
    }

    #[test]
    fn every_engine_kind_and_model_source() {
        let s = sample_supplier();
        let images = Images::default();
        for (kind, image, probe_port) in [
            (EngineKind::Sglang, images.sglang.clone(), 8000),
            (EngineKind::TensorrtLlm, images.tensorrt_llm.clone(), 8000),
            (EngineKind::Triton, images.triton.clone(), 8001),
        ] {
            let mut sm = sample_model();
            sm.spec.engine.kind = kind;
            let o = serving(&sm, &s, &images).expect("builds");
            let engine = pod(&o).containers[0].clone();
            assert_eq!(engine.image, Some(image), "{kind:?}");
            let probe = engine
                .readiness_probe
                .expect("probe")
                .http_get
                .expect("http");
            assert_eq!(probe.port, IntOrString::Int(probe_port), "{kind:?}");
        }
        let mut sm = sample_model();
        sm.spec.engine.kind = EngineKind::Triton;
        let config = serve_config(&sm, &s);
        assert_eq!(config.services[0].backend, BackendKind::Triton);
        // One gRPC backend through the engine Service, no discovery; Triton's metrics
        // port is open to the autoscaler beside the engine port.
        assert!(config.services[0].discovery.is_none());
        let ports: Vec<_> = serving(&sm, &s, &images)
            .expect("builds")
            .network_policy
            .spec
            .expect("spec")
            .ingress
            .expect("ingress")[0]
            .ports
            .clone()
            .expect("ports")
            .into_iter()
            .map(|p| p.port)
            .collect();
        assert_eq!(
            ports,
            [
                Some(IntOrString::Int(sm.spec.engine.port)),
                Some(IntOrString::Int(TRITON_METRICS_PORT))
            ]
        );
        assert_eq!(config.store.policy, StorePolicy::Queue);
        let mut holding = s.clone();
        holding.spec.store.relay_policy = lode_crds::RelayPolicy::Hold;
        assert_eq!(serve_config(&sm, &holding).store.policy, StorePolicy::Hold);
        assert!(
            !config.refuse_placeholder_ring,
            "the chain's rule by default"
        );
        holding.spec.refuse_placeholder_ring = true;
        assert!(serve_config(&sm, &holding).refuse_placeholder_ring);

        // A custom engine without an image is refused; with one it is used as is.
        let mut sm = sample_model();
        sm.spec.engine.kind = EngineKind::Custom;
        assert!(matches!(
            serving(&sm, &s, &images),
            Err(BuildError::Invalid(_))
        ));
        sm.spec.engine.image = Some("example.com/engine:1".into());
        let o = serving(&sm, &s, &images).expect("builds");
        assert_eq!(
            pod(&o).containers[0].image.as_deref(),
            Some("example.com/engine:1")
        );

        // PVC and image model sources.
        let mut sm = sample_model();
        sm.spec.model.uri = None;
        sm.spec.model.pvc = Some("weights".into());
        let p = pod(&serving(&sm, &s, &images).expect("builds"));
        // Weights on a volume are digested before the engine starts, pinned or not.
        let inits = p.init_containers.clone().expect("init");
        assert_eq!(inits.len(), 1);
        assert_eq!(
            inits[0].args.clone().expect("args"),
            ["digest", MODELS, "--report", TERMINATION_LOG]
        );
        let v = &p.volumes.expect("volumes")[0];
        assert_eq!(
            v.persistent_volume_claim
                .as_ref()
                .map(|c| c.claim_name.as_str()),
            Some("weights")
        );
        let mut sm = sample_model();
        sm.spec.model.uri = None;
        sm.spec.model.image = Some("example.com/qwen-weights:1".into());
        let p = pod(&serving(&sm, &s, &images).expect("builds"));
        let init = &p.init_containers.expect("init")[0];
        assert_eq!(init.image.as_deref(), Some("example.com/qwen-weights:1"));
        assert_eq!(init.security_context, Some(locked_down()));

        // A pinned digest: checked after the copy, read-only, before the engine starts.
        let pin = format!("blake3:{}", "ab".repeat(32));
        sm.spec.model.digest = Some(pin.clone());
        let inits = pod(&serving(&sm, &s, &images).expect("builds"))
            .init_containers
            .expect("init");
        assert_eq!(
            inits.iter().map(|c| c.name.as_str()).collect::<Vec<_>>(),
            ["model", "weights-digest"]
        );
        let check = &inits[1];
        assert_eq!(check.image, Some(images.relayminer.clone()));
        assert_eq!(
            check.args.clone().expect("args"),
            [
                "digest",
                MODELS,
                "--report",
                TERMINATION_LOG,
                "--expect",
                pin.as_str()
            ]
        );
        let mount = &check.volume_mounts.clone().expect("mounts")[0];
        assert_eq!(
            (mount.mount_path.as_str(), mount.read_only),
            (MODELS, Some(true))
        );
        assert_eq!(check.security_context, Some(locked_down()));
        // Weights the engine downloads itself (an s3:// URI) cannot be pinned: said so.
        let mut downloaded = sample_model();
        downloaded.spec.model.uri = Some("s3://bucket/qwen".into());
        downloaded.spec.model.digest = Some(pin.clone());
        assert!(matches!(
            serving(&downloaded, &s, &images),
            Err(BuildError::Invalid(why)) if why.contains("the engine loads other URIs itself")
        ));
        let o = serving(
            &{
                let mut m = downloaded.clone();
                m.spec.model.digest = None;
                m
            },
            &s,
            &images,
        )
        .expect("builds");
        assert_eq!(o.weight_cache, None, "nothing fetched, no cache");
        assert_eq!(pod(&o).init_containers, None);
        assert_eq!(
            &pod(&o).containers[0].args.clone().expect("args")[..2],
            ["--model", "s3://bucket/qwen"]
        );
    }

    /// An hf:// or https:// source: fetched once into the ServiceModel's weight cache
    /// (a claim it owns), digested, then read by the engine from the cache's `weights/`.
    #[test]
    fn fetched_weights_go_to_a_cache_then_the_digest_then_the_engine() {
        let (mut sm, s, images) = (sample_model(), sample_supplier(), Images::default());
        sm.metadata.uid = Some("5e1f".into());
        sm.spec.model.uri = Some("hf://Qwen/Qwen2.5-7B-Instruct@a1b2c3".into());
        let pin = format!("blake3:{}", "cd".repeat(32));
        sm.spec.model.digest = Some(pin.clone());
        sm.spec.model.cache = Some(lode_crds::WeightCache {
            size: "40Gi".into(),
            storage_class_name: Some("fast".into()),
            access_mode: lode_crds::CacheAccess::ReadWriteMany,
            token_secret_ref: Some(lode_crds::SecretKeyRef {
                name: "hf".into(),
                key: "token".into(),
            }),
            hub_url: None,
        });
        let o = serving(&sm, &s, &images).expect("builds");
        let cache = o.weight_cache.clone().expect("a weight cache");
        assert_eq!(cache.metadata.name.as_deref(), Some("qwen-7b-weights"));
        assert_eq!(
            cache.metadata.owner_references.expect("owned")[0].kind,
            "ServiceModel"
        );
        let spec = cache.spec.expect("spec");
        assert_eq!(spec.access_modes, Some(vec!["ReadWriteMany".to_string()]));
        assert_eq!(spec.storage_class_name.as_deref(), Some("fast"));
        assert_eq!(
            spec.resources
                .expect("resources")
                .requests
                .expect("requests")["storage"],
            Quantity("40Gi".into())
        );
        let p = pod(&o);
        let volume = &p.volumes.clone().expect("volumes")[0];
        assert_eq!(
            volume
                .persistent_volume_claim
                .as_ref()
                .map(|c| (c.claim_name.as_str(), c.read_only)),
            Some(("qwen-7b-weights", None))
        );
        let inits = p.init_containers.clone().expect("init");
        assert_eq!(
            inits.iter().map(|c| c.name.as_str()).collect::<Vec<_>>(),
            [WEIGHTS_FETCH, WEIGHTS_DIGEST]
        );
        let fetch = &inits[0];
        assert_eq!(fetch.image, Some(images.relayminer.clone()));
        assert_eq!(
            fetch.args.clone().expect("args"),
            [
                "fetch",
                "hf://Qwen/Qwen2.5-7B-Instruct@a1b2c3",
                "--cache",
                CACHE
            ]
        );
        let env = fetch.env.clone().expect("env");
        assert!(env.iter().any(|e| {
            e.name == "POD_NAME"
                && e.value_from
                    .as_ref()
                    .and_then(|v| v.field_ref.as_ref())
                    .map(|f| f.field_path.as_str())
                    == Some("metadata.name")
        }));
        assert!(env.iter().any(|e| {
            e.name == "HF_TOKEN"
                && e.value_from
                    .as_ref()
                    .and_then(|v| v.secret_key_ref.as_ref())
                    .map(|r| (r.name.as_str(), r.key.as_str()))
                    == Some(("hf", "token"))
        }));
        assert_eq!(fetch.security_context, Some(locked_down()));
        let cache_mount = &fetch.volume_mounts.clone().expect("mounts")[0];
        assert_eq!(
            (
                cache_mount.mount_path.as_str(),
                cache_mount.sub_path.as_deref()
            ),
            (CACHE, None)
        );
        // The digest step and the engine see the cache's weights/ as /models.
        let digest_mount = &inits[1].volume_mounts.clone().expect("mounts")[0];
        assert_eq!(
            (
                digest_mount.mount_path.as_str(),
                digest_mount.sub_path.as_deref(),
                digest_mount.read_only
            ),
            (MODELS, Some("weights"), Some(true))
        );
        assert!(
            inits[1]
                .args
                .clone()
                .expect("args")
                .ends_with(&["--expect".into(), pin])
        );
        let engine = &p.containers[0];
        assert!(
            engine
                .volume_mounts
                .clone()
                .expect("mounts")
                .iter()
                .any(|m| m.mount_path == MODELS && m.sub_path.as_deref() == Some("weights"))
        );
        assert_eq!(
            &engine.args.clone().expect("args")[..2],
            ["--model", MODELS]
        );

        // A llama.cpp file from a hub repository: fetched alone, loaded from the cache.
        sm.spec.engine.kind = EngineKind::Llamacpp;
        sm.spec.model.file = Some("q4.gguf".into());
        if let Some(c) = sm.spec.model.cache.as_mut() {
            c.hub_url = Some("http://hub-mirror.internal".into());
        }
        let p = pod(&serving(&sm, &s, &images).expect("builds"));
        let inits = p.init_containers.clone().expect("init");
        assert!(inits[0].args.clone().expect("args").ends_with(&[
            "--file".into(),
            "q4.gguf".into(),
            "--hub".into(),
            "http://hub-mirror.internal".into()
        ]));
        assert_eq!(
            &p.containers[0].args.clone().expect("args")[..2],
            ["--model", "/models/q4.gguf"]
        );

        // Malformed hub ids and a cache without a fetched source are refused.
        for bad in ["hf://org", "hf://org/m/x", "hf://org/m@../x", "hf://o rg/m"] {
            let mut m = sm.clone();
            m.spec.model.uri = Some(bad.into());
            assert!(
                matches!(serving(&m, &s, &images), Err(BuildError::Invalid(why)) if why.contains("hf://<org>/<name>")),
                "{bad}"
            );
        }
        let mut m = sm.clone();
        m.spec.model.uri = None;
        m.spec.model.pvc = Some("weights".into());
        assert!(matches!(
            serving(&m, &s, &images),
            Err(BuildError::Invalid(why)) if why.contains("model.cache is the weight cache")
        ));
    }

    /// The engine runs beside the key-holding relayminer: no capability (no raw socket
    /// to sniff the store token with), no privilege escalation, not root unless asked.
    #[test]
    fn engines_run_unprivileged_beside_the_key() {
        let (mut sm, s) = (sample_model(), sample_supplier());
        let o = serving(&sm, &s, &Images::default()).expect("builds");
        let engine = pod(&o).containers[0].clone();
        assert_eq!(engine.name, "engine");
        let c = engine.security_context.expect("a security context");
        assert_eq!(c.run_as_non_root, Some(true));
        assert_eq!(c.run_as_user, Some(65532));
        assert_eq!(c.allow_privilege_escalation, Some(false));
        assert_eq!(
            c.capabilities.expect("caps").drop,
            Some(vec!["ALL".to_string()])
        );
        let env = engine.env.expect("env");
        assert!(
            env.iter()
                .any(|e| e.name == "HOME" && e.value.as_deref() == Some(ENGINE_HOME))
        );
        let mounts = engine.volume_mounts.expect("mounts");
        assert!(mounts.iter().any(|m| m.mount_path == ENGINE_HOME));
        assert!(
            pod(&o)
                .volumes
                .expect("volumes")
                .iter()
                .any(|v| v.name == "engine-home" && v.empty_dir.is_some())
        );

        sm.spec.engine.run_as_root = true;
        let o = serving(&sm, &s, &Images::default()).expect("builds");
        let c = pod(&o).containers[0]
            .security_context
            .clone()
            .expect("a security context");
        assert_eq!(
            (c.run_as_non_root, c.run_as_user),
            (None, None),
            "the image's user"
        );
        assert_eq!(c.allow_privilege_escalation, Some(false));
        assert_eq!(
            c.capabilities.expect("caps").drop,
            Some(vec!["ALL".to_string()])
        );
    }

    #[test]
    fn replicas_follow_the_scale_subresource_within_bounds() {
        let mut sm = sample_model();
        assert_eq!(desired_replicas(&sm), 1);
        sm.spec.replicas = Some(3);
        assert_eq!(desired_replicas(&sm), 3);
        sm.spec.replicas = Some(40);
        assert_eq!(desired_replicas(&sm), 4, "clamped to maxReplicas");
    }

    #[test]
    fn llamacpp_serves_one_gguf_on_cpus_or_gpus_and_gpu_engines_need_a_gpu() {
        let (s, images) = (sample_supplier(), Images::default());
        let mut sm = sample_model();
        sm.spec.engine.kind = EngineKind::Llamacpp;
        sm.spec.engine.args.clear();
        sm.spec.gpus.count = 0;
        sm.spec.gpus.product = None;
        sm.spec.model = lode_crds::ModelSource {
            pvc: Some("weights".into()),
            file: Some("qwen/q4_k_m.gguf".into()),
            ..lode_crds::ModelSource::default()
        };
        let p = pod(&serving(&sm, &s, &images).expect("builds"));
        let engine = &p.containers[0];
        assert_eq!(engine.image, Some(images.llamacpp.clone()));
        assert_eq!(
            engine.args.clone().expect("args"),
            [
                "--model",
                "/models/qwen/q4_k_m.gguf",
                "--alias",
                "Qwen/Qwen2.5-7B-Instruct",
                "--host",
                "0.0.0.0",
                "--port",
                "8000",
                "--metrics"
            ]
        );
        assert_eq!(engine.resources.clone().expect("r").limits, None, "no GPU");
        assert_eq!(p.tolerations, None, "no GPU taint tolerated");
        let probe = engine.startup_probe.clone().expect("startup");
        assert_eq!(
            probe.http_get.expect("http").path.as_deref(),
            Some("/health")
        );

        // With GPUs: the CUDA build, every layer offloaded; from a hub repository, the
        // file fetched into the weight cache first.
        sm.spec.gpus.count = 1;
        sm.spec.model = lode_crds::ModelSource {
            uri: Some("hf://Qwen/Qwen2.5-0.5B-Instruct-GGUF".into()),
            file: Some("qwen2.5-0.5b-instruct-q4_k_m.gguf".into()),
            ..lode_crds::ModelSource::default()
        };
        let engine = pod(&serving(&sm, &s, &images).expect("builds")).containers[0].clone();
        assert_eq!(engine.image, Some(images.llamacpp_cuda.clone()));
        let args = engine.args.expect("args");
        assert_eq!(
            &args[..2],
            ["--model", "/models/qwen2.5-0.5b-instruct-q4_k_m.gguf"]
        );
        assert!(args.ends_with(&["--n-gpu-layers".into(), "999".into()]));
        // A URI lode does not fetch: llama.cpp downloads it.
        sm.spec.model.uri = Some("s3://models/qwen".into());
        let engine = pod(&serving(&sm, &s, &images).expect("builds")).containers[0].clone();
        assert_eq!(
            &engine.args.expect("args")[..2],
            [
                "--model-url",
                "s3://models/qwen/qwen2.5-0.5b-instruct-q4_k_m.gguf"
            ]
        );

        // Refused, each with its reason.
        let refused = |sm: &ServiceModel| match serving(sm, &s, &images) {
            Err(BuildError::Invalid(why)) => why,
            other => panic!("expected a refusal, got {other:?}"),
        };
        for bad in ["../etc/passwd", "/abs.gguf", "a//b.gguf", "a/./b.gguf"] {
            let mut m = sm.clone();
            m.spec.model.file = Some(bad.into());
            assert!(refused(&m).contains("relative path"), "{bad}");
        }
        let mut m = sm.clone();
        m.spec.model.file = None;
        assert!(refused(&m).contains("set model.file"));
        let mut vllm = sample_model();
        vllm.spec.gpus.count = 0;
        let why = refused(&vllm);
        assert!(why.contains("engine vllm needs a GPU"), "{why}");
        vllm.spec.engine.kind = EngineKind::Custom;
        vllm.spec.engine.image = Some("example.com/cpu-engine:1".into());
        assert!(
            serving(&vllm, &s, &images).is_ok(),
            "a custom image may run on CPUs"
        );
    }

    #[test]
    fn tolerations_parse_or_are_refused() {
        let t = parse_toleration("dedicated=gpu:NoSchedule").expect("ok");
        assert_eq!(
            (
                t.key.as_deref(),
                t.operator.as_deref(),
                t.value.as_deref(),
                t.effect.as_deref()
            ),
            (
                Some("dedicated"),
                Some("Equal"),
                Some("gpu"),
                Some("NoSchedule")
            )
        );
        let t = parse_toleration("nvidia.com/gpu").expect("ok");
        assert_eq!(t.operator.as_deref(), Some("Exists"));
        assert_eq!(t.effect, None);
        for bad in ["", ":NoSchedule", "a=b:Sometimes", "=v:NoExecute"] {
            assert!(parse_toleration(bad).is_err(), "{bad:?}");
        }
        let mut sm = sample_model();
        sm.spec.gpus.tolerations = vec!["x:Never".into()];
        assert_eq!(
            serving(&sm, &sample_supplier(), &Images::default())
                .expect_err("bad")
                .reason(),
            "InvalidToleration"
        );
    }

    #[test]
    fn a_changed_configuration_rolls_the_pods() {
        let (sm, mut s) = (sample_model(), sample_supplier());
        let hash = |s: &Supplier| {
            serving(&sm, s, &Images::default())
                .expect("builds")
                .relay
                .deployment
                .spec
                .expect("s")
                .template
                .metadata
                .expect("m")
                .annotations
                .expect("a")[CONFIG_HASH]
                .clone()
        };
        let before = hash(&s);
        s.spec.chain.grpc_url = "http://other-node:9090".into();
        assert_ne!(hash(&s), before);
    }
}

//! The pure step of reconciling: custom resources in, the Kubernetes objects they stand
//! for out (plain k8s-openapi structs). No I/O; the unit tests assert on these.

pub mod gateway;
pub mod jobs;
pub mod servicemodel;
pub mod supplier;

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{
    Capabilities, ConfigMapVolumeSource, HTTPGetAction, KeyToPath, PodSecurityContext, Probe,
    SeccompProfile, SecretVolumeSource, SecurityContext, Volume, VolumeMount,
};
use k8s_openapi::api::networking::v1::{
    NetworkPolicy, NetworkPolicyIngressRule, NetworkPolicyPeer, NetworkPolicyPort,
    NetworkPolicySpec,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::Resource;

/// The label every object of lode carries, and the field manager of server-side apply.
pub const MANAGER: &str = "lode-operator";
/// Label naming the Supplier an object belongs to (NetworkPolicy peers select on it).
pub const SUPPLIER_LABEL: &str = "lode.pokt.network/supplier";
/// Label naming the custom resource that owns an object.
pub const OWNER_LABEL: &str = "lode.pokt.network/owner";
/// `app.kubernetes.io/component` values.
pub mod component {
    /// The relay tier (`relayminer serve`).
    pub const SERVE: &str = "serve";
    /// The engine replicas.
    pub const ENGINE: &str = "engine";
    pub const STORE: &str = "store";
    pub const GATEWAY: &str = "gateway";
    pub const CLAIM: &str = "claim";
    pub const PROVE: &str = "prove";
    pub const STAKE: &str = "stake";
}

/// Container images the operator deploys.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Images {
    pub relayminer: String,
    pub gateway: String,
    pub vllm: String,
    pub tensorrt_llm: String,
    pub triton: String,
    pub sglang: String,
    /// llama.cpp's server for CPUs, and its CUDA build for pods with GPUs.
    pub llamacpp: String,
    pub llamacpp_cuda: String,
}

impl Default for Images {
    fn default() -> Self {
        let v = env!("CARGO_PKG_VERSION");
        Self {
            relayminer: format!("ghcr.io/lode-pokt/relayminer:{v}"),
            gateway: format!("ghcr.io/lode-pokt/gateway:{v}"),
            vllm: "vllm/vllm-openai:v0.11.0".into(),
            tensorrt_llm: "nvcr.io/nvidia/tensorrt-llm/release:1.0.0".into(),
            triton: "nvcr.io/nvidia/tritonserver:25.08-trtllm-python-py3".into(),
            sglang: "lmsysorg/sglang:v0.5.2-cu126".into(),
            // llama.cpp publishes these tags per build; pin one with `engine.image`.
            llamacpp: "ghcr.io/ggml-org/llama.cpp:server".into(),
            llamacpp_cuda: "ghcr.io/ggml-org/llama.cpp:server-cuda".into(),
        }
    }
}

/// Why a custom resource cannot be turned into objects (what the schema cannot check).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BuildError {
    #[error("{0} has no namespace")]
    NoNamespace(String),
    #[error(
        "toleration {0:?} is not key[=value]:Effect with Effect NoSchedule, PreferNoSchedule or NoExecute"
    )]
    Toleration(String),
    #[error("{0}")]
    Invalid(String),
    #[error("issuing the store's TLS certificate: {0}")]
    Certificate(String),
}

impl BuildError {
    /// A short category: Event reason and metric label.
    pub fn reason(&self) -> &'static str {
        match self {
            Self::NoNamespace(_) => "NoNamespace",
            Self::Toleration(_) => "InvalidToleration",
            Self::Invalid(_) => "InvalidSpec",
            Self::Certificate(_) => "CertificateFailed",
        }
    }
}

/// The standard labels of an object lode makes for `owner`.
pub fn labels(owner: &str, component: &str) -> BTreeMap<String, String> {
    BTreeMap::from([
        ("app.kubernetes.io/name".into(), format!("lode-{component}")),
        ("app.kubernetes.io/instance".into(), owner.to_string()),
        ("app.kubernetes.io/component".into(), component.to_string()),
        ("app.kubernetes.io/part-of".into(), "lode".into()),
        ("app.kubernetes.io/managed-by".into(), MANAGER.into()),
        (OWNER_LABEL.into(), owner.to_string()),
    ])
}

/// The labels pods are selected by (a stable subset: selectors are immutable).
pub fn selector(owner: &str, component: &str) -> BTreeMap<String, String> {
    BTreeMap::from([
        ("app.kubernetes.io/instance".into(), owner.to_string()),
        ("app.kubernetes.io/component".into(), component.to_string()),
    ])
}

/// Metadata of a child `name` of `owner`: its namespace, labels, and a controller owner
/// reference (left out when the owner has no uid yet, as in `render`).
pub fn child_meta<K>(
    owner: &K,
    name: String,
    labels: BTreeMap<String, String>,
) -> Result<ObjectMeta, BuildError>
where
    K: Resource<DynamicType = ()>,
{
    let namespace =
        owner.meta().namespace.clone().ok_or_else(|| {
            BuildError::NoNamespace(owner.meta().name.clone().unwrap_or_default())
        })?;
    Ok(ObjectMeta {
        name: Some(name),
        namespace: Some(namespace),
        labels: Some(labels),
        owner_references: owner.controller_owner_ref(&()).map(|r| vec![r]),
        ..ObjectMeta::default()
    })
}

/// The name of a custom resource.
pub fn name_of<K: Resource>(k: &K) -> String {
    k.meta().name.clone().unwrap_or_default()
}

/// A container that runs as an unprivileged user on a read-only root filesystem.
pub fn locked_down() -> SecurityContext {
    SecurityContext {
        run_as_non_root: Some(true),
        run_as_user: Some(65532),
        run_as_group: Some(65532),
        read_only_root_filesystem: Some(true),
        allow_privilege_escalation: Some(false),
        capabilities: Some(Capabilities {
            drop: Some(vec!["ALL".into()]),
            ..Capabilities::default()
        }),
        ..SecurityContext::default()
    }
}

/// Pod-level defaults: the runtime's seccomp profile; volumes writable by lode's user.
pub fn pod_security() -> PodSecurityContext {
    PodSecurityContext {
        fs_group: Some(65532),
        seccomp_profile: Some(SeccompProfile {
            type_: "RuntimeDefault".into(),
            ..SeccompProfile::default()
        }),
        ..PodSecurityContext::default()
    }
}

/// Named container ports.
pub fn container_ports(named: &[(&str, i32)]) -> Vec<k8s_openapi::api::core::v1::ContainerPort> {
    named
        .iter()
        .map(|(name, port)| k8s_openapi::api::core::v1::ContainerPort {
            name: Some((*name).into()),
            container_port: *port,
            ..Default::default()
        })
        .collect()
}

/// Service ports that target the containers' ports of the same names.
pub fn service_ports(named: &[(&str, i32)]) -> Vec<k8s_openapi::api::core::v1::ServicePort> {
    named
        .iter()
        .map(|(name, port)| k8s_openapi::api::core::v1::ServicePort {
            name: Some((*name).into()),
            port: *port,
            target_port: Some(IntOrString::String((*name).into())),
            ..Default::default()
        })
        .collect()
}

/// CPU and memory requested, memory limited (no CPU limit: throttling hurts latency).
pub fn resources(
    cpu: &str,
    memory: &str,
    memory_limit: &str,
) -> k8s_openapi::api::core::v1::ResourceRequirements {
    use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
    k8s_openapi::api::core::v1::ResourceRequirements {
        requests: Some(BTreeMap::from([
            ("cpu".into(), Quantity(cpu.into())),
            ("memory".into(), Quantity(memory.into())),
        ])),
        limits: Some(BTreeMap::from([(
            "memory".into(),
            Quantity(memory_limit.into()),
        )])),
        ..Default::default()
    }
}

pub fn http_probe(path: &str, port: i32, period: i32) -> Probe {
    Probe {
        http_get: Some(HTTPGetAction {
            path: Some(path.into()),
            port: IntOrString::Int(port),
            ..HTTPGetAction::default()
        }),
        period_seconds: Some(period),
        failure_threshold: Some(3),
        ..Probe::default()
    }
}

/// An ingress-only NetworkPolicy for the pods matching `select`: what `rules` admit,
/// nothing else.
pub fn ingress_policy(
    metadata: ObjectMeta,
    select: BTreeMap<String, String>,
    rules: Vec<NetworkPolicyIngressRule>,
) -> NetworkPolicy {
    NetworkPolicy {
        metadata,
        spec: Some(NetworkPolicySpec {
            pod_selector: Some(LabelSelector {
                match_labels: Some(select),
                ..LabelSelector::default()
            }),
            policy_types: Some(vec!["Ingress".into()]),
            ingress: Some(rules),
            ..NetworkPolicySpec::default()
        }),
    }
}

/// A TCP port of a NetworkPolicy rule.
/// Pods of the app `app` (`app.kubernetes.io/name`) in any namespace.
pub fn app_peer(app: &str) -> NetworkPolicyPeer {
    NetworkPolicyPeer {
        namespace_selector: Some(LabelSelector::default()),
        pod_selector: Some(LabelSelector {
            match_labels: Some(BTreeMap::from([(
                "app.kubernetes.io/name".to_string(),
                app.to_string(),
            )])),
            ..LabelSelector::default()
        }),
        ..NetworkPolicyPeer::default()
    }
}

/// The lode operator's pods, wherever the chart installed them.
pub fn operator_peer() -> NetworkPolicyPeer {
    app_peer("lode-operator")
}

/// Every pod of the object's own namespace.
pub fn namespace_peer() -> NetworkPolicyPeer {
    NetworkPolicyPeer {
        pod_selector: Some(LabelSelector::default()),
        ..NetworkPolicyPeer::default()
    }
}

/// An admin port (metrics, probes, `/demand`): open to the namespace, the lode operator
/// and Prometheus pods, wherever they run.
pub fn admin_rule(port: i32) -> NetworkPolicyIngressRule {
    NetworkPolicyIngressRule {
        from: Some(vec![
            namespace_peer(),
            operator_peer(),
            app_peer("prometheus"),
        ]),
        ports: Some(vec![tcp_port(port)]),
    }
}

pub fn tcp_port(port: i32) -> NetworkPolicyPort {
    NetworkPolicyPort {
        port: Some(IntOrString::Int(port)),
        protocol: Some("TCP".into()),
        ..NetworkPolicyPort::default()
    }
}

/// A volume with every key of a Secret, each a read-only file named by its key.
pub fn whole_secret_volume(volume: &str, secret: &str, mode: i32) -> Volume {
    Volume {
        name: volume.into(),
        secret: Some(SecretVolumeSource {
            secret_name: Some(secret.into()),
            default_mode: Some(mode),
            ..SecretVolumeSource::default()
        }),
        ..Volume::default()
    }
}

/// A volume with one key of a Secret, mounted read-only as a file.
pub fn secret_volume(volume: &str, secret: &str, key: &str, mode: i32) -> Volume {
    secret_keys_volume(volume, secret, &[key], mode)
}

/// A volume with some keys of a Secret, each a read-only file named by its key.
pub fn secret_keys_volume(volume: &str, secret: &str, keys: &[&str], mode: i32) -> Volume {
    Volume {
        name: volume.into(),
        secret: Some(SecretVolumeSource {
            secret_name: Some(secret.into()),
            items: Some(
                keys.iter()
                    .map(|k| KeyToPath {
                        key: (*k).into(),
                        path: (*k).into(),
                        mode: Some(mode),
                    })
                    .collect(),
            ),
            default_mode: Some(mode),
            ..SecretVolumeSource::default()
        }),
        ..Volume::default()
    }
}

pub fn config_volume(volume: &str, config_map: &str) -> Volume {
    Volume {
        name: volume.into(),
        config_map: Some(ConfigMapVolumeSource {
            name: config_map.into(),
            ..ConfigMapVolumeSource::default()
        }),
        ..Volume::default()
    }
}

pub fn mount(volume: &str, path: &str) -> VolumeMount {
    VolumeMount {
        name: volume.into(),
        mount_path: path.into(),
        read_only: Some(true),
        ..VolumeMount::default()
    }
}

/// Where secrets and configuration are mounted in lode's containers.
pub mod paths {
    pub const KEYS: &str = "/var/run/lode/keys";
    pub const STORE_TOKEN: &str = "/var/run/lode/store-token";
    pub const API_KEYS: &str = "/var/run/lode/api-keys";
    /// The store's TLS certificate and key (store pods).
    pub const STORE_TLS: &str = "/var/run/lode/store-tls";
    /// The CA that signed it (serve pods and Jobs).
    pub const STORE_CA: &str = "/var/run/lode/store-ca";
    pub const CONFIG: &str = "/etc/lode";
    pub const STORE_DATA: &str = "/var/lib/lode/store";
}

/// The key of the token inside the store token Secret.
pub const STORE_TOKEN_KEY: &str = "token";
/// Ports.
pub mod ports {
    pub const RELAY: i32 = 8545;
    pub const SERVE_ADMIN: i32 = 9091;
    pub const STORE: i32 = 7070;
    pub const STORE_ADMIN: i32 = 9090;
    pub const GATEWAY: i32 = 8080;
    pub const GATEWAY_ADMIN: i32 = 9095;
}

/// The store's in-cluster URL of a supplier.
pub fn store_url(supplier: &str) -> String {
    format!(
        "https://{}:{}",
        supplier::store_name(supplier),
        ports::STORE
    )
}

/// The volume with the CA of a supplier's store, for its clients (serve pods, Jobs).
pub fn store_ca_volume(supplier: &str) -> Volume {
    secret_volume(
        "store-ca",
        &supplier::tls_secret_name(supplier),
        supplier::TLS_CA_KEY,
        0o440,
    )
}

/// Where a client finds the CA of its supplier's store.
pub fn store_ca_file() -> String {
    format!("{}/{}", paths::STORE_CA, supplier::TLS_CA_KEY)
}

#[cfg(test)]
pub(crate) mod tests {
    use lode_crds::{GatewayPool, ServiceModel, Supplier};

    fn sample<K: serde::de::DeserializeOwned + kube::Resource>(file: &str) -> K {
        let path = format!("{}/../crds/samples/{file}", env!("CARGO_MANIFEST_DIR"));
        let text = std::fs::read_to_string(&path).expect("sample");
        let mut k: K = serde_saphyr::from_str(&text).expect("parses");
        k.meta_mut().namespace = Some("lode".into());
        k
    }

    pub fn sample_supplier() -> Supplier {
        sample("supplier.yaml")
    }

    pub fn sample_model() -> ServiceModel {
        sample("servicemodel.yaml")
    }

    pub fn sample_gateway() -> GatewayPool {
        sample("gatewaypool.yaml")
    }

    #[test]
    fn children_carry_the_owner_reference_once_the_owner_has_a_uid() {
        let mut s = sample_supplier();
        let m =
            super::child_meta(&s, "x".into(), super::labels("supplier-1", "store")).expect("meta");
        assert_eq!(m.owner_references, None, "no uid yet (render)");
        assert_eq!(m.namespace.as_deref(), Some("lode"));
        s.metadata.uid = Some("1234".into());
        let m =
            super::child_meta(&s, "x".into(), super::labels("supplier-1", "store")).expect("meta");
        let r = &m.owner_references.expect("owner")[0];
        assert_eq!(
            (r.kind.as_str(), r.uid.as_str(), r.controller),
            ("Supplier", "1234", Some(true))
        );
        s.metadata.namespace = None;
        assert!(super::child_meta(&s, "x".into(), Default::default()).is_err());
    }
}

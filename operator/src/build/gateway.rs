//! A GatewayPool: `lode-gateway` pods (Deployment), their Service, and their
//! configuration (ConfigMap).

use std::collections::BTreeMap;

use k8s_openapi::api::apps::v1::{Deployment, DeploymentSpec};
use k8s_openapi::api::core::v1::{
    ConfigMap, Container, PodSpec, PodTemplateSpec, Service, ServiceSpec,
};
use k8s_openapi::api::networking::v1::{NetworkPolicy, NetworkPolicyIngressRule};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta};
use lode_contracts::NodeConfig;
use lode_contracts::gateway::{ApplicationConfig, GatewayConfig, Routing};
use lode_crds::{GatewayPool, RoutingPolicy};

use super::servicemodel::CONFIG_HASH;
use super::{
    BuildError, Images, child_meta, component, config_volume, container_ports, http_probe,
    ingress_policy, labels, locked_down, mount, name_of, paths, pod_security, ports, resources,
    secret_volume, selector, service_ports, tcp_port, whole_secret_volume,
};

/// Everything one GatewayPool becomes.
#[derive(Clone, Debug, PartialEq)]
pub struct GatewayObjects {
    pub config: ConfigMap,
    pub deployment: Deployment,
    pub service: Service,
    pub network_policy: NetworkPolicy,
}

/// The gateway's configuration for `g`: the typed document the gateway reads.
pub fn gateway_config(g: &GatewayPool) -> GatewayConfig {
    let s = &g.spec;
    let mut config = GatewayConfig::new(
        NodeConfig {
            grpc_url: s.chain.grpc_url.clone(),
            rpc_url: s.chain.rpc_url.clone(),
        },
        format!("{}/{}", paths::KEYS, s.key_secret_ref.key),
        s.applications
            .iter()
            .map(|a| {
                let mut app = ApplicationConfig::new(a);
                // The Secret's entry named by the address, mounted as a file.
                if s.api_keys_secret_ref.is_some() {
                    app.api_keys_file = Some(format!("{}/{a}", paths::API_KEYS).into());
                }
                app
            })
            .collect(),
        s.services.clone(),
    );
    config.listen = format!("0.0.0.0:{}", ports::GATEWAY);
    config.admin = format!("0.0.0.0:{}", ports::GATEWAY_ADMIN);
    config.routing = match s.routing {
        RoutingPolicy::Scored => Routing::Scored,
        RoutingPolicy::RoundRobin => Routing::RoundRobin,
        RoutingPolicy::Random => Routing::Random,
    };
    config
}

/// The text of the gateway's ConfigMap: where it comes from, then the YAML.
pub fn gateway_config_yaml(g: &GatewayPool) -> String {
    format!(
        "# lode-gateway's configuration, written by lode-operator for GatewayPool {}.\n{}",
        name_of(g),
        gateway_config(g).to_yaml()
    )
}

pub fn gateway(g: &GatewayPool, images: &Images) -> Result<GatewayObjects, BuildError> {
    if g.spec.applications.len() > 1 && g.spec.api_keys_secret_ref.is_none() {
        // The schema says so too; an object stored before that rule still gets a reason.
        return Err(BuildError::Invalid(
            "with several applications, apiKeysSecretRef is required: the API key selects the application".into(),
        ));
    }
    let name = name_of(g);
    let labels = labels(&name, component::GATEWAY);
    let select = selector(&name, component::GATEWAY);
    let yaml = gateway_config_yaml(g);
    let config_name = format!("{name}-gateway");
    let config = ConfigMap {
        metadata: child_meta(g, config_name.clone(), labels.clone())?,
        data: Some(BTreeMap::from([("gateway.yaml".to_string(), yaml.clone())])),
        ..ConfigMap::default()
    };
    let hash = {
        use sha2::Digest;
        let h = sha2::Sha256::digest(yaml.as_bytes());
        h[..8]
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect::<String>()
    };
    let container = Container {
        name: "gateway".into(),
        image: Some(images.gateway.clone()),
        args: Some(vec![
            "--config".into(),
            format!("{}/gateway.yaml", paths::CONFIG),
            "--log-json".into(),
        ]),
        ports: Some(container_ports(&[
            ("http", ports::GATEWAY),
            ("admin", ports::GATEWAY_ADMIN),
        ])),
        readiness_probe: Some(http_probe("/readyz", ports::GATEWAY_ADMIN, 5)),
        liveness_probe: Some(http_probe("/healthz", ports::GATEWAY_ADMIN, 10)),
        resources: Some(resources("500m", "128Mi", "1Gi")),
        security_context: Some(locked_down()),
        volume_mounts: Some(
            [mount("config", paths::CONFIG), mount("keys", paths::KEYS)]
                .into_iter()
                .chain(
                    g.spec
                        .api_keys_secret_ref
                        .as_ref()
                        .map(|_| mount("api-keys", paths::API_KEYS)),
                )
                .collect(),
        ),
        ..Container::default()
    };
    let mut volumes = vec![
        config_volume("config", &config_name),
        secret_volume(
            "keys",
            &g.spec.key_secret_ref.name,
            &g.spec.key_secret_ref.key,
            0o440,
        ),
    ];
    if let Some(keys) = &g.spec.api_keys_secret_ref {
        volumes.push(whole_secret_volume("api-keys", &keys.name, 0o440));
    }
    let deployment = Deployment {
        metadata: child_meta(g, name.clone(), labels.clone())?,
        spec: Some(DeploymentSpec {
            replicas: Some(g.spec.min_replicas),
            selector: LabelSelector {
                match_labels: Some(select.clone()),
                ..LabelSelector::default()
            },
            template: PodTemplateSpec {
                metadata: Some(ObjectMeta {
                    labels: Some(labels.clone()),
                    annotations: Some(BTreeMap::from([(CONFIG_HASH.to_string(), hash)])),
                    ..ObjectMeta::default()
                }),
                spec: Some(PodSpec {
                    containers: vec![container],
                    volumes: Some(volumes),
                    security_context: Some(pod_security()),
                    automount_service_account_token: Some(false),
                    ..PodSpec::default()
                }),
            },
            ..DeploymentSpec::default()
        }),
        ..Deployment::default()
    };
    let network_policy = gateway_network_policy(
        child_meta(g, name.clone(), labels.clone())?,
        select.clone(),
        g,
    );
    let service = Service {
        metadata: child_meta(g, name, labels)?,
        spec: Some(ServiceSpec {
            selector: Some(select),
            ports: Some(service_ports(&[
                ("http", ports::GATEWAY),
                ("admin", ports::GATEWAY_ADMIN),
            ])),
            ..ServiceSpec::default()
        }),
        ..Service::default()
    };
    Ok(GatewayObjects {
        config,
        deployment,
        service,
        network_policy,
    })
}

/// Gateway pods: the API port open to `spec.clients`, or when that is empty to
/// everyone if API keys guard it and to this namespace's pods if not (an open gateway
/// spends its applications' stake for whoever reaches it); the admin port only from
/// the namespace, the lode operator and Prometheus pods.
fn gateway_network_policy(
    metadata: ObjectMeta,
    select: BTreeMap<String, String>,
    g: &GatewayPool,
) -> NetworkPolicy {
    let api_from = if !g.spec.clients.is_empty() {
        Some(g.spec.clients.clone())
    } else if g.spec.api_keys_secret_ref.is_some() {
        None
    } else {
        Some(vec![super::namespace_peer()])
    };
    ingress_policy(
        metadata,
        select,
        vec![
            NetworkPolicyIngressRule {
                from: api_from,
                ports: Some(vec![tcp_port(ports::GATEWAY)]),
            },
            super::admin_rule(ports::GATEWAY_ADMIN),
        ],
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::build::tests::sample_gateway;
    use k8s_openapi::api::networking::v1::NetworkPolicyPeer;
    use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

    #[test]
    fn the_gateway_config_is_one_the_gateway_accepts() {
        let g = sample_gateway();
        let o = gateway(&g, &Images::default()).expect("builds");
        let yaml = &o.config.data.clone().expect("data")["gateway.yaml"];
        let config = GatewayConfig::from_yaml(yaml).expect("the gateway accepts it");
        assert_eq!(config, gateway_config(&g));
        assert_eq!(
            config.applications[0].address,
            "pokt1dqkvq3mfz8nccuy2qx228u9lshdn908mhjg7jg"
        );
        assert_eq!(config.models["Qwen/Qwen2.5-7B-Instruct"], "llm");
        assert_eq!(
            config.signing_key_file,
            std::path::PathBuf::from("/var/run/lode/keys/gateway.key")
        );
        assert_eq!(config.routing, Routing::Scored);
        assert_eq!(o.deployment.spec.expect("s").replicas, Some(1));
    }

    #[test]
    fn api_keys_come_from_the_secret_and_the_network_policy_follows_them() {
        let mut g = sample_gateway();
        g.spec
            .applications
            .push("pokt1965xnc7jnz0dl4xdzwtnjms4huknsm96z066cy".into());
        let o = gateway(&g, &Images::default()).expect("builds");
        let config = gateway_config(&g);
        let files: Vec<_> = config
            .applications
            .iter()
            .map(|a| {
                a.api_keys_file
                    .clone()
                    .expect("a key file")
                    .display()
                    .to_string()
            })
            .collect();
        assert_eq!(
            files,
            [
                "/var/run/lode/api-keys/pokt1dqkvq3mfz8nccuy2qx228u9lshdn908mhjg7jg",
                "/var/run/lode/api-keys/pokt1965xnc7jnz0dl4xdzwtnjms4huknsm96z066cy"
            ]
        );
        // Two applications, each with keys: a configuration the gateway accepts.
        config.validate().expect("valid");
        let pod = o.deployment.spec.expect("spec").template.spec.expect("pod");
        let volume = pod
            .volumes
            .expect("volumes")
            .into_iter()
            .find(|v| v.name == "api-keys")
            .expect("the API keys volume");
        let secret = volume.secret.expect("a Secret");
        assert_eq!(secret.secret_name.as_deref(), Some("gateway-api-keys"));
        assert_eq!(secret.items, None, "every application's entry");
        let mounts = pod.containers[0].volume_mounts.clone().expect("mounts");
        assert!(
            mounts
                .iter()
                .any(|m| m.mount_path == "/var/run/lode/api-keys" && m.read_only == Some(true))
        );
        // Keys guard the API port: anyone may reach it; the admin port stays closed.
        let rules = o
            .network_policy
            .spec
            .clone()
            .expect("spec")
            .ingress
            .expect("rules");
        assert_eq!(rules.len(), 2);
        assert_eq!(rules[0].from, None);
        assert_eq!(
            rules[0].ports.clone().expect("ports")[0].port,
            Some(IntOrString::Int(8080))
        );
        assert_eq!(rules[1].from.clone().expect("admin peers").len(), 3);

        // Several applications and no keys: refused, not a crash-looping gateway.
        g.spec.api_keys_secret_ref = None;
        let err = gateway(&g, &Images::default()).expect_err("refused");
        assert!(
            err.to_string().contains("apiKeysSecretRef is required"),
            "{err}"
        );

        // One application, no keys: an open gateway, reachable from its namespace only.
        g.spec.applications.pop();
        let o = gateway(&g, &Images::default()).expect("builds");
        assert!(gateway_config(&g).applications[0].api_keys_file.is_none());
        let rules = o
            .network_policy
            .spec
            .clone()
            .expect("spec")
            .ingress
            .expect("rules");
        let from = rules[0].from.clone().expect("restricted");
        assert_eq!(from.len(), 1);
        assert_eq!(from[0].pod_selector, Some(LabelSelector::default()));
        assert_eq!(from[0].namespace_selector, None, "this namespace only");

        // `clients` says who, keys or not.
        g.spec.clients = vec![NetworkPolicyPeer {
            ip_block: Some(k8s_openapi::api::networking::v1::IPBlock {
                cidr: "10.0.0.0/8".into(),
                except: None,
            }),
            ..NetworkPolicyPeer::default()
        }];
        let o = gateway(&g, &Images::default()).expect("builds");
        let rules = o.network_policy.spec.expect("spec").ingress.expect("rules");
        assert_eq!(rules[0].from, Some(g.spec.clients.clone()));
    }

    #[test]
    fn a_quote_in_a_chain_url_or_a_model_name_cannot_break_the_config() {
        let mut g = sample_gateway();
        g.spec.chain.grpc_url = "http://node:9090/it's".into();
        g.spec
            .services
            .insert("model 'x'\nsecond: line # here".into(), "llm".into());
        let o = gateway(&g, &Images::default()).expect("builds");
        let yaml = &o.config.data.clone().expect("data")["gateway.yaml"];
        let config = GatewayConfig::from_yaml(yaml).expect("the gateway accepts it");
        assert_eq!(config.chain.grpc_url, "http://node:9090/it's");
        assert_eq!(config.models["model 'x'\nsecond: line # here"], "llm");
    }
}

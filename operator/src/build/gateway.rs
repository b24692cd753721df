//! A GatewayPool: `lode-gateway` pods (Deployment), their Service, and their
//! configuration (ConfigMap).

use std::collections::BTreeMap;

use k8s_openapi::api::apps::v1::{Deployment, DeploymentSpec};
use k8s_openapi::api::core::v1::{
    ConfigMap, Container, PodSpec, PodTemplateSpec, Service, ServiceSpec,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta};
use lode_contracts::NodeConfig;
use lode_contracts::gateway::{ApplicationConfig, GatewayConfig, Routing};
use lode_crds::{GatewayPool, RoutingPolicy};

use super::servicemodel::CONFIG_HASH;
use super::{
    BuildError, Images, child_meta, component, config_volume, container_ports, http_probe, labels,
    locked_down, mount, name_of, paths, pod_security, ports, resources, secret_volume, selector,
    service_ports,
};

/// Everything one GatewayPool becomes.
#[derive(Clone, Debug, PartialEq)]
pub struct GatewayObjects {
    pub config: ConfigMap,
    pub deployment: Deployment,
    pub service: Service,
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
            .map(|a| ApplicationConfig::new(a))
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
        volume_mounts: Some(vec![
            mount("config", paths::CONFIG),
            mount("keys", paths::KEYS),
        ]),
        ..Container::default()
    };
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
                    volumes: Some(vec![
                        config_volume("config", &config_name),
                        secret_volume(
                            "keys",
                            &g.spec.key_secret_ref.name,
                            &g.spec.key_secret_ref.key,
                            0o440,
                        ),
                    ]),
                    security_context: Some(pod_security()),
                    automount_service_account_token: Some(false),
                    ..PodSpec::default()
                }),
            },
            ..DeploymentSpec::default()
        }),
        ..Deployment::default()
    };
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
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::build::tests::sample_gateway;

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

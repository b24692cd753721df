//! A Supplier's session store: StatefulSet with its volume, Service, token Secret, and the
//! NetworkPolicy that lets only the supplier's serve pods and jobs reach it.

use std::collections::BTreeMap;

use k8s_openapi::api::apps::v1::{StatefulSet, StatefulSetSpec};
use k8s_openapi::api::core::v1::{
    Container, PersistentVolumeClaim, PersistentVolumeClaimSpec, PodSpec, PodTemplateSpec, Secret,
    Service, ServicePort, ServiceSpec, VolumeMount, VolumeResourceRequirements,
};
use k8s_openapi::api::networking::v1::{
    NetworkPolicy, NetworkPolicyIngressRule, NetworkPolicyPeer,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{
    LabelSelector, LabelSelectorRequirement, ObjectMeta,
};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use lode_crds::Supplier;

use super::{
    BuildError, Images, STORE_TOKEN_KEY, SUPPLIER_LABEL, child_meta, component, container_ports,
    http_probe, ingress_policy, labels, locked_down, mount, name_of, paths, pod_security, ports,
    resources, secret_keys_volume, secret_volume, selector, tcp_port,
};

/// The store's objects.
#[derive(Clone, Debug, PartialEq)]
pub struct StoreObjects {
    pub stateful_set: StatefulSet,
    pub service: Service,
    pub network_policy: NetworkPolicy,
}

/// The store's name for a supplier `s`.
pub fn store_name(s: &str) -> String {
    format!("{s}-store")
}

/// The Secret holding the store's token.
pub fn token_secret_name(s: &str) -> String {
    format!("{s}-store-token")
}

fn with_supplier(mut l: BTreeMap<String, String>, supplier: &str) -> BTreeMap<String, String> {
    l.insert(SUPPLIER_LABEL.into(), supplier.into());
    l
}

/// The Secret holding the store's TLS certificate and key and the CA that signed it.
pub fn tls_secret_name(s: &str) -> String {
    format!("{s}-store-tls")
}

/// Keys of the TLS Secret (those of `kubernetes.io/tls`).
pub const TLS_CA_KEY: &str = "ca.crt";
pub const TLS_CERT_KEY: &str = "tls.crt";
pub const TLS_KEY_KEY: &str = "tls.key";

/// A store's TLS material, PEM.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StoreCertificate {
    pub ca: String,
    pub cert: String,
    pub key: String,
}

/// A new CA for `supplier`'s store and the one certificate it signs, for
/// [`lode_contracts::serve::StoreConfig::OPERATOR_TLS_NAME`] (clients check that name
/// whatever address they reach the store at). The CA's key is dropped once it has
/// signed: nobody, the operator included, can issue another certificate serve trusts.
pub fn store_certificate(supplier: &str) -> Result<StoreCertificate, BuildError> {
    use rcgen::{
        BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair,
        KeyUsagePurpose,
    };
    let fail = |e: rcgen::Error| BuildError::Certificate(e.to_string());
    let mut ca = CertificateParams::new(Vec::<String>::new()).map_err(fail)?;
    ca.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    ca.key_usages = vec![KeyUsagePurpose::KeyCertSign];
    ca.distinguished_name
        .push(DnType::CommonName, format!("lode store CA ({supplier})"));
    let ca = CertifiedIssuer::self_signed(ca, KeyPair::generate().map_err(fail)?).map_err(fail)?;
    let key = KeyPair::generate().map_err(fail)?;
    let mut leaf = CertificateParams::new(vec![
        lode_contracts::serve::StoreConfig::OPERATOR_TLS_NAME.to_string(),
    ])
    .map_err(fail)?;
    leaf.distinguished_name
        .push(DnType::CommonName, format!("lode store ({supplier})"));
    let cert = leaf.signed_by(&key, &ca).map_err(fail)?;
    Ok(StoreCertificate {
        ca: ca.pem(),
        cert: cert.pem(),
        key: key.serialize_pem(),
    })
}

/// The store's TLS Secret (created once and kept, like the token).
pub fn tls_secret(s: &Supplier, tls: &StoreCertificate) -> Result<Secret, BuildError> {
    let name = name_of(s);
    Ok(Secret {
        metadata: child_meta(
            s,
            tls_secret_name(&name),
            with_supplier(labels(&name, component::STORE), &name),
        )?,
        string_data: Some(BTreeMap::from([
            (TLS_CA_KEY.to_string(), tls.ca.clone()),
            (TLS_CERT_KEY.to_string(), tls.cert.clone()),
            (TLS_KEY_KEY.to_string(), tls.key.clone()),
        ])),
        type_: Some("kubernetes.io/tls".into()),
        ..Secret::default()
    })
}

/// The store token Secret (`token` is generated once by the controller and kept).
pub fn token_secret(s: &Supplier, token: &str) -> Result<Secret, BuildError> {
    let name = name_of(s);
    Ok(Secret {
        metadata: child_meta(
            s,
            token_secret_name(&name),
            with_supplier(labels(&name, component::STORE), &name),
        )?,
        string_data: Some(BTreeMap::from([(
            STORE_TOKEN_KEY.to_string(),
            token.to_string(),
        )])),
        type_: Some("Opaque".into()),
        ..Secret::default()
    })
}

pub fn store(s: &Supplier, images: &Images) -> Result<StoreObjects, BuildError> {
    let name = name_of(s);
    let store = store_name(&name);
    let labels = with_supplier(labels(&name, component::STORE), &name);
    let select = selector(&name, component::STORE);
    let spec = &s.spec;
    let container = Container {
        name: "store".into(),
        image: Some(images.relayminer.clone()),
        args: Some(vec![
            "store".into(),
            "--data-dir".into(),
            paths::STORE_DATA.into(),
            "--listen".into(),
            format!("0.0.0.0:{}", ports::STORE),
            "--admin".into(),
            format!("0.0.0.0:{}", ports::STORE_ADMIN),
            "--token-file".into(),
            format!("{}/{STORE_TOKEN_KEY}", paths::STORE_TOKEN),
            "--supplier".into(),
            spec.operator_address.clone(),
            "--tls-cert".into(),
            format!("{}/{TLS_CERT_KEY}", paths::STORE_TLS),
            "--tls-key".into(),
            format!("{}/{TLS_KEY_KEY}", paths::STORE_TLS),
            "--log-json".into(),
        ]),
        ports: Some(container_ports(&[
            ("grpc", ports::STORE),
            ("admin", ports::STORE_ADMIN),
        ])),
        readiness_probe: Some(http_probe("/readyz", ports::STORE_ADMIN, 5)),
        liveness_probe: Some(http_probe("/healthz", ports::STORE_ADMIN, 10)),
        resources: Some(resources("250m", "256Mi", "1Gi")),
        security_context: Some(locked_down()),
        volume_mounts: Some(vec![
            VolumeMount {
                name: "data".into(),
                mount_path: paths::STORE_DATA.into(),
                ..VolumeMount::default()
            },
            mount("store-token", paths::STORE_TOKEN),
            mount("store-tls", paths::STORE_TLS),
        ]),
        ..Container::default()
    };
    let stateful_set = StatefulSet {
        metadata: child_meta(s, store.clone(), labels.clone())?,
        spec: Some(StatefulSetSpec {
            replicas: Some(1),
            service_name: Some(store.clone()),
            selector: LabelSelector {
                match_labels: Some(select.clone()),
                ..LabelSelector::default()
            },
            template: PodTemplateSpec {
                metadata: Some(ObjectMeta {
                    labels: Some(labels.clone()),
                    ..ObjectMeta::default()
                }),
                spec: Some(PodSpec {
                    containers: vec![container],
                    security_context: Some(pod_security()),
                    automount_service_account_token: Some(false),
                    volumes: Some(vec![
                        secret_volume(
                            "store-token",
                            &token_secret_name(&name),
                            STORE_TOKEN_KEY,
                            0o440,
                        ),
                        secret_keys_volume(
                            "store-tls",
                            &tls_secret_name(&name),
                            &[TLS_CERT_KEY, TLS_KEY_KEY],
                            0o440,
                        ),
                    ]),
                    ..PodSpec::default()
                }),
            },
            volume_claim_templates: Some(vec![PersistentVolumeClaim {
                metadata: ObjectMeta {
                    name: Some("data".into()),
                    labels: Some(labels.clone()),
                    ..ObjectMeta::default()
                },
                spec: Some(PersistentVolumeClaimSpec {
                    access_modes: Some(vec!["ReadWriteOnce".into()]),
                    storage_class_name: spec.store.storage_class_name.clone(),
                    resources: Some(VolumeResourceRequirements {
                        requests: Some(BTreeMap::from([(
                            "storage".into(),
                            Quantity(spec.store.size.clone()),
                        )])),
                        ..VolumeResourceRequirements::default()
                    }),
                    ..PersistentVolumeClaimSpec::default()
                }),
                ..PersistentVolumeClaim::default()
            }]),
            ..StatefulSetSpec::default()
        }),
        ..StatefulSet::default()
    };
    let service = Service {
        metadata: child_meta(s, store.clone(), labels.clone())?,
        spec: Some(ServiceSpec {
            selector: Some(select.clone()),
            ports: Some(vec![
                ServicePort {
                    name: Some("grpc".into()),
                    port: ports::STORE,
                    target_port: Some(IntOrString::String("grpc".into())),
                    ..ServicePort::default()
                },
                ServicePort {
                    name: Some("admin".into()),
                    port: ports::STORE_ADMIN,
                    target_port: Some(IntOrString::String("admin".into())),
                    ..ServicePort::default()
                },
            ]),
            ..ServiceSpec::default()
        }),
        ..Service::default()
    };
    // Only this supplier's serve pods and claim/prove jobs reach the gRPC port; the admin
    // port (metrics, probes, `/sessions`) is open inside the namespace and to the lode
    // operator (which reads `/sessions` for the Supplier's status), wherever it runs.
    let network_policy = ingress_policy(
        child_meta(s, store, labels)?,
        select,
        vec![
            NetworkPolicyIngressRule {
                from: Some(vec![NetworkPolicyPeer {
                    pod_selector: Some(LabelSelector {
                        match_labels: Some(BTreeMap::from([(
                            SUPPLIER_LABEL.to_string(),
                            name.clone(),
                        )])),
                        match_expressions: Some(vec![LabelSelectorRequirement {
                            key: "app.kubernetes.io/component".into(),
                            operator: "In".into(),
                            values: Some(vec![
                                component::SERVE.into(),
                                component::CLAIM.into(),
                                component::PROVE.into(),
                            ]),
                        }]),
                    }),
                    ..NetworkPolicyPeer::default()
                }]),
                ports: Some(vec![tcp_port(ports::STORE)]),
            },
            NetworkPolicyIngressRule {
                from: Some(vec![super::namespace_peer(), super::operator_peer()]),
                ports: Some(vec![tcp_port(ports::STORE_ADMIN)]),
            },
        ],
    );
    Ok(StoreObjects {
        stateful_set,
        service,
        network_policy,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::build::tests::sample_supplier;

    #[test]
    fn the_store_is_one_locked_down_pod_on_its_volume() {
        let s = sample_supplier();
        let o = store(&s, &Images::default()).expect("builds");
        let spec = o.stateful_set.spec.expect("spec");
        assert_eq!(spec.replicas, Some(1));
        let pvc = &spec.volume_claim_templates.expect("pvc")[0];
        assert_eq!(
            pvc.spec
                .as_ref()
                .and_then(|p| p.resources.as_ref())
                .and_then(|r| r.requests.as_ref())
                .map(|r| r["storage"].0.clone()),
            Some("20Gi".into()),
            "the default store size"
        );
        let pod = spec.template.spec.expect("pod");
        let c = &pod.containers[0];
        let args = c.args.clone().expect("args");
        assert_eq!(args[0], "store");
        assert!(
            args.windows(2)
                .any(|w| w[0] == "--supplier" && w[1] == s.spec.operator_address)
        );
        let sc = c.security_context.clone().expect("security context");
        assert_eq!(sc.run_as_non_root, Some(true));
        assert_eq!(sc.read_only_root_filesystem, Some(true));
        assert_eq!(pod.automount_service_account_token, Some(false));
        // The token Secret is mounted where --token-file points.
        assert!(args.contains(&format!("{}/token", paths::STORE_TOKEN)));
        assert_eq!(
            o.service.spec.expect("svc").ports.expect("ports")[0].port,
            ports::STORE
        );
    }

    #[test]
    fn only_the_suppliers_serve_pods_and_jobs_reach_the_store() {
        let s = sample_supplier();
        let np = store(&s, &Images::default())
            .expect("builds")
            .network_policy;
        let rules = np.spec.expect("spec").ingress.expect("rules");
        let peer = rules[0].from.as_ref().expect("from")[0]
            .pod_selector
            .clone()
            .expect("pods");
        assert_eq!(
            peer.match_labels.expect("labels")[SUPPLIER_LABEL],
            "supplier-1"
        );
        assert_eq!(
            peer.match_expressions.expect("exprs")[0].values,
            Some(vec!["serve".into(), "claim".into(), "prove".into()])
        );
        assert_eq!(
            rules[0].ports.as_ref().expect("ports")[0].port,
            Some(IntOrString::Int(ports::STORE))
        );
    }

    #[test]
    fn the_token_secret_holds_the_token() {
        let s = sample_supplier();
        let secret = token_secret(&s, "abc").expect("builds");
        assert_eq!(
            secret.metadata.name.as_deref(),
            Some("supplier-1-store-token")
        );
        assert_eq!(secret.string_data.expect("data")["token"], "abc");
    }

    /// A CA per store, the certificate it signed for the name clients check, and the
    /// store run with them; the CA's key is not kept anywhere.
    #[test]
    fn the_store_gets_a_certificate_its_clients_can_check() {
        use rustls_pki_types::pem::PemObject;
        let s = sample_supplier();
        let c = store_certificate("supplier-1").expect("issued");
        let secret = tls_secret(&s, &c).expect("builds");
        assert_eq!(
            secret.metadata.name.as_deref(),
            Some("supplier-1-store-tls")
        );
        assert_eq!(secret.type_.as_deref(), Some("kubernetes.io/tls"));
        let data = secret.string_data.expect("data");
        assert_eq!(
            data.keys().collect::<Vec<_>>(),
            ["ca.crt", "tls.crt", "tls.key"]
        );
        assert!(data["tls.key"].contains("PRIVATE KEY"));
        assert_eq!(
            data["tls.key"].matches("PRIVATE KEY-----").count(),
            2,
            "one key: the leaf's"
        );
        // The leaf verifies against the CA for the operator's name, and for no other.
        let ca = rustls_pki_types::CertificateDer::from_pem_slice(c.ca.as_bytes()).expect("ca");
        let leaf =
            rustls_pki_types::CertificateDer::from_pem_slice(c.cert.as_bytes()).expect("leaf");
        let mut roots = rustls::RootCertStore::empty();
        roots.add(ca).expect("root");
        let verifier = rustls::client::WebPkiServerVerifier::builder_with_provider(
            std::sync::Arc::new(roots),
            std::sync::Arc::new(rustls::crypto::ring::default_provider()),
        )
        .build()
        .expect("verifier");
        let now = rustls_pki_types::UnixTime::now();
        let name = |n: &str| rustls_pki_types::ServerName::try_from(n.to_string()).expect("name");
        use rustls::client::danger::ServerCertVerifier;
        verifier
            .verify_server_cert(&leaf, &[], &name("store.lode.internal"), &[], now)
            .expect("valid for the operator's name");
        assert!(
            verifier
                .verify_server_cert(&leaf, &[], &name("supplier-1-store"), &[], now)
                .is_err()
        );
        // Two issues are two different CAs.
        assert_ne!(store_certificate("supplier-1").expect("issued").ca, c.ca);

        // The store serves with it; the Service no longer says cleartext HTTP/2.
        let o = store(&s, &Images::default()).expect("builds");
        let pod = o
            .stateful_set
            .spec
            .expect("spec")
            .template
            .spec
            .expect("pod");
        let args = pod.containers[0].args.clone().expect("args").join(" ");
        assert!(
            args.contains("--tls-cert /var/run/lode/store-tls/tls.crt --tls-key /var/run/lode/store-tls/tls.key"),
            "{args}"
        );
        let tls = pod
            .volumes
            .expect("volumes")
            .into_iter()
            .find(|v| v.name == "store-tls")
            .expect("the TLS volume");
        let keys: Vec<String> = tls
            .secret
            .expect("secret")
            .items
            .expect("items")
            .into_iter()
            .map(|i| i.key)
            .collect();
        assert_eq!(keys, ["tls.crt", "tls.key"], "not the CA");
        assert_eq!(
            o.service.spec.expect("spec").ports.expect("ports")[0].app_protocol,
            None
        );
    }
}

//! `lode-operator render`: the objects custom resources stand for, without a cluster.
//! The same builders the controllers use; ServiceModels are paired with the Supplier
//! that lists them.

use lode_crds::{GatewayPool, ServiceModel, Supplier};
use serde::Serialize;

use crate::build::{self, BuildError, Images};

/// Why rendering failed.
#[derive(Debug, thiserror::Error)]
pub enum RenderError {
    #[error("document {index}: {reason}")]
    Document { index: usize, reason: String },
    #[error("{kind} {name}: {source}")]
    Build {
        kind: &'static str,
        name: String,
        source: BuildError,
    },
    #[error("ServiceModel {0} is listed by several Suppliers ({1}); a ServiceModel serves one")]
    SharedModel(String, String),
}

/// The custom resources of a set of YAML documents.
#[derive(Debug, Default)]
pub struct Resources {
    pub suppliers: Vec<Supplier>,
    pub models: Vec<ServiceModel>,
    pub gateways: Vec<GatewayPool>,
}

/// Splits YAML text into documents (`---` lines).
pub fn documents(text: &str) -> Vec<String> {
    let mut docs = vec![String::new()];
    for line in text.lines() {
        if line.trim_end() == "---" {
            docs.push(String::new());
        } else {
            let d = docs.last_mut().expect("one");
            d.push_str(line);
            d.push('\n');
        }
    }
    docs.into_iter()
        .filter(|d| {
            d.lines()
                .any(|l| !l.trim().is_empty() && !l.trim_start().starts_with('#'))
        })
        .collect()
}

/// Reads lode's custom resources; objects without a namespace get `namespace`.
pub fn parse(text: &str, namespace: &str) -> Result<Resources, RenderError> {
    let mut r = Resources::default();
    for (index, doc) in documents(text).iter().enumerate() {
        let bad = |reason: String| RenderError::Document { index, reason };
        let v: serde_json::Value = serde_saphyr::from_str(doc).map_err(|e| bad(e.to_string()))?;
        let api = v["apiVersion"].as_str().unwrap_or_default();
        if api != "lode.pokt.network/v1alpha1" {
            return Err(bad(format!(
                "apiVersion {api:?} is not lode.pokt.network/v1alpha1"
            )));
        }
        fn with_ns<K: kube::Resource>(mut k: K, ns: &str) -> K {
            if k.meta().namespace.is_none() {
                k.meta_mut().namespace = Some(ns.to_string());
            }
            k
        }
        match v["kind"].as_str().unwrap_or_default() {
            "Supplier" => r.suppliers.push(with_ns(
                serde_json::from_value(v).map_err(|e| bad(e.to_string()))?,
                namespace,
            )),
            "ServiceModel" => r.models.push(with_ns(
                serde_json::from_value(v).map_err(|e| bad(e.to_string()))?,
                namespace,
            )),
            "GatewayPool" => r.gateways.push(with_ns(
                serde_json::from_value(v).map_err(|e| bad(e.to_string()))?,
                namespace,
            )),
            other => return Err(bad(format!("kind {other:?} is not a lode resource"))),
        }
    }
    Ok(r)
}

fn value(o: &impl Serialize) -> serde_json::Value {
    serde_json::to_value(o).expect("k8s objects serialize")
}

/// The token `render` writes into the store token Secret (a reconcile generates a random
/// one and keeps it).
pub const RENDER_TOKEN: &str = "generated-at-reconcile";

/// Every object the resources stand for, in apply order; notes for resources that produce
/// nothing yet.
pub fn render(
    r: &Resources,
    images: &Images,
) -> Result<(Vec<serde_json::Value>, Vec<String>), RenderError> {
    let mut out = Vec::new();
    let mut notes = Vec::new();
    let fail =
        |kind: &'static str, name: String| move |source| RenderError::Build { kind, name, source };
    for s in &r.suppliers {
        let name = build::name_of(s);
        out.push(value(
            &build::supplier::token_secret(s, RENDER_TOKEN)
                .map_err(fail("Supplier", name.clone()))?,
        ));
        // A fresh certificate: applying the rendered objects twice would replace it.
        let tls = build::supplier::store_certificate(&name)
            .and_then(|c| build::supplier::tls_secret(s, &c))
            .map_err(fail("Supplier", name.clone()))?;
        out.push(value(&tls));
        let o = build::supplier::store(s, images).map_err(fail("Supplier", name))?;
        out.extend([
            value(&o.stateful_set),
            value(&o.service),
            value(&o.network_policy),
        ]);
    }
    for m in &r.models {
        let name = build::name_of(m);
        let listing = crate::validate::supplier_of(m, &r.suppliers)
            .map_err(|e| RenderError::SharedModel(e.model, e.suppliers))?;
        let Some(s) = listing else {
            notes.push(format!(
                "ServiceModel {name}: no Supplier lists it, so nothing serves it yet"
            ));
            continue;
        };
        let o = build::servicemodel::serving(m, s, images).map_err(fail("ServiceModel", name))?;
        out.extend(o.weight_cache.as_ref().map(value));
        out.extend([
            value(&o.deployment),
            value(&o.engine_service),
            value(&o.pdb),
            value(&o.network_policy),
            value(&o.relay.service_account),
            value(&o.relay.role),
            value(&o.relay.role_binding),
            value(&o.relay.config),
            value(&o.relay.deployment),
            value(&o.relay.service),
            value(&o.relay.pdb),
            value(&o.relay.network_policy),
        ]);
    }
    for g in &r.gateways {
        let name = build::name_of(g);
        let o = build::gateway::gateway(g, images).map_err(fail("GatewayPool", name))?;
        out.extend([
            value(&o.config),
            value(&o.deployment),
            value(&o.service),
            value(&o.network_policy),
        ]);
    }
    Ok((out, notes))
}

/// Each Supplier's stake Job, and its claim and prove Jobs for windows opening at
/// `height`.
pub fn window_jobs(
    r: &Resources,
    height: i64,
    images: &Images,
) -> Result<Vec<serde_json::Value>, RenderError> {
    let mut out = Vec::new();
    for s in &r.suppliers {
        let fail = |source| RenderError::Build {
            kind: "Supplier",
            name: build::name_of(s),
            source,
        };
        out.push(value(&build::jobs::stake_job(s, images).map_err(fail)?));
        for w in [build::jobs::Window::Claim, build::jobs::Window::Prove] {
            let job = build::jobs::window_job(s, w, height, images).map_err(|source| {
                RenderError::Build {
                    kind: "Supplier",
                    name: build::name_of(s),
                    source,
                }
            })?;
            out.push(value(&job));
        }
    }
    Ok(out)
}

/// Objects as one multi-document YAML stream.
pub fn to_yaml(objects: &[serde_json::Value]) -> String {
    objects
        .iter()
        .map(|o| serde_saphyr::to_string(o).expect("serializes"))
        .collect::<Vec<_>>()
        .join("---\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn samples() -> String {
        let dir = format!("{}/../crds/samples", env!("CARGO_MANIFEST_DIR"));
        ["supplier.yaml", "servicemodel.yaml", "gatewaypool.yaml"]
            .iter()
            .map(|f| std::fs::read_to_string(format!("{dir}/{f}")).expect("sample"))
            .collect::<Vec<_>>()
            .join("---\n")
    }

    #[test]
    fn the_samples_render_to_the_expected_objects() {
        let r = parse(&samples(), "lode").expect("parses");
        let (objects, notes) = render(&r, &Images::default()).expect("renders");
        assert!(notes.is_empty(), "{notes:?}");
        let kinds: Vec<String> = objects
            .iter()
            .map(|o| {
                format!(
                    "{}/{}",
                    o["kind"].as_str().unwrap_or("?"),
                    o["metadata"]["name"].as_str().unwrap_or("?")
                )
            })
            .collect();
        assert_eq!(
            kinds,
            [
                "Secret/supplier-1-store-token",
                "Secret/supplier-1-store-tls",
                "StatefulSet/supplier-1-store",
                "Service/supplier-1-store",
                "NetworkPolicy/supplier-1-store",
                "PersistentVolumeClaim/qwen-7b-weights",
                "Deployment/qwen-7b",
                "Service/qwen-7b-engines",
                "PodDisruptionBudget/qwen-7b",
                "NetworkPolicy/qwen-7b-engines",
                "ServiceAccount/qwen-7b-relay",
                "Role/qwen-7b-relay",
                "RoleBinding/qwen-7b-relay",
                "ConfigMap/qwen-7b-serve",
                "Deployment/qwen-7b-relay",
                "Service/qwen-7b",
                "PodDisruptionBudget/qwen-7b-relay",
                "NetworkPolicy/qwen-7b",
                "ConfigMap/gateway-gateway",
                "Deployment/gateway",
                "Service/gateway",
                "NetworkPolicy/gateway",
            ]
        );
        assert!(objects.iter().all(|o| o["metadata"]["namespace"] == "lode"));
        // Serving pods: the relay port open to all, the admin port to the namespace, the
        // operator and Prometheus only; the engine's port to nobody.
        let np = objects
            .iter()
            .find(|o| o["kind"] == "NetworkPolicy" && o["metadata"]["name"] == "qwen-7b")
            .expect("serving NetworkPolicy");
        let rules = np["spec"]["ingress"].as_array().expect("rules");
        assert_eq!(rules.len(), 2);
        assert_eq!(rules[0]["ports"][0]["port"], 8545);
        assert!(rules[0]["from"].is_null(), "relays from anywhere");
        assert_eq!(rules[1]["ports"][0]["port"], 9091);
        let peers = rules[1]["from"].as_array().expect("admin peers");
        let apps: Vec<&str> = peers
            .iter()
            .filter_map(|p| p["podSelector"]["matchLabels"]["app.kubernetes.io/name"].as_str())
            .collect();
        assert_eq!(
            (peers.len(), apps),
            (3, vec!["lode-operator", "prometheus"])
        );
        let yaml = to_yaml(&objects);
        assert_eq!(documents(&yaml).len(), objects.len());
    }

    #[test]
    fn unknown_kinds_unlisted_and_shared_models_are_explained() {
        let e =
            parse("apiVersion: v1\nkind: Pod\nmetadata: {name: x}\n", "d").expect_err("refused");
        assert!(
            e.to_string().contains("not lode.pokt.network/v1alpha1"),
            "{e}"
        );
        let model_only = samples().split("---\n").nth(1).expect("model").to_string();
        let r = parse(&model_only, "d").expect("parses");
        let (objects, notes) = render(&r, &Images::default()).expect("renders");
        assert!(objects.is_empty());
        assert!(notes[0].contains("no Supplier lists it"), "{notes:?}");
        let mut r = parse(&samples(), "d").expect("parses");
        let mut second = r.suppliers[0].clone();
        second.metadata.name = Some("supplier-2".into());
        r.suppliers.push(second);
        let e = render(&r, &Images::default()).expect_err("shared");
        assert!(e.to_string().contains("supplier-1, supplier-2"), "{e}");
    }
}

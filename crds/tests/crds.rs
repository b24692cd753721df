//! The committed CRDs are exactly what the types generate; they pass Kubernetes' own
//! schema checks; the samples parse into the types; the schema carries the validation
//! and printer columns the operator relies on.

use std::path::Path;
use std::process::Command;

use lode_crds::{AutoscalingMode, GatewayPool, ServiceModel, Supplier};

fn dir() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

#[test]
fn committed_crds_match_the_types() {
    let mut checked = 0;
    for (name, generated) in lode_crds::manifests() {
        let committed = std::fs::read_to_string(dir().join(name)).unwrap_or_default();
        assert!(
            committed == generated,
            "crds/{name} is stale: regenerate with `cargo run -p lode-crds --bin crdgen`"
        );
        checked += 1;
    }
    assert_eq!(checked, 3);
}

#[test]
fn crds_pass_kubernetes_validate() {
    let files: Vec<_> = lode_crds::manifests()
        .iter()
        .map(|(n, _)| dir().join(n))
        .collect();
    let out = Command::new("python3")
        .args(["-m", "kubernetes_validate", "--strict", "-k", "1.33.0"])
        .args(&files)
        .output()
        .expect("python3 with kubernetes-validate (scripts/setup.sh installs it)");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{text}");
    assert_eq!(
        text.matches("passed for resource customresourcedefinition/")
            .count(),
        3,
        "{text}"
    );
}

#[test]
fn samples_parse_with_defaults_filled_in() {
    let read = |n: &str| std::fs::read_to_string(dir().join("samples").join(n)).expect("sample");
    let s: Supplier = serde_saphyr::from_str(&read("supplier.yaml")).expect("supplier");
    assert_eq!(s.spec.services[0].service_model, "qwen-7b");
    assert_eq!(s.spec.store.size, "20Gi");
    assert_eq!(s.spec.chain.chain_id, "pocket");
    let m: ServiceModel = serde_saphyr::from_str(&read("servicemodel.yaml")).expect("servicemodel");
    assert_eq!(m.spec.autoscaling.mode, AutoscalingMode::Lode);
    assert_eq!(m.spec.autoscaling.target_in_flight_per_replica, 8);
    assert_eq!(m.spec.engine.port, 8000);
    assert_eq!(m.spec.gpus.resource_name, "nvidia.com/gpu");
    let cpu: ServiceModel =
        serde_saphyr::from_str(&read("servicemodel-llamacpp.yaml")).expect("servicemodel");
    assert_eq!(cpu.spec.engine.kind, lode_crds::EngineKind::Llamacpp);
    assert_eq!(cpu.spec.gpus.count, 0);
    assert_eq!(
        cpu.spec.model.file.as_deref(),
        Some("qwen2.5-0.5b-instruct-q4_k_m.gguf")
    );
    let g: GatewayPool = serde_saphyr::from_str(&read("gatewaypool.yaml")).expect("gatewaypool");
    assert_eq!(g.spec.services["Qwen/Qwen2.5-7B-Instruct"], "llm");
    assert_eq!(
        g.spec
            .api_keys_secret_ref
            .expect("the sample guards its API")
            .name,
        "gateway-api-keys"
    );
}

#[test]
fn schemas_carry_validation_columns_and_subresources() {
    let crd = |n: &str| -> serde_json::Value {
        let (_, y) = lode_crds::manifests()
            .into_iter()
            .find(|(f, _)| *f == n)
            .expect("manifest");
        serde_saphyr::from_str(&y).expect("yaml")
    };
    let sup = crd("suppliers.yaml");
    let version = &sup["spec"]["versions"][0];
    let columns: Vec<&str> = version["additionalPrinterColumns"]
        .as_array()
        .expect("columns")
        .iter()
        .map(|c| c["name"].as_str().expect("name"))
        .collect();
    assert_eq!(
        columns,
        [
            "Address",
            "Staked",
            "Services",
            "Ready",
            "Last claim",
            "Age"
        ]
    );
    assert!(version["subresources"]["status"].is_object());
    let spec = &version["schema"]["openAPIV3Schema"]["properties"]["spec"];
    assert_eq!(
        spec["properties"]["operatorAddress"]["pattern"],
        r"^pokt1[02-9ac-hj-np-z]{38}$"
    );
    let sm = crd("servicemodels.yaml");
    let version = &sm["spec"]["versions"][0];
    assert_eq!(
        version["subresources"]["scale"]["specReplicasPath"],
        ".spec.replicas"
    );
    let rules: Vec<&str> =
        version["schema"]["openAPIV3Schema"]["properties"]["spec"]["x-kubernetes-validations"]
            .as_array()
            .expect("CEL rules")
            .iter()
            .map(|r| r["message"].as_str().expect("message"))
            .collect();
    assert!(
        rules.contains(&"minReplicas must not exceed maxReplicas"),
        "{rules:?}"
    );
    assert!(
        rules.contains(&"model needs exactly one of pvc, image or uri"),
        "{rules:?}"
    );
    assert!(
        rules.contains(&"a llamacpp engine loads one GGUF file: set model.file"),
        "{rules:?}"
    );
    let gwp = crd("gatewaypools.yaml");
    let spec = &gwp["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"];
    let rules: Vec<&str> = spec["x-kubernetes-validations"]
        .as_array()
        .expect("CEL rules")
        .iter()
        .map(|r| r["rule"].as_str().expect("rule"))
        .collect();
    assert!(
        rules.contains(&"self.applications.size() <= 1 || has(self.apiKeysSecretRef)"),
        "{rules:?}"
    );
    assert!(spec["properties"]["clients"]["items"]["properties"]["ipBlock"].is_object());
    let engine = &version["schema"]["openAPIV3Schema"]["properties"]["spec"]["properties"]["engine"]
        ["properties"]["kind"];
    assert_eq!(
        engine["enum"],
        serde_json::json!([
            "vllm",
            "tensorrt-llm",
            "triton",
            "sglang",
            "llamacpp",
            "custom"
        ])
    );
}

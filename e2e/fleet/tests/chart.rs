//! Installing the Helm chart's rendered objects on kubesim with the real kubectl, then
//! the sample resources: what a user does on a real cluster.

use std::path::{Path, PathBuf};
use std::process::Command;

use lode_kubesim::{KubeSim, KubeSimOptions};

use lode_testkit::kubectl;

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_rendered_chart_installs_and_the_samples_apply() {
    let helm = std::env::var("LODE_HELM").unwrap_or_else(|_| "helm".into());
    let chart = repo().join("charts/lode");
    let out = Command::new(&helm)
        .args(["template", "lode"])
        .arg(&chart)
        .args(["--namespace", "lode-system", "--include-crds"])
        .args(["--set", "metrics.serviceMonitor.enabled=true"])
        .args(["--set", "metrics.podMonitor.enabled=true"])
        .args(["--set", "metrics.prometheusRule.enabled=true"])
        .output()
        .unwrap_or_else(|e| panic!("{helm}: {e} (scripts/setup.sh installs helm)"));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let root = tempfile::tempdir().expect("tempdir");
    let rendered = root.path().join("chart.yaml");
    std::fs::write(&rendered, &out.stdout).expect("write");
    let sim = KubeSim::start(KubeSimOptions {
        listen: "127.0.0.1:0".parse().expect("addr"),
        root: root.path().to_path_buf(),
        kubelet: None,
        crds: Vec::new(),
        networks: lode_kubesim::networks(),
    })
    .await
    .expect("kubesim");
    let kc = sim.kubeconfig.clone();
    let ns = root.path().join("ns.yaml");
    std::fs::write(
        &ns,
        "apiVersion: v1\nkind: Namespace\nmetadata: {name: lode-system}\n---\napiVersion: v1\nkind: Namespace\nmetadata: {name: lode}\n",
    )
    .expect("write");
    let (ok, text) = kubectl(&kc, &["apply", "-f", &ns.display().to_string()]);
    assert!(ok, "{text}");
    let (ok, text) = kubectl(&kc, &["apply", "-f", &rendered.display().to_string()]);
    assert!(ok, "{text}");
    for created in [
        "customresourcedefinition.apiextensions.k8s.io/suppliers.lode.pokt.network created",
        "customresourcedefinition.apiextensions.k8s.io/servicemodels.lode.pokt.network created",
        "customresourcedefinition.apiextensions.k8s.io/gatewaypools.lode.pokt.network created",
        "serviceaccount/lode created",
        "clusterrole.rbac.authorization.k8s.io/lode created",
        "clusterrolebinding.rbac.authorization.k8s.io/lode created",
        "role.rbac.authorization.k8s.io/lode-leader created",
        "deployment.apps/lode created",
        "service/lode-admin created",
        "configmap/lode-dashboard created",
        "servicemonitor.monitoring.coreos.com/lode created",
        "podmonitor.monitoring.coreos.com/lode-serving created",
        "prometheusrule.monitoring.coreos.com/lode created",
    ] {
        assert!(text.contains(created), "{created:?} in\n{text}");
    }
    // The CRDs it installed serve the samples, validated by their schemas.
    let samples = repo().join("crds/samples");
    let (ok, text) = kubectl(
        &kc,
        &["-n", "lode", "apply", "-f", &samples.display().to_string()],
    );
    assert!(ok, "{text}");
    for created in [
        "supplier.lode.pokt.network/supplier-1 created",
        "servicemodel.lode.pokt.network/qwen-7b created",
        "gatewaypool.lode.pokt.network/gateway created",
    ] {
        assert!(text.contains(created), "{created:?} in\n{text}");
    }
    let (ok, text) = kubectl(&kc, &["-n", "lode", "get", "lode"]);
    assert!(
        ok && text.contains("supplier-1") && text.contains("qwen-7b"),
        "{text}"
    );
    let (ok, text) = kubectl(
        &kc,
        &[
            "-n",
            "lode-system",
            "get",
            "deployment",
            "lode",
            "-o",
            "jsonpath={.spec.template.spec.containers[0].args}",
        ],
    );
    assert!(
        ok && text.contains("--lease-namespace") && text.contains("lode-system"),
        "{text}"
    );
    sim.shutdown().await;
}

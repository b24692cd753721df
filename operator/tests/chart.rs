//! The Helm chart (`charts/lode`), through the real Helm v4: it lints, it renders, what
//! it renders passes the Kubernetes schemas, its CRDs are the generated ones byte for
//! byte, and its values schema refuses bad values with messages that say what is wrong.

use std::path::{Path, PathBuf};
use std::process::Command;

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn chart() -> String {
    repo().join("charts/lode").display().to_string()
}

/// `helm` from `$LODE_HELM` (scripts/setup.sh installs it), else from PATH.
fn helm(args: &[&str]) -> (bool, String, String) {
    let bin = std::env::var("LODE_HELM").unwrap_or_else(|_| "helm".into());
    let out = Command::new(&bin).args(args).output().unwrap_or_else(|e| {
        panic!("{bin}: {e} (scripts/setup.sh installs helm; or set LODE_HELM)")
    });
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn render(extra: &[&str]) -> String {
    let c = chart();
    let mut args = vec![
        "template",
        "lode",
        c.as_str(),
        "--namespace",
        "lode-system",
        "--include-crds",
    ];
    args.extend_from_slice(extra);
    let (ok, out, err) = helm(&args);
    assert!(ok, "helm template failed: {err}");
    out
}

#[test]
fn the_chart_lints_and_renders_objects_that_pass_the_kubernetes_schemas() {
    let c = chart();
    let (ok, out, err) = helm(&["lint", "--strict", c.as_str()]);
    assert!(ok, "helm lint: {out}{err}");
    assert!(
        out.contains("1 chart(s) linted, 0 chart(s) failed"),
        "{out}"
    );

    let all = [
        "--set",
        "metrics.serviceMonitor.enabled=true",
        "--set",
        "metrics.podMonitor.enabled=true",
        "--set",
        "metrics.prometheusRule.enabled=true",
    ];
    let text = render(&all);
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("chart.yaml");
    std::fs::write(&file, &text).expect("write");
    let v = Command::new("python3")
        .args(["-m", "kubernetes_validate", "--strict", "-k", "1.33.0"])
        .arg(&file)
        .output()
        .expect("python3 with kubernetes-validate (scripts/setup.sh installs it)");
    let report = format!(
        "{}{}",
        String::from_utf8_lossy(&v.stdout),
        String::from_utf8_lossy(&v.stderr)
    );
    assert!(v.status.success(), "{report}");
    for object in [
        "customresourcedefinition/suppliers.lode.pokt.network",
        "customresourcedefinition/servicemodels.lode.pokt.network",
        "customresourcedefinition/gatewaypools.lode.pokt.network",
        "serviceaccount/lode",
        "clusterrole/lode",
        "clusterrolebinding/lode",
        "role/lode-leader",
        "rolebinding/lode-leader",
        "service/lode-admin",
        "deployment/lode",
        "configmap/lode-dashboard",
    ] {
        assert!(
            report.contains(&format!("passed for resource {object}")),
            "{object} validated:\n{report}"
        );
    }
    assert_eq!(
        report.matches("passed for resource").count(),
        11,
        "{report}"
    );
    // prometheus-operator's kinds have no schema in kubernetes-validate: it says so.
    for kind in ["ServiceMonitor", "PodMonitor", "PrometheusRule"] {
        assert!(
            report.contains(&format!("Couldn't find schema for kind {kind}")),
            "{kind}: {report}"
        );
        assert!(text.contains(&format!("kind: {kind}")), "{kind} rendered");
    }
    for alert in ["LodeWindowAtRisk", "LodeClaimsFailing", "LodeStoreDown"] {
        assert!(text.contains(&format!("alert: {alert}")), "{alert}");
    }
    // Defaults: no monitoring objects unless asked, the images follow appVersion.
    let plain = render(&[]);
    // The operator may create store-token Secrets but read none.
    assert_eq!(
        plain.matches("resources: [\"secrets\"]").count(),
        1,
        "{plain}"
    );
    assert!(
        plain.contains("resources: [\"secrets\"]\n    verbs: [\"create\"]"),
        "{plain}"
    );
    assert!(
        !plain.contains("kind: ServiceMonitor")
            && !plain.contains("kind: PodMonitor")
            && !plain.contains("kind: PrometheusRule")
    );
    // The PodMonitor scrapes serve and the engine of the pods lode made.
    assert!(
        text.contains("app.kubernetes.io/managed-by: lode-operator"),
        "{text}"
    );
    assert!(text.contains("- port: engine"), "{text}");
    // The operator creates weight caches (PersistentVolumeClaims) and nothing reads them.
    assert!(
        plain.contains(
            "resources: [\"persistentvolumeclaims\"]\n    verbs: [\"get\", \"create\", \"patch\"]"
        ),
        "{plain}"
    );
    assert!(
        plain.contains("image: ghcr.io/lode-pokt/lode-operator:0.1.0"),
        "{plain}"
    );
    assert!(
        plain.contains("- ghcr.io/lode-pokt/relayminer:0.1.0"),
        "{plain}"
    );
    let tagged = render(&[
        "--set",
        "operator.image.tag=0.2.0-rc1",
        "--set",
        "images.gateway.repository=registry.local/gw",
    ]);
    assert!(tagged.contains("image: ghcr.io/lode-pokt/lode-operator:0.2.0-rc1"));
    assert!(tagged.contains("- registry.local/gw:0.1.0"));
}

#[test]
fn the_chart_crds_are_the_generated_ones_byte_for_byte() {
    for f in ["suppliers.yaml", "servicemodels.yaml", "gatewaypools.yaml"] {
        let generated = std::fs::read(repo().join("crds").join(f)).expect("crds/");
        let shipped = std::fs::read(repo().join("charts/lode/crds").join(f)).expect("chart crds/");
        assert!(
            generated == shipped,
            "charts/lode/crds/{f} differs from crds/{f}: cp crds/*.yaml charts/lode/crds/"
        );
    }
    let rendered = render(&[]);
    for f in ["suppliers.yaml", "servicemodels.yaml", "gatewaypools.yaml"] {
        let generated = std::fs::read_to_string(repo().join("crds").join(f)).expect("crds/");
        assert!(
            rendered.contains(generated.trim_end()),
            "{f} rendered as is"
        );
    }
}

#[test]
fn the_values_schema_refuses_bad_values_with_clear_messages() {
    for (set, expected) in [
        (
            "operator.replicas=0",
            "at '/operator/replicas': minimum: got 0, want 1",
        ),
        (
            "operator.image.pullPolicy=Sometimes",
            "at '/operator/image/pullPolicy': value must be one of 'Always', 'IfNotPresent', 'Never'",
        ),
        (
            "admin.port=80",
            "at '/admin/port': minimum: got 80, want 1,024",
        ),
        (
            "operator.schedulerSeconds=0",
            "at '/operator/schedulerSeconds'",
        ),
        (
            "metrics.serviceMonitor.interval=often",
            "at '/metrics/serviceMonitor/interval'",
        ),
        ("bogus=1", "additional properties 'bogus' not allowed"),
    ] {
        let c = chart();
        let (ok, _, err) = helm(&["template", "lode", c.as_str(), "--set", set]);
        assert!(!ok, "{set} accepted");
        assert!(
            err.contains("values don't meet the specifications of the schema"),
            "{set}: {err}"
        );
        assert!(err.contains(expected), "{set}: {err}");
    }
    let dashboard: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(repo().join("charts/lode/files/dashboard.json"))
            .expect("dashboard"),
    )
    .expect("the dashboard is JSON");
    let titles: Vec<&str> = dashboard["panels"]
        .as_array()
        .expect("panels")
        .iter()
        .filter_map(|p| p["title"].as_str())
        .collect();
    for want in [
        "Relays per second",
        "Mined relays per second",
        "Compute units per hour",
        "Claims and proofs per window",
        "Rewards claimed (uPOKT per hour)",
        "Replicas vs demand",
        "Relay latency percentiles (serve)",
        "Engine requests running and waiting",
        "Engine tokens per second",
        "Engine KV cache and prompt cache hits",
    ] {
        assert!(titles.contains(&want), "{want} in {titles:?}");
    }
}

//! `lode-operator render` on the README's sample custom resources: every object it prints
//! validates against the real Kubernetes 1.33 schemas (`kubernetes-validate`, PyPI), and
//! `lode-operator crds` prints the committed CRD files.

use std::process::Command;

fn samples() -> Vec<std::path::PathBuf> {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../crds/samples");
    ["supplier.yaml", "servicemodel.yaml", "gatewaypool.yaml"]
        .iter()
        .map(|f| dir.join(f))
        .collect()
}

#[test]
fn rendered_objects_validate_against_the_kubernetes_schemas() {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_lode-operator"));
    cmd.args(["render", "--namespace", "lode", "--window-jobs-at", "22"]);
    for f in samples() {
        cmd.arg("-f").arg(f);
    }
    let out = cmd.output().expect("lode-operator render");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("rendered.yaml");
    std::fs::write(&file, &out.stdout).expect("write");
    let v = Command::new("python3")
        .args(["-m", "kubernetes_validate", "--strict", "-k", "1.33.0"])
        .arg(&file)
        .output()
        .expect("python3 with kubernetes-validate (scripts/setup.sh installs it)");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&v.stdout),
        String::from_utf8_lossy(&v.stderr)
    );
    assert!(v.status.success(), "{text}");
    for kind in [
        "secret",
        "statefulset",
        "service",
        "networkpolicy",
        "configmap",
        "deployment",
        "poddisruptionbudget",
        "job",
        "persistentvolumeclaim",
        "serviceaccount",
        "role",
        "rolebinding",
    ] {
        assert!(
            text.contains(&format!("passed for resource {kind}/")),
            "{kind} validated:\n{text}"
        );
    }
    assert_eq!(
        text.matches("passed for resource").count(),
        25,
        "22 objects (the relay tier's and the engines' apart) and the stake, claim and prove Jobs:\n{text}"
    );
}

#[test]
fn crds_subcommand_prints_the_committed_files() {
    let out = Command::new(env!("CARGO_BIN_EXE_lode-operator"))
        .arg("crds")
        .output()
        .expect("lode-operator crds");
    assert!(out.status.success());
    let printed = String::from_utf8(out.stdout).expect("utf8");
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../crds");
    let committed: Vec<String> = ["suppliers.yaml", "servicemodels.yaml", "gatewaypools.yaml"]
        .iter()
        .map(|f| std::fs::read_to_string(dir.join(f)).expect("committed CRD"))
        .collect();
    assert_eq!(printed, committed.join("---\n"));
}

//! The `lode-gateway` binary's command line: a configuration it cannot use is refused
//! with the file and the reason, before anything binds; `--check` prints the
//! configuration as understood, secrets redacted.

use std::process::Command;

const VALID: &str = "chain: {grpc_url: 'http://n:9090', rpc_url: 'http://n:26657'}\n\
                     signing_key_file: /k\nmodels: {m: llm}\n\
                     applications: [{address: pokt1app, api_keys: [sk-secret]}]\n";

fn gateway(args: &[&str]) -> (bool, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_lode-gateway"))
        .args(args)
        .env_remove("LODE_GATEWAY_CONFIG")
        .output()
        .expect("lode-gateway runs");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn a_configuration_it_cannot_use_is_refused_with_the_file_and_the_reason() {
    let dir = tempfile::tempdir().expect("dir");
    let file = dir.path().join("gateway.yaml");
    std::fs::write(&file, VALID.replace("pokt1app", "app-1")).expect("write");
    let (ok, _, err) = gateway(&["--config", &file.display().to_string()]);
    assert!(!ok);
    assert!(
        err.contains("gateway.yaml") && err.contains("\"app-1\" is not a pokt1… address"),
        "{err}"
    );
    let missing = dir.path().join("missing.yaml");
    let (ok, _, err) = gateway(&["--config", &missing.display().to_string()]);
    assert!(!ok);
    assert!(
        err.contains("reading") && err.contains("missing.yaml"),
        "{err}"
    );
}

#[test]
fn check_prints_the_configuration_without_its_secrets() {
    let dir = tempfile::tempdir().expect("dir");
    let file = dir.path().join("gateway.yaml");
    std::fs::write(&file, VALID).expect("write");
    let (ok, out, err) = gateway(&["--config", &file.display().to_string(), "--check"]);
    assert!(ok, "{err}");
    assert!(
        out.contains("pokt1app") && out.contains("max_attempts: 3"),
        "{out}"
    );
    assert!(
        !out.contains("sk-secret") && out.contains("<redacted>"),
        "{out}"
    );
}

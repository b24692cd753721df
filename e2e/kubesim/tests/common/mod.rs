//! Helpers of the system tests (each test file uses its share).
#![allow(dead_code)]

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::Command;

/// The directory with the workspace's binaries, building the ones missing (a plain
/// `cargo test --workspace` has built them already).
pub fn bin_dir() -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_BIN_EXE_lode-fleet"))
        .parent()
        .expect("bin dir")
        .to_path_buf();
    let wanted = [
        ("relayminer", "lode-relayminer"),
        ("lode-gateway", "lode-gateway"),
        ("lode-operator", "lode-operator"),
        ("engine-sim", "lode-engine-sim"),
    ];
    let missing: Vec<&str> = wanted
        .iter()
        .filter(|(b, _)| !dir.join(b).exists())
        .map(|(_, p)| *p)
        .collect();
    if !missing.is_empty() {
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let mut cmd = Command::new(cargo);
        cmd.arg("build");
        for p in &missing {
            cmd.args(["-p", p]);
        }
        let ok = cmd.status().expect("cargo build").success();
        assert!(ok, "building {missing:?} failed");
    }
    dir
}

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr")
        .port()
}

/// Runs the real kubectl against `kubeconfig`: (success, stdout + stderr).
pub fn kubectl(kubeconfig: &Path, args: &[&str]) -> (bool, String) {
    let out = Command::new("kubectl")
        .args(args)
        .env("KUBECONFIG", kubeconfig)
        .env("KUBECACHEDIR", kubeconfig.with_file_name("kube-cache"))
        .output()
        .expect("kubectl is installed (scripts/setup.sh)");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

/// Fleet options for a test: everything under `root`, every port free on loopback.
pub fn fleet_options(root: &Path) -> lode_kubesim::fleet::FleetOptions {
    let mut o = lode_kubesim::fleet::FleetOptions::new(root.to_path_buf(), bin_dir());
    let any = "127.0.0.1:0".parse().expect("addr");
    (o.api, o.rpc, o.grpc) = (any, any, any);
    o.gateway_port = free_port();
    o.relay_port = free_port();
    o
}

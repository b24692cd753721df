//! Helpers of the fleet system tests.

use std::net::TcpListener;
use std::path::PathBuf;
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

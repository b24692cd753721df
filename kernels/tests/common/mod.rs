//! Helpers shared by the vector tests.
#![allow(dead_code)]

use std::path::PathBuf;

use serde_json::Value;

/// The vector directory: `$LODE_VECTORS`, or `../shared/vectors` beside the repository.
pub fn vectors_dir() -> PathBuf {
    match std::env::var_os("LODE_VECTORS") {
        Some(dir) => PathBuf::from(dir),
        None => PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../shared/vectors"),
    }
}

/// Loads `<vectors>/<rel>` as JSON, failing loudly when it is missing.
pub fn load(rel: &str) -> Value {
    let path = vectors_dir().join(rel);
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| {
        panic!(
            "vector file {} must exist (set LODE_VECTORS): {e}",
            path.display()
        )
    });
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

pub fn hex(v: &Value) -> Vec<u8> {
    ::hex::decode(
        v.as_str()
            .unwrap_or_else(|| panic!("expected a hex string, got {v}")),
    )
    .unwrap_or_else(|e| panic!("bad hex {v}: {e}"))
}

/// `null` → `None`, a hex string → bytes.
pub fn hex_opt(v: &Value) -> Option<Vec<u8>> {
    if v.is_null() { None } else { Some(hex(v)) }
}

pub fn u64_str(v: &Value) -> u64 {
    v.as_str()
        .unwrap_or_else(|| panic!("expected a decimal string, got {v}"))
        .parse()
        .unwrap_or_else(|e| panic!("bad u64 {v}: {e}"))
}

/// Collects mismatches so a run reports all of them, and counts what was checked.
#[derive(Default)]
pub struct Checker {
    pub checked: usize,
    pub failures: Vec<String>,
}

impl Checker {
    pub fn eq<T: PartialEq + std::fmt::Debug>(
        &mut self,
        what: impl FnOnce() -> String,
        got: T,
        want: T,
    ) {
        self.checked += 1;
        if got != want {
            self.failures
                .push(format!("{}:\n  got  {got:?}\n  want {want:?}", what()));
        }
    }

    pub fn ok(&mut self, what: impl FnOnce() -> String, cond: bool) {
        self.checked += 1;
        if !cond {
            self.failures.push(what());
        }
    }

    pub fn finish(self, name: &str) {
        println!(
            "{name}: {} values checked, {} failures",
            self.checked,
            self.failures.len()
        );
        let shown: Vec<_> = self.failures.iter().take(30).cloned().collect();
        assert!(
            self.failures.is_empty(),
            "{} failures:\n{}",
            self.failures.len(),
            shown.join("\n")
        );
    }
}

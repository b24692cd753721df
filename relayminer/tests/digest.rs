//! `relayminer digest`: the manifest and the model's digest of a weights directory, and
//! the refusal of weights that are not the pinned ones (issue 24).

use std::process::Command;

fn digest(dir: &std::path::Path, expect: Option<&str>) -> (bool, String, String) {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_relayminer"));
    cmd.arg("digest").arg(dir);
    if let Some(e) = expect {
        cmd.args(["--expect", e]);
    }
    let out = cmd.output().expect("runs");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn the_model_digest_pins_the_weights() {
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(dir.path().join("config.json"), b"{}").expect("write");
    std::fs::write(dir.path().join("model.gguf"), vec![7u8; 3 << 20]).expect("write");
    let (ok, out, err) = digest(dir.path(), None);
    assert!(ok, "{err}");
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 3, "{out}");
    assert!(lines[0].ends_with("  2  config.json"), "{out}");
    assert!(
        lines[1].ends_with(&format!("  {}  model.gguf", 3 << 20)),
        "{out}"
    );
    // The model's digest is BLAKE3 over the manifest's lines.
    let manifest = format!("{}\n{}\n", lines[0], lines[1]);
    let want = blake3::hash(manifest.as_bytes()).to_hex().to_string();
    assert_eq!(lines[2], format!("model blake3:{want}"));

    // Pinned: the same weights pass (with or without the prefix, any case).
    assert!(digest(dir.path(), Some(&format!("blake3:{want}"))).0);
    assert!(digest(dir.path(), Some(&want.to_uppercase())).0);
    // One byte changed: refused, both digests named.
    let mut w = vec![7u8; 3 << 20];
    w[1 << 20] = 8;
    std::fs::write(dir.path().join("model.gguf"), w).expect("write");
    let (ok, _, err) = digest(dir.path(), Some(&want));
    assert!(!ok);
    assert!(
        err.contains(&format!("not the pinned blake3:{want}")),
        "{err}"
    );
    // A malformed pin and a missing directory are errors that say so.
    let (ok, _, err) = digest(dir.path(), Some("sha256:abc"));
    assert!(
        !ok && err.contains("is not blake3:<64 hex digits>"),
        "{err}"
    );
    let (ok, _, err) = digest(&dir.path().join("missing"), None);
    assert!(!ok && err.contains("missing"), "{err}");
}

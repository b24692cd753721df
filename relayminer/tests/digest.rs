//! `relayminer digest`: the manifest and the model's digest of a weights directory, and
//! the refusal of weights that are not the pinned ones (issue 24).

use std::process::Command;

fn digest(dir: &std::path::Path, expect: Option<&str>) -> (bool, String, String) {
    digest_with(dir, expect, &[])
}

fn digest_with(
    dir: &std::path::Path,
    expect: Option<&str>,
    extra: &[&str],
) -> (bool, String, String) {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_relayminer"));
    cmd.arg("digest").arg(dir).args(extra);
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

    // The reference implementation (the PyPI bindings of BLAKE3's authors) agrees on
    // each file's digest.
    let py = Command::new("python3")
        .args([
            "-c",
            "import blake3, sys; print(blake3.blake3(open(sys.argv[1], 'rb').read()).hexdigest())",
        ])
        .arg(dir.path().join("model.gguf"))
        .output()
        .expect("python3 runs (blake3 is installed by scripts/setup.sh)");
    assert!(
        py.status.success(),
        "{}",
        String::from_utf8_lossy(&py.stderr)
    );
    let reference = String::from_utf8_lossy(&py.stdout).trim().to_string();
    assert!(
        lines[1].starts_with(&format!("{reference}  ")),
        "{reference} / {out}"
    );

    // The report (a pod's termination message) is the digest alone.
    let report = dir.path().join("report");
    let report_arg = report.display().to_string();
    assert!(digest_with(dir.path(), None, &["--report", &report_arg]).0);
    std::fs::remove_file(&report).ok();
    let (ok, _, err) = digest_with(
        dir.path(),
        Some(&want),
        &["--report", &report.display().to_string()],
    );
    assert!(ok, "{err}");
    assert_eq!(
        std::fs::read_to_string(&report).expect("report"),
        format!("blake3:{want}\n")
    );
    // (The report file is not part of the digest: it lives elsewhere in a pod.)
    std::fs::remove_file(&report).ok();

    // Pinned: the same weights pass (with or without the prefix, any case).
    assert!(digest(dir.path(), Some(&format!("blake3:{want}"))).0);
    assert!(digest(dir.path(), Some(&want.to_uppercase())).0);
    // One byte changed: refused, both digests named.
    let mut w = vec![7u8; 3 << 20];
    w[1 << 20] = 8;
    std::fs::write(dir.path().join("model.gguf"), w).expect("write");
    let outside = tempfile::tempdir().expect("tempdir");
    let report = outside.path().join("termination-log");
    let (ok, _, err) = digest_with(
        dir.path(),
        Some(&want),
        &["--report", &report.display().to_string()],
    );
    assert!(!ok);
    assert!(
        err.contains(&format!("not the pinned blake3:{want}")),
        "{err}"
    );
    let why = std::fs::read_to_string(&report).expect("report");
    assert!(
        why.starts_with("the weights in ")
            && why.contains(&format!("not the pinned blake3:{want}")),
        "{why}"
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

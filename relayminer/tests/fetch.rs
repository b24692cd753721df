//! `relayminer fetch` against a local server in the Hugging Face hub's URL layout
//! (`/api/models/<repo>/revision/<rev>`, `/<repo>/resolve/<rev>/<file>` redirecting to a
//! CDN path that honours `Range`): weights fetched once, resumed after a broken
//! connection, size-checked, bounded, and digested the same as the originals (issue 24).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::process::Command;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;

/// The hub: one repository at one revision.
#[derive(Default)]
struct Hub {
    files: BTreeMap<String, Vec<u8>>,
    /// Bytes of file contents sent.
    sent: AtomicU64,
    /// Requests for contents, and those with a Range.
    requests: AtomicUsize,
    ranged: Mutex<Vec<String>>,
    /// Cut the next response for this file after this many bytes.
    cut_after: Mutex<Option<(String, usize)>>,
    /// List and declare this size for every file instead of its own.
    claim_size: Mutex<Option<u64>>,
    /// Declare this Content-Length (and send that much) while listing the true size.
    lie_length: Mutex<Option<u64>>,
    /// Send this many bytes of a file, then nothing more, never ending the response.
    stall_after: Mutex<Option<usize>>,
}

const REPO: &str = "lode/tiny";
const REV: &str = "0a1b2c3";

fn content(hub: &Hub, name: &str, headers: &HeaderMap) -> Response {
    let Some(bytes) = hub.files.get(name) else {
        return StatusCode::NOT_FOUND.into_response();
    };
    hub.requests.fetch_add(1, Ordering::Relaxed);
    let from = headers
        .get(header::RANGE)
        .and_then(|r| r.to_str().ok())
        .and_then(|r| r.strip_prefix("bytes="))
        .and_then(|r| r.strip_suffix('-'))
        .and_then(|r| r.parse::<usize>().ok());
    let lie = *hub.lie_length.lock().expect("lock");
    let total = lie
        .or(*hub.claim_size.lock().expect("lock"))
        .unwrap_or(bytes.len() as u64);
    let (status, start) = match from {
        Some(f) => {
            hub.ranged.lock().expect("lock").push(format!("{name}@{f}"));
            (StatusCode::PARTIAL_CONTENT, f.min(bytes.len()))
        }
        None => (StatusCode::OK, 0),
    };
    let mut body = bytes[start..(total as usize).min(bytes.len()).max(start)].to_vec();
    let cut = {
        let mut c = hub.cut_after.lock().expect("lock");
        match c.take() {
            Some((file, n)) if file == name => Some(n),
            other => {
                *c = other;
                None
            }
        }
    };
    let declared = total - start as u64;
    let mut res = Response::builder()
        .status(status)
        .header(header::CONTENT_LENGTH, declared.to_string());
    if status == StatusCode::PARTIAL_CONTENT {
        res = res.header(
            header::CONTENT_RANGE,
            format!("bytes {start}-{}/{total}", total - 1),
        );
    }
    if let Some(n) = *hub.stall_after.lock().expect("lock") {
        body.truncate(n);
        let first =
            futures_util::stream::iter(vec![Ok::<_, std::io::Error>(bytes::Bytes::from(body))]);
        let never = futures_util::stream::pending::<Result<bytes::Bytes, std::io::Error>>();
        use futures_util::StreamExt;
        return res
            .body(Body::from_stream(first.chain(never)))
            .expect("response");
    }
    if let Some(n) = cut {
        // The connection breaks after n bytes: a stream that errors after them.
        body.truncate(n);
        hub.sent.fetch_add(n as u64, Ordering::Relaxed);
        let chunks: Vec<Result<bytes::Bytes, std::io::Error>> = vec![
            Ok(bytes::Bytes::from(body)),
            Err(std::io::Error::other("connection reset")),
        ];
        return res
            .body(Body::from_stream(futures_util::stream::iter(chunks)))
            .expect("response");
    }
    hub.sent.fetch_add(body.len() as u64, Ordering::Relaxed);
    // A stream, so the declared length is the header's (a lying one included).
    let chunks: Vec<Result<bytes::Bytes, std::io::Error>> = vec![Ok(bytes::Bytes::from(body))];
    res.body(Body::from_stream(futures_util::stream::iter(chunks)))
        .expect("response")
}

async fn serve(hub: Arc<Hub>) -> SocketAddr {
    let app = axum::Router::new()
        .route(
            "/api/models/{org}/{name}/revision/{rev}",
            get(|State(h): State<Arc<Hub>>, Path((org, name, rev)): Path<(String, String, String)>| async move {
                if format!("{org}/{name}") != REPO || rev != REV {
                    return StatusCode::NOT_FOUND.into_response();
                }
                let claim = *h.claim_size.lock().expect("lock");
                let siblings: Vec<_> = h.files.iter()
                    .map(|(f, b)| serde_json::json!({"rfilename": f, "size": claim.unwrap_or(b.len() as u64)}))
                    .collect();
                axum::Json(serde_json::json!({"id": REPO, "sha": REV, "siblings": siblings})).into_response()
            }),
        )
        .route(
            "/{org}/{name}/resolve/{rev}/{*file}",
            get(|Path((org, name, rev, file)): Path<(String, String, String, String)>| async move {
                if format!("{org}/{name}") != REPO || rev != REV {
                    return StatusCode::NOT_FOUND.into_response();
                }
                // The hub sends large files to its CDN.
                (StatusCode::FOUND, [(header::LOCATION, format!("/cdn/{rev}/{file}"))]).into_response()
            }),
        )
        .route(
            "/cdn/{rev}/{*file}",
            get(|State(h): State<Arc<Hub>>, Path((_rev, file)): Path<(String, String)>, headers: HeaderMap| async move {
                content(&h, &file, &headers)
            }),
        )
        .with_state(hub);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move { axum::serve(listener, app).await });
    addr
}

/// `relayminer fetch URI --cache CACHE --hub HUB EXTRA…`: (success, stdout + stderr).
async fn run_fetch(
    uri: &str,
    hub: &str,
    cache: &std::path::Path,
    extra: &[&str],
) -> (bool, String) {
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_relayminer"))
        .args(["fetch", uri, "--cache"])
        .arg(cache)
        .args(["--hub", hub])
        .args(
            (!extra.contains(&"--stall-seconds"))
                .then_some(["--stall-seconds", "5"])
                .into_iter()
                .flatten(),
        )
        .args(extra)
        .env_remove("HF_TOKEN")
        .output()
        .await
        .expect("runs");
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

/// The test repository at its revision, from the hub at `addr`.
async fn fetch(addr: SocketAddr, cache: &std::path::Path, extra: &[&str]) -> (bool, String) {
    run_fetch(
        &format!("hf://{REPO}@{REV}"),
        &format!("http://{addr}"),
        cache,
        extra,
    )
    .await
}

fn digest(dir: &std::path::Path) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_relayminer"))
        .arg("digest")
        .arg(dir)
        .output()
        .expect("digest");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .find_map(|l| l.strip_prefix("model ").map(str::to_string))
        .expect("a digest")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn weights_are_fetched_once_resumed_checked_and_bounded() {
    let big: Vec<u8> = (0..(3u32 << 20)).map(|i| (i * 7 + i / 251) as u8).collect();
    let hub = Arc::new(Hub {
        files: BTreeMap::from([
            ("config.json".to_string(), b"{\"layers\": 2}".to_vec()),
            ("model.gguf".to_string(), big.clone()),
            ("tokenizer/vocab.txt".to_string(), b"a\nb\n".to_vec()),
        ]),
        ..Hub::default()
    });
    let addr = serve(hub.clone()).await;
    // The originals, as files, for the digest to compare with.
    let originals = tempfile::tempdir().expect("tempdir");
    for (name, bytes) in &hub.files {
        let p = originals.path().join(name);
        std::fs::create_dir_all(p.parent().expect("parent")).expect("dir");
        std::fs::write(p, bytes).expect("write");
    }

    // Every file of the repository at the revision, through the redirect; the first
    // download of the large file breaks after 1 MiB and is resumed from there.
    let cache = tempfile::tempdir().expect("tempdir");
    *hub.cut_after.lock().expect("lock") = Some(("model.gguf".into(), 1 << 20));
    let (ok, out) = fetch(addr, cache.path(), &[]).await;
    assert!(ok, "{out}");
    assert!(
        out.contains("3 files") && out.contains("3 fetched now"),
        "{out}"
    );
    let ranged = hub.ranged.lock().expect("lock").clone();
    assert_eq!(
        ranged,
        [format!("model.gguf@{}", 1 << 20)],
        "the broken download resumed where it broke"
    );
    let sent = hub.sent.load(Ordering::Relaxed);
    let total: u64 = hub.files.values().map(|f| f.len() as u64).sum();
    assert_eq!(sent, total, "not a byte sent twice");
    assert_eq!(
        digest(&cache.path().join("weights")),
        digest(originals.path()),
        "the fetched weights are the originals"
    );
    assert!(
        !std::fs::read_dir(cache.path().join("fetch"))
            .expect("fetch")
            .flatten()
            .any(|e| e.file_name().to_string_lossy().starts_with("partial-")),
        "no partial folder left"
    );

    // Once: a second run (a restarted pod) fetches nothing, and needs no hub at all.
    let requests = hub.requests.load(Ordering::Relaxed);
    let (ok, out) = fetch(addr, cache.path(), &[]).await;
    assert!(
        ok && out.contains("0 fetched now") && out.contains("3 already there"),
        "{out}"
    );
    assert_eq!(hub.requests.load(Ordering::Relaxed), requests);
    let (ok, out) = run_fetch(
        &format!("hf://{REPO}@{REV}"),
        "http://127.0.0.1:9",
        cache.path(),
        &["--file", "model.gguf", "--attempts", "1"],
    )
    .await;
    assert!(
        ok && out.contains("1 already there"),
        "no network needed: {out}"
    );

    // A file changed on disk (or half-written by hand) is fetched again.
    std::fs::write(cache.path().join("weights/config.json"), b"{").expect("write");
    let (ok, out) = fetch(addr, cache.path(), &["--file", "config.json"]).await;
    assert!(ok && out.contains("1 fetched now"), "{out}");
    assert_eq!(
        std::fs::read(cache.path().join("weights/config.json")).expect("read"),
        b"{\"layers\": 2}"
    );

    // Bounded: a file larger than --max-gib allows is refused before a byte is written:
    // from the hub's listing, and from what the server declares.
    let small = tempfile::tempdir().expect("tempdir");
    *hub.claim_size.lock().expect("lock") = Some(3 << 30);
    let (ok, out) = fetch(addr, small.path(), &["--max-gib", "2"]).await;
    assert!(
        !ok && out.contains("the repository lists 9663676416 bytes"),
        "{out}"
    );
    let (ok, out) = fetch(
        addr,
        small.path(),
        &["--file", "model.gguf", "--max-gib", "2"],
    )
    .await;
    *hub.claim_size.lock().expect("lock") = None;
    assert!(!ok && out.contains("the file is 3221225472 bytes"), "{out}");
    assert!(!small.path().join("weights/model.gguf").exists());

    // Size-checked: a download whose declared size is not the listed one is refused.
    *hub.lie_length.lock().expect("lock") = Some(10);
    let (ok, out) = fetch(addr, small.path(), &[]).await;
    *hub.lie_length.lock().expect("lock") = None;
    assert!(
        !ok && out.contains("the server declares 10 bytes; the hub lists"),
        "{out}"
    );
    assert!(!small.path().join("weights/config.json").exists(), "{out}");

    // A hub that stops sending mid-file (headers and 4 KiB, then nothing, the response
    // never ending) is given up after --stall-seconds, nothing kept in the weights.
    *hub.stall_after.lock().expect("lock") = Some(4096);
    let started = std::time::Instant::now();
    let (ok, out) = fetch(
        addr,
        small.path(),
        &[
            "--file",
            "model.gguf",
            "--stall-seconds",
            "1",
            "--attempts",
            "1",
        ],
    )
    .await;
    *hub.stall_after.lock().expect("lock") = None;
    assert!(!ok && out.contains("nothing for 1s at byte 4096"), "{out}");
    assert!(started.elapsed() < std::time::Duration::from_secs(20));
    assert!(!small.path().join("weights/model.gguf").exists());

    // Clear errors: an unknown revision, a file the repository lacks, a bad URI, a hub
    // that is down.
    let (ok, out) = run_fetch(
        &format!("hf://{REPO}@nope"),
        &format!("http://{addr}"),
        small.path(),
        &[],
    )
    .await;
    assert!(
        !ok && out.contains("404") && out.contains("no such repository, revision or file"),
        "{out}"
    );
    let (ok, out) = fetch(addr, small.path(), &["--file", "missing.bin"]).await;
    assert!(
        !ok && out.contains("missing.bin") && out.contains("404"),
        "{out}"
    );
    let (ok, out) = fetch(addr, small.path(), &["--file", "../../etc/passwd"]).await;
    assert!(
        !ok && out.contains("is not a relative path inside the model"),
        "{out}"
    );
    let (ok, out) = run_fetch(
        "hf://lode/tiny",
        "http://127.0.0.1:9",
        small.path(),
        &["--file", "a", "--attempts", "2"],
    )
    .await;
    assert!(
        !ok && out.contains("gave up after 2 attempts") && out.contains("127.0.0.1:9"),
        "{out}"
    );
}

//! A model hub on loopback, in the Hugging Face hub's URL layout, for the fleet's
//! fetched weights: `GET /api/models/<org>/<name>/revision/<rev>` lists a repository's
//! files with their sizes, `GET /<org>/<name>/resolve/<rev>/<file>` serves one, honouring
//! `Range: bytes=N-` (what `relayminer fetch` resumes with). Repositories are folders
//! `<dir>/<org>/<name>/`; every revision serves their current files.

use std::net::SocketAddr;
use std::path::{Path as FsPath, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;

/// What the hub has served.
#[derive(Debug, Default)]
pub struct HubCounters {
    /// File downloads started (ranged or whole).
    pub downloads: AtomicU64,
    /// Bytes of files sent.
    pub bytes: AtomicU64,
}

#[derive(Debug)]
struct Hub {
    dir: PathBuf,
    counters: Arc<HubCounters>,
}

/// A name the hub serves: no separators beyond the file's own, no `..`.
fn inside(dir: &FsPath, parts: &[&str]) -> Option<PathBuf> {
    let mut p = dir.to_path_buf();
    for part in parts {
        for seg in part.split('/') {
            if seg.is_empty() || seg == "." || seg == ".." {
                return None;
            }
            p.push(seg);
        }
    }
    Some(p)
}

fn list(dir: &FsPath, base: &FsPath, out: &mut Vec<serde_json::Value>) {
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let p = e.path();
        if p.is_dir() {
            list(&p, base, out);
        } else if let (Ok(rel), Ok(meta)) = (p.strip_prefix(base), e.metadata()) {
            out.push(serde_json::json!({"rfilename": rel.to_string_lossy(), "size": meta.len()}));
        }
    }
}

async fn info(
    State(h): State<Arc<Hub>>,
    Path((org, name, _rev)): Path<(String, String, String)>,
) -> Response {
    let Some(repo) = inside(&h.dir, &[&org, &name]).filter(|p| p.is_dir()) else {
        return StatusCode::NOT_FOUND.into_response();
    };
    let mut siblings = Vec::new();
    list(&repo, &repo, &mut siblings);
    axum::Json(serde_json::json!({"id": format!("{org}/{name}"), "siblings": siblings}))
        .into_response()
}

async fn resolve(
    State(h): State<Arc<Hub>>,
    Path((org, name, _rev, file)): Path<(String, String, String, String)>,
    headers: HeaderMap,
) -> Response {
    let Some(bytes) = inside(&h.dir, &[&org, &name, &file]).and_then(|p| std::fs::read(p).ok())
    else {
        return StatusCode::NOT_FOUND.into_response();
    };
    h.counters.downloads.fetch_add(1, Ordering::Relaxed);
    let total = bytes.len();
    let from = headers
        .get(header::RANGE)
        .and_then(|r| r.to_str().ok())
        .and_then(|r| r.strip_prefix("bytes="))
        .and_then(|r| r.strip_suffix('-'))
        .and_then(|r| r.parse::<usize>().ok());
    match from {
        Some(f) if f >= total => (
            StatusCode::RANGE_NOT_SATISFIABLE,
            [(header::CONTENT_RANGE, format!("bytes */{total}"))],
        )
            .into_response(),
        Some(f) => {
            h.counters
                .bytes
                .fetch_add((total - f) as u64, Ordering::Relaxed);
            (
                StatusCode::PARTIAL_CONTENT,
                [(
                    header::CONTENT_RANGE,
                    format!("bytes {f}-{}/{total}", total - 1),
                )],
                bytes[f..].to_vec(),
            )
                .into_response()
        }
        None => {
            h.counters.bytes.fetch_add(total as u64, Ordering::Relaxed);
            (StatusCode::OK, bytes).into_response()
        }
    }
}

/// Serves `dir` as a hub on `listen` until the process ends; its address and counters.
pub async fn serve(
    dir: PathBuf,
    listen: SocketAddr,
) -> std::io::Result<(SocketAddr, Arc<HubCounters>)> {
    let counters = Arc::new(HubCounters::default());
    let app = axum::Router::new()
        .route("/api/models/{org}/{name}/revision/{rev}", get(info))
        .route("/{org}/{name}/resolve/{rev}/{*file}", get(resolve))
        .with_state(Arc::new(Hub {
            dir,
            counters: counters.clone(),
        }));
    let listener = tokio::net::TcpListener::bind(listen).await?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, app).await {
            tracing::warn!(error = %e, "the model hub stopped");
        }
    });
    Ok((addr, counters))
}

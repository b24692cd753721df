//! Model weights fetched once into a ServiceModel's weight cache: `relayminer fetch`, the
//! init step a serving pod runs before `relayminer digest` when its weights come from a
//! URI.
//!
//! The cache is a volume that outlives pods. Complete files are in `<cache>/weights/`
//! (what the engine and the digest step see); `<cache>/fetch/state.json` records each
//! file's URL and size, so a restarted pod whose files are all there fetches nothing and
//! needs no network. A download goes to `<cache>/fetch/partial-<worker>/` (one folder per
//! pod, so replicas sharing the volume never write the same file) and is renamed into
//! place once its size is the one the server declared. An interrupted download resumes
//! with a `Range` request; a server that does not resume it is downloaded afresh.
//!
//! Everything from the network is bounded: the file list (8 MiB, 10,000 files, names
//! relative and without `..`), the total size (`max_bytes`, checked against what each
//! server declares before a byte is written and again while it arrives), the wait for
//! each piece (`stall`), the rate of an attempt (at least 16 KiB/s once `stall` has
//! passed), redirects (5), and attempts per file.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, bail, ensure};
use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper::header::{AUTHORIZATION, CONTENT_LENGTH, CONTENT_RANGE, LOCATION, RANGE};
use hyper::{StatusCode, Uri};
use hyper_util::client::legacy::Client;
use serde::{Deserialize, Serialize};
use tokio::io::AsyncWriteExt;

/// Where the weights come from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Source {
    /// A Hugging Face repository (`hf://org/name[@revision]`), from the hub or a mirror.
    Hub { repo: String, revision: String },
    /// Files under a URL (`https://…`; `http://` too, for a mirror inside the cluster).
    Url(String),
}

impl Source {
    /// `hf://org/name[@revision]` (revision `main` by default) or an `http(s)://` URL.
    pub fn parse(uri: &str) -> anyhow::Result<Self> {
        if let Some(rest) = uri.strip_prefix("hf://") {
            let (repo, revision) = rest.split_once('@').unwrap_or((rest, "main"));
            let name_ok = |s: &str| {
                !s.is_empty()
                    && s != "."
                    && s != ".."
                    && s.bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
            };
            let parts: Vec<&str> = repo.split('/').collect();
            ensure!(
                parts.len() == 2 && parts.iter().all(|p| name_ok(p)),
                "{uri:?}: an hf:// source is hf://<org>/<name>[@<revision>]"
            );
            ensure!(
                revision.split('/').all(name_ok),
                "{uri:?}: the revision {revision:?} is not a branch, tag or commit"
            );
            return Ok(Self::Hub {
                repo: repo.into(),
                revision: revision.into(),
            });
        }
        ensure!(
            uri.starts_with("https://") || uri.starts_with("http://"),
            "{uri:?}: weights are fetched from hf://<org>/<name>[@<revision>] or an https:// URL"
        );
        uri.parse::<Uri>()
            .with_context(|| format!("{uri:?} is not a URL"))?;
        Ok(Self::Url(uri.trim_end_matches('/').into()))
    }
}

/// How to fetch.
#[derive(Clone, Debug)]
pub struct Options {
    /// The weight cache volume.
    pub cache: PathBuf,
    /// The files to fetch; none: every file of the hub repository (a URL source is then
    /// itself the one file).
    pub files: Vec<String>,
    /// The hub (`https://huggingface.co`, or a mirror in the hub's URL layout).
    pub hub: String,
    /// A hub token (sent to the hub only, never to where it redirects).
    pub token: Option<String>,
    /// The most bytes the weights may have.
    pub max_bytes: u64,
    /// The longest wait for the next piece of a response.
    pub stall: Duration,
    /// Attempts per file.
    pub attempts: u32,
    /// Names this fetcher's partial-download folder (the pod's name).
    pub worker: String,
}

/// What a fetch did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Report {
    /// The files in the cache for this source.
    pub files: usize,
    /// The files downloaded now (the others were already there).
    pub downloaded: usize,
    /// Bytes received now.
    pub bytes: u64,
}

const MAX_LIST_BYTES: usize = 8 << 20;
const MAX_FILES: usize = 10_000;
const MAX_REDIRECTS: usize = 5;
/// An attempt slower than this once `stall` has passed is given up (and resumed).
const MIN_RATE: f64 = 16.0 * 1024.0;

/// The cache's record: each file's URL and size, as downloaded.
#[derive(Debug, Default, Serialize, Deserialize)]
struct State {
    files: BTreeMap<String, Entry>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
struct Entry {
    /// What was fetched: `hf://<repo>@<revision>/<file>` (whichever hub or mirror served
    /// it), or the URL.
    source: String,
    size: u64,
}

type Http = Client<lode_net::tls::HttpsConnector, Empty<Bytes>>;

/// A file name from a server or a spec: relative, `/`-separated, no empty, `.` or `..`
/// part, at most 1024 bytes.
fn relative_name(name: &str) -> anyhow::Result<&str> {
    ensure!(
        !name.is_empty()
            && name.len() <= 1024
            && !name.starts_with('/')
            && name
                .split('/')
                .all(|p| !p.is_empty() && p != "." && p != "..")
            && !name.contains('\0')
            && !name.contains('\\'),
        "file name {:?} is not a relative path inside the model",
        name.chars().take(200).collect::<String>()
    );
    Ok(name)
}

/// Fetches what is missing from the cache; the files are then in `<cache>/weights`.
pub async fn fetch(source: &Source, o: &Options) -> anyhow::Result<Report> {
    let http: Http = Client::builder(hyper_util::rt::TokioExecutor::new())
        .build(lode_net::tls::https_connector(Duration::from_secs(10)));
    let weights = o.cache.join("weights");
    let state_dir = o.cache.join("fetch");
    tokio::fs::create_dir_all(&weights)
        .await
        .with_context(|| format!("creating {}", weights.display()))?;
    tokio::fs::create_dir_all(&state_dir).await?;
    let mut state: State = match tokio::fs::read(state_dir.join("state.json")).await {
        Ok(b) => serde_json::from_slice(&b).unwrap_or_default(),
        Err(_) => State::default(),
    };
    let files = file_urls(&http, source, o).await?;
    let mut report = Report {
        files: files.len(),
        ..Report::default()
    };
    // The listed sizes against the bound, before anything is fetched.
    let listed: u64 = files.iter().filter_map(|f| f.size).sum();
    ensure!(
        listed <= o.max_bytes,
        "the repository lists {listed} bytes of files; the weights may have {} (the bound is --max-gib)",
        o.max_bytes
    );
    // What is already there, as recorded, counts against the bound too.
    let mut budget = o.max_bytes;
    let mut missing = Vec::new();
    for f in &files {
        let have = tokio::fs::metadata(weights.join(&f.name)).await.ok();
        match state.files.get(&f.name) {
            Some(e)
                if e.source == f.source
                    && have.is_some_and(|m| m.len() == e.size)
                    && f.size.is_none_or(|s| s == e.size) =>
            {
                budget = budget.saturating_sub(e.size);
            }
            _ => missing.push(f.clone()),
        }
    }
    let partial = state_dir.join(format!("partial-{}", o.worker));
    for Wanted {
        name,
        url,
        size,
        source,
    } in missing
    {
        let (size, received) = download(&http, &url, &partial.join(&name), size, budget, o)
            .await
            .with_context(|| format!("fetching {name} from {url}"))?;
        let target = weights.join(&name);
        if let Some(parent) = target.parent() {
            tokio::fs::create_dir_all(parent).await?;
        }
        tokio::fs::rename(partial.join(&name), &target)
            .await
            .with_context(|| format!("moving {name} into {}", weights.display()))?;
        budget = budget.saturating_sub(size);
        report.downloaded += 1;
        report.bytes += received;
        state.files.insert(name.clone(), Entry { source, size });
        // Recorded after each file: an interrupted fetch keeps what it finished.
        let tmp = state_dir.join(format!("state.json.{}", o.worker));
        tokio::fs::write(&tmp, serde_json::to_vec_pretty(&state)?).await?;
        tokio::fs::rename(&tmp, state_dir.join("state.json")).await?;
        tracing::info!(file = %name, bytes = size, "fetched");
    }
    let _ = tokio::fs::remove_dir_all(&partial).await;
    Ok(report)
}

/// The files to fetch and their URLs.
async fn file_urls(http: &Http, source: &Source, o: &Options) -> anyhow::Result<Vec<Wanted>> {
    let hub = o.hub.trim_end_matches('/');
    let names: Vec<(String, Option<u64>)> = match (source, o.files.is_empty()) {
        (_, false) => o.files.iter().map(|f| (f.clone(), None)).collect(),
        (Source::Url(url), true) => {
            let last = url.rsplit('/').next().unwrap_or("");
            vec![(
                relative_name(last.split('?').next().unwrap_or(""))?.to_string(),
                None,
            )]
        }
        (Source::Hub { repo, revision }, true) => {
            // With each file's size (`blobs`), which every download is checked against.
            let url = format!("{hub}/api/models/{repo}/revision/{revision}?blobs=true");
            let body = get_small(http, &url, o).await?;
            #[derive(Deserialize)]
            struct Info {
                #[serde(default)]
                siblings: Vec<Sibling>,
            }
            #[derive(Deserialize)]
            struct Sibling {
                rfilename: String,
                #[serde(default)]
                size: Option<u64>,
            }
            let info: Info = serde_json::from_slice(&body)
                .with_context(|| format!("{url}: not the hub's model information"))?;
            ensure!(
                info.siblings.len() <= MAX_FILES,
                "{url}: {} files, more than {MAX_FILES}",
                info.siblings.len()
            );
            ensure!(
                !info.siblings.is_empty(),
                "{url}: the repository has no files"
            );
            info.siblings
                .into_iter()
                .map(|s| (s.rfilename, s.size))
                .collect()
        }
    };
    let mut out = Vec::with_capacity(names.len());
    for (name, size) in names {
        relative_name(&name)?;
        let (url, id) = match source {
            Source::Hub { repo, revision } => (
                format!("{hub}/{repo}/resolve/{revision}/{name}"),
                format!("hf://{repo}@{revision}/{name}"),
            ),
            Source::Url(base) if o.files.is_empty() => (base.clone(), base.clone()),
            Source::Url(base) => (format!("{base}/{name}"), format!("{base}/{name}")),
        };
        out.push(Wanted {
            name,
            url,
            size,
            source: id,
        });
    }
    out.sort_by(|a, b| a.name.cmp(&b.name));
    out.dedup_by(|a, b| a.name == b.name);
    Ok(out)
}

/// A file to have: its name in the model, its URL, its size when the hub lists it, and
/// what it is (its record in the cache).
#[derive(Clone, Debug)]
struct Wanted {
    name: String,
    url: String,
    size: Option<u64>,
    source: String,
}

/// A GET answered 200 within `stall`, its body at most 8 MiB.
async fn get_small(http: &Http, url: &str, o: &Options) -> anyhow::Result<Vec<u8>> {
    let res = send(http, url, None, o).await?;
    ensure!(
        res.status() == StatusCode::OK,
        "{url}: {}{}",
        res.status(),
        hint(res.status())
    );
    let mut body = res.into_body();
    let mut out = Vec::new();
    while let Some(frame) = tokio::time::timeout(o.stall, body.frame())
        .await
        .map_err(|_| anyhow::anyhow!("{url}: nothing for {:?}", o.stall))?
    {
        if let Ok(data) = frame?.into_data() {
            ensure!(
                out.len() + data.len() <= MAX_LIST_BYTES,
                "{url}: the answer is larger than {MAX_LIST_BYTES} bytes"
            );
            out.extend_from_slice(&data);
        }
    }
    Ok(out)
}

fn hint(status: StatusCode) -> &'static str {
    match status.as_u16() {
        401 | 403 => " (a gated or private repository needs a token: HF_TOKEN)",
        404 => " (no such repository, revision or file)",
        _ => "",
    }
}

/// A GET of `url` following redirects; `range` from that byte. The token goes to the
/// hub's host only.
async fn send(
    http: &Http,
    url: &str,
    range: Option<u64>,
    o: &Options,
) -> anyhow::Result<hyper::Response<hyper::body::Incoming>> {
    let hub_host = o
        .hub
        .parse::<Uri>()
        .ok()
        .and_then(|u| u.authority().cloned());
    let mut uri: Uri = url
        .parse()
        .with_context(|| format!("{url:?} is not a URL"))?;
    for _ in 0..=MAX_REDIRECTS {
        let mut req = hyper::Request::get(uri.clone()).header("user-agent", "lode-relayminer");
        if let Some(from) = range {
            req = req.header(RANGE, format!("bytes={from}-"));
        }
        if let Some(t) = &o.token
            && uri.authority() == hub_host.as_ref()
        {
            req = req.header(AUTHORIZATION, format!("Bearer {t}"));
        }
        let res = tokio::time::timeout(o.stall, http.request(req.body(Empty::new())?))
            .await
            .map_err(|_| anyhow::anyhow!("{uri}: no answer within {:?}", o.stall))?
            .map_err(|e| anyhow::anyhow!("{uri}: {}", lode_net::error_chain(&e)))?;
        if !res.status().is_redirection() {
            return Ok(res);
        }
        let location = res
            .headers()
            .get(LOCATION)
            .and_then(|l| l.to_str().ok())
            .ok_or_else(|| anyhow::anyhow!("{uri}: {} without a Location", res.status()))?;
        uri = resolve(&uri, location)?;
    }
    bail!("{url}: more than {MAX_REDIRECTS} redirects")
}

/// `location` (absolute, or a path on the same host) against `base`.
fn resolve(base: &Uri, location: &str) -> anyhow::Result<Uri> {
    if location.starts_with("https://") || location.starts_with("http://") {
        return location
            .parse()
            .with_context(|| format!("redirect to {location:?}"));
    }
    ensure!(location.starts_with('/'), "redirect to {location:?}");
    let mut parts = base.clone().into_parts();
    parts.path_and_query = Some(location.parse()?);
    Ok(Uri::from_parts(parts)?)
}

/// `bytes a-b/total` → (a, total).
fn content_range(v: &str) -> Option<(u64, u64)> {
    let rest = v.strip_prefix("bytes ")?;
    let (span, total) = rest.split_once('/')?;
    let (a, _) = span.split_once('-')?;
    Some((a.parse().ok()?, total.parse().ok()?))
}

/// Downloads `url` to `to`, resuming what is there; (its size, bytes received now).
async fn download(
    http: &Http,
    url: &str,
    to: &Path,
    listed: Option<u64>,
    budget: u64,
    o: &Options,
) -> anyhow::Result<(u64, u64)> {
    if let Some(parent) = to.parent() {
        tokio::fs::create_dir_all(parent).await?;
    }
    let mut received = 0u64;
    let mut last_error = None;
    for attempt in 1..=o.attempts.max(1) {
        if attempt > 1 {
            tokio::time::sleep(Duration::from_millis(500) * attempt).await;
        }
        match attempt_download(http, url, to, listed, budget, o, &mut received).await {
            Ok(size) => return Ok((size, received)),
            Err(Attempt::Fatal(e)) => return Err(e),
            Err(Attempt::Retry(e)) => {
                tracing::warn!(url, attempt, error = %format!("{e:#}"), "download interrupted; resuming");
                last_error = Some(e);
            }
        }
    }
    Err(last_error
        .unwrap_or_else(|| anyhow::anyhow!("no attempt"))
        .context(format!("gave up after {} attempts", o.attempts.max(1))))
}

enum Attempt {
    /// Worth another attempt (a broken connection, a stall, a 5xx).
    Retry(anyhow::Error),
    /// Not (a 404, a file over the bound, a server contradicting itself).
    Fatal(anyhow::Error),
}

async fn attempt_download(
    http: &Http,
    url: &str,
    to: &Path,
    listed: Option<u64>,
    budget: u64,
    o: &Options,
    received: &mut u64,
) -> Result<u64, Attempt> {
    let retry = |e: anyhow::Error| Attempt::Retry(e);
    let fatal = |e: anyhow::Error| Attempt::Fatal(e);
    let have = tokio::fs::metadata(to).await.map(|m| m.len()).unwrap_or(0);
    let res = send(http, url, (have > 0).then_some(have), o)
        .await
        .map_err(retry)?;
    let status = res.status();
    let header = |name| {
        res.headers()
            .get(name)
            .and_then(|v: &hyper::header::HeaderValue| v.to_str().ok())
            .map(str::to_string)
    };
    let (from, total) = match status {
        StatusCode::OK => {
            let len = header(CONTENT_LENGTH)
                .and_then(|l| l.parse::<u64>().ok())
                .ok_or_else(|| {
                    fatal(anyhow::anyhow!(
                        "the server does not say the file's size (no Content-Length): it cannot be checked"
                    ))
                })?;
            (0, len)
        }
        StatusCode::PARTIAL_CONTENT => {
            let (a, total) = header(CONTENT_RANGE)
                .as_deref()
                .and_then(content_range)
                .ok_or_else(|| fatal(anyhow::anyhow!("206 without a usable Content-Range")))?;
            if a != have {
                // Not where we asked: start again from the beginning.
                let _ = tokio::fs::remove_file(to).await;
                return Err(retry(anyhow::anyhow!("resumed at byte {a}, not {have}")));
            }
            (a, total)
        }
        StatusCode::RANGE_NOT_SATISFIABLE => {
            // Already whole (or the file changed): the declared size decides.
            let total =
                header(CONTENT_RANGE).and_then(|v| v.strip_prefix("bytes */")?.parse::<u64>().ok());
            if total == Some(have) {
                return Ok(have);
            }
            let _ = tokio::fs::remove_file(to).await;
            return Err(retry(anyhow::anyhow!(
                "range not satisfiable; starting again"
            )));
        }
        s if s.is_server_error() || s == StatusCode::TOO_MANY_REQUESTS => {
            return Err(retry(anyhow::anyhow!("{s}")));
        }
        s => return Err(fatal(anyhow::anyhow!("{s}{}", hint(s)))),
    };
    if let Some(l) = listed
        && l != total
    {
        return Err(fatal(anyhow::anyhow!(
            "the server declares {total} bytes; the hub lists {l}"
        )));
    }
    if total > budget {
        return Err(fatal(anyhow::anyhow!(
            "the file is {total} bytes; the weights may have {budget} more (the bound is --max-bytes)"
        )));
    }
    let mut file = tokio::fs::OpenOptions::new()
        .create(true)
        .write(true)
        .truncate(from == 0)
        .append(from > 0)
        .open(to)
        .await
        .map_err(|e| fatal(e.into()))?;
    let mut at = from;
    let started = Instant::now();
    let mut body = res.into_body();
    loop {
        let frame = match tokio::time::timeout(o.stall, body.frame()).await {
            Err(_) => {
                file.flush().await.ok();
                return Err(retry(anyhow::anyhow!(
                    "nothing for {:?} at byte {at}",
                    o.stall
                )));
            }
            Ok(None) => break,
            Ok(Some(Err(e))) => {
                file.flush().await.ok();
                return Err(retry(anyhow::anyhow!(
                    "broken at byte {at}: {}",
                    lode_net::error_chain(&e)
                )));
            }
            Ok(Some(Ok(f))) => f,
        };
        let Ok(data) = frame.into_data() else {
            continue;
        };
        if at + data.len() as u64 > total {
            let _ = tokio::fs::remove_file(to).await;
            return Err(fatal(anyhow::anyhow!(
                "the server sent more than the {total} bytes it declared"
            )));
        }
        file.write_all(&data).await.map_err(|e| fatal(e.into()))?;
        at += data.len() as u64;
        *received += data.len() as u64;
        let secs = started.elapsed().as_secs_f64();
        if secs > o.stall.as_secs_f64() && ((at - from) as f64) / secs < MIN_RATE {
            file.flush().await.ok();
            return Err(retry(anyhow::anyhow!(
                "slower than {} KiB/s at byte {at}",
                MIN_RATE / 1024.0
            )));
        }
    }
    file.flush().await.map_err(|e| fatal(e.into()))?;
    file.sync_all().await.map_err(|e| fatal(e.into()))?;
    if at != total {
        return Err(retry(anyhow::anyhow!("ended at byte {at} of {total}")));
    }
    Ok(total)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sources_parse_and_refuse_with_the_reason() {
        assert_eq!(
            Source::parse("hf://Qwen/Qwen2.5-0.5B-Instruct-GGUF").expect("hf"),
            Source::Hub {
                repo: "Qwen/Qwen2.5-0.5B-Instruct-GGUF".into(),
                revision: "main".into()
            }
        );
        assert_eq!(
            Source::parse("hf://org/m@0123abc").expect("hf"),
            Source::Hub {
                repo: "org/m".into(),
                revision: "0123abc".into()
            }
        );
        assert_eq!(
            Source::parse("https://mirror.example/models/m/").expect("url"),
            Source::Url("https://mirror.example/models/m".into())
        );
        for bad in [
            "hf://org",
            "hf://org/m/extra",
            "hf://../m",
            "hf://org/m@..",
            "hf://org/m@a b",
            "s3://bucket/m",
            "/models/m",
        ] {
            assert!(Source::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn names_from_servers_stay_inside_the_model() {
        for ok in ["model.gguf", "sub/dir/config.json", "a..b"] {
            assert!(relative_name(ok).is_ok(), "{ok}");
        }
        for bad in [
            "",
            "/etc/passwd",
            "../x",
            "a/../../x",
            "a//b",
            "./a",
            "a\\..\\b",
            "a\0b",
        ] {
            assert!(relative_name(bad).is_err(), "{bad:?}");
        }
        assert!(relative_name(&"a".repeat(1025)).is_err());
    }

    #[test]
    fn content_ranges_and_redirects() {
        assert_eq!(content_range("bytes 100-199/1000"), Some((100, 1000)));
        assert_eq!(content_range("bytes */1000"), None);
        assert_eq!(content_range("items 1-2/3"), None);
        let base: Uri = "http://hub.local:8080/org/m/resolve/main/f"
            .parse()
            .expect("uri");
        assert_eq!(
            resolve(&base, "/cdn/f?x=1").expect("relative").to_string(),
            "http://hub.local:8080/cdn/f?x=1"
        );
        assert_eq!(
            resolve(&base, "https://cdn.example/f")
                .expect("absolute")
                .to_string(),
            "https://cdn.example/f"
        );
        assert!(resolve(&base, "f").is_err());
    }
}

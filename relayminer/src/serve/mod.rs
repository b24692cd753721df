//! `relayminer serve`: the relay proxy in front of an LLM engine.
//!
//! Relay port: `RelayRequest`s over HTTP/1.1 or HTTP/2, validated (session on chain,
//! supplier, ring signature, over-servicing), proxied to the engine, answered with a
//! signed `RelayResponse` or a stream of signed batches; finished relays are mined and
//! shipped to the session store. Admin port: `/metrics`, `/healthz`, `/readyz` (chain,
//! store and engine), `/demand` (the autoscaler's signals).

mod admit;
pub mod config;
pub mod discover;
pub mod failure;
pub mod hold;
pub mod metrics;
mod proxy;
pub mod relay;
pub mod route;
pub mod session;
pub mod ship;
mod signer;
mod stream;
mod triton;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use lode_chain::pocket::PocketQuery;
use lode_chain::{ChainGrpc, CometRpc, RetryPolicy};
use tokio::sync::oneshot;

pub use config::{ServeConfig, StorePolicy};
use metrics::Metrics;
use relay::RelayState;
use session::Sessions;
use ship::Shipper;
use signer::Signer;

/// Why serve could not start, or did not stop cleanly.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error(transparent)]
    Key(#[from] lode_chain_tx::keys::KeyFileError),
    #[error(transparent)]
    Chain(#[from] lode_chain::QueryError),
    #[error("reading the store token {path}: {source}")]
    Token {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("store URL {url}: {reason}")]
    StoreUrl { url: String, reason: String },
    #[error("{0}")]
    Service(String),
    #[error(transparent)]
    Bind(#[from] lode_net::BindError),
    #[error("{0} mined relays were not acknowledged by the store within {FLUSH_TIMEOUT:?}")]
    Unflushed(u64),
    #[error("the serve task: {0}")]
    Task(#[from] tokio::task::JoinError),
}

/// A running `serve`.
#[derive(Debug)]
pub struct ServeHandle {
    pub relay_addr: SocketAddr,
    pub admin_addr: SocketAddr,
    pub state: Arc<RelayState>,
    stop: Option<oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<Result<(), ServeError>>,
}

impl ServeHandle {
    /// Graceful shutdown: stop accepting, finish in-flight relays and streams, flush
    /// mined relays to the store (up to `flush_timeout`), then return.
    pub async fn shutdown(mut self) -> Result<(), ServeError> {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        self.task.await?
    }
}

#[derive(Clone, Debug)]
struct Admin {
    state: Arc<RelayState>,
    engines_ok: Arc<AtomicBool>,
    /// Claim and proof counters when serve runs inside `relayminer run`.
    lifecycle: Option<Arc<crate::lifecycle::LifecycleMetrics>>,
    /// The digest of the engine's weights, when the pod's digest step wrote one.
    model_digest: Option<String>,
}

/// The weights' digest from `path` (at most 256 bytes, `blake3:<64 hex>`); `None`, said
/// in the log, when it is missing or not a digest.
fn read_model_digest(path: &std::path::Path) -> Option<String> {
    use std::io::Read;
    let mut text = String::new();
    let read = std::fs::File::open(path).and_then(|f| f.take(256).read_to_string(&mut text));
    if let Err(e) = read {
        tracing::warn!(path = %path.display(), error = %e, "no weights digest to show");
        return None;
    }
    let d = text.trim();
    let ok = d
        .strip_prefix("blake3:")
        .is_some_and(|h| h.len() == 64 && h.bytes().all(|b| b.is_ascii_hexdigit()));
    if !ok {
        tracing::warn!(path = %path.display(), "the weights digest file holds no blake3 digest");
        return None;
    }
    Some(d.to_ascii_lowercase())
}

/// Concurrent relays on one HTTP/2 connection (a gateway's), at most.
const MAX_STREAMS: u32 = 1024;

/// How long shutdown waits for the store to take the last mined relays.
pub const FLUSH_TIMEOUT: Duration = Duration::from_secs(30);

/// Starts serving: binds both ports, starts height tracking, the store shipper, the
/// engine probe and the rate sampler.
pub async fn start(config: ServeConfig) -> Result<ServeHandle, ServeError> {
    start_with(config, None).await
}

/// [`start`], with the claim and proof counters of `relayminer run` added to `/metrics`.
pub async fn start_with(
    config: ServeConfig,
    lifecycle: Option<Arc<crate::lifecycle::LifecycleMetrics>>,
) -> Result<ServeHandle, ServeError> {
    let passphrase = std::env::var("LODE_KEY_PASSPHRASE")
        .ok()
        .or_else(|| config.key_passphrase.clone());
    let mut keys = HashMap::new();
    for f in &config.signing_key_files {
        let k = lode_chain_tx::keys::load_key(f, passphrase.as_deref())?;
        keys.insert(k.public_key().address().to_bech32("pokt"), Signer::new(k));
    }
    let retry = RetryPolicy {
        attempts: 3,
        first_backoff: Duration::from_millis(100),
        max_backoff: Duration::from_secs(1),
        timeout: Duration::from_secs(5),
    };
    let query = PocketQuery::new(ChainGrpc::new(&config.chain.grpc_url, retry)?);
    let rpc = CometRpc::new(&config.chain.rpc_url, retry);
    let sessions = Sessions::new(query);
    let height_task = sessions.track_height(rpc);
    let token =
        std::fs::read_to_string(&config.store.token_file).map_err(|source| ServeError::Token {
            path: config.store.token_file.display().to_string(),
            source,
        })?;
    let store = lode_store_api::connect_lazy(
        &config.store.url,
        token.trim(),
        Duration::from_secs(10),
        config::store_tls(&config.store).as_ref(),
    )
    .map_err(|e| ServeError::StoreUrl {
        url: config.store.url.clone(),
        reason: e.to_string(),
    })?;
    let (shipper, ship_task) = Shipper::start(
        store,
        ship::QueueLimits {
            relays: config.store.queue_capacity,
            bytes: config.store.queue_bytes,
        },
    );
    let metrics = Arc::new(Metrics::default());
    let config = Arc::new(config);
    let state = Arc::new(
        RelayState::new(
            config.clone(),
            keys,
            sessions.clone(),
            shipper,
            metrics.clone(),
        )
        .map_err(ServeError::Service)?,
    );

    // Services whose engine replicas are found at run time follow them from now on.
    let mut discovery = Vec::new();
    for svc in state.services.values() {
        if let Some(d) = &svc.config.discovery {
            let api = discover::KubeApi::for_discovery(d).map_err(ServeError::Service)?;
            discovery.push(tokio::spawn(discover::follow(
                api,
                state.clone(),
                svc.config.service_id.clone(),
            )));
        }
    }

    let (relay_listener, relay_addr) = lode_net::bind("relay", &config.listen).await?;
    let (admin_listener, admin_addr) = lode_net::bind("admin", &config.admin).await?;

    let s = state.clone();
    let limits = &state.config.limits;
    let budget = lode_net::server::BodyBudget::new(
        limits.in_flight_body_bytes,
        state.max_body(),
        limits.body_read_timeout(),
        failure::bare_refusal,
    );
    let relay_app = Router::new()
        .fallback(move |body: axum::body::Body| {
            let s = s.clone();
            async move { relay::handle(s, body).await }
        })
        .layer(axum::middleware::from_fn_with_state(
            budget,
            lode_net::server::BodyBudget::guard,
        ));
    let timeouts = lode_net::server::Timeouts {
        header_read: limits.header_read_timeout(),
        idle: limits.idle_timeout(),
        max_streams: MAX_STREAMS,
    };
    let engines_ok = Arc::new(AtomicBool::new(false));
    let admin = Admin {
        state: state.clone(),
        engines_ok: engines_ok.clone(),
        lifecycle,
        model_digest: state
            .config
            .model_digest_file
            .as_deref()
            .and_then(read_model_digest),
    };
    let admin_app = Router::new()
        .route("/metrics", get(metrics_page))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/demand", get(demand))
        .with_state(admin);

    let background = {
        let s = state.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(1));
            let mut n = 0u64;
            loop {
                tick.tick().await;
                s.metrics.sample();
                // Every 5 s, and every second while an engine is missing (a relay tier
                // waiting for its first engine turns ready as soon as it is found).
                if n.is_multiple_of(5) || !engines_ok.load(Ordering::Relaxed) {
                    let mut all = true;
                    for svc in s.services.values() {
                        all &= s.backend_reachable(svc).await;
                    }
                    engines_ok.store(all, Ordering::Relaxed);
                }
                n += 1;
            }
        })
    };

    let (stop_tx, stop_rx) = oneshot::channel::<()>();
    let max_connections = state.config.max_connections;
    let task_state = state.clone();
    let task = tokio::spawn(async move {
        let (admin_stop_tx, admin_stop_rx) = oneshot::channel::<()>();
        let admin_task = tokio::spawn(async move {
            let _ = axum::serve(admin_listener, admin_app)
                .with_graceful_shutdown(async {
                    let _ = admin_stop_rx.await;
                })
                .await;
        });
        // Capped connections, no Nagle (a stream's first batch leaves at once), timeouts
        // for slow and idle clients.
        let relay_listener = lode_net::CappedListener::new(relay_listener, max_connections);
        lode_net::server::serve(relay_listener, relay_app, timeouts, async {
            let _ = stop_rx.await;
        })
        .await;
        // Every connection is closed and every stream finished, so every mined relay
        // is with the shipper: wait until the store acknowledged them all.
        tracing::info!(
            queued = task_state.shipper.queued(),
            "relay port closed; flushing mined relays"
        );
        background.abort();
        height_task.abort();
        for d in &discovery {
            d.abort();
        }
        let deadline = tokio::time::Instant::now() + FLUSH_TIMEOUT;
        while task_state.shipper.queued() > 0 && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let left = task_state.shipper.queued();
        ship_task.abort();
        let _ = admin_stop_tx.send(());
        let _ = admin_task.await;
        if left > 0 {
            return Err(ServeError::Unflushed(left as u64));
        }
        Ok(())
    });
    Ok(ServeHandle {
        relay_addr,
        admin_addr,
        state,
        stop: Some(stop_tx),
        task,
    })
}

async fn metrics_page(State(a): State<Admin>) -> Response {
    let s = &a.state;
    let stats = &s.shipper.stats;
    let mut body = s.metrics.render(
        s.shipper.queued() as u64,
        stats.acknowledged.load(Ordering::Relaxed),
        stats.append_failures.load(Ordering::Relaxed),
        s.sessions.height(),
        s.ring_tables() as u64,
    );
    body.push_str(&format!(
        "# HELP lode_serve_store_queue_bytes Bytes of mined relays waiting for the store's acknowledgement.\n\
         # TYPE lode_serve_store_queue_bytes gauge\nlode_serve_store_queue_bytes {}\n",
        stats.queued_bytes.load(Ordering::Relaxed)
    ));
    if let Some(l) = &a.lifecycle {
        body.push_str(&l.render());
    }
    if let Some(d) = &a.model_digest {
        body.push_str(&format!(
            "# HELP lode_serve_model_info The weights the engine loads, by their BLAKE3 digest.
             # TYPE lode_serve_model_info gauge
lode_serve_model_info{{digest=\"{d}\"}} 1
"
        ));
    }
    (
        [(
            axum::http::header::CONTENT_TYPE,
            "text/plain; version=0.0.4",
        )],
        body,
    )
        .into_response()
}

/// Alive unless mined relays can no longer reach the store: the shipping task ended, or
/// the store has refused the same relays for [`ship::STALL_LIMIT`] (a restart starts the
/// shipper afresh). A store that is down is the readiness probe's business.
async fn healthz(State(a): State<Admin>) -> Response {
    match a.state.shipper.stats.stuck() {
        None => (StatusCode::OK, "ok").into_response(),
        Some(why) => (StatusCode::SERVICE_UNAVAILABLE, why).into_response(),
    }
}

/// Ready when the chain's blocks arrive, the store took the last append (or none was
/// needed yet) and every engine answers.
async fn readyz(State(a): State<Admin>) -> Response {
    let s = &a.state;
    let mut problems = Vec::new();
    match s.sessions.since_last_block() {
        None => problems.push("no block seen from the chain yet".to_string()),
        Some(d) if d > Duration::from_secs(120) => {
            problems.push(format!("no block for {}s", d.as_secs()))
        }
        Some(_) => {}
    }
    let stats = &s.shipper.stats;
    if s.shipper.queued() > 0
        && !stats.store_ok.load(Ordering::Relaxed)
        && stats.acknowledged.load(Ordering::Relaxed) + (s.shipper.queued() as u64) > 0
    {
        problems.push("the store is not acknowledging mined relays".into());
    }
    if !a.engines_ok.load(Ordering::Relaxed) {
        problems.push("an engine does not answer".into());
    }
    if problems.is_empty() {
        (StatusCode::OK, "ready").into_response()
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, problems.join("; ")).into_response()
    }
}

async fn demand(State(a): State<Admin>) -> Response {
    let s = &a.state;
    axum::Json(lode_contracts::demand::DemandReport {
        height: s.sessions.height(),
        services: s.metrics.demand(s.shipper.queued() as u64),
    })
    .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_weights_digest_shown_is_one_or_none() {
        let dir = tempfile::tempdir().expect("tempdir");
        let f = dir.path().join("digest");
        let d = format!("blake3:{}", "Ab".repeat(32));
        std::fs::write(&f, format!("{d}\n")).expect("write");
        assert_eq!(read_model_digest(&f), Some(d.to_ascii_lowercase()));
        // Missing, garbage, a refusal's message, or more than 256 bytes: nothing shown.
        assert_eq!(read_model_digest(&dir.path().join("missing")), None);
        for bad in [
            "sha256:00".to_string(),
            "the weights in /models have digest blake3:…".to_string(),
            format!("{}{d}", " ".repeat(300)),
            format!("blake3:{}\"}} 1\nevil 1", "a".repeat(64)),
        ] {
            std::fs::write(&f, bad.as_bytes()).expect("write");
            assert_eq!(read_model_digest(&f), None, "{bad:?}");
        }
    }
}

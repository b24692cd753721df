//! `relayminer run`: everything one host needs in one process — the session store
//! (RocksDB, on loopback), `serve`, and the block-driven claim/prove scheduler. For
//! suppliers without Kubernetes, and for the devnet.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use tokio::sync::oneshot;

use crate::lifecycle::schedule::Scheduler;
use crate::lifecycle::{Lifecycle, LifecycleConfig};
use crate::serve::{self, ServeHandle};

/// What `run` is started with (besides serve's configuration).
#[derive(Clone, Debug)]
pub struct RunOptions {
    /// serve's configuration file (lode's or poktroll's YAML; `store` may be left out).
    pub config: PathBuf,
    /// With a poktroll config: one key file per key name.
    pub keys_dir: Option<PathBuf>,
    /// The store's database and its token live here.
    pub data_dir: PathBuf,
    /// The store's gRPC and admin ports (loopback by default; port 0 picks one).
    pub store_listen: SocketAddr,
    pub store_admin: SocketAddr,
    pub store_durability: lode_store::Durability,
    /// Transaction and retry settings; endpoints, store and keys are filled in.
    pub lifecycle: LifecycleConfig,
}

impl RunOptions {
    /// The store on loopback with ports the OS picks, fsync off, default transaction
    /// settings: for tests and the local fleet.
    pub fn loopback(config: PathBuf, data_dir: PathBuf) -> Self {
        let any: SocketAddr = ([127, 0, 0, 1], 0).into();
        Self {
            config,
            keys_dir: None,
            data_dir,
            store_listen: any,
            store_admin: any,
            store_durability: lode_store::Durability::OsBuffered,
            lifecycle: LifecycleConfig::new("", "", "", ""),
        }
    }
}

/// Why `run` could not start, or did not stop cleanly.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error("{what} {path}: {source}")]
    Io {
        what: &'static str,
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Config(#[from] serve::config::ConfigError),
    #[error(transparent)]
    Key(#[from] lode_chain_tx::keys::KeyFileError),
    #[error(transparent)]
    Lifecycle(#[from] crate::lifecycle::PassError),
    #[error(transparent)]
    Serve(#[from] serve::ServeError),
    #[error("the store: {0}")]
    Store(String),
    #[error("the store task: {0}")]
    Task(#[from] tokio::task::JoinError),
}

fn io(what: &'static str, path: impl std::fmt::Display) -> impl FnOnce(std::io::Error) -> RunError {
    let path = path.to_string();
    move |source| RunError::Io { what, path, source }
}

/// A running `relayminer run`.
#[derive(Debug)]
pub struct RunHandle {
    pub serve: ServeHandle,
    pub lifecycle: Arc<Lifecycle>,
    pub store_addr: SocketAddr,
    pub store_token: String,
    scheduler: Scheduler,
    store_stop: oneshot::Sender<()>,
    store_task: tokio::task::JoinHandle<Result<(), String>>,
}

/// The store token: kept in the data directory, created (random) on first start.
fn token(dir: &Path) -> Result<(PathBuf, String), RunError> {
    let path = dir.join("store-token");
    if let Ok(t) = std::fs::read_to_string(&path)
        && !t.trim().is_empty()
    {
        return Ok((path, t.trim().to_string()));
    }
    let mut bytes = [0u8; 32];
    rand_core::RngCore::fill_bytes(&mut rand_core::OsRng, &mut bytes);
    let t = lode_kernels::hex::encode(&bytes);
    std::fs::write(&path, &t).map_err(io("writing", path.display()))?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))
            .map_err(io("restricting", path.display()))?;
    }
    Ok((path, t))
}

/// Starts the store, serve and the scheduler.
pub async fn start(opts: RunOptions) -> Result<RunHandle, RunError> {
    std::fs::create_dir_all(&opts.data_dir).map_err(io("creating", opts.data_dir.display()))?;
    let (token_file, token) = token(&opts.data_dir)?;
    let grpc = tokio::net::TcpListener::bind(opts.store_listen)
        .await
        .map_err(io("binding the store port", opts.store_listen))?;
    let admin = tokio::net::TcpListener::bind(opts.store_admin)
        .await
        .map_err(io("binding the store admin port", opts.store_admin))?;
    let store_addr = grpc
        .local_addr()
        .map_err(io("binding the store port", opts.store_listen))?;
    let url = format!("http://{store_addr}");
    let config =
        serve::config::load_for_run(&opts.config, opts.keys_dir.as_deref(), &url, &token_file)?;

    let (store_stop, stop_rx) = oneshot::channel::<()>();
    let store_config = lode_store::ServerConfig {
        data_dir: opts.data_dir.join("store"),
        token: token.clone(),
        durability: opts.store_durability,
        cache_bytes: 64 << 20,
        suppliers: Vec::new(),
        // One machine, loopback only.
        tls: None,
    };
    let store_task = tokio::spawn(async move {
        lode_store::run(store_config, grpc, admin, async {
            let _ = stop_rx.await;
        })
        .await
        .map_err(|e| e.to_string())
    });

    let passphrase = std::env::var("LODE_KEY_PASSPHRASE")
        .ok()
        .or_else(|| config.key_passphrase.clone());
    let mut keys = Vec::new();
    for f in &config.signing_key_files {
        keys.push(lode_chain_tx::keys::load_key(f, passphrase.as_deref())?);
    }
    let lifecycle = Arc::new(Lifecycle::new(LifecycleConfig {
        grpc_url: config.chain.grpc_url.clone(),
        rpc_url: config.chain.rpc_url.clone(),
        store_url: url,
        store_token: token.clone(),
        keys,
        ..opts.lifecycle
    })?);
    let serve = serve::start_with(config, Some(lifecycle.metrics().clone())).await?;
    let scheduler = Scheduler::start(lifecycle.clone());
    Ok(RunHandle {
        serve,
        lifecycle,
        store_addr,
        store_token: token,
        scheduler,
        store_stop,
        store_task,
    })
}

impl RunHandle {
    /// The last block height the scheduler saw.
    pub fn height(&self) -> i64 {
        self.scheduler.height()
    }

    /// Stops serve (finishing relays and flushing mined ones to the store), then the
    /// scheduler (a pass cut short is redone by the next start: passes are idempotent),
    /// then the store.
    pub async fn shutdown(self) -> Result<(), RunError> {
        let served = self.serve.shutdown().await;
        drop(self.scheduler);
        let _ = self.store_stop.send(());
        let stored = self.store_task.await?;
        served?;
        stored.map_err(RunError::Store)
    }
}

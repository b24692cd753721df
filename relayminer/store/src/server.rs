//! Running the store: the gRPC port (token-checked) and the admin port.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;

use lode_store_api::{CONNECTION_WINDOW, STREAM_WINDOW, SessionStoreServer};
use prometheus_client::registry::Registry;
use tokio::net::TcpListener;
use tonic::service::interceptor::InterceptedService;

use crate::admin::{Admin, router};
use crate::backend::Durability;
use crate::engine::Store;
use crate::metrics::Metrics;
use crate::rocks::RocksBackend;
use crate::service::{StoreService, TokenCheck};

/// Everything `relayminer store` is configured with.
#[derive(Clone, Debug)]
pub struct ServerConfig {
    pub data_dir: PathBuf,
    pub token: String,
    pub durability: Durability,
    pub cache_bytes: usize,
    /// Supplier operator addresses served; empty means any.
    pub suppliers: Vec<String>,
    /// gRPC over TLS with this certificate chain and key (PEM files).
    pub tls: Option<(PathBuf, PathBuf)>,
}

/// Opens the database and serves gRPC on `grpc` (token-checked) and the admin endpoints
/// on `admin` until `shutdown` resolves.
pub async fn run(
    config: ServerConfig,
    grpc: TcpListener,
    admin: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    // TLS material first: a bad file stops the start before the database opens.
    let tls = match &config.tls {
        Some((cert, key)) => Some(lode_net::tls::server_config(cert, key, &[b"h2"])?),
        None => None,
    };
    let backend = RocksBackend::open(&config.data_dir, config.durability, config.cache_bytes)?;
    let metrics = Arc::new(Metrics::default());
    let mut registry = Registry::default();
    metrics.register(&mut registry);
    let store = Arc::new(Store::open(backend, metrics)?);
    let ready = Arc::new(AtomicBool::new(true));
    let admin_state = Arc::new(Admin {
        registry,
        store: store.clone(),
        ready,
    });
    let grpc_addr: SocketAddr = grpc.local_addr()?;
    tracing::info!(%grpc_addr, admin_addr = %admin.local_addr()?, data_dir = %config.data_dir.display(), tls = tls.is_some(), "store serving");

    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let mut failure = store.storage_failure();
    let failed_with = Arc::new(std::sync::Mutex::new(None));
    let failed = failed_with.clone();
    tokio::spawn(async move {
        let first_failure = async move {
            let e = failure
                .wait_for(Option::is_some)
                .await
                .ok()
                .and_then(|f| f.clone());
            // A moment for the refusals of the failed group to reach their callers (who
            // keep the relays and retry), then stop: reopening is how RocksDB recovers.
            tokio::time::sleep(std::time::Duration::from_millis(500)).await;
            e
        };
        tokio::select! {
            _ = shutdown => {}
            e = first_failure => *failed.lock().unwrap_or_else(|p| p.into_inner()) = e,
        }
        let _ = stop_tx.send(true);
    });
    let mut admin_stop = stop_rx.clone();
    let admin_task = tokio::spawn(async move {
        axum::serve(admin, router(admin_state))
            .with_graceful_shutdown(async move {
                let _ = admin_stop.wait_for(|s| *s).await;
            })
            .await
    });
    let service = SessionStoreServer::new(StoreService::new(store, config.suppliers))
        .max_decoding_message_size(lode_store_api::MAX_MESSAGE_BYTES);
    let service = InterceptedService::new(service, TokenCheck::new(&config.token));
    let mut grpc_stop = stop_rx;
    // Batches are tens of kilobytes and many are in flight from every serve pod: windows
    // sized for that keep HTTP/2 flow control from throttling ingest.
    let router = tonic::transport::Server::builder()
        .initial_stream_window_size(Some(STREAM_WINDOW))
        .initial_connection_window_size(Some(CONNECTION_WINDOW))
        .add_service(service);
    let stopped = async move {
        let _ = grpc_stop.wait_for(|s| *s).await;
    };
    match tls {
        Some(tls) => {
            let accepted = lode_net::tls::accept_tls(grpc, tls, HANDSHAKE_TIMEOUT);
            let incoming = tokio_stream::StreamExt::map(
                tokio_stream::wrappers::ReceiverStream::new(accepted),
                |io| Ok::<_, std::io::Error>(TlsIo(io)),
            );
            router
                .serve_with_incoming_shutdown(incoming, stopped)
                .await?;
        }
        // (`tcp_nodelay` on the builder only applies to addresses it binds itself.)
        None => {
            router
                .serve_with_incoming_shutdown(
                    tonic::transport::server::TcpIncoming::from(grpc).with_nodelay(Some(true)),
                    stopped,
                )
                .await?
        }
    }
    admin_task.await??;
    if let Some(e) = failed_with.lock().unwrap_or_else(|p| p.into_inner()).take() {
        return Err(format!(
            "storage write failed ({e}); exiting so that the database is reopened when the store restarts (a full volume: expand it)"
        )
        .into());
    }
    Ok(())
}

/// Longest TLS handshake a client gets.
const HANDSHAKE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// A TLS connection to the gRPC port, as tonic serves it.
struct TlsIo(tokio_rustls::server::TlsStream<tokio::net::TcpStream>);

impl tonic::transport::server::Connected for TlsIo {
    type ConnectInfo = Option<SocketAddr>;
    fn connect_info(&self) -> Self::ConnectInfo {
        self.0.get_ref().0.peer_addr().ok()
    }
}

impl tokio::io::AsyncRead for TlsIo {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.0).poll_read(cx, buf)
    }
}

impl tokio::io::AsyncWrite for TlsIo {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        std::pin::Pin::new(&mut self.0).poll_write(cx, buf)
    }
    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.0).poll_flush(cx)
    }
    fn poll_shutdown(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.0).poll_shutdown(cx)
    }
}

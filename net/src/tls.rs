//! TLS for lode's outbound connections: chain gRPC, CometBFT RPC and its websocket, and
//! the gateway's relays to `https://` suppliers.
//!
//! rustls with the `ring` provider. The trusted roots are the system's, read once per
//! process; `SSL_CERT_FILE` (a PEM bundle) or `SSL_CERT_DIR` replace them, the usual
//! way to trust a private CA. Plain `http://` and `ws://` URLs need no roots at all, so
//! a machine without any still runs a plaintext fleet; an `https://` connection then
//! fails its handshake with the certificate error, and a warning at start says why.

use std::pin::Pin;
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll};

use hyper_util::client::legacy::connect::HttpConnector;
use rustls::pki_types::ServerName;
use rustls::{ClientConfig, RootCertStore};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

/// A connector for `http://` and `https://` URLs.
pub type HttpsConnector = hyper_rustls::HttpsConnector<HttpConnector>;

/// The roots `https://` connections trust, loaded on first use.
fn roots() -> Arc<RootCertStore> {
    static ROOTS: OnceLock<Arc<RootCertStore>> = OnceLock::new();
    ROOTS
        .get_or_init(|| {
            let found = rustls_native_certs::load_native_certs();
            let mut store = RootCertStore::empty();
            let (added, ignored) = store.add_parsable_certificates(found.certs);
            for e in &found.errors {
                tracing::warn!(error = %e, "reading trusted TLS roots");
            }
            if added == 0 {
                tracing::warn!(
                    ignored,
                    "no trusted TLS roots (install ca-certificates, or set SSL_CERT_FILE to a PEM bundle): https:// endpoints will fail"
                );
            }
            Arc::new(store)
        })
        .clone()
}

/// A client configuration trusting the process's roots, offering `alpn`.
pub fn client_config(alpn: &[&[u8]]) -> ClientConfig {
    let mut c =
        ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()
            .expect("ring supports TLS 1.2 and 1.3")
            .with_root_certificates(roots())
            .with_no_client_auth();
    c.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    c
}

fn http(connect_timeout: std::time::Duration) -> HttpConnector {
    let mut h = HttpConnector::new();
    h.enforce_http(false);
    h.set_nodelay(true);
    h.set_connect_timeout(Some(connect_timeout));
    h
}

/// HTTP/1.1 and HTTP/2 (by ALPN) over `http://` or `https://`.
pub fn https_connector(connect_timeout: std::time::Duration) -> HttpsConnector {
    hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(client_config(&[]))
        .https_or_http()
        .enable_http1()
        .enable_http2()
        .wrap_connector(http(connect_timeout))
}

/// HTTP/2 only (gRPC), over `http://` (prior knowledge) or `https://` (ALPN `h2`).
pub fn h2_connector(connect_timeout: std::time::Duration) -> HttpsConnector {
    hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(client_config(&[]))
        .https_or_http()
        .enable_http2()
        .wrap_connector(http(connect_timeout))
}

/// HTTP/1.1 over `http://` or `https://`, trusting only the certificates in `ca_pem`
/// (a PEM bundle): the Kubernetes API server seen from a pod, whose CA is the service
/// account's `ca.crt`, not a public root.
pub fn https_connector_trusting(
    ca_pem: &[u8],
    connect_timeout: std::time::Duration,
) -> Result<HttpsConnector, String> {
    use rustls::pki_types::CertificateDer;
    use rustls::pki_types::pem::PemObject;
    let mut roots = RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(ca_pem) {
        let cert = cert.map_err(|e| format!("reading the CA bundle: {e}"))?;
        roots
            .add(cert)
            .map_err(|e| format!("a CA certificate is unusable: {e}"))?;
    }
    if roots.is_empty() {
        return Err("the CA bundle holds no certificate".into());
    }
    let mut c =
        ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()
            .expect("ring supports TLS 1.2 and 1.3")
            .with_root_certificates(roots)
            .with_no_client_auth();
    c.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(c)
        .https_or_http()
        .enable_http1()
        .wrap_connector(http(connect_timeout)))
}

/// A byte stream to `host:port`, through TLS when `tls` (for a websocket handshake).
#[derive(Debug)]
pub enum MaybeTls {
    Plain(TcpStream),
    Tls(Box<tokio_rustls::client::TlsStream<TcpStream>>),
}

/// Connects to `host:port`; with `tls`, checks the server's certificate for `host`.
pub async fn connect(host: &str, port: u16, tls: bool) -> std::io::Result<MaybeTls> {
    let tcp =
        TcpStream::connect((host.trim_start_matches('[').trim_end_matches(']'), port)).await?;
    tcp.set_nodelay(true)?;
    if !tls {
        return Ok(MaybeTls::Plain(tcp));
    }
    let name = ServerName::try_from(
        host.trim_start_matches('[')
            .trim_end_matches(']')
            .to_string(),
    )
    .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))?;
    let connector = tokio_rustls::TlsConnector::from(Arc::new(client_config(&[b"http/1.1"])));
    Ok(MaybeTls::Tls(Box::new(connector.connect(name, tcp).await?)))
}

impl AsyncRead for MaybeTls {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            Self::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Self::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for MaybeTls {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        match self.get_mut() {
            Self::Plain(s) => Pin::new(s).poll_write(cx, buf),
            Self::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            Self::Plain(s) => Pin::new(s).poll_flush(cx),
            Self::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            Self::Plain(s) => Pin::new(s).poll_shutdown(cx),
            Self::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}

/// Why TLS material could not be used.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("{path}: {reason}")]
    File { path: String, reason: String },
    #[error("TLS: {0}")]
    Rustls(#[from] rustls::Error),
    #[error("{0:?} is not a valid TLS server name")]
    ServerName(String),
}

fn file_error(path: &std::path::Path, reason: impl std::fmt::Display) -> TlsError {
    TlsError::File {
        path: path.display().to_string(),
        reason: reason.to_string(),
    }
}

/// The certificates of a PEM file (a CA bundle or a certificate chain).
fn certificates(
    path: &std::path::Path,
) -> Result<Vec<rustls::pki_types::CertificateDer<'static>>, TlsError> {
    use rustls::pki_types::pem::PemObject;
    let certs = rustls::pki_types::CertificateDer::pem_file_iter(path)
        .map_err(|e| file_error(path, e))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| file_error(path, e))?;
    if certs.is_empty() {
        return Err(file_error(path, "no PEM certificate in it"));
    }
    Ok(certs)
}

/// HTTP/2 (gRPC) to a server whose certificate a private CA signed: `ca_file` (PEM) is
/// the only root trusted, and the certificate must name `server_name` whatever host the
/// URL has (a cluster may reach the server by several names or by address).
pub fn h2_connector_private(
    ca_file: &std::path::Path,
    server_name: &str,
    connect_timeout: std::time::Duration,
) -> Result<HttpsConnector, TlsError> {
    let mut roots = RootCertStore::empty();
    for c in certificates(ca_file)? {
        roots.add(c).map_err(|e| file_error(ca_file, e))?;
    }
    let config =
        ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()?
            .with_root_certificates(roots)
            .with_no_client_auth();
    let name = ServerName::try_from(server_name.to_string())
        .map_err(|_| TlsError::ServerName(server_name.to_string()))?;
    Ok(hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(config)
        .https_or_http()
        .with_server_name_resolver(hyper_rustls::FixedServerNameResolver::new(name))
        .enable_http2()
        .wrap_connector(http(connect_timeout)))
}

/// A server configuration from a PEM certificate chain and its PEM private key,
/// offering `alpn`.
pub fn server_config(
    cert_file: &std::path::Path,
    key_file: &std::path::Path,
    alpn: &[&[u8]],
) -> Result<Arc<rustls::ServerConfig>, TlsError> {
    use rustls::pki_types::pem::PemObject;
    let chain = certificates(cert_file)?;
    let key = rustls::pki_types::PrivateKeyDer::from_pem_file(key_file)
        .map_err(|e| file_error(key_file, e))?;
    let mut c = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()?
    .with_no_client_auth()
    .with_single_cert(chain, key)?;
    c.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Ok(Arc::new(c))
}

/// Accepts connections on `listener` and completes their TLS handshakes, each in its
/// own task within `handshake_timeout` (a client that stalls its handshake holds only
/// its own task); the connections that made it, in order of completion. Failed
/// handshakes are logged at debug and dropped.
pub fn accept_tls(
    listener: tokio::net::TcpListener,
    config: Arc<rustls::ServerConfig>,
    handshake_timeout: std::time::Duration,
) -> tokio::sync::mpsc::Receiver<tokio_rustls::server::TlsStream<TcpStream>> {
    let (tx, rx) = tokio::sync::mpsc::channel(128);
    let acceptor = tokio_rustls::TlsAcceptor::from(config);
    tokio::spawn(async move {
        loop {
            let tcp = tokio::select! {
                _ = tx.closed() => return,
                accepted = listener.accept() => match accepted {
                    Ok((tcp, _)) => tcp,
                    Err(e) => {
                        tracing::warn!(error = %e, "accepting a connection");
                        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                        continue;
                    }
                },
            };
            let _ = tcp.set_nodelay(true);
            let (acceptor, tx) = (acceptor.clone(), tx.clone());
            tokio::spawn(async move {
                match tokio::time::timeout(handshake_timeout, acceptor.accept(tcp)).await {
                    Ok(Ok(tls)) => {
                        let _ = tx.send(tls).await;
                    }
                    Ok(Err(e)) => tracing::debug!(error = %e, "TLS handshake failed"),
                    Err(_) => tracing::debug!("TLS handshake timed out"),
                }
            });
        }
    });
    rx
}

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

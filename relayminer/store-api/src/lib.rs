//! The session store's gRPC protocol (`proto/store.proto`): messages, the client, and the
//! server trait. Serve pods and jobs depend on this crate only; RocksDB stays in
//! `lode-store`.

#[allow(clippy::all, missing_debug_implementations, unused_qualifications)]
mod generated {
    tonic::include_proto!("lode.store.v1");
}

pub use generated::session_store_client::SessionStoreClient;
pub use generated::session_store_server::{SessionStore, SessionStoreServer};
pub use generated::*;
/// The session header of store messages: the kernels' (poktroll's `SessionHeader`).
pub use lode_kernels::proto::SessionHeader;

/// The largest relay (request and response, serialized) the store accepts.
pub const MAX_RELAY_BYTES: usize = 32 << 20;
/// The largest gRPC message either end of the store protocol accepts.
pub const MAX_MESSAGE_BYTES: usize = 64 << 20;

/// The metadata key carrying the caller's token: `authorization: Bearer <token>`.
pub const AUTH_HEADER: &str = "authorization";

/// Adds the bearer token to every request of a client.
#[derive(Clone, Debug)]
pub struct BearerToken(pub tonic::metadata::MetadataValue<tonic::metadata::Ascii>);

impl BearerToken {
    /// Refuses tokens that cannot travel in a header.
    pub fn new(token: &str) -> Result<Self, tonic::metadata::errors::InvalidMetadataValue> {
        Ok(Self(format!("Bearer {token}").parse()?))
    }
}

impl tonic::service::Interceptor for BearerToken {
    fn call(&mut self, mut req: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
        req.metadata_mut().insert(AUTH_HEADER, self.0.clone());
        Ok(req)
    }
}

/// HTTP/2 flow-control windows of store connections. Append batches are tens of
/// kilobytes with many in flight; the protocol defaults (64 KiB) throttle ingest to a
/// fraction of what the store sustains, so both ends use these.
pub const STREAM_WINDOW: u32 = 4 << 20;
pub const CONNECTION_WINDOW: u32 = 32 << 20;

/// A store client that sends `token` with every call.
pub type Client = SessionStoreClient<
    tonic::service::interceptor::InterceptedService<tonic::transport::Channel, BearerToken>,
>;

fn endpoint(url: &str) -> Result<tonic::transport::Endpoint, tonic::transport::Error> {
    Ok(tonic::transport::Endpoint::from_shared(url.to_string())?
        .initial_stream_window_size(STREAM_WINDOW)
        .initial_connection_window_size(CONNECTION_WINDOW)
        .tcp_nodelay(true))
}

fn client(
    channel: tonic::transport::Channel,
    token: &str,
) -> Result<Client, Box<dyn std::error::Error + Send + Sync>> {
    Ok(
        SessionStoreClient::with_interceptor(channel, BearerToken::new(token)?)
            .max_decoding_message_size(MAX_MESSAGE_BYTES),
    )
}

/// How a client checks a store that speaks TLS: the CA that signed its certificate
/// (PEM) and the name the certificate must carry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StoreTls {
    pub ca_file: std::path::PathBuf,
    pub server_name: String,
}

/// The connector `tls` calls for: a private CA (then the URL must be `https://`), or
/// plain `http://` and `https://` with the system's roots.
fn connector(
    url: &str,
    tls: Option<&StoreTls>,
    timeout: std::time::Duration,
) -> Result<lode_net::tls::HttpsConnector, Box<dyn std::error::Error + Send + Sync>> {
    Ok(match tls {
        Some(_) if !url.starts_with("https://") => {
            return Err(
                format!("store {url}: with a CA file the store's URL must be https://").into(),
            );
        }
        Some(t) => lode_net::tls::h2_connector_private(&t.ca_file, &t.server_name, timeout)?,
        None => lode_net::tls::h2_connector(timeout),
    })
}

/// Connects to a store at `url` (e.g. `http://store:7070`) with the windows above.
pub async fn connect(
    url: &str,
    token: &str,
) -> Result<Client, Box<dyn std::error::Error + Send + Sync>> {
    connect_with(url, token, None).await
}

/// [`connect`] to a store that speaks TLS (`tls`: its CA and name).
pub async fn connect_with(
    url: &str,
    token: &str,
    tls: Option<&StoreTls>,
) -> Result<Client, Box<dyn std::error::Error + Send + Sync>> {
    let timeout = std::time::Duration::from_secs(10);
    let channel = endpoint(url)?
        .connect_timeout(timeout)
        .connect_with_connector(connector(url, tls, timeout)?)
        .await?;
    client(channel, token)
}

/// A client that connects on first use (and reconnects after the store restarts): for
/// callers that must start while the store is down. Every call times out after
/// `timeout`.
pub fn connect_lazy(
    url: &str,
    token: &str,
    timeout: std::time::Duration,
    tls: Option<&StoreTls>,
) -> Result<Client, Box<dyn std::error::Error + Send + Sync>> {
    let channel = endpoint(url)?
        .connect_timeout(timeout)
        .timeout(timeout)
        .connect_with_connector_lazy(connector(url, tls, timeout)?);
    client(channel, token)
}

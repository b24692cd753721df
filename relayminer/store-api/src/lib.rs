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

//! The applications' current sessions: which suppliers serve them, where, with which
//! keys, and the ring relays are signed for. Refreshed when the chain passes a session's
//! end.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicI64, Ordering};

use lode_chain::pocket::{KeyError, PocketQuery};
use lode_chain::{CometRpc, QueryError};
use lode_kernels::crypto::ring::{Presigned, RingSigner};
use lode_kernels::crypto::{PublicKey, SecretKey};
use lode_kernels::proto::SessionHeader;

/// A supplier of a session, as the gateway reaches it.
#[derive(Clone, Debug)]
pub struct SessionSupplier {
    pub address: String,
    /// The endpoint it staked for the service.
    pub url: String,
    /// Its operator key: every response (and stream batch) must be signed by it.
    pub key: PublicKey,
}

/// One application's session for one service.
#[derive(Clone, Debug)]
pub struct Session {
    pub header: SessionHeader,
    pub suppliers: Vec<SessionSupplier>,
    /// The gateway key's signer for the application's ring (members' points and the
    /// key image computed once per session).
    pub signer: RingSigner,
    /// Presigned halves of this signer's next signatures.
    pub presigned: Arc<PresignPool>,
}

impl Session {
    pub fn new(header: SessionHeader, suppliers: Vec<SessionSupplier>, signer: RingSigner) -> Self {
        Self {
            header,
            suppliers,
            signer,
            presigned: Arc::default(),
        }
    }
}

/// Message-independent halves of ring signatures, made off the request path: a request
/// takes one and completes it (two scalar multiplications instead of six for a ring of
/// two), and the pool refills itself on a blocking thread. Each half is taken once (a
/// nonce is never reused).
#[derive(Debug, Default)]
pub struct PresignPool {
    ready: Mutex<Vec<Presigned>>,
    refilling: std::sync::atomic::AtomicBool,
}

impl PresignPool {
    /// Halves kept ready.
    pub const TARGET: usize = 64;

    /// A half for `signer`: from the pool, or made now when the pool is empty.
    pub fn take(self: &Arc<Self>, signer: &RingSigner) -> Presigned {
        let (half, left) = {
            let mut ready = self.ready.lock().expect("presign lock");
            (ready.pop(), ready.len())
        };
        // Top up after every take: the work stays one half per request, spread out,
        // instead of bursts that would compete with requests for the cores.
        if left < Self::TARGET {
            self.refill(signer);
        }
        half.unwrap_or_else(|| signer.presign(&mut rand_core::OsRng))
    }

    /// Halves ready now.
    pub fn ready(&self) -> usize {
        self.ready.lock().expect("presign lock").len()
    }

    /// Tops the pool up to `TARGET` on a blocking thread (once at a time; nothing
    /// without a Tokio runtime).
    pub fn refill(self: &Arc<Self>, signer: &RingSigner) {
        let Ok(rt) = tokio::runtime::Handle::try_current() else {
            return;
        };
        if self.refilling.swap(true, Ordering::AcqRel) {
            return;
        }
        let (pool, signer) = (self.clone(), signer.clone());
        rt.spawn_blocking(move || {
            loop {
                let have = pool.ready();
                if have >= Self::TARGET {
                    break;
                }
                // One at a time, so a request never waits behind a batch.
                let half = signer.presign(&mut rand_core::OsRng);
                pool.ready.lock().expect("presign lock").push(half);
            }
            pool.refilling.store(false, Ordering::Release);
        });
    }
}

/// Why no session could be used.
#[derive(Debug, thiserror::Error)]
pub enum SessionError {
    #[error("the chain is unreachable or refused the session query: {0}")]
    Query(#[from] QueryError),
    #[error("application ring: {0}")]
    Ring(String),
    #[error("no supplier in the session serves {0}")]
    NoSuppliers(String),
    #[error("no block seen from the chain yet")]
    NoHeight,
}

impl From<KeyError> for SessionError {
    fn from(e: KeyError) -> Self {
        match e {
            KeyError::Query(q) => Self::Query(q),
            other => Self::Ring(other.to_string()),
        }
    }
}

/// Current sessions by (application, service), and the chain height.
#[derive(Debug)]
pub struct Sessions {
    query: PocketQuery,
    key: SecretKey,
    height: AtomicI64,
    cache: Mutex<HashMap<(String, String), Arc<Session>>>,
}

impl Sessions {
    /// `key` signs relays: the gateway's, or an application's own.
    pub fn new(query: PocketQuery, key: SecretKey) -> Arc<Self> {
        Arc::new(Self {
            query,
            key,
            height: AtomicI64::new(0),
            cache: Mutex::default(),
        })
    }

    pub fn height(&self) -> i64 {
        self.height.load(Ordering::Acquire)
    }

    /// Follows the chain's blocks (retrying while the node is down).
    pub fn track(self: &Arc<Self>, rpc: CometRpc) -> tokio::task::JoinHandle<()> {
        let this = self.clone();
        tokio::spawn(async move {
            let start = loop {
                match rpc.status().await {
                    Ok(s) => break s.latest_height.max(1),
                    Err(e) => {
                        tracing::warn!(error = %e, "chain node unreachable; retrying");
                        tokio::time::sleep(std::time::Duration::from_secs(1)).await;
                    }
                }
            };
            this.height.fetch_max(start, Ordering::AcqRel);
            let mut blocks = rpc.follow(start, 16);
            while let Some(b) = blocks.recv().await {
                if let Ok(b) = b {
                    this.height.fetch_max(b.height, Ordering::AcqRel);
                }
            }
        })
    }

    /// The application's session for the service at the current height.
    pub async fn get(&self, app: &str, service: &str) -> Result<Arc<Session>, SessionError> {
        let height = self.height();
        if height == 0 {
            return Err(SessionError::NoHeight);
        }
        let key = (app.to_string(), service.to_string());
        if let Some(s) = self.cache.lock().expect("sessions lock").get(&key)
            && s.header.session_start_block_height <= height
            && height <= s.header.session_end_block_height
        {
            return Ok(s.clone());
        }
        let wire = self.query.session(app, service, height).await?;
        let header = wire.header.clone().expect("checked by the query");
        let mut suppliers = Vec::new();
        for s in &wire.suppliers {
            let url = s
                .services
                .iter()
                .filter(|c| c.service_id == service)
                .flat_map(|c| c.endpoints.iter())
                .map(|e| e.url.clone())
                .next();
            let Some(url) = url else { continue };
            let key = match self.query.public_key(&s.operator_address).await {
                Ok(k) => k,
                Err(e) => {
                    tracing::warn!(supplier = %s.operator_address, error = %e, "supplier skipped");
                    continue;
                }
            };
            suppliers.push(SessionSupplier {
                address: s.operator_address.clone(),
                url,
                key,
            });
        }
        if suppliers.is_empty() {
            return Err(SessionError::NoSuppliers(service.to_string()));
        }
        let app_state = wire.application.clone().unwrap_or_default();
        let ring = self
            .query
            .ring_keys(&app_state, header.session_end_block_height)
            .await?;
        let signer = RingSigner::new(&ring, &self.key).map_err(|e| {
            SessionError::Ring(format!(
                "the signing key is not in application {app}'s ring (has it delegated to this gateway?): {e}"
            ))
        })?;
        let session = Arc::new(Session::new(header, suppliers, signer));
        session.presigned.refill(&session.signer);
        self.cache
            .lock()
            .expect("sessions lock")
            .insert(key, session.clone());
        Ok(session)
    }
}

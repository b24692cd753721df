//! Shipping mined relays to the store: a bounded queue (a slot is reserved *before* a
//! relay is served, so a full queue refuses new relays instead of dropping mined ones),
//! batched appends per session, retries with backoff until the store acknowledges.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use lode_kernels::proto::SessionHeader;
use lode_kernels::relay::MinedRelay;
use lode_store_api::Client;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc, oneshot};

/// Relays per append, at most.
const BATCH_RELAYS: usize = 512;
/// How long a batch waits for more relays.
const BATCH_WAIT: Duration = Duration::from_millis(2);

/// A mined relay on its way to the store, holding its queue slot.
#[derive(Debug)]
pub struct Shipment {
    pub supplier: String,
    pub header: SessionHeader,
    pub relay: MinedRelay,
    /// Told when the store acknowledged the relay (the `hold` policy waits for it);
    /// dropped unsent when the store refused it.
    pub ack: Option<oneshot::Sender<()>>,
    pub slot: OwnedSemaphorePermit,
}

/// Counters the admin port reports.
#[derive(Debug, Default)]
pub struct ShipStats {
    pub acknowledged: AtomicU64,
    pub duplicates: AtomicU64,
    pub append_failures: AtomicU64,
    /// Whether the last append succeeded (for `/readyz`).
    pub store_ok: AtomicBool,
}

/// The shipper: cheap to clone.
#[derive(Clone, Debug)]
pub struct Shipper {
    slots: Arc<Semaphore>,
    capacity: usize,
    tx: mpsc::UnboundedSender<Shipment>,
    pub stats: Arc<ShipStats>,
}

impl Shipper {
    /// Starts the shipping task; it ends after every queued relay was acknowledged once
    /// all `Shipper` clones are dropped.
    pub fn start(client: Client, capacity: usize) -> (Self, tokio::task::JoinHandle<()>) {
        let (tx, rx) = mpsc::unbounded_channel();
        let stats = Arc::new(ShipStats::default());
        let task = tokio::spawn(run(client, rx, stats.clone()));
        (
            Self {
                slots: Arc::new(Semaphore::new(capacity)),
                capacity,
                tx,
                stats,
            },
            task,
        )
    }

    /// Reserves a queue slot, or `None` when the queue is full.
    pub fn reserve(&self) -> Option<OwnedSemaphorePermit> {
        self.slots.clone().try_acquire_owned().ok()
    }

    /// Relays waiting for the store's acknowledgement (including reserved slots).
    pub fn queued(&self) -> usize {
        self.capacity - self.slots.available_permits()
    }

    pub fn send(&self, s: Shipment) {
        // The receiver lives until every sender is gone, so this cannot fail while
        // `self` exists.
        let _ = self.tx.send(s);
    }
}

async fn run(client: Client, mut rx: mpsc::UnboundedReceiver<Shipment>, stats: Arc<ShipStats>) {
    while let Some(first) = rx.recv().await {
        let mut batch = vec![first];
        let deadline = tokio::time::Instant::now() + BATCH_WAIT;
        while batch.len() < BATCH_RELAYS {
            match tokio::time::timeout_at(deadline, rx.recv()).await {
                Ok(Some(s)) => batch.push(s),
                _ => break,
            }
        }
        // One append per (supplier, session).
        let mut groups: BTreeMap<(String, String), Vec<Shipment>> = BTreeMap::new();
        for s in batch {
            groups
                .entry((s.supplier.clone(), s.header.session_id.clone()))
                .or_default()
                .push(s);
        }
        for (_, group) in groups {
            append(&client, group, &stats).await;
        }
    }
}

/// Appends one session's relays, retrying until the store acknowledges them.
async fn append(client: &Client, group: Vec<Shipment>, stats: &ShipStats) {
    let h = &group[0].header;
    let req = lode_store_api::AppendRelaysRequest {
        supplier_operator_address: group[0].supplier.clone(),
        session_header: Some(h.clone()),
        relays: group
            .iter()
            .map(|s| lode_store_api::MinedRelay {
                relay_hash: s.relay.hash.to_vec(),
                relay_bytes: s.relay.bytes.clone(),
                compute_units: s.relay.compute_units,
            })
            .collect(),
    };
    let mut backoff = Duration::from_millis(50);
    let acknowledged = loop {
        match client.clone().append_relays(req.clone()).await {
            Ok(r) => {
                let r = r.into_inner();
                stats.acknowledged.fetch_add(r.accepted, Ordering::Relaxed);
                stats.duplicates.fetch_add(r.duplicates, Ordering::Relaxed);
                stats.store_ok.store(true, Ordering::Relaxed);
                break true;
            }
            // A refusal that retrying cannot fix (the session is frozen, the supplier is
            // not this store's): logged loudly, counted, and released.
            Err(s)
                if matches!(
                    s.code(),
                    tonic::Code::FailedPrecondition
                        | tonic::Code::InvalidArgument
                        | tonic::Code::PermissionDenied
                ) =>
            {
                tracing::error!(status = %s, relays = group.len(), session = %h.session_id, "store refused mined relays");
                stats
                    .append_failures
                    .fetch_add(group.len() as u64, Ordering::Relaxed);
                break false;
            }
            Err(s) => {
                stats.store_ok.store(false, Ordering::Relaxed);
                tracing::warn!(status = %s, relays = group.len(), "store append failed; retrying");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(2));
            }
        }
    };
    for s in group {
        if let Some(ack) = s.ack
            && acknowledged
        {
            let _ = ack.send(());
        }
        drop(s.slot);
    }
}

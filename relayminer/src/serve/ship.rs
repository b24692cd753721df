//! Shipping mined relays to the store: a queue bounded in relays and in bytes (a slot is
//! reserved *before* a relay is served, so a full queue refuses new relays instead of
//! dropping mined ones), appends per session batched by count and by bytes, retries with
//! backoff until the store acknowledges, and refusals the store means for good released
//! one relay at a time, so that one bad relay never holds the others.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use lode_kernels::proto::SessionHeader;
use lode_kernels::relay::MinedRelay;
use lode_store_api::Client;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc, oneshot};

/// Relays per append, at most.
const BATCH_RELAYS: usize = 512;
/// Relay bytes per append: a batch closes once it holds this many. With one relay at
/// most [`lode_store_api::MAX_RELAY_BYTES`], an append stays well inside the store's
/// message limit ([`lode_store_api::MAX_MESSAGE_BYTES`]).
const BATCH_BYTES: usize = 16 << 20;
/// How long a batch waits for more relays.
const BATCH_WAIT: Duration = Duration::from_millis(2);
/// A batch the store keeps answering with an error (not an outage) for this long means
/// shipping cannot progress: serve's liveness fails.
pub const STALL_LIMIT: Duration = Duration::from_secs(300);

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
    /// Bytes of relays with the shipper, not yet acknowledged or refused.
    pub queued_bytes: AtomicUsize,
    /// Whether the shipping task runs (false once it ended or panicked).
    pub running: AtomicBool,
    /// Since when the store has answered the batch in hand with errors (milliseconds
    /// after [`ShipStats::epoch`]; 0: it has not).
    failing_since_ms: AtomicU64,
    epoch: std::sync::OnceLock<Instant>,
}

impl ShipStats {
    fn now_ms(&self) -> u64 {
        let epoch = self.epoch.get_or_init(Instant::now);
        epoch.elapsed().as_millis() as u64 + 1
    }

    /// How long the store has been answering the batch in hand with errors (not an
    /// outage: those are the readiness probe's).
    pub fn failing_for(&self) -> Option<Duration> {
        match self.failing_since_ms.load(Ordering::Relaxed) {
            0 => None,
            since => Some(Duration::from_millis(self.now_ms().saturating_sub(since))),
        }
    }

    /// Why shipping cannot progress, if it cannot: the task ended, or the store has
    /// refused the same relays for [`STALL_LIMIT`].
    pub fn stuck(&self) -> Option<String> {
        if !self.running.load(Ordering::Relaxed) {
            return Some("the shipping task is not running".into());
        }
        match self.failing_for() {
            Some(d) if d >= STALL_LIMIT => Some(format!(
                "the store has refused the same mined relays for {}s",
                d.as_secs()
            )),
            _ => None,
        }
    }
}

/// Clears `running` when the shipping task ends, however it ends.
struct Running(Arc<ShipStats>);

impl Drop for Running {
    fn drop(&mut self) {
        self.0.running.store(false, Ordering::Relaxed);
    }
}

/// How much the queue holds at most.
#[derive(Clone, Copy, Debug)]
pub struct QueueLimits {
    pub relays: usize,
    pub bytes: usize,
}

/// The shipper: cheap to clone.
#[derive(Clone, Debug)]
pub struct Shipper {
    slots: Arc<Semaphore>,
    limits: QueueLimits,
    tx: mpsc::UnboundedSender<Shipment>,
    pub stats: Arc<ShipStats>,
}

impl Shipper {
    /// Starts the shipping task; it ends after every queued relay was acknowledged once
    /// all `Shipper` clones are dropped.
    pub fn start(client: Client, limits: QueueLimits) -> (Self, tokio::task::JoinHandle<()>) {
        let (tx, rx) = mpsc::unbounded_channel();
        let stats = Arc::new(ShipStats::default());
        stats.running.store(true, Ordering::Relaxed);
        let task = tokio::spawn(run(client, rx, stats.clone()));
        (
            Self {
                slots: Arc::new(Semaphore::new(limits.relays)),
                limits,
                tx,
                stats,
            },
            task,
        )
    }

    /// Reserves a queue slot, or `None` when the queue is full: all its slots are taken,
    /// or the relays waiting for the store hold its bytes. (Relays being served when the
    /// bytes run out still ship, so the queue may exceed its bytes by what is in flight,
    /// which the relay port bounds.)
    pub fn reserve(&self) -> Option<OwnedSemaphorePermit> {
        if self.stats.queued_bytes.load(Ordering::Relaxed) >= self.limits.bytes {
            return None;
        }
        self.slots.clone().try_acquire_owned().ok()
    }

    /// Relays waiting for the store's acknowledgement (including reserved slots).
    pub fn queued(&self) -> usize {
        self.limits.relays - self.slots.available_permits()
    }

    pub fn send(&self, s: Shipment) {
        self.stats
            .queued_bytes
            .fetch_add(s.relay.bytes.len(), Ordering::Relaxed);
        // The receiver lives until every sender is gone, so this cannot fail while
        // `self` exists.
        let _ = self.tx.send(s);
    }
}

async fn run(client: Client, mut rx: mpsc::UnboundedReceiver<Shipment>, stats: Arc<ShipStats>) {
    let _running = Running(stats.clone());
    while let Some(first) = rx.recv().await {
        let mut bytes = first.relay.bytes.len();
        let mut batch = vec![first];
        let deadline = tokio::time::Instant::now() + BATCH_WAIT;
        while batch.len() < BATCH_RELAYS && bytes < BATCH_BYTES {
            match tokio::time::timeout_at(deadline, rx.recv()).await {
                Ok(Some(s)) => {
                    bytes += s.relay.bytes.len();
                    batch.push(s);
                }
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
            ship(&client, group, &stats).await;
        }
    }
}

/// Ships one session's relays: appended together; if the store refuses them for good,
/// each is tried alone, so that only the relays it refuses are given up.
async fn ship(client: &Client, group: Vec<Shipment>, stats: &ShipStats) {
    let appended = append(client, &group, stats).await;
    if appended.is_ok() || group.len() == 1 {
        release(group, stats, appended.is_ok());
        return;
    }
    tracing::warn!(
        relays = group.len(),
        "the store refused a batch of mined relays; trying each alone"
    );
    for s in group {
        let one = vec![s];
        let appended = append(client, &one, stats).await;
        release(one, stats, appended.is_ok());
    }
}

/// Gives back the queue bytes and slots of shipped (or refused) relays, then tells
/// those waiting for an acknowledgement when there was one (so that whoever hears has
/// the room back already).
fn release(group: Vec<Shipment>, stats: &ShipStats, acknowledged: bool) {
    for s in group {
        stats
            .queued_bytes
            .fetch_sub(s.relay.bytes.len(), Ordering::Relaxed);
        drop(s.slot);
        if let Some(ack) = s.ack
            && acknowledged
        {
            // The receiver is gone when the client left; nothing to tell then.
            let _ = ack.send(());
        }
    }
}

/// Whether retrying can make the store take an append it refused with `code`: an
/// outage, a timeout, an overloaded or failing store. Everything else (a frozen session,
/// an invalid relay, a message too large, a supplier not this store's, a missing
/// method) is the store's final word.
fn retryable(code: tonic::Code) -> bool {
    use tonic::Code::*;
    matches!(
        code,
        Unavailable
            | DeadlineExceeded
            | Cancelled
            | Aborted
            | ResourceExhausted
            | Internal
            | Unknown
            | Unauthenticated
    )
}

/// Whether an error means the store answered (as opposed to not being reachable).
fn store_answered(code: tonic::Code) -> bool {
    !matches!(
        code,
        tonic::Code::Unavailable | tonic::Code::DeadlineExceeded | tonic::Code::Cancelled
    )
}

/// Appends one session's relays, retrying until the store acknowledges them (the acks
/// are sent) or refuses them for good (`Err`, the acks dropped).
async fn append(client: &Client, group: &[Shipment], stats: &ShipStats) -> Result<(), ()> {
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
    let outcome = loop {
        match client.clone().append_relays(req.clone()).await {
            Ok(r) => {
                let r = r.into_inner();
                stats.acknowledged.fetch_add(r.accepted, Ordering::Relaxed);
                stats.duplicates.fetch_add(r.duplicates, Ordering::Relaxed);
                stats.store_ok.store(true, Ordering::Relaxed);
                break Ok(());
            }
            Err(s) if !retryable(s.code()) => {
                tracing::error!(status = %s, relays = group.len(), session = %h.session_id, "store refused mined relays");
                if group.len() == 1 {
                    stats.append_failures.fetch_add(1, Ordering::Relaxed);
                }
                break Err(());
            }
            Err(s) => {
                stats.store_ok.store(false, Ordering::Relaxed);
                if store_answered(s.code()) {
                    let _ = stats.failing_since_ms.compare_exchange(
                        0,
                        stats.now_ms(),
                        Ordering::Relaxed,
                        Ordering::Relaxed,
                    );
                }
                tracing::warn!(status = %s, relays = group.len(), "store append failed; retrying");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(2));
            }
        }
    };
    stats.failing_since_ms.store(0, Ordering::Relaxed);
    outcome
}

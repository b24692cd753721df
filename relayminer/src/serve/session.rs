//! Session validation against the chain (spec §5.3), cached per session: the on-chain
//! header, the session's suppliers, the application's ring, the difficulty and compute
//! units at session start, and the over-servicing budget.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use lode_chain::pocket::{ChainParams, KeyError, PocketQuery};
use lode_chain::{CometRpc, QueryError};
use lode_kernels::crypto::PublicKey;
use lode_kernels::crypto::ring::{AppRing, placeholder_key};
use lode_kernels::mining::relay_cost_upokt;
use lode_kernels::proto::SessionHeader;

/// Why a relay's session was refused.
#[derive(Clone, Debug, thiserror::Error)]
pub enum SessionError {
    #[error("the chain height is not known yet")]
    NoHeight,
    #[error(
        "session expired: it ended at height {end}, its grace period at {grace_end}, the chain is at {height}"
    )]
    Expired {
        end: i64,
        grace_end: i64,
        height: i64,
    },
    #[error("session header does not match the on-chain session: {0}")]
    Mismatch(String),
    #[error("supplier {0} is not in this session")]
    SupplierNotInSession(String),
    #[error("chain query failed: {0}")]
    Chain(#[from] QueryError),
    #[error("application ring: {0}")]
    Ring(String),
}

/// The placeholder ring member's key, derived once.
fn placeholder() -> &'static PublicKey {
    static KEY: std::sync::OnceLock<PublicKey> = std::sync::OnceLock::new();
    KEY.get_or_init(placeholder_key)
}

impl SessionError {
    /// A chain outage rather than a bad relay.
    pub fn is_unavailable(&self) -> bool {
        matches!(self, Self::NoHeight | Self::Chain(_))
    }
}

/// What serving a session's relays needs, fetched once per session.
#[derive(Debug)]
pub struct SessionEntry {
    pub header: SessionHeader,
    pub suppliers: Vec<String>,
    pub ring: AppRing,
    pub target: [u8; 32],
    pub compute_units_per_relay: u64,
    pub grace_end: i64,
    /// uPOKT one relay costs the application.
    pub relay_cost: u64,
    /// uPOKT the application may still spend with this supplier this session.
    pub budget_left: AtomicU64,
    /// The application has no delegated gateway: its ring holds the public placeholder
    /// key, so anyone can sign its relays.
    pub placeholder_ring: bool,
    /// A relay of this session came with a bad ring signature: check every later one
    /// before the engine sees it.
    pub refused_signature: AtomicBool,
}

impl SessionEntry {
    /// Charges one relay; `false` when the budget is spent.
    pub fn charge(&self) -> bool {
        self.budget_left
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |b| {
                b.checked_sub(self.relay_cost)
            })
            .is_ok()
    }

    /// Gives back one relay's charge (its signature was refused after all).
    pub fn refund(&self) {
        let _ = self
            .budget_left
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |b| {
                Some(b.saturating_add(self.relay_cost))
            });
    }
}

/// A fetch of one session header's answer from the chain, shared by every relay that
/// asks while it runs: the first relays of a new session make one set of queries to the
/// node, not one per relay.
/// Refusals remembered between two blocks, at most.
const MAX_REFUSALS: usize = 4096;

/// What a refusal is remembered by: the header without its session id (a made-up id is
/// free to vary).
fn refusal_key(h: &SessionHeader) -> (String, String, i64, i64) {
    (
        h.application_address.clone(),
        h.service_id.clone(),
        h.session_start_block_height,
        h.session_end_block_height,
    )
}

type Flight = Arc<tokio::sync::OnceCell<Result<Arc<SessionEntry>, SessionError>>>;

/// A header's five fields: relays join a fetch only for exactly the header it checks.
type FlightKey = (String, String, String, i64, i64);

/// A relay's place in a [`Flight`]; the last to leave takes the flight off the map, so
/// it holds only fetches in progress (a failure is shared, never kept).
struct Joined<'a> {
    flights: &'a Mutex<HashMap<FlightKey, Flight>>,
    key: FlightKey,
    flight: Flight,
}

impl Drop for Joined<'_> {
    fn drop(&mut self) {
        let mut flights = self.flights.lock().unwrap_or_else(|e| e.into_inner());
        // The map's reference and this one: nobody else is waiting.
        if Arc::strong_count(&self.flight) == 2 {
            flights.remove(&self.key);
        }
    }
}

/// Validates session headers with the chain and caches the answers.
#[derive(Debug)]
pub struct Sessions {
    query: PocketQuery,
    height: Arc<AtomicI64>,
    last_block: Mutex<Option<Instant>>,
    /// By on-chain session id: an entry goes in under its own id only, so a forged header
    /// (any id, with a real application and service) adds nothing and cannot shadow the
    /// real session whose id it names.
    cache: Mutex<HashMap<String, Arc<SessionEntry>>>,
    /// Headers the chain refused since the last block, by (application, service, start,
    /// end): asked again, they are refused without a node query. At most
    /// [`MAX_REFUSALS`]; emptied at every block.
    refusals: Mutex<HashMap<(String, String, i64, i64), SessionError>>,
    flights: Mutex<HashMap<FlightKey, Flight>>,
    num_suppliers: Mutex<Option<u64>>,
}

impl Sessions {
    pub fn new(query: PocketQuery) -> Arc<Self> {
        Arc::new(Self {
            query,
            height: Arc::new(AtomicI64::new(0)),
            last_block: Mutex::new(None),
            cache: Mutex::default(),
            refusals: Mutex::default(),
            flights: Mutex::default(),
            num_suppliers: Mutex::new(None),
        })
    }

    pub fn height(&self) -> i64 {
        self.height.load(Ordering::Acquire)
    }

    /// How long ago the last block arrived (`None` before the first).
    pub fn since_last_block(&self) -> Option<Duration> {
        self.last_block.lock().expect("lock").map(|t| t.elapsed())
    }

    pub fn cached_sessions(&self) -> usize {
        self.cache.lock().expect("lock").len()
    }

    /// Follows the chain's blocks (websocket with gap filling and reconnects) and keeps
    /// the height current, until the task is aborted.
    pub fn track_height(self: &Arc<Self>, rpc: CometRpc) -> tokio::task::JoinHandle<()> {
        let me = self.clone();
        tokio::spawn(async move {
            loop {
                let start = match rpc.status().await {
                    Ok(s) => s.latest_height,
                    Err(e) => {
                        tracing::warn!(error = %e, "chain RPC unreachable; retrying");
                        tokio::time::sleep(Duration::from_secs(1)).await;
                        continue;
                    }
                };
                me.set_height(start);
                let mut blocks = rpc.follow(start + 1, 64);
                while let Some(b) = blocks.recv().await {
                    match b {
                        Ok(b) => me.set_height(b.height),
                        Err(e) => tracing::warn!(error = %e, "following blocks"),
                    }
                }
            }
        })
    }

    /// Sets the chain height (also used by tests and by `run`).
    pub fn set_height(&self, h: i64) {
        if self.height.fetch_max(h, Ordering::AcqRel) < h {
            // A new block can make a refused header valid (a session that has started).
            self.refusals.lock().expect("lock").clear();
        }
        *self.last_block.lock().expect("lock") = Some(Instant::now());
        // Sessions past their grace period are useless for serving.
        self.cache
            .lock()
            .expect("lock")
            .retain(|_, e| e.grace_end >= h);
    }

    /// Validates a relay's session header for `supplier` (spec §5.3) and returns the
    /// cached session.
    pub async fn validate(
        &self,
        header: &SessionHeader,
        supplier: &str,
    ) -> Result<Arc<SessionEntry>, SessionError> {
        let height = self.height();
        if height == 0 {
            return Err(SessionError::NoHeight);
        }
        // A made-up id of a session already here is found by its application, service
        // and start, and refused below without asking the node.
        let known = self
            .cached(&header.session_id)
            .or_else(|| self.cached_slot(header));
        let entry = match known {
            Some(e) => e,
            None => {
                let slot = refusal_key(header);
                if let Some(e) = self.refusals.lock().expect("lock").get(&slot) {
                    return Err(e.clone());
                }
                match self.fetch_shared(header, height).await {
                    Ok(e) => e,
                    Err(e) => {
                        if !e.is_unavailable() {
                            let mut refusals = self.refusals.lock().expect("lock");
                            if refusals.len() >= MAX_REFUSALS {
                                refusals.clear();
                            }
                            refusals.insert(slot, e.clone());
                        }
                        return Err(e);
                    }
                }
            }
        };
        if height > entry.grace_end {
            return Err(SessionError::Expired {
                end: entry.header.session_end_block_height,
                grace_end: entry.grace_end,
                height,
            });
        }
        if entry.header != *header {
            return Err(SessionError::Mismatch(format!(
                "on chain {}..{} id {}",
                entry.header.session_start_block_height,
                entry.header.session_end_block_height,
                entry.header.session_id
            )));
        }
        if !entry.suppliers.iter().any(|s| s == supplier) {
            return Err(SessionError::SupplierNotInSession(supplier.to_string()));
        }
        Ok(entry)
    }

    /// Fetches `header`'s session and caches it under its on-chain id, or joins the
    /// fetch already running for the same header.
    async fn fetch_shared(
        &self,
        header: &SessionHeader,
        height: i64,
    ) -> Result<Arc<SessionEntry>, SessionError> {
        let key = (
            header.application_address.clone(),
            header.service_id.clone(),
            header.session_id.clone(),
            header.session_start_block_height,
            header.session_end_block_height,
        );
        let flight = self
            .flights
            .lock()
            .expect("lock")
            .entry(key.clone())
            .or_default()
            .clone();
        let joined = Joined {
            flights: &self.flights,
            key,
            flight,
        };
        // Should the relay doing the fetch go away (its client hung up), a waiting one
        // takes it over.
        joined
            .flight
            .get_or_init(|| self.fetch(header, height))
            .await
            .clone()
    }

    /// Fetches in progress (tests check that finished ones leave).
    pub fn fetches_in_flight(&self) -> usize {
        self.flights.lock().expect("lock").len()
    }

    async fn params_at(&self, h: i64) -> Result<ChainParams, SessionError> {
        Ok(self.query.shared_params_at(h).await?)
    }

    async fn fetch(
        &self,
        header: &SessionHeader,
        height: i64,
    ) -> Result<Arc<SessionEntry>, SessionError> {
        let end = header.session_end_block_height;
        let params = self.params_at(height).await?;
        // `end` is the relay's word until the chain confirms it: no overflow on extremes.
        let grace_end = end.saturating_add(params.shared.grace_period_end_offset_blocks);
        let query_height = if end >= height {
            // A session that starts after the last block seen here: the gateway saw a
            // newer block first. Ask the node at the session start (it refuses heights
            // it has not reached, which is then a mismatch as before).
            height.max(header.session_start_block_height)
        } else if height <= grace_end {
            end
        } else {
            return Err(SessionError::Expired {
                end,
                grace_end,
                height,
            });
        };
        let session = self
            .query
            .session(
                &header.application_address,
                &header.service_id,
                query_height,
            )
            .await
            .map_err(|e| match e {
                QueryError::Status { status, .. }
                    if status.code() == tonic::Code::InvalidArgument =>
                {
                    SessionError::Mismatch(status.message().to_string())
                }
                other => SessionError::Chain(other),
            })?;
        let onchain = session.header.clone().expect("checked by the client");
        // A header naming another id of a session already here (a made-up one, say) needs
        // nothing more from the node.
        if let Some(known) = self.cached(&onchain.session_id) {
            return Ok(known);
        }
        let start = onchain.session_start_block_height;
        let onchain_end = onchain.session_end_block_height;
        let start_params = self.params_at(start).await?;
        // Timing uses params at the session end; before the end is committed the chain
        // can only tell the params in effect now.
        let end_params = self
            .params_at(onchain.session_end_block_height.min(height))
            .await?;
        let target = self.query.difficulty_at(&onchain.service_id, start).await?;
        let cupr = self
            .query
            .compute_units_per_relay_at(&onchain.service_id, start)
            .await?;
        let app = session.application.clone().unwrap_or_default();
        let keys = self
            .query
            .ring_keys(&app, onchain.session_end_block_height)
            .await
            .map_err(|e| match e {
                KeyError::Query(q) => SessionError::from(q),
                other => SessionError::Ring(other.to_string()),
            })?;
        let ring = AppRing::new(&keys).map_err(|e| SessionError::Ring(e.to_string()))?;
        let placeholder_ring = keys.contains(placeholder());
        // Over-servicing budget (spec §5.3).
        let num_suppliers = self.num_suppliers().await?.max(1);
        let s = end_params.shared;
        let windows_blocks = s.claim_window_open_offset_blocks
            + s.claim_window_close_offset_blocks
            + s.proof_window_open_offset_blocks
            + s.proof_window_close_offset_blocks;
        let pending_sessions =
            (windows_blocks + s.num_blocks_per_session - 1) / s.num_blocks_per_session + 1;
        let stake: u128 = app
            .stake
            .as_ref()
            .and_then(|c| c.amount.parse().ok())
            .unwrap_or(0);
        let budget = stake / num_suppliers as u128 / pending_sessions.max(1) as u128;
        let relay_cost = relay_cost_upokt(cupr, start_params.pricing).unwrap_or(0);
        let entry = Arc::new(SessionEntry {
            suppliers: session
                .suppliers
                .iter()
                .map(|s| s.operator_address.clone())
                .collect(),
            header: onchain,
            ring,
            target,
            compute_units_per_relay: cupr,
            // The on-chain end, not the header's: the entry serves every relay of the
            // session, whichever header first asked for it.
            grace_end: onchain_end.saturating_add(end_params.shared.grace_period_end_offset_blocks),
            relay_cost: relay_cost.min(u64::MAX as u128) as u64,
            budget_left: AtomicU64::new(budget.min(u64::MAX as u128) as u64),
            refused_signature: AtomicBool::new(false),
            placeholder_ring,
        });
        Ok(self
            .cache
            .lock()
            .expect("lock")
            .entry(entry.header.session_id.clone())
            .or_insert(entry)
            .clone())
    }

    /// The cached session with this on-chain id.
    pub fn cached(&self, session_id: &str) -> Option<Arc<SessionEntry>> {
        self.cache.lock().expect("lock").get(session_id).cloned()
    }

    /// The cached session of `header`'s application and service starting where it says,
    /// whatever id it names.
    fn cached_slot(&self, header: &SessionHeader) -> Option<Arc<SessionEntry>> {
        self.cache
            .lock()
            .expect("lock")
            .values()
            .find(|e| {
                e.header.session_start_block_height == header.session_start_block_height
                    && e.header.service_id == header.service_id
                    && e.header.application_address == header.application_address
            })
            .cloned()
    }

    /// Headers refused since the last block, remembered (tests).
    pub fn remembered_refusals(&self) -> usize {
        self.refusals.lock().expect("lock").len()
    }

    async fn num_suppliers(&self) -> Result<u64, SessionError> {
        if let Some(n) = *self.num_suppliers.lock().expect("lock") {
            return Ok(n);
        }
        let n = self.query.num_suppliers_per_session().await?;
        *self.num_suppliers.lock().expect("lock") = Some(n);
        Ok(n)
    }
}

//! The store's logic over a [`Backend`]: one writer thread that groups concurrent
//! appends into one durable write (group commit), session records cached in memory, and
//! roots and proofs computed by streaming over a session's sorted leaves.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, RwLock};
use std::time::Instant;

use lode_kernels::proto::{Message as _, Relay};
use lode_kernels::smst::{self, ProofOptions, Root, SortedBuilder};
use lode_store_api::{MinedRelay, SessionHeader, SessionInfo, SessionState};
use prost::Message as _;
use sha2::{Digest, Sha256};
use tokio::sync::{mpsc, oneshot, watch};

use crate::backend::{Backend, BackendError, WriteSet};
use crate::metrics::Metrics;

/// Why a store operation failed; each maps to a gRPC status.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("{0}")]
    Backend(#[from] BackendError),
    #[error("unknown session {session_id} of supplier {supplier}")]
    UnknownSession {
        supplier: String,
        session_id: String,
    },
    #[error("session {0} is {1:?}: it accepts no more relays")]
    NotOpen(String, SessionState),
    #[error("session {0} is not frozen yet (freeze it first)")]
    NotFrozen(String),
    #[error("invalid request: {0}")]
    Invalid(String),
    #[error("the store is shutting down")]
    Closed,
}

/// Upper bound on one relay's bytes accepted by the store.
pub use lode_store_api::MAX_RELAY_BYTES;

/// The key prefix of a session: `len ‖ supplier ‖ len ‖ session id`. All its leaves are
/// `prefix ‖ path`, one contiguous sorted range.
pub fn session_prefix(supplier: &str, session_id: &str) -> Result<Vec<u8>, StoreError> {
    if supplier.is_empty()
        || supplier.len() > 255
        || session_id.is_empty()
        || session_id.len() > 255
    {
        return Err(StoreError::Invalid(
            "supplier address and session id must be 1–255 bytes".into(),
        ));
    }
    let mut p = Vec::with_capacity(2 + supplier.len() + session_id.len());
    p.push(supplier.len() as u8);
    p.extend_from_slice(supplier.as_bytes());
    p.push(session_id.len() as u8);
    p.extend_from_slice(session_id.as_bytes());
    Ok(p)
}

/// The session-records key holding the durable count of acknowledged relays. Session
/// prefixes start with the supplier's length (≥ 1), so no session has this key.
const ACKNOWLEDGED_KEY: &[u8] = b"\0relays_acknowledged";

/// What the writer does.
enum Op {
    Append {
        prefix: Vec<u8>,
        supplier: String,
        header: SessionHeader,
        relays: Vec<MinedRelay>,
        reply: oneshot::Sender<Result<(u64, u64, u64), StoreError>>,
    },
    SetState {
        prefix: Vec<u8>,
        change: StateChange,
        reply: oneshot::Sender<Result<SessionInfo, StoreError>>,
    },
}

enum StateChange {
    BeginFreeze,
    FinishFreeze(Root),
    Mark(SessionState, String),
}

/// The session store.
pub struct Store<B: Backend> {
    backend: Arc<B>,
    compactor: Compactor,
    /// The writer thread, joined on drop so the database is closed when `Store` is gone.
    writer: Option<std::thread::JoinHandle<()>>,
    sessions: Arc<RwLock<HashMap<Vec<u8>, SessionInfo>>>,
    /// `None` only while dropping.
    ops: Option<mpsc::Sender<Op>>,
    metrics: Arc<Metrics>,
    /// The first failed durable write, if any (see [`Store::storage_failure`]).
    failure: Arc<watch::Sender<Option<String>>>,
}

impl<B: Backend> std::fmt::Debug for Store<B> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Store")
    }
}

impl<B: Backend> Store<B> {
    /// Loads every session record and starts the writer thread.
    pub fn open(backend: B, metrics: Arc<Metrics>) -> Result<Self, StoreError> {
        let backend = Arc::new(backend);
        let mut sessions = HashMap::new();
        for (k, v) in backend.sessions()? {
            if k == ACKNOWLEDGED_KEY {
                let total: [u8; 8] = v
                    .as_slice()
                    .try_into()
                    .map_err(|_| BackendError("corrupt acknowledged-relays record".into()))?;
                metrics
                    .relays_acknowledged
                    .inc_by(u64::from_be_bytes(total));
                continue;
            }
            let info = SessionInfo::decode(v.as_slice())
                .map_err(|e| BackendError(format!("corrupt session record: {e}")))?;
            sessions.insert(k, info);
        }
        metrics.set_sessions(sessions.values());
        let sessions = Arc::new(RwLock::new(sessions));
        let (tx, rx) = mpsc::channel(1024);
        let failure = Arc::new(watch::Sender::new(None));
        let writer = Writer {
            backend: backend.clone(),
            sessions: sessions.clone(),
            metrics: metrics.clone(),
            failure: failure.clone(),
        };
        let writer = std::thread::Builder::new()
            .name("store-writer".into())
            .spawn({
                let failure = failure.clone();
                move || {
                    // A writer that died would leave the store up but unable to write:
                    // its panic is a storage failure like any other.
                    let run = std::panic::AssertUnwindSafe(|| writer.run(rx));
                    if let Err(panic) = std::panic::catch_unwind(run) {
                        let why = panic
                            .downcast_ref::<String>()
                            .map(String::as_str)
                            .or_else(|| panic.downcast_ref::<&str>().copied())
                            .unwrap_or("unknown cause");
                        failure.send_replace(Some(format!("the writer thread panicked: {why}")));
                    }
                }
            })
            .map_err(|e| BackendError(format!("cannot start the writer: {e}")))?;
        let compactor = Compactor::start(backend.clone(), metrics.clone())?;
        Ok(Self {
            backend,
            compactor,
            writer: Some(writer),
            sessions,
            ops: Some(tx),
            metrics,
            failure,
        })
    }

    /// Watches for the first durable write that failed (a full or failing disk). The
    /// backend may refuse every later write (RocksDB turns read-only after a failed WAL
    /// write), so the server reports itself unhealthy and exits to reopen the database.
    pub fn storage_failure(&self) -> watch::Receiver<Option<String>> {
        self.failure.subscribe()
    }

    fn sender(&self) -> Result<&mpsc::Sender<Op>, StoreError> {
        self.ops.as_ref().ok_or(StoreError::Closed)
    }

    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }

    pub fn backend(&self) -> &Arc<B> {
        &self.backend
    }

    /// Appends a batch of one session's mined relays. Returns (accepted, duplicates,
    /// leaves in the session) once the batch is durable.
    pub async fn append(
        &self,
        supplier: &str,
        header: SessionHeader,
        relays: Vec<MinedRelay>,
    ) -> Result<(u64, u64, u64), StoreError> {
        let prefix = session_prefix(supplier, &header.session_id)?;
        for (i, r) in relays.iter().enumerate() {
            if r.relay_hash.len() != 32 {
                return Err(StoreError::Invalid(format!(
                    "relay {i}: relay_hash must be 32 bytes, got {}",
                    r.relay_hash.len()
                )));
            }
            if r.relay_bytes.is_empty() || r.relay_bytes.len() > MAX_RELAY_BYTES {
                return Err(StoreError::Invalid(format!(
                    "relay {i}: relay_bytes must be 1..={MAX_RELAY_BYTES} bytes"
                )));
            }
            if Sha256::digest(&r.relay_bytes)[..] != r.relay_hash[..] {
                return Err(StoreError::Invalid(format!(
                    "relay {i}: relay_hash is not SHA-256 of relay_bytes"
                )));
            }
            match Relay::decode(&r.relay_bytes) {
                Ok(Relay {
                    req: Some(_),
                    res: Some(_),
                }) => {}
                Ok(_) => {
                    return Err(StoreError::Invalid(format!(
                        "relay {i}: a relay needs both a request and a response"
                    )));
                }
                Err(e) => {
                    return Err(StoreError::Invalid(format!(
                        "relay {i}: relay_bytes is not a serialized Relay: {e}"
                    )));
                }
            }
        }
        let (reply, rx) = oneshot::channel();
        let op = Op::Append {
            prefix,
            supplier: supplier.to_string(),
            header,
            relays,
            reply,
        };
        self.sender()?
            .send(op)
            .await
            .map_err(|_| StoreError::Closed)?;
        rx.await.map_err(|_| StoreError::Closed)?
    }

    pub fn get(&self, supplier: &str, session_id: &str) -> Result<SessionInfo, StoreError> {
        let prefix = session_prefix(supplier, session_id)?;
        self.read_sessions()
            .get(&prefix)
            .cloned()
            .ok_or_else(|| StoreError::UnknownSession {
                supplier: supplier.into(),
                session_id: session_id.into(),
            })
    }

    /// Every session (of one supplier, or all when `supplier` is empty), ordered by key.
    pub fn list(&self, supplier: &str) -> Vec<SessionInfo> {
        let g = self.read_sessions();
        let mut v: Vec<(&Vec<u8>, &SessionInfo)> = g
            .iter()
            .filter(|(_, s)| supplier.is_empty() || s.supplier_operator_address == supplier)
            .collect();
        v.sort_by(|a, b| a.0.cmp(b.0));
        v.into_iter().map(|(_, s)| s.clone()).collect()
    }

    fn read_sessions(&self) -> std::sync::RwLockReadGuard<'_, HashMap<Vec<u8>, SessionInfo>> {
        self.sessions.read().unwrap_or_else(|p| p.into_inner())
    }

    async fn set_state(
        &self,
        prefix: Vec<u8>,
        change: StateChange,
    ) -> Result<SessionInfo, StoreError> {
        let (reply, rx) = oneshot::channel();
        self.sender()?
            .send(Op::SetState {
                prefix,
                change,
                reply,
            })
            .await
            .map_err(|_| StoreError::Closed)?;
        rx.await.map_err(|_| StoreError::Closed)?
    }

    /// Stops appends and computes the root by one pass over the sorted leaves. A frozen
    /// session returns its recorded root.
    pub async fn freeze(
        self: &Arc<Self>,
        supplier: &str,
        session_id: &str,
    ) -> Result<SessionInfo, StoreError> {
        let prefix = session_prefix(supplier, session_id)?;
        let info = self
            .set_state(prefix.clone(), StateChange::BeginFreeze)
            .await?;
        if !info.root.is_empty() {
            return Ok(info);
        }
        let this = self.clone();
        let scan_prefix = prefix.clone();
        let root = tokio::task::spawn_blocking(move || {
            let t = Instant::now();
            let mut b = SortedBuilder::new();
            this.scan(&scan_prefix, |path, value, weight| {
                b.push(path, value, weight)
                    .map_err(|e| BackendError(format!("leaves out of order: {e}")))
            })?;
            this.metrics.observe_root(t.elapsed());
            Ok::<_, StoreError>(b.finish())
        })
        .await
        .map_err(|e| StoreError::Backend(BackendError(format!("root task failed: {e}"))))??;
        self.set_state(prefix, StateChange::FinishFreeze(root))
            .await
    }

    /// Visits the session's leaves as (path, value, weight).
    fn scan(
        &self,
        prefix: &[u8],
        mut f: impl FnMut(&smst::Path, &[u8], u64) -> Result<(), BackendError>,
    ) -> Result<(), StoreError> {
        self.backend.scan_leaves(prefix, &mut |k, v| {
            let path: smst::Path = k[prefix.len()..]
                .try_into()
                .map_err(|_| BackendError("leaf key of the wrong length".into()))?;
            let (value, weight) = decode_leaf(v)?;
            f(&path, value, weight)
        })?;
        Ok(())
    }

    /// The on-chain proof bytes (compact closest proof, gob) of a frozen session, toward
    /// `path`; checks that the streamed root still equals the frozen one.
    pub async fn prove(
        self: &Arc<Self>,
        supplier: &str,
        session_id: &str,
        path: Vec<u8>,
        sibling_data: bool,
    ) -> Result<(Vec<u8>, Vec<u8>), StoreError> {
        let prefix = session_prefix(supplier, session_id)?;
        if path.len() != 32 {
            return Err(StoreError::Invalid(format!(
                "path must be 32 bytes, got {}",
                path.len()
            )));
        }
        let info = self.get(supplier, session_id)?;
        if info.root.is_empty() {
            return Err(StoreError::NotFrozen(session_id.into()));
        }
        let this = self.clone();
        tokio::task::spawn_blocking(move || {
            let opts = if sibling_data {
                ProofOptions::default()
            } else {
                ProofOptions::SMALL
            };
            let mut b = SortedBuilder::with_target(&path, opts)
                .map_err(|e| StoreError::Invalid(e.to_string()))?;
            this.scan(&prefix, |p, v, w| {
                b.push(p, v, w)
                    .map_err(|e| BackendError(format!("leaves out of order: {e}")))
            })?;
            let (root, proof) = b.finish_with_proof();
            if root.as_bytes()[..] != info.root[..] {
                return Err(StoreError::Backend(BackendError(
                    "leaves changed after the session was frozen".into(),
                )));
            }
            let compact = smst::compact_closest_proof(&proof)
                .map_err(|e| StoreError::Invalid(e.to_string()))?;
            Ok((compact.to_gob(), info.root))
        })
        .await
        .map_err(|e| StoreError::Backend(BackendError(format!("proof task failed: {e}"))))?
    }

    /// Records a claim/proof transaction or a final state.
    pub async fn mark(
        &self,
        supplier: &str,
        session_id: &str,
        state: SessionState,
        tx_hash: String,
    ) -> Result<SessionInfo, StoreError> {
        let prefix = session_prefix(supplier, session_id)?;
        self.set_state(prefix, StateChange::Mark(state, tx_hash))
            .await
    }

    /// Deletes a session's leaves and record, then compacts its range to return the
    /// space. Returns the number of leaves deleted.
    pub async fn delete(
        self: &Arc<Self>,
        supplier: &str,
        session_id: &str,
    ) -> Result<u64, StoreError> {
        let prefix = session_prefix(supplier, session_id)?;
        let info = self.get(supplier, session_id)?;
        let this = self.clone();
        tokio::task::spawn_blocking(move || {
            this.backend.delete_prefix(&prefix)?;
            {
                let mut g = this.sessions.write().unwrap_or_else(|p| p.into_inner());
                g.remove(&prefix);
                this.metrics.set_sessions(g.values());
            }
            this.compactor.request(&prefix);
            Ok(info.leaves)
        })
        .await
        .map_err(|e| StoreError::Backend(BackendError(format!("delete task failed: {e}"))))?
    }
}

/// Leaf value: `relay bytes ‖ BE8(weight)`.
fn encode_leaf(relay: &MinedRelay) -> Vec<u8> {
    let mut v = Vec::with_capacity(relay.relay_bytes.len() + 8);
    v.extend_from_slice(&relay.relay_bytes);
    v.extend_from_slice(&relay.compute_units.to_be_bytes());
    v
}

fn decode_leaf(v: &[u8]) -> Result<(&[u8], u64), BackendError> {
    let n = v
        .len()
        .checked_sub(8)
        .ok_or_else(|| BackendError("leaf value shorter than its weight".into()))?;
    Ok((
        &v[..n],
        u64::from_be_bytes(v[n..].try_into().expect("8 bytes")),
    ))
}

struct Writer<B: Backend> {
    backend: Arc<B>,
    sessions: Arc<RwLock<HashMap<Vec<u8>, SessionInfo>>>,
    metrics: Arc<Metrics>,
    failure: Arc<watch::Sender<Option<String>>>,
}

/// Replies waiting for their group's commit.
enum Reply {
    Append(
        oneshot::Sender<Result<(u64, u64, u64), StoreError>>,
        Result<(u64, u64, u64), StoreError>,
    ),
    State(
        oneshot::Sender<Result<SessionInfo, StoreError>>,
        Result<SessionInfo, StoreError>,
    ),
}

/// Most operations committed together in one write.
const MAX_GROUP: usize = 256;

impl<B: Backend> Writer<B> {
    fn run(self, mut rx: mpsc::Receiver<Op>) {
        while let Some(first) = rx.blocking_recv() {
            let mut group = vec![first];
            while group.len() < MAX_GROUP {
                match rx.try_recv() {
                    Ok(op) => group.push(op),
                    Err(_) => break,
                }
            }
            self.commit_group(group);
        }
    }

    fn commit_group(&self, group: Vec<Op>) {
        let t = Instant::now();
        let mut changed: HashMap<Vec<u8>, SessionInfo> = HashMap::new();
        let mut ws = WriteSet::default();
        let mut added: HashSet<Vec<u8>> = HashSet::new();
        let mut replies = Vec::with_capacity(group.len());
        let (mut accepted_total, mut duplicate_total) = (0u64, 0u64);
        let current =
            |prefix: &Vec<u8>, changed: &HashMap<Vec<u8>, SessionInfo>| -> Option<SessionInfo> {
                changed.get(prefix).cloned().or_else(|| {
                    self.sessions
                        .read()
                        .unwrap_or_else(|p| p.into_inner())
                        .get(prefix)
                        .cloned()
                })
            };
        for op in group {
            match op {
                Op::Append {
                    prefix,
                    supplier,
                    header,
                    relays,
                    reply,
                } => {
                    let result = (|| {
                        let mut info = current(&prefix, &changed).unwrap_or_else(|| SessionInfo {
                            supplier_operator_address: supplier.clone(),
                            session_header: Some(header.clone()),
                            state: SessionState::Open as i32,
                            ..Default::default()
                        });
                        // A session's header is fixed by its first batch; a batch that
                        // disagrees comes from a confused caller and would mix sessions.
                        if info.session_header.as_ref() != Some(&header) {
                            return Err(StoreError::Invalid(format!(
                                "session header of {} differs from the one stored for it",
                                header.session_id
                            )));
                        }
                        if info.state != SessionState::Open as i32 {
                            return Err(StoreError::NotOpen(
                                header.session_id.clone(),
                                info.state(),
                            ));
                        }
                        let keys: Vec<Vec<u8>> = relays
                            .iter()
                            .map(|r| {
                                let mut k = prefix.clone();
                                k.extend_from_slice(&smst::path_of(&r.relay_hash));
                                k
                            })
                            .collect();
                        let refs: Vec<&[u8]> = keys.iter().map(Vec::as_slice).collect();
                        let exists = self.backend.leaves_exist(&refs)?;
                        let (mut accepted, mut duplicates) = (0u64, 0u64);
                        for ((key, relay), stored) in keys.into_iter().zip(&relays).zip(exists) {
                            if stored || !added.insert(key.clone()) {
                                duplicates += 1;
                                continue;
                            }
                            accepted += 1;
                            info.leaves += 1;
                            info.compute_units =
                                info.compute_units.wrapping_add(relay.compute_units);
                            ws.leaves.push((key, encode_leaf(relay)));
                        }
                        let leaves = info.leaves;
                        changed.insert(prefix, info);
                        Ok((accepted, duplicates, leaves))
                    })();
                    if let Ok((a, d, _)) = &result {
                        accepted_total += a;
                        duplicate_total += d;
                    }
                    replies.push(Reply::Append(reply, result));
                }
                Op::SetState {
                    prefix,
                    change,
                    reply,
                } => {
                    let result = (|| {
                        let mut info =
                            current(&prefix, &changed).ok_or_else(|| unknown(&prefix))?;
                        apply_change(&mut info, change)?;
                        changed.insert(prefix, info.clone());
                        Ok(info)
                    })();
                    replies.push(Reply::State(reply, result));
                }
            }
        }
        for (k, info) in &changed {
            ws.sessions.push((k.clone(), Some(info.encode_to_vec())));
        }
        if accepted_total > 0 {
            // The writer is the only one adding to this counter.
            let total = self.metrics.relays_acknowledged.get() + accepted_total;
            ws.sessions.push((
                ACKNOWLEDGED_KEY.to_vec(),
                Some(total.to_be_bytes().to_vec()),
            ));
        }
        let committed = if ws.is_empty() {
            Ok(())
        } else {
            self.backend.write(ws)
        };
        match committed {
            Ok(()) => {
                let mut g = self.sessions.write().unwrap_or_else(|p| p.into_inner());
                g.extend(changed);
                self.metrics.set_sessions(g.values());
                drop(g);
                self.metrics.relays_acknowledged.inc_by(accepted_total);
                self.metrics.observe_commit(
                    t.elapsed(),
                    accepted_total,
                    duplicate_total,
                    replies.len(),
                );
                for r in replies {
                    match r {
                        Reply::Append(tx, res) => drop(tx.send(res)),
                        Reply::State(tx, res) => drop(tx.send(res)),
                    }
                }
            }
            Err(e) => {
                tracing::error!(error = %e, "store write failed; the group is refused");
                self.metrics.write_errors.inc();
                self.failure.send_if_modified(|f| {
                    let first = f.is_none();
                    if first {
                        *f = Some(e.0.clone());
                    }
                    first
                });
                for r in replies {
                    match r {
                        Reply::Append(tx, _) => {
                            drop(tx.send(Err(StoreError::Backend(BackendError(e.0.clone())))))
                        }
                        Reply::State(tx, _) => {
                            drop(tx.send(Err(StoreError::Backend(BackendError(e.0.clone())))))
                        }
                    }
                }
            }
        }
    }
}

fn unknown(prefix: &[u8]) -> StoreError {
    // prefix = len ‖ supplier ‖ len ‖ session id
    let s = prefix[0] as usize;
    let supplier = String::from_utf8_lossy(&prefix[1..1 + s]).into_owned();
    let session_id = String::from_utf8_lossy(&prefix[2 + s..]).into_owned();
    StoreError::UnknownSession {
        supplier,
        session_id,
    }
}

/// The session lifecycle: open → freezing → frozen → claimed → proven → settled, with
/// expired reachable from any state.
fn apply_change(info: &mut SessionInfo, change: StateChange) -> Result<(), StoreError> {
    let id = info
        .session_header
        .as_ref()
        .map(|h| h.session_id.clone())
        .unwrap_or_default();
    match change {
        StateChange::BeginFreeze => {
            if info.state == SessionState::Open as i32 {
                info.state = SessionState::Freezing as i32;
            }
        }
        StateChange::FinishFreeze(root) => {
            // A root is written once; later freezes return it unchanged.
            if info.root.is_empty() {
                if info.state != SessionState::Freezing as i32 {
                    return Err(StoreError::Invalid(format!(
                        "session {id} is not being frozen"
                    )));
                }
                info.root = root.as_bytes().to_vec();
                info.state = SessionState::Frozen as i32;
            }
        }
        StateChange::Mark(state, tx) => {
            let allowed = match state {
                SessionState::Claimed => info.state >= SessionState::Frozen as i32,
                SessionState::Proven => info.state >= SessionState::Claimed as i32,
                SessionState::Settled => info.state >= SessionState::Claimed as i32,
                SessionState::Expired => true,
                _ => false,
            };
            if !allowed {
                return Err(StoreError::Invalid(format!(
                    "session {id} cannot go from {:?} to {state:?}",
                    info.state()
                )));
            }
            match state {
                SessionState::Claimed if !tx.is_empty() => info.claim_tx_hash = tx,
                SessionState::Proven if !tx.is_empty() => info.proof_tx_hash = tx,
                _ => {}
            }
            info.state = info.state.max(state as i32);
            if state == SessionState::Expired {
                info.state = SessionState::Expired as i32;
            }
        }
    }
    Ok(())
}

impl<B: Backend> Drop for Store<B> {
    /// Stops the writer and the compactor and waits for them, so the database is closed
    /// (and can be reopened) once the store is dropped.
    fn drop(&mut self) {
        self.ops.take();
        self.compactor.tx.take();
        if let Some(w) = self.writer.take() {
            let _ = w.join();
        }
        if let Some(c) = self.compactor.thread.take() {
            let _ = c.join();
        }
    }
}

/// Reclaims the space of deleted sessions in the background: deletions arriving together
/// (a claim job deleting every settled session) are compacted as one key range once they
/// stop arriving for a moment, instead of one compaction each.
struct Compactor {
    tx: Option<std::sync::mpsc::Sender<(Vec<u8>, Vec<u8>)>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

/// How long deletions must pause before their range is compacted.
const COMPACTION_QUIET: std::time::Duration = std::time::Duration::from_millis(500);

impl Compactor {
    fn start<B: Backend>(backend: Arc<B>, metrics: Arc<Metrics>) -> Result<Self, StoreError> {
        let (tx, rx) = std::sync::mpsc::channel::<(Vec<u8>, Vec<u8>)>();
        let thread = std::thread::Builder::new()
            .name("store-compactor".into())
            .spawn(move || {
                while let Ok((mut start, mut end)) = rx.recv() {
                    loop {
                        match rx.recv_timeout(COMPACTION_QUIET) {
                            Ok((s, e)) => {
                                start = start.min(s);
                                end = end.max(e);
                            }
                            Err(std::sync::mpsc::RecvTimeoutError::Timeout) => break,
                            Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => break,
                        }
                    }
                    let t = Instant::now();
                    backend.compact_range(&start, &end);
                    metrics.compactions.inc();
                    tracing::debug!(took = ?t.elapsed(), "compacted deleted sessions");
                }
            })
            .map_err(|e| BackendError(format!("cannot start the compactor: {e}")))?;
        Ok(Self {
            tx: Some(tx),
            thread: Some(thread),
        })
    }

    fn request(&self, prefix: &[u8]) {
        if let Some(tx) = &self.tx {
            let _ = tx.send((prefix.to_vec(), crate::backend::upper_bound(prefix)));
        }
    }
}

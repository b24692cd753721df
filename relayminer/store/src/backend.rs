//! Where the store's bytes live. [`Backend`] is the storage trait; `RocksBackend`
//! (`rocks.rs`, feature `rocksdb`, on by default) is the production implementation and
//! [`MemoryBackend`] a small one for tests and fuzzing. Nothing outside these two modules
//! knows about RocksDB.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

/// A storage failure (disk, corruption, or a closed database).
#[derive(Debug, thiserror::Error)]
#[error("storage: {0}")]
pub struct BackendError(pub String);

/// One atomic, durable write: leaves to put, session records to put or delete.
#[derive(Debug, Default)]
pub struct WriteSet {
    pub leaves: Vec<(Vec<u8>, Vec<u8>)>,
    pub sessions: Vec<(Vec<u8>, Option<Vec<u8>>)>,
}

impl WriteSet {
    pub fn is_empty(&self) -> bool {
        self.leaves.is_empty() && self.sessions.is_empty()
    }
}

/// A visitor of leaves: called with each key and value.
pub type LeafVisitor<'a> = dyn FnMut(&[u8], &[u8]) -> Result<(), BackendError> + 'a;
/// Key-value pairs.
pub type Records = Vec<(Vec<u8>, Vec<u8>)>;

/// The storage trait.
pub trait Backend: Send + Sync + 'static {
    /// Which of `keys` already hold a leaf.
    fn leaves_exist(&self, keys: &[&[u8]]) -> Result<Vec<bool>, BackendError>;
    /// Applies `ws` atomically; when this returns, it survives a crash (under the
    /// durability policy the backend was opened with).
    fn write(&self, ws: WriteSet) -> Result<(), BackendError>;
    /// Visits every leaf whose key starts with `prefix`, in ascending key order.
    fn scan_leaves(&self, prefix: &[u8], f: &mut LeafVisitor<'_>) -> Result<(), BackendError>;
    /// Every session record.
    fn sessions(&self) -> Result<Records, BackendError>;
    /// Deletes every leaf under `prefix` and the session record `prefix` (durably).
    fn delete_prefix(&self, prefix: &[u8]) -> Result<(), BackendError>;
    /// Reclaims the space of deleted data in the key range `[start, end)` of the leaves.
    fn compact_range(&self, start: &[u8], end: &[u8]);
    /// Bytes on disk (live SST and WAL files).
    fn disk_bytes(&self) -> u64;
    /// Backend statistics worth exporting, as (name, value).
    fn stats(&self) -> Vec<(&'static str, u64)>;
}

/// Whether every acknowledged write is fsync'ed before the acknowledgement.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Durability {
    /// fsync the write-ahead log before acknowledging (the default: nothing acknowledged
    /// is lost, even on power failure).
    Fsync,
    /// Leave the WAL in the OS page cache: survives a process crash, not a power failure.
    OsBuffered,
}

/// One past every key that starts with `prefix` (leaf keys are `prefix ‖ 32 bytes`).
pub fn upper_bound(prefix: &[u8]) -> Vec<u8> {
    let mut up = prefix.to_vec();
    up.extend_from_slice(&[0xff; 33]);
    up
}

/// Leaves and session records.
type MemoryTables = (BTreeMap<Vec<u8>, Vec<u8>>, BTreeMap<Vec<u8>, Vec<u8>>);

/// An in-memory backend for tests of the layers above.
#[derive(Debug, Default, Clone)]
pub struct MemoryBackend {
    inner: Arc<Mutex<MemoryTables>>,
}

impl MemoryBackend {
    fn lock(&self) -> std::sync::MutexGuard<'_, MemoryTables> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl Backend for MemoryBackend {
    fn leaves_exist(&self, keys: &[&[u8]]) -> Result<Vec<bool>, BackendError> {
        let g = self.lock();
        Ok(keys.iter().map(|k| g.0.contains_key(*k)).collect())
    }

    fn write(&self, ws: WriteSet) -> Result<(), BackendError> {
        let mut g = self.lock();
        g.0.extend(ws.leaves);
        for (k, v) in ws.sessions {
            match v {
                Some(v) => g.1.insert(k, v),
                None => g.1.remove(&k),
            };
        }
        Ok(())
    }

    fn scan_leaves(&self, prefix: &[u8], f: &mut LeafVisitor<'_>) -> Result<(), BackendError> {
        let g = self.lock();
        for (k, v) in g.0.range(prefix.to_vec()..upper_bound(prefix)) {
            f(k, v)?;
        }
        Ok(())
    }

    fn sessions(&self) -> Result<Records, BackendError> {
        Ok(self
            .lock()
            .1
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect())
    }

    fn delete_prefix(&self, prefix: &[u8]) -> Result<(), BackendError> {
        let mut g = self.lock();
        let doomed: Vec<Vec<u8>> =
            g.0.range(prefix.to_vec()..upper_bound(prefix))
                .map(|(k, _)| k.clone())
                .collect();
        doomed.iter().for_each(|k| {
            g.0.remove(k);
        });
        g.1.remove(prefix);
        Ok(())
    }

    fn compact_range(&self, _start: &[u8], _end: &[u8]) {}

    fn disk_bytes(&self) -> u64 {
        0
    }

    fn stats(&self) -> Vec<(&'static str, u64)> {
        Vec::new()
    }
}

//! `relayminer store`: the supplier's per-session SMST store.
//!
//! One store per supplier identity owns every session trie in one RocksDB database and is
//! their only writer. Leaves are keyed `(supplier, session, leaf path)` so that a session
//! is one contiguous sorted range; roots and closest proofs are computed by streaming over
//! that range (`lode_kernels::smst::SortedBuilder`), in memory independent of the session
//! size. Appends from many callers are grouped by one writer into one durable write.

pub mod admin;
pub mod backend;
pub mod engine;
pub mod metrics;
#[cfg(feature = "rocksdb")]
pub mod rocks;
#[cfg(feature = "rocksdb")]
pub mod server;
pub mod service;

pub use backend::{Backend, Durability, MemoryBackend};
pub use engine::{Store, StoreError, session_prefix};
#[cfg(feature = "rocksdb")]
pub use rocks::RocksBackend;
#[cfg(feature = "rocksdb")]
pub use server::{ServerConfig, run};

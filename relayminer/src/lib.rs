//! lode's relayminer as a library: `serve` (the relay proxy) and `lifecycle` (the claim
//! and prove passes and their scheduler) and `run` (both plus the store, in one process).
//! The `relayminer` binary adds the command line.

pub mod fetch;
pub mod lifecycle;
#[cfg(feature = "rocksdb")]
pub mod run;
pub mod serve;
pub mod stake;
pub mod weights;

//! Pure protocol compute for lode.
//!
//! Everything here is a function of its inputs: no I/O, no async, no clock. The byte
//! formats follow poktroll v0.1.35 and pokt-network/smt v0.14.1 exactly; the shared
//! vectors (produced by the Go code) are the judge.
//!
//! - [`smst`]: the sparse Merkle sum trie, its proofs, compaction and verification, with
//!   an in-memory trie and a streaming builder over leaves sorted by path.
//! - [`gob`]: the subset of Go's `encoding/gob` that the proof types travel in.
//! - [`prefix`]: BLAKE3 prefix keys of inference requests, what the relay tier routes on.

#![forbid(unsafe_code)]

pub mod claim;
pub mod crypto;
pub mod gob;
pub mod gorand;
pub mod hex;
pub mod mining;
pub mod prefix;
pub mod proto;
pub mod relay;
pub mod session;
pub mod smst;

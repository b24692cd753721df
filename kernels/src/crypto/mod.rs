//! secp256k1 keys and the two signature schemes of the relay protocol (spec `poktroll.md`
//! §2.4–2.5): the applications' linkable ring signatures over requests, and the
//! suppliers' Cosmos ECDSA signatures over responses.

pub mod fixed;
pub mod key;
pub mod ring;
pub mod supplier;

pub use key::{Address, PublicKey, SecretKey};

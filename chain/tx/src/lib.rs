//! Signing and sending on a POKT chain, apart from the read-only client
//! ([`lode_chain`]) so that what only reads the chain (the operator) links no key
//! decryption and no transaction signing:
//!
//! - [`keys`]: supplier and gateway key files as Secrets hold them (hex, or the
//!   passphrase-encrypted armor `pocketd keys export` prints);
//! - [`send`]: a transaction from account lookup through gas simulation, fee, signature
//!   and broadcast to inclusion ([`TxSender`]), re-broadcasting lost ones;
//! - [`stake`]: the `MsgStakeSupplier` for a wanted [`lode_contracts::stake::StakeSpec`],
//!   and `MsgUnstakeSupplier`.

pub mod keys;
pub mod send;
pub mod stake;

pub use send::{
    BroadcastResult, DEFAULT_MAX_FEE_UPOKT, SendConfig, SendError, Sent, TxSender,
    broadcast_tx_sync, signing_chain_id,
};

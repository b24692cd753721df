//! Sessions: ids, supplier selection weights, proof paths and the block-height windows
//! of a session's life (spec `poktroll.md` §5, vectors `session/`). All arithmetic is
//! Go's int64 with truncating division.

use sha2::{Digest as _, Sha256};
use sha3::{Digest as _, Sha3_256};

/// The shared-module parameters that shape sessions and their windows.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SharedParams {
    pub num_blocks_per_session: i64,
    pub grace_period_end_offset_blocks: i64,
    pub claim_window_open_offset_blocks: i64,
    pub claim_window_close_offset_blocks: i64,
    pub proof_window_open_offset_blocks: i64,
    pub proof_window_close_offset_blocks: i64,
    /// 0 means unset: the legacy grid anchored at block 1.
    pub session_grid_anchor_height: i64,
    pub session_number_at_anchor: i64,
}

impl Default for SharedParams {
    /// poktroll's code defaults.
    fn default() -> Self {
        Self {
            num_blocks_per_session: 10,
            grace_period_end_offset_blocks: 1,
            claim_window_open_offset_blocks: 1,
            claim_window_close_offset_blocks: 4,
            proof_window_open_offset_blocks: 0,
            proof_window_close_offset_blocks: 4,
            session_grid_anchor_height: 1,
            session_number_at_anchor: 1,
        }
    }
}

/// Every height of one session's life, computed from a height inside it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SessionWindows {
    pub session_start_height: i64,
    pub session_end_height: i64,
    pub session_number: i64,
    pub grace_period_end_height: i64,
    pub claim_window_open_height: i64,
    pub claim_window_close_height: i64,
    pub proof_window_open_height: i64,
    pub proof_window_close_height: i64,
    pub earliest_supplier_claim_commit_height: i64,
    pub earliest_supplier_proof_commit_height: i64,
    pub next_session_start_height: i64,
    pub settlement_session_end_height: i64,
}

impl SharedParams {
    /// The grid's anchor and the session number there, with poktroll's fallbacks.
    fn anchor(&self, h: i64) -> (i64, i64) {
        let (anchor, number) = (
            self.session_grid_anchor_height,
            self.session_number_at_anchor,
        );
        if anchor <= 0 || anchor > h {
            (1, 1)
        } else if number <= 0 {
            (anchor, 1)
        } else {
            (anchor, number)
        }
    }

    /// First block of the session containing `h` (0 for `h ≤ 0`).
    pub fn session_start_height(&self, h: i64) -> i64 {
        if h <= 0 {
            return 0;
        }
        let (anchor, _) = self.anchor(h);
        let n = self.num_blocks_per_session;
        anchor + ((h - anchor) / n) * n
    }

    /// Last block of the session containing `h` (0 for `h ≤ 0`).
    pub fn session_end_height(&self, h: i64) -> i64 {
        if h <= 0 {
            return 0;
        }
        self.session_start_height(h) + self.num_blocks_per_session - 1
    }

    /// The session number of `h` (0 for `h ≤ 0`).
    pub fn session_number(&self, h: i64) -> i64 {
        if h <= 0 {
            return 0;
        }
        let (anchor, number) = self.anchor(h);
        number + (h - anchor) / self.num_blocks_per_session
    }

    /// Blocks from a session's end to its proof window's close.
    pub fn session_end_to_proof_window_close_blocks(&self) -> i64 {
        self.claim_window_open_offset_blocks
            + self.claim_window_close_offset_blocks
            + self.proof_window_open_offset_blocks
            + self.proof_window_close_offset_blocks
    }

    /// Sessions that can be waiting for claims or proofs at once:
    /// ⌈end-to-proof-close / blocks per session⌉.
    pub fn num_pending_sessions(&self) -> i64 {
        let blocks = self.session_end_to_proof_window_close_blocks();
        let n = self.num_blocks_per_session;
        (blocks + n - 1) / n
    }

    /// All windows of the session containing `h`. poktroll evaluates these with the
    /// params in effect at the session's end height.
    pub fn windows(&self, h: i64) -> SessionWindows {
        let start = self.session_start_height(h);
        let end = self.session_end_height(h);
        let claim_open = end + self.claim_window_open_offset_blocks + 1;
        let claim_close = claim_open + self.claim_window_close_offset_blocks;
        let proof_open = claim_close + self.proof_window_open_offset_blocks;
        let proof_close = proof_open + self.proof_window_close_offset_blocks;
        SessionWindows {
            session_start_height: start,
            session_end_height: end,
            session_number: self.session_number(h),
            grace_period_end_height: end.saturating_add(self.grace_period_end_offset_blocks),
            claim_window_open_height: claim_open,
            claim_window_close_height: claim_close,
            proof_window_open_height: proof_open,
            proof_window_close_height: proof_close,
            // The per-supplier randomized offsets are disabled upstream.
            earliest_supplier_claim_commit_height: claim_open,
            earliest_supplier_proof_commit_height: proof_open,
            next_session_start_height: end + 1,
            settlement_session_end_height: self.session_end_to_proof_window_close_blocks()
                + end
                + 1,
        }
    }

    pub fn is_session_start_height(&self, h: i64) -> bool {
        h == self.session_start_height(h)
    }

    pub fn is_session_end_height(&self, h: i64) -> bool {
        h == self.session_end_height(h)
    }
}

/// The bytes a session id is the hash of:
/// `blockHash ‖ "." ‖ serviceId ‖ "." ‖ appAddress ‖ "." ‖ le64(start)`.
pub fn session_id_preimage(
    block_hash: &[u8],
    service_id: &str,
    application: &str,
    start_height: i64,
) -> Vec<u8> {
    let mut p = Vec::with_capacity(block_hash.len() + service_id.len() + application.len() + 11);
    p.extend_from_slice(block_hash);
    p.push(b'.');
    p.extend_from_slice(service_id.as_bytes());
    p.push(b'.');
    p.extend_from_slice(application.as_bytes());
    p.push(b'.');
    p.extend_from_slice(&(start_height as u64).to_le_bytes());
    p
}

/// The session id: lowercase hex of SHA3-256 of [`session_id_preimage`]. `block_hash` is
/// the hash of the block at the session start height (empty when none is stored).
pub fn session_id(
    block_hash: &[u8],
    service_id: &str,
    application: &str,
    start_height: i64,
) -> String {
    let h = Sha3_256::digest(session_id_preimage(
        block_hash,
        service_id,
        application,
        start_height,
    ));
    crate::hex::encode(&h)
}

/// A supplier's selection weight in a session: the first 8 bytes of
/// SHA3-256(preimage ‖ "." ‖ operator address) as a signed big-endian int64.
pub fn supplier_weight(session_preimage: &[u8], operator_address: &str) -> i64 {
    let mut h = Sha3_256::new();
    h.update(session_preimage);
    h.update(b".");
    h.update(operator_address.as_bytes());
    let d = h.finalize();
    i64::from_be_bytes(d[..8].try_into().expect("8 bytes"))
}

/// Candidates in selection order: ascending weight, ties by address bytes.
pub fn suppliers_by_weight<'a>(
    session_preimage: &[u8],
    operators: impl IntoIterator<Item = &'a str>,
) -> Vec<&'a str> {
    let mut v: Vec<(i64, &str)> = operators
        .into_iter()
        .map(|a| (supplier_weight(session_preimage, a), a))
        .collect();
    v.sort();
    v.into_iter().map(|(_, a)| a).collect()
}

/// The path a session's proof must be closest to:
/// SHA-256(seed block hash ‖ session id as ASCII). The seed block is the one at
/// proof-window-open − 1.
pub fn proof_path(seed_block_hash: &[u8], session_id: &str) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update(seed_block_hash);
    h.update(session_id.as_bytes());
    h.finalize().into()
}

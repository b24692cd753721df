//! Node digests of the sum trie (spec `smst.md` §2).
//!
//! A digest is `SHA-256(encoding) ‖ sum(8, BE) ‖ count(8, BE)`; the sum and count are
//! always the last 16 bytes of the encoding, so every digest can be computed from an
//! encoding alone ([`digest_of_encoding`]). The empty subtree is [`EMPTY`] and is never
//! hashed.

use sha2::{Digest as _, Sha256};

/// Length of a SHA-256 hash and of a trie path.
pub const PATH_LEN: usize = 32;
/// Length of a node digest: hash ‖ sum ‖ count.
pub const DIGEST_LEN: usize = 48;
/// Length of the sum and count suffix of every encoding and digest.
pub const SUM_COUNT_LEN: usize = 16;
/// Bits in a path: the maximum depth of the trie.
pub const MAX_DEPTH: usize = PATH_LEN * 8;

/// A 48-byte node digest.
pub type Digest = [u8; DIGEST_LEN];
/// A 32-byte trie path (SHA-256 of a key).
pub type Path = [u8; PATH_LEN];

/// The digest of an empty subtree ("placeholder"): 48 zero bytes.
pub const EMPTY: Digest = [0; DIGEST_LEN];

pub(crate) const LEAF_PREFIX: u8 = 0x00;
pub(crate) const INNER_PREFIX: u8 = 0x01;
pub(crate) const EXT_PREFIX: u8 = 0x02;

/// Length of an inner-node encoding.
pub(crate) const INNER_LEN: usize = 1 + 2 * DIGEST_LEN + SUM_COUNT_LEN;
/// Length of an extension-node encoding.
pub(crate) const EXT_LEN: usize = 3 + PATH_LEN + DIGEST_LEN + SUM_COUNT_LEN;

/// SHA-256 of `data`.
pub fn sha256(data: &[u8]) -> [u8; 32] {
    Sha256::digest(data).into()
}

/// The trie path of a key: SHA-256 of the key.
pub fn path_of(key: &[u8]) -> Path {
    sha256(key)
}

/// Bit `i` of `data`, most significant bit of byte 0 first. Panics when out of range;
/// callers on untrusted input check lengths first.
#[inline]
pub fn bit(data: &[u8], i: usize) -> u8 {
    (data[i / 8] >> (7 - i % 8)) & 1
}

#[inline]
pub(crate) fn flip_bit(data: &mut [u8], i: usize) {
    data[i / 8] ^= 1 << (7 - i % 8);
}

/// Index of the first bit at or after `from` where `a` and `b` differ, if any.
pub(crate) fn first_diff_bit(a: &Path, b: &Path, from: usize) -> Option<usize> {
    let mut byte = from / 8;
    if byte >= PATH_LEN {
        return None;
    }
    // Mask off the bits before `from` in the first byte compared.
    let mut x = (a[byte] ^ b[byte]) & (0xff >> (from % 8));
    loop {
        if x != 0 {
            return Some(byte * 8 + x.leading_zeros() as usize);
        }
        byte += 1;
        if byte == PATH_LEN {
            return None;
        }
        x = a[byte] ^ b[byte];
    }
}

/// Reads the big-endian u64 at `data[at..at + 8]`.
#[inline]
pub(crate) fn be_u64(data: &[u8], at: usize) -> u64 {
    let mut b = [0u8; 8];
    b.copy_from_slice(&data[at..at + 8]);
    u64::from_be_bytes(b)
}

/// Sum encoded in a digest or encoding (bytes −16..−8). Needs `len ≥ 16`.
#[inline]
pub fn sum_of(d: &[u8]) -> u64 {
    be_u64(d, d.len() - SUM_COUNT_LEN)
}

/// Count encoded in a digest or encoding (last 8 bytes). Needs `len ≥ 16`.
#[inline]
pub fn count_of(d: &[u8]) -> u64 {
    be_u64(d, d.len() - 8)
}

/// `H(encoding) ‖ last 16 bytes of encoding`. `None` when the encoding is shorter than 16
/// bytes (Go panics there; verifiers reject).
pub fn digest_of_encoding(enc: &[u8]) -> Option<Digest> {
    if enc.len() < SUM_COUNT_LEN {
        return None;
    }
    let mut d = [0u8; DIGEST_LEN];
    d[..32].copy_from_slice(&Sha256::digest(enc));
    d[32..].copy_from_slice(&enc[enc.len() - SUM_COUNT_LEN..]);
    Some(d)
}

/// A leaf's stored value ("value hash" in Go): `value ‖ BE8(weight) ‖ BE8(1)`.
pub fn leaf_value_hash(value: &[u8], weight: u64) -> Vec<u8> {
    let mut v = Vec::with_capacity(value.len() + SUM_COUNT_LEN);
    v.extend_from_slice(value);
    v.extend_from_slice(&weight.to_be_bytes());
    v.extend_from_slice(&1u64.to_be_bytes());
    v
}

/// Digest of the leaf `00 ‖ path ‖ value_hash`, where `value_hash` already carries the
/// trailing sum and count (at least 16 bytes).
pub fn leaf_digest(path: &[u8], value_hash: &[u8]) -> Digest {
    debug_assert!(value_hash.len() >= SUM_COUNT_LEN);
    let mut h = Sha256::new();
    h.update([LEAF_PREFIX]);
    h.update(path);
    h.update(value_hash);
    let mut d = [0u8; DIGEST_LEN];
    d[..32].copy_from_slice(&h.finalize());
    d[32..].copy_from_slice(&value_hash[value_hash.len() - SUM_COUNT_LEN..]);
    d
}

/// Digest of a leaf from its raw value and weight, without building the value hash.
pub fn leaf_digest_parts(path: &[u8], value: &[u8], weight: u64) -> Digest {
    let mut h = Sha256::new();
    h.update([LEAF_PREFIX]);
    h.update(path);
    h.update(value);
    h.update(weight.to_be_bytes());
    h.update(1u64.to_be_bytes());
    let mut d = [0u8; DIGEST_LEN];
    d[..32].copy_from_slice(&h.finalize());
    d[32..40].copy_from_slice(&weight.to_be_bytes());
    d[40..].copy_from_slice(&1u64.to_be_bytes());
    d
}

/// The 113-byte encoding of an inner node; sums and counts add modulo 2^64.
pub fn inner_encoding(left: &Digest, right: &Digest) -> [u8; INNER_LEN] {
    let mut e = [0u8; INNER_LEN];
    e[0] = INNER_PREFIX;
    e[1..49].copy_from_slice(left);
    e[49..97].copy_from_slice(right);
    let sum = sum_of(left).wrapping_add(sum_of(right));
    let count = count_of(left).wrapping_add(count_of(right));
    e[97..105].copy_from_slice(&sum.to_be_bytes());
    e[105..].copy_from_slice(&count.to_be_bytes());
    e
}

/// SHA-256 initial state.
const SHA256_IV: [u32; 8] = [
    0x6a09e667, 0xbb67ae85, 0x3c6ef372, 0xa54ff53a, 0x510e527f, 0x9b05688c, 0x1f83d9ab, 0x5be0cd19,
];

/// Digest of the inner node with these children.
///
/// This is the hot path of every root and proof: the 113-byte encoding is laid out
/// directly in its two padded SHA-256 blocks and compressed, with no hasher state or
/// buffering in between.
#[inline]
pub fn inner_digest(left: &Digest, right: &Digest) -> Digest {
    let mut blocks = [[0u8; 64]; 2];
    {
        let flat = blocks.as_flattened_mut();
        flat[..INNER_LEN].copy_from_slice(&inner_encoding(left, right));
        flat[INNER_LEN] = 0x80;
        flat[120..].copy_from_slice(&((INNER_LEN as u64) * 8).to_be_bytes());
    }
    let mut state = SHA256_IV;
    sha2::block_api::compress256(&mut state, &blocks);
    let mut d = [0u8; DIGEST_LEN];
    for (chunk, word) in d[..32].chunks_exact_mut(4).zip(state) {
        chunk.copy_from_slice(&word.to_be_bytes());
    }
    d[32..].copy_from_slice(&blocks.as_flattened()[97..INNER_LEN]);
    d
}

/// Lifts the digest of a subtree rooted at depth `end` to depth `start` through a chain
/// of inner nodes whose other child is empty: the digest of an extension node over bits
/// `[start, end)` of `path`. Costs `end − start` hashes.
pub fn wrap(mut child: Digest, path: &[u8], start: usize, end: usize) -> Digest {
    for i in (start..end).rev() {
        child = if bit(path, i) == 0 {
            inner_digest(&child, &EMPTY)
        } else {
            inner_digest(&EMPTY, &child)
        };
    }
    child
}

/// The 99-byte encoding of an extension node over `[start, end)` with stored `path`.
pub fn ext_encoding(start: u8, end: u8, path: &Path, child: &Digest) -> [u8; EXT_LEN] {
    let mut e = [0u8; EXT_LEN];
    e[0] = EXT_PREFIX;
    e[1] = start;
    e[2] = end;
    e[3..35].copy_from_slice(path);
    e[35..83].copy_from_slice(child);
    e[83..].copy_from_slice(&child[32..]);
    e
}

/// Digest of an inner node whose children may have any length ≥ 16 (only reachable from
/// malformed extension `SiblingData`, where Go hashes whatever bytes it was given).
fn inner_digest_slices(left: &[u8], right: &[u8]) -> Option<Digest> {
    if left.len() < SUM_COUNT_LEN || right.len() < SUM_COUNT_LEN {
        return None;
    }
    let sum = sum_of(left).wrapping_add(sum_of(right));
    let count = count_of(left).wrapping_add(count_of(right));
    let mut h = Sha256::new();
    h.update([INNER_PREFIX]);
    h.update(left);
    h.update(right);
    h.update(sum.to_be_bytes());
    h.update(count.to_be_bytes());
    let mut d = [0u8; DIGEST_LEN];
    d[..32].copy_from_slice(&h.finalize());
    d[32..40].copy_from_slice(&sum.to_be_bytes());
    d[40..].copy_from_slice(&count.to_be_bytes());
    Some(d)
}

/// The digest a verifier computes from serialized `SiblingData` (Go's
/// `hashSerialization`): an extension encoding is expanded into its chain, anything else
/// is hashed as-is. `None` where Go would panic (data too short).
pub fn hash_serialization(data: &[u8]) -> Option<Vec<u8>> {
    if data.first() == Some(&EXT_PREFIX) {
        // 02 ‖ start ‖ end ‖ path(32) ‖ child digest ‖ sum ‖ count
        if data.len() < 3 + PATH_LEN + SUM_COUNT_LEN {
            return None;
        }
        let (start, end) = (data[1] as usize, data[2] as usize);
        let path = &data[3..3 + PATH_LEN];
        let child = &data[3 + PATH_LEN..data.len() - SUM_COUNT_LEN];
        if start >= end {
            // No chain: the digest is the child's stored digest, whatever its length.
            return Some(child.to_vec());
        }
        let mut cur: Digest;
        // The first wrap sees the child as Go stored it (possibly not 48 bytes).
        let i = end - 1;
        cur = if bit(path, i) == 0 {
            inner_digest_slices(child, &EMPTY)?
        } else {
            inner_digest_slices(&EMPTY, child)?
        };
        cur = wrap(cur, path, start, i);
        Some(cur.to_vec())
    } else {
        digest_of_encoding(data).map(|d| d.to_vec())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_diff_bit_finds_the_first_difference_from_an_offset() {
        let a = [0u8; 32];
        let mut b = [0u8; 32];
        b[3] = 0b0001_0000;
        b[0] = 0b1000_0000;
        assert_eq!(first_diff_bit(&a, &b, 0), Some(0));
        assert_eq!(first_diff_bit(&a, &b, 1), Some(27));
        assert_eq!(first_diff_bit(&a, &b, 28), None);
        assert_eq!(first_diff_bit(&a, &a, 0), None);
    }

    #[test]
    fn leaf_digest_forms_agree() {
        let path = sha256(b"k");
        let vh = leaf_value_hash(b"hello", 7);
        assert_eq!(
            leaf_digest(&path, &vh),
            leaf_digest_parts(&path, b"hello", 7)
        );
        let mut enc = vec![0u8];
        enc.extend_from_slice(&path);
        enc.extend_from_slice(&vh);
        assert_eq!(Some(leaf_digest(&path, &vh)), digest_of_encoding(&enc));
    }

    #[test]
    fn inner_digest_is_sha256_of_the_encoding() {
        let (l, r) = (
            leaf_digest_parts(&sha256(b"a"), b"x", 3),
            leaf_digest_parts(&sha256(b"b"), b"y", u64::MAX),
        );
        let enc = inner_encoding(&l, &r);
        assert_eq!(Some(inner_digest(&l, &r)), digest_of_encoding(&enc));
    }

    #[test]
    fn extension_serialization_hashes_to_its_chain() {
        let path = sha256(b"p");
        let child = inner_digest(&leaf_digest_parts(&path, b"a", 1), &EMPTY);
        let enc = ext_encoding(3, 9, &path, &child);
        assert_eq!(
            hash_serialization(&enc),
            Some(wrap(child, &path, 3, 9).to_vec())
        );
    }
}

//! The supplier's response signature: a Cosmos SDK secp256k1 signature (spec
//! `poktroll.md` §2.5, vectors `supplier_sig/`).
//!
//! `Sign(msg)` hashes `msg` with SHA-256 and signs the digest with RFC 6979 ECDSA,
//! low-S, 64 bytes `r ‖ s`. poktroll passes the 32-byte signable hash of the response as
//! `msg`, so the curve sees SHA-256 twice.

use k256::ecdsa::signature::hazmat::{PrehashSigner, PrehashVerifier};
use k256::ecdsa::{Signature, VerifyingKey};
use k256::elliptic_curve::ops::{MulByGenerator, Reduce};
use k256::elliptic_curve::point::{AffineCoordinates, BatchNormalize};
use k256::elliptic_curve::scalar::IsHigh;
use k256::{NonZeroScalar, ProjectivePoint, Scalar, U256};
use rand_core::CryptoRngCore;
use sha2::{Digest, Sha256};

use super::key::{PublicKey, SecretKey};

/// Cosmos `PrivKey.Sign(msg)`: deterministic, low-S, 64 bytes.
pub fn sign(key: &SecretKey, msg: &[u8]) -> [u8; 64] {
    let digest = Sha256::digest(msg);
    let sig: Signature = key
        .0
        .sign_prehash(&digest)
        .expect("RFC 6979 signing of a 32-byte digest cannot fail");
    let sig = sig.normalize_s().unwrap_or(sig);
    sig.to_bytes().into()
}

/// The message-independent half of one ECDSA signature: for a random nonce `k`, the
/// signature's `r` (the x of `k·G`, mod N) and `k⁻¹`. Made ahead of time (a pool refilled
/// in the background) it takes the scalar multiplication and the inversion off the
/// signing path, leaving two scalar multiplications. It does not depend on the key.
///
/// Deliberately not `Clone`: a nonce used for two messages reveals the key.
pub struct Nonce {
    r: Scalar,
    k_inv: Scalar,
}

impl std::fmt::Debug for Nonce {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Nonce(..)")
    }
}

/// `k⁻¹` with a signature's `r` gives the key away, so a nonce's memory is wiped when it
/// goes: used, or left in a pool that is dropped.
impl zeroize::Zeroize for Nonce {
    fn zeroize(&mut self) {
        self.r.zeroize();
        self.k_inv.zeroize();
    }
}

impl Drop for Nonce {
    fn drop(&mut self) {
        zeroize::Zeroize::zeroize(self);
    }
}

impl Nonce {
    /// A fresh nonce from a cryptographic random source.
    pub fn random(rng: &mut impl CryptoRngCore) -> Self {
        loop {
            if let Some(n) = Self::batch(rng, 1).pop() {
                return n;
            }
        }
    }

    /// Up to `n` fresh nonces (fewer only in the case of probability about 2^-256 that
    /// some `r` is zero) for a little over half the cost of `n` calls to [`Nonce::random`]:
    /// the `k·G` are normalized with one field inversion and the `k⁻¹` come from one
    /// scalar inversion (Montgomery's trick). Every operation on the secret `k` is
    /// k256's constant-time arithmetic.
    pub fn batch(rng: &mut impl CryptoRngCore, n: usize) -> Vec<Self> {
        let ks: Vec<NonZeroScalar> = (0..n).map(|_| NonZeroScalar::random(&mut *rng)).collect();
        let points: Vec<ProjectivePoint> = ks
            .iter()
            .map(|k| ProjectivePoint::mul_by_generator(k.as_ref()))
            .collect();
        let affine =
            <ProjectivePoint as BatchNormalize<[ProjectivePoint]>>::batch_normalize(&points);
        // prefix[i] = k_0 ⋯ k_(i−1); then, walking back from (k_0 ⋯ k_(n−1))⁻¹,
        // k_i⁻¹ = (k_0 ⋯ k_i)⁻¹ · prefix[i].
        let mut prefix = Vec::with_capacity(n);
        let mut product = Scalar::ONE;
        for k in &ks {
            prefix.push(product);
            product *= k.as_ref();
        }
        // A product of non-zero scalars modulo the prime N is not zero.
        let mut inv: Scalar = Option::from(product.invert()).expect("non-zero product");
        let mut out = Vec::with_capacity(n);
        for ((k, before), point) in ks.iter().zip(&prefix).zip(&affine).rev() {
            let k_inv = inv * before;
            inv *= k.as_ref();
            let r = <Scalar as Reduce<U256>>::reduce_bytes(&point.x());
            if !bool::from(r.is_zero()) {
                out.push(Self { r, k_inv });
            }
        }
        out
    }
}

/// [`sign`] with a nonce made ahead of time instead of the RFC 6979 one: a valid Cosmos
/// signature (low-S, 64 bytes) that the chain verifies alike, but not the deterministic
/// bytes `sign` gives. Falls back to `sign` in the negligible case `s = 0`.
pub fn sign_with_nonce(key: &SecretKey, msg: &[u8], nonce: Nonce) -> [u8; 64] {
    let digest: [u8; 32] = Sha256::digest(msg).into();
    let z = <Scalar as Reduce<U256>>::reduce_bytes(&digest.into());
    let s = nonce.k_inv * (z + nonce.r * key.scalar());
    if bool::from(s.is_zero()) {
        return sign(key, msg);
    }
    let s = if bool::from(s.is_high()) { -s } else { s };
    let mut out = [0u8; 64];
    out[..32].copy_from_slice(&nonce.r.to_bytes());
    out[32..].copy_from_slice(&s.to_bytes());
    out
}

/// Cosmos `PubKey.VerifySignature(msg, sig)`: exactly 64 bytes; `r` and `s` are read
/// mod N; a high `s` is refused; then ECDSA over SHA-256(msg). `pubkey` may be the
/// 33-byte compressed or 65-byte uncompressed form.
pub fn verify(pubkey: &[u8], msg: &[u8], sig: &[u8]) -> bool {
    let Ok(key) = PublicKey::from_sec1(pubkey) else {
        return false;
    };
    verify_key(&key, msg, sig)
}

/// [`verify`] with an already parsed key.
pub fn verify_key(key: &PublicKey, msg: &[u8], sig: &[u8]) -> bool {
    if sig.len() != 64 {
        return false;
    }
    let reduce = |b: &[u8]| <Scalar as Reduce<U256>>::reduce_bytes(b.into());
    let (r, s) = (reduce(&sig[..32]), reduce(&sig[32..]));
    if bool::from(s.is_high()) {
        return false;
    }
    let Ok(sig) = Signature::from_scalars(r, s) else {
        return false; // r or s is zero
    };
    let Ok(vk) = VerifyingKey::from_affine(key.0) else {
        return false;
    };
    vk.verify_prehash(&Sha256::digest(msg), &sig).is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_nonce_is_wiped() {
        let mut n = Nonce::random(&mut rand_core::OsRng);
        assert!(!bool::from(n.k_inv.is_zero()));
        zeroize::Zeroize::zeroize(&mut n);
        assert!(bool::from(n.r.is_zero()) && bool::from(n.k_inv.is_zero()));
    }

    #[test]
    fn signatures_with_nonces_made_ahead_verify_and_are_low_s() {
        let key = SecretKey::from_secret(b"supplier");
        let other = SecretKey::from_secret(b"someone else");
        let mut rng = rand_core::OsRng;
        let mut seen = std::collections::HashSet::new();
        // One at a time, then batches (whose inverses come from one shared inversion).
        let mut nonces: Vec<Nonce> = (0..16).map(|_| Nonce::random(&mut rng)).collect();
        for n in [1, 2, 13, 32] {
            let batch = Nonce::batch(&mut rng, n);
            assert_eq!(batch.len(), n);
            nonces.extend(batch);
        }
        assert_eq!(nonces.len(), 64);
        for (i, nonce) in (0u32..).zip(nonces) {
            let msg: [u8; 32] = Sha256::digest(i.to_be_bytes()).into();
            let sig = sign_with_nonce(&key, &msg, nonce);
            assert!(verify_key(&key.public_key(), &msg, &sig), "message {i}");
            assert!(!verify_key(&other.public_key(), &msg, &sig));
            assert!(!verify_key(
                &key.public_key(),
                &Sha256::digest(b"other"),
                &sig
            ));
            let s = <Scalar as Reduce<U256>>::reduce_bytes(sig[32..].into());
            assert!(!bool::from(s.is_high()), "low S");
            assert!(seen.insert(sig[..32].to_vec()), "a fresh r every time");
        }
    }
}

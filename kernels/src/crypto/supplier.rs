//! The supplier's response signature: a Cosmos SDK secp256k1 signature (spec
//! `poktroll.md` §2.5, vectors `supplier_sig/`).
//!
//! `Sign(msg)` hashes `msg` with SHA-256 and signs the digest with RFC 6979 ECDSA,
//! low-S, 64 bytes `r ‖ s`. poktroll passes the 32-byte signable hash of the response as
//! `msg`, so the curve sees SHA-256 twice.

use k256::ecdsa::signature::hazmat::{PrehashSigner, PrehashVerifier};
use k256::ecdsa::{Signature, SigningKey, VerifyingKey};
use k256::elliptic_curve::ops::Reduce;
use k256::elliptic_curve::scalar::IsHigh;
use k256::{Scalar, U256};
use sha2::{Digest, Sha256};

use super::key::{PublicKey, SecretKey};

/// Cosmos `PrivKey.Sign(msg)`: deterministic, low-S, 64 bytes.
pub fn sign(key: &SecretKey, msg: &[u8]) -> [u8; 64] {
    let digest = Sha256::digest(msg);
    let sk =
        SigningKey::from_bytes(&key.to_bytes().into()).expect("a SecretKey is a valid signing key");
    let sig: Signature = sk
        .sign_prehash(&digest)
        .expect("RFC 6979 signing of a 32-byte digest cannot fail");
    let sig = sig.normalize_s().unwrap_or(sig);
    sig.to_bytes().into()
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

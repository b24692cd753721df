//! Cosmos secp256k1 keys and addresses.

use k256::ecdsa::SigningKey;
use k256::elliptic_curve::bigint::{ArrayEncoding, U256};
use k256::elliptic_curve::sec1::{FromEncodedPoint, ToEncodedPoint};
use k256::elliptic_curve::{Curve, PrimeField};
use k256::{AffinePoint, EncodedPoint, NonZeroScalar, Scalar, Secp256k1};
use ripemd::Ripemd160;
use sha2::{Digest, Sha256};

/// A key that failed to parse.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum KeyError {
    #[error("secret key must be 32 bytes in [1, N−1]")]
    SecretKey,
    #[error(
        "public key must be a valid 33-byte compressed or 65-byte uncompressed secp256k1 point"
    )]
    PublicKey,
}

/// A secp256k1 secret key (a supplier operator key, an application or gateway key),
/// kept with its public key so that signing never recomputes it.
#[derive(Clone)]
pub struct SecretKey(pub(crate) SigningKey);

impl std::fmt::Debug for SecretKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SecretKey(..)")
    }
}

impl SecretKey {
    /// From 32 big-endian bytes; zero and values ≥ N are refused.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, KeyError> {
        let arr: [u8; 32] = bytes.try_into().map_err(|_| KeyError::SecretKey)?;
        let s: Option<Scalar> = Scalar::from_repr(arr.into()).into();
        match s {
            Some(s) if !bool::from(s.is_zero()) => Ok(Self::from_scalar(s)),
            _ => Err(KeyError::SecretKey),
        }
    }

    /// Cosmos `GenPrivKeyFromSecret`: `(SHA-256(secret) mod (N − 1)) + 1`.
    pub fn from_secret(secret: &[u8]) -> Self {
        let h = U256::from_be_slice(&Sha256::digest(secret));
        let n_minus_1 = Secp256k1::ORDER.wrapping_sub(&U256::ONE);
        // h < 2^256 < 2(N − 1), so one subtraction reduces it.
        let reduced = if h >= n_minus_1 {
            h.wrapping_sub(&n_minus_1)
        } else {
            h
        };
        let k = reduced.wrapping_add(&U256::ONE);
        Self::from_scalar(
            Option::from(Scalar::from_repr(k.to_be_byte_array()))
                .expect("k ∈ [1, N−1] by construction"),
        )
    }

    fn from_scalar(s: Scalar) -> Self {
        let nz: NonZeroScalar =
            Option::from(NonZeroScalar::new(s)).expect("checked non-zero by the callers");
        Self(SigningKey::from(nz))
    }

    /// The secret scalar.
    pub(crate) fn scalar(&self) -> Scalar {
        *self.0.as_nonzero_scalar().as_ref()
    }

    /// 32 big-endian bytes.
    pub fn to_bytes(&self) -> [u8; 32] {
        self.scalar().to_bytes().into()
    }

    pub fn public_key(&self) -> PublicKey {
        PublicKey(*self.0.verifying_key().as_affine())
    }
}

/// A secp256k1 public key.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct PublicKey(pub(crate) AffinePoint);

impl std::fmt::Debug for PublicKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "PublicKey({})",
            crate::hex::encode(&self.to_compressed())
        )
    }
}

impl PublicKey {
    /// Parses a 33-byte compressed (02/03) or 65-byte uncompressed (04) SEC1 key, as
    /// decred's `ParsePubKey` does: the point must be on the curve with x, y < p.
    pub fn from_sec1(bytes: &[u8]) -> Result<Self, KeyError> {
        let ok_prefix = matches!(
            (bytes.len(), bytes.first()),
            (33, Some(2 | 3)) | (65, Some(4))
        );
        if !ok_prefix {
            return Err(KeyError::PublicKey);
        }
        let ep = EncodedPoint::from_bytes(bytes).map_err(|_| KeyError::PublicKey)?;
        Option::from(AffinePoint::from_encoded_point(&ep))
            .map(Self)
            .ok_or(KeyError::PublicKey)
    }

    /// Wraps a curve point (callers guarantee it is not the identity).
    pub fn from_affine(p: AffinePoint) -> Self {
        Self(p)
    }

    /// 33-byte compressed SEC1 encoding.
    pub fn to_compressed(&self) -> [u8; 33] {
        self.0
            .to_encoded_point(true)
            .as_bytes()
            .try_into()
            .expect("a key is never the identity")
    }

    /// The account address: RIPEMD-160(SHA-256(compressed key)).
    pub fn address(&self) -> Address {
        Address(<Ripemd160 as ripemd::Digest>::digest(Sha256::digest(self.to_compressed())).into())
    }
}

/// A 20-byte account address.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Address(pub [u8; 20]);

impl std::fmt::Debug for Address {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Address({})", self.to_upper_hex())
    }
}

impl Address {
    /// Bech32 with the given human-readable prefix (`pokt` on POKT networks).
    pub fn to_bech32(&self, hrp: &str) -> String {
        bech32_encode(hrp, &self.0)
    }

    /// Uppercase hex, as CometBFT's `HexBytes.String()` prints it (the placeholder ring
    /// address is written this way).
    pub fn to_upper_hex(&self) -> String {
        crate::hex::encode_upper(&self.0)
    }
}

const BECH32_CHARSET: &[u8; 32] = b"qpzry9x8gf2tvdw0s3jn54khce6mua7l";

fn bech32_polymod(values: impl Iterator<Item = u8>) -> u32 {
    const GEN: [u32; 5] = [0x3b6a57b2, 0x26508e6d, 0x1ea119fa, 0x3d4233dd, 0x2a1462b3];
    values.fold(1u32, |chk, v| {
        let top = chk >> 25;
        let mut chk = ((chk & 0x1ff_ffff) << 5) ^ v as u32;
        for (i, g) in GEN.iter().enumerate() {
            if (top >> i) & 1 == 1 {
                chk ^= g;
            }
        }
        chk
    })
}

/// BIP-173 bech32 of `data` (8-bit bytes regrouped into 5-bit words).
fn bech32_encode(hrp: &str, data: &[u8]) -> String {
    let mut words = Vec::with_capacity(data.len() * 8 / 5 + 1);
    let (mut acc, mut bits) = (0u32, 0u32);
    for &b in data {
        acc = (acc << 8) | b as u32;
        bits += 8;
        while bits >= 5 {
            bits -= 5;
            words.push(((acc >> bits) & 31) as u8);
        }
    }
    if bits > 0 {
        words.push(((acc << (5 - bits)) & 31) as u8);
    }
    let hrp_expanded = hrp
        .bytes()
        .map(|c| c >> 5)
        .chain([0])
        .chain(hrp.bytes().map(|c| c & 31));
    let poly = bech32_polymod(hrp_expanded.chain(words.iter().copied()).chain([0u8; 6])) ^ 1;
    let checksum = (0..6).map(|i| ((poly >> (5 * (5 - i))) & 31) as u8);
    let mut out = String::with_capacity(hrp.len() + 1 + words.len() + 6);
    out.push_str(hrp);
    out.push('1');
    out.extend(
        words
            .into_iter()
            .chain(checksum)
            .map(|w| BECH32_CHARSET[w as usize] as char),
    );
    out
}

//! The applications' linkable ring signature: bLSAG over secp256k1 exactly as
//! pokt-network/ring-go (with go-dleq's pure-Go backend) computes it (spec `poktroll.md`
//! §2.4, vectors `ring/`).
//!
//! Two details make it incompatible with a textbook bLSAG and are reproduced here:
//! hash-to-curve takes the point with **even** y after repeated SHA3-256, and
//! hash-to-scalar copies the reduced SHA3-512 value **left-aligned** into 32 bytes.

use std::collections::HashMap;

use k256::elliptic_curve::bigint::U512;
use k256::elliptic_curve::ops::{LinearCombination, Reduce};
use k256::elliptic_curve::point::{BatchNormalize, DecompressPoint};
use k256::elliptic_curve::sec1::ToEncodedPoint;
use k256::elliptic_curve::subtle::Choice;
use k256::elliptic_curve::{Field, PrimeField};
use k256::{AffinePoint, ProjectivePoint, Scalar};
use rand_core::CryptoRngCore;
use sha3::{Digest, Sha3_256, Sha3_512};

use super::key::{KeyError, PublicKey, SecretKey};

/// Most hash-to-curve rounds ring-go tries before giving up.
const HASH_TO_CURVE_ROUNDS: usize = 128;
/// Serialized size: 4-byte ring size, c0, key image, then per member s and public key.
const HEADER_LEN: usize = 4 + 32 + 33;
const MEMBER_LEN: usize = 32 + 33;

/// Why a ring signature could not be parsed, made or checked.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum RingError {
    #[error("ring signature shorter than its 4-byte size field")]
    MissingSize,
    #[error("input too short")]
    TooShort,
    #[error("invalid scalar length")]
    ScalarLength,
    #[error("invalid point: {0}")]
    Point(KeyError),
    #[error("ring signature has no members")]
    EmptyRing,
    #[error("the signing key is not a member of the ring")]
    SignerNotInRing,
    #[error("a ring needs at least two members")]
    RingTooSmall,
    #[error("hash-to-scalar produced a value outside the scalar field")]
    ScalarOutOfRange,
    #[error("hash to curve found no point in {HASH_TO_CURVE_ROUNDS} rounds")]
    HashToCurve,
    #[error("public key {0} of the signature is not in the application's ring")]
    NotAMember(String),
}

/// Compressed encoding as go-dleq writes it; the identity (never met with honest input)
/// serializes as decred does, `02 ‖ 0³²`.
fn encode(p: &ProjectivePoint) -> [u8; 33] {
    encode_affine(&p.to_affine())
}

fn encode_affine(p: &AffinePoint) -> [u8; 33] {
    let ep = p.to_encoded_point(true);
    ep.as_bytes().try_into().unwrap_or_else(|_| {
        let mut z = [0u8; 33];
        z[0] = 2;
        z
    })
}

/// ring-go's `hashToCurve`: SHA3-256 of the compressed point, then SHA3-256 of the
/// digest until it is the x of a curve point; the point with even y.
pub fn hash_to_curve(compressed: &[u8; 33]) -> Result<AffinePoint, RingError> {
    let mut h: [u8; 32] = Sha3_256::digest(compressed).into();
    for _ in 0..HASH_TO_CURVE_ROUNDS {
        // x ≥ p (probability 2^-128) is treated as "not on the curve" and rehashed.
        if let Some(p) =
            Option::<AffinePoint>::from(AffinePoint::decompress(&h.into(), Choice::from(0)))
        {
            return Ok(p);
        }
        h = Sha3_256::digest(h).into();
    }
    Err(RingError::HashToCurve)
}

/// go-dleq's `HashToScalar`: SHA3-512, reduced mod N, whose minimal big-endian bytes are
/// copied to the **start** of a 32-byte buffer (the left-align quirk: values below 2^248
/// come out shifted left by whole bytes).
pub fn hash_to_scalar(data: &[u8]) -> Result<Scalar, RingError> {
    let wide: [u8; 64] = Sha3_512::digest(data).into();
    let reduced = <Scalar as Reduce<U512>>::reduce(U512::from_be_slice(&wide));
    let canonical: [u8; 32] = reduced.to_bytes().into();
    let zeros = canonical.iter().take_while(|&&b| b == 0).count();
    let mut out = [0u8; 32];
    out[..32 - zeros].copy_from_slice(&canonical[zeros..]);
    Option::from(Scalar::from_repr(out.into())).ok_or(RingError::ScalarOutOfRange)
}

/// `challenge(m, L, R) = HashToScalar(m ‖ enc(L) ‖ enc(R))`.
fn challenge(
    msg: &[u8; 32],
    l: &ProjectivePoint,
    r: &ProjectivePoint,
) -> Result<Scalar, RingError> {
    let mut t = [0u8; 32 + 33 + 33];
    t[..32].copy_from_slice(msg);
    // Both points are normalized with a single field inversion.
    let [l, r] =
        <ProjectivePoint as BatchNormalize<[ProjectivePoint; 2]>>::batch_normalize(&[*l, *r]);
    t[32..65].copy_from_slice(&encode_affine(&l));
    t[65..].copy_from_slice(&encode_affine(&r));
    hash_to_scalar(&t)
}

/// A parsed ring signature: the ring's public keys travel inside it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RingSignature {
    c0: Scalar,
    key_image: AffinePoint,
    /// `(s_i, P_i, compressed P_i)` in ring order.
    members: Vec<(Scalar, AffinePoint, [u8; 33])>,
}

fn read_scalar(b: &[u8]) -> Result<Scalar, RingError> {
    let arr: [u8; 32] = b.try_into().map_err(|_| RingError::ScalarLength)?;
    // ring-go reduces scalars silently.
    Ok(<Scalar as Reduce<k256::U256>>::reduce_bytes(&arr.into()))
}

fn read_point(b: &[u8]) -> Result<(AffinePoint, [u8; 33]), RingError> {
    let arr: [u8; 33] = b
        .try_into()
        .map_err(|_| RingError::Point(KeyError::PublicKey))?;
    let key = PublicKey::from_sec1(&arr).map_err(RingError::Point)?;
    Ok((key.0, arr))
}

impl RingSignature {
    /// Parses the `69 + 65·n` byte form as ring-go's `Deserialize` does: only
    /// `len ≥ 33·n` is checked up front, fields are read in order, scalars are reduced
    /// mod N, points must be valid, and bytes after the n-th member are ignored. Where Go
    /// panics (fewer than 4 bytes) this is an error.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, RingError> {
        let size: [u8; 4] = bytes
            .get(..4)
            .ok_or(RingError::MissingSize)?
            .try_into()
            .expect("4 bytes");
        let n = u32::from_be_bytes(size) as usize;
        if (bytes.len() as u64) < 33 * n as u64 {
            return Err(RingError::TooShort);
        }
        let mut rest = &bytes[4..];
        let mut take = |len: usize| {
            let (head, tail) = rest.split_at(len.min(rest.len()));
            rest = tail;
            head
        };
        let c0 = read_scalar(take(32))?;
        let (key_image, _) = read_point(take(33))?;
        let mut members = Vec::with_capacity(n);
        for _ in 0..n {
            let s = read_scalar(take(32))?;
            let (p, enc) = read_point(take(33))?;
            members.push((s, p, enc));
        }
        Ok(Self {
            c0,
            key_image,
            members,
        })
    }

    /// The `69 + 65·n` byte serialization.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(HEADER_LEN + MEMBER_LEN * self.members.len());
        out.extend_from_slice(&(self.members.len() as u32).to_be_bytes());
        out.extend_from_slice(&self.c0.to_bytes());
        out.extend_from_slice(&encode(&self.key_image.into()));
        for (s, _, enc) in &self.members {
            out.extend_from_slice(&s.to_bytes());
            out.extend_from_slice(enc);
        }
        out
    }

    /// The compressed public keys of the ring, in ring order.
    pub fn public_keys(&self) -> impl Iterator<Item = &[u8; 33]> {
        self.members.iter().map(|(_, _, enc)| enc)
    }

    /// The key image: equal for two signatures by the same key (linkability).
    pub fn key_image(&self) -> [u8; 33] {
        encode(&self.key_image.into())
    }

    /// `c_0`, 32 bytes big-endian.
    pub fn c0(&self) -> [u8; 32] {
        self.c0.to_bytes().into()
    }

    /// The `s_i`, 32 bytes big-endian each.
    pub fn s_values(&self) -> impl Iterator<Item = [u8; 32]> + '_ {
        self.members.iter().map(|(s, ..)| s.to_bytes().into())
    }

    /// ring-go's `Verify(m)`: recompute the challenge chain from `c_0` and check that it
    /// closes. An empty ring is an error (Go panics there).
    pub fn verify(&self, msg: &[u8; 32]) -> Result<bool, RingError> {
        self.verify_with(msg, |enc, _| hash_to_curve(enc))
    }

    /// The challenges `c_0 … c_{n−1}` met along verification (for diagnostics and
    /// tests).
    pub fn challenges(&self, msg: &[u8; 32]) -> Result<Vec<[u8; 32]>, RingError> {
        let mut out = Vec::with_capacity(self.members.len());
        let mut c = self.c0;
        for (s, p, enc) in &self.members {
            out.push(c.to_bytes().into());
            c = self.step(msg, &c, s, p, &hash_to_curve(enc)?)?;
        }
        Ok(out)
    }

    fn step(
        &self,
        msg: &[u8; 32],
        c: &Scalar,
        s: &Scalar,
        p: &AffinePoint,
        hp: &AffinePoint,
    ) -> Result<Scalar, RingError> {
        let l = ProjectivePoint::lincomb(
            &ProjectivePoint::from(*p),
            c,
            &ProjectivePoint::GENERATOR,
            s,
        );
        let r = ProjectivePoint::lincomb(
            &ProjectivePoint::from(self.key_image),
            c,
            &ProjectivePoint::from(*hp),
            s,
        );
        challenge(msg, &l, &r)
    }

    fn verify_with(
        &self,
        msg: &[u8; 32],
        mut hp: impl FnMut(&[u8; 33], &AffinePoint) -> Result<AffinePoint, RingError>,
    ) -> Result<bool, RingError> {
        if self.members.is_empty() {
            return Err(RingError::EmptyRing);
        }
        let mut c = self.c0;
        for (s, p, enc) in &self.members {
            c = self.step(msg, &c, s, p, &hp(enc, p)?)?;
        }
        Ok(c == self.c0)
    }
}

/// One signer's view of one ring, with everything that does not depend on the message
/// computed once: each member's hash-to-curve point and the signer's key image. A
/// gateway signs many relays for the same application and session with one of these.
#[derive(Clone, Debug)]
pub struct RingSigner {
    members: Vec<(AffinePoint, [u8; 33])>,
    hps: Vec<ProjectivePoint>,
    image: ProjectivePoint,
    x: Scalar,
    j: usize,
}

impl RingSigner {
    pub fn new(ring: &[PublicKey], key: &SecretKey) -> Result<Self, RingError> {
        if ring.len() < 2 {
            return Err(RingError::RingTooSmall);
        }
        let me = key.public_key();
        let j = ring
            .iter()
            .position(|p| *p == me)
            .ok_or(RingError::SignerNotInRing)?;
        let members: Vec<(AffinePoint, [u8; 33])> =
            ring.iter().map(|p| (p.0, p.to_compressed())).collect();
        let hps = members
            .iter()
            .map(|(_, enc)| hash_to_curve(enc).map(ProjectivePoint::from))
            .collect::<Result<Vec<_>, _>>()?;
        let x = key.0;
        let image = hps[j] * x;
        Ok(Self {
            members,
            hps,
            image,
            x,
            j,
        })
    }

    /// The message-independent half of a signature, with nonces from `draw` (32 bytes,
    /// read big-endian mod N) in ring-go's order: `u`, then `s_{j+1}, …, s_{j−1}`.
    pub fn presign_with_nonces(&self, mut draw: impl FnMut() -> [u8; 32]) -> Presigned {
        let (n, j) = (self.members.len(), self.j);
        let mut scalar = || <Scalar as Reduce<k256::U256>>::reduce_bytes(&draw().into());
        let u = scalar();
        let others = (1..n)
            .map(|k| {
                let i = (j + k) % n;
                let s = scalar();
                (s, ProjectivePoint::GENERATOR * s, self.hps[i] * s)
            })
            .collect();
        Presigned {
            u,
            l: ProjectivePoint::GENERATOR * u,
            r: self.hps[j] * u,
            others,
        }
    }

    /// [`Self::presign_with_nonces`] with nonces from a cryptographic random source. Done
    /// ahead of time (a pool refilled in the background), it takes two thirds of the
    /// scalar multiplications off the signing path.
    pub fn presign(&self, rng: &mut impl CryptoRngCore) -> Presigned {
        self.presign_with_nonces(|| Scalar::random(&mut *rng).to_bytes().into())
    }

    /// Completes a signature of `msg` from a presigned half (consumed: its nonces are
    /// never used twice).
    pub fn sign_presigned(&self, msg: &[u8; 32], p: Presigned) -> Result<RingSignature, RingError> {
        let (n, j) = (self.members.len(), self.j);
        if p.others.len() + 1 != n {
            return Err(RingError::RingTooSmall);
        }
        let mut c = vec![Scalar::ZERO; n];
        let mut s = vec![Scalar::ZERO; n];
        c[(j + 1) % n] = challenge(msg, &p.l, &p.r)?;
        for (k, (s_i, s_g, s_h)) in p.others.into_iter().enumerate() {
            let i = (j + k + 1) % n;
            s[i] = s_i;
            let l = ProjectivePoint::from(self.members[i].0) * c[i] + s_g;
            let r = self.image * c[i] + s_h;
            c[(i + 1) % n] = challenge(msg, &l, &r)?;
        }
        s[j] = p.u - c[j] * self.x;
        Ok(RingSignature {
            c0: c[0],
            key_image: self.image.to_affine(),
            members: self
                .members
                .iter()
                .zip(s)
                .map(|(&(p, enc), s)| (s, p, enc))
                .collect(),
        })
    }

    /// Signs `msg`, drawing each nonce from `draw` (32 bytes, read big-endian mod N) in
    /// ring-go's order: `u`, then `s_{j+1}, …, s_{j−1}`. With the vectors' recorded draws
    /// this reproduces the Go signature bytes.
    pub fn sign_with_nonces(
        &self,
        msg: &[u8; 32],
        draw: impl FnMut() -> [u8; 32],
    ) -> Result<RingSignature, RingError> {
        self.sign_presigned(msg, self.presign_with_nonces(draw))
    }

    /// Signs with nonces from a cryptographic random source.
    pub fn sign(
        &self,
        msg: &[u8; 32],
        rng: &mut impl CryptoRngCore,
    ) -> Result<RingSignature, RingError> {
        self.sign_with_nonces(msg, || {
            // A uniformly random non-zero scalar, as bytes.
            let s = Scalar::random(&mut *rng);
            s.to_bytes().into()
        })
    }
}

/// The nonces of one signature and their points, computed before the message is known
/// ([`RingSigner::presign`]). Deliberately not `Clone`: a nonce used for two messages
/// would reveal the key.
#[derive(Debug)]
pub struct Presigned {
    u: Scalar,
    l: ProjectivePoint,
    r: ProjectivePoint,
    /// For the other members in signing order: `s_i`, `s_i·G`, `s_i·H_p(P_i)`.
    others: Vec<(Scalar, ProjectivePoint, ProjectivePoint)>,
}

/// Signs `msg` with `key`, a member of `ring`, drawing each nonce from `draw` (see
/// [`RingSigner::sign_with_nonces`]).
pub fn sign_with_nonces(
    msg: &[u8; 32],
    ring: &[PublicKey],
    key: &SecretKey,
    draw: impl FnMut() -> [u8; 32],
) -> Result<RingSignature, RingError> {
    RingSigner::new(ring, key)?.sign_with_nonces(msg, draw)
}

/// Signs with nonces from a cryptographic random source.
pub fn sign(
    msg: &[u8; 32],
    ring: &[PublicKey],
    key: &SecretKey,
    rng: &mut impl CryptoRngCore,
) -> Result<RingSignature, RingError> {
    RingSigner::new(ring, key)?.sign(msg, rng)
}

/// The placeholder ring member of applications without delegated gateways: its key is
/// derived from a public string, so anyone can sign with it (poktroll relies on checks
/// outside the ring signature).
pub const PLACEHOLDER_SECRET: &str = "placeholder_ring_key_for_apps_without_gateways";

/// The placeholder's public key.
pub fn placeholder_key() -> PublicKey {
    SecretKey::from_secret(PLACEHOLDER_SECRET.as_bytes()).public_key()
}

/// The placeholder's address as poktroll writes it into the ring: uppercase hex, which
/// sorts before every `pokt1…` address.
pub fn placeholder_address() -> String {
    placeholder_key().address().to_upper_hex()
}

/// Who is in an application's ring at a session (poktroll `pkg/crypto/rings`): the
/// application, its delegated gateways, and gateways whose undelegation is pending at a
/// height ≥ the session end; the placeholder when there are no gateways. Returns the
/// member address strings sorted as poktroll sorts them (byte order of the strings).
pub fn ring_addresses<'a>(
    application: &'a str,
    delegatees: impl IntoIterator<Item = &'a str>,
    pending_undelegations: impl IntoIterator<Item = (i64, &'a str)>,
    session_end_height: i64,
) -> Vec<String> {
    let mut gateways: Vec<String> = Vec::new();
    let pending = pending_undelegations
        .into_iter()
        .filter(|(h, _)| *h >= session_end_height)
        .map(|(_, g)| g);
    for g in delegatees.into_iter().chain(pending) {
        if !gateways.iter().any(|x| x == g) {
            gateways.push(g.to_string());
        }
    }
    if gateways.is_empty() {
        gateways.push(placeholder_address());
    }
    let mut all: Vec<String> = std::iter::once(application.to_string())
        .chain(gateways)
        .collect();
    all.sort();
    all.dedup();
    all
}

/// An application's expected ring, with each member's hash-to-curve point cached, as a
/// verifier that sees many relays of the same application keeps it.
#[derive(Debug, Clone)]
pub struct AppRing {
    members: HashMap<[u8; 33], AffinePoint>,
}

impl AppRing {
    pub fn new(keys: &[PublicKey]) -> Result<Self, RingError> {
        let members = keys
            .iter()
            .map(|k| {
                let enc = k.to_compressed();
                hash_to_curve(&enc).map(|hp| (enc, hp))
            })
            .collect::<Result<_, _>>()?;
        Ok(Self { members })
    }

    /// poktroll's check: every public key inside the signature belongs to the expected
    /// ring (order and ring size are not compared), then the signature verifies.
    pub fn verify(&self, sig: &RingSignature, msg: &[u8; 32]) -> Result<bool, RingError> {
        if let Some(outsider) = sig.public_keys().find(|k| !self.members.contains_key(*k)) {
            return Err(RingError::NotAMember(crate::hex::encode(outsider)));
        }
        sig.verify_with(msg, |enc, _| Ok(self.members[enc]))
    }
}

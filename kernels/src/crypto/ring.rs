//! The applications' linkable ring signature: bLSAG over secp256k1 exactly as
//! pokt-network/ring-go (with go-dleq's pure-Go backend) computes it (spec `poktroll.md`
//! §2.4, vectors `ring/`).
//!
//! Two details make it incompatible with a textbook bLSAG and are reproduced here:
//! hash-to-curve takes the point with **even** y after repeated SHA3-256, and
//! hash-to-scalar copies the reduced SHA3-512 value **left-aligned** into 32 bytes.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};

use k256::elliptic_curve::bigint::U512;
use k256::elliptic_curve::ops::{LinearCombination, Reduce};
use k256::elliptic_curve::point::{BatchNormalize, DecompressPoint};
use k256::elliptic_curve::sec1::ToEncodedPoint;
use k256::elliptic_curve::subtle::Choice;
use k256::elliptic_curve::{Field, Group, PrimeField};
use k256::{AffinePoint, ProjectivePoint, Scalar};
use rand_core::CryptoRngCore;
use sha3::{Digest, Sha3_256, Sha3_512};

use super::fixed::{self, FixedBase};
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
    #[error("the signature lists {listed} members; the application's ring has {ring}")]
    MoreMembersThanRing { listed: u64, ring: usize },
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
    challenge_encoded(msg, &encode_pair(l, r))
}

/// Both points' encodings, normalized with a single field inversion.
///
/// An attacker picks the key image and the `s_i`, so `L` or `R` can be the identity, and
/// k256's batch normalization panics on an identity whose `z` is zero but not in normal
/// form (found by the `ring_signature` fuzz target): such pairs are normalized one by one.
fn encode_pair(l: &ProjectivePoint, r: &ProjectivePoint) -> [[u8; 33]; 2] {
    if bool::from(l.is_identity() | r.is_identity()) {
        return [encode(l), encode(r)];
    }
    let [l, r] =
        <ProjectivePoint as BatchNormalize<[ProjectivePoint; 2]>>::batch_normalize(&[*l, *r]);
    [encode_affine(&l), encode_affine(&r)]
}

/// [`challenge`] of points already encoded.
fn challenge_encoded(msg: &[u8; 32], [l, r]: &[[u8; 33]; 2]) -> Result<Scalar, RingError> {
    let mut t = [0u8; 32 + 33 + 33];
    t[..32].copy_from_slice(msg);
    t[32..65].copy_from_slice(l);
    t[65..].copy_from_slice(r);
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

fn read_point(
    b: &[u8],
    known: &impl Fn(&[u8; 33]) -> Option<AffinePoint>,
) -> Result<(AffinePoint, [u8; 33]), RingError> {
    let arr: [u8; 33] = b
        .try_into()
        .map_err(|_| RingError::Point(KeyError::PublicKey))?;
    if let Some(p) = known(&arr) {
        return Ok((p, arr));
    }
    let key = PublicKey::from_sec1(&arr).map_err(RingError::Point)?;
    Ok((key.0, arr))
}

impl RingSignature {
    /// Parses the `69 + 65·n` byte form as ring-go's `Deserialize` does: only
    /// `len ≥ 33·n` is checked up front, fields are read in order, scalars are reduced
    /// mod N, points must be valid, and bytes after the n-th member are ignored. Where Go
    /// panics (fewer than 4 bytes) this is an error.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, RingError> {
        Self::parse_with(bytes, |_| None)
    }

    /// [`Self::from_bytes`], taking the point of any compressed encoding `known` has
    /// (which must be the point those bytes decompress to) instead of decompressing it.
    fn parse_with(
        bytes: &[u8],
        known: impl Fn(&[u8; 33]) -> Option<AffinePoint>,
    ) -> Result<Self, RingError> {
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
        let (key_image, _) = read_point(take(33), &known)?;
        let mut members = Vec::with_capacity(n);
        for _ in 0..n {
            let s = read_scalar(take(32))?;
            let (p, enc) = read_point(take(33), &known)?;
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
        let hps = self
            .members
            .iter()
            .map(|(_, _, enc)| hash_to_curve(enc).map(|hp| (*enc, hp)))
            .collect::<Result<HashMap<_, _>, _>>()?;
        self.verify_steps(msg, |enc, c, s| {
            let p = self.members.iter().find(|(_, _, e)| e == enc).map(|m| m.1);
            let (l, r) = self.points(c, s, &p.expect("a member's key"), &hps[enc]);
            encode_pair(&l, &r)
        })
    }

    /// The challenges `c_0 … c_{n−1}` met along verification (for diagnostics and
    /// tests).
    pub fn challenges(&self, msg: &[u8; 32]) -> Result<Vec<[u8; 32]>, RingError> {
        let mut out = Vec::with_capacity(self.members.len());
        let mut c = self.c0;
        for (s, p, enc) in &self.members {
            out.push(c.to_bytes().into());
            let (l, r) = self.points(&c, s, p, &hash_to_curve(enc)?);
            c = challenge(msg, &l, &r)?;
        }
        Ok(out)
    }

    /// One member's `L = s·G + c·P` and `R = s·H_p(P) + c·I`.
    fn points(
        &self,
        c: &Scalar,
        s: &Scalar,
        p: &AffinePoint,
        hp: &AffinePoint,
    ) -> (ProjectivePoint, ProjectivePoint) {
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
        (l, r)
    }

    /// Walks the challenge chain from `c_0`, with `points(P_i, c_i, s_i)` giving member
    /// i's `(L, R)`, and says whether it closes. An empty ring is an error (Go panics).
    fn verify_steps(
        &self,
        msg: &[u8; 32],
        mut points: impl FnMut(&[u8; 33], &Scalar, &Scalar) -> [[u8; 33]; 2],
    ) -> Result<bool, RingError> {
        if self.members.is_empty() {
            return Err(RingError::EmptyRing);
        }
        let mut c = self.c0;
        for (s, _, enc) in &self.members {
            c = challenge_encoded(msg, &points(enc, &c, s))?;
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
        let x = key.scalar();
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

/// An application's expected ring, with each member's point and hash-to-curve point
/// cached, as a verifier that sees many relays of the same application keeps it.
///
/// Verification multiplies the same points for every relay (the generator, the members'
/// keys and hash-to-curve points, and the signer's key image, fixed per signing key), so
/// a ring in steady use can be given tables of their multiples ([`AppRing::accelerate`]),
/// which make verification several times cheaper. The tables are built off the request
/// path when [`AppRing::wants_acceleration`] says the ring has earned them; until then,
/// and for any point without a table, verification uses plain multiplication.
#[derive(Debug)]
pub struct AppRing {
    members: HashMap<[u8; 33], Member>,
    /// Tables, once built; replaced whole when a new key image gets one.
    fast: RwLock<Option<Arc<Fast>>>,
    /// Key images of signatures that verified without a table for them (at most one per
    /// member: a key has one image), waiting for `accelerate`.
    new_images: Mutex<Vec<([u8; 33], AffinePoint)>>,
    verified: AtomicU64,
    accelerating: AtomicBool,
}

#[derive(Debug, Clone, Copy)]
struct Member {
    point: AffinePoint,
    hp: AffinePoint,
}

/// The tables of one ring: per member `(P, H_p(P))`, per key image seen in a valid
/// signature `I` (with its point, so parsing skips decompression).
#[derive(Debug)]
struct Fast {
    members: HashMap<[u8; 33], (Arc<FixedBase>, Arc<FixedBase>)>,
    images: HashMap<[u8; 33], (AffinePoint, Arc<FixedBase>)>,
}

/// Verified signatures after which a ring is worth its tables (a few milliseconds to
/// build; each verification with them saves about three quarters of its cost).
const ACCELERATE_AFTER: u64 = 16;

impl AppRing {
    pub fn new(keys: &[PublicKey]) -> Result<Self, RingError> {
        let members = keys
            .iter()
            .map(|k| {
                let enc = k.to_compressed();
                hash_to_curve(&enc).map(|hp| (enc, Member { point: k.0, hp }))
            })
            .collect::<Result<_, _>>()?;
        Ok(Self {
            members,
            fast: RwLock::new(None),
            new_images: Mutex::new(Vec::new()),
            verified: AtomicU64::new(0),
            accelerating: AtomicBool::new(false),
        })
    }

    fn fast(&self) -> Option<Arc<Fast>> {
        self.fast.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Parses a signature as [`RingSignature::from_bytes`] does, taking the points of
    /// this ring's members and known key images from the cache instead of decompressing
    /// them (identical bytes, identical point).
    ///
    /// A signature that lists more members than the ring has is refused from its first
    /// four bytes, before anything is allocated, decompressed or hashed: its members
    /// would repeat, and its cost is the attacker's choice (a 20 MiB body lists 300,000).
    pub fn parse(&self, bytes: &[u8]) -> Result<RingSignature, RingError> {
        let listed = bytes
            .get(..4)
            .map(|b| u32::from_be_bytes(b.try_into().expect("4 bytes")))
            .ok_or(RingError::MissingSize)?;
        if listed as usize > self.members.len() {
            return Err(RingError::MoreMembersThanRing {
                listed: listed.into(),
                ring: self.members.len(),
            });
        }
        let fast = self.fast();
        RingSignature::parse_with(bytes, |enc| {
            self.members.get(enc).map(|m| m.point).or_else(|| {
                fast.as_ref()
                    .and_then(|f| f.images.get(enc).map(|(p, _)| *p))
            })
        })
    }

    /// poktroll's check: every public key inside the signature belongs to the expected
    /// ring (order and ring size are not compared), then the signature verifies.
    pub fn verify(&self, sig: &RingSignature, msg: &[u8; 32]) -> Result<bool, RingError> {
        if let Some(outsider) = sig.public_keys().find(|k| !self.members.contains_key(*k)) {
            return Err(RingError::NotAMember(crate::hex::encode(outsider)));
        }
        let fast = self.fast();
        let image_enc = encode_affine(&sig.key_image);
        let image_table = fast.as_ref().and_then(|f| f.images.get(&image_enc));
        let g = FixedBase::generator();
        let ok = sig.verify_steps(msg, |enc, c, s| {
            let m = &self.members[enc];
            let plain_r = || {
                ProjectivePoint::lincomb(
                    &ProjectivePoint::from(sig.key_image),
                    c,
                    &ProjectivePoint::from(m.hp),
                    s,
                )
            };
            match (fast.as_ref().and_then(|f| f.members.get(enc)), image_table) {
                // A busy ring: four table walks, one inversion for both points.
                (Some((tp, th)), Some((_, ti))) => fixed::compress_all(&[
                    fixed::lincomb(g, s, tp, c),
                    fixed::lincomb(th, s, ti, c),
                ]),
                // A key image without its table yet.
                (Some((tp, _)), None) => {
                    let [l] = fixed::compress_all(&[fixed::lincomb(g, s, tp, c)]);
                    [l, encode(&plain_r())]
                }
                _ => {
                    let (l, r) = sig.points(c, s, &m.point, &m.hp);
                    encode_pair(&l, &r)
                }
            }
        })?;
        if ok {
            self.verified.fetch_add(1, Ordering::Relaxed);
            if image_table.is_none() {
                let mut pending = self.new_images.lock().unwrap_or_else(|e| e.into_inner());
                if pending.len() < self.members.len()
                    && !pending.iter().any(|(e, _)| *e == image_enc)
                {
                    pending.push((image_enc, sig.key_image));
                }
            }
        }
        Ok(ok)
    }

    /// Whether [`AppRing::accelerate`] has work worth doing: the ring has verified enough
    /// signatures and lacks tables for its members or for a key image that verified, and
    /// nobody is building them.
    pub fn wants_acceleration(&self) -> bool {
        if self.verified.load(Ordering::Relaxed) < ACCELERATE_AFTER
            || self.accelerating.load(Ordering::Relaxed)
        {
            return false;
        }
        self.fast
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .is_none()
            || !self
                .new_images
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .is_empty()
    }

    /// Builds (or takes from `tables`, shared across rings and sessions) the tables of
    /// every member and of the key images that verified. Milliseconds of CPU: call it
    /// off the request path. Concurrent calls do the work once.
    pub fn accelerate(&self, tables: &BaseTables) {
        if self.accelerating.swap(true, Ordering::Acquire) {
            return;
        }
        let old = self.fast();
        let pending =
            std::mem::take(&mut *self.new_images.lock().unwrap_or_else(|e| e.into_inner()));
        if old.is_some() && pending.is_empty() {
            self.accelerating.store(false, Ordering::Release);
            return;
        }
        let members = match &old {
            Some(f) => f.members.clone(),
            None => self
                .members
                .iter()
                .map(|(enc, m)| (*enc, (tables.get(enc, &m.point), tables.get_hp(enc, &m.hp))))
                .collect(),
        };
        let mut images = old.map(|f| f.images.clone()).unwrap_or_default();
        for (enc, point) in pending {
            images.insert(enc, (point, tables.get(&enc, &point)));
        }
        *self.fast.write().unwrap_or_else(|e| e.into_inner()) =
            Some(Arc::new(Fast { members, images }));
        self.accelerating.store(false, Ordering::Release);
    }

    /// Whether tables are in use (for metrics and tests).
    pub fn is_accelerated(&self) -> bool {
        self.fast().is_some()
    }
}

/// Point tables shared by every ring a process verifies, keyed by what they multiply (a
/// compressed point, or a member's hash-to-curve point), bounded in memory: the least
/// recently requested table goes first. A ring holds its tables while it lives, so
/// eviction only stops sharing them with later rings.
#[derive(Debug)]
pub struct BaseTables {
    inner: Mutex<TableMap>,
    max_tables: usize,
}

#[derive(Debug, Default)]
struct TableMap {
    tick: u64,
    /// `(kind, compressed point)` → (last requested, table); kind 0 is the point
    /// itself, 1 its hash-to-curve point.
    map: HashMap<(u8, [u8; 33]), (u64, Arc<FixedBase>)>,
}

impl BaseTables {
    /// A cache holding up to `max_bytes` of tables (at least one table).
    pub fn new(max_bytes: usize) -> Self {
        Self {
            inner: Mutex::new(TableMap::default()),
            max_tables: (max_bytes / FixedBase::table_bytes()).max(1),
        }
    }

    /// Tables held now.
    pub fn len(&self) -> usize {
        self.inner
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .map
            .len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn get(&self, enc: &[u8; 33], point: &AffinePoint) -> Arc<FixedBase> {
        self.get_kind(0, enc, point)
    }

    fn get_hp(&self, enc: &[u8; 33], hp: &AffinePoint) -> Arc<FixedBase> {
        self.get_kind(1, enc, hp)
    }

    fn get_kind(&self, kind: u8, enc: &[u8; 33], point: &AffinePoint) -> Arc<FixedBase> {
        let key = (kind, *enc);
        {
            let mut inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
            inner.tick += 1;
            let tick = inner.tick;
            if let Some((used, t)) = inner.map.get_mut(&key) {
                *used = tick;
                return t.clone();
            }
        }
        // Built outside the lock: other rings keep getting their tables meanwhile.
        let table = Arc::new(FixedBase::new(point));
        let mut inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        inner.tick += 1;
        let tick = inner.tick;
        if inner.map.len() >= self.max_tables
            && let Some(oldest) = inner
                .map
                .iter()
                .min_by_key(|(_, (used, _))| *used)
                .map(|(k, _)| *k)
        {
            inner.map.remove(&oldest);
        }
        inner.map.insert(key, (tick, table.clone()));
        table
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(name: &str) -> SecretKey {
        SecretKey::from_secret(name.as_bytes())
    }

    #[test]
    fn a_signature_whose_points_reach_the_identity_is_refused_without_a_panic() {
        // The `ring_signature` fuzz target's input (the first 32 bytes are the message):
        // one of its (L, R) is the identity with a z that is not in normal form, which
        // made k256's batch normalization panic inside `verify`.
        let input = ::hex::decode(concat!(
            "0a000000010000000000000000000000000000000000000000c70000000000000000000100000000",
            "00000000000000000000000000000000000000000000000000000000020000000000000000000000",
            "0000000000000000f700002800000000000000000100000000000000000000000000000000000000",
            "000000000000000000000000000200000000000000000000000000000000000000f7000028000000",
            "0000000000000000000000000000000000000000",
        ))
        .expect("hex");
        assert_eq!(input.len(), 180);
        let (msg, bytes) = input.split_at(32);
        let msg: [u8; 32] = msg.try_into().expect("32 bytes");
        let sig = RingSignature::from_bytes(bytes).expect("parses");
        assert_eq!(sig.verify(&msg), Ok(false));
    }

    #[test]
    fn a_busy_ring_gets_tables_and_verifies_the_same() {
        let (app, gw) = (key("app"), key("gateway"));
        let keys = [app.public_key(), gw.public_key()];
        let ring = AppRing::new(&keys).expect("ring");
        let tables = BaseTables::new(64 << 20);
        let mut rng = rand_core::OsRng;
        let msg = [7u8; 32];
        let by_gw = sign(&msg, &keys, &gw, &mut rng).expect("member");
        for _ in 0..ACCELERATE_AFTER - 1 {
            assert_eq!(ring.verify(&by_gw, &msg), Ok(true));
        }
        assert!(!ring.wants_acceleration(), "not busy yet");
        // A bad signature neither counts nor offers its key image.
        assert_eq!(ring.verify(&by_gw, &[8; 32]), Ok(false));
        assert!(!ring.wants_acceleration());
        assert_eq!(ring.verify(&by_gw, &msg), Ok(true));
        assert!(ring.wants_acceleration());
        ring.accelerate(&tables);
        assert!(ring.is_accelerated() && !ring.wants_acceleration());
        // Two members' keys and hash-to-curve points, and the gateway's key image.
        assert_eq!(tables.len(), 5);
        let parsed = ring.parse(&by_gw.to_bytes()).expect("parses");
        assert_eq!(parsed, by_gw);
        assert_eq!(ring.verify(&parsed, &msg), Ok(true));
        assert_eq!(ring.verify(&parsed, &[8; 32]), Ok(false));

        // The application signing itself: verified without a table for its image, then
        // with one.
        let by_app = sign(&msg, &keys, &app, &mut rng).expect("member");
        assert_eq!(ring.verify(&by_app, &msg), Ok(true));
        assert!(ring.wants_acceleration(), "a new key image");
        ring.accelerate(&tables);
        assert_eq!(tables.len(), 6);
        assert!(!ring.wants_acceleration());
        assert_eq!(ring.verify(&by_app, &msg), Ok(true));
        assert_eq!(ring.verify(&by_app, &[9; 32]), Ok(false));

        // Another application with the same gateway shares the gateway's tables.
        let other = AppRing::new(&[key("app2").public_key(), gw.public_key()]).expect("ring");
        other.accelerate(&tables);
        assert_eq!(tables.len(), 8);
    }

    #[test]
    fn a_signature_listing_more_members_than_the_ring_is_refused_before_any_work() {
        let (app, gw) = (key("app"), key("gateway"));
        let keys = [app.public_key(), gw.public_key()];
        let ring = AppRing::new(&keys).expect("ring");
        let msg = [5u8; 32];
        let honest = sign(&msg, &keys, &app, &mut rand_core::OsRng).expect("member");
        // The bomb: the application's own key listed 300,000 times (19.5 MB).
        let n = 300_000u32;
        let mut bomb = Vec::with_capacity(HEADER_LEN + MEMBER_LEN * n as usize);
        bomb.extend_from_slice(&n.to_be_bytes());
        bomb.extend_from_slice(&honest.c0());
        bomb.extend_from_slice(&honest.key_image());
        for _ in 0..n {
            bomb.extend_from_slice(&[1u8; 32]);
            bomb.extend_from_slice(&app.public_key().to_compressed());
        }
        let started = std::time::Instant::now();
        assert_eq!(
            ring.parse(&bomb),
            Err(RingError::MoreMembersThanRing {
                listed: 300_000,
                ring: 2
            })
        );
        // Refused from the size field alone: a thousandth of what parsing would cost.
        let refused_in = started.elapsed();
        let started = std::time::Instant::now();
        let parsed = RingSignature::from_bytes(&bomb).expect("Go's parser takes it");
        assert_eq!(parsed.public_keys().count(), 300_000);
        assert!(refused_in * 1000 < started.elapsed(), "{refused_in:?}");
        // One member too many, and a size field with nothing after it.
        let mut three = honest.to_bytes();
        three[..4].copy_from_slice(&3u32.to_be_bytes());
        assert!(matches!(
            ring.parse(&three),
            Err(RingError::MoreMembersThanRing { listed: 3, .. })
        ));
        assert!(matches!(
            ring.parse(&u32::MAX.to_be_bytes()),
            Err(RingError::MoreMembersThanRing { .. })
        ));
        assert_eq!(ring.parse(&[0, 0]), Err(RingError::MissingSize));
        // The honest signature still parses and verifies.
        let parsed = ring.parse(&honest.to_bytes()).expect("parses");
        assert_eq!(ring.verify(&parsed, &msg), Ok(true));
    }

    #[test]
    fn tables_stay_within_their_memory() {
        let tables = BaseTables::new(2 * FixedBase::table_bytes());
        let keys = [key("a").public_key(), key("b").public_key()];
        let ring = AppRing::new(&keys).expect("ring");
        ring.accelerate(&tables);
        assert_eq!(tables.len(), 2, "the least recently used went");
        let msg = [1u8; 32];
        let sig = sign(&msg, &keys, &key("a"), &mut rand_core::OsRng).expect("member");
        assert_eq!(ring.verify(&sig, &msg), Ok(true));
    }

    #[test]
    fn an_outsider_key_is_refused_with_or_without_tables() {
        let keys = [key("app").public_key(), key("gw").public_key()];
        let ring = AppRing::new(&keys).expect("ring");
        let stranger = [key("app").public_key(), key("stranger").public_key()];
        let msg = [3u8; 32];
        let sig = sign(&msg, &stranger, &key("stranger"), &mut rand_core::OsRng).expect("member");
        assert!(matches!(
            ring.verify(&sig, &msg),
            Err(RingError::NotAMember(_))
        ));
        ring.accelerate(&BaseTables::new(64 << 20));
        let parsed = ring.parse(&sig.to_bytes()).expect("parses");
        assert!(matches!(
            ring.verify(&parsed, &msg),
            Err(RingError::NotAMember(_))
        ));
    }
}

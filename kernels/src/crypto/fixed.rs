//! Scalar multiplication of a point known in advance, with precomputed multiples.
//!
//! Verifying a ring signature multiplies the same few points over and over: the
//! generator, each ring member's public key and hash-to-curve point, and the signer's key
//! image (fixed per signing key). For such a point a table of its signed radix-2^w
//! multiples turns a scalar multiplication into ⌈256/w⌉ + 1 additions and no doublings,
//! where a multiplication by an unknown point needs about 128 doublings and as many
//! additions. With w = 9 a table holds 30 × 256 points (600 KiB); w = 7 took 20% more
//! time per verification for a third of the memory, w = 10 8% less for 1.8 times it.
//!
//! **Variable time:** the additions taken depend on the scalar. Use it only where the
//! scalars are public (verification), never with a secret key or nonce.

use std::sync::OnceLock;

use k256::elliptic_curve::group::prime::PrimeCurveAffine;
use k256::elliptic_curve::point::BatchNormalize;
use k256::elliptic_curve::sec1::ToEncodedPoint;
use k256::{AffinePoint, FieldElement, ProjectivePoint, Scalar};

/// Bits per window (see the module documentation for the trade-off).
const W: usize = 9;
/// Table entries per window: the multiples `1 … 2^(w−1)` (negatives are free).
const HALF: usize = 1 << (W - 1);
/// Windows per scalar: ⌈256/w⌉, plus one for the carry out of the top window.
const WINDOWS: usize = 256_usize.div_ceil(W) + 1;

/// An affine point's coordinates, each fully reduced (magnitude 1).
#[derive(Clone, Copy)]
struct Affine {
    x: FieldElement,
    y: FieldElement,
}

/// A point in Jacobian coordinates, `(X/Z², Y/Z³)`, for adding table entries.
///
/// The additions here are the textbook variable-time ones (7 multiplications and
/// 3 squarings for adding an affine point, against about 12 multiplications for k256's
/// complete formulas), so they take the same care as the tables: public scalars only.
///
/// Field elements are kept lazily reduced. k256's rules: `mul` and `square` take inputs
/// of magnitude ≤ 8 and return magnitude 1; a sum's magnitude is the sum; `negate(m)`
/// takes magnitude ≤ m and returns m + 1. Between operations `x` has magnitude ≤ 6,
/// `y` ≤ 3 and `z` ≤ 2 (the comments give each value's magnitude). Debug builds of k256
/// check every one of these bounds.
#[derive(Clone, Copy, Debug)]
pub struct Jacobian {
    x: FieldElement,
    y: FieldElement,
    z: FieldElement,
    infinity: bool,
}

impl Jacobian {
    pub const IDENTITY: Self = Self {
        x: FieldElement::ZERO,
        y: FieldElement::ONE,
        z: FieldElement::ZERO,
        infinity: true,
    };

    fn from_affine(p: &Affine, negate: bool) -> Self {
        Self {
            x: p.x,
            y: if negate { p.y.negate(1) } else { p.y },
            z: FieldElement::ONE,
            infinity: false,
        }
    }

    /// `self + ±p`.
    fn add_affine(&mut self, p: &Affine, negate: bool) {
        if self.infinity {
            *self = Self::from_affine(p, negate);
            return;
        }
        let (x1, y1, z1) = (&self.x, &self.y, &self.z);
        let y2 = if negate { p.y.negate(1) } else { p.y }; // 1 or 2
        let z1z1 = z1.square(); // 1
        let u2 = p.x.mul(&z1z1); // 1
        let s2 = y2.mul(&z1z1).mul(z1); // 1
        let h = u2 + x1.negate(6); // 1 + 7 = 8
        let i = s2 + y1.negate(3); // 1 + 4 = 5
        if bool::from(h.normalizes_to_zero()) {
            // Same x: the same point (double it) or its negation (the sum is infinity).
            *self = if bool::from(i.normalizes_to_zero()) {
                self.double()
            } else {
                Self::IDENTITY
            };
            return;
        }
        let z3 = z1.mul(&h); // 1
        let h2 = h.square(); // 1
        let h3 = h.mul(&h2); // 1
        let t = x1.mul(&h2); // 1
        let x3 = i.square() + h3.negate(1) + t.double().negate(2); // 1 + 2 + 3 = 6
        let y3 = i.mul(&(t + x3.negate(6))) + y1.mul(&h3).negate(1); // 1 + 2 = 3
        *self = Self {
            x: x3,
            y: y3,
            z: z3,
            infinity: false,
        };
    }

    /// `2·self` (`dbl` for a = 0); met only when an addition meets its own point.
    fn double(&self) -> Self {
        if self.infinity || bool::from(self.y.normalizes_to_zero()) {
            return Self::IDENTITY;
        }
        let (x, y, z) = (&self.x, &self.y, &self.z);
        let yy = y.square(); // 1
        let s = x.mul(&yy).mul_single(4); // 4
        let m = x.square().mul_single(3); // 3
        let x3 = (m.square() + s.double().negate(8)).normalize_weak(); // 1
        let y3 =
            (m.mul(&(s + x3.negate(1))) + yy.square().mul_single(8).negate(8)).normalize_weak(); // 1
        let z3 = y.mul(z).double(); // 2
        Self {
            x: x3,
            y: y3,
            z: z3,
            infinity: false,
        }
    }
}

/// The compressed encodings (as go-dleq writes them; the identity, never met with honest
/// input, as `02 ‖ 0³²`) of `N` points, with a single field inversion.
pub fn compress_all<const N: usize>(points: &[Jacobian; N]) -> [[u8; 33]; N] {
    // Montgomery's trick over the finite points: prefix products of the z's, one
    // inversion, then each inverse peeled off walking back.
    let mut prefix = [FieldElement::ONE; N];
    let mut acc = FieldElement::ONE;
    for (p, slot) in points.iter().zip(prefix.iter_mut()) {
        *slot = acc;
        if !p.infinity {
            acc = acc.mul(&p.z);
        }
    }
    // Finite points have z ≠ 0, so the product is invertible.
    let mut inv = acc.invert().unwrap_or(FieldElement::ZERO);
    let mut out = [[0u8; 33]; N];
    for ((p, before), enc) in points.iter().zip(prefix.iter()).zip(out.iter_mut()).rev() {
        enc[0] = 2;
        if p.infinity {
            continue;
        }
        let zinv = inv.mul(before);
        inv = inv.mul(&p.z);
        let zinv2 = zinv.square();
        let x = p.x.mul(&zinv2).normalize();
        let y = p.y.mul(&zinv2.mul(&zinv)).normalize();
        enc[0] = 2 | u8::from(bool::from(y.is_odd()));
        enc[1..].copy_from_slice(&x.to_bytes());
    }
    out
}

/// The signed radix-2^w multiples of one point: entry `j·HALF + m − 1` is
/// `m · 2^(w·j) · P`. The identity's table is empty (every multiple is the identity).
pub struct FixedBase {
    table: Box<[Affine]>,
}

impl std::fmt::Debug for FixedBase {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FixedBase")
            .field("bytes", &self.memory_bytes())
            .finish()
    }
}

impl FixedBase {
    /// Builds the table: `WINDOWS · HALF` additions and one batched normalization (about
    /// 7 ms on a server core).
    pub fn new(p: &AffinePoint) -> Self {
        if bool::from(p.is_identity()) {
            return Self {
                table: Box::new([]),
            };
        }
        let mut all = Vec::with_capacity(WINDOWS * HALF);
        let mut base = ProjectivePoint::from(*p);
        for _ in 0..WINDOWS {
            let mut acc = base;
            all.push(acc);
            for _ in 1..HALF {
                acc += base;
                all.push(acc);
            }
            // acc = HALF · base, so the next window's base is 2 · acc = 2^w · base.
            base = acc.double();
        }
        let affine = <ProjectivePoint as BatchNormalize<[ProjectivePoint]>>::batch_normalize(&all);
        // No multiple is the identity: each is m·2^(w·j)·P with m·2^(w·j) below the
        // (prime) group order's multiples.
        let table = affine
            .iter()
            .map(|a| {
                let e = a.to_encoded_point(false);
                let coordinate = |b: Option<&k256::FieldBytes>| {
                    FieldElement::from_bytes(b.expect("a finite point"))
                        .expect("a coordinate below p")
                };
                Affine {
                    x: coordinate(e.x()),
                    y: coordinate(e.y()),
                }
            })
            .collect();
        Self { table }
    }

    /// The generator's table, built on first use and shared by the process.
    pub fn generator() -> &'static FixedBase {
        static G: OnceLock<FixedBase> = OnceLock::new();
        G.get_or_init(|| FixedBase::new(&AffinePoint::GENERATOR))
    }

    /// Heap bytes the table holds.
    pub fn memory_bytes(&self) -> usize {
        size_of_val(&*self.table)
    }

    /// Heap bytes of any table.
    pub const fn table_bytes() -> usize {
        WINDOWS * HALF * size_of::<Affine>()
    }

    /// `acc + k·P`, in variable time (see the module documentation).
    pub fn mul_add(&self, k: &Scalar, acc: Jacobian) -> Jacobian {
        let mut acc = acc;
        if self.table.is_empty() {
            return acc;
        }
        for (j, d) in signed_digits(k).into_iter().enumerate() {
            let m = d.unsigned_abs() as usize;
            if m != 0 {
                acc.add_affine(&self.table[j * HALF + m - 1], d < 0);
            }
        }
        acc
    }

    /// `k·P`, in variable time.
    pub fn mul(&self, k: &Scalar) -> Jacobian {
        self.mul_add(k, Jacobian::IDENTITY)
    }
}

/// `a·A + b·B` with both points' tables, in variable time.
pub fn lincomb(ta: &FixedBase, a: &Scalar, tb: &FixedBase, b: &Scalar) -> Jacobian {
    tb.mul_add(b, ta.mul(a))
}

/// The scalar's digits `d_j ∈ [−2^(w−1), 2^(w−1)]` with `k = Σ d_j · 2^(w·j)`.
fn signed_digits(k: &Scalar) -> [i16; WINDOWS] {
    let be: [u8; 32] = k.to_bytes().into();
    let mut limbs = [0u64; 5];
    for (i, chunk) in be.rchunks(8).enumerate() {
        limbs[i] = u64::from_be_bytes(chunk.try_into().expect("8 bytes"));
    }
    let bits = |pos: usize| -> u64 {
        let (limb, shift) = (pos / 64, pos % 64);
        let lo = limbs[limb] >> shift;
        let hi = if shift == 0 {
            0
        } else {
            limbs[limb + 1] << (64 - shift)
        };
        (lo | hi) & ((1 << W) - 1)
    };
    let mut out = [0i16; WINDOWS];
    let mut carry = 0i16;
    for (j, d) in out.iter_mut().enumerate() {
        let pos = j * W;
        let raw = if pos < 256 { bits(pos) as i16 } else { 0 } + carry;
        if raw > HALF as i16 {
            *d = raw - (1 << W);
            carry = 1;
        } else {
            *d = raw;
            carry = 0;
        }
    }
    debug_assert_eq!(carry, 0, "the extra window absorbs the top carry");
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use k256::elliptic_curve::Field;
    use k256::elliptic_curve::ops::Reduce;

    fn scalar(bytes: [u8; 32]) -> Scalar {
        <Scalar as Reduce<k256::U256>>::reduce_bytes(&bytes.into())
    }

    /// k256's compressed encoding, the identity as `compress_all` writes it.
    fn k256_encoding(p: &ProjectivePoint) -> [u8; 33] {
        p.to_affine()
            .to_encoded_point(true)
            .as_bytes()
            .try_into()
            .unwrap_or_else(|_| {
                let mut z = [0u8; 33];
                z[0] = 2;
                z
            })
    }

    fn encoding(p: Jacobian) -> [u8; 33] {
        compress_all(&[p])[0]
    }

    fn random_point() -> AffinePoint {
        (ProjectivePoint::GENERATOR * Scalar::random(&mut rand_core::OsRng)).to_affine()
    }

    #[test]
    fn table_multiples_equal_plain_multiplication() {
        let p = (ProjectivePoint::GENERATOR * scalar([7; 32])).to_affine();
        let t = FixedBase::new(&p);
        let mut rng = rand_core::OsRng;
        let mut cases = vec![
            Scalar::ZERO,
            Scalar::ONE,
            -Scalar::ONE,
            scalar([0xff; 32]),
            scalar([0x80; 32]),
            Scalar::from(u64::from(HALF as u32)),
            Scalar::from(u64::from(HALF as u32 + 1)),
        ];
        cases.extend((0..200).map(|_| Scalar::random(&mut rng)));
        for k in cases {
            assert_eq!(
                encoding(t.mul(&k)),
                k256_encoding(&(ProjectivePoint::from(p) * k)),
                "k = {k:?}"
            );
        }
    }

    #[test]
    fn generator_lincomb_equals_k256() {
        let mut rng = rand_core::OsRng;
        let q = random_point();
        let tq = FixedBase::new(&q);
        for _ in 0..100 {
            let (a, b) = (Scalar::random(&mut rng), Scalar::random(&mut rng));
            let expect = ProjectivePoint::GENERATOR * a + ProjectivePoint::from(q) * b;
            assert_eq!(
                encoding(lincomb(FixedBase::generator(), &a, &tq, &b)),
                k256_encoding(&expect)
            );
        }
    }

    #[test]
    fn additions_that_meet_their_own_point_or_its_negation() {
        let p = random_point();
        let t = FixedBase::new(&p);
        let pp = ProjectivePoint::from(p);
        // k·P + k·P: the second walk adds each entry to an accumulator that can equal it
        // (k = 1: P + P goes through the doubling).
        for k in [Scalar::ONE, Scalar::from(5u64), Scalar::from(200u64)] {
            let twice = t.mul_add(&k, t.mul(&k));
            assert_eq!(encoding(twice), k256_encoding(&(pp * (k + k))));
            // k·P + (−k)·P is the identity; adding P afterwards starts over from P.
            let zero = t.mul_add(&-k, t.mul(&k));
            assert!(zero.infinity, "k = {k:?}");
            assert_eq!(
                encoding(zero),
                [2u8].into_iter().chain([0; 32]).collect::<Vec<_>>()[..]
            );
            assert_eq!(encoding(t.mul_add(&Scalar::ONE, zero)), k256_encoding(&pp));
        }
        // Doubling a doubled point, and adding to a doubled accumulator.
        let mut acc = Jacobian::from_affine(&t.table[0], false);
        acc.add_affine(&t.table[0], false); // 2P
        acc = acc.double(); // 4P
        acc.add_affine(&t.table[0], true); // 3P
        assert_eq!(encoding(acc), k256_encoding(&(pp * Scalar::from(3u64))));
    }

    #[test]
    fn batched_encodings_equal_one_at_a_time() {
        let mut rng = rand_core::OsRng;
        let t = FixedBase::new(&random_point());
        let ks: Vec<Scalar> = (0..4).map(|_| Scalar::random(&mut rng)).collect();
        let points = [
            t.mul(&ks[0]),
            Jacobian::IDENTITY,
            t.mul(&ks[1]),
            t.mul_add(&ks[2], t.mul(&ks[3])),
        ];
        let batch = compress_all(&points);
        for (p, enc) in points.iter().zip(batch) {
            assert_eq!(encoding(*p), enc);
        }
        assert_eq!(batch[1][0], 2);
        assert_eq!(batch[1][1..], [0u8; 32]);
    }

    #[test]
    fn the_identity_has_an_empty_table() {
        let t = FixedBase::new(&AffinePoint::IDENTITY);
        assert_eq!(t.memory_bytes(), 0);
        let p = random_point();
        let start = FixedBase::new(&p).mul(&Scalar::ONE);
        assert_eq!(
            encoding(t.mul_add(&Scalar::from(9u64), start)),
            k256_encoding(&p.into())
        );
    }

    #[test]
    fn digits_reconstruct_the_scalar() {
        let mut rng = rand_core::OsRng;
        for _ in 0..200 {
            let k = Scalar::random(&mut rng);
            let mut sum = Scalar::ZERO;
            let radix = Scalar::from(1u64 << W);
            let mut weight = Scalar::ONE;
            for d in signed_digits(&k) {
                assert!(d.unsigned_abs() as usize <= HALF);
                let term = Scalar::from(u64::from(d.unsigned_abs()));
                sum += if d < 0 { -term } else { term } * weight;
                weight *= radix;
            }
            assert_eq!(sum, k);
        }
    }
}

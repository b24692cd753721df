//! Scalar multiplication of a point known in advance, with precomputed multiples.
//!
//! Verifying a ring signature multiplies the same few points over and over: the
//! generator, each ring member's public key and hash-to-curve point, and the signer's key
//! image (fixed per signing key). For such a point a table of its signed radix-2^w
//! multiples turns a scalar multiplication into ⌈256/w⌉ + 1 additions and no doublings,
//! where a multiplication by an unknown point needs about 128 doublings and as many
//! additions.
//!
//! **Variable time:** the additions taken depend on the scalar. Use it only where the
//! scalars are public (verification), never with a secret key or nonce.

use std::sync::OnceLock;

use k256::elliptic_curve::point::BatchNormalize;
use k256::{AffinePoint, ProjectivePoint, Scalar};

/// Bits per window.
const W: usize = 7;
/// Table entries per window: the multiples `1 … 2^(w−1)` (negatives are free).
const HALF: usize = 1 << (W - 1);
/// Windows per scalar: ⌈256/w⌉, plus one for the carry out of the top window.
const WINDOWS: usize = 256_usize.div_ceil(W) + 1;

/// The signed radix-2^w multiples of one point: entry `j·HALF + m − 1` is
/// `m · 2^(w·j) · P`.
pub struct FixedBase {
    table: Box<[AffinePoint]>,
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
    /// a millisecond on a server core).
    pub fn new(p: &AffinePoint) -> Self {
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
        let table = <ProjectivePoint as BatchNormalize<[ProjectivePoint]>>::batch_normalize(&all);
        Self {
            table: table.into_boxed_slice(),
        }
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
        WINDOWS * HALF * size_of::<AffinePoint>()
    }

    /// `acc + k·P`, in variable time (see the module documentation).
    pub fn mul_add(&self, k: &Scalar, acc: ProjectivePoint) -> ProjectivePoint {
        let mut acc = acc;
        for (j, d) in signed_digits(k).into_iter().enumerate() {
            let m = d.unsigned_abs() as usize;
            if m == 0 {
                continue;
            }
            let entry = &self.table[j * HALF + m - 1];
            if d > 0 {
                acc += entry;
            } else {
                acc -= entry;
            }
        }
        acc
    }

    /// `k·P`, in variable time.
    pub fn mul(&self, k: &Scalar) -> ProjectivePoint {
        self.mul_add(k, ProjectivePoint::IDENTITY)
    }
}

/// `a·A + b·B` with both points' tables, in variable time.
pub fn lincomb(ta: &FixedBase, a: &Scalar, tb: &FixedBase, b: &Scalar) -> ProjectivePoint {
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
            assert_eq!(t.mul(&k), ProjectivePoint::from(p) * k, "k = {k:?}");
        }
    }

    #[test]
    fn generator_lincomb_equals_k256() {
        let mut rng = rand_core::OsRng;
        let q = (ProjectivePoint::GENERATOR * Scalar::random(&mut rng)).to_affine();
        let tq = FixedBase::new(&q);
        for _ in 0..100 {
            let (a, b) = (Scalar::random(&mut rng), Scalar::random(&mut rng));
            let expect = ProjectivePoint::GENERATOR * a + ProjectivePoint::from(q) * b;
            assert_eq!(lincomb(FixedBase::generator(), &a, &tq, &b), expect);
        }
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

//! Relay-mining economics: the difficulty target update and the reward a claim earns
//! (spec `poktroll.md` §3). Integer and rational arithmetic is exact; the moving average
//! reproduces Go's `big.Float` at 64-bit precision, rounding to nearest-even.

use k256::elliptic_curve::bigint::{Encoding, U256, U512};

use crate::relay::BASE_TARGET;

/// Weight of the newest block in the relay-count moving average.
pub const EMA_ALPHA: f64 = 0.1;
/// The chain's default `target_num_relays`.
pub const DEFAULT_TARGET_NUM_RELAYS: u64 = 100_000;

/// A non-negative binary float `m · 2^e` as Go's `big.Float` holds it.
#[derive(Clone, Copy, Debug)]
struct BigFloat {
    m: U256,
    e: i32,
}

impl BigFloat {
    fn from_u128(m: u128, e: i32) -> Self {
        Self {
            m: U256::from_u128(m),
            e,
        }
    }

    /// Rounds the mantissa to `prec` bits, nearest-even, as `big.Float` does.
    fn round(self, prec: u32) -> Self {
        let bits = self.m.bits_vartime() as u32;
        if bits <= prec {
            return self;
        }
        let s = (bits - prec) as usize;
        let q = self.m.shr_vartime(s);
        let rem = self.m.wrapping_sub(&q.shl_vartime(s));
        let half = U256::ONE.shl_vartime(s - 1);
        let round_up = rem > half || (rem == half && q.bit_vartime(0));
        let q = if round_up {
            q.wrapping_add(&U256::ONE)
        } else {
            q
        };
        Self {
            m: q,
            e: self.e + s as i32,
        }
        .round(prec) // carrying into a new bit needs one more (exact) shift
    }

    fn mul(self, other: Self, prec: u32) -> Self {
        Self {
            m: self.m.wrapping_mul(&other.m),
            e: self.e + other.e,
        }
        .round(prec)
    }

    fn add(self, other: Self, prec: u32) -> Self {
        if self.m == U256::ZERO {
            return other.round(prec);
        }
        if other.m == U256::ZERO {
            return self.round(prec);
        }
        let e = self.e.min(other.e);
        let a = self.m.shl_vartime((self.e - e) as usize);
        let b = other.m.shl_vartime((other.e - e) as usize);
        Self {
            m: a.wrapping_add(&b),
            e,
        }
        .round(prec)
    }

    /// `Uint64()`: truncation toward zero, saturating.
    fn to_u64(self) -> u64 {
        let v = if self.e >= 0 {
            if self.m.bits_vartime() as i32 + self.e > 64 {
                return u64::MAX;
            }
            self.m.shl_vartime(self.e as usize)
        } else {
            self.m.shr_vartime((-self.e) as usize)
        };
        let bytes = v.to_be_bytes();
        u64::from_be_bytes(bytes[24..].try_into().expect("8 bytes"))
    }
}

/// The next moving average of relays per settlement: `α·current + (1 − α)·previous`,
/// each step rounded to 64 bits as Go's `big.Float` does, then truncated to an integer.
pub fn relays_ema(previous: u64, current: u64) -> u64 {
    const PREC: u32 = 64;
    // α = the float64 nearest 0.1 = A·2^-56 (53 bits); 1 − α is exact in 64 bits.
    let bits = EMA_ALPHA.to_bits();
    let a = (bits & ((1 << 52) - 1)) | (1 << 52);
    let exp = ((bits >> 52) & 0x7ff) as i32 - 1075;
    let alpha = BigFloat::from_u128(a as u128, exp);
    let one_minus_alpha = BigFloat::from_u128((1u128 << -exp) - a as u128, exp);
    let weighted_current = alpha.mul(BigFloat::from_u128(current as u128, 0), PREC);
    let weighted_previous = one_minus_alpha.mul(BigFloat::from_u128(previous as u128, 0), PREC);
    weighted_current.add(weighted_previous, PREC).to_u64()
}

/// The new difficulty target for a service: `base × target_num_relays / ema` (integer
/// division, 32 bytes big-endian), or the base when the average is at or below the
/// target volume. It takes effect at the next session start.
pub fn new_difficulty_target(relays_ema: u64, target_num_relays: u64) -> [u8; 32] {
    if relays_ema <= target_num_relays {
        return BASE_TARGET;
    }
    let base = U512::from_be_slice(&[[0u8; 32], BASE_TARGET].concat());
    let num = base.wrapping_mul(&U512::from_u64(target_num_relays));
    // ema > target_num_relays ≥ 0, so the divisor is non-zero.
    let q = num.wrapping_div(&U512::from_u64(relays_ema));
    q.to_be_bytes()[32..].try_into().expect("32 bytes")
}

/// Pricing parameters, read at the session start height.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Pricing {
    /// `compute_units_to_tokens_multiplier`, in 1/granularity uPOKT.
    pub compute_units_to_tokens_multiplier: u64,
    pub compute_unit_cost_granularity: u64,
}

/// The uPOKT a claim is worth: ⌊claimed CU × (base / target) × CUTTM / granularity⌋,
/// exact. Saturates at `u128::MAX`; `None` for a zero target or granularity.
pub fn claimed_upokt(
    claimed_compute_units: u64,
    target: &[u8; 32],
    pricing: Pricing,
) -> Option<u128> {
    let target = U512::from_be_slice(&[[0u8; 32], *target].concat());
    let base = U512::from_be_slice(&[[0u8; 32], BASE_TARGET].concat());
    let num = U512::from_u64(claimed_compute_units)
        .wrapping_mul(&base)
        .wrapping_mul(&U512::from_u64(pricing.compute_units_to_tokens_multiplier));
    let den = target.wrapping_mul(&U512::from_u64(pricing.compute_unit_cost_granularity));
    if den == U512::ZERO {
        return None;
    }
    let q = num.wrapping_div(&den);
    let bytes = q.to_be_bytes();
    if bytes[..48].iter().any(|&b| b != 0) {
        return Some(u128::MAX);
    }
    Some(u128::from_be_bytes(
        bytes[48..].try_into().expect("16 bytes"),
    ))
}

/// The uPOKT one relay costs an application (the over-servicing meter's unit):
/// ⌊cupr × CUTTM / granularity⌋.
pub fn relay_cost_upokt(compute_units_per_relay: u64, pricing: Pricing) -> Option<u128> {
    (pricing.compute_unit_cost_granularity != 0).then(|| {
        compute_units_per_relay as u128 * pricing.compute_units_to_tokens_multiplier as u128
            / pricing.compute_unit_cost_granularity as u128
    })
}

/// Whether a claim's root is acceptable on chain: sum = count × compute units per relay
/// (at session start), both non-zero.
pub fn claim_sum_is_valid(sum: u64, count: u64, compute_units_per_relay: u64) -> bool {
    sum > 0 && count > 0 && count.checked_mul(compute_units_per_relay) == Some(sum)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ema_follows_binary_float_rounding() {
        assert_eq!(relays_ema(0, 0), 0);
        assert_eq!(relays_ema(0, 10), 1); // 0.1 (float) × 10 = 1.0000000000000000555 → 1
        assert_eq!(relays_ema(100, 100), 100);
        // Expected values from an exact rational model of big.Float's 64-bit rounding.
        assert_eq!(relays_ema(1000, 2000), 1100);
        assert_eq!(relays_ema(3, 7), 3);
        assert_eq!(relays_ema(123_456_789, 987_654_321), 209_876_542);
        assert_eq!(
            relays_ema(1 << 60, (1 << 62) + 5),
            1_498_797_955_988_901_088
        );
        assert_eq!(relays_ema(u64::MAX, u64::MAX), u64::MAX);
    }

    #[test]
    fn difficulty_scales_the_base_target() {
        assert_eq!(new_difficulty_target(50, 100), BASE_TARGET);
        assert_eq!(new_difficulty_target(100, 100), BASE_TARGET);
        let half = new_difficulty_target(200, 100);
        assert_eq!(half[0], 0x7f);
        assert!(half < BASE_TARGET);
    }

    #[test]
    fn reward_at_base_difficulty_is_cu_times_price() {
        let p = Pricing {
            compute_units_to_tokens_multiplier: 42_000_000,
            compute_unit_cost_granularity: 1_000_000,
        };
        assert_eq!(claimed_upokt(1000, &BASE_TARGET, p), Some(42_000));
        // Halving the target doubles the estimated work (within integer rounding).
        let t = new_difficulty_target(200, 100);
        let r = claimed_upokt(1000, &t, p).expect("non-zero target");
        assert!((84_000..=84_001).contains(&r), "{r}");
        assert_eq!(claimed_upokt(1, &[0; 32], p), None);
        assert_eq!(relay_cost_upokt(2, p), Some(84));
        assert!(claim_sum_is_valid(30, 10, 3));
        assert!(!claim_sum_is_valid(31, 10, 3));
        assert!(!claim_sum_is_valid(0, 0, 3));
    }
}

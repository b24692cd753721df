//! Go's `math/rand` (v1) source, and poktroll's `SeededFloat64` / `SeededInt63` built on
//! it (vectors `gorand/`). The chain decides whether a claim needs a proof with these, so
//! the stream must be Go's bit for bit.

mod cooked;

use sha2::{Digest, Sha256};

use cooked::RNG_COOKED;

const RNG_LEN: usize = 607;
const RNG_TAP: usize = 273;
const INT32_MAX: i64 = (1 << 31) - 1;
/// Go replaces a zero seed (mod 2^31 − 1) with this.
const ZERO_SEED: i64 = 89482311;

/// Go's `rngCooked` table, as compiled in (exposed so tests can compare it with the
/// vector file it was transcribed from).
pub fn rng_cooked() -> &'static [i64; RNG_LEN] {
    &RNG_COOKED
}

/// Go's `rngSource`: an additive lagged Fibonacci generator (lags 607 and 273) seeded
/// through the Park–Miller LCG.
#[derive(Clone)]
pub struct GoRand {
    tap: usize,
    feed: usize,
    vec: [i64; RNG_LEN],
}

impl std::fmt::Debug for GoRand {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "GoRand {{ tap: {}, feed: {} }}", self.tap, self.feed)
    }
}

/// `x[n+1] = 48271 · x[n] mod (2^31 − 1)`, by Schrage's method as Go computes it.
fn seedrand(x: i32) -> i32 {
    const A: i32 = 48271;
    const Q: i32 = 44488;
    const R: i32 = 3399;
    let (hi, lo) = (x / Q, x % Q);
    let x = A * lo - R * hi;
    if x < 0 { x + INT32_MAX as i32 } else { x }
}

impl GoRand {
    /// `rand.NewSource(seed)`: only `seed mod (2^31 − 1)` matters.
    pub fn new(seed: i64) -> Self {
        let mut seed = seed % INT32_MAX;
        if seed < 0 {
            seed += INT32_MAX;
        }
        if seed == 0 {
            seed = ZERO_SEED;
        }
        let mut x = seed as i32;
        let mut vec = [0i64; RNG_LEN];
        for i in -20..RNG_LEN as i32 {
            x = seedrand(x);
            if i >= 0 {
                let mut u = (x as i64) << 40;
                x = seedrand(x);
                u ^= (x as i64) << 20;
                x = seedrand(x);
                u ^= x as i64;
                u ^= RNG_COOKED[i as usize];
                vec[i as usize] = u;
            }
        }
        Self {
            tap: 0,
            feed: RNG_LEN - RNG_TAP,
            vec,
        }
    }

    /// `Source64.Uint64()`.
    pub fn uint64(&mut self) -> u64 {
        self.tap = if self.tap == 0 {
            RNG_LEN - 1
        } else {
            self.tap - 1
        };
        self.feed = if self.feed == 0 {
            RNG_LEN - 1
        } else {
            self.feed - 1
        };
        let x = self.vec[self.feed].wrapping_add(self.vec[self.tap]);
        self.vec[self.feed] = x;
        x as u64
    }

    /// `Source.Int63()`.
    pub fn int63(&mut self) -> i64 {
        (self.uint64() & (u64::MAX >> 1)) as i64
    }

    /// `Rand.Float64()`: `Int63 / 2^63`, drawing again on the (practically impossible)
    /// 1.0.
    pub fn float64(&mut self) -> f64 {
        loop {
            let f = self.int63() as f64 / (1u64 << 63) as f64;
            if f != 1.0 {
                return f;
            }
        }
    }
}

/// Go's `binary.Uvarint`: LEB128 of at most 10 bytes. Returns the value and the number
/// of bytes read; on overflow `(0, negative)`, on a too-short buffer `(0, 0)`.
pub fn go_uvarint(buf: &[u8]) -> (u64, i32) {
    let mut x = 0u64;
    let mut shift = 0;
    for (i, &b) in buf.iter().enumerate() {
        let consumed = i as i32 + 1;
        if i == 10 {
            return (0, -consumed);
        }
        if b < 0x80 {
            if i == 9 && b > 1 {
                return (0, -consumed);
            }
            return (x | (b as u64) << shift, consumed);
        }
        x |= ((b & 0x7f) as u64) << shift;
        shift += 7;
    }
    (0, 0)
}

/// Go's `binary.Varint`: [`go_uvarint`] with zig-zag decoding.
pub fn go_varint(buf: &[u8]) -> (i64, i32) {
    let (ux, n) = go_uvarint(buf);
    let x = (ux >> 1) as i64;
    (if ux & 1 != 0 { !x } else { x }, n)
}

/// The seed poktroll derives from its parts: `binary.Varint(SHA-256(parts…))`.
pub fn seed_of(parts: &[&[u8]]) -> i64 {
    let mut h = Sha256::new();
    parts.iter().for_each(|p| h.update(p));
    go_varint(&h.finalize()).0
}

/// poktroll `SeededFloat64(parts…)`: a float in [0, 1) from the SHA-256 of the
/// concatenated parts.
pub fn seeded_float64(parts: &[&[u8]]) -> f64 {
    GoRand::new(seed_of(parts)).float64()
}

/// poktroll `SeededInt63(parts…)`.
pub fn seeded_int63(parts: &[&[u8]]) -> i64 {
    GoRand::new(seed_of(parts)).int63()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn varint_matches_go_on_edges() {
        assert_eq!(go_varint(&[]), (0, 0));
        assert_eq!(go_varint(&[0x01]), (-1, 1));
        assert_eq!(go_varint(&[0x02]), (1, 1));
        assert_eq!(go_varint(&[0x80; 3]), (0, 0));
        assert_eq!(go_varint(&[0xff; 11]).0, 0);
        assert!(go_varint(&[0xff; 11]).1 < 0);
        let mut max = [0xffu8; 10];
        max[9] = 0x01;
        assert_eq!(go_varint(&max), (i64::MIN, 10));
    }
}

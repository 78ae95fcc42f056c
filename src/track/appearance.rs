//! Appearance: unit-length embeddings and each track's gallery of recent ones (DeepSORT's
//! nearest-neighbour cosine metric with a budget).

use std::collections::VecDeque;

/// An embedding scaled to unit length; `None` when it is empty or all zeros (no appearance).
pub fn normalized(feature: &[f32]) -> Option<Box<[f32]>> {
    let norm = feature.iter().map(|v| v * v).sum::<f32>().sqrt();
    (norm > 0.0 && norm.is_finite()).then(|| feature.iter().map(|v| v / norm).collect())
}

/// 1 − cosine similarity of two unit vectors (0 = same direction, 2 = opposite).
pub fn cosine_distance(a: &[f32], b: &[f32]) -> f32 {
    1.0 - dot(a, b)
}

/// Dot product of a stored vector (`f32`, or `i8` codes before their scale) with an `f32` one. The
/// gallery search spends nearly all its time here (50 tracks × 100 samples × 1280 dims per frame),
/// so on x86-64 CPUs with AVX2 and FMA (checked at run time; the portable build targets plain SSE2)
/// the same loop runs compiled for 256-bit registers.
fn dot<T: Copy + Into<f32>>(a: &[T], b: &[f32]) -> f32 {
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma") {
        // SAFETY: the CPU supports AVX2 and FMA, checked just above.
        return unsafe { dot_avx2(a, b) };
    }
    dot_lanes::<T, 8>(a, b)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn dot_avx2<T: Copy + Into<f32>>(a: &[T], b: &[f32]) -> f32 {
    dot_lanes::<T, 32>(a, b)
}

/// `L` independent running sums, so the compiler can keep them in SIMD registers (a single running
/// sum is a serial chain of float adds it may not reorder).
#[inline(always)]
fn dot_lanes<T: Copy + Into<f32>, const L: usize>(a: &[T], b: &[f32]) -> f32 {
    let n = a.len().min(b.len());
    let (a, b) = (&a[..n], &b[..n]);
    let mut lanes = [0f32; L];
    let (a_chunks, b_chunks) = (a.chunks_exact(L), b.chunks_exact(L));
    let tail: f32 = a_chunks.remainder().iter().zip(b_chunks.remainder()).map(|(x, y)| (*x).into() * y).sum();
    for (x, y) in a_chunks.zip(b_chunks) {
        for i in 0..L {
            lanes[i] += x[i].into() * y[i];
        }
    }
    lanes.iter().sum::<f32>() + tail
}

/// The last `budget` embeddings of one track, oldest first.
#[derive(Debug, Clone, Default)]
pub struct Gallery {
    samples: VecDeque<Quantized>,
}

/// A unit vector stored as `i8` codes with one scale: a quarter of the memory the nearest-neighbour
/// search has to read (it is bound by that: 100 samples × 1280 dims per track), for a cosine
/// distance error below 2e-3.
#[derive(Debug, Clone)]
struct Quantized {
    scale: f32,
    codes: Box<[i8]>,
}

impl Quantized {
    fn new(feature: &[f32]) -> Self {
        let peak = feature.iter().fold(0f32, |m, v| m.max(v.abs()));
        let scale = if peak > 0.0 { peak / 127.0 } else { 1.0 };
        let codes = feature.iter().map(|v| (v / scale).round().clamp(-127.0, 127.0) as i8).collect();
        Self { scale, codes }
    }
}

impl Gallery {
    pub fn push(&mut self, feature: Box<[f32]>, budget: usize) {
        self.samples.push_back(Quantized::new(&feature));
        while self.samples.len() > budget.max(1) {
            self.samples.pop_front();
        }
    }

    pub fn len(&self) -> usize {
        self.samples.len()
    }

    pub fn is_empty(&self) -> bool {
        self.samples.is_empty()
    }

    /// Smallest cosine distance from `feature` to any sample; `None` for an empty gallery or a
    /// sample of another length.
    pub fn nearest(&self, feature: &[f32]) -> Option<f32> {
        self.samples
            .iter()
            .filter(|s| s.codes.len() == feature.len())
            .map(|s| 1.0 - s.scale * dot(&s.codes, feature))
            .min_by(|a, b| a.total_cmp(b))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_sample_wins_and_budget_drops_the_oldest() {
        let mut g = Gallery::default();
        let budget = 2;
        g.push(normalized(&[1.0, 0.0]).unwrap(), budget);
        g.push(normalized(&[0.0, 1.0]).unwrap(), budget);
        let probe = normalized(&[1.0, 0.1]).unwrap();
        assert!(g.nearest(&probe).unwrap() < 0.01);
        g.push(normalized(&[0.0, -1.0]).unwrap(), budget);
        assert_eq!(g.len(), 2);
        // [1, 0] is gone: the nearest is now [0, 1] at 1 − 0.1/|…|.
        let d = g.nearest(&probe).unwrap();
        assert!((d - (1.0 - 0.1 / 1.01f32.sqrt())).abs() < 2e-3, "{d}");
    }

    #[test]
    fn dot_matches_a_plain_sum_at_any_length() {
        for n in [0usize, 1, 7, 8, 9, 1280, 1283] {
            let a: Vec<f32> = (0..n).map(|i| (i as f32 * 0.37).sin()).collect();
            let b: Vec<f32> = (0..n).map(|i| (i as f32 * 0.11).cos()).collect();
            let plain: f64 = a.iter().zip(&b).map(|(x, y)| f64::from(*x) * f64::from(*y)).sum();
            assert!((f64::from(dot(&a, &b)) - plain).abs() < 1e-3, "n = {n}");
            assert!((f64::from(dot_lanes::<f32, 8>(&a, &b)) - plain).abs() < 1e-3, "n = {n}");
        }
    }

    #[test]
    fn quantized_samples_keep_cosine_distances_within_2e_3() {
        let mut state = 1u32;
        let mut next = || {
            state = state.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
            (state >> 8) as f32 / (1u32 << 24) as f32 - 0.5
        };
        for _ in 0..50 {
            let a = normalized(&(0..1280).map(|_| next()).collect::<Vec<_>>()).unwrap();
            let noise: Vec<f32> = a.iter().map(|v| v + 0.6 * next() / 36.0).collect();
            let b = normalized(&noise).unwrap();
            let mut g = Gallery::default();
            g.push(a.clone(), 10);
            let exact = cosine_distance(&a, &b);
            let stored = g.nearest(&b).unwrap();
            assert!((exact - stored).abs() < 2e-3, "{exact} vs {stored}");
        }
    }

    #[test]
    fn zero_and_empty_features_have_no_direction() {
        assert!(normalized(&[]).is_none());
        assert!(normalized(&[0.0, 0.0]).is_none());
        assert!(normalized(&[f32::NAN, 1.0]).is_none());
        assert_eq!(cosine_distance(&normalized(&[3.0, 4.0]).unwrap(), &[0.6, 0.8]), 0.0);
    }
}

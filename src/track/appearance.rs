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
    1.0 - a.iter().zip(b).map(|(x, y)| x * y).sum::<f32>()
}

/// The last `budget` embeddings of one track, oldest first.
#[derive(Debug, Clone, Default)]
pub struct Gallery {
    samples: VecDeque<Box<[f32]>>,
}

impl Gallery {
    pub fn push(&mut self, feature: Box<[f32]>, budget: usize) {
        self.samples.push_back(feature);
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
            .filter(|s| s.len() == feature.len())
            .map(|s| cosine_distance(s, feature))
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
        assert!((d - (1.0 - 0.1 / 1.01f32.sqrt())).abs() < 1e-6, "{d}");
    }

    #[test]
    fn zero_and_empty_features_have_no_direction() {
        assert!(normalized(&[]).is_none());
        assert!(normalized(&[0.0, 0.0]).is_none());
        assert!(normalized(&[f32::NAN, 1.0]).is_none());
        assert_eq!(cosine_distance(&normalized(&[3.0, 4.0]).unwrap(), &[0.6, 0.8]), 0.0);
    }
}

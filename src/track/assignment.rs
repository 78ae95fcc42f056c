//! Gated minimum-cost assignment of tracks to detections (the Hungarian step of DeepSORT).
//!
//! The solver is `lsap`, a translation of SciPy's `linear_sum_assignment`, so ties resolve as they
//! do in the Python reference implementations.

/// Cost that marks a pair as impossible (gated out).
pub const INFEASIBLE: f64 = 1e5;

/// A dense cost matrix, row-major: rows are tracks, columns detections.
#[derive(Debug, Clone, PartialEq)]
pub struct CostMatrix {
    pub rows: usize,
    pub cols: usize,
    pub cost: Vec<f64>,
}

impl CostMatrix {
    pub fn new(rows: usize, cols: usize) -> Self {
        Self { rows, cols, cost: vec![0.0; rows * cols] }
    }

    pub fn set(&mut self, row: usize, col: usize, value: f64) {
        self.cost[row * self.cols + col] = value;
    }
}

/// Matched (row, column) pairs and what stayed unmatched, as row and column indices.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Assignment {
    pub matches: Vec<(usize, usize)>,
    pub unmatched_rows: Vec<usize>,
    pub unmatched_cols: Vec<usize>,
}

/// Minimum-cost matching where no pair costs more than `max_cost`: costs above it are clamped just
/// over it before solving (so the solver never prefers an impossible pair) and such pairs are
/// reported unmatched afterwards.
pub fn min_cost_matching(matrix: &CostMatrix, max_cost: f64) -> Assignment {
    let CostMatrix { rows, cols, .. } = *matrix;
    if rows == 0 || cols == 0 {
        return Assignment {
            matches: vec![],
            unmatched_rows: (0..rows).collect(),
            unmatched_cols: (0..cols).collect(),
        };
    }
    let clamped: Vec<f64> =
        matrix.cost.iter().map(|&c| if c > max_cost || !c.is_finite() { max_cost + 1e-5 } else { c }).collect();
    // Every entry is finite, so the solver's only error (NaN or infinite input) cannot occur; treat
    // it as "nothing matched" rather than panic.
    let (assigned_rows, assigned_cols) = lsap::solve(rows, cols, &clamped, false).unwrap_or_default();
    let mut row_taken = vec![false; rows];
    let mut col_taken = vec![false; cols];
    let mut matches = Vec::with_capacity(assigned_rows.len());
    for (&r, &c) in assigned_rows.iter().zip(&assigned_cols) {
        if clamped[r * cols + c] <= max_cost {
            row_taken[r] = true;
            col_taken[c] = true;
            matches.push((r, c));
        }
    }
    Assignment {
        matches,
        unmatched_rows: (0..rows).filter(|&r| !row_taken[r]).collect(),
        unmatched_cols: (0..cols).filter(|&c| !col_taken[c]).collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn matrix(rows: usize, cols: usize, cost: &[f64]) -> CostMatrix {
        CostMatrix { rows, cols, cost: cost.to_vec() }
    }

    #[test]
    fn finds_the_global_minimum_not_the_greedy_one() {
        // Greedy takes (0,0)=1 then (1,1)=10 → 11; optimal is (0,1)+(1,0) = 2+3 = 5.
        let a = min_cost_matching(&matrix(2, 2, &[1.0, 2.0, 3.0, 10.0]), 20.0);
        assert_eq!(a.matches, vec![(0, 1), (1, 0)]);
        assert!(a.unmatched_rows.is_empty() && a.unmatched_cols.is_empty());
    }

    #[test]
    fn pairs_over_the_threshold_stay_unmatched() {
        let a = min_cost_matching(&matrix(2, 3, &[0.1, 0.9, INFEASIBLE, 0.8, INFEASIBLE, 0.95]), 0.5);
        assert_eq!(a.matches, vec![(0, 0)]);
        assert_eq!(a.unmatched_rows, vec![1]);
        assert_eq!(a.unmatched_cols, vec![1, 2]);
    }

    #[test]
    fn empty_sides_leave_everything_unmatched() {
        let a = min_cost_matching(&CostMatrix::new(3, 0), 1.0);
        assert_eq!(a.unmatched_rows, vec![0, 1, 2]);
        assert!(a.matches.is_empty() && a.unmatched_cols.is_empty());
    }

    #[test]
    fn tall_matrices_match_each_column_once() {
        let a = min_cost_matching(&matrix(3, 1, &[0.5, 0.2, 0.3]), 1.0);
        assert_eq!(a.matches, vec![(1, 0)]);
        assert_eq!(a.unmatched_rows, vec![0, 2]);
    }

    #[test]
    fn non_finite_costs_are_treated_as_infeasible() {
        let a = min_cost_matching(&matrix(1, 2, &[f64::NAN, 0.3]), 1.0);
        assert_eq!(a.matches, vec![(0, 1)]);
    }
}

//! Constant-velocity Kalman filter in DeepSORT's box space (Wojke, Bewley & Paulus 2017).
//!
//! State: (cx, cy, a, h, vcx, vcy, va, vh), a = width / height. Process and measurement noise scale with
//! the box height: position 1/20, velocity 1/160, as in the paper's reference implementation.

use nalgebra::{SMatrix, SVector};

pub type StateVector = SVector<f64, 8>;
pub type StateCovariance = SMatrix<f64, 8, 8>;
/// A box as DeepSORT measures it: (cx, cy, a, h).
pub type Measurement = SVector<f64, 4>;
pub type MeasurementCovariance = SMatrix<f64, 4, 4>;

/// The 0.95 quantile of the chi-square distribution with 4 degrees of freedom: the Mahalanobis gate.
pub const CHI2_INV95_4DOF: f64 = 9.4877;

const STD_WEIGHT_POSITION: f64 = 1.0 / 20.0;
const STD_WEIGHT_VELOCITY: f64 = 1.0 / 160.0;

/// A Gaussian over the 8-d state.
#[derive(Debug, Clone, PartialEq)]
pub struct Gaussian {
    pub mean: StateVector,
    pub covariance: StateCovariance,
}

/// Transition F (x += v per frame) and observation H (first four state entries).
fn transition() -> StateCovariance {
    let mut f = StateCovariance::identity();
    for i in 0..4 {
        f[(i, 4 + i)] = 1.0;
    }
    f
}

/// A new track from an unassociated measurement: velocities 0, wide uncertainty.
pub fn initiate(measurement: &Measurement) -> Gaussian {
    let h = measurement[3];
    let mut mean = StateVector::zeros();
    mean.fixed_rows_mut::<4>(0).copy_from(measurement);
    let std = [
        2.0 * STD_WEIGHT_POSITION * h,
        2.0 * STD_WEIGHT_POSITION * h,
        1e-2,
        2.0 * STD_WEIGHT_POSITION * h,
        10.0 * STD_WEIGHT_VELOCITY * h,
        10.0 * STD_WEIGHT_VELOCITY * h,
        1e-5,
        10.0 * STD_WEIGHT_VELOCITY * h,
    ];
    Gaussian { mean, covariance: diagonal_squared(&std) }
}

/// One frame forward: x' = F x, P' = F P Fᵀ + Q(h).
pub fn predict(state: &Gaussian) -> Gaussian {
    let h = state.mean[3];
    let std = [
        STD_WEIGHT_POSITION * h,
        STD_WEIGHT_POSITION * h,
        1e-2,
        STD_WEIGHT_POSITION * h,
        STD_WEIGHT_VELOCITY * h,
        STD_WEIGHT_VELOCITY * h,
        1e-5,
        STD_WEIGHT_VELOCITY * h,
    ];
    let f = transition();
    Gaussian { mean: f * state.mean, covariance: f * state.covariance * f.transpose() + diagonal_squared(&std) }
}

/// The state in measurement space: H x and H P Hᵀ + R(h).
pub fn project(state: &Gaussian) -> (Measurement, MeasurementCovariance) {
    let h = state.mean[3];
    let std = [STD_WEIGHT_POSITION * h, STD_WEIGHT_POSITION * h, 1e-1, STD_WEIGHT_POSITION * h];
    let mean = state.mean.fixed_rows::<4>(0).into_owned();
    let covariance = state.covariance.fixed_view::<4, 4>(0, 0).into_owned() + diagonal_squared(&std);
    (mean, covariance)
}

/// The measurement-corrected state. `None` only if the projected covariance is not positive definite,
/// which the noise model rules out for boxes of positive height.
pub fn update(state: &Gaussian, measurement: &Measurement) -> Option<Gaussian> {
    let (projected_mean, projected_cov) = project(state);
    let cholesky = projected_cov.cholesky()?;
    // K = P Hᵀ S⁻¹, computed as (S⁻¹ H P)ᵀ since S is symmetric.
    let pht = state.covariance.fixed_view::<8, 4>(0, 0).into_owned();
    let gain = cholesky.solve(&pht.transpose()).transpose();
    let innovation = measurement - projected_mean;
    Some(Gaussian {
        mean: state.mean + gain * innovation,
        covariance: state.covariance - gain * projected_cov * gain.transpose(),
    })
}

/// Squared Mahalanobis distance of each measurement from the projected state.
pub fn gating_distances(state: &Gaussian, measurements: &[Measurement]) -> Vec<f64> {
    let (mean, covariance) = project(state);
    let Some(cholesky) = covariance.cholesky() else {
        return vec![f64::INFINITY; measurements.len()];
    };
    let l = cholesky.l();
    measurements
        .iter()
        .map(|m| {
            let d = m - mean;
            l.solve_lower_triangular(&d).map_or(f64::INFINITY, |z| z.norm_squared())
        })
        .collect()
}

fn diagonal_squared<const N: usize>(std: &[f64; N]) -> SMatrix<f64, N, N> {
    SMatrix::<f64, N, N>::from_diagonal(&SVector::<f64, N>::from_fn(|i, _| std[i] * std[i]))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn close(a: f64, b: f64) -> bool {
        (a - b).abs() <= 1e-9 * (1.0 + b.abs())
    }

    // Hand-computed for a 50×100 box centred at (100, 200): h = 100, a = 0.5.
    #[test]
    fn initiate_sets_height_scaled_variances() {
        let g = initiate(&Measurement::new(100.0, 200.0, 0.5, 100.0));
        assert_eq!(g.mean.as_slice(), &[100.0, 200.0, 0.5, 100.0, 0.0, 0.0, 0.0, 0.0]);
        // position std 2·h/20 = 10 → 100; velocity std 10·h/160 = 6.25 → 39.0625
        let expected = [100.0, 100.0, 1e-4, 100.0, 39.0625, 39.0625, 1e-10, 39.0625];
        for (i, e) in expected.iter().enumerate() {
            assert!(close(g.covariance[(i, i)], *e), "P[{i}{i}] = {} ≠ {e}", g.covariance[(i, i)]);
        }
        assert_eq!(g.covariance[(0, 4)], 0.0);
    }

    #[test]
    fn predict_moves_by_velocity_and_grows_uncertainty() {
        let mut g = initiate(&Measurement::new(100.0, 200.0, 0.5, 100.0));
        g.mean[4] = 3.0;
        g.mean[7] = -1.0;
        let p = predict(&g);
        assert_eq!(&p.mean.as_slice()[..4], &[103.0, 200.0, 0.5, 99.0]);
        // P'00 = P00 + P44 + Q00 with Q00 = (h/20)² = 25 (h = 100 before the step)
        assert!(close(p.covariance[(0, 0)], 100.0 + 39.0625 + 25.0));
        // P'04 = P44 (cross term from F), P'44 = P44 + (h/160)²
        assert!(close(p.covariance[(0, 4)], 39.0625));
        assert!(close(p.covariance[(4, 4)], 39.0625 + 0.390625));
        assert!(close(p.covariance[(2, 2)], 1e-4 + 1e-4));
    }

    #[test]
    fn update_pulls_mean_by_the_kalman_gain() {
        let g = initiate(&Measurement::new(100.0, 200.0, 0.5, 100.0));
        // S00 = P00 + R00 = 100 + 25 = 125; K00 = 100/125 = 0.8; K40 = P40/S00 = 0.
        let u = update(&g, &Measurement::new(110.0, 200.0, 0.5, 100.0)).unwrap();
        assert!(close(u.mean[0], 108.0), "{}", u.mean[0]);
        assert!(close(u.mean[4], 0.0));
        // P'00 = P00 - K00·S00·K00 = 100 - 0.8·125·0.8 = 20
        assert!(close(u.covariance[(0, 0)], 20.0));
        // a: S22 = 1e-4 + 1e-2, K22 = 1e-4 / 0.0101
        let u = update(&g, &Measurement::new(100.0, 200.0, 0.6, 100.0)).unwrap();
        assert!(close(u.mean[2], 0.5 + 0.1 * 1e-4 / 0.0101));
    }

    #[test]
    fn gating_distance_is_squared_mahalanobis() {
        let g = initiate(&Measurement::new(100.0, 200.0, 0.5, 100.0));
        // S = diag(125, 125, 0.0101, 125): a 10 px shift in x gives 100/125 = 0.8.
        let d = gating_distances(
            &g,
            &[
                Measurement::new(110.0, 200.0, 0.5, 100.0),
                Measurement::new(110.0, 210.0, 0.5, 110.0),
                Measurement::new(100.0, 200.0, 0.8, 100.0),
            ],
        );
        assert!(close(d[0], 0.8));
        assert!(close(d[1], 2.4));
        assert!(close(d[2], 0.09 / 0.0101));
        assert!(d[2] < CHI2_INV95_4DOF && d[1] < CHI2_INV95_4DOF);
        let far = gating_distances(&g, &[Measurement::new(140.0, 200.0, 0.5, 100.0)]);
        assert!(far[0] > CHI2_INV95_4DOF, "a 40 px jump at h=100 must be gated out: {}", far[0]);
    }
}

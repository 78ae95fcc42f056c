//! Capacity search: the most cameras at a given frame rate whose frames are served within budget
//! (99 % of them, a shed or failed frame counting as late). Doubling finds a bracket, bisection
//! narrows it; every probe is a full load run of its own.

use std::future::Future;

use serde::Serialize;

use super::report::LoadReport;

/// One probe of the search.
#[derive(Debug, Clone, Serialize)]
pub struct Probe {
    pub cameras: usize,
    pub fits: bool,
    pub report: LoadReport,
}

#[derive(Debug, Clone, Serialize)]
pub struct CapacityReport {
    pub pipeline: String,
    pub fps: f64,
    pub budget_ms: f64,
    /// The most cameras that fit; 0 when even one camera does not.
    pub cameras: usize,
    /// True when `cameras` is the search's ceiling, so the real capacity may be higher.
    pub hit_ceiling: bool,
    pub probes: Vec<Probe>,
}

/// Probes 1, 2, 4, … cameras until a load does not fit (or `max_cameras` does), then bisects between
/// the last that fit and the first that did not. `probe(n)` runs `n` cameras and says whether they fit.
/// Returns the capacity and whether it is the ceiling.
pub async fn search<T, E, F, Fut>(max_cameras: usize, mut probe: F) -> Result<(usize, bool, Vec<(usize, bool, T)>), E>
where
    F: FnMut(usize) -> Fut,
    Fut: Future<Output = Result<(bool, T), E>>,
{
    let mut probes = Vec::new();
    let mut run = async |n: usize, probes: &mut Vec<(usize, bool, T)>| -> Result<bool, E> {
        let (fits, detail) = probe(n).await?;
        probes.push((n, fits, detail));
        Ok(fits)
    };
    let max_cameras = max_cameras.max(1);
    let mut fitting = 0;
    let mut n = 1;
    let failing = loop {
        if !run(n, &mut probes).await? {
            break n;
        }
        fitting = n;
        if n == max_cameras {
            return Ok((n, true, probes));
        }
        n = (n * 2).min(max_cameras);
    };
    let (mut low, mut high) = (fitting, failing);
    while high - low > 1 {
        let mid = low + (high - low) / 2;
        if run(mid, &mut probes).await? {
            low = mid;
        } else {
            high = mid;
        }
    }
    Ok((low, false, probes))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn searched(capacity: usize, max: usize) -> (usize, bool, Vec<usize>) {
        let result = futures::executor::block_on(search(max, async |n| Ok::<_, ()>((n <= capacity, ()))));
        let (found, ceiling, probes) = result.expect("search");
        (found, ceiling, probes.into_iter().map(|(n, _, ())| n).collect())
    }

    #[test]
    fn finds_the_largest_fitting_count_with_few_probes() {
        assert_eq!(searched(5, 64), (5, false, vec![1, 2, 4, 8, 6, 5]));
        assert_eq!(searched(8, 64), (8, false, vec![1, 2, 4, 8, 16, 12, 10, 9]));
        assert_eq!(searched(1, 64), (1, false, vec![1, 2]));
    }

    #[test]
    fn none_fit_and_all_fit_are_told_apart() {
        assert_eq!(searched(0, 64), (0, false, vec![1]));
        assert_eq!(searched(100, 6), (6, true, vec![1, 2, 4, 6]));
        assert_eq!(searched(5, 6), (5, false, vec![1, 2, 4, 6, 5]));
    }
}

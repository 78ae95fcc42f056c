//! Service-time estimates per batch size, from the most recent measured batches.
//!
//! Each size keeps its last [`WINDOW`] measurements that are younger than [`MAX_AGE`]. Two figures
//! come out of them: the *typical* time (the median), which decides which batch sizes pay, and the
//! *expected worst* time (the second-largest), on which admission judges whether a frame can still
//! make its deadline. Both are order statistics, so a single outlier — a cold run, a batch
//! preempted by another process — moves neither by more than one rank, and it leaves the window
//! after [`WINDOW`] further batches or [`MAX_AGE`], whichever comes first. Measurements age out
//! even while nothing runs, so an estimate made on a busy machine cannot outlive the busy spell: an
//! estimate with no live measurement is unknown, and unknown sheds nothing.

use std::collections::VecDeque;
use std::time::Duration;

use tokio::time::Instant;

/// Measurements kept per batch size.
pub const WINDOW: usize = 16;
/// Measurements older than this no longer count.
pub const MAX_AGE: Duration = Duration::from_secs(5);

/// Which figure of a batch size's recent times.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Figure {
    /// The median.
    Typical,
    /// The second-largest (the largest of a single measurement): the slowest of the window but
    /// one outlier, about the 94th percentile of a full window.
    Worst,
}

#[derive(Debug, Clone)]
pub struct ServiceTimes {
    /// Index = batch size (0 unused); each the recent (when, µs) measurements, oldest first.
    per_size: Vec<VecDeque<(Instant, u64)>>,
}

impl ServiceTimes {
    pub fn new(max_batch: usize) -> Self {
        Self { per_size: vec![VecDeque::with_capacity(WINDOW); max_batch.max(1) + 1] }
    }

    fn size_index(&self, items: usize) -> usize {
        items.clamp(1, self.per_size.len() - 1)
    }

    /// Records that a batch of `items` took `took`, measured at `at`.
    pub fn record(&mut self, items: usize, took: Duration, at: Instant) {
        let index = self.size_index(items);
        let Some(window) = self.per_size.get_mut(index) else { return };
        if window.len() == WINDOW {
            window.pop_front();
        }
        window.push_back((at, u64::try_from(took.as_micros()).unwrap_or(u64::MAX).max(1)));
    }

    /// `figure` of the live measurements of exactly `items`, µs; `None` when there is none.
    fn measured(&self, items: usize, figure: Figure, now: Instant) -> Option<u64> {
        self.figure_of(items, figure, |at| now.saturating_duration_since(at) < MAX_AGE)
    }

    /// `figure` of the measurements of exactly `items` that `keep` accepts (by when they were made).
    fn figure_of(&self, items: usize, figure: Figure, keep: impl Fn(Instant) -> bool) -> Option<u64> {
        let window = self.per_size.get(items)?;
        let mut live: Vec<u64> = window.iter().filter(|(at, _)| keep(*at)).map(|&(_, us)| us).collect();
        if live.is_empty() {
            return None;
        }
        live.sort_unstable();
        let rank = match figure {
            Figure::Typical => live.len().div_ceil(2),
            Figure::Worst => live.len().saturating_sub(1),
        };
        live.get(rank.clamp(1, live.len()) - 1).copied()
    }

    /// `figure` for a batch of `items`: its own measurements once there are live ones, else the
    /// nearest smaller measured size scaled linearly, else the nearest larger one as is. `None`
    /// when no size has a live measurement.
    pub fn estimate(&self, items: usize, figure: Figure, now: Instant) -> Option<Duration> {
        let n = self.size_index(items);
        if let Some(us) = self.measured(n, figure, now) {
            return Some(Duration::from_micros(us));
        }
        if let Some((k, us)) = (1..n).rev().find_map(|k| self.measured(k, figure, now).map(|us| (k, us))) {
            return Some(Duration::from_micros(us.saturating_mul(n as u64) / k as u64));
        }
        (n + 1..self.per_size.len()).find_map(|k| self.measured(k, figure, now)).map(Duration::from_micros)
    }

    /// The largest batch size up to `max` that pays: one never measured (so that it gets tried),
    /// or one measurably cheaper per item than single runs (by 10 %), on the typical times of the
    /// window however old (a size that did not pay is not tried again just because time passed).
    /// On a CPU, where a batch of n costs about n single runs, frames then ride one at a time and
    /// the first of them is answered sooner at the same throughput; on a GPU batches pay and form.
    pub fn paying_size(&self, max: usize) -> usize {
        let typical = |k: usize| self.figure_of(k, Figure::Typical, |_| true);
        let Some(single) = typical(1) else { return max };
        let largest = max.min(self.per_size.len() - 1);
        (2..=largest)
            .rev()
            .find(|&k| match typical(k) {
                None => true,
                Some(batch) => (batch as f64 / k as f64) < single as f64 * 0.9,
            })
            .unwrap_or(1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(v: u64) -> Duration {
        Duration::from_millis(v)
    }

    #[test]
    fn nothing_measured_is_unknown() {
        let times = ServiceTimes::new(4);
        assert_eq!(times.estimate(1, Figure::Worst, Instant::now()), None);
        assert_eq!(times.paying_size(4), 4);
    }

    #[test]
    fn one_slow_batch_moves_neither_figure_once_a_few_are_measured() {
        let mut times = ServiceTimes::new(1);
        let now = Instant::now();
        for _ in 0..10 {
            times.record(1, ms(30), now);
        }
        times.record(1, ms(900), now);
        assert_eq!(times.estimate(1, Figure::Typical, now), Some(ms(30)));
        assert_eq!(times.estimate(1, Figure::Worst, now), Some(ms(30)), "one outlier is ignored");
    }

    #[test]
    fn a_slow_spell_leaves_the_window_after_window_batches() {
        let mut times = ServiceTimes::new(1);
        let now = Instant::now();
        for _ in 0..WINDOW {
            times.record(1, ms(200), now);
        }
        for _ in 0..WINDOW {
            times.record(1, ms(30), now);
        }
        assert_eq!(times.estimate(1, Figure::Worst, now), Some(ms(30)));
    }

    #[test]
    fn measurements_age_out_even_while_nothing_runs() {
        let mut times = ServiceTimes::new(1);
        let then = Instant::now();
        times.record(1, ms(500), then);
        assert_eq!(times.estimate(1, Figure::Worst, then + MAX_AGE / 2), Some(ms(500)));
        assert_eq!(times.estimate(1, Figure::Worst, then + MAX_AGE), None, "an old estimate is no estimate");
    }

    #[test]
    fn worst_is_the_second_largest_and_typical_the_median() {
        let mut times = ServiceTimes::new(1);
        let now = Instant::now();
        times.record(1, ms(70), now);
        assert_eq!(times.estimate(1, Figure::Worst, now), Some(ms(70)), "one measurement is its own worst");
        for v in 1..=9 {
            times.record(1, ms(v * 10), now);
        }
        assert_eq!(times.estimate(1, Figure::Worst, now), Some(ms(80)));
        assert_eq!(times.estimate(1, Figure::Typical, now), Some(ms(50)));
    }

    #[test]
    fn estimates_come_from_the_nearest_measured_batch_size() {
        let mut times = ServiceTimes::new(8);
        let now = Instant::now();
        times.record(4, ms(80), now);
        // Only a larger size known: as is.
        assert_eq!(times.estimate(1, Figure::Typical, now), Some(ms(80)));
        times.record(2, ms(44), now);
        assert_eq!(times.estimate(2, Figure::Typical, now), Some(ms(44)));
        // Unknown sizes scale the nearest smaller measured size linearly.
        assert_eq!(times.estimate(3, Figure::Typical, now), Some(ms(66)));
        assert_eq!(times.estimate(8, Figure::Typical, now), Some(ms(160)));
        // Sizes past max_batch are max_batch.
        assert_eq!(times.estimate(20, Figure::Typical, now), Some(ms(160)));
    }

    #[test]
    fn batches_pay_only_when_cheaper_per_item_than_single_runs() {
        let now = Instant::now();
        // A CPU: a batch of n costs n single runs.
        let mut cpu = ServiceTimes::new(4);
        cpu.record(1, ms(20), now);
        cpu.record(2, ms(40), now);
        cpu.record(4, ms(80), now);
        assert_eq!(cpu.paying_size(4), 3, "size 3 not measured yet: tried");
        cpu.record(3, ms(60), now);
        assert_eq!(cpu.paying_size(4), 1);
        // Not tried again once its measurements are old: they still say it does not pay.
        assert_eq!(cpu.estimate(4, Figure::Typical, now + MAX_AGE), None);
        assert_eq!(cpu.paying_size(4), 1);
        // A GPU: a batch of four costs little more than one.
        let mut gpu = ServiceTimes::new(4);
        gpu.record(1, ms(2), now);
        gpu.record(4, ms(3), now);
        assert_eq!(gpu.paying_size(4), 4);
    }
}

//! Generic dynamic batcher with Triton's semantics: a bounded queue per model; a batch ships when it
//! holds `max_batch` items or when its oldest item has waited `max_queue_delay`; an item that can no
//! longer meet its deadline is shed before it reaches the model; a full queue refuses at once.
//! Beyond Triton: service time is estimated per batch size, and a batch is cut short when its
//! oldest items would miss their deadline at its full size but make it at a smaller one (on a CPU a
//! batch of two costs about two single runs, so a full batch can sink frames a smaller one saves).
//! And overload is shared fairly: each item names its flow (a camera, to the pipelines), and when
//! more items wait than the next batch takes, the flows served least lately go first, so the
//! frames shed are spread over every flow rather than falling on whichever arrive at unlucky moments.
//!
//! Model workers pull: a worker asks for the next batch only when it is free, so under load batches
//! grow by themselves while the worker is busy. Time comes from tokio's clock, which tests pause and
//! advance instead of sleeping. Its timers have 1 ms resolution, so a `max_queue_delay` rounds up to
//! the next millisecond. Nothing here knows about images or models.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

use tokio::sync::Notify;
use tokio::time::Instant;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BatchPolicy {
    pub max_batch: usize,
    pub max_queue_delay: Duration,
    pub max_queue_size: usize,
}

/// An item waiting in the queue.
#[derive(Debug)]
pub struct Queued<T> {
    pub item: T,
    /// Who the item belongs to, for fair shedding (opaque here).
    pub flow: u64,
    pub enqueued: Instant,
    pub deadline: Instant,
}

/// How well a flow has been served lately: an exponential average (α = 1/8) of 1 per item that
/// rode a batch and 0 per item shed.
#[derive(Debug, Clone, Copy)]
struct FlowShare {
    served: f32,
    seen: Instant,
}

/// Flows remembered at most before idle ones are forgotten.
const MAX_FLOWS: usize = 1024;
/// A flow unseen this long is forgotten when the table is full.
const FLOW_IDLE: Duration = Duration::from_secs(10);

/// What a worker gets: items to run together, and items shed because they could no longer make
/// their deadline. Either may be empty, not both.
#[derive(Debug)]
pub struct Batch<T> {
    pub items: Vec<Queued<T>>,
    pub shed: Vec<Queued<T>>,
}

/// The queue was full; the item is handed back so its owner can answer it.
#[derive(Debug)]
pub struct QueueFull<T> {
    pub item: T,
    pub capacity: usize,
}

#[derive(Debug)]
pub struct BatchQueue<T> {
    policy: BatchPolicy,
    state: Mutex<State<T>>,
    notify: Notify,
    /// Smoothed time a batch spends in the model, µs, per batch size (index = items; 0 = not yet
    /// measured): an item that would finish after its deadline even if it ran next, alone, is shed.
    service_us: Vec<AtomicU64>,
    /// Smoothed absolute deviation of that time, µs, per batch size. Admission counts on the mean
    /// plus twice this (as TCP's retransmission timer does with round trips): on a busy CPU a batch
    /// often runs well past its average, and a frame admitted on the average alone then misses.
    service_dev_us: Vec<AtomicU64>,
}

#[derive(Debug)]
struct State<T> {
    items: VecDeque<Queued<T>>,
    closed: bool,
    flows: HashMap<u64, FlowShare>,
    /// When a batch's service time was last measured.
    last_measured: Option<Instant>,
}

/// A service-time estimate older than this sheds nothing: if every frame were shed on it, no batch
/// would run to correct it (one slow first batch would otherwise shed every frame from then on).
const STALE_ESTIMATE: Duration = Duration::from_secs(1);

impl<T> State<T> {
    fn share(&self, flow: u64) -> f32 {
        self.flows.get(&flow).map_or(1.0, |f| f.served)
    }

    fn record(&mut self, flow: u64, served: bool, now: Instant) {
        if self.flows.len() >= MAX_FLOWS && !self.flows.contains_key(&flow) {
            self.flows.retain(|_, f| now.saturating_duration_since(f.seen) < FLOW_IDLE);
        }
        if self.flows.len() >= MAX_FLOWS && !self.flows.contains_key(&flow) {
            return;
        }
        let share = self.flows.entry(flow).or_insert(FlowShare { served: 1.0, seen: now });
        share.served = share.served * 0.875 + if served { 0.125 } else { 0.0 };
        share.seen = now;
    }
}

impl<T> BatchQueue<T> {
    pub fn new(policy: BatchPolicy) -> Self {
        Self {
            policy,
            state: Mutex::new(State {
                items: VecDeque::new(),
                closed: false,
                flows: HashMap::new(),
                last_measured: None,
            }),
            notify: Notify::new(),
            service_us: (0..=policy.max_batch.max(1)).map(|_| AtomicU64::new(0)).collect(),
            service_dev_us: (0..=policy.max_batch.max(1)).map(|_| AtomicU64::new(0)).collect(),
        }
    }

    pub fn policy(&self) -> BatchPolicy {
        self.policy
    }

    fn lock(&self) -> MutexGuard<'_, State<T>> {
        // A panic elsewhere cannot leave the queue half-updated: every critical section is a plain push/drain.
        self.state.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    pub fn len(&self) -> usize {
        self.lock().items.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Queues an item of `flow`, or hands it back at once when `max_queue_size` items already wait.
    pub fn submit(&self, item: T, flow: u64, deadline: Instant) -> Result<(), QueueFull<T>> {
        {
            let mut state = self.lock();
            if state.closed || state.items.len() >= self.policy.max_queue_size {
                return Err(QueueFull { item, capacity: self.policy.max_queue_size });
            }
            state.items.push_back(Queued { item, flow, enqueued: Instant::now(), deadline });
        }
        self.notify.notify_one();
        Ok(())
    }

    /// Stops accepting items; workers drain what is queued, then `next_batch` returns `None`.
    pub fn close(&self) {
        self.lock().closed = true;
        self.notify.notify_waiters();
    }

    /// Feeds the shedding estimate with the measured service time of a batch of `items`
    /// (exponential averages per batch size, α = 1/4, of the time and of its deviation).
    pub fn record_service_time(&self, items: usize, took: Duration) {
        let index = items.clamp(1, self.service_us.len() - 1);
        let (Some(mean), Some(dev)) = (self.service_us.get(index), self.service_dev_us.get(index)) else { return };
        let sample = took.as_micros().min(u128::from(u64::MAX / 4)) as u64;
        let old = mean.load(Ordering::Relaxed);
        self.lock().last_measured = Some(Instant::now());
        if old == 0 {
            mean.store(sample.max(1), Ordering::Relaxed);
            dev.store(0, Ordering::Relaxed);
        } else {
            let old_dev = dev.load(Ordering::Relaxed);
            dev.store((old_dev * 3 + sample.abs_diff(old)) / 4, Ordering::Relaxed);
            mean.store((old * 3 + sample) / 4, Ordering::Relaxed);
        }
    }

    /// Expected service time of a batch of `items`: its own average once measured, else the nearest
    /// smaller measured size scaled linearly, else the nearest larger one, else zero.
    pub fn service_estimate(&self, items: usize) -> Duration {
        self.resolve(items, |k| self.service_us[k].load(Ordering::Relaxed))
    }

    /// The service time a batch of `items` is admitted on: the average plus twice its deviation,
    /// resolved across batch sizes as [`Self::service_estimate`].
    pub fn service_bound(&self, items: usize) -> Duration {
        self.resolve(items, |k| {
            let mean = self.service_us[k].load(Ordering::Relaxed);
            if mean == 0 { 0 } else { mean.saturating_add(self.service_dev_us[k].load(Ordering::Relaxed) * 2) }
        })
    }

    /// `per_size(k)` (µs, 0 = unmeasured) for `items`, from the nearest measured size.
    fn resolve(&self, items: usize, per_size: impl Fn(usize) -> u64) -> Duration {
        let n = items.clamp(1, self.service_us.len() - 1);
        if per_size(n) > 0 {
            return Duration::from_micros(per_size(n));
        }
        if let Some(k) = (1..n).rev().find(|&k| per_size(k) > 0) {
            return Duration::from_micros(per_size(k).saturating_mul(n as u64) / k as u64);
        }
        let larger = (n + 1..self.service_us.len()).find(|&k| per_size(k) > 0);
        Duration::from_micros(larger.map_or(0, per_size))
    }

    /// The largest batch size up to `max` that pays: one not measured yet (so that it gets tried), or
    /// one measurably cheaper per item than single runs (by 10 %). On a CPU, where a batch of n costs
    /// about n single runs, frames then ride one at a time and the first of them is answered sooner
    /// at the same throughput; on a GPU batches pay and form as before.
    fn paying_size(&self, max: usize) -> usize {
        let measured = |k: usize| self.service_us.get(k).map_or(0, |slot| slot.load(Ordering::Relaxed));
        let single = measured(1);
        if single == 0 {
            return max;
        }
        let size = (2..=max.min(self.service_us.len() - 1)).rev().find(|&k| {
            let batch = measured(k);
            batch == 0 || (batch as f64 / k as f64) < single as f64 * 0.9
        });
        size.unwrap_or(1)
    }

    /// Waits for the next batch. Returns `None` once the queue is closed and empty.
    pub async fn next_batch(&self) -> Option<Batch<T>> {
        loop {
            let notified = self.notify.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            let wake_at = {
                let mut state = self.lock();
                let now = Instant::now();
                let fresh = state.last_measured.is_some_and(|at| now.saturating_duration_since(at) < STALE_ESTIMATE);
                let bound = |n: usize| if fresh { self.service_bound(n) } else { Duration::ZERO };
                let finish_alone = now + bound(1);
                let mut shed = Vec::new();
                let mut i = 0;
                while i < state.items.len() {
                    if state.items[i].deadline < finish_alone {
                        if let Some(q) = state.items.remove(i) {
                            shed.push(q);
                        }
                    } else {
                        i += 1;
                    }
                }
                for q in &shed {
                    state.record(q.flow, false, now);
                }
                match state.items.front() {
                    None if !shed.is_empty() => {
                        return Some(Batch { items: Vec::new(), shed });
                    }
                    None if state.closed => return None,
                    None => None,
                    Some(oldest) => {
                        let due = oldest.enqueued + self.policy.max_queue_delay;
                        if state.items.len() >= self.policy.max_batch || now >= due || state.closed {
                            // Least-served flows first; within a flow, and among equals, oldest first.
                            let shares: Vec<f32> = state.items.iter().map(|q| state.share(q.flow)).collect();
                            let mut order: Vec<usize> = (0..state.items.len()).collect();
                            order.sort_by(|&a, &b| shares[a].total_cmp(&shares[b]).then(a.cmp(&b)));
                            let mut n = order.len().min(self.policy.max_batch);
                            while n > 1 {
                                let finish = now + bound(n);
                                if order[..n].iter().all(|&i| state.items[i].deadline >= finish) {
                                    break;
                                }
                                n -= 1;
                            }
                            let n = self.paying_size(n);
                            let mut chosen = order[..n].to_vec();
                            chosen.sort_unstable();
                            let mut items = Vec::with_capacity(n);
                            for &i in chosen.iter().rev() {
                                if let Some(q) = state.items.remove(i) {
                                    items.push(q);
                                }
                            }
                            items.reverse();
                            for q in &items {
                                state.record(q.flow, true, now);
                            }
                            return Some(Batch { items, shed });
                        }
                        if !shed.is_empty() {
                            return Some(Batch { items: Vec::new(), shed });
                        }
                        Some(due)
                    }
                }
            };
            match wake_at {
                Some(due) => {
                    tokio::select! {
                        _ = &mut notified => {}
                        _ = tokio::time::sleep_until(due) => {}
                    }
                }
                None => notified.await,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Service times measured many times over: their deviation has decayed to nothing, so
    /// admission counts on the time itself.
    fn steady<T>(q: &BatchQueue<T>, items: usize, took: Duration) {
        for _ in 0..40 {
            q.record_service_time(items, took);
        }
        assert_eq!(q.service_bound(items), took);
    }

    fn policy(max_batch: usize, delay_us: u64, size: usize) -> BatchPolicy {
        BatchPolicy { max_batch, max_queue_delay: Duration::from_micros(delay_us), max_queue_size: size }
    }

    fn far() -> Instant {
        Instant::now() + Duration::from_secs(60)
    }

    #[tokio::test(start_paused = true)]
    async fn full_batch_ships_at_once() {
        let q = BatchQueue::new(policy(4, 10_000, 16));
        for i in 0..4 {
            q.submit(i, 0, far()).expect("room");
        }
        let start = Instant::now();
        let batch = q.next_batch().await.expect("batch");
        assert_eq!(batch.items.iter().map(|q| q.item).collect::<Vec<_>>(), vec![0, 1, 2, 3]);
        assert_eq!(Instant::now(), start, "a full batch must not wait");
    }

    #[tokio::test(start_paused = true)]
    async fn partial_batch_ships_when_oldest_waited_max_delay() {
        let q = BatchQueue::new(policy(8, 2_000, 16));
        q.submit(1, 0, far()).expect("room");
        tokio::time::advance(Duration::from_millis(1)).await;
        q.submit(2, 0, far()).expect("room");
        let start = Instant::now();
        let batch = q.next_batch().await.expect("batch");
        assert_eq!(batch.items.len(), 2);
        // The oldest entered 1 ms before `start`: 1 ms more.
        assert_eq!(Instant::now() - start, Duration::from_millis(1));
    }

    #[tokio::test(start_paused = true)]
    async fn batch_never_exceeds_max_batch() {
        let q = BatchQueue::new(policy(3, 0, 16));
        for i in 0..7 {
            q.submit(i, 0, far()).expect("room");
        }
        let sizes: Vec<usize> = [
            q.next_batch().await.expect("1").items.len(),
            q.next_batch().await.expect("2").items.len(),
            q.next_batch().await.expect("3").items.len(),
        ]
        .into();
        assert_eq!(sizes, vec![3, 3, 1]);
    }

    #[tokio::test(start_paused = true)]
    async fn full_queue_refuses_at_once_and_hands_item_back() {
        let q = BatchQueue::new(policy(2, 0, 2));
        q.submit("a", 0, far()).expect("room");
        q.submit("b", 0, far()).expect("room");
        let refused = q.submit("c", 0, far()).expect_err("full");
        assert_eq!(refused.item, "c");
        assert_eq!(refused.capacity, 2);
    }

    #[tokio::test(start_paused = true)]
    async fn item_that_cannot_meet_its_deadline_is_shed() {
        let q = BatchQueue::new(policy(4, 0, 16));
        q.record_service_time(1, Duration::from_millis(40));
        let now = Instant::now();
        q.submit("late", 0, now + Duration::from_millis(10)).expect("room");
        q.submit("fine", 0, now + Duration::from_millis(100)).expect("room");
        let batch = q.next_batch().await.expect("batch");
        assert_eq!(batch.shed.iter().map(|q| q.item).collect::<Vec<_>>(), vec!["late"]);
        assert_eq!(batch.items.iter().map(|q| q.item).collect::<Vec<_>>(), vec!["fine"]);
    }

    #[tokio::test(start_paused = true)]
    async fn waiting_worker_wakes_when_batch_fills() {
        let q = std::sync::Arc::new(BatchQueue::new(policy(2, 1_000_000, 16)));
        q.submit(1, 0, far()).expect("room");
        let waiter = {
            let q = q.clone();
            tokio::spawn(async move { q.next_batch().await.map(|b| b.items.len()) })
        };
        tokio::task::yield_now().await;
        tokio::time::advance(Duration::from_micros(10)).await;
        q.submit(2, 0, far()).expect("room");
        assert_eq!(waiter.await.expect("join"), Some(2));
    }

    #[tokio::test(start_paused = true)]
    async fn closed_queue_drains_then_ends() {
        let q = BatchQueue::new(policy(4, 1_000_000, 16));
        q.submit(1, 0, far()).expect("room");
        q.close();
        assert!(q.submit(2, 0, far()).is_err(), "closed queue accepts nothing");
        assert_eq!(q.next_batch().await.expect("drain").items.len(), 1);
        assert!(q.next_batch().await.is_none());
    }

    #[test]
    fn estimates_come_from_the_nearest_measured_batch_size() {
        let q: BatchQueue<()> = BatchQueue::new(policy(8, 0, 8));
        assert_eq!(q.service_estimate(3), Duration::ZERO, "nothing measured yet");
        q.record_service_time(4, Duration::from_millis(80));
        // Only larger sizes known: the nearest larger one, as is.
        assert_eq!(q.service_estimate(1), Duration::from_millis(80));
        q.record_service_time(2, Duration::from_millis(44));
        assert_eq!(q.service_estimate(2), Duration::from_millis(44));
        // Unknown sizes scale the nearest smaller measured size linearly.
        assert_eq!(q.service_estimate(3), Duration::from_millis(66));
        assert_eq!(q.service_estimate(8), Duration::from_millis(160));
        // Sizes past max_batch are max_batch.
        assert_eq!(q.service_estimate(20), Duration::from_millis(160));
    }

    #[tokio::test(start_paused = true)]
    async fn a_batch_is_cut_short_so_its_oldest_items_still_make_their_deadline() {
        let q = BatchQueue::new(policy(4, 0, 16));
        steady(&q, 1, Duration::from_millis(20));
        steady(&q, 2, Duration::from_millis(30));
        steady(&q, 4, Duration::from_millis(60));
        let now = Instant::now();
        // The oldest can wait 35 ms: a batch of two (30 ms) makes it, one of three (45 ms) does not.
        q.submit("a", 0, now + Duration::from_millis(35)).expect("room");
        q.submit("b", 0, now + Duration::from_millis(200)).expect("room");
        q.submit("c", 0, now + Duration::from_millis(200)).expect("room");
        let batch = q.next_batch().await.expect("batch");
        assert!(batch.shed.is_empty());
        assert_eq!(batch.items.iter().map(|q| q.item).collect::<Vec<_>>(), vec!["a", "b"]);
        // The rest ship next, at their own size.
        let batch = q.next_batch().await.expect("batch");
        assert_eq!(batch.items.iter().map(|q| q.item).collect::<Vec<_>>(), vec!["c"]);
    }

    #[tokio::test(start_paused = true)]
    async fn under_contention_the_flow_shed_most_lately_rides_first() {
        let q = BatchQueue::new(policy(4, 0, 16));
        steady(&q, 1, Duration::from_millis(20));
        steady(&q, 2, Duration::from_millis(40));
        // Flow 7's last three items could not make it and were shed.
        for _ in 0..3 {
            q.submit("hopeless", 7, Instant::now() + Duration::from_millis(5)).expect("room");
            let batch = q.next_batch().await.expect("batch");
            assert_eq!(batch.shed.len(), 1);
        }
        // Now flow 1's item is older, but only one of the two can ride next (a pair takes 40 ms).
        let now = Instant::now();
        q.submit("flow 1", 1, now + Duration::from_millis(30)).expect("room");
        q.submit("flow 7", 7, now + Duration::from_millis(30)).expect("room");
        let batch = q.next_batch().await.expect("batch");
        assert_eq!(batch.items.iter().map(|q| q.item).collect::<Vec<_>>(), vec!["flow 7"]);
        // Without a shed record, the oldest goes first.
        q.submit("flow 2", 2, Instant::now() + Duration::from_millis(30)).expect("room");
        let batch = q.next_batch().await.expect("batch");
        assert_eq!(batch.items.iter().map(|q| q.item).collect::<Vec<_>>(), vec!["flow 1"]);
    }

    #[tokio::test(start_paused = true)]
    async fn a_flows_own_items_keep_their_order() {
        let q = BatchQueue::new(policy(2, 0, 16));
        for item in 0..4 {
            q.submit(item, 9, far()).expect("room");
        }
        q.submit(10, 3, far()).expect("room");
        let mut shipped = Vec::new();
        while shipped.len() < 5 {
            shipped.extend(q.next_batch().await.expect("batch").items.into_iter().map(|q| q.item));
        }
        let flow_9: Vec<i32> = shipped.iter().copied().filter(|&i| i < 10).collect();
        assert_eq!(flow_9, vec![0, 1, 2, 3]);
    }

    #[tokio::test(start_paused = true)]
    async fn batches_form_only_as_large_as_they_pay() {
        // A CPU: a batch of n costs n single runs. Frames ride one at a time.
        let q = BatchQueue::new(policy(4, 0, 16));
        q.record_service_time(1, Duration::from_millis(20));
        q.record_service_time(2, Duration::from_millis(40));
        q.record_service_time(4, Duration::from_millis(80));
        for item in 0..4 {
            q.submit(item, 0, far()).expect("room");
        }
        assert_eq!(q.next_batch().await.expect("batch").items.len(), 3, "size 3 not measured yet: tried");
        q.record_service_time(3, Duration::from_millis(60));
        q.submit(4, 0, far()).expect("room");
        q.submit(5, 0, far()).expect("room");
        assert_eq!(q.next_batch().await.expect("batch").items.len(), 1);

        // A GPU: a batch of four costs little more than one. It forms whole.
        let q = BatchQueue::new(policy(4, 0, 16));
        q.record_service_time(1, Duration::from_millis(2));
        q.record_service_time(4, Duration::from_millis(3));
        for item in 0..4 {
            q.submit(item, 0, far()).expect("room");
        }
        assert_eq!(q.next_batch().await.expect("batch").items.len(), 4);
    }

    #[tokio::test(start_paused = true)]
    async fn a_full_batch_ships_whole_when_every_item_makes_it() {
        let q = BatchQueue::new(policy(4, 0, 16));
        steady(&q, 1, Duration::from_millis(20));
        let now = Instant::now();
        for item in 0..4 {
            q.submit(item, 0, now + Duration::from_millis(81)).expect("room");
        }
        // Four items at 20 ms each (scaled from batch 1) finish at 80 ms: all make it.
        let batch = q.next_batch().await.expect("batch");
        assert_eq!(batch.items.len(), 4);
    }

    #[test]
    fn service_estimate_is_smoothed() {
        let q: BatchQueue<()> = BatchQueue::new(policy(1, 0, 1));
        q.record_service_time(1, Duration::from_millis(40));
        q.record_service_time(1, Duration::from_millis(80));
        assert_eq!(q.service_estimate(1), Duration::from_millis(50));
    }

    #[tokio::test(start_paused = true)]
    async fn a_stale_estimate_sheds_nothing_so_one_slow_batch_cannot_shed_every_frame() {
        let q = BatchQueue::new(policy(1, 0, 16));
        // One pathological first batch, far over any budget.
        q.record_service_time(1, Duration::from_millis(500));
        q.submit("late", 0, Instant::now() + Duration::from_millis(83)).expect("room");
        let batch = q.next_batch().await.expect("batch");
        assert_eq!(batch.shed.len(), 1, "a fresh estimate sheds what cannot make it");
        // Nothing ran since: once the estimate is stale the next frame rides and re-measures.
        tokio::time::advance(STALE_ESTIMATE).await;
        q.submit("probe", 0, Instant::now() + Duration::from_millis(83)).expect("room");
        let batch = q.next_batch().await.expect("batch");
        assert!(batch.shed.is_empty());
        assert_eq!(batch.items.iter().map(|q| q.item).collect::<Vec<_>>(), vec!["probe"]);
    }

    #[test]
    fn admission_counts_on_the_mean_plus_twice_the_deviation() {
        let q: BatchQueue<()> = BatchQueue::new(policy(4, 0, 8));
        q.record_service_time(1, Duration::from_millis(40));
        // One sample: no deviation seen yet.
        assert_eq!(q.service_bound(1), Duration::from_millis(40));
        q.record_service_time(1, Duration::from_millis(80));
        // Mean 50 ms, deviation a quarter of the 40 ms surprise.
        assert_eq!(q.service_estimate(1), Duration::from_millis(50));
        assert_eq!(q.service_bound(1), Duration::from_millis(50 + 2 * 10));
        // Unmeasured sizes scale from the nearest measured one, as the mean does.
        assert_eq!(q.service_bound(2), Duration::from_millis(140));
        let fresh: BatchQueue<()> = BatchQueue::new(policy(4, 0, 8));
        assert_eq!(fresh.service_bound(1), Duration::ZERO, "nothing measured: nothing shed on time");
    }
}

//! Generic dynamic batcher with Triton's semantics — a bounded queue per model; a batch ships when
//! it holds `max_batch` items or when its oldest item has waited `max_queue_delay`; a full queue
//! refuses at once — and admission that never wastes the model: while items wait, an idle worker
//! always gets one, and items are shed only when they compete for the model and cannot make their
//! deadline (the rule and its reasons: [`plan`]). Service time is estimated per batch size from
//! recent batches ([`estimate`]).
//!
//! Model workers pull: a worker asks for the next batch only when it is free, so under load batches
//! grow by themselves while the worker is busy. Time comes from tokio's clock, which tests pause and
//! advance instead of sleeping. Its timers have 1 ms resolution, so a `max_queue_delay` rounds up to
//! the next millisecond. Nothing here knows about images or models.

pub mod estimate;
pub mod plan;
#[cfg(test)]
mod simulation;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

use tokio::sync::Notify;
use tokio::time::Instant;

pub use estimate::Figure;
use plan::State;
pub use plan::{Batch, Plan, Queued, Shed, ShedReason};

/// Dynamic batching, as Triton's dynamic batcher: a batch ships when it holds `max_batch` items or
/// when its oldest item has waited `max_queue_delay_us`; at most `max_queue_size` items wait. The
/// default delay is 0, as Triton's: a lone item costs no wait, and under load batches still form
/// from the items that queue while the model is busy.
#[serde_with::serde_as]
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct BatchPolicy {
    pub max_batch: usize,
    #[serde(rename = "max_queue_delay_us")]
    #[serde_as(as = "serde_with::DurationMicroSeconds<u64>")]
    pub max_queue_delay: Duration,
    pub max_queue_size: usize,
}

impl Default for BatchPolicy {
    fn default() -> Self {
        Self { max_batch: 8, max_queue_delay: Duration::ZERO, max_queue_size: 64 }
    }
}

/// The queue was full; the item is handed back so its owner can answer it.
#[derive(Debug)]
pub struct QueueFull<T> {
    pub item: T,
    pub capacity: usize,
}

/// An admitted item's place, held while its owner prepares it ([`BatchQueue::reserve`]).
#[derive(Debug)]
pub struct Reservation<'a, T> {
    queue: &'a BatchQueue<T>,
    open: bool,
}

impl<T> Reservation<'_, T> {
    /// Queues the item in the place reserved for it (see [`BatchQueue::submit`]).
    pub fn submit(self, item: T, flow: u64, deadlines: Deadlines) -> Result<(), QueueFull<T>> {
        self.submit_shaped(item, flow, 0, deadlines)
    }

    /// As [`Self::submit`], for an item of `shape` (see [`BatchQueue::submit_shaped`]).
    pub fn submit_shaped(mut self, item: T, flow: u64, shape: u64, deadlines: Deadlines) -> Result<(), QueueFull<T>> {
        self.open = false;
        self.queue.queue_item(item, flow, shape, deadlines, true)
    }

    fn release(&mut self) {
        if std::mem::take(&mut self.open) {
            let mut state = self.queue.lock();
            state.incoming = state.incoming.saturating_sub(1);
        }
    }
}

impl<T> Drop for Reservation<'_, T> {
    fn drop(&mut self) {
        self.release();
    }
}

/// When an item should be done by, and when its client stops waiting for it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Deadlines {
    /// Its budget, or the client's deadline if sooner.
    pub due: Instant,
    /// The client's deadline, if it set one: past it the item is dropped, idle model or not.
    pub expires: Option<Instant>,
}

impl Deadlines {
    /// A deadline with no client deadline behind it.
    pub fn soft(due: Instant) -> Self {
        Self { due, expires: None }
    }
}

#[derive(Debug)]
pub struct BatchQueue<T> {
    policy: BatchPolicy,
    state: Mutex<State<T>>,
    notify: Notify,
    /// Model instances pulling from this queue.
    workers: AtomicUsize,
}

impl<T> BatchQueue<T> {
    pub fn new(policy: BatchPolicy) -> Self {
        Self {
            policy,
            state: Mutex::new(State::new(policy.max_batch)),
            notify: Notify::new(),
            workers: AtomicUsize::new(1),
        }
    }

    /// How many model instances pull from this queue (for the wait an arrival can expect).
    pub fn set_workers(&self, workers: usize) {
        self.workers.store(workers.max(1), Ordering::Relaxed);
    }

    /// Whether an item of `flow` arriving now should be refused before its owner spends work on
    /// it — only behind a queue or a running batch that it could not clear in time — and if so,
    /// how much later an item with as much time left could be admitted ([`plan::refuse_on_arrival`]).
    /// `busy_for`: how long work outside this queue keeps the model from starting (zero: none).
    pub fn refuse_on_arrival(&self, flow: u64, deadlines: Deadlines, busy_for: Duration) -> Option<Duration> {
        let now = Instant::now();
        let workers = self.workers.load(Ordering::Relaxed);
        plan::refuse_on_arrival(&mut self.lock(), flow, deadlines.due, now, workers, busy_for)
    }

    /// As [`Self::refuse_on_arrival`], but an admitted item reserves its place: until it is
    /// submitted through the reservation (or the reservation is dropped), later arrivals count it
    /// as waiting ahead of them, so that items admitted together while their owners prepare them
    /// are not all admitted into a queue they cannot clear. Refused: how much later an item with
    /// as much time left could be admitted.
    pub fn reserve(&self, flow: u64, deadlines: Deadlines, busy_for: Duration) -> Result<Reservation<'_, T>, Duration> {
        let now = Instant::now();
        let workers = self.workers.load(Ordering::Relaxed);
        let mut state = self.lock();
        if let Some(later) = plan::refuse_on_arrival(&mut state, flow, deadlines.due, now, workers, busy_for) {
            return Err(later);
        }
        state.incoming += 1;
        Ok(Reservation { queue: self, open: true })
    }

    pub fn policy(&self) -> BatchPolicy {
        self.policy
    }

    fn lock(&self) -> MutexGuard<'_, State<T>> {
        // A panic elsewhere cannot leave the queue half-updated: every critical section is a plain
        // push, drain or record.
        self.state.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    pub fn len(&self) -> usize {
        self.lock().items.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Queues an item of `flow`, or hands it back at once when `max_queue_size` items already wait.
    pub fn submit(&self, item: T, flow: u64, deadlines: Deadlines) -> Result<(), QueueFull<T>> {
        self.queue_item(item, flow, 0, deadlines, false)
    }

    /// As [`Self::submit`], for an item of `shape`: items of different shapes never share a batch
    /// (a model input whose size follows each frame's).
    pub fn submit_shaped(&self, item: T, flow: u64, shape: u64, deadlines: Deadlines) -> Result<(), QueueFull<T>> {
        self.queue_item(item, flow, shape, deadlines, false)
    }

    /// Queues an item, releasing its reservation under the same lock when `reserved`.
    fn queue_item(
        &self,
        item: T,
        flow: u64,
        shape: u64,
        deadlines: Deadlines,
        reserved: bool,
    ) -> Result<(), QueueFull<T>> {
        {
            let mut state = self.lock();
            if reserved {
                state.incoming = state.incoming.saturating_sub(1);
            }
            if state.closed || state.items.len() >= self.policy.max_queue_size {
                return Err(QueueFull { item, capacity: self.policy.max_queue_size });
            }
            state.items.push_back(Queued {
                item,
                flow,
                shape,
                enqueued: Instant::now(),
                deadline: deadlines.due,
                expires: deadlines.expires,
            });
        }
        self.notify.notify_one();
        Ok(())
    }

    /// Stops accepting items; workers drain what is queued, then `next_batch` returns `None`.
    pub fn close(&self) {
        self.lock().closed = true;
        self.notify.notify_waiters();
    }

    /// Feeds the estimates with the measured service time of a batch of `items`, which has ended.
    /// Every instance records under the one lock, so no measurement is lost. Call once per shipped
    /// batch.
    pub fn record_service_time(&self, items: usize, took: Duration) {
        let now = Instant::now();
        let mut state = self.lock();
        state.times.record(items, took, now);
        state.finished();
    }

    /// `figure` of the service time of a batch of `items`, from recent batches (`None`: none lately).
    pub fn service_estimate(&self, items: usize, figure: Figure) -> Option<Duration> {
        let now = Instant::now();
        self.lock().times.estimate(items, figure, now)
    }

    /// Waits for the next batch or shed items. Returns `None` once the queue is closed and empty.
    pub async fn next_batch(&self) -> Option<Batch<T>> {
        loop {
            let notified = self.notify.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            let next = plan::plan(&mut self.lock(), &self.policy, Instant::now());
            match next {
                Plan::Ship(batch) => return Some(batch),
                Plan::Shed(shed) => return Some(Batch { items: Vec::new(), shed }),
                Plan::Closed => return None,
                Plan::Idle => notified.await,
                Plan::WaitUntil(at) => {
                    tokio::select! {
                        _ = &mut notified => {}
                        _ = tokio::time::sleep_until(at) => {}
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use tokio::sync::oneshot;

    use super::*;

    fn policy(max_batch: usize, delay_us: u64, size: usize) -> BatchPolicy {
        BatchPolicy { max_batch, max_queue_delay: Duration::from_micros(delay_us), max_queue_size: size }
    }

    fn far() -> Deadlines {
        Deadlines::soft(Instant::now() + Duration::from_secs(60))
    }

    fn ms(v: u64) -> Duration {
        Duration::from_millis(v)
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
        tokio::time::advance(ms(1)).await;
        q.submit(2, 0, far()).expect("room");
        let start = Instant::now();
        let batch = q.next_batch().await.expect("batch");
        assert_eq!(batch.items.len(), 2);
        // The oldest entered 1 ms before `start`: 1 ms more.
        assert_eq!(Instant::now() - start, ms(1));
    }

    #[tokio::test(start_paused = true)]
    async fn batch_never_exceeds_max_batch() {
        let q = BatchQueue::new(policy(3, 0, 16));
        for i in 0..7 {
            q.submit(i, 0, far()).expect("room");
        }
        let mut sizes = Vec::new();
        for _ in 0..3 {
            sizes.push(q.next_batch().await.expect("batch").items.len());
        }
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
    async fn waiting_worker_wakes_when_batch_fills() {
        let q = Arc::new(BatchQueue::new(policy(2, 1_000_000, 16)));
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

    #[tokio::test(start_paused = true)]
    async fn an_admitted_item_being_prepared_counts_ahead_of_later_arrivals() {
        let q = BatchQueue::<&str>::new(policy(1, 0, 16));
        q.record_service_time(1, ms(50));
        q.record_service_time(1, ms(50));
        let due = Deadlines::soft(Instant::now() + ms(83));
        let first = q.reserve(1, due, Duration::ZERO).expect("nothing ahead, idle model");
        // 50 ms for the first, then its own 50 ms: past 83.
        assert!(q.reserve(2, due, Duration::ZERO).is_err(), "admitted into a queue it cannot clear");
        drop(first);
        let second = q.reserve(2, due, Duration::ZERO).expect("the first was dropped");
        second.submit("second", 2, due).expect("room");
        assert_eq!(q.len(), 1);
        assert!(q.refuse_on_arrival(3, due, Duration::ZERO).is_some(), "the queued item is ahead now");
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
    async fn a_client_deadline_that_passes_while_waiting_sheds_the_item_as_expired() {
        let q = BatchQueue::new(policy(4, 50_000, 16));
        let now = Instant::now();
        q.submit("patient", 1, Deadlines::soft(now + ms(83))).expect("room");
        q.submit("hurried", 2, Deadlines { due: now + ms(10), expires: Some(now + ms(10)) }).expect("room");
        let batch = q.next_batch().await.expect("shed");
        assert_eq!(Instant::now() - now, ms(10), "woken by the expiry, not the queue delay");
        assert!(batch.items.is_empty());
        assert_eq!(
            batch.shed.iter().map(|s| (s.queued.item, s.reason)).collect::<Vec<_>>(),
            vec![("hurried", ShedReason::Expired)]
        );
        assert_eq!(
            q.next_batch().await.expect("batch").items.iter().map(|q| q.item).collect::<Vec<_>>(),
            vec!["patient"]
        );
    }

    #[test]
    fn every_instances_measurement_counts() {
        let q = Arc::new(BatchQueue::<()>::new(policy(1, 0, 1)));
        let threads: Vec<_> = (0..4)
            .map(|i| {
                let q = q.clone();
                std::thread::spawn(move || {
                    for _ in 0..(estimate::WINDOW / 4) {
                        q.record_service_time(1, ms(10 * (i + 1)));
                    }
                })
            })
            .collect();
        for thread in threads {
            thread.join().expect("join");
        }
        // 4 instances x 4 batches each, at 10, 20, 30 and 40 ms: all sixteen are in the window.
        assert_eq!(q.service_estimate(1, Figure::Typical), Some(ms(20)));
        assert_eq!(q.service_estimate(1, Figure::Worst), Some(ms(40)));
    }

    /// How a simulated model behaves: the service time of its `n`th batch.
    type ServiceTime = fn(usize) -> Duration;

    /// What a simulation measured.
    #[derive(Debug, Default)]
    struct Served {
        within: usize,
        late: usize,
        shed: usize,
    }

    impl Served {
        /// Counts one answer: within budget, late, or shed (`None`, or no answer at all).
        fn count(&mut self, answer: Result<Option<bool>, oneshot::error::RecvError>) {
            match answer {
                Ok(Some(true)) => self.within += 1,
                Ok(Some(false)) => self.late += 1,
                _ => self.shed += 1,
            }
        }
    }

    /// One model worker pulling batches of one until the queue closes; items are (deadline, reply).
    fn worker(
        q: Arc<BatchQueue<(Instant, oneshot::Sender<Option<bool>>)>>,
        service: ServiceTime,
    ) -> tokio::task::JoinHandle<()> {
        tokio::spawn(async move {
            let mut batches = 0;
            while let Some(batch) = q.next_batch().await {
                for shed in batch.shed {
                    let _ = shed.queued.item.1.send(None);
                }
                if batch.items.is_empty() {
                    continue;
                }
                let took = service(batches);
                batches += 1;
                tokio::time::sleep(took).await;
                q.record_service_time(batch.items.len(), took);
                for queued in batch.items {
                    let (deadline, reply) = queued.item;
                    let _ = reply.send(Some(Instant::now() <= deadline));
                }
            }
        })
    }

    /// `clients` clients sending back to back for `length`, each frame with `budget`.
    async fn closed_loop(clients: usize, budget: Duration, length: Duration, service: ServiceTime) -> Served {
        let q = Arc::new(BatchQueue::new(policy(1, 0, 64)));
        let model = worker(q.clone(), service);
        let end = Instant::now() + length;
        let tasks: Vec<_> = (0..clients)
            .map(|client| {
                let q = q.clone();
                tokio::spawn(async move {
                    let mut served = Served::default();
                    while Instant::now() < end {
                        let (reply, answer) = oneshot::channel();
                        let deadline = Instant::now() + budget;
                        if q.submit((deadline, reply), client as u64, Deadlines::soft(deadline)).is_err() {
                            break;
                        }
                        served.count(answer.await);
                    }
                    served
                })
            })
            .collect();
        let mut total = Served::default();
        for task in tasks {
            let served = task.await.expect("client");
            total.within += served.within;
            total.late += served.late;
            total.shed += served.shed;
        }
        q.close();
        model.await.expect("worker");
        total
    }

    #[tokio::test(start_paused = true)]
    async fn a_lone_client_on_a_model_slower_than_its_budget_is_never_shed() {
        // A busy machine: every batch takes 120 ms against an 83 ms budget.
        let served = closed_loop(1, ms(83), Duration::from_secs(3), |_| ms(120)).await;
        assert_eq!(served.shed, 0, "{served:?}");
        assert_eq!(served.late, 25, "{served:?}");
    }

    #[tokio::test(start_paused = true)]
    async fn one_cold_batch_does_not_shed_the_frames_after_it() {
        // The first batch takes 900 ms, then 30 ms each; two clients.
        let served = closed_loop(2, ms(83), Duration::from_secs(3), |n| if n == 0 { ms(900) } else { ms(30) }).await;
        assert!(served.shed <= 2, "{served:?}");
        // 2.1 s at 30 ms a frame after the cold batch: about 70 frames on time.
        assert!(served.within >= 65, "{served:?}");
    }

    #[tokio::test(start_paused = true)]
    async fn closed_loop_overload_keeps_the_model_busy_with_frames_on_time() {
        // Six clients back to back on a 30 ms model with a 300 ms hiccup every 25th batch (another
        // process taking the core): the estimate must neither lock in nor shed wholesale.
        let length = Duration::from_secs(10);
        let served = closed_loop(6, ms(83), length, |n| if n % 25 == 24 { ms(300) } else { ms(30) }).await;
        // Capacity: one frame per 30 ms, less the hiccups' time (24 x 30 ms + 300 ms per 25 batches).
        let capacity = length.as_secs_f64() / (24.0 * 0.030 + 0.300) * 25.0;
        assert!(served.within as f64 >= 0.8 * capacity, "{served:?}, capacity {capacity:.0}");
    }

    #[tokio::test(start_paused = true)]
    async fn open_loop_overload_serves_capacity_on_time_and_fairly() {
        // Six cameras at 10 fps each (60 fps) against a 40 ms model (25 fps): 2.4x capacity.
        let q = Arc::new(BatchQueue::new(policy(1, 0, 64)));
        let model = worker(q.clone(), |_| ms(40));
        let length = Duration::from_secs(10);
        let start = Instant::now();
        let cameras: Vec<_> = (0..6u64)
            .map(|camera| {
                let q = q.clone();
                tokio::spawn(async move {
                    let mut answers = Vec::new();
                    let mut frame = 0;
                    let first = start + ms(camera * 17);
                    loop {
                        let due = first + ms(100) * frame;
                        if due >= start + length {
                            break;
                        }
                        tokio::time::sleep_until(due).await;
                        let (reply, answer) = oneshot::channel();
                        let deadline = due + ms(83);
                        q.submit((deadline, reply), camera, Deadlines::soft(deadline)).expect("room");
                        answers.push(answer);
                        frame += 1;
                    }
                    let mut served = Served::default();
                    for answer in answers {
                        served.count(answer.await);
                    }
                    served
                })
            })
            .collect();
        let mut per_camera = Vec::new();
        for camera in cameras {
            per_camera.push(camera.await.expect("camera"));
        }
        q.close();
        model.await.expect("worker");
        let within: usize = per_camera.iter().map(|s| s.within).sum();
        let late: usize = per_camera.iter().map(|s| s.late).sum();
        let capacity = length.as_secs_f64() / 0.040;
        assert!(within as f64 >= 0.9 * capacity, "{within} within budget of capacity {capacity}: {per_camera:?}");
        assert!(late as f64 <= 0.01 * (within + late) as f64, "{late} late of {}", within + late);
        let shares: Vec<f64> =
            per_camera.iter().map(|s| s.within as f64 / (s.within + s.late + s.shed) as f64).collect();
        let (worst, best) = shares.iter().fold((1.0f64, 0.0f64), |(lo, hi), &s| (lo.min(s), hi.max(s)));
        assert!(worst >= 0.8 * best, "per-camera within-budget shares {shares:?}");
    }
}

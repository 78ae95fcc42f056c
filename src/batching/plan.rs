//! The batcher's decisions, as a pure function of the queue's state and the time: which items ride
//! the next batch, which are shed and why, or how long to wait.
//!
//! The rule, and why:
//! 1. **An item whose client has given up is dropped** (its `expires`, the client's gRPC deadline,
//!    has passed): nobody would read its answer.
//! 2. **Work-conserving.** A worker asks for a plan only when it is idle, so whatever it is given
//!    starts at once. While items wait, some item runs: a lone frame is run however late it will
//!    finish (and answered over budget), because refusing it would only leave the model idle.
//! 3. **Shedding is for contention only.** An item is *viable* when it can still finish by its
//!    deadline if it runs now: `deadline ≥ now + W(1)`, where W is the expected worst service time
//!    (the second-largest of recent batches, see [`super::estimate`]). When several items wait and at least one
//!    is viable, the ones that are not are shed: running one of them would spend the model on a
//!    frame that is most likely late, in place of a frame that is most likely on time. W is a high
//!    percentile rather than the mean because the choice is between two frames: a frame admitted
//!    on the mean misses about half of the time, its replacement almost never.
//! 4. **A slow machine: freshest first.** When no waiting item is viable on W — a busy machine,
//!    where W nears or passes the budget — the items that can still make it on the *typical* time
//!    T (the median) run, flows whose oldest such item has the most time left first, and those
//!    that cannot make it even on T are shed. Running the head of the line instead serves every
//!    frame late: each waits for the others, so the oldest, which cannot make it, runs while the
//!    newest, which could, grows old. When nothing can make it even on T, the item with the most
//!    time left runs and only items already past their deadline are shed, so no estimate, however
//!    far off, sheds a frame that still had time. T moves only when half the window has changed,
//!    so one slow batch sheds nothing; and every plan that finds items ships one, so the model is
//!    measured again with every batch.
//! 5. **Fair.** Viable items ride least-served flow first (an exponential average of 1 per item of
//!    that flow that rode, 0 per item shed), then oldest first, so overload is spread across
//!    cameras rather than falling on whichever sends at unlucky moments; a flow's own items keep
//!    their order.
//! 6. **Batches only as large as they pay** (see [`super::estimate::ServiceTimes::paying_size`]),
//!    and cut short when their oldest items would miss their deadline at the full size but make it
//!    at a smaller one.
//! 7. **Refused on arrival when hopeless behind a queue or a busy model** ([`refuse_on_arrival`]):
//!    an item that the viable items ahead of it would keep past its deadline, or that could not be
//!    sure (on W) to make it once the running batch ends (on its W), is refused before its owner
//!    decodes and preprocesses it, so that overload does not spend the CPU the model needs on
//!    frames that would be shed anyway; its owner asks again once it has a CPU worker, as that wait
//!    is a queue this planner does not see. Behind a busy model the bar is W, not T: every client
//!    refused early would otherwise come back at the first moment T allows, and the frame running
//!    next would be the oldest of that herd, not the freshest. The refusal says how much later a
//!    frame with as much time left would be admitted, so that its owner can answer it then (never
//!    after the frame's deadline) and a client that sends its next frame on each answer is paced to
//!    the model instead of spinning on refusals. An item with nothing ahead of it and an idle model
//!    is never refused.
//!
//! A batch ships when it holds `max_batch` items or when its oldest item has waited
//! `max_queue_delay`.

use std::collections::{HashMap, VecDeque};
use std::time::Duration;

use tokio::time::Instant;

use super::BatchPolicy;
use super::estimate::{Figure, ServiceTimes};

/// An item waiting in the queue.
#[derive(Debug)]
pub struct Queued<T> {
    pub item: T,
    /// Who the item belongs to, for fair shedding (opaque here).
    pub flow: u64,
    /// Items of different shapes never ride one batch (opaque here; 0 when all are alike).
    pub shape: u64,
    pub enqueued: Instant,
    /// When the item should be done by (its budget, or its client's deadline if sooner).
    pub deadline: Instant,
    /// When its client stops waiting for it, if the client said.
    pub expires: Option<Instant>,
}

/// Why an item was shed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ShedReason {
    /// Its client's deadline passed while it waited.
    Expired,
    /// It could no longer make its deadline, and other items could use the model instead.
    Unreachable,
}

/// An item shed, and why.
#[derive(Debug)]
pub struct Shed<T> {
    pub queued: Queued<T>,
    pub reason: ShedReason,
}

/// What a worker gets: items to run together, and items shed on the way. Either may be empty, not
/// both.
#[derive(Debug)]
pub struct Batch<T> {
    pub items: Vec<Queued<T>>,
    pub shed: Vec<Shed<T>>,
}

/// What an idle worker should do next.
#[derive(Debug)]
pub enum Plan<T> {
    /// Run these items now (and answer the shed ones).
    Ship(Batch<T>),
    /// Answer these shed items; nothing is due to run yet.
    Shed(Vec<Shed<T>>),
    /// Nothing to do before this instant, unless an item arrives.
    WaitUntil(Instant),
    /// Nothing queued: wait for an item.
    Idle,
    /// Closed and drained.
    Closed,
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

/// Running batches remembered at most (a worker that never reports back cannot grow the list).
const MAX_RUNNING: usize = 64;

/// The queue and everything the planner decides on.
#[derive(Debug)]
pub struct State<T> {
    pub items: VecDeque<Queued<T>>,
    pub closed: bool,
    pub times: ServiceTimes,
    flows: HashMap<u64, FlowShare>,
    /// Items admitted on arrival and being prepared by their owners, not yet queued: they go ahead
    /// of later arrivals as queued items do.
    pub incoming: usize,
    /// When each batch shipped and still running may end (on its expected worst time), oldest first.
    running: VecDeque<Instant>,
}

impl<T> State<T> {
    pub fn new(max_batch: usize) -> Self {
        Self {
            items: VecDeque::new(),
            closed: false,
            times: ServiceTimes::new(max_batch),
            flows: HashMap::new(),
            incoming: 0,
            running: VecDeque::new(),
        }
    }

    /// A shipped batch has ended.
    pub fn finished(&mut self) {
        self.running.pop_front();
    }

    /// When a model instance is sure to be free for the next batch: now while one of `parallel` is
    /// idle, else when the first running batch may end on its expected worst time (now once it has
    /// overrun even that).
    fn free_at(&self, now: Instant, parallel: usize) -> Instant {
        if self.running.len() < parallel.max(1) {
            return now;
        }
        self.running.iter().min().map_or(now, |&end| end.max(now))
    }

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

    /// Removes the items at `indices` (ascending), in queue order.
    fn take(&mut self, indices: &[usize]) -> Vec<Queued<T>> {
        let mut taken: Vec<Queued<T>> = indices.iter().rev().filter_map(|&i| self.items.remove(i)).collect();
        taken.reverse();
        taken
    }
}

/// Whether an item of `flow` that must be done by `due` is refused on arrival, before its owner
/// spends work on it (decoding, preprocessing), and if so how much later an item like it (as much
/// time left) could be admitted: `None` admits it.
///
/// `busy_for`: how long work outside this queue keeps the model from starting (a later stage's
/// work on the same CPU); zero when none.
///
/// It is refused when the items that would run before it — the viable ones, of flows served no
/// better than its own, and those admitted and still being prepared — and the batch still running, then its own expected worst time, would take
/// it past `due`; and behind a busy model (every one of `parallel` instances running) when it could
/// not finish by `due` on the expected worst time once the model frees. With nothing ahead of it
/// and an idle model an item is never refused, so a lone frame is always run. A refusal counts
/// against the flow's share, as a shed item does, so that its next item goes ahead of others.
pub fn refuse_on_arrival<T>(
    state: &mut State<T>,
    flow: u64,
    due: Instant,
    now: Instant,
    parallel: usize,
    busy_for: Duration,
) -> Option<Duration> {
    let worst = state.times.estimate(1, Figure::Worst, now)?;
    let typical = state.times.estimate(1, Figure::Typical, now).unwrap_or(worst);
    let share = state.share(flow);
    let start = state.free_at(now, parallel).max(now + busy_for);
    let viable_from = start + worst;
    let queued_ahead = state.items.iter().filter(|q| q.deadline >= viable_from && state.share(q.flow) <= share).count();
    let ahead = queued_ahead + state.incoming;
    let needed = if ahead > 0 {
        let wait = typical.saturating_mul(u32::try_from(ahead).unwrap_or(u32::MAX))
            / u32::try_from(parallel.max(1)).unwrap_or(1);
        start + wait + worst
    } else if start > now {
        // Only the running batch stands between it and the model. It must be sure to make it once
        // the model frees, so that the frame that runs then is a fresh one rather than the first
        // of a herd admitted early.
        viable_from
    } else {
        return None;
    };
    if due >= needed {
        return None;
    }
    state.record(flow, false, now);
    Some(needed - due)
}

/// The next step for an idle worker, at `now`. See the module doc for the rule.
pub fn plan<T>(state: &mut State<T>, policy: &BatchPolicy, now: Instant) -> Plan<T> {
    let mut shed = Vec::new();
    let expired: Vec<usize> =
        (0..state.items.len()).filter(|&i| state.items[i].expires.is_some_and(|at| at <= now)).collect();
    for queued in state.take(&expired) {
        state.record(queued.flow, false, now);
        shed.push(Shed { queued, reason: ShedReason::Expired });
    }

    let Some(oldest) = state.items.front() else {
        return match (shed.is_empty(), state.closed) {
            (false, _) => Plan::Shed(shed),
            (true, true) => Plan::Closed,
            (true, false) => Plan::Idle,
        };
    };
    let due = oldest.enqueued + policy.max_queue_delay;
    if state.items.len() < policy.max_batch && now < due && !state.closed {
        if !shed.is_empty() {
            return Plan::Shed(shed);
        }
        let first_expiry = state.items.iter().filter_map(|q| q.expires).min();
        return Plan::WaitUntil(first_expiry.map_or(due, |e| e.min(due)));
    }

    // Least-served flows first; within a flow, and among equals, oldest first.
    let shares: Vec<f32> = state.items.iter().map(|q| state.share(q.flow)).collect();
    let mut order: Vec<usize> = (0..state.items.len()).collect();
    order.sort_by(|&a, &b| shares[a].total_cmp(&shares[b]).then(a.cmp(&b)));

    let estimate = |n: usize, figure: Figure| state.times.estimate(n, figure, now);
    let finish_alone = |figure: Figure| estimate(1, figure).map(|w| now + w);
    let (cautious, typical) = (finish_alone(Figure::Worst), finish_alone(Figure::Typical));
    let reaches = |i: usize, finish: Option<Instant>| finish.is_none_or(|at| state.items[i].deadline >= at);
    let viable: Vec<usize> = order.iter().copied().filter(|&i| reaches(i, cautious)).collect();

    let (chosen, unreachable): (Vec<usize>, Vec<usize>) = if viable.is_empty() {
        // A slow machine: no frame is sure to make it. The ones with the most time left run first,
        // as they are the likeliest to.
        let hopeful: Vec<usize> = (0..state.items.len()).filter(|&i| reaches(i, typical)).collect();
        if hopeful.is_empty() {
            // Nothing can make it even on the typical time: the freshest runs, and only frames
            // already past their deadline give way.
            let freshest = freshest_flows_first(&order, &state.items, &shares);
            let chosen: Vec<usize> = freshest.first().copied().into_iter().collect();
            let past = (0..state.items.len()).filter(|&i| !chosen.contains(&i) && state.items[i].deadline <= now);
            (chosen.clone(), past.collect())
        } else {
            // What cannot make it even on the typical time gives way.
            let freshest = freshest_flows_first(&hopeful, &state.items, &shares);
            let chosen =
                fitting(&freshest, policy.max_batch, |n| estimate(n, Figure::Typical).map(|t| now + t), &state.items);
            let chosen = chosen[..state.times.paying_size(chosen.len())].to_vec();
            (chosen, (0..state.items.len()).filter(|&i| !reaches(i, typical)).collect())
        }
    } else {
        let chosen = fitting(&viable, policy.max_batch, |n| estimate(n, Figure::Worst).map(|w| now + w), &state.items);
        let chosen = chosen[..state.times.paying_size(chosen.len())].to_vec();
        // Contention: items that cannot make it give way to those that can.
        let unreachable = (0..state.items.len()).filter(|&i| !reaches(i, cautious)).collect();
        (chosen, unreachable)
    };

    // Taken in queue order, so that a flow's own items keep theirs.
    let mut leaving: Vec<(usize, bool)> =
        chosen.iter().map(|&i| (i, true)).chain(unreachable.iter().map(|&i| (i, false))).collect();
    leaving.sort_unstable();
    let indices: Vec<usize> = leaving.iter().map(|&(i, _)| i).collect();
    let mut items = Vec::with_capacity(chosen.len());
    for (queued, (_, rides)) in state.take(&indices).into_iter().zip(leaving) {
        state.record(queued.flow, rides, now);
        if rides {
            items.push(queued);
        } else {
            shed.push(Shed { queued, reason: ShedReason::Unreachable });
        }
    }
    // Judged on its worst time: a frame admitted behind it must make it even if it overruns.
    let expected = state.times.estimate(items.len(), Figure::Worst, now).unwrap_or_default();
    if state.running.len() >= MAX_RUNNING {
        state.running.pop_front();
    }
    state.running.push_back(now + expected);
    Plan::Ship(Batch { items, shed })
}

/// `candidates` ordered for a slow machine: flows by how much time their oldest candidate has left,
/// most first (the likeliest to make it), then least served; a flow's own items stay together and
/// in queue order, so that its answers keep their order.
fn freshest_flows_first<T>(candidates: &[usize], items: &VecDeque<Queued<T>>, shares: &[f32]) -> Vec<usize> {
    let mut head_deadline: HashMap<u64, Instant> = HashMap::new();
    for &i in candidates {
        head_deadline.entry(items[i].flow).or_insert(items[i].deadline);
    }
    let mut ordered = candidates.to_vec();
    ordered.sort_by(|&a, &b| {
        let (head_a, head_b) = (head_deadline[&items[a].flow], head_deadline[&items[b].flow]);
        head_b
            .cmp(&head_a)
            .then(shares[a].total_cmp(&shares[b]))
            .then(items[a].flow.cmp(&items[b].flow))
            .then(a.cmp(&b))
    });
    ordered
}

/// The longest prefix of `candidates` of the first one's shape (at most `max_batch`) that all
/// finish by their deadlines at `finish(n)` when run as one batch of n; at least one item.
fn fitting<T>(
    candidates: &[usize],
    max_batch: usize,
    finish: impl Fn(usize) -> Option<Instant>,
    items: &VecDeque<Queued<T>>,
) -> Vec<usize> {
    let shape = candidates.first().map(|&i| items[i].shape);
    let candidates: Vec<usize> = candidates.iter().copied().filter(|&i| Some(items[i].shape) == shape).collect();
    let mut n = candidates.len().min(max_batch).max(1);
    while n > 1 {
        if finish(n).is_none_or(|at| candidates[..n].iter().all(|&i| items[i].deadline >= at)) {
            break;
        }
        n -= 1;
    }
    candidates[..n.min(candidates.len())].to_vec()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(max_batch: usize, delay_ms: u64) -> BatchPolicy {
        BatchPolicy { max_batch, max_queue_delay: Duration::from_millis(delay_ms), max_queue_size: 64 }
    }

    fn ms(v: u64) -> Duration {
        Duration::from_millis(v)
    }

    /// A state whose model has taken `took` for each of its last batches of `items`.
    fn measured(max_batch: usize, items: usize, took: Duration, now: Instant) -> State<&'static str> {
        let mut state = State::new(max_batch);
        for _ in 0..10 {
            state.times.record(items, took, now);
        }
        state
    }

    fn push(state: &mut State<&'static str>, item: &'static str, flow: u64, enqueued: Instant, deadline: Instant) {
        state.items.push_back(Queued { item, flow, shape: 0, enqueued, deadline, expires: None });
    }

    fn shipped(plan: Plan<&'static str>) -> (Vec<&'static str>, Vec<(&'static str, ShedReason)>) {
        match plan {
            Plan::Ship(batch) => (
                batch.items.iter().map(|q| q.item).collect(),
                batch.shed.iter().map(|s| (s.queued.item, s.reason)).collect(),
            ),
            other => panic!("expected a batch, got {other:?}"),
        }
    }

    #[test]
    fn frames_of_different_shapes_never_share_a_batch() {
        let now = Instant::now();
        let mut state = measured(4, 1, ms(10), now);
        for (item, shape) in [("a1", 7), ("b1", 9), ("a2", 7), ("b2", 9), ("a3", 7)] {
            state.items.push_back(Queued {
                item,
                flow: 1,
                shape,
                enqueued: now,
                deadline: now + ms(500),
                expires: None,
            });
        }
        assert_eq!(shipped(plan(&mut state, &policy(4, 0), now)), (vec!["a1", "a2", "a3"], vec![]));
        assert_eq!(shipped(plan(&mut state, &policy(4, 0), now)), (vec!["b1", "b2"], vec![]));
    }

    #[test]
    fn a_lone_frame_runs_however_late_it_will_finish() {
        let now = Instant::now();
        // The model takes 200 ms lately; the frame has 83 ms.
        let mut state = measured(4, 1, ms(200), now);
        push(&mut state, "lone", 1, now, now + ms(83));
        assert_eq!(shipped(plan(&mut state, &policy(4, 0), now)), (vec!["lone"], vec![]));
    }

    #[test]
    fn a_lone_frame_past_its_budget_still_runs_but_one_past_its_client_deadline_does_not() {
        let now = Instant::now();
        let mut state = measured(4, 1, ms(30), now);
        push(&mut state, "late", 1, now - ms(100), now - ms(10));
        assert_eq!(shipped(plan(&mut state, &policy(4, 0), now)).0, vec!["late"]);
        state.items.push_back(Queued {
            item: "abandoned",
            flow: 1,
            shape: 0,
            enqueued: now - ms(100),
            deadline: now - ms(10),
            expires: Some(now - ms(10)),
        });
        match plan(&mut state, &policy(4, 0), now) {
            Plan::Shed(shed) => {
                assert_eq!(
                    shed.iter().map(|s| (s.queued.item, s.reason)).collect::<Vec<_>>(),
                    vec![("abandoned", ShedReason::Expired)]
                );
            }
            other => panic!("expected the expired item shed, got {other:?}"),
        }
        assert!(matches!(plan(&mut state, &policy(4, 0), now), Plan::Idle));
    }

    #[test]
    fn under_contention_frames_that_cannot_make_it_give_way() {
        let now = Instant::now();
        let mut state = measured(1, 1, ms(40), now);
        push(&mut state, "hopeless", 1, now - ms(60), now + ms(20));
        push(&mut state, "fine", 2, now, now + ms(80));
        assert_eq!(
            shipped(plan(&mut state, &policy(1, 0), now)),
            (vec!["fine"], vec![("hopeless", ShedReason::Unreachable)])
        );
    }

    /// A window of `typical` times with two `worst` ones: median `typical`, second-largest `worst`.
    fn spread(typical: Duration, worst: Duration, now: Instant) -> State<&'static str> {
        let mut state = measured(1, 1, typical, now);
        state.times.record(1, worst, now);
        state.times.record(1, worst, now);
        state
    }

    #[test]
    fn on_a_slow_machine_the_frame_with_most_time_left_runs_and_hopeless_ones_give_way() {
        let now = Instant::now();
        // Typical 40 ms, worst 120 ms: no frame is sure to make its 83 ms.
        let mut state = spread(ms(40), ms(120), now);
        push(&mut state, "old", 1, now - ms(50), now + ms(30));
        push(&mut state, "middle", 2, now - ms(20), now + ms(60));
        push(&mut state, "fresh", 3, now, now + ms(80));
        assert_eq!(
            shipped(plan(&mut state, &policy(1, 0), now)),
            (vec!["fresh"], vec![("old", ShedReason::Unreachable)]),
            "the head of the line would have run, late, and the fresh frame grown old behind it"
        );
        assert_eq!(state.items.iter().map(|q| q.item).collect::<Vec<_>>(), vec!["middle"], "it can still make it");
    }

    #[test]
    fn on_a_slow_machine_a_flows_own_frames_keep_their_order() {
        let now = Instant::now();
        let mut state = spread(ms(40), ms(120), now);
        push(&mut state, "flow 1, first", 1, now - ms(30), now + ms(50));
        push(&mut state, "flow 2", 2, now - ms(10), now + ms(70));
        push(&mut state, "flow 1, second", 1, now, now + ms(80));
        // Flow 2's oldest frame has more time left than flow 1's: flow 2 first, and flow 1's
        // newer frame does not overtake its older one.
        assert_eq!(shipped(plan(&mut state, &policy(1, 0), now)).0, vec!["flow 2"]);
        assert_eq!(shipped(plan(&mut state, &policy(1, 0), now)).0, vec!["flow 1, first"]);
    }

    #[test]
    fn when_nothing_can_make_it_even_on_the_typical_time_only_frames_past_their_deadline_are_shed() {
        let now = Instant::now();
        let mut state = measured(1, 1, ms(200), now);
        push(&mut state, "past", 1, now - ms(100), now - ms(5));
        push(&mut state, "waiting", 2, now - ms(10), now + ms(70));
        push(&mut state, "fresh", 3, now, now + ms(80));
        assert_eq!(
            shipped(plan(&mut state, &policy(1, 0), now)),
            (vec!["fresh"], vec![("past", ShedReason::Unreachable)])
        );
        assert_eq!(state.items.len(), 1, "a frame that still had time is not shed on an estimate");
    }

    #[test]
    fn behind_a_busy_model_an_arrival_must_be_sure_to_make_it_once_the_model_frees() {
        let now = Instant::now();
        let mut state = spread(ms(40), ms(60), now);
        push(&mut state, "running", 1, now, now + ms(83));
        assert_eq!(shipped(plan(&mut state, &policy(1, 0), now)).0, vec!["running"]);
        // The running batch may take 60 ms, then the arrival 60 ms: 120 ms, 37 ms past its 83.
        assert_eq!(refuse_on_arrival(&mut state, 2, now + ms(83), now, 1, Duration::ZERO), Some(ms(37)));
        // 40 ms later, a fresh frame makes it once the model frees.
        let later = now + ms(40);
        assert_eq!(refuse_on_arrival(&mut state, 3, later + ms(83), later, 1, Duration::ZERO), None);
        // With two instances one is idle: nothing stands between it and a model.
        assert_eq!(refuse_on_arrival(&mut state, 4, now + ms(83), now, 2, Duration::ZERO), None);
        state.finished();
        assert_eq!(refuse_on_arrival(&mut state, 5, now + ms(83), now, 1, Duration::ZERO), None, "the model is idle");
    }

    #[test]
    fn work_outside_the_queue_that_keeps_the_model_busy_counts_as_a_running_batch() {
        let now = Instant::now();
        let mut state = measured(1, 1, ms(40), now);
        // An idle queue, but a later stage's work holds the CPU for 50 ms: 50 + 40 > 83.
        assert_eq!(refuse_on_arrival(&mut state, 1, now + ms(83), now, 1, ms(50)), Some(ms(7)));
        assert_eq!(refuse_on_arrival(&mut state, 1, now + ms(83), now, 1, ms(40)), None);
    }

    #[test]
    fn when_no_waiting_frame_can_make_it_the_freshest_runs_and_nothing_with_time_left_is_shed() {
        // One slow batch (a preempted run) made every waiting frame look hopeless.
        let now = Instant::now();
        let mut state = measured(1, 1, ms(500), now);
        push(&mut state, "a", 1, now, now + ms(83));
        push(&mut state, "b", 2, now, now + ms(83));
        assert_eq!(shipped(plan(&mut state, &policy(1, 0), now)), (vec!["a"], vec![]));
        assert_eq!(state.items.len(), 1, "the other frame waits for its turn");
    }

    #[test]
    fn one_slow_batch_among_ordinary_ones_sheds_nothing() {
        // (The typical time ignores it as well: see the tests above for what a slow machine sheds.)
        let now = Instant::now();
        let mut state = measured(1, 1, ms(30), now);
        state.times.record(1, ms(600), now);
        push(&mut state, "a", 1, now, now + ms(70));
        push(&mut state, "b", 2, now, now + ms(75));
        let (items, shed) = shipped(plan(&mut state, &policy(1, 0), now));
        assert_eq!((items, shed), (vec!["a"], vec![]));
    }

    #[test]
    fn an_estimate_from_a_busy_spell_expires() {
        let then = Instant::now();
        let mut state = measured(1, 1, ms(300), then);
        let now = then + super::super::estimate::MAX_AGE;
        push(&mut state, "a", 1, now, now + ms(83));
        push(&mut state, "b", 2, now, now + ms(83));
        // Unknown service time: both viable, nothing shed; the first rides.
        assert_eq!(shipped(plan(&mut state, &policy(1, 0), now)), (vec!["a"], vec![]));
    }

    #[test]
    fn a_partial_batch_waits_for_max_queue_delay_or_the_first_expiry() {
        let now = Instant::now();
        let mut state: State<&'static str> = State::new(4);
        push(&mut state, "a", 1, now, now + ms(83));
        assert!(matches!(plan(&mut state, &policy(4, 5), now), Plan::WaitUntil(at) if at == now + ms(5)));
        state.items.push_back(Queued {
            item: "b",
            flow: 2,
            shape: 0,
            enqueued: now,
            deadline: now + ms(2),
            expires: Some(now + ms(2)),
        });
        assert!(matches!(plan(&mut state, &policy(4, 5), now), Plan::WaitUntil(at) if at == now + ms(2)));
        assert_eq!(shipped(plan(&mut state, &policy(4, 5), now + ms(5))).1, vec![("b", ShedReason::Expired)]);
    }

    #[test]
    fn a_batch_is_cut_short_so_its_oldest_items_still_make_their_deadline() {
        let now = Instant::now();
        let mut state = measured(4, 1, ms(20), now);
        for _ in 0..10 {
            state.times.record(2, ms(30), now);
            state.times.record(4, ms(60), now);
            // Batches pay on this model (a GPU): 60 ms for four against 20 ms for one.
            state.times.record(3, ms(45), now);
        }
        // The oldest can wait 35 ms: a batch of two (30 ms) makes it, one of three (45 ms) does not.
        push(&mut state, "a", 0, now, now + ms(35));
        push(&mut state, "b", 0, now, now + ms(200));
        push(&mut state, "c", 0, now, now + ms(200));
        assert_eq!(shipped(plan(&mut state, &policy(4, 0), now)), (vec!["a", "b"], vec![]));
        assert_eq!(shipped(plan(&mut state, &policy(4, 0), now)).0, vec!["c"]);
    }

    #[test]
    fn under_contention_the_flow_shed_most_lately_rides_first() {
        let now = Instant::now();
        let mut state = measured(1, 1, ms(20), now);
        // Flow 7's last three items could not make it and were shed in favour of flow 8's.
        for _ in 0..3 {
            push(&mut state, "hopeless", 7, now, now + ms(5));
            push(&mut state, "on time", 8, now, now + ms(80));
            let (_, shed) = shipped(plan(&mut state, &policy(1, 0), now));
            assert_eq!(shed.len(), 1);
        }
        // Now flow 1's item is older, but only one of the two rides next.
        push(&mut state, "flow 1", 1, now, now + ms(30));
        push(&mut state, "flow 7", 7, now, now + ms(30));
        assert_eq!(shipped(plan(&mut state, &policy(1, 0), now)).0, vec!["flow 7"]);
        // Without a shed record, the oldest goes first.
        push(&mut state, "flow 2", 2, now, now + ms(30));
        assert_eq!(shipped(plan(&mut state, &policy(1, 0), now)).0, vec!["flow 1"]);
    }

    #[test]
    fn an_arrival_is_refused_only_behind_a_queue_it_cannot_clear_in_time() {
        let now = Instant::now();
        let mut state = measured(1, 1, ms(30), now);
        // Nothing ahead: admitted however hopeless its deadline.
        assert!(refuse_on_arrival(&mut state, 1, now + ms(1), now, 1, Duration::ZERO).is_none());
        push(&mut state, "a", 2, now, now + ms(80));
        push(&mut state, "b", 3, now, now + ms(80));
        // Two ahead at 30 ms, then its own 30 ms: 90 ms.
        assert!(refuse_on_arrival(&mut state, 1, now + ms(83), now, 1, Duration::ZERO).is_some());
        assert!(refuse_on_arrival(&mut state, 4, now + ms(95), now, 1, Duration::ZERO).is_none());
        // Two instances share the queue: 30 + 30 ms.
        assert!(refuse_on_arrival(&mut state, 5, now + ms(83), now, 2, Duration::ZERO).is_none());
        // Items ahead that cannot make it themselves do not count.
        let mut hopeless = measured(1, 1, ms(30), now);
        push(&mut hopeless, "x", 2, now, now + ms(10));
        push(&mut hopeless, "y", 3, now, now + ms(10));
        assert!(refuse_on_arrival(&mut hopeless, 1, now + ms(40), now, 1, Duration::ZERO).is_none());
    }

    #[test]
    fn a_refused_flow_goes_ahead_of_the_others_next_time() {
        let now = Instant::now();
        let mut state = measured(1, 1, ms(30), now);
        push(&mut state, "a", 2, now, now + ms(80));
        push(&mut state, "b", 3, now, now + ms(80));
        assert!(refuse_on_arrival(&mut state, 1, now + ms(83), now, 1, Duration::ZERO).is_some());
        // Flow 1 was refused: flows 2 and 3 (served as well as ever) are no longer ahead of it.
        assert!(refuse_on_arrival(&mut state, 1, now + ms(83), now, 1, Duration::ZERO).is_none());
        push(&mut state, "flow 1", 1, now, now + ms(83));
        assert_eq!(shipped(plan(&mut state, &policy(1, 0), now)).0, vec!["flow 1"]);
    }

    #[test]
    fn nothing_is_refused_on_arrival_before_the_model_is_measured() {
        let now = Instant::now();
        let mut state: State<&'static str> = State::new(1);
        push(&mut state, "a", 2, now, now + ms(80));
        assert!(refuse_on_arrival(&mut state, 1, now + ms(1), now, 1, Duration::ZERO).is_none());
    }

    #[test]
    fn closed_and_drained_is_closed() {
        let mut state: State<&'static str> = State::new(1);
        state.closed = true;
        assert!(matches!(plan(&mut state, &policy(1, 0), Instant::now()), Plan::Closed));
    }
}

//! Overload on loopback, against the real `linesight serve` process, judged against the capacity
//! measured in the same test (one client calling back to back), so that the figures hold on a
//! fast machine and a slow one alike. Contention is forced by configuration: the budget is set
//! from the measured service time, so that six clients back to back, or cameras offering three
//! times capacity, cannot all make it whatever the machine's speed.
//!
//! Every request gets exactly one answer, the excess is shed with RESOURCE_EXHAUSTED or
//! DEADLINE_EXCEEDED, goodput (frames within budget per second) stays above half the capacity,
//! admitted frames meet the budget, cameras are served alike, and the server's memory stays
//! bounded: one attempt, with margins that hold on a slow run (the planner's own bar is checked
//! exactly, on recorded service times, by `src/batching/simulation.rs`). And a lone client is never
//! shed, even on a budget no frame can meet.

use std::time::{Duration, Instant};

use crate::common::{ServerProcess, jpeg_request, vtest_jpeg};
use linesight::api::proto::inspection_client::InspectionClient;
use linesight::api::proto::{InspectRequest, InspectResponse, Verdict};
use tonic::Code;
use tonic::transport::Channel;

const FPS: f64 = 10.0;
const LOAD: Duration = Duration::from_secs(8);
const CAPACITY_RUN: Duration = Duration::from_secs(4);

#[derive(Default, Debug, Clone)]
struct Tally {
    sent: usize,
    answered: usize,
    within_budget: usize,
    over_budget: usize,
    resource_exhausted: usize,
    deadline_exceeded: usize,
    other: Vec<String>,
    /// Server-side total time of each admitted (served) frame, ms.
    served_ms: Vec<f64>,
}

impl Tally {
    fn served(&mut self, response: &InspectResponse) {
        self.answered += 1;
        if let Some(error) = &response.error {
            self.failed(Code::from_i32(error.code), &error.message);
            return;
        }
        match Verdict::try_from(response.verdict) {
            Ok(Verdict::WithinBudget) => self.within_budget += 1,
            Ok(Verdict::OverBudget) => self.over_budget += 1,
            other => self.other.push(format!("served with verdict {other:?}")),
        }
        self.served_ms.push(response.timings.map_or(f64::NAN, |t| t.total_us as f64 / 1e3));
    }

    fn failed(&mut self, code: Code, message: &str) {
        match code {
            Code::ResourceExhausted => self.resource_exhausted += 1,
            Code::DeadlineExceeded => self.deadline_exceeded += 1,
            _ => self.other.push(format!("{code:?}: {message}")),
        }
    }

    /// The counts, without the per-frame times.
    fn brief(&self) -> String {
        format!(
            "sent {} answered {} within budget {} over {} RESOURCE_EXHAUSTED {} DEADLINE_EXCEEDED {} other {:?}",
            self.sent,
            self.answered,
            self.within_budget,
            self.over_budget,
            self.resource_exhausted,
            self.deadline_exceeded,
            self.other
        )
    }

    fn merge(&mut self, other: Tally) {
        self.sent += other.sent;
        self.answered += other.answered;
        self.within_budget += other.within_budget;
        self.over_budget += other.over_budget;
        self.resource_exhausted += other.resource_exhausted;
        self.deadline_exceeded += other.deadline_exceeded;
        self.other.extend(other.other);
        self.served_ms.extend(other.served_ms);
    }
}

/// A camera's frame times: every 1/FPS s, cameras spread over the interval as free-running ones are.
fn schedule(camera: usize, cameras: usize) -> tokio::time::Interval {
    let period = Duration::from_secs_f64(1.0 / FPS);
    let offset = period.mul_f64(camera as f64 / cameras as f64);
    let mut interval = tokio::time::interval_at(tokio::time::Instant::now() + offset, period);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    interval
}

fn frames() -> Vec<Vec<u8>> {
    [0, 100, 250].into_iter().map(vtest_jpeg).collect()
}

fn request(camera: &str, sequence: usize, frames: &[Vec<u8>], budget_ms: u32) -> InspectRequest {
    InspectRequest { budget_ms, ..jpeg_request(camera, sequence as u64, frames[sequence % frames.len()].clone()) }
}

/// One camera calling `Inspect` per frame on schedule, whatever the answers.
async fn unary_camera(channel: Channel, camera: usize, cameras: usize, budget_ms: u32) -> Tally {
    let frames = frames();
    let mut ticks = schedule(camera, cameras);
    let started = Instant::now();
    let mut calls = tokio::task::JoinSet::new();
    let mut sent = 0;
    while started.elapsed() < LOAD {
        ticks.tick().await;
        let request = request(&format!("unary-{camera}"), sent, &frames, budget_ms);
        let mut client = InspectionClient::new(channel.clone());
        calls.spawn(async move { client.inspect(request).await });
        sent += 1;
    }
    let mut tally = Tally { sent, ..Tally::default() };
    while let Some(call) = calls.join_next().await {
        match call.expect("call task") {
            Ok(response) => tally.served(response.get_ref()),
            Err(status) => {
                tally.answered += 1;
                tally.failed(status.code(), status.message());
            }
        }
    }
    tally
}

/// One camera streaming its frames on schedule; answers must come back one per frame, in order.
async fn stream_camera(channel: Channel, camera: usize, cameras: usize, budget_ms: u32) -> Tally {
    let frames = frames();
    let (tx, rx) = tokio::sync::mpsc::channel::<InspectRequest>(1024);
    let mut client = InspectionClient::new(channel);
    let mut responses =
        client.inspect_stream(tokio_stream::wrappers::ReceiverStream::new(rx)).await.expect("open stream").into_inner();
    let sender = tokio::spawn(async move {
        let mut ticks = schedule(camera, cameras);
        let started = Instant::now();
        let mut sent = 0;
        while started.elapsed() < LOAD {
            ticks.tick().await;
            let request = request(&format!("stream-{camera}"), sent, &frames, budget_ms);
            tx.send(request).await.expect("stream open");
            sent += 1;
        }
        sent
    });
    let mut tally = Tally::default();
    let mut next_sequence = 0;
    while let Some(response) = responses.message().await.expect("stream ends cleanly") {
        assert_eq!(response.sequence, next_sequence, "stream {camera}: answers out of order or missing");
        next_sequence += 1;
        tally.served(&response);
    }
    tally.sent = sender.await.expect("sender");
    tally
}

/// One client calling `Inspect` back to back for `length`; also the server-side time of each frame.
async fn closed_client(channel: Channel, client: usize, budget_ms: u32, length: Duration) -> Tally {
    let frames = frames();
    let mut inspection = InspectionClient::new(channel);
    let started = Instant::now();
    let mut tally = Tally::default();
    while started.elapsed() < length {
        let request = request(&format!("closed-{client}"), tally.sent, &frames, budget_ms);
        tally.sent += 1;
        match inspection.inspect(request).await {
            Ok(response) => tally.served(response.get_ref()),
            Err(status) => {
                tally.answered += 1;
                tally.failed(status.code(), status.message());
            }
        }
    }
    tally
}

async fn connect(server: &ServerProcess) -> Channel {
    Channel::from_shared(format!("http://{}", server.addr)).expect("uri").connect().await.expect("connect")
}

fn median(values: &[f64]) -> f64 {
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    sorted.get(sorted.len() / 2).copied().unwrap_or(f64::NAN)
}

/// The server's capacity: (frames per second one client gets back to back with a budget it always
/// meets, its median server-side time per frame in ms).
async fn capacity(server: &ServerProcess) -> (f64, f64) {
    let tally = closed_client(connect(server).await, 0, 60_000, CAPACITY_RUN).await;
    assert_eq!(tally.within_budget, tally.sent, "capacity run: {}", tally.brief());
    (tally.within_budget as f64 / CAPACITY_RUN.as_secs_f64(), median(&tally.served_ms))
}

async fn start_server(dir: &std::path::Path) -> ServerProcess {
    let config = "[server]\nmax_in_flight_per_camera = 4\n";
    let server = ServerProcess::start(config, dir).await;
    let mut warm = InspectionClient::new(connect(&server).await);
    for (i, frame) in frames().into_iter().enumerate() {
        warm.inspect(jpeg_request("warm-up", i as u64, frame)).await.expect("warm-up frame");
    }
    server
}

/// A budget that a queue of several frames cannot all meet at `service_ms` a frame: room for the
/// frame itself and two more ahead of it.
fn contended_budget(service_ms: f64) -> u32 {
    (3.0 * service_ms).ceil().max(2.0) as u32
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lone_client_is_served_even_on_a_budget_no_frame_can_meet() {
    let _machine = crate::common::machine_alone();
    let dir = tempfile::tempdir().expect("tempdir");
    let mut server = start_server(dir.path()).await;
    // 1 ms: every frame ends over budget. Nothing competes with it, so nothing may be shed.
    let tally = closed_client(connect(&server).await, 0, 1, Duration::from_secs(2)).await;
    eprintln!("lone client, 1 ms budget: {}", tally.brief());
    assert!(tally.sent >= 3, "{}", tally.brief());
    assert_eq!(tally.deadline_exceeded + tally.resource_exhausted, 0, "a lone client was shed: {}", tally.brief());
    assert_eq!(tally.over_budget, tally.sent, "{}", tally.brief());
    server.terminate();
    assert_eq!(server.child.wait().await.expect("wait").code(), Some(0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_times_capacity_keeps_goodput_and_sheds_the_excess_fairly() {
    let _machine = crate::common::machine_alone();
    let dir = tempfile::tempdir().expect("tempdir");
    let mut server = start_server(dir.path()).await;
    let (report, misses) = overload_run(&server).await;
    eprintln!("{report}");
    assert!(misses.is_empty(), "missed: {}; {report}", misses.join("; "));
    server.terminate();
    let exit = server.child.wait().await.expect("wait");
    assert_eq!(exit.code(), Some(0));
}

/// One overload run at three times the capacity measured just before it: its report, and which of
/// the policy's targets it missed (empty: all met). The targets are margins that hold on a slow or
/// shared run (half the capacity, 90 % of served frames within budget): the bar the planner is held
/// to (0.8 of capacity, 95 %) is asserted exactly by `src/batching/simulation.rs` on recorded
/// service times. Capacity is measured again after the load for the report only.
async fn overload_run(server: &ServerProcess) -> (String, Vec<String>) {
    let (capacity_fps, service_ms) = capacity(server).await;
    let budget_ms = contended_budget(service_ms);
    // Cameras at FPS offering three times capacity, a third of them streaming.
    let cameras = ((3.0 * capacity_fps / FPS).ceil() as usize).max(3);
    let streams = cameras / 3;
    let baseline_mib = server.rss_mib();

    let sampler = {
        let pid = server.pid();
        tokio::spawn(async move {
            let mut peak: f64 = 0.0;
            let started = Instant::now();
            while started.elapsed() < LOAD + Duration::from_secs(5) {
                if let Some(mib) = crate::common::rss_mib(pid) {
                    peak = peak.max(mib);
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            peak
        })
    };
    let unary_channel = connect(server).await;
    let mut tasks = tokio::task::JoinSet::new();
    for camera in 0..cameras {
        if camera < streams {
            // Each stream on its own connection, as separate cameras would be.
            let own = connect(server).await;
            tasks.spawn(async move { (camera, stream_camera(own, camera, cameras, budget_ms).await) });
        } else {
            let channel = unary_channel.clone();
            tasks.spawn(async move { (camera, unary_camera(channel, camera, cameras, budget_ms).await) });
        }
    }
    let mut tally = Tally::default();
    let mut per_camera = Vec::new();
    while let Some(camera) = tasks.join_next().await {
        let (camera, camera_tally) = camera.expect("camera task");
        per_camera.push((camera, camera_tally.within_budget as f64 / camera_tally.sent.max(1) as f64));
        tally.merge(camera_tally);
    }
    let peak_mib = sampler.await.expect("sampler");
    let (capacity_after, _) = capacity(server).await;

    let served = tally.within_budget + tally.over_budget;
    let shed = tally.resource_exhausted + tally.deadline_exceeded;
    let goodput = tally.within_budget as f64 / LOAD.as_secs_f64();
    per_camera.sort_by_key(|&(camera, _)| camera);
    let worst = per_camera.iter().map(|&(_, share)| share).fold(1.0f64, f64::min);
    let best = per_camera.iter().map(|&(_, share)| share).fold(0.0f64, f64::max);
    let mut served_ms = tally.served_ms.clone();
    served_ms.sort_by(f64::total_cmp);
    let served_p90 = served_ms.get(served_ms.len() * 9 / 10).copied().unwrap_or(f64::NAN);
    let report = format!(
        "capacity {capacity_fps:.1} fps before, {capacity_after:.1} after, at {service_ms:.1} ms/frame, budget \
         {budget_ms} ms, {cameras} cameras ({streams} streaming) at {FPS} fps; sent {} answered {} served {served} \
         (within budget {}, over {}; server time p50 {:.0} p90 {served_p90:.0} ms) shed {shed} (RESOURCE_EXHAUSTED {}, \
         DEADLINE_EXCEEDED {}) other {:?}; goodput {goodput:.1} fps = {:.2} x capacity; per-camera within budget \
         {per_camera:.2?}; RSS baseline {baseline_mib:.0} MiB, peak {peak_mib:.0} MiB",
        tally.sent,
        tally.answered,
        tally.within_budget,
        tally.over_budget,
        median(&tally.served_ms),
        tally.resource_exhausted,
        tally.deadline_exceeded,
        tally.other,
        goodput / capacity_fps,
    );
    // What the service guarantees whatever the machine does.
    assert_eq!(tally.answered, tally.sent, "every request gets exactly one answer: {report}");
    assert!(tally.other.is_empty(), "answers other than served / shed: {report}");
    assert!(peak_mib - baseline_mib < 200.0, "RSS grew from {baseline_mib:.0} to {peak_mib:.0} MiB: {report}");

    let mut misses = Vec::new();
    if shed * 3 < tally.sent {
        misses.push(format!("the server was not overloaded: only {shed} of {} shed", tally.sent));
    }
    if goodput < 0.5 * capacity_fps {
        misses.push(format!("goodput {goodput:.1} fps against capacity {capacity_fps:.1} fps"));
    }
    // Admitted frames meet the budget: a few can still overrun by a scheduling hiccup.
    if (tally.within_budget as f64) < 0.9 * served as f64 {
        misses.push(format!("only {} of {served} admitted frames within budget", tally.within_budget));
    }
    if worst < 0.5 * best {
        misses.push(format!("per-camera within-budget shares from {worst:.2} to {best:.2}"));
    }
    (report, misses)
}

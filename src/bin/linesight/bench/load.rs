//! Simulated cameras: each sends real frames on a fixed schedule (open loop: a slow answer does not
//! delay the next frame, as on a real line) over its own connection, and times every answer from the
//! moment its frame was sent. How late each send was against the camera's schedule is kept apart
//! (`send_lag_ms`): a client that cannot keep up shows there rather than inflating the server's figures.

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use futures::stream::FuturesUnordered;
use indicatif::ProgressBar;
use tokio::time::Instant;

use super::BenchError;
use crate::remote::{self, Access, Client};
use linesight::api::proto::{self, Image, InspectRequest, InspectResponse};

/// How cameras talk to the server.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
pub enum Mode {
    /// One `InspectStream` per camera; answers come back in frame order.
    Stream,
    /// One `Inspect` call per frame.
    Unary,
    /// Closed loop: each client calls `Inspect` back to back, its next frame sent as soon as the
    /// last is answered (`fps` is ignored).
    Closed,
}

/// Encoded frames every camera cycles through, each camera from its own starting point.
pub struct Frames {
    pub jpegs: Vec<bytes::Bytes>,
}

impl Frames {
    /// Every JPEG in `dirs`, in file-name order (so that a folder of video frames plays in order).
    pub fn load(dirs: &[std::path::PathBuf]) -> Result<Self, BenchError> {
        let mut paths = Vec::new();
        for dir in dirs {
            let entries = std::fs::read_dir(dir).map_err(|e| BenchError::Frames(format!("{}: {e}", dir.display())))?;
            paths.extend(entries.filter_map(Result::ok).map(|e| e.path()).filter(|p| {
                p.extension().is_some_and(|x| x.eq_ignore_ascii_case("jpg") || x.eq_ignore_ascii_case("jpeg"))
            }));
        }
        paths.sort();
        let jpegs = paths
            .iter()
            .map(|p| {
                std::fs::read(p)
                    .map(bytes::Bytes::from)
                    .map_err(|e| BenchError::Frames(format!("{}: {e}", p.display())))
            })
            .collect::<Result<Vec<_>, _>>()?;
        if jpegs.is_empty() {
            let names = dirs.iter().map(|d| d.display().to_string()).collect::<Vec<_>>().join(", ");
            return Err(BenchError::Frames(format!("no .jpg frames in {names}")));
        }
        Ok(Self { jpegs })
    }
}

/// One load: how many cameras, how fast, for how long.
#[derive(Debug, Clone, serde::Serialize)]
pub struct LoadSpec {
    pub pipeline: String,
    pub cameras: usize,
    pub fps: f64,
    /// Measured time; frames due before `warmup` has passed are sent but not counted.
    #[serde(rename = "duration_s", serialize_with = "seconds")]
    pub duration: Duration,
    #[serde(rename = "warmup_s", serialize_with = "seconds")]
    pub warmup: Duration,
    pub mode: Mode,
    /// Sent in each request; 0 = the server's default for the pipeline.
    pub budget_ms: u32,
}

fn seconds<S: serde::Serializer>(duration: &Duration, serializer: S) -> Result<S::Ok, S::Error> {
    serializer.serialize_f64(duration.as_secs_f64())
}

impl LoadSpec {
    /// Frames each camera sends, warm-up included (open loop; a closed loop sends as fast as it is
    /// answered).
    pub fn frames_per_camera(&self) -> u64 {
        ((self.warmup + self.duration).as_secs_f64() * self.fps).ceil() as u64
    }
}

/// How the server answered one frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    WithinBudget,
    OverBudget,
    /// The server refused or dropped it to keep its budget (verdict SHED, RESOURCE_EXHAUSTED,
    /// DEADLINE_EXCEEDED).
    Shed,
    /// Any other error (the gRPC code).
    Failed(i32),
}

/// Server-side stage times of one frame, in microseconds.
#[derive(Debug, Clone, Copy, Default, serde::Serialize)]
pub struct ServerTimings {
    pub decode: u64,
    pub preprocess: u64,
    pub queue_wait: u64,
    pub inference: u64,
    pub postprocess: u64,
    pub embed: u64,
    pub track: u64,
    pub total: u64,
}

/// One frame as the camera saw it.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Sample {
    pub camera: usize,
    pub sequence: u64,
    /// When the frame was due, in seconds after the measured window opened.
    pub due_s: f64,
    /// From when the frame was sent to its answer.
    pub latency_ms: f64,
    /// How long after its due time the frame was sent (the client's own lateness).
    pub send_lag_ms: f64,
    pub outcome: Outcome,
    pub timings: ServerTimings,
    pub batch_size: u32,
}

/// A camera's own phase within one frame period, spread evenly (golden-ratio steps) so that cameras
/// are not synchronised, as real free-running cameras are not.
fn phase(camera: usize, fps: f64) -> Duration {
    const GOLDEN: f64 = 0.618_033_988_749_894_9;
    Duration::from_secs_f64(((camera as f64 * GOLDEN).fract()) / fps)
}

/// Connects `cameras` clients to `endpoint`, each over its own HTTP/2 connection.
pub async fn connect(endpoint: &str, cameras: usize, access: &Access) -> Result<Vec<Client>, BenchError> {
    let mut clients = Vec::with_capacity(cameras);
    for _ in 0..cameras {
        clients.push(remote::connect(endpoint, access).await?);
    }
    Ok(clients)
}

/// Runs `spec` against connected `clients` (one per camera); `run_tag` keeps camera ids of
/// different runs apart on a long-lived server. Returns the measured frames of every camera.
pub async fn run(
    clients: Vec<Client>,
    frames: &Arc<Frames>,
    spec: &LoadSpec,
    run_tag: &str,
    progress: &ProgressBar,
) -> Vec<Sample> {
    // Every camera starts on the same clock, a moment from now so that all are ready.
    let start = Instant::now() + Duration::from_millis(100);
    let tasks: Vec<_> = clients
        .into_iter()
        .enumerate()
        .map(|(camera, client)| {
            let camera_run = CameraRun {
                camera,
                camera_id: format!("bench-{run_tag}-cam{camera:03}"),
                first_frame: camera * frames.jpegs.len() / spec.cameras.max(1),
                start: start + phase(camera, spec.fps),
                measured_from: start + spec.warmup,
                frames: frames.clone(),
                spec: spec.clone(),
                progress: progress.clone(),
            };
            tokio::spawn(async move {
                match camera_run.spec.mode {
                    Mode::Stream => camera_run.stream(client).await,
                    Mode::Unary => camera_run.unary(client).await,
                    Mode::Closed => camera_run.closed(client).await,
                }
            })
        })
        .collect();
    let mut samples = Vec::new();
    for task in tasks {
        // A camera task that panicked loses only its own samples; the rest still report.
        if let Ok(mut camera_samples) = task.await {
            samples.append(&mut camera_samples);
        }
    }
    samples.sort_by(|a, b| a.due_s.total_cmp(&b.due_s));
    samples
}

struct CameraRun {
    camera: usize,
    camera_id: String,
    first_frame: usize,
    /// When this camera's frame 0 is due.
    start: Instant,
    measured_from: Instant,
    frames: Arc<Frames>,
    spec: LoadSpec,
    progress: ProgressBar,
}

impl CameraRun {
    fn due(&self, sequence: u64) -> Instant {
        self.start + Duration::from_secs_f64(sequence as f64 / self.spec.fps)
    }

    fn request(&self, sequence: u64) -> InspectRequest {
        let jpeg = &self.frames.jpegs[(self.first_frame + sequence as usize) % self.frames.jpegs.len()];
        InspectRequest {
            camera_id: self.camera_id.clone(),
            sequence,
            pipeline: self.spec.pipeline.clone(),
            image: Some(Image {
                data: jpeg.clone(),
                encoding: proto::image::Encoding::Jpeg as i32,
                width: 0,
                height: 0,
            }),
            budget_ms: self.spec.budget_ms,
            annotate: false,
        }
    }

    /// The sample for frame `sequence` sent at `sent` and answered at `answered`, or `None` for a
    /// warm-up frame.
    fn sample(
        &self,
        sequence: u64,
        sent: Instant,
        answered: Instant,
        answer: Result<&InspectResponse, &tonic::Status>,
    ) -> Option<Sample> {
        self.sample_due(sequence, self.due(sequence), sent, answered, answer)
    }

    /// As [`Self::sample`], for a frame that was due at `due`.
    fn sample_due(
        &self,
        sequence: u64,
        due: Instant,
        sent: Instant,
        answered: Instant,
        answer: Result<&InspectResponse, &tonic::Status>,
    ) -> Option<Sample> {
        self.progress.inc(1);
        if due < self.measured_from {
            return None;
        }
        let (outcome, timings, batch_size) = match answer {
            Ok(response) => {
                let outcome = match response.error.as_ref() {
                    Some(error) => classify(error.code),
                    None => match proto::Verdict::try_from(response.verdict) {
                        Ok(proto::Verdict::OverBudget) => Outcome::OverBudget,
                        Ok(proto::Verdict::Shed) => Outcome::Shed,
                        _ => Outcome::WithinBudget,
                    },
                };
                let t = response.timings.unwrap_or_default();
                let timings = ServerTimings {
                    decode: t.decode_us,
                    preprocess: t.preprocess_us,
                    queue_wait: t.queue_wait_us,
                    inference: t.inference_us,
                    postprocess: t.postprocess_us,
                    embed: t.embed_us,
                    track: t.track_us,
                    total: t.total_us,
                };
                (outcome, timings, response.batch_size)
            }
            Err(status) => (classify(status.code() as i32), ServerTimings::default(), 0),
        };
        Some(Sample {
            camera: self.camera,
            sequence,
            due_s: due.saturating_duration_since(self.measured_from).as_secs_f64(),
            latency_ms: answered.saturating_duration_since(sent).as_secs_f64() * 1e3,
            send_lag_ms: sent.saturating_duration_since(due).as_secs_f64() * 1e3,
            outcome,
            timings,
            batch_size,
        })
    }

    async fn unary(self, client: Client) -> Vec<Sample> {
        let total = self.spec.frames_per_camera();
        let mut samples = Vec::new();
        let mut in_flight = FuturesUnordered::new();
        for sequence in 0..total {
            let due = self.due(sequence);
            // Collect answers while waiting for the next frame's moment.
            loop {
                tokio::select! {
                    biased;
                    Some((seq, sent, answered, answer)) = in_flight.next(), if !in_flight.is_empty() => {
                        let answer: Result<tonic::Response<InspectResponse>, tonic::Status> = answer;
                        samples.extend(self.sample(seq, sent, answered, answer.as_ref().map(tonic::Response::get_ref)));
                    }
                    () = tokio::time::sleep_until(due) => break,
                }
            }
            let mut client = client.clone();
            let request = self.request(sequence);
            in_flight.push(async move {
                let sent = Instant::now();
                let answer = client.inspect(request).await;
                (sequence, sent, Instant::now(), answer)
            });
        }
        while let Some((seq, sent, answered, answer)) = in_flight.next().await {
            samples.extend(self.sample(seq, sent, answered, answer.as_ref().map(tonic::Response::get_ref)));
        }
        samples
    }

    /// Back to back until the measured window closes: each frame is due when the last is answered.
    async fn closed(self, mut client: Client) -> Vec<Sample> {
        let end = self.measured_from + self.spec.duration;
        tokio::time::sleep_until(self.start).await;
        let mut samples = Vec::new();
        let mut sequence = 0;
        while Instant::now() < end {
            let request = self.request(sequence);
            let sent = Instant::now();
            let answer = client.inspect(request).await;
            let answered = Instant::now();
            samples.extend(self.sample_due(
                sequence,
                sent,
                sent,
                answered,
                answer.as_ref().map(tonic::Response::get_ref),
            ));
            sequence += 1;
        }
        samples
    }

    async fn stream(self, mut client: Client) -> Vec<Sample> {
        let total = self.spec.frames_per_camera();
        let (sender, receiver) = tokio::sync::mpsc::unbounded_channel::<InspectRequest>();
        let requests: Vec<InspectRequest> = (0..total).map(|s| self.request(s)).collect();
        let schedule: Vec<Instant> = (0..total).map(|s| self.due(s)).collect();
        // Send instants, in frame order: answers come back in that order too.
        let (sent_at, mut sent_instants) = tokio::sync::mpsc::unbounded_channel::<Instant>();
        let sending = tokio::spawn(async move {
            for (request, due) in requests.into_iter().zip(schedule) {
                tokio::time::sleep_until(due).await;
                let sent = Instant::now();
                if sender.send(request).is_err() || sent_at.send(sent).is_err() {
                    break;
                }
            }
        });
        let mut samples = Vec::new();
        let mut answered = 0u64;
        let outbound = tokio_stream::wrappers::UnboundedReceiverStream::new(receiver);
        let ended = match client.inspect_stream(outbound).await {
            Ok(response) => {
                let mut inbound = response.into_inner();
                loop {
                    match inbound.next().await {
                        Some(Ok(response)) => {
                            let now = Instant::now();
                            let sent = sent_instants.recv().await.unwrap_or(now);
                            samples.extend(self.sample(response.sequence, sent, now, Ok(&response)));
                            answered += 1;
                        }
                        Some(Err(status)) => break Some(status),
                        None => break None,
                    }
                }
            }
            Err(status) => Some(status),
        };
        sending.abort();
        // A stream that ended early leaves its remaining frames unanswered: each counts as failed
        // with the stream's status (or CANCELLED if it just stopped).
        if answered < total {
            let status =
                ended.unwrap_or_else(|| tonic::Status::cancelled("the stream ended before every frame was answered"));
            let now = Instant::now();
            for sequence in answered..total {
                let sent = sent_instants.try_recv().unwrap_or(now);
                samples.extend(self.sample(sequence, sent, now, Err(&status)));
            }
        }
        samples
    }
}

fn classify(code: i32) -> Outcome {
    let code = tonic::Code::from_i32(code);
    if linesight::api::is_shed_code(code) { Outcome::Shed } else { Outcome::Failed(code as i32) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn camera_phases_spread_over_one_period() {
        let fps = 10.0;
        let mut phases: Vec<f64> = (0..10).map(|c| phase(c, fps).as_secs_f64()).collect();
        assert!(phases.iter().all(|&p| (0.0..0.1).contains(&p)));
        phases.sort_by(f64::total_cmp);
        // Ten cameras: no two within a quarter of the even spacing (10 ms) of each other.
        assert!(phases.windows(2).all(|w| w[1] - w[0] > 0.0025), "{phases:?}");
    }

    #[test]
    fn frames_per_camera_covers_warmup_and_duration() {
        let spec = LoadSpec {
            pipeline: "detect".into(),
            cameras: 2,
            fps: 7.5,
            duration: Duration::from_secs(4),
            warmup: Duration::from_secs(1),
            mode: Mode::Stream,
            budget_ms: 0,
        };
        assert_eq!(spec.frames_per_camera(), 38);
    }

    #[test]
    fn refusals_to_keep_the_budget_count_as_shed_and_others_as_failed() {
        assert_eq!(classify(tonic::Code::ResourceExhausted as i32), Outcome::Shed);
        assert_eq!(classify(tonic::Code::DeadlineExceeded as i32), Outcome::Shed);
        assert_eq!(classify(tonic::Code::InvalidArgument as i32), Outcome::Failed(3));
    }
}

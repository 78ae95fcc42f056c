//! Sending: per camera, one `InspectStream` with at most `window` frames in flight. Whenever the
//! window has room it takes the newest captured frame, unless that is already older than
//! `max_frame_age_ms`; answers come back in frame order. A broken stream, an unreachable server, or
//! a stream whose oldest frame has no answer within `answer_timeout_ms` (a path that went silent) is
//! reconnected with backoff, and the camera's sequence numbers carry on across reconnects (and
//! across restarts of the bridge), so the server's tracker keeps order.

use std::collections::VecDeque;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use linesight::api::proto::{self, Image, InspectRequest, InspectResponse, image::Encoding};
use opencv::core::Vector;
use opencv::prelude::*;
use tokio::sync::watch;
use tokio_stream::wrappers::ReceiverStream;

use super::capture::{Backoff, unix_us_at};
use super::config::FrameEncoding;
use super::latest::{CapturedFrame, LatestFrame};
use super::output::{AnswerLine, AnswerLog, annotated_path};
use super::stats::CameraStats;
use crate::remote::{self, Access, Client};

/// How long a stopping bridge waits for the answers of frames already sent.
const DRAIN_GRACE: Duration = Duration::from_secs(5);

/// What every camera's sender shares.
pub struct Link {
    pub endpoint: String,
    pub access: Access,
    pub window: usize,
    pub encoding: FrameEncoding,
    pub jpeg_quality: u8,
    pub annotate_every: u64,
    pub annotate_dir: Option<PathBuf>,
    pub answers: Option<Arc<AnswerLog>>,
    pub reconnect_min: Duration,
    pub reconnect_max: Duration,
    pub max_frame_age: Duration,
    pub answer_timeout: Duration,
}

/// One camera's side of the link.
pub struct CameraSender {
    pub camera_id: String,
    pub pipeline: String,
    pub budget_ms: u32,
    pub latest: Arc<LatestFrame>,
    pub stats: Arc<CameraStats>,
    pub link: Arc<Link>,
}

/// A frame sent and not yet answered.
struct InFlight {
    sequence: u64,
    captured_at: Instant,
    captured_unix_ms: u64,
    sent_at: tokio::time::Instant,
    sent_unix_ms: u64,
}

/// How one stream ended.
enum StreamEnd {
    /// The source ended and every frame sent was answered.
    SourceEnded,
    /// The bridge is stopping.
    Stopped,
    /// The stream broke or could not start; `answered` frames made it through first.
    Broken { reason: String, answered: u64 },
}

/// The first sequence number of a run: milliseconds since the Unix epoch, so that a restarted
/// bridge numbers its frames above the last run's (at under 1,000 frames per second).
fn first_sequence() -> u64 {
    SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).map_or(1, |d| u64::try_from(d.as_millis()).unwrap_or(1))
}

impl CameraSender {
    /// Runs until the source ends or `stop` turns true.
    pub async fn run(self, mut stop: watch::Receiver<bool>) {
        let mut next_sequence = first_sequence();
        let mut backoff = Backoff::new(self.link.reconnect_min, self.link.reconnect_max);
        let mut connected_before = false;
        while !*stop.borrow() {
            let connected = tokio::select! {
                connected = remote::connect(&self.link.endpoint, &self.link.access) => connected,
                _ = stop.changed() => break,
            };
            let end = match connected {
                Ok(client) => {
                    if std::mem::replace(&mut connected_before, true) {
                        self.stats.server_reconnects.inc();
                    }
                    self.stream(client, &mut next_sequence, &mut stop).await
                }
                Err(error) => StreamEnd::Broken { reason: error.to_string(), answered: 0 },
            };
            self.stats.server_up.set(0);
            match end {
                StreamEnd::SourceEnded | StreamEnd::Stopped => break,
                StreamEnd::Broken { reason, answered } => {
                    if answered > 0 {
                        backoff.reset();
                    }
                    let wait = backoff.next();
                    tracing::warn!(message = "Server unreachable; reconnecting.", camera_id = %self.camera_id, error = %reason, retry_in_ms = wait.as_millis());
                    tokio::select! {
                        () = tokio::time::sleep(wait) => {}
                        _ = stop.changed() => break,
                    }
                }
            }
        }
    }

    /// One `InspectStream` until it ends.
    async fn stream(&self, mut client: Client, next_sequence: &mut u64, stop: &mut watch::Receiver<bool>) -> StreamEnd {
        let (requests, outgoing) = tokio::sync::mpsc::channel::<InspectRequest>(self.link.window);
        let opened =
            tokio::time::timeout(self.link.answer_timeout, client.inspect_stream(ReceiverStream::new(outgoing)));
        let mut responses = match opened.await {
            Ok(Ok(responses)) => responses.into_inner(),
            Ok(Err(status)) => return StreamEnd::Broken { reason: status.to_string(), answered: 0 },
            Err(_) => {
                let reason =
                    format!("the stream did not open within answer_timeout_ms ({:?})", self.link.answer_timeout);
                return StreamEnd::Broken { reason, answered: 0 };
            }
        };
        self.stats.server_up.set(1);
        tracing::info!(message = "Streaming.", camera_id = %self.camera_id, server = %self.link.endpoint);
        let mut in_flight = VecDeque::<InFlight>::with_capacity(self.link.window);
        let mut answered = 0u64;
        let mut source_ended = false;
        loop {
            if source_ended && in_flight.is_empty() {
                return StreamEnd::SourceEnded;
            }
            // The oldest frame in flight must be answered by then, or the path is taken as dead.
            let answer_due = in_flight.front().map(|oldest| oldest.sent_at + self.link.answer_timeout);
            tokio::select! {
                biased;
                _ = stop.changed() => {
                    drop(requests);
                    self.drain(&mut responses, &mut in_flight).await;
                    return StreamEnd::Stopped;
                }
                message = responses.message() => match message {
                    Ok(Some(response)) => {
                        answered += 1;
                        self.answer(response, &mut in_flight).await;
                    }
                    Ok(None) => {
                        self.lose(&mut in_flight);
                        return StreamEnd::Broken { reason: "the server ended the stream".into(), answered };
                    }
                    Err(status) => {
                        self.lose(&mut in_flight);
                        return StreamEnd::Broken { reason: status.to_string(), answered };
                    }
                },
                () = sleep_until(answer_due), if answer_due.is_some() => {
                    self.lose(&mut in_flight);
                    let reason = format!("no answer within answer_timeout_ms ({:?})", self.link.answer_timeout);
                    return StreamEnd::Broken { reason, answered };
                }
                frame = self.latest.next(), if !source_ended && in_flight.len() < self.link.window => {
                    let Some(frame) = frame else {
                        source_ended = true;
                        continue;
                    };
                    if frame.captured_at.elapsed() > self.link.max_frame_age {
                        self.stats.stale.inc();
                        continue;
                    }
                    let sequence = *next_sequence;
                    let Some(request) = self.request(frame, sequence, &mut in_flight).await else { continue };
                    *next_sequence += 1;
                    if !hand_off(&self.stats, &requests, request, sequence).await {
                        self.lose(&mut in_flight);
                        return StreamEnd::Broken { reason: "the stream closed".into(), answered };
                    }
                }
            }
        }
    }

    /// The request for a frame (encoded off the async threads), recorded as in flight.
    async fn request(
        &self,
        frame: CapturedFrame,
        sequence: u64,
        in_flight: &mut VecDeque<InFlight>,
    ) -> Option<InspectRequest> {
        let CapturedFrame { image, captured_at, captured_unix_ms } = frame;
        let (encoding, quality) = (self.link.encoding, self.link.jpeg_quality);
        let encoded = tokio::task::spawn_blocking(move || encode(&image, encoding, quality)).await;
        let image = match encoded {
            Ok(Ok(image)) => image,
            Ok(Err(error)) => {
                tracing::warn!(message = "Frame not encoded; dropped.", camera_id = %self.camera_id, %error);
                self.stats.dropped.inc();
                return None;
            }
            Err(error) => {
                tracing::warn!(message = "Frame not encoded; dropped.", camera_id = %self.camera_id, %error);
                self.stats.dropped.inc();
                return None;
            }
        };
        let annotate = self.link.annotate_every > 0 && sequence.is_multiple_of(self.link.annotate_every);
        in_flight.push_back(InFlight {
            sequence,
            captured_at,
            captured_unix_ms,
            sent_at: tokio::time::Instant::now(),
            sent_unix_ms: unix_us_at(Instant::now()) / 1000,
        });
        Some(InspectRequest {
            camera_id: self.camera_id.clone(),
            sequence,
            pipeline: self.pipeline.clone(),
            image: Some(image),
            budget_ms: self.budget_ms,
            annotate,
        })
    }

    async fn answer(&self, response: InspectResponse, in_flight: &mut VecDeque<InFlight>) {
        let Some(sent) = in_flight.pop_front() else {
            tracing::warn!(message = "Answer to no frame sent.", camera_id = %self.camera_id, sequence = response.sequence);
            return;
        };
        if sent.sequence != response.sequence {
            tracing::warn!(message = "Answer out of order.", camera_id = %self.camera_id, expected = sent.sequence, got = response.sequence);
        }
        let latency = sent.captured_at.elapsed();
        self.stats.answered.inc();
        self.stats.record_latency(latency);
        let counter = match (&response.error, proto::Verdict::try_from(response.verdict)) {
            (Some(error), _) => {
                tracing::warn!(message = "Frame failed.", camera_id = %self.camera_id, sequence = response.sequence, code = error.code, error = %error.message);
                &self.stats.failed
            }
            (None, Ok(proto::Verdict::WithinBudget)) => &self.stats.within_budget,
            (None, Ok(proto::Verdict::OverBudget)) => &self.stats.over_budget,
            (None, Ok(proto::Verdict::Shed)) => &self.stats.shed,
            (None, _) => &self.stats.failed,
        };
        counter.inc();
        let annotated = match (&self.link.annotate_dir, response.annotated_jpeg.is_empty()) {
            (Some(dir), false) => {
                let path = annotated_path(dir, &self.camera_id, response.sequence);
                let jpeg = response.annotated_jpeg.clone();
                let written = path.clone();
                let saved = tokio::task::spawn_blocking(move || {
                    if let Some(parent) = written.parent() {
                        std::fs::create_dir_all(parent)?;
                    }
                    std::fs::write(&written, jpeg)
                })
                .await;
                match saved {
                    Ok(Ok(())) => Some(path.display().to_string()),
                    Ok(Err(error)) => {
                        tracing::warn!(message = "Annotated frame not written.", path = %path.display(), %error);
                        None
                    }
                    Err(error) => {
                        tracing::warn!(message = "Annotated frame not written.", path = %path.display(), %error);
                        None
                    }
                }
            }
            _ => None,
        };
        if let Some(answers) = &self.link.answers {
            let latency_ms = latency.as_secs_f64() * 1e3;
            answers.write(&AnswerLine::of(&response, sent.captured_unix_ms, sent.sent_unix_ms, latency_ms, annotated));
        }
    }

    /// Frames sent on a stream that broke will not be answered.
    fn lose(&self, in_flight: &mut VecDeque<InFlight>) {
        lose_all(&self.stats, in_flight);
    }

    /// Waits (a while) for the answers of the frames in flight.
    async fn drain(&self, responses: &mut tonic::Streaming<InspectResponse>, in_flight: &mut VecDeque<InFlight>) {
        let deadline = tokio::time::Instant::now() + DRAIN_GRACE;
        while !in_flight.is_empty() {
            match tokio::time::timeout_at(deadline, responses.message()).await {
                Ok(Ok(Some(response))) => self.answer(response, in_flight).await,
                _ => break,
            }
        }
        self.lose(in_flight);
    }
}

/// Hands a frame's request to the stream; `false` if the stream has already closed. The frame
/// counts as sent, with its sequence, either way: it is in flight, so a stream that closed under
/// it counts it as lost, and the counts still add up.
async fn hand_off(
    stats: &CameraStats,
    requests: &tokio::sync::mpsc::Sender<InspectRequest>,
    request: InspectRequest,
    sequence: u64,
) -> bool {
    stats.sent.inc();
    stats.record_sequence(sequence);
    requests.send(request).await.is_ok()
}

async fn sleep_until(at: Option<tokio::time::Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

fn lose_all(stats: &CameraStats, in_flight: &mut VecDeque<InFlight>) {
    stats.lost.inc_by(in_flight.len() as u64);
    in_flight.clear();
}

/// A captured frame as the API's `Image`: JPEG, or the raw pixels as they are.
fn encode(image: &Mat, encoding: FrameEncoding, jpeg_quality: u8) -> Result<Image, String> {
    let (width, height) = (u32::try_from(image.cols()).unwrap_or(0), u32::try_from(image.rows()).unwrap_or(0));
    let channels = image.channels();
    match encoding {
        FrameEncoding::Jpeg => {
            let mut jpeg = Vector::<u8>::new();
            let params = Vector::from_slice(&[opencv::imgcodecs::IMWRITE_JPEG_QUALITY, i32::from(jpeg_quality)]);
            opencv::imgcodecs::imencode(".jpg", image, &mut jpeg, &params).map_err(|e| e.message)?;
            Ok(Image { data: jpeg.to_vec().into(), encoding: Encoding::Jpeg as i32, width: 0, height: 0 })
        }
        FrameEncoding::Raw => {
            let encoding = match channels {
                3 => Encoding::RawBgr8,
                1 => Encoding::RawGray8,
                other => {
                    return Err(format!("raw frames must have 1 or 3 channels, not {other} (use encoding = \"jpeg\")"));
                }
            };
            if image.depth() != opencv::core::CV_8U {
                return Err("raw frames must have 8-bit channels (use encoding = \"jpeg\")".into());
            }
            let data = if image.is_continuous() {
                image.data_bytes().map_err(|e| e.message)?.to_vec()
            } else {
                image.try_clone().map_err(|e| e.message)?.data_bytes().map_err(|e| e.message)?.to_vec()
            };
            Ok(Image { data: data.into(), encoding: encoding as i32, width, height })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gradient() -> Mat {
        let mut image =
            Mat::new_rows_cols_with_default(48, 64, opencv::core::CV_8UC3, opencv::core::Scalar::all(0.0)).unwrap();
        let bytes = image.data_bytes_mut().unwrap();
        for (i, byte) in bytes.iter_mut().enumerate() {
            *byte = (i % 251) as u8;
        }
        image
    }

    #[test]
    fn raw_frames_keep_every_pixel_and_their_size() {
        let image = gradient();
        let encoded = encode(&image, FrameEncoding::Raw, 90).unwrap();
        assert_eq!(encoded.encoding, Encoding::RawBgr8 as i32);
        assert_eq!((encoded.width, encoded.height), (64, 48));
        assert_eq!(encoded.data.as_ref(), image.data_bytes().unwrap());
    }

    #[test]
    fn jpeg_frames_decode_to_the_same_size() {
        let encoded = encode(&gradient(), FrameEncoding::Jpeg, 90).unwrap();
        assert_eq!(encoded.encoding, Encoding::Jpeg as i32);
        let decoded = image::load_from_memory(&encoded.data).unwrap();
        assert_eq!((decoded.width(), decoded.height()), (64, 48));
    }

    #[tokio::test]
    async fn a_frame_handed_to_a_stream_that_closed_counts_as_sent_and_lost() {
        let metrics = crate::camera::stats::BridgeMetrics::new();
        let stats = metrics.camera("line");
        let (requests, outgoing) = tokio::sync::mpsc::channel::<InspectRequest>(2);
        let mut in_flight = VecDeque::new();
        let frame = |sequence| {
            let request = InspectRequest { camera_id: "line".into(), sequence, ..Default::default() };
            let sent_at = tokio::time::Instant::now();
            (request, InFlight { sequence, captured_at: Instant::now(), captured_unix_ms: 0, sent_at, sent_unix_ms: 0 })
        };
        let (request, sent) = frame(7);
        in_flight.push_back(sent);
        assert!(hand_off(&stats, &requests, request, 7).await);
        drop(outgoing);
        let (request, sent) = frame(8);
        in_flight.push_back(sent);
        assert!(!hand_off(&stats, &requests, request, 8).await, "the stream has closed");
        lose_all(&stats, &mut in_flight);
        let counts = stats.snapshot();
        assert_eq!((counts.sent, counts.lost, counts.answered), (2, 2, 0), "sent = answered + lost");
        assert_eq!(counts.last_sequence - counts.first_sequence + 1, counts.sent, "no sequence skipped");
    }

    #[test]
    fn sequences_start_from_the_clock_so_a_restart_counts_on_upward() {
        let first = first_sequence();
        std::thread::sleep(Duration::from_millis(5));
        assert!(first_sequence() >= first + 5);
    }
}

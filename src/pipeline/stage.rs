//! The model stage every pipeline kind is built on: one model's queue and worker threads, and a
//! frame's way through them — refused on arrival behind a queue it cannot clear, decoded and
//! letterboxed on the CPU pool, batched, inferred. What the outputs mean is the pipeline's.

use std::cell::RefCell;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use image::RgbImage;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, oneshot};
use tokio::time::Instant;

use super::FrameHold;
use super::worker::{Inferred, Job, JobInput, WorkerSetup, Workers, join_all, start_workers};
use super::{
    FrameRequest, FrameResult, ImageInput, InspectError, LabeledDetection, PipelineInfo, ShedLimit, StageContext,
    StageTimings, Verdict,
};
use crate::batching::{BatchPolicy, BatchQueue, Deadlines, Reservation};
use crate::engine::{EngineError, Output, Provider};
use crate::imaging::{self, Annotation, Letterbox, Preprocessor, TensorSpec};
use crate::model::{ChannelOrder, InputSpec, ModelManifest};
use crate::segment::CellInspection;
use crate::track::{FrameAnalytics, FrameOrder};

thread_local! {
    static PREPROCESSOR: RefCell<Preprocessor> = RefCell::new(Preprocessor::new());
}

/// The tensor a model's manifest asks for.
pub fn tensor_spec(input: &InputSpec) -> TensorSpec {
    TensorSpec {
        width: input.width,
        height: input.height,
        bgr: input.channel_order == ChannelOrder::Bgr,
        mean: input.mean,
        std: input.std,
        pad_value: input.pad_value,
    }
}

/// When a frame must be done by, and which limit that is.
#[derive(Debug, Clone, Copy)]
pub(super) struct FrameDeadline {
    pub budget: Duration,
    pub at: Instant,
    pub limit: ShedLimit,
    /// The client's gRPC deadline: past it nobody waits for the answer.
    pub expires: Option<Instant>,
}

impl FrameDeadline {
    pub fn new(request: &FrameRequest, budget: Duration) -> Self {
        let budget = request.budget.unwrap_or(budget);
        let budget_deadline = request.received + budget;
        let expires = request.client_deadline;
        match request.client_deadline {
            Some(client) if client < budget_deadline => {
                Self { budget, at: client, limit: ShedLimit::ClientDeadline, expires }
            }
            _ => Self { budget, at: budget_deadline, limit: ShedLimit::Budget(budget), expires },
        }
    }

    /// The deadline of an earlier stage, which must leave `later` for the stages after it.
    pub fn reserving(self, later: Duration) -> Self {
        Self { at: self.at.checked_sub(later).unwrap_or(self.at), ..self }
    }

    /// What the batcher holds the frame to.
    pub fn deadlines(&self) -> Deadlines {
        Deadlines { due: self.at, expires: self.expires }
    }
}

/// How a model stage is started.
pub(super) struct StageSetup<'a> {
    pub pipeline: &'a str,
    pub manifest: ModelManifest,
    /// The input every row is made into.
    pub spec: TensorSpec,
    pub batching: BatchPolicy,
    pub instances: usize,
    /// Batch sizes (in rows) a GPU worker with fixed shapes keeps a session for, fewest first.
    pub row_buckets: Vec<usize>,
    pub warm_batches: &'a [usize],
    /// The model is a pipeline's later stage (its frames carry earlier stages' work).
    pub later_stage: bool,
}

/// One model, its queue and its workers.
pub(super) struct ModelStage {
    pub pipeline: String,
    pub manifest: ModelManifest,
    pub spec: TensorSpec,
    queue: Arc<BatchQueue<Job>>,
    workers: Mutex<Vec<std::thread::JoinHandle<()>>>,
    health: Arc<super::ModelHealth>,
    pub context: Arc<StageContext>,
    pub provider: Provider,
    /// Frames go to the workers as pixels; the GPU letterboxes (or crops) them.
    pub device_preprocess: bool,
    pub device_memory: Option<u64>,
    /// The CPU's run gate, for a first-stage model on the CPU when runs are exclusive.
    first_stage_cpu_runs: Option<Arc<super::worker::CpuRuns>>,
}

/// A frame decoded, letterboxed and run through the model.
pub(super) struct InferredFrame {
    pub inferred: Inferred,
    pub letterbox: Letterbox,
    pub image: Arc<RgbImage>,
    /// decode, preprocess, queue wait and inference.
    pub timings: StageTimings,
}

/// What a pipeline found in a frame, before the response is made.
pub(super) struct Answer {
    pub detections: Vec<LabeledDetection>,
    /// The decoded frame (annotated when the request asks).
    pub image: Arc<RgbImage>,
    pub timings: StageTimings,
    pub batch_size: u32,
    pub tracking: Option<FrameOrder>,
    pub cell: Option<CellInspection>,
    pub analytics: Option<FrameAnalytics>,
}

/// Rows of one frame on their way into a model's queue.
struct Queued {
    input: JobInput,
    rows: usize,
    /// The rows' tensor width and height (the stage's input size, or the frame's own under
    /// `InputSpec::stride`), and the batching shape key that goes with it (0: the stage's size).
    size: [u32; 2],
    shape: u64,
    flow: u64,
    /// A later stage of the frame's pipeline runs after this one.
    followed: bool,
    hold: FrameHold,
}

/// A frame decoded and made into its model input, not yet queued.
struct Prepared {
    input: JobInput,
    /// The tensor's width and height.
    size: [u32; 2],
    letterbox: Letterbox,
    image: Arc<RgbImage>,
    decode: Duration,
    preprocess: Duration,
}

impl ModelStage {
    pub fn start(
        setup: StageSetup<'_>,
        engine: &super::EngineSetup<'_>,
        context: Arc<StageContext>,
    ) -> Result<Self, EngineError> {
        let queue = Arc::new(BatchQueue::new(setup.batching));
        let Workers { handles, provider, device_preprocess, device_memory, health } = start_workers(
            WorkerSetup {
                engine,
                manifest: &setup.manifest,
                row_buckets: setup.row_buckets,
                instances: setup.instances,
                spec: setup.spec,
                warm_batches: setup.warm_batches,
                later_stage: setup.later_stage,
            },
            &queue,
        )?;
        tracing::info!(
            message = "Model started.",
            pipeline = setup.pipeline,
            model = setup.manifest.name,
            instances = setup.instances,
            max_batch = setup.batching.max_batch,
            max_queue_delay_us = setup.batching.max_queue_delay.as_micros(),
            provider = %provider,
            gpu_preprocess = device_preprocess,
        );
        Ok(Self {
            pipeline: setup.pipeline.to_owned(),
            manifest: setup.manifest,
            spec: setup.spec,
            queue,
            workers: Mutex::new(handles),
            health,
            context,
            provider,
            device_preprocess,
            device_memory,
            first_stage_cpu_runs: engine.cpu_runs.clone().filter(|_| !setup.later_stage && !provider.on_gpu()),
        })
    }

    /// A stage that takes whole frames, letterboxed to the model's input, one row each.
    pub fn for_frames(
        pipeline: &str,
        manifest: ModelManifest,
        batching: BatchPolicy,
        instances: usize,
        engine: &super::EngineSetup<'_>,
        context: Arc<StageContext>,
    ) -> Result<Self, super::StartError> {
        let mut batching = batching;
        // A model exported with a fixed batch of n > 1 runs every batch padded to n, so no
        // batch may hold more.
        let fixed = manifest.input.batch.filter(|&n| n > 1);
        if let Some(n) = fixed.filter(|&n| batching.max_batch > n) {
            tracing::warn!(
                message = "The model takes a fixed batch; max_batch lowered to it.",
                pipeline,
                model = manifest.name,
                max_batch = batching.max_batch,
                model_batch = n,
            );
            batching.max_batch = n;
        }
        // The workers pin a fixed-batch model's sessions (and warm-up) to its n rows themselves.
        let max_batch = batching.max_batch;
        let setup = StageSetup {
            pipeline,
            spec: tensor_spec(&manifest.input),
            manifest,
            batching,
            instances,
            row_buckets: vec![1, max_batch],
            warm_batches: &[1, max_batch],
            later_stage: false,
        };
        Self::start(setup, engine, context)
            .map_err(|source| super::StartError::Engine { pipeline: pipeline.to_owned(), source })
    }

    /// The pipeline's description as far as its model goes.
    pub fn describe(&self, budget: Duration) -> PipelineInfo {
        let policy = self.queue.policy();
        PipelineInfo {
            name: self.pipeline.clone(),
            model: self.manifest.name.clone(),
            description: self.manifest.description.clone(),
            classes: self.manifest.classes.clone(),
            budget,
            input_width: self.spec.width,
            input_height: self.spec.height,
            max_batch: policy.max_batch,
            max_queue_delay: policy.max_queue_delay,
            max_queue_size: policy.max_queue_size,
            detector: None,
            provider: self.provider,
            gpu_preprocess: self.device_preprocess,
            device_memory_bytes: self.device_memory,
        }
    }

    pub fn close(&self) {
        self.queue.close();
    }

    pub async fn join_workers(&self) {
        join_all(&self.workers).await;
    }

    /// How long later stages' work already announced keeps this (first-stage, CPU) model from
    /// the CPU; zero for a later stage or a model on a GPU.
    fn cpu_busy_for(&self) -> Duration {
        self.first_stage_cpu_runs.as_ref().map_or(Duration::ZERO, |gate| gate.pending_wait())
    }

    /// The typical time of one frame's batch on this model lately (`None`: none run lately).
    pub fn typical_service(&self) -> Option<Duration> {
        self.queue.service_estimate(1, crate::batching::Figure::Typical)
    }

    /// Frames waiting for this model.
    pub fn queue_depth(&self) -> usize {
        self.queue.len()
    }

    pub fn health(&self) -> &super::ModelHealth {
        &self.health
    }

    /// Queues `rows` rows of one frame and waits for the batch they ride in. `followed`: a later
    /// stage of the frame's pipeline runs after this one.
    pub async fn infer(
        &self,
        input: JobInput,
        rows: usize,
        flow: u64,
        deadline: FrameDeadline,
        followed: bool,
        hold: &FrameHold,
    ) -> Result<Inferred, InspectError> {
        let size = [self.spec.width, self.spec.height];
        self.infer_in(None, Queued { input, rows, size, shape: 0, flow, followed, hold: hold.clone() }, deadline).await
    }

    /// As [`Self::infer`], in the place `reservation` holds when there is one.
    async fn infer_in(
        &self,
        reservation: Option<Reservation<'_, Job>>,
        queued: Queued,
        deadline: FrameDeadline,
    ) -> Result<Inferred, InspectError> {
        let Queued { input, rows, size, shape, flow, followed, hold } = queued;
        let (reply, answer) = oneshot::channel();
        let job = Job { input, rows, size, limit: deadline.limit, followed, reply, _hold: Some(hold) };
        match reservation {
            Some(reservation) => reservation.submit_shaped(job, flow, shape, deadline.deadlines()),
            None => self.queue.submit_shaped(job, flow, shape, deadline.deadlines()),
        }
        .map_err(|full| InspectError::QueueFull { pipeline: self.pipeline.clone(), capacity: full.capacity })?;
        answer.await.map_err(|_| InspectError::ShuttingDown)?
    }

    /// Decode → letterbox → batch → infer, for one whole frame (`followed`: by a later stage).
    pub async fn infer_frame(
        &self,
        request: &FrameRequest,
        deadline: FrameDeadline,
        followed: bool,
        hold: &FrameHold,
    ) -> Result<InferredFrame, InspectError> {
        let image = request.image.clone().ok_or(InspectError::MissingImage)?;
        let flow = super::flow_of(&request.camera_id);
        // Behind a queue it cannot clear in time, the frame is refused before it costs a decode.
        if let Some(later) = self.queue.refuse_on_arrival(flow, deadline.deadlines(), self.cpu_busy_for()) {
            return Err(refused(deadline, later, tokio::time::Instant::now()).await);
        }
        let (prepared, reservation) = self.prepare(image, flow, deadline, hold).await?;
        let [width, height] = prepared.size;
        // Frames letterboxed to their own size batch only with frames of that size.
        let shape = if self.manifest.input.stride.is_some() { (u64::from(width) << 32) | u64::from(height) } else { 0 };
        let queued =
            Queued { input: prepared.input, rows: 1, size: prepared.size, shape, flow, followed, hold: hold.clone() };
        let inferred = self.infer_in(Some(reservation), queued, deadline).await?;
        Ok(InferredFrame {
            timings: StageTimings {
                decode: prepared.decode,
                preprocess: prepared.preprocess + inferred.device_preprocess,
                queue_wait: inferred.queue_wait,
                inference: inferred.inference,
                ..StageTimings::default()
            },
            inferred,
            letterbox: prepared.letterbox,
            image: prepared.image,
        })
    }

    /// Decodes the frame and letterboxes it into the model input, on the bounded CPU pool (with
    /// GPU preprocessing, only the geometry is worked out here). First the frame leases its decoded
    /// size from the memory budget, read from its header. The wait for a CPU worker is a queue the
    /// batcher does not see: on a busy machine it can outlast the frame's chances, so the frame is
    /// judged again once it has a worker, before the decode is spent on it.
    async fn prepare(
        &self,
        image: ImageInput,
        flow: u64,
        deadline: FrameDeadline,
        hold: &FrameHold,
    ) -> Result<(Prepared, Reservation<'_, Job>), InspectError> {
        let spec = self.spec;
        let stride = self.manifest.input.stride;
        let limits = self.context.decode_limits;
        let on_device = self.device_preprocess;
        let size = imaging::decoded_size(&image.data, image.encoding, image.width, image.height, limits)?;
        let input_bytes = if on_device { 0 } else { spec.len() as u64 * 4 };
        hold.keep(self.context.decoded_memory.lease(size, size.peak_bytes + input_bytes)?);
        let asked = tokio::time::Instant::now();
        let permit = cpu_permit(&self.context.cpu_permits).await?;
        let reservation = match self.queue.reserve(flow, deadline.deadlines(), self.cpu_busy_for()) {
            Ok(reservation) => reservation,
            Err(later) => {
                drop(permit);
                return Err(refused(deadline, later, asked).await);
            }
        };
        let prepared = run_on_cpu_pool(permit, hold, move || -> Result<Prepared, InspectError> {
            let t0 = std::time::Instant::now();
            let rgb = imaging::decode(&image.data, image.encoding, image.width, image.height, limits)?;
            let decode = t0.elapsed();
            let t1 = std::time::Instant::now();
            let (letterbox, spec) = match stride {
                Some(stride) => {
                    let (letterbox, width, height) =
                        Letterbox::to_stride(rgb.width(), rgb.height(), spec.width, spec.height, stride);
                    (letterbox, TensorSpec { width, height, ..spec })
                }
                None => (Letterbox::new(rgb.width(), rgb.height(), spec.width, spec.height), spec),
            };
            let size = [spec.width, spec.height];
            if on_device {
                let image = Arc::new(rgb);
                let input =
                    JobInput::Pixels { image: image.clone(), rows: vec![imaging::RowSource::Letterbox(letterbox)] };
                return Ok(Prepared { input, size, letterbox, image, decode, preprocess: t1.elapsed() });
            }
            let mut tensor = vec![0f32; spec.len()];
            PREPROCESSOR
                .with(|p| p.borrow_mut().letterbox_with(&rgb, &spec, &letterbox, &mut tensor))
                .map_err(|e| InspectError::Internal(e.to_string()))?;
            Ok(Prepared {
                input: JobInput::Tensor(tensor),
                size,
                letterbox,
                image: Arc::new(rgb),
                decode,
                preprocess: t1.elapsed(),
            })
        })
        .await??;
        Ok((prepared, reservation))
    }

    /// The frame's response: annotated if asked, its total time taken now, judged against its
    /// budget. Named after this stage's pipeline and model.
    pub async fn answer(
        &self,
        request: FrameRequest,
        deadline: FrameDeadline,
        answer: Answer,
        hold: &FrameHold,
    ) -> Result<FrameResult, InspectError> {
        let Answer { detections, image, mut timings, batch_size, tracking, cell, analytics } = answer;
        let (image_width, image_height) = image.dimensions();
        let image = request.annotate.then_some(image);
        let (detections, analytics, annotated_jpeg) =
            self.annotate(image, detections, analytics, &mut timings, hold).await?;
        timings.total = request.received.elapsed();
        Ok(FrameResult {
            camera_id: request.camera_id,
            sequence: request.sequence,
            pipeline: self.pipeline.clone(),
            model: self.manifest.name.clone(),
            detections,
            verdict: Verdict::judge(timings.total, deadline.budget),
            timings,
            annotated_jpeg,
            batch_size,
            image_width,
            image_height,
            tracking,
            cell,
            analytics,
        })
    }

    /// Draws `detections` on `image` (when there is one) on the CPU pool; the time counts as
    /// postprocessing.
    pub async fn annotate(
        &self,
        image: Option<Arc<RgbImage>>,
        detections: Vec<LabeledDetection>,
        analytics: Option<FrameAnalytics>,
        timings: &mut StageTimings,
        hold: &FrameHold,
    ) -> Result<Annotated, InspectError> {
        let Some(image) = image else { return Ok((detections, analytics, None)) };
        let mut image = Arc::try_unwrap(image).unwrap_or_else(|shared| (*shared).clone());
        let started = std::time::Instant::now();
        let (detections, analytics, jpeg) = self
            .on_cpu_pool(hold, move || -> Result<_, InspectError> {
                if let Some(analytics) = &analytics {
                    draw_analytics(&mut image, analytics);
                }
                draw_detections(&mut image, &detections);
                let jpeg = imaging::encode_jpeg(&image, 85)
                    .map_err(|e| InspectError::Internal(format!("JPEG encoding failed: {e}")))?;
                Ok((detections, analytics, jpeg))
            })
            .await??;
        timings.postprocess += started.elapsed();
        Ok((detections, analytics, Some(jpeg)))
    }

    /// `work` for the frame `hold` is of, on the bounded CPU pool.
    pub async fn on_cpu_pool<T: Send + 'static>(
        &self,
        hold: &FrameHold,
        work: impl FnOnce() -> T + Send + 'static,
    ) -> Result<T, InspectError> {
        run_on_cpu_pool(cpu_permit(&self.context.cpu_permits).await?, hold, work).await
    }
}

/// A permit of the CPU pool, waited for.
async fn cpu_permit(permits: &Arc<Semaphore>) -> Result<OwnedSemaphorePermit, InspectError> {
    permits.clone().acquire_owned().await.map_err(|_| InspectError::ShuttingDown)
}

/// `work` on the blocking pool, holding `permit` and the frame's `hold` until it ends: when the
/// caller is dropped (its client cancelled, or its deadline passed) the work runs on, and so its
/// CPU worker, its place in flight and its memory stay taken, so that `cpu_workers`,
/// `max_frames_in_flight` and `max_decoded_mib` bound what runs whatever clients do.
async fn run_on_cpu_pool<T: Send + 'static>(
    permit: OwnedSemaphorePermit,
    hold: &FrameHold,
    work: impl FnOnce() -> T + Send + 'static,
) -> Result<T, InspectError> {
    let hold = hold.clone();
    tokio::task::spawn_blocking(move || {
        // The frame's place and memory go back before its CPU worker does.
        let _held = (hold, permit);
        work()
    })
    .await
    .map_err(|e| InspectError::Internal(format!("CPU stage failed: {e}")))
}

/// A frame refused on arrival, answered once a frame with as much time left could be admitted
/// (`later` from now), and never after its own deadline. A client that sends its next frame when
/// answered (a closed loop) is so paced to the model instead of spinning on refusals, which would
/// take the CPU the model needs; the wait holds no CPU worker and no model.
async fn refused(deadline: FrameDeadline, later: Duration, asked: Instant) -> InspectError {
    let answer_at = (Instant::now() + later).min(deadline.at);
    tokio::time::sleep_until(answer_at).await;
    InspectError::Shed { limit: deadline.limit, waited: asked.elapsed() }
}

/// The batch's outputs as the decoders take them.
pub(super) fn named_views(outputs: &[Output]) -> Result<Vec<crate::detect::NamedOutput<'_>>, EngineError> {
    outputs.iter().map(|o| o.view().map(|view| (o.name.as_str(), view))).collect()
}

/// Detections, the analytics carried with them, and the annotated JPEG when one was asked for.
type Annotated = (Vec<LabeledDetection>, Option<FrameAnalytics>, Option<Vec<u8>>);

/// Counting lines (yellow) and zones (cyan) with their names, and the camera's running counts in
/// the top-left corner.
pub fn draw_analytics(image: &mut RgbImage, analytics: &FrameAnalytics) {
    for zone in &analytics.zone_shapes {
        imaging::draw_path(image, &zone.polygon, true, &zone.name, [0, 220, 255]);
    }
    for line in &analytics.lines {
        imaging::draw_path(image, &[line.from, line.to], false, &line.name, [255, 220, 0]);
    }
    let mut text: Vec<String> = analytics
        .totals
        .iter()
        .map(|t| match t.backward {
            0 => format!("{} {}: {}", t.line, t.class_name, t.forward),
            back => format!("{} {}: {} (back {back})", t.line, t.class_name, t.forward),
        })
        .collect();
    text.extend(analytics.zones.iter().map(|z| format!("{} {}: {} in", z.zone, z.class_name, z.objects)));
    imaging::caption(image, &text);
}

/// Boxes with "class score" labels, one colour per class; tracked objects get "#id class" and one
/// colour per track; instance masks are tinted in their class's colour under the boxes.
pub fn draw_detections(image: &mut RgbImage, detections: &[LabeledDetection]) {
    let masks: Vec<imaging::MaskOverlay<'_>> = detections
        .iter()
        .filter_map(|d| {
            let m = &d.shape.as_ref()?.mask;
            Some(imaging::MaskOverlay {
                left: m.left,
                top: m.top,
                width: m.width,
                height: m.height,
                pixels: &m.pixels,
                color_key: d.detection.class_id,
            })
        })
        .collect();
    imaging::overlay_masks(image, &masks, 0.45);
    let annotations: Vec<Annotation> = detections
        .iter()
        .map(|d| Annotation {
            x1: d.detection.bbox.x1,
            y1: d.detection.bbox.y1,
            x2: d.detection.bbox.x2,
            y2: d.detection.bbox.y2,
            label: if d.track_id > 0 {
                format!("#{} {}", d.track_id, d.class_name)
            } else {
                format!("{} {:.2}", d.class_name, d.detection.score)
            },
            color_key: if d.track_id > 0 { d.track_id as u32 } else { d.detection.class_id },
        })
        .collect();
    imaging::annotate(image, &annotations);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_cancelled_callers_cpu_work_keeps_its_permit_until_the_work_ends() {
        let permits = Arc::new(Semaphore::new(1));
        let (started, has_started) = std::sync::mpsc::channel();
        let (release, released) = std::sync::mpsc::channel::<()>();
        let caps = Arc::new(super::super::InFlightCaps::new(1, 1));
        let hold = FrameHold::new(caps.admit("cam").expect("admitted"));
        let permit = cpu_permit(&permits).await.expect("permit");
        let call = tokio::spawn(async move {
            run_on_cpu_pool(permit, &hold, move || {
                let _ = started.send(());
                let _ = released.recv();
            })
            .await
        });
        tokio::task::spawn_blocking(move || has_started.recv()).await.expect("join").expect("the work started");
        // The client walks away while its frame is being decoded.
        call.abort();
        let _ = call.await;
        assert_eq!(permits.available_permits(), 0, "the work still runs, so its permit must still be taken");
        assert_eq!(caps.in_flight(), 1, "and the frame's place in flight");
        let _ = release.send(());
        let again = tokio::time::timeout(Duration::from_secs(30), cpu_permit(&permits)).await;
        assert!(again.is_ok(), "the permit comes back when the work ends");
        assert_eq!(caps.in_flight(), 0, "and so does the frame's place");
    }
}

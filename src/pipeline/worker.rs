//! Model workers: each owns one ONNX Runtime session and pulls batches from its pipeline's queue
//! until the queue is closed and drained. On a GPU provider in a `cuda` build a worker also owns
//! the GPU preprocessing: frames arrive decoded, and their tensors are made on the device, straight
//! into the session's input buffer.

use std::sync::Arc;
use std::time::Duration;

use image::RgbImage;
use tokio::sync::oneshot;
use tokio::time::Instant;

use super::{InspectError, ShedLimit};
use crate::batching::{BatchQueue, ShedReason};
use crate::engine::{EngineError, ModelSession, Output, Provider};
use crate::imaging::{RowSource, TensorSpec};

/// What one frame hands the model: its rows, already tensors, or pixels for the GPU to preprocess.
pub(super) enum JobInput {
    /// [rows, c, h, w] f32, normalised per the model's input spec (CPU preprocessing).
    Tensor(Vec<f32>),
    /// The decoded frame and what each row is cut from (GPU preprocessing).
    #[cfg_attr(not(feature = "cuda"), allow(dead_code))]
    Pixels { image: Arc<RgbImage>, rows: Vec<RowSource> },
}

/// Work waiting for inference: `rows` inputs of one frame (one image for a detector, every crop of
/// the frame for an embedder).
pub(super) struct Job {
    pub input: JobInput,
    pub rows: usize,
    /// Its rows' tensor width and height; every job of a batch has the same.
    pub size: [u32; 2],
    /// The deadline this frame is held to, should it be shed.
    pub limit: ShedLimit,
    /// A later stage of the frame's pipeline runs on the same CPU after this one.
    pub followed: bool,
    pub reply: oneshot::Sender<Result<Inferred, InspectError>>,
    /// The frame's place and memory, held while the job is queued or run (`None`: a warm-up).
    pub _hold: Option<super::FrameHold>,
}

/// A frame's share of a batch's outputs.
pub(super) struct Inferred {
    // outputs: the whole batch's tensors, [n, …] each; this frame's rows are first_row..first_row + rows
    pub outputs: Arc<Vec<Output>>,
    pub first_row: usize,
    pub rows: usize,
    /// Frames in the batch.
    pub batch_frames: usize,
    pub queue_wait: Duration,
    /// Preprocessing done on the worker (GPU), for the whole batch; zero on the CPU path.
    pub device_preprocess: Duration,
    pub inference: Duration,
    /// For a job `followed` by a later stage on the CPU: that stage's work, pending until dropped.
    pub later_stage: Option<LaterStagePending>,
}

/// A model's workers, and how they run.
pub(super) struct Workers {
    pub handles: Vec<std::thread::JoinHandle<()>>,
    /// The provider the sessions run on (after any fallback).
    pub provider: Provider,
    /// Frames must arrive as `JobInput::Pixels`.
    pub device_preprocess: bool,
    /// Device memory the model's sessions took at load, when measured.
    pub device_memory: Option<u64>,
    pub health: Arc<super::ModelHealth>,
}

/// How a worker turns a batch's jobs into the session's input.
enum Preprocess {
    Host {
        input: Vec<f32>,
    },
    #[cfg(feature = "cuda")]
    Device(Box<crate::imaging::gpu::GpuPreprocessor>),
}

impl Preprocess {
    fn on_device(&self) -> bool {
        match self {
            Preprocess::Host { .. } => false,
            #[cfg(feature = "cuda")]
            Preprocess::Device(_) => true,
        }
    }
}

struct Worker {
    /// Each session with the batch rows it always runs at, fewest first; `0` = whatever rows a
    /// batch has. ONNX Runtime's CUDA provider re-plans every convolution when a session's input
    /// shape changes (65 ms for nanodet on an H200), so on a GPU each session keeps one shape and
    /// a batch is padded up to the smallest that holds it.
    sessions: Vec<(usize, ModelSession)>,
    spec: TensorSpec,
    preprocess: Preprocess,
    /// The model takes one image per run (manifest `input.batch = 1`): a batch runs image by image
    /// and each frame gets its own outputs.
    one_per_run: bool,
}

/// A batch's outputs: one set of [n, …] tensors for the whole batch, or one set per frame.
enum BatchOutputs {
    Stacked(Vec<Output>),
    PerFrame(Vec<Vec<Output>>),
}

impl Worker {
    fn name(&self) -> &str {
        self.sessions.first().map_or("", |(_, s)| s.name())
    }
}

/// The session for `n` rows and the rows it runs at.
fn pick<S>(sessions: &mut [(usize, S)], n: usize) -> Result<(usize, &mut S), EngineError> {
    let index =
        sessions.iter().position(|(rows, _)| *rows == 0 || *rows >= n).unwrap_or(sessions.len().saturating_sub(1));
    match sessions.get_mut(index) {
        // More rows than the largest bucket: that session runs this batch at its own size.
        Some((rows, session)) => Ok(((*rows).max(n), session)),
        None => Err(EngineError::NoSession),
    }
}

impl Worker {
    /// Runs one batch of jobs; returns the outputs and the time spent preprocessing on the device.
    fn run(&mut self, jobs: &[&Job]) -> Result<(BatchOutputs, Duration), EngineError> {
        if self.one_per_run {
            return self.run_one_by_one(jobs).map(|outputs| (BatchOutputs::PerFrame(outputs), Duration::ZERO));
        }
        self.run_stacked(jobs).map(|(outputs, device)| (BatchOutputs::Stacked(outputs), device))
    }

    /// Each frame's rows in runs of one (CPU preprocessing only).
    fn run_one_by_one(&mut self, jobs: &[&Job]) -> Result<Vec<Vec<Output>>, EngineError> {
        let (_, session) = pick(&mut self.sessions, 1)?;
        let mut outputs = Vec::with_capacity(jobs.len());
        for job in jobs {
            let [w, h] = job.size;
            match &job.input {
                JobInput::Tensor(t) if job.rows == 1 => outputs.push(session.run([1, 3, h as usize, w as usize], t)?),
                _ => {
                    return Err(EngineError::Run {
                        model: session.name().to_owned(),
                        message: "a model that takes one image per run got a job of several rows or of pixels".into(),
                    });
                }
            }
        }
        Ok(outputs)
    }

    fn run_stacked(&mut self, jobs: &[&Job]) -> Result<(Vec<Output>, Duration), EngineError> {
        let [width, height] = jobs.first().map_or([self.spec.width, self.spec.height], |j| j.size);
        let (c, h, w) = (3, height as usize, width as usize);
        let n: usize = jobs.iter().map(|j| j.rows).sum();
        let (run_rows, session) = pick(&mut self.sessions, n)?;
        if jobs.iter().any(|j| j.size != [width, height]) {
            return Err(EngineError::Run {
                model: session.name().to_owned(),
                message: "a batch holds frames of different input sizes".into(),
            });
        }
        match &mut self.preprocess {
            Preprocess::Host { input } => {
                // A lone frame's tensor goes in as it is; a batch is stacked into one buffer.
                let tensor: &[f32] = match jobs {
                    [only] if run_rows == n => match &only.input {
                        JobInput::Tensor(t) => t,
                        JobInput::Pixels { .. } => return Err(wrong_input(session.name())),
                    },
                    _ => {
                        input.clear();
                        for job in jobs {
                            match &job.input {
                                JobInput::Tensor(t) => input.extend_from_slice(t),
                                JobInput::Pixels { .. } => return Err(wrong_input(session.name())),
                            }
                        }
                        input.resize(run_rows * c * h * w, 0.0);
                        input
                    }
                };
                Ok((session.run([run_rows, c, h, w], tensor)?, Duration::ZERO))
            }
            #[cfg(feature = "cuda")]
            Preprocess::Device(gpu) => {
                use crate::imaging::gpu::{FrameRows, TensorElement};
                let started = std::time::Instant::now();
                let frames: Vec<FrameRows<'_>> = jobs
                    .iter()
                    .map(|j| match &j.input {
                        JobInput::Pixels { image, rows } => Ok(FrameRows { image, rows }),
                        JobInput::Tensor(_) => Err(wrong_input(session.name())),
                    })
                    .collect::<Result<_, _>>()?;
                let element = match session.input_element() {
                    crate::engine::InputElement::F32 => TensorElement::F32,
                    crate::engine::InputElement::F16 => TensorElement::F16,
                };
                let (ptr, made) = gpu
                    .preprocess(&frames, &TensorSpec { width, height, ..self.spec }, element, run_rows)
                    .map_err(|e| EngineError::Run { model: session.name().to_owned(), message: e.to_string() })?;
                debug_assert_eq!(made, run_rows);
                let preprocess = started.elapsed();
                let device = gpu.device().ordinal();
                // SAFETY: `ptr` is the preprocessor's output buffer, n rows of the session's input
                // element type, synchronised, and untouched until the next batch.
                let outputs = unsafe { session.run_on_device([run_rows, c, h, w], ptr, device) }?;
                Ok((outputs, preprocess))
            }
        }
    }
}

fn wrong_input(model: &str) -> EngineError {
    EngineError::Run {
        model: model.to_owned(),
        message: "a job's input does not match the worker's preprocessing".into(),
    }
}

/// Owns one session; pulls batches until the queue is closed and drained.
fn model_worker(
    mut worker: Worker,
    queue: Arc<BatchQueue<Job>>,
    health: Arc<super::ModelHealth>,
    handle: tokio::runtime::Handle,
    cpu_runs: Option<(Arc<CpuRuns>, bool)>,
) {
    while let Some(batch) = handle.block_on(queue.next_batch()) {
        let now = Instant::now();
        for shed in batch.shed {
            let waited = now - shed.queued.enqueued;
            let limit = match shed.reason {
                ShedReason::Expired => ShedLimit::ClientDeadline,
                ShedReason::Unreachable => shed.queued.item.limit,
            };
            let _ = shed.queued.item.reply.send(Err(InspectError::Shed { limit, waited }));
        }
        if batch.items.is_empty() {
            continue;
        }
        let frames = batch.items.len();
        let n: usize = batch.items.iter().map(|q| q.item.rows).sum();
        let started = Instant::now();
        let jobs: Vec<&Job> = batch.items.iter().map(|q| &q.item).collect();
        // One CPU run at a time when configured (the wait counts as service time: the batch's frames
        // spend it). A panic inside one batch must not take the worker (and every later frame) with it.
        let exclusive = cpu_runs.as_ref().map(|(gate, later_stage)| gate.acquire(*later_stage));
        let result =
            std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| worker.run(&jobs))).unwrap_or_else(|_| {
                Err(EngineError::Run { model: worker.name().to_owned(), message: "inference panicked".into() })
            });
        drop(exclusive);
        drop(jobs);
        let elapsed = started.elapsed();
        if let Some((gate, true)) = &cpu_runs {
            gate.record_later_run(elapsed);
        }
        queue.record_service_time(frames, elapsed);
        match result {
            Ok((outputs, device_preprocess)) => {
                health.succeeded();
                // Each frame's outputs and its first row in them.
                let shares: Vec<(Arc<Vec<Output>>, usize)> = match outputs {
                    BatchOutputs::Stacked(outputs) => {
                        let outputs = Arc::new(outputs);
                        let mut first_row = 0;
                        batch
                            .items
                            .iter()
                            .map(|q| {
                                first_row += q.item.rows;
                                (outputs.clone(), first_row - q.item.rows)
                            })
                            .collect()
                    }
                    BatchOutputs::PerFrame(per_frame) => per_frame.into_iter().map(|o| (Arc::new(o), 0)).collect(),
                };
                for (q, (outputs, first_row)) in batch.items.into_iter().zip(shares) {
                    // Announced before the answer leaves, so that no first-stage run slips in
                    // between this frame's stages.
                    let later_stage =
                        cpu_runs.as_ref().filter(|_| q.item.followed).map(|(gate, _)| gate.expect_later_stage());
                    let _ = q.item.reply.send(Ok(Inferred {
                        outputs,
                        first_row,
                        rows: q.item.rows,
                        batch_frames: frames,
                        queue_wait: started - q.enqueued,
                        device_preprocess,
                        inference: elapsed.saturating_sub(device_preprocess),
                        later_stage,
                    }));
                }
            }
            Err(error) => {
                health.failed();
                tracing::error!(message = "Inference failed.", model = worker.name(), %error, batch = n);
                for q in batch.items {
                    let _ = q.item.reply.send(Err(InspectError::Engine(error.clone())));
                }
            }
        }
    }
}

#[cfg(feature = "cuda")]
/// A grey frame the size of the model input, letterboxed as itself: warm-up input for the GPU path.
fn warm_up_job(spec: &TensorSpec, rows: usize) -> Job {
    let image = Arc::new(RgbImage::from_pixel(spec.width, spec.height, image::Rgb([spec.pad_value; 3])));
    let letterbox = crate::imaging::Letterbox::new(spec.width, spec.height, spec.width, spec.height);
    let (reply, _) = oneshot::channel();
    Job {
        input: JobInput::Pixels { image, rows: vec![RowSource::Letterbox(letterbox); rows] },
        rows,
        size: [spec.width, spec.height],
        limit: ShedLimit::Budget(Duration::ZERO),
        followed: false,
        reply,
        _hold: None,
    }
}

/// First runs allocate ONNX Runtime's (and the GPU path's) buffers per shape: pay that before the
/// first frame arrives.
fn warm_up(worker: &mut Worker, batches: &[usize]) -> Result<(), EngineError> {
    for &n in batches {
        let job = match worker.preprocess {
            Preprocess::Host { .. } => {
                let (reply, _) = oneshot::channel();
                Job {
                    input: JobInput::Tensor(vec![0f32; n * worker.spec.len()]),
                    rows: n,
                    size: [worker.spec.width, worker.spec.height],
                    limit: ShedLimit::Budget(Duration::ZERO),
                    followed: false,
                    reply,
                    _hold: None,
                }
            }
            #[cfg(feature = "cuda")]
            Preprocess::Device(_) => warm_up_job(&worker.spec, n),
        };
        worker.run(&[&job])?;
    }
    Ok(())
}

/// One CPU inference at a time over every model, when the engine is so configured: two sessions'
/// intra-op pools running at once on the same cores stall each other, as each operator waits for
/// its slowest thread. A run of a later stage (a `track` frame's embedder, whose frame already has
/// its detector's work in it) goes before a waiting first-stage run, so that the work spent on a
/// frame is not thrown away by shedding it at its last stage.
#[derive(Debug, Default)]
pub struct CpuRuns {
    state: std::sync::Mutex<CpuRunsState>,
    freed: std::sync::Condvar,
    /// Later-stage runs lately, µs: an exponential average (α = 1/8).
    later_run_us: std::sync::atomic::AtomicU64,
}

#[derive(Debug, Default)]
struct CpuRunsState {
    running: bool,
    later_stages_waiting: usize,
    /// Frames a first stage has run whose later stage has not yet: a first-stage run waits for
    /// them, so that on a CPU a pipeline's frames go through both stages one after the other.
    later_stages_pending: usize,
}

/// A frame's later-stage work, announced when its first stage ran; done when dropped.
#[derive(Debug)]
pub struct LaterStagePending(Arc<CpuRuns>);

impl Drop for LaterStagePending {
    fn drop(&mut self) {
        let mut state = self.0.lock();
        state.later_stages_pending = state.later_stages_pending.saturating_sub(1);
        drop(state);
        self.0.freed.notify_all();
    }
}

/// The CPU's one inference slot, held until dropped.
pub struct CpuRun<'a>(&'a CpuRuns);

impl CpuRuns {
    fn lock(&self) -> std::sync::MutexGuard<'_, CpuRunsState> {
        // Every critical section is a flag or a counter: a panic elsewhere leaves them consistent.
        self.state.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// How long the later-stage work announced so far should keep the CPU from a first stage.
    pub fn pending_wait(&self) -> Duration {
        let pending = self.lock().later_stages_pending as u64;
        Duration::from_micros(pending * self.later_run_us.load(std::sync::atomic::Ordering::Relaxed))
    }

    /// A later-stage run took `took`.
    fn record_later_run(&self, took: Duration) {
        use std::sync::atomic::Ordering::Relaxed;
        let us = u64::try_from(took.as_micros()).unwrap_or(u64::MAX);
        let old = self.later_run_us.load(Relaxed);
        self.later_run_us.store(if old == 0 { us } else { (old * 7 + us) / 8 }, Relaxed);
    }

    /// Announces a frame's later-stage work (see [`CpuRunsState::later_stages_pending`]).
    pub fn expect_later_stage(self: &Arc<Self>) -> LaterStagePending {
        self.lock().later_stages_pending += 1;
        LaterStagePending(self.clone())
    }

    /// Waits for the slot; a later stage goes before any first stage waiting with it, and a first
    /// stage waits while later-stage work it announced is pending.
    pub fn acquire(&self, later_stage: bool) -> CpuRun<'_> {
        let mut state = self.lock();
        if later_stage {
            state.later_stages_waiting += 1;
        }
        while state.running || (!later_stage && (state.later_stages_waiting > 0 || state.later_stages_pending > 0)) {
            state = self.freed.wait(state).unwrap_or_else(|poisoned| poisoned.into_inner());
        }
        if later_stage {
            state.later_stages_waiting -= 1;
        }
        state.running = true;
        CpuRun(self)
    }
}

impl Drop for CpuRun<'_> {
    fn drop(&mut self) {
        self.0.lock().running = false;
        self.0.freed.notify_all();
    }
}

/// Everything a pipeline's workers need at start-up.
pub(super) struct WorkerSetup<'a> {
    /// Runtime, session options, GPU settings and the device-memory ledger, shared by every model.
    pub engine: &'a super::EngineSetup<'a>,
    pub manifest: &'a crate::model::ModelManifest,
    /// Batch sizes (in rows) a GPU worker with fixed shapes keeps a session for, fewest first.
    pub row_buckets: Vec<usize>,
    pub instances: usize,
    /// The model input every row is made into.
    pub spec: TensorSpec,
    pub warm_batches: &'a [usize],
    /// The model is a pipeline's later stage (its frames carry earlier stages' work).
    pub later_stage: bool,
}

/// Loads `instances` sessions of one model, warms each up and starts its worker thread.
pub(super) fn start_workers(setup: WorkerSetup<'_>, queue: &Arc<BatchQueue<Job>>) -> Result<Workers, EngineError> {
    let engine = setup.engine;
    let (model, onnx) = (setup.manifest.name.as_str(), setup.manifest.onnx_path());
    let handle = tokio::runtime::Handle::current();
    let measure = engine.device_memory.start_measuring(model, engine.options.provider.provider.on_gpu())?;
    let mut handles = Vec::with_capacity(setup.instances);
    let mut provider = engine.options.provider.provider;
    let mut device_preprocess = false;
    let health = Arc::new(super::ModelHealth::new(model));
    for instance in 0..setup.instances {
        let first = ModelSession::load(engine.runtime, model, &onnx, engine.options)?;
        provider = first.provider();
        let one_per_run = setup.manifest.input.batch == Some(1);
        let preprocess =
            preprocess_for(&first, engine.gpu_preprocess && !one_per_run, engine.options.provider.device_id)?;
        device_preprocess = preprocess.on_device();
        let fixed_batch = setup.manifest.input.batch.filter(|&n| n > 1);
        let buckets = if one_per_run {
            vec![1]
        } else if let Some(n) = fixed_batch {
            // The graph takes exactly n rows: every batch is padded up to them.
            vec![n]
        } else if provider.on_gpu() && engine.fixed_shapes {
            setup.row_buckets.clone()
        } else {
            Vec::new()
        };
        let mut sessions = vec![(buckets.first().copied().unwrap_or(0), first)];
        for &rows in buckets.iter().skip(1) {
            sessions.push((rows, ModelSession::load(engine.runtime, model, &onnx, engine.options)?));
        }
        let mut worker = Worker { sessions, spec: setup.spec, preprocess, one_per_run };
        // First runs allocate per shape: pay before the first frame. A GPU session with dynamic
        // shapes is warmed at every size up to the largest.
        let largest = setup.warm_batches.iter().copied().max().unwrap_or(1);
        let batches: Vec<usize> = if !buckets.is_empty() {
            buckets
        } else if provider.on_gpu() {
            (1..=largest).collect()
        } else {
            setup.warm_batches.to_vec()
        };
        warm_up(&mut worker, &batches)?;
        let queue = queue.clone();
        let handle = handle.clone();
        let health = health.clone();
        // Only sessions on the CPU contend for its cores.
        let cpu_runs = engine.cpu_runs.clone().filter(|_| !provider.on_gpu()).map(|gate| (gate, setup.later_stage));
        let thread = std::thread::Builder::new()
            .name(format!("model-{model}-{instance}"))
            .spawn(move || model_worker(worker, queue, health, handle, cpu_runs))
            .map_err(|e| EngineError::Thread { model: model.to_owned(), message: e.to_string() })?;
        handles.push(thread);
    }
    queue.set_workers(setup.instances);
    let device_memory = engine.device_memory.finish_measuring(model, measure, provider.on_gpu())?;
    Ok(Workers { handles, provider, device_preprocess, device_memory, health })
}

#[cfg(feature = "cuda")]
fn preprocess_for(session: &ModelSession, gpu_preprocess: bool, device_id: u32) -> Result<Preprocess, EngineError> {
    if !(gpu_preprocess && session.provider().on_gpu()) {
        return Ok(Preprocess::Host { input: Vec::new() });
    }
    let device_err = |e: crate::cuda::DeviceError| EngineError::Device {
        model: session.name().to_owned(),
        operation: "GPU preprocessing",
        message: format!("{e} (set engine.gpu_preprocess = false to preprocess on the CPU)"),
    };
    let device = crate::cuda::GpuDevice::open(device_id).map_err(device_err)?;
    let gpu = crate::imaging::gpu::GpuPreprocessor::new(&device).map_err(device_err)?;
    Ok(Preprocess::Device(Box::new(gpu)))
}

#[cfg(not(feature = "cuda"))]
fn preprocess_for(session: &ModelSession, gpu_preprocess: bool, _device_id: u32) -> Result<Preprocess, EngineError> {
    if gpu_preprocess && session.provider().on_gpu() {
        tracing::info!(
            message = "Preprocessing on the CPU: GPU preprocessing needs a build with the `cuda` feature.",
            model = session.name()
        );
    }
    Ok(Preprocess::Host { input: Vec::new() })
}

/// Waits for every worker thread to end (they end once their queue is closed and drained).
pub(super) async fn join_all(workers: &std::sync::Mutex<Vec<std::thread::JoinHandle<()>>>) {
    let workers: Vec<_> = match workers.lock() {
        Ok(mut w) => w.drain(..).collect(),
        Err(poisoned) => poisoned.into_inner().drain(..).collect(),
    };
    for w in workers {
        let _ = tokio::task::spawn_blocking(move || w.join()).await;
    }
}

#[cfg(test)]
mod tests {
    use super::pick;

    #[test]
    fn a_batch_runs_on_the_smallest_bucket_that_holds_it() {
        let mut buckets = [(1, "one"), (8, "eight")];
        assert_eq!(pick(&mut buckets, 1).map(|(r, s)| (r, *s)).ok(), Some((1, "one")));
        assert_eq!(pick(&mut buckets, 2).map(|(r, s)| (r, *s)).ok(), Some((8, "eight")));
        assert_eq!(pick(&mut buckets, 8).map(|(r, s)| (r, *s)).ok(), Some((8, "eight")));
        // Past the largest bucket: the largest session, unpadded.
        assert_eq!(pick(&mut buckets, 11).map(|(r, s)| (r, *s)).ok(), Some((11, "eight")));
        // No buckets (CPU, or dynamic shapes): every batch at its own size.
        let mut dynamic = [(0, "any")];
        assert_eq!(pick(&mut dynamic, 5).map(|(r, s)| (r, *s)).ok(), Some((5, "any")));
        assert!(pick::<&str>(&mut [], 1).is_err());
    }
}

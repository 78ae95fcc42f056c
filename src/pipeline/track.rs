//! The `track` pipeline: its detect pipeline's detections → crops → appearance embeddings (one batch
//! for the crops of many frames) → the camera's DeepSORT tracker, applied in `sequence` order.

use std::cell::RefCell;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::oneshot;

use super::detect::{DetectPipeline, Detected, FrameDeadline};
use super::worker::{Inferred, Job, JobInput, WorkerSetup, Workers, join_all, start_workers};
use super::{FrameRequest, FrameResult, InspectError, LabeledDetection, PipelineInfo, Verdict};
use crate::batching::BatchQueue;
use crate::config::{DecoderSpec, ModelManifest, PipelineConfig};
use crate::detect::Detection;
use crate::engine::{EngineError, Provider};
use crate::imaging::{CropBox, Preprocessor, TensorSpec};
use crate::track::{Admission, FrameOrder, Observation, Registry, RegistryStats};

thread_local! {
    static CROPPER: RefCell<Preprocessor> = RefCell::new(Preprocessor::new());
}

pub struct TrackPipeline {
    name: String,
    detector: Arc<DetectPipeline>,
    embedder: ModelManifest,
    crop_spec: TensorSpec,
    embedding_output: String,
    embedding_dim: usize,
    /// Detector class ids that are tracked; `None` = all.
    tracked_classes: Option<Vec<u32>>,
    budget: Duration,
    queue: Arc<BatchQueue<Job>>,
    workers: Mutex<Vec<std::thread::JoinHandle<()>>>,
    health: Arc<super::ModelHealth>,
    registry: Arc<Registry>,
    evictor: tokio::task::JoinHandle<()>,
    /// The embedder's provider, preprocessing and device memory.
    provider: Provider,
    device_preprocess: bool,
    device_memory: Option<u64>,
}

/// Crops per frame a GPU embedder session is shaped for.
const EMBED_ROWS: usize = 16;

impl TrackPipeline {
    pub fn start(
        name: &str,
        config: &PipelineConfig,
        embedder: ModelManifest,
        detector: Arc<DetectPipeline>,
        engine: &super::EngineSetup<'_>,
    ) -> Result<Self, EngineError> {
        let model_error = |message: String| EngineError::Model { model: embedder.name.clone(), message };
        let DecoderSpec::Embedding { output, dim } = &embedder.decoder else {
            return Err(model_error("not an embedder (decoder.kind must be `embedding`)".into()));
        };
        let tracker = &config.tracker;
        let mut crop_spec = super::tensor_spec(&embedder.input);
        crop_spec.width = tracker.crop_width.unwrap_or(crop_spec.width);
        crop_spec.height = tracker.crop_height.unwrap_or(crop_spec.height);
        let tracked_classes = if tracker.classes.is_empty() {
            None
        } else {
            let known = detector.classes();
            let mut ids = Vec::with_capacity(tracker.classes.len());
            for class in &tracker.classes {
                let id = known.iter().position(|k| k == class).ok_or_else(|| {
                    model_error(format!("tracker.classes: `{class}` is not a class of pipeline `{}`", detector.name()))
                })?;
                ids.push(id as u32);
            }
            Some(ids)
        };
        let policy = tracker.embedder_batching.policy();
        let queue = Arc::new(BatchQueue::new(policy));
        let Workers { handles, provider, device_preprocess, device_memory, health } = start_workers(
            WorkerSetup {
                engine,
                manifest: &embedder,
                // One frame's crops, and a full batch of frames' (rows past that run unpadded).
                row_buckets: vec![EMBED_ROWS, EMBED_ROWS * policy.max_batch],
                instances: config.instances,
                spec: crop_spec,
                warm_batches: &[1, EMBED_ROWS],
            },
            &queue,
        )?;
        let registry = Arc::new(Registry::new(tracker.params(), tracker.camera_idle()));
        let evictor = tokio::spawn(evict_idle_cameras(registry.clone(), tracker.camera_idle()));
        tracing::info!(
            message = "Pipeline started.",
            pipeline = name,
            detector = detector.name(),
            embedder = embedder.name,
            crop_width = crop_spec.width,
            crop_height = crop_spec.height,
            max_age = tracker.max_age,
            n_init = tracker.n_init,
            provider = %provider,
            gpu_preprocess = device_preprocess,
        );
        let budget = config.budget_ms.map_or(detector.budget(), |ms| Duration::from_millis(u64::from(ms)));
        Ok(Self {
            name: name.to_owned(),
            embedding_output: output.clone(),
            embedding_dim: *dim,
            detector,
            embedder,
            crop_spec,
            tracked_classes,
            budget,
            queue,
            workers: Mutex::new(handles),
            health,
            registry,
            evictor,
            provider,
            device_preprocess,
            device_memory,
        })
    }

    pub fn describe(&self) -> PipelineInfo {
        let mut info = self.detector.describe();
        let classes = match &self.tracked_classes {
            Some(ids) => ids.iter().filter_map(|&i| info.classes.get(i as usize).cloned()).collect(),
            None => info.classes.clone(),
        };
        info.name = self.name.clone();
        info.detector = Some(self.detector.name().to_owned());
        info.model = format!("{} + {}", info.model, self.embedder.name);
        info.description = format!(
            "DeepSORT over `{}` detections, {} appearance embeddings of {}x{} crops",
            self.detector.name(),
            self.embedder.name,
            self.crop_spec.width,
            self.crop_spec.height
        );
        info.classes = classes;
        info.budget = self.budget;
        info.provider = self.provider;
        info.gpu_preprocess = self.device_preprocess;
        info.device_memory_bytes = self.device_memory;
        info
    }

    pub fn stats(&self) -> RegistryStats {
        self.registry.stats()
    }

    pub fn close(&self) {
        self.evictor.abort();
        self.queue.close();
    }

    pub async fn join_workers(&self) {
        join_all(&self.workers).await;
    }

    /// Frames waiting for this pipeline's model.
    pub fn queue_depth(&self) -> usize {
        self.queue.len()
    }

    pub fn health(&self) -> &super::ModelHealth {
        &self.health
    }

    pub fn detector_health(&self) -> &super::ModelHealth {
        self.detector.health()
    }

    /// Reserves the frame's place in its camera's order. Call in request order, before awaiting.
    pub fn admit(&self, request: &FrameRequest) -> Admission {
        self.registry.admit(&request.camera_id, request.sequence, std::time::Instant::now())
    }

    pub async fn inspect(&self, request: FrameRequest, admission: Admission) -> Result<FrameResult, InspectError> {
        let deadline = FrameDeadline::new(&request, self.budget);
        let detected = self.detector.detect(&request, deadline, true).await?;
        let Detected { detections, image, mut timings, batch_size, image_width, image_height, .. } = detected;
        let image = image.ok_or_else(|| InspectError::Internal("decoded frame was not kept".into()))?;
        let kept: Vec<LabeledDetection> = detections
            .into_iter()
            .filter(|d| self.tracked_classes.as_ref().is_none_or(|ids| ids.contains(&d.detection.class_id)))
            .collect();

        let (detections, tracking) = match admission {
            Admission::Refused(order) => (kept, order),
            Admission::Accepted(ticket) => {
                let started = std::time::Instant::now();
                let features = self.embed(&image, &kept, super::flow_of(&request.camera_id), deadline).await?;
                timings.embed = started.elapsed();

                let started = std::time::Instant::now();
                let observations: Vec<Observation> = kept
                    .iter()
                    .zip(features)
                    .map(|(d, feature)| Observation {
                        bbox: d.detection.bbox,
                        score: d.detection.score,
                        class_id: d.detection.class_id,
                        feature,
                    })
                    .collect();
                let tracked_rx = self.detector.on_cpu_pool(move || ticket.complete(observations)).await?;
                let tracked = tracked_rx.await.map_err(|_| InspectError::ShuttingDown)?;
                timings.track = started.elapsed();
                let classes = self.detector.classes();
                let tracked = tracked
                    .objects
                    .into_iter()
                    .map(|o| LabeledDetection {
                        class_name: classes.get(o.class_id as usize).cloned().unwrap_or_default(),
                        detection: Detection { bbox: o.bbox, class_id: o.class_id, score: o.score },
                        track_id: o.track_id,
                        shape: None,
                    })
                    .collect();
                (tracked, FrameOrder::Applied)
            }
        };

        let image = request.annotate.then_some(image);
        let (detections, annotated_jpeg) = self.detector.annotate(image, detections, &mut timings).await?;
        timings.total = request.received.elapsed();
        Ok(FrameResult {
            camera_id: request.camera_id,
            sequence: request.sequence,
            pipeline: self.name.clone(),
            model: self.embedder.name.clone(),
            detections,
            verdict: Verdict::judge(timings.total, deadline.budget),
            timings,
            annotated_jpeg,
            batch_size,
            image_width,
            image_height,
            tracking: Some(tracking),
            cell: None,
        })
    }

    /// One embedding per detection: all crops of the frame in one job, batched with other frames'.
    async fn embed(
        &self,
        image: &Arc<image::RgbImage>,
        detections: &[LabeledDetection],
        flow: u64,
        deadline: FrameDeadline,
    ) -> Result<Vec<Vec<f32>>, InspectError> {
        if detections.is_empty() {
            return Ok(Vec::new());
        }
        let boxes: Vec<CropBox> = detections
            .iter()
            .map(|d| CropBox {
                x1: d.detection.bbox.x1,
                y1: d.detection.bbox.y1,
                x2: d.detection.bbox.x2,
                y2: d.detection.bbox.y2,
            })
            .collect();
        let rows = boxes.len();
        let input = if self.device_preprocess {
            // The worker's GPU crops and stretches straight from the frame.
            JobInput::Pixels {
                image: image.clone(),
                rows: boxes.iter().map(|b| crate::imaging::RowSource::Crop(*b)).collect(),
            }
        } else {
            JobInput::Tensor(self.crop_on_cpu(image, boxes).await?)
        };
        let (reply, answer) = oneshot::channel();
        self.queue
            .submit(Job { input, rows, limit: deadline.limit, reply }, flow, deadline.deadlines())
            .map_err(|full| InspectError::QueueFull { pipeline: self.name.clone(), capacity: full.capacity })?;
        let inferred = answer.await.map_err(|_| InspectError::ShuttingDown)??;
        self.embeddings(&inferred)
    }

    /// Every crop of the frame, stretched and normalised into one tensor on the CPU pool.
    async fn crop_on_cpu(&self, image: &Arc<image::RgbImage>, boxes: Vec<CropBox>) -> Result<Vec<f32>, InspectError> {
        let spec = self.crop_spec;
        let rows = boxes.len();
        let frame = image.clone();
        self.detector
            .on_cpu_pool(move || -> Result<Vec<f32>, InspectError> {
                let mut tensor = vec![0f32; rows * spec.len()];
                CROPPER.with(|c| {
                    let mut cropper = c.borrow_mut();
                    for (region, out) in boxes.iter().zip(tensor.chunks_exact_mut(spec.len())) {
                        cropper
                            .crop_into(&frame, *region, &spec, out)
                            .map_err(|e| InspectError::Internal(e.to_string()))?;
                    }
                    Ok::<_, InspectError>(())
                })?;
                Ok(tensor)
            })
            .await?
    }

    fn embeddings(&self, inferred: &Inferred) -> Result<Vec<Vec<f32>>, InspectError> {
        let bad = |message: String| InspectError::Engine(format!("embedder `{}`: {message}", self.embedder.name));
        let output = inferred
            .outputs
            .iter()
            .find(|o| o.name == self.embedding_output)
            .ok_or_else(|| bad(format!("output `{}` is missing", self.embedding_output)))?;
        let view = output.view()?;
        let shape = view.shape().to_vec();
        let end = inferred.first_row + inferred.rows;
        if shape.len() != 2 || shape[1] != self.embedding_dim || shape[0] < end {
            return Err(bad(format!("output shape {shape:?}, expected [≥{end}, {}]", self.embedding_dim)));
        }
        Ok((inferred.first_row..end).map(|r| view.index_axis(ndarray::Axis(0), r).iter().copied().collect()).collect())
    }
}

/// Drops idle cameras every quarter of the idle time (at least every second, at most every minute).
async fn evict_idle_cameras(registry: Arc<Registry>, idle: Duration) {
    let period = (idle / 4).clamp(Duration::from_secs(1), Duration::from_secs(60));
    let mut tick = tokio::time::interval(period);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let evicted = registry.evict_idle(std::time::Instant::now());
        if evicted > 0 {
            tracing::debug!(message = "Idle cameras evicted.", count = evicted);
        }
    }
}

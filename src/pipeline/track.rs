//! The `track` pipeline: its detect pipeline's detections → crops → appearance embeddings (one batch
//! for the crops of many frames) → the camera's DeepSORT tracker, applied in `sequence` order.

use std::cell::RefCell;
use std::sync::Arc;
use std::time::Duration;

use super::FrameHold;
use super::detect::{DetectPipeline, Detected};
use super::stage::{Answer, FrameDeadline, ModelStage, StageSetup, tensor_spec};
use super::worker::{Inferred, JobInput};
use super::{FrameRequest, FrameResult, InspectError, LabeledDetection, PipelineInfo, StartError, TrackSettings};
use crate::detect::{BBox, Detection};
use crate::engine::EngineError;
use crate::imaging::{CropBox, Preprocessor};
use crate::model::{DecoderSpec, ModelManifest};
use crate::track::{CameraCounts, FrameOrder, Observation, Placement, Registry, RegistryStats};

thread_local! {
    static CROPPER: RefCell<Preprocessor> = RefCell::new(Preprocessor::new());
}

pub struct TrackPipeline {
    name: String,
    detector: Arc<DetectPipeline>,
    /// The appearance embedder; its input is the crop size.
    embedder: ModelStage,
    embedding_output: String,
    embedding_dim: usize,
    /// Detector class ids that are tracked; `None` = all.
    tracked_classes: Option<Vec<u32>>,
    budget: Duration,
    registry: Arc<Registry>,
    evictor: tokio::task::JoinHandle<()>,
}

/// Crops per frame a GPU embedder session is shaped for.
const EMBED_ROWS: usize = 16;

impl TrackPipeline {
    pub fn start(
        name: &str,
        settings: &TrackSettings,
        embedder: ModelManifest,
        detector: Arc<DetectPipeline>,
        engine: &super::EngineSetup<'_>,
    ) -> Result<Self, StartError> {
        let DecoderSpec::Embedding { output, dim } = &embedder.decoder else {
            return Err(StartError::WrongDecoder {
                pipeline: name.to_owned(),
                model: embedder.name.clone(),
                expected: "an embedder",
            });
        };
        let (embedding_output, embedding_dim) = (output.clone(), *dim);
        let tracker = &settings.tracker;
        let mut crop_spec = tensor_spec(&embedder.input);
        crop_spec.width = tracker.crop_width.unwrap_or(crop_spec.width);
        crop_spec.height = tracker.crop_height.unwrap_or(crop_spec.height);
        let tracked_classes = if tracker.classes.is_empty() {
            None
        } else {
            let known = detector.classes();
            let mut ids = Vec::with_capacity(tracker.classes.len());
            for class in &tracker.classes {
                let id = known.iter().position(|k| k == class).ok_or_else(|| StartError::UnknownClass {
                    pipeline: name.to_owned(),
                    key: "tracker.classes".into(),
                    class: class.clone(),
                    known: known.to_vec(),
                })?;
                ids.push(id as u32);
            }
            Some(ids)
        };
        let policy = tracker.embedder_batching;
        let embedder = ModelStage::start(
            StageSetup {
                pipeline: name,
                manifest: embedder,
                spec: crop_spec,
                batching: policy,
                instances: settings.instances,
                // One frame's crops, and a full batch of frames' (rows past that run unpadded).
                row_buckets: vec![EMBED_ROWS, EMBED_ROWS * policy.max_batch],
                warm_batches: &[1, EMBED_ROWS],
                later_stage: true,
            },
            engine,
            detector.stage().context.clone(),
        )
        .map_err(|source| StartError::Engine { pipeline: name.to_owned(), source })?;
        let analytics = settings.analytics.plan(detector.classes(), tracker.params.max_age).map_err(|e| {
            StartError::UnknownClass {
                pipeline: name.to_owned(),
                key: e.key,
                class: e.class,
                known: detector.classes().to_vec(),
            }
        })?;
        let registry = Arc::new(
            Registry::with_analytics(tracker.params, tracker.camera_idle, analytics)
                .with_max_cameras(tracker.max_cameras),
        );
        let evictor = tokio::spawn(evict_idle_cameras(registry.clone(), tracker.camera_idle));
        tracing::info!(
            message = "Pipeline started.",
            pipeline = name,
            detector = detector.name(),
            embedder = embedder.manifest.name,
            crop_width = crop_spec.width,
            crop_height = crop_spec.height,
            max_age = tracker.params.max_age,
            n_init = tracker.params.n_init,
        );
        let budget = settings.budget.unwrap_or(detector.budget());
        Ok(Self {
            name: name.to_owned(),
            embedding_output,
            embedding_dim,
            detector,
            embedder,
            tracked_classes,
            budget,
            registry,
            evictor,
        })
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn describe(&self) -> PipelineInfo {
        let mut info = self.detector.describe();
        let classes = match &self.tracked_classes {
            Some(ids) => ids.iter().filter_map(|&i| info.classes.get(i as usize).cloned()).collect(),
            None => info.classes.clone(),
        };
        let embedder = &self.embedder;
        info.name = self.name.clone();
        info.detector = Some(self.detector.name().to_owned());
        info.model = format!("{} + {}", info.model, embedder.manifest.name);
        info.description = format!(
            "DeepSORT over `{}` detections, {} appearance embeddings of {}x{} crops",
            self.detector.name(),
            embedder.manifest.name,
            embedder.spec.width,
            embedder.spec.height
        );
        info.classes = classes;
        info.budget = self.budget;
        info.provider = embedder.provider;
        info.gpu_preprocess = embedder.device_preprocess;
        info.device_memory_bytes = embedder.device_memory;
        info
    }

    pub fn stats(&self) -> RegistryStats {
        self.registry.stats()
    }

    /// Line totals and zone occupants per camera (`camera_id`'s alone when given).
    pub fn counts(&self, camera_id: Option<&str>) -> Vec<CameraCounts> {
        self.registry.counts(camera_id)
    }

    /// Crossings over every camera since start, by line, class and direction.
    pub fn crossing_totals(&self) -> Vec<crate::track::analytics::LineTotal> {
        self.registry.analytics().crossing_totals()
    }

    /// Stops the idle-camera evictor; the embedder's queue is closed with the other stages.
    pub(super) fn close(&self) {
        self.evictor.abort();
    }

    /// The embedder, then the detector it shares.
    pub(super) fn stages(&self) -> [&ModelStage; 2] {
        [&self.embedder, self.detector.stage()]
    }

    /// Reserves the frame's place in its camera's order. Call in request order, before awaiting.
    pub fn admit(&self, request: &FrameRequest) -> Placement {
        self.registry.admit(&request.camera_id, request.sequence, std::time::Instant::now())
    }

    pub async fn inspect(
        &self,
        request: FrameRequest,
        admission: Placement,
        hold: &FrameHold,
    ) -> Result<FrameResult, InspectError> {
        let deadline = FrameDeadline::new(&request, self.budget);
        // The detector holds the frame to the time that leaves its embedding room to finish.
        let embedding = self.embedder.typical_service().unwrap_or_default();
        let detected = self.detector.detect(&request, deadline.reserving(embedding), true, hold).await?;
        // Held until the frame's embedding is done: on the CPU, no detector run slips in between.
        let Detected { detections, image, mut timings, batch_size, later_stage } = detected;
        let kept: Vec<LabeledDetection> = detections
            .into_iter()
            .filter(|d| self.tracked_classes.as_ref().is_none_or(|ids| ids.contains(&d.detection.class_id)))
            .collect();

        let (detections, tracking, analytics) = match admission {
            Placement::Refused(order) => {
                drop(later_stage);
                (kept, order, None)
            }
            // Refused before the frame was decoded (`Pipeline::inspect`); never reaches here.
            Placement::NoRoom { max_cameras } => {
                return Err(InspectError::TooManyCameras { pipeline: self.name.clone(), max: max_cameras });
            }
            Placement::Accepted(ticket) => {
                let started = std::time::Instant::now();
                let boxes: Vec<BBox> = kept.iter().map(|d| d.detection.bbox).collect();
                // Boxes whose match is plain from motion go without an embedding
                // (`embed_only_ambiguous`); the rest are embedded in one job.
                let needed = ticket.needs_embedding(&boxes);
                let wanted: Vec<BBox> = boxes.iter().zip(&needed).filter(|(_, n)| **n).map(|(b, _)| *b).collect();
                let flow = super::flow_of(&request.camera_id);
                let mut embedded = self.embed(&image, &wanted, flow, deadline, hold).await?.into_iter();
                let features: Vec<Vec<f32>> =
                    needed.iter().map(|&n| if n { embedded.next().unwrap_or_default() } else { Vec::new() }).collect();
                timings.embed = started.elapsed();
                drop(later_stage);

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
                let tracked_rx = self.embedder.on_cpu_pool(hold, move || ticket.complete(observations)).await?;
                let tracked = tracked_rx.await.map_err(|_| InspectError::ShuttingDown)?;
                timings.track = started.elapsed();
                let classes = self.detector.classes();
                let analytics = tracked.analytics;
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
                (tracked, FrameOrder::Applied, analytics)
            }
        };

        let answer = Answer { detections, image, timings, batch_size, tracking: Some(tracking), cell: None, analytics };
        self.embedder.answer(request, deadline, answer, hold).await
    }

    /// One embedding per box: all crops of the frame in one job, batched with other frames'.
    async fn embed(
        &self,
        image: &Arc<image::RgbImage>,
        boxes: &[BBox],
        flow: u64,
        deadline: FrameDeadline,
        hold: &FrameHold,
    ) -> Result<Vec<Vec<f32>>, InspectError> {
        if boxes.is_empty() {
            return Ok(Vec::new());
        }
        let boxes: Vec<CropBox> = boxes.iter().map(|b| CropBox { x1: b.x1, y1: b.y1, x2: b.x2, y2: b.y2 }).collect();
        let rows = boxes.len();
        let input = if self.embedder.device_preprocess {
            // The worker's GPU crops and stretches straight from the frame.
            JobInput::Pixels {
                image: image.clone(),
                rows: boxes.iter().map(|b| crate::imaging::RowSource::Crop(*b)).collect(),
            }
        } else {
            JobInput::Tensor(self.crop_on_cpu(image, boxes, hold).await?)
        };
        let inferred = self.embedder.infer(input, rows, flow, deadline, false, hold).await?;
        self.embeddings(&inferred)
    }

    /// Every crop of the frame, stretched and normalised into one tensor on the CPU pool.
    async fn crop_on_cpu(
        &self,
        image: &Arc<image::RgbImage>,
        boxes: Vec<CropBox>,
        hold: &FrameHold,
    ) -> Result<Vec<f32>, InspectError> {
        let spec = self.embedder.spec;
        let rows = boxes.len();
        let frame = image.clone();
        self.embedder
            .on_cpu_pool(hold, move || -> Result<Vec<f32>, InspectError> {
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
        let bad = |message: String| {
            InspectError::Engine(EngineError::Output {
                name: self.embedding_output.clone(),
                message: format!("embedder `{}`: {message}", self.embedder.manifest.name),
            })
        };
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

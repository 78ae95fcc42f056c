//! The `detect` pipeline: decode → letterbox → dynamic batch → ONNX Runtime → decode + NMS. With a
//! segmentation model (a `segment` pipeline, e.g. `el-defect`) the last stage decodes instances
//! instead: masks pasted into the image, outlines, and the image's verdict.

use std::cell::RefCell;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use image::RgbImage;
use tokio::sync::oneshot;
use tokio::time::Instant;

use super::worker::{Job, JobInput, WorkerSetup, Workers, join_all, start_workers};
use super::{
    FrameRequest, FrameResult, InspectError, LabeledDetection, PipelineInfo, ShedLimit, StageContext, StageTimings,
    Verdict,
};
use crate::batching::{BatchQueue, Deadlines};
use crate::config::{ChannelOrder, DecoderSpec, InputSpec, ModelManifest, PipelineConfig};
use crate::detect::{Decoder, NamedOutput, Thresholds};
use crate::engine::{EngineError, Output, Provider};
use crate::imaging::{self, Annotation, Preprocessor, TensorSpec};
use crate::segment::{CellInspection, CellRule, SegmentDecoder, SegmentThresholds, judge_cell};

/// A frame after detection, before anything a composing pipeline adds.
pub(super) struct Detected {
    pub detections: Vec<LabeledDetection>,
    /// The decoded frame, when the caller asked to keep it.
    pub image: Option<Arc<RgbImage>>,
    /// decode, preprocess, queue_wait, inference and postprocess; the rest is the caller's.
    pub timings: StageTimings,
    pub batch_size: u32,
    pub image_width: u32,
    pub image_height: u32,
    /// Segmentation models: the image's verdict.
    pub cell: Option<CellInspection>,
}

/// What the last stage makes of a frame's outputs.
#[derive(Debug, Clone)]
enum Postprocess {
    /// Boxes: decode, NMS, map back.
    Boxes { decoder: Decoder, thresholds: Thresholds },
    /// Instances: boxes as above, each with its mask pasted and outlined; then the image's verdict.
    Instances { decoder: SegmentDecoder, thresholds: SegmentThresholds, rule: CellRule },
}

/// Douglas–Peucker tolerance of instance outlines, in pixels: a one-pixel staircase becomes a
/// straight edge, so outlines stay short without moving off the mask.
const POLYGON_EPSILON: f64 = 1.0;

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

    /// What the batcher holds the frame to.
    pub fn deadlines(&self) -> Deadlines {
        Deadlines { due: self.at, expires: self.expires }
    }
}

pub struct DetectPipeline {
    name: String,
    manifest: ModelManifest,
    tensor_spec: TensorSpec,
    /// Shared with every frame's postprocessing.
    postprocess: Arc<Postprocess>,
    budget: Duration,
    /// The manifest's class names, shared with every frame's postprocessing.
    classes: Arc<[String]>,
    queue: Arc<BatchQueue<Job>>,
    workers: Mutex<Vec<std::thread::JoinHandle<()>>>,
    health: Arc<super::ModelHealth>,
    context: Arc<StageContext>,
    provider: Provider,
    /// Frames go to the workers as pixels; the GPU letterboxes them.
    device_preprocess: bool,
    device_memory: Option<u64>,
}

/// The batch's outputs as the decoders take them.
fn named_views(outputs: &[Output]) -> Result<Vec<NamedOutput<'_>>, EngineError> {
    outputs.iter().map(|o| o.view().map(|view| (o.name.as_str(), view))).collect()
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

thread_local! {
    static PREPROCESSOR: RefCell<Preprocessor> = RefCell::new(Preprocessor::new());
}

impl DetectPipeline {
    pub fn start(
        name: &str,
        config: &PipelineConfig,
        manifest: ModelManifest,
        engine: &super::EngineSetup<'_>,
        context: Arc<StageContext>,
    ) -> Result<Self, EngineError> {
        let tensor_spec = tensor_spec(&manifest.input);
        let postprocess = Arc::new(postprocess_for(config, &manifest)?);
        let policy = config.batching.policy();
        let queue = Arc::new(BatchQueue::new(policy));
        let Workers { handles, provider, device_preprocess, device_memory, health } = start_workers(
            WorkerSetup {
                engine,
                manifest: &manifest,
                row_buckets: vec![1, policy.max_batch],
                instances: config.instances,
                spec: tensor_spec,
                warm_batches: &[1, policy.max_batch],
            },
            &queue,
        )?;
        tracing::info!(
            message = "Pipeline started.",
            pipeline = name,
            model = manifest.name,
            instances = config.instances,
            max_batch = policy.max_batch,
            max_queue_delay_us = config.batching.max_queue_delay_us,
            provider = %provider,
            gpu_preprocess = device_preprocess,
        );
        let budget = config.budget_ms.map_or(context.default_budget, |ms| Duration::from_millis(u64::from(ms)));
        Ok(Self {
            classes: manifest.classes.clone().into(),
            name: name.to_owned(),
            manifest,
            tensor_spec,
            postprocess,
            budget,
            queue,
            workers: Mutex::new(handles),
            health,
            context,
            provider,
            device_preprocess,
            device_memory,
        })
    }

    pub fn describe(&self) -> PipelineInfo {
        let policy = self.queue.policy();
        PipelineInfo {
            name: self.name.clone(),
            model: self.manifest.name.clone(),
            description: self.manifest.description.clone(),
            classes: self.manifest.classes.clone(),
            budget: self.budget,
            input_width: self.tensor_spec.width,
            input_height: self.tensor_spec.height,
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

    /// Frames waiting for this pipeline's model.
    pub fn queue_depth(&self) -> usize {
        self.queue.len()
    }

    pub fn health(&self) -> &super::ModelHealth {
        &self.health
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn budget(&self) -> Duration {
        self.budget
    }

    pub fn classes(&self) -> &Arc<[String]> {
        &self.classes
    }

    pub async fn inspect(&self, request: FrameRequest) -> Result<FrameResult, InspectError> {
        let deadline = FrameDeadline::new(&request, self.budget);
        let annotate = request.annotate;
        let detected = self.detect(&request, deadline, annotate).await?;
        let Detected { detections, image, mut timings, batch_size, image_width, image_height, cell } = detected;
        let (detections, annotated_jpeg) = self.annotate(image, detections, &mut timings).await?;
        timings.total = request.received.elapsed();
        Ok(FrameResult {
            camera_id: request.camera_id,
            sequence: request.sequence,
            pipeline: self.name.clone(),
            model: self.manifest.name.clone(),
            detections,
            verdict: Verdict::judge(timings.total, deadline.budget),
            timings,
            annotated_jpeg,
            batch_size,
            image_width,
            image_height,
            tracking: None,
            cell,
        })
    }

    /// Draws `detections` on `image` (when there is one) on the CPU pool; the time counts as
    /// postprocessing.
    pub(super) async fn annotate(
        &self,
        image: Option<Arc<RgbImage>>,
        detections: Vec<LabeledDetection>,
        timings: &mut StageTimings,
    ) -> Result<(Vec<LabeledDetection>, Option<Vec<u8>>), InspectError> {
        let Some(image) = image else { return Ok((detections, None)) };
        let mut image = Arc::try_unwrap(image).unwrap_or_else(|shared| (*shared).clone());
        let started = std::time::Instant::now();
        let (detections, jpeg) = self
            .on_cpu_pool(move || -> Result<_, InspectError> {
                let jpeg = annotate_jpeg(&mut image, &detections)?;
                Ok((detections, jpeg))
            })
            .await??;
        timings.postprocess += started.elapsed();
        Ok((detections, Some(jpeg)))
    }

    /// Decode → letterbox → batch → infer → decode outputs + NMS, for one frame.
    pub(super) async fn detect(
        &self,
        request: &FrameRequest,
        deadline: FrameDeadline,
        keep_image: bool,
    ) -> Result<Detected, InspectError> {
        let image = request.image.clone().ok_or(InspectError::MissingImage)?;
        // Behind a queue it cannot clear in time, the frame is refused before it costs a decode.
        if self.queue.refuse_on_arrival(super::flow_of(&request.camera_id), deadline.deadlines()) {
            return Err(InspectError::Shed { limit: deadline.limit, waited: Duration::ZERO });
        }

        // Decode + letterbox on the bounded CPU pool.
        let spec = self.tensor_spec;
        let limits = self.context.decode_limits;
        let on_device = self.device_preprocess;
        let (decoded, input, letterbox, decode_time, preprocess_time) = self
            .on_cpu_pool(move || -> Result<_, InspectError> {
                let t0 = std::time::Instant::now();
                let rgb = imaging::decode(&image.data, image.encoding, image.width, image.height, limits)?;
                let t1 = std::time::Instant::now();
                if on_device {
                    // The worker's GPU letterboxes; only the geometry is needed here.
                    let letterbox = imaging::Letterbox::new(rgb.width(), rgb.height(), spec.width, spec.height);
                    let rgb = Arc::new(rgb);
                    let input =
                        JobInput::Pixels { image: rgb.clone(), rows: vec![imaging::RowSource::Letterbox(letterbox)] };
                    return Ok((rgb, input, letterbox, t1 - t0, t1.elapsed()));
                }
                let mut tensor = vec![0f32; spec.len()];
                let letterbox = PREPROCESSOR
                    .with(|p| p.borrow_mut().letterbox_into(&rgb, &spec, &mut tensor))
                    .map_err(|e| InspectError::Internal(e.to_string()))?;
                let t2 = std::time::Instant::now();
                Ok((Arc::new(rgb), JobInput::Tensor(tensor), letterbox, t1 - t0, t2 - t1))
            })
            .await??;
        let (width, height) = decoded.dimensions();
        let decoded = keep_image.then_some(decoded);

        // Batch + infer on a model worker.
        let (reply, answer) = oneshot::channel();
        self.queue
            .submit(
                Job { input, rows: 1, limit: deadline.limit, reply },
                super::flow_of(&request.camera_id),
                deadline.deadlines(),
            )
            .map_err(|full| InspectError::QueueFull { pipeline: self.name.clone(), capacity: full.capacity })?;
        let inferred = answer.await.map_err(|_| InspectError::ShuttingDown)??;

        // Decode outputs (+ NMS, + masks) on the CPU pool.
        let postprocess = self.postprocess.clone();
        let classes = self.classes.clone();
        let (detections, cell, postprocess_time) = self
            .on_cpu_pool(move || -> Result<_, InspectError> {
                let t0 = std::time::Instant::now();
                let named = named_views(&inferred.outputs)?;
                let class_name = |id: u32| classes.get(id as usize).cloned().unwrap_or_default();
                let (detections, cell) = match postprocess.as_ref() {
                    Postprocess::Boxes { decoder, thresholds } => {
                        let found = decoder.detect(&named, inferred.first_row, thresholds, &letterbox)?;
                        let detections = found
                            .into_iter()
                            .map(|d| LabeledDetection {
                                class_name: class_name(d.class_id),
                                detection: d,
                                track_id: 0,
                                shape: None,
                            })
                            .collect();
                        (detections, None)
                    }
                    Postprocess::Instances { decoder, thresholds, rule } => {
                        // The rule may count instances under the score the response shows.
                        let decode_at =
                            SegmentThresholds { score: thresholds.score.min(rule.min_score), ..*thresholds };
                        let found = decoder.decode(&named, &decode_at, &letterbox)?;
                        let cell = judge_cell(&found, letterbox.src_width, letterbox.src_height, rule);
                        let detections = found
                            .into_iter()
                            .filter(|i| i.detection.score >= thresholds.score)
                            .map(|i| LabeledDetection {
                                class_name: class_name(i.detection.class_id),
                                detection: i.detection,
                                track_id: 0,
                                shape: Some(Arc::new(i.shape)),
                            })
                            .collect();
                        (detections, Some(cell))
                    }
                };
                Ok((detections, cell, t0.elapsed()))
            })
            .await??;

        Ok(Detected {
            detections,
            image: decoded,
            timings: StageTimings {
                decode: decode_time,
                preprocess: preprocess_time + inferred.device_preprocess,
                queue_wait: inferred.queue_wait,
                inference: inferred.inference,
                postprocess: postprocess_time,
                ..StageTimings::default()
            },
            batch_size: inferred.batch_frames as u32,
            image_width: width,
            image_height: height,
            cell,
        })
    }

    pub(super) async fn on_cpu_pool<T: Send + 'static>(
        &self,
        work: impl FnOnce() -> T + Send + 'static,
    ) -> Result<T, InspectError> {
        let _permit = self.context.cpu_permits.acquire().await.map_err(|_| InspectError::ShuttingDown)?;
        tokio::task::spawn_blocking(work).await.map_err(|e| InspectError::Internal(format!("CPU stage failed: {e}")))
    }
}

fn annotate_jpeg(image: &mut RgbImage, detections: &[LabeledDetection]) -> Result<Vec<u8>, InspectError> {
    draw_detections(image, detections);
    imaging::encode_jpeg(image, 85).map_err(|e| InspectError::Internal(format!("JPEG encoding failed: {e}")))
}

/// How a pipeline's configuration and its model's manifest set up the last stage.
fn postprocess_for(config: &PipelineConfig, manifest: &ModelManifest) -> Result<Postprocess, EngineError> {
    let post = manifest.postprocess.unwrap_or_default();
    let input = &manifest.input;
    let score = config.score_threshold.unwrap_or(post.score_threshold);
    let max_detections = config.max_detections.unwrap_or(post.max_detections);
    if let DecoderSpec::Maskrcnn { boxes, labels, scores, masks } = &manifest.decoder {
        let class_id = |name: &String| {
            manifest.classes.iter().position(|c| c == name).map(|i| i as u32).ok_or_else(|| EngineError::Model {
                model: manifest.name.clone(),
                message: format!("verdict.classes: `{name}` is not one of its classes {:?}", manifest.classes),
            })
        };
        let rule = CellRule {
            min_score: config.verdict.min_score.unwrap_or(score),
            min_area_fraction: config.verdict.min_area_fraction,
            classes: config.verdict.classes.iter().map(class_id).collect::<Result<_, _>>()?,
        };
        return Ok(Postprocess::Instances {
            decoder: SegmentDecoder {
                boxes: boxes.clone(),
                labels: labels.clone(),
                scores: scores.clone(),
                masks: masks.clone(),
                num_classes: manifest.classes.len(),
            },
            thresholds: SegmentThresholds {
                score,
                iou: config.iou_threshold.unwrap_or(post.iou_threshold),
                mask: config.mask_threshold.unwrap_or(post.mask_threshold),
                max_instances: max_detections,
                polygon_epsilon: POLYGON_EPSILON,
            },
            rule,
        });
    }
    let decoder =
        Decoder::from_spec(&manifest.decoder, manifest.classes.len(), input.width, input.height).ok_or_else(|| {
            EngineError::Model { model: manifest.name.clone(), message: "its decoder is not a detector's".into() }
        })?;
    let thresholds = Thresholds { score, iou: config.iou_threshold.unwrap_or(post.iou_threshold), max_detections };
    Ok(Postprocess::Boxes { decoder, thresholds })
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

//! The `detect` pipeline: decode → letterbox → dynamic batch → ONNX Runtime → decode + NMS.

use std::cell::RefCell;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use image::RgbImage;
use tokio::sync::oneshot;
use tokio::time::Instant;

use super::{
    FrameRequest, FrameResult, InspectError, LabeledDetection, PipelineInfo, ShedLimit, StageContext, StageTimings,
    Verdict,
};
use crate::batching::{BatchPolicy, BatchQueue};
use crate::config::{ChannelOrder, InputSpec, ModelManifest, PipelineConfig};
use crate::detect::{Decoder, NamedOutput, Thresholds};
use crate::engine::{EngineError, ModelSession, OrtRuntime, Output, SessionOptions};
use crate::imaging::{self, Annotation, Preprocessor, TensorSpec};

/// A preprocessed frame waiting for inference.
struct Job {
    // tensor: [3, h, w] f32, normalised per the model's input spec
    tensor: Vec<f32>,
    /// The deadline this frame is held to, should it be shed.
    limit: ShedLimit,
    reply: oneshot::Sender<Result<Inferred, InspectError>>,
}

/// A frame's share of a batch's outputs.
struct Inferred {
    // outputs: the whole batch's tensors, [n, …] each; this frame is row `index`
    outputs: Arc<Vec<Output>>,
    index: usize,
    batch_size: usize,
    queue_wait: Duration,
    inference: Duration,
}

pub struct DetectPipeline {
    name: String,
    manifest: ModelManifest,
    tensor_spec: TensorSpec,
    decoder: Decoder,
    thresholds: Thresholds,
    budget: Duration,
    /// The manifest's class names, shared with every frame's postprocessing.
    classes: Arc<[String]>,
    queue: Arc<BatchQueue<Job>>,
    workers: Mutex<Vec<std::thread::JoinHandle<()>>>,
    context: Arc<StageContext>,
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
        runtime: &OrtRuntime,
        session_options: SessionOptions,
        context: Arc<StageContext>,
    ) -> Result<Self, EngineError> {
        let input = &manifest.input;
        let tensor_spec = tensor_spec(input);
        let decoder = Decoder::from_spec(&manifest.decoder, manifest.classes.len(), input.width, input.height);
        let post = manifest.postprocess;
        let thresholds = Thresholds {
            score: config.score_threshold.unwrap_or(post.score_threshold),
            iou: config.iou_threshold.unwrap_or(post.iou_threshold),
            max_detections: config.max_detections.unwrap_or(post.max_detections),
        };
        let policy = BatchPolicy {
            max_batch: config.batching.max_batch,
            max_queue_delay: config.batching.max_queue_delay(),
            max_queue_size: config.batching.max_queue_size,
        };
        let queue = Arc::new(BatchQueue::new(policy));
        let handle = tokio::runtime::Handle::current();
        let mut workers = Vec::with_capacity(config.instances);
        for instance in 0..config.instances {
            let mut session = ModelSession::load(runtime, &manifest.name, &manifest.onnx_path(), session_options)?;
            warm_up(&mut session, &tensor_spec, policy.max_batch)?;
            let queue = queue.clone();
            let handle = handle.clone();
            let spec = tensor_spec;
            let thread = std::thread::Builder::new()
                .name(format!("model-{}-{instance}", manifest.name))
                .spawn(move || model_worker(session, spec, queue, handle))
                .map_err(|e| EngineError::Model { model: manifest.name.clone(), message: e.to_string() })?;
            workers.push(thread);
        }
        tracing::info!(
            message = "Pipeline started.",
            pipeline = name,
            model = manifest.name,
            instances = config.instances,
            max_batch = policy.max_batch,
            max_queue_delay_us = config.batching.max_queue_delay_us,
        );
        let budget = config.budget_ms.map_or(context.default_budget, |ms| Duration::from_millis(u64::from(ms)));
        Ok(Self {
            classes: manifest.classes.clone().into(),
            name: name.to_owned(),
            manifest,
            tensor_spec,
            decoder,
            thresholds,
            budget,
            queue,
            workers: Mutex::new(workers),
            context,
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
        }
    }

    pub fn close(&self) {
        self.queue.close();
    }

    pub async fn join_workers(&self) {
        let workers: Vec<_> = match self.workers.lock() {
            Ok(mut w) => w.drain(..).collect(),
            Err(poisoned) => poisoned.into_inner().drain(..).collect(),
        };
        for w in workers {
            let _ = tokio::task::spawn_blocking(move || w.join()).await;
        }
    }

    pub async fn inspect(&self, request: FrameRequest) -> Result<FrameResult, InspectError> {
        let received = request.received;
        let budget = request.budget.unwrap_or(self.budget);
        let budget_deadline = received + budget;
        let (deadline, limit) = match request.client_deadline {
            Some(client) if client < budget_deadline => (client, ShedLimit::ClientDeadline),
            _ => (budget_deadline, ShedLimit::Budget(budget)),
        };
        let image = request.image.ok_or(InspectError::MissingImage)?;

        // Decode + letterbox on the bounded CPU pool.
        let spec = self.tensor_spec;
        let limits = self.context.decode_limits;
        let keep_image = request.annotate;
        let (decoded, tensor, letterbox, decode_time, preprocess_time) = self
            .on_cpu_pool(move || -> Result<_, InspectError> {
                let t0 = std::time::Instant::now();
                let rgb = imaging::decode(&image.data, image.encoding, image.width, image.height, limits)?;
                let t1 = std::time::Instant::now();
                let mut tensor = vec![0f32; spec.len()];
                let letterbox = PREPROCESSOR
                    .with(|p| p.borrow_mut().letterbox_into(&rgb, &spec, &mut tensor))
                    .map_err(|e| InspectError::Internal(e.to_string()))?;
                let t2 = std::time::Instant::now();
                Ok((rgb, tensor, letterbox, t1 - t0, t2 - t1))
            })
            .await??;
        let (width, height) = decoded.dimensions();
        let decoded = keep_image.then_some(decoded);

        // Batch + infer on a model worker.
        let (reply, answer) = oneshot::channel();
        self.queue
            .submit(Job { tensor, limit, reply }, deadline)
            .map_err(|full| InspectError::QueueFull { pipeline: self.name.clone(), capacity: full.capacity })?;
        let inferred = answer.await.map_err(|_| InspectError::ShuttingDown)??;

        // Decode outputs + NMS (+ annotation) on the CPU pool.
        let decoder = self.decoder.clone();
        let thresholds = self.thresholds;
        let classes = self.classes.clone();
        let (detections, annotated_jpeg, postprocess_time) = self
            .on_cpu_pool(move || -> Result<_, InspectError> {
                let t0 = std::time::Instant::now();
                let named = named_views(&inferred.outputs)?;
                let found = decoder.detect(&named, inferred.index, &thresholds, &letterbox)?;
                let detections: Vec<LabeledDetection> = found
                    .into_iter()
                    .map(|d| LabeledDetection {
                        class_name: classes.get(d.class_id as usize).cloned().unwrap_or_default(),
                        detection: d,
                        track_id: 0,
                    })
                    .collect();
                let jpeg = match decoded {
                    Some(mut img) => Some(annotate_jpeg(&mut img, &detections)?),
                    None => None,
                };
                Ok((detections, jpeg, t0.elapsed()))
            })
            .await??;

        let total = received.elapsed();
        Ok(FrameResult {
            camera_id: request.camera_id,
            sequence: request.sequence,
            pipeline: self.name.clone(),
            model: self.manifest.name.clone(),
            detections,
            timings: StageTimings {
                decode: decode_time,
                preprocess: preprocess_time,
                queue_wait: inferred.queue_wait,
                inference: inferred.inference,
                postprocess: postprocess_time,
                total,
            },
            verdict: if total <= budget { Verdict::WithinBudget } else { Verdict::OverBudget },
            annotated_jpeg,
            batch_size: inferred.batch_size as u32,
            image_width: width,
            image_height: height,
        })
    }

    async fn on_cpu_pool<T: Send + 'static>(
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

/// Boxes with "class score" labels, one colour per class.
pub fn draw_detections(image: &mut RgbImage, detections: &[LabeledDetection]) {
    let annotations: Vec<Annotation> = detections
        .iter()
        .map(|d| Annotation {
            x1: d.detection.bbox.x1,
            y1: d.detection.bbox.y1,
            x2: d.detection.bbox.x2,
            y2: d.detection.bbox.y2,
            label: format!("{} {:.2}", d.class_name, d.detection.score),
            color_key: d.detection.class_id,
        })
        .collect();
    imaging::annotate(image, &annotations);
}

/// First runs allocate ONNX Runtime's buffers per shape: pay that before the first frame arrives.
fn warm_up(session: &mut ModelSession, spec: &TensorSpec, max_batch: usize) -> Result<(), EngineError> {
    let (h, w) = (spec.height as usize, spec.width as usize);
    for n in [1, max_batch] {
        let input = vec![0f32; n * spec.len()];
        session.run([n, 3, h, w], &input)?;
    }
    Ok(())
}

/// Owns one session; pulls batches until the queue is closed and drained.
fn model_worker(
    mut session: ModelSession,
    spec: TensorSpec,
    queue: Arc<BatchQueue<Job>>,
    handle: tokio::runtime::Handle,
) {
    let (h, w) = (spec.height as usize, spec.width as usize);
    let mut input: Vec<f32> = Vec::new();
    while let Some(batch) = handle.block_on(queue.next_batch()) {
        let now = Instant::now();
        for shed in batch.shed {
            let waited = now - shed.enqueued;
            let _ = shed.item.reply.send(Err(InspectError::Shed { limit: shed.item.limit, waited }));
        }
        if batch.items.is_empty() {
            continue;
        }
        let n = batch.items.len();
        // A lone frame's tensor goes in as it is; a batch is stacked into one buffer.
        let tensor: &[f32] = match batch.items.as_slice() {
            [only] => &only.item.tensor,
            items => {
                input.clear();
                for q in items {
                    input.extend_from_slice(&q.item.tensor);
                }
                &input
            }
        };
        let started = Instant::now();
        // A panic inside one batch must not take the worker (and every later frame) with it.
        let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| session.run([n, 3, h, w], tensor)))
            .unwrap_or_else(|_| {
                Err(EngineError::Run { model: session.name().to_owned(), message: "inference panicked".into() })
            });
        let inference = started.elapsed();
        queue.record_service_time(inference);
        match result {
            Ok(outputs) => {
                let outputs = Arc::new(outputs);
                for (index, q) in batch.items.into_iter().enumerate() {
                    let _ = q.item.reply.send(Ok(Inferred {
                        outputs: outputs.clone(),
                        index,
                        batch_size: n,
                        queue_wait: started - q.enqueued,
                        inference,
                    }));
                }
            }
            Err(error) => {
                tracing::error!(message = "Inference failed.", model = session.name(), %error, batch = n);
                for q in batch.items {
                    let _ = q.item.reply.send(Err(InspectError::Engine(error.to_string())));
                }
            }
        }
    }
}

//! Model workers: each owns one ONNX Runtime session and pulls batches from its pipeline's queue
//! until the queue is closed and drained.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::oneshot;
use tokio::time::Instant;

use super::{InspectError, ShedLimit};
use crate::batching::BatchQueue;
use crate::engine::{EngineError, ModelSession, Output};

/// Work waiting for inference: `rows` inputs of one frame (one image for a detector, every crop of
/// the frame for an embedder).
pub(super) struct Job {
    // tensor: [rows, c, h, w] f32, normalised per the model's input spec
    pub tensor: Vec<f32>,
    pub rows: usize,
    /// The deadline this frame is held to, should it be shed.
    pub limit: ShedLimit,
    pub reply: oneshot::Sender<Result<Inferred, InspectError>>,
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
    pub inference: Duration,
}

/// One input's shape without the batch axis: [c, h, w].
pub(super) type InputShape = [usize; 3];

/// First runs allocate ONNX Runtime's buffers per shape: pay that before the first frame arrives.
pub(super) fn warm_up(session: &mut ModelSession, shape: InputShape, batches: &[usize]) -> Result<(), EngineError> {
    let [c, h, w] = shape;
    for &n in batches {
        let input = vec![0f32; n * c * h * w];
        session.run([n, c, h, w], &input)?;
    }
    Ok(())
}

/// Owns one session; pulls batches until the queue is closed and drained.
pub(super) fn model_worker(
    mut session: ModelSession,
    shape: InputShape,
    queue: Arc<BatchQueue<Job>>,
    handle: tokio::runtime::Handle,
) {
    let [c, h, w] = shape;
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
        let frames = batch.items.len();
        let n: usize = batch.items.iter().map(|q| q.item.rows).sum();
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
        let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| session.run([n, c, h, w], tensor)))
            .unwrap_or_else(|_| {
                Err(EngineError::Run { model: session.name().to_owned(), message: "inference panicked".into() })
            });
        let inference = started.elapsed();
        queue.record_service_time(inference);
        match result {
            Ok(outputs) => {
                let outputs = Arc::new(outputs);
                let mut first_row = 0;
                for q in batch.items {
                    let rows = q.item.rows;
                    let _ = q.item.reply.send(Ok(Inferred {
                        outputs: outputs.clone(),
                        first_row,
                        rows,
                        batch_frames: frames,
                        queue_wait: started - q.enqueued,
                        inference,
                    }));
                    first_row += rows;
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

/// Loads `instances` sessions of one model, warms each up and starts its worker thread.
pub(super) fn start_workers(
    runtime: &crate::engine::OrtRuntime,
    manifest: &crate::config::ModelManifest,
    options: crate::engine::SessionOptions,
    instances: usize,
    shape: InputShape,
    warm_batches: &[usize],
    queue: &Arc<BatchQueue<Job>>,
) -> Result<Vec<std::thread::JoinHandle<()>>, EngineError> {
    let (model, onnx) = (manifest.name.as_str(), manifest.onnx_path());
    let handle = tokio::runtime::Handle::current();
    let mut workers = Vec::with_capacity(instances);
    for instance in 0..instances {
        let mut session = ModelSession::load(runtime, model, &onnx, options)?;
        warm_up(&mut session, shape, warm_batches)?;
        let queue = queue.clone();
        let handle = handle.clone();
        let thread = std::thread::Builder::new()
            .name(format!("model-{model}-{instance}"))
            .spawn(move || model_worker(session, shape, queue, handle))
            .map_err(|e| EngineError::Model { model: model.to_owned(), message: e.to_string() })?;
        workers.push(thread);
    }
    Ok(workers)
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

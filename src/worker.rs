//! Per-(model, device) worker: one named OS thread that loads and owns the model and runs its
//! jobs from a bounded queue.
//!
//! The thread is the only place a backend (and so libtorch) is touched: it sets `no_grad` and
//! the intra-op pool size once, loads the model, reports the outcome, then runs jobs until every
//! [`WorkerHandle`] is dropped, at which point it drops the model (freeing its memory) and exits.
//! Jobs whose deadline passed or whose client left are dropped before compute.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, SyncSender, TrySendError, sync_channel};
use std::thread::JoinHandle;
use std::time::Instant;

use crate::batch::{Job, JobOutput, Payload, Skip, check_live};
use crate::device::Device;
use crate::error::{Error, Result};
use crate::model::{Backend, HostTensor, ModelSpec, SharedFactory, classify};
use crate::tokenize::{TextEncoder, TextInfo};

/// Cloneable sender side of a worker's queue.
#[derive(Clone, Debug)]
pub struct WorkerHandle {
    /// Bounded: `try_send` failing means the model is at capacity, answered at once.
    tx: SyncSender<Job>,
    model: Arc<str>,
    device: Device,
    capacity: usize,
    counters: Arc<WorkerCounters>,
}

/// What a worker counts; read by admin and stats.
#[derive(Debug, Default)]
pub struct WorkerCounters {
    /// Jobs run.
    pub completed: AtomicU64,
    /// Jobs dropped because the client went away.
    pub cancelled: AtomicU64,
    /// Jobs dropped because their deadline passed in the queue.
    pub expired: AtomicU64,
}

/// How a load went, reported once by the worker thread.
pub struct Loaded {
    /// Handle to the now-running worker.
    pub handle: WorkerHandle,
    /// Parameter and buffer bytes.
    pub memory_bytes: u64,
}

impl WorkerHandle {
    /// Queues a job without waiting; a full queue is [`Error::QueueFull`].
    pub fn submit(&self, job: Job) -> Result<()> {
        self.tx.try_send(job).map_err(|e| match e {
            TrySendError::Full(_) => Error::QueueFull {
                model: self.model.to_string(),
                device: self.device.to_string(),
                capacity: self.capacity,
            },
            TrySendError::Disconnected(_) => {
                Error::internal(format!("worker for {} on {} has stopped", self.model, self.device))
            }
        })
    }

    /// The worker's counters.
    pub fn counters(&self) -> &WorkerCounters {
        &self.counters
    }
}

/// Starts the worker thread for `spec` on `device`. The thread loads the model and calls
/// `on_loaded` exactly once with the outcome (on the worker thread); on failure it then exits.
pub fn spawn_worker(
    spec: Arc<ModelSpec>,
    device: Device,
    factory: SharedFactory,
    threads: usize,
    capacity: usize,
    on_loaded: impl FnOnce(std::result::Result<Loaded, String>) + Send + 'static,
) -> std::io::Result<JoinHandle<()>> {
    let (tx, rx) = sync_channel(capacity);
    let handle = WorkerHandle { tx, model: Arc::from(spec.name.as_str()), device, capacity, counters: Arc::default() };
    std::thread::Builder::new().name(format!("torch-{}-{}", spec.name, device)).spawn(move || {
        // Grad mode is per thread: set it once for everything this thread runs.
        let _no_grad = tch::no_grad_guard();
        let loaded = factory.load(&spec, device, threads).and_then(|backend| {
            let encoder = spec.text.as_ref().map(|t| TextEncoder::load(&t.tokenizer)).transpose()?;
            Ok((backend, encoder))
        });
        let (backend, encoder) = match loaded {
            Ok(x) => x,
            Err(reason) => {
                on_loaded(Err(reason));
                return;
            }
        };
        let counters = Arc::clone(&handle.counters);
        let memory_bytes = backend.memory_bytes();
        on_loaded(Ok(Loaded { handle, memory_bytes }));
        run_worker(&spec, backend, encoder, &rx, &counters);
    })
}

fn run_worker(
    spec: &ModelSpec,
    mut backend: Box<dyn Backend>,
    mut encoder: Option<TextEncoder>,
    rx: &Receiver<Job>,
    counters: &WorkerCounters,
) {
    while let Ok(job) = rx.recv() {
        match check_live(&job) {
            Some(Skip::Cancelled) => {
                counters.cancelled.fetch_add(1, Ordering::Relaxed);
                continue;
            }
            Some(Skip::Expired) => {
                counters.expired.fetch_add(1, Ordering::Relaxed);
                let _ = job.reply.send(Err(Error::DeadlineExceeded { stage: "queued" }));
                continue;
            }
            None => {}
        }
        let queue = job.enqueued.elapsed();
        let started = Instant::now();
        let result = run_payload(spec, backend.as_mut(), encoder.as_mut(), job.payload);
        let compute = started.elapsed();
        let answer =
            result.map_err(|detail| Error::Forward { model: spec.name.clone(), detail }).map(|(outputs, texts)| {
                let predictions = predictions_for(spec, &outputs, job.rows);
                JobOutput { outputs, predictions, queue, compute, batch_size: job.rows, texts }
            });
        counters.completed.fetch_add(1, Ordering::Relaxed);
        // The client may have gone while we computed; its answer is simply discarded.
        let _ = job.reply.send(answer);
    }
}

/// Tokenises (text jobs) and runs the forward pass.
fn run_payload(
    spec: &ModelSpec,
    backend: &mut dyn Backend,
    encoder: Option<&mut TextEncoder>,
    payload: Payload,
) -> std::result::Result<(Vec<HostTensor>, Vec<TextInfo>), String> {
    match payload {
        Payload::Tensors(inputs) => Ok((backend.forward(inputs)?, Vec::new())),
        Payload::Texts { texts, max_length } => {
            let encoder = encoder.ok_or("text job for a model without a tokenizer; this is a bug")?;
            let (inputs, infos) = encoder.encode(&texts, max_length, &spec.inputs)?;
            Ok((backend.forward(inputs)?, infos))
        }
    }
}

/// Labels for each row when the manifest names labels and the first output is `[rows, labels]`.
fn predictions_for(
    spec: &ModelSpec,
    outputs: &[crate::model::HostTensor],
    rows: usize,
) -> Vec<crate::model::Prediction> {
    let n = spec.labels.len();
    let Some(first) = outputs.first() else {
        return Vec::new();
    };
    if n == 0 || first.shape != [rows as i64, n as i64] {
        return Vec::new();
    }
    first.to_f32().chunks(n).map(|row| classify(row, spec.output)).collect()
}

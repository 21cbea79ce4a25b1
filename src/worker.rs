//! Per-(model, device) worker: one named OS thread that loads and owns the model and runs its
//! jobs from a bounded queue.
//!
//! The thread is the only place a backend (and so libtorch) is touched: it sets `no_grad` and
//! the intra-op pool size once, loads the model, reports the outcome, then runs jobs until every
//! [`WorkerHandle`] is dropped, at which point it drops the model (freeing its memory) and exits.
//! Jobs whose deadline passed or whose client left are dropped before compute.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, SyncSender, TrySendError, sync_channel};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Instant;

use crate::batch::{
    BatchPolicy, Job, JobOutput, Payload, Refill, Skip, check_live, compatible, merge, split, split_rows,
};
use crate::device::Device;
use crate::error::{Cause, Error, Result};
use crate::metrics::Metrics;
use crate::model::{Backend, HostTensor, ModelSpec, SharedFactory, classify};
use crate::tokenize::{TextEncoder, TextInfo};

/// How a worker runs its model.
#[derive(Clone)]
pub struct WorkerSettings {
    /// libtorch intra-op threads.
    pub threads: usize,
    /// Jobs the queue holds.
    pub capacity: usize,
    /// How batches form.
    pub policy: BatchPolicy,
    /// Warm-up passes after the load.
    pub warmup_runs: usize,
    /// Where queue, compute and batch figures go.
    pub metrics: Arc<Metrics>,
}

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
    pub expired_queued: AtomicU64,
    /// Jobs computed whose deadline passed while computing (result discarded).
    pub expired_computing: AtomicU64,
    /// Forward passes run.
    pub batches: AtomicU64,
    /// Jobs submitted and not yet answered or dropped.
    pub pending: AtomicU64,
    /// Set when the worker thread has ended (its queue no longer runs).
    pub stopped: std::sync::atomic::AtomicBool,
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
        // Counted before the send so the worker can never see a job the count misses.
        self.counters.pending.fetch_add(1, Ordering::AcqRel);
        self.tx.try_send(job).map_err(|e| {
            self.counters.pending.fetch_sub(1, Ordering::AcqRel);
            match e {
                TrySendError::Full(_) => Error::QueueFull {
                    model: self.model.to_string(),
                    device: self.device.to_string(),
                    capacity: self.capacity,
                },
                TrySendError::Disconnected(_) => {
                    Error::internal(format!("worker for {} on {} has stopped", self.model, self.device))
                }
            }
        })
    }

    /// Whether the worker thread still runs jobs.
    pub fn is_alive(&self) -> bool {
        !self.counters.stopped.load(Ordering::Acquire)
    }

    /// Jobs queued or running now; a worker with none is idle (and may be evicted).
    pub fn pending(&self) -> u64 {
        self.counters.pending.load(Ordering::Acquire)
    }

    /// The worker's counters.
    pub fn counters(&self) -> &WorkerCounters {
        &self.counters
    }
}

/// What the registry hears once per load: the running worker, or why the load failed.
pub type OnLoaded = Box<dyn FnOnce(std::result::Result<Loaded, Cause>) + Send>;

/// Calls [`OnLoaded`] at most once, from whichever side gets there first.
#[derive(Clone)]
struct Reporter(Arc<Mutex<Option<OnLoaded>>>);

impl Reporter {
    fn send(&self, outcome: std::result::Result<Loaded, Cause>) {
        let report = self.0.lock().unwrap_or_else(std::sync::PoisonError::into_inner).take();
        if let Some(report) = report {
            report(outcome);
        }
    }
}

/// Reports [`Cause::Vanished`] if the load thread ends, unwinding included, without having
/// reported: the slot must never stay `Loading` with nobody left to finish it. Armed only once
/// the thread runs, so a thread that could not be spawned is reported by its spawner.
struct ReportOnExit {
    reporter: Reporter,
    armed: bool,
}

impl Drop for ReportOnExit {
    fn drop(&mut self) {
        if self.armed {
            self.reporter.send(Err(Cause::Vanished));
        }
    }
}

/// Starts the worker thread for `spec` on `device`. The thread loads the model and calls
/// `on_loaded` exactly once with the outcome (on the worker thread); on failure it then exits.
/// A load or warm-up that panics is a failed load; a thread that cannot be spawned is reported
/// as [`Cause::Spawn`] before this returns `None`.
pub fn spawn_worker(
    spec: Arc<ModelSpec>,
    device: Device,
    factory: SharedFactory,
    settings: WorkerSettings,
    on_loaded: OnLoaded,
) -> Option<JoinHandle<()>> {
    let WorkerSettings { threads, capacity, policy, warmup_runs, metrics } = settings;
    let (tx, rx) = sync_channel(capacity);
    let handle = WorkerHandle { tx, model: Arc::from(spec.name.as_str()), device, capacity, counters: Arc::default() };
    let reporter = Reporter(Arc::new(Mutex::new(Some(on_loaded))));
    let mut guard = ReportOnExit { reporter: reporter.clone(), armed: false };
    let spawned = std::thread::Builder::new().name(format!("torch-{}-{}", spec.name, device)).spawn(move || {
        guard.armed = true;
        // Grad mode is per thread: set it once for everything this thread runs.
        let _no_grad = tch::no_grad_guard();
        let loaded = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            load(&spec, device, factory.as_ref(), threads, warmup_runs)
        }))
        .unwrap_or_else(|panic| Err(Cause::from_panic(panic.as_ref())));
        let (backend, encoder) = match loaded {
            Ok(x) => x,
            Err(cause) => {
                guard.reporter.send(Err(cause));
                return;
            }
        };
        let counters = Arc::clone(&handle.counters);
        // Marks the worker stopped however the thread ends, unwinding included, so the
        // registry replaces it on the next request.
        let _stopped = StoppedOnExit(Arc::clone(&counters));
        let memory_bytes = backend.memory_bytes();
        guard.reporter.send(Ok(Loaded { handle, memory_bytes }));
        let labels = Labels { model: spec.name.clone(), device: device.label(), metrics };
        if let Err(fault) = run_worker(&spec, backend, encoder, &rx, &counters, policy, &labels) {
            counters.stopped.store(true, Ordering::Release);
            tracing::error!(model = %spec.name, %device, fault = %fault, "worker stopped after a fault; the model reloads on the next request");
            // Jobs still queued are answered rather than dropped.
            while let Ok(job) = rx.try_recv() {
                counters.pending.fetch_sub(1, Ordering::AcqRel);
                let _ = job.reply.send(Err(Error::Forward { model: spec.name.clone(), cause: Arc::clone(&fault) }));
            }
        }
    });
    match spawned {
        Ok(join) => Some(join),
        Err(e) => {
            reporter.send(Err(Cause::Spawn(e)));
            None
        }
    }
}

/// Loads the model (and its tokenizer), warms it up and runs its self-test, on the worker thread.
fn load(
    spec: &ModelSpec,
    device: Device,
    factory: &dyn crate::model::BackendFactory,
    threads: usize,
    warmup_runs: usize,
) -> std::result::Result<(Box<dyn Backend>, Option<TextEncoder>), Cause> {
    let mut backend = factory.load(spec, device, threads)?;
    let mut encoder = spec.text.as_ref().map(|t| TextEncoder::load(&t.tokenizer)).transpose()?;
    warm_up(spec, backend.as_mut(), encoder.as_mut(), warmup_runs)?;
    let half = device != Device::Cpu && spec.fp16;
    crate::selftest::check(spec, half, |p| {
        run_payload(spec, backend.as_mut(), encoder.as_mut(), p).map(|(out, _)| out)
    })?;
    Ok((backend, encoder))
}

/// Sets `stopped` when dropped.
struct StoppedOnExit(Arc<WorkerCounters>);

impl Drop for StoppedOnExit {
    fn drop(&mut self) {
        self.0.stopped.store(true, Ordering::Release);
    }
}

/// Runs batches until every handle is dropped (`Ok`) or the backend faults (`Err`, the reason).
fn run_worker(
    spec: &ModelSpec,
    mut backend: Box<dyn Backend>,
    mut encoder: Option<TextEncoder>,
    rx: &Receiver<Job>,
    counters: &WorkerCounters,
    policy: BatchPolicy,
    labels: &Labels,
) -> std::result::Result<(), Arc<Cause>> {
    // A job taken from the queue that did not fit the batch being formed opens the next one.
    let mut carry: Option<Job> = None;
    let mut refill = Refill::default();
    loop {
        let first = match carry.take() {
            Some(job) => job,
            None => match rx.recv() {
                Ok(job) => job,
                Err(_) => return Ok(()), // every handle dropped: unloaded or shutting down
            },
        };
        let Some(first) = keep_live(first, counters, labels) else { continue };
        let mut rows = first.rows;
        let mut batch = vec![first];
        let opened = Instant::now();
        let wait_until = opened + policy.max_delay;
        let (refill_rows, refill_until) =
            refill.target(policy.max_rows).map_or((0, opened), |(rows, wait)| (rows, opened + wait));
        while rows < policy.max_rows {
            let now = Instant::now();
            let until = if rows < refill_rows { wait_until.max(refill_until) } else { wait_until };
            let next = if now >= until { rx.try_recv().ok() } else { rx.recv_timeout(until - now).ok() };
            let Some(job) = next else { break };
            let Some(job) = keep_live(job, counters, labels) else { continue };
            if rows + job.rows > policy.max_rows || !compatible(&batch[0].payload, &job.payload) {
                carry = Some(job);
                break;
            }
            rows += job.rows;
            batch.push(job);
        }
        let started = Instant::now();
        run_batch(spec, backend.as_mut(), encoder.as_mut(), batch, rows, counters, labels)?;
        // Jobs still counted as pending are the ones queued behind this batch (its own were
        // counted off before the replies left).
        let queued = usize::try_from(counters.pending.load(Ordering::Acquire)).unwrap_or(usize::MAX);
        refill.record(rows.saturating_add(queued), started.elapsed());
    }
}

/// Drops a job whose client left (counted) or whose deadline passed in the queue (answered
/// DEADLINE_EXCEEDED, counted); returns the job otherwise.
fn keep_live(job: Job, counters: &WorkerCounters, labels: &Labels) -> Option<Job> {
    match check_live(&job) {
        None => Some(job),
        Some(Skip::Cancelled) => {
            counters.cancelled.fetch_add(1, Ordering::Relaxed);
            counters.pending.fetch_sub(1, Ordering::AcqRel);
            None
        }
        Some(Skip::Expired) => {
            counters.expired_queued.fetch_add(1, Ordering::Relaxed);
            labels.metrics.deadline_exceeded.with_label_values(&[job.rpc, &labels.model, "queue"]).inc();
            let _ = job.reply.send(Err(Error::DeadlineExceeded { stage: "queued" }));
            counters.pending.fetch_sub(1, Ordering::AcqRel);
            None
        }
    }
}

/// One forward pass over the batch, then each job gets its own rows back.
fn run_batch(
    spec: &ModelSpec,
    backend: &mut dyn Backend,
    encoder: Option<&mut TextEncoder>,
    batch: Vec<Job>,
    rows: usize,
    counters: &WorkerCounters,
    labels: &Labels,
) -> std::result::Result<(), Arc<Cause>> {
    let started = Instant::now();
    let lv = [labels.model.as_str(), labels.device.as_str()];
    let row_counts: Vec<usize> = batch.iter().map(|j| j.rows).collect();
    let mut replies = Vec::with_capacity(batch.len());
    let mut payloads = Vec::with_capacity(batch.len());
    for job in batch {
        payloads.push(job.payload);
        let queued = started.duration_since(job.enqueued);
        if labels.metrics.recording {
            labels.metrics.queue_duration.with_label_values(&lv).observe(queued.as_secs_f64());
        }
        replies.push((job.reply, job.deadline, queued, job.rpc));
    }
    // A panic inside libtorch or the tokenizer fails this batch, not the worker: the model
    // keeps serving the next one. A fatal cause (a CUDA fault, which poisons the context, or a
    // [`crate::model::WorkerFault`]) fails the batch and stops the worker.
    let ran =
        std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| run_payload(spec, backend, encoder, merge(payloads))))
            .unwrap_or_else(|panic| Err(Cause::from_panic(panic.as_ref())));
    let result = ran.and_then(|(outputs, texts)| {
        let predictions = predictions_for(spec, &outputs, rows);
        let outputs = split(outputs, &row_counts)?;
        Ok((outputs, split_rows(predictions, &row_counts), split_rows(texts, &row_counts)))
    });
    let result = result.map_err(Arc::new);
    let fault = result.as_ref().err().filter(|c| c.is_fatal()).map(Arc::clone);
    if fault.is_some() {
        // Marked before any reply leaves: a client that retries the moment it is answered must
        // reach a fresh load, not this dying worker's queue.
        counters.stopped.store(true, Ordering::Release);
    }
    let compute = started.elapsed();
    if labels.metrics.recording {
        labels.metrics.compute_duration.with_label_values(&lv).observe(compute.as_secs_f64());
        labels.metrics.batch_size.with_label_values(&lv).observe(rows as f64);
    }
    let jobs = replies.len() as u64;
    counters.batches.fetch_add(1, Ordering::Relaxed);
    counters.completed.fetch_add(jobs, Ordering::Relaxed);
    // No longer pending once computed: a client that scrapes the queue depth (or an eviction
    // that checks idleness) right after its answer must not still see its own job.
    counters.pending.fetch_sub(jobs, Ordering::AcqRel);
    match result {
        Ok((outputs, predictions, texts)) => {
            let parts = outputs.into_iter().zip(predictions).zip(texts);
            for ((reply, deadline, queue, rpc), ((outputs, predictions), texts)) in replies.into_iter().zip(parts) {
                if deadline.is_expired() {
                    // Computed, but too late: the handler has already answered DEADLINE_EXCEEDED.
                    counters.expired_computing.fetch_add(1, Ordering::Relaxed);
                    labels.metrics.deadline_exceeded.with_label_values(&[rpc, &labels.model, "compute"]).inc();
                }
                if labels.metrics.recording && !texts.is_empty() {
                    let tokens: usize = texts.iter().map(|t: &TextInfo| t.tokens).sum();
                    labels.metrics.tokens.with_label_values(&[&labels.model]).inc_by(tokens as u64);
                    let cut = texts.iter().filter(|t| t.truncated).count() as u64;
                    if cut > 0 {
                        labels.metrics.truncated_texts.with_label_values(&[&labels.model]).inc_by(cut);
                    }
                }
                let _ = reply.send(Ok(JobOutput { outputs, predictions, queue, compute, batch_size: rows, texts }));
            }
        }
        Err(cause) => {
            for (reply, _, _, _) in replies {
                let _ = reply.send(Err(Error::Forward { model: spec.name.clone(), cause: Arc::clone(&cause) }));
            }
        }
    }
    fault.map_or(Ok(()), Err)
}

/// Runs the model `runs` times on a one-row input before it serves, so the first real request
/// does not pay TorchScript's profiling passes: zeros of the declared shape (variable
/// dimensions as 1), or a short sentence for text models.
fn warm_up(
    spec: &ModelSpec,
    backend: &mut dyn Backend,
    mut encoder: Option<&mut TextEncoder>,
    runs: usize,
) -> std::result::Result<(), Cause> {
    for _ in 0..runs {
        let payload = if spec.text.is_some() {
            Payload::Texts { texts: vec!["Warming up the model with a short sentence.".to_owned()], max_length: 32 }
        } else {
            Payload::Tensors(
                spec.inputs
                    .iter()
                    .map(|i| {
                        let shape: Vec<i64> = i.shape.iter().map(|d| (*d).max(1)).collect();
                        let numel = shape.iter().product::<i64>() as usize;
                        HostTensor {
                            name: i.name.clone(),
                            dtype: i.dtype,
                            shape,
                            data: vec![0; numel * i.dtype.size()],
                        }
                    })
                    .collect(),
            )
        };
        run_payload(spec, backend, encoder.as_deref_mut(), payload)?;
    }
    Ok(())
}

/// Metric labels and sink of one worker.
struct Labels {
    model: String,
    device: String,
    metrics: Arc<Metrics>,
}

/// Tokenises (text jobs) and runs the forward pass.
fn run_payload(
    spec: &ModelSpec,
    backend: &mut dyn Backend,
    encoder: Option<&mut TextEncoder>,
    payload: Payload,
) -> std::result::Result<(Vec<HostTensor>, Vec<TextInfo>), Cause> {
    match payload {
        Payload::Tensors(inputs) => Ok((backend.forward(inputs)?, Vec::new())),
        Payload::Texts { texts, max_length } => {
            let encoder = encoder
                .ok_or_else(|| Cause::Tokenizer("a text job for a model without a tokenizer; this is a bug".into()))?;
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

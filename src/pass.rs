//! One forward pass over a batch of jobs, shared by both executors of a model: its worker
//! thread (`worker.rs`) and the fast path on the calling runtime thread (`inline.rs`).
//!
//! Owns what a pass does around the model: dropping jobs whose deadline passed or whose client
//! left, merging payloads, tokenising, the forward pass itself (panics caught), splitting the
//! outputs back per job, the per-pass metrics (through handles looked up once per model, not
//! per request) and the replies. Also the warm-up, and the timed passes at load that decide
//! whether a model is small enough for the fast path. It never decides where a pass runs.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use prometheus::{Histogram, IntCounter};

use crate::batch::{Job, JobOutput, Payload, Skip, check_live, merge, split, split_rows};
use crate::error::{Cause, Error};
use crate::metrics::Metrics;
use crate::model::{Backend, HostTensor, ModelSpec, Prediction, classify};
use crate::tokenize::{TextEncoder, TextInfo};
use crate::worker::WorkerCounters;

/// A loaded model and its tokenizer: what a pass runs on. Behind a mutex shared by the worker
/// thread and the fast path, so exactly one pass runs at a time whichever executor runs it.
pub struct Engine {
    /// The model.
    pub backend: Box<dyn Backend>,
    /// Text models: the tokenizer.
    pub encoder: Option<TextEncoder>,
}

/// What every pass of one (model, device) shares: the spec, the counters, and metric handles
/// resolved once at load (a `with_label_values` lookup hashes the labels and takes a lock).
pub struct PassContext {
    /// The model's manifest.
    pub spec: Arc<ModelSpec>,
    /// The counters admin, Stats and the queue-depth gauge read.
    pub counters: Arc<WorkerCounters>,
    /// `model` label value.
    pub model: String,
    /// `device` label value.
    pub device: String,
    /// The registry the handles below belong to (for the rare, per-rpc deadline counter).
    pub metrics: Arc<Metrics>,
    /// Per-pass figures; `None` when recording is off.
    handles: Option<Handles>,
}

struct Handles {
    queue: Histogram,
    compute: Histogram,
    batch: Histogram,
    /// Text models only, so a tabular model grows no token series.
    text: Option<(IntCounter, IntCounter)>,
}

impl PassContext {
    /// The context of `spec` on `device` (its label), with its metric handles.
    pub fn new(spec: Arc<ModelSpec>, device: String, counters: Arc<WorkerCounters>, metrics: Arc<Metrics>) -> Self {
        let model = spec.name.clone();
        let handles = metrics.recording.then(|| {
            let lv = [model.as_str(), device.as_str()];
            Handles {
                queue: metrics.queue_duration.with_label_values(&lv),
                compute: metrics.compute_duration.with_label_values(&lv),
                batch: metrics.batch_size.with_label_values(&lv),
                text: spec.text.is_some().then(|| {
                    (metrics.tokens.with_label_values(&[&model]), metrics.truncated_texts.with_label_values(&[&model]))
                }),
            }
        });
        PassContext { spec, counters, model, device, metrics, handles }
    }
}

/// Drops a job whose client left (counted) or whose deadline passed in the queue (answered
/// DEADLINE_EXCEEDED, counted); returns the job otherwise.
pub fn keep_live(job: Job, ctx: &PassContext) -> Option<Job> {
    match check_live(&job) {
        None => Some(job),
        Some(Skip::Cancelled) => {
            ctx.counters.cancelled.fetch_add(1, Ordering::Relaxed);
            ctx.counters.pending.fetch_sub(1, Ordering::AcqRel);
            None
        }
        Some(Skip::Expired) => {
            ctx.counters.expired_queued.fetch_add(1, Ordering::Relaxed);
            ctx.metrics.deadline_exceeded.with_label_values(&[job.rpc, &ctx.model, "queue"]).inc();
            let _ = job.reply.send(Err(Error::DeadlineExceeded { stage: "queued" }));
            ctx.counters.pending.fetch_sub(1, Ordering::AcqRel);
            None
        }
    }
}

/// One forward pass over the batch, then each job gets its own rows back. `Err` is a fatal
/// cause (the executor must stop); every job has been answered either way.
pub fn run_batch(
    ctx: &PassContext,
    engine: &mut Engine,
    batch: Vec<Job>,
    rows: usize,
) -> std::result::Result<(), Arc<Cause>> {
    let started = Instant::now();
    let mut row_counts = Vec::with_capacity(batch.len());
    let mut replies = Vec::with_capacity(batch.len());
    let mut payloads = Vec::with_capacity(batch.len());
    for job in batch {
        row_counts.push(job.rows);
        payloads.push(job.payload);
        let queued = started.duration_since(job.enqueued);
        if let Some(h) = &ctx.handles {
            h.queue.observe(queued.as_secs_f64());
        }
        replies.push((job.reply, job.deadline, queued, job.rpc));
    }
    let spec = &ctx.spec;
    // A panic inside libtorch or the tokenizer fails this batch, not the executor: the model
    // keeps serving the next one. A fatal cause (a CUDA fault, which poisons the context, or a
    // [`crate::model::WorkerFault`]) fails the batch and stops the executor.
    let ran = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        run_payload(spec, &mut engine.backend, engine.encoder.as_mut(), merge(payloads))
    }))
    .unwrap_or_else(|panic| Err(Cause::from_panic(panic.as_ref())));
    let result = ran.and_then(|(outputs, texts)| {
        let predictions = predictions_for(spec, &outputs, rows);
        let outputs = split(outputs, &row_counts)?;
        Ok((outputs, split_rows(predictions, &row_counts), split_rows(texts, &row_counts)))
    });
    let result = result.map_err(Arc::new);
    let fault = result.as_ref().err().filter(|c| c.is_fatal()).map(Arc::clone);
    let counters = &ctx.counters;
    if fault.is_some() {
        // Marked before any reply leaves: a client that retries the moment it is answered must
        // reach a fresh load, not this dying executor.
        counters.stopped.store(true, Ordering::Release);
    }
    let compute = started.elapsed();
    if let Some(h) = &ctx.handles {
        h.compute.observe(compute.as_secs_f64());
        h.batch.observe(rows as f64);
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
                if let Some((tokens, cut)) = ctx.handles.as_ref().and_then(|h| h.text.as_ref()) {
                    tokens.inc_by(texts.iter().map(|t: &TextInfo| t.tokens as u64).sum());
                    cut.inc_by(texts.iter().filter(|t| t.truncated).count() as u64);
                }
                if deadline.is_expired() {
                    // Computed, but too late. On the worker path the handler has already
                    // answered DEADLINE_EXCEEDED; on the fast path the caller reads this.
                    counters.expired_computing.fetch_add(1, Ordering::Relaxed);
                    ctx.metrics.deadline_exceeded.with_label_values(&[rpc, &ctx.model, "compute"]).inc();
                    let _ = reply.send(Err(Error::DeadlineExceeded { stage: "waiting for the model" }));
                    continue;
                }
                let _ = reply.send(Ok(JobOutput { outputs, predictions, queue, compute, batch_size: rows, texts }));
            }
        }
        Err(cause) => {
            for (reply, _, _, _) in replies {
                let _ = reply.send(Err(Error::from_forward(&spec.name, &cause)));
            }
        }
    }
    fault.map_or(Ok(()), Err)
}

/// A warm-up input of `rows` rows: zeros of the declared shape (variable dimensions as 1), or
/// a short sentence for text models.
fn warm_up_payload(spec: &ModelSpec, rows: usize) -> Payload {
    if spec.text.is_some() {
        return Payload::Texts {
            texts: vec!["Warming up the model with a short sentence.".to_owned(); rows.max(1)],
            max_length: 32,
        };
    }
    Payload::Tensors(
        spec.inputs
            .iter()
            .map(|i| {
                let mut shape: Vec<i64> = i.shape.iter().map(|d| (*d).max(1)).collect();
                if let Some(first) = shape.first_mut() {
                    *first = i64::try_from(rows.max(1)).unwrap_or(1);
                }
                let numel = shape.iter().product::<i64>() as usize;
                HostTensor { name: i.name.clone(), dtype: i.dtype, shape, data: vec![0; numel * i.dtype.size()] }
            })
            .collect(),
    )
}

/// Runs the model `runs` times on a one-row input before it serves, so the first real request
/// does not pay TorchScript's profiling passes; returns the last pass's time (`None` for none).
pub fn warm_up(spec: &ModelSpec, engine: &mut Engine, runs: usize) -> std::result::Result<Option<Duration>, Cause> {
    let mut last = None;
    for _ in 0..runs {
        let started = Instant::now();
        run_payload(spec, &mut engine.backend, engine.encoder.as_mut(), warm_up_payload(spec, 1))?;
        last = Some(started.elapsed());
    }
    Ok(last)
}

/// Checks the version's self-test goldens ([`crate::selftest`]); `half`: it runs in fp16.
pub fn self_test(spec: &ModelSpec, engine: &mut Engine, half: bool) -> std::result::Result<(), Cause> {
    crate::selftest::check(spec, half, |p| {
        run_payload(spec, &mut engine.backend, engine.encoder.as_mut(), p).map(|(out, _)| out)
    })
}

/// Most timed passes at load.
const TIMED_PASSES: usize = 200;
/// Most time the timed passes may take in all (a slow model stops after its first pass).
const TIMED_BUDGET: Duration = Duration::from_millis(50);

/// Times passes of the largest batch (`rows`) and returns their p99 (nearest rank), or `None`
/// as soon as it is clear that the p99 is over `threshold` (more than 1 % of the planned passes
/// over it, one pass over ten times it, or the time budget spent): how the fast path decides
/// that a model is tiny.
pub fn timed_p99(
    spec: &ModelSpec,
    engine: &mut Engine,
    rows: usize,
    threshold: Duration,
) -> std::result::Result<Option<Duration>, Cause> {
    // A new shape makes TorchScript's profiling executor profile and optimise again: the
    // largest batch gets its own untimed warm-up.
    for _ in 0..3 {
        run_payload(spec, &mut engine.backend, engine.encoder.as_mut(), warm_up_payload(spec, rows))?;
    }
    let mut took = Vec::with_capacity(TIMED_PASSES);
    let allowed_over = TIMED_PASSES / 100;
    let began = Instant::now();
    while took.len() < TIMED_PASSES {
        let payload = warm_up_payload(spec, rows);
        let started = Instant::now();
        run_payload(spec, &mut engine.backend, engine.encoder.as_mut(), payload)?;
        let last = started.elapsed();
        took.push(last);
        let over = took.iter().filter(|d| **d > threshold).count();
        if over > allowed_over || last > threshold * 10 || began.elapsed() > TIMED_BUDGET {
            return Ok(None);
        }
    }
    took.sort_unstable();
    Ok(Some(took[(took.len() * 99).div_ceil(100) - 1]))
}

/// Tokenises (text jobs) and runs the forward pass.
fn run_payload(
    spec: &ModelSpec,
    backend: &mut Box<dyn Backend>,
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
fn predictions_for(spec: &ModelSpec, outputs: &[HostTensor], rows: usize) -> Vec<Prediction> {
    let n = spec.labels.len();
    let Some(first) = outputs.first() else {
        return Vec::new();
    };
    if n == 0 || first.shape != [rows as i64, n as i64] {
        return Vec::new();
    }
    first.to_f32().chunks(n).map(|row| classify(row, spec.output)).collect()
}

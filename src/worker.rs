//! Per-(model, device) worker: one named OS thread that loads and owns the model and runs its
//! jobs from a bounded queue, or hands the model to the fast path (`inline.rs`) when its
//! passes, timed at load, are tiny.
//!
//! The thread loads the model: it sets `no_grad` and the intra-op pool size once, loads, warms
//! up, times passes of the largest batch, reports the outcome, then runs jobs until every
//! [`WorkerHandle`] is dropped, at which point it drops the model (freeing its memory) and
//! exits. A fast-path model's thread waits on its (empty) queue until the model turns slow and
//! is moved back to it. Jobs whose deadline passed or whose client left are dropped before
//! compute (`pass.rs`, shared by both executors).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, SyncSender, TrySendError, sync_channel};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::batch::{BatchPolicy, Job, Refill, compatible};
use crate::device::Device;
use crate::error::{Cause, Error, Result};
use crate::inline::{ExecutorChoice, InlineExec, InlinePolicy, Offer};
use crate::metrics::Metrics;
use crate::model::{ModelSpec, SharedFactory};
use crate::pass::{Engine, PassContext, keep_live, run_batch, timed_p99, warm_up};
use crate::tokenize::TextEncoder;

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
    /// Whether the model may run on the fast path.
    pub inline: InlinePolicy,
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
    /// The fast path, when the model's passes were tiny at load; `None` = the worker thread.
    inline: Option<Arc<InlineExec>>,
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
    /// On the fast path the job may already have run, on this thread, when this returns.
    pub fn submit(&self, job: Job) -> Result<()> {
        // Counted before the send so the worker can never see a job the count misses.
        self.counters.pending.fetch_add(1, Ordering::AcqRel);
        let job = match &self.inline {
            Some(inline) => match inline.offer(job) {
                Offer::Taken => return Ok(()),
                Offer::Full => return Err(self.refused(true)),
                Offer::Stopped => return Err(self.refused(false)),
                Offer::Demoted(job) => job,
            },
            None => job,
        };
        self.tx.try_send(job).map_err(|e| self.refused(matches!(e, TrySendError::Full(_))))
    }

    /// The error of a job not taken (full queue, or a stopped executor), counted off.
    fn refused(&self, full: bool) -> Error {
        self.counters.pending.fetch_sub(1, Ordering::AcqRel);
        if full {
            Error::QueueFull { model: self.model.to_string(), device: self.device.to_string(), capacity: self.capacity }
        } else {
            Error::internal(format!("worker for {} on {} has stopped", self.model, self.device))
        }
    }

    /// Where the model's passes run now: `inline` (the fast path) or `worker`.
    pub fn executor(&self) -> &'static str {
        if self.inline.as_ref().is_some_and(|i| i.active()) { "inline" } else { "worker" }
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
    let WorkerSettings { threads, capacity, policy, warmup_runs, metrics, inline } = settings;
    let (tx, rx) = sync_channel(capacity);
    let model = Arc::from(spec.name.as_str());
    let mut handle = WorkerHandle { tx, model, device, capacity, counters: Arc::default(), inline: None };
    let reporter = Reporter(Arc::new(Mutex::new(Some(on_loaded))));
    let mut guard = ReportOnExit { reporter: reporter.clone(), armed: false };
    let spawned = std::thread::Builder::new().name(format!("torch-{}-{}", spec.name, device)).spawn(move || {
        guard.armed = true;
        // Grad mode is per thread: set it once for everything this thread runs.
        let _no_grad = tch::no_grad_guard();
        let loaded = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            load(&spec, device, factory.as_ref(), threads, warmup_runs, inline, policy.max_rows)
        }))
        .unwrap_or_else(|panic| Err(Cause::from_panic(panic.as_ref())));
        let (engine, fast) = match loaded {
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
        let memory_bytes = engine.backend.memory_bytes();
        let ctx = Arc::new(PassContext::new(Arc::clone(&spec), device.label(), Arc::clone(&counters), metrics));
        let engine = Arc::new(Mutex::new(engine));
        if let Some(slow_limit) = fast {
            let exec = InlineExec::new(Arc::clone(&engine), Arc::clone(&ctx), policy.max_rows, capacity, handle.tx.clone(), slow_limit);
            handle.inline = Some(Arc::new(exec));
        }
        guard.reporter.send(Ok(Loaded { handle, memory_bytes }));
        if let Err(fault) = run_worker(&ctx, &engine, &rx, policy) {
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

/// Where a model runs when it runs on the fast path: `Some(slow limit)`, the limit being
/// `None` for a forced fast path that never moves back.
type FastPath = Option<Option<Duration>>;

/// Loads the model (and its tokenizer), warms it up, runs its self-test and, when the policy
/// asks, times passes of its largest batch to choose its executor; on the worker thread. A model that is not warmed
/// up (`--warmup-runs 0`) is not timed and stays on its worker thread.
fn load(
    spec: &ModelSpec,
    device: Device,
    factory: &dyn crate::model::BackendFactory,
    threads: usize,
    warmup_runs: usize,
    inline: InlinePolicy,
    max_rows: usize,
) -> std::result::Result<(Engine, FastPath), Cause> {
    let backend = factory.load(spec, device, threads)?;
    let encoder = spec.text.as_ref().map(|t| TextEncoder::load(&t.tokenizer)).transpose()?;
    let mut engine = Engine { backend, encoder };
    warm_up(spec, &mut engine, warmup_runs)?;
    crate::pass::self_test(spec, &mut engine, device != Device::Cpu && spec.fp16)?;
    let fast = match inline.choice {
        ExecutorChoice::Worker => None,
        ExecutorChoice::Inline => Some(None),
        // Only a model warmed up (TorchScript's first passes profile and optimise the graph) is
        // timed; one more one-row pass far over the threshold rules it out at once, so a
        // model of milliseconds pays one pass, not the timed ones.
        ExecutorChoice::Measured if inline.threshold.is_zero() || warmup_runs == 0 => None,
        ExecutorChoice::Measured if warm_up(spec, &mut engine, 1)?.is_none_or(|d| d > inline.threshold * 10) => None,
        ExecutorChoice::Measured => {
            let p99 = timed_p99(spec, &mut engine, max_rows, inline.threshold)?;
            let executor = if p99.is_some() { "inline" } else { "worker" };
            tracing::info!(
                model = %spec.name, %device, rows = max_rows, p99_us = p99.map(|d| d.as_micros()),
                threshold_us = inline.threshold.as_micros(), executor,
                "timed the largest batch's forward pass"
            );
            p99.map(|_| Some(inline.threshold * 2))
        }
    };
    Ok((engine, fast))
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
    ctx: &PassContext,
    engine: &Mutex<Engine>,
    rx: &Receiver<Job>,
    policy: BatchPolicy,
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
        let Some(first) = keep_live(first, ctx) else { continue };
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
            let Some(job) = keep_live(job, ctx) else { continue };
            if rows + job.rows > policy.max_rows || !compatible(&batch[0].payload, &job.payload) {
                carry = Some(job);
                break;
            }
            rows += job.rows;
            batch.push(job);
        }
        let started = Instant::now();
        {
            // Shared with the fast path only until a demotion: uncontended on this path.
            let mut engine = engine.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            run_batch(ctx, &mut engine, batch, rows)?;
        }
        // Jobs still counted as pending are the ones queued behind this batch (its own were
        // counted off before the replies left).
        let queued = usize::try_from(ctx.counters.pending.load(Ordering::Acquire)).unwrap_or(usize::MAX);
        refill.record(rows.saturating_add(queued), started.elapsed());
    }
}

//! The fast path (DESIGN.md, "Request path"): a model whose measured forward pass takes tens of
//! microseconds runs on the calling runtime thread instead of its worker thread, because the
//! two thread switches of a hand-off cost more than such a pass.
//!
//! Batched by flat combining: a caller that finds no pass running becomes the combiner and runs
//! what is queued (its own job) at once, on its own thread; callers that arrive while a pass
//! runs queue their jobs (bounded: a full queue is RESOURCE_EXHAUSTED at once, as on the worker
//! path) and wait for their answers, which a drain task runs as one batch right after, one pass
//! per poll so the runtime thread is never held for more than one pass. Each pass runs with
//! grad mode off and panics caught (`pass.rs`, shared with the worker). A model whose passes
//! turn slow (the p99 of two windows of passes in a row, in CPU time of the thread, over twice the
//! threshold) is moved back to its worker thread for good, logged and counted. Owned by a [`crate::worker::WorkerHandle`]; never loads a
//! model and never waits for one.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{SyncSender, TrySendError};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use prometheus::IntCounter;

use crate::batch::{Job, compatible};
use crate::error::{Cause, Error};
use crate::pass::{Engine, PassContext, keep_live, run_batch};

/// Which executor a model's passes run on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ExecutorChoice {
    /// The fast path when the passes timed at load are under the threshold, else the worker.
    #[default]
    Measured,
    /// Always the fast path, never moved back (tests run the same cases on both paths).
    Inline,
    /// Always the worker thread.
    Worker,
}

/// How a model's executor is chosen.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct InlinePolicy {
    /// p99 of a pass of the largest batch under which a model runs inline; zero = never.
    pub threshold: Duration,
    /// Measured, or forced one way.
    pub choice: ExecutorChoice,
}

/// CPU time of the calling thread: what a pass costs, whatever else the host runs (wall time
/// would count a pass preempted on a busy core as a slow model).
pub fn thread_cpu() -> Duration {
    let t = rustix::time::clock_gettime(rustix::time::ClockId::ThreadCPUTime);
    Duration::new(u64::try_from(t.tv_sec).unwrap_or(0), u32::try_from(t.tv_nsec).unwrap_or(0))
}

/// Fast-path passes a runtime thread runs before they are judged: libtorch sets up per-thread
/// state on a thread's first passes (measured: over 200 µs of CPU for a 13 µs model), which
/// says nothing about the model.
const THREAD_GRACE: u32 = 8;

thread_local! {
    static PASSES_ON_THIS_THREAD: std::cell::Cell<u32> = const { std::cell::Cell::new(0) };
}

/// Counts a pass on this thread; true once the thread is past its grace. A runtime thread's
/// first pass first limits libtorch's intra-op parallelism on this thread to one (OpenMP's and
/// MKL's thread counts are per calling thread): a tiny model gains nothing from a parallel
/// region, and on a busy core its other threads are not running, so the calling thread would
/// spin at the region's barrier (hundreds of µs of CPU for a 13 µs pass).
fn settled() -> bool {
    PASSES_ON_THIS_THREAD.with(|n| {
        let seen = n.get();
        if seen == 0 {
            tch::set_num_threads(1);
        }
        n.set(seen.saturating_add(1));
        seen >= THREAD_GRACE
    })
}

/// Passes per window over which a fast-path model's p99 is judged.
const WINDOW: u32 = 256;

/// Counts the passes of the current window that took longer than `limit`; a window's p99 is
/// over the limit once more than 1 % of it is, and the model has turned slow when two windows
/// in a row are: a single window can be one burst of the host's (measured: on a pinned, busy
/// core a 13 µs model saw a few passes of 280 µs of CPU about every 190,000 requests, which
/// alone moved it back to its worker), while a model that turned slow stays slow. The first
/// window after the load is not judged: TorchScript re-optimises its graph for the shapes it
/// meets and the allocator grows during it (measured: single passes of 250 µs of CPU within the
/// first 110 requests of a 13 µs model), which says nothing about the model's steady cost.
#[derive(Debug, Clone, Copy)]
pub struct SlowWindow {
    limit: Duration,
    passes: u32,
    over: u32,
    settled: bool,
    /// The previous window's p99 was over the limit.
    previous_slow: bool,
}

impl SlowWindow {
    /// A window judging passes against `limit`.
    pub fn new(limit: Duration) -> Self {
        SlowWindow { limit, passes: 0, over: 0, settled: false, previous_slow: false }
    }

    /// Records a pass; true when this window's p99 is over the limit and the last one's was.
    pub fn record(&mut self, took: Duration) -> bool {
        if self.passes == WINDOW {
            let previous_slow = self.settled && self.over > WINDOW / 100;
            *self = SlowWindow { settled: true, previous_slow, ..SlowWindow::new(self.limit) };
        }
        self.passes += 1;
        self.over += u32::from(took > self.limit);
        self.settled && self.previous_slow && self.over > WINDOW / 100
    }
}

/// What became of a job offered to the fast path.
pub enum Offer {
    /// Queued, or already run: its answer is (or will be) in its reply.
    Taken,
    /// The queue is full: RESOURCE_EXHAUSTED.
    Full,
    /// The executor met a fatal fault and serves no more; the registry loads afresh.
    Stopped,
    /// The model has moved back to its worker thread: send the job there.
    Demoted(Job),
}

struct InlineState {
    /// Jobs waiting for the next pass; bounded by `capacity`.
    queue: VecDeque<Job>,
    /// A pass runs, or a drain task is on its way: callers queue instead of running.
    running: bool,
    window: Option<SlowWindow>,
}

/// One model's fast path on one device.
pub struct InlineExec {
    state: Mutex<InlineState>,
    /// Shared with the worker thread, which takes over on demotion.
    engine: Arc<Mutex<Engine>>,
    ctx: Arc<PassContext>,
    max_rows: usize,
    capacity: usize,
    /// The worker thread's queue, where queued jobs go on demotion. Holding it does not keep
    /// the worker alive past the handles: this executor is owned by them.
    worker: SyncSender<Job>,
    demoted: AtomicBool,
    demotions: IntCounter,
}

impl std::fmt::Debug for InlineExec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("InlineExec").field("model", &self.ctx.model).field("active", &self.active()).finish()
    }
}

impl InlineExec {
    /// A fast path over `engine`; `slow_limit` is where a window's p99 moves the model back to
    /// its worker (`None`: never).
    pub fn new(
        engine: Arc<Mutex<Engine>>,
        ctx: Arc<PassContext>,
        max_rows: usize,
        capacity: usize,
        worker: SyncSender<Job>,
        slow_limit: Option<Duration>,
    ) -> Self {
        let demotions = ctx.metrics.inline_demotions.with_label_values(&[&ctx.model, &ctx.device]);
        InlineExec {
            state: Mutex::new(InlineState {
                queue: VecDeque::new(),
                running: false,
                window: slow_limit.map(SlowWindow::new),
            }),
            engine,
            ctx,
            max_rows: max_rows.max(1),
            capacity: capacity.max(1),
            worker,
            demoted: AtomicBool::new(false),
            demotions,
        }
    }

    /// Whether the model still runs here (false once moved back to its worker).
    pub fn active(&self) -> bool {
        !self.demoted.load(Ordering::Acquire)
    }

    fn lock(&self) -> MutexGuard<'_, InlineState> {
        // A poisoned lock only means a pass panicked outside `catch_unwind`; the queue is intact.
        self.state.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Queues `job`; when no pass is running, runs it now on this thread (the caller's answer
    /// is in its reply when this returns), and leaves anything queued meanwhile to a drain task.
    /// The job must already be counted as pending.
    pub fn offer(self: &Arc<Self>, job: Job) -> Offer {
        let mut st = self.lock();
        if self.demoted.load(Ordering::Acquire) {
            return Offer::Demoted(job);
        }
        if self.ctx.counters.stopped.load(Ordering::Acquire) {
            return Offer::Stopped;
        }
        if st.queue.len() >= self.capacity {
            return Offer::Full;
        }
        st.queue.push_back(job);
        if st.running {
            return Offer::Taken;
        }
        st.running = true;
        drop(st);
        if self.pass() {
            self.drain_later();
        }
        Offer::Taken
    }

    /// Runs the queued jobs on a task of their own, one pass per poll, until none are left.
    fn drain_later(self: &Arc<Self>) {
        let me = Arc::clone(self);
        match tokio::runtime::Handle::try_current() {
            Ok(rt) => {
                rt.spawn(async move {
                    while me.pass() {
                        tokio::task::yield_now().await;
                    }
                });
            }
            // Outside a runtime (a blocking caller): drain here.
            Err(_) => while me.pass() {},
        }
    }

    /// Takes what fits one batch from the front of the queue and runs it; returns whether jobs
    /// are left for another pass (`running` stays set), else clears `running`.
    fn pass(&self) -> bool {
        let (batch, rows) = self.take();
        if !batch.is_empty() {
            let mut engine = self.engine.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            // Grad mode is per thread and this is a runtime thread: set for this pass only.
            let _no_grad = tch::no_grad_guard();
            let judged = settled();
            let started = thread_cpu();
            let ran = run_batch(&self.ctx, &mut engine, batch, rows);
            let took = thread_cpu().saturating_sub(started);
            drop(engine);
            if let Err(fault) = ran {
                self.fail_queued(&fault);
                return false;
            }
            let slow = judged && self.lock().window.as_mut().is_some_and(|w| w.record(took));
            if slow {
                self.demote(took);
            }
        }
        let mut st = self.lock();
        if st.queue.is_empty() || self.demoted.load(Ordering::Acquire) {
            st.running = false;
            false
        } else {
            true
        }
    }

    /// The next batch: live jobs from the front, up to `max_rows` (a larger single job runs
    /// alone), stopping at the first that cannot share the pass.
    fn take(&self) -> (Vec<Job>, usize) {
        let mut st = self.lock();
        let mut batch: Vec<Job> = Vec::new();
        let mut rows = 0;
        while let Some(front) = st.queue.front() {
            if let Some(first) = batch.first()
                && (rows + front.rows > self.max_rows || !compatible(&first.payload, &front.payload))
            {
                break;
            }
            let Some(job) = st.queue.pop_front() else { break };
            if let Some(job) = keep_live(job, &self.ctx) {
                rows += job.rows;
                batch.push(job);
            }
        }
        (batch, rows)
    }

    /// Moves the model back to its worker thread: later jobs go to its queue, and so do the
    /// ones queued here.
    fn demote(&self, took: Duration) {
        let mut st = self.lock();
        if self.demoted.swap(true, Ordering::AcqRel) {
            return;
        }
        self.demotions.inc();
        tracing::warn!(
            model = %self.ctx.model,
            device = %self.ctx.device,
            pass_us = took.as_micros(),
            "forward passes turned slow (p99 over twice the fast-path threshold); the model moves back to its worker thread"
        );
        for job in st.queue.drain(..) {
            if let Err(TrySendError::Full(job) | TrySendError::Disconnected(job)) = self.worker.try_send(job) {
                self.ctx.counters.pending.fetch_sub(1, Ordering::AcqRel);
                let _ = job.reply.send(Err(Error::internal("the model's worker thread has stopped")));
            }
        }
    }

    /// After a fatal fault: every queued job is answered with it (the executor is stopped).
    fn fail_queued(&self, fault: &Arc<Cause>) {
        let mut st = self.lock();
        for job in st.queue.drain(..) {
            self.ctx.counters.pending.fetch_sub(1, Ordering::AcqRel);
            let _ = job.reply.send(Err(Error::Forward { model: self.ctx.model.clone(), cause: Arc::clone(fault) }));
        }
        st.running = false;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::batch::{JobOutput, Payload};
    use crate::deadline::Deadline;
    use crate::device::Device;
    use crate::metrics::Metrics;
    use crate::model::fake::FakeFactory;
    use crate::model::manifest::parse_manifest;
    use crate::model::{BackendFactory, HostTensor};
    use crate::worker::WorkerCounters;
    use std::sync::mpsc::{Receiver, sync_channel};
    use std::time::Instant;
    use tokio::sync::oneshot;

    struct Rig {
        exec: Arc<InlineExec>,
        engine: Arc<Mutex<Engine>>,
        counters: Arc<WorkerCounters>,
        forwards: Arc<std::sync::atomic::AtomicUsize>,
        worker: Mutex<Receiver<Job>>,
    }

    /// A fast path over the fake backend (`[-sum(row), sum(row)]` per row).
    fn rig(factory: FakeFactory, capacity: usize, slow_limit: Option<Duration>) -> Rig {
        let toml = "kind = \"tabular\"\n[[inputs]]\nname = \"x\"\ndtype = \"float32\"\nshape = [-1, 1]\nfeatures = [{ name = \"a\" }]\n";
        let spec = Arc::new(parse_manifest("m", std::path::Path::new("/nonexistent"), toml).unwrap());
        let forwards = Arc::clone(&factory.forwards);
        let backend = factory.load(&spec, Device::Cpu, 1).unwrap();
        let engine = Arc::new(Mutex::new(Engine { backend, encoder: None }));
        let counters = Arc::new(WorkerCounters::default());
        let ctx = Arc::new(PassContext::new(spec, "cpu".into(), Arc::clone(&counters), Arc::new(Metrics::new())));
        let (tx, worker) = sync_channel(capacity);
        let exec = Arc::new(InlineExec::new(Arc::clone(&engine), ctx, 16, capacity, tx, slow_limit));
        Rig { exec, engine, counters, forwards, worker: Mutex::new(worker) }
    }

    /// Offers a one-row job of value `v` (counted pending, as `WorkerHandle::submit` does).
    fn offer(rig: &Rig, v: f32) -> (Offer, oneshot::Receiver<crate::error::Result<JobOutput>>) {
        let (reply, answer) = oneshot::channel();
        let payload = Payload::Tensors(vec![HostTensor::from_f32("x", vec![1, 1], &[v])]);
        let deadline = Deadline::after(Duration::from_secs(30));
        let job = Job { rpc: "Predict", payload, rows: 1, deadline, enqueued: Instant::now(), reply };
        rig.counters.pending.fetch_add(1, Ordering::AcqRel);
        (rig.exec.offer(job), answer)
    }

    fn wait_until(exec: &InlineExec, ready: impl Fn(&InlineState) -> bool) {
        while !ready(&exec.lock()) {
            std::thread::yield_now();
        }
    }

    /// Eight callers on eight threads while the first one's pass is held up: the first runs its
    /// own job, the seven that queued behind it run in one more pass, and each gets its own row.
    #[test]
    fn concurrent_callers_share_passes_and_each_gets_its_own_rows() {
        let rig = Arc::new(rig(FakeFactory::default(), 64, None));
        let held = rig.engine.lock().unwrap();
        let callers: Vec<_> = (1..=8)
            .map(|i| {
                let mine = Arc::clone(&rig);
                let caller = std::thread::spawn(move || {
                    let (offer, answer) = offer(&mine, i as f32);
                    assert!(matches!(offer, Offer::Taken));
                    (i, answer.blocking_recv().unwrap().unwrap())
                });
                // The first caller becomes the combiner, takes its own job and waits for the
                // engine; the others find its pass running and queue.
                wait_until(&rig.exec, |st| st.running && st.queue.len() == i - 1);
                caller
            })
            .collect();
        drop(held);
        let mut sizes = Vec::new();
        for caller in callers {
            let (i, out) = caller.join().unwrap();
            assert_eq!(out.outputs[0].to_f32(), vec![-(i as f32), i as f32], "caller {i} got its own row");
            sizes.push(out.batch_size);
        }
        assert_eq!(rig.forwards.load(Ordering::SeqCst), 2, "two passes for eight callers");
        assert_eq!(sizes, vec![1, 7, 7, 7, 7, 7, 7, 7]);
        assert_eq!(rig.counters.pending.load(Ordering::Acquire), 0);
        assert_eq!(rig.counters.completed.load(Ordering::Acquire), 8);
    }

    #[test]
    fn a_full_queue_refuses_and_a_slow_model_hands_its_queue_to_the_worker() {
        let small = Arc::new(rig(FakeFactory::default(), 2, None));
        let rig = Arc::clone(&small);
        let held = rig.engine.lock().unwrap();
        let first = {
            let rig = Arc::clone(&rig);
            std::thread::spawn(move || offer(&rig, 1.0).1.blocking_recv().unwrap().unwrap())
        };
        wait_until(&rig.exec, |st| st.running);
        while rig.counters.pending.load(Ordering::Acquire) < 1 || !rig.exec.lock().queue.is_empty() {
            std::thread::yield_now();
        }
        let queued: Vec<_> = (0..2).map(|_| offer(&rig, 2.0)).collect();
        assert!(queued.iter().all(|(o, _)| matches!(o, Offer::Taken)));
        assert!(matches!(offer(&rig, 3.0).0, Offer::Full), "capacity 2, both taken");
        drop(held);
        first.join().unwrap();
        for (_, answer) in queued {
            assert_eq!(answer.blocking_recv().unwrap().unwrap().outputs[0].to_f32(), vec![-2.0, 2.0]);
        }

        // Passes of 2 ms of computing against a limit of 100 us: once this thread is past its
        // grace and the first window, a second slow window in a row moves the model.
        let slow = FakeFactory::default();
        let extra = Arc::clone(&slow.extra_delay_us);
        let slow_rig = self::rig(slow, 8, Some(Duration::from_micros(100)));
        let rig = slow_rig;
        for v in 0..(THREAD_GRACE + WINDOW) {
            offer(&rig, v as f32).1.blocking_recv().unwrap().unwrap();
        }
        extra.store(2_000, Ordering::SeqCst);
        let mut passes = 0u32;
        while rig.exec.active() {
            assert!(passes < 2 * WINDOW + 3, "a model that stays slow moves back within two windows");
            let (o, answer) = offer(&rig, passes as f32);
            assert!(matches!(o, Offer::Taken));
            answer.blocking_recv().unwrap().unwrap();
            passes += 1;
        }
        assert!(passes > 3, "one slow window alone does not move it");
        assert!(matches!(offer(&rig, 9.0).0, Offer::Demoted(_)), "later jobs go to the worker's queue");
        assert!(rig.worker.lock().unwrap().try_recv().is_err(), "nothing was left queued here to hand over");
    }

    #[test]
    fn a_window_is_slow_once_more_than_one_percent_of_it_is() {
        let limit = Duration::from_micros(200);
        let mut w = SlowWindow::new(limit);
        let fast = Duration::from_micros(20);
        let slow = Duration::from_micros(300);
        for _ in 0..WINDOW {
            assert!(!w.record(slow), "the first window after the load is not judged");
        }
        for _ in 0..100 {
            assert!(!w.record(fast));
        }
        assert!(!w.record(slow), "one slow pass in a window of 256 is under the p99");
        assert!(!w.record(slow));
        assert!(!w.record(slow), "three are over it, but one slow window is forgiven");
        for _ in 3..(WINDOW - 100) {
            assert!(!w.record(fast));
        }
        assert!(!w.record(slow));
        assert!(!w.record(slow));
        assert!(w.record(slow), "a second slow window in a row: the model has turned slow");
        let mut w = SlowWindow::new(limit);
        for _ in 0..WINDOW {
            w.record(fast);
        }
        for i in 0..(4 * WINDOW) {
            // Two slow passes per window never add up to a slow p99: windows start afresh.
            let took = if i % WINDOW < 2 { slow } else { fast };
            assert!(!w.record(took), "pass {i}");
        }
    }
}

//! A fake backend for tests of the machinery around models (registry, workers, deadlines,
//! overload, shutdown) without libtorch. Its forward pass sums each row's features into two
//! logits `[-sum, sum]`, optionally after sleeping (a delay a test may raise while it serves,
//! to slow a fast-path model down), and counts its loads; an input of 666
//! makes it panic, as a broken native op would, and 668 makes it raise [`WorkerFault`], as a
//! poisoned CUDA context would (the worker stops and the model is reloaded).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use super::{Backend, BackendFactory, DType, HostTensor, ModelSpec, WorkerFault};
use crate::device::Device;
use crate::error::Cause;

/// Creates [`FakeBackend`]s and counts how often it was asked to.
#[derive(Debug, Default, Clone)]
pub struct FakeFactory {
    /// Loads so far, shared with the test that made the factory.
    pub loads: Arc<AtomicUsize>,
    /// How long each load takes.
    pub load_delay: Duration,
    /// How long each forward pass takes.
    pub forward_delay: Duration,
    /// Microseconds of busy computing added to every forward pass of every backend of this
    /// factory, from the moment a test sets it (a model that turns slow while it serves: it
    /// spends CPU time, unlike `forward_delay`, which sleeps).
    pub extra_delay_us: Arc<AtomicU64>,
    /// Rows every backend of this factory has run, shared with the test.
    pub rows_seen: Arc<AtomicUsize>,
    /// Forward passes every backend of this factory has run.
    pub forwards: Arc<AtomicUsize>,
    /// Every load panics (after counting itself), as tch's `set_eval` does on an error.
    pub panic_on_load: bool,
}

/// The fake model.
#[derive(Debug)]
pub struct FakeBackend {
    forward_delay: Duration,
    extra_delay_us: Arc<AtomicU64>,
    rows_seen: Arc<AtomicUsize>,
    forwards: Arc<AtomicUsize>,
}

impl BackendFactory for FakeFactory {
    fn load(&self, _spec: &ModelSpec, _device: Device, _threads: usize) -> Result<Box<dyn Backend>, Cause> {
        std::thread::sleep(self.load_delay);
        self.loads.fetch_add(1, Ordering::SeqCst);
        // As `CModule::set_eval` does on a libtorch error: a panic, not an error value.
        assert!(!self.panic_on_load, "fake backend asked to panic while loading");
        Ok(Box::new(FakeBackend {
            forward_delay: self.forward_delay,
            extra_delay_us: Arc::clone(&self.extra_delay_us),
            rows_seen: Arc::clone(&self.rows_seen),
            forwards: Arc::clone(&self.forwards),
        }))
    }
}

impl Backend for FakeBackend {
    fn forward(&mut self, inputs: Vec<HostTensor>) -> Result<Vec<HostTensor>, Cause> {
        if !self.forward_delay.is_zero() {
            std::thread::sleep(self.forward_delay);
        }
        // Computes until this thread has spent `busy` of CPU time, however busy the host is.
        let busy = Duration::from_micros(self.extra_delay_us.load(Ordering::Relaxed));
        let started = crate::inline::thread_cpu();
        while crate::inline::thread_cpu().saturating_sub(started) < busy {
            std::hint::spin_loop();
        }
        let x = inputs.first().ok_or_else(|| Cause::Output("no input".into()))?;
        if x.dtype != DType::F32 || x.shape.len() != 2 {
            return Err(Cause::Output("fake backend takes one float32 [batch, n] input".into()));
        }
        self.forwards.fetch_add(1, Ordering::SeqCst);
        self.rows_seen.fetch_add(usize::try_from(x.shape[0]).unwrap_or(0), Ordering::SeqCst);
        let values = x.to_f32();
        // A value of 666 makes the fake model panic, as a broken native op would.
        assert!(!values.contains(&666.0), "fake backend asked to panic");
        if values.contains(&668.0) {
            std::panic::panic_any(WorkerFault("fake backend asked to fault its worker".into()));
        }
        let width = usize::try_from(x.shape[1]).map_err(|_| Cause::Output("bad width".into()))?.max(1);
        let logits: Vec<f32> = values
            .chunks(width)
            .flat_map(|row| {
                let s: f32 = row.iter().sum();
                [-s, s]
            })
            .collect();
        Ok(vec![HostTensor::from_f32("output_0", vec![x.shape[0], 2], &logits)])
    }

    fn memory_bytes(&self) -> u64 {
        0
    }
}

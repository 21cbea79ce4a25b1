//! The model registry: which models exist (the [`Catalog`]: repository and routes), and for
//! each (model, version, device) a slot that moves unloaded -> loading -> ready | failed.
//!
//! Loading is lazy and single-flight: the first request for a key starts one worker thread that
//! loads the model; every concurrent request for that key waits on the same outcome. A failed
//! load answers every waiter, records the reason, and is retried by the first request after the
//! back-off. The state change is made by the worker thread itself, so a load finishes and is
//! recorded even when the request that started it has gone away.
//!
//! A version that stops being routed to is *retired*: it keeps answering the requests that
//! already resolved to it, and is unloaded once its queue is empty ([`ModelRegistry::sweep_retired`]).
//!
//! A DashMap guard is never held across `.await`: the slot's `Arc` is cloned out first.

use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use dashmap::DashMap;
use tokio::sync::watch;

use crate::batch::BatchPolicy;
use crate::catalog::Catalog;
use crate::device::{Device, Devices};
use crate::error::{Cause, Error, Result};
use crate::inline::InlinePolicy;
use crate::metrics::Metrics;
use crate::model::{ModelSpec, SharedFactory};
use crate::worker::{Loaded, WorkerHandle, WorkerSettings, spawn_worker};

/// Registry key: a version of a model (one generation of its files) on a device.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ModelKey {
    /// Model name.
    pub model: String,
    /// Version.
    pub version: u64,
    /// Generation of the version's files (see [`ModelSpec::generation`]).
    pub generation: u64,
    /// Device.
    pub device: Device,
}

impl ModelKey {
    /// The key of `spec` on `device`.
    pub fn of(spec: &ModelSpec, device: Device) -> Self {
        ModelKey { model: spec.name.clone(), version: spec.version, generation: spec.generation, device }
    }
}

/// Settings the registry needs.
#[derive(Debug, Clone)]
pub struct RegistryConfig {
    /// Jobs a worker queue holds before requests are refused; 0 = sixteen batches' worth.
    pub queue_capacity: usize,
    /// Overrides every device's default tokens per text.
    pub max_text_length: Option<usize>,
    /// libtorch intra-op threads per worker.
    pub threads_per_worker: usize,
    /// How long a failed load is remembered before a request may retry it.
    pub load_retry_backoff: Duration,
    /// Overrides every model's and device's largest batch (1 = batching off).
    pub max_batch_size: Option<usize>,
    /// Most (model, device) pairs resident at once; past it the least recently used idle one
    /// is evicted.
    pub max_loaded_models: usize,
    /// Parameter and buffer bytes allowed across resident models; 0 = no budget.
    pub memory_budget_bytes: u64,
    /// Warm-up forward passes after each load, before the model serves.
    pub warmup_runs: usize,
    /// The fast path: the server's threshold (a manifest may override it) and whether a test
    /// forces one executor.
    pub inline: InlinePolicy,
}

impl RegistryConfig {
    /// Defaults for tests: room for everything, one warm-up pass.
    pub fn for_tests() -> Self {
        RegistryConfig {
            queue_capacity: 64,
            max_text_length: None,
            threads_per_worker: 1,
            load_retry_backoff: Duration::from_secs(5),
            max_batch_size: None,
            max_loaded_models: 16,
            memory_budget_bytes: 0,
            warmup_runs: 1,
            inline: InlinePolicy::default(),
        }
    }
}

/// A model's state on one device, as operators see it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LoadState {
    /// Not resident.
    Unloaded,
    /// A load is running.
    Loading,
    /// Resident and serving.
    Ready,
    /// The last load failed.
    Failed,
}

/// One (model, device) as `GetModel` reports it.
#[derive(Debug, Clone)]
pub struct DeviceStatus {
    /// The device.
    pub device: Device,
    /// Current state.
    pub state: LoadState,
    /// Reason of the last failure (log text, not for clients of Predict).
    pub error: String,
    /// Duration of the last successful load.
    pub load_ms: u64,
    /// Last request, unix ms; 0 = never.
    pub last_used_unix_ms: i64,
    /// Parameter and buffer bytes while resident.
    pub memory_bytes: u64,
    /// Never evicted.
    pub pinned: bool,
    /// Successful loads so far.
    pub loads: u64,
    /// Evictions so far.
    pub evictions: u64,
    /// What the model runs with on this device.
    pub settings: Settings,
}

/// What requests run with on a device.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Settings {
    /// Largest batch.
    pub max_batch_size: usize,
    /// Default tokens per text (0 for a model that takes no text).
    pub max_text_length: usize,
    /// libtorch intra-op threads of the worker.
    pub intra_op_threads: usize,
    /// `fp16` on a GPU where the manifest allows it, else `fp32`.
    pub precision: &'static str,
    /// Where a resident model's passes run: `inline` (the fast path) or `worker`; empty when
    /// not resident.
    pub executor: &'static str,
}

type LoadOutcome = Option<std::result::Result<WorkerHandle, Arc<Cause>>>;

enum SlotState {
    Unloaded,
    /// Waiters clone the receiver and wait for `Some`.
    Loading(watch::Receiver<LoadOutcome>),
    Ready {
        handle: WorkerHandle,
        load_ms: u64,
        memory_bytes: u64,
    },
    Failed {
        cause: Arc<Cause>,
        at: Instant,
    },
}

#[derive(Default)]
struct Slot {
    state: Mutex<Option<SlotState>>,
    last_used_unix_ms: AtomicI64,
    loads: AtomicU64,
    evictions: AtomicU64,
    pinned: AtomicBool,
    /// The manifest's `pin`, recorded at load.
    spec_pin: AtomicBool,
    /// When the version stopped being routed to (unix ms); 0 = it is not retired.
    retired_unix_ms: AtomicI64,
}

impl Slot {
    fn lock(&self) -> MutexGuard<'_, Option<SlotState>> {
        // A poisoned lock only means a thread panicked mid-update; the state is still a value.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// Owns every model slot and worker thread.
pub struct ModelRegistry {
    catalog: Catalog,
    devices: Devices,
    factory: SharedFactory,
    config: RegistryConfig,
    slots: DashMap<ModelKey, Arc<Slot>>,
    metrics: Arc<Metrics>,
    /// Worker threads, joined at shutdown.
    threads: Mutex<Vec<JoinHandle<()>>>,
    closed: AtomicBool,
}

fn now_unix_ms() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX)).unwrap_or(0)
}

impl ModelRegistry {
    /// A registry over `repo`, loading with `factory`.
    pub fn new(
        catalog: Catalog,
        devices: Devices,
        factory: SharedFactory,
        config: RegistryConfig,
        metrics: Arc<Metrics>,
    ) -> Self {
        ModelRegistry {
            catalog,
            devices,
            factory,
            config,
            slots: DashMap::new(),
            metrics,
            threads: Mutex::new(Vec::new()),
            closed: AtomicBool::new(false),
        }
    }

    /// The repository and routes.
    pub fn catalog(&self) -> &Catalog {
        &self.catalog
    }

    /// libtorch intra-op threads each worker runs with.
    pub fn threads_per_worker(&self) -> usize {
        self.config.threads_per_worker
    }

    /// The devices this server has.
    pub fn devices(&self) -> &Devices {
        &self.devices
    }

    /// The version a request that names `name` (possibly `name@version`) and nothing else
    /// runs on.
    pub fn spec(&self, name: &str) -> Result<Arc<ModelSpec>> {
        self.catalog.resolve(name, "", "", false)
    }

    /// The metrics the registry writes.
    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }

    fn slot(&self, key: &ModelKey) -> Arc<Slot> {
        // Clone the Arc out so the shard lock is released before anything else happens.
        Arc::clone(self.slots.entry(key.clone()).or_default().value())
    }

    /// The worker for `spec` on `device`, loading it first if needed (single flight).
    pub async fn get_or_load(&self, spec: &Arc<ModelSpec>, device: Device) -> Result<WorkerHandle> {
        if self.closed.load(Ordering::Acquire) {
            return Err(Error::ShuttingDown);
        }
        let key = ModelKey::of(spec, device);
        let slot = self.slot(&key);
        slot.last_used_unix_ms.store(now_unix_ms(), Ordering::Relaxed);
        let mut rx = {
            let mut state = slot.lock();
            match state.as_ref() {
                // A worker that died (it never should) is replaced by a fresh load. A retired
                // version still answers requests that resolved to it before it was retired.
                Some(SlotState::Ready { handle, .. }) if handle.is_alive() => return Ok(handle.clone()),
                Some(SlotState::Loading(rx)) => rx.clone(),
                Some(SlotState::Failed { at, cause }) if at.elapsed() < self.config.load_retry_backoff => {
                    return Err(load_error(spec, device, Arc::new(Cause::RecentFailure(cause.to_string()))));
                }
                _ => {
                    let (tx, rx) = watch::channel(None);
                    *state = Some(SlotState::Loading(rx.clone()));
                    slot.retired_unix_ms.store(0, Ordering::Relaxed);
                    slot.spec_pin.store(spec.pin, Ordering::Relaxed);
                    drop(state);
                    self.make_room(&key);
                    self.start_load(Arc::clone(spec), device, Arc::clone(&slot), tx);
                    rx
                }
            }
        };
        let outcome = rx
            .wait_for(Option::is_some)
            .await
            .map_err(|_| load_error(spec, device, Arc::new(Cause::Vanished)))?
            .clone();
        match outcome {
            Some(Ok(handle)) => {
                self.make_room(&key);
                Ok(handle)
            }
            Some(Err(cause)) => Err(load_error(spec, device, cause)),
            None => Err(load_error(spec, device, Arc::new(Cause::Vanished))),
        }
    }

    /// Starts the load; its outcome (a worker, or why not) lands in the slot and in `tx`
    /// whatever happens to the thread: a panic, or a thread that could not be spawned, leaves
    /// the slot `Failed` with the reason, never `Loading`.
    fn start_load(&self, spec: Arc<ModelSpec>, device: Device, slot: Arc<Slot>, tx: watch::Sender<LoadOutcome>) {
        let started = Instant::now();
        let name = spec.name.clone();
        let version = spec.version;
        let metrics = Arc::clone(&self.metrics);
        let (spec_max_batch, spec_delay) = (spec.max_batch_size, spec.max_queue_delay);
        let inline = self.inline_policy(&spec);
        let budget = self.config.memory_budget_bytes;
        let on_loaded = move |outcome: std::result::Result<Loaded, Cause>| {
            // A model larger than the whole memory budget is refused (its handle is dropped,
            // which ends the worker and frees the model) rather than evicting everything else.
            let outcome = outcome.and_then(|loaded| {
                if budget > 0 && loaded.memory_bytes > budget {
                    Err(Cause::OverBudget { needed: loaded.memory_bytes, budget })
                } else {
                    Ok(loaded)
                }
            });
            let load_ms = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX);
            let mut state = slot.lock();
            match outcome {
                Ok(Loaded { handle, memory_bytes }) => {
                    tracing::info!(model = %name, version, %device, load_ms, memory_bytes, "model loaded");
                    metrics.model_loads.with_label_values(&[&name, &device.label(), "ok"]).inc();
                    metrics
                        .model_load_duration
                        .with_label_values(&[&name, &device.label()])
                        .observe(started.elapsed().as_secs_f64());
                    slot.loads.fetch_add(1, Ordering::Relaxed);
                    *state = Some(SlotState::Ready { handle: handle.clone(), load_ms, memory_bytes });
                    tx.send_replace(Some(Ok(handle)));
                }
                Err(cause) => {
                    tracing::error!(model = %name, version, %device, load_ms, cause = %cause, "model failed to load");
                    metrics.model_loads.with_label_values(&[&name, &device.label(), "error"]).inc();
                    let cause = Arc::new(cause);
                    *state = Some(SlotState::Failed { cause: Arc::clone(&cause), at: Instant::now() });
                    tx.send_replace(Some(Err(cause)));
                }
            }
        };
        let batch = self.batch_size(spec_max_batch, device);
        let settings = WorkerSettings {
            threads: self.config.threads_per_worker,
            capacity: match self.config.queue_capacity {
                0 => 16 * batch,
                n => n,
            },
            policy: BatchPolicy { max_rows: batch, max_delay: spec_delay },
            warmup_runs: self.config.warmup_runs,
            metrics: Arc::clone(&self.metrics),
            inline,
        };
        if let Some(join) = spawn_worker(spec, device, Arc::clone(&self.factory), settings, Box::new(on_loaded)) {
            let mut threads = self.threads.lock().unwrap_or_else(|p| p.into_inner());
            threads.retain(|t| !t.is_finished());
            threads.push(join);
        }
    }

    /// The fast-path threshold of `spec`: the manifest's `inline_max_us` where it sets one,
    /// else the server's; a server threshold of zero turns the fast path off for every model.
    fn inline_policy(&self, spec: &ModelSpec) -> InlinePolicy {
        let server = self.config.inline;
        match spec.inline_max_us {
            Some(us) if !server.threshold.is_zero() => InlinePolicy { threshold: Duration::from_micros(us), ..server },
            _ => server,
        }
    }

    /// Default tokens per text on `device`: `--max-text-length`, else the device kind's default.
    pub fn text_length(&self, device: Device) -> usize {
        self.config.max_text_length.unwrap_or_else(|| device.default_max_text_length())
    }

    fn batch_size(&self, spec_max: Option<usize>, device: Device) -> usize {
        self.config.max_batch_size.or(spec_max).unwrap_or_else(|| device.default_max_batch_size())
    }

    /// Every slot with its state summarised, for eviction decisions.
    fn resident(&self) -> Vec<Resident> {
        let slots: Vec<(ModelKey, Arc<Slot>)> =
            self.slots.iter().map(|e| (e.key().clone(), Arc::clone(e.value()))).collect();
        slots
            .into_iter()
            .filter_map(|(key, slot)| {
                let pinned = slot.spec_pin.load(Ordering::Relaxed) || slot.pinned.load(Ordering::Relaxed);
                let last_used = slot.last_used_unix_ms.load(Ordering::Relaxed);
                match slot.lock().as_ref() {
                    Some(SlotState::Ready { handle, memory_bytes, .. }) => Some(Resident {
                        key,
                        loading: false,
                        idle: handle.pending() == 0,
                        pinned,
                        last_used,
                        memory_bytes: *memory_bytes,
                    }),
                    Some(SlotState::Loading(_)) => {
                        Some(Resident { key, loading: true, idle: false, pinned, last_used, memory_bytes: 0 })
                    }
                    _ => None,
                }
            })
            .collect()
    }

    /// Evicts least-recently-used idle, unpinned models (never `keep`) until the resident count
    /// and memory are within the limits. When nothing can be evicted, the limit is exceeded for
    /// now and a warning says so.
    fn make_room(&self, keep: &ModelKey) {
        let mut resident = self.resident();
        loop {
            let count = resident.len();
            let bytes: u64 = resident.iter().map(|r| r.memory_bytes).sum();
            let over_count = count > self.config.max_loaded_models;
            let over_bytes = self.config.memory_budget_bytes > 0 && bytes > self.config.memory_budget_bytes;
            if !over_count && !over_bytes {
                return;
            }
            let victim = resident
                .iter()
                .enumerate()
                .filter(|(_, r)| !r.loading && r.idle && !r.pinned && &r.key != keep)
                .min_by_key(|(_, r)| r.last_used)
                .map(|(i, _)| i);
            let Some(i) = victim else {
                tracing::warn!(count, bytes, "over the model limits, but every resident model is busy or pinned");
                return;
            };
            let r = resident.swap_remove(i);
            let reason = if over_count { "max_loaded_models" } else { "memory_budget" };
            self.evict(&r.key, reason);
        }
    }

    /// Unloads one ready slot if it is still idle; returns whether it did.
    fn evict(&self, key: &ModelKey, reason: &str) -> bool {
        let Some(slot) = self.slots.get(key).map(|s| Arc::clone(s.value())) else { return false };
        let mut state = slot.lock();
        let idle = matches!(state.as_ref(), Some(SlotState::Ready { handle, .. }) if handle.pending() == 0);
        if idle {
            // Dropping the handle ends the worker once in-flight clones are gone; it then
            // drops the model and its memory.
            *state = Some(SlotState::Unloaded);
            slot.evictions.fetch_add(1, Ordering::Relaxed);
            self.metrics.model_evictions.with_label_values(&[&key.model, &key.device.label(), reason]).inc();
            tracing::info!(model = %key.model, version = key.version, device = %key.device, reason, "model evicted");
        }
        idle
    }

    /// Resident models as gauges see them: (key, parameter bytes, jobs pending); loading
    /// models count with zero bytes.
    pub fn resident_figures(&self) -> Vec<(ModelKey, u64, u64)> {
        let slots: Vec<(ModelKey, Arc<Slot>)> =
            self.slots.iter().map(|e| (e.key().clone(), Arc::clone(e.value()))).collect();
        slots
            .into_iter()
            .filter_map(|(key, slot)| match slot.lock().as_ref() {
                Some(SlotState::Ready { handle, memory_bytes, .. }) => Some((key, *memory_bytes, handle.pending())),
                Some(SlotState::Loading(_)) => Some((key, 0, 0)),
                _ => None,
            })
            .collect()
    }

    /// Marks a (model version, device) as pinned (never evicted) or not.
    pub fn set_pinned(&self, spec: &ModelSpec, device: Device, pinned: bool) {
        self.slot(&ModelKey::of(spec, device)).pinned.store(pinned, Ordering::Relaxed);
    }

    /// Every slot of `model` (all versions, or only `version`), with its key.
    fn slots_of(&self, model: &str, version: Option<u64>) -> Vec<(ModelKey, Arc<Slot>)> {
        self.slots
            .iter()
            .filter(|e| e.key().model == model && version.is_none_or(|v| v == e.key().version))
            .map(|e| (e.key().clone(), Arc::clone(e.value())))
            .collect()
    }

    /// Unloads `model` (every version, or `version`) from `device`, or from every device;
    /// unpins it. A model still loading is left to finish (its state then shows READY or FAILED).
    pub fn unload(&self, model: &str, version: Option<u64>, device: Option<Device>) -> usize {
        let mut unloaded = 0;
        for (key, slot) in self.slots_of(model, version) {
            if device.is_some_and(|want| want != key.device) {
                continue;
            }
            slot.pinned.store(false, Ordering::Relaxed);
            let mut state = slot.lock();
            if matches!(state.as_ref(), Some(SlotState::Ready { .. } | SlotState::Failed { .. })) {
                *state = Some(SlotState::Unloaded);
                unloaded += 1;
                tracing::info!(model = %key.model, version = key.version, device = %key.device, "model unloaded");
            }
        }
        unloaded
    }

    /// Retires every slot of `model` for which `keep` is false: each keeps answering what is
    /// already queued, and [`ModelRegistry::sweep_retired`] unloads it once idle. Pinned slots
    /// stay (unless the model is gone from the repository: `force`).
    pub fn retire(&self, model: &str, keep: impl Fn(&ModelKey) -> bool, force: bool) {
        let now = now_unix_ms();
        for (key, slot) in self.slots_of(model, None) {
            let pinned = slot.pinned.load(Ordering::Relaxed) || slot.spec_pin.load(Ordering::Relaxed);
            if keep(&key) || (pinned && !force) {
                continue;
            }
            if matches!(slot.lock().as_ref(), Some(SlotState::Ready { .. } | SlotState::Loading(_))) {
                let _ = slot.retired_unix_ms.compare_exchange(0, now, Ordering::AcqRel, Ordering::Relaxed);
                tracing::info!(model = %key.model, version = key.version, device = %key.device, "version retired; unloads once its queue drains");
            }
            if force {
                slot.pinned.store(false, Ordering::Relaxed);
                slot.spec_pin.store(false, Ordering::Relaxed);
            }
        }
    }

    /// Unloads retired slots that have been idle since at least `grace` after retirement;
    /// returns how many.
    pub fn sweep_retired(&self, grace: Duration) -> usize {
        let cutoff = now_unix_ms() - i64::try_from(grace.as_millis()).unwrap_or(i64::MAX);
        let slots: Vec<(ModelKey, Arc<Slot>)> =
            self.slots.iter().map(|e| (e.key().clone(), Arc::clone(e.value()))).collect();
        let mut swept = 0;
        for (key, slot) in slots {
            let at = slot.retired_unix_ms.load(Ordering::Acquire);
            if at == 0 || at > cutoff {
                continue;
            }
            let mut state = slot.lock();
            match state.as_ref() {
                Some(SlotState::Ready { handle, .. }) if handle.pending() == 0 => {
                    *state = Some(SlotState::Unloaded);
                    slot.retired_unix_ms.store(0, Ordering::Release);
                    swept += 1;
                    let served = self.catalog.entry(&key.model).is_ok_and(|e| e.versions.contains_key(&key.version));
                    if !served {
                        self.metrics.forget_version(&key.model, key.version);
                    }
                    tracing::info!(model = %key.model, version = key.version, device = %key.device, "retired version unloaded");
                }
                Some(SlotState::Ready { .. } | SlotState::Loading(_)) => {}
                _ => slot.retired_unix_ms.store(0, Ordering::Release),
            }
        }
        swept
    }

    /// Where `version` of `model` is loading or loaded (any generation), for versions that are
    /// no longer served but still finishing their queue.
    pub fn resident_states(&self, model: &str, version: u64) -> Vec<(Device, LoadState)> {
        self.slots_of(model, Some(version))
            .into_iter()
            .filter_map(|(k, slot)| match slot.lock().as_ref() {
                Some(SlotState::Ready { .. }) => Some((k.device, LoadState::Ready)),
                Some(SlotState::Loading(_)) => Some((k.device, LoadState::Loading)),
                _ => None,
            })
            .collect()
    }

    /// Devices where some version of `model` is ready.
    pub fn ready_devices(&self, model: &str) -> Vec<Device> {
        let mut devices: Vec<Device> = self
            .slots_of(model, None)
            .into_iter()
            .filter(|(_, slot)| matches!(slot.lock().as_ref(), Some(SlotState::Ready { .. })))
            .map(|(k, _)| k.device)
            .collect();
        devices.sort();
        devices.dedup();
        devices
    }

    /// Unloads unpinned, idle models unused for `idle_for`; returns how many.
    pub fn unload_idle(&self, idle_for: Duration) -> usize {
        let cutoff = now_unix_ms() - i64::try_from(idle_for.as_millis()).unwrap_or(i64::MAX);
        self.resident()
            .into_iter()
            .filter(|r| !r.loading && r.idle && !r.pinned && r.last_used < cutoff)
            .filter(|r| self.evict(&r.key, "idle"))
            .count()
    }

    /// Resolves `auto` to a device: a GPU when there is one (the one where the model is already
    /// resident, else the one with fewest resident models), else the CPU.
    pub fn pick_device(&self, spec: &ModelSpec, req: crate::device::DeviceRequest) -> Result<Device> {
        use crate::device::DeviceRequest;
        if req != DeviceRequest::Auto || self.devices.gpu_count() == 0 {
            return self.devices.resolve(req);
        }
        let resident = self.resident();
        let gpus: Vec<Device> = self.devices.all().into_iter().filter(|d| *d != Device::Cpu).collect();
        if let Some(r) = resident.iter().find(|r| r.key.model == spec.name && r.key.device != Device::Cpu) {
            return Ok(r.key.device);
        }
        Ok(gpus
            .into_iter()
            .min_by_key(|g| resident.iter().filter(|r| r.key.device == *g).count())
            .unwrap_or(Device::Cpu))
    }

    /// What a model runs with on `device`: the device kind's defaults, overridden by the
    /// manifest (`spec`, when given) and then by the server's flags. GetModel and Stats both
    /// read it here, so they always agree.
    pub fn settings(&self, spec: Option<&ModelSpec>, device: Device) -> Settings {
        Settings {
            max_batch_size: self.batch_size(spec.and_then(|s| s.max_batch_size), device),
            max_text_length: match spec {
                Some(s) => s.text.as_ref().map_or(0, |t| self.text_length(device).min(t.max_length)),
                None => self.text_length(device),
            },
            intra_op_threads: self.config.threads_per_worker,
            precision: if device != Device::Cpu && spec.is_none_or(|s| s.fp16) { "fp16" } else { "fp32" },
            executor: "",
        }
    }

    /// The state of `spec` on every device this server has.
    pub fn status(&self, spec: &ModelSpec) -> Vec<DeviceStatus> {
        self.devices
            .all()
            .into_iter()
            .map(|device| {
                let key = ModelKey::of(spec, device);
                let slot = self.slots.get(&key).map(|s| Arc::clone(s.value()));
                let mut st = DeviceStatus {
                    device,
                    state: LoadState::Unloaded,
                    error: String::new(),
                    load_ms: 0,
                    last_used_unix_ms: 0,
                    memory_bytes: 0,
                    pinned: spec.pin,
                    loads: 0,
                    evictions: 0,
                    settings: self.settings(Some(spec), device),
                };
                if let Some(slot) = slot {
                    st.last_used_unix_ms = slot.last_used_unix_ms.load(Ordering::Relaxed);
                    st.loads = slot.loads.load(Ordering::Relaxed);
                    st.evictions = slot.evictions.load(Ordering::Relaxed);
                    st.pinned |= slot.pinned.load(Ordering::Relaxed);
                    match slot.lock().as_ref() {
                        None | Some(SlotState::Unloaded) => {}
                        Some(SlotState::Loading(_)) => st.state = LoadState::Loading,
                        Some(SlotState::Ready { handle, load_ms, memory_bytes }) => {
                            st.state = LoadState::Ready;
                            st.settings.executor = handle.executor();
                            st.load_ms = *load_ms;
                            st.memory_bytes = *memory_bytes;
                        }
                        Some(SlotState::Failed { cause, .. }) => {
                            st.state = LoadState::Failed;
                            // The first line: libtorch appends its C++ stack, which the log has.
                            st.error = cause.to_string().lines().next().unwrap_or_default().to_owned();
                        }
                    }
                }
                st
            })
            .collect()
    }

    /// Stops taking work, drops every worker handle so the threads finish their queues and
    /// exit, and joins them. Blocking: call from `spawn_blocking` or a plain thread.
    pub fn shutdown(&self) {
        self.closed.store(true, Ordering::Release);
        for slot in self.slots.iter() {
            *slot.value().lock() = Some(SlotState::Unloaded);
        }
        let threads = std::mem::take(&mut *self.threads.lock().unwrap_or_else(|p| p.into_inner()));
        for t in threads {
            let name = t.thread().name().unwrap_or("worker").to_owned();
            if t.join().is_err() {
                tracing::error!(thread = %name, "worker thread panicked");
            }
        }
    }
}

/// A resident slot as eviction sees it.
struct Resident {
    key: ModelKey,
    loading: bool,
    idle: bool,
    pinned: bool,
    last_used: i64,
    memory_bytes: u64,
}

fn load_error(spec: &ModelSpec, device: Device, cause: Arc<Cause>) -> Error {
    Error::ModelLoad { model: spec.name.clone(), device: device.to_string(), cause }
}

#[cfg(test)]
mod tests;

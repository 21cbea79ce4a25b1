//! Every Prometheus metric, defined once, on a private registry (the global default registry
//! would make parallel test servers collide). Names follow Prometheus conventions (`_total`,
//! `_seconds`, `_bytes`); labels stay low-cardinality: a model name a client made up is
//! labelled `_unknown`, never the raw string, and errors are labelled by kind, never by text.
//!
//! Recorded at the boundary (`boundary.rs`), in the worker (queue, compute, batch) and in
//! the registry (loads, evictions, residency). Served as text by `http.rs`.

use std::collections::HashMap;
use std::sync::{Arc, OnceLock, RwLock};

use prometheus::{
    Encoder, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry,
    TextEncoder, exponential_buckets,
};

/// Label for a model name that is not in the repository.
pub const UNKNOWN_MODEL: &str = "_unknown";

/// All of torchwire's metrics.
pub struct Metrics {
    registry: Registry,
    /// Whether requests record anything (`--metrics-recording`); gauges read at scrape time
    /// and load counters are kept either way.
    pub recording: bool,
    /// Finished RPCs by rpc, model and gRPC code.
    pub requests: IntCounterVec,
    /// RPC latency as the server saw it.
    pub request_duration: HistogramVec,
    /// Time jobs waited in a worker queue.
    pub queue_duration: HistogramVec,
    /// Forward-pass time per batch.
    pub compute_duration: HistogramVec,
    /// Rows (or texts) per forward pass.
    pub batch_size: HistogramVec,
    /// Jobs queued or running per worker.
    pub queue_depth: IntGaugeVec,
    /// RPCs being handled now.
    pub inflight: IntGaugeVec,
    /// Model loads by outcome (`ok`, `error`).
    pub model_loads: IntCounterVec,
    /// Load durations (successful loads, warm-up included).
    pub model_load_duration: HistogramVec,
    /// Evictions by reason (`max_loaded_models`, `memory_budget`, `idle`).
    pub model_evictions: IntCounterVec,
    /// Resident (model, device) pairs per device.
    pub models_loaded: IntGaugeVec,
    /// Parameter bytes of each resident model.
    pub model_memory: IntGaugeVec,
    /// Requests refused before any model work, by reason.
    pub rejected: IntCounterVec,
    /// Deadline expiries by stage (`queue`, `compute`, `handler`).
    pub deadline_exceeded: IntCounterVec,
    /// Tokens fed to text models.
    pub tokens: IntCounterVec,
    /// Texts cut to the max length.
    pub truncated_texts: IntCounterVec,
    /// Inference requests by model, model version and gRPC code.
    pub version_requests: IntCounterVec,
    /// Inference latency by model and model version.
    pub version_request_duration: HistogramVec,
    /// Route changes by model and outcome (`ok`, `refused`).
    pub version_swaps: IntCounterVec,
    /// Fast-path models moved back to their worker thread because their passes turned slow.
    pub inline_demotions: IntCounterVec,
    /// Constant 1, labelled with the version and libtorch version.
    pub build_info: IntGaugeVec,
    /// When the process started, for rates in dashboards.
    pub start_time: IntGauge,
    /// Per-call handles by rpc and model label, resolved on a pair's first call (each
    /// `with_label_values` hashes its labels and takes a lock; a call needs three).
    calls: RwLock<HashMap<&'static str, HashMap<String, CallHandles>>>,
}

/// The metrics every call of one rpc and model label records.
#[derive(Clone)]
pub struct CallHandles {
    /// The rpc label.
    pub rpc: &'static str,
    /// `inflight{rpc}`.
    pub inflight: IntGauge,
    /// `requests_total{rpc, model, code="OK"}`, made on the first OK answer (a series appears
    /// only once it has happened); other codes are looked up when they happen.
    pub ok: Arc<OnceLock<IntCounter>>,
    /// `request_duration_seconds{rpc, model}`.
    pub duration: Histogram,
}

impl Metrics {
    /// Drops the per-version series of a version that left the repository, so the `version`
    /// label only ever holds versions that exist.
    pub fn forget_version(&self, model: &str, version: u64) {
        let v = version.to_string();
        for code in (0..=16).map(|c| crate::boundary::code_name(tonic::Code::from_i32(c))) {
            let _ = self.version_requests.remove_label_values(&[model, &v, code]);
        }
        let _ = self.version_request_duration.remove_label_values(&[model, &v]);
    }
}

/// The cache's Prometheus metrics.
pub struct CacheMetrics {
    /// Rows looked up, by model and result (`hit`, `redis_hit`, `coalesced`, `miss`).
    pub lookups: IntCounterVec,
    /// Rows evicted from the in-process tier, by model.
    pub evictions: IntCounterVec,
    /// Bytes the in-process tier holds.
    pub bytes: IntGauge,
    /// Redis calls that did not help, by model and kind (`timeout`, `error`, `garbage`,
    /// `oversized`, `skipped`, `write_skipped`).
    pub redis_errors: IntCounterVec,
    /// Redis call latency by operation (`get`, `set`).
    pub redis_duration: HistogramVec,
}

impl Metrics {
    /// The response cache's metrics, registered on this registry (called once, by the cache).
    pub fn cache_metrics(&self) -> CacheMetrics {
        let registry = &self.registry;
        let counter = |n: &str, h: &str, l: &[&str]| {
            let c = IntCounterVec::new(Opts::new(n, h), l).expect("constant metric definition; this is a bug");
            registry.register(Box::new(c.clone())).expect("registered once; this is a bug");
            c
        };
        let bytes = IntGauge::new("torchwire_cache_bytes", "Bytes the in-process response cache holds.")
            .expect("constant metric definition; this is a bug");
        registry.register(Box::new(bytes.clone())).expect("registered once; this is a bug");
        let buckets = prometheus::exponential_buckets(5e-5, 2.0, 16).expect("constant buckets; this is a bug");
        let redis_duration = HistogramVec::new(
            prometheus::HistogramOpts::new("torchwire_cache_redis_duration_seconds", "Redis cache tier call latency.")
                .buckets(buckets),
            &["op"],
        )
        .expect("constant metric definition; this is a bug");
        registry.register(Box::new(redis_duration.clone())).expect("registered once; this is a bug");
        CacheMetrics {
            lookups: counter(
                "torchwire_cache_lookups_total",
                "Rows and texts looked up in the response cache, by result (hit, redis_hit, coalesced, miss).",
                &["model", "result"],
            ),
            evictions: counter(
                "torchwire_cache_evictions_total",
                "Rows evicted from the in-process response cache.",
                &["model"],
            ),
            bytes,
            redis_errors: counter(
                "torchwire_cache_redis_errors_total",
                "Redis cache tier calls that fell through to compute, by kind.",
                &["model", "kind"],
            ),
            redis_duration,
        }
    }
}

fn buckets(start: f64, factor: f64, count: usize) -> Vec<f64> {
    exponential_buckets(start, factor, count).expect("constant bucket parameters are valid; this is a bug")
}

impl Metrics {
    /// Creates and registers every metric, recording on.
    pub fn new() -> Self {
        Self::with_recording(true)
    }

    /// Creates and registers every metric; with `recording` false the request path records
    /// nothing (for measuring what recording costs).
    pub fn with_recording(recording: bool) -> Self {
        let registry = Registry::new();
        let latency = buckets(1e-5, 2.0, 23); // 10 us .. ~42 s
        macro_rules! reg {
            ($m:expr) => {{
                let m = $m.expect("metric definitions are constant; this is a bug");
                registry.register(Box::new(m.clone())).expect("each metric is registered once; this is a bug");
                m
            }};
        }
        let counter = |name: &str, help: &str, labels: &[&str]| IntCounterVec::new(Opts::new(name, help), labels);
        let gauge = |name: &str, help: &str, labels: &[&str]| IntGaugeVec::new(Opts::new(name, help), labels);
        let histogram = |name: &str, help: &str, labels: &[&str], b: &[f64]| {
            HistogramVec::new(HistogramOpts::new(name, help).buckets(b.to_vec()), labels)
        };
        let m = Metrics {
            requests: reg!(counter(
                "torchwire_requests_total",
                "Finished RPCs by rpc, model and gRPC code.",
                &["rpc", "model", "code"]
            )),
            version_requests: reg!(counter(
                "torchwire_version_requests_total",
                "Inference requests by model, model version and gRPC code.",
                &["model", "version", "code"]
            )),
            version_request_duration: reg!(histogram(
                "torchwire_version_request_duration_seconds",
                "Inference latency from arrival to answer, by model version.",
                &["model", "version"],
                &latency
            )),
            version_swaps: reg!(counter(
                "torchwire_version_swaps_total",
                "Changes of the versions a model's requests go to, by outcome (ok, refused).",
                &["model", "outcome"]
            )),
            request_duration: reg!(histogram(
                "torchwire_request_duration_seconds",
                "RPC latency from arrival to answer.",
                &["rpc", "model"],
                &latency
            )),
            queue_duration: reg!(histogram(
                "torchwire_queue_duration_seconds",
                "Time a job waited in its model's queue.",
                &["model", "device"],
                &latency
            )),
            compute_duration: reg!(histogram(
                "torchwire_compute_duration_seconds",
                "Forward-pass time of one batch (tokenisation included for text).",
                &["model", "device"],
                &latency
            )),
            batch_size: reg!(histogram(
                "torchwire_batch_size",
                "Rows or texts per forward pass.",
                &["model", "device"],
                &buckets(1.0, 2.0, 9)
            )),
            queue_depth: reg!(gauge(
                "torchwire_queue_depth",
                "Jobs queued or running per worker.",
                &["model", "device"]
            )),
            inflight: reg!(gauge("torchwire_inflight_requests", "RPCs being handled now.", &["rpc"])),
            model_loads: reg!(counter(
                "torchwire_model_loads_total",
                "Model loads by outcome.",
                &["model", "device", "outcome"]
            )),
            model_load_duration: reg!(histogram(
                "torchwire_model_load_duration_seconds",
                "Model load time, warm-up included.",
                &["model", "device"],
                &buckets(1e-3, 2.0, 18)
            )),
            model_evictions: reg!(counter(
                "torchwire_model_evictions_total",
                "Models unloaded to make room or because idle.",
                &["model", "device", "reason"]
            )),
            models_loaded: reg!(gauge("torchwire_models_loaded", "Resident models per device.", &["device"])),
            model_memory: reg!(gauge(
                "torchwire_model_memory_bytes",
                "Parameter bytes of each resident model.",
                &["model", "device"]
            )),
            rejected: reg!(counter(
                "torchwire_rejected_requests_total",
                "Requests refused before model work, by reason.",
                &["rpc", "model", "reason"]
            )),
            deadline_exceeded: reg!(counter(
                "torchwire_deadline_exceeded_total",
                "Deadline expiries by stage.",
                &["rpc", "model", "stage"]
            )),
            tokens: reg!(counter("torchwire_tokens_total", "Tokens fed to text models.", &["model"])),
            truncated_texts: reg!(counter(
                "torchwire_truncated_texts_total",
                "Texts cut to the max length.",
                &["model"]
            )),
            inline_demotions: reg!(counter(
                "torchwire_inline_demotions_total",
                "Fast-path models moved back to their worker thread (passes turned slow).",
                &["model", "device"]
            )),
            build_info: reg!(gauge("torchwire_build_info", "Build information; always 1.", &["version", "libtorch"])),
            start_time: reg!(IntGauge::new("torchwire_start_time_seconds", "Unix time the server started.")),
            calls: RwLock::default(),
            registry,
            recording,
        };
        m.build_info.with_label_values(&[env!("CARGO_PKG_VERSION"), "2.13.0"]).set(1);
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs());
        m.start_time.set(i64::try_from(now).unwrap_or(0));
        #[cfg(target_os = "linux")]
        {
            let pc = prometheus::process_collector::ProcessCollector::for_self();
            if let Err(e) = m.registry.register(Box::new(pc)) {
                tracing::warn!(error = %e, "process metrics unavailable");
            }
        }
        m
    }

    /// The handles a call of `rpc` on the model labelled `model` records into.
    pub fn call(&self, rpc: &'static str, model: &str) -> CallHandles {
        let read = self.calls.read().unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(h) = read.get(rpc).and_then(|m| m.get(model)) {
            return h.clone();
        }
        drop(read);
        let h = CallHandles {
            rpc,
            inflight: self.inflight.with_label_values(&[rpc]),
            ok: Arc::default(),
            duration: self.request_duration.with_label_values(&[rpc, model]),
        };
        let mut write = self.calls.write().unwrap_or_else(std::sync::PoisonError::into_inner);
        write.entry(rpc).or_default().insert(model.to_owned(), h.clone());
        h
    }

    /// The Prometheus text exposition of every metric.
    pub fn render(&self) -> String {
        let mut buf = Vec::new();
        if let Err(e) = TextEncoder::new().encode(&self.registry.gather(), &mut buf) {
            tracing::error!(error = %e, "encoding metrics");
        }
        String::from_utf8(buf).unwrap_or_default()
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_every_family_with_conventional_names() {
        let m = Metrics::new();
        m.requests.with_label_values(&["Predict", "m", "OK"]).inc();
        let text = m.render();
        assert!(text.contains("torchwire_requests_total{code=\"OK\",model=\"m\",rpc=\"Predict\"} 1"), "{text}");
        assert!(text.contains("torchwire_build_info{libtorch=\"2.13.0\""));
        assert!(text.contains("process_resident_memory_bytes"));
    }
}

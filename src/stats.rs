//! Request statistics for the `Stats` RPC (what the seed's `/api/performance` and
//! `/api/model-info` showed) and the system sampler that feeds its memory history.
//!
//! Unlike Prometheus counters, which stay monotonic, these figures are reset by
//! `Admin.ResetStats`. Latency percentiles come from a bounded window of recent requests, so
//! memory stays flat however long the server runs. Recording takes one short mutex section.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// Latencies kept for percentiles, overall and per model.
const WINDOW: usize = 4096;
/// Memory samples kept.
const HISTORY: usize = 120;

/// avg / min / max / p50 / p95 / p99 in milliseconds.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Summary {
    /// Mean over every request since the reset.
    pub avg_ms: f64,
    /// Fastest.
    pub min_ms: f64,
    /// Slowest.
    pub max_ms: f64,
    /// Median of the recent window.
    pub p50_ms: f64,
    /// 95th percentile of the recent window.
    pub p95_ms: f64,
    /// 99th percentile of the recent window.
    pub p99_ms: f64,
}

#[derive(Debug, Clone, Default)]
struct Latencies {
    count: u64,
    sum_ms: f64,
    min_ms: f64,
    max_ms: f64,
    recent: VecDeque<f32>,
}

impl Latencies {
    fn record(&mut self, ms: f64) {
        if self.count == 0 || ms < self.min_ms {
            self.min_ms = ms;
        }
        self.max_ms = self.max_ms.max(ms);
        self.count += 1;
        self.sum_ms += ms;
        if self.recent.len() == WINDOW {
            self.recent.pop_front();
        }
        self.recent.push_back(ms as f32);
    }

    fn summary(&self) -> Summary {
        if self.count == 0 {
            return Summary::default();
        }
        let mut v: Vec<f32> = self.recent.iter().copied().collect();
        v.sort_by(f32::total_cmp);
        let at = |q: f64| f64::from(v[((q * v.len() as f64).ceil() as usize).clamp(1, v.len()) - 1]);
        Summary {
            avg_ms: self.sum_ms / self.count as f64,
            min_ms: self.min_ms,
            max_ms: self.max_ms,
            p50_ms: at(0.50),
            p95_ms: at(0.95),
            p99_ms: at(0.99),
        }
    }
}

/// One model on one device, as Stats reports it.
#[derive(Debug, Clone, Default)]
pub struct ModelFigures {
    /// Requests answered.
    pub requests: u64,
    /// Of which failed.
    pub errors: u64,
    /// Their latency.
    pub latency: Summary,
    /// Rows per request, averaged (requests' batch sizes).
    pub avg_batch_size: f64,
}

#[derive(Debug, Clone, Default)]
struct ModelAcc {
    requests: u64,
    errors: u64,
    batch_rows: u64,
    batched: u64,
    latency: Latencies,
}

#[derive(Debug)]
struct Inner {
    since: SystemTime,
    total: u64,
    errors: u64,
    by_status: BTreeMap<String, u64>,
    errors_by_type: BTreeMap<String, u64>,
    latency: Latencies,
    per_model: HashMap<(String, String), ModelAcc>,
    /// Requests per second over the last minute: (unix second, count).
    per_second: VecDeque<(u64, u64)>,
}

impl Inner {
    fn new() -> Self {
        Inner {
            since: SystemTime::now(),
            total: 0,
            errors: 0,
            by_status: BTreeMap::new(),
            errors_by_type: BTreeMap::new(),
            latency: Latencies::default(),
            per_model: HashMap::new(),
            per_second: VecDeque::new(),
        }
    }
}

/// A finished request, as the boundary reports it.
#[derive(Debug, Clone)]
pub struct Outcome<'a> {
    /// Model label (`_unknown` for names not in the repository; empty for RPCs without one).
    pub model: &'a str,
    /// Device the request ran on, when it got that far.
    pub device: Option<&'a str>,
    /// gRPC code name (`OK`, `InvalidArgument`, ...).
    pub status: &'a str,
    /// Error kind (`Error::code_label`) when it failed.
    pub error: Option<&'a str>,
    /// Server-side latency.
    pub latency: Duration,
    /// Rows of the batch it ran in, when it ran.
    pub batch_size: Option<usize>,
}

/// Everything Stats reports about requests.
#[derive(Debug, Clone)]
pub struct Snapshot {
    /// When the figures were last reset (or the server started).
    pub since: SystemTime,
    /// Requests answered.
    pub total: u64,
    /// Requests per minute over the last 60 s.
    pub requests_per_minute: f64,
    /// Failed requests, percent.
    pub error_rate_percent: f64,
    /// Latency of every request.
    pub latency: Summary,
    /// gRPC code name -> count.
    pub by_status: BTreeMap<String, u64>,
    /// Error kind -> count.
    pub errors_by_type: BTreeMap<String, u64>,
    /// Per (model, device); device is empty for requests refused before one was chosen.
    pub models: Vec<((String, String), ModelFigures)>,
}

/// Request statistics since the last reset.
pub struct RequestStats {
    inner: Mutex<Inner>,
}

impl Default for RequestStats {
    fn default() -> Self {
        RequestStats { inner: Mutex::new(Inner::new()) }
    }
}

fn unix_secs(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

impl RequestStats {
    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Records one finished request.
    pub fn record(&self, o: &Outcome<'_>) {
        let ms = o.latency.as_secs_f64() * 1000.0;
        let now = unix_secs(SystemTime::now());
        let mut s = self.lock();
        s.total += 1;
        *s.by_status.entry(o.status.to_owned()).or_default() += 1;
        if let Some(kind) = o.error {
            s.errors += 1;
            *s.errors_by_type.entry(kind.to_owned()).or_default() += 1;
        }
        s.latency.record(ms);
        match s.per_second.back_mut() {
            Some((sec, n)) if *sec == now => *n += 1,
            _ => s.per_second.push_back((now, 1)),
        }
        while s.per_second.front().is_some_and(|(sec, _)| *sec + 60 <= now) {
            s.per_second.pop_front();
        }
        if !o.model.is_empty() {
            let acc = s.per_model.entry((o.model.to_owned(), o.device.unwrap_or("").to_owned())).or_default();
            acc.requests += 1;
            if o.error.is_some() {
                acc.errors += 1;
            }
            if let Some(b) = o.batch_size {
                acc.batch_rows += b as u64;
                acc.batched += 1;
            }
            acc.latency.record(ms);
        }
    }

    /// Zeroes every figure and restarts the clock.
    pub fn reset(&self) {
        *self.lock() = Inner::new();
    }

    /// The figures now, optionally for one model only.
    pub fn snapshot(&self, model: Option<&str>) -> Snapshot {
        let s = self.lock();
        let now = unix_secs(SystemTime::now());
        let last_minute: u64 = s.per_second.iter().filter(|(sec, _)| *sec + 60 > now).map(|(_, n)| n).sum();
        let elapsed = SystemTime::now().duration_since(s.since).unwrap_or_default().as_secs_f64().clamp(1.0, 60.0);
        let mut models: Vec<_> = s
            .per_model
            .iter()
            .filter(|((m, _), _)| model.is_none_or(|want| want == m))
            .map(|(k, a)| {
                let figures = ModelFigures {
                    requests: a.requests,
                    errors: a.errors,
                    latency: a.latency.summary(),
                    avg_batch_size: if a.batched == 0 { 0.0 } else { a.batch_rows as f64 / a.batched as f64 },
                };
                (k.clone(), figures)
            })
            .collect();
        models.sort_by(|a, b| a.0.cmp(&b.0));
        Snapshot {
            since: s.since,
            total: s.total,
            requests_per_minute: last_minute as f64 * 60.0 / elapsed,
            error_rate_percent: if s.total == 0 { 0.0 } else { s.errors as f64 * 100.0 / s.total as f64 },
            latency: s.latency.summary(),
            by_status: s.by_status.clone(),
            errors_by_type: s.errors_by_type.clone(),
            models,
        }
    }
}

/// Process and system figures at one moment.
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemSample {
    /// Unix ms.
    pub unix_ms: i64,
    /// Process resident memory.
    pub rss_bytes: u64,
    /// System-wide CPU use, percent.
    pub cpu_percent: f32,
    /// System-wide memory use, percent.
    pub memory_percent: f32,
    /// Threads in this process.
    pub threads: u32,
}

/// Samples the process and system; owns the memory history.
pub struct SystemSampler {
    sys: Mutex<sysinfo::System>,
    history: Mutex<VecDeque<SystemSample>>,
}

impl Default for SystemSampler {
    fn default() -> Self {
        SystemSampler { sys: Mutex::new(sysinfo::System::new()), history: Mutex::new(VecDeque::new()) }
    }
}

impl SystemSampler {
    /// Takes a sample now and appends it to the history. Blocking (reads /proc): call it from
    /// `spawn_blocking`.
    pub fn sample(&self) -> SystemSample {
        use sysinfo::{MemoryRefreshKind, ProcessRefreshKind, ProcessesToUpdate};
        let mut sys = self.sys.lock().unwrap_or_else(|p| p.into_inner());
        sys.refresh_memory_specifics(MemoryRefreshKind::nothing().with_ram());
        sys.refresh_cpu_usage();
        let mut out = SystemSample {
            unix_ms: i64::try_from(SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default().as_millis())
                .unwrap_or(0),
            cpu_percent: sys.global_cpu_usage(),
            memory_percent: if sys.total_memory() == 0 {
                0.0
            } else {
                (sys.used_memory() as f64 * 100.0 / sys.total_memory() as f64) as f32
            },
            ..SystemSample::default()
        };
        if let Ok(pid) = sysinfo::get_current_pid() {
            sys.refresh_processes_specifics(
                ProcessesToUpdate::Some(&[pid]),
                false,
                ProcessRefreshKind::nothing().with_memory(),
            );
            out.rss_bytes = sys.process(pid).map_or(0, sysinfo::Process::memory);
        }
        out.threads = std::fs::read_to_string("/proc/self/status")
            .ok()
            .and_then(|s| s.lines().find_map(|l| l.strip_prefix("Threads:").and_then(|v| v.trim().parse().ok())))
            .unwrap_or(0);
        drop(sys);
        let mut h = self.history.lock().unwrap_or_else(|p| p.into_inner());
        if h.len() == HISTORY {
            h.pop_front();
        }
        h.push_back(out);
        out
    }

    /// The recent samples, oldest first.
    pub fn history(&self) -> Vec<SystemSample> {
        self.history.lock().unwrap_or_else(|p| p.into_inner()).iter().copied().collect()
    }
}

/// When the server started, for uptime.
pub fn uptime(started: Instant) -> Duration {
    started.elapsed()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn outcome(ms: u64, error: Option<&'static str>) -> Outcome<'static> {
        Outcome {
            model: "m",
            device: Some("cpu"),
            status: if error.is_some() { "InvalidArgument" } else { "OK" },
            error,
            latency: Duration::from_millis(ms),
            batch_size: error.is_none().then_some(2),
        }
    }

    #[test]
    fn counts_rates_and_percentiles() {
        let s = RequestStats::default();
        for ms in 1..=100 {
            s.record(&outcome(ms, None));
        }
        for _ in 0..25 {
            s.record(&outcome(1, Some("invalid_input")));
        }
        let snap = s.snapshot(None);
        assert_eq!(snap.total, 125);
        assert!((snap.error_rate_percent - 20.0).abs() < 1e-9);
        assert_eq!(snap.by_status["OK"], 100);
        assert_eq!(snap.errors_by_type["invalid_input"], 25);
        assert_eq!(snap.latency.max_ms, 100.0);
        assert_eq!(snap.latency.min_ms, 1.0);
        let m = &snap.models[0].1;
        assert_eq!((m.requests, m.errors), (125, 25));
        assert!((m.avg_batch_size - 2.0).abs() < 1e-9);
        assert!(snap.requests_per_minute > 0.0);
        s.reset();
        assert_eq!(s.snapshot(None).total, 0);
        assert!(s.snapshot(Some("other")).models.is_empty());
    }
}

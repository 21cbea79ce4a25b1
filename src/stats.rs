//! Request statistics for the `Stats` RPC (what the seed's `/api/performance` and
//! `/api/model-info` showed) and the system sampler that feeds its memory history.
//!
//! Unlike Prometheus counters, which stay monotonic, these figures are reset by
//! `Admin.ResetStats`. Latency percentiles come from a bounded window of recent requests, so
//! memory stays flat however long the server runs. Recording takes one short mutex section.

use std::collections::{BTreeMap, VecDeque};
use std::path::Path;
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

/// The accumulator of the entry `is` matches, made with `key` on first use (no key is
/// allocated for an entry seen before).
fn entry<K>(list: &mut Vec<(K, ModelAcc)>, is: impl Fn(&K) -> bool, key: impl FnOnce() -> K) -> &mut ModelAcc {
    let at = match list.iter().position(|(k, _)| is(k)) {
        Some(i) => i,
        None => {
            list.push((key(), ModelAcc::default()));
            list.len() - 1
        }
    };
    &mut list[at].1
}

impl ModelAcc {
    fn add(&mut self, o: &Outcome<'_>, ms: f64) {
        self.requests += 1;
        if o.error.is_some() {
            self.errors += 1;
        }
        if let Some(b) = o.batch_size {
            self.batch_rows += b as u64;
            self.batched += 1;
        }
        self.latency.record(ms);
    }

    fn figures(&self) -> ModelFigures {
        ModelFigures {
            requests: self.requests,
            errors: self.errors,
            latency: self.latency.summary(),
            avg_batch_size: if self.batched == 0 { 0.0 } else { self.batch_rows as f64 / self.batched as f64 },
        }
    }
}

#[derive(Debug)]
struct Inner {
    since: SystemTime,
    total: u64,
    errors: u64,
    by_status: BTreeMap<String, u64>,
    errors_by_type: BTreeMap<String, u64>,
    latency: Latencies,
    /// By (model, device): a handful of entries, scanned without allocating a key.
    per_model: Vec<((String, String), ModelAcc)>,
    /// By (model, version), likewise.
    per_version: Vec<((String, u64), ModelAcc)>,
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
            per_model: Vec::new(),
            per_version: Vec::new(),
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
    /// The model version it was resolved to, when it was.
    pub version: Option<u64>,
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
    /// Per (model, version), for requests resolved to a version.
    pub versions: Vec<((String, u64), ModelFigures)>,
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

/// Adds one to `key`'s count, allocating the key only the first time it is seen.
fn bump(counts: &mut BTreeMap<String, u64>, key: &str) {
    match counts.get_mut(key) {
        Some(n) => *n += 1,
        None => {
            counts.insert(key.to_owned(), 1);
        }
    }
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
        // Looked up before inserting, so a status or model seen before costs no allocation.
        bump(&mut s.by_status, o.status);
        if let Some(kind) = o.error {
            s.errors += 1;
            bump(&mut s.errors_by_type, kind);
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
            let (model, device) = (o.model, o.device.unwrap_or(""));
            entry(&mut s.per_model, |(m, d)| m == model && d == device, || (model.to_owned(), device.to_owned()))
                .add(o, ms);
            if let Some(v) = o.version {
                entry(&mut s.per_version, |(m, n)| m == model && *n == v, || (model.to_owned(), v)).add(o, ms);
            }
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
            .map(|(k, a)| (k.clone(), a.figures()))
            .collect();
        models.sort_by(|a, b| a.0.cmp(&b.0));
        let mut versions: Vec<_> = s
            .per_version
            .iter()
            .filter(|((m, _), _)| model.is_none_or(|want| want == m))
            .map(|(k, a)| (k.clone(), a.figures()))
            .collect();
        versions.sort_by(|a, b| a.0.cmp(&b.0));
        Snapshot {
            since: s.since,
            total: s.total,
            requests_per_minute: last_minute as f64 * 60.0 / elapsed,
            error_rate_percent: if s.total == 0 { 0.0 } else { s.errors as f64 * 100.0 / s.total as f64 },
            latency: s.latency.summary(),
            by_status: s.by_status.clone(),
            errors_by_type: s.errors_by_type.clone(),
            models,
            versions,
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
    /// This process's CPU use since the previous sample, in percent of the CPUs it may use
    /// (its cgroup's CPU quota when there is one, else the cores its affinity allows).
    pub cpu_percent: f32,
    /// This process's resident memory, in percent of its cgroup's memory limit when there is
    /// one, else of the machine's memory.
    pub memory_percent: f32,
    /// Threads in this process.
    pub threads: u32,
}

/// Samples the process; owns the memory history.
pub struct SystemSampler {
    sys: Mutex<sysinfo::System>,
    history: Mutex<VecDeque<SystemSample>>,
    /// Process CPU milliseconds at the previous sample, and when it was taken.
    last_cpu: Mutex<Option<(u64, Instant)>>,
    /// What this process may use (read once: cgroup limits do not change under a process).
    limits: ProcessLimits,
    started: Instant,
}

impl Default for SystemSampler {
    fn default() -> Self {
        SystemSampler {
            sys: Mutex::new(sysinfo::System::new()),
            history: Mutex::new(VecDeque::new()),
            last_cpu: Mutex::new(None),
            limits: ProcessLimits::read(Path::new("/")),
            started: Instant::now(),
        }
    }
}

/// The CPUs and memory this process may use: its cgroup's limits (v2 `cpu.max`,
/// `memory.max`; v1 `cpu.cfs_quota_us`, `memory.limit_in_bytes`), else the cores its affinity
/// allows and the machine's memory.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ProcessLimits {
    /// CPUs, possibly fractional (a quota of 150 ms per 100 ms is 1.5).
    pub cpus: f64,
    /// Bytes of memory; 0 = unknown.
    pub memory_bytes: u64,
}

impl ProcessLimits {
    /// Reads the limits under `root` (`/` in the server; a fixture folder in tests).
    pub fn read(root: &Path) -> Self {
        let cores = std::thread::available_parallelism().map_or(1, std::num::NonZero::get) as f64;
        let read = |p: &str| std::fs::read_to_string(root.join(p)).ok();
        let group = read("proc/self/cgroup")
            .and_then(|s| s.lines().find_map(|l| l.strip_prefix("0::").map(|g| g.trim_start_matches('/').to_owned())))
            .unwrap_or_default();
        let v2 = |file: &str| {
            read(&format!("sys/fs/cgroup/{group}/{file}")).or_else(|| read(&format!("sys/fs/cgroup/{file}")))
        };
        let quota = v2("cpu.max").and_then(|s| parse_cpu_max(&s)).or_else(|| {
            let q: i64 = read("sys/fs/cgroup/cpu/cpu.cfs_quota_us")?.trim().parse().ok()?;
            let p: i64 = read("sys/fs/cgroup/cpu/cpu.cfs_period_us")?.trim().parse().ok()?;
            (q > 0 && p > 0).then(|| q as f64 / p as f64)
        });
        let memory = v2("memory.max")
            .or_else(|| read("sys/fs/cgroup/memory/memory.limit_in_bytes"))
            .and_then(|s| s.trim().parse::<u64>().ok())
            // cgroup v1 says "no limit" with a huge number.
            .filter(|m| *m < (1 << 60));
        let machine = read("proc/meminfo")
            .and_then(|s| s.lines().find_map(|l| l.strip_prefix("MemTotal:").map(str::to_owned)))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
            .map_or(0, |kb| kb * 1024);
        ProcessLimits {
            cpus: quota.map_or(cores, |q| q.min(cores)),
            memory_bytes: memory.map_or(machine, |m| if machine > 0 { m.min(machine) } else { m }),
        }
    }
}

/// `cpu.max`: `<quota> <period>` in microseconds, or `max <period>` for no quota.
fn parse_cpu_max(s: &str) -> Option<f64> {
    let mut parts = s.split_whitespace();
    let quota: f64 = parts.next()?.parse().ok()?;
    let period: f64 = parts.next()?.parse().ok()?;
    (quota > 0.0 && period > 0.0).then_some(quota / period)
}

impl SystemSampler {
    /// Takes a sample now and appends it to the history. Blocking (reads /proc): call it from
    /// `spawn_blocking`.
    pub fn sample(&self) -> SystemSample {
        use sysinfo::{ProcessRefreshKind, ProcessesToUpdate};
        let mut sys = self.sys.lock().unwrap_or_else(|p| p.into_inner());
        let mut out = SystemSample {
            unix_ms: i64::try_from(SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default().as_millis())
                .unwrap_or(0),
            ..SystemSample::default()
        };
        if let Ok(pid) = sysinfo::get_current_pid() {
            sys.refresh_processes_specifics(
                ProcessesToUpdate::Some(&[pid]),
                false,
                ProcessRefreshKind::nothing().with_memory().with_cpu(),
            );
            if let Some(p) = sys.process(pid) {
                out.rss_bytes = p.memory();
                let now = Instant::now();
                let cpu_ms = p.accumulated_cpu_time();
                let mut last = self.last_cpu.lock().unwrap_or_else(|p| p.into_inner());
                let (prev_ms, since) = last.unwrap_or((0, self.started));
                let wall_ms = now.duration_since(since).as_secs_f64() * 1000.0;
                if wall_ms > 0.0 && self.limits.cpus > 0.0 {
                    let used = cpu_ms.saturating_sub(prev_ms) as f64;
                    out.cpu_percent = (used / wall_ms / self.limits.cpus * 100.0) as f32;
                }
                *last = Some((cpu_ms, now));
            }
        }
        if self.limits.memory_bytes > 0 {
            out.memory_percent = (out.rss_bytes as f64 * 100.0 / self.limits.memory_bytes as f64) as f32;
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

    /// The limits CPU % and memory % are relative to.
    pub fn limits(&self) -> ProcessLimits {
        self.limits
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
            version: Some(1),
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

    fn fake_root(files: &[(&str, &str)]) -> std::path::PathBuf {
        static N: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let n = N.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        let root = std::env::temp_dir().join(format!("torchwire-cgroup-{}-{n}", std::process::id()));
        for (path, text) in files {
            let p = root.join(path);
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(p, text).unwrap();
        }
        root
    }

    #[test]
    fn limits_come_from_the_process_cgroup_when_it_has_them() {
        let meminfo = ("proc/meminfo", "MemTotal:       24000000 kB\nMemFree: 1 kB\n");
        let v2 = fake_root(&[
            ("proc/self/cgroup", "0::/kubepods/pod1\n"),
            ("sys/fs/cgroup/kubepods/pod1/cpu.max", "50000 100000\n"),
            ("sys/fs/cgroup/kubepods/pod1/memory.max", "536870912\n"),
            meminfo,
        ]);
        assert_eq!(ProcessLimits::read(&v2), ProcessLimits { cpus: 0.5, memory_bytes: 512 << 20 });
        let unlimited = fake_root(&[
            ("proc/self/cgroup", "0::/\n"),
            ("sys/fs/cgroup/cpu.max", "max 100000\n"),
            ("sys/fs/cgroup/memory.max", "max\n"),
            meminfo,
        ]);
        let cores = std::thread::available_parallelism().map_or(1, std::num::NonZero::get) as f64;
        assert_eq!(ProcessLimits::read(&unlimited), ProcessLimits { cpus: cores, memory_bytes: 24_000_000 * 1024 });
        let v1 = fake_root(&[
            ("sys/fs/cgroup/cpu/cpu.cfs_quota_us", "25000\n"),
            ("sys/fs/cgroup/cpu/cpu.cfs_period_us", "100000\n"),
            ("sys/fs/cgroup/memory/memory.limit_in_bytes", "9223372036854771712\n"),
            meminfo,
        ]);
        assert_eq!(ProcessLimits::read(&v1), ProcessLimits { cpus: 0.25, memory_bytes: 24_000_000 * 1024 });
    }

    /// Before the fix, Stats reported host-wide CPU and memory use; now the figures follow
    /// this process: burning CPU on one thread shows, and memory % is RSS over the limit.
    #[test]
    fn cpu_and_memory_percent_are_this_process() {
        let sampler = SystemSampler::default();
        sampler.sample();
        let t = Instant::now();
        let mut x = 0u64;
        while t.elapsed() < Duration::from_millis(300) {
            x = std::hint::black_box(x.wrapping_mul(6364136223846793005).wrapping_add(1));
        }
        let s = sampler.sample();
        let limits = sampler.limits();
        // How much of the CPU the loop got depends on the machine's load; that it registers,
        // and within the process's share, does not.
        assert!(s.cpu_percent > 0.0 && s.cpu_percent <= 105.0, "{} %", s.cpu_percent);
        let want = (s.rss_bytes as f64 * 100.0 / limits.memory_bytes as f64) as f32;
        assert!((s.memory_percent - want).abs() < 1e-3, "{} vs {want}", s.memory_percent);
    }
}

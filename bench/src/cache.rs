//! `torchwire-bench cache`: the response cache's benchmark targets (issue 19), measured in
//! interleaved pairs of runs, cache off then cache on, each run against a fresh server.
//!
//! ```text
//! scenario  workload (Sentiment, 1 text per request)         off server          on server
//! zipf      Zipf(s) over a pool of --distinct texts           no cache flags      --cache-bytes N
//! distinct  every text different (never a repeat)            no cache flags      --cache-bytes N
//! redis     Zipf over the pool, every pool text already in    no cache flags      --cache-bytes 0 (or
//!           Redis (put there by a first server, then gone)                        --replica-cache-bytes)
//!                                                                                 --cache-redis-url
//! ```
//!
//! Every run starts its own `torchwire serve` (pinned with `taskset` to `--server-cpus`),
//! waits for `/readyz` (the model preloaded), then drives `--concurrency` closed-loop clients
//! for `--warmup` seconds with texts from outside the pool (each sent once, so the in-process
//! cache is still cold for the pool when measuring starts) and for `--duration` seconds with
//! the scenario's workload. Hits and misses are the server's own counters
//! (`torchwire_cache_lookups_total`, scraped from `/metrics` when measuring starts and ends).
//!
//! The texts are short product / restaurant / travel reviews (9–29 words) generated
//! deterministically from sentence slots and word lists below with `--seed`: text `i` is a
//! bijection of `i` onto the slot combinations (about 5.9 × 10¹⁰), so texts with different
//! indices always differ. The pool is texts `0..--distinct`; the warm-up and the `distinct`
//! workload take indices far from the pool and from each other's runs.
//!
//! Requests go through the load generator's request bodies and call (`peers::Requests`), and
//! are recorded and summarised as `load` records them (`report::Sample`, `percentiles`).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::{Args, ValueEnum};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tonic::client::Grpc;
use tonic::transport::{Channel, Endpoint};

use crate::peers::Requests;
use crate::report::{Percentiles, Sample, percentiles};

/// Which comparison to run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Scenario {
    /// Zipf-distributed texts from the pool: cache off against the in-process cache.
    Zipf,
    /// Every text distinct: cache off against the in-process cache (the cost of looking up).
    Distinct,
    /// Zipf texts already in Redis: a replica with no cache against the same replica answering
    /// from Redis (in-process tier of `--replica-cache-bytes`, 0 by default).
    Redis,
}

impl Scenario {
    fn name(self) -> &'static str {
        match self {
            Scenario::Zipf => "zipf",
            Scenario::Distinct => "distinct",
            Scenario::Redis => "redis",
        }
    }
}

/// Flags of `torchwire-bench cache`.
#[derive(Debug, Args, Clone)]
pub struct CacheArgs {
    /// Scenarios to run, in this order (comma-separated).
    #[arg(long, value_enum, value_delimiter = ',', default_value = "zipf,distinct,redis")]
    pub scenarios: Vec<Scenario>,
    /// The torchwire binary to start. Default: `torchwire` beside this binary.
    #[arg(long)]
    pub server_bin: Option<PathBuf>,
    /// Model repository the servers serve.
    #[arg(long, default_value = "models")]
    pub model_dir: PathBuf,
    /// Text model driven through Sentiment; its manifest must have `[cache]`.
    #[arg(long, default_value = "sentiment")]
    pub model: String,
    /// Pairs (cache off, cache on) per scenario.
    #[arg(long, default_value_t = 5)]
    pub pairs: usize,
    /// Closed-loop clients (requests in flight at once), over one HTTP/2 connection.
    #[arg(long, default_value_t = 16)]
    pub concurrency: usize,
    /// Seconds measured per run.
    #[arg(long, default_value_t = 10.0)]
    pub duration: f64,
    /// The last this many seconds of each measured window are also reported on their own
    /// (throughput and p99 once the cache has filled for most of the run).
    #[arg(long, default_value_t = 10.0)]
    pub tail: f64,
    /// Seconds of warm-up per run before measuring, with texts from outside the pool.
    #[arg(long, default_value_t = 2.0)]
    pub warmup: f64,
    /// Distinct texts in the pool the Zipf workloads draw from.
    #[arg(long, default_value_t = 10_000)]
    pub distinct: usize,
    /// Zipf exponent: text of rank k is drawn with probability ∝ 1 / k^s.
    #[arg(long, default_value_t = 1.1)]
    pub zipf_s: f64,
    /// Seed of the texts and of the clients' draws.
    #[arg(long, default_value_t = 42)]
    pub seed: u64,
    /// `--cache-bytes` of the "on" servers of the zipf and distinct scenarios.
    #[arg(long, default_value_t = 256 << 20)]
    pub cache_bytes: u64,
    /// `--cache-bytes` of the replica answering from Redis (0: every answer crosses to Redis).
    #[arg(long, default_value_t = 0)]
    pub replica_cache_bytes: u64,
    /// `--cache-redis-timeout-ms` of the servers that use Redis.
    #[arg(long, default_value_t = 20)]
    pub redis_timeout_ms: u64,
    /// The redis-server binary (Debian `redis-server`).
    #[arg(long, default_value = "redis-server")]
    pub redis_bin: PathBuf,
    /// Cores of the servers (`taskset -c`); empty = not pinned.
    #[arg(long, default_value = "0")]
    pub server_cpus: String,
    /// Cores of redis-server (`taskset -c`); empty = not pinned. Default: the load's core, as
    /// Redis would live on another host than the replica.
    #[arg(long, default_value = "1")]
    pub redis_cpus: String,
    /// Extra flag for `torchwire serve` (repeatable), e.g. `--server-arg=--max-batch-size=8`.
    #[arg(long = "server-arg", allow_hyphen_values = true)]
    pub server_args: Vec<String>,
    /// Per-request deadline in milliseconds.
    #[arg(long, default_value_t = 10_000)]
    pub timeout_ms: u64,
    /// Write the pool's texts here, one per line.
    #[arg(long)]
    pub texts_out: Option<PathBuf>,
    /// Print one JSON object on stdout (the tables go to stderr).
    #[arg(long)]
    pub json: bool,
}

// ---------------------------------------------------------------------------------------------
// Texts

const OPENERS: &[&str] = &[
    "",
    "Honestly, ",
    "To be fair, ",
    "Overall, ",
    "On our last visit ",
    "Sadly, ",
    "For what it's worth, ",
    "I have to say ",
    "Last weekend ",
    "As usual, ",
    "This time ",
    "In short, ",
];
const SUBJECTS: &[&str] = &[
    "the food",
    "the service",
    "the staff",
    "our waiter",
    "the pasta",
    "the room",
    "the flight",
    "the battery",
    "the screen",
    "the delivery",
    "the checkout",
    "the support team",
    "the hotel",
    "the coffee",
    "the seat",
    "the app",
    "the price",
    "the manual",
    "the packaging",
    "the driver",
    "the pizza",
    "the bed",
    "the breakfast",
    "the camera",
    "the sound quality",
    "the keyboard",
    "the charger",
    "the update",
    "the installation",
    "the crew",
    "the lobby",
    "the soup",
    "the burger",
    "the website",
    "the shipping",
    "the fabric",
    "the fit",
    "the signal",
    "the gate agent",
    "the landlord",
];
const ADVERBS: &[&str] = &[
    "really",
    "surprisingly",
    "incredibly",
    "a bit",
    "far too",
    "pretty",
    "genuinely",
    "somewhat",
    "absolutely",
    "rather",
    "quite",
    "unbelievably",
    "honestly",
    "way too",
    "not very",
    "extremely",
];
const ADJECTIVES: &[&str] = &[
    "good",
    "slow",
    "friendly",
    "rude",
    "clean",
    "noisy",
    "overpriced",
    "excellent",
    "disappointing",
    "comfortable",
    "cold",
    "fresh",
    "confusing",
    "helpful",
    "terrible",
    "fantastic",
    "cheap",
    "reliable",
    "flimsy",
    "smooth",
    "bland",
    "delicious",
    "late",
    "responsive",
    "dirty",
    "spacious",
    "loud",
    "polite",
    "buggy",
    "sturdy",
    "greasy",
    "professional",
    "cramped",
    "generous",
    "sluggish",
    "pleasant",
    "broken",
    "accurate",
    "awkward",
    "lovely",
];
const CONNECTORS: &[&str] = &["and", "but", "although", "while", "so", "yet", "even though", "because"];
const SUBJECTS2: &[&str] = &[
    "the manager",
    "my partner",
    "the kids",
    "the staff",
    "the night shift",
    "the chef",
    "the other guests",
    "the courier",
    "support",
    "the seller",
    "my friend",
    "the pilot",
    "the receptionist",
    "the owner",
    "the delivery guy",
    "the technician",
    "customer service",
    "the host",
    "the bartender",
    "the whole team",
    "my sister",
    "our neighbour",
    "the cleaner",
    "the cashier",
    "the security line",
    "the tour guide",
    "the replacement",
    "the refund",
    "the second one",
    "the warranty",
    "the dessert",
    "the wine list",
    "the music",
    "the view",
    "the location",
    "the parking",
    "the wifi",
    "the air conditioning",
    "the menu",
    "the checkout page",
];
const PREDICATES: &[&str] = &[
    "took forever to respond",
    "made up for it",
    "fixed the problem within minutes",
    "never showed up",
    "left a lot to be desired",
    "exceeded our expectations",
    "ruined the whole evening",
    "saved the day",
    "stopped working after two days",
    "made the trip worth it",
    "ignored three emails in a row",
    "handled everything perfectly",
    "arrived an hour late",
    "felt like a total rip-off",
    "kept us waiting at the door",
    "came with a handwritten note",
    "needed a second attempt",
    "got the order completely wrong",
    "went above and beyond",
    "fell apart in the first week",
    "turned a bad day around",
    "cost twice what was advertised",
    "answered every question patiently",
    "smelled faintly of smoke",
    "worked straight out of the box",
    "charged us for extras we never ordered",
    "made it hard to relax",
    "deserved a better review",
    "disappeared without a word",
    "sorted it out on the spot",
];
const CLOSERS: &[&str] = &[
    "",
    " Would recommend.",
    " Never again.",
    " Five stars.",
    " Will be back next week.",
    " Not worth the money.",
    " Overall a decent experience.",
    " I expected more for the price.",
    " Thanks to everyone involved.",
    " Two stars.",
    " Would buy again.",
    " Avoid if you can.",
    " Still thinking about it.",
    " Mixed feelings overall.",
    " Great value.",
    " Returning it tomorrow.",
    " Can't complain.",
    " Highly recommended to anyone nearby.",
    " Meh.",
    " Lesson learned.",
];

/// The slots of a text, lowest digit first.
const SLOTS: [&[&str]; 8] = [CLOSERS, PREDICATES, SUBJECTS2, CONNECTORS, ADJECTIVES, ADVERBS, SUBJECTS, OPENERS];

/// SplitMix64: a small, fast, seedable generator (the clients' draws and the texts' mixing).
#[derive(Debug, Clone)]
pub struct SplitMix64(u64);

impl SplitMix64 {
    /// A generator seeded with `seed`.
    pub fn new(seed: u64) -> Self {
        SplitMix64(seed)
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        mix(self.0)
    }

    /// A uniform draw from [0, 1).
    pub fn next_f64(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }
}

fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// Review-like texts, text `i` a bijection of `i` onto the slot combinations: an affine map
/// modulo their count, then each slot's choice shifted by a hash of the slots above it
/// (invertible from the top slot down), so that neighbouring indices share no visible pattern.
#[derive(Debug, Clone)]
pub struct TextGen {
    offset: u64,
    space: u64,
}

/// Multiplier of the affine map: a prime larger than every slot's size, so coprime with the
/// count of combinations.
const MULTIPLIER: u64 = 1_000_000_007;

impl TextGen {
    /// The texts of `seed`.
    pub fn new(seed: u64) -> Self {
        let space = SLOTS.iter().map(|s| s.len() as u64).product();
        TextGen { offset: mix(seed ^ 0x7E57) % space, space }
    }

    /// How many distinct texts there are.
    pub fn space(&self) -> u64 {
        self.space
    }

    /// Text `i` (indices are taken modulo [`TextGen::space`]).
    pub fn text(&self, i: u64) -> String {
        let mut n = ((u128::from(i % self.space) * u128::from(MULTIPLIER) + u128::from(self.offset))
            % u128::from(self.space)) as u64;
        let mut digits = [0usize; SLOTS.len()];
        for (d, slot) in digits.iter_mut().zip(SLOTS) {
            *d = (n % slot.len() as u64) as usize;
            n /= slot.len() as u64;
        }
        let original = digits;
        for j in 0..SLOTS.len() {
            let above = original[j + 1..].iter().fold(0x5EED_u64, |h, &d| mix(h ^ d as u64));
            digits[j] = (original[j] + (above % SLOTS[j].len() as u64) as usize) % SLOTS[j].len();
        }
        let [closer, predicate, subject2, connector, adjective, adverb, subject, opener] = digits;
        let mut text = format!(
            "{}{} was {} {}, {} {} {}.{}",
            OPENERS[opener],
            SUBJECTS[subject],
            ADVERBS[adverb],
            ADJECTIVES[adjective],
            CONNECTORS[connector],
            SUBJECTS2[subject2],
            PREDICATES[predicate],
            CLOSERS[closer]
        );
        if let Some(first) = text.get(0..1) {
            let upper = first.to_ascii_uppercase();
            text.replace_range(0..1, &upper);
        }
        text
    }
}

/// Zipf draws over ranks `0..n`: rank k (from 0) with probability ∝ 1 / (k + 1)^s.
#[derive(Debug, Clone)]
pub struct Zipf {
    cdf: Vec<f64>,
}

impl Zipf {
    /// The distribution over `n` ranks with exponent `s`.
    pub fn new(n: usize, s: f64) -> Self {
        let mut cdf: Vec<f64> = Vec::with_capacity(n);
        let mut total = 0.0;
        for k in 1..=n {
            total += (k as f64).powf(-s);
            cdf.push(total);
        }
        for c in &mut cdf {
            *c /= total;
        }
        Zipf { cdf }
    }

    /// One rank.
    pub fn sample(&self, rng: &mut SplitMix64) -> usize {
        let u = rng.next_f64();
        self.cdf.partition_point(|&c| c <= u).min(self.cdf.len().saturating_sub(1))
    }
}

// ---------------------------------------------------------------------------------------------
// Processes: the server and redis-server

/// A child process killed on drop, with its log file.
struct Proc {
    child: Child,
    log: PathBuf,
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `cmd args…` under `taskset -c cpus` unless `cpus` is empty, output into `log`.
fn spawn_pinned(cpus: &str, cmd: &Path, args: &[String], log: &Path) -> anyhow::Result<Proc> {
    let out = std::fs::File::create(log).with_context(|| format!("creating {}", log.display()))?;
    let mut command = if cpus.is_empty() {
        Command::new(cmd)
    } else {
        let mut c = Command::new("taskset");
        c.args(["-c", cpus]).arg(cmd);
        c
    };
    let child = command
        .args(args)
        .stdin(Stdio::null())
        .stdout(out.try_clone()?)
        .stderr(out)
        .spawn()
        .with_context(|| format!("starting {}", cmd.display()))?;
    Ok(Proc { child, log: log.to_owned() })
}

fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

fn log_tail(log: &Path) -> String {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(15)..].join("\n")
}

/// A running `torchwire serve`.
struct Server {
    _proc: Proc,
    grpc: String,
    metrics: String,
}

/// Starts a server with `extra` flags, the model preloaded, and waits for `/readyz`.
async fn start_server(args: &CacheArgs, bin: &Path, dir: &Path, extra: &[String]) -> anyhow::Result<Server> {
    let (grpc, metrics) = (format!("127.0.0.1:{}", free_port()?), format!("127.0.0.1:{}", free_port()?));
    let mut flags: Vec<String> = [
        "serve",
        "--cpu-only",
        "--intra-op-threads",
        "1",
        "--log-level",
        "warn",
        "--ready-after-preload",
        "--grpc-addr",
        &grpc,
        "--metrics-addr",
        &metrics,
        "--preload",
        &args.model,
    ]
    .iter()
    .map(|s| (*s).to_owned())
    .collect();
    flags.push("--model-dir".into());
    flags.push(args.model_dir.to_string_lossy().into_owned());
    flags.extend(extra.iter().cloned());
    flags.extend(args.server_args.iter().cloned());
    let mut proc = spawn_pinned(&args.server_cpus, bin, &flags, &dir.join("server.log"))?;
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        if let Some(status) = proc.child.try_wait()? {
            bail!("the server exited ({status}) at start-up:\n{}", log_tail(&proc.log));
        }
        if let Ok((200, _)) = http_get(&metrics, "/readyz").await {
            return Ok(Server { _proc: proc, grpc: format!("http://{grpc}"), metrics });
        }
        if Instant::now() > deadline {
            bail!("the server was not ready within 120 s:\n{}", log_tail(&proc.log));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A one-shot HTTP/1.1 GET: (status, body).
async fn http_get(addr: &str, path: &str) -> anyhow::Result<(u16, String)> {
    let mut s = TcpStream::connect(addr).await?;
    s.write_all(format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n").as_bytes()).await?;
    let mut buf = Vec::new();
    s.read_to_end(&mut buf).await?;
    let text = String::from_utf8_lossy(&buf);
    let status = text.split_whitespace().nth(1).and_then(|c| c.parse().ok()).context("not an HTTP answer")?;
    let body = text.split_once("\r\n\r\n").map_or("", |(_, b)| b).to_owned();
    Ok((status, body))
}

/// The server's cache counters for `model`: lookups by result, plus `redis_errors`.
async fn cache_counters(server: &Server, model: &str) -> anyhow::Result<BTreeMap<String, u64>> {
    let (status, body) = http_get(&server.metrics, "/metrics").await?;
    if status != 200 {
        bail!("/metrics answered {status}");
    }
    Ok(parse_cache_counters(&body, model))
}

/// `torchwire_cache_lookups_total{model=…,result=R}` as R, and the sum of
/// `torchwire_cache_redis_errors_total{model=…}` as `redis_errors`, from a Prometheus scrape.
pub fn parse_cache_counters(text: &str, model: &str) -> BTreeMap<String, u64> {
    let mut out = BTreeMap::new();
    let model_label = format!("model=\"{model}\"");
    for line in text.lines() {
        let Some((series, value)) = line.rsplit_once(' ') else { continue };
        if !series.contains(&model_label) {
            continue;
        }
        let Ok(v) = value.trim().parse::<f64>() else { continue };
        if series.starts_with("torchwire_cache_lookups_total{") {
            if let Some(r) = series.split("result=\"").nth(1).and_then(|r| r.split('"').next()) {
                *out.entry(r.to_owned()).or_default() += v as u64;
            }
        } else if series.starts_with("torchwire_cache_redis_errors_total{") {
            *out.entry("redis_errors".to_owned()).or_default() += v as u64;
        }
    }
    out
}

/// A running redis-server.
struct Redis {
    _proc: Proc,
    addr: String,
}

async fn start_redis(args: &CacheArgs, dir: &Path) -> anyhow::Result<Redis> {
    let port = free_port()?;
    let flags: Vec<String> = ["--port", &port.to_string(), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]
        .iter()
        .map(|s| (*s).to_owned())
        .chain(["--dir".to_owned(), dir.to_string_lossy().into_owned()])
        .collect();
    let mut proc = spawn_pinned(&args.redis_cpus, &args.redis_bin, &flags, &dir.join("redis.log"))?;
    let addr = format!("127.0.0.1:{port}");
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if let Some(status) = proc.child.try_wait()? {
            bail!("redis-server exited ({status}):\n{}", log_tail(&proc.log));
        }
        if redis_dbsize(&addr).await.is_ok() {
            return Ok(Redis { _proc: proc, addr });
        }
        if Instant::now() > deadline {
            bail!("redis-server did not answer within 10 s:\n{}", log_tail(&proc.log));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Keys in Redis (`DBSIZE`, spoken in RESP by hand).
async fn redis_dbsize(addr: &str) -> anyhow::Result<u64> {
    let mut s = TcpStream::connect(addr).await?;
    s.write_all(b"*1\r\n$6\r\nDBSIZE\r\n").await?;
    let mut buf = [0u8; 64];
    let n = s.read(&mut buf).await?;
    let reply = std::str::from_utf8(&buf[..n])?;
    reply.strip_prefix(':').and_then(|r| r.trim().parse().ok()).with_context(|| format!("DBSIZE answered {reply:?}"))
}

// ---------------------------------------------------------------------------------------------
// One run

/// What the clients send after the warm-up.
#[derive(Clone)]
enum Texts {
    /// Zipf draws from the pool.
    Zipf(Arc<Vec<String>>, Arc<Zipf>),
    /// Every text new: generator indices from `base` on.
    Distinct(u64),
}

struct Plan {
    model: String,
    generator: TextGen,
    texts: Texts,
    /// Generator index of the next distinct text (warm-up, then `Texts::Distinct`).
    warm_next: AtomicU64,
    distinct_next: AtomicU64,
    timeout: Duration,
    measure_from: Instant,
    end: Instant,
}

/// One closed-loop client: warm-up texts, then the workload, until the end.
/// Returns the sample and, per OK request, (seconds after measuring started, latency µs).
async fn client(channel: Channel, plan: Arc<Plan>, seed: u64) -> (Sample, Vec<(f64, u64)>) {
    let mut grpc = Grpc::new(channel);
    let mut rng = SplitMix64::new(seed);
    let mut s = Sample::default();
    let mut ok = Vec::new();
    loop {
        let t0 = Instant::now();
        if t0 >= plan.end {
            return (s, ok);
        }
        let measuring = t0 >= plan.measure_from;
        let text = match (&plan.texts, measuring) {
            (Texts::Zipf(pool, zipf), true) => pool[zipf.sample(&mut rng)].clone(),
            (Texts::Distinct(base), true) => {
                plan.generator.text(base + plan.distinct_next.fetch_add(1, Ordering::Relaxed))
            }
            (_, false) => plan.generator.text(plan.warm_next.fetch_add(1, Ordering::Relaxed)),
        };
        let body = Requests::torchwire_sentiment(&plan.model, vec![vec![text]]);
        let outcome = body.call(&mut grpc, 0, 1, plan.timeout, None).await;
        if measuring {
            let us = u64::try_from(t0.elapsed().as_micros()).unwrap_or(u64::MAX);
            if outcome.is_ok() {
                ok.push((t0.duration_since(plan.measure_from).as_secs_f64(), us));
            }
            s.record(outcome, 1, us);
        }
    }
}

/// What one run measured.
#[derive(Debug, Clone, serde::Serialize)]
pub struct RunResult {
    /// "off" or "on".
    pub cache: &'static str,
    /// Requests answered OK in the measured window.
    pub requests: u64,
    /// Requests answered otherwise.
    pub errors: u64,
    /// OK requests per second.
    pub requests_per_s: f64,
    /// Latency percentiles of OK requests, microseconds.
    pub p50_us: f64,
    /// 90th.
    pub p90_us: f64,
    /// 99th.
    pub p99_us: f64,
    /// Largest.
    pub max_us: f64,
    /// OK requests per second among those sent in the last `--tail` seconds.
    pub tail_requests_per_s: f64,
    /// p99 of OK requests sent in the last `--tail` seconds, microseconds.
    pub tail_p99_us: f64,
    /// Outcomes by code.
    pub codes: BTreeMap<String, u64>,
    /// The server's cache counters over the measured window (hit, redis_hit, coalesced, miss,
    /// redis_errors); empty for a server without a cache.
    pub lookups: BTreeMap<String, u64>,
}

impl RunResult {
    fn lookups_total(&self) -> u64 {
        ["hit", "redis_hit", "coalesced", "miss"].iter().map(|k| self.lookups.get(*k).copied().unwrap_or(0)).sum()
    }

    /// Share of lookups with result `key`, in percent.
    fn share(&self, key: &str) -> Option<f64> {
        let total = self.lookups_total();
        (total > 0).then(|| 100.0 * self.lookups.get(key).copied().unwrap_or(0) as f64 / total as f64)
    }
}

/// Runs: a fresh server with `flags`, warm-up, measure; `run_no` keeps warm-up and distinct
/// texts apart across runs.
#[allow(clippy::too_many_arguments)]
async fn one_run(
    args: &CacheArgs,
    bin: &Path,
    dir: &Path,
    flags: &[String],
    texts: Texts,
    cache: &'static str,
    seed: u64,
    run_no: u64,
) -> anyhow::Result<RunResult> {
    let server = start_server(args, bin, dir, flags).await?;
    let channel = Endpoint::from_shared(server.grpc.clone())?.connect().await.context("connecting")?;
    let generator = TextGen::new(args.seed);
    // Warm-up texts from the upper half of the index space, 2^26 per run; the distinct
    // workload from just above the pool, 2^26 per run: never a pool text, never another run's.
    let stride = 1u64 << 26;
    let warm_base = generator.space() / 2 + run_no * stride;
    let start = Instant::now();
    let plan = Arc::new(Plan {
        model: args.model.clone(),
        texts: match texts {
            Texts::Distinct(_) => Texts::Distinct(args.distinct as u64 + run_no * stride),
            t => t,
        },
        generator,
        warm_next: AtomicU64::new(warm_base),
        distinct_next: AtomicU64::new(0),
        timeout: Duration::from_millis(args.timeout_ms),
        measure_from: start + Duration::from_secs_f64(args.warmup),
        end: start + Duration::from_secs_f64(args.warmup + args.duration),
    });
    let tasks: Vec<_> = (0..args.concurrency)
        .map(|i| tokio::spawn(client(channel.clone(), Arc::clone(&plan), mix(seed ^ (i as u64) << 32))))
        .collect();
    tokio::time::sleep_until(plan.measure_from.into()).await;
    let before = cache_counters(&server, &args.model).await?;
    let mut all = Sample::default();
    let mut tail_us = Vec::new();
    let tail_from = args.duration - args.tail.min(args.duration);
    for t in tasks {
        let (sample, ok) = t.await.context("a client task failed")?;
        all.merge(sample);
        tail_us.extend(ok.into_iter().filter(|(at, _)| *at >= tail_from).map(|(_, us)| us));
    }
    let after = cache_counters(&server, &args.model).await?;
    drop(server);
    let lookups = after.iter().map(|(k, v)| (k.clone(), v - before.get(k).copied().unwrap_or(0).min(*v))).collect();
    let p: Percentiles = percentiles(&mut all.ok_us);
    Ok(RunResult {
        cache,
        requests: all.ok_us.len() as u64,
        errors: all.err_us.len() as u64,
        requests_per_s: all.ok_us.len() as f64 / args.duration,
        p50_us: p.p50,
        p90_us: p.p90,
        p99_us: p.p99,
        max_us: p.max,
        tail_requests_per_s: tail_us.len() as f64 / args.tail.min(args.duration),
        tail_p99_us: percentiles(&mut tail_us).p99,
        codes: all.codes,
        lookups,
    })
}

// ---------------------------------------------------------------------------------------------
// Scenarios

/// One scenario's pairs and what they add up to.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ScenarioResult {
    /// zipf, distinct or redis.
    pub scenario: &'static str,
    /// (off, on) per pair, in the order run.
    pub pairs: Vec<(RunResult, RunResult)>,
    /// on / off throughput per pair.
    pub ratios: Vec<f64>,
    /// Median, min, max of `ratios`.
    pub ratio_median: f64,
    /// Smallest ratio.
    pub ratio_min: f64,
    /// Largest ratio.
    pub ratio_max: f64,
    /// on / off p99 per pair.
    pub p99_ratios: Vec<f64>,
    /// Median of `p99_ratios`.
    pub p99_ratio_median: f64,
    /// on / off throughput per pair over the last `--tail` seconds.
    pub tail_ratios: Vec<f64>,
    /// Median of `tail_ratios`.
    pub tail_ratio_median: f64,
    /// on / off p99 per pair over the last `--tail` seconds.
    pub tail_p99_ratios: Vec<f64>,
    /// The target on the throughput ratio (median ≥ it).
    pub target: f64,
    /// Seconds at the end of each window reported on their own (`--tail`).
    pub tail_s: f64,
    /// Notes: how Redis was filled.
    pub notes: Vec<String>,
}

fn median(v: &[f64]) -> f64 {
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    match s.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => s[n / 2],
        n => (s[n / 2 - 1] + s[n / 2]) / 2.0,
    }
}

impl ScenarioResult {
    fn new(
        scenario: &'static str,
        pairs: Vec<(RunResult, RunResult)>,
        target: f64,
        tail_s: f64,
        notes: Vec<String>,
    ) -> Self {
        let ratios: Vec<f64> = pairs.iter().map(|(off, on)| on.requests_per_s / off.requests_per_s).collect();
        let p99_ratios: Vec<f64> = pairs.iter().map(|(off, on)| on.p99_us / off.p99_us).collect();
        let tail_ratios: Vec<f64> =
            pairs.iter().map(|(off, on)| on.tail_requests_per_s / off.tail_requests_per_s).collect();
        let tail_p99_ratios: Vec<f64> = pairs.iter().map(|(off, on)| on.tail_p99_us / off.tail_p99_us).collect();
        ScenarioResult {
            scenario,
            ratio_median: median(&ratios),
            ratio_min: min_max(&ratios).0,
            ratio_max: min_max(&ratios).1,
            p99_ratio_median: median(&p99_ratios),
            tail_ratio_median: median(&tail_ratios),
            tail_ratios,
            tail_p99_ratios,
            ratios,
            p99_ratios,
            pairs,
            target,
            tail_s,
            notes,
        }
    }

    /// The scenario as a markdown table and a verdict.
    pub fn table(&self) -> String {
        let ms = |us: f64| us / 1000.0;
        let pct = |v: Option<f64>| v.map_or("–".to_owned(), |v| format!("{v:.1} %"));
        let tail = self.tail_s;
        let mut t = format!(
            "| pair | off req/s | off p50 / p99 ms | on req/s | on p50 / p99 ms | on / off | p99 on / off \
             | last {tail} s: off / on req/s | last {tail} s: on / off | last {tail} s: p99 off / on ms \
             | hit | redis hit | coalesced | miss | errors off / on |\n\
             |---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n"
        );
        for (i, (off, on)) in self.pairs.iter().enumerate() {
            let redis_err = on.lookups.get("redis_errors").copied().unwrap_or(0);
            t += &format!(
                "| {} | {:.1} | {:.1} / {:.1} | {:.1} | {:.1} / {:.1} | {:.2}× | {:.2} | {:.1} / {:.1} | {:.2}× | {:.1} / {:.1} \
                 | {} | {} | {} | {} | {} / {}{} |\n",
                i + 1,
                off.requests_per_s,
                ms(off.p50_us),
                ms(off.p99_us),
                on.requests_per_s,
                ms(on.p50_us),
                ms(on.p99_us),
                self.ratios[i],
                self.p99_ratios[i],
                off.tail_requests_per_s,
                on.tail_requests_per_s,
                self.tail_ratios[i],
                ms(off.tail_p99_us),
                ms(on.tail_p99_us),
                pct(on.share("hit")),
                pct(on.share("redis_hit")),
                pct(on.share("coalesced")),
                pct(on.share("miss")),
                off.errors,
                on.errors,
                if redis_err > 0 { format!(" ({redis_err} redis errors)") } else { String::new() },
            );
        }
        let met = self.ratio_median >= self.target;
        let n = self.pairs.len();
        let p99_ok = self.pairs.iter().filter(|(off, on)| on.p99_us <= off.p99_us).count();
        let tail_p99_ok = self.pairs.iter().filter(|(off, on)| on.tail_p99_us <= off.tail_p99_us).count();
        let (tail_min, tail_max) = min_max(&self.tail_ratios);
        t += &format!(
            "\n{}: throughput on / off median {:.2}× (min {:.2}×, max {:.2}×) over {n} pairs, whole window; \
             target ≥ {}×: {}. p99 on / off median {:.2}; on no worse than off in {p99_ok} of {n} pairs. \
             Last {tail} s of each window: on / off median {:.2}× (min {tail_min:.2}×, max {tail_max:.2}×), \
             p99 on / off median {:.2}; on no worse than off in {tail_p99_ok} of {n} pairs.\n",
            self.scenario,
            self.ratio_median,
            self.ratio_min,
            self.ratio_max,
            self.target,
            if met { "met" } else { "MISSED" },
            self.p99_ratio_median,
            self.tail_ratio_median,
            median(&self.tail_p99_ratios),
        );
        for n in &self.notes {
            t += &format!("{n}\n");
        }
        t
    }
}

fn min_max(v: &[f64]) -> (f64, f64) {
    (v.iter().copied().fold(f64::INFINITY, f64::min), v.iter().copied().fold(f64::NEG_INFINITY, f64::max))
}

fn server_bin(given: Option<&Path>) -> anyhow::Result<PathBuf> {
    if let Some(p) = given {
        return Ok(p.to_owned());
    }
    let bin = std::env::current_exe().context("locating this binary")?.with_file_name("torchwire");
    if !bin.is_file() {
        bail!("{} not found: build it (cargo build --release -p torchwire) or pass --server-bin", bin.display());
    }
    Ok(bin)
}

/// A temp folder for logs and Redis, removed on drop.
struct TempDir(PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn strings(v: &[&str]) -> Vec<String> {
    v.iter().map(|s| (*s).to_owned()).collect()
}

/// Fills Redis through a first server (in-process and Redis tiers): every pool text once, in
/// batches of 16, by 4 clients; then waits for the writes (they are asynchronous) to land.
async fn populate_redis(
    args: &CacheArgs,
    bin: &Path,
    dir: &Path,
    redis: &Redis,
    pool: &Arc<Vec<String>>,
) -> anyhow::Result<String> {
    let t0 = Instant::now();
    let flags = vec![
        "--cache-bytes".into(),
        args.cache_bytes.to_string(),
        "--cache-redis-url".into(),
        redis_url(redis),
        "--cache-redis-timeout-ms".into(),
        "1000".into(),
    ];
    let server = start_server(args, bin, dir, &flags).await?;
    let channel = Endpoint::from_shared(server.grpc.clone())?.connect().await.context("connecting")?;
    let batches: Vec<Vec<String>> = pool.chunks(16).map(<[String]>::to_vec).collect();
    let requests = Arc::new(Requests::torchwire_sentiment(&args.model, batches));
    let next = Arc::new(AtomicU64::new(0));
    let timeout = Duration::from_millis(args.timeout_ms.max(30_000));
    let tasks: Vec<_> = (0..4)
        .map(|_| {
            let (requests, next, channel) = (Arc::clone(&requests), Arc::clone(&next), channel.clone());
            tokio::spawn(async move {
                let mut grpc = Grpc::new(channel);
                let mut failed = 0u64;
                loop {
                    let k = next.fetch_add(1, Ordering::Relaxed) as usize;
                    if k >= requests.len() {
                        return failed;
                    }
                    let Requests::Sentiment(v) = requests.as_ref() else { return failed };
                    let rows = v[k].texts.len();
                    if requests.call(&mut grpc, k, rows, timeout, None).await.is_err() {
                        failed += 1;
                    }
                }
            })
        })
        .collect();
    let mut failed = 0;
    for t in tasks {
        failed += t.await.context("a populating task failed")?;
    }
    if failed > 0 {
        bail!("{failed} requests failed while filling Redis");
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut keys = redis_dbsize(&redis.addr).await?;
    while keys < pool.len() as u64 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
        keys = redis_dbsize(&redis.addr).await?;
    }
    let counters = cache_counters(&server, &args.model).await?;
    drop(server);
    if keys < pool.len() as u64 {
        bail!("Redis holds {keys} keys after filling it with {} texts", pool.len());
    }
    Ok(format!(
        "Redis filled by a first server (--cache-bytes {} and Redis) with all {} pool texts in {:.1} s (batches of 16, 4 clients); \
         Redis then held {keys} keys; that server's counters {counters:?}; it was stopped before the pairs.",
        args.cache_bytes,
        pool.len(),
        t0.elapsed().as_secs_f64()
    ))
}

fn redis_url(redis: &Redis) -> String {
    format!("redis://{}/0", redis.addr)
}

fn check_args(args: &CacheArgs) -> anyhow::Result<()> {
    if args.pairs == 0 || args.concurrency == 0 || args.distinct == 0 {
        bail!("--pairs, --concurrency and --distinct must be at least 1");
    }
    if !(args.duration > 0.0 && args.duration.is_finite() && args.warmup >= 0.0 && args.warmup.is_finite()) {
        bail!("--duration must be positive and --warmup at least 0");
    }
    if !(args.tail > 0.0 && args.tail.is_finite()) {
        bail!("--tail must be positive");
    }
    if !(args.zipf_s > 0.0 && args.zipf_s.is_finite()) {
        bail!("--zipf-s must be positive");
    }
    if !args.model_dir.join(&args.model).join("model.toml").is_file() {
        bail!("{} has no model {:?} (model.toml)", args.model_dir.display(), args.model);
    }
    Ok(())
}

/// Runs `torchwire-bench cache` and prints its tables (and, with `--json`, one JSON object).
pub async fn run(args: CacheArgs) -> anyhow::Result<()> {
    check_args(&args)?;
    let bin = server_bin(args.server_bin.as_deref())?;
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos());
    let dir = TempDir(std::env::temp_dir().join(format!("torchwire-bench-cache-{}-{nanos}", std::process::id())));
    std::fs::create_dir_all(&dir.0).with_context(|| format!("creating {}", dir.0.display()))?;
    let generator = TextGen::new(args.seed);
    let pool: Arc<Vec<String>> = Arc::new((0..args.distinct as u64).map(|i| generator.text(i)).collect());
    if let Some(path) = &args.texts_out {
        std::fs::write(path, pool.join("\n") + "\n").with_context(|| format!("writing {}", path.display()))?;
    }
    let zipf = Arc::new(Zipf::new(args.distinct, args.zipf_s));
    let say = |s: &str| if args.json { eprintln!("{s}") } else { println!("{s}") };
    say(&format!(
        "torchwire-bench cache: model {} from {}, {} clients on 1 connection, {} pairs per scenario, \
         each run a fresh server (cold cache) with {} s of warm-up on texts outside the pool, then {} s measured; \
         servers on cores {:?}, Redis on {:?}; texts: seed {}, pool of {} (e.g. {:?})",
        args.model,
        args.model_dir.display(),
        args.concurrency,
        args.pairs,
        args.warmup,
        args.duration,
        args.server_cpus,
        args.redis_cpus,
        args.seed,
        args.distinct,
        pool.first().map(String::as_str).unwrap_or("")
    ));
    let started = Instant::now();
    let mut results = Vec::new();
    let mut run_no = 0u64;
    for &scenario in &args.scenarios {
        let mut notes = Vec::new();
        let mut redis = None;
        let (on_flags, texts, target) = match scenario {
            Scenario::Zipf => (
                vec!["--cache-bytes".into(), args.cache_bytes.to_string()],
                Texts::Zipf(Arc::clone(&pool), Arc::clone(&zipf)),
                5.0,
            ),
            Scenario::Distinct => {
                (vec!["--cache-bytes".into(), args.cache_bytes.to_string()], Texts::Distinct(0), 0.97)
            }
            Scenario::Redis => {
                let r = start_redis(&args, &dir.0).await?;
                notes.push(populate_redis(&args, &bin, &dir.0, &r, &pool).await?);
                let flags = vec![
                    "--cache-bytes".into(),
                    args.replica_cache_bytes.to_string(),
                    "--cache-redis-url".into(),
                    redis_url(&r),
                    "--cache-redis-timeout-ms".into(),
                    args.redis_timeout_ms.to_string(),
                ];
                redis = Some(r);
                (flags, Texts::Zipf(Arc::clone(&pool), Arc::clone(&zipf)), 3.0)
            }
        };
        let mut pairs = Vec::new();
        for pair in 0..args.pairs {
            let seed = args.seed ^ mix(pair as u64 + 1);
            let off = one_run(&args, &bin, &dir.0, &strings(&[]), texts.clone(), "off", seed, run_no).await?;
            let on = one_run(&args, &bin, &dir.0, &on_flags, texts.clone(), "on", seed, run_no + 1).await?;
            run_no += 2;
            eprintln!(
                "{} pair {}: off {:.1} req/s p99 {:.1} ms, on {:.1} req/s p99 {:.1} ms, lookups {:?}",
                scenario.name(),
                pair + 1,
                off.requests_per_s,
                off.p99_us / 1000.0,
                on.requests_per_s,
                on.p99_us / 1000.0,
                on.lookups
            );
            pairs.push((off, on));
        }
        if let Some(r) = &redis {
            notes.push(format!("Redis held {} keys after the pairs.", redis_dbsize(&r.addr).await?));
        }
        drop(redis);
        let result = ScenarioResult::new(scenario.name(), pairs, target, args.tail.min(args.duration), notes);
        say(&format!("\n### {}\n\n{}", scenario.name(), result.table()));
        results.push(result);
    }
    say(&format!("total {:.0} s", started.elapsed().as_secs_f64()));
    if args.json {
        println!(
            "{}",
            serde_json::json!({
                "model": args.model,
                "concurrency": args.concurrency,
                "duration_s": args.duration,
                "warmup_s": args.warmup,
                "distinct": args.distinct,
                "zipf_s": args.zipf_s,
                "seed": args.seed,
                "scenarios": results,
            })
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;

    use super::*;

    #[test]
    fn texts_are_distinct_review_sized_and_reproducible() {
        let generator = TextGen::new(42);
        let mut seen = HashSet::new();
        for i in 0..50_000 {
            let t = generator.text(i);
            let words = t.split_whitespace().count();
            assert!((8..=30).contains(&words), "{words} words: {t}");
            assert!(seen.insert(t), "text {i} repeats");
        }
        assert_eq!(generator.text(7), TextGen::new(42).text(7));
        assert_ne!(generator.text(7), TextGen::new(43).text(7));
        // Far-apart indices (warm-up and distinct bases) are distinct too.
        let far: HashSet<String> = (0..2000).map(|i| generator.text(generator.space() / 2 + i)).collect();
        assert!(far.iter().all(|t| !seen.contains(t)) && far.len() == 2000);
    }

    #[test]
    fn zipf_favours_low_ranks_and_stays_in_range() {
        let z = Zipf::new(100, 1.1);
        let mut rng = SplitMix64::new(1);
        let mut counts = [0u32; 100];
        for _ in 0..100_000 {
            counts[z.sample(&mut rng)] += 1;
        }
        assert!(counts[0] > counts[1] && counts[1] > counts[9] && counts[9] > counts[99]);
        // P(rank 1) = 1 / H(100, 1.1) ≈ 0.233
        let want = 1.0 / (1..=100).map(|k| f64::from(k).powf(-1.1)).sum::<f64>();
        let p0 = f64::from(counts[0]) / 100_000.0;
        assert!((p0 - want).abs() < 0.01, "{p0} vs {want}");
    }

    #[test]
    fn cache_counters_are_read_from_a_scrape() {
        let scrape = "# HELP x\n\
            torchwire_cache_lookups_total{model=\"sentiment\",result=\"hit\"} 12\n\
            torchwire_cache_lookups_total{model=\"sentiment\",result=\"miss\"} 3\n\
            torchwire_cache_lookups_total{model=\"other\",result=\"hit\"} 99\n\
            torchwire_cache_redis_errors_total{kind=\"timeout\",model=\"sentiment\"} 2\n";
        let c = parse_cache_counters(scrape, "sentiment");
        assert_eq!(c.get("hit"), Some(&12));
        assert_eq!(c.get("miss"), Some(&3));
        assert_eq!(c.get("redis_errors"), Some(&2));
    }

    #[test]
    fn median_of_odd_and_even() {
        assert_eq!(median(&[3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(&[4.0, 1.0, 2.0, 3.0]), 2.5);
    }
}

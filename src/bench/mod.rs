//! `torchwire bench`: one load generator for torchwire and for the peer servers it is compared
//! with (python-grpc baseline, TorchServe), closed loop at a fixed concurrency or open loop at
//! a fixed rate; plus the tools around it: `bench-raw` (the forward pass in-process), `bench-floor`
//! (a tonic server with constant answers) and `bench-chart` (a PNG of the results).
//!
//! ```text
//! BenchArgs ──▶ workload  rows / texts (files or synthetic) cut into per-request batches
//!           ──▶ peers     request bodies for the target; one call = send, check the answer
//!           ──▶ here      connections, closed / open loop, progress bar, Sample → Report
//! ```
//!
//! Every response's gRPC status is checked and counted by code (and an OK answer with nothing
//! in it counts as an error); latencies are recorded per request after the warm-up and
//! summarised as percentiles. [`measure`] returns a [`Report`]; [`run`] prints it.

pub mod chart;
pub mod floor;
pub mod peers;
mod raw;
pub mod workload;

use std::collections::BTreeMap;
use std::io::IsTerminal;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::{Args, ValueEnum};
use tonic::client::Grpc;
use tonic::transport::{Channel, Endpoint};

pub use peers::BenchTarget;
use peers::{Outcome, Requests};
pub use raw::{RawBenchArgs, run_raw};

use crate::proto::GetModelRequest;
use crate::proto::admin_client::AdminClient;

/// A ~12-token English sentence (with special tokens), the default text.
pub const DEFAULT_TEXT: &str = "The service was quick and the food was really good.";

/// Which RPC a benchmark drives.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum BenchRpc {
    /// Tabular rows of float features: torchwire Predict, python Predict, TorchServe's tabular
    /// handler.
    Predict,
    /// Texts: torchwire Sentiment, python ClassifyText, TorchServe's text handler.
    Sentiment,
    /// Tabular rows as one FP32 tensor through KServe v2 `ModelInfer` (torchwire and the
    /// python peer; raw_input_contents, as tritonclient sends them).
    Infer,
}

/// Flags of `torchwire bench`.
#[derive(Debug, Args, Clone)]
pub struct BenchArgs {
    /// Server to drive: torchwire (or bench-floor), the python-grpc peer, or TorchServe.
    #[arg(long, value_enum, default_value = "torchwire")]
    pub target: BenchTarget,
    /// Server address (`http://` is added when missing). Default: torchwire 127.0.0.1:50051,
    /// python 127.0.0.1:50061, torchserve 127.0.0.1:7070.
    #[arg(long, env = "TORCHWIRE_ADDR")]
    pub addr: Option<String>,
    /// RPC to drive.
    #[arg(long, value_enum, default_value = "predict")]
    pub rpc: BenchRpc,
    /// Model name. Default: python and torchserve `tabular` / `sentiment`; torchwire Sentiment
    /// the server's default text model; torchwire Predict needs it unless `--features` is given.
    #[arg(long)]
    pub model: Option<String>,
    /// Features per tabular row. Needed for python and torchserve (and bench-floor); for
    /// torchwire, when absent, the model's input shape is asked of Admin.GetModel.
    #[arg(long)]
    pub features: Option<usize>,
    /// Predict rows from this CSV file of floats (one row per line; `#` comments and a header
    /// line skipped); requests cycle through the rows, `--rows` at a time.
    #[arg(long, conflicts_with = "text_file")]
    pub input_file: Option<PathBuf>,
    /// Sentiment texts from this file, one per line; requests cycle through them.
    #[arg(long)]
    pub text_file: Option<PathBuf>,
    /// Requests in flight at once (closed loop).
    #[arg(long, default_value_t = 1)]
    pub concurrency: usize,
    /// Seconds to measure.
    #[arg(long, default_value_t = 10.0)]
    pub duration: f64,
    /// Seconds to run before measuring.
    #[arg(long, default_value_t = 2.0)]
    pub warmup: f64,
    /// Rows per Predict request, or texts per Sentiment request.
    #[arg(long, default_value_t = 1)]
    pub rows: usize,
    /// Text sent by Sentiment requests (unless `--text-file`).
    #[arg(long, default_value = DEFAULT_TEXT)]
    pub text: String,
    /// HTTP/2 connections the requests are spread over.
    #[arg(long, default_value_t = 1)]
    pub connections: usize,
    /// Per-request deadline in milliseconds.
    #[arg(long, default_value_t = 10_000)]
    pub timeout_ms: u64,
    /// Open loop: send this many requests per second whatever the answers (0 = closed loop at
    /// `--concurrency`). `--concurrency` then caps requests outstanding; past it a request is
    /// not sent and counted as `client_overrun`.
    #[arg(long, default_value_t = 0.0)]
    pub rate: f64,
    /// Print one JSON object instead of a line of text (and no progress bar).
    #[arg(long)]
    pub json: bool,
    /// Key sent as `authorization: Bearer <key>` on every request (servers started with
    /// --api-key; the admin key where the bench asks GetModel for the input width).
    #[arg(long = "key", env = "TORCHWIRE_KEY", hide_env_values = true)]
    pub key: Option<String>,
    /// Make this percentage of requests deliberately malformed (torchwire target only): a
    /// Predict whose data does not fill its shape, a Sentiment text over the server's byte
    /// limit. They should come back INVALID_ARGUMENT; for soak tests.
    #[arg(long, default_value_t = 0.0)]
    pub malformed_percent: f64,
}

/// Latency percentiles in microseconds.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Percentiles {
    /// Median.
    pub p50: f64,
    /// 90th.
    pub p90: f64,
    /// 99th.
    pub p99: f64,
    /// 99.9th.
    pub p999: f64,
    /// Largest.
    pub max: f64,
}

/// Nearest-rank percentiles of `us` (sorted in place).
pub fn percentiles(us: &mut [u64]) -> Percentiles {
    if us.is_empty() {
        return Percentiles::default();
    }
    us.sort_unstable();
    let at = |q: f64| us[((q * us.len() as f64).ceil() as usize).clamp(1, us.len()) - 1] as f64;
    Percentiles { p50: at(0.50), p90: at(0.90), p99: at(0.99), p999: at(0.999), max: us[us.len() - 1] as f64 }
}

/// What one `torchwire bench` run measured.
#[derive(Debug, Clone)]
pub struct Report {
    /// Server kind driven.
    pub target: BenchTarget,
    /// RPC driven.
    pub rpc: BenchRpc,
    /// Model name sent (empty: the server's default).
    pub model: String,
    /// Requests in flight (closed loop) or the cap on outstanding requests (open loop).
    pub concurrency: usize,
    /// HTTP/2 connections.
    pub connections: usize,
    /// Rows (or texts) per request.
    pub rows: usize,
    /// Open-loop rate asked for, requests/s; 0 for a closed loop.
    pub rate: f64,
    /// Seconds measured (after the warm-up).
    pub duration_s: f64,
    /// Requests answered OK in the measured window.
    pub requests: u64,
    /// Requests answered with anything else (a gRPC error, or an OK answer with nothing in
    /// it). Open-loop requests never sent (`client_overrun`) are in `codes` only.
    pub errors: u64,
    /// OK requests per second.
    pub requests_per_s: f64,
    /// Rows (or texts) answered OK per second.
    pub rows_per_s: f64,
    /// Latency of OK requests.
    pub latency_us: Percentiles,
    /// Latency of failed requests.
    pub error_latency_us: Percentiles,
    /// Outcomes by code: `OK`, gRPC code names, answer-check labels, `client_overrun`.
    pub codes: BTreeMap<String, u64>,
}

impl Report {
    /// The `--json` object: the fields `bench` has always printed plus target, connections,
    /// duration, request and error counts.
    pub fn to_json(&self) -> serde_json::Value {
        let tenth = |v: f64| (v * 10.0).round() / 10.0;
        serde_json::json!({
            "target": self.target.name(),
            "rpc": format!("{:?}", self.rpc),
            "model": self.model,
            "concurrency": self.concurrency,
            "connections": self.connections,
            "rows": self.rows,
            "rate": self.rate,
            "duration_s": self.duration_s,
            "requests": self.requests,
            "errors": self.errors,
            "requests_per_s": tenth(self.requests_per_s),
            "rows_per_s": tenth(self.rows_per_s),
            "p50_us": self.latency_us.p50,
            "p90_us": self.latency_us.p90,
            "p99_us": self.latency_us.p99,
            "p999_us": self.latency_us.p999,
            "max_us": self.latency_us.max,
            "error_p99_us": self.error_latency_us.p99,
            "codes": self.codes,
        })
    }

    /// One line for people.
    pub fn summary(&self) -> String {
        let errors = if self.errors == 0 {
            String::new()
        } else {
            format!(
                "; {} errors answered in p50 {} p99 {} us",
                self.errors, self.error_latency_us.p50, self.error_latency_us.p99
            )
        };
        let model = if self.model.is_empty() { "(default model)" } else { &self.model };
        let lat = self.latency_us;
        format!(
            "{} {:?} {model} concurrency {} connections {} rows {}: {} OK in {} s, {:.1} req/s, {:.1} rows/s; latency us p50 {} p90 {} p99 {} p99.9 {} max {}; codes {:?}{errors}",
            self.target.name(),
            self.rpc,
            self.concurrency,
            self.connections,
            self.rows,
            self.requests,
            self.duration_s,
            self.requests_per_s,
            self.rows_per_s,
            lat.p50,
            lat.p90,
            lat.p99,
            lat.p999,
            lat.max,
            self.codes,
        )
    }
}

#[derive(Default)]
struct Sample {
    ok_us: Vec<u64>,
    err_us: Vec<u64>,
    codes: BTreeMap<String, u64>,
    rows: u64,
}

impl Sample {
    fn merge(&mut self, s: Sample) {
        self.ok_us.extend(s.ok_us);
        self.err_us.extend(s.err_us);
        self.rows += s.rows;
        for (k, v) in s.codes {
            *self.codes.entry(k).or_default() += v;
        }
    }

    fn record(&mut self, outcome: Outcome, rows: u64, us: u64) {
        let code = match outcome {
            Ok(()) => {
                self.ok_us.push(us);
                self.rows += rows;
                "OK".to_owned()
            }
            Err(label) => {
                self.err_us.push(us);
                label
            }
        };
        *self.codes.entry(code).or_default() += 1;
    }
}

/// What every sending task shares.
struct Plan {
    requests: Requests,
    /// `authorization` metadata sent with every request.
    auth: Option<tonic::metadata::MetadataValue<tonic::metadata::Ascii>>,
    /// Malformed variants of `requests`, sent for `malformed_percent` of the requests.
    malformed: Option<(Requests, f64)>,
    /// Which body the next request sends; requests cycle through the bodies.
    next: AtomicUsize,
    /// Requests completed so far, warm-up included: what the progress bar shows.
    done: AtomicU64,
    rows: usize,
    timeout: Duration,
    measure_from: Instant,
    end: Instant,
}

impl Plan {
    async fn send(&self, grpc: &mut Grpc<Channel>) -> Outcome {
        let k = self.next.fetch_add(1, Ordering::Relaxed);
        let requests = match &self.malformed {
            // Request k is malformed when the running count of malformed ones steps up at k.
            Some((bad, pct)) if ((k + 1) as f64 * pct / 100.0).floor() > (k as f64 * pct / 100.0).floor() => bad,
            _ => &self.requests,
        };
        let outcome = requests.call(grpc, k, self.rows, self.timeout, self.auth.as_ref()).await;
        self.done.fetch_add(1, Ordering::Relaxed);
        outcome
    }
}

fn micros_since(t0: Instant) -> u64 {
    u64::try_from(t0.elapsed().as_micros()).unwrap_or(u64::MAX)
}

/// Closed loop: one request at a time on this task, until the end.
async fn drive(channel: Channel, plan: Arc<Plan>) -> Sample {
    let mut grpc = Grpc::new(channel);
    let mut s = Sample::default();
    loop {
        let t0 = Instant::now();
        if t0 >= plan.end {
            return s;
        }
        let outcome = plan.send(&mut grpc).await;
        if t0 >= plan.measure_from {
            s.record(outcome, plan.rows as u64, micros_since(t0));
        }
    }
}

/// Open loop: a request every 1/rate seconds, each in its own task, at most `concurrency`
/// outstanding.
async fn open_loop(rate: f64, concurrency: usize, channels: &[Channel], plan: &Arc<Plan>) -> Sample {
    let results = Arc::new(std::sync::Mutex::new(Sample::default()));
    let cap = u32::try_from(concurrency).unwrap_or(u32::MAX);
    let outstanding = Arc::new(tokio::sync::Semaphore::new(cap as usize));
    let mut tick = tokio::time::interval(Duration::from_secs_f64(1.0 / rate));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let mut sent = 0usize;
    let mut overrun = 0u64;
    while Instant::now() < plan.end {
        tick.tick().await;
        let Ok(permit) = Arc::clone(&outstanding).try_acquire_owned() else {
            if Instant::now() >= plan.measure_from {
                overrun += 1;
            }
            continue;
        };
        let mut grpc = Grpc::new(channels[sent % channels.len()].clone());
        sent += 1;
        let (plan, results) = (Arc::clone(plan), Arc::clone(&results));
        tokio::spawn(async move {
            let t0 = Instant::now();
            let outcome = plan.send(&mut grpc).await;
            drop(permit);
            if t0 >= plan.measure_from && t0 < plan.end {
                let us = micros_since(t0);
                results.lock().unwrap_or_else(|p| p.into_inner()).record(outcome, plan.rows as u64, us);
            }
        });
    }
    // Let the last requests finish.
    let _ = tokio::time::timeout(plan.timeout, outstanding.acquire_many(cap)).await;
    let mut s = std::mem::take(&mut *results.lock().unwrap_or_else(|p| p.into_inner()));
    if overrun > 0 {
        s.codes.insert("client_overrun".into(), overrun);
    }
    s
}

/// Runs `torchwire bench` and prints its report: a line of text, or JSON with `--json`. The
/// progress bar shows only on a terminal and never with `--json`.
pub async fn run(args: BenchArgs) -> anyhow::Result<()> {
    let progress = std::io::stderr().is_terminal() && !args.json;
    let report = measure(&args, progress).await?;
    if args.json {
        println!("{}", report.to_json());
    } else {
        println!("{}", report.summary());
    }
    Ok(())
}

/// Connects, warms up, measures and returns the report; `progress` draws a bar on stderr.
pub async fn measure(args: &BenchArgs, progress: bool) -> anyhow::Result<Report> {
    if args.concurrency == 0 || args.connections == 0 || args.rows == 0 {
        bail!("--concurrency, --connections and --rows must be at least 1");
    }
    if !(args.duration > 0.0 && args.duration.is_finite() && args.warmup >= 0.0 && args.warmup.is_finite()) {
        bail!("--duration must be positive and --warmup at least 0");
    }
    if !(args.rate >= 0.0 && args.rate.is_finite()) {
        bail!("--rate must be a non-negative number");
    }
    if !(0.0..=100.0).contains(&args.malformed_percent) {
        bail!("--malformed-percent must be between 0 and 100");
    }
    if args.malformed_percent > 0.0 && args.target != BenchTarget::Torchwire {
        bail!("--malformed-percent is for the torchwire target only");
    }
    let addr = normalise_addr(args.addr.as_deref().unwrap_or(args.target.default_addr()));
    let mut channels = Vec::with_capacity(args.connections);
    for _ in 0..args.connections {
        let channel = Endpoint::from_shared(addr.clone())
            .with_context(|| format!("bad address {addr}"))?
            .connect()
            .await
            .with_context(|| format!("connecting to {addr}"))?;
        channels.push(channel);
    }
    let (requests, model) = request_bodies(args, &channels[0]).await?;
    if requests.is_empty() {
        bail!("nothing to send");
    }
    let start = Instant::now();
    let measure_from = start + Duration::from_secs_f64(args.warmup);
    let end = measure_from + Duration::from_secs_f64(args.duration);
    let malformed = (args.malformed_percent > 0.0).then(|| (requests.malformed(), args.malformed_percent));
    let plan = Arc::new(Plan {
        auth: crate::cli::bearer(args.key.as_deref())?,
        requests,
        malformed,
        next: AtomicUsize::new(0),
        done: AtomicU64::new(0),
        rows: args.rows,
        timeout: Duration::from_millis(args.timeout_ms),
        measure_from,
        end,
    });
    let bar = if progress { Some(ProgressTask::start(Arc::clone(&plan), start)?) } else { None };
    let mut all = Sample::default();
    if args.rate > 0.0 {
        all = open_loop(args.rate, args.concurrency, &channels, &plan).await;
    } else {
        let tasks: Vec<_> = (0..args.concurrency)
            .map(|i| tokio::spawn(drive(channels[i % channels.len()].clone(), Arc::clone(&plan))))
            .collect();
        for t in tasks {
            all.merge(t.await.context("a load task failed")?);
        }
    }
    if let Some(bar) = bar {
        bar.finish();
    }
    let secs = args.duration;
    Ok(Report {
        target: args.target,
        rpc: args.rpc,
        model,
        concurrency: args.concurrency,
        connections: args.connections,
        rows: args.rows,
        rate: args.rate,
        duration_s: secs,
        requests: all.ok_us.len() as u64,
        errors: all.err_us.len() as u64,
        requests_per_s: all.ok_us.len() as f64 / secs,
        rows_per_s: all.rows as f64 / secs,
        latency_us: percentiles(&mut all.ok_us),
        error_latency_us: percentiles(&mut all.err_us),
        codes: all.codes,
    })
}

fn normalise_addr(addr: &str) -> String {
    if addr.contains("://") { addr.to_owned() } else { format!("http://{addr}") }
}

/// The request bodies for `args` and the model name they carry.
async fn request_bodies(args: &BenchArgs, channel: &Channel) -> anyhow::Result<(Requests, String)> {
    if args.rpc == BenchRpc::Infer && args.target == BenchTarget::Torchserve {
        bail!("TorchServe does not speak KServe v2 gRPC; --rpc infer is for torchwire and python");
    }
    let default_model = match args.rpc {
        BenchRpc::Predict | BenchRpc::Infer => "tabular",
        BenchRpc::Sentiment => "sentiment",
    };
    let model = match (&args.model, args.target) {
        (Some(m), _) => m.clone(),
        (None, BenchTarget::Python | BenchTarget::Torchserve) => default_model.to_owned(),
        (None, BenchTarget::Torchwire) => {
            if args.rpc != BenchRpc::Sentiment && args.features.is_none() {
                bail!(
                    "torchwire Predict needs --model (or --features, for a server without Admin such as bench-floor)"
                );
            }
            String::new()
        }
    };
    if args.rpc == BenchRpc::Sentiment {
        let texts = match &args.text_file {
            Some(path) => workload::read_texts(path)?,
            None => vec![args.text.clone()],
        };
        let batches = workload::batches(&texts, args.rows);
        let requests = match args.target {
            BenchTarget::Torchwire => Requests::torchwire_sentiment(&model, batches),
            BenchTarget::Python => Requests::python_text(&model, batches),
            BenchTarget::Torchserve => Requests::torchserve_text(&model, batches)?,
        };
        return Ok((requests, model));
    }

    let file_rows = args.input_file.as_deref().map(workload::read_csv).transpose()?;
    let file_width = file_rows.as_ref().and_then(|rows| rows.first()).map(Vec::len);
    if let (Some(f), Some(w)) = (args.features, file_width)
        && f != w
    {
        bail!("--features {f}, but the rows of --input-file have {w} values");
    }
    // torchwire without --features: the model's input as Admin.GetModel reports it.
    let (input_name, inner_shape, width) = match (args.features, args.target) {
        (Some(f), _) => (String::new(), vec![i64::try_from(f)?], f),
        (None, BenchTarget::Torchwire) => {
            let mut req = tonic::Request::new(GetModelRequest { model: model.clone() });
            if let Some(auth) = crate::cli::bearer(args.key.as_deref())? {
                req.metadata_mut().insert("authorization", auth);
            }
            let info = AdminClient::new(channel.clone())
                .get_model(req)
                .await
                .with_context(|| format!("asking Admin.GetModel for {model:?} (or give --features)"))?
                .into_inner();
            let input = info.inputs.first().context("model has no inputs")?;
            let width: i64 = input.shape.iter().skip(1).product();
            if width <= 0 || input.shape.is_empty() {
                bail!("bench predict needs fixed feature dimensions, model has shape {:?}", input.shape);
            }
            (input.name.clone(), input.shape[1..].to_vec(), usize::try_from(width)?)
        }
        (None, _) => match file_width {
            Some(w) => (String::new(), vec![i64::try_from(w)?], w),
            None => bail!("--target {} needs --features N (or --input-file)", args.target.name()),
        },
    };
    if width == 0 {
        bail!("--features must be at least 1");
    }
    let batches = match &file_rows {
        Some(rows) => {
            if rows[0].len() != width {
                bail!("model {model:?} takes {width} features per row, --input-file rows have {}", rows[0].len());
            }
            workload::batches(rows, args.rows)
        }
        None => vec![workload::synthetic_rows(args.rows, width)],
    };
    if args.rpc == BenchRpc::Infer {
        // The python peer names its tabular input INPUT__0 (Triton's libtorch convention).
        let name = match args.target {
            BenchTarget::Torchwire if !input_name.is_empty() => input_name,
            BenchTarget::Torchwire => "features".to_owned(),
            _ => "INPUT__0".to_owned(),
        };
        return Ok((Requests::kserve_infer(&model, &name, &inner_shape, batches), model));
    }
    let requests = match args.target {
        BenchTarget::Torchwire => Requests::torchwire_predict(&model, &input_name, &inner_shape, batches),
        BenchTarget::Python => Requests::python_predict(&model, batches)?,
        BenchTarget::Torchserve => Requests::torchserve_predict(&model, batches)?,
    };
    Ok((requests, model))
}

/// The progress bar: a task that redraws it four times a second from the plan's counters.
struct ProgressTask {
    bar: indicatif::ProgressBar,
    task: tokio::task::JoinHandle<()>,
}

impl ProgressTask {
    fn start(plan: Arc<Plan>, start: Instant) -> anyhow::Result<Self> {
        let total = plan.end.saturating_duration_since(start);
        let bar = indicatif::ProgressBar::new(u64::try_from(total.as_millis()).unwrap_or(u64::MAX));
        bar.set_style(indicatif::ProgressStyle::with_template("{spinner} [{wide_bar}] {msg}")?);
        let shown = bar.clone();
        let task = tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_millis(250));
            let (mut last_done, mut last_at) = (0u64, Instant::now());
            loop {
                tick.tick().await;
                let now = Instant::now();
                let done = plan.done.load(Ordering::Relaxed);
                let dt = now.duration_since(last_at).as_secs_f64();
                let rate = if dt > 0.0 { (done - last_done) as f64 / dt } else { 0.0 };
                (last_done, last_at) = (done, now);
                let elapsed = now.duration_since(start);
                let phase = if now < plan.measure_from { "warm-up" } else { "measuring" };
                shown.set_position(u64::try_from(elapsed.as_millis()).unwrap_or(u64::MAX));
                shown.set_message(format!(
                    "{:.1}/{:.1} s {phase}, {rate:.0} req/s",
                    elapsed.as_secs_f64(),
                    total.as_secs_f64()
                ));
            }
        });
        Ok(ProgressTask { bar, task })
    }

    fn finish(self) {
        self.task.abort();
        self.bar.finish_and_clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_rank_percentiles() {
        let mut v: Vec<u64> = (1..=1000).rev().collect();
        let p = percentiles(&mut v);
        assert_eq!((p.p50, p.p90, p.p99, p.p999, p.max), (500.0, 900.0, 990.0, 999.0, 1000.0));
        assert_eq!(percentiles(&mut []).p50, 0.0);
    }

    #[test]
    fn addresses_get_a_scheme() {
        assert_eq!(normalise_addr("127.0.0.1:7070"), "http://127.0.0.1:7070");
        assert_eq!(normalise_addr("http://h:1"), "http://h:1");
    }

    #[test]
    fn json_report_keeps_the_old_fields_and_adds_counts() {
        let report = Report {
            target: BenchTarget::Python,
            rpc: BenchRpc::Predict,
            model: "tabular".into(),
            concurrency: 4,
            connections: 2,
            rows: 1,
            rate: 0.0,
            duration_s: 2.0,
            requests: 10,
            errors: 1,
            requests_per_s: 5.0,
            rows_per_s: 5.0,
            latency_us: Percentiles { p50: 1.0, p90: 2.0, p99: 3.0, p999: 4.0, max: 5.0 },
            error_latency_us: Percentiles::default(),
            codes: [("OK".to_owned(), 10), ("Unavailable".to_owned(), 1)].into(),
        };
        let j = report.to_json();
        assert_eq!(j["target"], "python");
        assert_eq!(j["rpc"], "Predict");
        assert_eq!((j["requests"].as_u64(), j["errors"].as_u64()), (Some(10), Some(1)));
        assert_eq!(j["codes"]["Unavailable"], 1);
        for key in ["concurrency", "connections", "duration_s", "rows_per_s", "p999_us", "max_us", "error_p99_us"] {
            assert!(j.get(key).is_some(), "{key} missing");
        }
        assert!(report.summary().contains("5.0 req/s"));
    }
}

//! `torchwire-bench load`: one load generator for torchwire and for the peer servers it is
//! compared with (python-grpc baseline, TorchServe), closed loop at a fixed concurrency or open
//! loop at a fixed rate.
//!
//! ```text
//! BenchArgs ──▶ workload  rows / texts (files or synthetic) cut into per-request batches
//!           ──▶ peers     request bodies for the target; one call = send, check the answer
//!           ──▶ here      connections, closed / open loop, progress bar, Sample → Report
//! ```
//!
//! Every response's gRPC status is checked and counted by code (and an OK answer with nothing
//! in it counts as an error); latencies are recorded per request after the warm-up and
//! summarised as percentiles (`report.rs`). [`measure`] returns a [`Report`]; [`run`] prints it.

use std::io::IsTerminal;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::Args;
use tonic::client::Grpc;
use tonic::metadata::{Ascii, MetadataValue};
use tonic::transport::{Channel, Endpoint};
use torchwire::proto::GetModelRequest;
use torchwire::proto::admin_client::AdminClient;

use crate::peers::{BenchRpc, BenchTarget, Outcome, Requests};
use crate::report::{Report, Sample, percentiles};
use crate::workload::{self, DEFAULT_TEXT};

/// Flags of `torchwire-bench load`.
#[derive(Debug, Args, Clone)]
pub struct BenchArgs {
    /// Server to drive: torchwire (or `torchwire-bench floor`), the python-grpc peer, or TorchServe.
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
    /// Features per tabular row. Needed for python and torchserve (and the floor); for
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

/// What every sending task shares.
struct Plan {
    requests: Requests,
    /// `authorization` metadata sent with every request.
    auth: Option<MetadataValue<Ascii>>,
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

/// Runs `torchwire-bench load` and prints its report: a line of text, or JSON with `--json`. The
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
    check_args(args)?;
    let channels = connect(args).await?;
    let (requests, model) = request_bodies(args, &channels[0]).await?;
    if requests.is_empty() {
        bail!("nothing to send");
    }
    let start = Instant::now();
    let measure_from = start + Duration::from_secs_f64(args.warmup);
    let end = measure_from + Duration::from_secs_f64(args.duration);
    let malformed = (args.malformed_percent > 0.0).then(|| (requests.malformed(), args.malformed_percent));
    let plan = Arc::new(Plan {
        auth: bearer(args.key.as_deref())?,
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

/// The flag combinations clap cannot check.
fn check_args(args: &BenchArgs) -> anyhow::Result<()> {
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
    Ok(())
}

/// `--connections` HTTP/2 connections to the target, each opened before the run starts.
async fn connect(args: &BenchArgs) -> anyhow::Result<Vec<Channel>> {
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
    Ok(channels)
}

fn normalise_addr(addr: &str) -> String {
    if addr.contains("://") { addr.to_owned() } else { format!("http://{addr}") }
}

/// `Bearer <key>` as metadata, checked to be a valid header value. The server's client
/// commands have their own copy (`torchwire::cli::bearer`); this crate keeps one so that the
/// load generator does not reach into the server's command line.
fn bearer(key: Option<&str>) -> anyhow::Result<Option<MetadataValue<Ascii>>> {
    key.map(|k| format!("Bearer {k}").parse().map_err(|_| anyhow::anyhow!("--key must be printable ASCII"))).transpose()
}

/// The request bodies for `args` and the model name they carry.
async fn request_bodies(args: &BenchArgs, channel: &Channel) -> anyhow::Result<(Requests, String)> {
    if args.rpc == BenchRpc::Infer && args.target == BenchTarget::Torchserve {
        bail!("TorchServe does not speak KServe v2 gRPC; --rpc infer is for torchwire and python");
    }
    let model = model_name(args)?;
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
    let requests = row_requests(args, &model, channel).await?;
    Ok((requests, model))
}

/// The model name requests carry: `--model`, else the peers' own names; empty for torchwire
/// Sentiment (the server's default text model).
fn model_name(args: &BenchArgs) -> anyhow::Result<String> {
    let default_model = match args.rpc {
        BenchRpc::Predict | BenchRpc::Infer => "tabular",
        BenchRpc::Sentiment => "sentiment",
    };
    Ok(match (&args.model, args.target) {
        (Some(m), _) => m.clone(),
        (None, BenchTarget::Python | BenchTarget::Torchserve) => default_model.to_owned(),
        (None, BenchTarget::Torchwire) => {
            if args.rpc != BenchRpc::Sentiment && args.features.is_none() {
                bail!("torchwire Predict needs --model (or --features, for a server without Admin such as the floor)");
            }
            String::new()
        }
    })
}

/// Predict or KServe Infer bodies: rows from `--input-file` or synthetic ones, as wide as
/// `--features`, the file's rows, or the model's input.
async fn row_requests(args: &BenchArgs, model: &str, channel: &Channel) -> anyhow::Result<Requests> {
    let file_rows = args.input_file.as_deref().map(workload::read_csv).transpose()?;
    let file_width = file_rows.as_ref().and_then(|rows| rows.first()).map(Vec::len);
    if let (Some(f), Some(w)) = (args.features, file_width)
        && f != w
    {
        bail!("--features {f}, but the rows of --input-file have {w} values");
    }
    let (input_name, inner_shape, width) = match (args.features, args.target) {
        (Some(f), _) => (String::new(), vec![i64::try_from(f)?], f),
        (None, BenchTarget::Torchwire) => model_input(args, model, channel).await?,
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
        return Ok(Requests::kserve_infer(model, &name, &inner_shape, batches));
    }
    Ok(match args.target {
        BenchTarget::Torchwire => Requests::torchwire_predict(model, &input_name, &inner_shape, batches),
        BenchTarget::Python => Requests::python_predict(model, batches)?,
        BenchTarget::Torchserve => Requests::torchserve_predict(model, batches)?,
    })
}

/// torchwire without `--features`: the model's first input as Admin.GetModel reports it:
/// (name, dimensions after the batch one, features per row).
async fn model_input(args: &BenchArgs, model: &str, channel: &Channel) -> anyhow::Result<(String, Vec<i64>, usize)> {
    let mut req = tonic::Request::new(GetModelRequest { model: model.to_owned() });
    if let Some(auth) = bearer(args.key.as_deref())? {
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
        bail!("load --rpc predict needs fixed feature dimensions, model has shape {:?}", input.shape);
    }
    Ok((input.name.clone(), input.shape[1..].to_vec(), usize::try_from(width)?))
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
    fn addresses_get_a_scheme() {
        assert_eq!(normalise_addr("127.0.0.1:7070"), "http://127.0.0.1:7070");
        assert_eq!(normalise_addr("http://h:1"), "http://h:1");
    }
}

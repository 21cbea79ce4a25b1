//! `torchwire bench`: a closed-loop load generator over the generated tonic client, and
//! `torchwire bench-raw`: the same model's forward pass in-process through libtorch, so the two
//! can be compared side by side in one run.
//!
//! Every response's gRPC status is checked and counted by code; latencies are recorded per
//! request (after the warm-up) and summarised as percentiles.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::{Args, ValueEnum};
use tonic::transport::{Channel, Endpoint};

use crate::device::Device;
use crate::model::manifest::Repository;
use crate::model::{BackendFactory, HostTensor, ModelKind};
use crate::proto::admin_client::AdminClient;
use crate::proto::inference_client::InferenceClient;
use crate::proto::{DataType, GetModelRequest, PredictRequest, SentimentRequest, Tensor};

/// A ~12-token English sentence (with special tokens), the default text.
pub const DEFAULT_TEXT: &str = "The service was quick and the food was really good.";

/// Which RPC a benchmark drives.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum BenchRpc {
    /// Inference.Predict with float tensors.
    Predict,
    /// Inference.Sentiment.
    Sentiment,
}

/// Flags of `torchwire bench`.
#[derive(Debug, Args, Clone)]
pub struct BenchArgs {
    /// Server address.
    #[arg(long, env = "TORCHWIRE_ADDR", default_value = "http://127.0.0.1:50051")]
    pub addr: String,
    /// RPC to drive.
    #[arg(long, value_enum, default_value = "predict")]
    pub rpc: BenchRpc,
    /// Model name.
    #[arg(long)]
    pub model: String,
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
    /// Text sent by Sentiment requests.
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
    /// Print one JSON object instead of a table.
    #[arg(long)]
    pub json: bool,
}

/// Flags of `torchwire bench-raw`.
#[derive(Debug, Args, Clone)]
pub struct RawBenchArgs {
    /// Model repository.
    #[arg(long, default_value = "./models")]
    pub model_dir: std::path::PathBuf,
    /// Model name.
    #[arg(long)]
    pub model: String,
    /// Batch sizes (rows or texts per forward pass), comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "1")]
    pub batch: Vec<usize>,
    /// Forward passes per batch size.
    #[arg(long, default_value_t = 200)]
    pub iters: usize,
    /// libtorch intra-op threads.
    #[arg(long, default_value_t = 1)]
    pub threads: usize,
    /// Text for text models.
    #[arg(long, default_value = DEFAULT_TEXT)]
    pub text: String,
    /// Print JSON lines instead of a table.
    #[arg(long)]
    pub json: bool,
}

/// Latency percentiles in microseconds.
#[derive(Debug, Clone, Copy, Default)]
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

    fn record(&mut self, result: std::result::Result<(), tonic::Status>, rows: u64, us: u64) {
        let code = match result {
            Ok(()) => {
                self.ok_us.push(us);
                self.rows += rows;
                "OK".to_owned()
            }
            Err(status) => {
                self.err_us.push(us);
                format!("{:?}", status.code())
            }
        };
        *self.codes.entry(code).or_default() += 1;
    }
}

/// Sends one request from the template; returns its outcome and rows.
async fn one(
    client: &mut InferenceClient<Channel>,
    template: &Template,
    timeout: Duration,
) -> (std::result::Result<(), tonic::Status>, u64) {
    match template {
        Template::Predict(r, rows) => {
            let mut req = tonic::Request::new(r.clone());
            req.set_timeout(timeout);
            (client.predict(req).await.map(drop), *rows)
        }
        Template::Sentiment(r, rows) => {
            let mut req = tonic::Request::new(r.clone());
            req.set_timeout(timeout);
            (client.sentiment(req).await.map(drop), *rows)
        }
    }
}

/// Open loop: a request every 1/rate seconds, each in its own task, at most `concurrency`
/// outstanding.
async fn open_loop(
    args: &BenchArgs,
    channels: &[Channel],
    template: &Arc<Template>,
    measure_from: Instant,
    end: Instant,
    timeout: Duration,
) -> Sample {
    let results = Arc::new(std::sync::Mutex::new(Sample::default()));
    let outstanding = Arc::new(tokio::sync::Semaphore::new(args.concurrency));
    let mut tick = tokio::time::interval(Duration::from_secs_f64(1.0 / args.rate));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let mut sent = 0usize;
    let mut overrun = 0u64;
    while Instant::now() < end {
        tick.tick().await;
        let Ok(permit) = Arc::clone(&outstanding).try_acquire_owned() else {
            if Instant::now() >= measure_from {
                overrun += 1;
            }
            continue;
        };
        let mut client = InferenceClient::new(channels[sent % channels.len()].clone());
        sent += 1;
        let (template, results) = (Arc::clone(template), Arc::clone(&results));
        tokio::spawn(async move {
            let t0 = Instant::now();
            let (result, rows) = one(&mut client, &template, timeout).await;
            drop(permit);
            if t0 >= measure_from && t0 < end {
                let us = u64::try_from(t0.elapsed().as_micros()).unwrap_or(u64::MAX);
                results.lock().unwrap_or_else(|p| p.into_inner()).record(result, rows, us);
            }
        });
    }
    // Let the last requests finish.
    let _ = tokio::time::timeout(timeout, outstanding.acquire_many(args.concurrency as u32)).await;
    let mut s = std::mem::take(&mut *results.lock().unwrap_or_else(|p| p.into_inner()));
    if overrun > 0 {
        s.codes.insert("client_overrun".into(), overrun);
    }
    s
}

/// Runs `torchwire bench` and prints its report.
pub async fn run(args: BenchArgs) -> anyhow::Result<()> {
    if args.concurrency == 0 || args.connections == 0 || args.rows == 0 {
        bail!("--concurrency, --connections and --rows must be at least 1");
    }
    let mut channels = Vec::with_capacity(args.connections);
    for _ in 0..args.connections {
        let ch = Endpoint::from_shared(args.addr.clone())?
            .connect()
            .await
            .with_context(|| format!("connecting to {}", args.addr))?;
        channels.push(ch);
    }
    let template = Arc::new(request_template(&args, channels[0].clone()).await?);
    let start = Instant::now();
    let measure_from = start + Duration::from_secs_f64(args.warmup);
    let end = measure_from + Duration::from_secs_f64(args.duration);
    let timeout = Duration::from_millis(args.timeout_ms);
    let mut all = Sample::default();
    if args.rate > 0.0 {
        all = open_loop(&args, &channels, &template, measure_from, end, timeout).await;
    } else {
        let tasks: Vec<_> = (0..args.concurrency)
            .map(|i| {
                let channel = channels[i % channels.len()].clone();
                let template = Arc::clone(&template);
                tokio::spawn(async move { drive(channel, &template, measure_from, end, timeout).await })
            })
            .collect();
        for t in tasks {
            all.merge(t.await?);
        }
    }
    let secs = args.duration;
    let ok = all.ok_us.len() as f64;
    let lat = percentiles(&mut all.ok_us);
    let rej = percentiles(&mut all.err_us);
    if args.json {
        let codes: Vec<String> = all.codes.iter().map(|(k, v)| format!("\"{k}\":{v}")).collect();
        println!(
            "{{\"rpc\":\"{:?}\",\"model\":\"{}\",\"concurrency\":{},\"rows\":{},\"requests_per_s\":{:.1},\"rows_per_s\":{:.1},\"p50_us\":{},\"p90_us\":{},\"p99_us\":{},\"p999_us\":{},\"max_us\":{},\"error_p99_us\":{},\"codes\":{{{}}}}}",
            args.rpc,
            args.model,
            args.concurrency,
            args.rows,
            ok / secs,
            all.rows as f64 / secs,
            lat.p50,
            lat.p90,
            lat.p99,
            lat.p999,
            lat.max,
            rej.p99,
            codes.join(",")
        );
    } else {
        println!(
            "{:?} {} concurrency {} rows {}: {:.1} req/s, {:.1} rows/s; latency us p50 {} p90 {} p99 {} p99.9 {} max {}; codes {:?}{}",
            args.rpc,
            args.model,
            args.concurrency,
            args.rows,
            ok / secs,
            all.rows as f64 / secs,
            lat.p50,
            lat.p90,
            lat.p99,
            lat.p999,
            lat.max,
            all.codes,
            if all.err_us.is_empty() {
                String::new()
            } else {
                format!("; errors answered in p50 {} p99 {} us", rej.p50, rej.p99)
            }
        );
    }
    Ok(())
}

enum Template {
    Predict(PredictRequest, u64),
    Sentiment(SentimentRequest, u64),
}

async fn request_template(args: &BenchArgs, channel: Channel) -> anyhow::Result<Template> {
    Ok(match args.rpc {
        BenchRpc::Predict => {
            let info =
                AdminClient::new(channel).get_model(GetModelRequest { model: args.model.clone() }).await?.into_inner();
            let input = info.inputs.first().context("model has no inputs")?;
            let width: i64 = input.shape.iter().skip(1).product();
            if width <= 0 {
                bail!("bench predict needs fixed feature dimensions, model has shape {:?}", input.shape);
            }
            let rows = args.rows as i64;
            // Realistic-enough values: small, deterministic, different per element.
            let data: Vec<f32> = (0..rows * width).map(|i| ((i % 17) as f32) * 0.37 + 1.0).collect();
            let req = PredictRequest {
                model: args.model.clone(),
                inputs: vec![Tensor {
                    name: input.name.clone(),
                    dtype: DataType::Float32 as i32,
                    shape: std::iter::once(rows).chain(input.shape.iter().skip(1).copied()).collect(),
                    float_data: data,
                    ..Default::default()
                }],
                ..Default::default()
            };
            Template::Predict(req, args.rows as u64)
        }
        BenchRpc::Sentiment => {
            let req = SentimentRequest {
                texts: vec![args.text.clone(); args.rows],
                model: args.model.clone(),
                ..Default::default()
            };
            Template::Sentiment(req, args.rows as u64)
        }
    })
}

async fn drive(
    channel: Channel,
    template: &Template,
    measure_from: Instant,
    end: Instant,
    timeout: Duration,
) -> Sample {
    let mut client = InferenceClient::new(channel);
    let mut s = Sample::default();
    loop {
        let t0 = Instant::now();
        if t0 >= end {
            return s;
        }
        let (result, rows) = one(&mut client, template, timeout).await;
        if t0 >= measure_from {
            s.record(result, rows, u64::try_from(t0.elapsed().as_micros()).unwrap_or(u64::MAX));
        }
    }
}

/// Runs `torchwire bench-raw`: the forward pass (and tokenisation, for text models) in-process,
/// on this thread, for each batch size. Blocking; call outside any async runtime.
pub fn run_raw(args: &RawBenchArgs) -> anyhow::Result<()> {
    let _guard = tch::no_grad_guard();
    let repo = Repository::scan(&args.model_dir)?;
    let spec = repo.get(&args.model).map_err(|e| anyhow::anyhow!("{e}"))?;
    let mut backend =
        crate::model::torch::TorchFactory.load(&spec, Device::Cpu, args.threads).map_err(anyhow::Error::msg)?;
    let mut encoder = spec
        .text
        .as_ref()
        .map(|t| crate::tokenize::TextEncoder::load(&t.tokenizer))
        .transpose()
        .map_err(anyhow::Error::msg)?;
    for &batch in &args.batch {
        let mut tok_us = Vec::with_capacity(args.iters);
        let mut fwd_us = Vec::with_capacity(args.iters);
        for i in 0..args.iters + 10 {
            let t0 = Instant::now();
            let inputs = match (spec.kind, encoder.as_mut()) {
                (ModelKind::TextClassification, Some(enc)) => {
                    let max =
                        Device::Cpu.default_max_text_length().min(spec.text.as_ref().map_or(256, |t| t.max_length));
                    enc.encode(&vec![args.text.clone(); batch], max, &spec.inputs).map_err(anyhow::Error::msg)?.0
                }
                _ => {
                    let width: i64 = spec.inputs[0].shape.iter().skip(1).product();
                    let values: Vec<f32> = (0..batch as i64 * width).map(|i| ((i % 17) as f32) * 0.37 + 1.0).collect();
                    vec![HostTensor::from_f32(&spec.inputs[0].name, vec![batch as i64, width], &values)]
                }
            };
            let t1 = Instant::now();
            backend.forward(inputs).map_err(anyhow::Error::msg)?;
            let t2 = Instant::now();
            if i >= 10 {
                tok_us.push(u64::try_from((t1 - t0).as_micros()).unwrap_or(u64::MAX));
                fwd_us.push(u64::try_from((t2 - t1).as_micros()).unwrap_or(u64::MAX));
            }
        }
        let total_fwd: u64 = fwd_us.iter().sum();
        let fwd = percentiles(&mut fwd_us);
        let tok = percentiles(&mut tok_us);
        let rows_per_s = (batch * args.iters) as f64 / (total_fwd as f64 / 1e6);
        if args.json {
            println!(
                "{{\"model\":\"{}\",\"batch\":{batch},\"threads\":{},\"forward_p50_us\":{},\"forward_p99_us\":{},\"prepare_p50_us\":{},\"rows_per_s\":{rows_per_s:.1}}}",
                args.model, args.threads, fwd.p50, fwd.p99, tok.p50
            );
        } else {
            println!(
                "raw {} batch {batch} threads {}: forward p50 {} us p99 {} us; input preparation (tokenisation) p50 {} us; {rows_per_s:.1} rows/s",
                args.model, args.threads, fwd.p50, fwd.p99, tok.p50
            );
        }
    }
    Ok(())
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
}

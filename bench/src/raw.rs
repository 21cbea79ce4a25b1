//! `torchwire-bench raw`: a model's forward pass (and tokenisation, for text models) timed
//! in-process through libtorch, the floor under what `torchwire-bench load` measures over gRPC.
//!
//! With `--compare-formats` it loads the model twice, as TorchScript (`model.pt`) and as an
//! AOTInductor package (`model.pt2`), and times the two in interleaved rounds (which goes first
//! alternates), so that drift on a busy host falls on both alike.
//!
//! Blocking and single-threaded by design: it runs on the caller's thread, outside any async
//! runtime, so nothing but libtorch's own intra-op pool competes with it.

use std::time::Instant;

use clap::Args;
use torchwire::device::Device;
use torchwire::model::Repository;
use torchwire::model::torch::TorchFactory;
use torchwire::model::{Backend, BackendFactory, HostTensor, ModelFormat, ModelKind, ModelSpec};
use torchwire::tokenize::TextEncoder;

use crate::report::percentiles;
use crate::workload::DEFAULT_TEXT;

/// Flags of `torchwire-bench raw`.
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
    /// Time the version's `model.pt` and `model.pt2` side by side, in interleaved rounds.
    #[arg(long)]
    pub compare_formats: bool,
    /// Rounds of `--compare-formats` (each runs `--iters` passes of each format).
    #[arg(long, default_value_t = 5)]
    pub rounds: usize,
}

/// Runs `torchwire-bench raw`: the forward pass (and tokenisation, for text models) in-process,
/// on this thread, for each batch size. Blocking; call outside any async runtime.
pub fn run_raw(args: &RawBenchArgs) -> anyhow::Result<()> {
    let _guard = tch::no_grad_guard();
    let repo = Repository::scan(&args.model_dir, None)?;
    let entry = repo.get(&args.model).map_err(|e| anyhow::anyhow!("{e}"))?;
    let spec =
        std::sync::Arc::clone(entry.latest().ok_or_else(|| anyhow::anyhow!("{}: no servable version", args.model))?);
    if args.compare_formats {
        return compare_formats(args, &spec);
    }
    let mut backend = TorchFactory.load(&spec, Device::Cpu, args.threads).map_err(anyhow::Error::msg)?;
    let mut encoder =
        spec.text.as_ref().map(|t| TextEncoder::load(&t.tokenizer)).transpose().map_err(anyhow::Error::msg)?;
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

/// One batch of `batch` rows or texts, as the server would hand it to the backend.
fn inputs_for(
    spec: &ModelSpec,
    encoder: Option<&mut TextEncoder>,
    text: &str,
    batch: usize,
) -> anyhow::Result<Vec<HostTensor>> {
    Ok(match (spec.kind, encoder) {
        (ModelKind::TextClassification, Some(enc)) => {
            let max = Device::Cpu.default_max_text_length().min(spec.text.as_ref().map_or(256, |t| t.max_length));
            enc.encode(&vec![text.to_owned(); batch], max, &spec.inputs).map_err(anyhow::Error::msg)?.0
        }
        _ => {
            let width: i64 = spec.inputs[0].shape.iter().skip(1).product();
            let values: Vec<f32> = (0..batch as i64 * width).map(|i| ((i % 17) as f32) * 0.37 + 1.0).collect();
            vec![HostTensor::from_f32(&spec.inputs[0].name, vec![batch as i64, width], &values)]
        }
    })
}

/// `spec` served from `format`'s file of the same version.
fn as_format(spec: &ModelSpec, format: ModelFormat) -> ModelSpec {
    let mut s = spec.clone();
    s.file = spec.file.with_file_name(format.file_name());
    s.format = format;
    s
}

/// Median forward time, in microseconds (from nanoseconds: a tabular pass takes a few), of
/// `iters` passes after 10 untimed ones.
fn median_forward_us(backend: &mut dyn Backend, inputs: &[HostTensor], iters: usize) -> anyhow::Result<f64> {
    let mut took = Vec::with_capacity(iters);
    for i in 0..iters + 10 {
        let batch = inputs.to_vec();
        let t = Instant::now();
        backend.forward(batch).map_err(anyhow::Error::msg)?;
        if i >= 10 {
            took.push(u64::try_from(t.elapsed().as_nanos()).unwrap_or(u64::MAX));
        }
    }
    took.sort_unstable();
    Ok(took[took.len() / 2] as f64 / 1000.0)
}

/// `--compare-formats`: TorchScript and `.pt2` of the same version, in interleaved rounds.
fn compare_formats(args: &RawBenchArgs, spec: &ModelSpec) -> anyhow::Result<()> {
    let formats = [ModelFormat::TorchScript, ModelFormat::Pt2];
    let mut backends = Vec::new();
    for f in formats {
        let s = as_format(spec, f);
        backends
            .push(TorchFactory.load(&s, Device::Cpu, args.threads).map_err(|e| anyhow::anyhow!("{}: {e}", f.name()))?);
    }
    let mut encoder =
        spec.text.as_ref().map(|t| TextEncoder::load(&t.tokenizer)).transpose().map_err(anyhow::Error::msg)?;
    for &batch in &args.batch {
        let inputs = inputs_for(spec, encoder.as_mut(), &args.text, batch)?;
        let mut medians = [Vec::new(), Vec::new()];
        for round in 0..args.rounds {
            let order = if round % 2 == 0 { [0, 1] } else { [1, 0] };
            for i in order {
                medians[i].push(median_forward_us(backends[i].as_mut(), &inputs, args.iters)?);
            }
            let (ts, p2) = (medians[0][round], medians[1][round]);
            println!(
                "raw {} batch {batch} threads {} round {}: torchscript p50 {ts:.1} us, pt2 p50 {p2:.1} us, pt2/torchscript {:.2}",
                args.model,
                args.threads,
                round + 1,
                p2 / ts.max(0.001)
            );
        }
        let mut sorted: Vec<f64> = medians[0].iter().zip(&medians[1]).map(|(a, b)| b / a.max(0.001)).collect();
        sorted.sort_by(f64::total_cmp);
        let (lo, mid, hi) = (sorted[0], sorted[sorted.len() / 2], sorted[sorted.len() - 1]);
        if args.json {
            println!(
                "{{\"model\":\"{}\",\"batch\":{batch},\"threads\":{},\"torchscript_p50_us\":{:?},\"pt2_p50_us\":{:?},\"pt2_over_torchscript_median\":{mid:.3}}}",
                args.model, args.threads, medians[0], medians[1]
            );
        } else {
            println!(
                "raw {} batch {batch} threads {}: pt2/torchscript median {mid:.2} (range {lo:.2}-{hi:.2}) over {} interleaved rounds of {} passes",
                args.model, args.threads, args.rounds, args.iters
            );
        }
    }
    Ok(())
}

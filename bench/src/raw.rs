//! `torchwire-bench raw`: a model's forward pass (and tokenisation, for text models) timed
//! in-process through libtorch, the floor under what `torchwire-bench load` measures over gRPC.
//!
//! Blocking and single-threaded by design: it runs on the caller's thread, outside any async
//! runtime, so nothing but libtorch's own intra-op pool competes with it.

use std::time::Instant;

use clap::Args;
use torchwire::device::Device;
use torchwire::model::Repository;
use torchwire::model::torch::TorchFactory;
use torchwire::model::{BackendFactory, HostTensor, ModelKind};
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
}

/// Runs `torchwire-bench raw`: the forward pass (and tokenisation, for text models) in-process,
/// on this thread, for each batch size. Blocking; call outside any async runtime.
pub fn run_raw(args: &RawBenchArgs) -> anyhow::Result<()> {
    let _guard = tch::no_grad_guard();
    let repo = Repository::scan(&args.model_dir, None)?;
    let entry = repo.get(&args.model).map_err(|e| anyhow::anyhow!("{e}"))?;
    let spec =
        std::sync::Arc::clone(entry.latest().ok_or_else(|| anyhow::anyhow!("{}: no servable version", args.model))?);
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

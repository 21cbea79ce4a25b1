//! The AOTInductor backend: a `model.pt2` package (`torch.export` + `aoti_compile_and_package`,
//! made by `models/pt2.py`) owned by one worker thread, behind the same [`Backend`] trait as
//! TorchScript, so the registry, batching, deadlines, metrics and every front door are shared.
//!
//! Compiled kernels check nothing: a tensor of the wrong shape makes them read past their
//! buffers, and a kernel's own check that fires inside a parallel region ends the process. So
//! everything is checked here first, from the package's metadata: at load, that the package
//! was compiled for this device (and this CPU's instruction set) by this torch release, and
//! that its inputs are the manifest's and cover what the manifest lets through; on every pass,
//! that each dimension lies in the range `torch.export` proved, else INVALID_ARGUMENT naming
//! the range ([`Cause::OutOfRange`]). What the loader or a kernel throws comes back from the
//! C++ shim ([`ffi`]) as an error, never as an exception or a crash.
//!
//! Called by [`super::torch::TorchFactory`] on the worker thread, like the TorchScript backend.

mod ffi;

use serde::Deserialize;

use super::torch::{kind_of, to_host};
use super::{Backend, DType, HostTensor, ModelSpec};
use crate::device::Device;
use crate::error::Cause;

/// One input of a package, as `models/pt2.py` records it (`torchwire.inputs`).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct PackageInput {
    /// Input name (the manifest's).
    pub name: String,
    /// Manifest spelling of its dtype.
    pub dtype: String,
    /// Per dimension, the inclusive `[min, max]` the export proved; `[n, n]` when static.
    pub dims: Vec<[i64; 2]>,
}

/// An AOTInductor package on one device.
pub struct Pt2Backend {
    package: ffi::Package,
    device: tch::Device,
    inputs: Vec<PackageInput>,
    memory_bytes: u64,
}

/// Metadata keys `models/pt2.py` writes.
const INPUTS_KEY: &str = "torchwire.inputs";
const TORCH_KEY: &str = "torchwire.torch_version";

/// Loads `spec`'s package onto `device` after checking its metadata (read from the archive
/// before any of its code is mapped).
pub fn load(spec: &ModelSpec, device: Device) -> Result<Box<dyn Backend>, Cause> {
    let path = spec.model_path();
    let meta = ffi::read_metadata(&path).map_err(|e| Cause::Pt2(format!("reading the package: {e}")))?;
    let inputs = check_package(spec, device, &meta, &ffi::torch_version())?;
    let cuda = match device {
        Device::Cpu => None,
        Device::Cuda(i) => Some(i),
    };
    let package = ffi::Package::load(&path, cuda).map_err(|e| Cause::Pt2(format!("loading the package: {e}")))?;
    // The constants are compiled into the package's shared object: its size is the closest
    // figure to the parameters' bytes that the loader gives away.
    let memory_bytes = std::fs::metadata(&path).map_or(0, |m| m.len());
    let loaded = package.metadata().map_err(|e| Cause::Pt2(format!("reading the loaded package's metadata: {e}")))?;
    tracing::info!(
        model = %spec.id(),
        %device,
        compiled_for = value(&loaded, "AOTI_DEVICE_KEY").unwrap_or("cpu"),
        cpu_isa = value(&loaded, "AOTI_CPU_ISA").unwrap_or(""),
        torch = value(&loaded, TORCH_KEY).unwrap_or(""),
        "loaded AOTInductor package"
    );
    Ok(Box::new(Pt2Backend { package, device: device.to_tch(), inputs, memory_bytes }))
}

fn value<'a>(meta: &'a [(String, String)], key: &str) -> Option<&'a str> {
    meta.iter().find(|(k, _)| k == key).map(|(_, v)| v.as_str())
}

/// Everything a load refuses, from the metadata alone; returns the package's inputs.
pub fn check_package(
    spec: &ModelSpec,
    device: Device,
    meta: &[(String, String)],
    runtime_torch: &str,
) -> Result<Vec<PackageInput>, Cause> {
    let bad = |why: String| Err(Cause::Pt2(why));
    let compiled_for = value(meta, "AOTI_DEVICE_KEY").unwrap_or("cpu");
    let wanted = match device {
        Device::Cpu => "cpu",
        Device::Cuda(_) => "cuda",
    };
    if compiled_for != wanted {
        return bad(format!("the package was compiled for {compiled_for}, not {wanted}; compile one for {wanted}"));
    }
    if device == Device::Cpu
        && let Some(missing) = value(meta, "AOTI_CPU_ISA").and_then(missing_cpu_feature)
    {
        return bad(format!("the package was compiled for {missing}, which this CPU lacks"));
    }
    let Some(built_with) = value(meta, TORCH_KEY) else {
        return bad(format!("the package has no `{TORCH_KEY}` metadata: build it with models/pt2.py"));
    };
    let release = |v: &str| v.split('+').next().unwrap_or_default().to_owned();
    if release(built_with) != release(runtime_torch) {
        return bad(format!(
            "the package was compiled by torch {built_with}; this server runs libtorch {runtime_torch}"
        ));
    }
    let Some(raw) = value(meta, INPUTS_KEY) else {
        return bad(format!("the package has no `{INPUTS_KEY}` metadata: build it with models/pt2.py"));
    };
    let inputs: Vec<PackageInput> =
        serde_json::from_str(raw).map_err(|e| Cause::Pt2(format!("`{INPUTS_KEY}` does not parse: {e}")))?;
    match_manifest(spec, device, &inputs)
        .map_err(|why| Cause::Pt2(format!("inputs do not match the manifest: {why}")))?;
    Ok(inputs)
}

/// The first instruction-set extension of AOTInductor's `AOTI_CPU_ISA` list that this CPU
/// lacks: kernels built with `-march` for it would die of SIGILL, not fail.
fn missing_cpu_feature(isa: &str) -> Option<String> {
    isa.split_whitespace().find(|f| !cpu_has(f)).map(str::to_owned)
}

#[cfg(target_arch = "x86_64")]
fn cpu_has(feature: &str) -> bool {
    match feature {
        // What AOTInductor's `-mavx512f -mavx512dq -mavx512vl -mavx512bw -mfma` needs.
        "AVX512" => {
            std::arch::is_x86_feature_detected!("avx512f")
                && std::arch::is_x86_feature_detected!("avx512dq")
                && std::arch::is_x86_feature_detected!("avx512vl")
                && std::arch::is_x86_feature_detected!("avx512bw")
                && std::arch::is_x86_feature_detected!("fma")
        }
        "AVX512_VNNI" => std::arch::is_x86_feature_detected!("avx512vnni"),
        "AVX512_BF16" => std::arch::is_x86_feature_detected!("avx512bf16"),
        "AVX2" => {
            std::arch::is_x86_feature_detected!("avx2")
                && std::arch::is_x86_feature_detected!("fma")
                && std::arch::is_x86_feature_detected!("f16c")
        }
        // Its detection macro is unstable: the kernel's flag list says it.
        "AMX_TILE" => std::fs::read_to_string("/proc/cpuinfo").is_ok_and(|info| {
            info.lines().any(|l| l.starts_with("flags") && l.split_whitespace().any(|f| f == "amx_tile"))
        }),
        // A name this table does not know (or "", the default build): nothing to check.
        _ => true,
    }
}

#[cfg(not(target_arch = "x86_64"))]
fn cpu_has(_feature: &str) -> bool {
    true
}

/// The package's inputs against the manifest's: names, order, dtypes, ranks, static
/// dimensions, and ranges that hold every batch the worker forms and every text the tokenizer
/// makes.
fn match_manifest(spec: &ModelSpec, device: Device, inputs: &[PackageInput]) -> Result<(), String> {
    let names = |v: Vec<&str>| v.join(", ");
    if inputs.len() != spec.inputs.len() || inputs.iter().zip(&spec.inputs).any(|(p, m)| p.name != m.name) {
        return Err(format!(
            "the package takes [{}], the manifest [{}]",
            names(inputs.iter().map(|i| i.name.as_str()).collect()),
            names(spec.inputs.iter().map(|i| i.name.as_str()).collect())
        ));
    }
    let rows = spec.max_batch_size.unwrap_or_else(|| device.default_max_batch_size()) as i64;
    for (p, m) in inputs.iter().zip(&spec.inputs) {
        if p.dtype != m.dtype.name() {
            return Err(format!("input `{}` is {} in the package, {} in the manifest", p.name, p.dtype, m.dtype));
        }
        if p.dims.len() != m.shape.len() {
            return Err(format!(
                "input `{}` has rank {} in the package, {} in the manifest",
                p.name,
                p.dims.len(),
                m.shape.len()
            ));
        }
        for (d, (&[lo, hi], &want)) in p.dims.iter().zip(&m.shape).enumerate() {
            let need = match (d, &spec.text) {
                (0, _) => Some((1, rows)),
                (_, _) if want >= 0 => Some((want, want)),
                (_, Some(text)) => Some((2, text.max_length as i64)),
                (_, None) => None,
            };
            if let Some((a, b)) = need.filter(|&(a, b)| lo > a || hi < b) {
                return Err(format!(
                    "input `{}` dimension {d} takes {} in the package; the manifest needs {}",
                    p.name,
                    range_text(lo, hi),
                    range_text(a, b)
                ));
            }
        }
    }
    Ok(())
}

fn range_text(lo: i64, hi: i64) -> String {
    if lo == hi { lo.to_string() } else { format!("{lo}..={hi}") }
}

/// Checks a pass's tensors against the package's exported ranges: the message is the client's.
pub fn check_ranges(package: &[PackageInput], inputs: &[HostTensor]) -> Result<(), String> {
    if inputs.len() != package.len() {
        return Err(format!("the model takes {} inputs, got {}", package.len(), inputs.len()));
    }
    for (p, t) in package.iter().zip(inputs) {
        if DType::from_name(&p.dtype) != Some(t.dtype) {
            return Err(format!("input `{}` takes {}, got {}", p.name, p.dtype, t.dtype));
        }
        if t.shape.len() != p.dims.len() {
            return Err(format!("input `{}` has {} dimensions, got {}", p.name, p.dims.len(), t.shape.len()));
        }
        for (d, (&[lo, hi], &got)) in p.dims.iter().zip(&t.shape).enumerate() {
            if got < lo || got > hi {
                return Err(format!(
                    "input `{}` dimension {d} is {got}, outside the range {} the model was exported for",
                    p.name,
                    range_text(lo, hi)
                ));
            }
        }
    }
    Ok(())
}

impl Backend for Pt2Backend {
    fn forward(&mut self, inputs: Vec<HostTensor>) -> Result<Vec<HostTensor>, Cause> {
        check_ranges(&self.inputs, &inputs).map_err(Cause::OutOfRange)?;
        let mut tensors = Vec::with_capacity(inputs.len());
        for input in &inputs {
            let t = tch::Tensor::f_from_data_size(&input.data, &input.shape, kind_of(input.dtype))
                .and_then(|t| if self.device == tch::Device::Cpu { Ok(t) } else { t.f_to_device(self.device) })
                .map_err(Cause::Torch)?;
            tensors.push(t);
        }
        let outputs = self.package.run(&tensors).map_err(|e| {
            // As for TorchScript, a CUDA error poisons the context: the worker stops and the
            // model is loaded afresh.
            if e.0.contains("CUDA error") { Cause::WorkerFault(e.0) } else { Cause::Pt2(e.0) }
        })?;
        outputs.iter().enumerate().map(|(i, t)| to_host(&format!("output_{i}"), t)).collect()
    }

    fn memory_bytes(&self) -> u64 {
        self.memory_bytes
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::manifest::parse_manifest;
    use std::path::Path;

    const TABULAR: &str = "format = \"pt2\"\nkind = \"tabular\"\n[batching]\nmax_batch_size = 32\n[[inputs]]\nname = \"features\"\ndtype = \"float32\"\nshape = [-1, 2]\nfeatures = [{ name = \"a\" }, { name = \"b\" }]\n";

    fn meta(inputs: &str) -> Vec<(String, String)> {
        [("AOTI_DEVICE_KEY", "cpu"), (TORCH_KEY, "2.13.0"), (INPUTS_KEY, inputs)]
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    const GOOD: &str = r#"[{"name": "features", "dtype": "float32", "dims": [[1, 4096], [2, 2]]}]"#;

    fn refusal(meta: &[(String, String)], device: Device) -> String {
        let spec = parse_manifest("m", Path::new("/x"), TABULAR).unwrap();
        check_package(&spec, device, meta, "2.13.0+cu130").unwrap_err().to_string()
    }

    #[test]
    fn a_matching_package_passes_and_its_ranges_guard_each_pass() {
        let spec = parse_manifest("m", Path::new("/x"), TABULAR).unwrap();
        let inputs = check_package(&spec, Device::Cpu, &meta(GOOD), "2.13.0+cu130").unwrap();
        let ok = HostTensor::from_f32("features", vec![3, 2], &[0.0; 6]);
        assert_eq!(check_ranges(&inputs, &[ok]), Ok(()));
        let wide = HostTensor::from_f32("features", vec![1, 3], &[0.0; 3]);
        let err = check_ranges(&inputs, &[wide]).unwrap_err();
        assert!(err.contains("dimension 1 is 3, outside the range 2"), "{err}");
        let many = HostTensor::from_f32("features", vec![5000, 2], &vec![0.0; 10_000]);
        let err = check_ranges(&inputs, &[many]).unwrap_err();
        assert!(err.contains("dimension 0 is 5000, outside the range 1..=4096"), "{err}");
    }

    #[test]
    fn packages_for_another_device_release_or_signature_are_refused() {
        let mut cuda = meta(GOOD);
        cuda[0].1 = "cuda".into();
        assert!(refusal(&cuda, Device::Cpu).contains("compiled for cuda, not cpu"));
        assert!(refusal(&meta(GOOD), Device::Cuda(0)).contains("compiled for cpu, not cuda"));
        let mut old = meta(GOOD);
        old[1].1 = "2.12.0".into();
        assert!(refusal(&old, Device::Cpu).contains("compiled by torch 2.12.0"));
        let cases = [
            (r#"[{"name": "x", "dtype": "float32", "dims": [[1, 64], [2, 2]]}]"#, "the package takes [x]"),
            (r#"[{"name": "features", "dtype": "float64", "dims": [[1, 64], [2, 2]]}]"#, "float64 in the package"),
            (r#"[{"name": "features", "dtype": "float32", "dims": [[1, 64], [3, 3]]}]"#, "dimension 1 takes 3"),
            (r#"[{"name": "features", "dtype": "float32", "dims": [[1, 16], [2, 2]]}]"#, "needs 1..=32"),
            (r#"[{"name": "features", "dtype": "float32", "dims": [[1, 64]]}]"#, "rank 1"),
        ];
        for (inputs, want) in cases {
            let err = refusal(&meta(inputs), Device::Cpu);
            assert!(err.contains(want), "{err} should say {want}");
        }
        let unbuilt: Vec<_> = meta(GOOD).into_iter().filter(|(k, _)| k != INPUTS_KEY).collect();
        assert!(refusal(&unbuilt, Device::Cpu).contains("build it with models/pt2.py"));
    }

    #[test]
    fn unknown_instruction_sets_are_not_guessed_at() {
        assert_eq!(missing_cpu_feature(""), None);
        assert_eq!(missing_cpu_feature("SOMETHING_NEW"), None);
    }
}

//! The libtorch backend: a TorchScript `CModule` owned by one worker thread. Its factory also
//! hands `format = "pt2"` models to the AOTInductor backend ([`super::pt2`]).
//!
//! Every function here calls libtorch and so must only run on a worker's OS thread, never on a
//! tokio worker. The thread sets `no_grad` and the intra-op pool size before loading.

use tch::{CModule, IValue, Kind, Tensor};

use super::{Backend, BackendFactory, DType, HostTensor, ModelFormat, ModelSpec};
use crate::device::Device;
use crate::error::Cause;

/// Classifies a libtorch error. tch flattens C++ exceptions into text, so this is the one place
/// a CUDA fault is told apart by its message (c10's `CUDA error:`); above it, it is a variant.
fn cause(e: tch::TchError) -> Cause {
    if e.to_string().contains("CUDA error") { Cause::Cuda(e) } else { Cause::Torch(e) }
}

/// Loads models with libtorch: TorchScript itself, `.pt2` packages through [`super::pt2`].
#[derive(Debug, Default, Clone, Copy)]
pub struct TorchFactory;

/// A TorchScript module on one device.
pub struct TorchBackend {
    module: CModule,
    device: tch::Device,
    memory_bytes: u64,
    /// Float inputs are cast to half and outputs back to float.
    half: bool,
}

impl BackendFactory for TorchFactory {
    fn load(&self, spec: &ModelSpec, device: Device, threads: usize) -> Result<Box<dyn Backend>, Cause> {
        tch::set_num_threads(i32::try_from(threads.max(1)).unwrap_or(1));
        if spec.format == ModelFormat::Pt2 {
            return super::pt2::load(spec, device);
        }
        let path = spec.model_path();
        let dev = device.to_tch();
        // tch's error names the file; the cause is only ever logged.
        let mut module = CModule::load_on_device(&path, dev).map_err(cause)?;
        // `set_eval` and `to` panic on a libtorch error; the worker catches the panic and
        // records the load as failed.
        module.set_eval();
        // fp16 only on a GPU and only where the manifest allows it; the CPU stays fp32.
        let half = spec.fp16 && matches!(device, Device::Cuda(_));
        if half {
            module.to(dev, Kind::Half, false);
        }
        let memory_bytes =
            module.named_parameters().map(|ps| ps.iter().map(|(_, t)| tensor_bytes(t)).sum()).unwrap_or(0);
        Ok(Box::new(TorchBackend { module, device: dev, memory_bytes, half }))
    }
}

fn tensor_bytes(t: &Tensor) -> u64 {
    let elems: i64 = t.size().iter().product();
    let size = t.f_kind().map(Kind::elt_size_in_bytes).unwrap_or(0);
    u64::try_from(elems).unwrap_or(0) * size as u64
}

impl Backend for TorchBackend {
    fn forward(&mut self, inputs: Vec<HostTensor>) -> Result<Vec<HostTensor>, Cause> {
        let mut ivalues = Vec::with_capacity(inputs.len());
        for input in &inputs {
            // Each libtorch op goes through the dispatcher (about a microsecond for a tiny
            // model's tensors): a CPU input is made where it is used, with no `to`.
            let t = Tensor::f_from_data_size(&input.data, &input.shape, kind_of(input.dtype))
                .and_then(|t| if self.device == tch::Device::Cpu { Ok(t) } else { t.f_to_device(self.device) })
                .and_then(|t| if self.half && input.dtype == DType::F32 { t.f_to_kind(Kind::Half) } else { Ok(t) })
                .map_err(cause)?;
            ivalues.push(IValue::Tensor(t));
        }
        let out = self.module.forward_is(&ivalues).map_err(cause)?;
        let tensors = match out {
            IValue::Tensor(t) => vec![t],
            IValue::Tuple(items) | IValue::GenericList(items) => items
                .into_iter()
                .map(|v| match v {
                    IValue::Tensor(t) => Ok(t),
                    other => Err(Cause::Output(format!("a non-tensor output: {other:?}"))),
                })
                .collect::<Result<_, _>>()?,
            IValue::TensorList(ts) => ts,
            other => {
                return Err(Cause::Output(format!("{other:?}, expected a tensor or a tuple of tensors")));
            }
        };
        tensors
            .into_iter()
            .enumerate()
            .map(|(i, t)| {
                // Half outputs go back to float32 so clients see what the CPU path gives them.
                let t = if self.half && t.f_kind().ok() == Some(Kind::Half) {
                    t.f_to_kind(Kind::Float).map_err(cause)?
                } else {
                    t
                };
                to_host(&format!("output_{i}"), &t)
            })
            .collect()
    }

    fn memory_bytes(&self) -> u64 {
        self.memory_bytes
    }
}

/// The libtorch kind of a dtype.
pub(super) fn kind_of(d: DType) -> Kind {
    match d {
        DType::F32 => Kind::Float,
        DType::F64 => Kind::Double,
        DType::F16 => Kind::Half,
        DType::BF16 => Kind::BFloat16,
        DType::I64 => Kind::Int64,
        DType::I32 => Kind::Int,
        DType::I8 => Kind::Int8,
        DType::U8 => Kind::Uint8,
        DType::Bool => Kind::Bool,
    }
}

fn dtype_of(k: Kind) -> Option<DType> {
    Some(match k {
        Kind::Float => DType::F32,
        Kind::Double => DType::F64,
        Kind::Half => DType::F16,
        Kind::BFloat16 => DType::BF16,
        Kind::Int64 => DType::I64,
        Kind::Int => DType::I32,
        Kind::Int8 => DType::I8,
        Kind::Uint8 => DType::U8,
        Kind::Bool => DType::Bool,
        _ => return None,
    })
}

/// Copies a tensor (any device) into host memory.
pub(super) fn to_host(name: &str, t: &Tensor) -> Result<HostTensor, Cause> {
    // Skipped where they would change nothing (a CPU output is usually contiguous already).
    let t = if t.device() == tch::Device::Cpu { Ok(t.shallow_clone()) } else { t.f_to_device(tch::Device::Cpu) };
    let t = t.and_then(|t| if t.is_contiguous() { Ok(t) } else { t.f_contiguous() }).map_err(cause)?;
    let kind = t.f_kind().map_err(cause)?;
    let (t, dtype) = match dtype_of(kind) {
        Some(d) => (t, d),
        // Anything exotic is handed back as float32 rather than refused.
        None => (t.f_to_kind(Kind::Float).map_err(cause)?, DType::F32),
    };
    let shape = t.size();
    let numel = usize::try_from(shape.iter().product::<i64>())
        .map_err(|_| Cause::Output(format!("{name} has the impossible shape {shape:?}")))?;
    let mut data = vec![0u8; numel * dtype.size()];
    t.f_copy_data_u8(&mut data, numel).map_err(cause)?;
    Ok(HostTensor { name: name.to_owned(), dtype, shape, data })
}

//! Models below the service layer: the host-side tensor type every layer passes around, the
//! [`Backend`] trait a worker thread drives, the manifest, and the backends: TorchScript and
//! AOTInductor `.pt2` packages through libtorch, and a fake one for tests of the machinery
//! around the model.
//!
//! Nothing here knows about protobuf. Backends are created and used only on their worker's OS
//! thread; they are `Send` so the thread can own them, never shared.

pub mod fake;
pub mod manifest;
pub mod pt2;
pub mod repository;
pub mod torch;
pub mod versions;

use std::fmt;
use std::sync::Arc;

use crate::device::Device;
use crate::error::Cause;
pub use manifest::{InputSpec, ModelFormat, ModelKind, ModelSpec, OutputKind, SelfTest, TextSpec};
pub use repository::{ModelEntry, Repository};

/// Element type of a tensor.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DType {
    /// 32-bit float.
    F32,
    /// 64-bit float.
    F64,
    /// IEEE half.
    F16,
    /// bfloat16.
    BF16,
    /// 64-bit signed int.
    I64,
    /// 32-bit signed int.
    I32,
    /// 8-bit signed int.
    I8,
    /// 8-bit unsigned int.
    U8,
    /// Boolean, one byte each.
    Bool,
}

impl DType {
    /// Bytes per element.
    pub fn size(self) -> usize {
        match self {
            DType::F64 | DType::I64 => 8,
            DType::F32 | DType::I32 => 4,
            DType::F16 | DType::BF16 => 2,
            DType::I8 | DType::U8 | DType::Bool => 1,
        }
    }

    /// The manifest spelling (`float32`, `int64`, ...).
    pub fn name(self) -> &'static str {
        match self {
            DType::F32 => "float32",
            DType::F64 => "float64",
            DType::F16 => "float16",
            DType::BF16 => "bfloat16",
            DType::I64 => "int64",
            DType::I32 => "int32",
            DType::I8 => "int8",
            DType::U8 => "uint8",
            DType::Bool => "bool",
        }
    }

    /// Parses the manifest spelling.
    pub fn from_name(s: &str) -> Option<Self> {
        Some(match s {
            "float32" | "float" | "fp32" => DType::F32,
            "float64" | "double" | "fp64" => DType::F64,
            "float16" | "half" | "fp16" => DType::F16,
            "bfloat16" | "bf16" => DType::BF16,
            "int64" | "long" => DType::I64,
            "int32" | "int" => DType::I32,
            "int8" => DType::I8,
            "uint8" => DType::U8,
            "bool" => DType::Bool,
            _ => return None,
        })
    }

    /// True for the floating-point types (where NaN and Inf exist).
    pub fn is_float(self) -> bool {
        matches!(self, DType::F32 | DType::F64 | DType::F16 | DType::BF16)
    }
}

impl fmt::Display for DType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A dense tensor in host memory: row-major, little-endian bytes.
///
/// Bytes rather than typed vectors so that batching can concatenate and split along the first
/// dimension without caring about the element type.
#[derive(Debug, Clone, PartialEq)]
pub struct HostTensor {
    /// Input or output name.
    pub name: String,
    /// Element type.
    pub dtype: DType,
    /// Dimensions; the first is the batch dimension.
    pub shape: Vec<i64>,
    /// `shape.product() * dtype.size()` bytes.
    pub data: Vec<u8>,
}

impl HostTensor {
    /// A float32 tensor from values.
    pub fn from_f32(name: &str, shape: Vec<i64>, values: &[f32]) -> Self {
        HostTensor {
            name: name.to_owned(),
            dtype: DType::F32,
            shape,
            data: values.iter().flat_map(|v| v.to_le_bytes()).collect(),
        }
    }

    /// Number of elements.
    pub fn numel(&self) -> usize {
        self.data.len() / self.dtype.size()
    }

    /// The elements as f32 (converting from any numeric type); used for scores and outputs.
    pub fn to_f32(&self) -> Vec<f32> {
        let n = self.dtype.size();
        self.data
            .chunks_exact(n)
            .map(|c| match self.dtype {
                DType::F32 => f32::from_le_bytes([c[0], c[1], c[2], c[3]]),
                DType::F64 => f64::from_le_bytes([c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]]) as f32,
                DType::F16 => f16_to_f32(u16::from_le_bytes([c[0], c[1]])),
                DType::BF16 => f32::from_bits(u32::from(u16::from_le_bytes([c[0], c[1]])) << 16),
                DType::I64 => i64::from_le_bytes([c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]]) as f32,
                DType::I32 => i32::from_le_bytes([c[0], c[1], c[2], c[3]]) as f32,
                DType::I8 => f32::from(c[0] as i8),
                DType::U8 | DType::Bool => f32::from(c[0]),
            })
            .collect()
    }
}

/// IEEE half bits to f32.
pub fn f16_to_f32(h: u16) -> f32 {
    let sign = u32::from(h >> 15) << 31;
    let exp = u32::from((h >> 10) & 0x1f);
    let man = u32::from(h & 0x3ff);
    let bits = match (exp, man) {
        (0, 0) => sign,
        (0, m) => {
            // Subnormal: renormalise.
            let mut e: i32 = -14;
            let mut m = m;
            while m & 0x400 == 0 {
                m <<= 1;
                e -= 1;
            }
            sign | (((e + 127) as u32) << 23) | ((m & 0x3ff) << 13)
        }
        (0x1f, 0) => sign | 0x7f80_0000,
        (0x1f, m) => sign | 0x7fc0_0000 | (m << 13),
        (e, m) => sign | ((e + 127 - 15) << 23) | (m << 13),
    };
    f32::from_bits(bits)
}

/// The label a model gave one row or text.
#[derive(Debug, Clone, PartialEq)]
pub struct Prediction {
    /// Index into the manifest's labels.
    pub index: usize,
    /// Probability of that label.
    pub score: f32,
    /// Probability of every label, in manifest order.
    pub probabilities: Vec<f32>,
}

/// Panic payload a backend raises when its state can no longer be trusted (for instance a CUDA
/// error that poisons the context): the worker fails the batch and its queued jobs with
/// INTERNAL and stops, and the registry loads the model afresh on the next request. Any other
/// panic fails only the batch it happened in.
#[derive(Debug)]
pub struct WorkerFault(pub String);

/// A loaded model, owned by exactly one worker thread.
pub trait Backend: Send {
    /// Runs one forward pass. `inputs` follow the manifest's input order and share the batch
    /// dimension. Errors carry the full reason for the log.
    fn forward(&mut self, inputs: Vec<HostTensor>) -> Result<Vec<HostTensor>, Cause>;
    /// Parameters and buffers, in bytes, measured at load.
    fn memory_bytes(&self) -> u64;
}

/// Creates backends; called on the worker thread that will own the result.
pub trait BackendFactory: Send + Sync + 'static {
    /// Loads `spec` onto `device`. Errors carry the full reason for the log.
    fn load(&self, spec: &ModelSpec, device: Device, threads: usize) -> Result<Box<dyn Backend>, Cause>;
}

/// Shared handle to a backend factory.
pub type SharedFactory = Arc<dyn BackendFactory>;

/// Turns one output row of scores into a prediction (softmax for logits).
pub fn classify(scores: &[f32], kind: OutputKind) -> Prediction {
    let probabilities: Vec<f32> = match kind {
        OutputKind::Probabilities => scores.to_vec(),
        OutputKind::Logits => {
            let max = scores.iter().copied().fold(f32::NEG_INFINITY, f32::max);
            let exps: Vec<f32> = scores.iter().map(|s| (s - max).exp()).collect();
            let sum: f32 = exps.iter().sum();
            exps.iter().map(|e| e / sum).collect()
        }
    };
    let (index, score) = probabilities
        .iter()
        .copied()
        .enumerate()
        .fold((0, f32::NEG_INFINITY), |best, (i, p)| if p > best.1 { (i, p) } else { best });
    Prediction { index, score, probabilities }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn softmax_of_logits_sums_to_one_and_picks_the_max() {
        let p = classify(&[1.0, 3.0, 2.0], OutputKind::Logits);
        assert_eq!(p.index, 1);
        let sum: f32 = p.probabilities.iter().sum();
        assert!((sum - 1.0).abs() < 1e-6);
        assert!((p.score - 0.665_240_9).abs() < 1e-5, "{}", p.score);
    }

    #[test]
    fn half_conversion_matches_known_values() {
        assert_eq!(f16_to_f32(0x3c00), 1.0);
        assert_eq!(f16_to_f32(0xc000), -2.0);
        assert_eq!(f16_to_f32(0x0001), 5.960_464_5e-8);
        assert!(f16_to_f32(0x7c00).is_infinite());
        assert!(f16_to_f32(0x7e00).is_nan());
    }

    #[test]
    fn host_tensor_reads_back_as_f32() {
        let t = HostTensor::from_f32("x", vec![1, 3], &[1.5, -2.0, 0.25]);
        assert_eq!(t.numel(), 3);
        assert_eq!(t.to_f32(), vec![1.5, -2.0, 0.25]);
    }
}

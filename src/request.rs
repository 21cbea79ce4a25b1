//! What every front door hands the core, and what the core hands back: an inference request in
//! domain form (tensors, rows of named features, or texts, exactly as the client sent them and
//! not yet checked) and its answer.
//!
//! Front doors (`service/` for gRPC, later HTTP) convert their wire messages into these types
//! and nothing more; `validate.rs` checks them against the model and `infer.rs` runs them. So
//! the same mistake gets the same code and message from every door. No protobuf type appears
//! here.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use crate::device::{Device, DeviceRequest};
use crate::model::{DType, HostTensor, ModelSpec, Prediction};
use crate::tokenize::TextInfo;

/// One inference request, as a front door decoded it. The model name travels in the
/// boundary's [`crate::boundary::Call`] (decided once per call).
#[derive(Debug, Clone)]
pub struct InferRequest {
    /// The version asked for: empty = the model's default, a number, or a label.
    pub version: String,
    /// Where to run it.
    pub device: DeviceRequest,
    /// The inputs, unchecked.
    pub inputs: Inputs,
}

/// The three ways a client may give a model its inputs.
#[derive(Debug, Clone)]
pub enum Inputs {
    /// Typed tensors, matched to the model's inputs by name.
    Tensors(Vec<TensorInput>),
    /// Rows of named feature values, for tabular models.
    Rows(Vec<HashMap<String, f64>>),
    /// Texts for a text-classification model.
    Texts(TextsInput),
}

/// A tensor as the client sent it.
#[derive(Debug, Clone, PartialEq)]
pub struct TensorInput {
    /// The input it is for; may be empty when the model has one input.
    pub name: String,
    /// The element type claimed; `None` = the input's declared type.
    pub dtype: Option<DType>,
    /// The claimed shape (checked before anything of its size is allocated).
    pub shape: Vec<i64>,
    /// The elements, in whichever form the wire carried them.
    pub data: TensorData,
}

/// Tensor elements in the form a wire format carries them. Each door maps its own fields onto
/// these (torchwire.v1 `float_data` and KServe `fp32_contents` are both [`TensorData::F32`]);
/// validation turns them into the bytes of the input's type.
#[derive(Debug, Clone, PartialEq)]
pub enum TensorData {
    /// No elements were sent.
    Empty,
    /// Little-endian bytes of the claimed type (any type).
    Raw(Vec<u8>),
    /// float32 values.
    F32(Vec<f32>),
    /// float64 values.
    F64(Vec<f64>),
    /// int64 values.
    I64(Vec<i64>),
    /// int32 values (also carry int8 and uint8 elements, range-checked).
    I32(Vec<i32>),
    /// uint32 values (carry uint8 elements, range-checked).
    U32(Vec<u32>),
    /// Booleans.
    Bool(Vec<bool>),
}

impl TensorData {
    /// How the values travelled, for messages: `float32 values`, `raw bytes`, ...
    pub fn describe(&self) -> &'static str {
        match self {
            TensorData::Empty => "no data",
            TensorData::Raw(_) => "raw bytes",
            TensorData::F32(_) => "float32 values",
            TensorData::F64(_) => "float64 values",
            TensorData::I64(_) => "int64 values",
            TensorData::I32(_) => "int32 values",
            TensorData::U32(_) => "uint32 values",
            TensorData::Bool(_) => "bool values",
        }
    }

    /// Elements carried (bytes for [`TensorData::Raw`]).
    pub fn len(&self) -> usize {
        match self {
            TensorData::Empty => 0,
            TensorData::Raw(v) => v.len(),
            TensorData::F32(v) => v.len(),
            TensorData::F64(v) => v.len(),
            TensorData::I64(v) => v.len(),
            TensorData::I32(v) => v.len(),
            TensorData::U32(v) => v.len(),
            TensorData::Bool(v) => v.len(),
        }
    }

    /// Whether nothing was sent.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Texts as the client sent them: bytes, checked for size before they are read as UTF-8.
#[derive(Debug, Clone, Default)]
pub struct TextsInput {
    /// One entry per text.
    pub texts: Vec<Vec<u8>>,
    /// Tokens per text the client asked for; `None` = the model's and device's default.
    pub max_length: Option<i64>,
}

/// What the core answers an inference request with; each door converts it to its wire form.
#[derive(Debug)]
pub struct Answer {
    /// The model that ran.
    pub spec: Arc<ModelSpec>,
    /// Where it ran.
    pub device: Device,
    /// Rows (or texts) of the request.
    pub rows: usize,
    /// The model's outputs for this request's rows.
    pub outputs: Vec<HostTensor>,
    /// One per row when the model is a classifier with labels.
    pub predictions: Vec<Prediction>,
    /// Text requests: how each text was tokenised.
    pub texts: Vec<TextInfo>,
    /// Time spent queued for the worker.
    pub queue: Duration,
    /// Time of the forward pass.
    pub compute: Duration,
    /// Rows in the batch the request ran in.
    pub batch_size: usize,
    /// From the call's arrival to the answer.
    pub total: Duration,
    /// Rows (or texts) answered from the response cache.
    pub cached_rows: usize,
    /// `hit`, `partial`, `miss` or `bypass` for a model with `[cache]`; empty otherwise.
    pub cache: &'static str,
}

impl Answer {
    /// The manifest's name of label `i` (its index when the manifest names none).
    pub fn label(&self, i: usize) -> String {
        self.spec.labels.get(i).cloned().unwrap_or_else(|| i.to_string())
    }
}

//! `torchwire.v1` messages ⇄ the core's domain types: Predict and Sentiment requests into
//! [`InferRequest`], [`Answer`] back into their responses, and the proto dtype enum. Only what
//! is specific to this wire format is checked here (which data field carries a tensor, `text`
//! vs `texts`); every other check is the core's, shared with the other front doors.

use crate::device::DeviceRequest;
use crate::error::{Error, Result};
use crate::model::{DType, HostTensor};
use crate::proto;
use crate::request::{Answer, InferRequest, Inputs, TensorData, TensorInput, TextsInput};

impl TryFrom<proto::PredictRequest> for InferRequest {
    type Error = Error;

    fn try_from(req: proto::PredictRequest) -> Result<Self> {
        let device = DeviceRequest::parse(&req.device)?;
        let inputs = match (req.inputs.is_empty(), req.rows.is_empty()) {
            (false, false) => return Err(Error::invalid("inputs", "set either `inputs` or `rows`, not both")),
            // Neither: the core says which inputs the model takes, as for any front door.
            (_, true) => Inputs::Tensors(
                req.inputs.into_iter().enumerate().map(|(i, t)| tensor_input(i, t)).collect::<Result<_>>()?,
            ),
            (true, false) => Inputs::Rows(req.rows.into_iter().map(|r| r.features.into_iter().collect()).collect()),
        };
        Ok(InferRequest { version: req.version, device, inputs })
    }
}

impl TryFrom<proto::SentimentRequest> for InferRequest {
    type Error = Error;

    fn try_from(req: proto::SentimentRequest) -> Result<Self> {
        let device = DeviceRequest::parse(&req.device)?;
        let texts = match (req.text.is_empty(), req.texts.is_empty()) {
            (true, true) => return Err(Error::invalid("text", "set `text` or `texts`; both are empty")),
            (false, false) => return Err(Error::invalid("text", "set `text` or `texts`, not both")),
            (false, true) => vec![req.text.into_bytes()],
            (true, false) => req.texts.into_iter().map(String::into_bytes).collect(),
        };
        let max_length = (req.max_length != 0).then_some(i64::from(req.max_length));
        Ok(InferRequest { version: req.version, device, inputs: Inputs::Texts(TextsInput { texts, max_length }) })
    }
}

/// One proto tensor as the client sent it: its dtype (0 = the input's own) and whichever one
/// data field carries its elements.
fn tensor_input(i: usize, t: proto::Tensor) -> Result<TensorInput> {
    let field = format!("inputs[{i}]");
    let dtype = match t.dtype {
        0 => None,
        v => Some(
            dtype_of(v).ok_or_else(|| Error::invalid(format!("{field}.dtype"), format!("unknown dtype value {v}")))?,
        ),
    };
    let set: Vec<&str> = [
        ("float_data", t.float_data.is_empty()),
        ("double_data", t.double_data.is_empty()),
        ("int64_data", t.int64_data.is_empty()),
        ("int32_data", t.int32_data.is_empty()),
        ("bool_data", t.bool_data.is_empty()),
        ("raw_data", t.raw_data.is_empty()),
    ]
    .into_iter()
    .filter(|(_, empty)| !empty)
    .map(|(f, _)| f)
    .collect();
    if set.len() > 1 {
        return Err(Error::invalid(field, format!("exactly one data field may be set, got {}", set.join(", "))));
    }
    let data = match set.first().copied() {
        None => TensorData::Empty,
        Some("float_data") => TensorData::F32(t.float_data),
        Some("double_data") => TensorData::F64(t.double_data),
        Some("int64_data") => TensorData::I64(t.int64_data),
        Some("int32_data") => TensorData::I32(t.int32_data),
        Some("bool_data") => TensorData::Bool(t.bool_data),
        Some(_) => TensorData::Raw(t.raw_data),
    };
    Ok(TensorInput { name: t.name, dtype, shape: t.shape, data })
}

/// The proto dtype enum value of a domain dtype, and back.
pub(crate) fn dtype_of(v: i32) -> Option<DType> {
    use proto::DataType as P;
    Some(match P::try_from(v).ok()? {
        P::Float32 => DType::F32,
        P::Float64 => DType::F64,
        P::Float16 => DType::F16,
        P::Bfloat16 => DType::BF16,
        P::Int64 => DType::I64,
        P::Int32 => DType::I32,
        P::Int8 => DType::I8,
        P::Uint8 => DType::U8,
        P::Bool => DType::Bool,
        P::Unspecified => return None,
    })
}

impl From<DType> for proto::DataType {
    fn from(d: DType) -> Self {
        use proto::DataType as P;
        match d {
            DType::F32 => P::Float32,
            DType::F64 => P::Float64,
            DType::F16 => P::Float16,
            DType::BF16 => P::Bfloat16,
            DType::I64 => P::Int64,
            DType::I32 => P::Int32,
            DType::I8 => P::Int8,
            DType::U8 => P::Uint8,
            DType::Bool => P::Bool,
        }
    }
}

/// The Predict answer.
pub fn predict_response(a: Answer) -> proto::PredictResponse {
    proto::PredictResponse {
        model: a.spec.name.clone(),
        version: a.spec.version.to_string(),
        device: a.device.to_string(),
        predictions: (0..a.predictions.len()).map(|i| classification(&a, i)).collect(),
        timing: Some(timing(&a)),
        outputs: a.outputs.into_iter().map(proto::Tensor::from).collect(),
    }
}

/// The Sentiment answer.
pub fn sentiment_response(a: Answer) -> proto::SentimentResponse {
    let results = a
        .texts
        .iter()
        .enumerate()
        .map(|(i, info)| {
            let c = classification(&a, i);
            proto::SentimentResult {
                label: c.label,
                score: c.score,
                probabilities: c.probabilities,
                tokens: i32::try_from(info.tokens).unwrap_or(i32::MAX),
                truncated: info.truncated,
            }
        })
        .collect();
    proto::SentimentResponse {
        results,
        model: a.spec.name.clone(),
        version: a.spec.version.to_string(),
        device: a.device.to_string(),
        timing: Some(timing(&a)),
    }
}

fn timing(a: &Answer) -> proto::Timing {
    let micros = |d: std::time::Duration| i64::try_from(d.as_micros()).unwrap_or(i64::MAX);
    proto::Timing {
        queue_us: micros(a.queue),
        compute_us: micros(a.compute),
        total_us: micros(a.total),
        batch_size: i32::try_from(a.batch_size).unwrap_or(i32::MAX),
        cached_rows: i32::try_from(a.cached_rows).unwrap_or(i32::MAX),
        cache: a.cache.to_owned(),
    }
}

/// Row `i`'s prediction with the manifest's label names.
fn classification(a: &Answer, i: usize) -> proto::Classification {
    let p = &a.predictions[i];
    proto::Classification {
        label: a.label(p.index),
        label_index: i32::try_from(p.index).unwrap_or(i32::MAX),
        score: p.score,
        probabilities: p.probabilities.iter().enumerate().map(|(i, v)| (a.label(i), *v)).collect(),
    }
}

/// Converts a domain output tensor into its proto form, with typed data where one exists.
impl From<HostTensor> for proto::Tensor {
    fn from(t: HostTensor) -> Self {
        let mut out = proto::Tensor {
            name: t.name,
            dtype: proto::DataType::from(t.dtype) as i32,
            shape: t.shape,
            ..Default::default()
        };
        let d = &t.data;
        let w4 = |c: &[u8]| [c[0], c[1], c[2], c[3]];
        let w8 = |c: &[u8]| [c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]];
        match t.dtype {
            DType::F32 => out.float_data = d.chunks_exact(4).map(|c| f32::from_le_bytes(w4(c))).collect(),
            DType::F64 => out.double_data = d.chunks_exact(8).map(|c| f64::from_le_bytes(w8(c))).collect(),
            DType::I64 => out.int64_data = d.chunks_exact(8).map(|c| i64::from_le_bytes(w8(c))).collect(),
            DType::I32 => out.int32_data = d.chunks_exact(4).map(|c| i32::from_le_bytes(w4(c))).collect(),
            DType::I8 => out.int32_data = d.iter().map(|&b| i32::from(b as i8)).collect(),
            DType::U8 => out.int32_data = d.iter().map(|&b| i32::from(b)).collect(),
            DType::Bool => out.bool_data = d.iter().map(|&b| b != 0).collect(),
            DType::F16 | DType::BF16 => out.raw_data = t.data,
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_data_field_maps_to_its_form_and_two_are_refused() {
        let t = |f: fn(&mut proto::Tensor)| {
            let mut t = proto::Tensor { shape: vec![1, 1], ..Default::default() };
            f(&mut t);
            tensor_input(0, t)
        };
        assert_eq!(t(|t| t.float_data = vec![1.0]).unwrap().data, TensorData::F32(vec![1.0]));
        assert_eq!(t(|t| t.raw_data = vec![1, 2]).unwrap().data, TensorData::Raw(vec![1, 2]));
        assert_eq!(t(|_| {}).unwrap().data, TensorData::Empty);
        let e = t(|t| {
            t.float_data = vec![1.0];
            t.int32_data = vec![1];
        })
        .unwrap_err();
        assert!(e.to_string().contains("exactly one data field"), "{e}");
        assert!(t(|t| t.dtype = 99).unwrap_err().to_string().contains("unknown dtype value 99"));
    }

    #[test]
    fn outputs_convert_to_typed_fields() {
        let t: proto::Tensor = HostTensor::from_f32("y", vec![1, 2], &[0.5, 1.5]).into();
        assert_eq!(t.float_data, vec![0.5, 1.5]);
        assert_eq!(t.dtype, proto::DataType::Float32 as i32);
    }
}

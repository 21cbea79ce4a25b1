//! KServe v2 messages ⇄ the core's domain types: ModelInfer requests into [`InferRequest`]
//! (tensors, or one BYTES input of UTF-8 strings for text models), [`Answer`] back into a
//! ModelInfer response, the datatype names, and the metadata and configuration a model shows.
//! Only what is specific to this wire format is checked here (raw vs typed contents, the BYTES
//! framing, the `timeout` parameter); every other check is the core's.

use std::time::Duration;

use bytes::Bytes;

use crate::device::DeviceRequest;
use crate::error::{Error, Result, clip};
use crate::model::{DType, HostTensor, ModelSpec};
use crate::proto::kserve as ks;
use crate::request::{Answer, InferRequest, Inputs, TensorData, TensorInput, TextsInput};

/// KServe datatype string of a dtype.
pub fn datatype(d: DType) -> &'static str {
    match d {
        DType::F32 => "FP32",
        DType::F64 => "FP64",
        DType::F16 => "FP16",
        DType::BF16 => "BF16",
        DType::I64 => "INT64",
        DType::I32 => "INT32",
        DType::I8 => "INT8",
        DType::U8 => "UINT8",
        DType::Bool => "BOOL",
    }
}

pub fn dtype_of(s: &str) -> Option<DType> {
    Some(match s {
        "FP32" => DType::F32,
        "FP64" => DType::F64,
        "FP16" => DType::F16,
        "BF16" => DType::BF16,
        "INT64" => DType::I64,
        "INT32" => DType::I32,
        "INT8" => DType::I8,
        "UINT8" => DType::U8,
        "BOOL" => DType::Bool,
        _ => return None,
    })
}

pub fn config_type(d: DType) -> ks::DataType {
    match d {
        DType::F32 => ks::DataType::TypeFp32,
        DType::F64 => ks::DataType::TypeFp64,
        DType::F16 => ks::DataType::TypeFp16,
        DType::BF16 => ks::DataType::TypeBf16,
        DType::I64 => ks::DataType::TypeInt64,
        DType::I32 => ks::DataType::TypeInt32,
        DType::I8 => ks::DataType::TypeInt8,
        DType::U8 => ks::DataType::TypeUint8,
        DType::Bool => ks::DataType::TypeBool,
    }
}

/// The name of a text model's one input.
pub const TEXT_INPUT: &str = "text";
/// The output with per-label probabilities (classifiers).
pub const PROBABILITIES: &str = "probabilities";

/// Parses the BYTES wire form: each element a 4-byte little-endian length, then the bytes.
fn split_bytes(field: &str, raw: &[u8]) -> Result<Vec<Bytes>> {
    let mut out = Vec::new();
    let mut rest = raw;
    while !rest.is_empty() {
        let (len, tail) = rest.split_at_checked(4).ok_or_else(|| {
            Error::invalid(
                field,
                "BYTES data is a sequence of 4-byte little-endian lengths, each followed by that many bytes",
            )
        })?;
        let n = u32::from_le_bytes([len[0], len[1], len[2], len[3]]) as usize;
        let (item, tail) = tail.split_at_checked(n).ok_or_else(|| {
            Error::invalid(field, format!("element {} claims {n} bytes but only {} remain", out.len(), tail.len()))
        })?;
        out.push(Bytes::copy_from_slice(item));
        rest = tail;
    }
    Ok(out)
}

impl TryFrom<ks::ModelInferRequest> for InferRequest {
    type Error = Error;

    fn try_from(req: ks::ModelInferRequest) -> Result<Self> {
        let raw = !req.raw_input_contents.is_empty();
        if raw && req.inputs.iter().any(|i| i.contents.is_some()) {
            return Err(Error::invalid("raw_input_contents", "use raw_input_contents or typed contents, not both"));
        }
        if raw && req.raw_input_contents.len() != req.inputs.len() {
            return Err(Error::invalid(
                "raw_input_contents",
                format!(
                    "one entry per input: {} inputs, {} raw entries",
                    req.inputs.len(),
                    req.raw_input_contents.len()
                ),
            ));
        }
        let mut raws = req.raw_input_contents.into_iter();
        if req.inputs.iter().any(|i| i.datatype == "BYTES") {
            let [input] = <[_; 1]>::try_from(req.inputs).map_err(|inputs: Vec<_>| {
                Error::invalid(
                    "inputs",
                    format!("a BYTES input (the texts of a text model) must be the only input, got {}", inputs.len()),
                )
            })?;
            let inputs = Inputs::Texts(texts(input, raws.next())?);
            return Ok(InferRequest { version: req.model_version, device: DeviceRequest::Auto, inputs });
        }
        let tensors = req
            .inputs
            .into_iter()
            .enumerate()
            .map(|(i, input)| tensor_input(i, input, raws.next()))
            .collect::<Result<_>>()?;
        Ok(InferRequest { version: req.model_version, device: DeviceRequest::Auto, inputs: Inputs::Tensors(tensors) })
    }
}

/// One BYTES input as texts: shape `[N]` or `[N, 1]` with N strings.
fn texts(input: ks::model_infer_request::InferInputTensor, raw: Option<Bytes>) -> Result<TextsInput> {
    let items: Vec<Vec<u8>> = match raw {
        Some(raw) => split_bytes("raw_input_contents[0]", &raw)?.into_iter().map(|b| b.to_vec()).collect(),
        None => input.contents.map(|c| c.bytes_contents.into_iter().map(|b| b.to_vec()).collect()).unwrap_or_default(),
    };
    let n = items.len();
    let shape_ok = matches!(input.shape.as_slice(), [rows] | [rows, 1] if usize::try_from(*rows) == Ok(n));
    if !shape_ok {
        return Err(Error::invalid(
            "inputs[0].shape",
            format!("shape must be [N] or [N, 1] with N = {n} strings, got {:?}", input.shape),
        ));
    }
    Ok(TextsInput { texts: items, max_length: None })
}

/// One tensor as the client sent it: its datatype and the raw entry or typed contents.
fn tensor_input(i: usize, input: ks::model_infer_request::InferInputTensor, raw: Option<Bytes>) -> Result<TensorInput> {
    let dtype = dtype_of(&input.datatype).ok_or_else(|| {
        Error::invalid(format!("inputs[{i}].datatype"), format!("unknown datatype {:?}", clip(&input.datatype, 16)))
    })?;
    let data = match raw {
        Some(raw) => TensorData::Raw(raw.to_vec()),
        None => typed_data(&format!("inputs[{i}]"), input.contents.unwrap_or_default())?,
    };
    Ok(TensorInput { name: input.name, dtype: Some(dtype), shape: input.shape, data })
}

/// Whichever one typed contents field carries the elements.
fn typed_data(field: &str, c: ks::InferTensorContents) -> Result<TensorData> {
    let set: Vec<&str> = [
        ("fp32_contents", c.fp32_contents.is_empty()),
        ("fp64_contents", c.fp64_contents.is_empty()),
        ("int64_contents", c.int64_contents.is_empty()),
        ("int_contents", c.int_contents.is_empty()),
        ("uint_contents", c.uint_contents.is_empty()),
        ("uint64_contents", c.uint64_contents.is_empty()),
        ("bool_contents", c.bool_contents.is_empty()),
        ("bytes_contents", c.bytes_contents.is_empty()),
    ]
    .into_iter()
    .filter(|(_, empty)| !empty)
    .map(|(f, _)| f)
    .collect();
    if set.len() > 1 {
        return Err(Error::invalid(field, format!("exactly one contents field may be set, got {}", set.join(", "))));
    }
    Ok(match set.first().copied() {
        None => TensorData::Empty,
        Some("fp32_contents") => TensorData::F32(c.fp32_contents),
        Some("fp64_contents") => TensorData::F64(c.fp64_contents),
        Some("int64_contents") => TensorData::I64(c.int64_contents),
        Some("int_contents") => TensorData::I32(c.int_contents),
        Some("uint_contents") => TensorData::U32(c.uint_contents),
        Some("bool_contents") => TensorData::Bool(c.bool_contents),
        Some(other) => return Err(Error::invalid(field, format!("`{other}` is not accepted for a tensor input"))),
    })
}

/// The ModelInfer answer: the model's outputs, plus `probabilities` for classifiers, filtered
/// to the outputs the request asked for.
pub fn infer_response(
    a: Answer,
    id: String,
    wanted: &[ks::model_infer_request::InferRequestedOutputTensor],
) -> Result<ks::ModelInferResponse> {
    let mut outputs: Vec<HostTensor> = a.outputs;
    if !a.predictions.is_empty() {
        let probs: Vec<f32> = a.predictions.iter().flat_map(|p| p.probabilities.iter().copied()).collect();
        let labels = a.predictions[0].probabilities.len() as i64;
        outputs.push(HostTensor::from_f32(PROBABILITIES, vec![a.rows as i64, labels], &probs));
    }
    if !wanted.is_empty() {
        if let Some(missing) = wanted.iter().find(|o| !outputs.iter().any(|t| t.name == o.name)) {
            let names: Vec<&str> = outputs.iter().map(|t| t.name.as_str()).collect();
            return Err(Error::invalid(
                "outputs",
                format!(
                    "model `{}` has no output {:?}; its outputs are {names:?}",
                    a.spec.name,
                    clip(&missing.name, 64)
                ),
            ));
        }
        outputs.retain(|t| wanted.iter().any(|o| o.name == t.name));
    }
    let (metas, raws): (Vec<_>, Vec<_>) = outputs.into_iter().map(infer_output).unzip();
    let mut parameters = std::collections::HashMap::new();
    if !a.cache.is_empty() {
        // As Timing.cache and Timing.cached_rows say on the torchwire.v1 door.
        let string = |s: String| ks::InferParameter {
            parameter_choice: Some(ks::infer_parameter::ParameterChoice::StringParam(s)),
        };
        let int =
            |n: i64| ks::InferParameter { parameter_choice: Some(ks::infer_parameter::ParameterChoice::Int64Param(n)) };
        parameters.insert("cache".to_owned(), string(a.cache.to_owned()));
        parameters.insert("cached_rows".to_owned(), int(i64::try_from(a.cached_rows).unwrap_or(i64::MAX)));
    }
    Ok(ks::ModelInferResponse {
        model_name: a.spec.name.clone(),
        model_version: a.spec.version.to_string(),
        id,
        parameters,
        outputs: metas,
        raw_output_contents: raws,
    })
}

fn infer_output(t: HostTensor) -> (ks::model_infer_response::InferOutputTensor, Bytes) {
    let meta = ks::model_infer_response::InferOutputTensor {
        name: t.name,
        datatype: datatype(t.dtype).to_owned(),
        shape: t.shape,
        ..Default::default()
    };
    (meta, Bytes::from(t.data))
}

pub fn timeout_param(req: &ks::ModelInferRequest) -> Result<Option<Duration>> {
    match req.parameters.get("timeout").and_then(|p| p.parameter_choice.as_ref()) {
        None => Ok(None),
        Some(ks::infer_parameter::ParameterChoice::Int64Param(us)) if *us > 0 => {
            Ok(Some(Duration::from_micros(*us as u64)))
        }
        Some(ks::infer_parameter::ParameterChoice::Uint64Param(us)) if *us > 0 => Ok(Some(Duration::from_micros(*us))),
        Some(_) => Err(Error::invalid("parameters.timeout", "must be a positive int64 of microseconds")),
    }
}

fn output_metadata(spec: &ModelSpec) -> Vec<ks::model_metadata_response::TensorMetadata> {
    let labels = spec.labels.len() as i64;
    let dims = if labels > 0 { vec![-1, labels] } else { vec![-1, -1] };
    let mut out = vec![ks::model_metadata_response::TensorMetadata {
        name: "output_0".into(),
        datatype: "FP32".into(),
        shape: dims.clone(),
    }];
    if labels > 0 {
        out.push(ks::model_metadata_response::TensorMetadata {
            name: PROBABILITIES.into(),
            datatype: "FP32".into(),
            shape: dims,
        });
    }
    out
}

/// A version's metadata; `versions` lists every served version of the model.
pub fn model_metadata(spec: &ModelSpec, versions: Vec<String>) -> ks::ModelMetadataResponse {
    let inputs = if spec.text.is_some() {
        vec![ks::model_metadata_response::TensorMetadata {
            name: TEXT_INPUT.into(),
            datatype: "BYTES".into(),
            shape: vec![-1, 1],
        }]
    } else {
        spec.inputs
            .iter()
            .map(|i| ks::model_metadata_response::TensorMetadata {
                name: i.name.clone(),
                datatype: datatype(i.dtype).into(),
                shape: i.shape.clone(),
            })
            .collect()
    };
    ks::ModelMetadataResponse {
        name: spec.name.clone(),
        versions,
        platform: "pytorch_libtorch".into(),
        inputs,
        outputs: output_metadata(spec),
    }
}

pub fn model_config(spec: &ModelSpec, max_batch: usize) -> ks::ModelConfig {
    let input = if spec.text.is_some() {
        vec![ks::ModelInput {
            name: TEXT_INPUT.into(),
            data_type: ks::DataType::TypeString as i32,
            dims: vec![1],
            ..Default::default()
        }]
    } else {
        spec.inputs
            .iter()
            .map(|i| ks::ModelInput {
                name: i.name.clone(),
                data_type: config_type(i.dtype) as i32,
                dims: i.shape[1..].to_vec(),
                ..Default::default()
            })
            .collect()
    };
    let output = output_metadata(spec)
        .into_iter()
        .map(|o| ks::ModelOutput {
            name: o.name,
            data_type: ks::DataType::TypeFp32 as i32,
            dims: o.shape[1..].to_vec(),
            ..Default::default()
        })
        .collect();
    ks::ModelConfig {
        name: spec.name.clone(),
        platform: "pytorch_libtorch".into(),
        backend: "pytorch".into(),
        max_batch_size: i32::try_from(max_batch).unwrap_or(i32::MAX),
        input,
        output,
        scheduling_choice: Some(ks::model_config::SchedulingChoice::DynamicBatching(ks::ModelDynamicBatching {
            preferred_batch_size: vec![],
            max_queue_delay_microseconds: u64::try_from(spec.max_queue_delay.as_micros()).unwrap_or(u64::MAX),
        })),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bytes_wire_form_parses_and_rejects_truncation() {
        let mut raw = Vec::new();
        for s in ["héllo", "", "world"] {
            raw.extend_from_slice(&(s.len() as u32).to_le_bytes());
            raw.extend_from_slice(s.as_bytes());
        }
        let items = split_bytes("x", &raw).unwrap();
        assert_eq!(items.len(), 3);
        assert_eq!(&items[0][..], "héllo".as_bytes());
        assert!(split_bytes("x", &raw[..raw.len() - 1]).unwrap_err().to_string().contains("remain"));
        assert!(split_bytes("x", &[1, 0]).is_err());
    }

    #[test]
    fn datatypes_round_trip() {
        for d in
            [DType::F32, DType::F64, DType::F16, DType::BF16, DType::I64, DType::I32, DType::I8, DType::U8, DType::Bool]
        {
            assert_eq!(dtype_of(datatype(d)), Some(d));
        }
        assert_eq!(dtype_of("COMPLEX64"), None);
    }
}

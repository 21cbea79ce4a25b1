//! Proto requests -> domain inputs, with precise INVALID_ARGUMENT messages.
//!
//! Checks happen before any allocation of a client-claimed size: dimensions are multiplied with
//! overflow checks and compared with the element limit, and data lengths are compared with the
//! shape before anything is copied. Nothing here touches libtorch.

use std::collections::HashSet;

use crate::error::{Error, Result};
use crate::model::{DType, HostTensor, InputSpec, ModelKind, ModelSpec};
use crate::proto;

/// Request size limits.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Most elements one tensor may have.
    pub max_tensor_elements: usize,
    /// Most rows (batch entries) one request may carry.
    pub max_rows: usize,
    /// Most texts one Sentiment request may carry.
    pub max_texts: usize,
    /// Most bytes (UTF-8) one text may have.
    pub max_text_bytes: usize,
}

/// Validated inputs of a Sentiment request.
#[derive(Debug)]
pub struct TextInputs {
    /// The texts, in request order.
    pub texts: Vec<String>,
    /// Tokens per text, special tokens included.
    pub max_length: usize,
}

/// Checks a Sentiment request against a text model and the device's default text length.
pub fn sentiment_inputs(
    spec: &ModelSpec,
    req: proto::SentimentRequest,
    device_max_length: usize,
    limits: Limits,
) -> Result<TextInputs> {
    let Some(text) = &spec.text else {
        return Err(Error::invalid(
            "model",
            format!("model `{}` is {}; Sentiment needs a text-classification model", spec.name, spec.kind.name()),
        ));
    };
    let texts = match (req.text.is_empty(), req.texts.is_empty()) {
        (true, true) => return Err(Error::invalid("text", "set `text` or `texts`; both are empty")),
        (false, false) => return Err(Error::invalid("text", "set `text` or `texts`, not both")),
        (false, true) => vec![req.text],
        (true, false) => req.texts,
    };
    if texts.len() > limits.max_texts {
        return Err(Error::invalid(
            "texts",
            format!("at most {} texts per request, got {}", limits.max_texts, texts.len()),
        ));
    }
    if let Some((i, t)) = texts.iter().enumerate().find(|(_, t)| t.len() > limits.max_text_bytes) {
        return Err(Error::invalid(
            format!("texts[{i}]"),
            format!("a text may have at most {} bytes, got {}", limits.max_text_bytes, t.len()),
        ));
    }
    let max_length = match req.max_length {
        0 => device_max_length.min(text.max_length),
        n if n < 0 => return Err(Error::invalid("max_length", format!("must be positive (0 = the default), got {n}"))),
        n if n < 2 => return Err(Error::invalid("max_length", "must be at least 2 (the special tokens)")),
        n => {
            let n = n as usize;
            if n > text.max_length {
                return Err(Error::invalid(
                    "max_length",
                    format!("model `{}` takes at most {} tokens, got {n}", spec.name, text.max_length),
                ));
            }
            n
        }
    };
    Ok(TextInputs { texts, max_length })
}

/// Validated inputs of a Predict request.
#[derive(Debug)]
pub struct PredictInputs {
    /// Tensors in the manifest's input order.
    pub tensors: Vec<HostTensor>,
    /// The shared batch dimension.
    pub rows: usize,
}

impl TryFrom<i32> for DType {
    type Error = Error;

    fn try_from(v: i32) -> Result<Self> {
        use proto::DataType as P;
        Ok(match P::try_from(v) {
            Ok(P::Float32) => DType::F32,
            Ok(P::Float64) => DType::F64,
            Ok(P::Float16) => DType::F16,
            Ok(P::Bfloat16) => DType::BF16,
            Ok(P::Int64) => DType::I64,
            Ok(P::Int32) => DType::I32,
            Ok(P::Int8) => DType::I8,
            Ok(P::Uint8) => DType::U8,
            Ok(P::Bool) => DType::Bool,
            Ok(P::Unspecified) | Err(_) => {
                return Err(Error::invalid("dtype", format!("unknown dtype value {v}")));
            }
        })
    }
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

/// Checks a Predict request against the model's manifest and builds its input tensors.
pub fn predict_inputs(spec: &ModelSpec, req: &proto::PredictRequest, limits: Limits) -> Result<PredictInputs> {
    match (req.inputs.is_empty(), req.rows.is_empty()) {
        (true, true) => {
            Err(Error::invalid("inputs", "set either `inputs` (tensors) or `rows` (named features); both are empty"))
        }
        (false, false) => Err(Error::invalid("inputs", "set either `inputs` or `rows`, not both")),
        (false, true) => tensor_inputs(spec, &req.inputs, limits),
        (true, false) => row_inputs(spec, &req.rows, limits),
    }
}

fn tensor_inputs(spec: &ModelSpec, inputs: &[proto::Tensor], limits: Limits) -> Result<PredictInputs> {
    if inputs.len() != spec.inputs.len() {
        return Err(Error::invalid(
            "inputs",
            format!(
                "model `{}` takes {} input tensor(s) ({}), got {}",
                spec.name,
                spec.inputs.len(),
                input_names(spec),
                inputs.len()
            ),
        ));
    }
    let mut seen = HashSet::new();
    let mut ordered: Vec<Option<HostTensor>> = vec![None; spec.inputs.len()];
    for (i, t) in inputs.iter().enumerate() {
        let field = format!("inputs[{i}]");
        // A lone input may go unnamed.
        let idx = if t.name.is_empty() && spec.inputs.len() == 1 {
            0
        } else {
            spec.inputs.iter().position(|s| s.name == t.name).ok_or_else(|| {
                Error::invalid(
                    format!("{field}.name"),
                    format!(
                        "model `{}` has no input {:?}; its inputs are {}",
                        spec.name,
                        crate::error::clip(&t.name, 64),
                        input_names(spec)
                    ),
                )
            })?
        };
        if !seen.insert(idx) {
            return Err(Error::invalid(
                format!("{field}.name"),
                format!("input `{}` given twice", spec.inputs[idx].name),
            ));
        }
        ordered[idx] = Some(tensor_from_proto(&field, t, &spec.inputs[idx], spec.allow_non_finite, limits)?);
    }
    let tensors: Vec<HostTensor> = ordered.into_iter().flatten().collect();
    let rows = tensors.first().map_or(0, |t| t.shape[0]);
    if let Some(t) = tensors.iter().find(|t| t.shape[0] != rows) {
        return Err(Error::invalid(
            "inputs",
            format!(
                "every input must share the batch dimension: `{}` has {} rows, expected {rows}",
                t.name, t.shape[0]
            ),
        ));
    }
    let rows = usize::try_from(rows).map_err(|_| Error::invalid("inputs", "negative batch dimension"))?;
    check_rows(rows, limits)?;
    Ok(PredictInputs { tensors, rows })
}

fn check_rows(rows: usize, limits: Limits) -> Result<()> {
    if rows == 0 {
        return Err(Error::invalid("inputs", "the batch dimension must be at least 1"));
    }
    if rows > limits.max_rows {
        return Err(Error::invalid("inputs", format!("at most {} rows per request, got {rows}", limits.max_rows)));
    }
    Ok(())
}

fn input_names(spec: &ModelSpec) -> String {
    spec.inputs.iter().map(|s| format!("`{}`", s.name)).collect::<Vec<_>>().join(", ")
}

fn shape_text(shape: &[i64]) -> String {
    let dims: Vec<String> = shape.iter().map(|d| if *d < 0 { "N".to_owned() } else { d.to_string() }).collect();
    format!("[{}]", dims.join(", "))
}

/// Builds one input tensor from its proto form, checking it against the manifest.
fn tensor_from_proto(
    field: &str,
    t: &proto::Tensor,
    spec: &InputSpec,
    allow_non_finite: bool,
    limits: Limits,
) -> Result<HostTensor> {
    let dtype = if t.dtype == 0 {
        spec.dtype
    } else {
        DType::try_from(t.dtype)
            .map_err(|_| Error::invalid(format!("{field}.dtype"), format!("unknown dtype value {}", t.dtype)))?
    };
    if dtype != spec.dtype {
        return Err(Error::invalid(
            format!("{field}.dtype"),
            format!("input `{}` takes {}, got {dtype}", spec.name, spec.dtype),
        ));
    }
    let numel = check_shape(field, &t.shape, spec, limits)?;
    let data = tensor_bytes(field, t, dtype, numel)?;
    let host = HostTensor { name: spec.name.clone(), dtype, shape: t.shape.clone(), data };
    if dtype.is_float() && !allow_non_finite {
        check_finite(field, &host)?;
    }
    Ok(host)
}

/// Checks a client-claimed shape against the input's declared one: rank, sign, fixed
/// dimensions, then the element count, multiplied with overflow checks against the limit.
/// Returns the element count; nothing of the claimed size is allocated before this passes.
pub(crate) fn check_shape(field: &str, shape: &[i64], spec: &InputSpec, limits: Limits) -> Result<usize> {
    if shape.len() != spec.shape.len() {
        return Err(Error::invalid(
            format!("{field}.shape"),
            format!("input `{}` has shape {}, got {} dimension(s)", spec.name, shape_text(&spec.shape), shape.len()),
        ));
    }
    let mut numel: usize = 1;
    for (d, (&got, &want)) in shape.iter().zip(&spec.shape).enumerate() {
        if got < 0 {
            return Err(Error::invalid(
                format!("{field}.shape[{d}]"),
                format!("dimensions must be non-negative, got {got}"),
            ));
        }
        if want >= 0 && got != want {
            return Err(Error::invalid(
                format!("{field}.shape[{d}]"),
                format!("input `{}` has shape {}, got {got} in dimension {d}", spec.name, shape_text(&spec.shape)),
            ));
        }
        numel = usize::try_from(got)
            .ok()
            .and_then(|g| numel.checked_mul(g))
            .filter(|n| *n <= limits.max_tensor_elements)
            .ok_or_else(|| {
                Error::invalid(
                    format!("{field}.shape"),
                    format!("at most {} elements per tensor", limits.max_tensor_elements),
                )
            })?;
    }
    Ok(numel)
}

/// The tensor's elements as little-endian bytes, from whichever data field carries them.
fn tensor_bytes(field: &str, t: &proto::Tensor, dtype: DType, numel: usize) -> Result<Vec<u8>> {
    let typed_fields = [
        ("float_data", t.float_data.len()),
        ("double_data", t.double_data.len()),
        ("int64_data", t.int64_data.len()),
        ("int32_data", t.int32_data.len()),
        ("bool_data", t.bool_data.len()),
        ("raw_data", t.raw_data.len()),
    ];
    let set: Vec<&str> = typed_fields.iter().filter(|(_, n)| *n > 0).map(|(f, _)| *f).collect();
    if set.len() > 1 {
        return Err(Error::invalid(field, format!("exactly one data field may be set, got {}", set.join(", "))));
    }
    let wrong_len = |what: &str, got: usize| {
        Error::invalid(format!("{field}.{what}"), format!("shape {:?} needs {numel} elements, got {got}", t.shape))
    };
    if !t.raw_data.is_empty() || numel == 0 {
        let want = numel * dtype.size();
        if t.raw_data.len() != want {
            return Err(Error::invalid(
                format!("{field}.raw_data"),
                format!("shape {:?} of {dtype} needs {want} bytes, got {}", t.shape, t.raw_data.len()),
            ));
        }
        return Ok(t.raw_data.clone());
    }
    let expected_field = match dtype {
        DType::F32 => "float_data",
        DType::F64 => "double_data",
        DType::I64 => "int64_data",
        DType::I32 | DType::I8 | DType::U8 => "int32_data",
        DType::Bool => "bool_data",
        DType::F16 | DType::BF16 => "raw_data",
    };
    if set.first().copied() != Some(expected_field) {
        return Err(Error::invalid(
            field,
            format!(
                "{dtype} data goes in `{expected_field}` (or `raw_data`), got {}",
                set.first().copied().unwrap_or("no data")
            ),
        ));
    }
    let out = match dtype {
        DType::F32 => {
            check_len(&t.float_data, numel, "float_data", wrong_len)?.iter().flat_map(|v| v.to_le_bytes()).collect()
        }
        DType::F64 => {
            check_len(&t.double_data, numel, "double_data", wrong_len)?.iter().flat_map(|v| v.to_le_bytes()).collect()
        }
        DType::I64 => {
            check_len(&t.int64_data, numel, "int64_data", wrong_len)?.iter().flat_map(|v| v.to_le_bytes()).collect()
        }
        DType::I32 => {
            check_len(&t.int32_data, numel, "int32_data", wrong_len)?.iter().flat_map(|v| v.to_le_bytes()).collect()
        }
        DType::I8 => narrow(
            field,
            check_len(&t.int32_data, numel, "int32_data", wrong_len)?,
            |v| i8::try_from(v).ok().map(|x| x.to_le_bytes()[0]),
            "int8",
        )?,
        DType::U8 => {
            narrow(field, check_len(&t.int32_data, numel, "int32_data", wrong_len)?, |v| u8::try_from(v).ok(), "uint8")?
        }
        DType::Bool => check_len(&t.bool_data, numel, "bool_data", wrong_len)?.iter().map(|&b| u8::from(b)).collect(),
        DType::F16 | DType::BF16 => {
            unreachable!("half types are read from raw_data above; this is a bug")
        }
    };
    Ok(out)
}

fn check_len<'a, T>(v: &'a [T], numel: usize, what: &str, err: impl Fn(&str, usize) -> Error) -> Result<&'a [T]> {
    if v.len() == numel { Ok(v) } else { Err(err(what, v.len())) }
}

fn narrow(field: &str, v: &[i32], f: impl Fn(i32) -> Option<u8>, ty: &str) -> Result<Vec<u8>> {
    v.iter()
        .enumerate()
        .map(|(i, &x)| {
            f(x).ok_or_else(|| Error::invalid(format!("{field}.int32_data[{i}]"), format!("{x} does not fit in {ty}")))
        })
        .collect()
}

pub(crate) fn check_finite(field: &str, t: &HostTensor) -> Result<()> {
    if let Some(i) = t.to_f32().iter().position(|v| !v.is_finite()) {
        return Err(Error::invalid(
            format!("{field}[{i}]"),
            "NaN and Inf are not accepted by this model (its manifest does not set allow_non_finite)",
        ));
    }
    Ok(())
}

fn row_inputs(spec: &ModelSpec, rows: &[proto::Row], limits: Limits) -> Result<PredictInputs> {
    if spec.kind != ModelKind::Tabular {
        return Err(Error::invalid(
            "rows",
            format!("model `{}` is {}; `rows` are for tabular models, send `inputs`", spec.name, spec.kind.name()),
        ));
    }
    check_rows(rows.len(), limits)?;
    let input = &spec.inputs[0];
    let width = input.features.len();
    let mut values: Vec<f64> = Vec::with_capacity(rows.len() * width);
    for (r, row) in rows.iter().enumerate() {
        for f in &input.features {
            let v = *row.features.get(&f.name).ok_or_else(|| {
                Error::invalid(format!("rows[{r}]"), format!("missing feature `{}`{}", f.name, unit_hint(&f.unit)))
            })?;
            if !v.is_finite() && !spec.allow_non_finite {
                return Err(Error::invalid(
                    format!("rows[{r}].{}", f.name),
                    "NaN and Inf are not accepted by this model",
                ));
            }
            // Values travel as float32 unless the input is float64: one beyond its range would
            // reach the model as Inf.
            if input.dtype != DType::F64 && !(v as f32).is_finite() && !spec.allow_non_finite {
                return Err(Error::invalid(
                    format!("rows[{r}].{}", f.name),
                    format!("{v} is outside the float32 range this model takes"),
                ));
            }
            values.push(v);
        }
        if row.features.len() != width {
            let mut unknown: Vec<&str> = row
                .features
                .keys()
                .filter(|k| !input.features.iter().any(|f| &f.name == *k))
                .map(String::as_str)
                .collect();
            unknown.sort_unstable();
            let unknown: Vec<String> =
                unknown.iter().take(5).map(|k| format!("`{}`", crate::error::clip(k, 64))).collect();
            let expected: Vec<&str> = input.features.iter().map(|f| f.name.as_str()).collect();
            return Err(Error::invalid(
                format!("rows[{r}]"),
                format!(
                    "unknown feature(s) {}; model `{}` takes {}",
                    unknown.join(", "),
                    spec.name,
                    expected.join(", ")
                ),
            ));
        }
    }
    let shape = vec![rows.len() as i64, width as i64];
    let data: Vec<u8> = match input.dtype {
        DType::F64 => values.iter().flat_map(|v| v.to_le_bytes()).collect(),
        // Tabular inputs are float (checked in the manifest); narrower floats go through f32.
        _ => values.iter().flat_map(|v| (*v as f32).to_le_bytes()).collect(),
    };
    let tensor = HostTensor {
        name: input.name.clone(),
        dtype: if input.dtype == DType::F64 { DType::F64 } else { DType::F32 },
        shape,
        data,
    };
    Ok(PredictInputs { tensors: vec![tensor], rows: rows.len() })
}

fn unit_hint(unit: &str) -> String {
    if unit.is_empty() { String::new() } else { format!(" ({unit})") }
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
        match t.dtype {
            DType::F32 => {
                out.float_data = d.chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect()
            }
            DType::F64 => {
                out.double_data = d
                    .chunks_exact(8)
                    .map(|c| f64::from_le_bytes([c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]]))
                    .collect()
            }
            DType::I64 => {
                out.int64_data = d
                    .chunks_exact(8)
                    .map(|c| i64::from_le_bytes([c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]]))
                    .collect()
            }
            DType::I32 => {
                out.int32_data = d.chunks_exact(4).map(|c| i32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect()
            }
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
    use crate::model::manifest::parse_manifest;
    use std::path::Path;

    const LIMITS: Limits = Limits { max_tensor_elements: 1 << 20, max_rows: 64, max_texts: 3, max_text_bytes: 10 };

    fn spec() -> ModelSpec {
        parse_manifest(
            "risk",
            Path::new("/x"),
            r#"
kind = "tabular"
labels = ["low", "high"]
[[inputs]]
name = "features"
dtype = "float32"
shape = [-1, 2]
features = [{ name = "age", unit = "years" }, { name = "bmi" }]
"#,
        )
        .unwrap()
    }

    fn tensor(shape: Vec<i64>, data: Vec<f32>) -> proto::Tensor {
        proto::Tensor {
            name: "features".into(),
            dtype: proto::DataType::Float32 as i32,
            shape,
            float_data: data,
            ..Default::default()
        }
    }

    fn req_t(t: proto::Tensor) -> proto::PredictRequest {
        proto::PredictRequest { model: "risk".into(), inputs: vec![t], ..Default::default() }
    }

    fn row(pairs: &[(&str, f64)]) -> proto::Row {
        proto::Row { features: pairs.iter().map(|(k, v)| ((*k).to_owned(), *v)).collect() }
    }

    fn err_of(req: proto::PredictRequest) -> String {
        let e = predict_inputs(&spec(), &req, LIMITS).unwrap_err();
        assert_eq!(e.code(), tonic::Code::InvalidArgument, "{e}");
        e.to_string()
    }

    #[test]
    fn tensors_and_rows_build_the_same_input() {
        let a = predict_inputs(&spec(), &req_t(tensor(vec![1, 2], vec![40.0, 22.5])), LIMITS).unwrap();
        let b = predict_inputs(
            &spec(),
            &proto::PredictRequest { rows: vec![row(&[("bmi", 22.5), ("age", 40.0)])], ..Default::default() },
            LIMITS,
        )
        .unwrap();
        assert_eq!(a.tensors, b.tensors);
        assert_eq!(a.rows, 1);
    }

    #[test]
    fn bad_inputs_get_precise_messages() {
        let cases: Vec<(proto::PredictRequest, &str)> = vec![
            (proto::PredictRequest::default(), "both are empty"),
            (
                proto::PredictRequest {
                    inputs: vec![tensor(vec![1, 2], vec![1.0, 2.0])],
                    rows: vec![row(&[("age", 1.0)])],
                    ..Default::default()
                },
                "not both",
            ),
            (req_t(tensor(vec![1, 2], vec![1.0])), "needs 2 elements, got 1"),
            (req_t(tensor(vec![1, 3], vec![1.0, 2.0, 3.0])), "got 3 in dimension 1"),
            (req_t(tensor(vec![-1, 2], vec![])), "non-negative"),
            (req_t(tensor(vec![i64::MAX, 2], vec![1.0, 2.0])), "at most 1048576 elements"),
            (req_t(tensor(vec![4_000_000_000, 2], vec![])), "at most 1048576 elements"),
            (req_t(tensor(vec![2], vec![1.0, 2.0])), "got 1 dimension"),
            (req_t(tensor(vec![1, 2], vec![f32::NAN, 2.0])), "NaN and Inf"),
            (req_t(tensor(vec![1, 2], vec![f32::INFINITY, 2.0])), "NaN and Inf"),
            (req_t(tensor(vec![0, 2], vec![])), "at least 1"),
            (req_t(tensor(vec![65, 2], vec![0.0; 130])), "at most 64 rows"),
            (
                req_t(proto::Tensor {
                    dtype: proto::DataType::Int64 as i32,
                    int64_data: vec![1, 2],
                    ..tensor(vec![1, 2], vec![])
                }),
                "takes float32, got int64",
            ),
            (req_t(proto::Tensor { dtype: 99, ..tensor(vec![1, 2], vec![1.0, 2.0]) }), "unknown dtype value 99"),
            (req_t(proto::Tensor { name: "x".into(), ..tensor(vec![1, 2], vec![1.0, 2.0]) }), "has no input \"x\""),
            (
                req_t(proto::Tensor { double_data: vec![1.0, 2.0], ..tensor(vec![1, 2], vec![]) }),
                "goes in `float_data`",
            ),
            (req_t(proto::Tensor { raw_data: vec![0; 7], ..tensor(vec![1, 2], vec![]) }), "needs 8 bytes, got 7"),
            (proto::PredictRequest { rows: vec![row(&[("age", 1.0)])], ..Default::default() }, "missing feature `bmi`"),
            (
                proto::PredictRequest {
                    rows: vec![row(&[("age", 1.0), ("bmi", 2.0), ("height", 3.0)])],
                    ..Default::default()
                },
                "unknown feature(s) `height`",
            ),
            (
                proto::PredictRequest { rows: vec![row(&[("age", f64::NAN), ("bmi", 2.0)])], ..Default::default() },
                "NaN and Inf",
            ),
            (
                proto::PredictRequest { rows: vec![row(&[("age", 1e39), ("bmi", 2.0)])], ..Default::default() },
                "outside the float32 range",
            ),
        ];
        for (req, want) in cases {
            let msg = err_of(req);
            assert!(msg.contains(want), "{msg:?} should contain {want:?}");
        }
    }

    fn text_spec() -> ModelSpec {
        parse_manifest(
            "sent",
            Path::new("/x"),
            "kind = \"text-classification\"\n[[inputs]]\nname = \"input_ids\"\ndtype = \"int64\"\nshape = [-1, -1]\n[text]\nmax_length = 64\n",
        )
        .unwrap()
    }

    #[test]
    fn sentiment_requests_are_checked() {
        let req = |text: &str, texts: &[&str], max_length: i32| proto::SentimentRequest {
            text: text.into(),
            texts: texts.iter().map(|t| (*t).to_owned()).collect(),
            max_length,
            ..Default::default()
        };
        let ok = sentiment_inputs(&text_spec(), req("good", &[], 0), 256, LIMITS).unwrap();
        assert_eq!((ok.texts.len(), ok.max_length), (1, 64), "default is capped by the model");
        assert_eq!(sentiment_inputs(&text_spec(), req("", &["a", "b"], 16), 256, LIMITS).unwrap().max_length, 16);
        let cases = [
            (req("", &[], 0), "both are empty"),
            (req("a", &["b"], 0), "not both"),
            (req("", &["a", "b", "c", "d"], 0), "at most 3 texts"),
            (req("this text is too long", &[], 0), "at most 10 bytes, got 21"),
            (req("a", &[], -1), "must be positive"),
            (req("a", &[], 65), "at most 64 tokens"),
        ];
        for (r, want) in cases {
            let e = sentiment_inputs(&text_spec(), r, 256, LIMITS).unwrap_err();
            assert!(e.to_string().contains(want), "{e} should contain {want}");
        }
        let e = sentiment_inputs(&spec(), req("a", &[], 0), 256, LIMITS).unwrap_err();
        assert!(e.to_string().contains("needs a text-classification model"), "{e}");
    }

    #[test]
    fn raw_data_is_accepted_for_any_dtype() {
        let bytes: Vec<u8> = [1.0f32, 2.0].iter().flat_map(|v| v.to_le_bytes()).collect();
        let ok =
            predict_inputs(&spec(), &req_t(proto::Tensor { raw_data: bytes, ..tensor(vec![1, 2], vec![]) }), LIMITS)
                .unwrap();
        assert_eq!(ok.tensors[0].to_f32(), vec![1.0, 2.0]);
    }

    #[test]
    fn outputs_convert_to_typed_fields() {
        let t: proto::Tensor = HostTensor::from_f32("y", vec![1, 2], &[0.5, 1.5]).into();
        assert_eq!(t.float_data, vec![0.5, 1.5]);
        assert_eq!(t.dtype, proto::DataType::Float32 as i32);
    }
}

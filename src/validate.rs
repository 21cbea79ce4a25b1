//! Domain inputs -> the worker's payload, with precise INVALID_ARGUMENT messages.
//!
//! Every front door converts its wire message into [`crate::request::Inputs`] and calls
//! [`payload`]; the checks and their messages are written once, here. Checks happen before any
//! allocation of a client-claimed size: dimensions are multiplied with overflow checks and
//! compared with the element limit, and data lengths are compared with the shape before
//! anything is copied. Nothing here touches libtorch or protobuf.

use std::collections::HashMap;

use crate::batch::Payload;
use crate::error::{Error, Result, clip};
use crate::model::{DType, HostTensor, InputSpec, ModelKind, ModelSpec};
use crate::request::{Inputs, TensorData, TensorInput, TextsInput};

/// Request size limits.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Most elements one tensor may have.
    pub max_tensor_elements: usize,
    /// Most rows (batch entries) one request may carry.
    pub max_rows: usize,
    /// Most texts one request may carry.
    pub max_texts: usize,
    /// Most bytes (UTF-8) one text may have.
    pub max_text_bytes: usize,
}

/// Checks `inputs` against the model and builds what its worker runs, with the row count.
/// `text_length` is the device's default tokens per text.
pub fn payload(spec: &ModelSpec, inputs: Inputs, text_length: usize, limits: Limits) -> Result<(Payload, usize)> {
    match inputs {
        Inputs::Tensors(tensors) => {
            let (tensors, rows) = tensor_inputs(spec, tensors, limits)?;
            Ok((Payload::Tensors(tensors), rows))
        }
        Inputs::Rows(rows) => {
            let n = rows.len();
            Ok((Payload::Tensors(vec![row_inputs(spec, &rows, limits)?]), n))
        }
        Inputs::Texts(texts) => {
            let (texts, max_length) = text_inputs(spec, texts, text_length, limits)?;
            let n = texts.len();
            Ok((Payload::Texts { texts, max_length }, n))
        }
    }
}

fn text_inputs(
    spec: &ModelSpec,
    input: TextsInput,
    text_length: usize,
    limits: Limits,
) -> Result<(Vec<String>, usize)> {
    let Some(text) = &spec.text else {
        return Err(Error::invalid(
            "model",
            format!("model `{}` is {}; texts need a text-classification model", spec.name, spec.kind.name()),
        ));
    };
    let n = input.texts.len();
    if n == 0 {
        return Err(Error::invalid("texts", "at least one text is required"));
    }
    if n > limits.max_texts {
        return Err(Error::invalid("texts", format!("at most {} texts per request, got {n}", limits.max_texts)));
    }
    if let Some((i, t)) = input.texts.iter().enumerate().find(|(_, t)| t.len() > limits.max_text_bytes) {
        return Err(Error::invalid(
            format!("texts[{i}]"),
            format!("a text may have at most {} bytes, got {}", limits.max_text_bytes, t.len()),
        ));
    }
    let max_length = match input.max_length {
        None | Some(0) => text_length.min(text.max_length),
        Some(n) if n < 0 => {
            return Err(Error::invalid("max_length", format!("must be positive (0 = the default), got {n}")));
        }
        Some(1) => return Err(Error::invalid("max_length", "must be at least 2 (the special tokens)")),
        Some(n) => {
            let n = usize::try_from(n).unwrap_or(usize::MAX);
            if n > text.max_length {
                return Err(Error::invalid(
                    "max_length",
                    format!("model `{}` takes at most {} tokens, got {n}", spec.name, text.max_length),
                ));
            }
            n
        }
    };
    let texts = input
        .texts
        .into_iter()
        .enumerate()
        .map(|(i, b)| String::from_utf8(b).map_err(|_| Error::invalid(format!("texts[{i}]"), "texts must be UTF-8")))
        .collect::<Result<Vec<_>>>()?;
    Ok((texts, max_length))
}

fn tensor_inputs(spec: &ModelSpec, inputs: Vec<TensorInput>, limits: Limits) -> Result<(Vec<HostTensor>, usize)> {
    if inputs.is_empty() {
        let rows = if spec.kind == ModelKind::Tabular { " (or `rows` of named features)" } else { "" };
        return Err(Error::invalid(
            "inputs",
            format!("model `{}` takes input(s) {}{rows}; none given", spec.name, input_names(spec)),
        ));
    }
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
    let mut ordered: Vec<Option<HostTensor>> = vec![None; spec.inputs.len()];
    for (i, t) in inputs.into_iter().enumerate() {
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
                        clip(&t.name, 64),
                        input_names(spec)
                    ),
                )
            })?
        };
        if ordered[idx].is_some() {
            return Err(Error::invalid(
                format!("{field}.name"),
                format!("input `{}` given twice", spec.inputs[idx].name),
            ));
        }
        ordered[idx] = Some(tensor(&field, t, &spec.inputs[idx], spec.allow_non_finite, limits)?);
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
    // Token tensors longer than the model's position table would index past it.
    if let Some(text) = &spec.text
        && let Some(t) = tensors.iter().find(|t| t.shape.get(1).is_some_and(|&n| n as u64 > text.max_length as u64))
    {
        return Err(Error::invalid(
            "inputs",
            format!("model `{}` takes at most {} tokens, `{}` has {}", spec.name, text.max_length, t.name, t.shape[1]),
        ));
    }
    Ok((tensors, rows))
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

/// Builds one input tensor, checking it against the manifest.
fn tensor(field: &str, t: TensorInput, spec: &InputSpec, allow_non_finite: bool, limits: Limits) -> Result<HostTensor> {
    let dtype = t.dtype.unwrap_or(spec.dtype);
    if dtype != spec.dtype {
        return Err(Error::invalid(
            format!("{field}.dtype"),
            format!("input `{}` takes {}, got {dtype}", spec.name, spec.dtype),
        ));
    }
    let numel = check_shape(field, &t.shape, spec, limits)?;
    let data = tensor_bytes(field, &t.shape, t.data, dtype, numel)?;
    let host = HostTensor { name: spec.name.clone(), dtype, shape: t.shape, data };
    if dtype.is_float() && !allow_non_finite {
        check_finite(field, &host)?;
    }
    Ok(host)
}

/// Checks a client-claimed shape against the input's declared one: rank, sign, fixed
/// dimensions, then the element count, multiplied with overflow checks against the limit.
/// Returns the element count; nothing of the claimed size is allocated before this passes.
pub fn check_shape(field: &str, shape: &[i64], spec: &InputSpec, limits: Limits) -> Result<usize> {
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

/// The tensor's elements as little-endian bytes of `dtype`, from whichever form they came in.
fn tensor_bytes(field: &str, shape: &[i64], data: TensorData, dtype: DType, numel: usize) -> Result<Vec<u8>> {
    if let TensorData::Raw(raw) = data {
        let want = numel * dtype.size();
        if raw.len() != want {
            return Err(Error::invalid(
                field,
                format!("shape {} of {dtype} needs {want} bytes, got {}", shape_text(shape), raw.len()),
            ));
        }
        return Ok(raw);
    }
    if data.len() != numel {
        return Err(Error::invalid(
            field,
            format!("shape {} needs {numel} elements, got {}", shape_text(shape), data.len()),
        ));
    }
    let bytes: Option<Vec<u8>> = match (dtype, &data) {
        (_, TensorData::Empty) => Some(Vec::new()),
        (DType::F32, TensorData::F32(v)) => Some(v.iter().flat_map(|x| x.to_le_bytes()).collect()),
        (DType::F64, TensorData::F64(v)) => Some(v.iter().flat_map(|x| x.to_le_bytes()).collect()),
        (DType::I64, TensorData::I64(v)) => Some(v.iter().flat_map(|x| x.to_le_bytes()).collect()),
        (DType::I32, TensorData::I32(v)) => Some(v.iter().flat_map(|x| x.to_le_bytes()).collect()),
        (DType::Bool, TensorData::Bool(v)) => Some(v.iter().map(|&b| u8::from(b)).collect()),
        (DType::I8, TensorData::I32(v)) => {
            Some(narrow(field, v.iter().map(|&x| i64::from(x)), |x| i8::try_from(x).ok().map(|b| b.to_le_bytes()[0]))?)
        }
        (DType::U8, TensorData::I32(v)) => {
            Some(narrow(field, v.iter().map(|&x| i64::from(x)), |x| u8::try_from(x).ok())?)
        }
        (DType::U8, TensorData::U32(v)) => {
            Some(narrow(field, v.iter().map(|&x| i64::from(x)), |x| u8::try_from(x).ok())?)
        }
        _ => None,
    };
    bytes.ok_or_else(|| {
        let carrier = match dtype {
            DType::F16 | DType::BF16 => "raw bytes".to_owned(),
            DType::I8 | DType::U8 => "int32 values or raw bytes".to_owned(),
            other => format!("{other} values or raw bytes"),
        };
        Error::invalid(field, format!("{dtype} data travels as {carrier}, got {}", data.describe()))
    })
}

fn narrow(field: &str, values: impl Iterator<Item = i64>, f: impl Fn(i64) -> Option<u8>) -> Result<Vec<u8>> {
    values
        .enumerate()
        .map(|(i, x)| {
            f(x).ok_or_else(|| {
                Error::invalid(format!("{field}[{i}]"), format!("{x} is out of range for the input's type"))
            })
        })
        .collect()
}

fn check_finite(field: &str, t: &HostTensor) -> Result<()> {
    if let Some(i) = t.to_f32().iter().position(|v| !v.is_finite()) {
        return Err(Error::invalid(
            format!("{field}[{i}]"),
            "NaN and Inf are not accepted by this model (its manifest does not set allow_non_finite)",
        ));
    }
    Ok(())
}

fn row_inputs(spec: &ModelSpec, rows: &[HashMap<String, f64>], limits: Limits) -> Result<HostTensor> {
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
            let v = *row.get(&f.name).ok_or_else(|| {
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
        if row.len() != width {
            let mut unknown: Vec<&str> =
                row.keys().filter(|k| !input.features.iter().any(|f| &f.name == *k)).map(String::as_str).collect();
            unknown.sort_unstable();
            let unknown: Vec<String> = unknown.iter().take(5).map(|k| format!("`{}`", clip(k, 64))).collect();
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
    let (dtype, data): (DType, Vec<u8>) = match input.dtype {
        DType::F64 => (DType::F64, values.iter().flat_map(|v| v.to_le_bytes()).collect()),
        // Tabular inputs are float (checked in the manifest); narrower floats go through f32.
        _ => (DType::F32, values.iter().flat_map(|v| (*v as f32).to_le_bytes()).collect()),
    };
    Ok(HostTensor { name: input.name.clone(), dtype, shape, data })
}

fn unit_hint(unit: &str) -> String {
    if unit.is_empty() { String::new() } else { format!(" ({unit})") }
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

    fn tensor(shape: Vec<i64>, data: TensorData) -> Inputs {
        Inputs::Tensors(vec![TensorInput { name: "features".into(), dtype: Some(DType::F32), shape, data }])
    }

    fn f32s(v: &[f32]) -> TensorData {
        TensorData::F32(v.to_vec())
    }

    fn row(pairs: &[(&str, f64)]) -> HashMap<String, f64> {
        pairs.iter().map(|(k, v)| ((*k).to_owned(), *v)).collect()
    }

    fn err_of(inputs: Inputs) -> String {
        let e = payload(&spec(), inputs, 128, LIMITS).unwrap_err();
        assert_eq!(e.code(), tonic::Code::InvalidArgument, "{e}");
        e.to_string()
    }

    #[test]
    fn tensors_and_rows_build_the_same_input() {
        let (a, rows) = payload(&spec(), tensor(vec![1, 2], f32s(&[40.0, 22.5])), 128, LIMITS).unwrap();
        let (b, _) = payload(&spec(), Inputs::Rows(vec![row(&[("bmi", 22.5), ("age", 40.0)])]), 128, LIMITS).unwrap();
        let (Payload::Tensors(a), Payload::Tensors(b)) = (a, b) else { panic!("tensors expected") };
        assert_eq!(a, b);
        assert_eq!(rows, 1);
    }

    #[test]
    fn bad_inputs_get_precise_messages() {
        let cases: Vec<(Inputs, &str)> = vec![
            (Inputs::Tensors(vec![]), "none given"),
            (tensor(vec![1, 2], f32s(&[1.0])), "needs 2 elements, got 1"),
            (tensor(vec![1, 3], f32s(&[1.0, 2.0, 3.0])), "got 3 in dimension 1"),
            (tensor(vec![-1, 2], TensorData::Empty), "non-negative"),
            (tensor(vec![i64::MAX, 2], f32s(&[1.0, 2.0])), "at most 1048576 elements"),
            (tensor(vec![4_000_000_000, 2], TensorData::Empty), "at most 1048576 elements"),
            (tensor(vec![2], f32s(&[1.0, 2.0])), "got 1 dimension"),
            (tensor(vec![1, 2], f32s(&[f32::NAN, 2.0])), "NaN and Inf"),
            (tensor(vec![1, 2], f32s(&[f32::INFINITY, 2.0])), "NaN and Inf"),
            (tensor(vec![0, 2], TensorData::Empty), "at least 1"),
            (tensor(vec![65, 2], f32s(&[0.0; 130])), "at most 64 rows"),
            (
                Inputs::Tensors(vec![TensorInput {
                    name: "features".into(),
                    dtype: Some(DType::I64),
                    shape: vec![1, 2],
                    data: TensorData::I64(vec![1, 2]),
                }]),
                "takes float32, got int64",
            ),
            (
                Inputs::Tensors(vec![TensorInput {
                    name: "x".into(),
                    dtype: None,
                    shape: vec![1, 2],
                    data: f32s(&[1.0, 2.0]),
                }]),
                "has no input \"x\"",
            ),
            (tensor(vec![1, 2], TensorData::F64(vec![1.0, 2.0])), "travels as float32 values or raw bytes"),
            (tensor(vec![1, 2], TensorData::Raw(vec![0; 7])), "needs 8 bytes, got 7"),
            (Inputs::Rows(vec![row(&[("age", 1.0)])]), "missing feature `bmi`"),
            (Inputs::Rows(vec![row(&[("age", 1.0), ("bmi", 2.0), ("height", 3.0)])]), "unknown feature(s) `height`"),
            (Inputs::Rows(vec![row(&[("age", f64::NAN), ("bmi", 2.0)])]), "NaN and Inf"),
            (Inputs::Rows(vec![row(&[("age", 1e39), ("bmi", 2.0)])]), "outside the float32 range"),
            (
                Inputs::Texts(TextsInput { texts: vec![b"a".to_vec()], max_length: None }),
                "texts need a text-classification model",
            ),
        ];
        for (inputs, want) in cases {
            let msg = err_of(inputs);
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
    fn texts_are_checked() {
        let texts = |t: &[&[u8]], max_length: Option<i64>| {
            Inputs::Texts(TextsInput { texts: t.iter().map(|b| b.to_vec()).collect(), max_length })
        };
        let (ok, n) = payload(&text_spec(), texts(&[b"good"], None), 256, LIMITS).unwrap();
        assert!(matches!(ok, Payload::Texts { max_length: 64, .. }), "default is capped by the model");
        assert_eq!(n, 1);
        let (ok, _) = payload(&text_spec(), texts(&[b"a", b"b"], Some(16)), 256, LIMITS).unwrap();
        assert!(matches!(ok, Payload::Texts { max_length: 16, .. }));
        let cases = [
            (texts(&[], None), "at least one text"),
            (texts(&[b"a", b"b", b"c", b"d"], None), "at most 3 texts"),
            (texts(&[b"this text is too long"], None), "at most 10 bytes, got 21"),
            (texts(&[b"a"], Some(-1)), "must be positive"),
            (texts(&[b"a"], Some(65)), "at most 64 tokens"),
            (texts(&[b"\xff\xfe"], None), "UTF-8"),
        ];
        for (inputs, want) in cases {
            let e = payload(&text_spec(), inputs, 256, LIMITS).unwrap_err();
            assert!(e.to_string().contains(want), "{e} should contain {want}");
        }
    }

    #[test]
    fn token_tensors_longer_than_the_model_takes_are_refused() {
        let ids = |len: i64| {
            Inputs::Tensors(vec![TensorInput {
                name: "input_ids".into(),
                dtype: Some(DType::I64),
                shape: vec![1, len],
                data: TensorData::I64(vec![1; len as usize]),
            }])
        };
        assert!(payload(&text_spec(), ids(64), 256, LIMITS).is_ok());
        let e = payload(&text_spec(), ids(65), 256, LIMITS).unwrap_err();
        assert_eq!(e.code(), tonic::Code::InvalidArgument);
        assert!(e.to_string().contains("takes at most 64 tokens, `input_ids` has 65"), "{e}");
    }

    #[test]
    fn raw_bytes_are_accepted_for_any_dtype_and_narrow_types_are_range_checked() {
        let bytes: Vec<u8> = [1.0f32, 2.0].iter().flat_map(|v| v.to_le_bytes()).collect();
        let (ok, _) = payload(&spec(), tensor(vec![1, 2], TensorData::Raw(bytes)), 128, LIMITS).unwrap();
        let Payload::Tensors(t) = ok else { panic!() };
        assert_eq!(t[0].to_f32(), vec![1.0, 2.0]);
        let e = narrow("inputs[0]", [1i64, 300].into_iter(), |x| u8::try_from(x).ok()).unwrap_err();
        assert!(e.to_string().contains("inputs[0][1]: 300 is out of range"), "{e}");
    }
}

//! Input strategies for the fuzz targets in `fuzz.rs`: raw and mutated protobuf bytes, random
//! tensors, rows and texts, and near-valid requests that fit a spec and are then perturbed.

use std::fmt::Debug;
use std::sync::Arc;

use proptest::prelude::*;
use proptest::sample::Index;
use prost::Message;

use super::ALL_DTYPES;
use crate::model::manifest::ModelKind;
use crate::model::{DType, InputSpec, ModelSpec};
use crate::proto::{self, kserve as ks};

/// Applies byte edits (replace, delete, insert) at the given positions.
pub(super) fn mutate(mut bytes: Vec<u8>, edits: &[(Index, u8, u8)]) -> Vec<u8> {
    for (at, op, b) in edits {
        let len = bytes.len();
        match (op % 3, len) {
            (_, 0) | (2, _) => bytes.insert(at.index(len + 1), *b),
            (0, _) => bytes[at.index(len)] = *b,
            _ => {
                bytes.remove(at.index(len));
            }
        }
    }
    bytes
}

pub(super) fn edits() -> impl Strategy<Value = Vec<(Index, u8, u8)>> {
    prop::collection::vec((any::<Index>(), any::<u8>(), any::<u8>()), 0..6)
}

/// A dimension: mostly small, sometimes -1, huge, or a value whose products overflow.
pub(super) fn dim() -> impl Strategy<Value = i64> {
    prop_oneof![
        8 => 0i64..5,
        1 => Just(-1i64),
        1 => any::<i64>(),
        1 => prop::sample::select(vec![i64::MAX, i64::MIN, 1 << 31, 1 << 32, (1 << 62) + 1, 3_037_000_500]),
    ]
}

/// A value: ordinary, integral (incl. just outside i8 / u8), or non-finite.
pub(super) fn value() -> impl Strategy<Value = f64> {
    prop_oneof![
        4 => (-300i32..300).prop_map(f64::from),
        2 => prop::sample::select(vec![-129i32, -128, 127, 128, 255, 256, 668, 5000]).prop_map(f64::from),
        1 => any::<f64>(),
        1 => prop::sample::select(vec![f64::NAN, f64::INFINITY, f64::NEG_INFINITY, f64::MAX, f64::MIN_POSITIVE, 1e39]),
    ]
}

pub(super) fn name() -> impl Strategy<Value = String> {
    prop_oneof![
        4 => prop::sample::select(vec!["", "x", "features", "input_ids", "attention_mask", "token_type_ids"])
            .prop_map(str::to_owned),
        1 => "\\PC{0,8}",
    ]
}

/// Element count a shape claims, clamped for building data of about that length.
pub(super) fn claimed(shape: &[i64]) -> usize {
    shape.iter().fold(1usize, |n, &d| n.saturating_mul(usize::try_from(d).unwrap_or(1))).min(64)
}

pub(super) fn data_len(shape: &[i64], delta: i64) -> usize {
    usize::try_from((claimed(shape) as i64 + delta).clamp(0, 64)).unwrap_or(0)
}

/// What a structured tensor is built from.
#[derive(Debug, Clone)]
pub(super) struct TensorPlan {
    pub(super) name: String,
    pub(super) dtype: i32,
    pub(super) shape: Vec<i64>,
    /// Which data fields are set (bit i = i-th of float, double, int64, int32, bool, raw).
    pub(super) fields: u8,
    /// How far the data length is from what the shape claims.
    pub(super) delta: i64,
    pub(super) values: Vec<f64>,
    pub(super) raw: Vec<u8>,
}

pub(super) fn tensor_plan() -> impl Strategy<Value = TensorPlan> {
    (
        name(),
        prop_oneof![8 => 0i32..10, 1 => any::<i32>()],
        prop::collection::vec(dim(), 0..5),
        prop_oneof![4 => (0u8..6).prop_map(|i| 1 << i), 1 => any::<u8>()],
        prop_oneof![6 => Just(0i64), 2 => -2i64..3],
        prop::collection::vec(value(), 64),
        prop::collection::vec(any::<u8>(), 0..520),
    )
        .prop_map(|(name, dtype, shape, fields, delta, values, raw)| TensorPlan {
            name,
            dtype,
            shape,
            fields,
            delta,
            values,
            raw,
        })
}

pub(super) fn tensor(p: TensorPlan) -> proto::Tensor {
    let n = data_len(&p.shape, p.delta);
    let v = &p.values[..n];
    let size = crate::service::torchwire_convert::dtype_of(p.dtype).map_or(4, DType::size);
    let raw_len = (n * size).min(p.raw.len());
    let on = |bit: u8| p.fields & (1 << bit) != 0;
    proto::Tensor {
        name: p.name,
        dtype: p.dtype,
        float_data: if on(0) { v.iter().map(|x| *x as f32).collect() } else { vec![] },
        double_data: if on(1) { v.to_vec() } else { vec![] },
        int64_data: if on(2) { v.iter().map(|x| *x as i64).collect() } else { vec![] },
        int32_data: if on(3) { v.iter().map(|x| *x as i32).collect() } else { vec![] },
        bool_data: if on(4) { v.iter().map(|x| *x > 0.0).collect() } else { vec![] },
        raw_data: if on(5) { p.raw[..raw_len].to_vec() } else { vec![] },
        shape: p.shape,
    }
}

pub(super) fn row() -> impl Strategy<Value = proto::Row> {
    let feature = prop_oneof![
        4 => prop::sample::select(vec!["age", "bmi", "glucose", "systolic_bp"]).prop_map(str::to_owned),
        1 => "\\PC{0,6}",
    ];
    prop::collection::hash_map(feature, value(), 0..6).prop_map(|features| proto::Row { features })
}

/// A request that fits one spec, then gets a few perturbations: what a confused or hostile
/// client sends, close enough to valid to reach every check past the first.
#[derive(Debug, Clone)]
pub(super) struct NearValid {
    pub(super) spec: Arc<ModelSpec>,
    pub(super) rows: i64,
    /// Sizes for the variable dimensions after the first.
    pub(super) free: Vec<i64>,
    /// Element values (benign: small integers), cycled.
    pub(super) values: Vec<i32>,
    /// Raw bytes, cycled, for the half types.
    pub(super) raw: Vec<u16>,
    /// Send raw bytes rather than typed data.
    pub(super) as_raw: bool,
    /// (which tensor or element, what to do, a weird dimension).
    pub(super) perturb: Vec<(Index, u8, i64)>,
}

pub(super) fn near_valid(specs: Vec<Arc<ModelSpec>>) -> impl Strategy<Value = NearValid> {
    (
        prop::sample::select(specs),
        prop_oneof![8 => 1i64..5, 1 => 15i64..18],
        prop::collection::vec(1i64..4, 4),
        prop::collection::vec(0i32..100, 1..16),
        prop::collection::vec(any::<u16>(), 1..16),
        prop::bool::weighted(0.2),
        prop::collection::vec((any::<Index>(), 0u8..10, dim()), 0..3),
    )
        .prop_map(|(spec, rows, free, values, raw, as_raw, perturb)| NearValid {
            spec,
            rows,
            free,
            values,
            raw,
            as_raw,
            perturb,
        })
}

/// The shape and values of a tensor that fits `input`.
pub(super) fn fitting(nv: &NearValid, input: &InputSpec) -> (Vec<i64>, Vec<f64>) {
    let shape: Vec<i64> = input
        .shape
        .iter()
        .enumerate()
        .map(|(i, &d)| match (i, d) {
            (0, _) => nv.rows,
            (_, -1) => nv.free[i % nv.free.len()],
            (_, d) => d,
        })
        .collect();
    let numel = claimed(&shape);
    let values = (0..numel).map(|i| f64::from(nv.values[i % nv.values.len()])).collect();
    (shape, values)
}

/// Little-endian bytes of `values` as `dtype` (finite half values from `nv.raw`).
pub(super) fn le_bytes(nv: &NearValid, dtype: DType, values: &[f64]) -> Vec<u8> {
    let half = |i: usize| nv.raw[i % nv.raw.len()] & 0xfbff; // exponent below 31: finite
    values
        .iter()
        .enumerate()
        .flat_map(|(i, &v)| match dtype {
            DType::F32 => (v as f32).to_le_bytes().to_vec(),
            DType::F64 => v.to_le_bytes().to_vec(),
            DType::F16 | DType::BF16 => half(i).to_le_bytes().to_vec(),
            DType::I64 => (v as i64).to_le_bytes().to_vec(),
            DType::I32 => (v as i32).to_le_bytes().to_vec(),
            DType::I8 | DType::U8 | DType::Bool => vec![v as u8 % if dtype == DType::Bool { 2 } else { 128 }],
        })
        .collect()
}

/// Applies the element-level perturbations to `shape` and `values`.
pub(super) fn perturb_tensor(nv: &NearValid, shape: &mut Vec<i64>, values: &mut Vec<f64>) {
    for (at, what, weird) in &nv.perturb {
        match what {
            0 if !shape.is_empty() => {
                let d = at.index(shape.len());
                shape[d] = *weird;
            }
            1 => {
                values.push(1.0);
            }
            2 if !values.is_empty() => {
                values.pop();
            }
            3 if !values.is_empty() => {
                let i = at.index(values.len());
                values[i] = [f64::NAN, f64::INFINITY, 1e39, -129.0, 300.0][at.index(5)];
            }
            4 => shape.push(1),
            _ => {}
        }
    }
}

pub(super) fn near_valid_predict(nv: NearValid) -> proto::PredictRequest {
    let spec = &nv.spec;
    let mut req = proto::PredictRequest { model: spec.name.clone(), ..Default::default() };
    if spec.kind == ModelKind::Tabular && !nv.as_raw {
        let features = &spec.inputs[0].features;
        for r in 0..nv.rows {
            let mut row = proto::Row::default();
            for (i, f) in features.iter().enumerate() {
                let v = nv.values[(r as usize + i) % nv.values.len()];
                row.features.insert(f.name.clone(), f64::from(v));
            }
            req.rows.push(row);
        }
        for (at, what, _) in &nv.perturb {
            let Some(row) = req.rows.get_mut(at.index(nv.rows as usize)) else { continue };
            match what {
                5 => row.features.clear(),
                6 => {
                    row.features.insert("unknown".into(), 1.0);
                }
                7 => {
                    row.features.insert(features[0].name.clone(), f64::NAN);
                }
                8 => {
                    row.features.remove(&features[at.index(features.len())].name);
                }
                _ => {}
            }
        }
        return req;
    }
    for input in &spec.inputs {
        let (mut shape, mut values) = fitting(&nv, input);
        perturb_tensor(&nv, &mut shape, &mut values);
        let mut t = proto::Tensor {
            name: input.name.clone(),
            dtype: proto::DataType::from(input.dtype) as i32,
            ..Default::default()
        };
        match input.dtype {
            _ if nv.as_raw => t.raw_data = le_bytes(&nv, input.dtype, &values),
            DType::F32 => t.float_data = values.iter().map(|v| *v as f32).collect(),
            DType::F64 => t.double_data = values,
            DType::I64 => t.int64_data = values.iter().map(|v| *v as i64).collect(),
            DType::I32 | DType::I8 | DType::U8 => t.int32_data = values.iter().map(|v| *v as i32).collect(),
            DType::Bool => t.bool_data = values.iter().map(|v| *v > 50.0).collect(),
            DType::F16 | DType::BF16 => t.raw_data = le_bytes(&nv, input.dtype, &values),
        }
        t.shape = shape;
        req.inputs.push(t);
    }
    for (at, what, weird) in &nv.perturb {
        let n = req.inputs.len();
        if n == 0 {
            break;
        }
        match what {
            5 => req.inputs[at.index(n)].name.clear(),
            6 => req.inputs[at.index(n)].dtype = i32::try_from(*weird % 12).unwrap_or(0),
            7 => {
                let t = req.inputs[at.index(n)].clone();
                req.inputs.push(t);
            }
            8 => {
                req.inputs.remove(at.index(n));
            }
            9 => req.inputs[at.index(n)].float_data.push(0.5),
            _ => {}
        }
    }
    req
}

pub(super) fn predict_request() -> impl Strategy<Value = proto::PredictRequest> {
    (
        prop::collection::vec(tensor_plan().prop_map(tensor), 0..3),
        prop::collection::vec(row(), 0..5),
        0u8..4,
        "\\PC{0,6}",
        version(),
    )
        .prop_map(|(inputs, rows, mode, device, version)| {
            let (inputs, rows) = match mode {
                0 => (inputs, vec![]),
                1 => (vec![], rows),
                _ => (inputs, rows),
            };
            proto::PredictRequest { model: "m".into(), device, inputs, rows, version }
        })
}

/// What a client may write for a version: mostly empty (the default), else numbers that may
/// overflow or be zero, labels, and junk.
fn version() -> impl Strategy<Value = String> {
    prop_oneof![6 => Just(String::new()), 1 => "[0-9]{1,24}", 1 => "[a-z][a-z0-9_-]{0,40}", 1 => "\\PC{0,8}"]
}

/// Raw bytes: random, or a mutated encoding of a structured message.
pub(super) fn wire<M: Message + Debug + 'static>(
    structured: impl Strategy<Value = M> + 'static,
) -> BoxedStrategy<Vec<u8>> {
    prop_oneof![
        prop::collection::vec(any::<u8>(), 0..256),
        (structured, edits()).prop_map(|(m, e)| mutate(m.encode_to_vec(), &e)),
    ]
    .boxed()
}

pub(super) fn text() -> impl Strategy<Value = String> {
    prop_oneof![
        Just(String::new()),
        any::<String>(),
        "\\PC{0,40}",
        "[\\x00-\\x1f\\x7f\\u{200b}\\u{feff}]{0,20}",
        (0usize..3000, any::<char>()).prop_map(|(n, c)| c.to_string().repeat(n)),
    ]
}

pub(super) fn sentiment_request() -> impl Strategy<Value = proto::SentimentRequest> {
    (
        prop_oneof![3 => Just(String::new()), 1 => text()],
        prop_oneof![1 => Just(vec![]), 2 => prop::collection::vec(text(), 0..12)],
        prop_oneof![Just(0i32), -3i32..600, any::<i32>(), Just(i32::MIN), Just(i32::MAX)],
    )
        .prop_map(|(text, texts, max_length)| proto::SentimentRequest {
            text,
            texts,
            model: String::new(),
            device: String::new(),
            max_length,
            version: String::new(),
        })
}

/// KServe element bytes of a datatype string (BYTES and unknown: 4).
pub(super) fn ks_size(datatype: &str) -> usize {
    ALL_DTYPES.into_iter().find(|d| crate::service::kserve_convert::datatype(*d) == datatype).map_or(4, DType::size)
}

/// The BYTES wire form of `items`, with the length of element `lie` (if any) off by `by`.
pub(super) fn bytes_wire(items: &[String], lie: Option<(Index, i64)>) -> Vec<u8> {
    let lie = lie.filter(|_| !items.is_empty()).map(|(i, by)| (i.index(items.len()), by));
    let mut out = Vec::new();
    for (i, s) in items.iter().enumerate() {
        let mut n = s.len() as i64;
        if let Some((at, by)) = lie
            && at == i
        {
            n += by;
        }
        out.extend_from_slice(&(n as u32).to_le_bytes());
        out.extend_from_slice(s.as_bytes());
    }
    out
}

pub(super) fn infer_tensor() -> impl Strategy<Value = (ks::model_infer_request::InferInputTensor, Vec<u8>)> {
    let datatype = prop_oneof![
        6 => prop::sample::select(vec!["FP32", "FP64", "FP16", "BF16", "INT64", "INT32", "INT8", "UINT8", "BOOL", "BYTES"])
            .prop_map(str::to_owned),
        1 => "\\PC{0,6}",
    ];
    let strings = prop::collection::vec(text(), 0..5);
    let lie = prop::option::weighted(0.2, (any::<Index>(), -3i64..4));
    (tensor_plan(), datatype, any::<bool>(), strings, lie).prop_map(|(p, datatype, typed, strings, lie)| {
        let n = data_len(&p.shape, p.delta);
        let v = &p.values[..n];
        let on = |bit: u8| p.fields & (1 << bit) != 0;
        let contents = typed.then(|| ks::InferTensorContents {
            fp32_contents: if on(0) { v.iter().map(|x| *x as f32).collect() } else { vec![] },
            fp64_contents: if on(1) { v.to_vec() } else { vec![] },
            int64_contents: if on(2) { v.iter().map(|x| *x as i64).collect() } else { vec![] },
            int_contents: if on(3) { v.iter().map(|x| *x as i32).collect() } else { vec![] },
            uint_contents: if on(3) { v.iter().map(|x| *x as u32).collect() } else { vec![] },
            bool_contents: if on(4) { v.iter().map(|x| *x > 0.0).collect() } else { vec![] },
            bytes_contents: strings.iter().map(|s| bytes::Bytes::from(s.clone())).collect(),
            ..Default::default()
        });
        let raw = if datatype == "BYTES" {
            bytes_wire(&strings, lie)
        } else {
            p.raw[..(n * ks_size(&datatype)).min(p.raw.len())].to_vec()
        };
        // Text models take shape [N] or [N, 1]; make that likely for BYTES.
        let shape = if datatype == "BYTES" && p.fields % 2 == 0 { vec![strings.len() as i64] } else { p.shape };
        let input = ks::model_infer_request::InferInputTensor {
            name: if datatype == "BYTES" && p.fields % 3 == 0 { "text".into() } else { p.name },
            datatype,
            shape,
            parameters: Default::default(),
            contents,
        };
        (input, raw)
    })
}

pub(super) fn near_valid_infer(nv: NearValid) -> ks::ModelInferRequest {
    use ks::model_infer_request::InferInputTensor;
    let spec = &nv.spec;
    let mut req = ks::ModelInferRequest { model_name: spec.name.clone(), ..Default::default() };
    if spec.text.is_some() {
        let texts: Vec<String> =
            (0..nv.rows as usize).map(|i| "é".repeat(nv.values[i % nv.values.len()] as usize * 3)).collect();
        let lie = nv.perturb.iter().find(|p| p.1 == 1).map(|p| (p.0, p.2 % 5));
        let shape = if nv.perturb.iter().any(|p| p.1 == 4) { vec![nv.rows, 1] } else { vec![nv.rows] };
        let mut input = InferInputTensor { name: "text".into(), datatype: "BYTES".into(), shape, ..Default::default() };
        if nv.as_raw {
            req.raw_input_contents.push(bytes_wire(&texts, lie).into());
        } else {
            let bytes_contents = texts.into_iter().map(bytes::Bytes::from).collect();
            input.contents = Some(ks::InferTensorContents { bytes_contents, ..Default::default() });
        }
        req.inputs.push(input);
        return req;
    }
    for input in &spec.inputs {
        let (mut shape, mut values) = fitting(&nv, input);
        perturb_tensor(&nv, &mut shape, &mut values);
        let datatype = crate::service::kserve_convert::datatype(input.dtype).to_owned();
        let mut t = InferInputTensor { name: input.name.clone(), datatype, ..Default::default() };
        let raw = nv.as_raw || matches!(input.dtype, DType::F16 | DType::BF16);
        if raw {
            req.raw_input_contents.push(le_bytes(&nv, input.dtype, &values).into());
        } else {
            let mut c = ks::InferTensorContents::default();
            match input.dtype {
                DType::F32 => c.fp32_contents = values.iter().map(|v| *v as f32).collect(),
                DType::F64 => c.fp64_contents = values,
                DType::I64 => c.int64_contents = values.iter().map(|v| *v as i64).collect(),
                DType::I32 | DType::I8 => c.int_contents = values.iter().map(|v| *v as i32).collect(),
                DType::U8 => c.uint_contents = values.iter().map(|v| *v as u32).collect(),
                DType::Bool => c.bool_contents = values.iter().map(|v| *v > 50.0).collect(),
                DType::F16 | DType::BF16 => {}
            }
            t.contents = Some(c);
        }
        t.shape = shape;
        req.inputs.push(t);
    }
    for (at, what, weird) in &nv.perturb {
        let n = req.inputs.len();
        if n == 0 {
            break;
        }
        match what {
            5 => req.inputs[at.index(n)].name.clear(),
            6 => req.inputs[at.index(n)].datatype = ["FP32", "INT8", "BYTES", "fp32"][at.index(4)].into(),
            7 => {
                let t = req.inputs[at.index(n)].clone();
                req.inputs.push(t);
            }
            8 if *weird % 2 == 0 => {
                req.inputs.remove(at.index(n));
            }
            8 => {
                req.raw_input_contents.pop();
            }
            _ => {}
        }
    }
    req
}

pub(super) fn infer_request() -> impl Strategy<Value = ks::ModelInferRequest> {
    (prop::collection::vec(infer_tensor(), 0..3), 0u8..3).prop_map(|(tensors, raw_mode)| {
        let (mut inputs, raws): (Vec<_>, Vec<_>) = tensors.into_iter().unzip();
        let raw_input_contents = match raw_mode {
            // Raw contents, one per input: typed contents must then be absent.
            0 => {
                inputs.iter_mut().for_each(|i| i.contents = None);
                raws.into_iter().map(bytes::Bytes::from).collect()
            }
            1 => vec![],
            _ => raws.into_iter().skip(1).map(bytes::Bytes::from).collect(),
        };
        ks::ModelInferRequest { model_name: "m".into(), inputs, raw_input_contents, ..Default::default() }
    })
}

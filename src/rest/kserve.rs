//! KServe v2 / Open Inference Protocol over HTTP (`/v2`), wire-compatible with Triton's REST
//! API so `tritonclient.http`, KServe's SDK and `curl` work: converts each JSON request into
//! the `inference.GRPCInferenceService` message, calls that service, and writes its answer in
//! the REST form. Inference tensors travel as JSON `data` (flat or nested, BYTES as strings)
//! or, with the binary tensor extension (`Inference-Header-Content-Length`), as raw bytes after
//! the JSON header, in both directions.

use bytes::{Bytes, BytesMut};
use http::{HeaderValue, StatusCode, header};
use serde::Deserialize;
use serde_json::{Map, Value, json};

use super::{Input, Refused, Reply, Route, Target, binary_header_length, check_content_type, json_body, parse_json};
use super::{status_reply, with_request_id};
use crate::error::{Error, clip};
use crate::proto::kserve::grpc_inference_service_server::GrpcInferenceService;
use crate::proto::kserve::infer_parameter::ParameterChoice;
use crate::proto::kserve::{self as ks, model_infer_request as req_t};
use crate::service::kserve::KserveService;

type Params = std::collections::HashMap<String, ks::InferParameter>;

/// Answers one `/v2` endpoint.
pub(super) async fn dispatch<B>(svc: &KserveService, route: Route, mut input: Input<B>) -> Result<Reply, Refused>
where
    B: http_body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let id = input.info.request_id.clone();
    let reply = |r: Result<Value, tonic::Status>, ok: StatusCode| match r {
        Ok(v) => with_request_id(json_body(ok, &v), &id),
        Err(s) => status_reply(&s, &id),
    };
    Ok(match route {
        Route::Live => {
            let r = svc.server_live(input.grpc(ks::ServerLiveRequest {})).await.map(|r| r.into_inner().live);
            reply(r.map(|live| json!({ "live": live })), StatusCode::OK)
        }
        Route::Ready => match svc.server_ready(input.grpc(ks::ServerReadyRequest {})).await {
            Ok(r) if r.get_ref().ready => reply(Ok(json!({ "ready": true })), StatusCode::OK),
            // KServe: any status but 200 means not ready; Triton answers 400.
            Ok(_) => reply(Ok(json!({ "ready": false })), StatusCode::BAD_REQUEST),
            Err(s) => status_reply(&s, &id),
        },
        Route::ServerMetadata => {
            let r = svc.server_metadata(input.grpc(ks::ServerMetadataRequest {})).await;
            reply(r.map(|r| to_value(r.get_ref())), StatusCode::OK)
        }
        Route::ModelMetadata(Target { model, version }) => {
            let r = svc.model_metadata(input.grpc(ks::ModelMetadataRequest { name: model, version })).await;
            reply(r.map(|r| metadata(r.into_inner())), StatusCode::OK)
        }
        Route::ModelReady(Target { model, version }) => {
            let r = svc.model_ready(input.grpc(ks::ModelReadyRequest { name: model.clone(), version })).await;
            match r {
                Ok(r) if r.get_ref().ready => reply(Ok(json!({ "name": model, "ready": true })), StatusCode::OK),
                Ok(_) => reply(Ok(json!({ "name": model, "ready": false })), StatusCode::BAD_REQUEST),
                Err(s) => status_reply(&s, &id),
            }
        }
        Route::ModelConfig(Target { model, version }) => {
            let r = svc.model_config(input.grpc(ks::ModelConfigRequest { name: model, version })).await;
            reply(r.map(|r| r.into_inner().config.map_or(Value::Null, |c| to_value(&c))), StatusCode::OK)
        }
        Route::ModelStatistics(Target { model, version }) => {
            let r = svc.model_statistics(input.grpc(ks::ModelStatisticsRequest { name: model, version })).await;
            reply(r.map(|r| numbers(to_value(r.get_ref()))), StatusCode::OK)
        }
        Route::RepositoryIndex => {
            let body: Map<String, Value> = input.optional_json(false).await?;
            let ready = body.get("ready").and_then(Value::as_bool).unwrap_or(false);
            let msg = ks::RepositoryIndexRequest { repository_name: String::new(), ready };
            let r = svc.repository_index(input.grpc(msg)).await;
            reply(r.map(|r| Value::Array(r.get_ref().models.iter().map(to_value).collect())), StatusCode::OK)
        }
        Route::RepositoryLoad(model) => {
            let _: Map<String, Value> = input.optional_json(false).await?;
            let msg = ks::RepositoryModelLoadRequest { model_name: model, ..Default::default() };
            reply(svc.repository_model_load(input.grpc(msg)).await.map(|_| json!({})), StatusCode::OK)
        }
        Route::RepositoryUnload(model) => {
            let _: Map<String, Value> = input.optional_json(false).await?;
            let msg = ks::RepositoryModelUnloadRequest { model_name: model, ..Default::default() };
            reply(svc.repository_model_unload(input.grpc(msg)).await.map(|_| json!({})), StatusCode::OK)
        }
        Route::ModelInfer(target) => return infer(svc, target, input).await,
        other => return Err(Error::internal(format!("route {other:?} reached the KServe door")).into()),
    })
}

async fn infer<B>(svc: &KserveService, target: Target, mut input: Input<B>) -> Result<Reply, Refused>
where
    B: http_body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let header_len = binary_header_length(&input.parts.headers)?;
    check_content_type(&input.parts.headers, false, header_len.is_some())?;
    let body = input.bytes().await?;
    let (msg, wants) = infer_request(&body, header_len, target)?;
    let id = input.info.request_id.clone();
    Ok(match svc.model_infer(input.grpc(msg)).await {
        Ok(r) => infer_reply(r.into_inner(), &wants, &id),
        Err(s) => status_reply(&s, &id),
    })
}

/// The JSON of an infer request (`deny_unknown_fields`: a misspelt key is an error, not
/// silently ignored).
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct InferBody {
    #[serde(default)]
    id: String,
    #[serde(default)]
    parameters: Map<String, Value>,
    inputs: Vec<InputBody>,
    #[serde(default)]
    outputs: Vec<OutputBody>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct InputBody {
    name: String,
    shape: Vec<i64>,
    datatype: String,
    #[serde(default)]
    parameters: Map<String, Value>,
    data: Option<Value>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct OutputBody {
    name: String,
    #[serde(default)]
    parameters: Map<String, Value>,
}

/// Which outputs the client wants as raw bytes after the JSON header.
#[derive(Debug)]
struct Wants {
    all_binary: bool,
    binary: Vec<(String, bool)>,
}

impl Wants {
    fn binary(&self, name: &str) -> bool {
        self.binary.iter().find(|(n, _)| n == name).map_or(self.all_binary, |(_, b)| *b)
    }
}

/// Converts a REST infer body (JSON, or JSON header + binary tensors) into ModelInfer's message.
fn infer_request(
    body: &[u8],
    header_len: Option<usize>,
    target: Target,
) -> Result<(ks::ModelInferRequest, Wants), Error> {
    let (head, mut tail) = match header_len {
        None => (body, &[][..]),
        Some(n) if n <= body.len() => body.split_at(n),
        Some(n) => {
            return Err(Error::invalid(
                "Inference-Header-Content-Length",
                format!("says {n} bytes of JSON, but the body has only {}", body.len()),
            ));
        }
    };
    let parsed: InferBody = parse_json(head)?;
    let mut parameters = params("parameters", parsed.parameters)?;
    let all_binary = take_bool(&mut parameters, "binary_data_output");
    let mut inputs = Vec::with_capacity(parsed.inputs.len());
    let mut raws = Vec::with_capacity(parsed.inputs.len());
    for (i, input) in parsed.inputs.into_iter().enumerate() {
        let (tensor, raw) = input_tensor(i, input, &mut tail)?;
        inputs.push(tensor);
        raws.push(raw);
    }
    if !tail.is_empty() {
        return Err(Error::invalid(
            "body",
            format!("{} bytes follow the tensors the inputs' binary_data_size announce", tail.len()),
        ));
    }
    let mut binary = Vec::new();
    let mut outputs = Vec::new();
    for (i, o) in parsed.outputs.into_iter().enumerate() {
        let mut p = params(&format!("outputs[{i}].parameters"), o.parameters)?;
        if p.contains_key("binary_data") {
            binary.push((o.name.clone(), take_bool(&mut p, "binary_data")));
        }
        outputs.push(req_t::InferRequestedOutputTensor { name: o.name, parameters: p });
    }
    let msg = ks::ModelInferRequest {
        model_name: target.model,
        model_version: target.version,
        id: parsed.id,
        parameters,
        inputs,
        outputs,
        raw_input_contents: raws,
    };
    Ok((msg, Wants { all_binary, binary }))
}

fn input_tensor(i: usize, input: InputBody, tail: &mut &[u8]) -> Result<(req_t::InferInputTensor, Bytes), Error> {
    let field = format!("inputs[{i}] ({})", clip(&input.name, 64));
    let mut parameters = params(&format!("{field}.parameters"), input.parameters)?;
    let count = element_count(&field, &input.shape)?;
    let size = parameters.remove("binary_data_size");
    let raw = match (size, input.data) {
        (Some(p), None) => {
            let n = match p.parameter_choice {
                Some(ParameterChoice::Int64Param(n)) => usize::try_from(n).ok(),
                Some(ParameterChoice::Uint64Param(n)) => usize::try_from(n).ok(),
                _ => None,
            }
            .ok_or_else(|| Error::invalid(&field, "parameters.binary_data_size must be a non-negative integer"))?;
            if n > tail.len() {
                return Err(Error::invalid(&field, format!("binary_data_size {n} runs past the end of the body")));
            }
            let (raw, rest) = tail.split_at(n);
            *tail = rest;
            Bytes::copy_from_slice(raw)
        }
        (None, Some(data)) => encode(&field, &input.datatype, count, &data)?,
        (Some(_), Some(_)) => return Err(Error::invalid(&field, "has both `data` and binary_data_size; send one")),
        (None, None) => return Err(Error::invalid(&field, "has no `data` (nor binary_data_size)")),
    };
    let tensor = req_t::InferInputTensor {
        name: input.name,
        datatype: input.datatype,
        shape: input.shape,
        parameters,
        contents: None,
    };
    Ok((tensor, raw))
}

fn element_count(field: &str, shape: &[i64]) -> Result<usize, Error> {
    shape.iter().try_fold(1usize, |n, &d| {
        let d = usize::try_from(d)
            .map_err(|_| Error::invalid(field, format!("shape {shape:?} has a negative dimension")))?;
        n.checked_mul(d).ok_or_else(|| Error::invalid(field, format!("shape {shape:?} is too large")))
    })
}

/// JSON `data` (flat or nested) → the tensor's little-endian bytes (BYTES: 4-byte length
/// prefixes), checking the element count against the shape and each value against the type.
fn encode(field: &str, datatype: &str, count: usize, data: &Value) -> Result<Bytes, Error> {
    // Sized by the data the body holds, never by the count the shape claims.
    let mut values = Vec::new();
    flatten(data, &mut values);
    if values.len() != count {
        return Err(Error::invalid(field, format!("shape needs {count} elements; `data` has {}", values.len())));
    }
    let mut out = BytesMut::with_capacity(values.len() * 4);
    for (j, v) in values.iter().enumerate() {
        put(&mut out, datatype, v).map_err(|why| Error::invalid(format!("{field}.data[{j}]"), why))?;
    }
    Ok(out.freeze())
}

fn flatten<'a>(v: &'a Value, out: &mut Vec<&'a Value>) {
    match v {
        Value::Array(items) => items.iter().for_each(|i| flatten(i, out)),
        other => out.push(other),
    }
}

fn put(out: &mut BytesMut, datatype: &str, v: &Value) -> Result<(), String> {
    let int = |lo: i128, hi: i128| -> Result<i128, String> {
        let n = v.as_i64().map(i128::from).or_else(|| v.as_u64().map(i128::from));
        match n {
            Some(n) if (lo..=hi).contains(&n) => Ok(n),
            Some(n) => Err(format!("{n} is out of range for {datatype}")),
            None => Err(format!("{} is not an integer, as {datatype} needs", clip(&v.to_string(), 32))),
        }
    };
    match datatype {
        "BOOL" => out.extend_from_slice(&[u8::from(v.as_bool().ok_or("is not true or false, as BOOL needs")?)]),
        "INT8" => out.extend_from_slice(&(int(i8::MIN.into(), i8::MAX.into())? as i8).to_le_bytes()),
        "INT16" => out.extend_from_slice(&(int(i16::MIN.into(), i16::MAX.into())? as i16).to_le_bytes()),
        "INT32" => out.extend_from_slice(&(int(i32::MIN.into(), i32::MAX.into())? as i32).to_le_bytes()),
        "INT64" => out.extend_from_slice(&(int(i64::MIN.into(), i64::MAX.into())? as i64).to_le_bytes()),
        "UINT8" => out.extend_from_slice(&(int(0, u8::MAX.into())? as u8).to_le_bytes()),
        "UINT16" => out.extend_from_slice(&(int(0, u16::MAX.into())? as u16).to_le_bytes()),
        "UINT32" => out.extend_from_slice(&(int(0, u32::MAX.into())? as u32).to_le_bytes()),
        "UINT64" => out.extend_from_slice(&(int(0, u64::MAX.into())? as u64).to_le_bytes()),
        "FP32" => {
            let x = v.as_f64().ok_or_else(|| format!("{} is not a number", clip(&v.to_string(), 32)))?;
            #[allow(clippy::cast_possible_truncation)]
            let f = x as f32;
            if f.is_infinite() {
                return Err(format!("{x} is out of range for FP32"));
            }
            out.extend_from_slice(&f.to_le_bytes());
        }
        "FP64" => out.extend_from_slice(&v.as_f64().ok_or("is not a number")?.to_le_bytes()),
        "BYTES" => {
            let s = v.as_str().ok_or("is not a string, as BYTES needs in JSON")?;
            let len = u32::try_from(s.len()).map_err(|_| "is longer than 4 GiB".to_owned())?;
            out.extend_from_slice(&len.to_le_bytes());
            out.extend_from_slice(s.as_bytes());
        }
        "FP16" | "BF16" => {
            return Err(format!("{datatype} cannot be sent as JSON numbers; send FP32, or the binary extension"));
        }
        other => {
            return Err(format!(
                "datatype `{}` is not a KServe datatype (BOOL, INT8..INT64, UINT8..UINT64, FP16, BF16, FP32, FP64, BYTES)",
                clip(other, 32)
            ));
        }
    }
    Ok(())
}

/// JSON parameters → KServe's typed ones.
fn params(field: &str, map: Map<String, Value>) -> Result<Params, Error> {
    map.into_iter()
        .map(|(k, v)| {
            let choice = match &v {
                Value::Bool(b) => ParameterChoice::BoolParam(*b),
                Value::String(s) => ParameterChoice::StringParam(s.clone()),
                Value::Number(n) if n.is_i64() => ParameterChoice::Int64Param(n.as_i64().unwrap_or_default()),
                Value::Number(n) if n.is_u64() => ParameterChoice::Uint64Param(n.as_u64().unwrap_or_default()),
                Value::Number(n) => ParameterChoice::DoubleParam(n.as_f64().unwrap_or_default()),
                _ => {
                    return Err(Error::invalid(
                        format!("{field}.{}", clip(&k, 64)),
                        "must be a bool, number or string",
                    ));
                }
            };
            Ok((k, ks::InferParameter { parameter_choice: Some(choice) }))
        })
        .collect()
}

fn take_bool(p: &mut Params, key: &str) -> bool {
    matches!(p.remove(key).and_then(|p| p.parameter_choice), Some(ParameterChoice::BoolParam(true)))
}

/// ModelInfer's answer in the REST form: JSON `data`, or raw bytes after the JSON header for
/// the outputs asked for in binary.
fn infer_reply(r: ks::ModelInferResponse, wants: &Wants, request_id: &str) -> Reply {
    let mut tail = BytesMut::new();
    let mut outputs = Vec::with_capacity(r.outputs.len());
    for (meta, raw) in r.outputs.into_iter().zip(r.raw_output_contents) {
        let mut o = json!({ "name": meta.name, "datatype": meta.datatype, "shape": meta.shape });
        if wants.binary(&meta.name) {
            o["parameters"] = json!({ "binary_data_size": raw.len() });
            tail.extend_from_slice(&raw);
        } else {
            o["data"] = decode(&meta.datatype, &raw);
        }
        outputs.push(o);
    }
    let mut head = json!({ "model_name": r.model_name, "model_version": r.model_version, "outputs": outputs });
    if !r.id.is_empty() {
        head["id"] = Value::String(r.id);
    }
    if !r.parameters.is_empty() {
        head["parameters"] = Value::Object(r.parameters.iter().map(|(k, p)| (k.clone(), param_value(p))).collect());
    }
    if tail.is_empty() {
        return with_request_id(json_body(StatusCode::OK, &head), request_id);
    }
    let head = serde_json::to_vec(&head).unwrap_or_default();
    let mut body = BytesMut::with_capacity(head.len() + tail.len());
    body.extend_from_slice(&head);
    body.extend_from_slice(&tail);
    let mut reply = http::Response::new(tonic::body::Body::new(http_body_util::Full::new(body.freeze())));
    let h = reply.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/octet-stream"));
    h.insert("inference-header-content-length", HeaderValue::from(head.len()));
    with_request_id(reply, request_id)
}

fn decode(datatype: &str, raw: &[u8]) -> Value {
    macro_rules! nums {
        ($t:ty, $n:expr) => {
            raw.chunks_exact($n).map(|c| json!(<$t>::from_le_bytes(c.try_into().unwrap_or([0; $n])))).collect()
        };
    }
    Value::Array(match datatype {
        "BOOL" => raw.iter().map(|b| json!(*b != 0)).collect(),
        "INT8" => raw.iter().map(|b| json!(*b as i8)).collect(),
        "UINT8" => raw.iter().map(|b| json!(*b)).collect(),
        "INT16" => nums!(i16, 2),
        "UINT16" => nums!(u16, 2),
        "INT32" => nums!(i32, 4),
        "UINT32" => nums!(u32, 4),
        "INT64" => nums!(i64, 8),
        "UINT64" => nums!(u64, 8),
        "FP32" => nums!(f32, 4),
        "FP64" => nums!(f64, 8),
        "BYTES" => split_bytes(raw).into_iter().map(|s| json!(String::from_utf8_lossy(s))).collect(),
        _ => Vec::new(),
    })
}

fn split_bytes(mut raw: &[u8]) -> Vec<&[u8]> {
    let mut out = Vec::new();
    while let Some((len, rest)) = raw.split_first_chunk::<4>() {
        let n = (u32::from_le_bytes(*len) as usize).min(rest.len());
        out.push(&rest[..n]);
        raw = &rest[n..];
    }
    out
}

fn param_value(p: &ks::InferParameter) -> Value {
    match &p.parameter_choice {
        Some(ParameterChoice::BoolParam(b)) => json!(b),
        Some(ParameterChoice::Int64Param(n)) => json!(n),
        Some(ParameterChoice::Uint64Param(n)) => json!(n),
        Some(ParameterChoice::DoubleParam(n)) => json!(n),
        Some(ParameterChoice::StringParam(s)) => json!(s),
        None => Value::Null,
    }
}

/// Model metadata as Triton writes it: shapes as numbers.
fn metadata(m: ks::ModelMetadataResponse) -> Value {
    let tensors = |ts: Vec<ks::model_metadata_response::TensorMetadata>| -> Vec<Value> {
        ts.into_iter().map(|t| json!({ "name": t.name, "datatype": t.datatype, "shape": t.shape })).collect()
    };
    json!({
        "name": m.name,
        "versions": m.versions,
        "platform": m.platform,
        "inputs": tensors(m.inputs),
        "outputs": tensors(m.outputs),
    })
}

fn to_value<T: serde::Serialize>(v: &T) -> Value {
    serde_json::to_value(v).unwrap_or(Value::Null)
}

/// Statistics as Triton writes them: counts and nanoseconds as JSON numbers (proto3 JSON
/// writes 64-bit integers as strings).
fn numbers(v: Value) -> Value {
    match v {
        Value::Object(map) => Value::Object(
            map.into_iter()
                .map(|(k, v)| {
                    let v = match v {
                        Value::String(s) if !matches!(k.as_str(), "name" | "version") => {
                            s.parse::<u64>().map_or(Value::String(s), |n| json!(n))
                        }
                        other => numbers(other),
                    };
                    (k, v)
                })
                .collect(),
        ),
        Value::Array(items) => Value::Array(items.into_iter().map(numbers).collect()),
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn target() -> Target {
        Target { model: "m".into(), version: String::new() }
    }

    #[test]
    fn json_data_becomes_little_endian_tensors_checked_against_shape_and_type() {
        let body = br#"{"inputs":[{"name":"x","shape":[2,2],"datatype":"FP32","data":[[1,2],[3.5,-4]]},
            {"name":"t","shape":[1],"datatype":"BYTES","data":["hi"]}],"parameters":{"timeout":5000}}"#;
        let (msg, wants) = infer_request(body, None, target()).unwrap();
        assert_eq!(msg.raw_input_contents[0].len(), 16);
        assert_eq!(&msg.raw_input_contents[0][8..12], &3.5f32.to_le_bytes());
        assert_eq!(&msg.raw_input_contents[1][..], b"\x02\x00\x00\x00hi");
        assert!(matches!(msg.parameters["timeout"].parameter_choice, Some(ParameterChoice::Int64Param(5000))));
        assert!(!wants.binary("x"));
        let bad = |b: &str| infer_request(b.as_bytes(), None, target()).unwrap_err().to_string();
        assert!(
            bad(r#"{"inputs":[{"name":"x","shape":[3],"datatype":"FP32","data":[1,2]}]}"#).contains("needs 3 elements")
        );
        assert!(
            bad(r#"{"inputs":[{"name":"x","shape":[1],"datatype":"INT8","data":[300]}]}"#)
                .contains("out of range for INT8")
        );
        assert!(
            bad(r#"{"inputs":[{"name":"x","shape":[1],"datatype":"FP32","data":[1e39]}]}"#)
                .contains("out of range for FP32")
        );
        assert!(
            bad(r#"{"inputs":[{"name":"x","shape":[1],"datatype":"FLOAT","data":[1]}]}"#)
                .contains("not a KServe datatype")
        );
        assert!(
            bad(r#"{"inputs":[{"name":"x","shape":[1],"datatype":"INT32","data":[1.5]}]}"#).contains("not an integer")
        );
        assert!(bad(r#"{"inputs":[{"name":"x","shape":[-1],"datatype":"INT32","data":[1]}]}"#).contains("negative"));
        assert!(bad(r#"{"inputz":[]}"#).contains("wrong shape"));
        assert!(bad(r#"{"inputs":[}"#).contains("not valid JSON"));
    }

    #[test]
    fn binary_tensors_follow_the_json_header_in_both_directions() {
        let head = br#"{"inputs":[{"name":"x","shape":[2],"datatype":"INT32","parameters":{"binary_data_size":8}}],"outputs":[{"name":"y","parameters":{"binary_data":true}}]}"#;
        let mut body = head.to_vec();
        body.extend_from_slice(&[1, 0, 0, 0, 2, 0, 0, 0]);
        let (msg, wants) = infer_request(&body, Some(head.len()), target()).unwrap();
        assert_eq!(&msg.raw_input_contents[0][..], &[1, 0, 0, 0, 2, 0, 0, 0]);
        assert!(wants.binary("y"));
        body.push(9);
        let e = infer_request(&body, Some(head.len()), target()).unwrap_err();
        assert!(e.to_string().contains("1 bytes follow"), "{e}");
        let e = infer_request(&body, Some(body.len() + 1), target()).unwrap_err();
        assert!(e.to_string().contains("has only"), "{e}");
    }

    #[test]
    fn outputs_decode_by_datatype() {
        assert_eq!(decode("FP32", &1.5f32.to_le_bytes()), json!([1.5]));
        assert_eq!(decode("INT64", &(-3i64).to_le_bytes()), json!([-3]));
        assert_eq!(decode("BYTES", b"\x01\x00\x00\x00a\x02\x00\x00\x00bc"), json!(["a", "bc"]));
        assert_eq!(
            numbers(json!({"name": "1", "count": "42", "x": [{"ns": "7"}]})),
            json!({"name": "1", "count": 42, "x": [{"ns": 7}]})
        );
    }
}

//! The HTTP/JSON door on the gRPC port, end to end: torchwire JSON (`/v1`) on the real
//! `tiny_risk` and `tiny_bert` fixtures (predict by rows and by tensors equal to gRPC Predict,
//! Sentiment equal to gRPC, models, stats, stats:reset, load / unload), API keys, deadlines from
//! `grpc-timeout` and `?timeout=` answered 504 with gRPC's DEADLINE_EXCEEDED message, 429 with
//! `Retry-After`, request ids, h2c with prior knowledge, and metrics and Stats counting HTTP
//! calls as `rpc="http/<Method>"`.
//!
//! Requests are raw HTTP/1.1 bytes written on a `tokio::net::TcpStream` and answers are parsed
//! here (status line, headers, a content-length or chunked body), so every byte is the test's;
//! `http_abuse.rs` uses the same helpers for the bad-input table and transport abuse.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tonic::Code;
use torchwire::admission::AdmissionConfig;
use torchwire::auth::{Keys, Secret};
use torchwire::config::Config;
use torchwire::model::fake::FakeFactory;
use torchwire::proto::SentimentRequest;

use crate::common::{TestServer, fixtures_dir, frame, grpc_answer, grpc_request, h2_connect, tensor_predict};

/// How long any one answer may take before the test calls the server stuck ("eventually",
/// not a timing assertion: a loaded CI machine gets all of it).
pub const PATIENCE: Duration = Duration::from_secs(30);

// ---- a raw HTTP/1.1 client ----

/// One HTTP answer as it came off the wire.
pub struct Answer {
    pub status: u16,
    /// Header names lower-cased, in order.
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl std::fmt::Debug for Answer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "HTTP {} {:?} {}", self.status, self.headers, crate::http::clip(&self.text(), 600))
    }
}

impl Answer {
    /// The first value of header `name`.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// The body as JSON (failing the test when it is not).
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| panic!("the body is not JSON ({e}): {self:?}"))
    }

    /// The message of an `{"error": "..."}` answer, checking it is exactly that, as JSON.
    pub fn error(&self) -> String {
        assert_eq!(self.header("content-type"), Some("application/json"), "{self:?}");
        let v = self.json();
        let fields = v.as_object().unwrap_or_else(|| panic!("not an object: {self:?}"));
        assert_eq!(fields.len(), 1, "an error body holds only `error`: {self:?}");
        fields["error"].as_str().unwrap_or_else(|| panic!("`error` is not a string: {self:?}")).to_owned()
    }

    /// Asserts the status and that the `{"error"}` message contains each of `parts`.
    pub fn assert_error(&self, status: u16, parts: &[&str]) -> String {
        assert_eq!(self.status, status, "{self:?}");
        let message = self.error();
        for part in parts {
            assert!(message.contains(part), "expected {part:?} in {message:?}");
        }
        message
    }
}

pub fn clip(s: &str, n: usize) -> &str {
    match s.char_indices().nth(n) {
        Some((i, _)) => &s[..i],
        None => s,
    }
}

/// The bytes of one request; adds `content-length` unless a `transfer-encoding` is given.
pub fn request(method: &str, path: &str, headers: &[(&str, &str)], body: &[u8]) -> Vec<u8> {
    let mut head = format!("{method} {path} HTTP/1.1\r\nhost: localhost\r\n");
    for (k, v) in headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    let chunked = headers.iter().any(|(k, _)| k.eq_ignore_ascii_case("transfer-encoding"));
    if !chunked && (!body.is_empty() || method == "POST") {
        head.push_str(&format!("content-length: {}\r\n", body.len()));
    }
    head.push_str("\r\n");
    let mut out = head.into_bytes();
    out.extend_from_slice(body);
    out
}

/// One client connection.
pub struct Conn(BufReader<TcpStream>);

impl Conn {
    pub async fn open(addr: SocketAddr) -> Conn {
        Conn(BufReader::new(TcpStream::connect(addr).await.expect("connect to the gRPC port")))
    }

    pub async fn send(&mut self, bytes: &[u8]) {
        self.0.get_mut().write_all(bytes).await.expect("send");
    }

    /// The next answer; `None` when the server closed the connection (or reset it) first.
    pub async fn answer(&mut self) -> Option<Answer> {
        match tokio::time::timeout(PATIENCE, read_answer(&mut self.0)).await {
            Ok(Ok(answer)) => answer,
            Ok(Err(_reset)) => None,
            Err(_) => panic!("no answer within {PATIENCE:?}"),
        }
    }

    /// Reads until the server closes the connection, within `limit`; returns what it sent.
    /// Panics when the connection is still open after `limit`.
    pub async fn until_closed(&mut self, limit: Duration) -> Vec<u8> {
        let mut rest = Vec::new();
        match tokio::time::timeout(limit, self.0.read_to_end(&mut rest)).await {
            Ok(_eof_or_reset) => rest,
            Err(_) => panic!("the connection was still open after {limit:?}; it sent {rest:?}"),
        }
    }
}

async fn read_answer(r: &mut BufReader<TcpStream>) -> std::io::Result<Option<Answer>> {
    let mut line = String::new();
    if r.read_line(&mut line).await? == 0 {
        return Ok(None);
    }
    let status = line.split_whitespace().nth(1).and_then(|s| s.parse().ok());
    let status = status.unwrap_or_else(|| panic!("not a status line: {line:?}"));
    let mut headers = Vec::new();
    loop {
        line.clear();
        if r.read_line(&mut line).await? == 0 || line.trim_end().is_empty() {
            break;
        }
        let (k, v) = line.trim_end().split_once(':').unwrap_or_else(|| panic!("not a header line: {line:?}"));
        headers.push((k.trim().to_ascii_lowercase(), v.trim().to_owned()));
    }
    let mut answer = Answer { status, headers, body: Vec::new() };
    if answer.header("transfer-encoding").is_some_and(|v| v.eq_ignore_ascii_case("chunked")) {
        answer.body = read_chunked(r).await?;
    } else if let Some(n) = answer.header("content-length") {
        let mut body = vec![0; n.parse().expect("content-length is a number")];
        r.read_exact(&mut body).await?;
        answer.body = body;
    } else {
        r.read_to_end(&mut answer.body).await?;
    }
    Ok(Some(answer))
}

async fn read_chunked(r: &mut BufReader<TcpStream>) -> std::io::Result<Vec<u8>> {
    let mut body = Vec::new();
    let mut line = String::new();
    loop {
        line.clear();
        r.read_line(&mut line).await?;
        let size = line.trim().split(';').next().unwrap_or("");
        let size = usize::from_str_radix(size, 16).unwrap_or_else(|_| panic!("not a chunk size: {line:?}"));
        if size == 0 {
            // Trailers, up to the empty line.
            while {
                line.clear();
                r.read_line(&mut line).await? > 0 && !line.trim().is_empty()
            } {}
            return Ok(body);
        }
        let start = body.len();
        body.resize(start + size, 0);
        r.read_exact(&mut body[start..]).await?;
        let mut crlf = [0; 2];
        r.read_exact(&mut crlf).await?;
    }
}

/// One request on a new connection, and its answer.
pub async fn call(addr: SocketAddr, method: &str, path: &str, headers: &[(&str, &str)], body: &[u8]) -> Answer {
    let mut conn = Conn::open(addr).await;
    conn.send(&request(method, path, headers, body)).await;
    conn.answer().await.unwrap_or_else(|| panic!("{method} {path}: the connection closed without an answer"))
}

pub async fn get(addr: SocketAddr, path: &str) -> Answer {
    call(addr, "GET", path, &[], b"").await
}

pub async fn post_json(addr: SocketAddr, path: &str, body: &Value) -> Answer {
    call(addr, "POST", path, &[("content-type", "application/json")], body.to_string().as_bytes()).await
}

/// A `/v1` predict body: `rows` as `tiny_risk`'s feature tensor (float32 `[n, 4]`).
pub fn tensor_body(rows: &[[f32; 4]]) -> Value {
    let flat: Vec<f32> = rows.iter().flatten().copied().collect();
    json!({ "inputs": [{ "name": "features", "dtype": "FLOAT32", "shape": [rows.len(), 4], "floatData": flat }] })
}

/// A good request answers 200: the server kept serving after whatever came before.
pub async fn assert_serving(addr: SocketAddr) {
    let a = post_json(addr, "/v1/models/tiny_risk:predict", &tensor_body(&[[50.0, 27.0, 110.0, 125.0]])).await;
    assert_eq!(a.status, 200, "a good request after the bad one: {a:?}");
    assert_eq!(a.json()["model"], "tiny_risk", "{a:?}");
}

// ---- the fixture's known answers ----

struct Expected {
    features: Vec<String>,
    labels: Vec<String>,
    rows: Vec<Vec<f64>>,
    logits: Vec<Vec<f64>>,
}

fn expected() -> Expected {
    let text = std::fs::read_to_string(fixtures_dir().join("tiny_risk/expected.json")).unwrap();
    let v: Value = serde_json::from_str(&text).unwrap();
    let strings = |k: &str| v[k].as_array().unwrap().iter().map(|s| s.as_str().unwrap().to_owned()).collect();
    let matrix = |k: &str| -> Vec<Vec<f64>> {
        v[k].as_array()
            .unwrap()
            .iter()
            .map(|r| r.as_array().unwrap().iter().map(|x| x.as_f64().unwrap()).collect())
            .collect()
    };
    Expected {
        features: strings("features"),
        labels: strings("labels"),
        rows: matrix("rows"),
        logits: matrix("logits"),
    }
}

fn floats(v: &Value) -> Vec<f64> {
    v.as_array().unwrap_or_else(|| panic!("not an array: {v}")).iter().map(|x| x.as_f64().unwrap()).collect()
}

fn assert_close(got: &[f64], want: &[f64], tol: f64, what: &str) {
    assert_eq!(got.len(), want.len(), "{what}: {got:?} vs {want:?}");
    for (g, w) in got.iter().zip(want) {
        assert!((g - w).abs() <= tol, "{what}: {got:?} vs {want:?}");
    }
}

// ---- torchwire JSON on the real models ----

#[tokio::test]
async fn predict_by_rows_and_by_tensors_equals_grpc_predict() {
    let server = TestServer::start(Config::for_tests(fixtures_dir())).await;
    let e = expected();
    let rows: Vec<Value> = e
        .rows
        .iter()
        .map(|r| json!({ "features": e.features.iter().zip(r).map(|(f, x)| (f.clone(), json!(x))).collect::<serde_json::Map<_, _>>() }))
        .collect();
    let by_rows = post_json(server.addr, "/v1/models/tiny_risk:predict", &json!({ "rows": rows })).await;
    assert_eq!(by_rows.status, 200, "{by_rows:?}");
    let flat: Vec<f64> = e.rows.iter().flatten().copied().collect();
    let tensors = json!({ "inputs": [{ "name": "features", "dtype": "FLOAT32", "shape": [3, 4], "floatData": flat }] });
    let by_tensors = post_json(server.addr, "/v1/models/tiny_risk:predict", &tensors).await;
    assert_eq!(by_tensors.status, 200, "{by_tensors:?}");

    let f32_rows: Vec<Vec<f32>> = e.rows.iter().map(|r| r.iter().map(|&x| x as f32).collect()).collect();
    let grpc = server.inference().predict(tensor_predict("tiny_risk", &f32_rows)).await.unwrap().into_inner();
    let grpc_logits: Vec<f64> = grpc.outputs[0].float_data.iter().map(|&x| f64::from(x)).collect();
    let want: Vec<f64> = e.logits.iter().flatten().copied().collect();
    for answer in [&by_rows, &by_tensors] {
        assert_eq!(answer.header("content-type"), Some("application/json"));
        let v = answer.json();
        assert_eq!(
            (v["model"].as_str(), v["version"].as_str(), v["device"].as_str()),
            (Some("tiny_risk"), Some("1"), Some("cpu"))
        );
        // proto3 JSON: 64-bit integers as strings.
        assert_eq!(v["outputs"][0]["shape"], json!(["3", "3"]), "{v}");
        assert_close(&floats(&v["outputs"][0]["floatData"]), &grpc_logits, 1e-6, "HTTP vs gRPC logits");
        assert_close(&floats(&v["outputs"][0]["floatData"]), &want, 1e-4, "HTTP vs expected.json logits");
        let predictions = v["predictions"].as_array().unwrap();
        assert_eq!(predictions.len(), grpc.predictions.len());
        for (p, g) in predictions.iter().zip(&grpc.predictions) {
            assert_eq!(p["label"], g.label.as_str(), "{v}");
            assert_eq!(p["labelIndex"], g.label_index, "{v}");
            for label in &e.labels {
                let got = p["probabilities"][label].as_f64().unwrap();
                assert!((got - f64::from(g.probabilities[label])).abs() < 1e-6, "{label}: {got} vs {g:?}");
            }
        }
    }
}

#[tokio::test]
async fn sentiment_on_tiny_bert_equals_grpc_sentiment() {
    let server = TestServer::start(Config::for_tests(fixtures_dir())).await;
    let texts = ["I loved every minute of it.", "Terrible, slow and rude.", "café ☕ 東京"];
    let a = post_json(server.addr, "/v1/sentiment", &json!({ "model": "tiny_bert", "texts": texts })).await;
    assert_eq!(a.status, 200, "{a:?}");
    let v = a.json();
    let req =
        SentimentRequest { model: "tiny_bert".into(), texts: texts.map(String::from).to_vec(), ..Default::default() };
    let grpc = server.inference().sentiment(req).await.unwrap().into_inner();
    assert_eq!(v["model"], "tiny_bert");
    let results = v["results"].as_array().unwrap();
    assert_eq!(results.len(), 3, "{v}");
    for (r, g) in results.iter().zip(&grpc.results) {
        assert_eq!(r["label"], g.label.as_str(), "{v}");
        assert_eq!(r["tokens"], g.tokens, "{v}");
        for label in ["negative", "positive"] {
            let got = r["probabilities"][label].as_f64().unwrap();
            assert!((got - f64::from(g.probabilities[label])).abs() < 1e-6, "{label}: {got} vs {g:?}");
        }
    }
    // One `text` works as well as `texts`, and snake_case names are read too.
    let one =
        post_json(server.addr, "/v1/sentiment", &json!({ "model": "tiny_bert", "text": texts[0], "max_length": 64 }))
            .await;
    assert_eq!(one.status, 200, "{one:?}");
    assert_eq!(one.json()["results"][0]["label"], results[0]["label"]);
}

#[tokio::test]
async fn models_get_load_unload_and_stats_with_reset() {
    let server = TestServer::start(Config::for_tests(fixtures_dir())).await;
    let addr = server.addr;
    let list = get(addr, "/v1/models").await;
    assert_eq!(list.status, 200, "{list:?}");
    let mut names: Vec<String> =
        list.json()["models"].as_array().unwrap().iter().map(|m| m["name"].as_str().unwrap().to_owned()).collect();
    names.sort();
    assert_eq!(names, ["broken", "tiny_bert", "tiny_risk"]);
    let one = get(addr, "/v1/models/tiny_risk").await.json();
    assert_eq!(one["name"], "tiny_risk");
    assert_eq!(one["labels"], json!(["low", "medium", "high"]));
    assert_eq!(one["inputs"][0]["features"][1], json!({ "name": "bmi", "unit": "kg/m2" }));
    get(addr, "/v1/models/no_such_model").await.assert_error(404, &["model `no_such_model` not found", "tiny_risk"]);

    let state = |v: &Value| v["devices"][0]["state"].as_str().unwrap().to_owned();
    let load = call(addr, "POST", "/v1/models/tiny_risk:load", &[], b"").await;
    assert_eq!(load.status, 200, "an empty body is the message's defaults: {load:?}");
    assert_eq!(state(&get(addr, "/v1/models/tiny_risk").await.json()), "READY");
    let unload = post_json(addr, "/v1/models/tiny_risk:unload", &json!({})).await;
    assert_eq!(unload.status, 200, "{unload:?}");
    assert_eq!(state(&get(addr, "/v1/models/tiny_risk").await.json()), "UNLOADED");

    // Three predicts (the first loads the model again), each counted in Stats.
    for _ in 0..3 {
        assert_serving(addr).await;
    }
    let stats = get(addr, "/v1/stats?model=tiny_risk").await;
    assert_eq!(stats.status, 200, "{stats:?}");
    let v = stats.json();
    let models = v["models"].as_array().unwrap();
    assert!(models.iter().all(|m| m["model"] == "tiny_risk"), "?model= filters: {v}");
    assert_eq!(models[0]["requests"], "3", "{v}");
    assert!(v["requestsByStatus"]["OK"].as_str().unwrap().parse::<u64>().unwrap() >= 3, "{v}");
    let reset = post_json(addr, "/v1/stats:reset", &json!({})).await;
    assert_eq!(reset.status, 200, "{reset:?}");
    let after = get(addr, "/v1/stats?model=tiny_risk").await.json();
    assert_eq!(after["models"][0]["requests"], "0", "reset: {after}");
    assert!(after["totalRequests"].as_str().unwrap().parse::<u64>().unwrap() <= 1, "{after}");
}

#[tokio::test]
async fn http_calls_are_counted_in_metrics_and_stats_as_http_methods() {
    let server = TestServer::start(Config::for_tests(fixtures_dir())).await;
    for _ in 0..2 {
        assert_serving(server.addr).await;
    }
    let bad = post_json(server.addr, "/v1/models/tiny_risk:predict", &json!({ "rows": "nope" })).await;
    assert_eq!(bad.status, 400, "{bad:?}");
    let kserve =
        json!({ "inputs": [{ "name": "features", "shape": [1, 4], "datatype": "FP32", "data": [1, 2, 3, 4] }] });
    assert_eq!(post_json(server.addr, "/v2/models/tiny_risk/infer", &kserve).await.status, 200);
    let ok = r#"torchwire_requests_total{code="OK",model="tiny_risk",rpc="http/Predict"}"#;
    assert_eq!(server.metric(ok).await, Some(2.0));
    let invalid = r#"torchwire_requests_total{code="INVALID_ARGUMENT",model="",rpc="http/Predict"}"#;
    assert_eq!(server.metric(invalid).await, Some(1.0), "a body refused before the service is counted too");
    let infer = r#"torchwire_requests_total{code="OK",model="tiny_risk",rpc="http/ModelInfer"}"#;
    assert_eq!(server.metric(infer).await, Some(1.0));
    let grpc = r#"torchwire_requests_total{code="OK",model="tiny_risk",rpc="Predict"}"#;
    assert_eq!(server.metric(grpc).await, None, "HTTP calls are not counted as gRPC ones");
    let v = get(server.addr, "/v1/stats?model=tiny_risk").await.json();
    assert_eq!(v["models"][0]["requests"], "3", "{v}");
    assert_eq!(v["requestsByStatus"]["INVALID_ARGUMENT"], "1", "{v}");
}

// ---- keys, deadlines, admission, request ids, h2c ----

const API_KEY: &str = "api-key-0123456789abcdef";
const ADMIN_KEY: &str = "admin-key-0123456789abcdef";

#[tokio::test]
async fn api_keys_guard_http_endpoints_as_they_guard_the_grpc_methods() {
    let mut config = Config::for_tests(fixtures_dir());
    config.keys = Keys { api: vec![Secret::new(API_KEY)], admin: vec![Secret::new(ADMIN_KEY)] };
    let server = TestServer::start(config).await;
    let addr = server.addr;
    let body = tensor_body(&[[50.0, 27.0, 110.0, 125.0]]).to_string();
    let (api, admin) = (format!("Bearer {API_KEY}"), format!("Bearer {ADMIN_KEY}"));
    let json_ct = ("content-type", "application/json");
    let no_key = call(addr, "POST", "/v1/models/tiny_risk:predict", &[json_ct], body.as_bytes()).await;
    no_key.assert_error(401, &["authorization: Bearer"]);
    let wrong = [json_ct, ("authorization", "Bearer wrong-key-0123456789abcdef")];
    call(addr, "POST", "/v1/models/tiny_risk:predict", &wrong, body.as_bytes()).await.assert_error(401, &["not valid"]);
    let with_api = [json_ct, ("authorization", api.as_str())];
    let ok = call(addr, "POST", "/v1/models/tiny_risk:predict", &with_api, body.as_bytes()).await;
    assert_eq!(ok.status, 200, "the API key opens predict: {ok:?}");
    let kserve =
        json!({ "inputs": [{ "name": "features", "shape": [1, 4], "datatype": "FP32", "data": [1, 2, 3, 4] }] });
    let infer = call(addr, "POST", "/v2/models/tiny_risk/infer", &with_api, kserve.to_string().as_bytes()).await;
    assert_eq!(infer.status, 200, "and KServe infer: {infer:?}");

    // Reading the model list and a model's details is open to the API key (the status page
    // needs it), though gRPC's Admin.ListModels needs the admin key; without a key, 401.
    for path in ["/v1/models", "/v1/models/tiny_risk"] {
        let read = call(addr, "GET", path, &[("authorization", api.as_str())], b"").await;
        assert_eq!(read.status, 200, "{path} with the API key: {read:?}");
        call(addr, "GET", path, &[], b"").await.assert_error(401, &["authorization: Bearer"]);
    }
    // Administration: the API key is valid but not enough.
    call(addr, "POST", "/v1/models/tiny_risk:load", &with_api, b"").await.assert_error(403, &["admin key"]);
    call(addr, "POST", "/v1/stats:reset", &with_api, b"").await.assert_error(403, &["admin key"]);
    call(addr, "POST", "/v2/repository/index", &with_api, b"").await.assert_error(403, &["admin key"]);
    call(addr, "POST", "/v1/stats:reset", &[json_ct], b"").await.assert_error(401, &["authorization: Bearer"]);
    let with_admin = [json_ct, ("authorization", admin.as_str())];
    let reset = call(addr, "POST", "/v1/stats:reset", &with_admin, b"").await;
    assert_eq!(reset.status, 200, "the admin key resets stats: {reset:?}");

    // Open without a key: the status page and liveness.
    let page = get(addr, "/").await;
    assert_eq!(page.status, 200, "{page:?}");
    assert!(page.header("content-type").unwrap().starts_with("text/html"), "{page:?}");
    assert!(page.text().starts_with("<!doctype html>"), "{page:?}");
    let live = get(addr, "/v2/health/live").await;
    assert_eq!((live.status, live.json()), (200, json!({ "live": true })));
}

/// Every deadline call starts on an idle worker (a good call ran to the end just before), so
/// the boundary, not the queue, answers it: the message is the same each time.
#[tokio::test]
async fn deadlines_from_grpc_timeout_and_the_timeout_parameter_answer_504_with_grpcs_message() {
    let factory = FakeFactory { forward_delay: Duration::from_millis(300), ..FakeFactory::default() };
    let server = TestServer::start_with(Config::for_tests(fixtures_dir()), Arc::new(factory)).await;
    let addr = server.addr;
    assert_serving(addr).await;
    // gRPC's answer, by raw HTTP/2: tonic's client would race the server with its own timer.
    let (send, _conn) = h2_connect(addr).await;
    let mut send = send.ready().await.unwrap();
    let mut req = grpc_request(addr, "/torchwire.v1.Inference/Predict");
    req.headers_mut().insert("grpc-timeout", "50m".parse().unwrap());
    let (resp, mut stream) = send.send_request(req, false).unwrap();
    stream.send_data(frame(&tensor_predict("tiny_risk", &[vec![1.0, 2.0, 3.0, 4.0]])), true).unwrap();
    let (code, grpc_message) = tokio::time::timeout(PATIENCE, grpc_answer(resp)).await.expect("a gRPC answer");
    assert_eq!(code, Code::DeadlineExceeded as i32, "50 ms against a 300 ms model: {grpc_message}");
    assert!(grpc_message.contains("deadline exceeded"), "{grpc_message}");

    let body = tensor_body(&[[1.0, 2.0, 3.0, 4.0]]).to_string();
    let kserve =
        json!({ "inputs": [{ "name": "features", "shape": [1, 4], "datatype": "FP32", "data": [1, 2, 3, 4] }] });
    let json_ct = ("content-type", "application/json");
    let cases = [
        ("/v1/models/tiny_risk:predict", vec![json_ct, ("grpc-timeout", "50m")], body.clone()),
        ("/v1/models/tiny_risk:predict?timeout=50ms", vec![json_ct], body.clone()),
        ("/v2/models/tiny_risk/infer?timeout=0.05", vec![], kserve.to_string()),
        ("/v2/models/tiny_risk/infer", vec![("grpc-timeout", "50000u")], kserve.to_string()),
    ];
    for (path, headers, body) in cases {
        assert_serving(addr).await;
        let a = call(addr, "POST", path, &headers, body.as_bytes()).await;
        let message = a.assert_error(504, &[]);
        assert_eq!(message, grpc_message, "{path} {headers:?}: the gRPC message");
    }
    // A generous deadline is met; a time-out that is not one is a 400 naming the syntax.
    let long = call(addr, "POST", "/v1/models/tiny_risk:predict?timeout=20s", &[json_ct], body.as_bytes()).await;
    assert_eq!(long.status, 200, "{long:?}");
    let bad = call(addr, "POST", "/v1/models/tiny_risk:predict?timeout=soon", &[json_ct], body.as_bytes()).await;
    bad.assert_error(400, &["`soon` is not a time-out", "250ms"]);
    let bad =
        call(addr, "POST", "/v1/models/tiny_risk:predict", &[json_ct, ("grpc-timeout", "x")], body.as_bytes()).await;
    let http_message = bad.assert_error(400, &["grpc-timeout", "500m"]);
    // The same mistake on gRPC: INVALID_ARGUMENT with the same message, not the default deadline.
    let mut send = send.ready().await.unwrap();
    let mut req = grpc_request(addr, "/torchwire.v1.Inference/Predict");
    req.headers_mut().insert("grpc-timeout", "x".parse().unwrap());
    let (resp, mut stream) = send.send_request(req, false).unwrap();
    stream.send_data(frame(&tensor_predict("tiny_risk", &[vec![1.0, 2.0, 3.0, 4.0]])), true).unwrap();
    let (code, message) = tokio::time::timeout(PATIENCE, grpc_answer(resp)).await.expect("a gRPC answer");
    assert_eq!((code, message), (Code::InvalidArgument as i32, http_message));
    assert_serving(addr).await;
}

#[tokio::test]
async fn the_rate_limit_answers_429_with_retry_after() {
    // One token every ten seconds: the third call is refused however slow the machine is.
    let config = Config {
        admission: AdmissionConfig { max_inflight: 100, rate_limit_rps: 0.1, rate_limit_burst: 2.0 },
        ..Config::for_tests(fixtures_dir())
    };
    let server = TestServer::start_with(config, Arc::new(FakeFactory::default())).await;
    let addr = server.addr;
    assert_serving(addr).await;
    assert_serving(addr).await;
    let kserve =
        json!({ "inputs": [{ "name": "features", "shape": [1, 4], "datatype": "FP32", "data": [1, 2, 3, 4] }] });
    for refused in [
        post_json(addr, "/v1/models/tiny_risk:predict", &tensor_body(&[[1.0, 2.0, 3.0, 4.0]])).await,
        post_json(addr, "/v2/models/tiny_risk/infer", &kserve).await,
    ] {
        let message = refused.assert_error(429, &["rate limit exceeded; retry after"]);
        let ms: u64 = message.split_whitespace().rev().nth(1).and_then(|n| n.parse().ok()).expect("ms in the message");
        let retry: u64 = refused.header("retry-after").expect("Retry-After").parse().expect("whole seconds");
        assert_eq!(retry, ms.div_ceil(1000).max(1), "{refused:?}");
        assert!((1..=10).contains(&retry), "{refused:?}");
    }
    // Not an inference call: still answered.
    let md = get(addr, "/v2/models/tiny_risk").await;
    assert_eq!((md.status, md.json()["name"].as_str()), (200, Some("tiny_risk")), "{md:?}");
}

#[tokio::test]
async fn request_ids_are_echoed_or_made() {
    let server = TestServer::start(Config::for_tests(fixtures_dir())).await;
    let addr = server.addr;
    let body = tensor_body(&[[50.0, 27.0, 110.0, 125.0]]).to_string();
    let json_ct = ("content-type", "application/json");
    for (method, path, ct, status) in [
        ("POST", "/v1/models/tiny_risk:predict", json_ct, 200),
        ("POST", "/v1/models/tiny_risk:predict", ("content-type", "text/plain"), 415),
        ("POST", "/v1/models/nope:predict", json_ct, 404),
        ("GET", "/no/such/path", json_ct, 404),
        ("GET", "/v2/health/live", json_ct, 200),
    ] {
        let a = call(addr, method, path, &[ct, ("x-request-id", "req-http-42")], body.as_bytes()).await;
        assert_eq!(a.status, status, "{path}: {a:?}");
        assert_eq!(a.header("x-request-id"), Some("req-http-42"), "{path}: {a:?}");
    }
    let made = get(addr, "/v2/health/live").await;
    let other = get(addr, "/v2/health/live").await;
    let (a, b) = (made.header("x-request-id").unwrap(), other.header("x-request-id").unwrap());
    assert!(a.starts_with("tw-") && b.starts_with("tw-") && a != b, "{made:?} {other:?}");
    let long = "x".repeat(200);
    let replaced = call(addr, "GET", "/v2/health/live", &[("x-request-id", &long)], b"").await;
    assert!(replaced.header("x-request-id").unwrap().starts_with("tw-"), "over 128 characters: replaced");
}

/// The JSON door over HTTP/2 with prior knowledge (h2c): a request that is not gRPC.
#[tokio::test]
async fn h2c_prior_knowledge_requests_reach_the_json_door() {
    let server = TestServer::start(Config::for_tests(fixtures_dir())).await;
    let (send, _conn) = h2_connect(server.addr).await;
    let mut send = send.ready().await.unwrap();
    let live = http::Request::get(format!("http://{}/v2/health/live", server.addr)).body(()).unwrap();
    let (resp, _) = send.send_request(live, true).unwrap();
    let (status, body) = h2_read(resp).await;
    assert_eq!((status, body), (200, json!({ "live": true })));

    let predict = http::Request::post(format!("http://{}/v1/models/tiny_risk:predict", server.addr))
        .header("content-type", "application/json")
        .body(())
        .unwrap();
    let mut send = send.ready().await.unwrap();
    let (resp, mut stream) = send.send_request(predict, false).unwrap();
    stream.send_data(tensor_body(&[[50.0, 27.0, 110.0, 125.0]]).to_string().into(), true).unwrap();
    let (status, body) = h2_read(resp).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["outputs"][0]["shape"], json!(["1", "3"]), "{body}");

    let mut send = send.ready().await.unwrap();
    let missing = http::Request::get(format!("http://{}/v3", server.addr)).body(()).unwrap();
    let (resp, _) = send.send_request(missing, true).unwrap();
    let (status, body) = h2_read(resp).await;
    assert_eq!(status, 404, "{body}");
    assert!(body["error"].as_str().unwrap().contains("/v2 (KServe v2 REST)"), "{body}");
}

async fn h2_read(resp: h2::client::ResponseFuture) -> (u16, Value) {
    let resp = tokio::time::timeout(PATIENCE, resp).await.expect("an answer").unwrap();
    let status = resp.status().as_u16();
    let mut body = resp.into_body();
    let mut bytes = Vec::new();
    while let Some(chunk) = body.data().await {
        let chunk = chunk.unwrap();
        let _ = body.flow_control().release_capacity(chunk.len());
        bytes.extend_from_slice(&chunk);
    }
    (status, serde_json::from_slice(&bytes).unwrap_or_else(|e| panic!("not JSON ({e}): {bytes:?}")))
}

//! The HTTP door against bad input and abusive clients, on the real server and the real
//! `tiny_risk` / `tiny_bert` fixtures: one table of bad requests (each with its exact status,
//! an `{"error"}` body that says what to do, and a good request answered 200 afterwards), a
//! body over `--max-message-bytes` (413), a chunked body that never ends (504), pipelining 200
//! requests in one write, header floods (431) and a slowloris (cut off by the 10 s header
//! time-out). Raw HTTP/1.1 through the helpers in `http.rs`.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::{Duration, Instant};

use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use torchwire::config::Config;

use crate::common::{TestServer, fixtures_dir};
use crate::http::{Conn, assert_serving, call, get, request, tensor_body};

const JSON: Option<&str> = Some("application/json");
const PREDICT: &str = "/v1/models/tiny_risk:predict";
const INFER: &str = "/v2/models/tiny_risk/infer";

/// One bad request: what is sent, and the status, `Allow` header and message parts expected.
struct Bad {
    method: &'static str,
    path: &'static str,
    content_type: Option<&'static str>,
    body: String,
    status: u16,
    allow: Option<&'static str>,
    parts: &'static [&'static str],
}

fn bad(method: &'static str, path: &'static str, content_type: Option<&'static str>, body: &str) -> Bad {
    Bad { method, path, content_type, body: body.to_owned(), status: 400, allow: None, parts: &[] }
}

impl Bad {
    fn is(self, status: u16, parts: &'static [&'static str]) -> Bad {
        Bad { status, parts, ..self }
    }

    fn allow(self, allow: &'static str) -> Bad {
        Bad { allow: Some(allow), ..self }
    }
}

/// A KServe infer body with one input.
fn infer(name: &str, datatype: &str, shape: &str, data: &str) -> String {
    format!(r#"{{"inputs":[{{"name":"{name}","shape":{shape},"datatype":"{datatype}","data":{data}}}]}}"#)
}

fn table() -> Vec<Bad> {
    let f = |shape: &str, data: &str| infer("features", "FP32", shape, data);
    vec![
        bad("POST", PREDICT, JSON, r#"{"rows": ["#).is(400, &["the request body is not valid JSON"]),
        bad("POST", INFER, JSON, r#"{"inputs": [{"name": "features""#).is(400, &["not valid JSON"]),
        bad("POST", "/v1/sentiment", JSON, "texts=hello").is(400, &["not valid JSON"]),
        bad("POST", PREDICT, JSON, r#"{"rows": "nope"}"#).is(400, &["the request body is JSON of the wrong shape"]),
        bad("POST", INFER, JSON, r#"{"inputz": []}"#).is(400, &["JSON of the wrong shape", "inputz"]),
        bad("POST", INFER, JSON, "[1, 2]").is(400, &["JSON of the wrong shape"]),
        bad("POST", INFER, JSON, &f("[1,4]", "[1,2,3]")).is(400, &["shape needs 4 elements; `data` has 3"]),
        bad("POST", INFER, JSON, &f("[2,4]", "[[1,2,3,4]]")).is(400, &["shape needs 8 elements; `data` has 4"]),
        bad("POST", INFER, JSON, &infer("features", "FLOAT", "[1,4]", "[1,2,3,4]"))
            .is(400, &["datatype `FLOAT` is not a KServe datatype", "FP32"]),
        bad("POST", INFER, JSON, &infer("features", "INT8", "[1,1]", "[300]"))
            .is(400, &["300 is out of range for INT8"]),
        bad("POST", INFER, JSON, &f("[1,4]", "[1e39,1,1,1]")).is(400, &["out of range for FP32"]),
        bad("POST", INFER, JSON, &f("[1,4]", r#"[1,"two",3,4]"#)).is(400, &["data[1]", "is not a number"]),
        bad("POST", "/v2/models/tiny_bert/infer", JSON, &infer("text", "BYTES", "[1,1]", "[7]"))
            .is(400, &["is not a string, as BYTES needs"]),
        bad("POST", INFER, JSON, &f("[1,5]", "[1,2,3,4,5]")).is(400, &["got 5 in dimension 1"]),
        bad("POST", PREDICT, JSON, r#"{"model": "tiny_bert", "rows": []}"#)
            .is(400, &["the path names model `tiny_risk` and the body `tiny_bert`"]),
        bad("POST", "/v2/models/nope/infer", JSON, &f("[1,4]", "[1,2,3,4]"))
            .is(404, &["model `nope` not found", "tiny_risk"]),
        bad("POST", "/v1/models/nope:predict", JSON, "{}").is(404, &["model `nope` not found"]),
        bad("GET", "/v3", None, "")
            .is(404, &["no endpoint at /v3", "/v2 (KServe v2 REST)", "/v1 (torchwire JSON)", "/ (status page)"]),
        bad("GET", "/v2/models/tiny_risk/explain", None, "").is(404, &["/v2 (KServe v2 REST)"]),
        bad("GET", INFER, None, "")
            .is(405, &["GET is not allowed on /v2/models/tiny_risk/infer; use POST"])
            .allow("POST"),
        bad("DELETE", "/v1/stats", None, "")
            .is(405, &["DELETE is not allowed on /v1/stats; use GET"])
            .allow("GET, HEAD"),
        bad("POST", "/v1/sentiment", None, r#"{"texts": ["hi"]}"#)
            .is(415, &["the request has no content type; send `content-type: application/json`"]),
        bad("POST", "/v1/sentiment", Some("text/plain"), r#"{"texts": ["hi"]}"#)
            .is(415, &["content type `text/plain` is not read here; send `content-type: application/json`"]),
        bad("POST", PREDICT, Some("application/x-www-form-urlencoded"), r#"{"rows": []}"#)
            .is(415, &["is not read here"]),
        bad("POST", INFER, Some("text/plain"), &f("[1,4]", "[1,2,3,4]"))
            .is(415, &["content type `text/plain` is not read here"]),
    ]
}

#[tokio::test]
async fn bad_requests_get_their_status_and_a_clear_error_and_the_server_keeps_serving() {
    let server = TestServer::start(Config::for_tests(fixtures_dir())).await;
    let addr = server.addr;
    for case in table() {
        let headers: Vec<(&str, &str)> = case.content_type.iter().map(|ct| ("content-type", *ct)).collect();
        let a = call(addr, case.method, case.path, &headers, case.body.as_bytes()).await;
        let what = format!("{} {} {:?} {}", case.method, case.path, case.content_type, case.body);
        assert_eq!(a.status, case.status, "{what}: {a:?}");
        let message = a.error();
        for part in case.parts {
            assert!(message.contains(part), "{what}: expected {part:?} in {message:?}");
        }
        assert_eq!(a.header("allow"), case.allow, "{what}: {a:?}");
        assert!(a.header("x-request-id").is_some(), "{what}: {a:?}");
        assert_serving(addr).await;
    }
    // What /v1 refuses, /v2 reads, as Triton does: no content type, or curl's default for -d.
    let body = infer("features", "FP32", "[1,4]", "[1,2,3,4]");
    for headers in [vec![], vec![("content-type", "application/x-www-form-urlencoded")]] {
        let a = call(addr, "POST", INFER, &headers, body.as_bytes()).await;
        assert_eq!(a.status, 200, "{headers:?}: {a:?}");
        assert_eq!(a.json()["outputs"][0]["shape"], json!([1, 3]), "{a:?}");
    }
}

#[tokio::test]
async fn a_body_over_the_size_limit_is_refused_with_413() {
    let config = Config { max_message_bytes: 4096, ..Config::for_tests(fixtures_dir()) };
    let server = TestServer::start(config).await;
    let addr = server.addr;
    let rows = vec![[50.0, 27.0, 110.0, 125.0]; 200];
    let big = tensor_body(&rows).to_string();
    assert!(big.len() > 4096);
    let json_ct = ("content-type", "application/json");
    let a = call(addr, "POST", PREDICT, &[json_ct], big.as_bytes()).await;
    a.assert_error(413, &["larger than this server's limit of 4096 bytes", "--max-message-bytes"]);
    assert_serving(addr).await;
    // The same without a content-length: a chunked body is counted as it arrives.
    let mut conn = Conn::open(addr).await;
    let mut bytes = request("POST", INFER, &[json_ct, ("transfer-encoding", "chunked")], b"");
    for piece in big.as_bytes().chunks(1000) {
        bytes.extend_from_slice(format!("{:x}\r\n", piece.len()).as_bytes());
        bytes.extend_from_slice(piece);
        bytes.extend_from_slice(b"\r\n");
    }
    bytes.extend_from_slice(b"0\r\n\r\n");
    conn.send(&bytes).await;
    let a = conn.answer().await.expect("an answer");
    a.assert_error(413, &["limit of 4096 bytes"]);
    assert_serving(addr).await;
}

#[tokio::test]
async fn a_chunked_body_that_never_ends_is_answered_504_at_the_deadline() {
    let server = TestServer::start(Config::for_tests(fixtures_dir())).await;
    let addr = server.addr;
    for path in [format!("{PREDICT}?timeout=500ms"), format!("{INFER}?timeout=500ms")] {
        let mut conn = Conn::open(addr).await;
        let headers = [("content-type", "application/json"), ("transfer-encoding", "chunked")];
        let mut bytes = request("POST", &path, &headers, b"");
        bytes.extend_from_slice(b"9\r\n{\"inputs\"\r\n");
        conn.send(&bytes).await;
        // Answered (not hung until the client gives up), with gRPC's DEADLINE_EXCEEDED text.
        let a = conn.answer().await.expect("an answer while the body is still open");
        a.assert_error(504, &["deadline exceeded while receiving the request body"]);
        assert_serving(addr).await;
    }
}

/// 200 requests in one write, alternating liveness and predict: each answer comes back in
/// order (its `x-request-id` says which), or the server closes the connection; either way a
/// new connection is served.
#[tokio::test]
async fn pipelined_requests_are_answered_in_order_or_the_connection_closes() {
    let server = TestServer::start(Config::for_tests(fixtures_dir())).await;
    let body = tensor_body(&[[50.0, 27.0, 110.0, 125.0]]).to_string();
    let mut bytes = Vec::new();
    for i in 0..200 {
        let id = format!("pipe-{i}");
        bytes.extend(if i % 2 == 0 {
            request("GET", "/v2/health/live", &[("x-request-id", &id)], b"")
        } else {
            request("POST", PREDICT, &[("content-type", "application/json"), ("x-request-id", &id)], body.as_bytes())
        });
    }
    let mut conn = Conn::open(server.addr).await;
    conn.send(&bytes).await;
    let mut answered = 0;
    while answered < 200 {
        let Some(a) = conn.answer().await else { break };
        assert_eq!(a.header("x-request-id"), Some(format!("pipe-{answered}").as_str()), "in order: {a:?}");
        assert_eq!(a.status, 200, "{a:?}");
        answered += 1;
    }
    if answered < 200 {
        // Closed early: nothing more comes on it.
        assert!(conn.until_closed(Duration::from_secs(30)).await.is_empty());
    }
    assert!(answered > 0, "at least the first pipelined request is answered");
    assert_serving(server.addr).await;
}

#[tokio::test]
async fn header_floods_are_refused_with_431_and_the_connection_closed() {
    let server = TestServer::start(Config::for_tests(fixtures_dir())).await;
    let addr = server.addr;
    let lines: Vec<(String, String)> = (0..200).map(|i| (format!("x-flood-{i}"), "v".to_owned())).collect();
    let many: Vec<(&str, &str)> = lines.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let huge = "a".repeat(64 * 1024);
    for (what, headers) in [("200 header lines", many.clone()), ("one 64 KiB header", vec![("x-huge", huge.as_str())])]
    {
        let mut conn = Conn::open(addr).await;
        conn.send(&request("GET", "/v2/health/live", &headers, b"")).await;
        let a = conn.answer().await.unwrap_or_else(|| panic!("{what}: closed without an answer"));
        assert_eq!(a.status, 431, "{what}: {a:?}");
        assert!(conn.until_closed(Duration::from_secs(30)).await.is_empty(), "{what}: closed after the 431");
        assert_serving(addr).await;
    }
    // Under the limits: 90 lines are fine.
    let a = call(addr, "GET", "/v2/health/live", &many[..90], b"").await;
    assert_eq!(a.status, 200, "{a:?}");
}

/// A client that keeps sending header lines and never ends them is cut off by the 10 s header
/// time-out (given 20 s here), and other clients are served meanwhile.
#[tokio::test]
async fn a_slowloris_never_finishing_its_headers_is_disconnected() {
    let server = TestServer::start(Config::for_tests(fixtures_dir())).await;
    let mut slow = tokio::net::TcpStream::connect(server.addr).await.unwrap();
    slow.write_all(b"GET /v2/health/live HTTP/1.1\r\nhost: localhost\r\n").await.unwrap();
    assert_serving(server.addr).await;
    let started = Instant::now();
    let mut got = Vec::new();
    let mut lines = 0;
    let closed = loop {
        assert!(started.elapsed() < Duration::from_secs(20), "still open after 20 s; it sent {got:?}");
        lines += 1;
        if slow.write_all(format!("x-drip-{lines}: y\r\n").as_bytes()).await.is_err() {
            break true;
        }
        let mut buf = [0u8; 1024];
        match tokio::time::timeout(Duration::from_secs(1), slow.read(&mut buf)).await {
            Ok(Ok(0) | Err(_)) => break true,
            Ok(Ok(n)) => got.extend_from_slice(&buf[..n]),
            Err(_still_open) => {}
        }
    };
    assert!(closed);
    let text = String::from_utf8_lossy(&got);
    assert!(!text.contains(" 200 "), "a request whose headers never ended was not served: {text}");
    assert_serving(server.addr).await;
    let live = get(server.addr, "/v2/health/live").await;
    assert_eq!(live.status, 200, "{live:?}");
}

/// A request refused before its body is read (415, 404, 405, a bad time-out) leaves that body
/// unread; on a kept-alive connection the body must not be taken for the next request. The body
/// here is itself a request for model metadata, which must never be answered.
#[tokio::test]
async fn an_unread_body_is_never_read_as_the_next_request() {
    let server = TestServer::start(Config::for_tests(fixtures_dir())).await;
    let smuggled = b"GET /v2/models/tiny_risk HTTP/1.1\r\nhost: localhost\r\nx-request-id: smuggled\r\n\r\n";
    for (path, content_type, status) in [
        ("/v1/sentiment", "text/plain", 415),
        ("/v2/models/tiny_risk/infer", "text/plain", 415),
        ("/no/such/path", "application/json", 404),
        ("/v2/health/live", "application/json", 405),
        ("/v1/models/tiny_risk:predict?timeout=zz", "application/json", 400),
    ] {
        let mut conn = Conn::open(server.addr).await;
        let mut bytes = request("POST", path, &[("content-type", content_type), ("x-request-id", "first")], smuggled);
        bytes.extend(request("GET", "/v2/health/live", &[("x-request-id", "second")], b""));
        conn.send(&bytes).await;
        let first = conn.answer().await.expect("the first answer");
        assert_eq!((first.status, first.header("x-request-id")), (status, Some("first")), "{path}: {first:?}");
        first.error();
        // The next answer on this connection, if any, is the second request's.
        if let Some(next) = conn.answer().await {
            assert_eq!(next.header("x-request-id"), Some("second"), "{path}: the body was run as a request: {next:?}");
            assert_eq!((next.status, next.json()), (200, json!({ "live": true })), "{path}");
        }
    }
}

/// A KServe JSON tensor whose shape claims 4 × 10^12 elements but carries one value: 400, and
/// nothing sized by the claimed count (it once aborted the process on a 32 TB allocation).
#[tokio::test]
async fn a_json_tensor_claiming_a_huge_shape_is_refused_not_allocated() {
    let server = TestServer::start(Config::for_tests(fixtures_dir())).await;
    for shape in ["[1000000000000,4]", "[2000000000,4]"] {
        let body = infer("features", "FP32", shape, "[1]");
        let a = call(server.addr, "POST", INFER, &[("content-type", "application/json")], body.as_bytes()).await;
        a.assert_error(400, &["elements"]);
        assert_serving(server.addr).await;
    }
}

//! Test harness: `TestServer` starts the real server in-process on 127.0.0.1:0 and hands out
//! generated tonic clients; it shuts the server down on drop. No fixed ports, no sleeps.

#![allow(dead_code, clippy::unwrap_used)]

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tonic::transport::{Channel, Endpoint};
use torchwire::config::Config;
use torchwire::model::SharedFactory;
use torchwire::model::torch::TorchFactory;
use torchwire::proto::admin_client::AdminClient;
use torchwire::proto::inference_client::InferenceClient;
use torchwire::proto::kserve::grpc_inference_service_client::GrpcInferenceServiceClient;
use torchwire::server::Listeners;

/// The committed fixture repository.
pub fn fixtures_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("models/fixtures")
}

/// A Predict for a model with `tiny_risk`'s input (`features`, float32 `[rows, 4]`).
pub fn tensor_predict(model: &str, rows: &[Vec<f32>]) -> torchwire::proto::PredictRequest {
    torchwire::proto::PredictRequest {
        version: String::new(),
        model: model.into(),
        device: "cpu".into(),
        inputs: vec![torchwire::proto::Tensor {
            name: "features".into(),
            dtype: torchwire::proto::DataType::Float32 as i32,
            shape: vec![rows.len() as i64, 4],
            float_data: rows.concat(),
            ..Default::default()
        }],
        rows: vec![],
    }
}

/// A running in-process server.
pub struct TestServer {
    /// Where gRPC listens.
    pub addr: SocketAddr,
    /// Where HTTP /metrics, /healthz, /readyz listen.
    pub metrics_addr: SocketAddr,
    /// A connected channel.
    pub channel: Channel,
    /// Cancelling it starts the server's graceful shutdown.
    pub shutdown: CancellationToken,
    task: Option<JoinHandle<anyhow::Result<()>>>,
}

impl TestServer {
    /// The real libtorch server over `config`.
    pub async fn start(config: Config) -> Self {
        Self::start_with(config, Arc::new(TorchFactory)).await
    }

    /// A server with the given backend factory.
    pub async fn start_with(config: Config, factory: SharedFactory) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind 127.0.0.1:0");
        let addr = listener.local_addr().expect("local addr");
        let metrics = TcpListener::bind("127.0.0.1:0").await.expect("bind 127.0.0.1:0");
        let metrics_addr = metrics.local_addr().expect("local addr");
        let listeners = Listeners { grpc: listener, metrics: Some(metrics) };
        let shutdown = CancellationToken::new();
        let task = tokio::spawn(torchwire::server::run_with_factory(config, listeners, shutdown.clone(), factory));
        // Lazy: a TLS server refuses this plaintext channel, and tests make their own then.
        let channel = Endpoint::from_shared(format!("http://{addr}")).expect("endpoint").connect_lazy();
        TestServer { addr, metrics_addr, channel, shutdown, task: Some(task) }
    }

    /// An Inference client.
    pub fn inference(&self) -> InferenceClient<Channel> {
        InferenceClient::new(self.channel.clone())
    }

    /// An Admin client.
    pub fn admin(&self) -> AdminClient<Channel> {
        AdminClient::new(self.channel.clone())
    }

    /// A KServe v2 client.
    pub fn kserve(&self) -> GrpcInferenceServiceClient<Channel> {
        GrpcInferenceServiceClient::new(self.channel.clone())
    }

    /// The value of the `/metrics` sample line that starts with `prefix` (name and labels).
    pub async fn metric(&self, prefix: &str) -> Option<f64> {
        let (_, text) = self.http_get("/metrics").await;
        text.lines().find(|l| l.starts_with(prefix)).and_then(|l| l.rsplit(' ').next()).and_then(|v| v.parse().ok())
    }

    /// GETs a path from the HTTP listener; returns (status code, body).
    pub async fn http_get(&self, path: &str) -> (u16, String) {
        http_get(self.metrics_addr, path).await
    }

    /// Shuts down gracefully and returns how `run` ended.
    pub async fn stop(mut self) -> anyhow::Result<()> {
        self.shutdown.cancel();
        let task = self.task.take().expect("task present until stop");
        task.await?
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

/// A minimal HTTP/1.1 GET (no client library needed for a loopback scrape).
pub async fn http_get(addr: SocketAddr, path: &str) -> (u16, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(addr).await.expect("connect to HTTP listener");
    let req = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    stream.write_all(req.as_bytes()).await.expect("send request");
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw).await.expect("read response");
    let text = String::from_utf8_lossy(&raw).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head.split_whitespace().nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
    let body =
        if head.to_ascii_lowercase().contains("transfer-encoding: chunked") { dechunk(body) } else { body.to_owned() };
    (status, body)
}

fn dechunk(mut s: &str) -> String {
    let mut out = String::new();
    while let Some((size, rest)) = s.split_once("\r\n") {
        let n = usize::from_str_radix(size.trim(), 16).unwrap_or(0);
        if n == 0 || rest.len() < n {
            break;
        }
        out.push_str(&rest[..n]);
        s = rest[n..].trim_start_matches("\r\n");
    }
    out
}

// ---- raw HTTP/2 (the `h2` crate), for tests below the gRPC client ----

/// An HTTP/2 connection made with the `h2` crate, driven in the background.
pub async fn h2_connect(
    addr: std::net::SocketAddr,
) -> (h2::client::SendRequest<bytes::Bytes>, tokio::task::JoinHandle<Result<(), h2::Error>>) {
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let (send, conn) = h2::client::handshake(tcp).await.unwrap();
    (send, tokio::spawn(conn))
}

/// A unary gRPC request for `path`; the body is sent separately.
pub fn grpc_request(addr: std::net::SocketAddr, path: &str) -> http::Request<()> {
    http::Request::builder()
        .method("POST")
        .uri(format!("http://{addr}{path}"))
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .body(())
        .unwrap()
}

/// The gRPC length-prefixed frame of a message.
pub fn frame(msg: &impl prost::Message) -> bytes::Bytes {
    let body = prost::Message::encode_to_vec(msg);
    let mut out = vec![0u8];
    out.extend_from_slice(&u32::try_from(body.len()).unwrap().to_be_bytes());
    out.extend_from_slice(&body);
    out.into()
}

/// Reads a response to the end and returns its grpc-status (headers for trailers-only
/// answers, else trailers).
pub async fn grpc_status(resp: h2::client::ResponseFuture) -> i32 {
    grpc_answer(resp).await.0
}

/// Reads a response to the end: (grpc-status, grpc-message).
pub async fn grpc_answer(resp: h2::client::ResponseFuture) -> (i32, String) {
    fn pick(h: &http::HeaderMap) -> Option<(i32, String)> {
        let code = h.get("grpc-status")?.to_str().ok()?.parse().ok()?;
        let msg = h.get("grpc-message").and_then(|m| m.to_str().ok()).unwrap_or_default();
        Some((code, percent_decode(msg)))
    }
    let resp = resp.await.unwrap();
    if let Some(answer) = pick(resp.headers()) {
        return answer;
    }
    let mut body = resp.into_body();
    while let Some(chunk) = body.data().await {
        let chunk = chunk.unwrap();
        let _ = body.flow_control().release_capacity(chunk.len());
    }
    let trailers = body.trailers().await.unwrap().expect("trailers");
    pick(&trailers).expect("grpc-status in the trailers")
}

fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%'
            && i + 2 < b.len()
            && let Ok(v) = u8::from_str_radix(&s[i + 1..i + 3], 16)
        {
            out.push(v);
            i += 3;
            continue;
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Runs the async test `$name(executor: ExecutorChoice)` twice, as `$name::worker` and
/// `$name::inline`: the same case against a model on its worker thread and on the fast path.
#[allow(unused_macros)]
macro_rules! on_both_executors {
    ($($name:ident),+ $(,)?) => {$(
        mod $name {
            use torchwire::inline::ExecutorChoice;

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn worker() {
                super::$name(ExecutorChoice::Worker).await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn inline() {
                super::$name(ExecutorChoice::Inline).await;
            }
        }
    )+};
}
#[allow(unused_imports)]
pub(crate) use on_both_executors;

/// Serves `repo`, loads each of `names` on the CPU and asserts its default version has self-test
/// goldens and came up READY (a load runs the self-test: a golden that does not reproduce fails it).
pub async fn assert_each_loads_and_passes_its_self_test(repo: &std::path::Path, names: &[&str]) {
    use torchwire::proto::ModelState;
    let config = Config { max_loaded_models: names.len(), ..Config::for_tests(repo) };
    let server = TestServer::start(config).await;
    for &n in names {
        let req = torchwire::proto::LoadModelRequest { model: n.into(), device: "cpu".into(), pin: false };
        let info = server.admin().load_model(req).await.unwrap_or_else(|s| panic!("{n}: {}", s.message())).into_inner();
        let v = info.versions.iter().find(|v| v.labels.iter().any(|l| l == "default")).unwrap();
        assert!(v.self_tests > 0, "{n} has self-test goldens");
        let cpu = v.devices.iter().find(|d| d.device == "cpu").unwrap_or_else(|| panic!("{n}: {v:?}"));
        assert_eq!(ModelState::try_from(cpu.state).unwrap(), ModelState::Ready, "{n}: {}", cpu.error);
    }
    server.stop().await.unwrap();
}

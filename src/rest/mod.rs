//! The HTTP/JSON front door, on the gRPC listener (HTTP/1.1 and h2c / TLS; the transport
//! sends every request whose content type is not `application/grpc` here): the KServe v2 /
//! Open Inference Protocol REST API (`/v2`, Triton-compatible, see `kserve.rs`), torchwire
//! JSON (`/v1`: the `torchwire.v1` messages in proto3 JSON) and the status page (`GET /`).
//!
//! A converter like the gRPC doors: each endpoint reads its JSON into the proto request of the
//! gRPC method it stands for ([`Route::grpc_path`]) and calls that service, so the boundary,
//! admission, deadlines, metrics (`rpc="http/<Method>"`), Stats and logs are the gRPC ones.
//! What it adds is the HTTP edge: reading the body within the size limit and the deadline,
//! content types, and one mapping of every error to an HTTP status with a `{"error": ...}` body.

mod kserve;
mod route;

use std::sync::Arc;

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, StatusCode, header};
use http_body_util::{BodyExt, Full, Limited};
use serde::Serialize;
use serde::de::DeserializeOwned;
use tonic::Status;

pub use route::{Route, Target, http_label};

use crate::boundary::SharedState;
use crate::deadline::Deadline;
use crate::error::{Error, clip};
use crate::proto;
use crate::proto::admin_server::Admin;
use crate::proto::inference_server::Inference;
use crate::service::admin::AdminService;
use crate::service::inference::InferenceService;
use crate::service::kserve::KserveService;
use crate::transport::CallInfo;

/// An HTTP answer, in the body type the gRPC routes answer with (one connection serves both).
pub type Reply = http::Response<tonic::body::Body>;

/// The status page: one self-contained file, no external assets.
const STATUS_PAGE: &str = include_str!("ui/index.html");

/// The HTTP door: the gRPC services it converts to, and the state for what it answers itself.
pub struct Door {
    state: SharedState,
    inference: InferenceService,
    admin: AdminService,
    kserve: KserveService,
}

impl Door {
    /// A door over the shared state.
    pub fn new(state: SharedState) -> Self {
        Door {
            inference: InferenceService::new(Arc::clone(&state)),
            admin: AdminService::new(Arc::clone(&state)),
            kserve: KserveService::new(Arc::clone(&state)),
            state,
        }
    }

    /// Answers one HTTP request for `route`, whose facts the transport decided (`info`).
    pub async fn handle<B>(&self, route: Route, req: http::Request<B>, info: CallInfo) -> Reply
    where
        B: http_body::Body<Data = Bytes> + Send + 'static,
        B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        let (parts, body) = req.into_parts();
        let head = parts.method == http::Method::HEAD;
        let rpc = route.rpc();
        let request_id = info.request_id.clone();
        let arrived = info.arrived;
        let input = Input { parts, body: Some(body), info, limit: self.state.config.max_message_bytes };
        let reply = match self.dispatch(route, input).await {
            Ok(reply) => reply,
            Err(Refused(e)) => {
                // Refused before any service ran (bad JSON, content type, size): counted here.
                tracing::info!(rpc, request_id = %request_id, code = e.code_label(), "request refused: {e}");
                self.state.record_refused(rpc, &e, arrived.elapsed());
                error_reply(&e, &request_id)
            }
        };
        if head { strip_body(reply) } else { reply }
    }

    async fn dispatch<B>(&self, route: Route, mut input: Input<B>) -> Result<Reply, Refused>
    where
        B: http_body::Body<Data = Bytes> + Send + 'static,
        B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        let id = input.info.request_id.clone();
        Ok(match route {
            Route::Ui => self.status_page(&id),
            Route::Predict(model) => {
                let mut msg: proto::PredictRequest = input.json(true).await?;
                msg.model = same_model(&msg.model, model)?;
                json_reply(self.inference.predict(input.grpc(msg)).await, &id)
            }
            Route::Sentiment => {
                let msg: proto::SentimentRequest = input.json(true).await?;
                json_reply(self.inference.sentiment(input.grpc(msg)).await, &id)
            }
            Route::Stats => {
                let msg = proto::StatsRequest { model: input.query("model").unwrap_or_default() };
                json_reply(self.inference.stats(input.grpc(msg)).await, &id)
            }
            Route::ResetStats => json_reply(self.admin.reset_stats(input.grpc(proto::ResetStatsRequest {})).await, &id),
            Route::ListModels => json_reply(self.admin.list_models(input.grpc(proto::ListModelsRequest {})).await, &id),
            Route::GetModel(model) => {
                json_reply(self.admin.get_model(input.grpc(proto::GetModelRequest { model })).await, &id)
            }
            Route::LoadModel(model) => {
                let mut msg: proto::LoadModelRequest = input.optional_json(true).await?;
                msg.model = same_model(&msg.model, model)?;
                json_reply(self.admin.load_model(input.grpc(msg)).await, &id)
            }
            Route::UnloadModel(model) => {
                let mut msg: proto::UnloadModelRequest = input.optional_json(true).await?;
                msg.model = same_model(&msg.model, model)?;
                json_reply(self.admin.unload_model(input.grpc(msg)).await, &id)
            }
            kserve_route => return kserve::dispatch(&self.kserve, kserve_route, input).await,
        })
    }

    fn status_page(&self, request_id: &str) -> Reply {
        if !self.state.config.ui {
            return error_reply(
                &Error::NoSuchPath { path: "/ (the status page is off: --ui=false)".into() },
                request_id,
            );
        }
        let mut reply =
            http::Response::new(tonic::body::Body::new(Full::new(Bytes::from_static(STATUS_PAGE.as_bytes()))));
        let h = reply.headers_mut();
        h.insert(header::CONTENT_TYPE, HeaderValue::from_static("text/html; charset=utf-8"));
        // Everything the page needs is in it; it talks only to this server.
        h.insert(
            header::CONTENT_SECURITY_POLICY,
            HeaderValue::from_static(
                "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; img-src data:; connect-src 'self'",
            ),
        );
        h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
        with_request_id(reply, request_id)
    }
}

/// An error the door answers itself, before any service ran.
struct Refused(Error);

impl From<Error> for Refused {
    fn from(e: Error) -> Self {
        Refused(e)
    }
}

/// A request being converted: its head, its body (read at most once) and its call facts.
struct Input<B> {
    parts: http::request::Parts,
    body: Option<B>,
    info: CallInfo,
    limit: usize,
}

impl<B> Input<B>
where
    B: http_body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    /// The body, read whole within `--max-message-bytes` and the call's deadline.
    async fn bytes(&mut self) -> Result<Bytes, Error> {
        let Some(body) = self.body.take() else { return Ok(Bytes::new()) };
        read_body(body, self.limit, self.info.deadline).await
    }

    /// The body as JSON of `T`. `strict`: a missing content type is refused (the `/v1` rule);
    /// the KServe endpoints read a body without one as JSON, as Triton does.
    async fn json<T: DeserializeOwned>(&mut self, strict: bool) -> Result<T, Error> {
        check_content_type(&self.parts.headers, strict, false)?;
        let body = self.bytes().await?;
        parse_json(&body)
    }

    /// Like [`Self::json`], but an empty body is the message's defaults.
    async fn optional_json<T: DeserializeOwned + Default>(&mut self, strict: bool) -> Result<T, Error> {
        let body = self.bytes().await?;
        if body.iter().all(u8::is_ascii_whitespace) {
            return Ok(T::default());
        }
        check_content_type(&self.parts.headers, strict, false)?;
        parse_json(&body)
    }

    /// The decoded value of query parameter `name`.
    fn query(&self, name: &str) -> Option<String> {
        query_param(self.parts.uri.query()?, name)
    }

    /// The gRPC request for `msg`, carrying this call's facts.
    fn grpc<T>(&self, msg: T) -> tonic::Request<T> {
        grpc_request(&self.info, msg)
    }
}

async fn read_body<B>(body: B, limit: usize, deadline: Deadline) -> Result<Bytes, Error>
where
    B: http_body::Body<Data = Bytes>,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    match tokio::time::timeout_at(deadline.at().into(), Limited::new(body, limit).collect()).await {
        Err(_) => Err(Error::DeadlineExceeded { stage: "receiving the request body" }),
        Ok(Ok(collected)) => Ok(collected.to_bytes()),
        Ok(Err(e)) if e.is::<http_body_util::LengthLimitError>() => Err(Error::MessageTooLarge { limit }),
        Ok(Err(e)) => {
            Err(Error::invalid("body", format!("the request body could not be read: {}", clip(&e.to_string(), 200))))
        }
    }
}

/// `application/json` (any charset) is read everywhere. `strict` (`/v1`) refuses a request
/// without a content type; otherwise (`/v2`, as Triton, which reads any body as JSON) none is
/// fine and so is curl's default for `-d`, `application/x-www-form-urlencoded`. `binary` also
/// takes `application/octet-stream` (the KServe binary tensor extension).
fn check_content_type(headers: &HeaderMap, strict: bool, binary: bool) -> Result<(), Error> {
    let Some(value) = headers.get(header::CONTENT_TYPE) else {
        return if strict {
            Err(Error::UnsupportedMediaType {
                reason: "the request has no content type; send `content-type: application/json`".into(),
            })
        } else {
            Ok(())
        };
    };
    let mime = value.to_str().unwrap_or("").split(';').next().unwrap_or("").trim().to_ascii_lowercase();
    match mime.as_str() {
        "application/json" => Ok(()),
        "application/x-www-form-urlencoded" if !strict => Ok(()),
        "application/octet-stream" if binary => Ok(()),
        _ => Err(Error::UnsupportedMediaType {
            reason: format!(
                "content type `{}` is not read here; send `content-type: application/json`{}",
                clip(value.to_str().unwrap_or("(not text)"), 64),
                if binary { " (or application/octet-stream with Inference-Header-Content-Length)" } else { "" }
            ),
        }),
    }
}

fn parse_json<T: DeserializeOwned>(body: &[u8]) -> Result<T, Error> {
    serde_json::from_slice(body).map_err(|e| {
        let what = if e.is_syntax() || e.is_eof() { "is not valid JSON" } else { "is JSON of the wrong shape" };
        Error::invalid("body", format!("the request body {what}: {}", clip(&e.to_string(), 300)))
    })
}

/// The model a path names, unless the body names another.
fn same_model(in_body: &str, in_path: String) -> Result<String, Error> {
    if in_body.is_empty() || in_body == in_path {
        Ok(in_path)
    } else {
        Err(Error::invalid(
            "model",
            format!(
                "the path names model `{}` and the body `{}`; leave it out of the body",
                clip(&in_path, 64),
                clip(in_body, 64)
            ),
        ))
    }
}

/// The first value of `name` in a query string, percent-decoded (`+` is a space).
pub fn query_param(query: &str, name: &str) -> Option<String> {
    query.split('&').find_map(|pair| {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        (k == name).then(|| percent_decode(v))
    })
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let hex = |b: u8| (b as char).to_digit(16).and_then(|d| u8::try_from(d).ok());
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let escaped = match bytes.get(i..i + 3) {
            Some([b'%', hi, lo]) => hex(*hi).zip(hex(*lo)).map(|(h, l)| h * 16 + l),
            _ => None,
        };
        match (escaped, bytes[i]) {
            (Some(b), _) => {
                out.push(b);
                i += 3;
                continue;
            }
            (None, b'+') => out.push(b' '),
            (None, b) => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// A service's answer as JSON, or its status as an HTTP error.
fn json_reply<T: Serialize>(result: Result<tonic::Response<T>, Status>, request_id: &str) -> Reply {
    match result {
        Ok(response) => {
            let cache = response.metadata().get("x-torchwire-cache").cloned();
            let mut reply = json_body(StatusCode::OK, response.get_ref());
            if let Some(v) = cache.and_then(|v| HeaderValue::from_bytes(v.as_bytes()).ok()) {
                reply.headers_mut().insert("x-torchwire-cache", v);
            }
            with_request_id(reply, request_id)
        }
        Err(status) => status_reply(&status, request_id),
    }
}

fn json_body<T: Serialize + ?Sized>(code: StatusCode, value: &T) -> Reply {
    let body = serde_json::to_vec(value)
        .unwrap_or_else(|e| format!("{{\"error\":\"the answer could not be written as JSON: {e}\"}}").into_bytes());
    let mut reply = http::Response::new(tonic::body::Body::new(Full::new(Bytes::from(body))));
    *reply.status_mut() = code;
    reply.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    reply
}

/// The HTTP status of a gRPC code: one mapping for every error the services answer.
pub fn http_status(code: tonic::Code) -> StatusCode {
    use tonic::Code;
    match code {
        Code::Ok => StatusCode::OK,
        Code::InvalidArgument | Code::OutOfRange => StatusCode::BAD_REQUEST,
        Code::Unauthenticated => StatusCode::UNAUTHORIZED,
        Code::PermissionDenied => StatusCode::FORBIDDEN,
        Code::NotFound => StatusCode::NOT_FOUND,
        Code::AlreadyExists | Code::Aborted => StatusCode::CONFLICT,
        Code::FailedPrecondition => StatusCode::PRECONDITION_FAILED,
        Code::ResourceExhausted => StatusCode::TOO_MANY_REQUESTS,
        Code::Unimplemented => StatusCode::NOT_IMPLEMENTED,
        Code::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
        Code::DeadlineExceeded => StatusCode::GATEWAY_TIMEOUT,
        // The client is gone; nobody reads this.
        Code::Cancelled => StatusCode::REQUEST_TIMEOUT,
        Code::Unknown | Code::Internal | Code::DataLoss => StatusCode::INTERNAL_SERVER_ERROR,
    }
}

fn status_reply(status: &Status, request_id: &str) -> Reply {
    let code = http_status(status.code());
    let mut reply = json_body(code, &serde_json::json!({ "error": status.message() }));
    if code == StatusCode::TOO_MANY_REQUESTS {
        let ms = status.metadata().get("retry-after-ms").and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
        let secs = ms.map_or(1, |ms| ms.div_ceil(1000).max(1));
        reply.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from(secs));
    }
    with_request_id(reply, request_id)
}

/// An error answered by the HTTP edge itself: the HTTP-only ones get their own statuses (404
/// path, 405 with `Allow`, 413, 415); every other goes through the gRPC code mapping.
pub fn error_reply(e: &Error, request_id: &str) -> Reply {
    let code = match e {
        Error::NoSuchPath { .. } => StatusCode::NOT_FOUND,
        Error::MethodNotAllowed { .. } => StatusCode::METHOD_NOT_ALLOWED,
        Error::MessageTooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
        Error::UnsupportedMediaType { .. } => StatusCode::UNSUPPORTED_MEDIA_TYPE,
        _ => return status_reply(&Status::from(e), request_id),
    };
    let mut reply = json_body(code, &serde_json::json!({ "error": e.to_string() }));
    if let Error::MethodNotAllowed { allowed, .. } = e {
        reply.headers_mut().insert(header::ALLOW, HeaderValue::from_static(allowed));
    }
    with_request_id(reply, request_id)
}

fn with_request_id(mut reply: Reply, request_id: &str) -> Reply {
    if let Ok(v) = HeaderValue::from_str(request_id) {
        reply.headers_mut().insert("x-request-id", v);
    }
    reply
}

fn strip_body(reply: Reply) -> Reply {
    let (parts, _) = reply.into_parts();
    http::Response::from_parts(parts, tonic::body::Body::empty())
}

/// What the KServe converter reads of a request that is not JSON-only.
pub(crate) fn binary_header_length(headers: &HeaderMap) -> Result<Option<usize>, Error> {
    match headers.get("inference-header-content-length") {
        None => Ok(None),
        Some(v) => v.to_str().ok().and_then(|s| s.trim().parse().ok()).map(Some).ok_or_else(|| {
            Error::invalid("Inference-Header-Content-Length", "must be the byte length of the JSON header")
        }),
    }
}

/// For `kserve.rs`: a gRPC request carrying the call's facts.
pub(crate) fn grpc_request<T>(info: &CallInfo, msg: T) -> tonic::Request<T> {
    let mut r = tonic::Request::new(msg);
    r.extensions_mut().insert(info.clone());
    r
}

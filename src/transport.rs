//! The transport under every front door: accepts TCP connections (optionally TLS, optionally
//! mutual), speaks HTTP/2 and HTTP/1.1 on the same port (hyper's auto builder tells them
//! apart), checks bearer keys, enforces connection limits (streams, header size, keep-alive,
//! idle time-out, a time cap on each call), sends each request to the gRPC routes (content
//! type `application/grpc`) or to the HTTP/JSON door (`rest/`), and drains gracefully on
//! shutdown.
//!
//! torchwire serves connections itself (rather than through `tonic::transport::Server`) for one
//! reason: tonic's server applies the client's `grpc-timeout` in a layer outside every user
//! layer and answers CANCELLED when it fires, while gRPC clients and DESIGN.md expect
//! DEADLINE_EXCEEDED. Here, each request's arrival time, peer and `grpc-timeout` are taken
//! into a [`CallInfo`] extension before the routes see the request (and the header is removed),
//! so the handler enforces the deadline itself, measured from arrival. The transport adds a
//! backstop one second past that deadline, which only fires when the handler never ran: a
//! client that never finishes its request body.

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto::Builder;
use hyper_util::service::TowerToHyperService;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tonic::service::Routes;
use tower_service::Service;

use crate::auth::Keys;
use crate::deadline::{Deadline, parse_grpc_timeout};
use crate::error::Error;

/// How long a client has to complete the TLS handshake.
const TLS_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// How far past its deadline a call may run before the transport answers for it.
const BACKSTOP: Duration = Duration::from_secs(1);

/// The facts of a call the transport decides once, before any service sees it; the services
/// read them into their [`crate::boundary::Call`].
#[derive(Debug, Clone)]
pub struct CallInfo {
    /// When the request headers arrived.
    pub arrived: Instant,
    /// The client's `grpc-timeout` (else the default), capped, measured from arrival.
    pub deadline: Deadline,
    /// Who is calling: `key:<fingerprint>` of the key the transport verified, else
    /// `ip:<peer address>`. Never an unverified header, so a client cannot pick its own bucket.
    pub client: String,
    /// The client's `x-request-id` (at most 128 visible characters), else one made here.
    pub request_id: String,
    /// The client's address.
    pub peer: SocketAddr,
    /// The client sent `cache-control: no-cache`: compute, do not answer from the cache.
    pub no_cache: bool,
    /// The call came in by the HTTP/JSON door (its metrics say `rpc="http/<Method>"`).
    pub http: bool,
}

/// A request id for a call that brought none: `tw-<n>`, unique within this process.
pub fn new_request_id() -> String {
    static NEXT: AtomicU64 = AtomicU64::new(1);
    format!("tw-{:x}", NEXT.fetch_add(1, Ordering::Relaxed))
}

/// What the transport tells the application about calls it answers itself (a refused key, a
/// message over the size limit), so they are counted like every other call.
pub type RefusalSink = Arc<dyn Fn(&'static str, &Error, Duration) + Send + Sync>;

/// Connection-level settings.
#[derive(Clone)]
pub struct TransportConfig {
    /// How long shutdown waits for open requests to finish.
    pub grace: Duration,
    /// Concurrent HTTP/2 streams per connection.
    pub max_concurrent_streams: u32,
    /// Most bytes of request headers.
    pub max_header_bytes: u32,
    /// PING a connection after this long without frames; `None` = never.
    pub keepalive_interval: Option<Duration>,
    /// Close the connection when a PING goes unanswered this long.
    pub keepalive_timeout: Duration,
    /// Close a connection with no request open for this long; `None` = never.
    pub idle_timeout: Option<Duration>,
    /// Deadline of a call without `grpc-timeout`, and the cap on any (for the backstop).
    pub default_timeout: Duration,
    /// Cap on any call's deadline.
    pub max_timeout: Duration,
    /// Bearer keys checked before routing.
    pub keys: Arc<Keys>,
    /// TLS, when configured.
    pub tls: Option<TlsAcceptor>,
    /// `--max-message-bytes`, named in the answer to a message over it.
    pub max_message_bytes: usize,
    /// Where calls the transport answers itself are reported.
    pub refused: RefusalSink,
    /// The HTTP/JSON door, for every request that is not gRPC.
    pub rest: Arc<crate::rest::Door>,
}

/// Most header lines of an HTTP/1.1 request (a flood past it is answered 431).
const MAX_HTTP1_HEADERS: usize = 100;
/// How long an HTTP/1.1 client may take to send a request's headers.
const HTTP1_HEADER_TIMEOUT: Duration = Duration::from_secs(10);

/// Serves `routes` on `listener` until `shutdown` fires, then runs `on_drain`, stops accepting,
/// and waits up to the grace period for open connections to finish their requests.
pub async fn serve(
    listener: TcpListener,
    routes: Routes,
    shutdown: CancellationToken,
    config: TransportConfig,
    on_drain: impl Future<Output = ()>,
) {
    let mut builder = Builder::new(TokioExecutor::new());
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_concurrent_streams(config.max_concurrent_streams)
        .max_header_list_size(config.max_header_bytes)
        .keep_alive_interval(config.keepalive_interval)
        .keep_alive_timeout(config.keepalive_timeout)
        // A client resetting streams as fast as it opens them ("rapid reset") is cut off.
        .max_pending_accept_reset_streams(Some(64))
        .max_local_error_reset_streams(Some(256));
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(HTTP1_HEADER_TIMEOUT)
        .max_headers(MAX_HTTP1_HEADERS)
        // Bounds one request's headers (and what pipelined requests may queue) like HTTP/2's limit.
        .max_buf_size((config.max_header_bytes as usize).max(8192));
    let connections = TaskTracker::new();
    let config = Arc::new(config);
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let (stream, peer) = match accepted {
                    Ok(x) => x,
                    Err(e) => {
                        // Out of file descriptors and the like: back off rather than spin.
                        tracing::warn!(error = %e, "accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                };
                let _ = stream.set_nodelay(true);
                let activity = Arc::new(Activity::default());
                let svc = Guarded { inner: routes.clone(), peer, config: Arc::clone(&config), activity: Arc::clone(&activity) };
                let (builder, shutdown, config) = (builder.clone(), shutdown.clone(), Arc::clone(&config));
                connections.spawn(async move {
                    match &config.tls {
                        None => serve_connection(stream, svc, &builder, &shutdown, config.idle_timeout, &activity).await,
                        Some(acceptor) => match tokio::time::timeout(TLS_HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await {
                            Ok(Ok(tls)) => serve_connection(tls, svc, &builder, &shutdown, config.idle_timeout, &activity).await,
                            Ok(Err(e)) => tracing::debug!(%peer, error = %e, "TLS handshake failed"),
                            Err(_) => tracing::debug!(%peer, "TLS handshake timed out"),
                        },
                    }
                });
            }
            () = shutdown.cancelled() => break,
        }
    }
    drop(listener);
    on_drain.await;
    connections.close();
    tokio::select! {
        () = connections.wait() => tracing::info!("all connections drained"),
        () = tokio::time::sleep(config.grace) => tracing::warn!(grace = ?config.grace, "grace period over; closing remaining connections"),
    }
}

/// Serves one connection until it ends; on shutdown or after the idle time-out, sends GOAWAY
/// and lets open requests finish.
async fn serve_connection<I>(
    io: I,
    svc: Guarded,
    builder: &Builder<TokioExecutor>,
    shutdown: &CancellationToken,
    idle_timeout: Option<Duration>,
    activity: &Activity,
) where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let peer = svc.peer;
    let conn = builder.serve_connection(TokioIo::new(io), TowerToHyperService::new(svc));
    tokio::pin!(conn);
    let mut closing = false;
    loop {
        tokio::select! {
            res = conn.as_mut() => {
                if let Err(e) = res {
                    tracing::debug!(%peer, error = %e, "connection closed with an error");
                }
                return;
            }
            () = shutdown.cancelled(), if !closing => {
                conn.as_mut().graceful_shutdown();
                closing = true;
            }
            () = activity.idle_for(idle_timeout.unwrap_or(Duration::MAX)), if !closing && idle_timeout.is_some() => {
                tracing::debug!(%peer, "closing an idle connection");
                conn.as_mut().graceful_shutdown();
                closing = true;
            }
        }
    }
}

/// Requests open on one connection, and when the count last changed.
#[derive(Debug)]
struct Activity {
    open: AtomicUsize,
    since: std::sync::Mutex<Instant>,
}

impl Default for Activity {
    fn default() -> Self {
        Activity { open: AtomicUsize::new(0), since: std::sync::Mutex::new(Instant::now()) }
    }
}

impl Activity {
    fn touch(&self) {
        *self.since.lock().unwrap_or_else(std::sync::PoisonError::into_inner) = Instant::now();
    }

    /// Resolves once no request has been open for `idle`.
    async fn idle_for(&self, idle: Duration) {
        loop {
            let since = *self.since.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            let due = since.checked_add(idle).unwrap_or_else(|| Instant::now() + Duration::from_secs(86_400));
            if self.open.load(Ordering::Acquire) == 0 && Instant::now() >= due {
                return;
            }
            let wake = if self.open.load(Ordering::Acquire) == 0 { due } else { Instant::now() + idle };
            tokio::time::sleep_until(wake.into()).await;
        }
    }
}

/// Counts a request as open on its connection until dropped.
struct OpenRequest(Arc<Activity>);

impl OpenRequest {
    fn new(a: &Arc<Activity>) -> Self {
        a.open.fetch_add(1, Ordering::AcqRel);
        a.touch();
        OpenRequest(Arc::clone(a))
    }
}

impl Drop for OpenRequest {
    fn drop(&mut self) {
        self.0.open.fetch_sub(1, Ordering::AcqRel);
        self.0.touch();
    }
}

/// In front of the routes: checks the bearer key, moves `grpc-timeout` (and arrival time and
/// peer) into a [`CallInfo`] extension, counts the request as open on its connection, and caps
/// how long the call may take.
#[derive(Clone)]
struct Guarded {
    inner: Routes,
    peer: SocketAddr,
    config: Arc<TransportConfig>,
    activity: Arc<Activity>,
}

type Reply = http::Response<tonic::body::Body>;

impl<B> Service<http::Request<B>> for Guarded
where
    B: http_body::Body<Data = bytes::Bytes> + Send + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>> + Send,
{
    type Response = Reply;
    type Error = std::convert::Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Reply, Self::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Service::<http::Request<B>>::poll_ready(&mut self.inner, cx)
    }

    fn call(&mut self, req: http::Request<B>) -> Self::Future {
        let arrived = Instant::now();
        let open = OpenRequest::new(&self.activity);
        if is_grpc(req.headers()) { self.grpc(req, arrived, open) } else { self.http(req, arrived, open) }
    }
}

impl Guarded {
    fn grpc<B>(&mut self, mut req: http::Request<B>, arrived: Instant, open: OpenRequest) -> BoxReply
    where
        B: http_body::Body<Data = bytes::Bytes> + Send + 'static,
        B::Error: Into<Box<dyn std::error::Error + Send + Sync>> + Send,
    {
        let path = req.uri().path();
        let rpc = crate::boundary::rpc_label(path);
        let checked = self.verify(&req, path).and_then(|verified| Ok((verified, header_timeout(req.headers())?)));
        let (verified, timeout) = match checked {
            Ok(x) => x,
            Err(e) => {
                self.refused(&e, path, rpc, arrived);
                return answer(open, Ok(tonic::Status::from(e).into_http()));
            }
        };
        req.headers_mut().remove("grpc-timeout");
        let info = self.facts(req.headers(), arrived, verified, timeout, false);
        let deadline = info.deadline;
        req.extensions_mut().insert(info);
        let call = self.inner.call(req);
        let config = Arc::clone(&self.config);
        Box::pin(async move {
            let reply = match tokio::time::timeout_at((deadline.at() + BACKSTOP).into(), call).await {
                Ok(Ok(reply)) => oversized_as_exhausted(reply, rpc, arrived, &config),
                Ok(Err(never)) => match never {},
                // The handler answers at the deadline itself; this fires when it never ran
                // (the request body never completed).
                Err(_) => tonic::Status::from(Error::DeadlineExceeded { stage: "receiving the request" }).into_http(),
            };
            drop(open);
            Ok(reply)
        })
    }

    /// A request for the HTTP/JSON door: routed first (the route says which gRPC method it
    /// stands for, for keys and labels), then the same key check and call facts as gRPC, the
    /// deadline from `grpc-timeout` or a `timeout` query parameter.
    fn http<B>(&mut self, req: http::Request<B>, arrived: Instant, open: OpenRequest) -> BoxReply
    where
        B: http_body::Body<Data = bytes::Bytes> + Send + 'static,
        B::Error: Into<Box<dyn std::error::Error + Send + Sync>> + Send,
    {
        let refuse = |e: Error, rpc: &'static str, request_id: &str| {
            self.refused(&e, req.uri().path(), rpc, arrived);
            crate::rest::error_reply(&e, request_id)
        };
        let route = crate::rest::Route::parse(req.method(), req.uri().path());
        let rpc = route.as_ref().map_or("http/unknown", crate::rest::Route::rpc);
        let route = match route {
            Ok(r) => r,
            Err(e) => return answer(open, Ok(refuse(e, rpc, &request_id(req.headers())))),
        };
        let checked = self.verify(&req, route.access_path()).and_then(|verified| Ok((verified, http_timeout(&req)?)));
        let (verified, timeout) = match checked {
            Ok(x) => x,
            Err(e) => return answer(open, Ok(refuse(e, rpc, &request_id(req.headers())))),
        };
        let info = self.facts(req.headers(), arrived, verified, timeout, true);
        let deadline = info.deadline;
        let door = Arc::clone(&self.config.rest);
        Box::pin(async move {
            let request_id = info.request_id.clone();
            let reply = match tokio::time::timeout_at((deadline.at() + BACKSTOP).into(), door.handle(route, req, info))
                .await
            {
                Ok(reply) => reply,
                Err(_) => {
                    crate::rest::error_reply(&Error::DeadlineExceeded { stage: "receiving the request" }, &request_id)
                }
            };
            drop(open);
            Ok(reply)
        })
    }

    /// Checks the bearer key for a call to `path` (a gRPC method path).
    fn verify<B>(&self, req: &http::Request<B>, path: &str) -> Result<Option<String>, Error> {
        let authorization = req.headers().get(http::header::AUTHORIZATION).map(http::HeaderValue::as_bytes);
        self.config.keys.check(path, authorization)
    }

    /// Logs and counts a call the transport answers itself.
    fn refused(&self, e: &Error, path: &str, rpc: &'static str, arrived: Instant) {
        tracing::info!(peer = %self.peer, path = %crate::error::clip(path, 96), code = e.code_label(), "request refused: {e}");
        (self.config.refused)(rpc, e, arrived.elapsed());
    }

    /// The call's facts, decided once: deadline, client identity, request id, cache opt-out.
    fn facts(
        &self,
        headers: &http::HeaderMap,
        arrived: Instant,
        verified: Option<String>,
        timeout: Option<Duration>,
        http: bool,
    ) -> CallInfo {
        let deadline = Deadline::for_call(arrived, timeout, self.config.default_timeout, self.config.max_timeout);
        let client = match verified {
            Some(fingerprint) => format!("key:{fingerprint}"),
            None => format!("ip:{}", self.peer.ip()),
        };
        let no_cache = headers
            .get_all("cache-control")
            .iter()
            .filter_map(|v| v.to_str().ok())
            .any(|v| v.split(',').any(|d| d.trim().eq_ignore_ascii_case("no-cache")));
        CallInfo { arrived, deadline, client, request_id: request_id(headers), peer: self.peer, no_cache, http }
    }
}

type BoxReply = Pin<Box<dyn Future<Output = Result<Reply, std::convert::Infallible>> + Send>>;

fn answer(open: OpenRequest, reply: Result<Reply, std::convert::Infallible>) -> BoxReply {
    drop(open);
    Box::pin(std::future::ready(reply))
}

/// gRPC requests say so in their content type (`application/grpc`, `application/grpc+proto`, …).
fn is_grpc(headers: &http::HeaderMap) -> bool {
    headers.get(http::header::CONTENT_TYPE).is_some_and(|v| v.as_bytes().starts_with(b"application/grpc"))
}

/// The client's `x-request-id` (at most 128 visible characters), else a new one.
fn request_id(headers: &http::HeaderMap) -> String {
    headers
        .get("x-request-id")
        .and_then(|v| v.to_str().ok())
        .filter(|v| !v.is_empty() && v.len() <= 128)
        .map_or_else(new_request_id, str::to_owned)
}

/// The `grpc-timeout` header, when sent: one that does not parse is INVALID_ARGUMENT on every
/// front door (rather than silently the default deadline).
fn header_timeout(headers: &http::HeaderMap) -> Result<Option<Duration>, Error> {
    headers
        .get("grpc-timeout")
        .map(|v| {
            v.to_str().ok().and_then(parse_grpc_timeout).ok_or_else(|| {
                Error::invalid("grpc-timeout", "must be a gRPC time-out such as `500m` (ms) or `2S` (seconds)")
            })
        })
        .transpose()
}

/// An HTTP call's time-out: `grpc-timeout` (gRPC syntax), else the `timeout` query parameter
/// (`250ms`, `2s`, `1m`, or plain seconds).
fn http_timeout<B>(req: &http::Request<B>) -> Result<Option<Duration>, Error> {
    if let Some(t) = header_timeout(req.headers())? {
        return Ok(Some(t));
    }
    let Some(given) = req.uri().query().and_then(|q| crate::rest::query_param(q, "timeout")) else {
        return Ok(None);
    };
    parse_http_timeout(&given).map(Some).ok_or_else(|| {
        Error::invalid(
            "timeout",
            format!(
                "`{}` is not a time-out; write e.g. `250ms`, `2s`, `1m` or `1.5` (seconds)",
                crate::error::clip(&given, 32)
            ),
        )
    })
}

fn parse_http_timeout(s: &str) -> Option<Duration> {
    let s = s.trim();
    let (number, scale) = if let Some(n) = s.strip_suffix("ms") {
        (n, 1e-3)
    } else if let Some(n) = s.strip_suffix('s') {
        (n, 1.0)
    } else if let Some(n) = s.strip_suffix('m') {
        (n, 60.0)
    } else {
        (s, 1.0)
    };
    let secs = number.trim().parse::<f64>().ok()? * scale;
    (secs.is_finite() && secs > 0.0).then(|| Duration::try_from_secs_f64(secs).ok()).flatten()
}

/// tonic answers a request message over the decoding limit with OUT_OF_RANGE before any
/// handler runs; the gRPC status-code specification says RESOURCE_EXHAUSTED, and clients'
/// retry and alerting rules follow it. No handler of this server answers OUT_OF_RANGE, so a
/// trailers-only OUT_OF_RANGE answer is that refusal: it is rewritten, naming the limit, and
/// counted like any other call.
fn oversized_as_exhausted(reply: Reply, rpc: &'static str, arrived: Instant, config: &TransportConfig) -> Reply {
    let out_of_range = reply
        .headers()
        .get("grpc-status")
        .is_some_and(|v| v.as_bytes() == (tonic::Code::OutOfRange as i32).to_string().as_bytes());
    if !out_of_range {
        return reply;
    }
    let e = Error::MessageTooLarge { limit: config.max_message_bytes };
    tracing::info!(rpc, code = e.code_label(), "request refused: {e}");
    (config.refused)(rpc, &e, arrived.elapsed());
    tonic::Status::from(e).into_http()
}

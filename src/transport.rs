//! The HTTP/2 transport under the gRPC services: accepts TCP connections (optionally TLS,
//! optionally mutual), checks bearer keys, enforces connection limits (streams, header size,
//! keep-alive, idle time-out, a time cap on each call), serves tonic's `Routes` on each
//! connection with hyper, and drains gracefully on shutdown.
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
}

/// Serves `routes` on `listener` until `shutdown` fires, then runs `on_drain`, stops accepting,
/// and waits up to the grace period for open connections to finish their requests.
pub async fn serve(
    listener: TcpListener,
    routes: Routes,
    shutdown: CancellationToken,
    config: TransportConfig,
    on_drain: impl Future<Output = ()>,
) {
    let mut http2 = hyper::server::conn::http2::Builder::new(TokioExecutor::new());
    http2
        .timer(TokioTimer::new())
        .max_concurrent_streams(config.max_concurrent_streams)
        .max_header_list_size(config.max_header_bytes)
        .keep_alive_interval(config.keepalive_interval)
        .keep_alive_timeout(config.keepalive_timeout)
        // A client resetting streams as fast as it opens them ("rapid reset") is cut off.
        .max_pending_accept_reset_streams(Some(64))
        .max_local_error_reset_streams(Some(256));
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
                let (http2, shutdown, config) = (http2.clone(), shutdown.clone(), Arc::clone(&config));
                connections.spawn(async move {
                    match &config.tls {
                        None => serve_connection(stream, svc, &http2, &shutdown, config.idle_timeout, &activity).await,
                        Some(acceptor) => match tokio::time::timeout(TLS_HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await {
                            Ok(Ok(tls)) => serve_connection(tls, svc, &http2, &shutdown, config.idle_timeout, &activity).await,
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
    http2: &hyper::server::conn::http2::Builder<TokioExecutor>,
    shutdown: &CancellationToken,
    idle_timeout: Option<Duration>,
    activity: &Activity,
) where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let peer = svc.peer;
    let conn = http2.serve_connection(TokioIo::new(io), TowerToHyperService::new(svc));
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

    fn call(&mut self, mut req: http::Request<B>) -> Self::Future {
        let arrived = Instant::now();
        let open = OpenRequest::new(&self.activity);
        let rpc = crate::boundary::rpc_label(req.uri().path());
        let authorization = req.headers().get(http::header::AUTHORIZATION).map(http::HeaderValue::as_bytes);
        let verified = match self.config.keys.check(req.uri().path(), authorization) {
            Ok(v) => v,
            Err(e) => {
                tracing::info!(peer = %self.peer, path = %crate::error::clip(req.uri().path(), 96), code = e.code_label(), "request refused: {e}");
                (self.config.refused)(rpc, &e, arrived.elapsed());
                return Box::pin(async move {
                    drop(open);
                    Ok(tonic::Status::from(e).into_http())
                });
            }
        };
        let grpc_timeout =
            req.headers_mut().remove("grpc-timeout").and_then(|v| v.to_str().ok().and_then(parse_grpc_timeout));
        let deadline = Deadline::for_call(arrived, grpc_timeout, self.config.default_timeout, self.config.max_timeout);
        let request_id = req
            .headers()
            .get("x-request-id")
            .and_then(|v| v.to_str().ok())
            .filter(|v| !v.is_empty() && v.len() <= 128)
            .map_or_else(new_request_id, str::to_owned);
        let client = match verified {
            Some(fingerprint) => format!("key:{fingerprint}"),
            None => format!("ip:{}", self.peer.ip()),
        };
        let no_cache = req
            .headers()
            .get_all("cache-control")
            .iter()
            .filter_map(|v| v.to_str().ok())
            .any(|v| v.split(',').any(|d| d.trim().eq_ignore_ascii_case("no-cache")));
        req.extensions_mut().insert(CallInfo { arrived, deadline, client, request_id, peer: self.peer, no_cache });
        let call = self.inner.call(req);
        let config = Arc::clone(&self.config);
        Box::pin(async move {
            let reply = match tokio::time::timeout_at((deadline.at() + BACKSTOP).into(), call).await {
                Ok(Ok(reply)) => Ok(oversized_as_exhausted(reply, rpc, arrived, &config)),
                Ok(Err(never)) => match never {},
                // The handler answers at the deadline itself; this fires when it never ran
                // (the request body never completed).
                Err(_) => {
                    Ok(tonic::Status::from(Error::DeadlineExceeded { stage: "receiving the request" }).into_http())
                }
            };
            drop(open);
            reply
        })
    }
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

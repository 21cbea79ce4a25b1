//! The HTTP/2 transport under the gRPC services: accepts TCP connections, serves tonic's
//! `Routes` on each with hyper, and drains gracefully on shutdown.
//!
//! torchwire serves connections itself (rather than through `tonic::transport::Server`) for one
//! reason: tonic's server applies the client's `grpc-timeout` in a layer outside every user
//! layer and answers CANCELLED when it fires, while gRPC clients and DESIGN.md expect
//! DEADLINE_EXCEEDED. Here, each request's arrival time, peer and `grpc-timeout` are taken
//! into a [`CallInfo`] extension before the routes see the request (and the header is removed),
//! so the handler enforces the deadline itself, measured from arrival.

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tonic::service::Routes;
use tower_service::Service;

use crate::deadline::parse_grpc_timeout;

/// What the transport knows of a call before any service sees it.
#[derive(Debug, Clone, Copy)]
pub struct CallInfo {
    /// When the request headers arrived.
    pub arrived: Instant,
    /// The client's `grpc-timeout`, when it sent a well-formed one.
    pub grpc_timeout: Option<Duration>,
    /// The client's address.
    pub peer: SocketAddr,
}

/// Connection-level settings.
#[derive(Debug, Clone, Copy)]
pub struct TransportConfig {
    /// How long shutdown waits for open requests to finish.
    pub grace: Duration,
    /// Concurrent HTTP/2 streams per connection.
    pub max_concurrent_streams: u32,
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
    let graceful = GracefulShutdown::new();
    let mut http2 = hyper::server::conn::http2::Builder::new(TokioExecutor::new());
    http2.timer(TokioTimer::new()).max_concurrent_streams(config.max_concurrent_streams);
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
                let svc = TowerToHyperService::new(WithCallInfo { inner: routes.clone(), peer });
                let conn = graceful.watch(http2.serve_connection(TokioIo::new(stream), svc));
                tokio::spawn(async move {
                    if let Err(e) = conn.await {
                        tracing::debug!(%peer, error = %e, "connection closed with an error");
                    }
                });
            }
            () = shutdown.cancelled() => break,
        }
    }
    drop(listener);
    on_drain.await;
    tokio::select! {
        () = graceful.shutdown() => tracing::info!("all connections drained"),
        () = tokio::time::sleep(config.grace) => tracing::warn!(grace = ?config.grace, "grace period over; closing remaining connections"),
    }
}

/// Moves `grpc-timeout` (and arrival time and peer) into a [`CallInfo`] extension.
#[derive(Clone)]
struct WithCallInfo<S> {
    inner: S,
    peer: SocketAddr,
}

impl<S, B> Service<http::Request<B>> for WithCallInfo<S>
where
    S: Service<http::Request<B>>,
    S::Future: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<S::Response, S::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: http::Request<B>) -> Self::Future {
        let grpc_timeout =
            req.headers_mut().remove("grpc-timeout").and_then(|v| v.to_str().ok().and_then(parse_grpc_timeout));
        req.extensions_mut().insert(CallInfo { arrived: Instant::now(), grpc_timeout, peer: self.peer });
        Box::pin(self.inner.call(req))
    }
}

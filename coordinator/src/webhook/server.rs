//! The HTTP/1.1 servers of the webhook (over TLS) and of the metrics (plain): an accept loop
//! with bounds on everything, and thin handlers over [`review`](super::review::review) and
//! [`Metrics::encode`].
//!
//! Nothing here can stop the coordinator: a failed handshake, a bad request or a failed accept
//! is logged and only that connection is closed. Bounds: connections at once, TLS handshake
//! time, request head time and size, body size (413 above it) and time, and the lifetime of a
//! kept-alive connection.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::header::{CONTENT_LENGTH, CONTENT_TYPE};
use http::{Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, LengthLimitError, Limited};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;

use super::mutate::InjectionConfig;
use super::review::{Outcome, review};
use crate::metrics::{self, Metrics};

/// Path of the admission endpoint (the `clientConfig.service.path` of the webhook).
pub const MUTATE_PATH: &str = "/mutate";
/// Path of the webhook's health endpoint.
pub const HEALTHZ_PATH: &str = "/healthz";
/// Path of the metrics endpoint.
pub const METRICS_PATH: &str = "/metrics";
/// Largest accepted review body. The API server caps a request at 3 MiB and an object in etcd
/// at 1.5 MiB, so a real pod review fits; above this the answer is 413.
pub const MAX_BODY_BYTES: usize = 3 * 1024 * 1024;
/// Connections served at once; more are closed at accept.
const MAX_CONNECTIONS: usize = 256;
/// Time for a request head (slow clients do not hold a connection forever).
const HEADER_TIMEOUT: Duration = Duration::from_secs(10);
/// Time for a request body.
const BODY_TIMEOUT: Duration = Duration::from_secs(10);
/// Largest request head buffer.
const MAX_HEAD_BYTES: usize = 64 * 1024;
/// A kept-alive connection is closed gracefully after this (the API server reconnects).
const MAX_CONNECTION_AGE: Duration = Duration::from_secs(300);
/// Time for in-flight requests on shutdown.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

type Body = Full<Bytes>;

fn text(status: StatusCode, body: impl Into<Bytes>) -> Response<Body> {
    let mut r = Response::new(Full::new(body.into()));
    *r.status_mut() = status;
    r.headers_mut().insert(
        CONTENT_TYPE,
        http::HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    r
}

fn json(body: Vec<u8>) -> Response<Body> {
    let mut r = Response::new(Full::new(body.into()));
    r.headers_mut().insert(
        CONTENT_TYPE,
        http::HeaderValue::from_static("application/json"),
    );
    r
}

/// Why a body could not be read.
enum BodyError {
    TooLarge,
    TimedOut,
    Failed(String),
}

async fn read_body(req: Request<Incoming>) -> Result<Bytes, BodyError> {
    let declared = req
        .headers()
        .get(CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > MAX_BODY_BYTES as u64) {
        return Err(BodyError::TooLarge);
    }
    let limited = Limited::new(req.into_body(), MAX_BODY_BYTES);
    match tokio::time::timeout(BODY_TIMEOUT, limited.collect()).await {
        Err(_) => Err(BodyError::TimedOut),
        Ok(Ok(collected)) => Ok(collected.to_bytes()),
        Ok(Err(e)) if e.is::<LengthLimitError>() => Err(BodyError::TooLarge),
        Ok(Err(e)) => Err(BodyError::Failed(e.to_string())),
    }
}

/// The webhook's routes: `POST /mutate`, `GET /healthz`.
async fn webhook(
    req: Request<Incoming>,
    injection: Arc<InjectionConfig>,
    metrics: Metrics,
    peer: SocketAddr,
) -> Response<Body> {
    match (req.method(), req.uri().path()) {
        (&Method::GET, HEALTHZ_PATH) => text(StatusCode::OK, "ok\n"),
        (&Method::POST, MUTATE_PATH) => {
            let body = match read_body(req).await {
                Ok(b) => b,
                Err(e) => {
                    metrics.review(Outcome::Error);
                    let (status, msg) = match e {
                        BodyError::TooLarge => (
                            StatusCode::PAYLOAD_TOO_LARGE,
                            format!("review body larger than {MAX_BODY_BYTES} bytes\n"),
                        ),
                        BodyError::TimedOut => (
                            StatusCode::REQUEST_TIMEOUT,
                            "review body not received in time\n".to_owned(),
                        ),
                        BodyError::Failed(e) => (
                            StatusCode::BAD_REQUEST,
                            format!("cannot read the review body: {e}\n"),
                        ),
                    };
                    tracing::warn!(%peer, status = status.as_u16(), "{}", msg.trim_end());
                    return text(status, msg);
                }
            };
            let reviewed = review(&body, &injection);
            metrics.review(reviewed.outcome);
            match reviewed.response {
                Ok(r) => match serde_json::to_vec(&r) {
                    Ok(body) => json(body),
                    Err(e) => text(
                        StatusCode::INTERNAL_SERVER_ERROR,
                        format!("cannot encode the response: {e}\n"),
                    ),
                },
                Err(e) => {
                    let msg = super::tls::error_chain(&e);
                    tracing::warn!(%peer, "bad admission review: {msg}");
                    text(
                        StatusCode::BAD_REQUEST,
                        format!("bad AdmissionReview: {msg}\n"),
                    )
                }
            }
        }
        (_, MUTATE_PATH | HEALTHZ_PATH) => {
            text(StatusCode::METHOD_NOT_ALLOWED, "method not allowed\n")
        }
        _ => text(StatusCode::NOT_FOUND, "not found\n"),
    }
}

/// The metrics route: `GET /metrics`.
async fn metrics_route(req: Request<Incoming>, metrics: Metrics) -> Response<Body> {
    match (req.method(), req.uri().path()) {
        (&Method::GET, METRICS_PATH) => {
            let mut r = text(StatusCode::OK, metrics.encode());
            r.headers_mut().insert(
                CONTENT_TYPE,
                http::HeaderValue::from_static(metrics::CONTENT_TYPE),
            );
            r
        }
        (_, METRICS_PATH) => text(StatusCode::METHOD_NOT_ALLOWED, "method not allowed\n"),
        _ => text(StatusCode::NOT_FOUND, "not found\n"),
    }
}

/// Serves the webhook over TLS on `listener` until `stop`.
pub(crate) async fn serve_webhook(
    listener: TcpListener,
    tls: TlsAcceptor,
    injection: Arc<InjectionConfig>,
    metrics: Metrics,
    stop: CancellationToken,
) {
    let handler = move |req, peer| webhook(req, injection.clone(), metrics.clone(), peer);
    serve("webhook", listener, Some(tls), handler, stop).await;
}

/// Serves the metrics in plain HTTP on `listener` until `stop`.
pub(crate) async fn serve_metrics(
    listener: TcpListener,
    metrics: Metrics,
    stop: CancellationToken,
) {
    let handler = move |req, _peer| metrics_route(req, metrics.clone());
    serve("metrics", listener, None, handler, stop).await;
}

/// The accept loop. Returns when `stop` fires and every connection has ended (or had
/// [`SHUTDOWN_GRACE`] to end).
async fn serve<H, F>(
    name: &'static str,
    listener: TcpListener,
    tls: Option<TlsAcceptor>,
    handler: H,
    stop: CancellationToken,
) where
    H: Fn(Request<Incoming>, SocketAddr) -> F + Clone + Send + Sync + 'static,
    F: Future<Output = Response<Body>> + Send + 'static,
{
    let permits = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    let mut connections = JoinSet::new();
    if let Ok(addr) = listener.local_addr() {
        tracing::info!(listen = %addr, tls = tls.is_some(), "{name} serving");
    }
    loop {
        // Reap finished connections so the set stays as small as the live ones.
        while connections.try_join_next().is_some() {}
        let Some((tcp, peer, permit)) =
            crate::accept::next(&listener, &permits, &stop, name, "connections").await
        else {
            break;
        };
        let handler = handler.clone();
        let tls = tls.clone();
        let stop = stop.clone();
        connections.spawn(async move {
            let _permit = permit;
            match tls {
                None => connection(name, tcp, peer, handler, stop).await,
                Some(tls) => {
                    if let Some(stream) = super::tls::handshake(name, &tls, tcp, peer).await {
                        connection(name, stream, peer, handler, stop).await;
                    }
                }
            }
        });
    }
    drop(listener);
    // Connections see `stop` too and finish their current request.
    let drained = tokio::time::timeout(SHUTDOWN_GRACE * 2, async {
        while connections.join_next().await.is_some() {}
    })
    .await;
    if drained.is_err() {
        connections.abort_all();
    }
    tracing::info!("{name} stopped");
}

/// Serves HTTP/1.1 on one connection until it closes, it is too old, or `stop`.
async fn connection<IO, H, F>(
    name: &'static str,
    io: IO,
    peer: SocketAddr,
    handler: H,
    stop: CancellationToken,
) where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    H: Fn(Request<Incoming>, SocketAddr) -> F + Clone + Send + Sync + 'static,
    F: Future<Output = Response<Body>> + Send + 'static,
{
    let service = service_fn(move |req| {
        let handler = handler.clone();
        async move { Ok::<_, Infallible>(handler(req, peer).await) }
    });
    let conn = http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_TIMEOUT)
        .max_buf_size(MAX_HEAD_BYTES)
        .serve_connection(TokioIo::new(io), service);
    tokio::pin!(conn);
    let result = tokio::select! {
        result = conn.as_mut() => Some(result),
        () = stop.cancelled() => None,
        () = tokio::time::sleep(MAX_CONNECTION_AGE) => None,
    };
    let result = match result {
        Some(r) => r,
        None => {
            conn.as_mut().graceful_shutdown();
            match tokio::time::timeout(SHUTDOWN_GRACE, conn).await {
                Ok(r) => r,
                Err(_) => return,
            }
        }
    };
    if let Err(e) = result {
        // Malformed HTTP, a closed socket, a header timeout: this connection only.
        tracing::debug!(%peer, error = %e, "{name}: connection ended with an error");
    }
}

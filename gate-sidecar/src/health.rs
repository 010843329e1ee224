//! HTTP health endpoints for the kubelet's probes: `GET /livez` answers 200 while the process
//! serves; `GET /readyz` answers 200 once the coordinator has assigned the gate a role (before
//! that every record is held, so the pod is not ready to carry traffic), 503 otherwise. `GET
//! /metrics` serves the gate's Prometheus metrics (see `metrics`).

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::gate::Gate;

/// A probe that does not finish its request in this long is dropped.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);

/// Serves the health endpoints on `listener` until `stop` is cancelled.
pub(crate) async fn serve(listener: TcpListener, gate: Arc<Gate>, stop: CancellationToken) {
    loop {
        let (stream, _) = tokio::select! {
            () = stop.cancelled() => return,
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    tracing::warn!(error = %e, "health listener: accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        let gate = gate.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |req| {
                let gate = gate.clone();
                async move { Ok::<_, Infallible>(answer(&req, &gate)) }
            });
            let conn = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service);
            if let Ok(Err(e)) = tokio::time::timeout(REQUEST_TIMEOUT, conn).await {
                tracing::debug!(error = %e, "health connection failed");
            }
        });
    }
}

fn answer(req: &Request<Incoming>, gate: &Gate) -> Response<Full<Bytes>> {
    if (req.method(), req.uri().path()) == (&Method::GET, "/metrics") {
        let mut response = Response::new(Full::new(Bytes::from(crate::metrics::render(gate))));
        response.headers_mut().insert(
            hyper::header::CONTENT_TYPE,
            hyper::header::HeaderValue::from_static(crate::metrics::CONTENT_TYPE),
        );
        return response;
    }
    let (status, body) = match (req.method(), req.uri().path()) {
        (&Method::GET, "/livez") => (StatusCode::OK, "ok\n".to_owned()),
        (&Method::GET, "/readyz") => match gate.assignment_version() {
            Some(v) => (StatusCode::OK, format!("ready: assignment version {v}\n")),
            None => (
                StatusCode::SERVICE_UNAVAILABLE,
                "not ready: no assignment from the coordinator yet (holding every record)\n"
                    .to_owned(),
            ),
        },
        (&Method::GET, _) => (
            StatusCode::NOT_FOUND,
            "not found: try /livez, /readyz or /metrics\n".to_owned(),
        ),
        _ => (
            StatusCode::METHOD_NOT_ALLOWED,
            "only GET is served\n".to_owned(),
        ),
    };
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    response
}

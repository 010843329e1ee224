//! `Cutover`: the API for orchestrators and people (start, abort, get, list, watch).
//!
//! Requests are checked here (empty names, enum values, setting ranges) so that a bad request
//! is refused with INVALID_ARGUMENT naming the field before the pipeline is even looked up;
//! everything else is decided by the engine.

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use futures::Stream;
use sluice_core::pipeline::Settings;
use sluice_proto::v1::{self, cutover_server::Cutover};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status};

use crate::engine::{Command, EngineHandle, Subscription};

/// The `Cutover` service.
#[derive(Debug, Clone)]
pub(crate) struct CutoverService {
    engine: EngineHandle,
    defaults: Settings,
    stop: CancellationToken,
}

impl CutoverService {
    /// A service feeding `engine`; unset request fields take `defaults`.
    pub(crate) fn new(engine: EngineHandle, defaults: Settings, stop: CancellationToken) -> Self {
        Self {
            engine,
            defaults,
            stop,
        }
    }
}

fn require(field: &str, value: &str) -> Result<(), Status> {
    if value.is_empty() {
        return Err(Status::invalid_argument(format!(
            "{field} must not be empty"
        )));
    }
    Ok(())
}

/// The cutover settings of a request: its fields over the configured defaults.
fn settings_of(req: &v1::StartCutoverRequest, defaults: &Settings) -> Result<Settings, Status> {
    let when = v1::When::try_from(req.when)
        .map_err(|_| Status::invalid_argument(format!("when: unknown value {}", req.when)))?;
    let late_policy = v1::LatePolicy::try_from(req.late_policy).map_err(|_| {
        Status::invalid_argument(format!("late_policy: unknown value {}", req.late_policy))
    })?;
    let settings = Settings {
        margin_ms: req.margin_ms.unwrap_or(defaults.margin_ms),
        drain_lateness_ms: req.drain_lateness_ms.unwrap_or(defaults.drain_lateness_ms),
        min_gates: req.min_gates.unwrap_or(defaults.min_gates),
        max_lag_ms: req.max_lag_ms.unwrap_or(defaults.max_lag_ms),
        prepare_timeout_ms: req
            .prepare_timeout_ms
            .unwrap_or(defaults.prepare_timeout_ms),
        max_attempts: req.max_attempts.unwrap_or(defaults.max_attempts),
        late_policy: late_policy.into(),
        now: when == v1::When::Now,
        ready_timeout_ms: req.ready_timeout_ms.unwrap_or(defaults.ready_timeout_ms),
        force: req.force,
    };
    // The core checks again; checking here refuses bad fields before the pipeline lookup.
    settings
        .validate()
        .map_err(|e| Status::invalid_argument(e.to_string()))?;
    Ok(settings)
}

/// A watcher's response stream: the engine's events, then RESOURCE_EXHAUSTED if the engine
/// ended the feed because it fell behind, or UNAVAILABLE on shutdown.
type WatchStream = Pin<Box<dyn Stream<Item = Result<v1::PipelineEvent, Status>> + Send>>;

struct Feed {
    events: mpsc::Receiver<v1::PipelineEvent>,
    overflowed: Arc<AtomicBool>,
    stop: CancellationToken,
    pipeline: String,
    done: bool,
}

fn watch_stream(sub: Subscription, stop: CancellationToken, pipeline: String) -> WatchStream {
    let feed = Feed {
        events: sub.events,
        overflowed: sub.overflowed,
        stop,
        pipeline,
        done: false,
    };
    Box::pin(futures::stream::unfold(feed, |mut feed| async move {
        if feed.done {
            return None;
        }
        let item = tokio::select! {
            // Drain what is queued before reporting why the feed ended.
            biased;
            ev = feed.events.recv() => match ev {
                Some(ev) => return Some((Ok(ev), feed)),
                None if feed.overflowed.load(Ordering::Acquire) => {
                    Status::resource_exhausted(format!(
                        "watcher of {} fell behind (more than {} events queued); re-watch to \
                         resume from a fresh status",
                        feed.pipeline,
                        crate::engine::WATCHER_QUEUE
                    ))
                }
                None => Status::unavailable("the coordinator is shutting down"),
            },
            () = feed.stop.cancelled() => Status::unavailable("the coordinator is shutting down"),
        };
        feed.done = true;
        Some((Err(item), feed))
    }))
}

#[tonic::async_trait]
impl Cutover for CutoverService {
    async fn start_cutover(
        &self,
        request: Request<v1::StartCutoverRequest>,
    ) -> Result<Response<v1::StartCutoverResponse>, Status> {
        let req = request.into_inner();
        require("pipeline", &req.pipeline)?;
        require("candidate", &req.candidate)?;
        let settings = settings_of(&req, &self.defaults)?;
        tracing::info!(
            pipeline = %req.pipeline, candidate = %req.candidate, ?settings, "cutover requested"
        );
        let status = self
            .engine
            .request(|reply| Command::StartCutover {
                pipeline: req.pipeline,
                candidate: req.candidate,
                settings,
                reply,
            })
            .await
            .map_err(|e| e.to_status())?;
        Ok(Response::new(v1::StartCutoverResponse {
            status: Some(status),
        }))
    }

    async fn abort_cutover(
        &self,
        request: Request<v1::AbortCutoverRequest>,
    ) -> Result<Response<v1::AbortCutoverResponse>, Status> {
        let req = request.into_inner();
        require("pipeline", &req.pipeline)?;
        let reason = if req.reason.is_empty() {
            "no reason given".to_string()
        } else {
            req.reason
        };
        tracing::info!(pipeline = %req.pipeline, %reason, "abort requested");
        let status = self
            .engine
            .request(|reply| Command::Abort {
                pipeline: req.pipeline,
                reason,
                reply,
            })
            .await
            .map_err(|e| e.to_status())?;
        Ok(Response::new(v1::AbortCutoverResponse {
            status: Some(status),
        }))
    }

    async fn get_pipeline(
        &self,
        request: Request<v1::GetPipelineRequest>,
    ) -> Result<Response<v1::PipelineStatus>, Status> {
        let req = request.into_inner();
        require("pipeline", &req.pipeline)?;
        let status = self
            .engine
            .request(|reply| Command::Get {
                pipeline: req.pipeline,
                reply,
            })
            .await
            .map_err(|e| e.to_status())?;
        Ok(Response::new(status))
    }

    async fn list_pipelines(
        &self,
        _request: Request<v1::ListPipelinesRequest>,
    ) -> Result<Response<v1::ListPipelinesResponse>, Status> {
        let pipelines = self
            .engine
            .request(|reply| Command::List { reply })
            .await
            .map_err(|e| e.to_status())?;
        Ok(Response::new(v1::ListPipelinesResponse { pipelines }))
    }

    type WatchPipelineStream = WatchStream;

    async fn watch_pipeline(
        &self,
        request: Request<v1::WatchPipelineRequest>,
    ) -> Result<Response<Self::WatchPipelineStream>, Status> {
        let req = request.into_inner();
        require("pipeline", &req.pipeline)?;
        let sub = self
            .engine
            .request(|reply| Command::Watch {
                pipeline: req.pipeline.clone(),
                reply,
            })
            .await
            .map_err(|e| e.to_status())?;
        Ok(Response::new(watch_stream(
            sub,
            self.stop.clone(),
            req.pipeline,
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unset_fields_take_the_defaults_and_set_ones_override() {
        let defaults = Settings::default();
        let req = v1::StartCutoverRequest {
            pipeline: "p".into(),
            candidate: "c".into(),
            when: v1::When::Now as i32,
            margin_ms: Some(7),
            late_policy: v1::LatePolicy::AdmitAfterDrain as i32,
            ..Default::default()
        };
        let s = settings_of(&req, &defaults).unwrap();
        assert_eq!(
            s,
            Settings {
                margin_ms: 7,
                now: true,
                late_policy: sluice_core::gate::LatePolicy::AdmitAfterDrain,
                ..defaults
            }
        );
    }

    #[test]
    fn out_of_range_fields_are_named() {
        let req = v1::StartCutoverRequest {
            prepare_timeout_ms: Some(0),
            ..Default::default()
        };
        let err = settings_of(&req, &Settings::default()).unwrap_err();
        assert_eq!(err.code(), tonic::Code::InvalidArgument);
        assert!(err.message().contains("prepare_timeout_ms"), "{err}");
        let req = v1::StartCutoverRequest {
            when: 42,
            ..Default::default()
        };
        let err = settings_of(&req, &Settings::default()).unwrap_err();
        assert!(err.message().contains("when"), "{err}");
    }

    #[tokio::test]
    async fn an_overflowed_feed_delivers_what_was_queued_then_resource_exhausted() {
        use futures::StreamExt;

        let (tx, events) = mpsc::channel(4);
        let overflowed = Arc::new(AtomicBool::new(false));
        for at_ms in 0..2 {
            tx.try_send(v1::PipelineEvent {
                at_ms,
                ..Default::default()
            })
            .unwrap();
        }
        overflowed.store(true, Ordering::Release);
        drop(tx);
        let sub = Subscription { events, overflowed };
        let items: Vec<_> = watch_stream(sub, CancellationToken::new(), "ns/p".into())
            .collect()
            .await;
        assert_eq!(items.len(), 3);
        assert_eq!(items[1].as_ref().unwrap().at_ms, 1);
        let err = items[2].as_ref().unwrap_err();
        assert_eq!(err.code(), tonic::Code::ResourceExhausted);
        assert!(err.message().contains("fell behind"), "{err}");
    }

    #[tokio::test]
    async fn a_feed_ends_with_unavailable_on_shutdown() {
        use futures::StreamExt;

        let (_tx, events) = mpsc::channel(4);
        let stop = CancellationToken::new();
        stop.cancel();
        let sub = Subscription {
            events,
            overflowed: Arc::new(AtomicBool::new(false)),
        };
        let items: Vec<_> = watch_stream(sub, stop, "ns/p".into()).collect().await;
        assert_eq!(items.len(), 1);
        assert_eq!(
            items[0].as_ref().unwrap_err().code(),
            tonic::Code::Unavailable
        );
    }
}

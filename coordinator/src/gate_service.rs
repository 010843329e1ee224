//! `GateControl`: one bidirectional stream per gate sidecar.
//!
//! The first report must be a hello; the engine registers the gate and hands back a `watch` of
//! its assignment. A session task then forwards reports to the engine and sends the current
//! assignment, every change, and a heartbeat whenever nothing else was sent for a while. When
//! the gate's side of the stream ends, the gate is detached.

use std::time::Duration;

use sluice_proto::v1::{self, gate_command, gate_control_server::GateControl, gate_report};
use tokio::sync::{mpsc, watch};
use tokio::time::{Instant, MissedTickBehavior};
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status, Streaming};

use crate::engine::{Command, EngineHandle, GateIdent, now_ms};

/// Commands queued for one gate's response stream (assignments are latest-state, so a small
/// queue suffices; a gate that does not read blocks only its own session).
const OUTBOUND_QUEUE: usize = 8;
/// A stream that sends no hello within this long is refused.
const HELLO_TIMEOUT: Duration = Duration::from_secs(30);

/// The `GateControl` service.
#[derive(Debug, Clone)]
pub(crate) struct GateService {
    engine: EngineHandle,
    heartbeat: Duration,
    /// The lease every command grants (`GateCommand.lease_ms`).
    lease: Duration,
    stop: CancellationToken,
}

impl GateService {
    /// A service feeding `engine`, heartbeating idle streams and granting `lease` with every
    /// command; sessions end when `stop` fires.
    pub(crate) fn new(
        engine: EngineHandle,
        heartbeat: Duration,
        lease: Duration,
        stop: CancellationToken,
    ) -> Self {
        Self {
            engine,
            heartbeat,
            lease,
            stop,
        }
    }
}

/// Checks the hello and extracts who the gate is.
fn ident_of(report: Option<v1::GateReport>) -> Result<(GateIdent, v1::GateHello), Status> {
    let hello = match report.and_then(|r| r.kind) {
        Some(gate_report::Kind::Hello(h)) => h,
        Some(gate_report::Kind::Progress(_)) => {
            return Err(Status::invalid_argument(
                "the first report on a GateControl stream must be hello, not progress",
            ));
        }
        Some(gate_report::Kind::Vote(_)) => {
            return Err(Status::invalid_argument(
                "the first report on a GateControl stream must be hello, not vote",
            ));
        }
        None => {
            return Err(Status::invalid_argument(
                "the first report on a GateControl stream must be hello",
            ));
        }
    };
    for (field, value) in [
        ("pipeline", &hello.pipeline),
        ("deployment", &hello.deployment),
        ("gate_id", &hello.gate_id),
    ] {
        if value.is_empty() {
            return Err(Status::invalid_argument(format!(
                "hello.{field} must not be empty"
            )));
        }
    }
    let ident = GateIdent {
        pipeline: hello.pipeline.clone(),
        deployment: hello.deployment.clone(),
        gate: hello.gate_id.clone(),
    };
    Ok((ident, hello))
}

#[tonic::async_trait]
impl GateControl for GateService {
    type AttachStream = ReceiverStream<Result<v1::GateCommand, Status>>;

    async fn attach(
        &self,
        request: Request<Streaming<v1::GateReport>>,
    ) -> Result<Response<Self::AttachStream>, Status> {
        let peer = request.remote_addr();
        let mut inbound = request.into_inner();
        let first = tokio::time::timeout(HELLO_TIMEOUT, inbound.message())
            .await
            .map_err(|_| {
                Status::deadline_exceeded(format!(
                    "no hello within {}",
                    humantime::format_duration(HELLO_TIMEOUT)
                ))
            })??;
        let (ident, hello) = ident_of(first)?;
        let attached = self
            .engine
            .request(|reply| Command::Attach {
                ident: ident.clone(),
                progress: hello.progress.unwrap_or_default(),
                held_version: hello.assignment_version,
                reply,
            })
            .await
            .map_err(|e| e.to_status())?;
        tracing::debug!(
            pipeline = %ident.pipeline, gate = %ident.gate, conn = attached.conn, ?peer,
            "gate stream opened"
        );
        let (out, rx) = mpsc::channel(OUTBOUND_QUEUE);
        let session = Session {
            engine: self.engine.clone(),
            ident,
            conn: attached.conn,
            heartbeat: self.heartbeat,
            lease_ms: u64::try_from(self.lease.as_millis()).unwrap_or(u64::MAX),
            stop: self.stop.clone(),
            out,
        };
        tokio::spawn(session.run(attached.assignments, inbound));
        Ok(Response::new(ReceiverStream::new(rx)))
    }
}

/// One open gate stream.
struct Session {
    engine: EngineHandle,
    ident: GateIdent,
    conn: u64,
    heartbeat: Duration,
    lease_ms: u64,
    stop: CancellationToken,
    out: mpsc::Sender<Result<v1::GateCommand, Status>>,
}

/// How a session ended.
enum End {
    /// The gate went away or ended its side: nothing more to send.
    Quiet,
    /// End the response stream with this status.
    With(Status),
}

impl Session {
    async fn run(
        self,
        assignments: watch::Receiver<v1::GateAssignment>,
        inbound: Streaming<v1::GateReport>,
    ) {
        let end = self.serve(assignments, inbound).await;
        if let End::With(status) = end {
            // Best effort: a gate that does not read would otherwise keep the session alive.
            let _ = self.out.try_send(Err(status));
        }
        let detach = Command::Detach {
            pipeline: self.ident.pipeline.clone(),
            gate: self.ident.gate.clone(),
            conn: self.conn,
        };
        // The engine may already be gone (shutdown); then there is nothing to detach from.
        let _ = self.engine.send(detach).await;
    }

    async fn send(&self, kind: gate_command::Kind) -> bool {
        let cmd = v1::GateCommand {
            kind: Some(kind),
            lease_ms: self.lease_ms,
        };
        self.out.send(Ok(cmd)).await.is_ok()
    }

    async fn serve(
        &self,
        mut assignments: watch::Receiver<v1::GateAssignment>,
        mut inbound: Streaming<v1::GateReport>,
    ) -> End {
        let first = *assignments.borrow_and_update();
        if !self.send(gate_command::Kind::Assign(first)).await {
            return End::Quiet;
        }
        let mut heartbeat =
            tokio::time::interval_at(Instant::now() + self.heartbeat, self.heartbeat);
        heartbeat.set_missed_tick_behavior(MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                () = self.stop.cancelled() => {
                    return End::With(Status::unavailable("the coordinator is shutting down"));
                }
                () = self.out.closed() => return End::Quiet,
                changed = assignments.changed() => {
                    if changed.is_err() {
                        if self.stop.is_cancelled() {
                            return End::With(Status::unavailable(
                                "the coordinator is shutting down",
                            ));
                        }
                        return End::With(Status::aborted(
                            "replaced by a newer GateControl stream of the same gate",
                        ));
                    }
                    let next = *assignments.borrow_and_update();
                    if !self.send(gate_command::Kind::Assign(next)).await {
                        return End::Quiet;
                    }
                    heartbeat.reset();
                }
                _ = heartbeat.tick() => {
                    let beat = v1::Heartbeat { now_ms: now_ms() };
                    if !self.send(gate_command::Kind::Heartbeat(beat)).await {
                        return End::Quiet;
                    }
                }
                // `Streaming::message` keeps its state in the stream, so losing the race to
                // another branch loses no report.
                report = inbound.message() => match report {
                    Ok(Some(report)) => {
                        if let Some(end) = self.report(report).await {
                            return end;
                        }
                    }
                    Ok(None) => return End::Quiet,
                    Err(status) => {
                        tracing::debug!(
                            pipeline = %self.ident.pipeline, gate = %self.ident.gate,
                            %status, "gate stream failed"
                        );
                        return End::Quiet;
                    }
                },
            }
        }
    }

    /// Forwards one report; `Some` ends the session.
    async fn report(&self, report: v1::GateReport) -> Option<End> {
        let (pipeline, gate, conn) = (
            self.ident.pipeline.clone(),
            self.ident.gate.clone(),
            self.conn,
        );
        let cmd = match report.kind {
            Some(gate_report::Kind::Progress(progress)) => Command::Progress {
                pipeline,
                gate,
                conn,
                progress,
            },
            Some(gate_report::Kind::Vote(vote)) => Command::Vote {
                pipeline,
                gate,
                conn,
                vote,
            },
            Some(gate_report::Kind::Hello(_)) => {
                return Some(End::With(Status::invalid_argument(
                    "hello may only be the first report on a GateControl stream",
                )));
            }
            None => {
                // A report kind from a newer sidecar: ignoring it keeps old coordinators usable.
                tracing::debug!(pipeline = %pipeline, gate = %gate, "ignoring unknown report");
                return None;
            }
        };
        match self.engine.send(cmd).await {
            Ok(()) => None,
            Err(e) => Some(End::With(e.to_status())),
        }
    }
}

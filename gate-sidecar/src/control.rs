//! The control client: the gate's `GateControl/Attach` stream to the coordinator.
//!
//! One session = connect, send `GateHello`, then apply every `Assign` (answering prepares with
//! a `GateVote`) and send `GateProgress` every progress interval. When the session ends for any
//! reason the gate keeps its last assignment — an active gate keeps admitting, a standby keeps
//! dropping, a prepared gate keeps holding — and the task reconnects with exponential backoff.
//!
//! Every command renews the gate's lease (see `lease`); when it runs out the gate fences itself
//! and this task ends the session and attaches afresh, since the coordinator sends an assignment
//! only on a change or an attach.
//!
//! With an `https://` coordinator every connection is TLS, verified against the configured CA
//! file (read again for each connection, so a rotated CA is used from the next reconnect on)
//! or the system roots. A TLS failure is one more reason for a session to end: same backoff,
//! same kept state.

use std::sync::Arc;
use std::time::Duration;

use sluice_core::gate::Applied;
use sluice_proto::convert::assignment_from_wire;
use sluice_proto::v1::{self, gate_command, gate_control_client::GateControlClient, gate_report};
use thiserror::Error;
use tokio::sync::mpsc;
use tokio::time::MissedTickBehavior;
use tokio_stream::wrappers::ReceiverStream;

use crate::config::{CoordinatorEndpoint, CoordinatorEndpointError};
use crate::gate::Gate;

/// Reports queued for the coordinator; progress is skipped (not queued) when it is full.
const REPORT_QUEUE: usize = 16;
/// First reconnect delay; doubles up to the configured maximum.
const INITIAL_BACKOFF: Duration = Duration::from_millis(100);
/// Limit on establishing a TCP (+ TLS) + HTTP/2 connection to the coordinator.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// HTTP/2 pings detect a coordinator that vanished without closing the connection.
const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(10);
const KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(10);

/// Settings of the control task.
#[derive(Debug, Clone)]
pub(crate) struct ControlSettings {
    /// Coordinator URL and TLS trust (validated).
    pub coordinator: CoordinatorEndpoint,
    /// Interval of progress reports.
    pub progress_interval: Duration,
    /// Largest delay between reconnects.
    pub max_backoff: Duration,
}

/// Why a control session ended.
#[derive(Debug, Error)]
enum ControlError {
    #[error("cannot set up the connection to the coordinator")]
    Endpoint(#[source] CoordinatorEndpointError),
    #[error("cannot connect to the coordinator")]
    Connect(#[source] tonic::transport::Error),
    #[error("the coordinator refused the attach")]
    Attach(#[source] tonic::Status),
    #[error("the control stream failed")]
    Stream(#[source] tonic::Status),
    #[error("the coordinator ended the control stream")]
    Ended,
    #[error("the report stream to the coordinator closed")]
    ReportsClosed,
    #[error("the gate's lease ran out: attaching afresh to be assigned again")]
    Fenced,
}

impl ControlError {
    fn describe(&self) -> String {
        crate::describe(self)
    }
}

/// Runs control sessions forever (until the task is aborted on shutdown).
pub(crate) async fn run(gate: Arc<Gate>, settings: ControlSettings) {
    let cap = settings.max_backoff.max(Duration::from_millis(1));
    let mut backoff = INITIAL_BACKOFF.min(cap);
    loop {
        let mut attached = false;
        let err = session(&gate, &settings, &mut attached).await;
        if attached {
            // The coordinator was reachable: retry soon rather than after a long backoff.
            backoff = INITIAL_BACKOFF.min(cap);
        }
        tracing::warn!(
            coordinator = %settings.coordinator,
            error = %err.describe(),
            retry_in = %humantime::format_duration(backoff),
            assignment_version = gate.assignment_version(),
            "control stream down; keeping the last known gate state"
        );
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(cap);
        tracing::info!(coordinator = %settings.coordinator, "reconnecting to the coordinator");
    }
}

/// One attach; returns why it ended. Sets `attached` once the coordinator accepted the stream.
async fn session(gate: &Gate, settings: &ControlSettings, attached: &mut bool) -> ControlError {
    match attach(gate, settings, attached).await {
        Ok(never) => match never {},
        Err(e) => e,
    }
}

async fn attach(
    gate: &Gate,
    settings: &ControlSettings,
    attached: &mut bool,
) -> Result<std::convert::Infallible, ControlError> {
    let endpoint = settings
        .coordinator
        .endpoint()
        .map_err(ControlError::Endpoint)?
        .connect_timeout(CONNECT_TIMEOUT)
        .tcp_nodelay(true)
        .http2_keep_alive_interval(KEEPALIVE_INTERVAL)
        .keep_alive_timeout(KEEPALIVE_TIMEOUT)
        .keep_alive_while_idle(true);
    let channel = endpoint.connect().await.map_err(ControlError::Connect)?;
    let mut client = GateControlClient::new(channel);

    let (reports, rx) = mpsc::channel(REPORT_QUEUE);
    let identity = gate.identity();
    let hello = v1::GateHello {
        pipeline: identity.pipeline.clone(),
        deployment: identity.deployment.clone(),
        gate_id: identity.gate_id.clone(),
        assignment_version: gate.assignment_version(),
        progress: Some(gate.progress()),
    };
    reports
        .send(report(gate_report::Kind::Hello(hello)))
        .await
        .map_err(|_| ControlError::ReportsClosed)?;
    let mut commands = client
        .attach(ReceiverStream::new(rx))
        .await
        .map_err(ControlError::Attach)?
        .into_inner();
    *attached = true;
    tracing::info!(
        coordinator = %settings.coordinator,
        gate = %identity.gate_id,
        assignment_version = gate.assignment_version(),
        "attached to the coordinator"
    );

    let mut tick = tokio::time::interval(settings.progress_interval);
    tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let mut fences = gate.watch_fences();
    fences.borrow_and_update();
    loop {
        tokio::select! {
            // A fenced gate has no assignment and the coordinator sends one only on a change
            // or an attach: attach afresh.
            _ = fences.changed() => return Err(ControlError::Fenced),
            cmd = commands.message() => match cmd {
                Ok(Some(cmd)) => on_command(gate, cmd, &reports).await?,
                Ok(None) => return Err(ControlError::Ended),
                Err(status) => return Err(ControlError::Stream(status)),
            },
            _ = tick.tick() => {
                let progress = report(gate_report::Kind::Progress(gate.progress()));
                // Progress is a snapshot the next one supersedes: skip it rather than queue
                // without bound behind a slow coordinator.
                match reports.try_send(progress) {
                    Ok(()) => {}
                    Err(mpsc::error::TrySendError::Full(_)) => {
                        tracing::debug!("report queue full; skipping a progress report");
                    }
                    Err(mpsc::error::TrySendError::Closed(_)) => {
                        return Err(ControlError::ReportsClosed);
                    }
                }
            }
        }
    }
}

async fn on_command(
    gate: &Gate,
    cmd: v1::GateCommand,
    reports: &mpsc::Sender<v1::GateReport>,
) -> Result<(), ControlError> {
    gate.renew_lease(cmd.lease_ms);
    match cmd.kind {
        Some(gate_command::Kind::Assign(wire)) => {
            let assignment = match assignment_from_wire(&wire) {
                Ok(a) => a,
                Err(e) => {
                    tracing::error!(error = %e, version = wire.version, "ignoring invalid assignment");
                    return Ok(());
                }
            };
            if let Applied::Current { vote: Some(vote) } = gate.apply(assignment) {
                tracing::info!(
                    epoch = vote.epoch,
                    yes = vote.yes,
                    high_mark_ms = vote.high_mark,
                    "voting on prepared barrier"
                );
                let vote = v1::GateVote {
                    epoch: vote.epoch,
                    yes: vote.yes,
                    high_mark_ms: vote.high_mark,
                };
                // A vote must not be skipped: wait for room in the report queue.
                reports
                    .send(report(gate_report::Kind::Vote(vote)))
                    .await
                    .map_err(|_| ControlError::ReportsClosed)?;
            }
        }
        Some(gate_command::Kind::Heartbeat(_)) => {}
        None => tracing::debug!("ignoring a command without a kind"),
    }
    Ok(())
}

fn report(kind: gate_report::Kind) -> v1::GateReport {
    v1::GateReport { kind: Some(kind) }
}

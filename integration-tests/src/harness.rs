//! What the process-level scenario and the real-Flink test share: starting the coordinator and
//! a sidecar with the test's settings, reaching the `Cutover` API, and following a pipeline's
//! `Watch` stream across coordinator restarts.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result};
use sluice_proto::v1::cutover_client::CutoverClient;
use sluice_proto::v1::{
    GetPipelineRequest, Phase, PipelineEvent, PipelineStatus, WatchPipelineRequest, pipeline_event,
};
use tonic::transport::Channel as GrpcChannel;

use crate::procs::{Proc, binary, free_port, wait_for_tcp, wait_for_unix};

/// Wall clock ms since the Unix epoch (the coordinator stamps events with the same clock).
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// The coordinator's barrier settings for a test.
#[derive(Debug, Clone, Copy)]
pub struct Barrier {
    /// `--margin`, ms.
    pub margin_ms: i64,
    /// `--drain-lateness`, ms.
    pub drain_lateness_ms: i64,
    /// `--max-lag`, ms.
    pub max_lag_ms: i64,
    /// `--prepare-timeout`.
    pub prepare_timeout: Duration,
}

impl Barrier {
    /// Fast settings for tests of one part (a 500 ms margin, no drain lateness, 2 s of lag
    /// allowed, 3 s for votes).
    pub fn quick() -> Self {
        Self {
            margin_ms: 500,
            drain_lateness_ms: 0,
            max_lag_ms: 2_000,
            prepare_timeout: Duration::from_secs(3),
        }
    }
}

/// Waits (10 s at most) until `deployment` is `pipeline`'s active deployment.
pub async fn wait_until_active(port: u16, pipeline: &str, deployment: &str) -> Result<()> {
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while pipeline_status(port, pipeline)
        .await
        .map(|s| s.active)
        .ok()
        .as_deref()
        != Some(deployment)
    {
        anyhow::ensure!(
            std::time::Instant::now() < deadline,
            "{deployment} never became active"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Ok(())
}

/// A real coordinator on a free loopback port with a state file in `dir`, fast timers, logging
/// to `dir/coordinator.log`.
pub struct Coordinator {
    /// The process.
    pub proc: Proc,
    /// Its gRPC port on 127.0.0.1.
    pub port: u16,
    args: Vec<String>,
    log: PathBuf,
}

impl Coordinator {
    /// Starts it and waits until it listens.
    pub fn start(dir: &Path, barrier: Barrier) -> Result<Self> {
        Self::start_logging_to(dir, barrier, &dir.join("coordinator.log"))
    }

    /// [`Coordinator::start`], logging to `log` (say `/dev/full`, where every write fails).
    pub fn start_logging_to(dir: &Path, barrier: Barrier, log: &Path) -> Result<Self> {
        let port = free_port()?;
        let args: Vec<String> = [
            "--listen",
            &format!("127.0.0.1:{port}"),
            "--state-file",
            &dir.join("state.json").display().to_string(),
            "--margin",
            &format!("{}ms", barrier.margin_ms),
            "--drain-lateness",
            &format!("{}ms", barrier.drain_lateness_ms),
            "--max-lag",
            &format!("{}ms", barrier.max_lag_ms),
            "--prepare-timeout",
            &format!("{}ms", barrier.prepare_timeout.as_millis()),
            "--tick-interval",
            "20ms",
            "--status-interval",
            "250ms",
            "--heartbeat-interval",
            "250ms",
        ]
        .map(String::from)
        .to_vec();
        let log = log.to_path_buf();
        let proc = Proc::spawn("coordinator", &binary("coordinator")?, &args, &log)?;
        wait_for_tcp(([127, 0, 0, 1], port).into(), Duration::from_secs(20))?;
        Ok(Self {
            proc,
            port,
            args,
            log,
        })
    }

    /// `kill -9`, down for `down_for`, then started again on the same state file and port.
    pub fn crash_and_restart(&mut self, down_for: Duration) -> Result<()> {
        self.proc.kill();
        std::thread::sleep(down_for);
        self.proc = Proc::spawn(
            "coordinator",
            &binary("coordinator")?,
            &self.args,
            &self.log,
        )?;
        wait_for_tcp(([127, 0, 0, 1], self.port).into(), Duration::from_secs(20))
    }
}

/// A real sidecar for `deployment` of `pipeline`, dialing the coordinator on `port`, with its
/// socket at `dir/<deployment>.sock` (unless `extra` names another), fast reconnects and
/// progress, `extra` flags last (a later flag wins). Logs to `dir/<log_name>.log`. Returns the
/// process and the socket path.
pub fn start_sidecar(
    dir: &Path,
    port: u16,
    pipeline: &str,
    deployment: &str,
    log_name: &str,
    extra: &[String],
) -> Result<(Proc, PathBuf)> {
    let log = dir.join(format!("{log_name}.log"));
    start_sidecar_logging_to(dir, port, pipeline, deployment, (log_name, &log), extra)
}

/// [`start_sidecar`], logging to `log.1` (say `/dev/full`, where every write fails) under the
/// process name `log.0`.
pub fn start_sidecar_logging_to(
    dir: &Path,
    port: u16,
    pipeline: &str,
    deployment: &str,
    log: (&str, &Path),
    extra: &[String],
) -> Result<(Proc, PathBuf)> {
    let socket = dir.join(format!("{deployment}.sock"));
    let mut args: Vec<String> = [
        "--coordinator",
        &format!("http://127.0.0.1:{port}"),
        "--pipeline",
        pipeline,
        "--deployment",
        deployment,
        "--gate-id",
        &format!("{deployment}-tm-0"),
        "--socket",
        &socket.display().to_string(),
        "--reconnect-max-backoff",
        "200ms",
        "--progress-interval",
        "50ms",
    ]
    .map(String::from)
    .to_vec();
    args.extend(extra.iter().cloned());
    // A `--socket` in `extra` wins (two sidecars of one deployment, as two pods).
    let socket = extra
        .iter()
        .rposition(|a| a == "--socket")
        .and_then(|i| extra.get(i + 1))
        .map_or(socket, PathBuf::from);
    let proc = Proc::spawn(log.0, &binary("gate-sidecar")?, &args, log.1)?;
    wait_for_unix(&socket, Duration::from_secs(20))?;
    Ok((proc, socket))
}

/// A `Cutover` client, retrying for up to 20 s while the coordinator (re)starts.
pub async fn cutover_client(port: u16) -> Result<CutoverClient<GrpcChannel>> {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        match CutoverClient::connect(format!("http://127.0.0.1:{port}")).await {
            Ok(c) => return Ok(c),
            Err(e) if Instant::now() > deadline => {
                return Err(e).context("cannot reach coordinator");
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    }
}

/// The pipeline's status now.
pub async fn pipeline_status(port: u16, pipeline: &str) -> Result<PipelineStatus> {
    Ok(cutover_client(port)
        .await?
        .get_pipeline(GetPipelineRequest {
            pipeline: pipeline.into(),
        })
        .await?
        .into_inner())
}

/// A phase transition seen on the Watch stream.
#[derive(Debug, Clone)]
pub struct PhaseSeen {
    /// The phase.
    pub phase: Phase,
    /// Its epoch.
    pub epoch: u64,
    /// The barrier, if any.
    pub barrier: Option<i64>,
    /// Coordinator wall clock ms.
    pub at_ms: u64,
    /// Why.
    pub reason: String,
}

impl PhaseSeen {
    /// The phase an event reports (a phase change, or the phase in a status), if any.
    pub fn of(ev: &PipelineEvent) -> Option<Self> {
        Some(match &ev.kind {
            Some(pipeline_event::Kind::PhaseChange(p)) => PhaseSeen {
                phase: p.phase(),
                epoch: p.epoch,
                barrier: p.barrier_ms,
                at_ms: ev.at_ms,
                reason: p.reason.clone(),
            },
            Some(pipeline_event::Kind::Status(s)) => PhaseSeen {
                phase: s.phase(),
                epoch: s.epoch,
                barrier: s.barrier_ms,
                at_ms: ev.at_ms,
                reason: "status".into(),
            },
            _ => return None,
        })
    }

    /// Appends `self` unless it repeats the last phase and epoch.
    pub fn push_if_new(self, seen: &mut Vec<PhaseSeen>) {
        if seen
            .last()
            .is_none_or(|l| (l.phase, l.epoch) != (self.phase, self.epoch))
        {
            seen.push(self);
        }
    }
}

/// Writes the phases as report lines, each with how long it lasted.
pub fn write_phases(f: &mut std::fmt::Formatter<'_>, phases: &[PhaseSeen]) -> std::fmt::Result {
    writeln!(f, "  phases (coordinator wall clock):")?;
    let mut phases = phases.iter().peekable();
    while let Some(p) = phases.next() {
        let lasted = phases.peek().map_or(String::new(), |n| {
            format!(" for {} ms", n.at_ms.saturating_sub(p.at_ms))
        });
        writeln!(
            f,
            "    {:<10} epoch {:<2}{lasted}  ({})",
            format!("{:?}", p.phase),
            p.epoch,
            p.reason
        )?;
    }
    Ok(())
}

/// Follows `pipeline`'s Watch stream forever, reconnecting across coordinator restarts, and
/// hands every event to `on_event`. Run it in a task and abort it when done.
pub async fn watch(port: u16, pipeline: &str, mut on_event: impl FnMut(PipelineEvent)) {
    loop {
        let Ok(mut c) = cutover_client(port).await else {
            continue;
        };
        let request = WatchPipelineRequest {
            pipeline: pipeline.into(),
        };
        let Ok(stream) = c.watch_pipeline(request).await else {
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        };
        let mut stream = stream.into_inner();
        while let Ok(Some(ev)) = stream.message().await {
            on_event(ev);
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

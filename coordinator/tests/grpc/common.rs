//! Test harness: a real coordinator on 127.0.0.1:0 and fake gates speaking GateControl.

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use clap::Parser;
use sluice_coordinator::Config;
use sluice_proto::v1::{
    self, cutover_client::CutoverClient, gate_command, gate_control_client::GateControlClient,
    gate_report, pipeline_event,
};
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::Channel;
use tonic::{Status, Streaming};

/// How long any single expectation may take before the test fails.
pub const WAIT: Duration = Duration::from_secs(10);

/// A coordinator running in this process.
pub struct TestServer {
    pub addr: SocketAddr,
    shutdown: Option<oneshot::Sender<()>>,
    task: JoinHandle<Result<(), sluice_coordinator::Error>>,
}

impl TestServer {
    /// Starts a coordinator on `state_file` with fast timers; `extra` are more flags.
    pub async fn start(state_file: &Path, extra: &[&str]) -> Self {
        let state = state_file.to_str().unwrap();
        let mut args = vec![
            "coordinator",
            "--listen",
            "127.0.0.1:0",
            "--state-file",
            state,
            "--tick-interval",
            "10ms",
            "--heartbeat-interval",
            "200ms",
            "--status-interval",
            "200ms",
        ];
        args.extend_from_slice(extra);
        let config = Config::try_parse_from(args).unwrap();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (tx, rx) = oneshot::channel::<()>();
        let task = tokio::spawn(sluice_coordinator::run(config, listener, async move {
            let _ = rx.await;
        }));
        Self {
            addr,
            shutdown: Some(tx),
            task,
        }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub async fn channel(&self) -> Channel {
        Channel::from_shared(self.url())
            .unwrap()
            .connect()
            .await
            .unwrap()
    }

    pub async fn cutover(&self) -> CutoverClient<Channel> {
        CutoverClient::new(self.channel().await)
    }

    /// Shuts the coordinator down and returns what `run` returned.
    pub async fn stop(mut self) -> Result<(), sluice_coordinator::Error> {
        let _ = self.shutdown.take().unwrap().send(());
        tokio::time::timeout(WAIT, &mut self.task)
            .await
            .expect("coordinator did not stop in time")
            .unwrap()
    }
}

/// Progress with one live channel.
pub fn progress(high: i64, watermark: i64) -> v1::GateProgress {
    v1::GateProgress {
        high_mark_ms: Some(high),
        watermark_ms: Some(watermark),
        channels: 1,
        idle_channels: 0,
        counters: Some(v1::GateCounters {
            received: 10,
            admitted: 9,
            dropped_shadow: 1,
            ..Default::default()
        }),
        watermark_source: v1::WatermarkSource::Explicit as i32,
    }
}

/// A gate speaking GateControl by hand.
pub struct FakeGate {
    pub id: String,
    pub high: i64,
    reports: mpsc::Sender<v1::GateReport>,
    commands: Streaming<v1::GateCommand>,
}

impl FakeGate {
    /// Opens a stream with this first report.
    pub async fn open(
        server: &TestServer,
        first: v1::GateReport,
    ) -> Result<(mpsc::Sender<v1::GateReport>, Streaming<v1::GateCommand>), Status> {
        let mut client = GateControlClient::new(server.channel().await);
        let (tx, rx) = mpsc::channel(16);
        tx.send(first).await.unwrap();
        let commands = client.attach(ReceiverStream::new(rx)).await?.into_inner();
        Ok((tx, commands))
    }

    /// Attaches a gate of `deployment` to `pipeline`.
    pub async fn attach(
        server: &TestServer,
        pipeline: &str,
        deployment: &str,
        id: &str,
        p: v1::GateProgress,
    ) -> Result<Self, Status> {
        let hello = v1::GateReport {
            kind: Some(gate_report::Kind::Hello(v1::GateHello {
                pipeline: pipeline.into(),
                deployment: deployment.into(),
                gate_id: id.into(),
                assignment_version: None,
                progress: Some(p),
            })),
        };
        let (reports, commands) = Self::open(server, hello).await?;
        Ok(Self {
            id: id.into(),
            high: p.high_mark_ms.unwrap_or(i64::MIN),
            reports,
            commands,
        })
    }

    /// The next command, whatever its kind.
    pub async fn next_command(&mut self) -> v1::GateCommand {
        let id = self.id.clone();
        tokio::time::timeout(WAIT, self.commands.message())
            .await
            .unwrap_or_else(|_| panic!("{id}: no command within {WAIT:?}"))
            .unwrap_or_else(|s| panic!("{id}: stream failed: {s}"))
            .unwrap_or_else(|| panic!("{id}: stream ended"))
    }

    /// The next assignment (heartbeats skipped).
    pub async fn next_assignment(&mut self) -> v1::GateAssignment {
        let id = self.id.clone();
        tokio::time::timeout(WAIT, async {
            loop {
                let cmd = self
                    .commands
                    .message()
                    .await
                    .unwrap_or_else(|s| panic!("{id}: stream failed: {s}"))
                    .unwrap_or_else(|| panic!("{id}: stream ended"));
                if let Some(gate_command::Kind::Assign(a)) = cmd.kind {
                    return a;
                }
            }
        })
        .await
        .unwrap_or_else(|_| panic!("{id}: no assignment within {WAIT:?}"))
    }

    /// Skips assignments until one matches.
    pub async fn wait_for(
        &mut self,
        what: &str,
        pred: impl Fn(&v1::GateAssignment) -> bool,
    ) -> v1::GateAssignment {
        let id = self.id.clone();
        tokio::time::timeout(WAIT, async {
            loop {
                let a = self.next_assignment().await;
                if pred(&a) {
                    return a;
                }
            }
        })
        .await
        .unwrap_or_else(|_| panic!("{id}: no assignment {what} within {WAIT:?}"))
    }

    /// Waits for a prepare of `epoch` (any epoch if `None`) and returns it.
    pub async fn wait_prepared(&mut self, epoch: Option<u64>) -> v1::GateAssignment {
        self.wait_for("PREPARED", |a| {
            a.phase == v1::Phase::Prepared as i32 && epoch.is_none_or(|e| a.epoch == e)
        })
        .await
    }

    pub async fn send(&self, kind: gate_report::Kind) {
        self.reports
            .send(v1::GateReport { kind: Some(kind) })
            .await
            .unwrap();
    }

    /// Votes like a real gate: yes iff its high mark is below the barrier.
    pub async fn vote_on(&self, a: &v1::GateAssignment) {
        let yes = self.high < a.barrier_ms.unwrap();
        self.vote(a.epoch, yes, Some(self.high)).await;
    }

    pub async fn vote(&self, epoch: u64, yes: bool, high_mark_ms: Option<i64>) {
        self.send(gate_report::Kind::Vote(v1::GateVote {
            epoch,
            yes,
            high_mark_ms,
        }))
        .await;
    }

    pub async fn progress(&mut self, p: v1::GateProgress) {
        self.high = self.high.max(p.high_mark_ms.unwrap_or(i64::MIN));
        self.send(gate_report::Kind::Progress(p)).await;
    }
}

/// A WatchPipeline stream.
pub struct Watch {
    stream: Streaming<v1::PipelineEvent>,
}

impl Watch {
    pub async fn open(server: &TestServer, pipeline: &str) -> Self {
        let stream = server
            .cutover()
            .await
            .watch_pipeline(v1::WatchPipelineRequest {
                pipeline: pipeline.into(),
            })
            .await
            .unwrap()
            .into_inner();
        Self { stream }
    }

    pub async fn next(&mut self) -> v1::PipelineEvent {
        tokio::time::timeout(WAIT, self.stream.message())
            .await
            .expect("no watch event in time")
            .expect("watch stream failed")
            .expect("watch stream ended")
    }

    /// Every phase change up to and including the first with phase `until`.
    pub async fn phases_until(&mut self, until: v1::Phase) -> Vec<v1::PhaseChange> {
        let mut seen = Vec::new();
        loop {
            if let Some(pipeline_event::Kind::PhaseChange(c)) = self.next().await.kind {
                let done = c.phase == until as i32;
                seen.push(c);
                if done {
                    return seen;
                }
            }
        }
    }
}

pub fn phase_of(c: &v1::PhaseChange) -> v1::Phase {
    v1::Phase::try_from(c.phase).unwrap()
}

pub fn start_now(pipeline: &str, candidate: &str, margin_ms: i64) -> v1::StartCutoverRequest {
    v1::StartCutoverRequest {
        pipeline: pipeline.into(),
        candidate: candidate.into(),
        when: v1::When::Now as i32,
        margin_ms: Some(margin_ms),
        ..Default::default()
    }
}

pub async fn get(server: &TestServer, pipeline: &str) -> v1::PipelineStatus {
    server
        .cutover()
        .await
        .get_pipeline(v1::GetPipelineRequest {
            pipeline: pipeline.into(),
        })
        .await
        .unwrap()
        .into_inner()
}

/// Attaches `blue-1` (blue, which becomes active) then `green-1` (green), both at high mark
/// 1000 and watermark 900.
pub async fn blue_and_green(server: &TestServer, pipeline: &str) -> (FakeGate, FakeGate) {
    let blue = FakeGate::attach(server, pipeline, "blue", "blue-1", progress(1_000, 900))
        .await
        .unwrap();
    let green = FakeGate::attach(server, pipeline, "green", "green-1", progress(1_000, 900))
        .await
        .unwrap();
    (blue, green)
}

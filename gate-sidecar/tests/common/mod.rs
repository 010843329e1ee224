//! Test harness: the real sidecar library on temporary Unix sockets, a tiny fake coordinator
//! (a `GateControl` server on 127.0.0.1:0 that sends the assignments a test tells it to, and
//! records every report) and a frame-protocol client.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context as _, bail};
use clap::Parser as _;
use futures::{SinkExt as _, StreamExt as _};
use sluice_gate_sidecar::{Config, Listeners, SidecarError, Sink};
use sluice_proto::framing::{FrameCodec, FrameError};
use sluice_proto::v1::gate_control_server::{GateControl, GateControlServer};
use sluice_proto::v1::{
    self, ClientFrame, GateAssignment, GateCommand, GateReport, ServerFrame, client_frame,
    gate_command, gate_report, server_frame,
};
use tokio::io::AsyncWriteExt as _;
use tokio::net::{TcpListener, UnixListener, UnixStream};
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
use tokio_stream::wrappers::{ReceiverStream, TcpListenerStream};
use tokio_util::codec::Framed;
use tonic::{Request, Response, Status, Streaming};

pub const PIPELINE: &str = "payments/fraud";
pub const DEPLOYMENT: &str = "fraud-v1";
pub const GATE_ID: &str = "gate-0";
/// How long a test waits for something that must happen.
pub const PATIENCE: Duration = Duration::from_secs(10);

/// Logs to the test output when `RUST_LOG` is set.
pub fn init_tracing() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
}

// ---------------------------------------------------------------------------------------------
// Fake coordinator

#[derive(Default)]
struct FakeState {
    /// Each report with the number of the attach (stream) it came on, counting from 0.
    reports: Mutex<Vec<(usize, GateReport)>>,
    attaches: std::sync::atomic::AtomicUsize,
    /// The lease every command grants (0: none); with one, idle streams get heartbeats.
    lease_ms: std::sync::atomic::AtomicU64,
    assignment: Mutex<Option<GateAssignment>>,
    streams: Mutex<Vec<mpsc::Sender<Result<GateCommand, Status>>>>,
}

#[derive(Clone)]
struct FakeService(Arc<FakeState>);

#[tonic::async_trait]
impl GateControl for FakeService {
    type AttachStream = ReceiverStream<Result<GateCommand, Status>>;

    async fn attach(
        &self,
        request: Request<Streaming<GateReport>>,
    ) -> Result<Response<Self::AttachStream>, Status> {
        let mut inbound = request.into_inner();
        let (tx, rx) = mpsc::channel(64);
        // Like the real coordinator: the current assignment goes out on attach.
        let current = *self.0.assignment.lock().unwrap();
        let lease_ms = self.0.lease_ms.load(std::sync::atomic::Ordering::SeqCst);
        if let Some(a) = current {
            tx.send(Ok(assign(a, lease_ms))).await.unwrap();
        }
        if lease_ms > 0 {
            // Like the real coordinator: heartbeats keep the lease while nothing else is sent.
            let beats = tx.clone();
            tokio::spawn(async move {
                loop {
                    tokio::time::sleep(Duration::from_millis(lease_ms / 4)).await;
                    let beat = GateCommand {
                        lease_ms,
                        kind: Some(gate_command::Kind::Heartbeat(v1::Heartbeat { now_ms: 0 })),
                    };
                    if beats.send(Ok(beat)).await.is_err() {
                        return;
                    }
                }
            });
        }
        self.0.streams.lock().unwrap().push(tx);
        let state = self.0.clone();
        let attach = state
            .attaches
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        tokio::spawn(async move {
            while let Ok(Some(report)) = inbound.message().await {
                state.reports.lock().unwrap().push((attach, report));
            }
        });
        Ok(Response::new(ReceiverStream::new(rx)))
    }
}

fn assign(a: GateAssignment, lease_ms: u64) -> GateCommand {
    GateCommand {
        lease_ms,
        kind: Some(gate_command::Kind::Assign(a)),
    }
}

/// A `GateControl` server standing in for the coordinator.
pub struct FakeCoordinator {
    pub addr: SocketAddr,
    state: Arc<FakeState>,
    stop: Option<oneshot::Sender<()>>,
    server: Option<JoinHandle<()>>,
}

impl FakeCoordinator {
    /// Starts on a fresh loopback port.
    pub async fn start(initial: Option<GateAssignment>) -> Self {
        Self::start_on("127.0.0.1:0".parse().unwrap(), initial).await
    }

    /// Starts on `addr` (retrying while a previous server still holds the port).
    pub async fn start_on(addr: SocketAddr, initial: Option<GateAssignment>) -> Self {
        let listener = {
            let mut tries = 0;
            loop {
                match TcpListener::bind(addr).await {
                    Ok(l) => break l,
                    Err(e) if tries < 50 => {
                        tries += 1;
                        let _ = e;
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                    Err(e) => panic!("cannot bind the fake coordinator on {addr}: {e}"),
                }
            }
        };
        let addr = listener.local_addr().unwrap();
        let state = Arc::new(FakeState::default());
        *state.assignment.lock().unwrap() = initial;
        let (stop, stopped) = oneshot::channel::<()>();
        let service = GateControlServer::new(FakeService(state.clone()));
        let server = tokio::spawn(async move {
            tonic::transport::Server::builder()
                .add_service(service)
                .serve_with_incoming_shutdown(TcpListenerStream::new(listener), async {
                    let _ = stopped.await;
                })
                .await
                .unwrap();
        });
        Self {
            addr,
            state,
            stop: Some(stop),
            server: Some(server),
        }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Makes `a` the current assignment and sends it on every open stream.
    pub async fn set_assignment(&self, a: GateAssignment) {
        *self.state.assignment.lock().unwrap() = Some(a);
        let lease_ms = self
            .state
            .lease_ms
            .load(std::sync::atomic::Ordering::SeqCst);
        let streams = self.state.streams.lock().unwrap().clone();
        for tx in streams {
            let _ = tx.send(Ok(assign(a, lease_ms))).await;
        }
    }

    /// Grants `lease_ms` with every command from now on (and heartbeats streams that attach
    /// from now on).
    pub fn set_lease(&self, lease_ms: u64) {
        self.state
            .lease_ms
            .store(lease_ms, std::sync::atomic::Ordering::SeqCst);
    }

    /// Every report received so far.
    pub fn reports(&self) -> Vec<GateReport> {
        let reports = self.state.reports.lock().unwrap();
        reports.iter().map(|(_, r)| r.clone()).collect()
    }

    /// How many streams have attached so far.
    pub fn attaches(&self) -> usize {
        self.state
            .attaches
            .load(std::sync::atomic::Ordering::SeqCst)
    }

    /// Progress reports that came on the `first`-th attach (counting from 0) or a later one.
    pub fn progress_since_attach(&self, first: usize) -> Vec<v1::GateProgress> {
        let reports = self.state.reports.lock().unwrap();
        reports
            .iter()
            .filter(|(attach, _)| *attach >= first)
            .filter_map(|(_, r)| match &r.kind {
                Some(gate_report::Kind::Progress(p)) => Some(*p),
                _ => None,
            })
            .collect()
    }

    pub fn hellos(&self) -> Vec<v1::GateHello> {
        self.reports()
            .into_iter()
            .filter_map(|r| match r.kind {
                Some(gate_report::Kind::Hello(h)) => Some(h),
                _ => None,
            })
            .collect()
    }

    pub fn votes(&self) -> Vec<v1::GateVote> {
        self.reports()
            .into_iter()
            .filter_map(|r| match r.kind {
                Some(gate_report::Kind::Vote(v)) => Some(v),
                _ => None,
            })
            .collect()
    }

    pub fn progress(&self) -> Vec<v1::GateProgress> {
        self.reports()
            .into_iter()
            .filter_map(|r| match r.kind {
                Some(gate_report::Kind::Progress(p)) => Some(p),
                _ => None,
            })
            .collect()
    }

    /// Waits until `check` holds for this coordinator (polling).
    pub async fn wait_until(&self, what: &str, check: impl Fn(&FakeCoordinator) -> bool) {
        let deadline = tokio::time::Instant::now() + PATIENCE;
        while !check(self) {
            assert!(
                tokio::time::Instant::now() < deadline,
                "timed out waiting for: {what}; reports: {:?}",
                self.reports()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Breaks every control stream with an error and stops the server; returns its address.
    pub async fn kill(mut self) -> SocketAddr {
        let streams = std::mem::take(&mut *self.state.streams.lock().unwrap());
        for tx in streams {
            let _ = tx
                .send(Err(Status::unavailable("coordinator going away")))
                .await;
        }
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(server) = self.server.take() {
            // Graceful shutdown waits for open connections; do not let a test hang on it.
            if tokio::time::timeout(Duration::from_secs(5), server)
                .await
                .is_err()
            {
                eprintln!("fake coordinator did not stop gracefully");
            }
        }
        self.addr
    }
}

impl Drop for FakeCoordinator {
    fn drop(&mut self) {
        if let Some(server) = self.server.take() {
            server.abort();
        }
    }
}

/// A URL nothing listens on (a port bound and released at once).
pub fn dead_coordinator() -> (String, SocketAddr) {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    drop(l);
    (format!("http://{addr}"), addr)
}

fn assignment(
    version: u64,
    epoch: u64,
    role: v1::GateRole,
    phase: v1::Phase,
    barrier_ms: Option<i64>,
) -> GateAssignment {
    GateAssignment {
        version,
        epoch,
        role: role as i32,
        phase: phase as i32,
        barrier_ms,
        floor_ms: None,
        late_policy: v1::LatePolicy::Drop as i32,
        kept_floor_ms: None,
        kept_barrier_ms: None,
    }
}

pub fn active(version: u64, epoch: u64) -> GateAssignment {
    assignment(
        version,
        epoch,
        v1::GateRole::Active,
        v1::Phase::Steady,
        None,
    )
}

pub fn standby(version: u64) -> GateAssignment {
    assignment(version, 0, v1::GateRole::Standby, v1::Phase::Steady, None)
}

pub fn outgoing(version: u64, epoch: u64, barrier: i64, committed: bool) -> GateAssignment {
    let phase = if committed {
        v1::Phase::Committed
    } else {
        v1::Phase::Prepared
    };
    assignment(version, epoch, v1::GateRole::Outgoing, phase, Some(barrier))
}

// ---------------------------------------------------------------------------------------------
// The sidecar under test

/// A running sidecar with a file sink, on a temporary Unix socket.
pub struct Sidecar {
    pub dir: tempfile::TempDir,
    pub socket: PathBuf,
    pub out: PathBuf,
    /// The health endpoints (`/livez`, `/readyz`) on 127.0.0.1.
    pub health: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<Result<(), SidecarError>>>,
}

/// The test sidecar's configuration: socket `dir/gate.sock`, file sink `dir/out.jsonl`, fast
/// progress and reconnects, `extra` flags last (a later flag wins).
pub fn config(dir: &std::path::Path, coordinator: &str, extra: &[&str]) -> Config {
    let socket = dir.join("gate.sock");
    let out = dir.join("out.jsonl");
    let sink = format!("file:{}", out.display());
    let mut args: Vec<String> = [
        "gate-sidecar",
        "--pipeline",
        PIPELINE,
        "--deployment",
        DEPLOYMENT,
        "--gate-id",
        GATE_ID,
        "--coordinator",
        coordinator,
        "--socket",
        socket.to_str().unwrap(),
        "--sink",
        &sink,
        "--progress-interval",
        "50ms",
        "--reconnect-max-backoff",
        "200ms",
        "--shutdown-grace",
        "2s",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    args.extend(extra.iter().map(|s| s.to_string()));
    Config::try_parse_from(args).expect("test flags parse")
}

impl Sidecar {
    /// Starts the sidecar with the embedded file sink.
    pub async fn start(coordinator: &str, extra: &[&str]) -> Self {
        init_tracing();
        let dir = tempfile::tempdir().unwrap();
        let config = config(dir.path(), coordinator, extra);
        let mut listeners = Listeners::bind(&config).await.expect("bind");
        let health = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let health_addr = health.local_addr().unwrap();
        listeners.health = Some(health);
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(sluice_gate_sidecar::run(config, listeners, async {
            let _ = stopped.await;
        }));
        Self::started(dir, health_addr, stop, task)
    }

    /// Starts the sidecar with a custom sink.
    pub async fn start_with_sink<S: Sink>(coordinator: &str, extra: &[&str], sink: S) -> Self {
        init_tracing();
        let dir = tempfile::tempdir().unwrap();
        let config = config(dir.path(), coordinator, extra);
        let health = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let health_addr = health.local_addr().unwrap();
        let listeners = Listeners {
            unix: Some(UnixListener::bind(&config.socket).unwrap()),
            tcp: None,
            health: Some(health),
            kafka: None,
        };
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(sluice_gate_sidecar::run_with_sink(
            config,
            listeners,
            sink,
            async {
                let _ = stopped.await;
            },
        ));
        Self::started(dir, health_addr, stop, task)
    }

    fn started(
        dir: tempfile::TempDir,
        health: SocketAddr,
        stop: oneshot::Sender<()>,
        task: JoinHandle<Result<(), SidecarError>>,
    ) -> Self {
        Self {
            socket: dir.path().join("gate.sock"),
            out: dir.path().join("out.jsonl"),
            health,
            dir,
            stop: Some(stop),
            task: Some(task),
        }
    }

    /// A new channel (not yet said Hello).
    pub async fn connect(&self) -> Client {
        let stream = UnixStream::connect(&self.socket).await.unwrap();
        Client {
            framed: Framed::new(stream, FrameCodec::default()),
        }
    }

    /// A channel that has said Hello as `channel`.
    pub async fn channel(&self, channel: &str) -> Client {
        let mut c = self.connect().await;
        c.hello(channel).await;
        c
    }

    /// The JSON lines written by the file sink so far.
    pub fn lines(&self) -> Vec<serde_json::Value> {
        match std::fs::read_to_string(&self.out) {
            Ok(s) => s
                .lines()
                .map(|l| serde_json::from_str(l).expect("each line is JSON"))
                .collect(),
            Err(_) => Vec::new(),
        }
    }

    /// Event times of the lines written so far, in file order.
    pub fn written_times(&self) -> Vec<i64> {
        self.lines()
            .iter()
            .map(|l| l["event_time_ms"].as_i64().unwrap())
            .collect()
    }

    /// Status and body of `GET /readyz`.
    pub async fn readyz(&self) -> (u16, String) {
        http_get(self.health, "GET", "/readyz").await
    }

    /// Waits until `/readyz` answers 200 (the coordinator assigned a role); returns its body.
    pub async fn wait_ready(&self) -> String {
        let deadline = tokio::time::Instant::now() + PATIENCE;
        loop {
            let (status, body) = self.readyz().await;
            if status == 200 {
                return body;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "never ready: {body}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Waits for `run` to return by itself (no shutdown asked).
    pub async fn finished(mut self) -> Result<(), SidecarError> {
        tokio::time::timeout(PATIENCE, self.task.take().unwrap())
            .await
            .expect("sidecar stops by itself in time")
            .expect("sidecar task did not panic")
    }

    /// Triggers shutdown and waits for `run` to return.
    pub async fn stop(mut self) -> Result<(), SidecarError> {
        let _ = self.stop.take().unwrap().send(());
        tokio::time::timeout(PATIENCE, self.task.take().unwrap())
            .await
            .expect("sidecar stops in time")
            .expect("sidecar task did not panic")
    }
}

impl Drop for Sidecar {
    fn drop(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}

/// The two halves of a channel to the sidecar's socket that has said Hello as `channel`, for
/// tests that write from one task while another reads.
pub type SplitChannel = (
    tokio_util::codec::FramedWrite<
        tokio::net::unix::OwnedWriteHalf,
        FrameCodec<ClientFrame, ServerFrame>,
    >,
    tokio_util::codec::FramedRead<
        tokio::net::unix::OwnedReadHalf,
        FrameCodec<ClientFrame, ServerFrame>,
    >,
);

/// Connects to `socket` and says Hello as `channel`; returns the write and read halves.
pub async fn split_channel(socket: &std::path::Path, channel: &str) -> SplitChannel {
    let (read, write) = UnixStream::connect(socket).await.unwrap().into_split();
    let mut tx = tokio_util::codec::FramedWrite::new(write, FrameCodec::default());
    let rx = tokio_util::codec::FramedRead::new(read, FrameCodec::default());
    tx.send(ClientFrame {
        kind: Some(client_frame::Kind::Hello(v1::Hello {
            pipeline: PIPELINE.into(),
            deployment: DEPLOYMENT.into(),
            channel_id: channel.into(),
            protocol_version: 1,
        })),
    })
    .await
    .unwrap();
    (tx, rx)
}

/// One HTTP/1.1 request; returns the status code and the body.
pub async fn http_get(addr: SocketAddr, method: &str, path: &str) -> (u16, String) {
    use tokio::io::AsyncReadExt as _;
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(
        format!("{method} {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes(),
    )
    .await
    .unwrap();
    let mut text = String::new();
    s.read_to_string(&mut text).await.unwrap();
    let status = text[9..12].parse().unwrap();
    let body = text.split("\r\n\r\n").nth(1).unwrap_or_default().to_owned();
    (status, body)
}

// ---------------------------------------------------------------------------------------------
// Frame-protocol client

pub struct Client {
    pub framed: Framed<UnixStream, FrameCodec<ClientFrame, ServerFrame>>,
}

/// One record with event time `ts`, key `k{ts}`, value `v{ts}`, default topic.
pub fn record(ts: i64) -> v1::Record {
    v1::Record {
        key: format!("k{ts}").into_bytes().into(),
        value: format!("v{ts}").into_bytes().into(),
        headers: vec![],
        event_time_ms: ts,
        topic: String::new(),
        partition: None,
    }
}

impl Client {
    pub async fn send(&mut self, kind: client_frame::Kind) {
        self.framed
            .send(ClientFrame { kind: Some(kind) })
            .await
            .expect("send frame");
    }

    pub async fn hello_as(
        &mut self,
        pipeline: &str,
        deployment: &str,
        channel: &str,
        version: u32,
    ) {
        self.send(client_frame::Kind::Hello(v1::Hello {
            pipeline: pipeline.into(),
            deployment: deployment.into(),
            channel_id: channel.into(),
            protocol_version: version,
        }))
        .await;
    }

    pub async fn hello(&mut self, channel: &str) {
        self.hello_as(PIPELINE, DEPLOYMENT, channel, 1).await;
    }

    pub async fn records(&mut self, times: &[i64]) {
        self.send_records(times.iter().map(|t| record(*t)).collect())
            .await;
    }

    pub async fn send_records(&mut self, records: Vec<v1::Record>) {
        self.send(client_frame::Kind::Records(v1::Records { records }))
            .await;
    }

    pub async fn flush(&mut self, seq: u64) {
        self.send(client_frame::Kind::Flush(v1::Flush { seq }))
            .await;
    }

    pub async fn write_raw(&mut self, bytes: &[u8]) {
        let io = self.framed.get_mut();
        io.write_all(bytes).await.unwrap();
        io.flush().await.unwrap();
    }

    /// The next frame from the sidecar: `Ok(None)` when it closed the connection, `Err` when
    /// nothing came within `within`.
    pub async fn next(&mut self, within: Duration) -> anyhow::Result<Option<ServerFrame>> {
        match tokio::time::timeout(within, self.framed.next()).await {
            Err(_) => bail!("no frame within {within:?}"),
            Ok(None) => Ok(None),
            Ok(Some(Ok(f))) => Ok(Some(f)),
            // A reset after the sidecar closed counts as closed.
            Ok(Some(Err(FrameError::Io(_)))) => Ok(None),
            Ok(Some(Err(e))) => Err(e).context("bad frame from the sidecar"),
        }
    }

    pub async fn expect_ack(&mut self, seq: u64) -> v1::FlushAck {
        match self.next(PATIENCE).await.expect("a frame").map(|f| f.kind) {
            Some(Some(server_frame::Kind::FlushAck(ack))) => {
                assert_eq!(ack.seq, seq, "acks come in order");
                ack
            }
            other => panic!("expected FlushAck {seq}, got {other:?}"),
        }
    }

    pub async fn expect_error(&mut self) -> v1::Error {
        match self.next(PATIENCE).await.expect("a frame").map(|f| f.kind) {
            Some(Some(server_frame::Kind::Error(e))) => e,
            other => panic!("expected an Error frame, got {other:?}"),
        }
    }

    /// Asserts the sidecar sends nothing for `quiet`.
    pub async fn expect_silence(&mut self, quiet: Duration) {
        if let Ok(frame) = self.next(quiet).await {
            panic!("expected silence, got {frame:?}");
        }
    }

    /// Asserts the sidecar closed the connection.
    pub async fn expect_closed(&mut self) {
        match self.next(PATIENCE).await {
            Ok(None) => {}
            other => panic!("expected the channel to be closed, got {other:?}"),
        }
    }
}

//! Liveness under unlucky timing (issue 9), with the real `coordinator` and `gate-sidecar`
//! binaries: each test is one way a cutover used to stall for the closed-channel expiry (10
//! minutes by default, left at its default here), commit with green far behind, or move its
//! barrier far ahead. Clients stream records stamped with the wall clock, as a live job does.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail};
use sluice_integration_tests::client::Channel;
use sluice_integration_tests::harness::{
    Barrier, Coordinator, cutover_client, now_ms, pipeline_status, start_sidecar,
};
use sluice_integration_tests::procs::Proc;
use sluice_proto::v1::{Phase, PipelineStatus, Record, Records, StartCutoverRequest, When};
use tokio::io::AsyncWriteExt as _;
use tokio::net::UnixStream;
use tokio::task::JoinHandle;

const PIPELINE: &str = "shop/orders";
const BLUE: &str = "orders-v1";
const GREEN: &str = "orders-v2";
/// Well within the closed-channel expiry (10 min) a stalled cutover would wait for.
const PATIENCE: Duration = Duration::from_secs(30);

fn barrier(margin_ms: i64) -> Barrier {
    Barrier {
        margin_ms,
        drain_lateness_ms: 0,
        max_lag_ms: 1_000,
        prepare_timeout: Duration::from_secs(3),
    }
}

/// A sidecar for `deployment` writing admitted records to `dir/<deployment>.jsonl`.
fn sidecar(dir: &Path, port: u16, deployment: &str) -> Result<(Proc, PathBuf)> {
    let out = dir.join(format!("{deployment}.jsonl"));
    start_sidecar(
        dir,
        port,
        PIPELINE,
        deployment,
        deployment,
        &["--sink".into(), format!("file:{}", out.display())],
    )
}

/// A sink subtask streaming live records (event time = wall clock − `behind`) every 20 ms,
/// with a watermark and a flush after each batch, until stopped; reconnects if its sidecar
/// goes away. `behind` may change while it runs (a job catching up).
struct Subtask {
    stop: Arc<AtomicBool>,
    behind_ms: Arc<AtomicI64>,
    task: JoinHandle<()>,
}

impl Subtask {
    fn start(socket: PathBuf, deployment: &'static str, channel: &str, behind_ms: i64) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let behind = Arc::new(AtomicI64::new(behind_ms));
        let (s, b, channel) = (stop.clone(), behind.clone(), channel.to_owned());
        let task = tokio::spawn(async move {
            let mut n = 0u64;
            while !s.load(Ordering::Relaxed) {
                let Ok(mut ch) = Channel::open(&socket, PIPELINE, deployment, &channel).await
                else {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                };
                while !s.load(Ordering::Relaxed) {
                    let ts = now_ms() as i64 - b.load(Ordering::Relaxed);
                    let records = (0..5)
                        .map(|i| {
                            n += 1;
                            record(ts - i, &format!("{channel}-{n}"))
                        })
                        .collect();
                    let sent = async {
                        ch.records(Records { records }).await?;
                        ch.watermark(ts - 100).await?;
                        ch.flush().await
                    };
                    if sent.await.is_err() {
                        break;
                    }
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            }
        });
        Self {
            stop,
            behind_ms: behind,
            task,
        }
    }

    async fn stop(self) {
        self.stop.store(true, Ordering::Relaxed);
        let _ = self.task.await;
    }
}

fn record(ts: i64, value: &str) -> Record {
    Record {
        key: b"k".to_vec().into(),
        value: value.as_bytes().to_vec().into(),
        event_time_ms: ts,
        ..Default::default()
    }
}

async fn start_cutover(
    port: u16,
    when: When,
    force: bool,
) -> Result<PipelineStatus, tonic::Status> {
    let mut c = cutover_client(port).await.expect("coordinator reachable");
    c.start_cutover(StartCutoverRequest {
        pipeline: PIPELINE.into(),
        candidate: GREEN.into(),
        when: when as i32,
        force,
        ..Default::default()
    })
    .await
    .map(|r| r.into_inner().status.unwrap_or_default())
}

/// Polls until the pipeline reaches `phase`; fails with its last status after `within`.
async fn wait_phase(port: u16, phase: Phase, within: Duration) -> Result<PipelineStatus> {
    let deadline = Instant::now() + within;
    loop {
        let s = pipeline_status(port, PIPELINE).await?;
        if s.phase() == phase {
            return Ok(s);
        }
        if Instant::now() > deadline {
            bail!("not {phase:?} within {within:?}: {s:?}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Waits until both deployments' gates have attached and reported a watermark.
async fn both_attached(port: u16) -> Result<()> {
    let deadline = Instant::now() + PATIENCE;
    loop {
        let s = pipeline_status(port, PIPELINE).await;
        if let Ok(s) = &s
            && [BLUE, GREEN].iter().all(|d| {
                s.gates.iter().any(|g| {
                    g.deployment == *d
                        && g.connected
                        && g.progress
                            .as_ref()
                            .is_some_and(|p| p.watermark_ms.is_some())
                })
            })
        {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("gates did not attach: {s:?}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Bad clients of `socket`: Hello then close, Hello twice, Hello then a truncated frame.
async fn bad_connections(socket: &Path, deployment: &str) -> Result<()> {
    let ch = Channel::open(socket, PIPELINE, deployment, "bad-close").await?;
    drop(ch);
    let mut ch = Channel::open(socket, PIPELINE, deployment, "bad-hello").await?;
    ch.hello_again().await.ok();
    drop(ch);
    let mut raw = UnixStream::connect(socket).await?;
    let hello = sluice_integration_tests::client::hello_frame(PIPELINE, deployment, "bad-cut");
    raw.write_all(&hello).await?;
    // A frame that announces 100 bytes and brings 3.
    raw.write_all(&[100, 1, 2, 3]).await?;
    raw.shutdown().await?;
    drop(raw);
    tokio::time::sleep(Duration::from_millis(300)).await;
    Ok(())
}

struct World {
    dir: tempfile::TempDir,
    coordinator: Coordinator,
    blue: (Proc, PathBuf),
    green: (Proc, PathBuf),
}

impl World {
    fn start(margin_ms: i64) -> Result<Self> {
        let dir = tempfile::Builder::new()
            .prefix("sluice-liveness-")
            .tempdir()?;
        let coordinator = Coordinator::start(dir.path(), barrier(margin_ms))?;
        let blue = sidecar(dir.path(), coordinator.port, BLUE)?;
        let green = sidecar(dir.path(), coordinator.port, GREEN)?;
        Ok(Self {
            dir,
            coordinator,
            blue,
            green,
        })
    }

    fn port(&self) -> u16 {
        self.coordinator.port
    }

    /// Kills blue's sidecar `-9` and starts it again on the same socket and files.
    fn restart_blue(&mut self) -> Result<()> {
        self.blue.0.kill();
        self.blue = sidecar(self.dir.path(), self.port(), BLUE)?;
        Ok(())
    }

    /// Keeps the work directory when a test fails, and names it.
    fn keep_on_failure<T>(self, r: Result<T>) -> T {
        match r {
            Ok(v) => v,
            Err(e) => {
                let dir = self.dir.keep();
                panic!("{e:#}\nlogs kept in {}", dir.display());
            }
        }
    }
}

/// Issue 9 item 1: connections that said Hello and failed (or just closed) used to count as
/// closed channels with no watermark, and readiness waited for the closed-channel expiry.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_that_fail_before_speaking_hold_nothing_up() {
    let world = World::start(200).unwrap();
    let r = async {
        let b = Subtask::start(world.blue.1.clone(), BLUE, "b0", 0);
        let g = Subtask::start(world.green.1.clone(), GREEN, "g0", 0);
        both_attached(world.port()).await?;
        bad_connections(&world.blue.1, BLUE).await?;
        bad_connections(&world.green.1, GREEN).await?;
        let started = Instant::now();
        start_cutover(world.port(), When::Ready, false).await?;
        let done = wait_phase(world.port(), Phase::Completed, PATIENCE).await?;
        let took = started.elapsed();
        b.stop().await;
        g.stop().await;
        assert_eq!(done.active, GREEN);
        for gate in &done.gates {
            let p = gate.progress.as_ref().context("progress")?;
            assert_eq!(p.channels, 1, "only the good channel counts: {gate:?}");
        }
        println!("completed {took:?} after the request, bad connections on both sides");
        Ok(())
    }
    .await;
    world.keep_on_failure(r);
}

/// Item 2: a channel that finished (final `i64::MAX` watermark, FlushAck, closed) came back
/// after a sidecar `kill -9` as "closed, watermark unknown" and held readiness and the drain.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_finished_channel_stays_finished_across_a_sidecar_restart() {
    let mut world = World::start(200).unwrap();
    let r = async {
        let g = Subtask::start(world.green.1.clone(), GREEN, "g0", 0);
        let mut done = Channel::open(&world.blue.1, PIPELINE, BLUE, "b-done").await?;
        let ts = now_ms() as i64;
        done.records(Records {
            records: vec![record(ts, "last")],
        })
        .await?;
        done.watermark(i64::MAX).await?;
        done.flush().await?;
        drop(done);
        both_attached(world.port()).await.ok();
        tokio::time::sleep(Duration::from_millis(300)).await;
        world.restart_blue()?;
        let started = Instant::now();
        start_cutover(world.port(), When::Ready, false).await?;
        let status = wait_phase(world.port(), Phase::Completed, PATIENCE).await?;
        g.stop().await;
        let blue_gate = status
            .gates
            .iter()
            .find(|g| g.deployment == BLUE)
            .context("blue gate")?;
        assert_eq!(
            blue_gate.progress.as_ref().map(|p| p.channels),
            Some(0),
            "the finished channel is not restored: {blue_gate:?}"
        );
        println!("completed {:?} after the request", started.elapsed());
        Ok(())
    }
    .await;
    world.keep_on_failure(r);
}

/// Item 3: with blue's sidecar down, readiness used to look only at connected gates and prepared
/// at once although green was far behind; now it waits, and says for what.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readiness_waits_while_the_active_deployment_is_down() {
    let mut world = World::start(200).unwrap();
    let r = async {
        let b = Subtask::start(world.blue.1.clone(), BLUE, "b0", 0);
        let g = Subtask::start(world.green.1.clone(), GREEN, "g0", 15_000);
        both_attached(world.port()).await?;
        world.blue.0.kill();
        tokio::time::sleep(Duration::from_millis(500)).await;
        start_cutover(world.port(), When::Ready, false).await?;
        tokio::time::sleep(Duration::from_secs(2)).await;
        let s = pipeline_status(world.port(), PIPELINE).await?;
        assert_eq!(s.phase(), Phase::Waiting, "{s:?}");
        assert!(
            s.waiting_for
                .contains("orders-v1-tm-0 of orders-v1 is not connected"),
            "{s:?}"
        );
        // Blue is back; green is still 15 s behind: it waits, and says so.
        world.blue = sidecar(world.dir.path(), world.port(), BLUE)?;
        tokio::time::sleep(Duration::from_secs(2)).await;
        let s = pipeline_status(world.port(), PIPELINE).await?;
        assert_eq!(s.phase(), Phase::Waiting, "{s:?}");
        assert!(s.waiting_for.contains("behind"), "{s:?}");
        // Green catches up: the cutover goes through.
        g.behind_ms.store(0, Ordering::Relaxed);
        wait_phase(world.port(), Phase::Completed, PATIENCE).await?;
        b.stop().await;
        g.stop().await;
        Ok(())
    }
    .await;
    world.keep_on_failure(r);
}

/// Items 4 and 5: a coordinator restarted while waiting (or prepared) used to choose the barrier
/// from the gates that re-attached first, or from the old barrier plus the margin. Now it waits
/// for every registered gate and takes their high marks as they are: with blue re-attaching
/// last, the first attempt after the restart commits, and the barrier is the current high mark
/// plus the margin.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_a_coordinator_restart_the_barrier_covers_every_gate() {
    let margin = 20_000;
    let mut world = World::start(margin).unwrap();
    let r = async {
        let b = Subtask::start(world.blue.1.clone(), BLUE, "b0", 0);
        let g = Subtask::start(world.green.1.clone(), GREEN, "g0", 10_000);
        both_attached(world.port()).await?;
        start_cutover(world.port(), When::Ready, false).await?;
        tokio::time::sleep(Duration::from_millis(500)).await;
        assert_eq!(
            pipeline_status(world.port(), PIPELINE).await?.phase(),
            Phase::Waiting
        );
        // The coordinator dies while waiting; blue's sidecar is down when it comes back, so
        // green re-attaches first. Meanwhile green has caught up.
        world.blue.0.kill();
        world
            .coordinator
            .crash_and_restart(Duration::from_millis(300))?;
        g.behind_ms.store(0, Ordering::Relaxed);
        tokio::time::sleep(Duration::from_secs(2)).await;
        let s = pipeline_status(world.port(), PIPELINE).await?;
        assert_eq!(s.phase(), Phase::Waiting, "without blue's high mark: {s:?}");
        world.blue = sidecar(world.dir.path(), world.port(), BLUE)?;
        let before = now_ms() as i64;
        let done = wait_phase(
            world.port(),
            Phase::Completed,
            PATIENCE + Duration::from_secs(25),
        )
        .await?;
        b.stop().await;
        g.stop().await;
        // One prepare in all (epochs count attempts): blue never had to vote no.
        assert_eq!(done.epoch, 1, "blue never voted no: {done:?}");
        let t = done.barrier_ms.context("barrier")?;
        assert!(
            t <= before + margin + 11_000,
            "barrier {t} is not the high mark plus the margin ({before} + {margin}; blue's \
             ceiling is up to 10 s above its high mark)"
        );
        Ok(())
    }
    .await;
    world.keep_on_failure(r);
}

/// Item 6: a cutover `now` to a deployment no gate attached as (a typo) used to be accepted,
/// and the output from the barrier on went nowhere.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_now_cutover_to_an_unknown_deployment_is_refused() {
    let world = World::start(200).unwrap();
    let r = async {
        let b = Subtask::start(world.blue.1.clone(), BLUE, "b0", 0);
        let g = Subtask::start(world.green.1.clone(), GREEN, "g0", 0);
        both_attached(world.port()).await?;
        let mut c = cutover_client(world.port()).await?;
        let typo = StartCutoverRequest {
            pipeline: PIPELINE.into(),
            candidate: "orders-2v".into(),
            when: When::Now as i32,
            ..Default::default()
        };
        let err = c.start_cutover(typo).await.expect_err("must be refused");
        assert_eq!(err.code(), tonic::Code::FailedPrecondition, "{err:?}");
        assert!(
            err.message().contains("no gate of deployment orders-2v"),
            "{err:?}"
        );
        let s = pipeline_status(world.port(), PIPELINE).await?;
        assert_eq!((s.phase(), s.active.as_str()), (Phase::Steady, BLUE));
        // The real name works, now.
        start_cutover(world.port(), When::Now, false).await?;
        wait_phase(world.port(), Phase::Completed, PATIENCE).await?;
        b.stop().await;
        g.stop().await;
        Ok(())
    }
    .await;
    world.keep_on_failure(r);
}

/// Item 7: one record stamped a year ahead used to move the barrier (and the persisted
/// ceiling) a year ahead. Now it is dropped, counted and shown, and the cutover goes on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_far_future_record_is_dropped_counted_and_does_not_move_the_barrier() {
    let world = World::start(200).unwrap();
    let r = async {
        let b = Subtask::start(world.blue.1.clone(), BLUE, "b0", 0);
        let g = Subtask::start(world.green.1.clone(), GREEN, "g0", 0);
        let year = 365 * 24 * 3_600_000i64;
        for (socket, dep) in [(&world.blue.1, BLUE), (&world.green.1, GREEN)] {
            let mut ch = Channel::open(socket, PIPELINE, dep, "clock-bug").await?;
            let ts = now_ms() as i64;
            ch.records(Records {
                records: vec![record(ts, "now"), record(ts + year, "a year ahead")],
            })
            .await?;
            let acked = ch.flush().await?;
            assert_eq!(acked.dropped + acked.admitted, 2);
            ch.watermark(i64::MAX).await?;
            ch.flush().await?;
        }
        both_attached(world.port()).await?;
        start_cutover(world.port(), When::Ready, false).await?;
        let done = wait_phase(world.port(), Phase::Completed, PATIENCE).await?;
        b.stop().await;
        g.stop().await;
        let t = done.barrier_ms.context("barrier")?;
        assert!(t < now_ms() as i64 + 60_000, "barrier {t} moved far ahead");
        for gate in &done.gates {
            let c = gate
                .progress
                .as_ref()
                .and_then(|p| p.counters)
                .context("counters")?;
            assert_eq!(c.dropped_future, 1, "{gate:?}");
            assert!(
                c.future_max_ms.is_some_and(|f| f > t + year / 2),
                "{gate:?}"
            );
        }
        for dep in [BLUE, GREEN] {
            let file = world.dir.path().join(format!("{dep}.sock.highmark"));
            let ceiling: i64 = std::fs::read_to_string(&file)?.trim().parse()?;
            assert!(
                ceiling < t + 60_000,
                "{dep}'s persisted ceiling {ceiling} moved ahead"
            );
        }
        let out = std::fs::read_to_string(world.dir.path().join(format!("{BLUE}.jsonl")))?;
        assert!(
            out.contains("\"value\":\"now\""),
            "the ordinary record is admitted"
        );
        assert!(!out.contains("a year ahead"));
        Ok(())
    }
    .await;
    world.keep_on_failure(r);
}

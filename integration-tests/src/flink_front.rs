//! Real Flink jobs with Flink's stock Kafka connector, unmodified but for `bootstrap.servers`,
//! writing through the sidecars' Kafka fronts into a real broker (tansu) while a cutover runs:
//! the DataStream `KafkaSink` (AT_LEAST_ONCE) or a Flink SQL `'connector' = 'kafka'` table
//! (event time from the `timestamp` metadata column, or from a JSON field). Blue (parallelism 2)
//! is in production; green (parallelism 3) starts late and catches up; the cutover is asked for
//! `WHEN_READY`; a real consumer reads the topic back and every record is checked one by one.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail, ensure};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use sluice_proto::v1::{AbortCutoverRequest, Phase, PipelineStatus, StartCutoverRequest, When};

use crate::apache_kafka::ApacheKafka;
use crate::flink::{self, Flink, Sequence};
use crate::harness::{self, Barrier, Coordinator, cutover_client, now_ms};
use crate::kafka::{self, Broker, OrderCheck};
use crate::procs::{Proc, free_port, wait_for_tcp};

const PIPELINE: &str = "flink/kafka-orders";
const BLUE: &str = "orders-blue";
const GREEN: &str = "orders-green";
const TOPIC: &str = "orders";
const PARTITIONS: i32 = 4;
const JOB_MAIN: &str = "dev.sluice.flink.job.KafkaCutoverJob";

/// Which stock Flink sink the jobs use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SinkKind {
    /// DataStream `KafkaSink`, record timestamp = the element's timestamp.
    DataStream,
    /// SQL table with a writable `timestamp` metadata column (sidecar: `record-timestamp`).
    SqlTimestamp,
    /// SQL table without it; the event time is the JSON value's `et` (sidecar: `json:/et`).
    SqlJson,
}

impl SinkKind {
    fn job_arg(self) -> &'static str {
        match self {
            Self::DataStream => "datastream",
            Self::SqlTimestamp => "sql-timestamp",
            Self::SqlJson => "sql-json",
        }
    }
    fn event_time(self) -> &'static str {
        match self {
            Self::DataStream | Self::SqlTimestamp => "record-timestamp",
            Self::SqlJson => "json:/et",
        }
    }
}

/// How the sidecars know that blue's records below the barrier are all through.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DrainKind {
    /// A watermark derived from the largest event time sent (approximate).
    Derived,
    /// Flink's REST API: the sink subtasks' input watermarks, confirmed by a later checkpoint.
    FlinkRest,
}

/// One scenario.
#[derive(Debug, Clone)]
pub struct FrontConfig {
    /// Where logs and state go.
    pub work_dir: PathBuf,
    /// The sink both jobs use.
    pub sink: SinkKind,
    /// How the drain is decided.
    pub drain: DrainKind,
    /// The input.
    pub sequence: Sequence,
    /// Blue's parallelism.
    pub blue_parallelism: u32,
    /// Green's parallelism.
    pub green_parallelism: u32,
    /// How long after blue green starts.
    pub green_delay: Duration,
    /// Kill blue's sidecar `-9` this long after the live start, and start it again (same port,
    /// same files) after the second duration: the job's producers lose their connections and
    /// the front its sequence mapping.
    pub kill_blue_sidecar: Option<(Duration, Duration)>,
    /// Blue's DataStream sink with `DeliveryGuarantee.NONE` and records kept this long in its
    /// producer (`linger.ms`): a sink that does not flush at checkpoints.
    pub blue_unflushed: Option<Duration>,
    /// Both jobs' DataStream sinks `DeliveryGuarantee.EXACTLY_ONCE`, into a real Apache Kafka
    /// broker (tansu has no transactions), read back `read_committed` (and `read_uncommitted`,
    /// reported), blue's records checked visible the moment the cutover completes.
    pub exactly_once: bool,
    /// Blue's sidecar holds every `EndTxn` this long (fault injection: a slow commit).
    pub blue_end_txn_delay: Option<Duration>,
    /// Freeze blue's Flink process (`SIGSTOP`, then `SIGCONT`) this long once the cutover is
    /// prepared or committed (the drain running): a stalled job (a frozen TaskManager, a long
    /// GC) holding records below `T`, longer than the sidecars' 5 s idle timeout.
    pub freeze_blue: Option<Duration>,
    /// Kill green's sidecar `-9` this long after green's job started (catching up, its
    /// transactions open), and start it again after the second duration.
    pub kill_green_sidecar: Option<(Duration, Duration)>,
    /// Blue on a standalone cluster (a JobManager and a TaskManager JVM); the TaskManager is
    /// killed `-9` the moment the cutover is committed, a new one starts 2 s later, Flink
    /// restores the last checkpoint (and recommits or aborts its transactions).
    pub kill_blue_taskmanager: bool,
    /// Kill the broker `-9` this long after the live start (both jobs' transactions open) and
    /// start it again on the same log directories after the second duration.
    pub restart_broker: Option<(Duration, Duration)>,
    /// Kill the coordinator `-9` the moment the cutover is committed; it is back after this.
    pub crash_coordinator_after_commit: Option<Duration>,
    /// Abort the first cutover (WAITING or PREPARED, transactions open), then ask again.
    pub abort_first_cutover: bool,
    /// The jobs' checkpoint interval (default 1 s): exactly-once commits come once per interval.
    pub checkpoint_interval: Option<Duration>,
}

impl FrontConfig {
    /// The defaults: 45,000 records at 1,000/s, blue 2, green 3 started 8 s late.
    pub fn new(work_dir: impl Into<PathBuf>, sink: SinkKind, drain: DrainKind) -> Self {
        let rate = 1_000;
        Self {
            work_dir: work_dir.into(),
            sink,
            drain,
            sequence: Sequence {
                records: rate * 45,
                rate,
                partitions: 4,
                keys_per_partition: 8,
                jitter_ms: 100,
                idle_from: rate * 5,
                idle_to: rate * 9,
            },
            blue_parallelism: 2,
            green_parallelism: 3,
            green_delay: Duration::from_secs(8),
            kill_blue_sidecar: None,
            blue_unflushed: None,
            exactly_once: false,
            blue_end_txn_delay: None,
            freeze_blue: None,
            kill_green_sidecar: None,
            kill_blue_taskmanager: false,
            restart_broker: None,
            crash_coordinator_after_commit: None,
            abort_first_cutover: false,
            checkpoint_interval: None,
        }
    }
}

/// What a scenario saw, record by record.
#[derive(Debug, Default)]
pub struct FrontReport {
    /// Input records.
    pub records: u64,
    /// Records read back.
    pub read: u64,
    /// Distinct input records read.
    pub unique: u64,
    /// Extra copies read.
    pub duplicates: u64,
    /// Input records never read.
    pub missing: u64,
    /// Records from the deployment that does not own their event time.
    pub wrong_side: u64,
    /// Records whose key, value, timestamp or headers differ from the input.
    pub wrong_content: u64,
    /// Records of one key and deployment read out of index order.
    pub out_of_order: u64,
    /// Written by blue / by green.
    pub from: BTreeMap<String, u64>,
    /// The barrier.
    pub barrier: Option<i64>,
    /// The pipeline at completion.
    pub status: PipelineStatus,
    /// Blue's job state when it was cancelled (it must still be running: the drain did not
    /// wait for its end).
    pub blue_state_at_cancel: String,
    /// With a sidecar kill: the checkpoint blue restored, if it restarted.
    pub restored_checkpoint: Option<u64>,
    /// Exactly-once: blue's records a `read_committed` consumer read at the moment the cutover
    /// completed (before blue was cancelled), and how many blue owed (event time below `T`).
    pub blue_visible_at_completion: Option<(u64, u64)>,
    /// Exactly-once: records a `read_uncommitted` consumer read at the end.
    pub read_uncommitted: Option<u64>,
    /// With a sidecar kill: copies at-least-once explains (a record blue's first attempt wrote
    /// after the restored checkpoint, written again by the restarted job).
    pub predicted_duplicates: u64,
    /// Extra copies at-least-once does not explain.
    pub unexplained_duplicates: u64,
    /// Exactly-once: the longest wait between records becoming readable to a `read_committed`
    /// consumer (watching live) in steady state and around the cutover, ms.
    pub visibility_pause: Option<Pause>,
    /// What the faults did (phases they hit, checkpoints restored).
    pub faults: Vec<String>,
    /// First problems, for the failure message.
    pub problems: Vec<String>,
    /// Wall time of the scenario.
    pub elapsed: Duration,
}

/// Output pauses seen by a live `read_committed` consumer (see [`FrontReport::visibility_pause`]).
#[derive(Debug, Clone, Copy)]
pub struct Pause {
    /// The longest gap between readable records in steady state, ms: blue alone (from 10 s
    /// into the input, past its idle stretch, to 1 s before the commit) and green alone (from
    /// 2 s after its first readable record to 1 s before the input's end).
    pub steady_ms: u64,
    /// The longest gap from 1 s before the commit until 2 s after green's first readable
    /// record, ms.
    pub cutover_ms: u64,
    /// The checkpoint interval, ms.
    pub interval_ms: u64,
}

struct Side {
    sidecar: Proc,
    bootstrap: String,
}

fn sidecar(
    cfg: &FrontConfig,
    coordinator: u16,
    deployment: &str,
    upstream: &str,
    rest: u16,
    port: u16,
) -> Result<Side> {
    let bootstrap = format!("127.0.0.1:{port}");
    let mut extra: Vec<String> = [
        "--sink",
        "null",
        "--kafka-listen",
        &bootstrap,
        "--kafka-upstream",
        upstream,
        "--event-time",
        cfg.sink.event_time(),
        "--kafka-watermark-bound",
        "1s",
        "--idle-timeout",
        "5s",
    ]
    .map(String::from)
    .to_vec();
    if let (Some(delay), BLUE) = (cfg.blue_end_txn_delay, deployment) {
        extra.extend([
            "--fault-end-txn-delay".into(),
            format!("{}ms", delay.as_millis()),
        ]);
    }
    if cfg.drain == DrainKind::FlinkRest {
        extra.extend([
            "--flink-rest".into(),
            format!("http://127.0.0.1:{rest}"),
            "--flink-rest-interval".into(),
            "200ms".into(),
            // The jobs refresh their REST metrics every 500 ms (see CutoverJob).
            "--flink-rest-metric-age".into(),
            "3s".into(),
        ]);
    }
    let (proc, _) = harness::start_sidecar(
        &cfg.work_dir,
        coordinator,
        PIPELINE,
        deployment,
        &format!("{deployment}-sidecar"),
        &extra,
    )?;
    wait_for_tcp(bootstrap.parse()?, Duration::from_secs(10))?;
    Ok(Side {
        sidecar: proc,
        bootstrap,
    })
}

fn job_args(
    cfg: &FrontConfig,
    deployment: &str,
    bootstrap: &str,
    parallelism: u32,
    live_start: u64,
    rest_port: u16,
) -> Result<Vec<String>> {
    let mut args = flink::job_flags(
        &cfg.work_dir,
        deployment,
        &cfg.sequence,
        live_start,
        &[
            ("--sink", cfg.sink.job_arg().to_string()),
            ("--bootstrap", bootstrap.to_string()),
            ("--topic", TOPIC.to_string()),
            ("--parallelism", parallelism.to_string()),
            ("--rest-port", rest_port.to_string()),
        ],
    );
    if cfg.exactly_once {
        args.extend(["--guarantee".into(), "exactly-once".into()]);
    }
    if let Some(interval) = cfg.checkpoint_interval {
        args.extend([
            "--checkpoint-interval".into(),
            format!("{} ms", interval.as_millis()),
        ]);
    }
    if let (Some(linger), BLUE) = (cfg.blue_unflushed, deployment) {
        args.extend([
            "--guarantee".into(),
            "none".into(),
            "--linger-ms".into(),
            linger.as_millis().to_string(),
        ]);
    }
    if cfg.kill_blue_sidecar.is_some()
        || cfg.kill_green_sidecar.is_some()
        || cfg.restart_broker.is_some()
    {
        // Spare slots: a failed KafkaWriter may take a while to close, and the restarted job
        // should not wait for its slots.
        args.extend(["--slots".into(), (2 * parallelism).to_string()]);
    }
    Ok(args)
}

fn job(
    flink: &Flink,
    cfg: &FrontConfig,
    deployment: &str,
    bootstrap: &str,
    parallelism: u32,
    live_start: u64,
    rest_port: u16,
) -> Result<Proc> {
    let args = job_args(
        cfg,
        deployment,
        bootstrap,
        parallelism,
        live_start,
        rest_port,
    )?;
    spawn_job(flink, cfg, deployment, &args)
}

/// A mini-cluster JVM running `deployment`'s job with `args`.
fn spawn_job(flink: &Flink, cfg: &FrontConfig, deployment: &str, args: &[String]) -> Result<Proc> {
    Proc::spawn(
        &format!("{deployment} Flink"),
        &flink::java_path()?,
        &flink.java_args(&["-Xmx450m".into()], &cfg.work_dir, JOB_MAIN, args),
        &cfg.work_dir.join(format!("{deployment}-flink.log")),
    )
}

/// The broker of a scenario, kept alive while it runs.
enum AnyBroker {
    Tansu(Broker),
    Apache(ApacheKafka),
}

impl AnyBroker {
    /// The plaintext bootstrap address.
    fn bootstrap(&self) -> &str {
        match self {
            Self::Tansu(b) => &b.bootstrap,
            Self::Apache(b) => &b.bootstrap,
        }
    }
}

/// Waits (60 s at most) until blue's gates admitted 1,000 records and the wall clock reached
/// `not_before_ms`.
async fn blue_in_production(coordinator: u16, not_before_ms: u64) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let s = harness::pipeline_status(coordinator, PIPELINE).await?;
        let admitted = s
            .gates
            .iter()
            .filter(|g| g.deployment == BLUE)
            .filter_map(|g| g.progress.as_ref()?.counters.as_ref())
            .map(|c| c.admitted)
            .sum::<u64>();
        if admitted >= 1_000 && now_ms() >= not_before_ms {
            return Ok(());
        }
        ensure!(
            Instant::now() < deadline,
            "blue's records never reached its gate"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Sends `SIGname` to a process (`kill -s name`).
fn signal(p: &mut Proc, name: &str) -> Result<()> {
    let status = std::process::Command::new("kill")
        .args(["-s", name, &p.id().to_string()])
        .status()?;
    ensure!(
        status.success(),
        "kill -s {name} {} failed: {status}",
        p.id()
    );
    Ok(())
}

/// Clears its flag when dropped.
struct StopOnDrop(Arc<AtomicBool>);

impl Drop for StopOnDrop {
    fn drop(&mut self) {
        self.0.store(false, Ordering::Relaxed);
    }
}

/// Blue's job where it runs: its own mini-cluster JVM, or a standalone cluster.
enum BlueJob {
    Mini(Proc),
    Standalone(Box<flink::Standalone>),
}

impl BlueJob {
    /// The process to freeze or watch: the mini-cluster, or the TaskManager running now.
    fn process(&mut self) -> &mut Proc {
        match self {
            Self::Mini(p) => p,
            Self::Standalone(s) => s.taskmanagers.last_mut().expect("one started"),
        }
    }
}

/// Runs the scenario and counts the topic.
pub async fn run(flink: &Flink, cfg: &FrontConfig) -> Result<FrontReport> {
    let started = Instant::now();
    let dir = cfg.work_dir.clone();
    std::fs::create_dir_all(dir.join("java-tmp"))?;
    std::fs::write(dir.join("log4j2.properties"), flink::LOG4J)?;
    let mut broker = if cfg.exactly_once {
        AnyBroker::Apache(ApacheKafka::start(&dir, false)?)
    } else {
        AnyBroker::Tansu(Broker::start(&dir)?)
    };
    kafka::create_topic(broker.bootstrap(), TOPIC, PARTITIONS).await?;
    let mut coordinator = Coordinator::start(
        &dir,
        Barrier {
            margin_ms: 1_000,
            drain_lateness_ms: 1_000,
            // The REST watermark trails by up to a checkpoint interval more than the job's own.
            max_lag_ms: 3_000 + cfg.checkpoint_interval.map_or(0, |i| i.as_millis() as i64),
            prepare_timeout: Duration::from_secs(3),
        },
    )?;
    let mut faults = Vec::new();
    let standalone = if cfg.kill_blue_taskmanager {
        let s = flink::Standalone::start(flink, &dir, "blue", cfg.blue_parallelism)?;
        s.wait_for_slots(cfg.blue_parallelism.into(), Duration::from_secs(60))
            .await?;
        Some(s)
    } else {
        None
    };
    let blue_rest = standalone
        .as_ref()
        .map_or_else(free_port, |s| Ok(s.rest_port))?;
    let green_rest = free_port()?;
    let (blue_port, green_port) = (free_port()?, free_port()?);
    let upstream = broker.bootstrap().to_owned();
    // Each deployment's sidecar, started again on the same ports by the kill faults.
    let (coordinator_port, upstream_ref) = (coordinator.port, upstream.as_str());
    let blue_sidecar = || {
        sidecar(
            cfg,
            coordinator_port,
            BLUE,
            upstream_ref,
            blue_rest,
            blue_port,
        )
    };
    let green_sidecar = || {
        sidecar(
            cfg,
            coordinator_port,
            GREEN,
            upstream_ref,
            green_rest,
            green_port,
        )
    };
    let mut blue = blue_sidecar()?;
    let mut green = green_sidecar()?;

    // Exactly-once: a read_committed consumer watches the topic live, noting when each record
    // became readable (the output pause the cutover adds).
    let watching = Arc::new(AtomicBool::new(true));
    // Cleared however this returns: the runtime waits for its blocking tasks at shutdown.
    let _stop_watching = StopOnDrop(watching.clone());
    let watcher = cfg.exactly_once.then(|| {
        let (bootstrap, watching) = (upstream.clone(), watching.clone());
        tokio::task::spawn_blocking(move || {
            kafka::watch_visible(&bootstrap, TOPIC, PARTITIONS, &watching)
        })
    });

    let live_start = now_ms();
    let args = job_args(
        cfg,
        BLUE,
        &blue.bootstrap,
        cfg.blue_parallelism,
        live_start,
        blue_rest,
    )?;
    let (mut blue_job, blue_id) = match standalone {
        None => {
            let p = spawn_job(flink, cfg, BLUE, &args)?;
            let id = flink::wait_for_job(blue_rest, Duration::from_secs(60)).await?;
            (BlueJob::Mini(p), id)
        }
        Some(s) => {
            let (f, d) = (flink.clone(), dir.clone());
            let (s, id) = tokio::task::spawn_blocking(move || {
                let id = s.submit(&f, &d, JOB_MAIN, &args);
                (s, id)
            })
            .await?;
            (BlueJob::Standalone(Box::new(s)), id?)
        }
    };
    if let Some((at, down)) = cfg.kill_blue_sidecar {
        // Mid-stream: once blue's records flow through its gate, and `at` into the input.
        blue_in_production(coordinator.port, live_start + at.as_millis() as u64).await?;
        blue.sidecar.kill();
        tokio::time::sleep(down).await;
        blue = blue_sidecar()?;
    }
    let live = Duration::from_millis(now_ms() - live_start);
    tokio::time::sleep(cfg.green_delay.saturating_sub(live)).await;
    let mut green_job = job(
        flink,
        cfg,
        GREEN,
        &green.bootstrap,
        cfg.green_parallelism,
        live_start,
        green_rest,
    )?;
    let green_started = Instant::now();

    // Blue in production first: the cutover is requested once blue's records pass its gates
    // (a loaded machine can take longer than green's delay to start blue's job).
    blue_in_production(coordinator.port, 0).await?;
    let start = StartCutoverRequest {
        pipeline: PIPELINE.into(),
        candidate: GREEN.into(),
        when: When::Ready as i32,
        min_gates: Some(1),
        ..Default::default()
    };
    cutover_client(coordinator.port)
        .await?
        .start_cutover(start.clone())
        .await
        .context("StartCutover failed")?;
    let deadline = Instant::now() + Duration::from_secs(150);
    let mut freeze = cfg.freeze_blue;
    let mut kill_green = cfg.kill_green_sidecar;
    let mut restart_broker = cfg.restart_broker;
    let mut crash_coordinator = cfg.crash_coordinator_after_commit;
    let mut kill_taskmanager = cfg.kill_blue_taskmanager;
    let mut replace_taskmanager_at = None;
    let mut abort = cfg.abort_first_cutover;
    let mut aborted = false;
    let mut committed_at_ms = None;
    let status = loop {
        // The coordinator may be down (crash fault): ask again until it is back.
        let s = match harness::pipeline_status(coordinator.port, PIPELINE).await {
            Ok(s) => s,
            Err(e)
                if crash_coordinator.is_none() && cfg.crash_coordinator_after_commit.is_some() =>
            {
                ensure!(Instant::now() < deadline, "coordinator not back: {e:#}");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
            Err(e) => return Err(e),
        };
        if s.phase() == Phase::Committed && committed_at_ms.is_none() {
            committed_at_ms = Some(now_ms());
        }
        if s.phase() == Phase::Completed {
            break s;
        }
        if abort && matches!(s.phase(), Phase::Waiting | Phase::Prepared) {
            abort = false;
            let phase = s.phase();
            cutover_client(coordinator.port)
                .await?
                .abort_cutover(AbortCutoverRequest {
                    pipeline: PIPELINE.into(),
                    reason: "test: abort with transactions open".into(),
                })
                .await
                .with_context(|| format!("AbortCutover in {phase:?} failed"))?;
            faults.push(format!("first cutover aborted in {phase:?}"));
            aborted = true;
        }
        if aborted && s.phase() == Phase::Aborted {
            aborted = false;
            cutover_client(coordinator.port)
                .await?
                .start_cutover(start.clone())
                .await
                .context("the second StartCutover failed")?;
            faults.push("cutover asked again".into());
            continue;
        }
        if let Some((at, down)) = kill_green
            && green_started.elapsed() >= at
        {
            kill_green = None;
            green.sidecar.kill();
            faults.push(format!(
                "green's sidecar killed -9 {at:?} after green started (cutover {:?})",
                s.phase()
            ));
            tokio::time::sleep(down).await;
            green = green_sidecar()?;
        }
        if let (Some((at, down)), AnyBroker::Apache(b)) = (restart_broker, &mut broker)
            && now_ms() >= live_start + at.as_millis() as u64
        {
            restart_broker = None;
            b.kill();
            faults.push(format!(
                "broker killed -9 {at:?} into the input (cutover {:?}), back after {down:?}",
                s.phase()
            ));
            tokio::time::sleep(down).await;
            b.restart()?;
        }
        if s.phase() == Phase::Committed {
            if let Some(down) = crash_coordinator {
                crash_coordinator = None;
                tokio::task::block_in_place(|| coordinator.crash_and_restart(down))?;
                faults.push(format!(
                    "coordinator killed -9 once committed, back after {down:?}"
                ));
                continue;
            }
            if kill_taskmanager && let BlueJob::Standalone(st) = &mut blue_job {
                kill_taskmanager = false;
                st.taskmanagers[0].kill();
                replace_taskmanager_at = Some(Instant::now() + Duration::from_secs(2));
                faults.push("blue's TaskManager killed -9 once committed".into());
            }
        }
        if let (Some(at), BlueJob::Standalone(st)) = (replace_taskmanager_at, &mut blue_job)
            && Instant::now() >= at
        {
            replace_taskmanager_at = None;
            st.start_taskmanager(flink, &dir, "blue")?;
            faults.push("a new TaskManager for blue started".into());
        }
        if let Some(frozen) = freeze
            && matches!(s.phase(), Phase::Prepared | Phase::Committed)
        {
            freeze = None;
            signal(blue_job.process(), "STOP")?;
            eprintln!(
                "blue's Flink frozen for {frozen:?} (cutover {:?}, T = {:?})",
                s.phase(),
                s.barrier_ms
            );
            let until = Instant::now() + frozen;
            while Instant::now() < until {
                let s = harness::pipeline_status(coordinator.port, PIPELINE).await?;
                if s.phase() == Phase::Completed {
                    signal(blue_job.process(), "CONT")?;
                    bail!(
                        "the cutover completed while blue's job was frozen ({:?}): its gates' \
                         channels were idle, but its buffers held records below T",
                        s.phase()
                    );
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            signal(blue_job.process(), "CONT")?;
            eprintln!("blue's Flink resumed");
        }
        ensure!(
            (s.phase() != Phase::Aborted || aborted) && Instant::now() < deadline,
            "cutover did not complete: {:?} ({}); waiting for {}",
            s.phase(),
            s.last_error,
            s.waiting_for
        );
        let where_ = || format!("cutover {:?}, waiting for {}", s.phase(), s.waiting_for);
        if replace_taskmanager_at.is_none() {
            blue_job
                .process()
                .check_alive()
                .with_context(|| format!("blue Flink ({})", where_()))?;
        }
        green_job
            .check_alive()
            .with_context(|| format!("green Flink ({})", where_()))?;
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let blue_state_at_cancel = flink::job_state(blue_rest, &blue_id)
        .await
        .context("blue's REST API at completion (has blue already finished its input?)")?;
    // Exactly-once: the drain completes only once blue's records below T are committed, so a
    // read_committed consumer sees all of them now (below the last stable offsets taken now),
    // while blue still runs.
    let blue_visible_at_completion = if cfg.exactly_once {
        let barrier = status
            .barrier_ms
            .context("a completed cutover has a barrier")?;
        let owed = cfg
            .sequence
            .expected()
            .iter()
            .filter(|e| e.event_time_ms < barrier)
            .count() as u64;
        let bootstrap = upstream.clone();
        let is_blue = |c: &kafka::Consumed| c.header("deployment") == Some(BLUE.as_bytes());
        let read = tokio::task::spawn_blocking(move || {
            kafka::read_visible_now(&bootstrap, TOPIC, PARTITIONS, Duration::from_secs(30))
        })
        .await??;
        let blue = read.iter().filter(|c| is_blue(c)).count() as u64;
        Some((blue, owed))
    } else {
        None
    };
    // Only now is blue cancelled, as an orchestrator would on completion.
    let restored_checkpoint = if cfg.kill_blue_sidecar.is_some() || cfg.kill_blue_taskmanager {
        let (_, v) = flink::rest(blue_rest, "GET", &format!("/jobs/{blue_id}/checkpoints")).await?;
        v["latest"]["restored"]["id"].as_u64()
    } else {
        None
    };
    // A SQL job's mini-cluster may stop before the answer is out: what counts is that it stops.
    match flink::rest(blue_rest, "PATCH", &format!("/jobs/{blue_id}?mode=cancel")).await {
        Ok((code, _)) => ensure!(
            code == 202 || code == 200,
            "cancelling blue returned HTTP {code}"
        ),
        Err(e) => eprintln!("cancelling blue: {e:#} (its mini-cluster is stopping)"),
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let stopped = match &mut blue_job {
            BlueJob::Mini(p) => p.check_alive().is_err(),
            BlueJob::Standalone(_) => flink::job_state(blue_rest, &blue_id)
                .await
                .is_ok_and(|s| s == "CANCELED"),
        };
        if stopped {
            break;
        }
        ensure!(Instant::now() < deadline, "blue's job did not stop");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    drop(blue_job);
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        if let Some(status) = green_job.exited()? {
            ensure!(status.success(), "green Flink failed: {status}");
            break;
        }
        ensure!(Instant::now() < deadline, "green did not finish its input");
        tokio::time::sleep(Duration::from_millis(250)).await;
    }

    let records = tokio::task::spawn_blocking({
        let bootstrap = upstream.clone();
        let n = cfg.sequence.records as usize;
        let unflushed = cfg.blue_unflushed.is_some();
        move || {
            let read = |expected| {
                let (quiet, within) = (Duration::from_secs(3), Duration::from_secs(60));
                kafka::read_topic(&bootstrap, TOPIC, PARTITIONS, expected, quiet, within)
            };
            // A sink that does not flush may lose records at the cutover (that drain is
            // approximate, and said so): read what there is. Short otherwise: read what there
            // is too, so the count says which records are missing.
            read(if unflushed { 0 } else { n }).or_else(|e| {
                eprintln!("{e:#}; counting what the topic holds");
                read(0)
            })
        }
    })
    .await??;
    let mut report = count(cfg, &status, &records, restored_checkpoint)?;
    if cfg.exactly_once {
        let bootstrap = upstream.clone();
        let n = cfg.sequence.records as usize;
        let uncommitted = tokio::task::spawn_blocking(move || {
            kafka::read_topic_isolated(
                &bootstrap,
                TOPIC,
                PARTITIONS,
                n,
                Duration::from_secs(3),
                Duration::from_secs(60),
                "read_uncommitted",
            )
        })
        .await??;
        report.read_uncommitted = Some(uncommitted.len() as u64);
    }
    watching.store(false, Ordering::Relaxed);
    if let (Some(w), Some(committed)) = (watcher, committed_at_ms) {
        let seen = w.await??;
        let input_ms = cfg.sequence.records * 1_000 / cfg.sequence.rate;
        report.visibility_pause = Some(pauses(
            &seen,
            (live_start + 10_000, live_start + input_ms),
            committed,
            cfg.checkpoint_interval.unwrap_or(Duration::from_secs(1)),
        ));
    }
    report.blue_visible_at_completion = blue_visible_at_completion;
    drop(blue);
    drop(green);
    report.faults = faults;
    report.blue_state_at_cancel = blue_state_at_cancel;
    report.status = status;
    report.elapsed = started.elapsed();
    Ok(report)
}

/// The longest waits between records becoming readable: around the cutover (from 1 s before
/// `committed` to 2 s after green's first readable record) and in steady state (see
/// [`Pause::steady_ms`]; `live`: from where the input is steady to its end, wall clock ms).
/// `seen`: (wall clock ms, deployment) per record.
fn pauses(seen: &[(u64, String)], live: (u64, u64), committed: u64, interval: Duration) -> Pause {
    let mut at: Vec<u64> = seen.iter().map(|(t, _)| *t).collect();
    at.sort_unstable();
    let longest = |from: u64, to: u64| {
        at.windows(2)
            .filter(|w| w[0] >= from && w[1] <= to)
            .map(|w| w[1] - w[0])
            .max()
            .unwrap_or(0)
    };
    let first_green = seen
        .iter()
        .filter(|(t, d)| d == GREEN && *t >= committed.saturating_sub(1_000))
        .map(|(t, _)| *t)
        .min()
        .unwrap_or(committed);
    let before = committed.saturating_sub(1_000);
    Pause {
        steady_ms: longest(live.0, before).max(longest(first_green + 2_000, live.1 - 1_000)),
        cutover_ms: longest(before, first_green + 2_000),
        interval_ms: interval.as_millis() as u64,
    }
}

#[derive(serde::Deserialize)]
struct SqlValue {
    i: u64,
    p: u64,
    n: u64,
    et: Option<i64>,
}

fn count(
    cfg: &FrontConfig,
    status: &PipelineStatus,
    records: &[kafka::Consumed],
    restored_checkpoint: Option<u64>,
) -> Result<FrontReport> {
    let expected = cfg.sequence.expected();
    let barrier = status
        .barrier_ms
        .context("a completed cutover has a barrier")?;
    let mut r = FrontReport {
        records: expected.len() as u64,
        read: records.len() as u64,
        barrier: Some(barrier),
        restored_checkpoint,
        ..FrontReport::default()
    };
    // Per record, the (attempt, after_checkpoint) of each copy read.
    let mut copies: HashMap<u64, Vec<(u64, u64)>> = HashMap::new();
    let mut seen: HashMap<u64, u32> = HashMap::new();
    let mut order = OrderCheck::default();
    let problem = |r: &mut FrontReport, what: String| {
        if r.problems.len() < 10 {
            r.problems.push(what);
        }
    };
    for c in records {
        let text = std::str::from_utf8(&c.value).context("value is not UTF-8")?;
        let (i, content_ok, ts_ok) = match cfg.sink {
            SinkKind::DataStream => {
                let v: SqlValue =
                    serde_json::from_str(text).with_context(|| format!("bad value {text}"))?;
                let e = expected
                    .get(v.i as usize)
                    .context("index beyond the input")?;
                (
                    v.i,
                    e.value == text,
                    c.timestamp == rdkafka::Timestamp::CreateTime(e.event_time_ms),
                )
            }
            SinkKind::SqlTimestamp | SinkKind::SqlJson => {
                let v: SqlValue =
                    serde_json::from_str(text).with_context(|| format!("bad value {text}"))?;
                let e = expected
                    .get(v.i as usize)
                    .context("index beyond the input")?;
                let want = format!("{{\"i\":{},\"p\":{},\"n\":{}}}", v.i, v.p, v.n);
                let ts_ok = match cfg.sink {
                    SinkKind::SqlTimestamp => {
                        c.timestamp == rdkafka::Timestamp::CreateTime(e.event_time_ms)
                    }
                    _ => v.et == Some(e.event_time_ms),
                };
                (v.i, want == e.value, ts_ok)
            }
        };
        let e = &expected[i as usize];
        let dep = c
            .header("deployment")
            .map(|d| String::from_utf8_lossy(d).into_owned())
            .unwrap_or_default();
        let headers_ok = c.header("attempt").is_some() && c.header("after_checkpoint").is_some();
        if !(content_ok && ts_ok && headers_ok && c.key == e.key.as_bytes()) {
            r.wrong_content += 1;
            problem(&mut r, format!("record {i}: read {c:?}, expected {e:?}"));
        }
        let owner = if e.event_time_ms < barrier {
            BLUE
        } else {
            GREEN
        };
        if dep != owner {
            r.wrong_side += 1;
            problem(
                &mut r,
                format!(
                    "record {i} (event time {}) from {dep:?}; T = {barrier}",
                    e.event_time_ms
                ),
            );
        }
        *r.from.entry(dep.clone()).or_default() += 1;
        let num = |h: &str| {
            c.header(h)
                .and_then(|v| std::str::from_utf8(v).ok()?.parse::<u64>().ok())
                .unwrap_or(u64::MAX)
        };
        copies
            .entry(i)
            .or_default()
            .push((num("attempt"), num("after_checkpoint")));
        *seen.entry(i).or_default() += 1;
        order.see(c.partition, &format!("{dep}/{}", e.key), i);
    }
    r.unique = seen.len() as u64;
    r.duplicates = seen.values().map(|n| u64::from(*n) - 1).sum();
    // At-least-once explains one extra copy of a record the first attempt wrote after the
    // checkpoint the restarted job restored (it re-read its input from there); nothing else.
    for (i, cs) in &copies {
        let extra = cs.len() as u64 - 1;
        if extra == 0 {
            continue;
        }
        // A restart before the first checkpoint completed replays from the start.
        let cp = restored_checkpoint.unwrap_or(0);
        let explained = cfg.kill_blue_sidecar.is_some()
            && cs
                .iter()
                .any(|&(attempt, after)| attempt == 0 && after >= cp)
            && cs.iter().any(|&(attempt, _)| attempt > 0);
        if explained && extra == 1 {
            r.predicted_duplicates += 1;
        } else {
            r.unexplained_duplicates += extra;
            problem(
                &mut r,
                format!(
                    "record {i}: copies (attempt, after checkpoint) {cs:?}, restored {restored_checkpoint:?}"
                ),
            );
        }
    }
    r.missing = r.records - r.unique;
    r.out_of_order = order.out_of_order;
    if r.missing > 0 {
        let missing: Vec<u64> = (0..r.records).filter(|i| !seen.contains_key(i)).collect();
        let at = |i: u64| expected[i as usize].event_time_ms - barrier;
        let blue_s = missing.iter().filter(|&&i| at(i) < 0).count();
        let first: Vec<String> = missing
            .iter()
            .take(8)
            .map(|&i| format!("{i} ({}: T{:+} ms)", expected[i as usize].key, at(i)))
            .collect();
        problem(
            &mut r,
            format!(
                "{} missing: {blue_s} below T (blue's), {} at or above T (green's); first: {}",
                missing.len(),
                missing.len() - blue_s,
                first.join(", ")
            ),
        );
    }
    Ok(r)
}

/// Fails unless every record was read exactly once, from its owner, intact and in order, and
/// the status says whether the drain was exact.
pub fn check(cfg: &FrontConfig, r: &FrontReport) -> Result<()> {
    if cfg.blue_unflushed.is_some() {
        return check_unflushed(r);
    }
    ensure!(
        r.status.drain_approximate == (cfg.drain == DrainKind::Derived),
        "GetPipeline says drain_approximate = {} with a {:?} drain",
        r.status.drain_approximate,
        cfg.drain
    );
    let source = if cfg.drain == DrainKind::Derived {
        sluice_proto::v1::WatermarkSource::Derived
    } else {
        sluice_proto::v1::WatermarkSource::FlinkRest
    };
    for g in &r.status.gates {
        let reported = g.progress.as_ref().map(|p| p.watermark_source());
        ensure!(
            reported == Some(source),
            "gate {} reports {reported:?}",
            g.gate_id
        );
    }
    // At-least-once explains duplicates after a restart; exactly-once none, whatever failed.
    if cfg.kill_blue_sidecar.is_none() || cfg.exactly_once {
        ensure!(
            r.duplicates == 0 && r.out_of_order == 0,
            "not exact: {:?}",
            r.problems
        );
    }
    ensure!(
        (
            r.unexplained_duplicates,
            r.missing,
            r.wrong_side,
            r.wrong_content,
        ) == (0, 0, 0, 0),
        "not exact: {:?}",
        r.problems
    );
    ensure!(
        r.from.get(BLUE).copied().unwrap_or(0) > 0 && r.from.get(GREEN).copied().unwrap_or(0) > 0,
        "both deployments should have written: {:?}",
        r.from
    );
    // Not with green's sidecar killed: the transaction green's producer had open stays open
    // until green's restored job aborts it, and read_committed reads no partition past the
    // first open transaction of any producer (the last stable offset) — blue's committed
    // records after it are hidden until then. Reported, not required; the final read is exact.
    if let Some((seen, owed)) = r.blue_visible_at_completion
        && cfg.kill_green_sidecar.is_none()
    {
        ensure!(
            seen == owed,
            "at completion a read_committed consumer saw {seen} of blue's {owed} records below \
             T: the drain did not wait for blue's transactions to commit"
        );
    }
    if r.blue_state_at_cancel != "RUNNING" {
        bail!(
            "blue was {} at completion: the drain waited for its end",
            r.blue_state_at_cancel
        );
    }
    Ok(())
}

/// Blue's sink does not flush at checkpoints: the REST drain cannot be exact, and the sidecars
/// must say so (records below a confirmed watermark counted, the drain marked approximate).
fn check_unflushed(r: &FrontReport) -> Result<()> {
    let below: u64 = r
        .status
        .gates
        .iter()
        .filter(|g| g.deployment == BLUE)
        .filter_map(|g| g.progress.as_ref()?.counters.as_ref())
        .map(|c| c.below_confirmed_watermark)
        .sum();
    println!(
        "blue's unflushed sink: {below} records arrived below a confirmed watermark; \
         drain_approximate = {}; {} missing, {} from the wrong side",
        r.status.drain_approximate, r.missing, r.wrong_side
    );
    ensure!(
        below > 0,
        "blue's gates counted no record below a confirmed watermark"
    );
    ensure!(
        r.status.drain_approximate,
        "GetPipeline does not say the drain is approximate"
    );
    Ok(())
}

impl fmt::Display for FrontReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let t = self
            .barrier
            .map_or("-".into(), |b| format!("BASE + {} ms", b - flink::BASE_MS));
        writeln!(
            f,
            "Flink through the Kafka front: {} records, T = {t}",
            self.records
        )?;
        writeln!(
            f,
            "  read {} (blue {}, green {}): unique {}, duplicates {}, missing {}, wrong side {}, \
             wrong content {}, out of order {}",
            self.read,
            self.from.get(BLUE).unwrap_or(&0),
            self.from.get(GREEN).unwrap_or(&0),
            self.unique,
            self.duplicates,
            self.missing,
            self.wrong_side,
            self.wrong_content,
            self.out_of_order
        )?;
        if self.restored_checkpoint.is_some() || self.duplicates > 0 {
            writeln!(
                f,
                "  blue restored checkpoint {:?}: duplicates predicted by at-least-once {}, unexplained {}",
                self.restored_checkpoint, self.predicted_duplicates, self.unexplained_duplicates
            )?;
        }
        if let Some((seen, owed)) = self.blue_visible_at_completion {
            writeln!(
                f,
                "  exactly-once: at completion read_committed showed {seen} of blue's {owed} \
                 records below T; at the end read_uncommitted read {}",
                self.read_uncommitted.unwrap_or(0)
            )?;
        }
        if let Some(p) = self.visibility_pause {
            writeln!(
                f,
                "  read_committed output pause (checkpoint interval {} ms): steady state {} ms, \
                 at the cutover {} ms",
                p.interval_ms, p.steady_ms, p.cutover_ms
            )?;
        }
        for fault in &self.faults {
            writeln!(f, "  fault: {fault}")?;
        }
        writeln!(
            f,
            "  blue at completion: {}; took {:.1} s",
            self.blue_state_at_cancel,
            self.elapsed.as_secs_f64()
        )
    }
}

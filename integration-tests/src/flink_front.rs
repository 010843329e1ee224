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
use sluice_proto::v1::{Phase, PipelineStatus, StartCutoverRequest, When};

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
    /// First problems, for the failure message.
    pub problems: Vec<String>,
    /// Wall time of the scenario.
    pub elapsed: Duration,
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

fn job(
    flink: &Flink,
    cfg: &FrontConfig,
    deployment: &str,
    bootstrap: &str,
    parallelism: u32,
    live_start: u64,
    rest_port: u16,
) -> Result<Proc> {
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
    if let (Some(linger), BLUE) = (cfg.blue_unflushed, deployment) {
        args.extend([
            "--guarantee".into(),
            "none".into(),
            "--linger-ms".into(),
            linger.as_millis().to_string(),
        ]);
    }
    if cfg.kill_blue_sidecar.is_some() {
        // Spare slots: a failed KafkaWriter may take a while to close, and the restarted job
        // should not wait for its slots.
        args.extend(["--slots".into(), (2 * parallelism).to_string()]);
    }
    Proc::spawn(
        &format!("{deployment} Flink"),
        &flink::java_path()?,
        &flink.java_args(&["-Xmx450m".into()], &cfg.work_dir, JOB_MAIN, &args),
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
fn signal(p: &Proc, name: &str) -> Result<()> {
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

/// Runs the scenario and counts the topic.
pub async fn run(flink: &Flink, cfg: &FrontConfig) -> Result<FrontReport> {
    let started = Instant::now();
    let dir = cfg.work_dir.clone();
    std::fs::create_dir_all(dir.join("java-tmp"))?;
    std::fs::write(dir.join("log4j2.properties"), flink::LOG4J)?;
    let broker = if cfg.exactly_once {
        AnyBroker::Apache(ApacheKafka::start(&dir, false)?)
    } else {
        AnyBroker::Tansu(Broker::start(&dir)?)
    };
    kafka::create_topic(broker.bootstrap(), TOPIC, PARTITIONS).await?;
    let coordinator = Coordinator::start(
        &dir,
        Barrier {
            margin_ms: 1_000,
            drain_lateness_ms: 1_000,
            // The REST watermark trails by up to a checkpoint interval more than the job's own.
            max_lag_ms: 3_000,
            prepare_timeout: Duration::from_secs(3),
        },
    )?;
    let (blue_rest, green_rest) = (free_port()?, free_port()?);
    let blue_port = free_port()?;
    let mut blue = sidecar(
        cfg,
        coordinator.port,
        BLUE,
        broker.bootstrap(),
        blue_rest,
        blue_port,
    )?;
    let green = sidecar(
        cfg,
        coordinator.port,
        GREEN,
        broker.bootstrap(),
        green_rest,
        free_port()?,
    )?;

    let live_start = now_ms();
    let mut blue_job = job(
        flink,
        cfg,
        BLUE,
        &blue.bootstrap,
        cfg.blue_parallelism,
        live_start,
        blue_rest,
    )?;
    let blue_id = flink::wait_for_job(blue_rest, Duration::from_secs(60)).await?;
    if let Some((at, down)) = cfg.kill_blue_sidecar {
        // Mid-stream: once blue's records flow through its gate, and `at` into the input.
        blue_in_production(coordinator.port, live_start + at.as_millis() as u64).await?;
        blue.sidecar.kill();
        tokio::time::sleep(down).await;
        blue = sidecar(
            cfg,
            coordinator.port,
            BLUE,
            broker.bootstrap(),
            blue_rest,
            blue_port,
        )?;
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

    // Blue in production first: the cutover is requested once blue's records pass its gates
    // (a loaded machine can take longer than green's delay to start blue's job).
    blue_in_production(coordinator.port, 0).await?;
    let mut api = cutover_client(coordinator.port).await?;
    api.start_cutover(StartCutoverRequest {
        pipeline: PIPELINE.into(),
        candidate: GREEN.into(),
        when: When::Ready as i32,
        min_gates: Some(1),
        ..Default::default()
    })
    .await
    .context("StartCutover failed")?;
    let deadline = Instant::now() + Duration::from_secs(120);
    let mut freeze = cfg.freeze_blue;
    let status = loop {
        let s = harness::pipeline_status(coordinator.port, PIPELINE).await?;
        if s.phase() == Phase::Completed {
            break s;
        }
        if let Some(frozen) = freeze
            && matches!(s.phase(), Phase::Prepared | Phase::Committed)
        {
            freeze = None;
            signal(&blue_job, "STOP")?;
            eprintln!(
                "blue's Flink frozen for {frozen:?} (cutover {:?}, T = {:?})",
                s.phase(),
                s.barrier_ms
            );
            let until = Instant::now() + frozen;
            while Instant::now() < until {
                let s = harness::pipeline_status(coordinator.port, PIPELINE).await?;
                if s.phase() == Phase::Completed {
                    signal(&blue_job, "CONT")?;
                    bail!(
                        "the cutover completed while blue's job was frozen: its gates' channels \
                         were idle, but its buffers held records below T"
                    );
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            signal(&blue_job, "CONT")?;
            eprintln!("blue's Flink resumed");
        }
        ensure!(
            s.phase() != Phase::Aborted && Instant::now() < deadline,
            "cutover did not complete: {:?} ({}); waiting for {}",
            s.phase(),
            s.last_error,
            s.waiting_for
        );
        blue_job.check_alive().context("blue Flink")?;
        green_job.check_alive().context("green Flink")?;
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
        let bootstrap = broker.bootstrap().to_owned();
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
    let restored_checkpoint = if cfg.kill_blue_sidecar.is_some() {
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
    while blue_job.check_alive().is_ok() {
        ensure!(
            Instant::now() < deadline,
            "blue's mini-cluster did not stop"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
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
        let bootstrap = broker.bootstrap().to_owned();
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
        let bootstrap = broker.bootstrap().to_owned();
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
    report.blue_visible_at_completion = blue_visible_at_completion;
    drop(blue);
    report.blue_state_at_cancel = blue_state_at_cancel;
    report.status = status;
    report.elapsed = started.elapsed();
    Ok(report)
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
    if cfg.kill_blue_sidecar.is_none() {
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
    if let Some((seen, owed)) = r.blue_visible_at_completion {
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
        writeln!(
            f,
            "  blue at completion: {}; took {:.1} s",
            self.blue_state_at_cancel,
            self.elapsed.as_secs_f64()
        )
    }
}

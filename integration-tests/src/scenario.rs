//! The process-level blue/green scenario: a real coordinator, a real sidecar per deployment,
//! clients replaying the same input into both, a cutover started through the public gRPC API,
//! and every output record counted.
//!
//! Input: `records` records with unique keys `r0000000..`, event times `BASE + i ± jitter`
//! (out of order within the jitter), partitioned over a different number of channels per
//! deployment. Blue replays them at the live rate from the start; green starts late (a slow
//! bootstrap), replays faster until it has caught up with the live input, then follows it.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use sluice_proto::v1::{Header, Phase, PipelineStatus, Record, Records, StartCutoverRequest, When};
use tokio::task::JoinSet;

use crate::client::{Acked, Channel};
pub use crate::harness::PhaseSeen;
use crate::harness::{self, Barrier, Coordinator, cutover_client, now_ms};
use crate::kafka;
use crate::procs::Proc;

/// First event time of the input (2023-11-14T22:13:20Z).
pub const BASE_MS: i64 = 1_700_000_000_000;
/// Pipeline name used by the scenario.
pub const PIPELINE: &str = "demo/orders";
/// Blue deployment id.
pub const BLUE: &str = "orders-v1";
/// Green deployment id.
pub const GREEN: &str = "orders-v2";

/// How the scenario runs.
#[derive(Debug, Clone)]
pub struct ScenarioConfig {
    /// Records in the input (each deployment replays all of them).
    pub records: usize,
    /// Channels (sink subtasks) of blue.
    pub blue_channels: usize,
    /// Channels of green (a different parallelism).
    pub green_channels: usize,
    /// Event times are out of order by up to this many ms either way.
    pub jitter_ms: i64,
    /// Live input rate: records per wall-clock ms (event time advances 1 ms per record).
    pub records_per_ms: f64,
    /// Records per frame.
    pub batch: usize,
    /// A channel flushes (like a Flink checkpoint) every this many of its records.
    pub flush_every: usize,
    /// When the cutover is requested, after blue starts.
    pub cutover_after: Duration,
    /// Green's slow bootstrap: it starts this long after blue.
    pub green_delay: Duration,
    /// Green replays this many times faster than live until it has caught up.
    pub green_speedup: f64,
    /// Barrier margin (event-time ms).
    pub margin_ms: i64,
    /// Drain lateness (event-time ms).
    pub drain_lateness_ms: i64,
    /// Allowed candidate watermark lag (event-time ms).
    pub max_lag_ms: i64,
    /// Kill -9 and restart the coordinator mid-cutover (waiting/prepared, then committed).
    pub kill_coordinator: bool,
    /// Seed of the event-time jitter.
    pub seed: u64,
    /// Where state, sockets, outputs and logs go.
    pub work_dir: PathBuf,
    /// Send admitted records to this Kafka topic instead of the JSON-lines files.
    pub kafka: Option<KafkaOutput>,
    /// Where the coordinator and the sidecars log instead of `work_dir/<name>.log` (a test
    /// passes `/dev/full` to show a failing log write loses nothing).
    pub log_to: Option<PathBuf>,
}

/// A Kafka topic the sidecars write to (it must exist).
#[derive(Debug, Clone)]
pub struct KafkaOutput {
    /// Bootstrap servers.
    pub bootstrap: String,
    /// Topic.
    pub topic: String,
    /// Its partition count.
    pub partitions: i32,
    /// Where the sidecars write instead of `bootstrap` (which the test reads back from), and
    /// the librdkafka options they write with (say a `SASL_SSL` listener and its login).
    pub write_via: Option<(String, Vec<String>)>,
}

/// Every this many records, one names its partition explicitly (Kafka mode).
const EXPLICIT_PARTITION_EVERY: usize = 1_000;

impl ScenarioConfig {
    /// The defaults of the demo and the process-level test, in `work_dir`.
    pub fn new(work_dir: impl Into<PathBuf>) -> Self {
        Self {
            records: 100_000,
            blue_channels: 4,
            green_channels: 5,
            jitter_ms: 200,
            records_per_ms: 20.0,
            batch: 100,
            flush_every: 2_000,
            cutover_after: Duration::from_millis(500),
            green_delay: Duration::from_millis(1_500),
            green_speedup: 2.0,
            margin_ms: 1_000,
            drain_lateness_ms: 2_000,
            max_lag_ms: 1_000,
            kill_coordinator: false,
            seed: 7,
            work_dir: work_dir.into(),
            kafka: None,
            log_to: None,
        }
    }
}

/// Per-deployment figures.
#[derive(Debug, Clone, Default)]
pub struct DeploymentReport {
    /// Records the clients sent.
    pub sent: u64,
    /// Admitted according to the final FlushAcks.
    pub acked_admitted: u64,
    /// Dropped according to the final FlushAcks.
    pub acked_dropped: u64,
    /// Records in the deployment's output (file lines, or Kafka records it wrote).
    pub output: u64,
    /// Smallest and largest event time in the output.
    pub output_range: Option<(i64, i64)>,
}

/// What happened.
#[derive(Debug, Clone)]
pub struct Report {
    /// Input records.
    pub records: u64,
    /// Blue's figures.
    pub blue: DeploymentReport,
    /// Green's figures.
    pub green: DeploymentReport,
    /// Input records found more than once in the merged output (extra copies).
    pub duplicates: u64,
    /// Input records found nowhere.
    pub missing: u64,
    /// Blue records at or above the barrier, or green records below it.
    pub wrong_side: u64,
    /// Final status of the pipeline.
    pub status: PipelineStatus,
    /// The barrier.
    pub barrier: Option<i64>,
    /// Phase transitions seen.
    pub phases: Vec<PhaseSeen>,
    /// Largest wall-clock gap between consecutive output records, before the cutover (ms);
    /// `None` for Kafka (its timestamps carry event time, not write time).
    pub steady_gap_ms: Option<u64>,
    /// Largest gap from just before prepare to just after completion (ms); `None` for Kafka.
    pub cutover_gap_ms: Option<u64>,
    /// What reading the Kafka topic back found (Kafka mode).
    pub kafka: Option<KafkaFindings>,
    /// Coordinator kills performed.
    pub coordinator_kills: u32,
    /// Wall time of the whole run.
    pub elapsed: Duration,
}

/// Record-by-record checks of a topic read back with a real consumer.
#[derive(Debug, Clone, Default)]
pub struct KafkaFindings {
    /// Topic read.
    pub topic: String,
    /// Partitions of the topic.
    pub partitions: i32,
    /// Records read.
    pub read: u64,
    /// Partitions that received records.
    pub partitions_used: usize,
    /// Records whose Kafka timestamp is not `CreateTime(event time)`.
    pub bad_timestamp: u64,
    /// Records whose value or headers differ from what the client sent.
    pub bad_content: u64,
    /// Records not on the partition they named, or (keyed) the Java client's hash partition.
    pub wrong_partition: u64,
    /// Records read after a later record of the same channel in the same partition.
    pub out_of_order: u64,
}

impl KafkaFindings {
    fn intact(&self) -> bool {
        self.bad_timestamp == 0
            && self.bad_content == 0
            && self.wrong_partition == 0
            && self.out_of_order == 0
    }
}

impl Report {
    /// True when the merged output holds every input record exactly once (and, for Kafka,
    /// intact, on the right partition and in each channel's order).
    pub fn exact(&self) -> bool {
        self.duplicates == 0
            && self.missing == 0
            && self.wrong_side == 0
            && self.kafka.as_ref().is_none_or(KafkaFindings::intact)
    }
}

/// One input record's event time.
fn event_times(cfg: &ScenarioConfig) -> Vec<i64> {
    let mut rng = ChaCha8Rng::seed_from_u64(cfg.seed);
    (0..cfg.records)
        .map(|i| BASE_MS + i as i64 + rng.random_range(-cfg.jitter_ms..=cfg.jitter_ms))
        .collect()
}

/// Which channel of `n` carries record `i` (a multiplicative hash: blue and green split the
/// input differently).
fn channel_of(i: usize, n: usize) -> usize {
    ((i as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 32) as usize % n
}

fn value_of(i: usize) -> Vec<u8> {
    format!("{{\"order\":{i},\"amount\":{}}}", i % 997).into_bytes()
}

/// Record `i`; headers name the channel (`stream`) and the record's position in it (`seq`), so
/// per-channel order can be checked in Kafka. In Kafka mode every
/// [`EXPLICIT_PARTITION_EVERY`]th record names its partition.
fn record(i: usize, ts: i64, stream: &str, seq: usize, partitions: Option<i32>) -> Record {
    Record {
        key: format!("r{i:07}").into_bytes().into(),
        value: value_of(i).into(),
        headers: vec![
            Header {
                key: "source".into(),
                value: b"replay".to_vec().into(),
            },
            Header {
                key: "stream".into(),
                value: stream.as_bytes().to_vec().into(),
            },
            Header {
                key: "seq".into(),
                value: seq.to_string().into_bytes().into(),
            },
        ],
        event_time_ms: ts,
        topic: String::new(),
        partition: partitions
            .filter(|_| i.is_multiple_of(EXPLICIT_PARTITION_EVERY))
            .map(|n| explicit_partition(i, n)),
    }
}

fn explicit_partition(i: usize, partitions: i32) -> i32 {
    ((i / EXPLICIT_PARTITION_EVERY) % partitions as usize) as i32
}

/// When record `i` may be sent: blue follows the live rate; green, started late, replays at
/// `speedup` until it meets the live input.
#[derive(Debug, Clone, Copy)]
struct Pace {
    live_start: Instant,
    start: Instant,
    per_ms: f64,
    speedup: f64,
}

impl Pace {
    fn due(&self, i: usize) -> Instant {
        let live = self.live_start + Duration::from_secs_f64(i as f64 / self.per_ms / 1_000.0);
        let replay =
            self.start + Duration::from_secs_f64(i as f64 / (self.per_ms * self.speedup) / 1_000.0);
        live.max(replay)
    }
}

async fn run_channel(
    socket: PathBuf,
    deployment: &'static str,
    channel: usize,
    indices: Vec<usize>,
    times: Arc<Vec<i64>>,
    pace: Pace,
    cfg: ScenarioConfig,
) -> Result<Acked> {
    let mut ch = Channel::open(&socket, PIPELINE, deployment, &channel.to_string()).await?;
    let stream = format!("{deployment}/{channel}");
    let partitions = cfg.kafka.as_ref().map(|k| k.partitions);
    let mut since_flush = 0;
    let mut pos = 0;
    while pos < indices.len() {
        tokio::time::sleep_until(pace.due(indices[pos]).into()).await;
        let now = Instant::now();
        let mut batch = Vec::with_capacity(cfg.batch);
        let mut last = indices[pos];
        while pos < indices.len() && batch.len() < cfg.batch && pace.due(indices[pos]) <= now {
            last = indices[pos];
            batch.push(record(last, times[last], &stream, pos, partitions));
            pos += 1;
        }
        since_flush += batch.len();
        ch.records(Records { records: batch }).await?;
        // Every later record of this channel has a larger index, so an event time of at least
        // BASE + last + 1 - jitter: this watermark is never violated.
        ch.watermark(BASE_MS + last as i64 - cfg.jitter_ms - 1)
            .await?;
        if since_flush >= cfg.flush_every {
            ch.flush().await?;
            since_flush = 0;
        }
    }
    // End of input, as Flink signals it.
    ch.watermark(i64::MAX).await?;
    ch.flush().await
}

async fn pipeline_status(port: u16) -> Result<PipelineStatus> {
    harness::pipeline_status(port, PIPELINE).await
}

/// `kill -9` the coordinator, keep it down for 300 ms, start it again on the same state file.
async fn crash(coordinator: &Arc<Mutex<Coordinator>>) -> Result<()> {
    let c = coordinator.clone();
    tokio::task::spawn_blocking(move || {
        c.lock()
            .expect("not poisoned")
            .crash_and_restart(Duration::from_millis(300))
    })
    .await?
}

fn sidecar(
    dir: &Path,
    port: u16,
    deployment: &str,
    kafka: Option<&KafkaOutput>,
    log_to: Option<&Path>,
) -> Result<(Proc, PathBuf, PathBuf)> {
    let output = dir.join(format!("{deployment}.jsonl"));
    let sink: Vec<String> = match kafka {
        None => vec!["--sink".into(), format!("file:{}", output.display())],
        Some(k) => {
            let (bootstrap, options) = k
                .write_via
                .clone()
                .unwrap_or_else(|| (k.bootstrap.clone(), Vec::new()));
            let mut args: Vec<String> = [
                "--sink",
                &format!("kafka:{bootstrap}"),
                "--default-topic",
                &k.topic,
            ]
            .map(String::from)
            .to_vec();
            for o in options {
                args.extend(["--kafka-option".into(), o]);
            }
            args
        }
    };
    let log = log_to.map_or_else(|| dir.join(format!("{deployment}.log")), Path::to_path_buf);
    let (proc, socket) = harness::start_sidecar_logging_to(
        dir,
        port,
        PIPELINE,
        deployment,
        (deployment, &log),
        &sink,
    )?;
    Ok((proc, socket, output))
}

/// One output line, as far as the count needs it.
#[derive(serde::Deserialize)]
struct OutLine {
    key: String,
    event_time_ms: i64,
    written_at_ms: u64,
}

fn read_output(path: &Path) -> Result<Vec<OutLine>> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    text.lines()
        .map(|l| serde_json::from_str(l).with_context(|| format!("bad output line {l}")))
        .collect()
}

/// Reads the topic back with a real consumer: blue's and green's records (by their `stream`
/// header) as output lines, and the record-by-record findings.
async fn read_kafka(
    k: &KafkaOutput,
    expected: usize,
    times: &[i64],
) -> Result<(Vec<OutLine>, Vec<OutLine>, KafkaFindings)> {
    let (bootstrap, topic, partitions) = (k.bootstrap.clone(), k.topic.clone(), k.partitions);
    let read = tokio::task::spawn_blocking(move || {
        kafka::read_topic(
            &bootstrap,
            &topic,
            partitions,
            expected,
            Duration::from_secs(1),
            Duration::from_secs(60),
        )
    })
    .await??;
    let mut findings = KafkaFindings {
        topic: k.topic.clone(),
        partitions: k.partitions,
        read: read.len() as u64,
        ..Default::default()
    };
    let mut order = kafka::OrderCheck::default();
    let mut used = std::collections::BTreeSet::new();
    let (mut blue, mut green) = (Vec::new(), Vec::new());
    for c in &read {
        used.insert(c.partition);
        let key = String::from_utf8_lossy(&c.key).into_owned();
        let i: usize = key
            .trim_start_matches('r')
            .parse()
            .with_context(|| format!("bad key {key:?}"))?;
        let ts = *times.get(i).context("key out of range")?;
        let stream = String::from_utf8_lossy(c.header("stream").unwrap_or_default()).into_owned();
        let seq: u64 = String::from_utf8_lossy(c.header("seq").unwrap_or_default())
            .parse()
            .unwrap_or(u64::MAX);
        if c.timestamp != rdkafka::Timestamp::CreateTime(ts) {
            findings.bad_timestamp += 1;
        }
        if c.value != value_of(i) || c.header("source") != Some(b"replay".as_slice()) {
            findings.bad_content += 1;
        }
        let want_partition = if i.is_multiple_of(EXPLICIT_PARTITION_EVERY) {
            explicit_partition(i, k.partitions)
        } else {
            kafka::java_partition(&c.key, k.partitions)
        };
        if c.partition != want_partition {
            findings.wrong_partition += 1;
        }
        order.see(c.partition, &stream, seq);
        let line = OutLine {
            key,
            event_time_ms: ts,
            written_at_ms: 0,
        };
        if stream.starts_with(&format!("{BLUE}/")) {
            blue.push(line);
        } else if stream.starts_with(&format!("{GREEN}/")) {
            green.push(line);
        } else {
            bail!("record {i} names no deployment: stream {stream:?}");
        }
    }
    findings.out_of_order = order.out_of_order;
    findings.partitions_used = used.len();
    Ok((blue, green, findings))
}

fn largest_gap(mut stamps: Vec<u64>) -> u64 {
    stamps.sort_unstable();
    stamps.windows(2).map(|w| w[1] - w[0]).max().unwrap_or(0)
}

/// Runs the scenario and counts the outcome. Fails only when the machinery fails; exactness is
/// for the caller to judge from the [`Report`].
pub async fn run(cfg: &ScenarioConfig) -> Result<Report> {
    let started = Instant::now();
    let dir = cfg.work_dir.clone();
    std::fs::create_dir_all(&dir)?;
    let barrier = Barrier {
        margin_ms: cfg.margin_ms,
        drain_lateness_ms: cfg.drain_lateness_ms,
        max_lag_ms: cfg.max_lag_ms,
        prepare_timeout: Duration::from_secs(2),
    };
    let log_to = cfg.log_to.as_deref();
    let coordinator_log = log_to.map_or_else(|| dir.join("coordinator.log"), Path::to_path_buf);
    let coordinator = Arc::new(Mutex::new(Coordinator::start_logging_to(
        &dir,
        barrier,
        &coordinator_log,
    )?));
    let port = coordinator.lock().expect("not poisoned").port;
    let (mut blue_proc, blue_sock, blue_out) =
        sidecar(&dir, port, BLUE, cfg.kafka.as_ref(), log_to)?;
    let (mut green_proc, green_sock, green_out) =
        sidecar(&dir, port, GREEN, cfg.kafka.as_ref(), log_to)?;

    let times = Arc::new(event_times(cfg));
    let live_start = Instant::now();
    let blue_pace = Pace {
        live_start,
        start: live_start,
        per_ms: cfg.records_per_ms,
        speedup: 1.0,
    };
    let green_pace = Pace {
        start: live_start + cfg.green_delay,
        speedup: cfg.green_speedup,
        ..blue_pace
    };
    let mut clients = JoinSet::new();
    for (deployment, n, socket, pace) in [
        (BLUE, cfg.blue_channels, &blue_sock, blue_pace),
        (GREEN, cfg.green_channels, &green_sock, green_pace),
    ] {
        for c in 0..n {
            let indices: Vec<usize> = (0..cfg.records)
                .filter(|i| channel_of(*i, n) == c)
                .collect();
            let (socket, times, cfg) = (socket.clone(), times.clone(), cfg.clone());
            clients.spawn(async move {
                // Green's TaskManagers only connect once its slow bootstrap is over.
                tokio::time::sleep_until(pace.start.into()).await;
                let acked = run_channel(socket, deployment, c, indices, times, pace, cfg).await;
                (deployment, acked)
            });
        }
    }

    let phases = Arc::new(Mutex::new(Vec::new()));
    let seen = phases.clone();
    let watcher = tokio::spawn(async move {
        harness::watch(port, PIPELINE, |ev| {
            if let Some(p) = PhaseSeen::of(&ev) {
                p.push_if_new(&mut seen.lock().expect("no panics while held"));
            }
        })
        .await;
    });

    // The orchestrator: request the cutover through the public API, as a person would.
    tokio::time::sleep(cfg.cutover_after).await;
    let mut api = cutover_client(port).await?;
    api.start_cutover(StartCutoverRequest {
        pipeline: PIPELINE.into(),
        candidate: GREEN.into(),
        when: When::Ready as i32,
        min_gates: Some(1),
        ..Default::default()
    })
    .await
    .context("StartCutover failed")?;

    let mut kills = 0;
    if cfg.kill_coordinator {
        // Crash while waiting for green (or preparing), then again once committed.
        tokio::time::sleep(Duration::from_millis(100)).await;
        crash(&coordinator).await?;
        kills += 1;
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let s = pipeline_status(port).await?;
            if s.phase() == Phase::Committed {
                crash(&coordinator).await?;
                kills += 1;
                break;
            }
            if s.phase() == Phase::Completed || Instant::now() > deadline {
                break;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    let mut blue = DeploymentReport::default();
    let mut green = DeploymentReport::default();
    while let Some(joined) = clients.join_next().await {
        let (deployment, acked) = joined?;
        let acked = acked.with_context(|| format!("a {deployment} channel failed"))?;
        let d = if deployment == BLUE {
            &mut blue
        } else {
            &mut green
        };
        d.acked_admitted += acked.admitted;
        d.acked_dropped += acked.dropped;
    }
    blue.sent = cfg.records as u64;
    green.sent = cfg.records as u64;

    // Blue's end-of-input watermark completes the drain at the latest.
    let deadline = Instant::now() + Duration::from_secs(30);
    let status = loop {
        let s = pipeline_status(port).await?;
        if s.phase() == Phase::Completed || Instant::now() > deadline {
            break s;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    // Give the watcher a moment to see the last transition, then stop everything.
    tokio::time::sleep(Duration::from_millis(100)).await;
    watcher.abort();
    blue_proc.check_alive()?;
    green_proc.check_alive()?;
    drop((blue_proc, green_proc));
    coordinator.lock().expect("not poisoned").proc.kill();

    let barrier = status.barrier_ms;
    let (blue_lines, green_lines, kafka) = match &cfg.kafka {
        None => (read_output(&blue_out)?, read_output(&green_out)?, None),
        Some(k) => {
            let expected = (blue.acked_admitted + green.acked_admitted) as usize;
            let (b, g, findings) = read_kafka(k, expected, &times).await?;
            (b, g, Some(findings))
        }
    };
    let mut counts = vec![0u32; cfg.records];
    let mut wrong_side = 0;
    for (lines, report, is_blue) in [
        (&blue_lines, &mut blue, true),
        (&green_lines, &mut green, false),
    ] {
        report.output = lines.len() as u64;
        for l in lines.iter() {
            let i: usize = l.key.trim_start_matches('r').parse().context("bad key")?;
            *counts.get_mut(i).context("key out of range")? += 1;
            if let Some(t) = barrier
                && (l.event_time_ms >= t) == is_blue
            {
                wrong_side += 1;
            }
            report.output_range = Some(match report.output_range {
                None => (l.event_time_ms, l.event_time_ms),
                Some((a, b)) => (a.min(l.event_time_ms), b.max(l.event_time_ms)),
            });
        }
    }
    let duplicates = counts.iter().map(|c| c.saturating_sub(1) as u64).sum();
    let missing = counts.iter().filter(|c| **c == 0).count() as u64;

    let phases = phases.lock().expect("not poisoned").clone();
    let at = |p: Phase| phases.iter().rev().find(|s| s.phase == p).map(|s| s.at_ms);
    let stamps: Vec<u64> = blue_lines
        .iter()
        .chain(&green_lines)
        .map(|l| l.written_at_ms)
        .collect();
    let first = stamps.iter().min().copied().unwrap_or(0);
    let gaps = kafka.is_none();
    let (prepared, completed) = (
        at(Phase::Prepared).unwrap_or(u64::MAX),
        at(Phase::Completed).unwrap_or(now_ms()),
    );
    let window = |from: u64, to: u64| -> Vec<u64> {
        stamps
            .iter()
            .copied()
            .filter(|s| *s >= from && *s <= to)
            .collect()
    };
    Ok(Report {
        records: cfg.records as u64,
        blue,
        green,
        duplicates,
        missing,
        wrong_side,
        barrier,
        status,
        phases,
        steady_gap_ms: gaps.then(|| largest_gap(window(first + 200, prepared.saturating_sub(200)))),
        cutover_gap_ms: gaps
            .then(|| largest_gap(window(prepared.saturating_sub(200), completed + 500))),
        kafka,
        coordinator_kills: kills,
        elapsed: started.elapsed(),
    })
}

/// For tests: runs the scenario in `dir` and returns its report if it is exact; otherwise panics
/// with the report, keeping `dir` (state, outputs, logs) for a look.
pub async fn run_expecting_exact(cfg: &ScenarioConfig, dir: tempfile::TempDir) -> Report {
    let report = match run(cfg).await {
        Ok(r) => r,
        Err(e) => {
            let dir = dir.keep();
            panic!("scenario failed: {e:#}; logs kept in {}", dir.display())
        }
    };
    println!("{report}");
    if let Err(e) = check(&report) {
        let dir = dir.keep();
        panic!("{e:#}\n{report}\nlogs kept in {}", dir.display());
    }
    report
}

/// Fails unless the report shows an exact, completed cutover.
pub fn check(report: &Report) -> Result<()> {
    if report.status.phase() != Phase::Completed {
        bail!(
            "cutover did not complete: {:?} ({})",
            report.status.phase(),
            report.status.last_error
        );
    }
    if report.status.active != GREEN {
        bail!("green is not active: {}", report.status.active);
    }
    if let Some(k) = &report.kafka
        && !k.intact()
    {
        bail!(
            "Kafka output damaged: {} bad timestamps, {} bad contents, {} on the wrong \
             partition, {} out of channel order",
            k.bad_timestamp,
            k.bad_content,
            k.wrong_partition,
            k.out_of_order
        );
    }
    if !report.exact() {
        bail!(
            "not exact: {} duplicates, {} missing, {} on the wrong side of the barrier",
            report.duplicates,
            report.missing,
            report.wrong_side
        );
    }
    if report.blue.output == 0 || report.green.output == 0 {
        bail!("one deployment emitted nothing: the cutover was not exercised");
    }
    Ok(())
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let fmt_ts =
            |t: Option<i64>| t.map_or("-".into(), |t| format!("{t} (BASE+{})", t - BASE_MS));
        writeln!(
            f,
            "sluice blue/green cutover of {PIPELINE}: {BLUE} -> {GREEN}"
        )?;
        writeln!(
            f,
            "  outcome      {:?}, active {}, epoch {}, barrier T = {}",
            self.status.phase(),
            self.status.active,
            self.status.epoch,
            fmt_ts(self.barrier)
        )?;
        writeln!(
            f,
            "  input        {} records, replayed by both deployments",
            self.records
        )?;
        for (name, d) in [(BLUE, &self.blue), (GREEN, &self.green)] {
            let range = d.output_range.map_or("-".into(), |(a, b)| {
                format!("BASE+{}..=BASE+{}", a - BASE_MS, b - BASE_MS)
            });
            writeln!(
                f,
                "  {name:<12} sent {:>7}  admitted {:>7}  dropped {:>7}  output lines {:>7}  event times {range}",
                d.sent, d.acked_admitted, d.acked_dropped, d.output
            )?;
        }
        writeln!(
            f,
            "  merged       {} unique records, duplicates {}, missing {}, wrong side of T {}",
            self.records - self.missing,
            self.duplicates,
            self.missing,
            self.wrong_side
        )?;
        harness::write_phases(f, &self.phases)?;
        match (self.cutover_gap_ms, self.steady_gap_ms) {
            (Some(cutover), Some(steady)) => writeln!(
                f,
                "  output gap   largest gap between consecutive output records: {cutover} ms around the cutover, {steady} ms in steady state"
            )?,
            _ => writeln!(
                f,
                "  output gap   not measured (Kafka timestamps carry event time, not write time)"
            )?,
        }
        if let Some(k) = &self.kafka {
            writeln!(
                f,
                "  kafka        topic {} ({} partitions, {} used): read back {} records; bad timestamps {}, bad contents {}, wrong partition {}, out of channel order {}",
                k.topic,
                k.partitions,
                k.partitions_used,
                k.read,
                k.bad_timestamp,
                k.bad_content,
                k.wrong_partition,
                k.out_of_order
            )?;
        }
        if self.coordinator_kills > 0 {
            writeln!(
                f,
                "  faults       coordinator killed -9 and restarted {} times",
                self.coordinator_kills
            )?;
        }
        write!(f, "  took         {:.1} s", self.elapsed.as_secs_f64())
    }
}

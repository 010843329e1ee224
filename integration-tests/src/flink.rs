//! Real Apache Flink end to end: blue and green Flink jobs (the Java reference sink and test job
//! under `integration-tests/flink/`) cut over through real gate sidecars and the coordinator.
//!
//! Flink 2.3.0 comes from PyPI (`scripts/flink.sh`, cached in `$SLUICE_CACHE/flink`), the job is
//! compiled by `integration-tests/flink/build.sh` (cached by a hash of its sources). Every JVM,
//! the coordinator and the sidecars listen on 127.0.0.1 or Unix sockets only.
//!
//! The input is [`Sequence`]: record `i` is a pure function of `i` (the Java `Sequence` class
//! computes the same), so the merged output is checked record by record: content (key, value with
//! the keyed step's running count, event time), side of the barrier, and multiplicity.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use sluice_proto::v1::{Phase, PipelineStatus, StartCutoverRequest, When, pipeline_event};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

pub use crate::harness::PhaseSeen;
use crate::harness::{self, Barrier, Coordinator, cutover_client, now_ms};
use crate::procs::{Proc, free_port};

/// Pipeline name of the Flink test.
pub const PIPELINE: &str = "flink/orders";
/// Blue deployment id.
pub const BLUE: &str = "orders-blue";
/// Green deployment id.
pub const GREEN: &str = "orders-green";
/// First event time of the input (the Java `Sequence.BASE_MS`).
pub const BASE_MS: i64 = 1_700_000_000_000;
/// The Flink version `scripts/flink.sh` installs.
pub const FLINK_VERSION: &str = "2.3.0";

/// JVM options Flink's own `config.yaml` passes to every Flink JVM on Java 17.
const JAVA_OPENS: &[&str] = &[
    "--add-opens=java.base/java.lang=ALL-UNNAMED",
    "--add-opens=java.base/java.net=ALL-UNNAMED",
    "--add-opens=java.base/java.io=ALL-UNNAMED",
    "--add-opens=java.base/java.nio=ALL-UNNAMED",
    "--add-opens=java.base/sun.nio.ch=ALL-UNNAMED",
    "--add-opens=java.base/java.lang.reflect=ALL-UNNAMED",
    "--add-opens=java.base/java.text=ALL-UNNAMED",
    "--add-opens=java.base/java.time=ALL-UNNAMED",
    "--add-opens=java.base/java.util=ALL-UNNAMED",
    "--add-opens=java.base/java.util.concurrent=ALL-UNNAMED",
    "--add-opens=java.base/java.util.concurrent.atomic=ALL-UNNAMED",
    "--add-opens=java.base/java.util.concurrent.locks=ALL-UNNAMED",
];

/// A log4j2 configuration logging INFO to stdout (what `java_args` points the JVM at).
pub const LOG4J: &str = "\
rootLogger.level = INFO
rootLogger.appenderRef.console.ref = Console
appender.console.name = Console
appender.console.type = CONSOLE
appender.console.layout.type = PatternLayout
appender.console.layout.pattern = %d{HH:mm:ss,SSS} %-5p %c{1} - %m%n
logger.pekko.name = org.apache.pekko
logger.pekko.level = WARN
logger.shaded.name = org.apache.flink.shaded
logger.shaded.level = WARN
";

/// The sluice cache directory (`$SLUICE_CACHE`, default `~/.cache/sluice`).
pub fn cache_dir() -> PathBuf {
    std::env::var_os("SLUICE_CACHE").map_or_else(
        || {
            std::env::var_os("HOME")
                .map_or_else(|| PathBuf::from("/root"), PathBuf::from)
                .join(".cache/sluice")
        },
        PathBuf::from,
    )
}

/// `integration-tests/flink/` in the source tree.
pub fn java_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("flink")
}

/// An installed Flink and the compiled test job.
#[derive(Debug, Clone)]
pub struct Flink {
    /// Flink's home (`bin/`, `conf/`, `lib/`).
    pub home: PathBuf,
    /// The built Java side: `classes/` and `lib/` (the Kafka connector and its client).
    pub built: PathBuf,
}

impl Flink {
    /// Finds Flink (`$SLUICE_FLINK_HOME` or what `scripts/flink.sh` installed) and compiles the
    /// Java sources (cached). Fails with the install hint when Flink is missing.
    pub fn locate() -> Result<Self> {
        let home = std::env::var_os("SLUICE_FLINK_HOME").map_or_else(
            || cache_dir().join(format!("flink/{FLINK_VERSION}/pyflink")),
            PathBuf::from,
        );
        let dist = home.join(format!("lib/flink-dist-{FLINK_VERSION}.jar"));
        if !dist.exists() {
            bail!(
                "Apache Flink {FLINK_VERSION} is not installed ({} is missing): run \
                 `scripts/flink.sh` (downloads the PyPI wheels into {}), or set \
                 SLUICE_SKIP_FLINK=1 to skip the real Flink tests",
                dist.display(),
                cache_dir().join("flink").display()
            );
        }
        let out = Command::new("bash")
            .arg(java_dir().join("build.sh"))
            .env("SLUICE_FLINK_HOME", &home)
            .output()
            .context("cannot run integration-tests/flink/build.sh")?;
        if !out.status.success() {
            bail!(
                "building the Java test job failed:\n{}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        let built = PathBuf::from(String::from_utf8(out.stdout)?.trim());
        Ok(Self { home, built })
    }

    /// The classpath: the job's classes, the jars a job adds (Kafka connector), every Flink jar.
    pub fn classpath(&self) -> String {
        format!(
            "{0}/classes:{0}/lib/*:{1}/lib/*",
            self.built.display(),
            self.home.display()
        )
    }

    /// `java` arguments for `main` with JVM options `jvm` (e.g. `-Xmx384m`), logging to stdout
    /// with `work_dir/log4j2.properties` and keeping its temporary files in `work_dir/java-tmp`.
    pub fn java_args(
        &self,
        jvm: &[String],
        work_dir: &Path,
        main: &str,
        args: &[String],
    ) -> Vec<String> {
        let mut v: Vec<String> = jvm.to_vec();
        v.extend([
            "-XX:+UseSerialGC".into(),
            "-XX:TieredStopAtLevel=1".into(),
            format!(
                "-Dlog4j.configurationFile={}",
                work_dir.join("log4j2.properties").display()
            ),
            // Flink unpacks a 24 MB RPC jar into the temporary directory on every start and
            // leaves it there; inside the run's directory it goes when the run's directory does.
            format!("-Djava.io.tmpdir={}", work_dir.join("java-tmp").display()),
        ]);
        v.extend(JAVA_OPENS.iter().map(|s| s.to_string()));
        v.extend(["-cp".into(), self.classpath(), main.into()]);
        v.extend(args.iter().cloned());
        v
    }
}

/// Path of `java` (`$JAVA_HOME/bin/java` or `java` on the PATH).
pub fn java() -> PathBuf {
    std::env::var_os("JAVA_HOME").map_or_else(
        || PathBuf::from("java"),
        |h| PathBuf::from(h).join("bin/java"),
    )
}

/// The absolute path of `java`, or an error naming what is missing.
pub fn java_path() -> Result<PathBuf> {
    let j = java();
    if j.is_absolute() {
        return Ok(j);
    }
    let out = Command::new("sh")
        .args(["-c", "command -v java"])
        .output()?;
    ensure!(out.status.success(), "java (17) is not on the PATH");
    Ok(PathBuf::from(String::from_utf8(out.stdout)?.trim()))
}

// ------------------------------------------------------------------------------ the input

/// The deterministic input, the Rust twin of the Java `Sequence` class.
#[derive(Debug, Clone, Copy)]
pub struct Sequence {
    /// Records in the input.
    pub records: u64,
    /// Live rate, records per second (event time advances 1000/rate ms per record).
    pub rate: u64,
    /// Partitions (source splits).
    pub partitions: u64,
    /// Keys per partition.
    pub keys_per_partition: u64,
    /// Event times are out of order by up to this much either way.
    pub jitter_ms: i64,
    /// Partition 0 has no records with index in `idle_from..idle_to`.
    pub idle_from: u64,
    /// See `idle_from`.
    pub idle_to: u64,
}

/// One expected output record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Expected {
    /// Record key.
    pub key: String,
    /// Record value (includes the running count of the key).
    pub value: String,
    /// Event time.
    pub event_time_ms: i64,
}

impl Sequence {
    fn hash(i: u64) -> u64 {
        i.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 33
    }

    /// Milliseconds after the live start at which record `i` is produced.
    pub fn offset_ms(&self, i: u64) -> i64 {
        (i * 1000 / self.rate) as i64
    }

    /// Event time of record `i`.
    pub fn event_time(&self, i: u64) -> i64 {
        let jitter = (Self::hash(i) % (2 * self.jitter_ms as u64 + 1)) as i64 - self.jitter_ms;
        BASE_MS + self.offset_ms(i) + jitter
    }

    /// Partition of record `i`.
    pub fn partition(&self, i: u64) -> u64 {
        let p = i % self.partitions;
        if p == 0 && (self.idle_from..self.idle_to).contains(&i) {
            1
        } else {
            p
        }
    }

    /// Every expected output record, in index order, with the running count per key.
    pub fn expected(&self) -> Vec<Expected> {
        let mut counts: HashMap<String, u64> = HashMap::new();
        (0..self.records)
            .map(|i| {
                let p = self.partition(i);
                let key = format!("p{p}-k{}", (Self::hash(i) >> 8) % self.keys_per_partition);
                let n = counts.entry(key.clone()).or_default();
                *n += 1;
                Expected {
                    value: format!("{{\"i\":{i},\"p\":{p},\"n\":{n}}}"),
                    key,
                    event_time_ms: self.event_time(i),
                }
            })
            .collect()
    }

    pub(crate) fn java_args(&self, live_start_ms: u64) -> Vec<String> {
        [
            ("--records", self.records.to_string()),
            ("--rate", self.rate.to_string()),
            ("--idle-from", self.idle_from.to_string()),
            ("--idle-to", self.idle_to.to_string()),
            ("--live-start-ms", live_start_ms.to_string()),
        ]
        .into_iter()
        .flat_map(|(k, v)| [k.to_string(), v])
        .collect()
    }
}

// ------------------------------------------------------------------------------ Flink REST

/// A minimal HTTP/1.1 client for Flink's REST API on 127.0.0.1 (no HTTP crate needed).
pub async fn rest(port: u16, method: &str, path: &str) -> Result<(u16, serde_json::Value)> {
    let mut s = tokio::time::timeout(
        Duration::from_secs(5),
        tokio::net::TcpStream::connect(("127.0.0.1", port)),
    )
    .await
    .context("REST connect timed out")??;
    let req = format!(
        "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nAccept: application/json\r\n\
         Content-Length: 0\r\nConnection: close\r\n\r\n"
    );
    s.write_all(req.as_bytes()).await?;
    let mut buf = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut buf))
        .await
        .context("REST read timed out")??;
    let text = String::from_utf8_lossy(&buf);
    let (head, body) = text.split_once("\r\n\r\n").context("bad HTTP response")?;
    let status: u16 = head
        .split_whitespace()
        .nth(1)
        .context("no HTTP status")?
        .parse()?;
    let body = if head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        dechunk(body)
    } else {
        body.to_string()
    };
    let json = if body.trim().is_empty() {
        serde_json::Value::Null
    } else {
        serde_json::from_str(&body).with_context(|| format!("bad JSON from {path}: {body}"))?
    };
    Ok((status, json))
}

fn dechunk(mut body: &str) -> String {
    let mut out = String::new();
    while let Some((size, rest)) = body.split_once("\r\n") {
        let n = usize::from_str_radix(size.trim(), 16).unwrap_or(0);
        if n == 0 || rest.len() < n {
            break;
        }
        out.push_str(&rest[..n]);
        body = rest[n..].trim_start_matches("\r\n");
    }
    out
}

/// Waits for the one job of a Flink cluster and returns its id.
pub(crate) async fn wait_for_job(port: u16, within: Duration) -> Result<String> {
    let deadline = Instant::now() + within;
    loop {
        if let Ok((200, v)) = rest(port, "GET", "/jobs/overview").await
            && let Some(id) = v["jobs"][0]["jid"].as_str()
        {
            return Ok(id.to_string());
        }
        if Instant::now() > deadline {
            bail!("no Flink job on REST port {port} after {within:?}");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

pub(crate) async fn job_state(port: u16, job: &str) -> Result<String> {
    let (_, v) = rest(port, "GET", &format!("/jobs/{job}")).await?;
    Ok(v["state"].as_str().unwrap_or("?").to_string())
}

// ------------------------------------------------------------------------------ processes

/// How the blue job runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BlueMode {
    /// A local mini-cluster in one JVM; cancelled through REST after the drain.
    MiniCluster,
    /// A standalone cluster (JobManager and TaskManager JVMs); the TaskManager is killed `-9`
    /// after commit and before drain, a new one is started, Flink restores the last checkpoint.
    StandaloneKillTaskManager,
}

/// How the Flink scenario runs.
#[derive(Debug, Clone)]
pub struct FlinkConfig {
    /// Where everything goes (logs, sockets, outputs, checkpoints).
    pub work_dir: PathBuf,
    /// The input.
    pub sequence: Sequence,
    /// Parallelism of blue.
    pub blue_parallelism: u32,
    /// Parallelism of green.
    pub green_parallelism: u32,
    /// Green's slow bootstrap: its sidecar and job start this long after the live start.
    pub green_delay: Duration,
    /// How blue runs.
    pub blue: BlueMode,
    /// Barrier margin.
    pub margin_ms: i64,
    /// Drain lateness.
    pub drain_lateness_ms: i64,
    /// Readiness lag.
    pub max_lag_ms: i64,
    /// The sidecars' `--idle-timeout` (closed channels do not turn idle: they count until they
    /// reconnect or `--closed-channel-expiry`, so a blue restart may take longer than this).
    pub sidecar_idle_timeout: Duration,
    /// Kill variant: the replacement TaskManager starts this long after the kill (in Kubernetes:
    /// the time to reschedule the pod).
    pub replace_taskmanager_after: Duration,
}

impl FlinkConfig {
    /// The defaults of the test.
    pub fn new(work_dir: impl Into<PathBuf>, blue: BlueMode) -> Self {
        let rate = 2_000;
        let seconds = match blue {
            BlueMode::MiniCluster => 40,
            BlueMode::StandaloneKillTaskManager => 50,
        };
        Self {
            work_dir: work_dir.into(),
            sequence: Sequence {
                records: rate * seconds,
                rate,
                partitions: 4,
                keys_per_partition: 8,
                jitter_ms: 100,
                // Partition 0 is silent from 6 s to 12 s of live time (blue is live then).
                idle_from: rate * 6,
                idle_to: rate * 12,
            },
            blue_parallelism: 2,
            green_parallelism: 3,
            green_delay: Duration::from_secs(10),
            blue,
            margin_ms: 1_000,
            drain_lateness_ms: 1_000,
            max_lag_ms: 1_000,
            sidecar_idle_timeout: Duration::from_secs(10),
            replace_taskmanager_after: Duration::ZERO,
        }
    }
}

fn sidecar(cfg: &FlinkConfig, port: u16, deployment: &str) -> Result<(Proc, PathBuf, PathBuf)> {
    let output = cfg.work_dir.join(format!("{deployment}.jsonl"));
    let extra = [
        "--sink".to_owned(),
        format!("file:{}", output.display()),
        "--idle-timeout".to_owned(),
        format!("{}ms", cfg.sidecar_idle_timeout.as_millis()),
    ];
    let (proc, socket) = harness::start_sidecar(
        &cfg.work_dir,
        port,
        PIPELINE,
        deployment,
        &format!("{deployment}-sidecar"),
        &extra,
    )?;
    Ok((proc, socket, output))
}

fn coordinator(cfg: &FlinkConfig) -> Result<(Proc, u16)> {
    let c = Coordinator::start(
        &cfg.work_dir,
        Barrier {
            margin_ms: cfg.margin_ms,
            drain_lateness_ms: cfg.drain_lateness_ms,
            max_lag_ms: cfg.max_lag_ms,
            prepare_timeout: Duration::from_secs(3),
        },
    )?;
    Ok((c.proc, c.port))
}

/// A Flink job's arguments for one deployment.
fn job_args(
    cfg: &FlinkConfig,
    deployment: &str,
    socket: &Path,
    parallelism: u32,
    live: u64,
) -> Vec<String> {
    job_flags(
        &cfg.work_dir,
        deployment,
        &cfg.sequence,
        live,
        &[
            ("--pipeline", PIPELINE.to_string()),
            ("--socket", socket.display().to_string()),
            ("--parallelism", parallelism.to_string()),
        ],
    )
}

/// The arguments of a test job for `deployment`: `flags`, the deployment, its checkpoint
/// directory under `work_dir`, and the input `seq` live from `live`.
pub(crate) fn job_flags(
    work_dir: &Path,
    deployment: &str,
    seq: &Sequence,
    live: u64,
    flags: &[(&str, String)],
) -> Vec<String> {
    let checkpoints = work_dir.join(format!("{deployment}-checkpoints"));
    let mut v: Vec<String> = flags
        .iter()
        .flat_map(|(k, v)| [k.to_string(), v.clone()])
        .collect();
    v.extend([
        "--deployment".into(),
        deployment.into(),
        "--checkpoint-dir".into(),
        format!("file://{}", checkpoints.display()),
    ]);
    v.extend(seq.java_args(live));
    v
}

const JOB_MAIN: &str = "dev.sluice.flink.job.CutoverJob";

/// A mini-cluster JVM running one deployment's job; REST on `rest_port`.
fn mini_cluster(
    flink: &Flink,
    cfg: &FlinkConfig,
    deployment: &str,
    socket: &Path,
    parallelism: u32,
    live: u64,
) -> Result<(Proc, u16)> {
    let rest_port = free_port()?;
    let mut args = job_args(cfg, deployment, socket, parallelism, live);
    args.extend(["--rest-port".into(), rest_port.to_string()]);
    let proc = Proc::spawn(
        &format!("{deployment} Flink"),
        &java_path()?,
        &flink.java_args(&["-Xmx400m".into()], &cfg.work_dir, JOB_MAIN, &args),
        &cfg.work_dir.join(format!("{deployment}-flink.log")),
    )?;
    Ok((proc, rest_port))
}

/// A standalone Flink session cluster: one JobManager, TaskManagers started on demand.
pub(crate) struct Standalone {
    conf_dir: PathBuf,
    /// The JobManager's REST port.
    pub(crate) rest_port: u16,
    /// JVM options and `-D` settings of a TaskManager, as `bin/taskmanager.sh` derives them.
    tm_jvm: Vec<String>,
    tm_dynamic: Vec<String>,
    _jobmanager: Proc,
    /// The TaskManagers started, in order (killed ones stay in the list).
    pub(crate) taskmanagers: Vec<Proc>,
}

impl Standalone {
    /// A JobManager and one TaskManager of `slots` slots, logging into `work_dir`.
    pub(crate) fn start(flink: &Flink, work_dir: &Path, name: &str, slots: u32) -> Result<Self> {
        let conf_dir = work_dir.join(format!("{name}-conf"));
        std::fs::create_dir_all(&conf_dir)?;
        let rest_port = free_port()?;
        let rpc_port = free_port()?;
        let conf = format!(
            "jobmanager.rpc.address: 127.0.0.1\n\
             jobmanager.rpc.port: {rpc_port}\n\
             jobmanager.bind-host: 127.0.0.1\n\
             jobmanager.memory.process.size: 700m\n\
             taskmanager.bind-host: 127.0.0.1\n\
             taskmanager.host: 127.0.0.1\n\
             taskmanager.numberOfTaskSlots: {slots}\n\
             taskmanager.memory.process.size: 1100m\n\
             taskmanager.memory.managed.size: 64m\n\
             rest.address: 127.0.0.1\n\
             rest.bind-address: 127.0.0.1\n\
             rest.port: {rest_port}\n\
             heartbeat.interval: 1000\n\
             heartbeat.timeout: 6000\n\
             metrics.fetcher.update-interval: 500\n\
             web.refresh-interval: 500\n\
             parallelism.default: {slots}\n"
        );
        std::fs::write(conf_dir.join("config.yaml"), conf)?;
        let jobmanager = Proc::spawn(
            &format!("{name} JobManager"),
            &java_path()?,
            &flink.java_args(
                &["-Xmx400m".into()],
                work_dir,
                "org.apache.flink.runtime.entrypoint.StandaloneSessionClusterEntrypoint",
                &["--configDir".into(), conf_dir.display().to_string()],
            ),
            &work_dir.join(format!("{name}-jobmanager.log")),
        )?;
        // What bin/taskmanager.sh does: BashJavaUtils turns the memory settings into JVM options
        // and explicit -D settings (a TaskManagerRunner started without them refuses to start).
        let out = Command::new(java_path()?)
            .args([
                "-cp",
                &format!(
                    "{}/bin/bash-java-utils.jar:{}",
                    flink.home.display(),
                    flink.classpath()
                ),
                "org.apache.flink.runtime.util.bash.BashJavaUtils",
                "GET_TM_RESOURCE_PARAMS",
                "--configDir",
                &conf_dir.display().to_string(),
            ])
            .output()
            .context("cannot run BashJavaUtils")?;
        let results: Vec<String> = String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter_map(|l| l.strip_prefix("BASH_JAVA_UTILS_EXEC_RESULT:"))
            .map(str::to_string)
            .collect();
        ensure!(
            results.len() == 2,
            "BashJavaUtils failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        let split = |s: &str| s.split_whitespace().map(str::to_string).collect::<Vec<_>>();
        let mut s = Self {
            conf_dir,
            rest_port,
            tm_jvm: split(&results[0]),
            tm_dynamic: split(&results[1]),
            _jobmanager: jobmanager,
            taskmanagers: Vec::new(),
        };
        s.start_taskmanager(flink, work_dir, name)?;
        Ok(s)
    }

    /// Starts one more TaskManager.
    pub(crate) fn start_taskmanager(
        &mut self,
        flink: &Flink,
        work_dir: &Path,
        name: &str,
    ) -> Result<()> {
        let n = self.taskmanagers.len();
        self.taskmanagers.push(Proc::spawn(
            &format!("{name} TaskManager {n}"),
            &java_path()?,
            &flink.java_args(
                &self.tm_jvm,
                work_dir,
                "org.apache.flink.runtime.taskexecutor.TaskManagerRunner",
                &[
                    vec!["--configDir".into(), self.conf_dir.display().to_string()],
                    self.tm_dynamic.clone(),
                ]
                .concat(),
            ),
            &work_dir.join(format!("{name}-taskmanager-{n}.log")),
        )?);
        Ok(())
    }

    /// Waits until `slots` task slots are registered and free.
    pub(crate) async fn wait_for_slots(&self, slots: u64, within: Duration) -> Result<()> {
        let deadline = Instant::now() + within;
        loop {
            if let Ok((200, v)) = rest(self.rest_port, "GET", "/overview").await
                && v["slots-available"].as_u64().unwrap_or(0) >= slots
            {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!("the standalone cluster has no {slots} free slots after {within:?}");
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// Submits job `main` with a client JVM (`--submit`) and returns its id.
    pub(crate) fn submit(
        &self,
        flink: &Flink,
        work_dir: &Path,
        main: &str,
        args: &[String],
    ) -> Result<String> {
        let mut args = args.to_vec();
        args.extend(["--submit".into(), format!("127.0.0.1:{}", self.rest_port)]);
        let out = Command::new(java_path()?)
            .args(flink.java_args(&["-Xmx256m".into()], work_dir, main, &args))
            .output()
            .context("cannot run the Flink client")?;
        std::fs::write(
            work_dir.join("blue-submit.log"),
            [&out.stdout[..], &out.stderr[..]].concat(),
        )?;
        let stdout = String::from_utf8_lossy(&out.stdout);
        stdout
            .lines()
            .find_map(|l| l.strip_prefix("JOB_ID ").map(str::to_string))
            .with_context(|| {
                format!(
                    "job submission failed ({}); see blue-submit.log",
                    out.status
                )
            })
    }
}

// ------------------------------------------------------------------------------ coordinator API

async fn pipeline_status(port: u16) -> Result<PipelineStatus> {
    harness::pipeline_status(port, PIPELINE).await
}

#[derive(Default)]
struct Watched {
    phases: Vec<PhaseSeen>,
    /// (coordinator wall clock, blue gate watermark) from status events.
    blue_watermarks: Vec<(u64, i64)>,
}

async fn watch(port: u16, seen: Arc<Mutex<Watched>>) {
    harness::watch(port, PIPELINE, |ev| {
        let mut w = seen.lock().expect("not poisoned");
        if let Some(pipeline_event::Kind::Status(s)) = &ev.kind {
            for g in s.gates.iter().filter(|g| g.deployment == BLUE) {
                if let Some(wm) = g.progress.as_ref().and_then(|p| p.watermark_ms) {
                    w.blue_watermarks.push((ev.at_ms, wm));
                }
            }
        }
        if let Some(p) = PhaseSeen::of(&ev) {
            p.push_if_new(&mut w.phases);
        }
    })
    .await;
}

// ------------------------------------------------------------------------------ output

#[derive(serde::Deserialize)]
struct HeaderLine {
    key: String,
    value: Option<String>,
}

/// One output line, as far as the count needs it.
#[derive(serde::Deserialize)]
struct Line {
    deployment: String,
    channel: String,
    key: String,
    value: String,
    event_time_ms: i64,
    headers: Vec<HeaderLine>,
    written_at_ms: u64,
}

#[derive(serde::Deserialize)]
struct Value {
    i: u64,
}

impl Line {
    fn header(&self, k: &str) -> Option<u64> {
        self.headers
            .iter()
            .find(|h| h.key == k)
            .and_then(|h| h.value.as_deref()?.parse().ok())
    }
    fn index(&self) -> Result<u64> {
        Ok(serde_json::from_str::<Value>(&self.value)
            .with_context(|| format!("bad value {}", self.value))?
            .i)
    }
}

fn read_output(path: &Path) -> Result<Vec<Line>> {
    if !path.exists() {
        return Ok(Vec::new());
    }
    let text = std::fs::read_to_string(path)?;
    text.lines()
        .map(|l| serde_json::from_str(l).with_context(|| format!("bad output line {l}")))
        .collect()
}

/// The largest gap between consecutive stamps and the stamp it ends at.
fn largest_gap(mut stamps: Vec<u64>) -> (u64, u64) {
    stamps.sort_unstable();
    stamps
        .windows(2)
        .map(|w| (w[1] - w[0], w[1]))
        .max()
        .unwrap_or((0, 0))
}

// ------------------------------------------------------------------------------ report

/// What the kill variant saw.
#[derive(Debug, Clone, Default)]
pub struct KillReport {
    /// When the TaskManager was killed, after commit (ms after commit).
    pub killed_after_commit_ms: u64,
    /// The checkpoint blue restored from (Flink REST).
    pub restored_checkpoint: Option<u64>,
    /// Blue records written by attempt 0 after the restored checkpoint's barrier (stamped with
    /// `after_checkpoint >= restored`): the records the rule says must be duplicated.
    pub predicted_duplicates: u64,
    /// Duplicates per blue channel (all of them a suffix of that channel's attempt-0 output).
    pub duplicates_per_channel: BTreeMap<String, u64>,
    /// From the kill until the restarted blue job's first output record (ms; 0 if none).
    pub blue_silent_ms: u64,
}

/// What happened.
#[derive(Debug, Clone)]
pub struct FlinkReport {
    /// Blue mode.
    pub mode: BlueMode,
    /// Input records.
    pub records: u64,
    /// Barrier.
    pub barrier: Option<i64>,
    /// Final status.
    pub status: PipelineStatus,
    /// Phases seen.
    pub phases: Vec<PhaseSeen>,
    /// Output lines of blue and green.
    pub blue_lines: u64,
    /// See `blue_lines`.
    pub green_lines: u64,
    /// Distinct records in the merged output.
    pub unique: u64,
    /// Extra copies in the merged output.
    pub duplicates: u64,
    /// Extra copies of green records.
    pub green_duplicates: u64,
    /// Records nowhere.
    pub missing: u64,
    /// Blue records `>= T` and green records `< T`.
    pub wrong_side: u64,
    /// Lines whose key, value (running count) or event time differ from the input's.
    pub wrong_content: u64,
    /// Blue's Flink job state when it was cancelled (RUNNING: blue still had input to emit).
    pub blue_state_at_cancel: String,
    /// Blue gate watermark advance while partition 0 was silent (ms of event time).
    pub idle_window_watermark_advance_ms: Option<i64>,
    /// Largest gap between consecutive output records in steady state and around the cutover.
    pub steady_gap_ms: u64,
    /// See `steady_gap_ms`.
    pub cutover_gap_ms: u64,
    /// Largest gap while green bootstraps and catches up (same machine), before the prepare.
    pub bootstrap_gap_ms: u64,
    /// When the largest steady and cutover gaps ended, ms after the live start.
    pub steady_gap_at_ms: u64,
    /// See `steady_gap_at_ms`.
    pub cutover_gap_at_ms: u64,
    /// When the barrier was prepared, ms after the live start.
    pub prepared_at_ms: u64,
    /// The kill variant's figures.
    pub kill: Option<KillReport>,
    /// Problems found by the duplicate rule (empty when it holds).
    pub rule_violations: Vec<String>,
    /// Wall time.
    pub elapsed: Duration,
}

// ------------------------------------------------------------------------------ the scenario

/// Runs the scenario and counts the outcome; fails only when the machinery fails. Exactness is
/// judged by [`check`].
pub async fn run(flink: &Flink, cfg: &FlinkConfig) -> Result<FlinkReport> {
    let started = Instant::now();
    let dir = cfg.work_dir.clone();
    std::fs::create_dir_all(&dir)?;
    std::fs::write(dir.join("log4j2.properties"), LOG4J)?;
    std::fs::create_dir_all(dir.join("java-tmp"))?;
    let (mut coordinator, port) = coordinator(cfg)?;
    let (mut blue_sidecar, blue_sock, blue_out) = sidecar(cfg, port, BLUE)?;

    let watched = Arc::new(Mutex::new(Watched::default()));
    let watcher = tokio::spawn(watch(port, watched.clone()));

    // Blue: in production from the start.
    let mut standalone = None;
    let mut blue_mini = None;
    let live_start;
    let blue_rest;
    let blue_job;
    match cfg.blue {
        BlueMode::MiniCluster => {
            live_start = now_ms();
            let (p, rest_port) = mini_cluster(
                flink,
                cfg,
                BLUE,
                &blue_sock,
                cfg.blue_parallelism,
                live_start,
            )?;
            blue_mini = Some(p);
            blue_rest = rest_port;
            blue_job = wait_for_job(rest_port, Duration::from_secs(60)).await?;
        }
        BlueMode::StandaloneKillTaskManager => {
            let s = Standalone::start(flink, &cfg.work_dir, "blue", cfg.blue_parallelism)?;
            s.wait_for_slots(cfg.blue_parallelism.into(), Duration::from_secs(60))
                .await?;
            live_start = now_ms();
            let args = job_args(cfg, BLUE, &blue_sock, cfg.blue_parallelism, live_start);
            let (f, c, a) = (flink.clone(), cfg.clone(), args);
            let s = tokio::task::spawn_blocking(move || {
                let id = s.submit(&f, &c.work_dir, JOB_MAIN, &a);
                (s, id)
            })
            .await?;
            blue_job = s.1?;
            blue_rest = s.0.rest_port;
            standalone = Some(s.0);
        }
    }
    let live = Instant::now() - Duration::from_millis(now_ms().saturating_sub(live_start));

    // Green: a deliberately slow bootstrap, then it catches up from the start of the input.
    tokio::time::sleep_until((live + cfg.green_delay).into()).await;
    let green_started = now_ms();
    let (mut green_sidecar, green_sock, green_out) = sidecar(cfg, port, GREEN)?;
    let (mut green_flink, _green_rest) = mini_cluster(
        flink,
        cfg,
        GREEN,
        &green_sock,
        cfg.green_parallelism,
        live_start,
    )?;

    // The orchestrator asks for the cutover now; the coordinator waits until green is ready.
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

    // Wait for the commit (kill variant: kill blue's TaskManager right then) and the drain.
    let deadline = Instant::now() + Duration::from_secs(150);
    let mut kill = None;
    let mut replace_at = None;
    let mut committed_at = None;
    let status = loop {
        let s = pipeline_status(port).await?;
        if s.phase() == Phase::Committed && committed_at.is_none() {
            committed_at = Some(Instant::now());
        }
        if let (Some(c), Some(st), None) = (committed_at, standalone.as_mut(), kill.as_ref())
            && s.phase() == Phase::Committed
        {
            // kill -9: the TaskManager JVM dies with its sink subtasks mid-stream; the blue
            // sidecar (its own container) keeps running. A new TaskManager replaces it.
            st.taskmanagers[0].kill();
            let killed_at_ms = now_ms();
            let after = c.elapsed().as_millis() as u64;
            replace_at = Some(Instant::now() + cfg.replace_taskmanager_after);
            kill = Some((killed_at_ms, after));
        }
        if let (Some(at), Some(st)) = (replace_at, standalone.as_mut())
            && Instant::now() >= at
        {
            st.start_taskmanager(flink, &cfg.work_dir, "blue")?;
            replace_at = None;
        }
        if s.phase() == Phase::Completed {
            break s;
        }
        if matches!(s.phase(), Phase::Aborted) || Instant::now() > deadline {
            bail!(
                "cutover did not complete: {:?} ({}); phases {:?}",
                s.phase(),
                s.last_error,
                watched.lock().expect("not poisoned").phases
            );
        }
        green_flink.check_alive().context("green Flink")?;
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    ensure!(
        cfg.blue == BlueMode::MiniCluster || kill.is_some(),
        "the cutover completed before blue's TaskManager could be killed"
    );

    // Only now is blue cancelled.
    let mut restored_checkpoint = None;
    if kill.is_some() {
        let (_, v) = rest(blue_rest, "GET", &format!("/jobs/{blue_job}/checkpoints")).await?;
        restored_checkpoint = v["latest"]["restored"]["id"].as_u64();
        std::fs::write(dir.join("blue-checkpoints.json"), v.to_string())?;
    }
    let blue_state_at_cancel = job_state(blue_rest, &blue_job).await?;
    let (code, _) = rest(blue_rest, "PATCH", &format!("/jobs/{blue_job}?mode=cancel")).await?;
    ensure!(
        code == 202 || code == 200,
        "cancelling blue returned HTTP {code}"
    );
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        // A mini-cluster shuts down (and its REST API with it) once its job is cancelled.
        if let Some(p) = blue_mini.as_mut()
            && p.check_alive().is_err()
        {
            break;
        }
        if let Ok(state) = job_state(blue_rest, &blue_job).await
            && state == "CANCELED"
        {
            break;
        }
        ensure!(Instant::now() < deadline, "blue was not cancelled");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    drop(blue_mini);
    drop(standalone);

    // Green runs to the end of its input; its last flush is acknowledged before it finishes.
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        // The mini-cluster JVM exits with 0 once its job has FINISHED (after the final flush).
        if let Some(status) = green_flink.exited()? {
            ensure!(status.success(), "green Flink failed: {status}");
            break;
        }
        ensure!(Instant::now() < deadline, "green did not finish its input");
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    watcher.abort();
    blue_sidecar.check_alive()?;
    green_sidecar.check_alive()?;
    drop((blue_sidecar, green_sidecar, green_flink));
    coordinator.kill();

    let watched = std::mem::take(&mut *watched.lock().expect("not poisoned"));
    count(
        cfg,
        status,
        watched,
        blue_state_at_cancel,
        Times {
            live_start,
            green_started,
        },
        kill,
        restored_checkpoint,
        &blue_out,
        &green_out,
        started,
    )
}

/// Wall clock ms of the run's landmarks.
struct Times {
    live_start: u64,
    green_started: u64,
}

#[allow(clippy::too_many_arguments)]
fn count(
    cfg: &FlinkConfig,
    status: PipelineStatus,
    watched: Watched,
    blue_state_at_cancel: String,
    times: Times,
    kill: Option<(u64, u64)>,
    restored_checkpoint: Option<u64>,
    blue_out: &Path,
    green_out: &Path,
    started: Instant,
) -> Result<FlinkReport> {
    let seq = &cfg.sequence;
    let expected = seq.expected();
    let barrier = status.barrier_ms;
    let t = barrier.context("no barrier")?;
    let blue = read_output(blue_out)?;
    let green = read_output(green_out)?;
    let n = seq.records as usize;
    let mut blue_count = vec![0u32; n];
    let mut green_count = vec![0u32; n];
    let (mut wrong_side, mut wrong_content) = (0, 0);
    for (lines, counts, is_blue, name) in [
        (&blue, &mut blue_count, true, BLUE),
        (&green, &mut green_count, false, GREEN),
    ] {
        for l in lines.iter() {
            let i = l.index()? as usize;
            let e = expected.get(i).context("index out of range")?;
            if l.key != e.key
                || l.value != e.value
                || l.event_time_ms != e.event_time_ms
                || l.deployment != name
            {
                wrong_content += 1;
            }
            if (l.event_time_ms >= t) == is_blue {
                wrong_side += 1;
            }
            counts[i] += 1;
        }
    }
    let total = |i: usize| blue_count[i] + green_count[i];
    let duplicates = (0..n).map(|i| total(i).saturating_sub(1) as u64).sum();
    let green_duplicates = green_count.iter().map(|c| c.saturating_sub(1) as u64).sum();
    let missing = (0..n).filter(|i| total(*i) == 0).count() as u64;
    let unique = (0..n).filter(|i| total(*i) > 0).count() as u64;

    // The duplicate rule of a non-transactional sink under a blue restart (see `check`).
    let mut violations = Vec::new();
    let mut kill_report = None;
    if let Some((killed_at, after_commit)) = kill {
        let r = restored_checkpoint
            .context("blue restarted but Flink reports no restored checkpoint")?;
        let mut per_channel: BTreeMap<String, Vec<&Line>> = BTreeMap::new();
        for l in &blue {
            per_channel.entry(l.channel.clone()).or_default().push(l);
        }
        let mut predicted = 0;
        let mut dup_per_channel = BTreeMap::new();
        for (ch, lines) in &per_channel {
            let first: Vec<&&Line> = lines
                .iter()
                .filter(|l| l.header("attempt") == Some(0))
                .collect();
            let mut seen_dup = false;
            let mut dups = 0;
            for l in &first {
                let i = l.index()? as usize;
                let stamp = l.header("after_checkpoint").unwrap_or(0);
                let should = stamp >= r;
                predicted += u64::from(should);
                let is_dup = blue_count[i] > 1;
                dups += u64::from(is_dup);
                if should != is_dup {
                    violations.push(format!(
                        "blue channel {ch}: record {i} (after checkpoint {stamp}, restored {r}) \
                         appears {} times",
                        blue_count[i]
                    ));
                }
                if seen_dup && !is_dup {
                    violations.push(format!(
                        "blue channel {ch}: duplicates are not a suffix of its attempt-0 output \
                         (record {i} follows a duplicate)"
                    ));
                }
                seen_dup |= is_dup;
                if l.written_at_ms > killed_at + 1_000 {
                    violations.push(format!(
                        "blue channel {ch}: attempt-0 record {i} written after the kill"
                    ));
                }
            }
            for l in lines
                .iter()
                .filter(|l| l.header("attempt").unwrap_or(0) > 0)
            {
                if l.header("after_checkpoint").unwrap_or(0) < r {
                    violations.push(format!(
                        "blue channel {ch}: a restarted attempt emitted record {} stamped before \
                         the restored checkpoint {r}",
                        l.index()?
                    ));
                }
            }
            dup_per_channel.insert(ch.clone(), dups);
        }
        for i in 0..n {
            if blue_count[i] > 2 {
                violations.push(format!(
                    "record {i} appears {} times in blue",
                    blue_count[i]
                ));
            }
            if blue_count[i] > 1 && expected[i].event_time_ms >= t {
                violations.push(format!("record {i} >= T duplicated"));
            }
        }
        let restarted: Vec<u64> = blue
            .iter()
            .filter(|l| l.header("attempt").unwrap_or(0) > 0)
            .map(|l| l.written_at_ms)
            .collect();
        kill_report = Some(KillReport {
            killed_after_commit_ms: after_commit,
            restored_checkpoint,
            predicted_duplicates: predicted,
            duplicates_per_channel: dup_per_channel,
            blue_silent_ms: restarted
                .iter()
                .min()
                .map_or(0, |m| m.saturating_sub(killed_at)),
        });
    }

    let live_start = times.live_start;
    // Was the blue watermark carried past partition 0's silence (per-split idleness)?
    let idle_from = live_start + seq.offset_ms(seq.idle_from) as u64;
    let idle_to = live_start + seq.offset_ms(seq.idle_to) as u64;
    let in_window: Vec<i64> = watched
        .blue_watermarks
        .iter()
        .filter(|(at, _)| *at >= idle_from + 2_500 && *at <= idle_to)
        .map(|(_, w)| *w)
        .collect();
    let idle_window_watermark_advance_ms = match (in_window.first(), in_window.last()) {
        (Some(a), Some(b)) if in_window.len() > 2 => Some(b - a),
        _ => None,
    };

    let at = |p: Phase| {
        watched
            .phases
            .iter()
            .rev()
            .find(|s| s.phase == p)
            .map(|s| s.at_ms)
    };
    let stamps: Vec<u64> = blue.iter().chain(&green).map(|l| l.written_at_ms).collect();
    let first = stamps.iter().min().copied().unwrap_or(0);
    let prepared = at(Phase::Prepared).unwrap_or(u64::MAX);
    let completed = at(Phase::Completed).unwrap_or(now_ms());
    let window = |from: u64, to: u64| -> Vec<u64> {
        stamps
            .iter()
            .copied()
            .filter(|s| *s >= from && *s <= to)
            .collect()
    };
    // Steady state: blue alone and live (after its catch-up, before green's JVM starts).
    let steady = largest_gap(window(first + 2_000, times.green_started));
    // Green's bootstrap on the same 2 cores, until the barrier is prepared.
    let bootstrap = largest_gap(window(times.green_started, prepared.saturating_sub(200)));
    let cutover = largest_gap(window(prepared.saturating_sub(200), completed + 500));
    Ok(FlinkReport {
        mode: cfg.blue,
        records: seq.records,
        barrier,
        status,
        phases: watched.phases,
        blue_lines: blue.len() as u64,
        green_lines: green.len() as u64,
        unique,
        duplicates,
        green_duplicates,
        missing,
        wrong_side,
        wrong_content,
        blue_state_at_cancel,
        idle_window_watermark_advance_ms,
        steady_gap_ms: steady.0,
        steady_gap_at_ms: steady.1.saturating_sub(live_start),
        bootstrap_gap_ms: bootstrap.0,
        cutover_gap_ms: cutover.0,
        cutover_gap_at_ms: cutover.1.saturating_sub(live_start),
        prepared_at_ms: prepared.saturating_sub(live_start),
        kill: kill_report,
        rule_violations: violations,
        elapsed: started.elapsed(),
    })
}

/// Fails unless the report shows a completed cutover with every record present, in its exact
/// content, on the right side of the barrier, and duplicated only as the rule allows:
///
/// - without a blue failure: no duplicate at all;
/// - blue's TaskManager killed after commit: the only duplicates are blue records with event time
///   `< T` that blue's sink sent after the barrier of the checkpoint it restored from (and its
///   gate admitted before the kill). Each appears exactly twice, and every such record does
///   (the replay re-sends it and blue's gate, which still owns `[floor, T)`, admits it again);
///   per blue channel they are a suffix of the channel's pre-kill output. Records `>= T` are never
///   duplicated (blue's gate drops them) and green never duplicates.
pub fn check(r: &FlinkReport) -> Result<()> {
    ensure!(
        r.status.phase() == Phase::Completed && r.status.active == GREEN,
        "cutover did not complete: {:?}, active {}",
        r.status.phase(),
        r.status.active
    );
    ensure!(r.missing == 0, "{} records missing", r.missing);
    ensure!(
        r.wrong_side == 0,
        "{} records on the wrong side of T",
        r.wrong_side
    );
    ensure!(
        r.wrong_content == 0,
        "{} records with wrong content",
        r.wrong_content
    );
    ensure!(
        r.green_duplicates == 0,
        "{} green duplicates",
        r.green_duplicates
    );
    ensure!(
        r.blue_lines > 0 && r.green_lines > 0,
        "one deployment emitted nothing"
    );
    ensure!(
        r.blue_state_at_cancel == "RUNNING",
        "blue was {} when cancelled: the cutover did not happen mid-stream",
        r.blue_state_at_cancel
    );
    match &r.kill {
        None => ensure!(r.duplicates == 0, "{} duplicates", r.duplicates),
        Some(k) => {
            ensure!(
                r.rule_violations.is_empty(),
                "duplicate rule violated ({}):\n{}",
                r.rule_violations.len(),
                r.rule_violations
                    .iter()
                    .take(20)
                    .cloned()
                    .collect::<Vec<_>>()
                    .join("\n")
            );
            ensure!(
                r.duplicates == k.predicted_duplicates,
                "{} duplicates, the rule predicts {}",
                r.duplicates,
                k.predicted_duplicates
            );
        }
    }
    let adv = r
        .idle_window_watermark_advance_ms
        .context("no blue watermark sampled while partition 0 was idle")?;
    ensure!(
        adv >= 1_000,
        "blue's watermark advanced only {adv} ms while partition 0 was idle"
    );
    Ok(())
}

impl fmt::Display for FlinkReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mode = match self.mode {
            BlueMode::MiniCluster => "blue in a mini-cluster",
            BlueMode::StandaloneKillTaskManager => {
                "blue on a standalone cluster, TaskManager killed -9 after commit"
            }
        };
        writeln!(
            f,
            "real Flink {FLINK_VERSION} cutover of {PIPELINE}: {BLUE} (p=2) -> {GREEN} (p=3), {mode}"
        )?;
        writeln!(
            f,
            "  outcome      {:?}, active {}, epoch {}, barrier T = {}",
            self.status.phase(),
            self.status.active,
            self.status.epoch,
            self.barrier
                .map_or("-".into(), |t| format!("{t} (BASE+{})", t - BASE_MS))
        )?;
        writeln!(
            f,
            "  output       {BLUE} {} lines, {GREEN} {} lines; {} of {} records present, duplicates {} (green {}), missing {}, wrong side {}, wrong content {}",
            self.blue_lines,
            self.green_lines,
            self.unique,
            self.records,
            self.duplicates,
            self.green_duplicates,
            self.missing,
            self.wrong_side,
            self.wrong_content
        )?;
        writeln!(
            f,
            "  blue job     {} when cancelled after the drain",
            self.blue_state_at_cancel
        )?;
        if let Some(a) = self.idle_window_watermark_advance_ms {
            writeln!(
                f,
                "  idleness     blue gate watermark advanced {a} ms while partition 0 was silent"
            )?;
        }
        if let Some(k) = &self.kill {
            writeln!(
                f,
                "  kill         TaskManager killed {} ms after commit; restored checkpoint {:?}; restarted blue wrote again {} ms after the kill",
                k.killed_after_commit_ms, k.restored_checkpoint, k.blue_silent_ms
            )?;
            writeln!(
                f,
                "  duplicates   {} predicted by the rule, per blue channel {:?}",
                k.predicted_duplicates, k.duplicates_per_channel
            )?;
        }
        harness::write_phases(f, &self.phases)?;
        writeln!(
            f,
            "  output gap   largest gap between consecutive output records: {} ms around the cutover, \
             {} ms in steady state, {} ms while green bootstraps on the same cores\n               \
             (the cutover and steady gaps end {:.1} s and {:.1} s after the live start; prepared at {:.1} s)",
            self.cutover_gap_ms,
            self.steady_gap_ms,
            self.bootstrap_gap_ms,
            self.cutover_gap_at_ms as f64 / 1e3,
            self.steady_gap_at_ms as f64 / 1e3,
            self.prepared_at_ms as f64 / 1e3
        )?;
        write!(f, "  took         {:.1} s", self.elapsed.as_secs_f64())
    }
}

//! `bench`: how much the gate sidecar costs in the path to Kafka, measured side by side in one
//! run on the same broker (a real tansu on 127.0.0.1) and printed as figures and ratios.
//!
//! 1. Throughput: a plain rdkafka producer vs. the same records through a real `gate-sidecar`
//!    process with the Kafka sink (same producer settings, 100-byte values), in alternating
//!    rounds; medians are compared, and the CPU time each spends per record.
//! 2. The gate path alone: native frames in, `--sink null`, the sidecar on one core.
//! 3. Latency at half the sidecar's maximum measured with `linger.ms=0` (on both paths):
//!    client frame written -> `FlushAck` (sidecar) vs. first send -> last delivery report
//!    (plain), per group of records; and the sidecar alone (null sink) at the same load, which
//!    is its own share without the broker's variance.
//! 4. The sidecar's resident memory idle and its peak under load.
//!
//! On a machine with two or more CPUs the producer under test — the plain producer (run as a
//! child process of this benchmark) or the sidecar — gets CPU 0 to itself, while the broker and
//! the sidecar's client (standing in for the Flink job, which has cores of its own) share CPU 1:
//! both paths get the same single core, which makes the comparison fair and far less noisy
//! than letting four busy processes share two cores. `--no-pin` turns this off.
//!
//! Run it in release: `cargo run --release -p sluice-integration-tests --bin bench`.

use std::io::{Read as _, Write as _};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use clap::Parser;
use prost::Message as _;
use rdkafka::ClientConfig;
use rdkafka::client::ClientContext;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::producer::{
    BaseRecord, DeliveryResult, Producer as _, ProducerContext, ThreadedProducer,
};
use sluice_integration_tests::kafka::{self, Broker};
use sluice_integration_tests::procs::{self, Proc, binary, free_port, wait_for_tcp, wait_for_unix};
use sluice_proto::framing::encode_frame;
use sluice_proto::v1::{self, ClientFrame, ServerFrame, client_frame, server_frame};

/// Measures the sidecar against a plain rdkafka producer; prints figures and ratios.
#[derive(Parser, Debug)]
#[command(version, about)]
struct Args {
    /// Records per Kafka throughput run (each path sends this many).
    #[arg(long, default_value_t = 1_000_000)]
    records: usize,
    /// Alternating plain/sidecar throughput rounds (the medians are compared).
    #[arg(long, default_value_t = 3)]
    rounds: usize,
    /// Records for the gate-path-alone run (null sink).
    #[arg(long, default_value_t = 8_000_000)]
    gate_records: usize,
    /// Value size in bytes.
    #[arg(long, default_value_t = 100)]
    value_bytes: usize,
    /// Records per frame the client sends (a sink writer's batch).
    #[arg(long, default_value_t = 500)]
    batch: usize,
    /// Partitions of the benchmark topics.
    #[arg(long, default_value_t = 6)]
    partitions: i32,
    /// Duration of each latency run.
    #[arg(long, default_value = "5s", value_parser = humantime::parse_duration)]
    latency_for: Duration,
    /// Latency runs at this many records/s instead of half the measured maximum.
    #[arg(long)]
    latency_rate: Option<f64>,
    /// Records per latency sample (one frame + one Flush; one group for the plain producer).
    #[arg(long, default_value_t = 100)]
    latency_group: usize,
    /// Use this gate-sidecar binary instead of the workspace's (to compare two builds).
    #[arg(long)]
    sidecar_binary: Option<PathBuf>,
    /// Keep the work directory (logs) here instead of a temporary one.
    #[arg(long)]
    work_dir: Option<PathBuf>,
    /// Do not pin processes to CPUs (see the module doc).
    #[arg(long)]
    no_pin: bool,
    /// Internal: run only the plain producer (`throughput` or `latency`) in this process and print
    /// the result as JSON; the benchmark starts itself this way to pin it to a CPU.
    #[arg(long, hide = true)]
    child_plain: Option<String>,
    /// Internal: the child's broker.
    #[arg(long, hide = true)]
    child_bootstrap: Option<String>,
    /// Internal: the child's latency rate.
    #[arg(long, hide = true)]
    child_rate: Option<f64>,
    /// Internal: the sidecar socket of a `sidecar-latency` child.
    #[arg(long, hide = true)]
    child_socket: Option<PathBuf>,
    /// Internal: the sidecar deployment of a `sidecar-latency` child.
    #[arg(long, hide = true)]
    child_deployment: Option<String>,
}

const PIPELINE: &str = "bench/pipe";
/// `--sidecar-binary`, set once at start.
static SIDECAR_BINARY: std::sync::OnceLock<Option<PathBuf>> = std::sync::OnceLock::new();
/// Records sent and acknowledged before each throughput measurement starts.
const WARM_UP: usize = 1_000;
const BASE: i64 = 1_700_000_000_000;

fn main() -> ExitCode {
    let args = Args::parse();
    if cfg!(debug_assertions) {
        eprintln!(
            "bench: this is a debug build; figures are only meaningful with --release \
             (cargo run --release -p sluice-integration-tests --bin bench)"
        );
    }
    if let Some(mode) = &args.child_plain {
        return match child(&args, mode) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("bench child failed: {e:#}");
                ExitCode::FAILURE
            }
        };
    }
    if let Err(e) = procs::end_children_on_signal() {
        eprintln!("bench failed: {e:#}");
        return ExitCode::FAILURE;
    }
    match run(&args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("bench failed: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// One measurement alone in its process (pinned by the parent); prints JSON on stdout.
fn child(args: &Args, mode: &str) -> Result<()> {
    let bootstrap = args.child_bootstrap.as_deref().unwrap_or_default();
    let result = match mode {
        "throughput" | "throughput-front" => {
            let cpu = cpu_seconds("self")?;
            let topic = if mode == "throughput" {
                "plain"
            } else {
                "front"
            };
            let took = plain_throughput(bootstrap, topic, args)?;
            serde_json::json!({
                "seconds": took.as_secs_f64(),
                "cpu_seconds": cpu_seconds("self")? - cpu,
            })
        }
        "latency" => {
            let rate = args.child_rate.context("--child-rate")?;
            latencies_json(&plain_latency(bootstrap, "plain-lat", args, rate)?)
        }
        "sidecar-latency" => {
            let rate = args.child_rate.context("--child-rate")?;
            let socket = args.child_socket.as_deref().context("--child-socket")?;
            let deployment = args
                .child_deployment
                .as_deref()
                .context("--child-deployment")?;
            latencies_json(&sidecar_latency(socket, deployment, args, rate)?)
        }
        other => bail!("unknown child mode {other}"),
    };
    println!("{result}");
    Ok(())
}

fn latencies_json(l: &[Duration]) -> serde_json::Value {
    let ns: Vec<u64> = l.iter().map(|d| d.as_nanos() as u64).collect();
    serde_json::json!({ "latencies_ns": ns })
}

fn latencies_of(v: &serde_json::Value) -> Result<Vec<Duration>> {
    Ok(v["latencies_ns"]
        .as_array()
        .context("child result")?
        .iter()
        .filter_map(|v| v.as_u64().map(Duration::from_nanos))
        .collect())
}

/// The latency client of a sidecar in a child process, on `cpu` when pinning: on the same core
/// as the sidecar, as the plain producer's own sending and timing are; a client sharing the
/// broker's core would time the broker's CPU use, not the sidecar.
fn sidecar_latency_child(
    args: &Args,
    sc: &Sidecar,
    rate: f64,
    cpu: Option<usize>,
) -> Result<Vec<Duration>> {
    let extra = [
        "--child-socket".to_owned(),
        sc.socket.display().to_string(),
        "--child-deployment".to_owned(),
        sc.deployment.clone(),
    ];
    latencies_of(&run_child(
        args,
        "",
        "sidecar-latency",
        Some(rate),
        cpu,
        &extra,
    )?)
}

/// Runs one measurement (`mode`) in a child process, on `cpu` when pinning.
fn run_child(
    args: &Args,
    bootstrap: &str,
    mode: &str,
    rate: Option<f64>,
    cpu: Option<usize>,
    extra: &[String],
) -> Result<serde_json::Value> {
    let exe = std::env::current_exe()?;
    let mut cmd = match cpu {
        Some(cpu) => {
            let mut c = std::process::Command::new("taskset");
            c.args(["-c", &cpu.to_string()]).arg(&exe);
            c
        }
        None => std::process::Command::new(&exe),
    };
    cmd.args([
        "--child-plain",
        mode,
        "--child-bootstrap",
        bootstrap,
        "--records",
        &args.records.to_string(),
        "--value-bytes",
        &args.value_bytes.to_string(),
        "--batch",
        &args.batch.to_string(),
        "--latency-for",
        &format!("{}ms", args.latency_for.as_millis()),
        "--latency-group",
        &args.latency_group.to_string(),
    ]);
    if let Some(rate) = rate {
        cmd.args(["--child-rate", &rate.to_string()]);
    }
    cmd.args(extra);
    let out = cmd.output().context("cannot run the plain producer")?;
    if !out.status.success() {
        bail!(
            "plain producer failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(serde_json::from_slice(&out.stdout)?)
}

/// Pins every thread of `pid` (and those it starts later) to `cpu`.
fn pin(pid: u32, cpu: usize) -> Result<()> {
    let status = std::process::Command::new("taskset")
        .args(["-a", "-p", "-c", &cpu.to_string(), &pid.to_string()])
        .stdout(std::process::Stdio::null())
        .status()
        .context("cannot run taskset")?;
    if !status.success() {
        bail!("taskset failed for pid {pid}");
    }
    Ok(())
}

fn run(args: &Args) -> Result<()> {
    procs::build_binaries(!cfg!(debug_assertions))?;
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    let pinning = !args.no_pin && cpus >= 2 && which_taskset();
    // CPU 0: the producer under test alone (the plain producer's process, or the sidecar).
    // CPU 1: the broker and this process (the sidecar's client, standing in for the Flink
    // job, which runs on cores of its own). Both paths get the same single core.
    let under_test = pinning.then_some(0);
    if pinning {
        pin(std::process::id(), 1)?;
    }
    SIDECAR_BINARY.get_or_init(|| args.sidecar_binary.clone());
    let tmp = tempfile::tempdir()?;
    let dir = args
        .work_dir
        .clone()
        .unwrap_or_else(|| tmp.path().to_path_buf());
    std::fs::create_dir_all(&dir)?;
    let rt = tokio::runtime::Runtime::new()?;
    let broker = Broker::start(&dir)?;
    if pinning {
        pin(broker.pid(), 1)?;
    }
    for topic in [
        "plain",
        "front",
        "sidecar",
        "sidecar-max",
        "plain-lat",
        "sidecar-lat",
    ] {
        rt.block_on(kafka::create_topic(
            &broker.bootstrap,
            topic,
            args.partitions,
        ))?;
    }
    // Ends with this function, on success or error (the Proc is killed when dropped).
    let (_coordinator_proc, coordinator) = start_coordinator(&dir)?;
    println!(
        "bench: tansu broker {} (memory storage), {} partitions, {}-byte values, {} records per frame, {} CPUs",
        broker.bootstrap, args.partitions, args.value_bytes, args.batch, cpus
    );
    if pinning {
        println!(
            "bench: the producer under test (plain producer process or sidecar) pinned alone to CPU 0; broker and client on CPU 1"
        );
    } else {
        println!("bench: not pinned (--no-pin, one CPU, or no taskset): figures are noisier");
    }

    // 1. Throughput, side by side, alternating so drift on a shared machine hits both alike.
    let sc = Sidecar::start(
        &dir,
        coordinator,
        "through",
        &[
            "--sink",
            &format!("kafka:{}", broker.bootstrap),
            "--default-topic",
            "sidecar",
        ],
        under_test,
    )?;
    let idle_rss = sc.rss_kib()?;
    let n = args.records as f64;
    let (mut plain_rates, mut through_rates) = (vec![], vec![]);
    let (mut plain_cpu, mut sidecar_cpu) = (vec![], vec![]);
    println!();
    println!(
        "throughput into Kafka ({} records per run, {} rounds, plain then sidecar)",
        args.records, args.rounds
    );
    for round in 0..args.rounds {
        let plain = run_child(args, &broker.bootstrap, "throughput", None, under_test, &[])?;
        let plain_seconds = plain["seconds"].as_f64().context("child result")?;
        plain_cpu.push(plain["cpu_seconds"].as_f64().context("child result")? / n);
        let cpu_before = sc.cpu_seconds()?;
        let through = sidecar_throughput(&sc, &format!("round-{round}"), args, args.records)?;
        let cpu = sc.cpu_seconds()? - cpu_before;
        plain_rates.push(n / plain_seconds);
        through_rates.push(n / through.as_secs_f64());
        sidecar_cpu.push(cpu / n);
        println!(
            "  round {round}: plain {:>10.0} records/s   sidecar {:>10.0} records/s   ratio {:.3}",
            plain_rates[round],
            through_rates[round],
            through_rates[round] / plain_rates[round]
        );
    }
    let peak_rss = sc.peak_rss_kib()?;
    drop(sc);
    let plain_rate = median(&plain_rates);
    let through_rate = median(&through_rates);
    println!(
        "  median: plain rdkafka producer {plain_rate:>10.0} records/s, through the gate sidecar {through_rate:>10.0} records/s"
    );
    println!(
        "  ratio sidecar / plain (medians)   {:.3}   (target >= 0.9)",
        through_rate / plain_rate
    );
    println!(
        "  CPU per record (all threads, librdkafka's included; medians): plain producer {:.2} us, sidecar {:.2} us",
        median(&plain_cpu) * 1e6,
        median(&sidecar_cpu) * 1e6
    );

    // 2. The gate path alone, one core.
    let gate = Sidecar::start(
        &dir,
        coordinator,
        "gate",
        &["--sink", "null", "--worker-threads", "1"],
        under_test,
    )?;
    let gate_time = sidecar_throughput(&gate, "0", args, args.gate_records)?;
    drop(gate);
    println!();
    println!(
        "gate path alone (native frames in, null sink, sidecar pinned to CPU 0, one worker thread)"
    );
    println!(
        "  {:>12.0} records/s over {} records   (target >= 2,000,000)",
        args.gate_records as f64 / gate_time.as_secs_f64(),
        args.gate_records
    );

    // 3. Added latency at half the maximum measured with linger.ms=0 (the latency setting).
    // Each run writes to a fresh topic: the broker's latency grows with what a partition holds.
    let linger0 = |topic: &str| -> Vec<String> {
        [
            "--sink",
            &format!("kafka:{}", broker.bootstrap),
            "--default-topic",
            topic,
            "--kafka-option",
            "linger.ms=0",
        ]
        .map(String::from)
        .to_vec()
    };
    let max_args = linger0("sidecar-max");
    let sc = Sidecar::start(&dir, coordinator, "max", &strs(&max_args), under_test)?;
    let max_records = args.records / 2;
    let max0 =
        max_records as f64 / sidecar_throughput(&sc, "max", args, max_records)?.as_secs_f64();
    drop(sc);
    let rate = args.latency_rate.unwrap_or(max0 / 2.0);
    let lat_args = linger0("sidecar-lat");
    let sc = Sidecar::start(&dir, coordinator, "latency", &strs(&lat_args), under_test)?;
    let side_lat = sidecar_latency_child(args, &sc, rate, under_test)?;
    drop(sc);
    let plain_lat = latencies_of(&run_child(
        args,
        &broker.bootstrap,
        "latency",
        Some(rate),
        under_test,
        &[],
    )?)?;
    // The sidecar's own share, without a broker: the same load against the null sink.
    let null = Sidecar::start(
        &dir,
        coordinator,
        "latency-null",
        &["--sink", "null"],
        under_test,
    )?;
    let null_lat = sidecar_latency_child(args, &null, rate, under_test)?;
    drop(null);
    let row = |name: &str, l: &[Duration]| {
        println!(
            "  {name:<48} p50 {:>8.3} ms   p99 {:>8.3} ms   ({} samples)",
            ms(percentile(l, 0.50)),
            ms(percentile(l, 0.99)),
            l.len()
        );
    };
    println!();
    println!(
        "latency at {rate:.0} records/s = half the sidecar's maximum with linger.ms=0 ({max0:.0} records/s); groups of {} records",
        args.latency_group
    );
    row(
        "plain producer: send -> all sent so far delivered",
        &plain_lat,
    );
    row("through sidecar: frame written -> FlushAck", &side_lat);
    row("sidecar alone (null sink): frame -> FlushAck", &null_lat);
    println!(
        "  {:<48} p50 {:>8.3} ms   p99 {:>8.3} ms   (target p99 <= 1 ms)",
        "added by the sidecar (through - plain)",
        ms(percentile(&side_lat, 0.50)) - ms(percentile(&plain_lat, 0.50)),
        ms(percentile(&side_lat, 0.99)) - ms(percentile(&plain_lat, 0.99)),
    );

    // 4. The Kafka front: the same plain producer process, straight to the broker and through a
    // sidecar's --kafka-listen (every record decided by the gate, batches rebuilt), alternating.
    let front_addr = format!("127.0.0.1:{}", free_port()?);
    let front = Sidecar::start(
        &dir,
        coordinator,
        "front",
        &[
            "--sink",
            "null",
            "--kafka-listen",
            &front_addr,
            "--kafka-upstream",
            &broker.bootstrap,
        ],
        under_test,
    )?;
    wait_for_tcp(front_addr.parse()?, Duration::from_secs(10))?;
    let (mut direct_rates, mut front_rates) = (vec![], vec![]);
    let (mut direct_cpu, mut client_cpu_front, mut front_cpu) = (vec![], vec![], vec![]);
    println!();
    println!(
        "Kafka front: a plain rdkafka producer process ({} records per run, {} rounds), straight \
         to the broker then through the sidecar's --kafka-listen (sidecar on CPU 0, producer on CPU 1)",
        args.records, args.rounds
    );
    let client_cpu = pinning.then_some(1);
    for round in 0..args.rounds {
        let direct = run_child(args, &broker.bootstrap, "throughput", None, client_cpu, &[])?;
        let cpu_before = front.cpu_seconds()?;
        let through = run_child(args, &front_addr, "throughput-front", None, client_cpu, &[])?;
        front_cpu.push((front.cpu_seconds()? - cpu_before) / n);
        direct_rates.push(n / direct["seconds"].as_f64().context("child result")?);
        front_rates.push(n / through["seconds"].as_f64().context("child result")?);
        direct_cpu.push(direct["cpu_seconds"].as_f64().context("child result")? / n);
        client_cpu_front.push(through["cpu_seconds"].as_f64().context("child result")? / n);
        println!(
            "  round {round}: direct {:>10.0} records/s   through the front {:>10.0} records/s   ratio {:.3}",
            direct_rates[round],
            front_rates[round],
            front_rates[round] / direct_rates[round]
        );
    }
    println!(
        "  ratio front / direct (medians)   {:.3}   (target >= 0.9)",
        median(&front_rates) / median(&direct_rates),
    );
    println!(
        "  CPU per record (medians): producer direct {:.2} us, producer through the front {:.2} us, \
         the front's sidecar {:.2} us",
        median(&direct_cpu) * 1e6,
        median(&client_cpu_front) * 1e6,
        median(&front_cpu) * 1e6
    );
    // Latency at half the front's measured maximum, the same producer both ways.
    let half = median(&front_rates) / 2.0;
    let direct_lat = latencies_of(&run_child(
        args,
        &broker.bootstrap,
        "latency",
        Some(half),
        client_cpu,
        &[],
    )?)?;
    let front_lat = latencies_of(&run_child(
        args,
        &front_addr,
        "latency",
        Some(half),
        client_cpu,
        &[],
    )?)?;
    let front_rss = front.peak_rss_kib()?;
    drop(front);
    println!(
        "  latency at {half:.0} records/s (half the front's median maximum), linger.ms=0, groups of {}",
        args.latency_group
    );
    row("direct: send -> all sent so far delivered", &direct_lat);
    row("through the front: the same", &front_lat);
    println!(
        "  {:<48} p50 {:>8.3} ms   p99 {:>8.3} ms   (target p99 <= 1 ms)",
        "added by the front (through - direct)",
        ms(percentile(&front_lat, 0.50)) - ms(percentile(&direct_lat, 0.50)),
        ms(percentile(&front_lat, 0.99)) - ms(percentile(&direct_lat, 0.99)),
    );
    println!(
        "  front sidecar peak RSS {:.1} MiB",
        front_rss as f64 / 1024.0
    );

    // 5. Memory.
    println!();
    println!("sidecar resident memory (Kafka sink)");
    println!(
        "  idle, attached          {:>8.1} MiB",
        idle_rss as f64 / 1024.0
    );
    println!(
        "  peak under full load    {:>8.1} MiB",
        peak_rss as f64 / 1024.0
    );
    drop(broker);
    Ok(())
}

/// User + system CPU time of process `pid` (or `self`) so far; Linux clock ticks are 1/100 s.
fn cpu_seconds(pid: &str) -> Result<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // Fields after the parenthesised command name; utime and stime are the 14th and 15th.
    let rest = stat.rsplit_once(')').context("bad /proc stat")?.1;
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks: u64 = f[11].parse::<u64>()? + f[12].parse::<u64>()?;
    Ok(ticks as f64 / 100.0)
}

fn strs(v: &[String]) -> Vec<&str> {
    v.iter().map(String::as_str).collect()
}

fn which_taskset() -> bool {
    std::process::Command::new("taskset")
        .arg("-V")
        .stdout(std::process::Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

fn median(v: &[f64]) -> f64 {
    let mut v = v.to_vec();
    v.sort_by(f64::total_cmp);
    v.get(v.len() / 2).copied().unwrap_or(0.0)
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1_000.0
}

fn percentile(samples: &[Duration], q: f64) -> Duration {
    let mut s = samples.to_vec();
    s.sort_unstable();
    s.get(((s.len() as f64 - 1.0) * q).round() as usize)
        .copied()
        .unwrap_or_default()
}

/// The coordinator process (killed when dropped) and its gRPC port.
fn start_coordinator(dir: &Path) -> Result<(Proc, u16)> {
    let port = free_port()?;
    let args = [
        "--listen",
        &format!("127.0.0.1:{port}"),
        "--state-file",
        &dir.join("state.json").display().to_string(),
    ]
    .map(String::from);
    let proc = Proc::spawn(
        "coordinator",
        &binary("coordinator")?,
        &args,
        &dir.join("coordinator.log"),
    )?;
    wait_for_tcp(([127, 0, 0, 1], port).into(), Duration::from_secs(20))?;
    Ok((proc, port))
}

/// A real sidecar process serving its own pipeline, so the coordinator auto-activates it.
struct Sidecar {
    proc: Proc,
    pid: u32,
    socket: PathBuf,
    deployment: String,
}

impl Sidecar {
    fn start(
        dir: &Path,
        coordinator: u16,
        name: &str,
        extra: &[&str],
        pin_cpu: Option<usize>,
    ) -> Result<Self> {
        let socket = dir.join(format!("{name}.sock"));
        let health = free_port()?;
        // Each run is its own pipeline, so its sidecar is auto-activated as the first deployment.
        let pipeline = format!("{PIPELINE}-{name}");
        let mut args: Vec<String> = [
            "--coordinator",
            &format!("http://127.0.0.1:{coordinator}"),
            "--pipeline",
            &pipeline,
            "--deployment",
            name,
            "--socket",
            &socket.display().to_string(),
            "--health-listen",
            &format!("127.0.0.1:{health}"),
        ]
        .map(String::from)
        .to_vec();
        args.extend(extra.iter().map(|s| s.to_string()));
        let log = dir.join(format!("sidecar-{name}.log"));
        let sidecar = match &SIDECAR_BINARY.get() {
            Some(Some(path)) => path.clone(),
            _ => binary("gate-sidecar")?,
        };
        let proc = match pin_cpu {
            Some(cpu) => {
                let mut pinned = vec!["-c".to_string(), cpu.to_string()];
                pinned.push(sidecar.display().to_string());
                pinned.extend(args);
                Proc::spawn(name, Path::new("taskset"), &pinned, &log)?
            }
            None => Proc::spawn(name, &sidecar, &args, &log)?,
        };
        wait_for_unix(&socket, Duration::from_secs(20))?;
        wait_ready(health)?;
        let pid = pid_of(&socket)?;
        Ok(Self {
            proc,
            pid,
            socket,
            deployment: name.to_owned(),
        })
    }

    fn status_kib(&self, field: &str) -> Result<u64> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid))?;
        status
            .lines()
            .find_map(|l| l.strip_prefix(field))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .with_context(|| format!("no {field} in /proc/{}/status", self.pid))
    }

    fn cpu_seconds(&self) -> Result<f64> {
        cpu_seconds(&self.pid.to_string())
    }

    fn rss_kib(&self) -> Result<u64> {
        self.status_kib("VmRSS:")
    }

    fn peak_rss_kib(&self) -> Result<u64> {
        self.status_kib("VmHWM:")
    }

    fn connect(&self, channel: &str) -> Result<UnixStream> {
        connect(&self.socket, &self.deployment, channel)
    }
}

/// A channel to the sidecar of `deployment` (its pipeline is `PIPELINE-deployment`), Hello sent.
fn connect(socket: &Path, deployment: &str, channel: &str) -> Result<UnixStream> {
    let mut s = UnixStream::connect(socket)?;
    s.write_all(&encode_frame(&ClientFrame {
        kind: Some(client_frame::Kind::Hello(v1::Hello {
            pipeline: format!("{PIPELINE}-{deployment}"),
            deployment: deployment.to_owned(),
            channel_id: channel.into(),
            protocol_version: 1,
        })),
    }))?;
    Ok(s)
}

impl Drop for Sidecar {
    fn drop(&mut self) {
        self.proc.kill();
    }
}

/// The sidecar's pid, found as the process holding its socket path on its command line (the
/// child may be `taskset`, which execs the sidecar in place, so the child's pid is the same).
fn pid_of(socket: &Path) -> Result<u32> {
    let needle = socket.display().to_string();
    for entry in std::fs::read_dir("/proc")? {
        let entry = entry?;
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(cmd) = std::fs::read(entry.path().join("cmdline")) else {
            continue;
        };
        let cmd = String::from_utf8_lossy(&cmd);
        if cmd.contains("--deployment") && cmd.contains(&needle) && !cmd.starts_with("taskset") {
            return Ok(pid);
        }
    }
    bail!("cannot find the sidecar process for {needle}")
}

/// Polls `/readyz` until the coordinator has given the gate a role.
fn wait_ready(port: u16) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Ok(mut s) = std::net::TcpStream::connect(("127.0.0.1", port)) {
            let _ = s.write_all(b"GET /readyz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
            let mut text = String::new();
            let _ = s.read_to_string(&mut text);
            if text.starts_with("HTTP/1.1 200") {
                return Ok(());
            }
        }
        if Instant::now() > deadline {
            bail!("the sidecar never became ready (no assignment)");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn key(i: usize) -> Vec<u8> {
    format!("k{:09}", i % 1_000_003).into_bytes()
}

fn value(i: usize, len: usize) -> Vec<u8> {
    let mut v = format!("{i:020}").into_bytes();
    v.resize(len, b'x');
    v
}

fn record(i: usize, value_bytes: usize) -> v1::Record {
    v1::Record {
        key: key(i).into(),
        value: value(i, value_bytes).into(),
        headers: vec![],
        event_time_ms: BASE + i as i64,
        topic: String::new(),
        partition: None,
    }
}

fn records_frame(from: usize, n: usize, value_bytes: usize) -> Vec<u8> {
    encode_frame(&ClientFrame {
        kind: Some(client_frame::Kind::Records(v1::Records {
            records: (from..from + n).map(|i| record(i, value_bytes)).collect(),
        })),
    })
}

fn flush_frame(seq: u64) -> Vec<u8> {
    encode_frame(&ClientFrame {
        kind: Some(client_frame::Kind::Flush(v1::Flush { seq })),
    })
}

/// Reads frames until the `FlushAck` for `seq`; fails on an `Error` frame.
fn read_ack(s: &mut UnixStream, buf: &mut Vec<u8>, seq: u64) -> Result<u64> {
    loop {
        // Frames are varint-length-delimited.
        if let Ok(len) = prost::decode_length_delimiter(buf.as_slice()) {
            let prefix = prost::length_delimiter_len(len);
            if buf.len() >= prefix + len {
                let frame = ServerFrame::decode(&buf[prefix..prefix + len])?;
                buf.drain(..prefix + len);
                match frame.kind {
                    Some(server_frame::Kind::FlushAck(a)) if a.seq == seq => return Ok(a.admitted),
                    Some(server_frame::Kind::FlushAck(_)) => continue,
                    Some(server_frame::Kind::Error(e)) => {
                        bail!("sidecar error {:?}: {}", e.code(), e.message)
                    }
                    None => bail!("empty frame from the sidecar"),
                }
            }
        }
        let mut chunk = [0u8; 4096];
        let n = s.read(&mut chunk)?;
        if n == 0 {
            bail!("the sidecar closed the channel");
        }
        buf.extend_from_slice(&chunk[..n]);
    }
}

/// Sends `total` records over one channel as fast as the sidecar takes them, then a Flush;
/// returns the time from the first byte to the FlushAck. Frames are encoded up front (a cycle
/// of 64) so the client costs little.
fn sidecar_throughput(sc: &Sidecar, channel: &str, args: &Args, total: usize) -> Result<Duration> {
    let frames: Vec<Vec<u8>> = (0..64)
        .map(|f| records_frame(f * args.batch, args.batch, args.value_bytes))
        .collect();
    let mut s = sc.connect(channel)?;
    // Warm up (connections, metadata, producer id) outside the measurement, as for the plain
    // producer.
    s.write_all(&records_frame(0, WARM_UP, args.value_bytes))?;
    s.write_all(&flush_frame(u64::MAX))?;
    read_ack(&mut s, &mut Vec::new(), u64::MAX)?;
    let started = Instant::now();
    let mut sent = 0;
    let mut f = 0;
    while sent < total {
        s.write_all(&frames[f % frames.len()])?;
        sent += args.batch;
        f += 1;
    }
    s.write_all(&flush_frame(1))?;
    let admitted = read_ack(&mut s, &mut Vec::new(), 1)?;
    let took = started.elapsed();
    // FlushAck counts are cumulative for the channel.
    let admitted = admitted - WARM_UP as u64;
    if admitted != sent as u64 {
        bail!("the sidecar admitted {admitted} of {sent} records");
    }
    Ok(took)
}

/// Counts deliveries; stamps the delivery of each record whose opaque is non-zero.
struct Deliveries {
    delivered: AtomicU64,
    failed: AtomicU64,
    /// Latency samples: (group index, delivered at), for records carrying one.
    stamps: std::sync::Mutex<Vec<(usize, Instant)>>,
}

impl ClientContext for Deliveries {}

impl ProducerContext for Deliveries {
    type DeliveryOpaque = usize;

    fn delivery(&self, result: &DeliveryResult<'_>, group_plus_one: usize) {
        match result {
            Ok(_) => self.delivered.fetch_add(1, Ordering::Relaxed),
            Err(_) => self.failed.fetch_add(1, Ordering::Relaxed),
        };
        if group_plus_one > 0 {
            self.stamps
                .lock()
                .expect("not poisoned")
                .push((group_plus_one - 1, Instant::now()));
        }
    }
}

/// The same producer settings the sidecar uses (see gate-sidecar/src/sink/kafka.rs).
fn producer(bootstrap: &str, linger_zero: bool) -> Result<Arc<ThreadedProducer<Deliveries>>> {
    let mut c = ClientConfig::new();
    c.set("bootstrap.servers", bootstrap)
        .set("acks", "all")
        .set("enable.idempotence", "true")
        .set("partitioner", "murmur2_random")
        .set("queue.buffering.max.kbytes", "65536")
        .set("queue.buffering.max.messages", "100000");
    if linger_zero {
        c.set("linger.ms", "0");
    }
    Ok(Arc::new(c.create_with_context(Deliveries {
        delivered: AtomicU64::new(0),
        failed: AtomicU64::new(0),
        stamps: std::sync::Mutex::new(Vec::new()),
    })?))
}

fn send_one(
    p: &ThreadedProducer<Deliveries>,
    topic: &str,
    k: &[u8],
    v: &[u8],
    ts: i64,
    opaque: usize,
) -> Result<()> {
    let mut rec: BaseRecord<'_, [u8], [u8], usize> = BaseRecord::with_opaque_to(topic, opaque)
        .key(k)
        .payload(v)
        .timestamp(ts);
    loop {
        match p.send(rec) {
            Ok(()) => return Ok(()),
            Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), back)) => {
                rec = back;
                std::thread::sleep(Duration::from_micros(200));
            }
            Err((e, _)) => return Err(e.into()),
        }
    }
}

fn wait_delivered(p: &ThreadedProducer<Deliveries>, n: u64) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(120);
    let ctx = p.context();
    while ctx.delivered.load(Ordering::Relaxed) + ctx.failed.load(Ordering::Relaxed) < n {
        if Instant::now() > deadline {
            bail!("deliveries did not complete");
        }
        std::thread::sleep(Duration::from_micros(100));
    }
    if ctx.failed.load(Ordering::Relaxed) > 0 {
        bail!("{} deliveries failed", ctx.failed.load(Ordering::Relaxed));
    }
    Ok(())
}

/// A plain producer sending the same records as fast as librdkafka takes them.
fn plain_throughput(bootstrap: &str, topic: &str, args: &Args) -> Result<Duration> {
    let p = producer(bootstrap, false)?;
    // Keys and values prepared like the sidecar's client prepares its frames.
    let keys: Vec<Vec<u8>> = (0..64 * args.batch).map(key).collect();
    let values: Vec<Vec<u8>> = (0..64 * args.batch)
        .map(|i| value(i, args.value_bytes))
        .collect();
    for i in 0..WARM_UP {
        send_one(&p, topic, &keys[i], &values[i], BASE + i as i64, 0)?;
    }
    wait_delivered(&p, WARM_UP as u64)?;
    let started = Instant::now();
    for i in 0..args.records {
        let j = i % keys.len();
        send_one(&p, topic, &keys[j], &values[j], BASE + j as i64, 0)?;
    }
    wait_delivered(&p, (WARM_UP + args.records) as u64)?;
    Ok(started.elapsed())
}

/// Groups of `latency_group` records at `rate` records/s for `latency_for`: per group, the
/// time from its first send to its last delivery report.
fn plain_latency(bootstrap: &str, topic: &str, args: &Args, rate: f64) -> Result<Vec<Duration>> {
    let p = producer(bootstrap, true)?;
    // Warm up (connections, metadata, producer id), as the sidecar is before its run.
    for i in 0..WARM_UP {
        send_one(&p, topic, &key(i), &value(i, args.value_bytes), BASE, 0)?;
    }
    wait_delivered(&p, WARM_UP as u64)?;
    let g = args.latency_group;
    let interval = Duration::from_secs_f64(g as f64 / rate);
    let groups = (args.latency_for.as_secs_f64() / interval.as_secs_f64()) as usize;
    let mut sent_at = Vec::with_capacity(groups);
    let started = Instant::now();
    for n in 0..groups {
        pace(started + interval * n as u32);
        sent_at.push(Instant::now());
        for r in 0..g {
            let i = n * g + r;
            // Only the group's last record reports: per partition, records are delivered in
            // order, and the group's records go to different partitions, so take the max below.
            send_one(
                &p,
                topic,
                &key(i),
                &value(i, args.value_bytes),
                BASE + i as i64,
                n + 1,
            )?;
        }
    }
    wait_delivered(&p, (WARM_UP + groups * g) as u64)?;
    let stamps = p.context().stamps.lock().expect("not poisoned").clone();
    let mut last = vec![None::<Instant>; groups];
    for (group, at) in stamps {
        last[group] = Some(last[group].map_or(at, |l: Instant| l.max(at)));
    }
    // What a flush after each group would wait for: every record sent so far delivered (the
    // same promise a sidecar FlushAck makes).
    let mut upto: Option<Instant> = None;
    for l in last.iter_mut() {
        upto = match (upto, *l) {
            (Some(u), Some(x)) => Some(u.max(x)),
            (u, x) => u.or(x),
        };
        *l = upto;
    }
    Ok(sent_at
        .iter()
        .zip(last)
        .filter_map(|(s, l)| l.map(|l| l - *s))
        .skip(groups / 10)
        .collect())
}

/// Sleeps until `at`. No spinning: on a 2-core machine a spinning client would steal the CPU
/// the sidecar and the broker need; a late wake-up only delays the send, whose time is taken
/// after waking.
fn pace(at: Instant) {
    let now = Instant::now();
    if at > now {
        std::thread::sleep(at - now);
    }
}

/// The same groups through the sidecar: a frame of `latency_group` records and a Flush per
/// group; per group, the time from writing the frame to reading its FlushAck.
fn sidecar_latency(
    socket: &Path,
    deployment: &str,
    args: &Args,
    rate: f64,
) -> Result<Vec<Duration>> {
    let g = args.latency_group;
    let interval = Duration::from_secs_f64(g as f64 / rate);
    let groups = (args.latency_for.as_secs_f64() / interval.as_secs_f64()) as usize;
    let mut s = connect(socket, deployment, "lat")?;
    // Warm up (the topic's metadata, connections), as the plain producer is.
    s.write_all(&records_frame(0, WARM_UP, args.value_bytes))?;
    s.write_all(&flush_frame(0))?;
    read_ack(&mut s, &mut Vec::new(), 0)?;
    let mut reader = s.try_clone()?;
    let acks = std::thread::spawn(move || -> Result<Vec<Instant>> {
        let mut buf = Vec::new();
        let mut at = Vec::with_capacity(groups);
        for n in 0..groups {
            read_ack(&mut reader, &mut buf, n as u64 + 1)?;
            at.push(Instant::now());
        }
        Ok(at)
    });
    let mut writer = s;
    let mut sent_at = Vec::with_capacity(groups);
    let started = Instant::now();
    for n in 0..groups {
        let mut bytes = records_frame(n * g, g, args.value_bytes);
        bytes.extend(flush_frame(n as u64 + 1));
        pace(started + interval * n as u32);
        sent_at.push(Instant::now());
        writer.write_all(&bytes)?;
    }
    let acked = acks.join().expect("reader thread")?;
    Ok(sent_at
        .iter()
        .zip(acked)
        .map(|(s, a)| a - *s)
        .skip(groups / 10)
        .collect())
}

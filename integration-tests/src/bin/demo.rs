//! `demo`: a full blue/green cutover on the embedded defaults, with a report.
//!
//! Starts the real coordinator and one real gate sidecar per deployment (building them first
//! with the same profile), replays the same input into blue and green, requests the cutover
//! through the gRPC API and counts every output record. With `--kafka HOST:PORT` the sidecars
//! write to a Kafka topic, which is then read back with a real consumer.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use sluice_integration_tests::{kafka, procs, scenario};

/// Runs a blue/green cutover end to end and prints what happened.
#[derive(Parser, Debug)]
#[command(version, about)]
struct Args {
    /// Records in the input (both deployments replay all of them).
    #[arg(long, default_value_t = 100_000)]
    records: usize,
    /// Kill -9 and restart the coordinator twice during the cutover.
    #[arg(long)]
    kill_coordinator: bool,
    /// Keep state, sockets, outputs and logs here (default: a temporary directory, removed).
    #[arg(long)]
    work_dir: Option<PathBuf>,
    /// Seed of the event-time jitter.
    #[arg(long, default_value_t = 7)]
    seed: u64,
    /// Send admitted records to this Kafka broker (`host:port`) instead of JSON-lines files;
    /// the topic is created, then read back and checked record by record.
    #[arg(long, value_name = "BOOTSTRAP")]
    kafka: Option<String>,
    /// Topic for --kafka (created; default `sluice-demo-<unix seconds>`, so reruns start empty).
    #[arg(long, requires = "kafka")]
    kafka_topic: Option<String>,
    /// Partitions of the --kafka topic.
    #[arg(long, default_value_t = 4, requires = "kafka")]
    kafka_partitions: i32,
}

fn main() -> ExitCode {
    let args = Args::parse();
    if let Err(e) = procs::end_children_on_signal() {
        eprintln!("demo: {e:#}");
        return ExitCode::FAILURE;
    }
    let release = !cfg!(debug_assertions);
    if let Err(e) = procs::build_binaries(release) {
        eprintln!("demo: {e:#}");
        return ExitCode::FAILURE;
    }
    let tmp = tempfile::tempdir().expect("cannot create a temporary directory");
    let dir = args
        .work_dir
        .clone()
        .unwrap_or_else(|| tmp.path().to_path_buf());
    let mut cfg = scenario::ScenarioConfig::new(&dir);
    cfg.records = args.records;
    cfg.kill_coordinator = args.kill_coordinator;
    cfg.seed = args.seed;
    println!(
        "demo: coordinator + 2 sidecars on 127.0.0.1 / Unix sockets in {}",
        dir.display()
    );
    let rt = tokio::runtime::Runtime::new().expect("tokio runtime");
    if let Some(bootstrap) = &args.kafka {
        let topic = args.kafka_topic.clone().unwrap_or_else(|| {
            let secs = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs());
            format!("sluice-demo-{secs}")
        });
        if let Err(e) = rt.block_on(kafka::create_topic(
            bootstrap,
            &topic,
            args.kafka_partitions,
        )) {
            eprintln!("demo: {e:#}");
            return ExitCode::FAILURE;
        }
        println!(
            "demo: sidecars write to Kafka {bootstrap}, topic {topic} ({} partitions)",
            args.kafka_partitions
        );
        cfg.kafka = Some(scenario::KafkaOutput {
            write_via: None,
            bootstrap: bootstrap.clone(),
            topic,
            partitions: args.kafka_partitions,
        });
    }
    match rt.block_on(scenario::run(&cfg)) {
        Ok(report) => {
            println!("{report}");
            match scenario::check(&report) {
                Ok(()) => {
                    println!("RESULT: exact — every record emitted exactly once");
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    println!("RESULT: FAILED — {e:#} (logs in {})", dir.display());
                    ExitCode::FAILURE
                }
            }
        }
        Err(e) => {
            eprintln!(
                "demo failed: {e:#} (logs in {}; rerun with --work-dir to keep them)",
                dir.display()
            );
            ExitCode::FAILURE
        }
    }
}

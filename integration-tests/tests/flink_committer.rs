//! Issue 11: Flink's Kafka committer on another TaskManager. A `KafkaWriter`'s transaction is
//! written through one pod's sidecar and committed by Flink's own `KafkaCommitter` (given only
//! the committable: producer id, epoch, transactional id) through another pod's sidecar — what
//! happens when the committable is restored on another TaskManager. The writer's sidecar never
//! sees the `EndTxn`; it must still learn that the transaction committed (it asks the cluster:
//! `DescribeTransactions`) and stop holding its drain then, not at the transaction's timeout.
//! Real Apache Kafka broker, the Flink connector's classes (`dev.sluice.flink.job.ForeignCommit`).
//!
//! Needs Flink (`scripts/flink.sh`) and the broker (`scripts/kafka-broker.sh`);
//! `SLUICE_SKIP_FLINK=1` skips.

use std::collections::HashMap;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail, ensure};
use sluice_integration_tests::apache_kafka::ApacheKafka;
use sluice_integration_tests::flink::{self, Flink};
use sluice_integration_tests::harness::{
    Barrier, Coordinator, now_ms, pipeline_status, start_sidecar,
};
use sluice_integration_tests::kafka;
use sluice_integration_tests::procs::{Proc, free_port, wait_for_tcp};

const PIPELINE: &str = "shop/orders";
const BLUE: &str = "orders-v1";
const TOPIC: &str = "orders";
const PARTITIONS: i32 = 3;
const RECORDS: u64 = 2_000;
/// The writer's `transaction.timeout.ms` (ForeignCommit): without asking the cluster, the
/// writer's sidecar would hold its drain this long (and a margin) after the commit.
const TXN_TIMEOUT: Duration = Duration::from_secs(120);

/// A front sidecar of blue named `gate` (one TaskManager pod); returns it and its bootstrap.
fn front(dir: &Path, coordinator: u16, gate: &str, upstream: &str) -> Result<(Proc, String)> {
    let bootstrap = format!("127.0.0.1:{}", free_port()?);
    let (proc, _) = start_sidecar(
        dir,
        coordinator,
        PIPELINE,
        BLUE,
        gate,
        &[
            "--gate-id".into(),
            gate.into(),
            "--socket".into(),
            dir.join(format!("{gate}.sock")).display().to_string(),
            "--sink".into(),
            "null".into(),
            "--kafka-listen".into(),
            bootstrap.clone(),
            "--kafka-upstream".into(),
            upstream.into(),
            "--kafka-watermark-bound".into(),
            "1s".into(),
            "--idle-timeout".into(),
            "2s".into(),
        ],
    )?;
    wait_for_tcp(bootstrap.parse()?, Duration::from_secs(10))?;
    Ok((proc, bootstrap))
}

/// Gate `gate`'s reported watermark, or `None` before it reports one.
async fn watermark(coordinator: u16, gate: &str) -> Result<Option<i64>> {
    let s = pipeline_status(coordinator, PIPELINE).await?;
    Ok(s.gates
        .iter()
        .find(|g| g.gate_id == gate)
        .and_then(|g| g.progress.as_ref()?.watermark_ms))
}

/// Waits until `log` has a line starting with `prefix`; returns it.
async fn line_in(log: &Path, prefix: &str, p: &mut Proc, within: Duration) -> Result<String> {
    let deadline = Instant::now() + within;
    loop {
        let text = std::fs::read_to_string(log).unwrap_or_default();
        if let Some(l) = text.lines().find(|l| l.starts_with(prefix)) {
            return Ok(l.to_owned());
        }
        if let Some(status) = p.exited()? {
            bail!("ForeignCommit exited ({status}) before {prefix}:\n{text}");
        }
        ensure!(
            Instant::now() < deadline,
            "no {prefix} within {within:?}:\n{text}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_commit_through_another_sidecar_ends_the_hold_of_the_writer_s_sidecar() {
    if std::env::var("SLUICE_SKIP_FLINK").is_ok_and(|v| v == "1") {
        eprintln!("SLUICE_SKIP_FLINK=1: real Flink tests skipped");
        return;
    }
    let dir = tempfile::Builder::new()
        .prefix("sluice-committer-")
        .tempdir()
        .unwrap();
    if let Err(e) = foreign_commit(dir.path()).await {
        panic!("{e:#}\nlogs kept in {}", dir.keep().display());
    }
}

async fn foreign_commit(dir: &Path) -> Result<()> {
    let flink = Flink::locate()?;
    std::fs::create_dir_all(dir.join("java-tmp"))?;
    std::fs::write(dir.join("log4j2.properties"), flink::LOG4J)?;
    let broker = ApacheKafka::start(dir, false)?;
    kafka::create_topic(&broker.bootstrap, TOPIC, PARTITIONS).await?;
    let coordinator = Coordinator::start(dir, Barrier::quick())?;
    let (mut writer_side, writer_bootstrap) =
        front(dir, coordinator.port, "tm-1", &broker.bootstrap)?;
    let (mut committer_side, committer_bootstrap) =
        front(dir, coordinator.port, "tm-2", &broker.bootstrap)?;

    let first_ms = i64::try_from(now_ms())? - 60_000;
    let go = dir.join("commit-now");
    let log = dir.join("foreign-commit.log");
    let args: Vec<String> = [
        "--writer-bootstrap",
        &writer_bootstrap,
        "--committer-bootstrap",
        &committer_bootstrap,
        "--topic",
        TOPIC,
        "--transactional-id",
        "sluice-orders-v1-0-7",
        "--records",
        &RECORDS.to_string(),
        "--first-ms",
        &first_ms.to_string(),
        "--go-file",
        &go.display().to_string(),
    ]
    .map(String::from)
    .to_vec();
    let mut helper = Proc::spawn(
        "ForeignCommit",
        &flink::java_path()?,
        &flink.java_args(
            &["-Xmx256m".into()],
            dir,
            "dev.sluice.flink.job.ForeignCommit",
            &args,
        ),
        &log,
    )?;
    let pre = line_in(&log, "PRECOMMITTED", &mut helper, Duration::from_secs(60)).await?;
    println!("writer through tm-1's sidecar: {pre}");

    // Pre-committed, not committed: the open transaction holds tm-1's gate at its least event
    // time (its channels go idle after 2 s; the hold does not).
    let hold_until = Instant::now() + Duration::from_secs(4);
    while Instant::now() < hold_until {
        let w = watermark(coordinator.port, "tm-1").await?;
        ensure!(
            w.is_some_and(|w| w <= first_ms),
            "tm-1's gate watermark {w:?} passed the open transaction's records (least event \
             time {first_ms})"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    std::fs::write(&go, b"")?;
    let asked_at = Instant::now();
    line_in(&log, "COMMITTED", &mut helper, Duration::from_secs(60)).await?;
    let committed_after = asked_at.elapsed();
    let deadline = Instant::now() + Duration::from_secs(30);
    let released_after = loop {
        let w = watermark(coordinator.port, "tm-1").await?;
        if w.is_none_or(|w| w > first_ms) {
            break asked_at.elapsed();
        }
        ensure!(
            Instant::now() < deadline,
            "tm-1's sidecar still holds the committed transaction 30 s after the commit through \
             tm-2 (watermark {w:?}); it would until the transaction's timeout ({TXN_TIMEOUT:?})"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };

    let read = tokio::task::spawn_blocking({
        let bootstrap = broker.bootstrap.clone();
        move || {
            kafka::read_topic_isolated(
                &bootstrap,
                TOPIC,
                PARTITIONS,
                RECORDS as usize,
                Duration::from_secs(2),
                Duration::from_secs(60),
                "read_committed",
            )
        }
    })
    .await??;
    let mut seen: HashMap<String, u32> = HashMap::new();
    for r in &read {
        *seen
            .entry(String::from_utf8_lossy(&r.value).into_owned())
            .or_default() += 1;
    }
    let duplicates: u32 = seen.values().map(|n| n - 1).sum();
    let missing = (0..RECORDS)
        .filter(|i| !seen.contains_key(&format!("foreign-{i}")))
        .count();
    println!(
        "commit through tm-2's sidecar took {:.0} ms; tm-1's sidecar let go of the transaction \
         {:.0} ms after it was asked for (its timeout: {TXN_TIMEOUT:?}); read_committed: {} \
         records, {duplicates} duplicated, {missing} missing",
        committed_after.as_secs_f64() * 1e3,
        released_after.as_secs_f64() * 1e3,
        read.len()
    );
    ensure!(
        duplicates == 0 && missing == 0 && read.len() as u64 == RECORDS,
        "read_committed not exact"
    );
    writer_side.check_alive().context("tm-1's sidecar")?;
    committer_side.check_alive().context("tm-2's sidecar")?;
    helper.kill();
    Ok(())
}

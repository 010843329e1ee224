//! The sidecar's own Kafka sink (native frames in, librdkafka's idempotent producer out) against
//! a real Apache Kafka broker killed `-9` mid-stream — the fault the sink's librdkafka
//! mock-cluster test (`gate-sidecar/tests/kafka_faults.rs`) stood in for: while the only broker
//! is down nothing may be acknowledged, and once it is back every record is written exactly once
//! (read back and counted one by one). The mock cluster keeps the faults a real broker cannot be
//! made to show on demand (injected per-request errors, a slow broker, a delivery that finally
//! fails, a fatal producer error).
//!
//! Needs the broker (`scripts/kafka-broker.sh`, run by `scripts/test.sh`).

use std::collections::HashMap;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, ensure};
use sluice_integration_tests::apache_kafka::ApacheKafka;
use sluice_integration_tests::client::Channel;
use sluice_integration_tests::harness::{Barrier, Coordinator, start_sidecar, wait_until_active};
use sluice_integration_tests::kafka;
use sluice_proto::v1;

const PIPELINE: &str = "shop/orders";
const BLUE: &str = "orders-v1";
const TOPIC: &str = "orders";
const PARTITIONS: i32 = 4;
const BASE: i64 = 1_700_000_000_000;

fn records(range: std::ops::Range<u64>) -> v1::Records {
    v1::Records {
        records: range
            .map(|i| v1::Record {
                key: format!("k{}", i % 50).into_bytes().into(),
                value: format!("v{i}").into_bytes().into(),
                headers: vec![v1::Header {
                    key: "seq".into(),
                    value: i.to_string().into_bytes().into(),
                }],
                event_time_ms: BASE + i as i64,
                topic: TOPIC.into(),
                partition: None,
            })
            .collect(),
    }
}

async fn send(ch: &mut Channel, range: std::ops::Range<u64>) -> Result<()> {
    let ids: Vec<u64> = range.collect();
    for chunk in ids.chunks(500) {
        ch.records(records(chunk[0]..chunk[chunk.len() - 1] + 1))
            .await?;
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_kafka_sink_holds_its_acks_through_a_real_broker_outage_and_writes_each_record_once() {
    let dir = tempfile::Builder::new()
        .prefix("sluice-sink-apache-")
        .tempdir()
        .unwrap();
    if let Err(e) = outage(dir.path()).await {
        panic!("{e:#}\nlogs kept in {}", dir.keep().display());
    }
}

async fn outage(dir: &Path) -> Result<()> {
    let mut broker = ApacheKafka::start(dir, false)?;
    kafka::create_topic(&broker.bootstrap, TOPIC, PARTITIONS).await?;
    let coordinator = Coordinator::start(dir, Barrier::quick())?;
    let (mut sidecar, socket) = start_sidecar(
        dir,
        coordinator.port,
        PIPELINE,
        BLUE,
        "sidecar",
        &[
            "--sink".into(),
            format!("kafka:{}", broker.bootstrap),
            "--default-topic".into(),
            TOPIC.into(),
        ],
    )?;
    wait_until_active(coordinator.port, PIPELINE, BLUE).await?;
    let mut ch = Channel::open(&socket, PIPELINE, BLUE, "0").await?;
    send(&mut ch, 0..5_000).await?;
    let first = ch.flush().await?;
    ensure!(first.admitted == 5_000, "first flush: {first:?}");

    broker.kill();
    send(&mut ch, 5_000..10_000).await?;
    let flushed = tokio::spawn(async move {
        let ack = ch.flush().await;
        (ch, ack, Instant::now())
    });
    tokio::time::sleep(Duration::from_secs(3)).await;
    ensure!(
        !flushed.is_finished(),
        "a flush was acknowledged while the only broker was down"
    );
    let back = Instant::now();
    broker.restart()?;
    let (_ch, ack, acked_at) = tokio::time::timeout(Duration::from_secs(120), flushed)
        .await
        .context("no FlushAck within 120 s of the broker's return")??;
    let ack = ack?;
    ensure!(ack.admitted == 10_000, "second flush: {ack:?}");
    sidecar.check_alive()?;

    let read = tokio::task::spawn_blocking({
        let bootstrap = broker.bootstrap.clone();
        move || {
            kafka::read_topic(
                &bootstrap,
                TOPIC,
                PARTITIONS,
                10_000,
                Duration::from_secs(2),
                Duration::from_secs(60),
            )
        }
    })
    .await??;
    let mut seen: HashMap<u64, u32> = HashMap::new();
    for r in &read {
        let seq: u64 = std::str::from_utf8(r.header("seq").context("seq header")?)?.parse()?;
        ensure!(
            r.value == format!("v{seq}").into_bytes()
                && r.timestamp == rdkafka::Timestamp::CreateTime(BASE + seq as i64),
            "record {seq} altered: {r:?}"
        );
        *seen.entry(seq).or_default() += 1;
    }
    let duplicates: u32 = seen.values().map(|n| n - 1).sum();
    let missing = (0..10_000).filter(|i| !seen.contains_key(i)).count();
    println!(
        "broker down 3 s mid-stream: no ack while down; acked {:.1} s after it was started \
         again; read {} records, {duplicates} duplicated, {missing} missing",
        acked_at.duration_since(back).as_secs_f64(),
        read.len()
    );
    ensure!(
        duplicates == 0 && missing == 0 && read.len() == 10_000,
        "not exact"
    );
    Ok(())
}

//! The Kafka front (issue 10) with real parts: a tansu broker, the real coordinator and two
//! real sidecars with `--kafka-listen`, and unmodified librdkafka producers (the `rdkafka`
//! crate: idempotent, acks=all) pointed at the fronts instead of the broker. Blue and green
//! produce the same records (keys, values, headers, CreateTime = event time) through their own
//! sidecars while a cutover runs `WHEN_READY`; a real consumer reads the topic back and every
//! record is checked one by one.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail};
use rdkafka::ClientConfig;
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord, Producer as _};
use sluice_integration_tests::harness::{
    Barrier, Coordinator, cutover_client, now_ms, pipeline_status, start_sidecar,
};
use sluice_integration_tests::kafka::{self, Broker, OrderCheck};
use sluice_integration_tests::procs::free_port;
use sluice_proto::v1::{Phase, StartCutoverRequest, When};

const PIPELINE: &str = "shop/orders";
const TOPIC: &str = "orders";
const PARTITIONS: i32 = 4;
/// Records each deployment produces, over about `SPAN_MS` of event (and wall) time.
const RECORDS: u64 = 12_000;
const SPAN_MS: u64 = 12_000;

struct Front {
    _proc: sluice_integration_tests::procs::Proc,
    bootstrap: String,
}

fn front(
    dir: &std::path::Path,
    coordinator: u16,
    deployment: &str,
    upstream: &str,
) -> Result<Front> {
    let port = free_port()?;
    let bootstrap = format!("127.0.0.1:{port}");
    let (proc, _) = start_sidecar(
        dir,
        coordinator,
        PIPELINE,
        deployment,
        deployment,
        &[
            "--sink".into(),
            "null".into(),
            "--kafka-listen".into(),
            bootstrap.clone(),
            "--kafka-upstream".into(),
            upstream.into(),
            "--kafka-watermark-bound".into(),
            "500ms".into(),
        ],
    )?;
    sluice_integration_tests::procs::wait_for_tcp(bootstrap.parse()?, Duration::from_secs(10))?;
    Ok(Front {
        _proc: proc,
        bootstrap,
    })
}

fn producer(bootstrap: &str, compression: &str) -> Result<FutureProducer> {
    ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("enable.idempotence", "true")
        .set("acks", "all")
        .set("linger.ms", "5")
        .set("compression.type", compression)
        .set("partitioner", "murmur2_random")
        .create()
        .context("producer")
}

/// Produces record `i` for `i` in `0..RECORDS`, paced so record `i` leaves at `start + i *
/// SPAN_MS / RECORDS` (event time = that instant), keyed `k{i % 50}`, through `producer`.
async fn produce_all(producer: FutureProducer, deployment: &'static str, start: u64) -> Result<()> {
    let mut pending = Vec::new();
    for i in 0..RECORDS {
        let ts = start + i * SPAN_MS / RECORDS;
        let wait = ts.saturating_sub(now_ms());
        if wait > 0 {
            tokio::time::sleep(Duration::from_millis(wait)).await;
        }
        let key = format!("k{}", i % 50);
        let value = format!("order-{i}");
        let headers = OwnedHeaders::new()
            .insert(Header {
                key: "dep",
                value: Some(deployment),
            })
            .insert(Header {
                key: "seq",
                value: Some(&i.to_string()),
            });
        let record = FutureRecord::to(TOPIC)
            .key(&key)
            .payload(&value)
            .headers(headers)
            .timestamp(ts as i64);
        pending.push(
            producer
                .send_result(record)
                .map_err(|(e, _)| anyhow::anyhow!("enqueue: {e}"))?,
        );
        if pending.len() >= 500 {
            for f in pending.drain(..) {
                f.await?
                    .map_err(|(e, _)| anyhow::anyhow!("delivery: {e}"))?;
            }
        }
    }
    for f in pending {
        f.await?
            .map_err(|(e, _)| anyhow::anyhow!("delivery: {e}"))?;
    }
    producer.flush(Duration::from_secs(10))?;
    Ok(())
}

/// Which real client produces.
#[derive(Clone, Copy)]
enum Client {
    /// librdkafka (the `rdkafka` crate), in this process.
    Librdkafka,
    /// The official Java kafka-clients `KafkaProducer` with its defaults, in a JVM.
    Java,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn librdkafka_producers_cut_over_through_the_kafka_front_exactly_once() {
    with_dir(Client::Librdkafka).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn java_kafka_producers_cut_over_through_the_kafka_front_exactly_once() {
    with_dir(Client::Java).await;
}

/// One at a time: two producers, two sidecars and a broker already fill 2 cores.
static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

async fn with_dir(client: Client) {
    let _one = ONE_AT_A_TIME.lock().await;
    let dir = tempfile::Builder::new()
        .prefix("sluice-kfront-")
        .tempdir()
        .unwrap();
    if let Err(e) = run(dir.path(), client).await {
        let kept = dir.keep();
        panic!("{e:#}\nlogs kept in {}", kept.display());
    }
}

/// Runs the Java producer (`integration-tests/kafka-java/`) to completion.
async fn java_produce(
    classpath: String,
    bootstrap: String,
    deployment: &'static str,
    start: u64,
    compression: &'static str,
    log: std::path::PathBuf,
) -> Result<()> {
    let out = std::fs::File::create(&log)?;
    let mut cmd = std::process::Command::new("java");
    cmd.args([
        "-Xmx256m",
        "-cp",
        &classpath,
        "dev.sluice.kafka.FrontProducer",
    ])
    .args([bootstrap.as_str(), TOPIC, deployment])
    .args([start.to_string(), RECORDS.to_string(), SPAN_MS.to_string()])
    .arg(compression)
    .stdout(out.try_clone()?)
    .stderr(out);
    // It exits by itself once its records are sent (or it failed).
    let status = tokio::task::spawn_blocking(move || cmd.status()).await??;
    if !status.success() {
        bail!("the Java producer failed ({status}); see {}", log.display());
    }
    Ok(())
}

async fn run(dir: &std::path::Path, client: Client) -> Result<()> {
    let broker = Broker::start(dir)?;
    kafka::create_topic(&broker.bootstrap, TOPIC, PARTITIONS).await?;
    let coordinator = Coordinator::start(dir, Barrier::quick())?;
    let blue = front(dir, coordinator.port, "orders-v1", &broker.bootstrap)?;
    let green = front(dir, coordinator.port, "orders-v2", &broker.bootstrap)?;
    let (b, g, start) = match client {
        Client::Librdkafka => {
            let start = now_ms() + 1_000;
            let b = tokio::spawn(produce_all(
                producer(&blue.bootstrap, "lz4")?,
                "blue",
                start,
            ));
            let g = tokio::spawn(produce_all(
                producer(&green.bootstrap, "gzip")?,
                "green",
                start,
            ));
            (b, g, start)
        }
        Client::Java => {
            let cp = tokio::task::spawn_blocking(kafka::java_client_classpath).await??;
            // A JVM takes a moment to start: the first record is due later.
            let start = now_ms() + 3_000;
            let run = |front: &Front, dep: &'static str, codec: &'static str| {
                let log = dir.join(format!("java-{dep}.log"));
                let (cp, to) = (cp.clone(), front.bootstrap.clone());
                tokio::spawn(java_produce(cp, to, dep, start, codec, log))
            };
            (
                run(&blue, "blue", "snappy"),
                run(&green, "green", "lz4"),
                start,
            )
        }
    };
    // Green's gate has to attach and report before it can be ready; ask when both are there.
    tokio::time::sleep(Duration::from_millis(
        (start + 2_000).saturating_sub(now_ms()),
    ))
    .await;
    let mut c = cutover_client(coordinator.port).await?;
    c.start_cutover(StartCutoverRequest {
        pipeline: PIPELINE.into(),
        candidate: "orders-v2".into(),
        when: When::Ready as i32,
        ..Default::default()
    })
    .await?;
    b.await??;
    g.await??;
    let deadline = Instant::now() + Duration::from_secs(30);
    let status = loop {
        let s = pipeline_status(coordinator.port, PIPELINE).await?;
        if s.phase() == Phase::Completed {
            break s;
        }
        if Instant::now() > deadline {
            bail!("cutover not completed: {s:?}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let barrier = status.barrier_ms.context("barrier")? as u64;
    assert!(
        (start..start + SPAN_MS).contains(&barrier),
        "barrier {barrier} within the input ({start}..)"
    );

    let records = tokio::task::spawn_blocking({
        let bootstrap = broker.bootstrap.clone();
        move || {
            kafka::read_topic(
                &bootstrap,
                TOPIC,
                PARTITIONS,
                RECORDS as usize,
                Duration::from_secs(2),
                Duration::from_secs(30),
            )
        }
    })
    .await??;
    let mut seen: HashMap<u64, u32> = HashMap::new();
    let mut order = OrderCheck::default();
    let (mut from_blue, mut from_green) = (0, 0);
    for r in &records {
        let seq: u64 = std::str::from_utf8(r.header("seq").context("seq header")?)?.parse()?;
        let dep = std::str::from_utf8(r.header("dep").context("dep header")?)?.to_owned();
        let ts = start + seq * SPAN_MS / RECORDS;
        *seen.entry(seq).or_default() += 1;
        assert_eq!(r.value, format!("order-{seq}").into_bytes());
        assert_eq!(r.key, format!("k{}", seq % 50).into_bytes());
        assert_eq!(
            r.timestamp,
            rdkafka::Timestamp::CreateTime(ts as i64),
            "record {seq}: the event time is the CreateTime"
        );
        assert_eq!(r.partition, kafka::java_partition(&r.key, PARTITIONS));
        match dep.as_str() {
            "blue" => {
                assert!(ts < barrier, "blue wrote {seq} at {ts} >= T {barrier}");
                from_blue += 1;
            }
            "green" => {
                assert!(ts >= barrier, "green wrote {seq} at {ts} < T {barrier}");
                from_green += 1;
            }
            other => bail!("unknown deployment {other}"),
        }
        order.see(r.partition, &dep, seq);
    }
    let dups = seen.values().filter(|n| **n > 1).count();
    let missing = (0..RECORDS).filter(|s| !seen.contains_key(s)).count();
    println!(
        "kafka front: {} records read, blue {from_blue}, green {from_green}, duplicates {dups}, \
         missing {missing}, out of order {}, barrier T = start + {} ms",
        records.len(),
        order.out_of_order,
        barrier - start
    );
    assert_eq!((dups, missing, order.out_of_order), (0, 0, 0));
    assert!(from_blue > 0 && from_green > 0, "both deployments wrote");
    Ok(())
}

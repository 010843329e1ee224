//! The Kafka front in front of a real Apache Kafka broker (KRaft, from Maven Central): the
//! front logs in to a `SASL_SSL` listener with the sidecar's own credentials (PLAIN,
//! SCRAM-SHA-256, SCRAM-SHA-512; the CA from `ssl.ca.location`, the password from
//! `--kafka-options-file`), renews a session the broker limits, refuses a wrong password with
//! a clear error, passes transactions through (read_committed sees commits only), and carries
//! an idempotent producer across the broker being killed and started again. An unmodified
//! librdkafka producer writes plaintext to the front on loopback; a consumer reads the topic
//! back from the broker's own listener and every record is checked one by one.

use std::collections::HashMap;
use std::path::Path;
use std::time::Duration;

use anyhow::{Context as _, Result, bail, ensure};
use rdkafka::ClientConfig;
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord, Producer as _};
use sluice_integration_tests::apache_kafka::{ApacheKafka, PASSWORD, USER};
use sluice_integration_tests::harness::{Barrier, Coordinator, start_sidecar, wait_until_active};
use sluice_integration_tests::kafka::{self, OrderCheck};
use sluice_integration_tests::procs::{Proc, free_port, wait_for_tcp};

const PIPELINE: &str = "shop/orders";
const PARTITIONS: i32 = 3;

fn tempdir() -> Result<tempfile::TempDir> {
    Ok(tempfile::Builder::new()
        .prefix("sluice-kapache-")
        .tempdir()?)
}

async fn coordinator(dir: &Path) -> Result<Coordinator> {
    Coordinator::start(dir, Barrier::quick())
}

/// A sidecar for blue whose front reaches `upstream` with the librdkafka options in
/// `dir/<name>.properties`; waits until blue is active (its gate admits everything).
async fn front(
    dir: &Path,
    coordinator: u16,
    name: &str,
    upstream: &str,
    options: &str,
) -> Result<(Proc, String)> {
    let file = dir.join(format!("{name}.properties"));
    std::fs::write(&file, options)?;
    let bootstrap = format!("127.0.0.1:{}", free_port()?);
    let (proc, _) = start_sidecar(
        dir,
        coordinator,
        PIPELINE,
        "orders-v1",
        name,
        &[
            "--sink".into(),
            "null".into(),
            "--kafka-listen".into(),
            bootstrap.clone(),
            "--kafka-upstream".into(),
            upstream.into(),
            "--kafka-options-file".into(),
            file.display().to_string(),
        ],
    )?;
    wait_for_tcp(bootstrap.parse()?, Duration::from_secs(10))?;
    wait_until_active(coordinator, PIPELINE, "orders-v1").await?;
    Ok((proc, bootstrap))
}

fn secured_options(ca: &Path, mechanism: &str, password: &str) -> String {
    format!(
        "# the sidecar's own credentials, as mounted from a Secret\n\
         security.protocol=SASL_SSL\n\
         ssl.ca.location={}\n\
         sasl.mechanism={mechanism}\n\
         sasl.username={USER}\n\
         sasl.password={password}\n",
        ca.display()
    )
}

fn producer(bootstrap: &str, timeout: Duration) -> Result<FutureProducer> {
    ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("enable.idempotence", "true")
        .set("acks", "all")
        .set("linger.ms", "5")
        .set("compression.type", "lz4")
        .set("partitioner", "murmur2_random")
        .set("message.timeout.ms", timeout.as_millis().to_string())
        .create()
        .context("producer")
}

/// Sends records `0..n` keyed `k{i % 20}` with a `seq` header, `pace` apart, and waits for every
/// delivery report; returns how many failed.
async fn produce(
    producer: &FutureProducer,
    topic: &str,
    n: u64,
    pace: Duration,
    start_ms: i64,
) -> usize {
    let mut pending = Vec::new();
    for i in 0..n {
        let key = format!("k{}", i % 20);
        let value = format!("record-{i}");
        let seq = i.to_string();
        let headers = OwnedHeaders::new().insert(Header {
            key: "seq",
            value: Some(seq.as_bytes()),
        });
        let record = FutureRecord::to(topic)
            .key(&key)
            .payload(&value)
            .headers(headers)
            .timestamp(start_ms + i64::try_from(i).unwrap_or(0));
        pending.push(producer.send_result(record).expect("queue has room"));
        if !pace.is_zero() {
            tokio::time::sleep(pace).await;
        }
    }
    let mut failed = 0;
    for p in pending {
        if !matches!(p.await, Ok(Ok(_))) {
            failed += 1;
        }
    }
    let _ = producer.flush(Duration::from_secs(10));
    failed
}

/// Reads `topic` back from the broker and checks records `0..n`: each exactly once, key, value
/// and timestamp intact, in order within each partition.
fn check_topic(broker: &str, topic: &str, n: u64, start_ms: i64) -> Result<()> {
    let records = kafka::read_topic(
        broker,
        topic,
        PARTITIONS,
        usize::try_from(n)?,
        Duration::from_secs(2),
        Duration::from_secs(60),
    )?;
    let mut seen: HashMap<u64, usize> = HashMap::new();
    let mut order = OrderCheck::default();
    for r in &records {
        let seq: u64 = std::str::from_utf8(r.header("seq").context("seq header")?)?.parse()?;
        *seen.entry(seq).or_default() += 1;
        ensure!(
            r.key == format!("k{}", seq % 20).into_bytes(),
            "key of {seq}"
        );
        ensure!(
            r.value == format!("record-{seq}").into_bytes(),
            "value of {seq}"
        );
        ensure!(
            r.timestamp.to_millis() == Some(start_ms + i64::try_from(seq)?),
            "timestamp of {seq}: {:?}",
            r.timestamp
        );
        ensure!(
            kafka::java_partition(&r.key, PARTITIONS) == r.partition,
            "partition of {seq}"
        );
        order.see(r.partition, "p", seq);
    }
    let duplicates = seen.values().filter(|&&c| c > 1).count();
    let missing = (0..n).filter(|i| !seen.contains_key(i)).count();
    println!(
        "{topic}: {} records read, {duplicates} duplicated, {missing} missing, {} out of order",
        records.len(),
        order.out_of_order
    );
    ensure!(
        duplicates == 0 && missing == 0 && order.out_of_order == 0,
        "{topic}: {duplicates} duplicated, {missing} missing, {} out of order",
        order.out_of_order
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_front_logs_in_to_a_sasl_ssl_cluster_with_each_mechanism() {
    let dir = tempdir().unwrap();
    if let Err(e) = sasl_ssl(dir.path()).await {
        let _ = dir.keep();
        panic!("{e:#}");
    }
}

async fn sasl_ssl(dir: &Path) -> Result<()> {
    let broker = ApacheKafka::start(dir, true)?;
    let secured = broker.secured.clone().context("secured listener")?;
    let coordinator = coordinator(dir).await?;
    let start_ms = 1_700_000_000_000;
    for mechanism in ["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"] {
        let topic = format!("orders-{}", mechanism.to_ascii_lowercase());
        kafka::create_topic(&broker.bootstrap, &topic, PARTITIONS).await?;
        let name = format!("front-{}", mechanism.to_ascii_lowercase());
        let (mut sidecar, bootstrap) = front(
            dir,
            coordinator.port,
            &name,
            &secured.bootstrap,
            &secured_options(&secured.ca, mechanism, PASSWORD),
        )
        .await?;
        let p = producer(&bootstrap, Duration::from_secs(30))?;
        let failed = produce(&p, &topic, 3_000, Duration::ZERO, start_ms).await;
        ensure!(failed == 0, "{mechanism}: {failed} deliveries failed");
        check_topic(&broker.bootstrap, &topic, 3_000, start_ms)?;
        sidecar.check_alive()?;
        drop(p);
        drop(sidecar);
        let log = std::fs::read_to_string(dir.join(format!("{name}.log")))?;
        ensure!(
            log.contains(&format!("sasl_ssl ({mechanism} as {USER})")),
            "{mechanism}: the log does not say how the front reaches the cluster"
        );
        ensure!(
            !log.contains(PASSWORD),
            "{mechanism}: the password is in the log"
        );
    }
    Ok(())
}

/// The broker ends SASL sessions after 8 s (`connections.max.reauth.ms`); the front renews its
/// session between requests before that, so 12 s of paced records go through without one
/// upstream connection failing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_front_renews_a_sasl_session_before_the_broker_ends_it() {
    let dir = tempdir().unwrap();
    if let Err(e) = reauth(dir.path()).await {
        let _ = dir.keep();
        panic!("{e:#}");
    }
}

async fn reauth(dir: &Path) -> Result<()> {
    let broker = ApacheKafka::start_with(dir, true, "connections.max.reauth.ms=8000")?;
    let secured = broker.secured.clone().context("secured listener")?;
    kafka::create_topic(&broker.bootstrap, "orders", PARTITIONS).await?;
    let coordinator = coordinator(dir).await?;
    let (mut sidecar, bootstrap) = front(
        dir,
        coordinator.port,
        "front",
        &secured.bootstrap,
        &secured_options(&secured.ca, "SCRAM-SHA-512", PASSWORD),
    )
    .await?;
    let p = producer(&bootstrap, Duration::from_secs(30))?;
    let start_ms = 1_700_000_000_000;
    let failed = produce(&p, "orders", 3_000, Duration::from_millis(4), start_ms).await;
    ensure!(failed == 0, "{failed} deliveries failed");
    check_topic(&broker.bootstrap, "orders", 3_000, start_ms)?;
    sidecar.check_alive()?;
    drop(p);
    drop(sidecar);
    let log = std::fs::read_to_string(dir.join("front.log"))?;
    ensure!(
        !log.contains("connection closed"),
        "an upstream session ended under the front:\n{log}"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_password_is_refused_with_a_clear_error_and_nothing_is_written() {
    let dir = tempdir().unwrap();
    if let Err(e) = wrong_password(dir.path()).await {
        let _ = dir.keep();
        panic!("{e:#}");
    }
}

async fn wrong_password(dir: &Path) -> Result<()> {
    let broker = ApacheKafka::start(dir, true)?;
    let secured = broker.secured.clone().context("secured listener")?;
    kafka::create_topic(&broker.bootstrap, "orders", PARTITIONS).await?;
    let coordinator = coordinator(dir).await?;
    let wrong = "not-the-password-42";
    let (mut sidecar, bootstrap) = front(
        dir,
        coordinator.port,
        "front",
        &secured.bootstrap,
        &secured_options(&secured.ca, "SCRAM-SHA-512", wrong),
    )
    .await?;
    let p = producer(&bootstrap, Duration::from_secs(5))?;
    let failed = produce(&p, "orders", 10, Duration::ZERO, 1_700_000_000_000).await;
    ensure!(
        failed == 10,
        "{failed} of 10 deliveries failed, expected all"
    );
    sidecar.check_alive()?;
    drop(p);
    drop(sidecar);
    let log = std::fs::read_to_string(dir.join("front.log"))?;
    ensure!(
        log.contains("SASL SCRAM-SHA-512 login refused by the broker"),
        "the log does not name the refused login:\n{log}"
    );
    ensure!(!log.contains(wrong), "the password is in the log");
    let written = kafka::read_topic(
        &broker.bootstrap,
        "orders",
        PARTITIONS,
        0,
        Duration::from_secs(2),
        Duration::from_secs(20),
    )?;
    ensure!(written.is_empty(), "{} records were written", written.len());
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transactions_pass_through_the_front_and_read_committed_sees_only_commits() {
    let dir = tempdir().unwrap();
    if let Err(e) = transactions(dir.path()).await {
        let _ = dir.keep();
        panic!("{e:#}");
    }
}

/// A transactional librdkafka producer (InitProducerId with a transactional id,
/// AddPartitionsToTxn, Produce inside transactions, EndTxn) through the front: 10 transactions
/// of 400 records, every third aborted. read_committed must see each committed record once and
/// no aborted one; read_uncommitted sees both.
async fn transactions(dir: &Path) -> Result<()> {
    use rdkafka::producer::BaseProducer;
    let broker = ApacheKafka::start(dir, false)?;
    kafka::create_topic(&broker.bootstrap, "orders", PARTITIONS).await?;
    let coordinator = coordinator(dir).await?;
    let (mut sidecar, bootstrap) =
        front(dir, coordinator.port, "front", &broker.bootstrap, "").await?;
    let (committed, aborted) = tokio::task::spawn_blocking(move || -> Result<(u64, u64)> {
        let p: BaseProducer = ClientConfig::new()
            .set("bootstrap.servers", &bootstrap)
            .set("transactional.id", "orders-writer-0")
            .set("linger.ms", "5")
            .set("partitioner", "murmur2_random")
            .create()
            .context("transactional producer")?;
        let t = Duration::from_secs(30);
        p.init_transactions(t)
            .context("InitProducerId through the front")?;
        let (mut committed, mut aborted) = (0, 0);
        for txn in 0..10u64 {
            p.begin_transaction()?;
            let fate = if txn % 3 == 2 { "abort" } else { "commit" };
            for j in 0..400u64 {
                let i = txn * 400 + j;
                let key = format!("k{}", i % 20);
                let value = format!("record-{i}");
                let seq = i.to_string();
                let headers = OwnedHeaders::new()
                    .insert(Header {
                        key: "seq",
                        value: Some(seq.as_bytes()),
                    })
                    .insert(Header {
                        key: "fate",
                        value: Some(fate.as_bytes()),
                    });
                let record = rdkafka::producer::BaseRecord::to("orders")
                    .key(&key)
                    .payload(&value)
                    .headers(headers)
                    .timestamp(1_700_000_000_000 + i64::try_from(i)?);
                p.send(record).map_err(|(e, _)| e)?;
                p.poll(Duration::ZERO);
            }
            // Every record reaches the broker (inside the transaction) before its end.
            p.flush(t).context("flush")?;
            if fate == "abort" {
                p.abort_transaction(t)
                    .context("EndTxn(abort) through the front")?;
                aborted += 400;
            } else {
                p.commit_transaction(t)
                    .context("EndTxn(commit) through the front")?;
                committed += 400;
            }
        }
        Ok((committed, aborted))
    })
    .await??;
    sidecar.check_alive()?;
    let read = |isolation: &'static str, n: u64| {
        kafka::read_topic_isolated(
            &broker.bootstrap,
            "orders",
            PARTITIONS,
            usize::try_from(n).unwrap_or(0),
            Duration::from_secs(3),
            Duration::from_secs(60),
            isolation,
        )
    };
    let visible = read("read_committed", committed)?;
    let mut seen: HashMap<u64, usize> = HashMap::new();
    for r in &visible {
        let seq: u64 = std::str::from_utf8(r.header("seq").context("seq")?)?.parse()?;
        ensure!(
            r.header("fate") == Some(&b"commit"[..]),
            "read_committed saw record {seq} of an aborted transaction"
        );
        *seen.entry(seq).or_default() += 1;
    }
    let duplicates = seen.values().filter(|&&c| c > 1).count();
    let missing = (0..10u64 * 400)
        .filter(|i| (i / 400) % 3 != 2 && !seen.contains_key(i))
        .count();
    let all = read("read_uncommitted", committed + aborted)?;
    println!(
        "read_committed: {} records ({duplicates} duplicated, {missing} missing, 0 aborted); \
         read_uncommitted: {} records",
        visible.len(),
        all.len()
    );
    ensure!(duplicates == 0 && missing == 0, "read_committed not exact");
    ensure!(
        visible.len() as u64 == committed,
        "read_committed read {} of {committed}",
        visible.len()
    );
    ensure!(
        all.len() as u64 == committed + aborted,
        "read_uncommitted read {} of {}",
        all.len(),
        committed + aborted
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idempotent_producer_crosses_a_broker_restart_through_the_front_exactly_once() {
    let dir = tempdir().unwrap();
    if let Err(e) = broker_restart(dir.path()).await {
        let _ = dir.keep();
        panic!("{e:#}");
    }
}

async fn broker_restart(dir: &Path) -> Result<()> {
    let mut broker = ApacheKafka::start(dir, false)?;
    kafka::create_topic(&broker.bootstrap, "orders", PARTITIONS).await?;
    let coordinator = coordinator(dir).await?;
    let (mut sidecar, bootstrap) =
        front(dir, coordinator.port, "front", &broker.bootstrap, "").await?;
    let p = producer(&bootstrap, Duration::from_secs(120))?;
    let start_ms = 1_700_000_000_000;
    const N: u64 = 6_000;
    // 6,000 records over about 6 s; the broker is killed after 2 s and back 3 s later.
    let sending = {
        let p = p.clone();
        tokio::spawn(
            async move { produce(&p, "orders", N, Duration::from_millis(1), start_ms).await },
        )
    };
    tokio::time::sleep(Duration::from_secs(2)).await;
    ensure!(
        !sending.is_finished(),
        "the producer finished before the broker went down"
    );
    broker.kill();
    println!("broker killed");
    tokio::time::sleep(Duration::from_secs(3)).await;
    broker.restart()?;
    println!("broker back");
    let failed = tokio::time::timeout(Duration::from_secs(150), sending)
        .await
        .context("the producer did not finish")??;
    if failed > 0 {
        bail!("{failed} deliveries failed across the broker restart");
    }
    sidecar.check_alive()?;
    check_topic(&broker.bootstrap, "orders", N, start_ms)
}

//! The Kafka sink against librdkafka's mock cluster, for the faults a real broker cannot be made
//! to show on demand: a broker outage mid-stream, injected produce errors, a slow broker, and a
//! delivery that finally fails. Every test reads the topic back with a real consumer and counts
//! the records one by one. (The same sink against a real broker: integration-tests/tests/kafka.rs.)

mod common;

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use common::*;
use futures::SinkExt as _;
use rdkafka::consumer::{BaseConsumer, Consumer as _};
use rdkafka::message::{Headers as _, Message as _};
use rdkafka::mocking::MockCluster;
use rdkafka::types::{RDKafkaApiKey, RDKafkaRespErr};
use rdkafka::{ClientConfig, Offset, Timestamp, TopicPartitionList};
use sluice_gate_sidecar::sink::kafka::{KafkaSettings, KafkaSink, parse_option};
use sluice_gate_sidecar::{SidecarError, SinkError};
use sluice_proto::v1::{self, ClientFrame, ErrorCode, ServerFrame, client_frame, server_frame};

const TOPIC: &str = "orders";
const PARTITIONS: i32 = 4;
const BASE: i64 = 1_700_000_000_000;

/// Record `i`: keyed `k{i}` except every 10th, which names partition `i % PARTITIONS`; headers
/// carry its sequence number; event time `BASE + i`.
fn rec(i: u64) -> v1::Record {
    let explicit = i.is_multiple_of(10);
    v1::Record {
        key: if explicit {
            Vec::new().into()
        } else {
            format!("k{i}").into_bytes().into()
        },
        value: format!("v{i:0>96}").into_bytes().into(),
        headers: vec![
            v1::Header {
                key: "seq".into(),
                value: i.to_string().into_bytes().into(),
            },
            v1::Header {
                key: "src".into(),
                value: vec![0, 255, 1].into(),
            },
        ],
        event_time_ms: BASE + i as i64,
        topic: TOPIC.into(),
        partition: explicit.then_some((i % PARTITIONS as u64) as i32),
    }
}

fn cluster() -> MockCluster<'static, rdkafka::producer::DefaultProducerContext> {
    let mock = MockCluster::new(1).expect("mock cluster");
    mock.create_topic(TOPIC, PARTITIONS, 1).expect("topic");
    mock
}

async fn sidecar(bootstrap: &str, extra: &[&str]) -> (FakeCoordinator, Sidecar) {
    let coord = FakeCoordinator::start(Some(active(1, 1))).await;
    let sink = format!("kafka:{bootstrap}");
    let mut args = vec!["--sink", sink.as_str(), "--default-topic", TOPIC];
    args.extend_from_slice(extra);
    let sidecar = Sidecar::start(&coord.url(), &args).await;
    (coord, sidecar)
}

async fn send(client: &mut Client, range: std::ops::Range<u64>) {
    let ids: Vec<u64> = range.collect();
    for chunk in ids.chunks(100) {
        client
            .send_records(chunk.iter().map(|&i| rec(i)).collect())
            .await;
    }
}

/// One record read back.
#[derive(Debug)]
struct Consumed {
    partition: i32,
    seq: u64,
    key: Vec<u8>,
    value: Vec<u8>,
    timestamp: Timestamp,
    src: Vec<u8>,
}

/// Reads every partition of the topic from the beginning until `expected` records arrived and
/// then `quiet` passed without more (so extra copies would be seen too).
async fn consume(bootstrap: String, expected: usize, quiet: Duration) -> Vec<Consumed> {
    tokio::task::spawn_blocking(move || {
        let consumer: BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", &bootstrap)
            .set("group.id", "sluice-test-reader")
            .set("enable.auto.commit", "false")
            .create()
            .expect("consumer");
        let mut tpl = TopicPartitionList::new();
        for p in 0..PARTITIONS {
            tpl.add_partition_offset(TOPIC, p, Offset::Beginning)
                .unwrap();
        }
        consumer.assign(&tpl).expect("assign");
        let mut out = Vec::new();
        let deadline = Instant::now() + Duration::from_secs(60);
        let mut last = Instant::now();
        while Instant::now() < deadline {
            if out.len() >= expected && last.elapsed() >= quiet {
                break;
            }
            let Some(m) = consumer.poll(Duration::from_millis(100)) else {
                continue;
            };
            let m = m.expect("consumer error");
            let headers = m.headers().expect("headers survive");
            let header = |name: &str| {
                headers
                    .iter()
                    .find(|h| h.key == name)
                    .and_then(|h| h.value)
                    .map(<[u8]>::to_vec)
                    .unwrap_or_default()
            };
            out.push(Consumed {
                partition: m.partition(),
                seq: String::from_utf8(header("seq")).unwrap().parse().unwrap(),
                key: m.key().unwrap_or_default().to_vec(),
                value: m.payload().unwrap_or_default().to_vec(),
                timestamp: m.timestamp(),
                src: header("src"),
            });
            last = Instant::now();
        }
        out
    })
    .await
    .unwrap()
}

/// Every record of `0..n` exactly once, intact, in the channel's order within each partition,
/// on the partition it named.
fn assert_exact(read: &[Consumed], n: u64) {
    let mut seen: HashMap<u64, u32> = HashMap::new();
    let mut last_in_partition: BTreeMap<i32, u64> = BTreeMap::new();
    for c in read {
        *seen.entry(c.seq).or_default() += 1;
        let want = rec(c.seq);
        assert_eq!(c.key, want.key, "key of {}", c.seq);
        assert_eq!(c.value, want.value, "value of {}", c.seq);
        assert_eq!(
            c.timestamp,
            Timestamp::CreateTime(want.event_time_ms),
            "timestamp of {} is its event time",
            c.seq
        );
        assert_eq!(c.src, vec![0, 255, 1], "binary header of {}", c.seq);
        if let Some(p) = want.partition {
            assert_eq!(c.partition, p, "record {} named its partition", c.seq);
        }
        if let Some(prev) = last_in_partition.insert(c.partition, c.seq) {
            assert!(
                prev < c.seq,
                "partition {} has {} after {}",
                c.partition,
                c.seq,
                prev
            );
        }
    }
    let dups: Vec<_> = seen.iter().filter(|(_, n)| **n > 1).collect();
    assert!(dups.is_empty(), "duplicates: {dups:?}");
    let missing: Vec<u64> = (0..n).filter(|i| !seen.contains_key(i)).collect();
    assert!(
        missing.is_empty(),
        "{} missing, first {:?}",
        missing.len(),
        &missing[..missing.len().min(5)]
    );
    assert_eq!(read.len() as u64, n);
    assert!(
        last_in_partition.len() == PARTITIONS as usize,
        "records spread over every partition"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broker_outage_stops_acks_and_the_flow_resumes_without_loss_or_duplicates() {
    let mock = cluster();
    let bootstrap = mock.bootstrap_servers();
    let (_coord, sidecar) = sidecar(&bootstrap, &[]).await;
    let mut ch = sidecar.channel("0").await;

    send(&mut ch, 0..5_000).await;
    ch.flush(1).await;
    assert_eq!(ch.expect_ack(1).await.admitted, 5_000);

    mock.broker_down(1).unwrap();
    send(&mut ch, 5_000..10_000).await;
    ch.flush(2).await;
    // Nothing can be acknowledged while the only broker is down.
    ch.expect_silence(Duration::from_secs(2)).await;

    mock.broker_up(1).unwrap();
    let ack = ch.expect_ack(2).await;
    assert_eq!(ack.admitted, 10_000);

    let read = consume(bootstrap, 10_000, Duration::from_secs(1)).await;
    assert_exact(&read, 10_000);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn produce_request_errors_are_retried_without_duplicates() {
    let mock = cluster();
    let bootstrap = mock.bootstrap_servers();
    let (_coord, sidecar) = sidecar(&bootstrap, &[]).await;
    // Retriable errors, some after the broker may already have written the batch (timeout):
    // idempotence must keep them from becoming duplicates.
    use RDKafkaRespErr::*;
    mock.request_errors(
        RDKafkaApiKey::Produce,
        &[
            RD_KAFKA_RESP_ERR_NOT_ENOUGH_REPLICAS,
            RD_KAFKA_RESP_ERR_REQUEST_TIMED_OUT,
            RD_KAFKA_RESP_ERR_NOT_ENOUGH_REPLICAS_AFTER_APPEND,
            RD_KAFKA_RESP_ERR_NOT_LEADER_FOR_PARTITION,
            RD_KAFKA_RESP_ERR_REQUEST_TIMED_OUT,
        ],
    );
    let mut ch = sidecar.channel("0").await;
    send(&mut ch, 0..8_000).await;
    ch.flush(1).await;
    assert_eq!(ch.expect_ack(1).await.admitted, 8_000);
    let read = consume(bootstrap, 8_000, Duration::from_secs(1)).await;
    assert_exact(&read, 8_000);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_undeliverable_record_fails_its_channel_and_the_sidecar_goes_on() {
    let mock = cluster();
    let bootstrap = mock.bootstrap_servers();
    let (_coord, sidecar) = sidecar(
        &bootstrap,
        &[
            "--kafka-option",
            "message.timeout.ms=1000",
            // Reconnect quickly once the broker is back, rather than after a long backoff.
            "--kafka-option",
            "reconnect.backoff.max.ms=100",
        ],
    )
    .await;
    let mut ch = sidecar.channel("0").await;
    send(&mut ch, 0..10).await;
    ch.flush(1).await;
    assert_eq!(ch.expect_ack(1).await.admitted, 10);

    mock.broker_down(1).unwrap();
    send(&mut ch, 10..20).await;
    ch.flush(2).await;
    let err = ch.expect_error().await;
    assert_eq!(err.code(), ErrorCode::SinkFailed, "{}", err.message);
    assert!(
        err.message.contains("Kafka did not acknowledge a record"),
        "{}",
        err.message
    );
    ch.expect_closed().await;

    // The sidecar still serves; once the broker is back, a new channel (the client's replay)
    // gets through.
    mock.broker_up(1).unwrap();
    let mut ch = sidecar.channel("0").await;
    send(&mut ch, 10..20).await;
    ch.flush(1).await;
    assert_eq!(ch.expect_ack(1).await.admitted, 10);
    let read = consume(bootstrap, 20, Duration::from_millis(500)).await;
    // The failed records were never acknowledged to the client, so it resent them; Kafka holds
    // each once because the first attempt never reached it.
    assert_exact(&read, 20);
}

/// The broker answers the head-of-line produce request with OUT_OF_ORDER_SEQUENCE_NUMBER: the
/// idempotent producer can no longer tell what Kafka holds, and librdkafka raises a fatal
/// error. Nothing after it may be acknowledged; the sidecar stops with the error, so its
/// container restarts with a fresh producer and the clients replay what was never acked.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fatal_producer_error_acks_nothing_more_and_stops_the_sidecar() {
    let mock = cluster();
    let bootstrap = mock.bootstrap_servers();
    let (_coord, sidecar) = sidecar(&bootstrap, &[]).await;
    let mut ch = sidecar.channel("0").await;
    send(&mut ch, 0..10).await;
    ch.flush(1).await;
    assert_eq!(ch.expect_ack(1).await.admitted, 10);

    mock.request_errors(
        RDKafkaApiKey::Produce,
        &[RDKafkaRespErr::RD_KAFKA_RESP_ERR_OUT_OF_ORDER_SEQUENCE_NUMBER],
    );
    send(&mut ch, 10..20).await;
    ch.flush(2).await;
    match ch.next(PATIENCE).await {
        // Which comes first (the failed delivery or the stop) is a race; both refuse the ack.
        Ok(Some(ServerFrame {
            kind: Some(server_frame::Kind::Error(e)),
        })) => assert!(
            matches!(e.code(), ErrorCode::SinkFailed | ErrorCode::ShuttingDown),
            "{e:?}"
        ),
        Ok(None) => {}
        other => panic!("expected an error or a closed channel, got {other:?}"),
    }

    match sidecar.finished().await {
        Err(SidecarError::Sink(SinkError::Fatal(reason))) => {
            assert!(reason.contains("OutOfOrderSequenceNumber"), "{reason}")
        }
        other => panic!("expected the sidecar to stop with the fatal error, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_broker_backpressures_the_client_and_queues_stay_bounded() {
    const TOTAL: u64 = 12_000;
    const QUEUE: usize = 1_000;
    let mock = cluster();
    let bootstrap = mock.bootstrap_servers();
    mock.broker_round_trip_time(1, Duration::from_millis(150))
        .unwrap();
    let coord = FakeCoordinator::start(Some(active(1, 1))).await;
    let sink = KafkaSink::open(&KafkaSettings {
        bootstrap: bootstrap.clone(),
        options: vec![parse_option(&format!("queue.buffering.max.messages={QUEUE}")).unwrap()],
    })
    .expect("sink");
    let probe = sink.clone();
    let sidecar = Sidecar::start_with_sink(
        &coord.url(),
        &["--hold-limit", "500", "--default-topic", TOPIC],
        sink,
    )
    .await;

    let (mut tx, mut rx) = split_channel(&sidecar.socket, "slow").await;
    let sent = Arc::new(AtomicUsize::new(0));
    let counter = sent.clone();
    let writer = tokio::spawn(async move {
        for i in (0..TOTAL).step_by(100) {
            let records = (i..i + 100).map(rec).collect();
            tx.send(ClientFrame {
                kind: Some(client_frame::Kind::Records(v1::Records { records })),
            })
            .await
            .unwrap();
            counter.fetch_add(100, Ordering::SeqCst);
        }
        tx.send(ClientFrame {
            kind: Some(client_frame::Kind::Flush(v1::Flush { seq: 1 })),
        })
        .await
        .unwrap();
        tx
    });

    // While the broker is slow, the queue fills to its bound and no further; the client is
    // held back instead of the sidecar buffering.
    let mut peak = 0;
    let mut blocked_at = None;
    let start = Instant::now();
    while start.elapsed() < Duration::from_millis(1_500) {
        peak = peak.max(probe.queued());
        if probe.queued() >= QUEUE / 2 && blocked_at.is_none() {
            blocked_at = Some(sent.load(Ordering::SeqCst));
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let sent_after_wait = sent.load(Ordering::SeqCst) as u64;
    assert_eq!(
        probe.max_queued(),
        QUEUE,
        "the bound is queue.buffering.max.messages"
    );
    assert!(peak <= QUEUE, "queue exceeded its bound: {peak}");
    assert!(
        peak >= QUEUE / 2,
        "the slow broker never filled the queue: {peak}"
    );
    assert!(
        sent_after_wait < TOTAL,
        "the client wrote all {TOTAL} records while the broker could take ~{QUEUE} per round trip: no backpressure"
    );

    let _tx = tokio::time::timeout(Duration::from_secs(60), writer)
        .await
        .expect("the writer finishes once the broker catches up")
        .unwrap();
    use futures::StreamExt as _;
    let ack = tokio::time::timeout(Duration::from_secs(60), rx.next())
        .await
        .expect("the flush is acknowledged")
        .unwrap()
        .unwrap();
    match ack.kind {
        Some(sluice_proto::v1::server_frame::Kind::FlushAck(a)) => assert_eq!(a.admitted, TOTAL),
        other => panic!("expected the FlushAck, got {other:?}"),
    }
    assert_eq!(probe.queued(), 0, "every permit returned");
    let read = consume(bootstrap, TOTAL as usize, Duration::from_secs(1)).await;
    assert_exact(&read, TOTAL);
}

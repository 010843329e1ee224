//! The Kafka front against bad input and lost answers (issue 10), with the real sidecar binary
//! in front of a real tansu broker, driven by a hand-made wire client (`kafka_wire`): what no
//! well-behaved client does on purpose.

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::{Context as _, Result};
use kafka_protocol::messages::api_versions_response::ApiVersionsResponse;
use kafka_protocol::messages::metadata_request::MetadataRequestTopic;
use kafka_protocol::messages::produce_request::{PartitionProduceData, TopicProduceData};
use kafka_protocol::messages::{
    ApiKey, ApiVersionsRequest, InitProducerIdRequest, InitProducerIdResponse, JoinGroupRequest,
    MetadataRequest, MetadataResponse, ProduceRequest, ProduceResponse, TopicName,
};
use kafka_protocol::protocol::StrBytes;
use kafka_protocol::records::Compression;
use sluice_integration_tests::harness::{
    Barrier, Coordinator, now_ms, start_sidecar, wait_until_active,
};
use sluice_integration_tests::kafka::{self, Broker};
use sluice_integration_tests::kafka_wire::{Wire, batch};
use sluice_integration_tests::procs::{Proc, free_port, wait_for_tcp};

const PIPELINE: &str = "shop/orders";
const TOPIC: &str = "orders";

struct World {
    broker: Broker,
    coordinator: Coordinator,
    front: (Proc, SocketAddr),
    dir: tempfile::TempDir,
}

fn start_front(
    dir: &std::path::Path,
    coordinator: u16,
    upstream: &str,
    port: u16,
) -> Result<(Proc, SocketAddr)> {
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse()?;
    let (proc, _) = start_sidecar(
        dir,
        coordinator,
        PIPELINE,
        "orders-v1",
        "orders-v1",
        &[
            "--sink".into(),
            "null".into(),
            "--kafka-listen".into(),
            addr.to_string(),
            "--kafka-upstream".into(),
            upstream.into(),
        ],
    )?;
    wait_for_tcp(addr, Duration::from_secs(10))?;
    Ok((proc, addr))
}

async fn world() -> Result<World> {
    let dir = tempfile::Builder::new()
        .prefix("sluice-kfaults-")
        .tempdir()?;
    let broker = Broker::start(dir.path())?;
    kafka::create_topic(&broker.bootstrap, TOPIC, 1).await?;
    let coordinator = Coordinator::start(dir.path(), Barrier::quick())?;
    let front = start_front(
        dir.path(),
        coordinator.port,
        &broker.bootstrap,
        free_port()?,
    )?;
    // Blue attaches first and is made active: its gate admits everything.
    wait_until_active(coordinator.port, PIPELINE, "orders-v1").await?;
    Ok(World {
        broker,
        coordinator,
        front,
        dir,
    })
}

/// The local address the front gives for the topic's partition-0 leader.
async fn leader(front: SocketAddr) -> Result<SocketAddr> {
    let mut w = Wire::connect(front).await?;
    let req = MetadataRequest::default().with_topics(Some(vec![
        MetadataRequestTopic::default()
            .with_name(Some(TopicName(StrBytes::from_static_str(TOPIC)))),
    ]));
    let r: MetadataResponse = w.call(ApiKey::Metadata, 9, &req).await?;
    let leader = r.topics[0].partitions[0].leader_id;
    let b = r
        .brokers
        .iter()
        .find(|b| b.node_id == leader)
        .context("leader broker")?;
    Ok(format!("{}:{}", b.host, b.port).parse()?)
}

fn produce(records: bytes::Bytes) -> ProduceRequest {
    ProduceRequest::default()
        .with_acks(-1)
        .with_timeout_ms(10_000)
        .with_topic_data(vec![
            TopicProduceData::default()
                .with_name(TopicName(StrBytes::from_static_str(TOPIC)))
                .with_partition_data(vec![
                    PartitionProduceData::default()
                        .with_index(0)
                        .with_records(Some(records)),
                ]),
        ])
}

fn error_of(r: &ProduceResponse) -> i16 {
    r.responses[0].partition_responses[0].error_code
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_closes_only_that_connection() {
    let mut w = world().await.unwrap();
    let r = async {
        let front = w.front.1;
        for (what, bytes) in [
            ("garbage", vec![0u8, 0, 0, 5, 1, 2, 3, 4, 5]),
            ("a frame of 256 MiB", vec![0x10, 0, 0, 0]),
            ("a negative size", vec![0xff, 0xff, 0xff, 0xf0]),
            ("an unknown API key", vec![0, 0, 0, 8, 0x7f, 0x7f, 0, 0, 0, 0, 0, 1]),
        ] {
            let mut c = Wire::connect(front).await?;
            c.raw(&bytes).await?;
            assert!(c.closed().await, "{what}: the connection stays open");
        }
        // A Produce request claiming two billion topics in 14 bytes: refused before the
        // decoder would allocate for them (it sizes its vectors from the wire).
        let mut c = Wire::connect(front).await?;
        let mut bomb = vec![0u8, 0, 0, 3, 0, 0, 0, 1, 0xff, 0xff];
        bomb.extend_from_slice(&[0xff, 0xff, 0, 1, 0, 0, 0, 10, 0x7f, 0xff, 0xff, 0xff]);
        let mut frame = (bomb.len() as i32).to_be_bytes().to_vec();
        frame.extend_from_slice(&bomb);
        c.raw(&frame).await?;
        assert!(c.closed().await, "the topic-count bomb is refused");
        // A frame that stops half way.
        let mut c = Wire::connect(front).await?;
        c.raw(&[0, 0, 0, 100, 0, 3, 0, 9]).await?;
        drop(c);
        // An API the front does not serve: refused (it is not in the ApiVersions answer).
        let mut c = Wire::connect(front).await?;
        c.send(ApiKey::JoinGroup, 0, &JoinGroupRequest::default()).await?;
        assert!(c.closed().await, "JoinGroup is not served");
        // ApiVersions newer than the front's: answered at v0 with UNSUPPORTED_VERSION.
        let mut c = Wire::connect(front).await?;
        c.send_versioned(ApiKey::ApiVersions, 9, 3, &ApiVersionsRequest::default()).await?;
        let mut frame = c.read_frame().await?.context("an answer")?;
        let _ = <kafka_protocol::messages::ResponseHeader as kafka_protocol::protocol::Decodable>::decode(&mut frame, 0)?;
        let v: ApiVersionsResponse = kafka_protocol::protocol::Decodable::decode(&mut frame, 0)?;
        assert_eq!(v.error_code, 35, "{v:?}");
        // The sidecar is fine, and a good client is served, seeing only the front.
        w.front.0.check_alive()?;
        let mut c = Wire::connect(front).await?;
        let v: ApiVersionsResponse = c.call(ApiKey::ApiVersions, 3, &ApiVersionsRequest::default()).await?;
        let produce_range = v.api_keys.iter().find(|a| a.api_key == 0).context("Produce")?;
        assert_eq!((produce_range.min_version, produce_range.max_version), (3, 11));
        assert!(v.api_keys.iter().all(|a| a.api_key != ApiKey::JoinGroup as i16));
        let m: MetadataResponse = c.call(ApiKey::Metadata, 9, &MetadataRequest::default()).await?;
        let tansu_port: u16 = w.broker.bootstrap.rsplit(':').next().unwrap().parse()?;
        for b in &m.brokers {
            assert_eq!(b.host.as_str(), "127.0.0.1");
            assert_ne!(b.port as u16, tansu_port, "the real broker's address leaked: {b:?}");
        }
        Ok::<_, anyhow::Error>(())
    }
    .await;
    if let Err(e) = r {
        panic!("{e:#}\nlogs kept in {}", w.dir.keep().display());
    }
}

/// A batch whose answer was lost (the client's connection cut after the front forwarded it) is
/// retried with the same sequence on a new connection: the topic holds it once. After a
/// sidecar `kill -9` the front has lost the sequence mapping: a producer mid-sequence is told
/// the non-retriable `INVALID_RECORD` (the client fails the batch; Flink restores), never a
/// guessed sequence.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retried_batch_is_written_once_and_a_restart_is_an_error_not_a_duplicate() {
    let mut w = world().await.unwrap();
    let r = async {
        let front = w.front.1;
        let mut c = Wire::connect(front).await?;
        let init = InitProducerIdRequest::default().with_transaction_timeout_ms(60_000);
        let p: InitProducerIdResponse = c.call(ApiKey::InitProducerId, 4, &init).await?;
        assert_eq!(p.error_code, 0, "{p:?}");
        let (pid, epoch) = (p.producer_id.0, p.producer_epoch);
        let to = leader(front).await?;
        let ts = now_ms() as i64;
        let recs = |from: i32| -> Vec<(String, String, i64)> {
            (from..from + 5)
                .map(|i| (format!("k{i}"), format!("v{i}"), ts + i64::from(i)))
                .collect()
        };
        let mk = |from: i32| -> Result<bytes::Bytes> {
            let r = recs(from);
            let r: Vec<(&str, &str, i64)> = r
                .iter()
                .map(|(k, v, t)| (k.as_str(), v.as_str(), *t))
                .collect();
            batch(pid, epoch, from, &r, Compression::Snappy)
        };
        // The first batch goes out, and the connection is cut before its answer is read.
        let mut a = Wire::connect(to).await?;
        a.send(ApiKey::Produce, 9, &produce(mk(0)?)).await?;
        tokio::time::sleep(Duration::from_millis(1_000)).await;
        drop(a);
        // The client retries it (same sequence) on a new connection, then goes on.
        let mut b = Wire::connect(to).await?;
        let r: ProduceResponse = b.call(ApiKey::Produce, 9, &produce(mk(0)?)).await?;
        // Sent upstream as the same batch again: the broker knows it. Kafka answers NONE with
        // the first offsets; tansu answers DUPLICATE_SEQUENCE_NUMBER, which clients take as
        // success.
        assert!([0, 46].contains(&error_of(&r)), "{r:?}");
        let r: ProduceResponse = b.call(ApiKey::Produce, 9, &produce(mk(5)?)).await?;
        assert_eq!(error_of(&r), 0, "{r:?}");
        let got = tokio::task::spawn_blocking({
            let bootstrap = w.broker.bootstrap.clone();
            move || {
                kafka::read_topic(
                    &bootstrap,
                    TOPIC,
                    1,
                    10,
                    Duration::from_secs(2),
                    Duration::from_secs(20),
                )
            }
        })
        .await??;
        let values: Vec<String> = got
            .iter()
            .map(|r| String::from_utf8_lossy(&r.value).into())
            .collect();
        let want: Vec<String> = (0..10).map(|i| format!("v{i}")).collect();
        assert_eq!(values, want, "each record once, in order");

        // The sidecar dies and comes back: the producer's next batch is mid-sequence.
        drop(b);
        w.front.0.kill();
        let port = w.front.1.port();
        w.front = start_front(w.dir.path(), w.coordinator.port, &w.broker.bootstrap, port)?;
        let again = leader(w.front.1).await?;
        let mut c = Wire::connect(again).await?;
        let r: ProduceResponse = c.call(ApiKey::Produce, 9, &produce(mk(10)?)).await?;
        assert_eq!(error_of(&r), 87, "INVALID_RECORD: {r:?}");
        let msg = r.responses[0].partition_responses[0]
            .error_message
            .as_deref()
            .unwrap_or_default();
        assert!(msg.contains("sluice"), "{msg}");
        Ok::<_, anyhow::Error>(())
    }
    .await;
    if let Err(e) = r {
        panic!("{e:#}\nlogs kept in {}", w.dir.keep().display());
    }
}

//! The sink seam: custom sinks, acks gating FlushAck, sink failure, the JSON-lines format, TCP
//! channels and graceful shutdown.

mod common;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use clap::Parser as _;
use common::*;
use futures::{SinkExt as _, StreamExt as _};
use sluice_gate_sidecar::sink::AckSender;
use sluice_gate_sidecar::{BatchAck, Config, Listeners, Sink, SinkBatch, SinkError};
use sluice_proto::framing::FrameCodec;
use sluice_proto::v1::{self, ClientFrame, ErrorCode, ServerFrame, client_frame, server_frame};
use tokio::net::TcpListener;
use tokio_util::codec::Framed;

/// Keeps every batch; acks at once, never, or with an error, as told.
#[derive(Clone, Default)]
struct TestSink {
    batches: Arc<Mutex<Vec<SinkBatch>>>,
    parked: Arc<Mutex<Vec<AckSender>>>,
    mode: Arc<Mutex<Mode>>,
}

#[derive(Clone, Copy, Default, PartialEq)]
enum Mode {
    #[default]
    Ack,
    Park,
    Fail,
}

impl Sink for TestSink {
    async fn submit(&self, batch: SinkBatch) -> Result<BatchAck, SinkError> {
        self.batches.lock().unwrap().push(batch);
        let mode = *self.mode.lock().unwrap();
        Ok(match mode {
            Mode::Ack => BatchAck::ready(Ok(())),
            Mode::Fail => BatchAck::ready(Err(SinkError::Refused("broker down".into()))),
            Mode::Park => {
                let (tx, ack) = BatchAck::pending();
                self.parked.lock().unwrap().push(tx);
                ack
            }
        })
    }

    async fn flush(&self) -> Result<(), SinkError> {
        Ok(())
    }
}

#[tokio::test]
async fn batches_keep_channel_order_and_fill_the_default_topic() {
    let coord = FakeCoordinator::start(Some(active(1, 0))).await;
    let sink = TestSink::default();
    let sidecar =
        Sidecar::start_with_sink(&coord.url(), &["--default-topic", "fallback"], sink.clone())
            .await;
    let mut c = sidecar.channel("7").await;
    let mut named = record(3);
    named.topic = "explicit".into();
    named.partition = Some(2);
    c.send_records(vec![record(1), record(2), named]).await;
    c.flush(1).await;
    assert_eq!(c.expect_ack(1).await.admitted, 3);
    let batches = sink.batches.lock().unwrap().clone();
    let records: Vec<_> = batches.iter().flat_map(|b| b.records.clone()).collect();
    assert!(batches.iter().all(|b| &*b.channel == "7"));
    let times: Vec<i64> = records.iter().map(|r| r.event_time_ms).collect();
    assert_eq!(times, vec![1, 2, 3]);
    assert_eq!(&*records[0].topic, "fallback");
    assert_eq!(&records[0].key[..], b"k1");
    assert_eq!(
        (&*records[2].topic, records[2].partition),
        ("explicit", Some(2))
    );
}

#[tokio::test]
async fn a_flush_waits_for_the_sink_ack() {
    let coord = FakeCoordinator::start(Some(active(1, 0))).await;
    let sink = TestSink::default();
    *sink.mode.lock().unwrap() = Mode::Park;
    let sidecar = Sidecar::start_with_sink(&coord.url(), &[], sink.clone()).await;
    let mut c = sidecar.channel("0").await;
    c.records(&[1, 2]).await;
    c.flush(1).await;
    c.expect_silence(Duration::from_millis(500)).await;
    assert_eq!(
        sink.batches.lock().unwrap().len(),
        1,
        "admitted, handed over"
    );
    coord
        .wait_until("admitted not counted before the ack", |c| {
            c.progress().last().is_some_and(|p| {
                let n = p.counters.unwrap();
                n.received == 2 && n.admitted == 0 && n.held == 0
            })
        })
        .await;

    for tx in sink.parked.lock().unwrap().drain(..) {
        tx.complete(Ok(()));
    }
    assert_eq!(c.expect_ack(1).await.admitted, 2);
    coord
        .wait_until("admitted counted after the ack", |c| {
            c.progress()
                .last()
                .is_some_and(|p| p.counters.unwrap().admitted == 2)
        })
        .await;
}

#[tokio::test]
async fn a_sink_failure_closes_the_channel_with_sink_failed() {
    let coord = FakeCoordinator::start(Some(active(1, 0))).await;
    let sink = TestSink::default();
    *sink.mode.lock().unwrap() = Mode::Fail;
    let sidecar = Sidecar::start_with_sink(&coord.url(), &[], sink.clone()).await;
    let mut c = sidecar.channel("0").await;
    c.records(&[1]).await;
    c.flush(1).await;
    let err = c.expect_error().await;
    assert_eq!(err.code, ErrorCode::SinkFailed as i32, "{err:?}");
    assert!(err.message.contains("broker down"), "{}", err.message);
    c.expect_closed().await;

    // Once the sink recovers, a new channel works.
    *sink.mode.lock().unwrap() = Mode::Ack;
    let mut again = sidecar.channel("0").await;
    again.records(&[2]).await;
    again.flush(1).await;
    assert_eq!(again.expect_ack(1).await.admitted, 1);
}

#[tokio::test]
async fn the_file_sink_writes_the_documented_json_lines() {
    let coord = FakeCoordinator::start(Some(active(1, 0))).await;
    let sidecar = Sidecar::start(&coord.url(), &[]).await;
    let mut c = sidecar.channel("3").await;
    let text = v1::Record {
        key: b"user-1".to_vec().into(),
        value: b"{\"amount\":5}".to_vec().into(),
        headers: vec![v1::Header {
            key: "trace".into(),
            value: b"abc".to_vec().into(),
        }],
        event_time_ms: 1_700_000_000_000,
        topic: "payments".into(),
        partition: Some(4),
    };
    let binary = v1::Record {
        key: vec![0xff, 0xfe].into(),
        value: vec![0x80].into(),
        headers: vec![v1::Header {
            key: "bin".into(),
            value: vec![0xc3].into(),
        }],
        event_time_ms: 1_700_000_000_001,
        topic: String::new(),
        partition: None,
    };
    c.send_records(vec![text, binary]).await;
    c.flush(1).await;
    c.expect_ack(1).await;
    let mut lines = sidecar.lines();
    assert_eq!(lines.len(), 2);
    // The wall-clock stamp is the only field not fixed by the input: check it, then drop it.
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64;
    for line in &mut lines {
        let written = line
            .as_object_mut()
            .unwrap()
            .remove("written_at_ms")
            .and_then(|v| v.as_u64())
            .expect("written_at_ms is a number");
        assert!(
            written <= now_ms && written + 60_000 > now_ms,
            "{written} vs {now_ms}"
        );
    }
    assert_eq!(
        lines[0],
        serde_json::json!({
            "pipeline": PIPELINE, "deployment": DEPLOYMENT, "gate": GATE_ID, "channel": "3",
            "topic": "payments", "partition": 4, "key": "user-1", "value": "{\"amount\":5}",
            "event_time_ms": 1_700_000_000_000_i64,
            "headers": [{"key": "trace", "value": "abc"}],
        })
    );
    assert_eq!(
        lines[1],
        serde_json::json!({
            "pipeline": PIPELINE, "deployment": DEPLOYMENT, "gate": GATE_ID, "channel": "3",
            "topic": "sluice-out", "partition": null, "key_b64": "//4=", "value_b64": "gA==",
            "event_time_ms": 1_700_000_000_001_i64,
            "headers": [{"key": "bin", "value_b64": "ww=="}],
        })
    );
}

#[tokio::test]
async fn shutdown_closes_channels_flushes_and_removes_the_socket() {
    let coord = FakeCoordinator::start(None).await;
    let sidecar = Sidecar::start(&coord.url(), &[]).await;
    let mut c = sidecar.channel("0").await;
    c.records(&[1]).await; // held: no assignment
    c.flush(1).await;
    coord
        .wait_until("attached", |c| !c.hellos().is_empty())
        .await;
    let socket = sidecar.socket.clone();
    assert!(socket.exists());

    let stop = tokio::spawn(sidecar.stop());
    let err = c.expect_error().await;
    assert_eq!(err.code, ErrorCode::ShuttingDown as i32, "{err:?}");
    c.expect_closed().await;
    stop.await.unwrap().expect("clean stop");
    assert!(!socket.exists(), "the socket file is removed");
}

#[tokio::test]
async fn a_stale_socket_file_is_replaced_and_a_live_one_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("gate.sock");
    let args = |p: &std::path::Path| {
        Config::try_parse_from([
            "gate-sidecar",
            "--pipeline",
            PIPELINE,
            "--deployment",
            DEPLOYMENT,
            "--socket",
            p.to_str().unwrap(),
        ])
        .unwrap()
    };
    // A socket file nobody listens on (its listener is gone): stale.
    drop(std::os::unix::net::UnixListener::bind(&path).unwrap());
    assert!(path.exists());
    let live = Listeners::bind(&args(&path))
        .await
        .expect("stale socket replaced");
    // Now it is live: a second sidecar must not steal it.
    let err = Listeners::bind(&args(&path)).await.unwrap_err();
    assert!(err.to_string().contains("in use"), "{err}");
    drop(live);
    // A regular file is never removed.
    let file = dir.path().join("plain");
    std::fs::write(&file, "keep me").unwrap();
    let err = Listeners::bind(&args(&file)).await.unwrap_err();
    assert!(err.to_string().contains("not a socket"), "{err}");
    assert_eq!(std::fs::read_to_string(&file).unwrap(), "keep me");
}

#[tokio::test]
async fn channels_also_work_over_loopback_tcp() {
    init_tracing();
    let coord = FakeCoordinator::start(Some(active(1, 0))).await;
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out.jsonl");
    let config = Config::try_parse_from([
        "gate-sidecar",
        "--pipeline",
        PIPELINE,
        "--deployment",
        DEPLOYMENT,
        "--coordinator",
        &coord.url(),
        "--sink",
        &format!("file:{}", out.display()),
        // Not bound (TCP only), but it names the high-mark and channel files: keep them here.
        "--socket",
        dir.path().join("unused.sock").to_str().unwrap(),
    ])
    .unwrap();
    let tcp = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = tcp.local_addr().unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(sluice_gate_sidecar::run(
        config,
        Listeners {
            unix: None,
            tcp: Some(tcp),
            health: None,
            kafka: None,
        },
        async {
            let _ = stopped.await;
        },
    ));
    let stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let mut c = Framed::new(stream, FrameCodec::<ClientFrame, ServerFrame>::default());
    for kind in [
        client_frame::Kind::Hello(v1::Hello {
            pipeline: PIPELINE.into(),
            deployment: DEPLOYMENT.into(),
            channel_id: "tcp".into(),
            protocol_version: 1,
        }),
        client_frame::Kind::Records(v1::Records {
            records: vec![record(1)],
        }),
        client_frame::Kind::Flush(v1::Flush { seq: 1 }),
    ] {
        c.send(ClientFrame { kind: Some(kind) }).await.unwrap();
    }
    match tokio::time::timeout(PATIENCE, c.next()).await {
        Ok(Some(Ok(ServerFrame {
            kind: Some(server_frame::Kind::FlushAck(ack)),
        }))) => assert_eq!(ack.admitted, 1),
        other => panic!("expected a FlushAck, got {other:?}"),
    }
    stop.send(()).unwrap();
    task.await.unwrap().unwrap();
    assert_eq!(std::fs::read_to_string(&out).unwrap().lines().count(), 1);
}

/// A watermark vouches that nothing more below it will come, so the gate counts it only once
/// every record before it is delivered; and a channel whose records the sink has not yet taken
/// is never idle, however long it is silent. Otherwise a drain could complete while a broker
/// outage keeps the outgoing deployment's last records below the barrier in the sidecar, and
/// the deployment be torn down with them.
#[tokio::test]
async fn a_watermark_counts_only_once_the_records_before_it_are_delivered() {
    let coord = FakeCoordinator::start(Some(active(1, 0))).await;
    let sink = TestSink::default();
    let sidecar =
        Sidecar::start_with_sink(&coord.url(), &["--idle-timeout", "300ms"], sink.clone()).await;
    let mut c = sidecar.channel("0").await;
    let watermark = |ms| client_frame::Kind::Watermark(v1::Watermark { watermark_ms: ms });
    c.send(watermark(100)).await;
    coord
        .wait_until("the first watermark, nothing undelivered", |c| {
            c.progress()
                .last()
                .is_some_and(|p| p.watermark_ms == Some(100))
        })
        .await;

    *sink.mode.lock().unwrap() = Mode::Park;
    c.records(&[150, 160]).await;
    c.send(watermark(500)).await;
    // Well past the idle timeout, with the two records still in the sink's hands.
    tokio::time::sleep(Duration::from_millis(1_000)).await;
    let since = coord.progress().len();
    tokio::time::sleep(Duration::from_millis(200)).await;
    let recent = coord.progress();
    assert!(recent.len() > since, "progress keeps coming");
    for p in &recent[since..] {
        assert_eq!(
            (p.channels, p.idle_channels, p.watermark_ms),
            (1, 0, Some(100)),
            "an undelivered channel turned idle or moved its watermark: {p:?}"
        );
    }

    for tx in sink.parked.lock().unwrap().drain(..) {
        tx.complete(Ok(()));
    }
    coord
        .wait_until("the watermark once the records are delivered", |c| {
            c.progress()
                .last()
                .is_some_and(|p| p.watermark_ms == Some(500) && p.idle_channels == 0)
        })
        .await;
    // With nothing outstanding, silence makes it idle again after the timeout.
    coord
        .wait_until("idle once silent with nothing outstanding", |c| {
            c.progress().last().is_some_and(|p| p.idle_channels == 1)
        })
        .await;
}

/// A bad Kafka configuration stops the binary before anything is bound, and the message says
/// why (the whole cause chain, not only "invalid Kafka sink configuration").
#[test]
fn the_binary_explains_a_refused_kafka_option() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("gate.sock");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_gate-sidecar"))
        .args(["--pipeline", "a/b", "--deployment", "d", "--socket"])
        .arg(&socket)
        .args(["--sink", "kafka:127.0.0.1:9", "--kafka-option", "acks=0"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("invalid Kafka sink configuration"),
        "{stderr}"
    );
    assert!(stderr.contains("needs `acks=all`"), "{stderr}");
    assert!(!socket.exists(), "nothing is bound for a bad configuration");
}

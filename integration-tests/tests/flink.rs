//! Real Apache Flink end to end (issue 5): the Java reference sink and test job
//! (`integration-tests/flink/`) run in real Flink 2.3 JVMs, blue with parallelism 2 and green with
//! parallelism 3 started 10 s late, against the real coordinator and one real sidecar per
//! deployment; the cutover is requested through the gRPC API and the merged output is counted
//! record by record. The second test kills blue's TaskManager `-9` after commit.
//!
//! Needs Flink: `scripts/flink.sh` (PyPI wheels, cached). Without it these tests fail with that
//! hint, unless `SLUICE_SKIP_FLINK=1`.

use std::path::Path;
use std::process::Command;

use prost::Message;
use sluice_integration_tests::flink::{self, BlueMode, Flink, FlinkConfig};
use sluice_proto::framing::encode_frame;
use sluice_proto::v1::{
    ClientFrame, Error, ErrorCode, Flush, FlushAck, Header, Hello, Idle, Record, Records,
    ServerFrame, Watermark, client_frame, server_frame,
};

/// The Flink scenarios share 2 cores: one at a time. (The Java build under `flink()` is safe to
/// run concurrently on its own — `build.sh` installs under a lock — as the frames test does.)
static FLINK: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

fn flink() -> Option<Flink> {
    if std::env::var("SLUICE_SKIP_FLINK").is_ok_and(|v| v == "1") {
        eprintln!("SLUICE_SKIP_FLINK=1: real Flink tests skipped");
        return None;
    }
    Some(Flink::locate().unwrap_or_else(|e| panic!("{e:#}")))
}

async fn scenario(mode: BlueMode) {
    scenario_with(mode, |_| {}).await;
}

async fn scenario_with(mode: BlueMode, tweak: impl FnOnce(&mut FlinkConfig)) {
    let _one_at_a_time = FLINK.lock().await;
    let Some(flink) = flink() else { return };
    let dir = tempfile::Builder::new()
        .prefix("sluice-flink-")
        .tempdir()
        .unwrap();
    let mut cfg = FlinkConfig::new(dir.path(), mode);
    tweak(&mut cfg);
    let report = match flink::run(&flink, &cfg).await {
        Ok(r) => r,
        Err(e) => {
            let dir = dir.keep();
            panic!(
                "Flink scenario failed: {e:#}\nlogs kept in {}",
                dir.display()
            );
        }
    };
    println!("{report}");
    if std::env::var("SLUICE_KEEP_WORK").is_ok_and(|v| v == "1") {
        println!(
            "  work dir     {} (kept: SLUICE_KEEP_WORK=1)",
            dir.keep().display()
        );
        return;
    }
    if let Err(e) = flink::check(&report) {
        let dir = dir.keep();
        panic!("{e:#}\n{report}\nlogs kept in {}", dir.display());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flink_blue_green_cutover_is_exact() {
    scenario(BlueMode::MiniCluster).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flink_blue_taskmanager_killed_after_commit_duplicates_only_replayed_records() {
    scenario(BlueMode::StandaloneKillTaskManager).await;
}

/// Blue's TaskManager dies after commit and its replacement takes longer than the sidecar's
/// `--idle-timeout` (3 s here, replacement after 8 s). This lost 2,012 records when closed
/// channels turned idle and a gate without channels counted as drained: the cutover completed
/// while blue was down and blue was cancelled before it re-emitted its records below `T`. Closed
/// channels now count until they reconnect (or `--closed-channel-expiry`), so the drain waits for
/// the restarted blue, and the output is complete with exactly the predicted duplicates.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flink_blue_restart_longer_than_the_idle_timeout_loses_nothing() {
    scenario_with(BlueMode::StandaloneKillTaskManager, |cfg| {
        cfg.sidecar_idle_timeout = std::time::Duration::from_secs(3);
        cfg.replace_taskmanager_after = std::time::Duration::from_secs(8);
    })
    .await;
}

/// The Java hand encoding against the real schema: the frames `FrameSamples` writes must decode
/// with prost into the expected messages and be byte-identical to prost's own encoding; the
/// ServerFrames prost encodes must decode in Java.
#[test]
fn flink_reference_sink_frames_match_the_schema() {
    let Some(flink) = flink() else { return };
    let dir = tempfile::tempdir().unwrap();
    let client_path = dir.path().join("client.bin");
    let server_path = dir.path().join("server.bin");
    let server = [
        ServerFrame {
            kind: Some(server_frame::Kind::FlushAck(FlushAck {
                seq: 1,
                admitted: 0,
                dropped: 0,
            })),
        },
        ServerFrame {
            kind: Some(server_frame::Kind::FlushAck(FlushAck {
                seq: u64::MAX,
                admitted: 123_456_789_012,
                dropped: 7,
            })),
        },
        ServerFrame {
            kind: Some(server_frame::Kind::Error(Error {
                code: ErrorCode::UnknownGate as i32,
                message: "this sidecar serves… pipeline `a/b`".into(),
            })),
        },
    ];
    std::fs::write(
        &server_path,
        server.iter().flat_map(encode_frame).collect::<Vec<u8>>(),
    )
    .unwrap();
    let out = Command::new(flink::java())
        .args([
            "-cp",
            &flink.classpath(),
            "dev.sluice.flink.FrameSamples",
            client_path.to_str().unwrap(),
            server_path.to_str().unwrap(),
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "FrameSamples failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        String::from_utf8(out.stdout).unwrap(),
        "ack 1 0 0\nack -1 123456789012 7\n\
         error ERROR_CODE_UNKNOWN_GATE this sidecar serves… pipeline `a/b`\n",
        "Java decodes prost's ServerFrames (seq u64::MAX prints as Java's signed -1)"
    );

    let kind = |k| ClientFrame { kind: Some(k) };
    let expected = vec![
        kind(client_frame::Kind::Hello(Hello {
            pipeline: "demo/orders".into(),
            deployment: "orders-v1".into(),
            channel_id: "3".into(),
            protocol_version: 1,
        })),
        kind(client_frame::Kind::Records(Records {
            records: vec![
                Record {
                    key: b"k1".to_vec().into(),
                    value: b"{\"n\":1}".to_vec().into(),
                    headers: vec![Header {
                        key: "trace".into(),
                        value: vec![0, 1, 0xff].into(),
                    }],
                    event_time_ms: 1_700_000_000_123,
                    topic: "orders".into(),
                    partition: Some(7),
                },
                Record {
                    key: vec![].into(),
                    value: vec![0; 300].into(),
                    headers: vec![],
                    event_time_ms: -5,
                    topic: String::new(),
                    partition: Some(0),
                },
                Record {
                    key: "ü".as_bytes().to_vec().into(),
                    value: vec![42].into(),
                    headers: vec![],
                    event_time_ms: 0,
                    topic: String::new(),
                    partition: Some(-2),
                },
                Record {
                    key: b"k".to_vec().into(),
                    value: vec![].into(),
                    headers: vec![],
                    event_time_ms: i64::MAX,
                    topic: "t".into(),
                    partition: None,
                },
            ],
        })),
        kind(client_frame::Kind::Watermark(Watermark {
            watermark_ms: i64::MIN,
        })),
        kind(client_frame::Kind::Watermark(Watermark {
            watermark_ms: i64::MAX,
        })),
        kind(client_frame::Kind::Watermark(Watermark { watermark_ms: 0 })),
        kind(client_frame::Kind::Idle(Idle {})),
        kind(client_frame::Kind::Flush(Flush { seq: 1 })),
        kind(client_frame::Kind::Flush(Flush { seq: u64::MAX })),
    ];
    let bytes = std::fs::read(&client_path).unwrap();
    let mut buf = &bytes[..];
    let mut decoded = Vec::new();
    while !buf.is_empty() {
        decoded.push(ClientFrame::decode_length_delimited(&mut buf).expect("a valid frame"));
    }
    assert_eq!(
        decoded, expected,
        "Java frames decode into the expected messages"
    );
    let prost_bytes: Vec<u8> = expected.iter().flat_map(encode_frame).collect();
    assert_eq!(
        bytes, prost_bytes,
        "Java writes exactly the bytes prost writes (canonical proto3)"
    );
    assert!(Path::new(&client_path).exists());
}

//! A crashed sidecar's channels: the restarted sidecar reads them back and counts them, with an
//! unknown watermark (what the crash lost comes again from the clients' replay, below the
//! watermarks they had sent), until their sink subtasks reconnect. Without that, a restarted blue
//! sidecar has no channel, counts as drained, and a drain could complete before the subtasks
//! replay what they had not yet sent below the barrier.

mod common;

use std::path::Path;
use std::time::Duration;

use common::*;
use sluice_gate_sidecar::Listeners;
use sluice_proto::v1::{self, client_frame};

/// A sidecar in a runtime of its own, so that `crash` can drop every one of its tasks at once
/// without any shutdown path running (as `kill -9` would).
struct Crashable {
    crash: Option<std::sync::mpsc::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Crashable {
    fn crash(mut self) {
        let _ = self.crash.take().unwrap().send(());
        self.thread.take().unwrap().join().unwrap();
    }
}

impl Drop for Crashable {
    fn drop(&mut self) {
        if let Some(tx) = self.crash.take() {
            let _ = tx.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn start_in(dir: &Path, coordinator: &str) -> Crashable {
    let config = config(
        dir,
        coordinator,
        &["--sink", "null", "--idle-timeout", "500ms"],
    );
    let (tx, rx) = std::sync::mpsc::channel::<()>();
    let thread = std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        rt.spawn(async move {
            let listeners = Listeners::bind(&config).await?;
            sluice_gate_sidecar::run(config, listeners, std::future::pending()).await
        });
        let _ = rx.recv();
        // Drops every task of the sidecar where it stands.
        rt.shutdown_background();
    });
    Crashable {
        crash: Some(tx),
        thread: Some(thread),
    }
}

async fn channel(dir: &Path, id: &str) -> Client {
    let deadline = tokio::time::Instant::now() + PATIENCE;
    let stream = loop {
        match tokio::net::UnixStream::connect(dir.join("gate.sock")).await {
            Ok(s) => break s,
            Err(e) => {
                assert!(tokio::time::Instant::now() < deadline, "no socket: {e}");
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    };
    let mut c = Client {
        framed: tokio_util::codec::Framed::new(stream, Default::default()),
    };
    c.hello(id).await;
    c
}

async fn watermark(c: &mut Client, ms: i64) {
    c.send(client_frame::Kind::Watermark(v1::Watermark {
        watermark_ms: ms,
    }))
    .await;
}

#[tokio::test]
async fn a_restarted_sidecar_waits_for_the_channels_of_its_predecessor() {
    init_tracing();
    let coord = FakeCoordinator::start(Some(active(1, 1))).await;
    let dir = tempfile::tempdir().unwrap();

    let first = start_in(dir.path(), &coord.url());
    let mut a = channel(dir.path(), "a").await;
    watermark(&mut a, 100).await;
    a.records(&[150]).await;
    a.flush(1).await;
    a.expect_ack(1).await;
    coord
        .wait_until("the channel is reported", |c| {
            c.progress()
                .last()
                .is_some_and(|p| p.channels == 1 && p.watermark_ms == Some(100))
        })
        .await;
    let file = dir.path().join("gate.sock.channels");
    let deadline = tokio::time::Instant::now() + PATIENCE;
    while !std::fs::read_to_string(&file).is_ok_and(|t| t.contains("\"a\"")) {
        assert!(
            tokio::time::Instant::now() < deadline,
            "channel list never written"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    // Crash: no shutdown path runs. The subtask's connection breaks with it.
    first.crash();
    drop(a);
    // Reports of the crashed sidecar may still be on their way in: look only at later streams.
    let before = coord.attaches();

    let second = start_in(dir.path(), &coord.url());
    // Well past the idle timeout, with no client connected, the restarted gate still counts
    // the channel, its watermark unknown: not drained.
    tokio::time::sleep(Duration::from_millis(1_200)).await;
    let after = coord.progress_since_attach(before);
    assert!(!after.is_empty(), "the restarted sidecar reports progress");
    for p in &after {
        assert_eq!(
            (p.channels, p.idle_channels, p.watermark_ms),
            (1, 0, None),
            "the restarted gate forgot its channel: {p:?}"
        );
    }

    // The subtask comes back (same channel id) and moves on.
    let mut a = channel(dir.path(), "a").await;
    watermark(&mut a, 200).await;
    coord
        .wait_until("the returning channel moves the watermark", |c| {
            c.progress()
                .last()
                .is_some_and(|p| p.channels == 1 && p.watermark_ms == Some(200))
        })
        .await;
    drop(second);
}

/// A channel whose id cannot be written to the channel list is refused before any of its records
/// is decided: a restarted sidecar would not know to wait for it. Once the list can be written
/// again, the same channel id gets in.
#[tokio::test]
async fn a_channel_that_cannot_be_persisted_admits_nothing() {
    let coord = FakeCoordinator::start(Some(active(1, 1))).await;
    let store = tempfile::tempdir().unwrap();
    let missing = store.path().join("not-yet");
    let file = missing.join("gate.channels");
    let sidecar = Sidecar::start(&coord.url(), &["--channels-file", file.to_str().unwrap()]).await;

    let mut a = sidecar.channel("a").await;
    a.records(&[150, 160]).await;
    a.flush(1).await;
    let e = a.expect_error().await;
    assert_eq!(e.code(), v1::ErrorCode::Internal, "{e:?}");
    assert!(e.message.contains("channel list"), "{}", e.message);
    assert!(
        sidecar.lines().is_empty(),
        "records of an unpersisted channel were admitted: {:?}",
        sidecar.lines()
    );

    std::fs::create_dir(&missing).unwrap();
    let mut a = sidecar.channel("a").await;
    a.records(&[150, 160]).await;
    a.flush(1).await;
    let ack = a.expect_ack(1).await;
    assert_eq!(ack.admitted, 2);
    assert_eq!(sidecar.written_times(), vec![150, 160]);
    assert!(std::fs::read_to_string(&file).unwrap().contains("\"a\""));
}

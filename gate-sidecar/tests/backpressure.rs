//! A full hold queue stops the sidecar reading the channel: the client's writes block, the
//! channel stays open, and no record is lost once an assignment releases them.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use common::*;
use futures::{SinkExt as _, StreamExt as _};
use sluice_proto::v1::{self, ClientFrame, ServerFrame, client_frame, server_frame};

const HOLD_LIMIT: u64 = 4;
/// 2000 frames of ~1 KiB: far more than the socket buffers can absorb.
const FRAMES: usize = 2_000;

fn frame(kind: client_frame::Kind) -> ClientFrame {
    ClientFrame { kind: Some(kind) }
}

#[tokio::test]
async fn a_full_hold_queue_blocks_the_client_without_losing_records() {
    let coord = FakeCoordinator::start(None).await;
    let limit = HOLD_LIMIT.to_string();
    let sidecar = Sidecar::start(&coord.url(), &["--hold-limit", &limit]).await;

    let (mut tx, mut rx) = split_channel(&sidecar.socket, "bp").await;

    let sent = Arc::new(AtomicUsize::new(0));
    let counter = sent.clone();
    let writer = tokio::spawn(async move {
        for ts in 0..FRAMES as i64 {
            let mut r = record(ts);
            r.value = vec![b'x'; 1024].into();
            tx.send(frame(client_frame::Kind::Records(v1::Records {
                records: vec![r],
            })))
            .await
            .unwrap();
            counter.fetch_add(1, Ordering::SeqCst);
        }
        tx
    });

    // The writer stalls: the sidecar stopped reading.
    tokio::time::sleep(Duration::from_millis(1_000)).await;
    let stalled_at = sent.load(Ordering::SeqCst);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!writer.is_finished(), "the client's writes must block");
    assert_eq!(
        sent.load(Ordering::SeqCst),
        stalled_at,
        "no progress while full"
    );
    assert!(stalled_at < FRAMES);

    // The sidecar holds at most the limit plus one frame, and has read only that much.
    coord
        .wait_until("held at the limit", |c| {
            c.progress()
                .last()
                .is_some_and(|p| p.counters.unwrap().held >= HOLD_LIMIT)
        })
        .await;
    for p in coord.progress() {
        let n = p.counters.unwrap();
        assert!(n.held <= HOLD_LIMIT + 1, "held {} over the limit", n.held);
        assert!(
            n.received <= HOLD_LIMIT + 1,
            "read {} records while full",
            n.received
        );
    }

    // The channel is still open: nothing came back, in particular no Error.
    assert!(
        tokio::time::timeout(Duration::from_millis(100), rx.next())
            .await
            .is_err(),
        "the channel must not be closed or answered"
    );

    // An assignment releases everything, in order.
    coord.set_assignment(active(1, 0)).await;
    let mut tx = tokio::time::timeout(PATIENCE, writer)
        .await
        .expect("the writer unblocks")
        .unwrap();
    tx.send(frame(client_frame::Kind::Flush(v1::Flush { seq: 9 })))
        .await
        .unwrap();
    let ack = match tokio::time::timeout(PATIENCE, rx.next()).await {
        Ok(Some(Ok(ServerFrame {
            kind: Some(server_frame::Kind::FlushAck(ack)),
        }))) => ack,
        other => panic!("expected a FlushAck, got {other:?}"),
    };
    assert_eq!((ack.seq, ack.admitted, ack.dropped), (9, FRAMES as u64, 0));
    let times = sidecar.written_times();
    assert_eq!(times, (0..FRAMES as i64).collect::<Vec<_>>());
}

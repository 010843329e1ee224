//! Watermarks, idleness and channel lifecycle reach the coordinator in progress reports.

mod common;

use common::*;
use sluice_proto::v1::{self, client_frame};

#[tokio::test]
async fn watermarks_idle_and_closed_channels_show_in_progress() {
    let coord = FakeCoordinator::start(Some(active(1, 0))).await;
    let sidecar = Sidecar::start(
        &coord.url(),
        &["--idle-timeout", "1s", "--closed-channel-expiry", "3s"],
    )
    .await;
    let mut a = sidecar.channel("a").await;
    let mut b = sidecar.channel("b").await;
    a.send(client_frame::Kind::Watermark(v1::Watermark {
        watermark_ms: 500,
    }))
    .await;
    b.send(client_frame::Kind::Watermark(v1::Watermark {
        watermark_ms: 300,
    }))
    .await;
    a.records(&[700]).await;
    coord
        .wait_until("gate watermark is the minimum", |c| {
            c.progress().last().is_some_and(|p| {
                p.watermark_ms == Some(300) && p.channels == 2 && p.high_mark_ms == Some(700)
            })
        })
        .await;

    // b says it is idle: the watermark follows a alone.
    b.send(client_frame::Kind::Idle(v1::Idle {})).await;
    coord
        .wait_until("idle channel excluded", |c| {
            c.progress().last().is_some_and(|p| {
                p.watermark_ms == Some(500) && p.channels == 2 && p.idle_channels == 1
            })
        })
        .await;

    // a closes: it keeps counting (never idle) past the idle timeout, until it expires; b,
    // silent, stays idle.
    a.flush(1).await;
    a.expect_ack(1).await;
    drop(a);
    tokio::time::sleep(std::time::Duration::from_millis(1_500)).await;
    assert!(
        coord.progress().last().is_some_and(|p| {
            p.channels == 2 && p.idle_channels == 1 && p.watermark_ms == Some(500)
        }),
        "a closed channel still counts after the idle timeout: {:?}",
        coord.progress().last()
    );
    coord
        .wait_until("closed channel forgotten once expired", |c| {
            c.progress().last().is_some_and(|p| {
                p.channels == 1 && p.idle_channels == 1 && p.watermark_ms.is_none()
            })
        })
        .await;
    drop(b);
}

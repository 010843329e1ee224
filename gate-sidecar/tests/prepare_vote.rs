//! The prepare vote and what happens to held records on commit and abort.

mod common;

use std::time::Duration;

use common::*;

const T: i64 = 1_000;

#[tokio::test]
async fn votes_yes_below_the_barrier_and_drops_held_records_on_commit() {
    let coord = FakeCoordinator::start(Some(active(1, 0))).await;
    let sidecar = Sidecar::start(&coord.url(), &[]).await;
    let mut c = sidecar.channel("0").await;
    c.records(&[100, 200]).await;
    c.flush(1).await;
    assert_eq!(c.expect_ack(1).await.admitted, 2);

    coord.set_assignment(outgoing(2, 1, T, false)).await;
    coord.wait_until("a vote", |c| !c.votes().is_empty()).await;
    let vote = coord.votes()[0];
    assert_eq!(
        (vote.epoch, vote.yes, vote.high_mark_ms),
        (1, true, Some(200))
    );

    // Prepared: below T admitted, at/above T held, and everything behind a held record waits.
    c.records(&[500, 1_500, 600, 2_000]).await;
    c.flush(2).await;
    c.expect_silence(Duration::from_millis(500)).await;
    assert_eq!(sidecar.written_times(), vec![100, 200, 500]);

    coord.set_assignment(outgoing(3, 1, T, true)).await;
    let ack = c.expect_ack(2).await;
    assert_eq!((ack.admitted, ack.dropped), (4, 2));
    assert_eq!(sidecar.written_times(), vec![100, 200, 500, 600]);
    coord
        .wait_until("barrier drops counted", |c| {
            c.progress().last().is_some_and(|p| {
                let n = p.counters.unwrap();
                n.dropped_barrier == 2 && n.held == 0 && n.admitted == 4
            })
        })
        .await;
    assert_eq!(coord.votes().len(), 1, "commit asks for no vote");
}

#[tokio::test]
async fn votes_no_when_the_high_mark_reached_the_barrier() {
    let coord = FakeCoordinator::start(Some(active(1, 0))).await;
    let sidecar = Sidecar::start(&coord.url(), &[]).await;
    let mut c = sidecar.channel("0").await;
    c.records(&[5_000]).await;
    c.flush(1).await;
    assert_eq!(c.expect_ack(1).await.admitted, 1);

    coord.set_assignment(outgoing(2, 1, T, false)).await;
    coord.wait_until("a vote", |c| !c.votes().is_empty()).await;
    let vote = coord.votes()[0];
    assert_eq!(
        (vote.epoch, vote.yes, vote.high_mark_ms),
        (1, false, Some(5_000))
    );

    // The coordinator aborts: ACTIVE again. Held records are admitted.
    c.records(&[6_000]).await;
    c.flush(2).await;
    c.expect_silence(Duration::from_millis(300)).await;
    coord.set_assignment(active(3, 1)).await;
    let ack = c.expect_ack(2).await;
    assert_eq!((ack.admitted, ack.dropped), (2, 0));
    assert_eq!(sidecar.written_times(), vec![5_000, 6_000]);
}

#[tokio::test]
async fn abort_releases_held_records_in_arrival_order() {
    let coord = FakeCoordinator::start(Some(active(1, 0))).await;
    let sidecar = Sidecar::start(&coord.url(), &[]).await;
    let mut a = sidecar.channel("a").await;
    let mut b = sidecar.channel("b").await;
    a.records(&[100]).await;
    a.flush(1).await;
    a.expect_ack(1).await;

    coord.set_assignment(outgoing(2, 1, T, false)).await;
    coord.wait_until("a vote", |c| !c.votes().is_empty()).await;
    assert!(coord.votes()[0].yes);

    a.records(&[1_200, 300, 1_100]).await;
    a.flush(2).await;
    b.records(&[1_300]).await;
    b.flush(1).await;
    a.expect_silence(Duration::from_millis(400)).await;
    b.expect_silence(Duration::from_millis(100)).await;
    assert_eq!(sidecar.written_times(), vec![100]);
    coord
        .wait_until("4 held across both channels", |c| {
            c.progress()
                .last()
                .is_some_and(|p| p.counters.unwrap().held == 4)
        })
        .await;

    coord.set_assignment(active(3, 1)).await;
    assert_eq!(a.expect_ack(2).await.admitted, 4);
    assert_eq!(b.expect_ack(1).await.admitted, 1);
    let a_times: Vec<i64> = sidecar
        .lines()
        .iter()
        .filter(|l| l["channel"] == "a")
        .map(|l| l["event_time_ms"].as_i64().unwrap())
        .collect();
    assert_eq!(a_times, vec![100, 1_200, 300, 1_100], "channel order kept");
}

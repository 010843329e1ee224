//! A broken control stream keeps the gate's last state, and the sidecar reconnects.

mod common;

use std::time::Duration;

use common::*;

#[tokio::test]
async fn an_active_gate_keeps_admitting_while_the_coordinator_is_gone() {
    let coord = FakeCoordinator::start(Some(active(1, 0))).await;
    let sidecar = Sidecar::start(&coord.url(), &[]).await;
    let mut c = sidecar.channel("0").await;
    c.records(&[1, 2]).await;
    c.flush(1).await;
    assert_eq!(c.expect_ack(1).await.admitted, 2);
    assert_eq!(coord.hellos().len(), 1);

    let addr = coord.kill().await;
    // Let the sidecar notice and fail a reconnect or two.
    tokio::time::sleep(Duration::from_millis(500)).await;
    c.records(&[3, 4]).await;
    c.flush(2).await;
    let ack = c.expect_ack(2).await;
    assert_eq!((ack.admitted, ack.dropped), (4, 0));
    assert_eq!(sidecar.written_times(), vec![1, 2, 3, 4]);

    // The coordinator comes back (with nothing to send): the sidecar re-attaches and says
    // which version it holds.
    let back = FakeCoordinator::start_on(addr, None).await;
    back.wait_until("re-attach", |c| !c.hellos().is_empty())
        .await;
    let hello = &back.hellos()[0];
    assert_eq!(hello.assignment_version, Some(1));
    assert_eq!(hello.progress.unwrap().counters.unwrap().admitted, 4);
    back.wait_until("progress resumes", |c| !c.progress().is_empty())
        .await;
    c.records(&[5]).await;
    c.flush(3).await;
    assert_eq!(c.expect_ack(3).await.admitted, 5);
}

#[tokio::test]
async fn a_prepared_gate_keeps_holding_until_it_hears_the_decision() {
    let coord = FakeCoordinator::start(Some(active(1, 0))).await;
    let sidecar = Sidecar::start(&coord.url(), &[]).await;
    let mut c = sidecar.channel("0").await;
    coord.set_assignment(outgoing(2, 1, 1_000, false)).await;
    coord.wait_until("a vote", |c| !c.votes().is_empty()).await;
    assert!(coord.votes()[0].yes);

    let addr = coord.kill().await;
    c.records(&[10, 2_000, 20]).await;
    c.flush(1).await;
    c.expect_silence(Duration::from_millis(800)).await;
    assert_eq!(sidecar.written_times(), vec![10]);

    // Back, committed: the held record at/above T is dropped, the one behind it admitted.
    let back = FakeCoordinator::start_on(addr, Some(outgoing(3, 1, 1_000, true))).await;
    let ack = c.expect_ack(1).await;
    assert_eq!((ack.admitted, ack.dropped), (2, 1));
    assert_eq!(sidecar.written_times(), vec![10, 20]);
    assert_eq!(back.hellos()[0].assignment_version, Some(2));
}

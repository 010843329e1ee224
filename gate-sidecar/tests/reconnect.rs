//! A broken control stream keeps the gate's last state for the length of its lease, and the
//! sidecar reconnects; past the lease the gate holds everything until it is assigned again.

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

/// With a lease, a gate that hears nothing from the coordinator for the whole lease fences
/// itself: it holds every record (the coordinator may have forgotten it and completed a cutover
/// without it) until a coordinator assigns it again. Heartbeats keep the lease while connected.
#[tokio::test]
async fn a_gate_cut_off_past_its_lease_holds_until_assigned_again() {
    const LEASE_MS: u64 = 400;
    let coord = FakeCoordinator::start(Some(active(1, 0))).await;
    coord.set_lease(LEASE_MS);
    let sidecar = Sidecar::start(&coord.url(), &[]).await;
    sidecar.wait_ready().await;
    let mut c = sidecar.channel("0").await;
    // Connected for three leases: heartbeats renew it, the gate keeps admitting.
    tokio::time::sleep(Duration::from_millis(3 * LEASE_MS)).await;
    c.records(&[1, 2]).await;
    c.flush(1).await;
    assert_eq!(c.expect_ack(1).await.admitted, 2);

    let addr = coord.kill().await;
    // Within the lease the last assignment stands (a coordinator restart is not an outage).
    c.records(&[3]).await;
    c.flush(2).await;
    assert_eq!(c.expect_ack(2).await.admitted, 3);

    // Past the lease: held, not admitted, and not ready.
    tokio::time::sleep(Duration::from_millis(LEASE_MS + 300)).await;
    c.records(&[4]).await;
    c.flush(3).await;
    c.expect_silence(Duration::from_millis(500)).await;
    assert_eq!(sidecar.written_times(), vec![1, 2, 3]);
    let (status, body) = sidecar.readyz().await;
    assert_eq!(status, 503, "a fenced gate is not ready: {body}");

    // A coordinator is back and assigns the gate: the held record goes by the new assignment.
    let back = FakeCoordinator::start_on(addr, Some(active(1, 0))).await;
    let ack = c.expect_ack(3).await;
    assert_eq!(ack.admitted, 4);
    assert_eq!(sidecar.written_times(), vec![1, 2, 3, 4]);
    let hello = &back.hellos()[0];
    assert_eq!(
        hello.assignment_version, None,
        "the fenced gate attaches as one without an assignment"
    );
}

/// A gate that is still connected but hears nothing (a stalled coordinator, no heartbeats)
/// fences too, and attaches afresh on its own to be assigned again.
#[tokio::test]
async fn a_fenced_gate_attaches_afresh_and_is_assigned_again() {
    let coord = FakeCoordinator::start(Some(active(1, 0))).await;
    let sidecar = Sidecar::start(&coord.url(), &[]).await;
    let mut c = sidecar.channel("0").await;
    c.records(&[1]).await;
    c.flush(1).await;
    assert_eq!(c.expect_ack(1).await.admitted, 1);
    // One command with a short lease, then silence on a stream that stays open.
    coord.set_lease(300);
    coord.set_assignment(active(2, 0)).await;
    coord
        .wait_until("the fenced gate attaches again", |c| c.attaches() >= 2)
        .await;
    let hellos = coord.hellos();
    assert_eq!(
        hellos.last().unwrap().assignment_version,
        None,
        "{hellos:?}"
    );
    // Re-attached, it got the assignment again (and heartbeats now keep its lease).
    c.records(&[2]).await;
    c.flush(2).await;
    assert_eq!(c.expect_ack(2).await.admitted, 2);
}

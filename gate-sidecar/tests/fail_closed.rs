//! Fail closed: until the coordinator assigns a role, every record is held and no Flush is
//! acknowledged; the first assignment decides them.

mod common;

use std::time::Duration;

use common::*;
use sluice_proto::v1;

#[tokio::test]
async fn records_wait_for_the_first_assignment_then_are_admitted_and_written() {
    let (url, addr) = dead_coordinator();
    let sidecar = Sidecar::start(&url, &[]).await;
    let mut c = sidecar.channel("0").await;
    c.records(&[10, 20]).await;
    c.records(&[30]).await;
    c.flush(1).await;

    // No coordinator: nothing is decided, nothing is written, the Flush waits.
    c.expect_silence(Duration::from_millis(800)).await;
    assert!(sidecar.lines().is_empty(), "{:?}", sidecar.lines());

    // The coordinator comes up (on the address the sidecar keeps retrying) with ACTIVE.
    let coord = FakeCoordinator::start_on(addr, Some(active(1, 0))).await;
    let ack = c.expect_ack(1).await;
    assert_eq!((ack.admitted, ack.dropped), (3, 0));
    assert_eq!(sidecar.written_times(), vec![10, 20, 30]);

    let hello = &coord.hellos()[0];
    assert_eq!(hello.pipeline, PIPELINE);
    assert_eq!(hello.deployment, DEPLOYMENT);
    assert_eq!(hello.gate_id, GATE_ID);
    assert_eq!(hello.assignment_version, None, "a fresh gate holds nothing");
    let at_attach = hello.progress.unwrap().counters.unwrap();
    assert_eq!((at_attach.received, at_attach.held), (3, 3));

    coord
        .wait_until("progress shows the admitted records", |c| {
            c.progress().last().is_some_and(|p| {
                let n = p.counters.unwrap();
                p.high_mark_ms == Some(30) && n.received == 3 && n.admitted == 3 && n.held == 0
            })
        })
        .await;
    sidecar.stop().await.unwrap();
}

#[tokio::test]
async fn an_attached_gate_without_assignment_still_holds_and_reports_it() {
    let coord = FakeCoordinator::start(None).await;
    let sidecar = Sidecar::start(&coord.url(), &[]).await;
    let mut c = sidecar.channel("0").await;
    c.records(&[5, 6, 7, 8]).await;
    c.flush(1).await;
    coord
        .wait_until("progress shows 4 held", |c| {
            c.progress()
                .last()
                .is_some_and(|p| p.counters.unwrap().held == 4)
        })
        .await;
    c.expect_silence(Duration::from_millis(300)).await;

    // A standby drops everything it held, as shadow.
    coord.set_assignment(standby(1)).await;
    let ack = c.expect_ack(1).await;
    assert_eq!((ack.admitted, ack.dropped), (0, 4));
    assert!(sidecar.lines().is_empty(), "a standby writes nothing");
    coord
        .wait_until("dropped_shadow counted", |c| {
            c.progress().last().is_some_and(|p| {
                let n = p.counters.unwrap();
                n.dropped_shadow == 4 && n.held == 0 && n.admitted == 0
            })
        })
        .await;
}

#[tokio::test]
async fn invalid_assignments_are_ignored_and_the_gate_stays_closed() {
    let coord = FakeCoordinator::start(None).await;
    let sidecar = Sidecar::start(&coord.url(), &[]).await;
    let mut c = sidecar.channel("0").await;
    c.records(&[1]).await;
    c.flush(1).await;
    // An OUTGOING assignment without a barrier cannot be acted on.
    let mut broken = active(1, 0);
    broken.role = v1::GateRole::Outgoing as i32;
    coord.set_assignment(broken).await;
    c.expect_silence(Duration::from_millis(500)).await;
    coord.set_assignment(active(2, 0)).await;
    assert_eq!(c.expect_ack(1).await.admitted, 1);
}

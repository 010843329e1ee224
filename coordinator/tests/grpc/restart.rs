//! A coordinator restarted on the same state file resumes without deciding twice.

use sluice_proto::v1::{GateRole, Phase};

use crate::common::{
    FakeGate, TestServer, Watch, blue_and_green, get, phase_of, progress, start_now,
};

const P: &str = "payments/fraud-scorer";

#[tokio::test]
async fn a_committed_cutover_survives_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state.json");

    let server = TestServer::start(&state, &[]).await;
    let (mut b1, mut g1) = blue_and_green(&server, P).await;
    server
        .cutover()
        .await
        .start_cutover(start_now(P, "green", 100))
        .await
        .unwrap();
    for g in [&mut b1, &mut g1] {
        let a = g.wait_prepared(None).await;
        g.vote_on(&a).await;
    }
    let committed = b1
        .wait_for("COMMITTED", |a| a.phase == Phase::Committed as i32)
        .await;
    let before = get(&server, P).await;
    assert_eq!(before.phase, Phase::Committed as i32);
    server.stop().await.unwrap();
    drop((b1, g1));

    let server = TestServer::start(&state, &[]).await;
    let after = get(&server, P).await;
    assert_eq!(after.phase, Phase::Committed as i32);
    assert_eq!(
        (after.epoch, after.barrier_ms, after.version),
        (before.epoch, before.barrier_ms, before.version)
    );
    assert!(after.gates.iter().all(|g| !g.connected), "{after:?}");

    // A re-attached gate gets exactly the committed assignment it had.
    let mut b1 = FakeGate::attach(&server, P, "blue", "blue-1", progress(1_050, 950))
        .await
        .unwrap();
    let again = b1.next_assignment().await;
    assert_eq!(again, committed);
    assert_eq!(again.role, GateRole::Outgoing as i32);
    server.stop().await.unwrap();
}

#[tokio::test]
async fn a_prepare_interrupted_by_a_restart_is_retried_in_a_new_epoch() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state.json");

    let server = TestServer::start(&state, &[]).await;
    let (mut b1, mut g1) = blue_and_green(&server, P).await;
    let mut req = start_now(P, "green", 100);
    req.prepare_timeout_ms = Some(60_000);
    server.cutover().await.start_cutover(req).await.unwrap();
    let old = b1.wait_prepared(None).await;
    g1.wait_prepared(Some(old.epoch)).await;
    server.stop().await.unwrap();
    drop((b1, g1));

    // Restarted: the undecided epoch is gone, and the next barrier waits for every gate to be
    // back (their high marks are not stored).
    let server = TestServer::start(&state, &[]).await;
    let status = get(&server, P).await;
    assert_eq!(status.phase, Phase::Waiting as i32, "{status:?}");
    assert_eq!(status.epoch, old.epoch, "{status:?}");
    assert!(
        status
            .waiting_for
            .contains("is not back since the coordinator restarted"),
        "{status:?}"
    );

    let mut watch = Watch::open(&server, P).await;
    // Blue went on while the coordinator was down.
    let mut b1 = FakeGate::attach(&server, P, "blue", "blue-1", progress(5_000, 4_900))
        .await
        .unwrap();
    assert_eq!(get(&server, P).await.phase, Phase::Waiting as i32);
    let mut g1 = FakeGate::attach(&server, P, "green", "green-1", progress(1_000, 900))
        .await
        .unwrap();
    // Late yes votes for the old epoch must not commit anything.
    for g in [&b1, &g1] {
        g.vote(old.epoch, true, Some(1_000)).await;
    }
    let new_barrier = 5_100;
    for g in [&mut b1, &mut g1] {
        let a = g.wait_prepared(Some(old.epoch + 1)).await;
        assert_eq!(
            a.barrier_ms,
            Some(new_barrier),
            "the gates' high marks now plus the margin, not the old barrier plus the margin"
        );
        g.vote_on(&a).await;
    }
    let changes = watch.phases_until(Phase::Committed).await;
    let committed = changes.last().unwrap();
    assert_eq!(phase_of(committed), Phase::Committed);
    assert_eq!(
        (committed.epoch, committed.barrier_ms),
        (old.epoch + 1, Some(new_barrier)),
        "{changes:?}"
    );
    server.stop().await.unwrap();
}

#[tokio::test]
async fn a_state_that_cannot_be_saved_stops_the_coordinator() {
    let dir = tempfile::tempdir().unwrap();
    let state_dir = dir.path().join("state");
    std::fs::create_dir(&state_dir).unwrap();
    let server = TestServer::start(&state_dir.join("state.json"), &[]).await;
    let _b1 = FakeGate::attach(&server, P, "blue", "blue-1", progress(1_000, 900))
        .await
        .unwrap();
    // The next decision (registering a new gate) cannot be written.
    std::fs::remove_dir_all(&state_dir).unwrap();
    let refused = FakeGate::attach(&server, P, "green", "green-1", progress(1_000, 900)).await;
    let status = refused.err().expect("the attach must not be answered");
    assert_eq!(status.code(), tonic::Code::Unavailable, "{status:?}");
    let err = server.stop().await.unwrap_err();
    assert!(
        matches!(err, sluice_coordinator::Error::Persist(_)),
        "{err:?}"
    );
}

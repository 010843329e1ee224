//! Full cutovers driven by fake gates.

use sluice_proto::v1::{self, GateRole, Phase};

use crate::common::{
    FakeGate, TestServer, Watch, blue_and_green, get, phase_of, progress, start_now,
};

const P: &str = "payments/fraud-scorer";

fn role(a: &v1::GateAssignment) -> GateRole {
    GateRole::try_from(a.role).unwrap()
}

#[tokio::test]
async fn blue_to_green_prepares_commits_and_completes() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(&dir.path().join("state.json"), &[]).await;

    // Blue attaches first and becomes active; green is a standby.
    let mut b1 = FakeGate::attach(&server, P, "blue", "blue-1", progress(1_000, 900))
        .await
        .unwrap();
    assert_eq!(role(&b1.next_assignment().await), GateRole::Active);
    let mut b2 = FakeGate::attach(&server, P, "blue", "blue-2", progress(1_200, 950))
        .await
        .unwrap();
    assert_eq!(role(&b2.next_assignment().await), GateRole::Active);
    let mut g1 = FakeGate::attach(&server, P, "green", "green-1", progress(1_500, 1_400))
        .await
        .unwrap();
    assert_eq!(role(&g1.next_assignment().await), GateRole::Standby);

    let mut watch = Watch::open(&server, P).await;
    let first = watch.next().await;
    assert!(
        matches!(first.kind, Some(v1::pipeline_event::Kind::Status(ref s)) if s.active == "blue"),
        "{first:?}"
    );

    let started = server
        .cutover()
        .await
        .start_cutover(start_now(P, "green", 100))
        .await
        .unwrap()
        .into_inner()
        .status
        .unwrap();
    assert_eq!(started.phase, Phase::Prepared as i32);
    assert_eq!(started.candidate, "green");
    assert_eq!(started.attempt, 1);
    assert_eq!(started.settings.unwrap().margin_ms, 100);

    // Every gate gets the same barrier, above every high mark.
    let mut prepares = Vec::new();
    for g in [&mut b1, &mut b2, &mut g1] {
        let a = g.wait_prepared(None).await;
        assert!(a.barrier_ms.unwrap() > g.high, "{a:?}");
        prepares.push(a);
    }
    assert_eq!(role(&prepares[0]), GateRole::Outgoing);
    assert_eq!(role(&prepares[1]), GateRole::Outgoing);
    assert_eq!(role(&prepares[2]), GateRole::Incoming);
    let barrier = prepares[0].barrier_ms.unwrap();
    assert_eq!(barrier, 1_600, "max high mark + margin");
    assert!(prepares.iter().all(|a| a.barrier_ms == Some(barrier)));
    let epoch = prepares[0].epoch;
    assert!(prepares.iter().all(|a| a.epoch == epoch));

    for (g, a) in [&b1, &b2, &g1].into_iter().zip(&prepares) {
        g.vote_on(a).await;
    }
    for g in [&mut b1, &mut b2, &mut g1] {
        let a = g
            .wait_for("COMMITTED", |a| a.phase == Phase::Committed as i32)
            .await;
        assert_eq!((a.epoch, a.barrier_ms), (epoch, Some(barrier)));
    }
    assert_eq!(get(&server, P).await.phase, Phase::Committed as i32);

    // Blue drains past the barrier: the cutover completes.
    b1.progress(progress(1_650, barrier)).await;
    b2.progress(progress(1_700, barrier + 1)).await;
    let a = g1.wait_for("ACTIVE", |a| role(a) == GateRole::Active).await;
    assert_eq!(a.floor_ms, Some(barrier));
    assert_eq!(a.phase, Phase::Completed as i32);
    for b in [&mut b1, &mut b2] {
        let a = b
            .wait_for("RETIRED", |a| role(a) == GateRole::Retired)
            .await;
        assert_eq!(a.barrier_ms, Some(barrier));
    }

    let phases: Vec<Phase> = watch
        .phases_until(Phase::Completed)
        .await
        .iter()
        .map(phase_of)
        .filter(|p| matches!(p, Phase::Prepared | Phase::Committed | Phase::Completed))
        .collect();
    assert_eq!(
        phases,
        [Phase::Prepared, Phase::Committed, Phase::Completed]
    );

    let status = get(&server, P).await;
    assert_eq!(status.phase, Phase::Completed as i32);
    assert_eq!(status.active, "green");
    assert_eq!(status.retired, "blue");
    assert_eq!(status.floor_ms, Some(barrier));
    assert_eq!(status.barrier_ms, Some(barrier));
    assert_eq!(status.epoch, epoch);
    assert_eq!(status.candidate, "");
    let gates: Vec<(&str, &str, bool, i32)> = status
        .gates
        .iter()
        .map(|g| {
            (
                g.gate_id.as_str(),
                g.deployment.as_str(),
                g.connected,
                g.role,
            )
        })
        .collect();
    assert_eq!(
        gates,
        [
            ("blue-1", "blue", true, GateRole::Retired as i32),
            ("blue-2", "blue", true, GateRole::Retired as i32),
            ("green-1", "green", true, GateRole::Active as i32),
        ]
    );
    let b1_progress = status.gates[0].progress.unwrap();
    assert_eq!(b1_progress.watermark_ms, Some(barrier));
    assert_eq!(b1_progress.counters.unwrap().received, 10);
    server.stop().await.unwrap();
}

#[tokio::test]
async fn a_no_vote_aborts_and_retries_with_a_larger_barrier() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(&dir.path().join("state.json"), &[]).await;
    let (mut b1, mut g1) = blue_and_green(&server, P).await;
    let mut watch = Watch::open(&server, P).await;
    server
        .cutover()
        .await
        .start_cutover(start_now(P, "green", 100))
        .await
        .unwrap();

    let first = b1.wait_prepared(None).await;
    assert_eq!(first.barrier_ms, Some(1_100));
    // Blue has meanwhile seen a record far above the barrier: it must vote no.
    b1.high = 5_000;
    b1.vote_on(&first).await;

    let retry = b1.wait_prepared(Some(first.epoch + 1)).await;
    let barrier = retry.barrier_ms.unwrap();
    assert!(
        barrier > 5_000,
        "retry barrier {barrier} must exceed the reported high mark"
    );
    let g_retry = g1.wait_prepared(Some(retry.epoch)).await;
    assert_eq!(g_retry.barrier_ms, Some(barrier));

    let changes = watch.phases_until(Phase::Prepared).await;
    let changes = [changes, watch.phases_until(Phase::Prepared).await].concat();
    let seen: Vec<(Phase, u64)> = changes.iter().map(|c| (phase_of(c), c.epoch)).collect();
    let aborted = seen
        .iter()
        .position(|x| *x == (Phase::Aborted, first.epoch))
        .unwrap_or_else(|| panic!("no abort of epoch {}: {seen:?}", first.epoch));
    assert_eq!(
        seen[aborted + 1],
        (Phase::Prepared, retry.epoch),
        "{seen:?}"
    );
    assert!(changes[aborted].reason.contains("voted no"), "{changes:?}");

    b1.vote_on(&retry).await;
    g1.vote_on(&g_retry).await;
    let committed = g1
        .wait_for("COMMITTED", |a| a.phase == Phase::Committed as i32)
        .await;
    assert_eq!(
        (committed.epoch, committed.barrier_ms),
        (retry.epoch, Some(barrier))
    );
    let status = get(&server, P).await;
    assert_eq!(status.attempt, 2);
    server.stop().await.unwrap();
}

/// Every command grants the gate a lease of half the gate expiry — the assignment on attach and
/// the heartbeats after it — so a gate cut off fences itself before the coordinator forgets it.
#[tokio::test]
async fn every_command_grants_half_the_gate_expiry_as_lease() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(&dir.path().join("state.json"), &["--gate-expiry", "10s"]).await;
    let mut gate = FakeGate::attach(&server, "lease/p", "blue", "blue-1", progress(1_000, 900))
        .await
        .unwrap();
    let first = gate.next_command().await;
    assert!(
        matches!(first.kind, Some(v1::gate_command::Kind::Assign(_))),
        "{first:?}"
    );
    assert_eq!(first.lease_ms, 5_000);
    // Heartbeats every 200 ms (the test server's interval) renew it too.
    let beat = loop {
        let cmd = gate.next_command().await;
        if matches!(cmd.kind, Some(v1::gate_command::Kind::Heartbeat(_))) {
            break cmd;
        }
    };
    assert_eq!(beat.lease_ms, 5_000);
}

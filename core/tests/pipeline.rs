//! The coordinator's cutover state machine, driven input by input.

use sluice_core::gate::{Admission, GateCore, Kept, LatePolicy};
use sluice_core::pipeline::{
    CutoverError, Event, GateProgress, Phase, Pipeline, PipelineOptions, Settings, Stage,
};

const BLUE: &str = "blue";
const GREEN: &str = "green";

fn progress(high: i64, wm: i64) -> GateProgress {
    GateProgress {
        high_mark: Some(high),
        watermark: Some(wm),
        channels: 1,
        idle_channels: 0,
    }
}

fn settings() -> Settings {
    Settings {
        margin_ms: 100,
        ..Settings::default()
    }
}

/// A pipeline with blue gates b0, b1 active and green gate g0 standby.
fn running() -> Pipeline {
    let mut p = Pipeline::new("ns/p", PipelineOptions::default(), 0);
    for (g, d) in [("b0", BLUE), ("b1", BLUE), ("g0", GREEN)] {
        let _ = p.attach(g, d, 1, progress(1_000, 900), 0).unwrap();
    }
    p
}

/// Starts a cutover to green that prepares at once.
fn start_now(p: &mut Pipeline, now_ms: u64) {
    let s = Settings {
        now: true,
        ..settings()
    };
    let _ = p.start_cutover(GREEN, s, now_ms).unwrap();
}

/// Every gate of `running()` votes yes on epoch `e`.
fn all_vote_yes(p: &mut Pipeline, e: u64, now_ms: u64) {
    for g in ["b0", "b1", "g0"] {
        let _ = p.vote(g, 1, e, true, None, now_ms);
    }
}

fn phases(events: &[Event]) -> Vec<Phase> {
    events
        .iter()
        .filter_map(|e| match e {
            Event::PhaseChanged { phase, .. } => Some(*phase),
            _ => None,
        })
        .collect()
}

fn barrier(p: &Pipeline) -> i64 {
    match &p.record().stage {
        Stage::Prepared { barrier, .. } | Stage::Committed { barrier, .. } => *barrier,
        s => panic!("no barrier in {s:?}"),
    }
}

#[test]
fn first_deployment_to_attach_is_active_and_others_stand_by() {
    let p = running();
    assert_eq!(p.record().active.as_deref(), Some(BLUE));
    assert_eq!(
        p.assignment_for(BLUE).admission,
        Admission::Active { floor: None }
    );
    assert_eq!(p.assignment_for(GREEN).admission, Admission::Standby);
}

#[test]
fn full_cutover_prepares_above_every_high_mark_commits_on_all_yes_and_completes_on_drain() {
    let mut p = running();
    let _ = p.progress("g0", 1, progress(1_500, 800), 10);
    let fx = p
        .start_cutover(
            GREEN,
            Settings {
                now: true,
                ..settings()
            },
            20,
        )
        .unwrap();
    assert!(fx.persist);
    assert_eq!(phases(&fx.events), vec![Phase::Waiting, Phase::Prepared]);
    let t = barrier(&p);
    assert_eq!(t, 1_600, "max high mark 1500 + margin 100");
    let epoch = p.record().epoch;
    // Each gate applies the prepare to a real GateCore and votes.
    for (g, d) in [("b0", BLUE), ("b1", BLUE), ("g0", GREEN)] {
        let mut core = GateCore::new();
        core.observe(1_500);
        let sluice_core::gate::Applied::Current { vote: Some(v) } = core.apply(p.assignment_for(d))
        else {
            panic!("no vote")
        };
        assert!(v.yes);
        assert_eq!(p.record().phase(), Phase::Prepared, "not before every vote");
        let _ = p.vote(g, 1, epoch, v.yes, v.high_mark, 30);
    }
    assert_eq!(p.record().phase(), Phase::Committed);
    assert_eq!(
        p.assignment_for(GREEN).admission,
        Admission::Incoming {
            barrier: t,
            committed: true,
            kept: None,
        }
    );
    // One blue gate past T is not enough.
    let _ = p.progress("b0", 1, progress(1_700, t), 40);
    assert_eq!(p.record().phase(), Phase::Committed);
    let fx = p.progress("b1", 1, progress(1_700, t + 5), 50);
    assert_eq!(phases(&fx.events), vec![Phase::Completed]);
    assert_eq!(p.record().active.as_deref(), Some(GREEN));
    assert_eq!(
        p.assignment_for(GREEN).admission,
        Admission::Active { floor: Some(t) }
    );
    assert_eq!(
        p.assignment_for(BLUE).admission,
        Admission::Retired {
            floor: None,
            barrier: t
        }
    );
}

#[test]
fn a_no_vote_aborts_and_retries_with_a_new_epoch_above_the_reported_high_mark() {
    let mut p = running();
    start_now(&mut p, 0);
    let (e1, t1) = (p.record().epoch, barrier(&p));
    let fx = p.vote("b1", 1, e1, false, Some(5_000), 1);
    // A `now` cutover retries at once (no readiness to wait for).
    assert_eq!(phases(&fx.events), vec![Phase::Aborted, Phase::Prepared]);
    assert_eq!(p.record().epoch, e1 + 1);
    assert!(barrier(&p) > t1);
    assert_eq!(barrier(&p), 5_100);
    // A late yes for the old epoch does not count.
    let _ = p.vote("b0", 1, e1, true, None, 2);
    assert!(p.vote_of("b0").is_none());
}

#[test]
fn missing_votes_time_out_and_attempts_are_bounded() {
    let mut p = running();
    let s = Settings {
        now: true,
        prepare_timeout_ms: 100,
        max_attempts: 2,
        ..settings()
    };
    let _ = p.start_cutover(GREEN, s, 0).unwrap();
    let fx = p.tick(100);
    assert_eq!(phases(&fx.events), vec![Phase::Aborted, Phase::Prepared]);
    let fx = p.tick(200);
    assert_eq!(phases(&fx.events), vec![Phase::Aborted]);
    assert!(p.record().plan().is_none());
    assert!(
        p.record()
            .last_error
            .as_deref()
            .unwrap()
            .contains("gave up after 2 attempts")
    );
    assert_eq!(
        p.assignment_for(BLUE).admission,
        Admission::Active { floor: None }
    );
}

#[test]
fn a_disconnected_gate_still_blocks_the_commit() {
    let mut p = running();
    let _ = p.detach("b1", 1, 0);
    start_now(&mut p, 0);
    let e = p.record().epoch;
    let _ = p.vote("b0", 1, e, true, None, 1);
    let _ = p.vote("g0", 1, e, true, None, 1);
    assert_eq!(
        p.record().phase(),
        Phase::Prepared,
        "b1 may still be admitting"
    );
    // It comes back and votes: now the commit happens.
    let _ = p.attach("b1", BLUE, 2, progress(1_000, 900), 2).unwrap();
    let _ = p.vote("b1", 2, e, true, Some(1_000), 3);
    assert_eq!(p.record().phase(), Phase::Committed);
}

#[test]
fn waits_for_readiness_min_gates_and_watermark_lag() {
    let mut p = Pipeline::new("ns/p", PipelineOptions::default(), 0);
    let _ = p
        .attach("b0", BLUE, 1, progress(10_000, 10_000), 0)
        .unwrap();
    let s = Settings {
        min_gates: 2,
        max_lag_ms: 1_000,
        ..settings()
    };
    let _ = p.start_cutover(GREEN, s, 0).unwrap();
    assert_eq!(p.record().phase(), Phase::Waiting);
    let _ = p.attach("g0", GREEN, 1, progress(5_000, 5_000), 1).unwrap();
    let _ = p.attach("g1", GREEN, 1, progress(5_000, 5_000), 1).unwrap();
    assert_eq!(p.record().phase(), Phase::Waiting, "green lags 5 s");
    let _ = p.progress("g0", 1, progress(9_500, 9_500), 2);
    assert_eq!(p.record().phase(), Phase::Waiting, "g1 still lags");
    let _ = p.progress("g1", 1, progress(9_100, 9_000), 3);
    assert_eq!(p.record().phase(), Phase::Prepared);
}

#[test]
fn ready_timeout_gives_up() {
    let mut p = running();
    let s = Settings {
        min_gates: 5,
        ready_timeout_ms: 1_000,
        ..settings()
    };
    let _ = p.start_cutover(GREEN, s, 0).unwrap();
    let _ = p.tick(999);
    assert_eq!(p.record().phase(), Phase::Waiting);
    let _ = p.tick(1_000);
    assert_eq!(p.record().phase(), Phase::Aborted);
}

#[test]
fn requests_that_cannot_start_are_refused_by_cause() {
    let mut p = running();
    assert_eq!(
        p.start_cutover(BLUE, settings(), 0),
        Err(CutoverError::CandidateIsActive(BLUE.into()))
    );
    assert_eq!(
        p.start_cutover("", settings(), 0),
        Err(CutoverError::EmptyCandidate)
    );
    assert!(matches!(
        p.start_cutover(
            GREEN,
            Settings {
                max_attempts: 0,
                ..settings()
            },
            0
        ),
        Err(CutoverError::Settings(_))
    ));
    assert_eq!(p.abort("x", 0), Err(CutoverError::NothingToAbort));
    let _ = p
        .start_cutover(
            GREEN,
            Settings {
                min_gates: 9,
                ..settings()
            },
            0,
        )
        .unwrap();
    assert!(matches!(
        p.start_cutover(GREEN, settings(), 0),
        Err(CutoverError::AlreadyRunning { .. })
    ));
    let _ = p.abort("operator", 1).unwrap();
    assert_eq!(p.record().phase(), Phase::Aborted);
}

#[test]
fn committed_cannot_be_aborted() {
    let mut p = running();
    start_now(&mut p, 0);
    let e = p.record().epoch;
    all_vote_yes(&mut p, e, 1);
    assert!(matches!(
        p.abort("late", 2),
        Err(CutoverError::AlreadyCommitted { .. })
    ));
}

#[test]
fn restart_in_prepared_aborts_then_prepares_from_the_gates_current_high_marks() {
    let mut p = running();
    start_now(&mut p, 0);
    let stored = p.record().clone();
    let (e, t) = (stored.epoch, barrier(&p));
    let (mut q, fx) = Pipeline::restore(stored, PipelineOptions::default(), 10);
    assert!(fx.persist);
    assert_eq!(q.record().phase(), Phase::Waiting, "waits for its gates");
    assert!(q.record().version > p.record().version);
    assert_eq!(
        q.assignment_for(BLUE).admission,
        Admission::Active { floor: None },
        "the gates are told the undecided epoch is gone"
    );
    // Two of the three gates are back: the third's high mark is still unknown.
    let _ = q.attach("b0", BLUE, 7, progress(2_000, 1_900), 20).unwrap();
    let _ = q
        .attach("g0", GREEN, 7, progress(2_000, 1_900), 20)
        .unwrap();
    assert_eq!(q.record().phase(), Phase::Waiting);
    let _ = q.attach("b1", BLUE, 7, progress(9_000, 1_950), 30).unwrap();
    assert_eq!(q.record().phase(), Phase::Prepared);
    assert_eq!(
        q.record().epoch,
        e + 1,
        "the undecided epoch is never committed"
    );
    assert_eq!(
        barrier(&q),
        9_100,
        "the gates' high marks now plus the margin, not the old barrier {t} plus the margin"
    );

    // A `now` cutover does not wait longer than one prepare timeout for a gate that stays away.
    let stored = p.record().clone();
    let (mut q, _) = Pipeline::restore(stored, PipelineOptions::default(), 10);
    let _ = q.attach("b0", BLUE, 7, progress(2_000, 1_900), 20).unwrap();
    let _ = q
        .attach("g0", GREEN, 7, progress(2_000, 1_900), 20)
        .unwrap();
    let _ = q.tick(5_009);
    assert_eq!(q.record().phase(), Phase::Waiting);
    let _ = q.tick(5_010);
    assert_eq!(q.record().phase(), Phase::Prepared);
    assert_eq!(barrier(&q), 2_100);
}

#[test]
fn restart_in_committed_resumes_the_drain() {
    let mut p = running();
    start_now(&mut p, 0);
    let (e, t) = (p.record().epoch, barrier(&p));
    all_vote_yes(&mut p, e, 1);
    let stored = p.record().clone();
    let (mut q, fx) = Pipeline::restore(stored.clone(), PipelineOptions::default(), 10);
    assert!(!fx.persist);
    assert_eq!(q.record(), &stored);
    assert_eq!(q.assignment_for(GREEN), p.assignment_for(GREEN));
    // Drain needs the outgoing gates to come back and report.
    let _ = q.tick(20);
    assert_eq!(q.record().phase(), Phase::Committed);
    for g in ["b0", "b1"] {
        let _ = q.attach(g, BLUE, 7, progress(t + 10, t + 10), 30).unwrap();
    }
    assert_eq!(q.record().phase(), Phase::Completed);
}

#[test]
fn readiness_waits_for_every_gate_of_both_deployments() {
    // Blue's sidecar is down: its watermark is not known, so green cannot be called caught up
    // (and b1 could not vote anyway).
    let mut p = running();
    let _ = p.detach("b1", 1, 0);
    let _ = p.progress("b0", 1, progress(20_000, 19_000), 0);
    let _ = p.progress("g0", 1, progress(5_000, 4_600), 0);
    let s = Settings {
        max_lag_ms: 1_000,
        ..settings()
    };
    let _ = p.start_cutover(GREEN, s, 1).unwrap();
    assert_eq!(p.record().phase(), Phase::Waiting);
    let why = p.readiness().unwrap_err();
    assert!(why.contains("gate b1 of blue is not connected"), "{why}");
    // b1 is back, but green is far behind blue.
    let _ = p
        .attach("b1", BLUE, 2, progress(20_000, 19_000), 2)
        .unwrap();
    assert_eq!(p.record().phase(), Phase::Waiting);
    let why = p.readiness().unwrap_err();
    assert!(why.contains("14400 ms behind"), "{why}");
    let _ = p.progress("g0", 1, progress(19_500, 18_500), 3);
    assert_eq!(p.record().phase(), Phase::Prepared);
    assert_eq!(barrier(&p), 20_100);
}

#[test]
fn a_retry_after_a_no_vote_checks_readiness_again() {
    let mut p = running();
    let s = Settings {
        max_lag_ms: 1_000,
        ..settings()
    };
    let _ = p.start_cutover(GREEN, s, 0).unwrap();
    assert_eq!(p.record().phase(), Phase::Prepared);
    let e = p.record().epoch;
    // Blue had raced ahead: b1 votes no with a high mark far ahead, and green is behind it.
    let _ = p.progress("b0", 1, progress(30_000, 29_000), 1);
    let _ = p.progress("b1", 1, progress(30_000, 29_000), 1);
    let fx = p.vote("b1", 1, e, false, Some(30_000), 1);
    assert_eq!(phases(&fx.events), vec![Phase::Aborted, Phase::Waiting]);
    assert!(p.readiness().unwrap_err().contains("behind"));
    let _ = p.progress("g0", 1, progress(29_000, 28_500), 2);
    let _ = p.progress("b0", 1, progress(29_000, 28_500), 2);
    assert_eq!(p.record().phase(), Phase::Prepared);
    assert_eq!(p.record().epoch, e + 1);
    assert_eq!(barrier(&p), 30_100);
}

#[test]
fn a_now_cutover_to_a_deployment_no_gate_attached_as_is_refused_unless_forced() {
    let mut p = running();
    let s = Settings {
        now: true,
        ..settings()
    };
    let err = p.start_cutover("grene", s, 0).unwrap_err();
    assert_eq!(err, CutoverError::CandidateUnknown("grene".into()));
    assert!(
        err.to_string().contains("no gate of deployment grene"),
        "{err}"
    );
    assert!(p.record().plan().is_none());
    // WHEN_READY may name a candidate that has not started yet: it waits for its gates.
    let _ = p.start_cutover("green-v2", settings(), 1).unwrap();
    assert_eq!(p.record().phase(), Phase::Waiting);
    let _ = p.abort("test", 2).unwrap();
    let forced = Settings { force: true, ..s };
    let _ = p.start_cutover("green-v2", forced, 3).unwrap();
    assert_eq!(p.record().phase(), Phase::Prepared);
}

#[test]
fn gates_expire_after_being_disconnected_too_long() {
    let opts = PipelineOptions {
        gate_expiry_ms: 1_000,
        ..PipelineOptions::default()
    };
    let mut p = Pipeline::new("ns/p", opts, 0);
    let _ = p.attach("b0", BLUE, 1, progress(1, 1), 0).unwrap();
    let _ = p.detach("b0", 1, 100);
    assert!(!p.tick(1_099).persist);
    let fx = p.tick(1_100);
    assert!(fx.persist);
    assert!(p.record().gates.is_empty());
}

#[test]
fn a_gate_cannot_change_deployment_and_stale_detaches_are_ignored() {
    let mut p = running();
    assert!(
        p.attach("b0", GREEN, 2, GateProgress::default(), 0)
            .is_err()
    );
    let _ = p.attach("b0", BLUE, 2, GateProgress::default(), 0).unwrap();
    let _ = p.detach("b0", 1, 1);
    assert_eq!(p.live()["b0"].conn, Some(2));
}

#[test]
fn rollback_after_completion_is_a_new_cutover_with_a_larger_barrier() {
    let mut p = running();
    start_now(&mut p, 0);
    let (e, t) = (p.record().epoch, barrier(&p));
    all_vote_yes(&mut p, e, 1);
    for g in ["b0", "b1"] {
        let _ = p.progress(g, 1, progress(t, t), 2);
    }
    assert_eq!(p.record().phase(), Phase::Completed);
    let _ = p
        .start_cutover(
            BLUE,
            Settings {
                now: true,
                late_policy: LatePolicy::Drop,
                ..settings()
            },
            3,
        )
        .unwrap();
    assert!(barrier(&p) > t);
    assert_eq!(
        p.assignment_for(GREEN).admission,
        Admission::Outgoing {
            floor: Some(t),
            barrier: barrier(&p),
            committed: false
        }
    );
    // Blue, coming back, keeps the range it owned before green took over.
    assert_eq!(
        p.assignment_for(BLUE).admission,
        Admission::Incoming {
            barrier: barrier(&p),
            committed: false,
            kept: Some(Kept {
                floor: None,
                barrier: t
            }),
        }
    );
}

//! Runs sluice's seeded protocol simulation over many seeds and checks that every run passed and
//! that the runs covered the scenario space.
//!
//! `SLUICE_SIM_SEEDS` overrides the number of seeds (default 2000). A failure names its seed and
//! how to replay it: `cargo run -p sluice-integration-tests --bin sim -- --seed <S> -v`.

use std::time::Instant;

use sluice_integration_tests::sim::{SimConfig, SimFailure, Totals, run, run_many};

fn seeds() -> u64 {
    std::env::var("SLUICE_SIM_SEEDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(2_000)
}

fn jobs() -> usize {
    std::thread::available_parallelism().map_or(2, |n| n.get().min(4))
}

fn run_seeds(what: &str, seeds: u64, cfg: &SimConfig) -> (Totals, Vec<SimFailure>) {
    let started = Instant::now();
    let (totals, failures) = run_many(0, seeds, cfg, jobs());
    eprintln!(
        "{what}: seeds 0..{seeds}: {totals} ({:.1} s on {} threads)",
        started.elapsed().as_secs_f64(),
        jobs()
    );
    (totals, failures)
}

fn assert_no_failures(failures: &[SimFailure]) {
    if let Some(first) = failures.first() {
        let others: Vec<u64> = failures.iter().skip(1).map(|f| f.seed).collect();
        panic!("{first}\n  other failing seeds: {others:?}");
    }
}

#[test]
fn seeded_simulation_of_the_barrier_protocol() {
    let seeds = seeds();
    let (totals, failures) = run_seeds("simulation", seeds, &SimConfig::default());
    assert_no_failures(&failures);
    // A batch this large must have exercised every kind of scenario, or the simulation has
    // silently degenerated (e.g. faults never firing, cutovers never completing).
    if seeds >= 500 {
        let missing = totals.uncovered();
        assert!(
            missing.is_empty(),
            "scenario space not covered: {missing:?}; {totals}"
        );
    }
}

/// Without faults every cutover is held to the liveness bound and, where it committed when
/// ready, to the output-gap bound (see `Sim::check_liveness` and `Sim::check_gap`); the
/// default batch checks liveness under faults too, once they heal.
#[test]
fn fault_free_runs_complete_in_bounded_time_with_a_bounded_output_gap() {
    let cfg = SimConfig {
        fault_rate: 0.0,
        ..SimConfig::default()
    };
    let (totals, failures) = run_seeds("no faults", seeds() / 2, &cfg);
    assert_no_failures(&failures);
    if seeds() >= 500 {
        assert!(totals.gap_checked > 100, "too few gap checks: {totals}");
    }
}

/// The checks can fail: sidecars without a future horizon let a record stamped a year ahead
/// into their high marks, and the barrier lands a year ahead (green would admit nothing for a
/// year, and a cutover in progress never completes while blue runs).
#[test]
fn without_a_future_horizon_one_outlier_poisons_the_barrier() {
    let cfg = SimConfig {
        no_future_horizon: true,
        ..SimConfig::default()
    };
    let (_, failures) = run_seeds("no future horizon", 300, &cfg);
    assert!(!failures.is_empty(), "no run noticed the poisoned barrier");
    for f in &failures {
        assert!(
            f.message.contains("above every observed event time") || f.message.contains("liveness"),
            "{f}"
        );
    }
}

#[test]
fn the_same_seed_replays_the_same_run() {
    let cfg = SimConfig::default();
    for seed in [7, 1_234, 99_999] {
        let (a, b) = (run(seed, &cfg), run(seed, &cfg));
        let (a, b) = (a.map_err(|f| f.to_string()), b.map_err(|f| f.to_string()));
        match (a, b) {
            (Ok(a), Ok(b)) => {
                assert_eq!(
                    (
                        a.events,
                        a.sim_time_ms,
                        a.blue_admitted,
                        a.green_admitted,
                        a.history
                    ),
                    (
                        b.events,
                        b.sim_time_ms,
                        b.blue_admitted,
                        b.green_admitted,
                        b.history
                    ),
                    "seed {seed} is not deterministic"
                );
            }
            (a, b) => assert_eq!(a.err(), b.err(), "seed {seed} is not deterministic"),
        }
    }
}

// --- known gaps of the protocol -------------------------------------------------------------
//
// Each of these runs the simulation with one protocol gap exposed and fails today; they are
// ignored so the suite stays green, and document the gap until it is closed (then un-ignore).
// Run them with `cargo test -p sluice-integration-tests --test simulation -- --ignored`.

/// Idle outgoing channels (and those of a gate the coordinator forgot) are excluded from the
/// drain, so a completed cutover's outgoing deployment may still have records below the
/// barrier: tearing it down loses them. (A rollback no longer does: the returning deployment
/// keeps its range.)
#[test]
#[ignore = "known gap: records of channels idle at handover are lost (DESIGN.md promises none)"]
fn known_gap_idle_channels_at_handover_lose_records() {
    let cfg = SimConfig {
        strict_idle: true,
        ..SimConfig::default()
    };
    let (_, failures) = run_seeds("strict idle", seeds(), &cfg);
    assert_no_failures(&failures);
}

/// The coordinator forgets a gate disconnected for `gate_expiry_ms`; a sidecar cut off for half
/// of that fences itself (holds everything until assigned again). With partitions that outlast
/// the expiry, every run stays exact (what the drain no longer waits for is accounted like an
/// idle channel's backlog, see `known_gap_idle_channels_at_handover_lose_records`).
#[test]
fn partitions_past_the_gate_expiry_are_fenced() {
    let cfg = SimConfig {
        expiry_partitions: true,
        ..SimConfig::default()
    };
    let (totals, failures) = run_seeds("expiry partitions", seeds() / 2, &cfg);
    assert_no_failures(&failures);
    if seeds() >= 1_000 {
        assert!(
            totals.expired_gates > 0 && totals.fences > 0,
            "no gate expired or fenced: {totals}"
        );
    }
}

/// Without the lease, a sidecar cut off past the coordinator's gate expiry keeps admitting under
/// its last assignment while a cutover completes without it: duplicates or loss (seed 32 at the
/// time of writing: blue admits a record green owns).
#[test]
#[ignore = "requirement on gate-sidecar: fence a gate that has not heard the coordinator for its lease"]
fn known_gap_sidecars_without_a_lease() {
    let cfg = SimConfig {
        expiry_partitions: true,
        no_lease: true,
        ..SimConfig::default()
    };
    let (_, failures) = run_seeds("no lease", seeds(), &cfg);
    assert_no_failures(&failures);
}

/// A sidecar that restarts with `GateCore::new` (instead of `GateCore::resume` from a persisted
/// high-mark ceiling) votes yes on barriers below what its predecessor decided (about one run in
/// a thousand; seeds 150 and 1614 at the time of writing).
#[test]
#[ignore = "requirement on gate-sidecar: persist a high-mark ceiling, restart with GateCore::resume"]
fn known_gap_sidecars_that_forget_their_high_mark() {
    let cfg = SimConfig {
        forgetful_sidecars: true,
        ..SimConfig::default()
    };
    let (_, failures) = run_seeds("forgetful sidecars", seeds(), &cfg);
    assert_no_failures(&failures);
}

/// The Kafka front's exact drain (issue 10): no client sends a watermark; each deployment's
/// Flink job is polled through a modeled REST API that serves stale watermarks and checkpoint
/// statistics, and only a checkpoint triggered after a watermark held confirms it. Every check
/// of the default batch applies, the drain check among them ("completed ⇒ no non-late record of
/// the outgoing deployment below T is still to come").
#[test]
fn seeded_simulation_of_the_rest_drain() {
    let cfg = SimConfig {
        rest_drain: true,
        ..SimConfig::default()
    };
    let (_, failures) = run_seeds("REST drain", seeds() / 2, &cfg);
    assert_no_failures(&failures);
}

/// Without the confirmed watermark as a floor, a job stalled past the idle timeout with records
/// still in its producers' buffers leaves a gate of idle channels that counts as drained, and
/// tearing blue down loses what it held: the simulation must catch it (4 of the first 1,000
/// seeds at the time of writing; seed 99 the first).
#[test]
fn rest_drain_without_its_floor_is_caught() {
    let cfg = SimConfig {
        rest_drain: true,
        no_rest_floor: true,
        ..SimConfig::default()
    };
    let (_, failures) = run_seeds("REST drain without its floor", 1_000, &cfg);
    let first = failures
        .first()
        .expect("no seed caught a stalled job's gate counted as drained");
    assert!(first.message.contains("lost:"), "{first}");
    eprintln!("{} of 1000 seeds caught it; first: {first}", failures.len());
}

/// Exactly-once sinks (issue 11): transactions commit up to 3 s after their checkpoint; every
/// check of the REST drain applies, and the drain check also requires every admitted record of
/// the outgoing deployment below T committed when the drain completes (the sidecars' floors).
/// No faults: restores are not modeled in this mode.
#[test]
fn seeded_simulation_of_exactly_once_sinks() {
    let cfg = SimConfig {
        rest_drain: true,
        exactly_once: true,
        fault_rate: 0.0,
        ..SimConfig::default()
    };
    let (_, failures) = run_seeds("exactly-once", seeds() / 4, &cfg);
    assert_no_failures(&failures);
}

/// Without the floors the drain follows the checkpoint, not the commit: the simulation must
/// catch it (or it checks nothing).
#[test]
fn exactly_once_without_floors_is_caught() {
    let cfg = SimConfig {
        rest_drain: true,
        exactly_once: true,
        no_floors: true,
        fault_rate: 0.0,
        ..SimConfig::default()
    };
    let (_, failures) = run_seeds("exactly-once without floors", 200, &cfg);
    let first = failures
        .first()
        .expect("no seed caught a drain completed before a commit");
    assert!(
        first.message.contains("drain completed before a commit"),
        "{first}"
    );
    eprintln!("{} of 200 seeds caught it; first: {first}", failures.len());
}

/// Exactly-once with half the commits through another sidecar (Flink's committer on another
/// TaskManager): the writer's gate sees no `EndTxn` for those and lifts their floors only when
/// the cluster, asked every 500 ms, says they are committed. Every check still holds.
#[test]
fn seeded_simulation_of_commits_through_another_sidecar() {
    let cfg = SimConfig {
        rest_drain: true,
        exactly_once: true,
        foreign_commits: true,
        fault_rate: 0.0,
        ..SimConfig::default()
    };
    let (_, failures) = run_seeds("exactly-once, foreign commits", seeds() / 4, &cfg);
    assert_no_failures(&failures);
}

/// A sidecar that took a pre-committed transaction for ended when it asked the cluster would
/// let the drain pass records a read_committed consumer cannot see yet: caught.
#[test]
fn asking_the_cluster_and_lifting_before_the_commit_is_caught() {
    let cfg = SimConfig {
        rest_drain: true,
        exactly_once: true,
        foreign_commits: true,
        ask_lifts_early: true,
        fault_rate: 0.0,
        ..SimConfig::default()
    };
    let (_, failures) = run_seeds("foreign commits lifted early", 200, &cfg);
    let first = failures
        .first()
        .expect("no seed caught a transaction lifted before its commit");
    assert!(
        first.message.contains("drain completed before a commit"),
        "{first}"
    );
    eprintln!("{} of 200 seeds caught it; first: {first}", failures.len());
}

/// A sidecar that lifted a transaction's floor at the commit's acknowledgement, before the
/// coordinator wrote its markers (up to 800 ms in the model), would let the drain complete
/// while read_committed cannot see blue's last records: caught.
#[test]
fn lifting_at_the_commit_acknowledgement_is_caught() {
    let cfg = SimConfig {
        rest_drain: true,
        exactly_once: true,
        lift_at_commit_ack: true,
        fault_rate: 0.0,
        ..SimConfig::default()
    };
    let (_, failures) = run_seeds("lifted at the commit's acknowledgement", 200, &cfg);
    let first = failures
        .first()
        .expect("no seed caught a floor lifted before the markers were written");
    assert!(
        first.message.contains("drain completed before a commit"),
        "{first}"
    );
    eprintln!("{} of 200 seeds caught it; first: {first}", failures.len());
}

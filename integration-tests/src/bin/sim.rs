//! Runs sluice's seeded protocol simulation from the command line.
//!
//! `sim --seeds 10000` runs seeds 0..10000 and prints one line per failure and the totals;
//! `sim --seed 1234 -v` replays one seed and prints its event trace.
#![forbid(unsafe_code)]

use std::process::ExitCode;
use std::time::Instant;

use clap::Parser;
use sluice_integration_tests::sim::{SimConfig, run, run_many};

/// sluice's deterministic barrier-protocol simulation.
#[derive(Debug, Parser)]
#[command(name = "sim")]
struct Args {
    /// How many seeds to run.
    #[arg(long, default_value_t = 1_000)]
    seeds: u64,
    /// First seed of the range.
    #[arg(long, default_value_t = 0)]
    start: u64,
    /// Run only this seed (and print its report).
    #[arg(long)]
    seed: Option<u64>,
    /// With --seed: print the full event trace.
    #[arg(short, long)]
    verbose: bool,
    /// Fewest input records per run.
    #[arg(long, default_value_t = SimConfig::default().min_records)]
    min_records: usize,
    /// Most input records per run.
    #[arg(long, default_value_t = SimConfig::default().max_records)]
    max_records: usize,
    /// Multiplier of every fault rate (0 turns faults off).
    #[arg(long, default_value_t = 1.0)]
    fault_rate: f64,
    /// Fail runs that lose records of an idle blue channel to blue's teardown.
    #[arg(long)]
    strict_idle: bool,
    /// Sidecars forget their high mark in a crash (unsound; shows why it must be persisted).
    #[arg(long)]
    forgetful_sidecars: bool,
    /// Let network partitions outlast the coordinator's gate expiry (the sidecar's lease fences
    /// a gate cut off that long).
    #[arg(long)]
    expiry_partitions: bool,
    /// Sidecars without a lease keep their assignment however long they are cut off (unsound
    /// with --expiry-partitions; shows why the fence is needed).
    #[arg(long)]
    no_lease: bool,
    /// Sidecars without a future horizon: a record stamped a year ahead poisons the barrier
    /// (the liveness check fails such runs; shows why far-future records are dropped).
    #[arg(long)]
    no_future_horizon: bool,
    /// The Kafka front's exact drain: no client watermarks; each deployment's Flink job is
    /// polled through a modeled (stale) REST API and confirmed by checkpoints.
    #[arg(long)]
    rest_drain: bool,
    /// Exactly-once sinks (implies --rest-drain; use with --fault-rate 0): transactions commit
    /// up to 3 s after their checkpoint, and the drain must wait for the commits.
    #[arg(long)]
    exactly_once: bool,
    /// With --exactly-once: sidecars without the open-transaction floors (the drain check
    /// fails).
    #[arg(long)]
    no_floors: bool,
    /// With --rest-drain: sidecars that do not make the confirmed watermark a floor of the gate
    /// watermark (a job stalled past the idle timeout then counts as drained; the drain check
    /// fails).
    #[arg(long)]
    no_rest_floor: bool,
    /// With --exactly-once: half the commits come through another sidecar (Flink's committer
    /// on another TaskManager); the writer's sidecar learns them by asking the cluster.
    #[arg(long)]
    foreign_commits: bool,
    /// With --foreign-commits: sidecars that take a pre-committed transaction for ended when
    /// they ask (the drain check fails).
    #[arg(long)]
    ask_lifts_early: bool,
    /// With --exactly-once: sidecars that lift a transaction's floor when its commit is
    /// acknowledged, before its markers are written (the drain check fails).
    #[arg(long)]
    lift_at_commit_ack: bool,
    /// Worker threads for a range of seeds.
    #[arg(long, default_value_t = 2)]
    jobs: usize,
}

fn main() -> ExitCode {
    let args = Args::parse();
    let cfg = SimConfig {
        min_records: args.min_records,
        max_records: args.max_records,
        fault_rate: args.fault_rate,
        trace: args.verbose && args.seed.is_some(),
        strict_idle: args.strict_idle,
        forgetful_sidecars: args.forgetful_sidecars,
        expiry_partitions: args.expiry_partitions,
        no_lease: args.no_lease,
        no_future_horizon: args.no_future_horizon,
        rest_drain: args.rest_drain || args.exactly_once,
        exactly_once: args.exactly_once,
        no_floors: args.no_floors,
        no_rest_floor: args.no_rest_floor,
        foreign_commits: args.foreign_commits || args.ask_lifts_early,
        ask_lifts_early: args.ask_lifts_early,
        lift_at_commit_ack: args.lift_at_commit_ack,
        ..SimConfig::default()
    };
    if let Some(seed) = args.seed {
        return match run(seed, &cfg) {
            Ok(r) => {
                for line in &r.trace {
                    println!("{line}");
                }
                for line in &r.history {
                    println!("  {line}");
                }
                println!(
                    "seed {seed} ok: {} records, {:?} at barrier {:?} after {} attempts; blue \
                     admitted {}, green admitted {}, late dropped {}, late admitted {}, late lost \
                     {}, late duplicated {}, idle-channel loss {}; {} ms sim time, {} events; faults {:?}",
                    r.records,
                    r.final_phase,
                    r.barrier,
                    r.attempts,
                    r.blue_admitted,
                    r.green_admitted,
                    r.late_dropped,
                    r.late_admitted,
                    r.missing_late,
                    r.duplicated_late,
                    r.idle_lost,
                    r.sim_time_ms,
                    r.events,
                    r.faults
                );
                ExitCode::SUCCESS
            }
            Err(f) => {
                for line in &f.trace {
                    println!("{line}");
                }
                println!("{f}");
                ExitCode::FAILURE
            }
        };
    }
    let started = Instant::now();
    let (totals, failures) = run_many(args.start, args.seeds, &cfg, args.jobs);
    for f in &failures {
        let first = f.message.lines().next().unwrap_or_default();
        println!("sim seed {} failed: {first}", f.seed);
    }
    println!(
        "seeds {}..{}: {totals} ({:.1} s)",
        args.start,
        args.start + args.seeds,
        started.elapsed().as_secs_f64()
    );
    if let Some(f) = failures.first() {
        println!("first failure in full:\n{f}");
        return ExitCode::FAILURE;
    }
    ExitCode::SUCCESS
}

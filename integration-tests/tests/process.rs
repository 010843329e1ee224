//! Process-level tests: the real coordinator and two real gate sidecars, 100,000 records replayed
//! into both over 4 and 5 channels with out-of-order event times, a cutover started through the
//! gRPC API, and the merged output counted record by record.

use sluice_integration_tests::scenario::{self, ScenarioConfig};

async fn run(kill: bool, log_to: Option<&str>) {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = ScenarioConfig::new(dir.path());
    cfg.kill_coordinator = kill;
    cfg.log_to = log_to.map(Into::into);
    let report = scenario::run_expecting_exact(&cfg, dir).await;
    assert_eq!(report.records, 100_000);
    assert_eq!(report.blue.output + report.green.output, 100_000);
    assert_eq!(
        report.blue.acked_admitted + report.green.acked_admitted,
        100_000,
        "the sidecars' own FlushAck counts agree with the files"
    );
    if kill {
        assert!(
            report.coordinator_kills >= 1,
            "the coordinator was never killed"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cutover_is_exact_across_real_processes() {
    run(false, None).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cutover_is_exact_when_the_coordinator_is_killed_mid_cutover() {
    run(true, None).await;
}

/// Every log line the coordinator and the sidecars write fails (`/dev/full`: ENOSPC), as on a
/// full disk or a closed log pipe. A process that cannot log must still cut over exactly: a
/// failed log write once panicked whichever task logged (tracing-subscriber's fallback
/// `eprintln!`), which dropped client channels mid-stream.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cutover_is_exact_when_no_log_line_can_be_written() {
    run(false, Some("/dev/full")).await;
}

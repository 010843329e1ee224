//! The kubelet's probes: `/livez` while the process serves, `/readyz` only once the coordinator
//! has assigned the gate a role; `/metrics` for Prometheus.

mod common;

use common::*;
use tokio::net::TcpStream;

#[tokio::test]
async fn readiness_follows_the_assignment_and_liveness_is_always_up() {
    let coord = FakeCoordinator::start(None).await;
    let sidecar = Sidecar::start(&coord.url(), &[]).await;
    let addr = sidecar.health;

    assert_eq!(http_get(addr, "GET", "/livez").await.0, 200);
    let (status, body) = sidecar.readyz().await;
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("no assignment"), "{body}");

    coord.set_assignment(active(1, 1)).await;
    let body = sidecar.wait_ready().await;
    assert!(body.contains("version 1"), "{body}");
    assert_eq!(http_get(addr, "GET", "/nope").await.0, 404);
    assert_eq!(http_get(addr, "POST", "/livez").await.0, 405);

    sidecar.stop().await.unwrap();
    // The health listener stops with the sidecar.
    assert!(TcpStream::connect(addr).await.is_err());
}

#[tokio::test]
async fn the_socket_gets_the_configured_mode() {
    use std::os::unix::fs::PermissionsExt as _;
    let dir = tempfile::tempdir().unwrap();
    for (mode, want) in [(None, 0o660), (Some("0666"), 0o666)] {
        let socket = dir.path().join(format!("{want:o}.sock"));
        let mut args = vec![
            "gate-sidecar".to_owned(),
            "--pipeline".into(),
            PIPELINE.into(),
            "--deployment".into(),
            DEPLOYMENT.into(),
            "--socket".into(),
            socket.display().to_string(),
        ];
        if let Some(m) = mode {
            args.extend(["--socket-mode".into(), m.into()]);
        }
        let config = <sluice_gate_sidecar::Config as clap::Parser>::try_parse_from(args).unwrap();
        let _listeners = sluice_gate_sidecar::Listeners::bind(&config).await.unwrap();
        let got = std::fs::metadata(&socket).unwrap().permissions().mode() & 0o777;
        assert_eq!(got, want, "{mode:?}");
    }
}

/// `/metrics` serves the gate's counters and levels, one consistent snapshot per scrape, in the
/// OpenMetrics text format.
#[tokio::test]
async fn metrics_count_what_the_gate_did() {
    let coord = FakeCoordinator::start(None).await;
    let sidecar = Sidecar::start(&coord.url(), &[]).await;
    let metric = |text: &str, line: &str| {
        text.lines()
            .find(|l| l.starts_with(line))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse::<i64>().ok())
            .unwrap_or_else(|| panic!("no {line} in:\n{text}"))
    };
    let (status, text) = http_get(sidecar.health, "GET", "/metrics").await;
    assert_eq!(status, 200, "{text}");
    assert_eq!(metric(&text, "sluice_gate_assigned "), 0);
    assert!(text.ends_with("# EOF\n"), "{text}");

    // Standby first: both records dropped as shadow; then active: one admitted.
    coord.set_assignment(standby(1)).await;
    sidecar.wait_ready().await;
    let mut c = sidecar.channel("0").await;
    c.records(&[10, 20]).await;
    c.flush(1).await;
    c.expect_ack(1).await;
    coord.set_assignment(active(2, 0)).await;
    while !sidecar.readyz().await.1.contains("version 2") {
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    c.records(&[30]).await;
    c.flush(2).await;
    c.expect_ack(2).await;

    let (_, text) = http_get(sidecar.health, "GET", "/metrics").await;
    assert_eq!(metric(&text, "sluice_gate_assigned "), 1);
    assert_eq!(metric(&text, "sluice_gate_assignment_version "), 2);
    assert_eq!(metric(&text, "sluice_gate_records_received_total "), 3);
    assert_eq!(
        metric(&text, "sluice_gate_records_admitted_total "),
        1,
        "{text}"
    );
    assert_eq!(
        metric(
            &text,
            "sluice_gate_records_dropped_total{reason=\"shadow\"} "
        ),
        2
    );
    assert_eq!(
        metric(
            &text,
            "sluice_gate_records_dropped_total{reason=\"barrier\"} "
        ),
        0
    );
    assert_eq!(metric(&text, "sluice_gate_records_held "), 0);
    assert_eq!(metric(&text, "sluice_gate_channels "), 1);
    assert_eq!(metric(&text, "sluice_gate_high_mark_ms "), 30);
    for name in [
        "records_admitted",
        "records_dropped",
        "assigned",
        "channels",
    ] {
        assert!(
            text.contains(&format!("# HELP sluice_gate_{name} ")),
            "no help for {name}:\n{text}"
        );
    }
}

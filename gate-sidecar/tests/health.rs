//! The kubelet's probes: `/livez` while the process serves, `/readyz` only once the coordinator
//! has assigned the gate a role.

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

//! The kubelet's probes: `/livez` while the process serves, `/readyz` only once the coordinator
//! has assigned the gate a role.

mod common;

use std::time::Duration;

use common::*;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{TcpListener, TcpStream, UnixListener};

/// One HTTP/1.1 request; returns the status code and body.
async fn get(addr: std::net::SocketAddr, method: &str, path: &str) -> (u16, String) {
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(
        format!("{method} {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes(),
    )
    .await
    .unwrap();
    let mut text = String::new();
    s.read_to_string(&mut text).await.unwrap();
    let status = text[9..12].parse().unwrap();
    let body = text.split("\r\n\r\n").nth(1).unwrap_or_default().to_owned();
    (status, body)
}

#[tokio::test]
async fn readiness_follows_the_assignment_and_liveness_is_always_up() {
    init_tracing();
    let coord = FakeCoordinator::start(None).await;
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("gate.sock");
    let config = <sluice_gate_sidecar::Config as clap::Parser>::try_parse_from([
        "gate-sidecar",
        "--pipeline",
        PIPELINE,
        "--deployment",
        DEPLOYMENT,
        "--coordinator",
        &coord.url(),
        "--socket",
        socket.to_str().unwrap(),
        "--sink",
        "null",
    ])
    .unwrap();
    let health = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = health.local_addr().unwrap();
    let listeners = sluice_gate_sidecar::Listeners {
        unix: Some(UnixListener::bind(&socket).unwrap()),
        tcp: None,
        health: Some(health),
    };
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(sluice_gate_sidecar::run(config, listeners, async {
        let _ = stopped.await;
    }));

    assert_eq!(get(addr, "GET", "/livez").await.0, 200);
    let (status, body) = get(addr, "GET", "/readyz").await;
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("no assignment"), "{body}");

    coord.set_assignment(active(1, 1)).await;
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        let (status, body) = get(addr, "GET", "/readyz").await;
        if status == 200 {
            assert!(body.contains("version 1"), "{body}");
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "never ready: {body}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(get(addr, "GET", "/nope").await.0, 404);
    assert_eq!(get(addr, "POST", "/livez").await.0, 405);

    let _ = stop.send(());
    task.await.unwrap().unwrap();
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

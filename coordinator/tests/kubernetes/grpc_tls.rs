//! gRPC over TLS (`--grpc-tls-cert`/`--grpc-tls-key`), as the manifests run it: the same
//! Secret files as the webhook. The Cutover and GateControl APIs work for a client that trusts
//! the CA; a plaintext client, a client with another CA and a client without `h2` in its ALPN
//! are refused in the handshake; a renewed certificate is served to new connections while open
//! ones go on; broken settings stop the coordinator before any port is bound.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use rustls::pki_types::{CertificateDer, ServerName};
use rustls::{ClientConfig, RootCertStore};
use sluice_proto::v1::{
    self, cutover_client::CutoverClient, gate_control_client::GateControlClient,
};
use tokio::net::TcpStream;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::{Channel, ClientTlsConfig};
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::{HealthCheckRequest, health_client::HealthClient};

use crate::common::{Client, SERVER_NAME, TestPki, TestServer, WAIT, metric};
use crate::reload::SecretVolume;

fn roots(cas: &[&CertificateDer<'static>]) -> RootCertStore {
    let mut store = RootCertStore::empty();
    for ca in cas {
        store.add((*ca).clone()).unwrap();
    }
    store
}

/// A tonic channel over TLS to `addr`, trusting `cas`, verifying [`SERVER_NAME`].
pub(crate) async fn tls_channel(
    addr: SocketAddr,
    cas: &[&CertificateDer<'static>],
) -> Result<Channel, tonic::transport::Error> {
    let tls = ClientTlsConfig::new()
        .trust_anchors(roots(cas).roots)
        .domain_name(SERVER_NAME);
    Channel::from_shared(format!("https://{addr}"))
        .unwrap()
        .tls_config(tls)?
        .connect()
        .await
}

pub(crate) async fn health(channel: Channel) -> Result<i32, tonic::Status> {
    let r = HealthClient::new(channel)
        .check(HealthCheckRequest {
            service: String::new(),
        })
        .await?;
    Ok(r.into_inner().status)
}

/// A bare TLS handshake offering `alpn`: the server's certificate and the protocol agreed.
async fn handshake(
    addr: SocketAddr,
    cas: &[&CertificateDer<'static>],
    alpn: &[u8],
) -> Result<(CertificateDer<'static>, Option<Vec<u8>>), String> {
    let mut config =
        ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots(cas))
            .with_no_client_auth();
    config.alpn_protocols = vec![alpn.to_vec()];
    config.resumption = rustls::client::Resumption::disabled();
    let tcp = TcpStream::connect(addr).await.map_err(|e| e.to_string())?;
    let tls = tokio::time::timeout(
        WAIT,
        tokio_rustls::TlsConnector::from(Arc::new(config))
            .connect(ServerName::try_from(SERVER_NAME).unwrap(), tcp),
    )
    .await
    .map_err(|_| "handshake timed out".to_owned())?
    .map_err(|e| format!("TLS handshake failed: {e}"))?;
    let session = tls.get_ref().1;
    Ok((
        session.peer_certificates().unwrap()[0].clone().into_owned(),
        session.alpn_protocol().map(<[u8]>::to_vec),
    ))
}

/// `error: cause: cause` on one line.
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut source = e.source();
    while let Some(cause) = source {
        s.push_str(": ");
        s.push_str(&cause.to_string());
        source = cause.source();
    }
    s
}

fn tls_flags<'a>(cert: &'a str, key: &'a str) -> [&'a str; 6] {
    [
        "--grpc-tls-cert",
        cert,
        "--grpc-tls-key",
        key,
        "--grpc-tls-reload-interval",
        "100ms",
    ]
}

#[tokio::test]
async fn the_apis_work_over_tls_and_other_clients_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let pki = TestPki::new("sluice CA");
    let (cert, key) = pki.write(dir.path());
    let (c, k) = (cert.to_str().unwrap(), key.to_str().unwrap());
    // The gRPC listener and the webhook share the Secret, as in manifests/base.
    let server = TestServer::start(dir.path(), &cert, &key, &tls_flags(c, k)).await;

    let channel = tls_channel(server.grpc, &[&pki.ca_der]).await.unwrap();
    assert_eq!(
        health(channel.clone()).await.unwrap(),
        ServingStatus::Serving as i32
    );

    // A gate attaches over TLS and gets its assignment (the first deployment becomes active).
    let (reports, rx) = tokio::sync::mpsc::channel(4);
    reports
        .send(v1::GateReport {
            kind: Some(v1::gate_report::Kind::Hello(v1::GateHello {
                pipeline: "shop/orders".into(),
                deployment: "orders-v1".into(),
                gate_id: "orders-v1-tm-1".into(),
                assignment_version: None,
                progress: None,
            })),
        })
        .await
        .unwrap();
    let mut commands = GateControlClient::new(channel.clone())
        .attach(ReceiverStream::new(rx))
        .await
        .unwrap()
        .into_inner();
    let assigned = tokio::time::timeout(WAIT, async {
        loop {
            let cmd = commands.message().await.unwrap().unwrap();
            if let Some(v1::gate_command::Kind::Assign(a)) = cmd.kind {
                return a;
            }
        }
    })
    .await
    .unwrap();
    assert_eq!(assigned.role, v1::GateRole::Active as i32);

    // The operator API: start a cutover (waiting for green's readiness), see it, abort it.
    let mut cutover = CutoverClient::new(channel.clone());
    let started = cutover
        .start_cutover(v1::StartCutoverRequest {
            pipeline: "shop/orders".into(),
            candidate: "orders-v2".into(),
            when: v1::When::Ready as i32,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .status
        .unwrap();
    assert_eq!(started.candidate, "orders-v2");
    let status = cutover
        .get_pipeline(v1::GetPipelineRequest {
            pipeline: "shop/orders".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(status.active, "orders-v1");
    assert_eq!(status.candidate, "orders-v2");
    assert!(status.gates.iter().any(|g| g.connected));
    let mut watch = cutover
        .watch_pipeline(v1::WatchPipelineRequest {
            pipeline: "shop/orders".into(),
        })
        .await
        .unwrap()
        .into_inner();
    tokio::time::timeout(WAIT, watch.message())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    let aborted = cutover
        .abort_cutover(v1::AbortCutoverRequest {
            pipeline: "shop/orders".into(),
            reason: "over TLS".into(),
        })
        .await
        .unwrap()
        .into_inner()
        .status
        .unwrap();
    assert_eq!(aborted.candidate, "");

    // Plaintext against the TLS listener: refused.
    let plain = async {
        let channel = Channel::from_shared(format!("http://{}", server.grpc))
            .unwrap()
            .connect()
            .await
            .map_err(|e| e.to_string())?;
        health(channel).await.map_err(|e| e.to_string())
    };
    let err = tokio::time::timeout(WAIT, plain)
        .await
        .unwrap()
        .unwrap_err();
    assert!(!err.is_empty());
    // Another CA: refused by the client, in the handshake.
    let stranger = TestPki::new("another CA");
    let err = tls_channel(server.grpc, &[&stranger.ca_der])
        .await
        .unwrap_err();
    let err = error_chain(&err);
    assert!(err.contains("UnknownIssuer"), "{err}");
    // gRPC is HTTP/2: the listener agrees on `h2` and on nothing else.
    let (_, alpn) = handshake(server.grpc, &[&pki.ca_der], b"h2").await.unwrap();
    assert_eq!(alpn.as_deref(), Some(&b"h2"[..]));
    let err = handshake(server.grpc, &[&pki.ca_der], b"http/1.1")
        .await
        .unwrap_err();
    assert!(err.contains("NoApplicationProtocol"), "{err}");

    // After all that, the same listener still serves, and so does the webhook on its own ALPN.
    assert_eq!(
        health(tls_channel(server.grpc, &[&pki.ca_der]).await.unwrap())
            .await
            .unwrap(),
        ServingStatus::Serving as i32
    );
    let webhook = Client::new(server.webhook, &[&pki.ca_der]);
    let x = webhook
        .request("GET", "/healthz", Vec::new())
        .await
        .unwrap();
    assert_eq!(x.status, http::StatusCode::OK);
    drop((reports, commands, watch));
    server.stop().await.unwrap();
}

#[tokio::test]
async fn a_renewed_grpc_certificate_is_served_to_new_connections() {
    let dir = tempfile::tempdir().unwrap();
    let secret = tempfile::tempdir().unwrap();
    let (a, b) = (TestPki::new("CA A"), TestPki::new("CA B"));
    let mut volume = SecretVolume::new(secret.path(), &a);
    let (cert, key) = (secret.path().join("tls.crt"), secret.path().join("tls.key"));
    let server = TestServer::start(
        dir.path(),
        &cert,
        &key,
        &tls_flags(cert.to_str().unwrap(), key.to_str().unwrap()),
    )
    .await;
    let both = [&a.ca_der, &b.ca_der];
    assert_eq!(
        handshake(server.grpc, &both, b"h2").await.unwrap().0,
        a.cert_der
    );
    // A connection made under A (as a sidecar's long-lived control stream).
    let before = tls_channel(server.grpc, &[&a.ca_der]).await.unwrap();
    assert!(tls_channel(server.grpc, &[&b.ca_der]).await.is_err());

    volume.update(b.cert_pem.as_bytes(), b.key_pem.as_bytes());
    let deadline = tokio::time::Instant::now() + WAIT;
    while handshake(server.grpc, &both, b"h2").await.unwrap().0 != b.cert_der {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the renewed gRPC certificate was not served within {WAIT:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // New connections trust B only now; the one opened under A goes on.
    let after = tls_channel(server.grpc, &[&b.ca_der]).await.unwrap();
    assert_eq!(health(after).await.unwrap(), ServingStatus::Serving as i32);
    assert_eq!(health(before).await.unwrap(), ServingStatus::Serving as i32);

    // A broken replacement is ignored: B stays in service.
    volume.update(b"-----BEGIN CERTIFICATE-----\nnope\n", b.key_pem.as_bytes());
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let m = server.metrics().await;
        if metric(
            &m,
            "sluice_grpc_certificate_reloads_total{result=\"failed\"}",
        ) >= 1.0
        {
            assert_eq!(
                metric(
                    &m,
                    "sluice_grpc_certificate_reloads_total{result=\"loaded\"}"
                ),
                1.0
            );
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no failed reload counted: {m}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(
        handshake(server.grpc, &both, b"h2").await.unwrap().0,
        b.cert_der
    );
    server.stop().await.unwrap();
}

fn coordinator(args: &[&str]) -> (bool, String) {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_coordinator"))
        .args(args)
        .env("RUST_LOG", "error")
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[tokio::test]
async fn broken_grpc_tls_settings_stop_the_coordinator_before_it_binds() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state.json");
    let pki = TestPki::new("CA");
    let (cert, key) = pki.write(dir.path());
    let (cert, key) = (cert.to_str().unwrap(), key.to_str().unwrap());
    // The gRPC port is taken: a coordinator that bound before checking its certificate would
    // report that instead.
    let taken = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let listen = taken.local_addr().unwrap().to_string();
    let base = ["--state-file", state.to_str().unwrap(), "--listen", &listen];
    let with = |more: &[&str]| {
        let mut v = base.to_vec();
        v.extend_from_slice(more);
        coordinator(&v)
    };

    let (ok, err) = with(&["--grpc-tls-cert", cert]);
    assert!(!ok);
    assert!(
        err.contains("--grpc-tls-cert needs --grpc-tls-key: give both"),
        "{err}"
    );
    let (ok, err) = with(&["--grpc-tls-key", key]);
    assert!(!ok);
    assert!(
        err.contains("--grpc-tls-key needs --grpc-tls-cert"),
        "{err}"
    );
    let (ok, err) = with(&[
        "--grpc-tls-cert",
        cert,
        "--grpc-tls-key",
        "/nonexistent/tls.key",
    ]);
    assert!(!ok);
    assert!(
        err.contains("--grpc-tls-key /nonexistent/tls.key is not a readable file"),
        "{err}"
    );

    // The key of another certificate: named, never shown.
    let other = TestPki::new("other");
    let other_key = dir.path().join("other.key");
    std::fs::write(&other_key, &other.key_pem).unwrap();
    let (ok, err) = with(&[
        "--grpc-tls-cert",
        cert,
        "--grpc-tls-key",
        other_key.to_str().unwrap(),
    ]);
    assert!(!ok);
    assert!(
        err.contains("cannot load the gRPC TLS certificate"),
        "{err}"
    );
    assert!(
        err.contains("other.key") && err.contains("tls.crt"),
        "{err}"
    );
    assert!(
        !err.contains("PRIVATE KEY"),
        "key material in an error: {err}"
    );
    let garbage = dir.path().join("garbage.crt");
    std::fs::write(&garbage, "not a certificate").unwrap();
    let (ok, err) = with(&[
        "--grpc-tls-cert",
        garbage.to_str().unwrap(),
        "--grpc-tls-key",
        key,
    ]);
    assert!(!ok);
    assert!(err.contains("holds no PEM certificate"), "{err}");
    for (_, err) in [
        with(&["--grpc-tls-cert", cert]),
        with(&[
            "--grpc-tls-cert",
            cert,
            "--grpc-tls-key",
            other_key.to_str().unwrap(),
        ]),
    ] {
        assert!(
            !err.contains("cannot listen"),
            "bound before checking: {err}"
        );
    }
    assert!(
        !state.exists(),
        "the certificate is checked before the state"
    );
    drop(taken);
}

#[test]
fn the_sidecar_ca_configmap_needs_https_and_a_valid_name() {
    let dir = tempfile::tempdir().unwrap();
    let pki = TestPki::new("CA");
    let (cert, key) = pki.write(dir.path());
    let base = [
        "coordinator",
        "--webhook-listen",
        "127.0.0.1:0",
        "--webhook-cert",
        cert.to_str().unwrap(),
        "--webhook-key",
        key.to_str().unwrap(),
        "--sidecar-image",
        "i:1",
    ];
    let parse = |more: &[&str]| {
        let mut v = base.to_vec();
        v.extend_from_slice(more);
        <sluice_coordinator::Config as clap::Parser>::try_parse_from(v).unwrap()
    };
    let https = "https://sluice-coordinator.sluice.svc:7070";
    let c = parse(&[
        "--sidecar-coordinator",
        https,
        "--sidecar-ca-configmap",
        "sluice-ca",
    ]);
    c.validate().unwrap();
    let injection = c.injection().unwrap().unwrap();
    assert_eq!(injection.coordinator, https);
    assert_eq!(
        injection.coordinator_ca_configmap.as_deref(),
        Some("sluice-ca")
    );
    // https without a CA ConfigMap: the sidecars use their system roots.
    parse(&["--sidecar-coordinator", https]).validate().unwrap();

    let err = parse(&["--sidecar-ca-configmap", "sluice-ca"])
        .validate()
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("--sidecar-ca-configmap needs an https:// --sidecar-coordinator"),
        "{err}"
    );
    let err = parse(&[
        "--sidecar-coordinator",
        https,
        "--sidecar-ca-configmap",
        "Sluice_CA",
    ])
    .validate()
    .unwrap_err()
    .to_string();
    assert!(err.contains("is not a Kubernetes ConfigMap name"), "{err}");
}

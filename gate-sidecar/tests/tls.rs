//! TLS to the coordinator, for real: the real coordinator serves gRPC over TLS (certificates
//! made at test time) on 127.0.0.1, and the real sidecar attaches with `--coordinator
//! https://...` and `--coordinator-ca`. A sidecar that does not trust the coordinator's CA, or
//! that dials TLS without `https://`, never gets an assignment.

mod common;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::Parser as _;
use common::{DEPLOYMENT, GATE_ID, PATIENCE, PIPELINE, Sidecar, init_tracing};
use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair};
use sluice_proto::v1::cutover_client::CutoverClient;
use sluice_proto::v1::{ListPipelinesRequest, PipelineStatus};
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tonic::transport::{Certificate, Channel, ClientTlsConfig};

/// The name on the coordinator's certificate (its Service in Kubernetes).
const SERVER_NAME: &str = "sluice-coordinator.sluice.svc";

/// A CA (PEM) and a server certificate and key it signed for [`SERVER_NAME`], written to `dir`.
struct Pki {
    ca: PathBuf,
    cert: PathBuf,
    key: PathBuf,
    ca_pem: String,
}

fn pki(dir: &Path, name: &str) -> Pki {
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params.distinguished_name.push(DnType::CommonName, name);
    let ca = CertifiedIssuer::self_signed(ca_params, KeyPair::generate().unwrap()).unwrap();
    let key = KeyPair::generate().unwrap();
    let cert = CertificateParams::new(vec![SERVER_NAME.to_owned()])
        .unwrap()
        .signed_by(&key, &ca)
        .unwrap();
    let pki = Pki {
        ca: dir.join(format!("{name}.ca.crt")),
        cert: dir.join(format!("{name}.tls.crt")),
        key: dir.join(format!("{name}.tls.key")),
        ca_pem: ca.pem(),
    };
    std::fs::write(&pki.ca, &pki.ca_pem).unwrap();
    std::fs::write(&pki.cert, cert.pem()).unwrap();
    std::fs::write(&pki.key, key.serialize_pem()).unwrap();
    pki
}

/// The real coordinator, gRPC over TLS with `pki`'s certificate.
struct Coordinator {
    addr: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    task: JoinHandle<Result<(), sluice_coordinator::Error>>,
}

impl Coordinator {
    async fn start(dir: &Path, pki: &Pki) -> Self {
        let state = dir.join("state.json");
        let config = sluice_coordinator::Config::try_parse_from([
            "coordinator",
            "--listen",
            "127.0.0.1:0",
            "--state-file",
            state.to_str().unwrap(),
            "--grpc-tls-cert",
            pki.cert.to_str().unwrap(),
            "--grpc-tls-key",
            pki.key.to_str().unwrap(),
            "--tick-interval",
            "10ms",
        ])
        .unwrap();
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(sluice_coordinator::run(config, listener, async {
            let _ = stopped.await;
        }));
        Self {
            addr,
            stop: Some(stop),
            task,
        }
    }

    /// A Cutover client over TLS, trusting `ca_pem`.
    /// The pipelines it knows, asked over TLS trusting `ca_pem`.
    async fn pipelines(&self, ca_pem: &str) -> Vec<PipelineStatus> {
        let tls = ClientTlsConfig::new()
            .ca_certificate(Certificate::from_pem(ca_pem))
            .domain_name(SERVER_NAME);
        let channel = Channel::from_shared(format!("https://{}", self.addr))
            .unwrap()
            .tls_config(tls)
            .unwrap()
            .connect()
            .await
            .unwrap();
        CutoverClient::new(channel)
            .list_pipelines(ListPipelinesRequest {})
            .await
            .unwrap()
            .into_inner()
            .pipelines
    }

    async fn stop(mut self) {
        let _ = self.stop.take().unwrap().send(());
        tokio::time::timeout(PATIENCE, self.task)
            .await
            .expect("coordinator stops in time")
            .unwrap()
            .unwrap();
    }
}

/// Asserts the sidecar stays unready (no assignment) for `time`.
async fn stays_unready(sidecar: &Sidecar, time: Duration) {
    let deadline = tokio::time::Instant::now() + time;
    while tokio::time::Instant::now() < deadline {
        let (status, body) = sidecar.readyz().await;
        assert_eq!(status, 503, "{body}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn a_sidecar_attaches_over_tls_with_its_ca_file() {
    init_tracing();
    let dir = tempfile::tempdir().unwrap();
    let pki = pki(dir.path(), "sluice-ca");
    let coordinator = Coordinator::start(dir.path(), &pki).await;
    // Dialled by address, verified against the Service name on the certificate.
    let sidecar = Sidecar::start(
        &format!("https://{}", coordinator.addr),
        &[
            "--coordinator-ca",
            pki.ca.to_str().unwrap(),
            "--coordinator-tls-server-name",
            SERVER_NAME,
        ],
    )
    .await;
    // Ready = the coordinator gave the gate its role (the first deployment becomes active).
    let body = sidecar.wait_ready().await;
    assert!(body.contains("version"), "{body}");

    // The coordinator sees the gate attached, over the same TLS listener.
    let pipelines = coordinator.pipelines(&pki.ca_pem).await;
    assert_eq!(pipelines.len(), 1);
    let p = &pipelines[0];
    assert_eq!(p.pipeline, PIPELINE);
    assert_eq!(p.active, DEPLOYMENT);
    assert_eq!(p.gates.len(), 1);
    assert_eq!(p.gates[0].gate_id, GATE_ID);
    assert!(p.gates[0].connected);

    sidecar.stop().await.unwrap();
    coordinator.stop().await;
}

#[tokio::test]
async fn a_sidecar_that_does_not_trust_the_coordinator_never_attaches() {
    init_tracing();
    let dir = tempfile::tempdir().unwrap();
    let pki_real = pki(dir.path(), "real-ca");
    let other = pki(dir.path(), "other-ca");
    let coordinator = Coordinator::start(dir.path(), &pki_real).await;
    let url = format!("https://{}", coordinator.addr);
    let name = ["--coordinator-tls-server-name", SERVER_NAME];

    // Another CA: the handshake fails at every attempt; the gate stays fail-closed.
    let mut args = vec!["--coordinator-ca", other.ca.to_str().unwrap()];
    args.extend_from_slice(&name);
    let wrong_ca = Sidecar::start(&url, &args).await;
    // The right CA but the certificate's name is not the address dialled.
    let wrong_name =
        Sidecar::start(&url, &["--coordinator-ca", pki_real.ca.to_str().unwrap()]).await;
    // Plaintext against the TLS listener.
    let plaintext = Sidecar::start(&format!("http://{}", coordinator.addr), &[]).await;
    // Several reconnect attempts (backoff capped at 200 ms) in this time.
    stays_unready(&wrong_ca, Duration::from_millis(1500)).await;
    stays_unready(&wrong_name, Duration::from_millis(100)).await;
    stays_unready(&plaintext, Duration::from_millis(100)).await;

    let pipelines = coordinator.pipelines(&pki_real.ca_pem).await;
    assert!(pipelines.is_empty(), "{pipelines:?}");

    // The same coordinator still serves a sidecar that trusts it.
    let good = Sidecar::start(
        &url,
        &[
            "--coordinator-ca",
            pki_real.ca.to_str().unwrap(),
            "--coordinator-tls-server-name",
            SERVER_NAME,
        ],
    )
    .await;
    good.wait_ready().await;

    for s in [wrong_ca, wrong_name, plaintext, good] {
        s.stop().await.unwrap();
    }
    coordinator.stop().await;
}

#[tokio::test]
async fn bad_tls_settings_stop_the_sidecar_before_it_binds_anything() {
    let dir = tempfile::tempdir().unwrap();
    let garbage = dir.path().join("garbage.crt");
    std::fs::write(&garbage, "not a certificate\n").unwrap();
    let socket = dir.path().join("gate.sock");
    let base = [
        "gate-sidecar",
        "--pipeline",
        PIPELINE,
        "--deployment",
        DEPLOYMENT,
        "--socket",
        socket.to_str().unwrap(),
    ];
    for (extra, expected) in [
        (
            vec![
                "--coordinator",
                "https://coordinator:7070",
                "--coordinator-ca",
                "/nonexistent/ca.crt",
            ],
            "cannot read --coordinator-ca /nonexistent/ca.crt",
        ),
        (
            vec![
                "--coordinator",
                "https://coordinator:7070",
                "--coordinator-ca",
                garbage.to_str().unwrap(),
            ],
            "holds no PEM certificate",
        ),
        (
            vec!["--coordinator-ca", garbage.to_str().unwrap()],
            "needs an https:// --coordinator",
        ),
    ] {
        let mut args = base.to_vec();
        args.extend_from_slice(&extra);
        let config = sluice_gate_sidecar::Config::try_parse_from(args).unwrap();
        let err = sluice_gate_sidecar::Listeners::bind(&config)
            .await
            .unwrap_err();
        let text = format!("{err}: {}", std::error::Error::source(&err).unwrap());
        assert!(text.contains(expected), "{extra:?}: {text}");
        assert!(!socket.exists(), "nothing is bound for a bad configuration");
    }

    // The binary says the same, before anything else, and exits with clap's code 2.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_gate-sidecar"))
        .args(&base[1..])
        .args([
            "--coordinator",
            "https://coordinator:7070",
            "--coordinator-ca",
            garbage.to_str().unwrap(),
        ])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("holds no PEM certificate"), "{stderr}");
    assert!(!socket.exists());
}

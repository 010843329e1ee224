//! Certificate hot reload, with the files swapped the way the kubelet updates a Secret volume:
//! new files in a fresh directory, then a symlink renamed over `..data`.

use std::path::Path;
use std::time::Duration;

use http::StatusCode;
use rustls::pki_types::pem::PemObject;

use crate::common::{Client, TestPki, TestServer, WAIT, metric};

/// A Secret volume as the kubelet lays it out: `tls.crt -> ..data/tls.crt`,
/// `..data -> ..<version>`.
pub(crate) struct SecretVolume<'a> {
    dir: &'a Path,
    version: u32,
}

impl<'a> SecretVolume<'a> {
    pub(crate) fn new(dir: &'a Path, pki: &TestPki) -> Self {
        let mut v = Self { dir, version: 0 };
        v.update(pki.cert_pem.as_bytes(), pki.key_pem.as_bytes());
        for f in ["tls.crt", "tls.key"] {
            std::os::unix::fs::symlink(format!("..data/{f}"), dir.join(f)).unwrap();
        }
        v
    }

    /// Writes a new version and swaps `..data` to it atomically.
    pub(crate) fn update(&mut self, cert: &[u8], key: &[u8]) {
        self.version += 1;
        let name = format!("..2026_11_20_10_00_00.{:04}", self.version);
        let version_dir = self.dir.join(&name);
        std::fs::create_dir(&version_dir).unwrap();
        std::fs::write(version_dir.join("tls.crt"), cert).unwrap();
        std::fs::write(version_dir.join("tls.key"), key).unwrap();
        let tmp = self.dir.join("..data_tmp");
        std::os::unix::fs::symlink(&name, &tmp).unwrap();
        std::fs::rename(&tmp, self.dir.join("..data")).unwrap();
    }
}

/// Polls new connections until the server presents `want` (or fails after [`WAIT`]).
async fn wait_for_cert(client: &Client, want: &rustls::pki_types::CertificateDer<'_>) {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let x = client.request("GET", "/healthz", Vec::new()).await.unwrap();
        assert_eq!(x.status, StatusCode::OK);
        if x.peer.first() == Some(&want.clone().into_owned()) {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the new certificate was not served within {WAIT:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn a_renewed_certificate_is_served_and_a_broken_one_is_ignored() {
    let dir = tempfile::tempdir().unwrap();
    let secret = tempfile::tempdir().unwrap();
    let (a, b) = (TestPki::new("CA A"), TestPki::new("CA B"));
    let mut volume = SecretVolume::new(secret.path(), &a);
    let server = TestServer::start(
        dir.path(),
        &secret.path().join("tls.crt"),
        &secret.path().join("tls.key"),
        &[],
    )
    .await;
    // The client trusts both CAs, so what it sees is decided by the server alone.
    let client = Client::new(server.webhook, &[&a.ca_der, &b.ca_der]);
    let only_b = Client::new(server.webhook, &[&b.ca_der]);

    let first = client.request("GET", "/healthz", Vec::new()).await.unwrap();
    assert_eq!(first.peer[0], a.cert_der);
    assert!(only_b.request("GET", "/healthz", Vec::new()).await.is_err());

    // Renewal to B (another CA and key): new connections get B.
    volume.update(b.cert_pem.as_bytes(), b.key_pem.as_bytes());
    wait_for_cert(&client, &b.cert_der).await;
    assert_eq!(
        only_b
            .request("GET", "/healthz", Vec::new())
            .await
            .unwrap()
            .status,
        StatusCode::OK
    );

    // A broken replacement (B's certificate with A's key, then garbage): B stays in service.
    volume.update(b.cert_pem.as_bytes(), a.key_pem.as_bytes());
    tokio::time::sleep(Duration::from_millis(400)).await;
    volume.update(b"-----BEGIN CERTIFICATE-----\nnope\n", b"not a key");
    tokio::time::sleep(Duration::from_millis(400)).await;
    let x = only_b.request("GET", "/healthz", Vec::new()).await.unwrap();
    assert_eq!(x.peer[0], b.cert_der);

    let m = server.metrics().await;
    assert_eq!(
        metric(
            &m,
            "sluice_webhook_certificate_reloads_total{result=\"loaded\"}"
        ),
        1.0
    );
    // Each broken version is reported once, not at every poll.
    assert_eq!(
        metric(
            &m,
            "sluice_webhook_certificate_reloads_total{result=\"failed\"}"
        ),
        2.0
    );

    // And a good one after that is picked up again.
    volume.update(a.cert_pem.as_bytes(), a.key_pem.as_bytes());
    wait_for_cert(&client, &a.cert_der).await;
    server.stop().await.unwrap();
}

#[tokio::test]
async fn the_certificate_script_makes_what_the_webhook_and_grpc_serve() {
    let out = tempfile::tempdir().unwrap();
    let status = std::process::Command::new("bash")
        .arg(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../scripts/webhook-certs.sh"
        ))
        .args(["--no-kubectl", "--days", "2", "--out"])
        .arg(out.path())
        .output()
        .unwrap();
    assert!(
        status.status.success(),
        "{}",
        String::from_utf8_lossy(&status.stderr)
    );
    let ca_pem = std::fs::read(out.path().join("ca.crt")).unwrap();
    let ca = rustls::pki_types::CertificateDer::pem_slice_iter(&ca_pem)
        .next()
        .unwrap()
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = (out.path().join("tls.crt"), out.path().join("tls.key"));
    // Both listeners serve it, as in manifests/base.
    let server = TestServer::start(
        dir.path(),
        &cert,
        &key,
        &[
            "--grpc-tls-cert",
            cert.to_str().unwrap(),
            "--grpc-tls-key",
            key.to_str().unwrap(),
        ],
    )
    .await;
    // What a sidecar does with SLUICE_COORDINATOR_CA = this ca.crt: gRPC over TLS, checking
    // the Service name.
    let channel = crate::grpc_tls::tls_channel(server.grpc, &[&ca])
        .await
        .unwrap();
    assert_eq!(
        crate::grpc_tls::health(channel).await.unwrap(),
        tonic_health::pb::health_check_response::ServingStatus::Serving as i32
    );
    // The client checks the name the API server uses (sluice-coordinator.sluice.svc).
    let client = Client::new(server.webhook, &[&ca]);
    let x = client
        .review(&crate::common::fixture("taskmanager.json"))
        .await;
    assert_eq!(x.status, StatusCode::OK);
    let review: serde_json::Value = serde_json::from_slice(&x.body).unwrap();
    assert!(review["response"]["patch"].is_string(), "{review}");
    server.stop().await.unwrap();
}

//! Test harness: certificates, a coordinator with the webhook and metrics on 127.0.0.1:0, and
//! an HTTPS client.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use clap::Parser;
use http::{Request, StatusCode, header};
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair, KeyUsagePurpose,
};
use rustls::pki_types::{CertificateDer, ServerName};
use rustls::{ClientConfig, RootCertStore};
use sluice_coordinator::{Config, Coordinator, Listeners};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tokio_rustls::TlsConnector;

/// How long any single expectation may take.
pub const WAIT: Duration = Duration::from_secs(10);
/// The name the API server uses to reach the webhook (`<service>.<namespace>.svc`).
pub const SERVER_NAME: &str = "sluice-coordinator.sluice.svc";
/// The sidecars' view of the coordinator, as in manifests/base: gRPC over TLS.
pub const SIDECAR_COORDINATOR: &str = "https://sluice-coordinator.sluice.svc:7070";
/// The ConfigMap (in the pod's namespace) the injected sidecar reads the CA from.
pub const CA_CONFIGMAP: &str = "sluice-ca";
/// The sidecar image the test coordinator injects.
pub const IMAGE: &str = "registry.example.com/sluice/gate-sidecar:0.1.0";

/// A CA and a server certificate it signed, in PEM.
pub struct TestPki {
    pub ca_pem: String,
    pub ca_der: CertificateDer<'static>,
    pub cert_pem: String,
    pub key_pem: String,
    pub cert_der: CertificateDer<'static>,
}

impl TestPki {
    /// A new CA named `ca_name` and a server certificate for [`SERVER_NAME`].
    pub fn new(ca_name: &str) -> Self {
        Self::for_names(ca_name, &[SERVER_NAME, "sluice-coordinator"])
    }

    /// A new CA named `ca_name` and a server certificate for `names` (DNS names or IPs).
    pub fn for_names(ca_name: &str, names: &[&str]) -> Self {
        let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca_params
            .distinguished_name
            .push(DnType::CommonName, ca_name);
        ca_params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let ca = CertifiedIssuer::self_signed(ca_params, KeyPair::generate().unwrap()).unwrap();
        let key = KeyPair::generate().unwrap();
        let names: Vec<String> = names.iter().map(|n| (*n).to_owned()).collect();
        let mut params = CertificateParams::new(names.clone()).unwrap();
        params
            .distinguished_name
            .push(DnType::CommonName, names[0].as_str());
        let cert = params.signed_by(&key, &ca).unwrap();
        Self {
            ca_pem: ca.pem(),
            ca_der: ca.der().clone(),
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
            cert_der: cert.der().clone(),
        }
    }

    /// Writes `tls.crt` and `tls.key` into `dir`.
    pub fn write(&self, dir: &Path) -> (PathBuf, PathBuf) {
        let (cert, key) = (dir.join("tls.crt"), dir.join("tls.key"));
        std::fs::write(&cert, &self.cert_pem).unwrap();
        std::fs::write(&key, &self.key_pem).unwrap();
        (cert, key)
    }
}

/// A coordinator with the webhook and metrics, in this process.
pub struct TestServer {
    pub webhook: SocketAddr,
    pub metrics: SocketAddr,
    pub grpc: SocketAddr,
    shutdown: Option<oneshot::Sender<()>>,
    task: JoinHandle<Result<(), sluice_coordinator::Error>>,
}

impl TestServer {
    /// Starts a coordinator whose webhook serves `cert`/`key`; `extra` are more flags.
    pub async fn start(dir: &Path, cert: &Path, key: &Path, extra: &[&str]) -> Self {
        let state = dir.join("state.json");
        let mut args = vec![
            "coordinator",
            "--listen",
            "127.0.0.1:0",
            "--state-file",
            state.to_str().unwrap(),
            "--webhook-listen",
            "127.0.0.1:0",
            "--webhook-cert",
            cert.to_str().unwrap(),
            "--webhook-key",
            key.to_str().unwrap(),
            "--webhook-reload-interval",
            "100ms",
            "--metrics-listen",
            "127.0.0.1:0",
            "--sidecar-image",
            IMAGE,
        ];
        args.extend_from_slice(extra);
        let config = Config::try_parse_from(args).unwrap();
        let coordinator = Coordinator::open(config).await.unwrap();
        let bind = || TcpListener::bind("127.0.0.1:0");
        let (grpc, webhook, metrics) = (
            bind().await.unwrap(),
            bind().await.unwrap(),
            bind().await.unwrap(),
        );
        let addrs = (
            grpc.local_addr().unwrap(),
            webhook.local_addr().unwrap(),
            metrics.local_addr().unwrap(),
        );
        let (tx, rx) = oneshot::channel::<()>();
        let listeners = Listeners {
            grpc,
            webhook: Some(webhook),
            metrics: Some(metrics),
        };
        let task = tokio::spawn(coordinator.serve_with(listeners, async move {
            let _ = rx.await;
        }));
        Self {
            grpc: addrs.0,
            webhook: addrs.1,
            metrics: addrs.2,
            shutdown: Some(tx),
            task,
        }
    }

    /// [`TestServer::start`] with the sidecars' view of the coordinator as in manifests/base:
    /// [`SIDECAR_COORDINATOR`] over TLS, the CA from ConfigMap [`CA_CONFIGMAP`].
    pub async fn start_injecting(dir: &Path, cert: &Path, key: &Path) -> Self {
        let flags = [
            "--sidecar-coordinator",
            SIDECAR_COORDINATOR,
            "--sidecar-ca-configmap",
            CA_CONFIGMAP,
        ];
        Self::start(dir, cert, key, &flags).await
    }

    /// Shuts the coordinator down and returns what `serve_with` returned.
    pub async fn stop(mut self) -> Result<(), sluice_coordinator::Error> {
        let _ = self.shutdown.take().unwrap().send(());
        tokio::time::timeout(WAIT, &mut self.task)
            .await
            .expect("coordinator did not stop in time")
            .unwrap()
    }

    /// The metrics text.
    pub async fn metrics(&self) -> String {
        let tcp = TcpStream::connect(self.metrics).await.unwrap();
        let (status, body) = send(tcp, "GET", "/metrics", Vec::new()).await.unwrap();
        assert_eq!(status, StatusCode::OK);
        String::from_utf8(body.to_vec()).unwrap()
    }
}

/// The value of one metric series in a metrics text.
pub fn metric(text: &str, series: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or_else(|| panic!("no series {series} in:\n{text}"))
}

/// An HTTPS client trusting `roots`, as the API server trusts the `caBundle`.
#[derive(Clone)]
pub struct Client {
    pub addr: SocketAddr,
    connector: TlsConnector,
}

/// What one HTTPS exchange returned.
pub struct Exchange {
    pub status: StatusCode,
    pub body: Bytes,
    /// The server's certificate chain as presented in the handshake.
    pub peer: Vec<CertificateDer<'static>>,
}

impl Client {
    pub fn new(addr: SocketAddr, roots: &[&CertificateDer<'static>]) -> Self {
        let mut store = RootCertStore::empty();
        for r in roots {
            store.add((*r).clone()).unwrap();
        }
        let config =
            ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
                .with_safe_default_protocol_versions()
                .unwrap()
                .with_root_certificates(store)
                .with_no_client_auth();
        // Like the API server's Go client (no session cache): a full handshake every time.
        let mut config = config;
        config.resumption = rustls::client::Resumption::disabled();
        Self {
            addr,
            connector: TlsConnector::from(Arc::new(config)),
        }
    }

    /// One request on a new connection (so each sees the certificate in service now).
    pub async fn request(
        &self,
        method: &str,
        path: &str,
        body: Vec<u8>,
    ) -> Result<Exchange, String> {
        let tcp = TcpStream::connect(self.addr)
            .await
            .map_err(|e| e.to_string())?;
        let name = ServerName::try_from(SERVER_NAME).unwrap();
        let tls = tokio::time::timeout(WAIT, self.connector.connect(name, tcp))
            .await
            .map_err(|_| "handshake timed out".to_owned())?
            .map_err(|e| format!("TLS handshake failed: {e}"))?;
        let peer = tls
            .get_ref()
            .1
            .peer_certificates()
            .unwrap_or_default()
            .iter()
            .map(|c| c.clone().into_owned())
            .collect();
        let (status, body) = send(tls, method, path, body).await?;
        Ok(Exchange { status, body, peer })
    }

    /// POSTs a review body to `/mutate`.
    pub async fn review(&self, body: &[u8]) -> Exchange {
        self.request("POST", "/mutate?timeout=5s", body.to_vec())
            .await
            .unwrap()
    }
}

/// One HTTP/1.1 request over `io`, to [`SERVER_NAME`].
pub async fn send<IO>(
    io: IO,
    method: &str,
    path: &str,
    body: Vec<u8>,
) -> Result<(StatusCode, Bytes), String>
where
    IO: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    send_with(io, method, path, body, SERVER_NAME, None).await
}

/// One HTTP/1.1 JSON request over `io` to `host`, with a bearer token if given.
pub async fn send_with<IO>(
    io: IO,
    method: &str,
    path: &str,
    body: Vec<u8>,
    host: &str,
    bearer: Option<&str>,
) -> Result<(StatusCode, Bytes), String>
where
    IO: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(io))
        .await
        .map_err(|e| e.to_string())?;
    tokio::spawn(conn);
    let mut req = Request::builder()
        .method(method)
        .uri(path)
        .header(header::HOST, host)
        .header(header::CONTENT_TYPE, "application/json")
        .header(header::ACCEPT, "application/json, */*");
    if let Some(token) = bearer {
        req = req.header(header::AUTHORIZATION, format!("Bearer {token}"));
    }
    let req = req.body(Full::new(Bytes::from(body))).unwrap();
    let resp = tokio::time::timeout(WAIT, sender.send_request(req))
        .await
        .map_err(|_| "no response in time".to_owned())?
        .map_err(|e| e.to_string())?;
    let status = resp.status();
    let body = resp
        .into_body()
        .collect()
        .await
        .map_err(|e| e.to_string())?
        .to_bytes();
    Ok((status, body))
}

/// A fixture file's bytes.
pub fn fixture(name: &str) -> Vec<u8> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/admission")
        .join(name);
    std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

//! The serving certificates of the webhook and of the gRPC listener: loaded from PEM files (a
//! mounted Secret's `tls.crt` and `tls.key`) and reloaded when they change.
//!
//! Kubernetes updates a Secret volume by writing the new files into a fresh directory and
//! renaming a symlink over the old one, so no inotify event on the files themselves can be
//! relied on. [`ReloadingCert::watch`] polls instead: every interval it reads both files and,
//! when their content changed, builds a new [`CertifiedKey`] and swaps it in. New handshakes
//! use the new certificate; open connections keep theirs. A replacement that does not load (a
//! half-written file, a key that does not match the certificate) is logged once and the
//! current certificate stays in service.

use std::collections::hash_map::DefaultHasher;
use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls::{ServerConfig, crypto::ring};
use thiserror::Error;
use tokio_util::sync::CancellationToken;

use crate::metrics::Metrics;

/// Why a certificate and key could not be loaded. One variant per cause; the key's content is
/// never part of a message.
#[derive(Debug, Error)]
pub enum TlsError {
    /// A file could not be read.
    #[error("cannot read {0}")]
    Read(PathBuf, #[source] std::io::Error),
    /// The certificate file has no readable PEM certificate.
    #[error("{0} holds no PEM certificate")]
    NoCertificate(PathBuf),
    /// The certificate file has a malformed PEM section.
    #[error("{0} is not a valid PEM certificate chain")]
    BadCertificate(PathBuf, #[source] rustls::pki_types::pem::Error),
    /// The key file has no readable PEM private key.
    #[error("{0} holds no valid PEM private key (PKCS#8, PKCS#1 or SEC1)")]
    BadKey(PathBuf, #[source] rustls::pki_types::pem::Error),
    /// The key is of an unsupported type, or does not belong to the certificate.
    #[error("the key in {key} cannot be used with the certificate in {cert}")]
    Mismatch {
        /// The certificate file.
        cert: PathBuf,
        /// The key file.
        key: PathBuf,
        /// What rustls said.
        #[source]
        source: rustls::Error,
    },
    /// The TLS configuration could not be built.
    #[error("cannot build the TLS configuration")]
    Config(#[source] rustls::Error),
}

/// The crypto provider of the webhook (ring; chosen explicitly, so nothing depends on a
/// process-wide default being installed).
fn provider() -> Arc<CryptoProvider> {
    Arc::new(ring::default_provider())
}

/// Reads both files. If the certificate changed while they were read (a Secret update swapped
/// them in between), reads again: a certificate and a key from two versions would not match.
fn read_pair(cert: &Path, key: &Path) -> Result<(Vec<u8>, Vec<u8>), TlsError> {
    let read = |p: &Path| std::fs::read(p).map_err(|e| TlsError::Read(p.into(), e));
    let mut cert_pem = read(cert)?;
    for _ in 0..3 {
        let key_pem = read(key)?;
        let again = read(cert)?;
        if again == cert_pem {
            return Ok((cert_pem, key_pem));
        }
        cert_pem = again;
    }
    // Still changing: take what is there; a mismatch is reported and retried at next poll.
    Ok((cert_pem, read(key)?))
}

/// A certificate chain and key, parsed and checked against each other.
fn build(
    cert: &Path,
    cert_pem: &[u8],
    key: &Path,
    key_pem: &[u8],
) -> Result<CertifiedKey, TlsError> {
    let chain = CertificateDer::pem_slice_iter(cert_pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| TlsError::BadCertificate(cert.into(), e))?;
    if chain.is_empty() {
        return Err(TlsError::NoCertificate(cert.into()));
    }
    let private =
        PrivateKeyDer::from_pem_slice(key_pem).map_err(|e| TlsError::BadKey(key.into(), e))?;
    CertifiedKey::from_der(chain, private, &provider()).map_err(|source| TlsError::Mismatch {
        cert: cert.into(),
        key: key.into(),
        source,
    })
}

/// Change detection only (not a security property): a hash of both files' content.
fn fingerprint(cert: &[u8], key: &[u8]) -> u64 {
    let mut h = DefaultHasher::new();
    cert.hash(&mut h);
    key.hash(&mut h);
    h.finish()
}

/// Which listener a certificate serves (for logs and metrics).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CertUse {
    /// The admission webhook (HTTPS, HTTP/1.1).
    Webhook,
    /// The gRPC listener (TLS, HTTP/2).
    Grpc,
}

impl CertUse {
    fn name(self) -> &'static str {
        match self {
            CertUse::Webhook => "webhook",
            CertUse::Grpc => "gRPC",
        }
    }
}

/// ALPN protocol id of HTTP/2, which gRPC runs on (gRPC clients insist on negotiating it).
pub const ALPN_H2: &[u8] = b"h2";
/// ALPN protocol id of HTTP/1.1, which the webhook serves.
pub const ALPN_HTTP1: &[u8] = b"http/1.1";

/// Serves the current certificate to every handshake; swapped by [`ReloadingCert::reload`].
#[derive(Debug)]
pub struct ReloadingCert {
    cert_path: PathBuf,
    key_path: PathBuf,
    current: RwLock<Arc<CertifiedKey>>,
    /// Fingerprint of the files last looked at (loaded or not), so that a broken replacement
    /// is reported once, not at every poll.
    seen: Mutex<u64>,
}

/// What a reload found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reload {
    /// The files did not change.
    Unchanged,
    /// The files changed and the new certificate is in service.
    Loaded,
}

impl ReloadingCert {
    /// Loads the certificate chain and key; fails if they cannot serve.
    pub fn load(cert: impl Into<PathBuf>, key: impl Into<PathBuf>) -> Result<Self, TlsError> {
        let (cert_path, key_path) = (cert.into(), key.into());
        let (cert_pem, key_pem) = read_pair(&cert_path, &key_path)?;
        let certified = build(&cert_path, &cert_pem, &key_path, &key_pem)?;
        Ok(Self {
            current: RwLock::new(Arc::new(certified)),
            seen: Mutex::new(fingerprint(&cert_pem, &key_pem)),
            cert_path,
            key_path,
        })
    }

    fn current(&self) -> Arc<CertifiedKey> {
        // A poisoned lock still holds a valid certificate: keep serving it.
        self.current
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    /// Re-reads the files and swaps the certificate in if they changed and load. An error
    /// leaves the current certificate in service; the same broken content is reported once.
    pub fn reload(&self) -> Result<Reload, TlsError> {
        let (cert_pem, key_pem) = read_pair(&self.cert_path, &self.key_path)?;
        let fingerprint = fingerprint(&cert_pem, &key_pem);
        {
            let mut seen = self
                .seen
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            if *seen == fingerprint {
                return Ok(Reload::Unchanged);
            }
            *seen = fingerprint;
        }
        let certified = build(&self.cert_path, &cert_pem, &self.key_path, &key_pem)?;
        *self
            .current
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Arc::new(certified);
        Ok(Reload::Loaded)
    }

    /// Polls the files every `interval` until `stop`, reloading on change; `cert` says which
    /// listener this certificate serves, for the logs and the metrics.
    pub async fn watch(
        self: Arc<Self>,
        cert: CertUse,
        interval: Duration,
        metrics: Metrics,
        stop: CancellationToken,
    ) {
        let what = cert.name();
        let mut tick = tokio::time::interval(interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tick.tick().await;
        loop {
            tokio::select! {
                () = stop.cancelled() => return,
                _ = tick.tick() => {}
            }
            // Reading two small files; blocking is fine, but not on a runtime worker.
            let this = self.clone();
            let result = tokio::task::spawn_blocking(move || this.reload()).await;
            match result {
                Ok(Ok(Reload::Unchanged)) => {}
                Ok(Ok(Reload::Loaded)) => {
                    metrics.cert_reload(cert, true);
                    tracing::info!(
                        cert = %self.cert_path.display(), key = %self.key_path.display(),
                        "{what} certificate reloaded"
                    );
                }
                Ok(Err(e)) => {
                    metrics.cert_reload(cert, false);
                    tracing::error!(
                        error = %error_chain(&e),
                        "cannot reload the {what} certificate; keeping the current one"
                    );
                }
                Err(e) => tracing::error!(error = %e, "{what} certificate reload task failed"),
            }
        }
    }

    /// A rustls server configuration that serves this certificate to HTTP/1.1 (by ALPN), for
    /// the webhook.
    pub fn server_config(self: &Arc<Self>) -> Result<Arc<ServerConfig>, TlsError> {
        self.server_config_for(ALPN_HTTP1)
    }

    /// A rustls server configuration that serves this certificate to HTTP/2 (ALPN `h2`), for
    /// gRPC.
    pub fn grpc_server_config(self: &Arc<Self>) -> Result<Arc<ServerConfig>, TlsError> {
        self.server_config_for(ALPN_H2)
    }

    fn server_config_for(self: &Arc<Self>, alpn: &[u8]) -> Result<Arc<ServerConfig>, TlsError> {
        let mut config = ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .map_err(TlsError::Config)?
            .with_no_client_auth()
            .with_cert_resolver(self.clone());
        // One protocol only: a client offering ALPN without it is refused in the handshake
        // (rustls' `no_application_protocol`) instead of failing later at the HTTP layer.
        config.alpn_protocols = vec![alpn.to_vec()];
        // No session resumption: a resumed session skips the certificate, so a client could
        // go on seeing a replaced one. A full handshake per connection costs little here
        // (the API server keeps its connections alive).
        config.session_storage = Arc::new(rustls::server::NoServerSessionStorage {});
        config.send_tls13_tickets = 0;
        Ok(Arc::new(config))
    }
}

impl ResolvesServerCert for ReloadingCert {
    fn resolve(&self, _client_hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.current())
    }
}

/// Longest a client may take to complete the TLS handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// The server side of one TLS handshake, bounded by [`HANDSHAKE_TIMEOUT`]; a failure (typically
/// a plaintext client or one that does not trust the certificate) is logged as one line under
/// `listener` and yields `None`.
pub(crate) async fn handshake(
    listener: &str,
    tls: &tokio_rustls::TlsAcceptor,
    tcp: tokio::net::TcpStream,
    peer: std::net::SocketAddr,
) -> Option<tokio_rustls::server::TlsStream<tokio::net::TcpStream>> {
    match tokio::time::timeout(HANDSHAKE_TIMEOUT, tls.accept(tcp)).await {
        Ok(Ok(stream)) => Some(stream),
        Ok(Err(e)) => {
            tracing::warn!(%peer, error = %e, "{listener}: TLS handshake failed");
            None
        }
        Err(_) => {
            tracing::warn!(%peer, "{listener}: TLS handshake timed out");
            None
        }
    }
}

/// `error: cause: cause` on one line.
pub(crate) fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut source = e.source();
    while let Some(cause) = source {
        s.push_str(": ");
        s.push_str(&cause.to_string());
        source = cause.source();
    }
    s
}

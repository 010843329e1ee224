//! Connections to the real cluster: TCP, then TLS (`security.protocol=ssl|sasl_ssl`), then SASL
//! (`sasl_plaintext|sasl_ssl`: PLAIN, SCRAM-SHA-256 or SCRAM-SHA-512 with the sidecar's own
//! credentials), read from the same librdkafka options as the Kafka sink (`--kafka-option`,
//! `--kafka-options-file`), so the front reaches the cluster the way the sink does.
//!
//! The job talks plaintext to the front on loopback and never authenticates: the credentials
//! stay in the sidecar (mounted from a Secret), and a job's own SASL requests are not served
//! (they are not in the ApiVersions answer). A session the broker limits
//! (`connections.max.reauth.ms`) is ended before it runs out and opened again, between requests.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use futures::{SinkExt as _, StreamExt as _};
use kafka_protocol::error::ParseResponseErrorCode as _;
use kafka_protocol::messages::{
    ApiKey, RequestHeader, SaslAuthenticateRequest, SaslAuthenticateResponse, SaslHandshakeRequest,
    SaslHandshakeResponse,
};
use kafka_protocol::protocol::{Encodable as _, StrBytes};
use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use sasl::client::Mechanism as _;
use thiserror::Error;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio_util::codec::Framed;

use super::frame::{self, FrameError, Frames, Request};

/// Time for TCP connect, the TLS handshake and the SASL exchange together.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// A limited session is renewed this long before the broker would end it.
const REAUTH_MARGIN: Duration = Duration::from_secs(5);
/// Largest SASL or response frame from the cluster (Kafka's own default
/// `socket.request.max.bytes` is 100 MiB; responses carry no more than requests did).
const MAX_UPSTREAM_FRAME: usize = 128 << 20;
/// The client id of the front's own SASL requests.
const CLIENT_ID: &str = "sluice-kafka-front";

/// How the front reaches the cluster.
#[derive(Clone, Default)]
pub struct Security {
    tls: Option<Arc<rustls::ClientConfig>>,
    sasl: Option<SaslLogin>,
}

impl std::fmt::Debug for Security {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Security")
            .field("tls", &self.tls.is_some())
            .field(
                "sasl",
                &self.sasl.as_ref().map(|s| (s.mechanism, &s.username)),
            )
            .finish()
    }
}

/// The SASL mechanisms the front can log in with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SaslMechanism {
    /// `PLAIN` (only over TLS in production: the password crosses the wire).
    Plain,
    /// `SCRAM-SHA-256`.
    ScramSha256,
    /// `SCRAM-SHA-512`.
    ScramSha512,
}

impl SaslMechanism {
    fn name(self) -> &'static str {
        match self {
            Self::Plain => "PLAIN",
            Self::ScramSha256 => "SCRAM-SHA-256",
            Self::ScramSha512 => "SCRAM-SHA-512",
        }
    }
}

#[derive(Clone)]
struct SaslLogin {
    mechanism: SaslMechanism,
    username: String,
    password: String,
}

/// Why the front's upstream security options are unusable. Messages never show a secret.
#[derive(Debug, Error)]
pub enum SecurityError {
    /// `security.protocol` is not one librdkafka knows.
    #[error("security.protocol `{0}` is not plaintext, ssl, sasl_plaintext or sasl_ssl")]
    Protocol(String),
    /// An option the front cannot honour (it would otherwise connect differently from the sink).
    #[error(
        "the Kafka front does not support `{0}` (it takes PEM files: ssl.ca.location, \
         ssl.certificate.location, ssl.key.location with an unencrypted key)"
    )]
    Unsupported(String),
    /// Half a client identity: a certificate without its key, or a key without its certificate.
    #[error("{given} is set but {missing} is not: mutual TLS needs both")]
    HalfIdentity {
        /// The option given.
        given: &'static str,
        /// The one missing.
        missing: &'static str,
    },
    /// `sasl.mechanism` is not PLAIN or SCRAM.
    #[error("the Kafka front logs in with PLAIN, SCRAM-SHA-256 or SCRAM-SHA-512, not `{0}`")]
    Mechanism(String),
    /// SASL without a username or password.
    #[error("security.protocol {0} needs sasl.username and sasl.password")]
    Credentials(String),
    /// Hostname verification switched off.
    #[error(
        "the Kafka front always checks the broker's certificate name; \
         ssl.endpoint.identification.algorithm={0} is not supported"
    )]
    NoHostnameCheck(String),
    /// A PEM file cannot be read.
    #[error("cannot read {option} {path}")]
    Read {
        /// The option naming the file.
        option: &'static str,
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// A PEM file holds nothing usable.
    #[error("{option} {path} holds no {what} in PEM form")]
    Pem {
        /// The option naming the file.
        option: &'static str,
        /// The file.
        path: PathBuf,
        /// What was looked for.
        what: &'static str,
    },
    /// A CA certificate is not a usable trust anchor.
    #[error("ssl.ca.location {0}: a certificate is not a usable trust anchor")]
    Anchor(PathBuf, #[source] rustls::Error),
    /// No system root certificates (and no `ssl.ca.location`).
    #[error("no system root certificates were found; set ssl.ca.location")]
    NoRoots,
    /// rustls refused the client certificate and key.
    #[error("ssl.certificate.location and ssl.key.location do not make a client identity")]
    Identity(#[source] rustls::Error),
}

impl Security {
    /// Reads the librdkafka options the front honours; other options (producer tuning for the
    /// sink) are ignored.
    pub fn from_options(options: &[(String, String)]) -> Result<Self, SecurityError> {
        let get = |name: &str| {
            options
                .iter()
                .rev()
                .find(|(n, _)| n == name)
                .map(|(_, v)| v.trim().to_owned())
        };
        for unsupported in [
            "ssl.keystore.location",
            "ssl.key.password",
            "ssl.ca.pem",
            "ssl.certificate.pem",
            "ssl.key.pem",
            "ssl.engine.location",
        ] {
            if get(unsupported).is_some() {
                return Err(SecurityError::Unsupported(unsupported.into()));
            }
        }
        let protocol = get("security.protocol")
            .unwrap_or_else(|| "plaintext".into())
            .to_ascii_lowercase();
        let (tls, sasl) = match protocol.as_str() {
            "plaintext" => (false, false),
            "ssl" => (true, false),
            "sasl_plaintext" => (false, true),
            "sasl_ssl" => (true, true),
            _ => return Err(SecurityError::Protocol(protocol)),
        };
        let mut security = Self::default();
        if tls {
            if let Some(alg) = get("ssl.endpoint.identification.algorithm")
                && !alg.eq_ignore_ascii_case("https")
            {
                return Err(SecurityError::NoHostnameCheck(alg));
            }
            let roots = match get("ssl.ca.location") {
                Some(ca) => ca_roots(Path::new(&ca))?,
                None => system_roots()?,
            };
            let builder = rustls::ClientConfig::builder_with_provider(Arc::new(
                rustls::crypto::ring::default_provider(),
            ))
            .with_safe_default_protocol_versions()
            .map_err(SecurityError::Identity)?
            .with_root_certificates(roots);
            let config = match (get("ssl.certificate.location"), get("ssl.key.location")) {
                (Some(cert), Some(key)) => {
                    let chain = certificates(Path::new(&cert), "ssl.certificate.location")?;
                    let key = private_key(Path::new(&key))?;
                    builder
                        .with_client_auth_cert(chain, key)
                        .map_err(SecurityError::Identity)?
                }
                (None, None) => builder.with_no_client_auth(),
                (Some(_), None) => {
                    return Err(SecurityError::HalfIdentity {
                        given: "ssl.certificate.location",
                        missing: "ssl.key.location",
                    });
                }
                (None, Some(_)) => {
                    return Err(SecurityError::HalfIdentity {
                        given: "ssl.key.location",
                        missing: "ssl.certificate.location",
                    });
                }
            };
            security.tls = Some(Arc::new(config));
        }
        if sasl {
            let mechanism = get("sasl.mechanism")
                .or_else(|| get("sasl.mechanisms"))
                .unwrap_or_else(|| "GSSAPI".into());
            let mechanism = match mechanism.to_ascii_uppercase().as_str() {
                "PLAIN" => SaslMechanism::Plain,
                "SCRAM-SHA-256" => SaslMechanism::ScramSha256,
                "SCRAM-SHA-512" => SaslMechanism::ScramSha512,
                _ => return Err(SecurityError::Mechanism(mechanism)),
            };
            let (Some(username), Some(password)) = (get("sasl.username"), get("sasl.password"))
            else {
                return Err(SecurityError::Credentials(protocol));
            };
            security.sasl = Some(SaslLogin {
                mechanism,
                username,
                password,
            });
        }
        Ok(security)
    }

    /// What a log line may say about it: the protocol, the mechanism and the user, no secret.
    pub fn describe(&self) -> String {
        let protocol = match (self.tls.is_some(), self.sasl.is_some()) {
            (false, false) => "plaintext",
            (true, false) => "ssl",
            (false, true) => "sasl_plaintext",
            (true, true) => "sasl_ssl",
        };
        match &self.sasl {
            Some(s) => format!("{protocol} ({} as {})", s.mechanism.name(), s.username),
            None => protocol.into(),
        }
    }
}

fn read(option: &'static str, path: &Path) -> Result<Vec<u8>, SecurityError> {
    std::fs::read(path).map_err(|source| SecurityError::Read {
        option,
        path: path.into(),
        source,
    })
}

fn certificates(
    path: &Path,
    option: &'static str,
) -> Result<Vec<CertificateDer<'static>>, SecurityError> {
    let pem = read(option, path)?;
    let certs: Vec<_> = CertificateDer::pem_slice_iter(&pem)
        .filter_map(Result::ok)
        .collect();
    if certs.is_empty() {
        return Err(SecurityError::Pem {
            option,
            path: path.into(),
            what: "certificate",
        });
    }
    Ok(certs)
}

fn private_key(path: &Path) -> Result<PrivateKeyDer<'static>, SecurityError> {
    let pem = read("ssl.key.location", path)?;
    PrivateKeyDer::from_pem_slice(&pem).map_err(|_| SecurityError::Pem {
        option: "ssl.key.location",
        path: path.into(),
        what: "unencrypted private key",
    })
}

fn ca_roots(path: &Path) -> Result<rustls::RootCertStore, SecurityError> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in certificates(path, "ssl.ca.location")? {
        roots
            .add(cert)
            .map_err(|e| SecurityError::Anchor(path.into(), e))?;
    }
    Ok(roots)
}

fn system_roots() -> Result<rustls::RootCertStore, SecurityError> {
    let mut roots = rustls::RootCertStore::empty();
    let (added, _) =
        roots.add_parsable_certificates(rustls_native_certs::load_native_certs().certs);
    if added == 0 {
        return Err(SecurityError::NoRoots);
    }
    Ok(roots)
}

/// Why a connection to a broker could not be opened.
#[derive(Debug, Error)]
pub enum ConnectError {
    /// TCP connect failed.
    #[error("cannot connect")]
    Tcp(#[source] std::io::Error),
    /// The address has no host part usable as a certificate name.
    #[error("`{0}` has no host usable as a TLS server name")]
    ServerName(String),
    /// The TLS handshake failed (certificate not trusted, wrong name, protocol).
    #[error("TLS handshake failed")]
    Tls(#[source] std::io::Error),
    /// The broker does not offer the mechanism.
    #[error("the broker does not offer SASL {mechanism} (it offers {offered:?})")]
    MechanismRefused {
        /// The configured mechanism.
        mechanism: &'static str,
        /// What the broker offers.
        offered: Vec<String>,
    },
    /// The broker refused the login.
    #[error("SASL {mechanism} login refused by the broker: {message}")]
    LoginRefused {
        /// The mechanism.
        mechanism: &'static str,
        /// The broker's message.
        message: String,
    },
    /// The SASL mechanism failed (a bad server signature, say).
    #[error("SASL {mechanism} exchange failed")]
    Sasl {
        /// The mechanism.
        mechanism: &'static str,
        /// Why.
        #[source]
        source: sasl::client::MechanismError,
    },
    /// The broker's answer to a SASL request is not one.
    #[error("bad SASL exchange with the broker")]
    Frame(#[source] FrameError),
    /// Connecting took too long.
    #[error("connecting did not finish within {0:?}")]
    Timeout(Duration),
}

/// A byte stream to a broker, plaintext or TLS.
pub trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

/// An open, authenticated connection to one broker.
pub struct Upstream {
    /// Request and response frames.
    pub frames: Framed<Box<dyn Io>, Frames>,
    /// When the session must be renewed (the broker limits it), if ever.
    renew_at: Option<Instant>,
}

impl Upstream {
    /// Whether the session must be renewed before the next request.
    pub fn expired(&self) -> bool {
        self.renew_at.is_some_and(|at| Instant::now() >= at)
    }
}

/// Opens a connection to `address` (`host:port`) with `security`.
pub async fn connect(address: &str, security: &Security) -> Result<Upstream, ConnectError> {
    tokio::time::timeout(HANDSHAKE_TIMEOUT, open(address, security))
        .await
        .map_err(|_| ConnectError::Timeout(HANDSHAKE_TIMEOUT))?
}

async fn open(address: &str, security: &Security) -> Result<Upstream, ConnectError> {
    let tcp = TcpStream::connect(address)
        .await
        .map_err(ConnectError::Tcp)?;
    let _ = tcp.set_nodelay(true);
    let io: Box<dyn Io> = match &security.tls {
        None => Box::new(tcp),
        Some(config) => {
            let host = host_of(address);
            let name = ServerName::try_from(host.to_owned())
                .map_err(|_| ConnectError::ServerName(address.into()))?;
            let tls = tokio_rustls::TlsConnector::from(config.clone())
                .connect(name, tcp)
                .await
                .map_err(ConnectError::Tls)?;
            Box::new(tls)
        }
    };
    let mut frames = Framed::new(io, Frames::new(MAX_UPSTREAM_FRAME));
    let renew_at = match &security.sasl {
        None => None,
        Some(login) => authenticate(&mut frames, login).await?,
    };
    Ok(Upstream { frames, renew_at })
}

/// The host of `host:port`, `[v6]:port` or a bare host.
fn host_of(address: &str) -> &str {
    if let Some(rest) = address.strip_prefix('[') {
        return rest.split(']').next().unwrap_or(rest);
    }
    match address.rsplit_once(':') {
        Some((host, port)) if port.bytes().all(|b| b.is_ascii_digit()) => host,
        _ => address,
    }
}

/// SaslHandshake v1, then SaslAuthenticate rounds (v1: the broker says how long the session
/// lasts) until the mechanism is done. Returns when to renew the session.
async fn authenticate(
    frames: &mut Framed<Box<dyn Io>, Frames>,
    login: &SaslLogin,
) -> Result<Option<Instant>, ConnectError> {
    let name = login.mechanism.name();
    let handshake = SaslHandshakeRequest::default().with_mechanism(StrBytes::from_static_str(name));
    let response: SaslHandshakeResponse =
        exchange(frames, ApiKey::SaslHandshake, 1, 0, &handshake, "SASL").await?;
    if response.error_code != 0 {
        return Err(ConnectError::MechanismRefused {
            mechanism: name,
            offered: response.mechanisms.iter().map(|m| m.to_string()).collect(),
        });
    }
    // SCRAM names escape `=` and `,` (RFC 5802 section 5.1); `sasl` sends them as given. No
    // channel binding: the gs2 header is `n,,`, which Kafka's SCRAM server requires.
    let username = match login.mechanism {
        SaslMechanism::Plain => login.username.clone(),
        _ => login.username.replace('=', "=3D").replace(',', "=2C"),
    };
    let credentials = sasl::common::Credentials::default()
        .with_username(username)
        .with_password(login.password.clone())
        .with_channel_binding(sasl::common::ChannelBinding::None);
    let sasl_err = |source| ConnectError::Sasl {
        mechanism: name,
        source,
    };
    let mut mechanism: Box<dyn sasl::client::Mechanism + Send> = match login.mechanism {
        SaslMechanism::Plain => Box::new(
            sasl::client::mechanisms::Plain::from_credentials(credentials).map_err(sasl_err)?,
        ),
        SaslMechanism::ScramSha256 => Box::new(
            sasl::client::mechanisms::Scram::<sasl::common::scram::Sha256>::from_credentials(
                credentials,
            )
            .map_err(sasl_err)?,
        ),
        SaslMechanism::ScramSha512 => Box::new(
            sasl::client::mechanisms::Scram::<Sha512>::from_credentials(credentials)
                .map_err(sasl_err)?,
        ),
    };
    let mut outgoing = mechanism.initial();
    // PLAIN takes one round, SCRAM two; a broker asking for more is not following either.
    for round in 1..=3 {
        let request = SaslAuthenticateRequest::default().with_auth_bytes(Bytes::from(outgoing));
        let response: SaslAuthenticateResponse =
            exchange(frames, ApiKey::SaslAuthenticate, 1, round, &request, "SASL").await?;
        if response.error_code != 0 {
            let message = response
                .error_message
                .as_ref()
                .map(|m| m.to_string())
                .unwrap_or_else(|| format!("{:?}", response.error_code.err()));
            return Err(ConnectError::LoginRefused {
                mechanism: name,
                message,
            });
        }
        let done = match login.mechanism {
            SaslMechanism::Plain => true,
            _ => round == 2,
        };
        if done {
            if login.mechanism != SaslMechanism::Plain {
                mechanism.success(&response.auth_bytes).map_err(sasl_err)?;
            }
            let lifetime = u64::try_from(response.session_lifetime_ms).unwrap_or(0);
            return Ok((lifetime > 0).then(|| {
                Instant::now() + Duration::from_millis(lifetime).saturating_sub(REAUTH_MARGIN)
            }));
        }
        outgoing = mechanism.response(&response.auth_bytes).map_err(sasl_err)?;
    }
    Err(ConnectError::LoginRefused {
        mechanism: name,
        message: "the broker asked for more rounds than the mechanism has".into(),
    })
}

/// Sends one of the front's own requests (not a client's) on `up` and decodes its answer;
/// `what` names it in errors.
pub async fn call<Q, R>(
    up: &mut Upstream,
    api: ApiKey,
    version: i16,
    correlation_id: i32,
    body: &Q,
    what: &'static str,
) -> Result<R, ConnectError>
where
    Q: kafka_protocol::protocol::Encodable,
    R: kafka_protocol::protocol::Decodable,
{
    exchange(&mut up.frames, api, version, correlation_id, body, what).await
}

/// Sends one of the front's own requests and decodes its answer; `what` names it in errors.
async fn exchange<Q, R>(
    frames: &mut Framed<Box<dyn Io>, Frames>,
    api: ApiKey,
    version: i16,
    correlation_id: i32,
    body: &Q,
    what: &'static str,
) -> Result<R, ConnectError>
where
    Q: kafka_protocol::protocol::Encodable,
    R: kafka_protocol::protocol::Decodable,
{
    let header = RequestHeader::default()
        .with_request_api_key(api as i16)
        .with_request_api_version(version)
        .with_correlation_id(correlation_id)
        .with_client_id(Some(StrBytes::from_static_str(CLIENT_ID)));
    let mut raw = BytesMut::new();
    header
        .encode(&mut raw, api.request_header_version(version))
        .map_err(|e| encode_error(e, what, version))?;
    body.encode(&mut raw, version)
        .map_err(|e| encode_error(e, what, version))?;
    let request = Request::parse(raw.freeze()).map_err(ConnectError::Frame)?;
    frames
        .send(request.frame.clone())
        .await
        .map_err(ConnectError::Frame)?;
    let answer = match frames.next().await {
        Some(Ok(f)) => f,
        Some(Err(e)) => return Err(ConnectError::Frame(e)),
        None => {
            return Err(ConnectError::Frame(FrameError::Io(
                std::io::ErrorKind::UnexpectedEof.into(),
            )));
        }
    };
    let body = frame::response_body(&request, answer).map_err(ConnectError::Frame)?;
    frame::decode_response(&request, what, body).map_err(ConnectError::Frame)
}

fn encode_error(e: anyhow::Error, what: &'static str, version: i16) -> ConnectError {
    ConnectError::Frame(FrameError::Encode {
        what,
        version,
        source: e.into(),
    })
}

/// SCRAM-SHA-512 for `sasl`'s SCRAM client (RFC 5802 with SHA-512; `sasl` 0.5 ships SHA-1 and
/// SHA-256 only).
struct Sha512;

/// What a SCRAM-SHA-512 login derives its keys from (a plain password is all the front has).
struct Pbkdf2Sha512;
impl sasl::secret::Secret for Pbkdf2Sha512 {}

impl sasl::common::scram::ScramProvider for Sha512 {
    type Secret = Pbkdf2Sha512;

    fn name() -> &'static str {
        "SHA-512"
    }

    fn hash(data: &[u8]) -> Vec<u8> {
        use sha2::Digest as _;
        sha2::Sha512::digest(data).to_vec()
    }

    fn hmac(data: &[u8], key: &[u8]) -> Result<Vec<u8>, hmac::digest::InvalidLength> {
        use hmac::Mac as _;
        let mut mac = hmac::Hmac::<sha2::Sha512>::new_from_slice(key)?;
        mac.update(data);
        Ok(mac.finalize().into_bytes().to_vec())
    }

    fn derive(
        password: &sasl::common::Password,
        salt: &[u8],
        iterations: u32,
    ) -> Result<Vec<u8>, sasl::common::scram::DeriveError> {
        match password {
            sasl::common::Password::Plain(plain) => {
                let mut out = vec![0; 64];
                pbkdf2::pbkdf2::<hmac::Hmac<sha2::Sha512>>(
                    plain.as_bytes(),
                    salt,
                    iterations,
                    &mut out,
                )?;
                Ok(out)
            }
            sasl::common::Password::Pbkdf2 { method, .. } => {
                Err(sasl::common::scram::DeriveError::IncompatibleHashingMethod(
                    method.clone(),
                    Self::name().into(),
                ))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn opts(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(n, v)| ((*n).into(), (*v).into()))
            .collect()
    }

    #[test]
    fn plaintext_is_the_default_and_producer_tuning_is_ignored() {
        let s = Security::from_options(&opts(&[("linger.ms", "5")])).unwrap();
        assert!(s.tls.is_none() && s.sasl.is_none());
        assert_eq!(s.describe(), "plaintext");
    }

    #[test]
    fn sasl_needs_a_supported_mechanism_and_credentials() {
        let e = Security::from_options(&opts(&[("security.protocol", "SASL_PLAINTEXT")]));
        assert!(matches!(e, Err(SecurityError::Mechanism(m)) if m == "GSSAPI"));
        let e = Security::from_options(&opts(&[
            ("security.protocol", "sasl_plaintext"),
            ("sasl.mechanism", "SCRAM-SHA-512"),
            ("sasl.username", "alice"),
        ]));
        assert!(matches!(e, Err(SecurityError::Credentials(_))));
        let s = Security::from_options(&opts(&[
            ("security.protocol", "sasl_plaintext"),
            ("sasl.mechanisms", "scram-sha-256"),
            ("sasl.username", "alice"),
            ("sasl.password", "s3cret"),
        ]))
        .unwrap();
        let shown = format!("{} {s:?}", s.describe());
        assert!(shown.contains("SCRAM-SHA-256 as alice"), "{shown}");
        assert!(!shown.contains("s3cret"), "{shown}");
    }

    #[test]
    fn what_the_front_cannot_honour_is_refused_by_name() {
        for (name, value) in [
            ("security.protocol", "kerberos"),
            ("ssl.keystore.location", "/k.p12"),
            ("ssl.key.password", "x"),
        ] {
            let e = Security::from_options(&opts(&[(name, value)])).unwrap_err();
            assert!(
                e.to_string().contains(value) || e.to_string().contains(name),
                "{e}"
            );
        }
        let e = Security::from_options(&opts(&[
            ("security.protocol", "ssl"),
            ("ssl.endpoint.identification.algorithm", "none"),
        ]))
        .unwrap_err();
        assert!(matches!(e, SecurityError::NoHostnameCheck(_)));
        let e = Security::from_options(&opts(&[
            ("security.protocol", "ssl"),
            ("ssl.ca.location", "/nonexistent/ca.pem"),
        ]))
        .unwrap_err();
        assert!(matches!(e, SecurityError::Read { .. }));
        let e = Security::from_options(&opts(&[
            ("security.protocol", "ssl"),
            ("ssl.key.location", "/k.pem"),
        ]))
        .unwrap_err();
        assert!(
            matches!(
                e,
                SecurityError::HalfIdentity {
                    missing: "ssl.certificate.location",
                    ..
                }
            ),
            "{e}"
        );
    }

    /// The SHA-512 provider is ours: its key derivation against the published
    /// PBKDF2-HMAC-SHA512 vector for RFC 6070's first inputs (the login itself is checked
    /// against a real broker in the integration tests).
    #[test]
    fn scram_sha512_derives_the_published_key() {
        use sasl::common::scram::ScramProvider as _;
        let key = Sha512::derive(
            &sasl::common::Password::Plain("password".into()),
            b"salt",
            1,
        )
        .unwrap();
        assert_eq!(key[..8], [0x86, 0x7f, 0x70, 0xcf, 0x1a, 0xde, 0x02, 0xcf]);
        assert_eq!(key.len(), 64);
    }

    #[test]
    fn hosts_are_taken_from_addresses() {
        assert_eq!(host_of("broker-0.kafka:9093"), "broker-0.kafka");
        assert_eq!(host_of("[::1]:9093"), "::1");
        assert_eq!(host_of("127.0.0.1:9093"), "127.0.0.1");
        assert_eq!(host_of("kafka"), "kafka");
    }
}

//! The Kafka sink speaks TLS (librdkafka built with vendored OpenSSL) and verifies the broker's
//! certificate against `ssl.ca.location`. No Kafka-compatible broker here serves TLS (tansu
//! 0.6 and librdkafka's mock cluster are plaintext), so a rustls listener stands in for the
//! broker's TLS port: it completes the handshake and reads the first Kafka request inside it.

use std::net::{IpAddr, Ipv4Addr};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair, SanType};
use sluice_gate_sidecar::sink::kafka::{KafkaSettings, KafkaSink, parse_option};
use tokio::io::AsyncReadExt as _;
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;
use tokio_rustls::rustls::ServerConfig;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};

/// A CA written to `dir/<name>.crt`, and a server config with a certificate it signed for
/// 127.0.0.1.
fn pki(dir: &Path, name: &str) -> (std::path::PathBuf, ServerConfig) {
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    // OpenSSL matches the leaf's issuer by name: the CA needs one.
    ca_params
        .distinguished_name
        .push(DnType::CommonName, format!("{name} CA"));
    let ca = CertifiedIssuer::self_signed(ca_params, KeyPair::generate().unwrap()).unwrap();
    let key = KeyPair::generate().unwrap();
    let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
    params.subject_alt_names = vec![SanType::IpAddress(IpAddr::V4(Ipv4Addr::LOCALHOST))];
    let cert = params.signed_by(&key, &ca).unwrap();
    let ca_file = dir.join(format!("{name}.crt"));
    std::fs::write(&ca_file, ca.pem()).unwrap();
    let provider = Arc::new(tokio_rustls::rustls::crypto::ring::default_provider());
    let server = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(
            vec![CertificateDer::from(cert.der().to_vec())],
            PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der())),
        )
        .unwrap();
    (ca_file, server)
}

/// Starts a producer trusting `ca` against a TLS listener with `server`'s certificate; returns
/// the api key of the first Kafka request read inside TLS, or the handshake's error.
async fn first_request(ca: &Path, server: ServerConfig) -> Result<i16, std::io::Error> {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let sink = KafkaSink::open(&KafkaSettings {
        bootstrap: addr.to_string(),
        options: [
            "security.protocol=SSL".to_owned(),
            format!("ssl.ca.location={}", ca.display()),
        ]
        .iter()
        .map(|o| parse_option(o).unwrap())
        .collect(),
    })
    .expect("librdkafka accepts TLS options (built with OpenSSL)");
    let (tcp, _) = tokio::time::timeout(Duration::from_secs(10), listener.accept())
        .await
        .expect("the producer connects")
        .unwrap();
    let mut tls = TlsAcceptor::from(Arc::new(server)).accept(tcp).await?;
    // A Kafka request: i32 size, then i16 api key.
    let _size = tls.read_i32().await?;
    let api_key = tls.read_i16().await?;
    drop(sink);
    Ok(api_key)
}

#[tokio::test]
async fn the_kafka_sink_speaks_tls_and_verifies_the_broker() {
    let dir = tempfile::tempdir().unwrap();
    let (ca, server) = pki(dir.path(), "broker");
    // librdkafka opens with ApiVersions (api key 18), inside the TLS session.
    assert_eq!(first_request(&ca, server).await.unwrap(), 18);

    // Trusting another CA, the producer refuses the broker's certificate: the handshake fails.
    let (other_ca, _) = pki(dir.path(), "other");
    let (_, server) = pki(dir.path(), "broker-2");
    let err = first_request(&other_ca, server).await.unwrap_err();
    assert!(
        matches!(
            err.kind(),
            std::io::ErrorKind::InvalidData
                | std::io::ErrorKind::UnexpectedEof
                | std::io::ErrorKind::ConnectionReset
        ),
        "{err:?}"
    );
}

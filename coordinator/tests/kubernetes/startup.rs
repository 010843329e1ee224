//! The webhook's configuration is checked before any port is bound, with readable errors.

use std::process::Command;

use clap::Parser;
use sluice_coordinator::{Config, ConfigError, Coordinator, Error};

use crate::common::TestPki;

fn coordinator(args: &[&str]) -> (bool, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_coordinator"))
        .args(args)
        .env("RUST_LOG", "error")
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn parse(args: &[&str]) -> Config {
    Config::try_parse_from(std::iter::once("coordinator").chain(args.iter().copied())).unwrap()
}

#[test]
fn the_binary_names_the_missing_or_broken_webhook_pieces() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state.json");
    let state = state.to_str().unwrap();
    let pki = TestPki::new("CA");
    let (cert, key) = pki.write(dir.path());
    let (cert, key) = (cert.to_str().unwrap(), key.to_str().unwrap());
    let base = ["--state-file", state, "--listen", "127.0.0.1:0"];
    let with = |more: &[&str]| {
        let mut v = base.to_vec();
        v.extend_from_slice(more);
        coordinator(&v)
    };

    let (ok, err) = with(&["--webhook-listen", "127.0.0.1:0", "--sidecar-image", "i:1"]);
    assert!(!ok);
    assert!(
        err.contains("--webhook-listen needs --webhook-cert"),
        "{err}"
    );

    let (ok, err) = with(&[
        "--webhook-listen",
        "127.0.0.1:0",
        "--webhook-cert",
        cert,
        "--webhook-key",
        "/nonexistent/tls.key",
        "--sidecar-image",
        "i:1",
    ]);
    assert!(!ok);
    assert!(err.contains("--webhook-key /nonexistent/tls.key"), "{err}");

    let (ok, err) = with(&[
        "--webhook-listen",
        "127.0.0.1:0",
        "--webhook-cert",
        cert,
        "--webhook-key",
        key,
    ]);
    assert!(!ok);
    assert!(err.contains("--sidecar-image"), "{err}");

    let (ok, err) = with(&[
        "--webhook-listen",
        "0.0.0.0:0",
        "--webhook-cert",
        cert,
        "--webhook-key",
        key,
        "--sidecar-image",
        "i:1",
    ]);
    assert!(!ok);
    assert!(
        err.contains("--webhook-listen") && err.contains("non-loopback"),
        "{err}"
    );

    // The key of another certificate: refused at start, naming both files, never the key.
    let other = TestPki::new("other");
    let other_key = dir.path().join("other.key");
    std::fs::write(&other_key, &other.key_pem).unwrap();
    let (ok, err) = with(&[
        "--webhook-listen",
        "127.0.0.1:0",
        "--webhook-cert",
        cert,
        "--webhook-key",
        other_key.to_str().unwrap(),
        "--sidecar-image",
        "i:1",
    ]);
    assert!(!ok);
    assert!(err.contains("cannot load the webhook certificate"), "{err}");
    assert!(
        err.contains("other.key") && err.contains("tls.crt"),
        "{err}"
    );
    assert!(
        !err.contains("PRIVATE KEY"),
        "key material in an error: {err}"
    );
}

#[tokio::test]
async fn open_refuses_a_certificate_file_that_is_not_pem() {
    let dir = tempfile::tempdir().unwrap();
    let pki = TestPki::new("CA");
    let (cert, key) = pki.write(dir.path());
    std::fs::write(&cert, "not a certificate").unwrap();
    let state = dir.path().join("state.json");
    let config = parse(&[
        "--state-file",
        state.to_str().unwrap(),
        "--webhook-listen",
        "127.0.0.1:0",
        "--webhook-cert",
        cert.to_str().unwrap(),
        "--webhook-key",
        key.to_str().unwrap(),
        "--sidecar-image",
        "i:1",
    ]);
    let err = Coordinator::open(config).await.unwrap_err();
    assert!(matches!(err, Error::WebhookTls(_)), "{err:?}");
    // Nothing was written: the certificate is checked before the state.
    assert!(!state.exists());
}

#[test]
fn sidecar_settings_are_checked_because_a_bad_one_would_break_every_pod() {
    let dir = tempfile::tempdir().unwrap();
    let pki = TestPki::new("CA");
    let (cert, key) = pki.write(dir.path());
    let base = [
        "--webhook-listen",
        "127.0.0.1:0",
        "--webhook-cert",
        cert.to_str().unwrap(),
        "--webhook-key",
        key.to_str().unwrap(),
    ];
    let check = |more: &[&str]| {
        let mut v = base.to_vec();
        if !more.contains(&"--sidecar-image") {
            v.extend_from_slice(&["--sidecar-image", "i:1"]);
        }
        v.extend_from_slice(more);
        parse(&v).validate()
    };
    check(&[]).unwrap();
    check(&[
        "--sidecar-cpu-limit",
        "1.5",
        "--sidecar-memory-limit",
        "1Gi",
    ])
    .unwrap();
    check(&["--sidecar-memory-request", "1e3"]).unwrap();
    assert!(matches!(
        check(&["--sidecar-memory-limit", "256MB"]),
        Err(ConfigError::BadQuantity {
            flag: "sidecar-memory-limit",
            ..
        })
    ));
    assert!(matches!(
        check(&["--sidecar-cpu-request", "a lot"]),
        Err(ConfigError::BadQuantity { .. })
    ));
    assert!(matches!(
        check(&["--sidecar-coordinator", "sluice-coordinator:7070"]),
        Err(ConfigError::BadCoordinatorUrl(_))
    ));
    assert!(matches!(
        check(&["--sidecar-image", "has space"]),
        Err(ConfigError::BadSidecarValue { .. })
    ));
    assert!(matches!(
        check(&["--webhook-reload-interval", "0s"]),
        Err(ConfigError::ZeroInterval("webhook-reload-interval"))
    ));
    assert!(matches!(
        check(&["--metrics-listen", "127.0.0.1:7070"]),
        Err(ConfigError::SameAddress("listen", "metrics-listen", _))
    ));
    // Without --webhook-listen, a certificate flag is a mistake worth reporting.
    assert!(matches!(
        parse(&["--webhook-cert", "x"]).validate(),
        Err(ConfigError::WebhookOnly("webhook-cert"))
    ));
}

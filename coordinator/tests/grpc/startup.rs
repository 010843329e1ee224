//! Start-up refuses bad configuration and bad state before serving, with readable errors.

use std::process::Command;

use clap::Parser;
use sluice_coordinator::{Config, Coordinator, Error};

fn coordinator(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_coordinator"))
        .args(args)
        .env("RUST_LOG", "error")
        .output()
        .unwrap()
}

#[test]
fn the_binary_refuses_a_non_loopback_listen_address() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state.json");
    let out = coordinator(&[
        "--listen",
        "0.0.0.0:0",
        "--state-file",
        state.to_str().unwrap(),
    ]);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("non-loopback"), "{stderr}");
}

#[test]
fn the_binary_refuses_a_corrupt_state_file_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("corrupt-state.json");
    std::fs::write(&state, "{ this is not json").unwrap();
    let out = coordinator(&[
        "--listen",
        "127.0.0.1:0",
        "--state-file",
        state.to_str().unwrap(),
    ]);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("corrupt-state.json"), "{stderr}");
    assert!(stderr.contains("corrupt"), "{stderr}");
}

#[tokio::test]
async fn open_classifies_a_corrupt_state_file_as_a_load_error() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state.json");
    std::fs::write(&state, "[]").unwrap();
    let config = Config::try_parse_from([
        "coordinator",
        "--listen",
        "127.0.0.1:0",
        "--state-file",
        state.to_str().unwrap(),
    ])
    .unwrap();
    let err = Coordinator::open(config).await.unwrap_err();
    assert!(matches!(err, Error::Load(_)), "{err:?}");
}

#[tokio::test]
async fn a_missing_state_file_is_an_empty_state_and_gets_created() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state.json");
    let config = Config::try_parse_from([
        "coordinator",
        "--listen",
        "127.0.0.1:0",
        "--state-file",
        state.to_str().unwrap(),
    ])
    .unwrap();
    let coordinator = Coordinator::open(config).await.unwrap();
    assert_eq!(coordinator.pipelines(), 0);
    assert!(state.exists());
}

//! The README's manual-cutover commands, run with a real reflection client (`buf curl`, the
//! grpcurl stand-in obtainable here) against the real coordinator and sidecars.
//!
//! `scripts/test.sh` installs buf (npm, cached outside the tree) and sets `SLUICE_BUF`.

use std::path::PathBuf;
use std::process::{Command, Output};
use std::time::Duration;

use sluice_integration_tests::procs::{Proc, binary, free_port, wait_for_tcp, wait_for_unix};

fn buf() -> PathBuf {
    if let Ok(p) = std::env::var("SLUICE_BUF") {
        return p.into();
    }
    let cached = dirs_home().join(".cache/sluice/npm/node_modules/.bin/buf");
    if cached.exists() {
        return cached;
    }
    panic!(
        "buf is not installed: run scripts/test.sh (it installs @bufbuild/buf with npm) or set \
         SLUICE_BUF to a buf binary"
    );
}

fn dirs_home() -> PathBuf {
    std::env::var_os("HOME").map_or_else(|| "/root".into(), PathBuf::from)
}

/// `buf curl --protocol grpc --http2-prior-knowledge ARGS` — the README's form.
fn curl(args: &[&str]) -> Output {
    let mut cmd = Command::new(buf());
    cmd.args(["curl", "--protocol", "grpc", "--http2-prior-knowledge"]);
    cmd.args(args);
    cmd.output().expect("cannot run buf")
}

fn ok_json(out: Output) -> serde_json::Value {
    assert!(
        out.status.success(),
        "buf curl failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("buf curl prints JSON")
}

#[test]
fn readme_grpcurl_commands_drive_a_manual_cutover() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port().unwrap();
    let url = format!("http://127.0.0.1:{port}");
    let state = dir.path().join("state.json").display().to_string();
    let _coordinator = Proc::spawn(
        "coordinator",
        &binary("coordinator").unwrap(),
        &[
            "--listen".into(),
            format!("127.0.0.1:{port}"),
            "--state-file".into(),
            state,
        ],
        &dir.path().join("coordinator.log"),
    )
    .unwrap();
    wait_for_tcp(([127, 0, 0, 1], port).into(), Duration::from_secs(20)).unwrap();
    let mut sidecars = vec![];
    for d in ["orders-v1", "orders-v2"] {
        let sock = dir.path().join(format!("{d}.sock"));
        sidecars.push(
            Proc::spawn(
                d,
                &binary("gate-sidecar").unwrap(),
                &[
                    "--coordinator".into(),
                    url.clone(),
                    "--pipeline".into(),
                    "demo/orders".into(),
                    "--deployment".into(),
                    d.into(),
                    "--gate-id".into(),
                    format!("{d}-tm-0"),
                    "--socket".into(),
                    sock.display().to_string(),
                    "--sink".into(),
                    format!("file:{}", dir.path().join(format!("{d}.jsonl")).display()),
                ],
                &dir.path().join(format!("{d}.log")),
            )
            .unwrap(),
        );
        wait_for_unix(&sock, Duration::from_secs(20)).unwrap();
        // Blue must attach first to become the active deployment.
        std::thread::sleep(Duration::from_millis(300));
    }

    // List services (no .proto at hand: server reflection).
    let out = curl(&["--list-services", &url]);
    let services = String::from_utf8_lossy(&out.stdout);
    for s in [
        "sluice.v1.Cutover",
        "sluice.v1.GateControl",
        "grpc.health.v1.Health",
    ] {
        assert!(services.lines().any(|l| l == s), "{s} not in {services}");
    }

    // Inspect the pipeline.
    let get = |url: &str| {
        ok_json(curl(&[
            "-d",
            r#"{"pipeline":"demo/orders"}"#,
            &format!("{url}/sluice.v1.Cutover/GetPipeline"),
        ]))
    };
    let p = get(&url);
    assert_eq!(p["active"], "orders-v1");
    assert_eq!(p["gates"].as_array().unwrap().len(), 2);

    // Start a cutover that waits for readiness (2 green gates required: it keeps waiting).
    let started = ok_json(curl(&[
        "-d",
        r#"{"pipeline":"demo/orders","candidate":"orders-v2","when":"WHEN_READY","min_gates":2}"#,
        &format!("{url}/sluice.v1.Cutover/StartCutover"),
    ]));
    assert_eq!(started["status"]["phase"], "PHASE_WAITING");
    assert_eq!(started["status"]["candidate"], "orders-v2");

    // Watch it: the first event is the full status.
    let watch = Command::new("timeout")
        .arg("2")
        .arg(buf())
        .args([
            "curl",
            "--protocol",
            "grpc",
            "--http2-prior-knowledge",
            "-d",
        ])
        .arg(r#"{"pipeline":"demo/orders"}"#)
        .arg(format!("{url}/sluice.v1.Cutover/WatchPipeline"))
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&watch.stdout);
    assert!(text.contains("\"PHASE_WAITING\""), "watch printed: {text}");

    // A bad request gets a readable InvalidArgument.
    let bad = curl(&[
        "-d",
        r#"{"pipeline":"demo/orders","candidate":""}"#,
        &format!("{url}/sluice.v1.Cutover/StartCutover"),
    ]);
    assert!(!bad.status.success());
    let err =
        String::from_utf8_lossy(&bad.stdout).to_string() + &String::from_utf8_lossy(&bad.stderr);
    assert!(
        err.contains("invalid_argument") && err.contains("candidate"),
        "{err}"
    );

    // Abort it.
    let aborted = ok_json(curl(&[
        "-d",
        r#"{"pipeline":"demo/orders","reason":"manual test"}"#,
        &format!("{url}/sluice.v1.Cutover/AbortCutover"),
    ]));
    assert_eq!(aborted["status"]["phase"], "PHASE_ABORTED");
    assert_eq!(get(&url)["active"], "orders-v1");

    // Now a cutover that happens: "now" prepares at once; no sink subtask is connected to
    // either sidecar, so blue has nothing left to emit and the drain completes right away.
    let now = ok_json(curl(&[
        "-d",
        r#"{"pipeline":"demo/orders","candidate":"orders-v2","when":"WHEN_NOW"}"#,
        &format!("{url}/sluice.v1.Cutover/StartCutover"),
    ]));
    assert_eq!(now["status"]["candidate"], "orders-v2");
    let mut p = get(&url);
    for _ in 0..50 {
        if p["phase"] == "PHASE_COMPLETED" {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
        p = get(&url);
    }
    assert_eq!(p["phase"], "PHASE_COMPLETED", "{p}");
    assert_eq!(p["active"], "orders-v2");
    assert_eq!(p["retired"], "orders-v1");
    drop(sidecars);
}

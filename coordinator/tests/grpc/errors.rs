//! Bad requests get the right status codes, with messages that say what is wrong.

use sluice_proto::v1::{self, gate_report};
use tonic::Code;

use crate::common::{FakeGate, TestServer, progress, start_now};

const P: &str = "payments/fraud-scorer";

fn assert_status<T: std::fmt::Debug>(result: Result<T, tonic::Status>, code: Code, needle: &str) {
    let status = result.expect_err("expected an error status");
    assert_eq!(status.code(), code, "{status:?}");
    assert!(
        status.message().contains(needle),
        "message {:?} should mention {needle:?}",
        status.message()
    );
}

#[tokio::test]
async fn bad_cutover_requests_get_readable_errors() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(&dir.path().join("state.json"), &[]).await;
    let mut c = server.cutover().await;
    let _blue = FakeGate::attach(&server, P, "blue", "b1", progress(100, 90))
        .await
        .unwrap();

    // INVALID_ARGUMENT, naming the field.
    assert_status(
        c.start_cutover(start_now("", "green", 10)).await,
        Code::InvalidArgument,
        "pipeline",
    );
    assert_status(
        c.start_cutover(start_now(P, "", 10)).await,
        Code::InvalidArgument,
        "candidate",
    );
    assert_status(
        c.start_cutover(start_now(P, "green", -1)).await,
        Code::InvalidArgument,
        "margin_ms",
    );
    let mut zero_attempts = start_now(P, "green", 10);
    zero_attempts.max_attempts = Some(0);
    assert_status(
        c.start_cutover(zero_attempts).await,
        Code::InvalidArgument,
        "max_attempts",
    );

    // NOT_FOUND for a pipeline no gate ever attached to.
    let unknown = "payments/unknown";
    assert_status(
        c.get_pipeline(v1::GetPipelineRequest {
            pipeline: unknown.into(),
        })
        .await,
        Code::NotFound,
        unknown,
    );
    assert_status(
        c.start_cutover(start_now(unknown, "green", 10)).await,
        Code::NotFound,
        unknown,
    );
    assert_status(
        c.abort_cutover(v1::AbortCutoverRequest {
            pipeline: unknown.into(),
            reason: "test".into(),
        })
        .await,
        Code::NotFound,
        unknown,
    );
    assert_status(
        c.watch_pipeline(v1::WatchPipelineRequest {
            pipeline: unknown.into(),
        })
        .await
        .map(|_| ()),
        Code::NotFound,
        unknown,
    );

    // FAILED_PRECONDITION: the candidate is already active.
    assert_status(
        c.start_cutover(start_now(P, "blue", 10)).await,
        Code::FailedPrecondition,
        "already the active deployment",
    );
    // A cutover waiting for readiness (green has no gates) blocks another.
    let waiting = v1::StartCutoverRequest {
        pipeline: P.into(),
        candidate: "green".into(),
        when: v1::When::Ready as i32,
        ..Default::default()
    };
    let status = c
        .start_cutover(waiting.clone())
        .await
        .unwrap()
        .into_inner()
        .status
        .unwrap();
    assert_eq!(status.phase, v1::Phase::Waiting as i32);
    assert_eq!(status.candidate, "green");
    assert_status(
        c.start_cutover(waiting).await,
        Code::FailedPrecondition,
        "already",
    );
    let abort = v1::AbortCutoverRequest {
        pipeline: P.into(),
        reason: "changed my mind".into(),
    };
    let status = c
        .abort_cutover(abort.clone())
        .await
        .unwrap()
        .into_inner()
        .status
        .unwrap();
    assert_eq!(status.phase, v1::Phase::Aborted as i32);
    assert!(status.last_error.contains("changed my mind"), "{status:?}");
    assert_status(
        c.abort_cutover(abort).await,
        Code::FailedPrecondition,
        "no cutover is running",
    );
    server.stop().await.unwrap();
}

#[tokio::test]
async fn bad_gate_streams_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(&dir.path().join("state.json"), &[]).await;

    let not_hello = v1::GateReport {
        kind: Some(gate_report::Kind::Progress(progress(1, 1))),
    };
    assert_status(
        FakeGate::open(&server, not_hello).await.map(|_| ()),
        Code::InvalidArgument,
        "hello",
    );
    assert_status(
        FakeGate::attach(&server, P, "blue", "", progress(1, 1))
            .await
            .map(|_| ()),
        Code::InvalidArgument,
        "gate_id",
    );
    assert_status(
        FakeGate::attach(&server, "", "blue", "b1", progress(1, 1))
            .await
            .map(|_| ()),
        Code::InvalidArgument,
        "pipeline",
    );

    // A gate id is bound to its deployment.
    let _b1 = FakeGate::attach(&server, P, "blue", "b1", progress(1, 1))
        .await
        .unwrap();
    assert_status(
        FakeGate::attach(&server, P, "green", "b1", progress(1, 1))
            .await
            .map(|_| ()),
        Code::FailedPrecondition,
        "belongs to deployment blue",
    );
    server.stop().await.unwrap();
}

#[tokio::test]
async fn pipelines_are_listed_sorted() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(&dir.path().join("state.json"), &[]).await;
    let _z = FakeGate::attach(&server, "z/last", "blue", "z1", progress(1, 1))
        .await
        .unwrap();
    let _a = FakeGate::attach(&server, "a/first", "blue", "a1", progress(1, 1))
        .await
        .unwrap();
    let list = server
        .cutover()
        .await
        .list_pipelines(v1::ListPipelinesRequest {})
        .await
        .unwrap()
        .into_inner();
    let names: Vec<&str> = list.pipelines.iter().map(|p| p.pipeline.as_str()).collect();
    assert_eq!(names, ["a/first", "z/last"]);
    server.stop().await.unwrap();
}

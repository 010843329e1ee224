//! Every bad input gets an `Error` frame with the right code and closes only its own channel:
//! a well-behaved channel on the same sidecar keeps working.

mod common;

use common::*;
use sluice_proto::framing::encode_frame;
use sluice_proto::v1::{self, ClientFrame, ErrorCode, client_frame};

/// Largest frame of the sidecars in this file.
const MAX_FRAME: usize = 4096;

#[derive(Debug, Clone, Copy)]
enum Bad {
    RecordsBeforeHello,
    FlushBeforeHello,
    WatermarkBeforeHello,
    SecondHello,
    WrongPipeline,
    WrongDeployment,
    Version2,
    Garbage,
    KindLessFirst,
    KindLessAfterHello,
    Truncated,
    Oversized,
    InvalidLengthPrefix,
}

/// Does the bad thing on a fresh channel; returns the code it must produce.
async fn provoke(c: &mut Client, bad: Bad) -> ErrorCode {
    match bad {
        Bad::RecordsBeforeHello => {
            c.records(&[1]).await;
            ErrorCode::HelloRequired
        }
        Bad::FlushBeforeHello => {
            c.flush(1).await;
            ErrorCode::HelloRequired
        }
        Bad::WatermarkBeforeHello => {
            c.send(client_frame::Kind::Watermark(v1::Watermark {
                watermark_ms: 5,
            }))
            .await;
            ErrorCode::HelloRequired
        }
        Bad::SecondHello => {
            c.hello("bad").await;
            c.records(&[1]).await;
            c.hello("bad").await;
            ErrorCode::DuplicateHello
        }
        Bad::WrongPipeline => {
            c.hello_as("payments/other", DEPLOYMENT, "bad", 1).await;
            ErrorCode::UnknownGate
        }
        Bad::WrongDeployment => {
            c.hello_as(PIPELINE, "fraud-v2", "bad", 1).await;
            ErrorCode::UnknownGate
        }
        Bad::Version2 => {
            c.hello_as(PIPELINE, DEPLOYMENT, "bad", 2).await;
            ErrorCode::UnsupportedVersion
        }
        Bad::Garbage => {
            // Length 3, then bytes that are no valid protobuf.
            c.write_raw(&[3, 0xff, 0xff, 0xff]).await;
            ErrorCode::MalformedFrame
        }
        Bad::KindLessFirst => {
            c.write_raw(&encode_frame(&ClientFrame { kind: None }))
                .await;
            ErrorCode::MalformedFrame
        }
        Bad::KindLessAfterHello => {
            c.hello("bad").await;
            c.write_raw(&encode_frame(&ClientFrame { kind: None }))
                .await;
            ErrorCode::MalformedFrame
        }
        Bad::Truncated => {
            c.hello("bad").await;
            let frame = encode_frame(&ClientFrame {
                kind: Some(client_frame::Kind::Records(v1::Records {
                    records: vec![record(1), record(2)],
                })),
            });
            c.write_raw(&frame[..frame.len() - 3]).await;
            // End of stream inside the frame.
            tokio::io::AsyncWriteExt::shutdown(c.framed.get_mut())
                .await
                .unwrap();
            ErrorCode::MalformedFrame
        }
        Bad::Oversized => {
            c.hello("bad").await;
            let mut prefix = Vec::new();
            prost::encoding::encode_varint((MAX_FRAME * 256) as u64, &mut prefix);
            c.write_raw(&prefix).await;
            c.write_raw(&[0u8; 64]).await;
            ErrorCode::FrameTooLarge
        }
        Bad::InvalidLengthPrefix => {
            c.write_raw(&[0xff; 11]).await;
            ErrorCode::MalformedFrame
        }
    }
}

async fn bad_input_closes_only_its_channel(bad: Bad) {
    let coord = FakeCoordinator::start(Some(active(1, 0))).await;
    let max = MAX_FRAME.to_string();
    let sidecar = Sidecar::start(&coord.url(), &["--max-frame-bytes", &max]).await;
    let mut good = sidecar.channel("good").await;
    good.records(&[10]).await;
    good.flush(1).await;
    assert_eq!(good.expect_ack(1).await.admitted, 1);

    let mut offender = sidecar.connect().await;
    let expected = provoke(&mut offender, bad).await;
    let err = offender.expect_error().await;
    assert_eq!(
        err.code, expected as i32,
        "{bad:?}: expected {expected:?}, got {err:?}"
    );
    assert!(!err.message.is_empty(), "{bad:?}: the message explains");
    offender.expect_closed().await;

    // The other channel and the process go on.
    good.records(&[20, 30]).await;
    good.flush(2).await;
    let ack = good.expect_ack(2).await;
    assert_eq!((ack.admitted, ack.dropped), (3, 0), "{bad:?}");
    let times = sidecar.written_times();
    assert!(
        times.ends_with(&[20, 30]) && times.contains(&10),
        "{bad:?}: {times:?}"
    );
    // A brand-new channel is still accepted.
    let mut fresh = sidecar.channel("fresh").await;
    fresh.flush(7).await;
    fresh.expect_ack(7).await;
    sidecar.stop().await.unwrap();
}

#[tokio::test]
async fn records_before_hello_is_hello_required() {
    bad_input_closes_only_its_channel(Bad::RecordsBeforeHello).await;
}

#[tokio::test]
async fn flush_before_hello_is_hello_required() {
    bad_input_closes_only_its_channel(Bad::FlushBeforeHello).await;
}

#[tokio::test]
async fn watermark_before_hello_is_hello_required() {
    bad_input_closes_only_its_channel(Bad::WatermarkBeforeHello).await;
}

#[tokio::test]
async fn second_hello_is_duplicate_hello() {
    bad_input_closes_only_its_channel(Bad::SecondHello).await;
}

#[tokio::test]
async fn other_pipeline_is_unknown_gate() {
    bad_input_closes_only_its_channel(Bad::WrongPipeline).await;
}

#[tokio::test]
async fn other_deployment_is_unknown_gate() {
    bad_input_closes_only_its_channel(Bad::WrongDeployment).await;
}

#[tokio::test]
async fn protocol_version_2_is_unsupported() {
    bad_input_closes_only_its_channel(Bad::Version2).await;
}

#[tokio::test]
async fn undecodable_frame_is_malformed() {
    bad_input_closes_only_its_channel(Bad::Garbage).await;
}

#[tokio::test]
async fn kind_less_first_frame_is_malformed() {
    bad_input_closes_only_its_channel(Bad::KindLessFirst).await;
}

#[tokio::test]
async fn kind_less_frame_after_hello_is_malformed() {
    bad_input_closes_only_its_channel(Bad::KindLessAfterHello).await;
}

#[tokio::test]
async fn truncated_frame_is_malformed() {
    bad_input_closes_only_its_channel(Bad::Truncated).await;
}

#[tokio::test]
async fn oversized_frame_is_frame_too_large() {
    bad_input_closes_only_its_channel(Bad::Oversized).await;
}

#[tokio::test]
async fn invalid_length_prefix_is_malformed() {
    bad_input_closes_only_its_channel(Bad::InvalidLengthPrefix).await;
}

#[tokio::test]
async fn protocol_version_0_means_1() {
    let coord = FakeCoordinator::start(Some(active(1, 0))).await;
    let sidecar = Sidecar::start(&coord.url(), &[]).await;
    let mut c = sidecar.connect().await;
    c.hello_as(PIPELINE, DEPLOYMENT, "v0", 0).await;
    c.records(&[1]).await;
    c.flush(1).await;
    assert_eq!(c.expect_ack(1).await.admitted, 1);
}

//! The metrics endpoint: real numbers, plain HTTP.

use std::time::Duration;

use http::StatusCode;
use sluice_proto::v1::{self, gate_control_client::GateControlClient, gate_report};
use tokio::net::TcpStream;

use crate::common::{TestPki, TestServer, WAIT, metric, send};

#[tokio::test]
async fn pipelines_known_follow_the_gates_that_attach() {
    let dir = tempfile::tempdir().unwrap();
    let pki = TestPki::new("CA");
    let (cert, key) = pki.write(dir.path());
    let server = TestServer::start(dir.path(), &cert, &key, &[]).await;
    assert_eq!(metric(&server.metrics().await, "sluice_pipelines"), 0.0);

    let channel = tonic::transport::Channel::from_shared(format!("http://{}", server.grpc))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    tx.send(v1::GateReport {
        kind: Some(gate_report::Kind::Hello(v1::GateHello {
            pipeline: "shop/orders".into(),
            deployment: "orders-v1".into(),
            gate_id: "orders-v1-taskmanager-1-1".into(),
            assignment_version: None,
            progress: None,
        })),
    })
    .await
    .unwrap();
    let mut commands = GateControlClient::new(channel)
        .attach(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await
        .unwrap()
        .into_inner();
    // The first command is the assignment: the pipeline exists now.
    tokio::time::timeout(WAIT, commands.message())
        .await
        .unwrap()
        .unwrap();
    let deadline = tokio::time::Instant::now() + WAIT;
    while metric(&server.metrics().await, "sluice_pipelines") != 1.0 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "gauge never became 1"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    let tcp = TcpStream::connect(server.metrics).await.unwrap();
    let (status, _) = send(tcp, "POST", "/metrics", Vec::new()).await.unwrap();
    assert_eq!(status, StatusCode::METHOD_NOT_ALLOWED);
    let tcp = TcpStream::connect(server.metrics).await.unwrap();
    let (status, _) = send(tcp, "GET", "/", Vec::new()).await.unwrap();
    assert_eq!(status, StatusCode::NOT_FOUND);
    drop(tx);
    server.stop().await.unwrap();
}

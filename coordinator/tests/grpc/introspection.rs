//! Health and server reflection, so grpcurl works with no .proto files.

use tokio_stream::StreamExt;
use tonic_health::pb::{
    HealthCheckRequest, health_check_response::ServingStatus, health_client::HealthClient,
};
use tonic_reflection::pb::{v1, v1alpha};

use crate::common::TestServer;

#[tokio::test]
async fn health_reports_serving_for_every_service() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(&dir.path().join("state.json"), &[]).await;
    let mut health = HealthClient::new(server.channel().await);
    for service in ["", "sluice.v1.Cutover", "sluice.v1.GateControl"] {
        let resp = health
            .check(HealthCheckRequest {
                service: service.into(),
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(resp.status, ServingStatus::Serving as i32, "{service:?}");
    }
    server.stop().await.unwrap();
}

#[tokio::test]
async fn reflection_lists_the_services_in_both_versions() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(&dir.path().join("state.json"), &[]).await;

    let mut client =
        v1::server_reflection_client::ServerReflectionClient::new(server.channel().await);
    let req = v1::ServerReflectionRequest {
        host: String::new(),
        message_request: Some(v1::server_reflection_request::MessageRequest::ListServices(
            String::new(),
        )),
    };
    let mut stream = client
        .server_reflection_info(tokio_stream::iter([req]))
        .await
        .unwrap()
        .into_inner();
    let resp = stream.next().await.unwrap().unwrap();
    let Some(v1::server_reflection_response::MessageResponse::ListServicesResponse(list)) =
        resp.message_response
    else {
        panic!("unexpected reflection response {resp:?}");
    };
    let names: Vec<String> = list.service.into_iter().map(|s| s.name).collect();
    for want in ["sluice.v1.Cutover", "sluice.v1.GateControl"] {
        assert!(
            names.iter().any(|n| n == want),
            "{want} missing from {names:?}"
        );
    }

    let mut client =
        v1alpha::server_reflection_client::ServerReflectionClient::new(server.channel().await);
    let req = v1alpha::ServerReflectionRequest {
        host: String::new(),
        message_request: Some(
            v1alpha::server_reflection_request::MessageRequest::ListServices(String::new()),
        ),
    };
    let mut stream = client
        .server_reflection_info(tokio_stream::iter([req]))
        .await
        .unwrap()
        .into_inner();
    let resp = stream.next().await.unwrap().unwrap();
    let Some(v1alpha::server_reflection_response::MessageResponse::ListServicesResponse(list)) =
        resp.message_response
    else {
        panic!("unexpected reflection response {resp:?}");
    };
    assert!(list.service.iter().any(|s| s.name == "sluice.v1.Cutover"));
    server.stop().await.unwrap();
}

//! Reflection and health.

use crate::helpers::*;

/// Asks a reflection endpoint, through the client of its own version (`v1`
/// or `v1alpha`), for the services it lists; then asks it to describe each.
/// Returns the listed names and those it could not describe.
macro_rules! reflect {
    ($version:ident, $channel:expr) => {{
        use tonic_reflection::pb::$version::{
            ServerReflectionRequest, server_reflection_client::ServerReflectionClient,
            server_reflection_request::MessageRequest, server_reflection_response::MessageResponse,
        };
        let mut client = ServerReflectionClient::new($channel);
        let mut ask = async |requests: Vec<MessageRequest>| {
            let requests = requests.into_iter().map(|r| ServerReflectionRequest {
                host: String::new(),
                message_request: Some(r),
            });
            let mut stream = client
                .server_reflection_info(tokio_stream::iter(requests))
                .await
                .expect("ServerReflectionInfo")
                .into_inner();
            let mut responses = Vec::new();
            while let Some(response) = stream.message().await.expect("a reflection response") {
                responses.push(response.message_response);
            }
            responses
        };
        let listed: Vec<String> = match &ask(vec![MessageRequest::ListServices(String::new())])
            .await[..]
        {
            [Some(MessageResponse::ListServicesResponse(list))] => {
                list.service.iter().map(|s| s.name.clone()).collect()
            }
            other => panic!("expected one list of services, got {other:?}"),
        };
        let describe = listed
            .iter()
            .map(|name| MessageRequest::FileContainingSymbol(name.clone()))
            .collect();
        let described = ask(describe).await;
        assert_eq!(described.len(), listed.len());
        let undescribed: Vec<String> = listed
            .iter()
            .zip(described)
            .filter(|(_, response)| {
                !matches!(response, Some(MessageResponse::FileDescriptorResponse(fd))
                    if !fd.file_descriptor_proto.is_empty())
            })
            .map(|(name, _)| name.clone())
            .collect();
        (listed, undescribed)
    }};
}

on_every_database!(
    reflection_lists_and_describes_every_service,
    reflection_lists_and_describes_every_service
);
async fn reflection_lists_and_describes_every_service(db: TestDb) {
    let api = Api::start(db).await;
    let by_version = [
        ("v1", reflect!(v1, api.channel.clone())),
        ("v1alpha", reflect!(v1alpha, api.channel.clone())),
    ];
    for (version, (listed, undescribed)) in by_version {
        for expected in [
            "quota.v1.QuotaService",
            "quota.v1.TokenAdmin",
            "grpc.health.v1.Health",
            "grpc.reflection.v1.ServerReflection",
            "grpc.reflection.v1alpha.ServerReflection",
        ] {
            assert!(
                listed.iter().any(|s| s == expected),
                "{version} reflection does not list {expected}: {listed:?}"
            );
        }
        assert!(
            undescribed.is_empty(),
            "{version} reflection cannot describe {undescribed:?}"
        );
    }
}

on_every_database!(health_reports_serving, health_reports_serving);
async fn health_reports_serving(db: TestDb) {
    use tonic_health::pb::health_check_response::ServingStatus;
    use tonic_health::pb::{HealthCheckRequest, health_client::HealthClient};

    let api = Api::start(db).await;
    let mut health = HealthClient::new(api.channel.clone());
    for service in ["quota.v1.QuotaService", "quota.v1.TokenAdmin", ""] {
        let status = health
            .check(HealthCheckRequest {
                service: service.into(),
            })
            .await
            .unwrap_or_else(|e| panic!("Check {service:?}: {e:?}"))
            .into_inner()
            .status;
        assert_eq!(status, ServingStatus::Serving as i32, "{service:?}");
    }
    let unknown = health
        .check(HealthCheckRequest {
            service: "quota.v1.Nope".into(),
        })
        .await;
    assert_eq!(code(unknown), Code::NotFound);
}

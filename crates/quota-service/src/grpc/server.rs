//! The gRPC server: both services, reflection (v1 and v1alpha) and health.

use super::QuotaApi;
use quota::pb::quota_service_server::QuotaServiceServer;
use quota::pb::token_admin_server::TokenAdminServer;
use std::future::Future;
use tokio::net::TcpListener;
use tokio_stream::wrappers::TcpListenerStream;
use tonic::service::interceptor::InterceptedService;

/// `TokenAdmin` behind the admin interceptor: the only way it is served, so
/// no admin method is reachable without the admin credential.
pub fn token_admin_server(
    api: QuotaApi,
) -> InterceptedService<TokenAdminServer<QuotaApi>, crate::auth::AdminCredential> {
    let admin = api.config.admin.clone();
    TokenAdminServer::with_interceptor(api, admin)
}

/// Serves both services, reflection (v1 and v1alpha) and health on
/// `listener` until `shutdown` resolves; in-flight calls are then finished.
pub async fn serve(
    listener: TcpListener,
    api: QuotaApi,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    // Kept until the server stops: it keeps the health service true to the database.
    let (health_service, _watch) = crate::health::watch_database(api.store.clone()).await;
    // Both reflection versions describe every served service, each other included.
    let reflection = || {
        tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(quota::pb::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_reflection::pb::v1::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(
                tonic_reflection::pb::v1alpha::FILE_DESCRIPTOR_SET,
            )
    };
    tonic::transport::Server::builder()
        // Callers usually send their own deadline (grpc-timeout); this bounds the rest.
        .timeout(std::time::Duration::from_secs(30))
        // Request id, a span per call, one log line and the metrics per call.
        .layer(quota_telemetry::grpc::server_layers())
        .add_service(health_service)
        .add_service(reflection().build_v1()?)
        .add_service(reflection().build_v1alpha()?)
        .add_service(QuotaServiceServer::new(api.clone()))
        .add_service(token_admin_server(api))
        .serve_with_incoming_shutdown(TcpListenerStream::new(listener), shutdown)
        .await?;
    Ok(())
}

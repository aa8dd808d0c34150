//! The gRPC server: both services, reflection (v1 and v1alpha) and health.

use super::QuotaApi;
use quota::liveness;
use quota::pb::quota_service_server::QuotaServiceServer;
use quota::pb::token_admin_server::TokenAdminServer;
use std::future::Future;
use std::sync::Arc;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tonic::Status;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::server::TcpIncoming;
use tonic::transport::{Identity, ServerTlsConfig};
use tower::BoxError;
use tower::limit::GlobalConcurrencyLimitLayer;
use tower::load_shed::LoadShedLayer;
use tower::util::{MapResponseLayer, MapResultLayer};

/// The largest message the services decode: tonic refuses a larger one
/// before decoding it (OUT_OF_RANGE), never INTERNAL.
pub const MAX_MESSAGE_BYTES: usize = 64 * 1024;
/// Calls in flight per server when [`ServerOptions`] does not say.
pub const DEFAULT_MAX_CONCURRENCY: usize = 1024;

/// How the gRPC server runs, besides what it serves.
#[derive(Clone, Debug)]
pub struct ServerOptions {
    /// One permit per call in flight (`--max-concurrency`), all connections
    /// together, taken at once or refused with UNAVAILABLE. `quotad serve`
    /// gives its REST edge the same semaphore, so that the bound counts both.
    pub in_flight: Arc<Semaphore>,
    /// Serve over TLS with this certificate and key (`--tls-cert`, `--tls-key`).
    pub tls: Option<Identity>,
    /// The health service to serve, already watching the store
    /// ([`crate::grpc::local_services`]); without it the server watches the
    /// store itself.
    pub health: Option<crate::health::SharedHealth>,
}

impl Default for ServerOptions {
    fn default() -> Self {
        ServerOptions {
            in_flight: Arc::new(Semaphore::new(DEFAULT_MAX_CONCURRENCY)),
            tls: None,
            health: None,
        }
    }
}

/// `TokenAdmin` behind the admin interceptor: the only way it is served, so
/// no admin method is reachable without the admin credential.
pub fn token_admin_server(
    api: QuotaApi,
) -> InterceptedService<TokenAdminServer<QuotaApi>, crate::auth::AdminCredential> {
    let admin = api.config.admin.clone();
    InterceptedService::new(
        TokenAdminServer::new(api).max_decoding_message_size(MAX_MESSAGE_BYTES),
        admin,
    )
}

/// Serves both services, reflection (v1 and v1alpha) and health on
/// `listener` until `shutdown` resolves; in-flight calls are then finished.
pub async fn serve(
    listener: TcpListener,
    api: QuotaApi,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    serve_with(listener, api, ServerOptions::default(), shutdown).await
}

/// [`serve`] with `options`.
pub async fn serve_with(
    listener: TcpListener,
    api: QuotaApi,
    options: ServerOptions,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    // Kept until the server stops: it keeps the health service true to the
    // database (unless the health service given is watched already).
    let (health_service, _watch) = match options.health {
        Some(shared) => (shared.0, None),
        None => {
            let (service, watch) = crate::health::watch_database(api.store.clone()).await;
            (service, Some(watch))
        }
    };
    // Both reflection versions describe every served service, each other included.
    let (reflection_v1, reflection_v1alpha) = super::standard::reflection_servers(|| {
        tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(quota::pb::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_reflection::pb::v1::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(
                tonic_reflection::pb::v1alpha::FILE_DESCRIPTOR_SET,
            )
    })?;
    let mut server = tonic::transport::Server::builder();
    if let Some(identity) = options.tls {
        server = server.tls_config(ServerTlsConfig::new().identity(identity))?;
    }
    server
        // Callers usually send their own deadline (grpc-timeout); this bounds the rest.
        .timeout(std::time::Duration::from_secs(30))
        // Connections of callers that have gone (quota::liveness) are closed.
        .http2_keepalive_interval(Some(liveness::HTTP2_PING_INTERVAL))
        .http2_keepalive_timeout(Some(liveness::HTTP2_PING_TIMEOUT))
        // Request id, a span per call, one log line and the metrics per call,
        // refusals for load included.
        .layer(quota_telemetry::grpc::server_layers())
        // A body that is not one whole gRPC message is the caller's mistake.
        .layer(MapResponseLayer::new(malformed_is_invalid))
        // At most one call per permit of `in_flight` over every connection
        // together; past it a call is refused at once, never queued.
        .layer(
            tower::ServiceBuilder::new()
                .layer(MapResultLayer::new(busy))
                .layer(LoadShedLayer::new())
                .layer(GlobalConcurrencyLimitLayer::with_semaphore(
                    options.in_flight,
                )),
        )
        .add_service(health_service.max_decoding_message_size(MAX_MESSAGE_BYTES))
        .add_service(reflection_v1.max_decoding_message_size(MAX_MESSAGE_BYTES))
        .add_service(reflection_v1alpha.max_decoding_message_size(MAX_MESSAGE_BYTES))
        .add_service(
            QuotaServiceServer::new(api.clone()).max_decoding_message_size(MAX_MESSAGE_BYTES),
        )
        .add_service(token_admin_server(api))
        .serve_with_incoming_shutdown(
            // Answers are small frames written one after another: without
            // TCP_NODELAY, Nagle holds each next one for the caller's delayed ACK.
            TcpIncoming::from(listener)
                .with_nodelay(Some(true))
                .with_keepalive(Some(liveness::TCP_KEEPALIVE_IDLE))
                .with_keepalive_interval(Some(liveness::TCP_KEEPALIVE_INTERVAL))
                .with_keepalive_retries(Some(liveness::TCP_KEEPALIVE_RETRIES)),
            shutdown,
        )
        .await?;
    Ok(())
}

/// tonic's own refusals of a request body that is not one whole gRPC
/// message (none at all, one cut short, a compressed flag with no
/// `grpc-encoding`, a flag that is neither 0 nor 1) are INTERNAL; they are
/// the caller's mistake, so INVALID_ARGUMENT, as a message that does not
/// decode is (`quota::codec`). A unary or server-streaming call meets them
/// before any handler, as a trailers-only answer whose headers carry the
/// status (mended here); a client-streaming one, reflection's, meets them
/// in its stream of requests (mended by [`caller_mistake`] there).
fn malformed_is_invalid(
    mut response: tonic::codegen::http::Response<tonic::body::Body>,
) -> tonic::codegen::http::Response<tonic::body::Body> {
    let headers = response.headers_mut();
    if headers.get("grpc-status").is_some_and(|code| code == "13")
        && Status::from_header_map(headers).is_some_and(|status| is_malformed_body(&status))
    {
        headers.insert(
            "grpc-status",
            tonic::codegen::http::HeaderValue::from_static("3"),
        );
    }
    response
}

/// `status`, or INVALID_ARGUMENT with its message if it is tonic's refusal
/// of a body that is not one whole gRPC message (see
/// [`malformed_is_invalid`]).
pub(super) fn caller_mistake(status: Status) -> Status {
    if is_malformed_body(&status) {
        Status::invalid_argument(status.message())
    } else {
        status
    }
}

/// Whether `status` is one of tonic's refusals of a body that is not one
/// whole gRPC message. An answer of the handlers is never INTERNAL with
/// these words. The words are tonic's (0.14): an upgrade that changes them
/// fails `a_body_that_is_not_a_grpc_message_is_invalid_argument_not_internal`.
fn is_malformed_body(status: &Status) -> bool {
    const MALFORMED: [&str; 3] = [
        "Missing request message.",
        "Unexpected EOF decoding stream.",
        "protocol error: received message with ",
    ];
    status.code() == tonic::Code::Internal
        && MALFORMED.iter().any(|m| status.message().starts_with(m))
}

/// The answer to a call shed past `--max-concurrency`: UNAVAILABLE (busy,
/// retry), as a gRPC response the layers outside can count. tonic would
/// read the shedding error as RESOURCE_EXHAUSTED, which here means a spent
/// quota.
fn busy(
    result: Result<tonic::codegen::http::Response<tonic::body::Body>, BoxError>,
) -> Result<tonic::codegen::http::Response<tonic::body::Body>, BoxError> {
    match result {
        Err(e) if e.is::<tower::load_shed::error::Overloaded>() => {
            Ok(Status::unavailable("the server is busy; try again").into_http())
        }
        other => other,
    }
}

//! The services called in process: `quotad serve`'s edge calls its own
//! `QuotaService` and `grpc.health.v1.Health` through these, with no
//! socket, no HTTP/2 and no second task in between.
//!
//! A tonic client over one of them still speaks gRPC: the same messages
//! and codec (the request is encoded, the server decodes it), the same
//! statuses and metadata (`authorization`, `x-request-id`), and the same
//! server-side telemetry ([`quota_telemetry::grpc::server_layers`]: a span
//! per call carrying its request id, the call's log line and metrics). What
//! the socket's server adds for remote callers (the concurrency limit, the
//! 30 s backstop) is the edge's own business here: it bounds requests in
//! flight and waits for each answer with its deadline.

use super::{MAX_MESSAGE_BYTES, QuotaApi};
use crate::health::{DatabaseWatch, watch_database};
use quota::pb::quota_service_server::QuotaServiceServer;
use std::convert::Infallible;
use tonic::body::Body;
use tonic::codegen::http::{Request, Response};
use tower::util::BoxCloneSyncService;
use tower::{Service, ServiceBuilder, ServiceExt};

/// A gRPC service as a tonic client takes it: requests in, responses out
/// (every failure is a response: a status).
pub type LocalService = BoxCloneSyncService<Request<Body>, Response<Body>, Infallible>;

/// The services of one [`QuotaApi`], to be called in process.
#[derive(Debug)]
pub struct LocalServices {
    /// `quota.v1.QuotaService`.
    pub quota: LocalService,
    /// `grpc.health.v1.Health`, true to the database while `watch` lives.
    pub health: LocalService,
    /// Keeps the health service up to date; keep it as long as `health`.
    pub watch: DatabaseWatch,
}

/// `api`'s `QuotaService` and health, each behind the server's telemetry
/// layers, as services a tonic client calls directly.
pub async fn local_services(api: QuotaApi) -> LocalServices {
    let (health, watch) = watch_database(api.store.clone()).await;
    let quota = QuotaServiceServer::new(api).max_decoding_message_size(MAX_MESSAGE_BYTES);
    LocalServices {
        quota: local(quota),
        health: local(health.max_decoding_message_size(MAX_MESSAGE_BYTES)),
        watch,
    }
}

/// `service` behind the server's telemetry layers, its body and error boxed.
fn local<S>(service: S) -> LocalService
where
    S: Service<Request<Body>, Response = Response<Body>, Error = Infallible>
        + Clone
        + Send
        + Sync
        + 'static,
    S::Future: Send + 'static,
{
    let layered = ServiceBuilder::new()
        .layer(quota_telemetry::grpc::server_layers())
        .service(service)
        .map_response(|response| response.map(Body::new));
    BoxCloneSyncService::new(layered)
}

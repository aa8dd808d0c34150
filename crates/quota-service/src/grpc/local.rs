//! What `quotad serve`'s edge calls in process. Its reads go straight to
//! [`QuotaApi`] through the `QuotaService` trait tonic generates (same
//! messages, metadata and statuses as over a channel; nothing encoded): a
//! REST read is one request, with one span and one log line, the edge's,
//! whose request id is in scope for whatever the service logs. `/readyz`
//! asks the `grpc.health.v1.Health` service below, a tower service called
//! by a tonic client with no socket in between. What the socket's server
//! adds for remote callers (its telemetry layers, the concurrency limit, the
//! 30 s backstop) is the edge's own business here: it logs, counts and
//! bounds requests and waits for each answer with its deadline.

use super::{MAX_MESSAGE_BYTES, QuotaApi};
use crate::health::{DatabaseWatch, SharedHealth, watch_database};
use std::convert::Infallible;
use std::sync::Arc;
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
    /// `quota.v1.QuotaService` itself.
    pub quota: Arc<QuotaApi>,
    /// `grpc.health.v1.Health`, true to the database while `watch` lives.
    pub health: LocalService,
    /// Keeps the health service up to date; keep it as long as `health`.
    pub watch: DatabaseWatch,
    /// The same health service, for the process's gRPC listener
    /// ([`crate::ServerOptions::health`]).
    pub shared_health: SharedHealth,
}

/// `api`, and its health behind the server's telemetry layers as a service
/// a tonic client calls directly.
pub async fn local_services(api: QuotaApi) -> LocalServices {
    let (health, watch) = watch_database(api.store.clone()).await;
    LocalServices {
        quota: Arc::new(api),
        shared_health: SharedHealth(health.clone()),
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

//! Routes for operators and load balancers: `/healthz`, `/readyz`. No
//! authentication; CORS and request ids as on every route.

use crate::error::EdgeError;
use crate::routes::Upstream;
use axum::Json;
use axum::extract::State;
use axum::http::HeaderMap;
use serde::Serialize;
use std::time::Duration;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;
use utoipa::ToSchema;

/// How long `/readyz` waits for the gRPC service's health answer.
const READY_TIMEOUT: Duration = Duration::from_secs(2);

/// The liveness route's path: answered while the process runs, busy or not
/// (it takes no permit of the concurrency limit, [`crate::limits`]).
pub(crate) const HEALTHZ: &str = "/healthz";

/// The body of `/healthz` and of a ready `/readyz`.
#[derive(Debug, Serialize, ToSchema)]
#[schema(example = json!({"status": "ok"}))]
pub(crate) struct Health {
    /// Always `ok`.
    status: &'static str,
}

const OK: Health = Health { status: "ok" };

/// The process runs: always 200.
#[utoipa::path(
    get,
    path = "/healthz",
    tag = "operations",
    summary = "Liveness: the edge process runs",
    responses((status = 200, description = "The process runs", body = Health)),
)]
pub(crate) async fn healthz() -> Json<Health> {
    Json(OK)
}

/// The gRPC service answers and reports SERVING (which it does only while
/// its database answers): 200; otherwise 503 `service_unavailable`.
#[utoipa::path(
    get,
    path = "/readyz",
    tag = "operations",
    summary = "Readiness: the gRPC service and its database answer",
    description = "Asks the gRPC service's `grpc.health.v1.Health`, which reports SERVING only while the database answers.",
    responses(
        (status = 200, description = "Ready to serve", body = Health),
        (status = 503, description = "`service_unavailable`: the gRPC service or its database does not answer", body = crate::error::ErrorBody),
    ),
)]
pub(crate) async fn readyz(
    State(upstream): State<Upstream>,
    headers: HeaderMap,
) -> Result<Json<Health>, EdgeError> {
    let mut request = tonic::Request::new(HealthCheckRequest {
        // The server as a whole: NOT_SERVING while its database is unreachable.
        service: String::new(),
    });
    crate::routes::forward_request_id(&mut request, &headers);
    request.set_timeout(READY_TIMEOUT);
    let mut health = HealthClient::clone(&upstream.health);
    let answer = tokio::time::timeout(READY_TIMEOUT, health.check(request)).await;
    let not_ready = |detail: String| Err(EdgeError::NotReady(detail));
    match answer {
        Ok(Ok(answer)) if answer.get_ref().status == ServingStatus::Serving as i32 => Ok(Json(OK)),
        Ok(Ok(answer)) => not_ready(format!(
            "the quota service reports {:?}",
            ServingStatus::try_from(answer.get_ref().status).unwrap_or(ServingStatus::Unknown)
        )),
        Ok(Err(status)) => not_ready(format!(
            "health check failed: {:?} {}",
            status.code(),
            status.message()
        )),
        Err(_) => not_ready(format!(
            "health check did not answer within {READY_TIMEOUT:?}"
        )),
    }
}

//! The edge's errors and their OpenAI-shaped JSON bodies.

use crate::telemetry::InternalDetail;
use axum::Json;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use tonic::{Code, Status};
use utoipa::ToSchema;

/// Everything the edge answers with other than success.
#[derive(Debug)]
pub enum EdgeError {
    /// The gRPC service refused or failed the call.
    Upstream(Status),
    /// The service refused `start_date` / `end_date`.
    InvalidDate(Status),
    /// The `Authorization` header holds bytes that cannot travel as metadata.
    MalformedAuthorization,
    /// More than one `Authorization` header: which one is the caller's is
    /// not for the edge to guess (a proxy in front may read the other).
    RepeatedAuthorization,
    /// No such route.
    UnknownUrl {
        /// The method asked for.
        method: String,
        /// The path asked for.
        path: String,
    },
    /// The route exists but not for this method.
    MethodNotAllowed,
    /// `/readyz`: the gRPC service does not answer, or reports NOT_SERVING.
    NotReady(String),
    /// The URI is over [`crate::limits::MAX_URI_BYTES`] (414).
    UriTooLong,
    /// The headers are over [`crate::limits::MAX_HEADER_BYTES`] (431).
    HeadersTooLarge,
    /// The body is over [`crate::limits::MAX_BODY_BYTES`] (413).
    PayloadTooLarge,
    /// The body could not be read (400).
    UnreadableBody,
    /// The body did not arrive within [`crate::limits::BODY_READ_TIMEOUT`] (408).
    BodyTimeout,
    /// Every permit of `--max-concurrency` is taken (503, `Retry-After: 1`).
    Overloaded,
    /// Too many failed authentications from this address (429).
    Throttled {
        /// Seconds until the address may try an unproven key again.
        retry_after: u64,
    },
    /// A failure of the edge itself (500); the detail is logged, not sent.
    Internal(String),
}

/// How one gRPC status code reads over HTTP: the status, OpenAI's error
/// `type` and `code`, and whether the upstream message may be shown.
struct HttpMapping {
    status: StatusCode,
    kind: &'static str,
    code: &'static str,
    show_message: bool,
}

/// gRPC to HTTP, as grpc-gateway and Envoy map it: the one table of the edge.
fn http_mapping(code: Code) -> HttpMapping {
    let (status, kind, code, show_message) = match code {
        Code::Unauthenticated => (
            StatusCode::UNAUTHORIZED,
            INVALID_REQUEST,
            "invalid_api_key",
            true,
        ),
        Code::PermissionDenied => (
            StatusCode::FORBIDDEN,
            INVALID_REQUEST,
            "permission_denied",
            true,
        ),
        Code::NotFound => (StatusCode::NOT_FOUND, INVALID_REQUEST, "not_found", true),
        Code::InvalidArgument => (
            StatusCode::BAD_REQUEST,
            INVALID_REQUEST,
            "invalid_request",
            true,
        ),
        Code::FailedPrecondition => (
            StatusCode::BAD_REQUEST,
            INVALID_REQUEST,
            "failed_precondition",
            true,
        ),
        Code::OutOfRange => (
            StatusCode::BAD_REQUEST,
            INVALID_REQUEST,
            "out_of_range",
            true,
        ),
        Code::AlreadyExists => (StatusCode::CONFLICT, INVALID_REQUEST, "conflict", true),
        Code::ResourceExhausted => (
            StatusCode::TOO_MANY_REQUESTS,
            "insufficient_quota",
            "insufficient_quota",
            true,
        ),
        Code::Unavailable => (
            StatusCode::SERVICE_UNAVAILABLE,
            SERVER_ERROR,
            "service_unavailable",
            false,
        ),
        Code::DeadlineExceeded => (StatusCode::GATEWAY_TIMEOUT, SERVER_ERROR, "timeout", false),
        _ => (
            StatusCode::INTERNAL_SERVER_ERROR,
            SERVER_ERROR,
            "internal_error",
            false,
        ),
    };
    HttpMapping {
        status,
        kind,
        code,
        show_message,
    }
}

const INVALID_REQUEST: &str = "invalid_request_error";
const SERVER_ERROR: &str = "server_error";

/// Every error the edge answers with, as OpenAI shapes it.
#[derive(Serialize, ToSchema)]
#[schema(example = json!({"error": {"message": "invalid API key: no such key", "type": "invalid_request_error", "param": null, "code": "invalid_api_key"}}))]
pub(crate) struct ErrorBody<'a> {
    error: ErrorDetail<'a>,
}

/// What went wrong.
#[derive(Serialize, ToSchema)]
pub(crate) struct ErrorDetail<'a> {
    /// For a person: what went wrong and, where it helps, what to do.
    message: &'a str,
    /// `invalid_request_error`, `insufficient_quota`, `requests` (429
    /// `rate_limit_exceeded`, as OpenAI names it) or `server_error`.
    #[serde(rename = "type")]
    kind: &'a str,
    /// The request field at fault (`start_date`, `end_date`), or null.
    param: Option<&'a str>,
    /// For a program: `invalid_api_key`, `invalid_date`, `unknown_url`,
    /// `method_not_allowed`, `rate_limit_exceeded`, `insufficient_quota`,
    /// `service_unavailable`, `timeout`, `internal_error`, ...
    code: &'a str,
}

impl IntoResponse for EdgeError {
    fn into_response(self) -> Response {
        // Logged once, by the access log in the request's span; never sent.
        let mut internal = None;
        let (status, kind, code, message, param) = match &self {
            EdgeError::Upstream(upstream) => {
                let m = http_mapping(upstream.code());
                let message = if m.show_message {
                    upstream.message().to_owned()
                } else {
                    // The client learns only the class of the failure.
                    internal = Some(format!(
                        "upstream call failed: {:?} {}",
                        upstream.code(),
                        upstream.message()
                    ));
                    match m.status {
                        StatusCode::SERVICE_UNAVAILABLE => {
                            "the quota service is unavailable; try again later".to_owned()
                        }
                        StatusCode::GATEWAY_TIMEOUT => {
                            "the quota service did not answer in time".to_owned()
                        }
                        _ => "internal error".to_owned(),
                    }
                };
                (m.status, m.kind, m.code, message, param_of(upstream))
            }
            EdgeError::InvalidDate(upstream) => (
                StatusCode::BAD_REQUEST,
                INVALID_REQUEST,
                "invalid_date",
                upstream.message().to_owned(),
                param_of(upstream),
            ),
            EdgeError::MalformedAuthorization => (
                StatusCode::UNAUTHORIZED,
                INVALID_REQUEST,
                "invalid_api_key",
                "malformed Authorization header: expected `Bearer <key>`".to_owned(),
                None,
            ),
            EdgeError::RepeatedAuthorization => (
                StatusCode::UNAUTHORIZED,
                INVALID_REQUEST,
                "invalid_api_key",
                "more than one Authorization header: send one, `Bearer <key>`".to_owned(),
                None,
            ),
            EdgeError::UnknownUrl { method, path } => (
                StatusCode::NOT_FOUND,
                INVALID_REQUEST,
                "unknown_url",
                format!(
                    "Unknown request URL: {} {}.",
                    quota_telemetry::redact::keys(method),
                    quota_telemetry::redact::keys(path)
                ),
                None,
            ),
            EdgeError::MethodNotAllowed => (
                StatusCode::METHOD_NOT_ALLOWED,
                INVALID_REQUEST,
                "method_not_allowed",
                "method not allowed: this route answers GET".to_owned(),
                None,
            ),
            EdgeError::NotReady(detail) => {
                internal = Some(format!("not ready: {detail}"));
                (
                    StatusCode::SERVICE_UNAVAILABLE,
                    SERVER_ERROR,
                    "service_unavailable",
                    "not ready: the quota service or its database does not answer".to_owned(),
                    None,
                )
            }
            EdgeError::UriTooLong => (
                StatusCode::URI_TOO_LONG,
                INVALID_REQUEST,
                "uri_too_long",
                format!(
                    "the request URI is longer than {} bytes",
                    crate::limits::MAX_URI_BYTES
                ),
                None,
            ),
            EdgeError::HeadersTooLarge => (
                StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
                INVALID_REQUEST,
                "headers_too_large",
                format!(
                    "the request headers are larger than {} bytes in all",
                    crate::limits::MAX_HEADER_BYTES
                ),
                None,
            ),
            EdgeError::PayloadTooLarge => (
                StatusCode::PAYLOAD_TOO_LARGE,
                INVALID_REQUEST,
                "payload_too_large",
                format!(
                    "the request body is larger than {} bytes",
                    crate::limits::MAX_BODY_BYTES
                ),
                None,
            ),
            EdgeError::UnreadableBody => (
                StatusCode::BAD_REQUEST,
                INVALID_REQUEST,
                "invalid_request",
                "the request body could not be read".to_owned(),
                None,
            ),
            EdgeError::BodyTimeout => (
                StatusCode::REQUEST_TIMEOUT,
                INVALID_REQUEST,
                "request_timeout",
                format!(
                    "the request body did not arrive within {} seconds",
                    crate::limits::BODY_READ_TIMEOUT.as_secs()
                ),
                None,
            ),
            EdgeError::Overloaded => (
                StatusCode::SERVICE_UNAVAILABLE,
                SERVER_ERROR,
                "service_unavailable",
                "the server is busy; try again later".to_owned(),
                None,
            ),
            EdgeError::Throttled { retry_after } => (
                StatusCode::TOO_MANY_REQUESTS,
                // OpenAI's type for request-rate limits.
                "requests",
                "rate_limit_exceeded",
                format!(
                    "too many failed authentications from this address; try again in {retry_after} s"
                ),
                None,
            ),
            EdgeError::Internal(detail) => {
                internal = Some(detail.clone());
                (
                    StatusCode::INTERNAL_SERVER_ERROR,
                    SERVER_ERROR,
                    "internal_error",
                    "internal error".to_owned(),
                    None,
                )
            }
        };
        let body = ErrorBody {
            error: ErrorDetail {
                message: &message,
                kind,
                param,
                code,
            },
        };
        let mut response = (status, Json(body)).into_response();
        if let Some(detail) = internal {
            response.extensions_mut().insert(InternalDetail(detail));
        }
        let headers = response.headers_mut();
        if status == StatusCode::UNAUTHORIZED {
            headers.insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        if status == StatusCode::METHOD_NOT_ALLOWED {
            headers.insert(header::ALLOW, crate::cors::ALLOW);
        }
        match &self {
            EdgeError::Overloaded => {
                headers.insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
            }
            EdgeError::Throttled { retry_after } => {
                headers.insert(header::RETRY_AFTER, HeaderValue::from(*retry_after));
            }
            _ => {}
        }
        response
    }
}

/// The request field a status is about, when the service names one.
fn param_of(status: &Status) -> Option<&str> {
    status
        .metadata()
        .get(quota::PARAM_METADATA)
        .and_then(|v| v.to_str().ok())
}

impl From<Status> for EdgeError {
    fn from(status: Status) -> Self {
        EdgeError::Upstream(status)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grpc_codes_map_as_grpc_gateway_does() {
        let cases = [
            (Code::Unauthenticated, 401),
            (Code::PermissionDenied, 403),
            (Code::NotFound, 404),
            (Code::InvalidArgument, 400),
            (Code::FailedPrecondition, 400),
            (Code::OutOfRange, 400),
            (Code::AlreadyExists, 409),
            (Code::ResourceExhausted, 429),
            (Code::Unavailable, 503),
            (Code::DeadlineExceeded, 504),
            (Code::Internal, 500),
            (Code::Unknown, 500),
            (Code::DataLoss, 500),
        ];
        for (code, http) in cases {
            assert_eq!(http_mapping(code).status.as_u16(), http, "{code:?}");
        }
    }
}

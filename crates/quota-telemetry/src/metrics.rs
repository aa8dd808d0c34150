//! Every metric quota records: its name, its labels, and the one function
//! that records it.
//!
//! Without an installed recorder (`--metrics-addr` unset) each function is a
//! no-op of a few nanoseconds. Label values are route templates, gRPC method
//! paths, status names and fixed words: never a key, never a raw URL path.

use std::time::Duration;

/// REST requests answered: `route` (the template, or [`UNKNOWN_ROUTE`]), `method`, `status`.
pub const HTTP_REQUESTS: &str = "quota_http_requests_total";
/// Seconds from a REST request to its response headers, by `route`.
pub const HTTP_DURATION: &str = "quota_http_request_duration_seconds";
/// gRPC calls finished: `method` (`/package.Service/Method`), `code` (`OK`, `NOT_FOUND`, ...).
pub const GRPC_REQUESTS: &str = "quota_grpc_requests_total";
/// Seconds from a gRPC call to its status, by `method`.
pub const GRPC_DURATION: &str = "quota_grpc_request_duration_seconds";
/// Debits decided, by `outcome` (see [`DebitOutcome`]).
pub const DEBITS: &str = "quota_debits_total";
/// Quota units debited (repeats and refusals count nothing).
pub const DEBITED_UNITS: &str = "quota_debited_units_total";
/// Database connections of a pool, by `pool` and `state` (`in_use`, `idle`, `max`); sampled at each scrape.
pub const DB_CONNECTIONS: &str = "quota_db_connections";
/// Cache look-ups, by `cache` and `result` (`hit`, `miss`).
pub const CACHE_LOOKUPS: &str = "quota_cache_lookups_total";
/// Holds that are neither settled, released nor expired.
pub const HOLDS_LIVE: &str = "quota_holds_live";
/// Requests the key-guessing throttle refused (429).
pub const THROTTLE_REFUSALS: &str = "quota_throttle_refusals_total";

/// The `route` of every request that matched no route, so that a scan of
/// random paths adds one series, not one per path.
pub const UNKNOWN_ROUTE: &str = "unknown";
/// The `method` of every gRPC call to a method that does not exist.
pub const UNKNOWN_METHOD: &str = "unknown";

/// Bucket bounds (seconds) of both duration histograms: from a cached read
/// (well under a millisecond) to the edge's 10 s deadline.
pub const DURATION_BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// Registers the help text of every metric with the installed recorder.
pub fn describe() {
    use metrics::{Unit, describe_counter, describe_gauge, describe_histogram};
    describe_counter!(
        HTTP_REQUESTS,
        "REST requests answered, by route template, method and status"
    );
    describe_histogram!(
        HTTP_DURATION,
        Unit::Seconds,
        "REST request duration, by route template"
    );
    describe_counter!(
        GRPC_REQUESTS,
        "gRPC calls finished, by method and status code"
    );
    describe_histogram!(
        GRPC_DURATION,
        Unit::Seconds,
        "gRPC call duration, by method"
    );
    describe_counter!(DEBITS, "Debits decided, by outcome");
    describe_counter!(DEBITED_UNITS, "Quota units debited");
    describe_gauge!(
        DB_CONNECTIONS,
        "Database pool connections, by pool and state (in_use, idle, max)"
    );
    describe_counter!(
        CACHE_LOOKUPS,
        "Cache look-ups, by cache and result (hit, miss)"
    );
    describe_gauge!(HOLDS_LIVE, "Holds neither settled, released nor expired");
    describe_counter!(
        THROTTLE_REFUSALS,
        "Requests refused by the key-guessing throttle"
    );
}

/// Records one answered REST request. `route` is the matched template (or
/// [`UNKNOWN_ROUTE`]), never the request's path.
pub fn http_request(route: &str, method: &http::Method, status: http::StatusCode, took: Duration) {
    let route = route.to_owned();
    metrics::counter!(
        HTTP_REQUESTS,
        "route" => route.clone(),
        "method" => method_name(method),
        "status" => status_name(status),
    )
    .increment(1);
    metrics::histogram!(HTTP_DURATION, "route" => route).record(took.as_secs_f64());
}

/// Records one finished gRPC call.
pub fn grpc_request(method: &str, code: tonic::Code, took: Duration) {
    let method = if code == tonic::Code::Unimplemented {
        UNKNOWN_METHOD.to_owned()
    } else {
        method.to_owned()
    };
    metrics::counter!(GRPC_REQUESTS, "method" => method.clone(), "code" => code_name(code))
        .increment(1);
    metrics::histogram!(GRPC_DURATION, "method" => method).record(took.as_secs_f64());
}

/// What became of a debit (`Consume`, or a settle).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DebitOutcome {
    /// Units were taken.
    Debited,
    /// A repeat of a `request_id` already debited: nothing more was taken.
    Repeat,
    /// The token cannot afford it (RESOURCE_EXHAUSTED).
    Insufficient,
    /// The token or the request was refused (unknown, disabled, expired, malformed).
    Refused,
    /// The database failed or was unreachable.
    Failed,
}

impl DebitOutcome {
    /// The label value.
    pub fn as_str(self) -> &'static str {
        match self {
            DebitOutcome::Debited => "debited",
            DebitOutcome::Repeat => "repeat",
            DebitOutcome::Insufficient => "insufficient",
            DebitOutcome::Refused => "refused",
            DebitOutcome::Failed => "failed",
        }
    }
}

/// Records one decided debit; `units` counts only when it was [`DebitOutcome::Debited`].
pub fn debit(outcome: DebitOutcome, units: i64) {
    metrics::counter!(DEBITS, "outcome" => outcome.as_str()).increment(1);
    if outcome == DebitOutcome::Debited {
        metrics::counter!(DEBITED_UNITS).increment(u64::try_from(units).unwrap_or(0));
    }
}

/// Records a cache look-up of the cache named `cache` (e.g. `"key"` in the service, `"edge"`).
pub fn cache_lookup(cache: &'static str, hit: bool) {
    let result = if hit { "hit" } else { "miss" };
    metrics::counter!(CACHE_LOOKUPS, "cache" => cache, "result" => result).increment(1);
}

/// Sets the number of live holds (sampled or kept up to date by the caller).
pub fn holds_live(count: u64) {
    metrics::gauge!(HOLDS_LIVE).set(count as f64);
}

/// Records one request refused by the key-guessing throttle.
pub fn throttle_refused() {
    metrics::counter!(THROTTLE_REFUSALS).increment(1);
}

/// Sets the connection counts of the pool named `pool` (`"write"`, `"read"`).
pub fn db_pool(pool: &'static str, in_use: u32, idle: u32, max: u32) {
    for (state, n) in [("in_use", in_use), ("idle", idle), ("max", max)] {
        metrics::gauge!(DB_CONNECTIONS, "pool" => pool, "state" => state).set(f64::from(n));
    }
}

fn method_name(method: &http::Method) -> &'static str {
    match *method {
        http::Method::GET => "GET",
        http::Method::HEAD => "HEAD",
        http::Method::OPTIONS => "OPTIONS",
        http::Method::POST => "POST",
        http::Method::PUT => "PUT",
        http::Method::DELETE => "DELETE",
        http::Method::PATCH => "PATCH",
        _ => "OTHER",
    }
}

fn status_name(status: http::StatusCode) -> &'static str {
    // Only the statuses quota answers with get a name of their own; the
    // label set stays bounded whatever a layer below returns.
    match status.as_u16() {
        200 => "200",
        204 => "204",
        304 => "304",
        400 => "400",
        401 => "401",
        403 => "403",
        404 => "404",
        405 => "405",
        408 => "408",
        409 => "409",
        413 => "413",
        414 => "414",
        429 => "429",
        431 => "431",
        500 => "500",
        502 => "502",
        503 => "503",
        504 => "504",
        s if s < 300 => "2xx",
        s if s < 400 => "3xx",
        s if s < 500 => "4xx",
        _ => "5xx",
    }
}

/// The canonical name of a gRPC status code, as the gRPC spec writes it.
pub fn code_name(code: tonic::Code) -> &'static str {
    use tonic::Code::*;
    match code {
        Ok => "OK",
        Cancelled => "CANCELLED",
        Unknown => "UNKNOWN",
        InvalidArgument => "INVALID_ARGUMENT",
        DeadlineExceeded => "DEADLINE_EXCEEDED",
        NotFound => "NOT_FOUND",
        AlreadyExists => "ALREADY_EXISTS",
        PermissionDenied => "PERMISSION_DENIED",
        ResourceExhausted => "RESOURCE_EXHAUSTED",
        FailedPrecondition => "FAILED_PRECONDITION",
        Aborted => "ABORTED",
        OutOfRange => "OUT_OF_RANGE",
        Unimplemented => "UNIMPLEMENTED",
        Internal => "INTERNAL",
        Unavailable => "UNAVAILABLE",
        DataLoss => "DATA_LOSS",
        Unauthenticated => "UNAUTHENTICATED",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_labels_stay_bounded() {
        assert_eq!(status_name(http::StatusCode::OK), "200");
        assert_eq!(status_name(http::StatusCode::IM_A_TEAPOT), "4xx");
        assert_eq!(
            status_name(http::StatusCode::from_u16(599).unwrap_or_default()),
            "5xx"
        );
        assert_eq!(method_name(&http::Method::CONNECT), "OTHER");
    }
}

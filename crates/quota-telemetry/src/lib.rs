//! What an operator sees of quota, in one place for every process.
//!
//! - [`metrics`]: the names of every metric and the small functions that
//!   record them (the edge, the service, the cache, holds and the throttle
//!   call these, never `metrics::counter!` with a name of their own);
//! - [`exporter`]: the Prometheus recorder and its `GET /metrics` server;
//! - [`request_id`]: the `x-request-id` header, kept when a caller's is
//!   well-formed, made otherwise, and returned on every response;
//! - [`grpc`]: the layers of the gRPC server: request id, one span per call
//!   carrying it, and one record (log line and metrics) per call;
//! - [`redact`]: keys cut to their display prefix in text a caller sent
//!   that is repeated in a log line or an answer.
//!
//! The crate knows nothing of the database or the REST routes; the edge and
//! the service depend on it, never the reverse.

pub mod exporter;
pub mod grpc;
pub mod metrics;
pub mod redact;
pub mod request_id;

use std::time::Duration;

/// A request's time as its log line's `latency_ms`: whole microseconds, so
/// that the line says `0.633`, not the `0.6325970000000001` of a float
/// product.
pub fn latency_ms(took: Duration) -> f64 {
    // Exact up to 2^53 µs (285 years), far past any request's time.
    let micros = took.as_micros() as f64;
    micros / 1e3
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn latency_is_written_in_whole_microseconds() {
        assert_eq!(
            latency_ms(Duration::from_nanos(632_597)).to_string(),
            "0.632"
        );
        assert_eq!(latency_ms(Duration::from_micros(1_500)).to_string(), "1.5");
        assert_eq!(latency_ms(Duration::from_secs(3)).to_string(), "3000");
        assert_eq!(latency_ms(Duration::ZERO).to_string(), "0");
    }
}

//! What an operator sees of quota, in one place for every process.
//!
//! - [`metrics`]: the names of every metric and the small functions that
//!   record them (the edge, the service, the cache, holds and the throttle
//!   call these, never `metrics::counter!` with a name of their own);
//! - [`exporter`]: the Prometheus recorder and its `GET /metrics` server;
//! - [`request_id`]: the `x-request-id` header, kept when a caller's is
//!   well-formed, made otherwise, and returned on every response;
//! - [`grpc`]: the layers of the gRPC server: request id, one span per call
//!   carrying it, and one record (log line and metrics) per call.
//!
//! The crate knows nothing of the database or the REST routes; the edge and
//! the service depend on it, never the reverse.

pub mod exporter;
pub mod grpc;
pub mod metrics;
pub mod request_id;

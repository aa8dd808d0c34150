//! The REST edge of quota: OpenAI-style billing routes for chat apps,
//! balance checkers and scripts, answered by calling the quota gRPC service.
//! The edge holds no data of its own and never touches the database.

mod cors;
mod error;
pub mod limits;
mod openapi;
mod ops;
mod routes;
mod server;
mod telemetry;
pub mod throttle;
pub mod tls;
pub mod unanswered;

pub use error::EdgeError;
pub use routes::{EdgeConfig, Transport, TransportError, Upstream, app, app_with};
pub use server::{serve, serve_with};
pub use throttle::ThrottleConfig;
pub use tls::{ClientTls, InvalidUrl, ServerTls, TlsError};

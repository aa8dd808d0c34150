//! The REST edge of quota: OpenAI-style billing routes for chat apps,
//! balance checkers and scripts, answered by calling the quota gRPC service.
//! The edge holds no data of its own and never touches the database.

mod error;
mod openapi;
mod ops;
mod routes;
mod telemetry;

pub use error::EdgeError;
pub use routes::{Upstream, app};

use std::future::Future;
use tokio::net::TcpListener;

/// Serves `app` on `listener` until `shutdown` resolves, then finishes the
/// requests in flight.
pub async fn serve(
    listener: TcpListener,
    app: axum::Router,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    axum::serve(listener, app)
        .with_graceful_shutdown(shutdown)
        .await
}

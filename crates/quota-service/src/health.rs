//! `grpc.health.v1.Health` that tells the truth: a background task pings the
//! database and reports NOT_SERVING for the server (`""`) and both quota
//! services while the database does not answer, SERVING once it does.
//!
//! The REST edge's `/readyz` asks this service (`Check` of `""`) through its
//! upstream, so one watcher decides readiness for both listeners.

use crate::grpc::QuotaApi;
use crate::grpc::standard::{Health, health_server};
use crate::store::Store;
use quota::pb::quota_service_server::QuotaServiceServer;
use quota::pb::token_admin_server::TokenAdminServer;
use quota::standard::health::health_server::HealthServer;
use std::time::Duration;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tonic::server::NamedService;
use tonic_health::ServingStatus;
use tonic_health::server::HealthReporter;

/// How often the database is pinged.
pub const PING_EVERY: Duration = Duration::from_secs(1);
/// How long a ping may take before the database counts as unreachable.
pub const PING_TIMEOUT: Duration = Duration::from_secs(2);

/// The names whose status is reported: the server as a whole and each service.
const SERVICES: [&str; 3] = [
    "",
    <QuotaServiceServer<QuotaApi> as NamedService>::NAME,
    <TokenAdminServer<QuotaApi> as NamedService>::NAME,
];

/// A health service already watching its store, for a second server of
/// the same process to serve too (`quotad serve`: the edge's `/readyz` and
/// the gRPC listener), so that one task pings the database and logs each
/// change once.
#[derive(Clone)]
pub struct SharedHealth(pub(crate) HealthServer<Health>);

impl std::fmt::Debug for SharedHealth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SharedHealth")
    }
}

/// The task that keeps the health service up to date; it stops when dropped.
#[derive(Debug)]
pub struct DatabaseWatch {
    task: JoinHandle<()>,
    serving: watch::Receiver<bool>,
}

impl DatabaseWatch {
    /// Whether the database answered the last ping.
    pub fn is_serving(&self) -> bool {
        *self.serving.borrow()
    }

    /// Follows the state: `true` while the database answers.
    pub fn subscribe(&self) -> watch::Receiver<bool> {
        self.serving.clone()
    }
}

impl Drop for DatabaseWatch {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// The health service of `store`, and the watcher that feeds it. The first
/// ping is answered before this returns, so the service never reports a
/// state it has not seen.
pub async fn watch_database(store: Store) -> (HealthServer<Health>, DatabaseWatch) {
    let reporter = HealthReporter::new();
    let service = health_server(&reporter);
    let first = ping(&store).await;
    report(&reporter, first).await;
    if !first {
        tracing::warn!("database unreachable: health is NOT_SERVING");
    }
    let (tx, serving) = watch::channel(first);
    let task = tokio::spawn(async move {
        let mut was = first;
        loop {
            tokio::time::sleep(PING_EVERY).await;
            let now = ping(&store).await;
            if now != was {
                report(&reporter, now).await;
                if now {
                    tracing::info!("database answers again: health is SERVING");
                } else {
                    tracing::warn!("database unreachable: health is NOT_SERVING");
                }
                let _ = tx.send(now);
                was = now;
            }
        }
    });
    (service, DatabaseWatch { task, serving })
}

async fn ping(store: &Store) -> bool {
    matches!(
        tokio::time::timeout(PING_TIMEOUT, store.ping()).await,
        Ok(Ok(()))
    )
}

async fn report(reporter: &HealthReporter, serving: bool) {
    let status = if serving {
        ServingStatus::Serving
    } else {
        ServingStatus::NotServing
    };
    for name in SERVICES {
        reporter.set_service_status(name, status).await;
    }
}

//! Wiring: open the store, bind the listeners, serve until a signal.

use crate::cli::{Cli, Command, DatabaseArgs, ServiceArgs};
use crate::telemetry;
use anyhow::{Context, Result, anyhow};
use quota_edge::Upstream;
use quota_service::auth::AdminCredential;
use quota_service::domain::QuotaPerUsd;
use quota_service::store::redact_url;
use quota_service::{QuotaApi, ServiceConfig, Store};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::watch;

/// Carries out one command.
pub async fn run(cli: Cli) -> Result<()> {
    match cli.command {
        Command::Serve {
            db,
            service,
            grpc,
            http,
            metrics,
        } => {
            // Ports first: a bad or busy address is one line before any database
            // is touched. Connections that arrive while the database opens wait
            // in the backlog; the servers are announced once they can answer.
            let stop = shutdown_signal()?;
            let grpc = bind(&grpc.grpc_addr, "gRPC").await?;
            let http = bind(&http.http_addr, "REST").await?;
            let metrics = telemetry::bind_metrics(&metrics).await?;
            let (api, store) = open_api(&db, &service).await?;
            telemetry::serve_metrics(
                metrics,
                move || store.record_pool_metrics(),
                stopped(stop.clone()),
            )?;
            announce(&grpc, "gRPC")?;
            announce(&http, "REST")?;
            let upstream = Upstream::lazy(&format!("http://{}", reachable(grpc.local_addr()?)))?;
            let grpc = tokio::spawn(quota_service::serve(grpc, api, stopped(stop.clone())));
            let edge = tokio::spawn(quota_edge::serve(
                http,
                quota_edge::app(upstream),
                stopped(stop.clone()),
            ));
            if let Some((grpc, edge)) = drained(stop, async { tokio::join!(grpc, edge) }).await {
                grpc?.map_err(|e| anyhow!("gRPC server failed: {e}"))?;
                edge?.context("REST edge failed")?;
            }
        }
        Command::Grpc {
            db,
            service,
            grpc,
            metrics,
        } => {
            let stop = shutdown_signal()?;
            let grpc = bind(&grpc.grpc_addr, "gRPC").await?;
            let metrics = telemetry::bind_metrics(&metrics).await?;
            let (api, store) = open_api(&db, &service).await?;
            telemetry::serve_metrics(
                metrics,
                move || store.record_pool_metrics(),
                stopped(stop.clone()),
            )?;
            announce(&grpc, "gRPC")?;
            let server = quota_service::serve(grpc, api, stopped(stop.clone()));
            if let Some(served) = drained(stop, server).await {
                served.map_err(|e| anyhow!("gRPC server failed: {e}"))?;
            }
        }
        Command::Edge {
            upstream,
            http,
            metrics,
        } => {
            let upstream = Upstream::lazy(&upstream).map_err(|e| anyhow!("--upstream {e}"))?;
            let stop = shutdown_signal()?;
            let http = bind(&http.http_addr, "REST").await?;
            let metrics = telemetry::bind_metrics(&metrics).await?;
            telemetry::serve_metrics(metrics, || {}, stopped(stop.clone()))?;
            announce(&http, "REST")?;
            let server = quota_edge::serve(http, quota_edge::app(upstream), stopped(stop.clone()));
            if let Some(served) = drained(stop, server).await {
                served.context("REST edge failed")?;
            }
        }
        Command::Migrate { db } => {
            open_store(&db).await?;
            tracing::info!("migrations applied");
            return Ok(());
        }
        Command::Token { admin, command } => return crate::token::run(admin, command).await,
    }
    tracing::info!("stopped");
    Ok(())
}

async fn open_store(db: &DatabaseArgs) -> Result<Store> {
    let shown = redact_url(&db.database_url);
    let store = Store::connect(&db.database_url)
        .await
        .map_err(|e| anyhow!("cannot open database {shown}: {}", detail(&e)))?;
    store
        .migrate()
        .await
        .map_err(|e| anyhow!("cannot migrate database {shown}: {}", detail(&e)))?;
    tracing::info!(database = %shown, "database ready");
    Ok(store)
}

/// The services over a freshly opened store, and the store (for its pool metrics).
async fn open_api(db: &DatabaseArgs, service: &ServiceArgs) -> Result<(QuotaApi, Store)> {
    let per_usd = QuotaPerUsd::new(service.quota_per_usd).map_err(|e| anyhow!("{e}"))?;
    let store = open_store(db).await?;
    if service.admin.secret().is_none() {
        tracing::warn!("QUOTA_ADMIN_TOKEN is not set: admin methods and Consume refuse every call");
    }
    let config = ServiceConfig {
        per_usd,
        admin: AdminCredential::new(service.admin.secret()),
    };
    Ok((QuotaApi::new(store.clone(), config), store))
}

/// The detail inside an error that would otherwise read only "unavailable".
fn detail(err: &quota_service::QuotaError) -> String {
    match err {
        quota_service::QuotaError::Unavailable(d) | quota_service::QuotaError::Internal(d) => {
            d.clone()
        }
        other => other.to_string(),
    }
}

/// Binds `addr` (`HOST:PORT`; every address a name resolves to is tried).
async fn bind(addr: &str, what: &str) -> Result<TcpListener> {
    TcpListener::bind(addr)
        .await
        .with_context(|| format!("cannot listen for {what} on {addr:?}"))
}

/// Says where a server listens, once it is ready to answer.
fn announce(listener: &TcpListener, what: &str) -> Result<()> {
    let local = listener.local_addr()?;
    match what {
        "REST" => tracing::info!("REST listening on http://{local}"),
        _ => tracing::info!("{what} listening on {local}"),
    }
    Ok(())
}

/// An address a local client can dial: a wildcard bind is reached on loopback.
fn reachable(addr: SocketAddr) -> SocketAddr {
    match addr.ip() {
        IpAddr::V4(ip) if ip.is_unspecified() => {
            SocketAddr::new(Ipv4Addr::LOCALHOST.into(), addr.port())
        }
        IpAddr::V6(ip) if ip.is_unspecified() => {
            SocketAddr::new(Ipv6Addr::LOCALHOST.into(), addr.port())
        }
        _ => addr,
    }
}

/// Flips once on SIGTERM or Ctrl-C. The handlers are installed before this
/// returns, so a signal sent as soon as the listeners are announced is caught.
fn shutdown_signal() -> Result<watch::Receiver<bool>> {
    let (tx, rx) = watch::channel(false);
    #[cfg(unix)]
    let (mut term, mut int) = {
        use tokio::signal::unix::{SignalKind, signal};
        let install = |kind| signal(kind).context("cannot install the shutdown signal handler");
        (
            install(SignalKind::terminate())?,
            install(SignalKind::interrupt())?,
        )
    };
    tokio::spawn(async move {
        #[cfg(unix)]
        tokio::select! {
            _ = term.recv() => {},
            _ = int.recv() => {},
        }
        #[cfg(not(unix))]
        let _ = tokio::signal::ctrl_c().await;
        tracing::info!("shutting down: finishing requests in flight");
        let _ = tx.send(true);
    });
    Ok(rx)
}

async fn stopped(mut rx: watch::Receiver<bool>) {
    let _ = rx.wait_for(|stop| *stop).await;
}

/// How long requests in flight may take to finish after the signal.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);

/// Runs `servers` to their end, or to [`SHUTDOWN_GRACE`] after the signal
/// (`None`): a connection that never sends a request would otherwise hold a
/// graceful shutdown open for ever (hyperium/hyper#4170).
async fn drained<T>(stop: watch::Receiver<bool>, servers: impl Future<Output = T>) -> Option<T> {
    tokio::select! {
        done = servers => Some(done),
        () = async {
            stopped(stop).await;
            tokio::time::sleep(SHUTDOWN_GRACE).await;
        } => {
            tracing::warn!(
                "connections still open {}s after the signal: closing them",
                SHUTDOWN_GRACE.as_secs()
            );
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wildcard_binds_are_dialled_on_loopback() {
        assert_eq!(
            reachable("0.0.0.0:5".parse().unwrap()),
            "127.0.0.1:5".parse().unwrap()
        );
        assert_eq!(
            reachable("[::]:5".parse().unwrap()),
            "[::1]:5".parse().unwrap()
        );
        assert_eq!(
            reachable("10.1.2.3:5".parse().unwrap()),
            "10.1.2.3:5".parse().unwrap()
        );
    }
}

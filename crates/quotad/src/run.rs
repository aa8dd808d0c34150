//! Wiring: open the store, bind the listeners, serve until a signal.

use crate::cli::{Cli, Command, DatabaseArgs, ServiceArgs};
use anyhow::{Context, Result, anyhow};
use quota_edge::Upstream;
use quota_service::auth::AdminCredential;
use quota_service::domain::QuotaPerUsd;
use quota_service::{QuotaApi, ServiceConfig, Store};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
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
        } => {
            let api = open_api(&db, &service).await?;
            let grpc = bind(&grpc.grpc_addr, "gRPC").await?;
            let http = bind(&http.http_addr, "REST").await?;
            let upstream = Upstream::lazy(&format!("http://{}", reachable(grpc.local_addr()?)))?;
            let stop = shutdown_signal();
            let grpc = tokio::spawn(quota_service::serve(grpc, api, stopped(stop.clone())));
            let edge = tokio::spawn(quota_edge::serve(
                http,
                quota_edge::app(upstream),
                stopped(stop),
            ));
            let (grpc, edge) = tokio::join!(grpc, edge);
            grpc?.map_err(|e| anyhow!("gRPC server failed: {e}"))?;
            edge?.context("REST edge failed")?;
        }
        Command::Grpc { db, service, grpc } => {
            let api = open_api(&db, &service).await?;
            let grpc = bind(&grpc.grpc_addr, "gRPC").await?;
            quota_service::serve(grpc, api, stopped(shutdown_signal()))
                .await
                .map_err(|e| anyhow!("gRPC server failed: {e}"))?;
        }
        Command::Edge { upstream, http } => {
            let upstream = Upstream::lazy(&upstream).with_context(|| {
                format!("--upstream {upstream:?} is not a valid URL (expected http://HOST:PORT)")
            })?;
            let http = bind(&http.http_addr, "REST").await?;
            quota_edge::serve(http, quota_edge::app(upstream), stopped(shutdown_signal()))
                .await
                .context("REST edge failed")?;
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
    let shown = redact(&db.database_url);
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

async fn open_api(db: &DatabaseArgs, service: &ServiceArgs) -> Result<QuotaApi> {
    let per_usd = QuotaPerUsd::new(service.quota_per_usd).map_err(|e| anyhow!("{e}"))?;
    if service.admin_token.as_deref().is_none_or(str::is_empty) {
        tracing::warn!("QUOTA_ADMIN_TOKEN is not set: admin methods and Consume refuse every call");
    }
    let store = open_store(db).await?;
    let config = ServiceConfig {
        per_usd,
        admin: AdminCredential::new(service.admin_token.as_deref()),
    };
    Ok(QuotaApi::new(store, config))
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

async fn bind(addr: &str, what: &str) -> Result<TcpListener> {
    let listener = TcpListener::bind(addr)
        .await
        .with_context(|| format!("cannot listen for {what} on {addr:?}"))?;
    let local = listener.local_addr()?;
    match what {
        "REST" => tracing::info!("REST listening on http://{local}"),
        _ => tracing::info!("{what} listening on {local}"),
    }
    Ok(listener)
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

/// A URL with its password, if any, hidden.
fn redact(url: &str) -> String {
    let Some(scheme_end) = url.find("://").map(|i| i + 3) else {
        return url.to_owned();
    };
    let rest = &url[scheme_end..];
    let authority = &rest[..rest.find('/').unwrap_or(rest.len())];
    match authority
        .rfind('@')
        .and_then(|at| authority[..at].find(':').map(|colon| (colon, at)))
    {
        Some((colon, at)) => format!(
            "{}{}:***{}",
            &url[..scheme_end],
            &authority[..colon],
            &rest[at..]
        ),
        None => url.to_owned(),
    }
}

/// Flips once on SIGTERM or Ctrl-C.
fn shutdown_signal() -> watch::Receiver<bool> {
    let (tx, rx) = watch::channel(false);
    tokio::spawn(async move {
        let ctrl_c = tokio::signal::ctrl_c();
        #[cfg(unix)]
        let term = async {
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(mut s) => {
                    s.recv().await;
                }
                Err(_) => std::future::pending::<()>().await,
            }
        };
        #[cfg(not(unix))]
        let term = std::future::pending::<()>();
        tokio::select! {
            _ = ctrl_c => {},
            _ = term => {},
        }
        tracing::info!("shutting down: finishing requests in flight");
        let _ = tx.send(true);
    });
    rx
}

async fn stopped(mut rx: watch::Receiver<bool>) {
    let _ = rx.wait_for(|stop| *stop).await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_are_redacted() {
        assert_eq!(
            redact("postgres://u:secret@db:5432/q"),
            "postgres://u:***@db:5432/q"
        );
        assert_eq!(redact("postgres://u@db/q"), "postgres://u@db/q");
        assert_eq!(redact("sqlite://quota.db"), "sqlite://quota.db");
    }

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

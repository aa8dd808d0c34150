//! Wiring: bind the ports, open and migrate the store, listen, serve until a signal.

use crate::cli::{
    CacheArgs, Cli, Command, DatabaseArgs, LockWait, MigrateArgs, MigrateMode, ServerArgs,
    ServiceArgs, ThrottleArgs,
};
use crate::telemetry;
use anyhow::{Context, Result, anyhow, bail};
use quota_edge::{EdgeConfig, ThrottleConfig, Upstream};
use quota_service::ServerOptions;
use quota_service::auth::AdminCredential;
use quota_service::domain::QuotaPerUsd;
use quota_service::grpc::{LocalServices, local_services};
use quota_service::health::SharedHealth;
use quota_service::store::{
    MigrationStatus, WriteCheck, migration_names, redact_url, sqlite_file_missing,
};
use quota_service::{CacheConfig, QuotaApi, ServiceConfig, Store};
use std::net::{SocketAddr, ToSocketAddrs};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::{Semaphore, watch};
use tonic::transport::Identity;

/// Carries out one command; the exit code when it ends without an error.
pub async fn run(cli: Cli) -> Result<ExitCode> {
    match cli.command {
        Command::Serve {
            db,
            migrate,
            service,
            grpc,
            http,
            metrics,
            server,
            throttle,
            cache,
        } => {
            let tls = crate::tls::server(&server)?;
            let config = service_config(&service, &cache)?;
            let admin_closed = config.admin.is_closed();
            // Ports are bound first, so a bad or busy address is one line before
            // any database is touched, but they listen only once the database is
            // open and migrated: until then a connection is refused, never
            // accepted and left unanswered.
            let stop = shutdown_signal()?;
            let grpc = bind(&grpc.grpc_addr, "gRPC")?;
            let http = bind(&http.http_addr, "REST")?;
            http.apart_from(&grpc)?;
            let metrics = telemetry::bind_metrics(&metrics).await?;
            metrics_apart(metrics.as_ref(), &[&grpc, &http])?;
            let Some((api, store)) = open_api(&db, &migrate, config, &stop).await? else {
                return Ok(ExitCode::SUCCESS);
            };
            telemetry::serve_metrics(
                metrics,
                move || store.clone().record_metrics(),
                stopped(stop.clone()),
            )?;
            let grpc = grpc.listen(tls.is_some())?;
            let http = http.listen(tls.is_some())?;
            warn_if_admin_closed(admin_closed);
            // The edge calls its own service in process: gRPC's messages and
            // statuses, with no socket or encoding in between (TLS or not).
            // The watch keeps the health service it asks true to the
            // database, as long as it runs.
            let LocalServices {
                quota,
                health,
                watch: _watch,
                shared_health,
            } = local_services(api.clone()).await;
            let upstream = Upstream::in_process(quota, health);
            let (rest_tls, grpc_tls) = tls.map(|t| (t.rest, t.grpc)).unzip();
            // The gRPC server stops once the edge has drained: a REST request
            // already received may still need the service for its answer.
            let (edge_done, edge_drained) = watch::channel(false);
            // `--max-concurrency` bounds the process: REST and gRPC share its permits.
            let in_flight = in_flight(&server);
            let edge = tokio::spawn({
                let edge = quota_edge::serve_with(
                    http,
                    quota_edge::app_with(
                        upstream,
                        edge_config(in_flight.clone(), &throttle, cache.ttl.cache_ttl),
                    ),
                    rest_tls,
                    stopped(stop.clone()),
                );
                async move {
                    let served = edge.await;
                    let _ = edge_done.send(true);
                    served
                }
            });
            let grpc = tokio::spawn(quota_service::serve_with(
                grpc,
                api,
                grpc_options(in_flight, grpc_tls, Some(shared_health)),
                stopped(edge_drained),
            ));
            if let Some((grpc, edge)) = drained(stop, async { tokio::join!(grpc, edge) }).await {
                grpc?.map_err(|e| anyhow!("gRPC server failed: {e}"))?;
                edge?.context("REST edge failed")?;
            }
        }
        Command::Grpc {
            db,
            migrate,
            service,
            grpc,
            metrics,
            server,
            cache,
        } => {
            let tls = crate::tls::server(&server)?;
            let config = service_config(&service, &cache)?;
            let admin_closed = config.admin.is_closed();
            let stop = shutdown_signal()?;
            let grpc = bind(&grpc.grpc_addr, "gRPC")?;
            let metrics = telemetry::bind_metrics(&metrics).await?;
            metrics_apart(metrics.as_ref(), &[&grpc])?;
            let Some((api, store)) = open_api(&db, &migrate, config, &stop).await? else {
                return Ok(ExitCode::SUCCESS);
            };
            telemetry::serve_metrics(
                metrics,
                move || store.clone().record_metrics(),
                stopped(stop.clone()),
            )?;
            let grpc = grpc.listen(tls.is_some())?;
            warn_if_admin_closed(admin_closed);
            let options = grpc_options(in_flight(&server), tls.map(|t| t.grpc), None);
            let served = quota_service::serve_with(grpc, api, options, stopped(stop.clone()));
            if let Some(served) = drained(stop, served).await {
                served.map_err(|e| anyhow!("gRPC server failed: {e}"))?;
            }
        }
        Command::Edge {
            upstream,
            ca,
            http,
            metrics,
            server,
            throttle,
            cache,
        } => {
            let client_tls = crate::tls::client(ca.ca_cert.as_deref())?;
            let upstream = Upstream::lazy_with(&upstream, &client_tls)
                .map_err(|e| anyhow!("--upstream {e}"))?;
            let tls = crate::tls::server(&server)?;
            let stop = shutdown_signal()?;
            let http = bind(&http.http_addr, "REST")?;
            let metrics = telemetry::bind_metrics(&metrics).await?;
            metrics_apart(metrics.as_ref(), &[&http])?;
            telemetry::serve_metrics(metrics, || async {}, stopped(stop.clone()))?;
            let http = http.listen(tls.is_some())?;
            let app = quota_edge::app_with(
                upstream,
                edge_config(in_flight(&server), &throttle, cache.cache_ttl),
            );
            let served =
                quota_edge::serve_with(http, app, tls.map(|t| t.rest), stopped(stop.clone()));
            if let Some(served) = drained(stop, served).await {
                served.context("REST edge failed")?;
            }
        }
        Command::Migrate { db, lock, status } => {
            return if status {
                Ok(match migration_status(&db).await {
                    Ok(code) => code,
                    Err(e) => {
                        crate::telemetry::fatal(cli.log_format, &format!("quotad: {e:#}"));
                        ExitCode::from(STATUS_UNREADABLE)
                    }
                })
            } else {
                open_store(&db, &lock, MigrateMode::Auto, Writes::Unchecked, None).await?;
                Ok(ExitCode::SUCCESS)
            };
        }
        Command::Health {
            grpc,
            http,
            ca,
            timeout,
        } => {
            let tls = crate::tls::client(ca.ca_cert.as_deref())?;
            return crate::health::run(grpc, http, tls, timeout).await;
        }
        Command::Verify { db } => return Ok(crate::verify::run(&db, cli.log_format).await),
        Command::Token { admin, command } => {
            crate::token::run(admin, command).await?;
            return Ok(ExitCode::SUCCESS);
        }
    }
    tracing::info!("stopped");
    Ok(ExitCode::SUCCESS)
}

async fn connect(db: &DatabaseArgs) -> Result<Store> {
    Store::connect(&db.database_url).await.map_err(|e| {
        anyhow!(
            "cannot open database {}: {}",
            redact_url(&db.database_url),
            detail(&e)
        )
    })
}

/// Whether [`open_store`] checks that the database takes writes.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Writes {
    /// A server's: it answers debits, so a database that takes none (a
    /// SQLite file it may only read, a PostgreSQL standby) is refused in
    /// one line rather than failing every debit.
    Checked,
    /// `quotad migrate`'s: with nothing to apply, it writes nothing.
    Unchecked,
}

/// A server stopped by the signal while it waited for the migration lock:
/// it exits 0, having served nothing.
#[derive(Debug)]
struct StoppedAtStart;

impl std::fmt::Display for StoppedAtStart {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("stopped while waiting for the migration lock")
    }
}

impl std::error::Error for StoppedAtStart {}

/// Opens the store and brings its schema up to date (`auto`), or checks that
/// it is (`off`). A server's `stop` ends a wait for the migration lock
/// ([`StoppedAtStart`]).
async fn open_store(
    db: &DatabaseArgs,
    lock: &LockWait,
    mode: MigrateMode,
    writes: Writes,
    stop: Option<&watch::Receiver<bool>>,
) -> Result<Store> {
    let shown = redact_url(&db.database_url);
    // Opening a SQLite file that is not there would create it, empty: with
    // nothing to migrate it, it is refused as not there.
    if mode == MigrateMode::Off && sqlite_file_missing(&db.database_url) {
        bail!(
            "database {shown} does not exist: run `quotad migrate` first (or start with --migrate=auto)"
        );
    }
    let store = connect(db).await?;
    let migrating = |e| anyhow!("cannot migrate database {shown}: {e}");
    let status = match mode {
        MigrateMode::Auto => {
            // The wait for another process's migrations ends at the
            // signal too.
            let stopped = async {
                match stop {
                    Some(stop) => stopped(stop.clone()).await,
                    None => std::future::pending().await,
                }
            };
            let applied = store
                .migrate_until(lock.migrate_lock_timeout, stopped)
                .await
                .map_err(migrating)?
                .ok_or(StoppedAtStart)?;
            let status = store.migration_status().await.map_err(migrating)?;
            tracing::info!(
                "migrations applied: {} now, {} in all",
                applied.len(),
                status.applied.len()
            );
            status
        }
        MigrateMode::Off => {
            let status = store.migration_status().await.map_err(migrating)?;
            if !status.pending.is_empty() {
                bail!(
                    "database {shown} is behind: {} migration(s) pending ({}); run `quotad migrate` first (or start with --migrate=auto)",
                    status.pending.len(),
                    status.pending.join(", ")
                );
            }
            status
        }
    };
    if !status.unknown.is_empty() {
        // Migrations are additive: a newer version's schema still serves this one.
        tracing::warn!(
            newer = %status.unknown.join(", "),
            "the database has migrations of a newer version; serving on"
        );
    }
    if writes == Writes::Checked {
        match store.check_writable().await {
            Ok(()) => {}
            Err(WriteCheck::ReadOnly(why)) => bail!("database {shown} takes no writes: {why}"),
            // A lock on the table (another release migrating) or a lost
            // connection says nothing of the database: its calls will tell.
            Err(WriteCheck::Failed(e)) => {
                tracing::warn!(error = %detail(&e), "could not check that the database takes writes");
            }
        }
    }
    tracing::info!(database = %shown, "database ready");
    Ok(store)
}

/// `quotad migrate --status`'s exit when the database cannot be read, apart
/// from 1 (some migration pending), as `quotad verify`'s.
const STATUS_UNREADABLE: u8 = 2;

/// `quotad migrate --status`: one line per migration on stdout; exit 1 when
/// any is pending (2 when the database cannot be read).
async fn migration_status(db: &DatabaseArgs) -> Result<ExitCode> {
    // Opening a SQLite file that is not there would create it: a database
    // not made yet has every migration pending, and stays not made.
    let status = if sqlite_file_missing(&db.database_url) {
        MigrationStatus {
            pending: migration_names(),
            ..MigrationStatus::default()
        }
    } else {
        let store = connect(db).await?;
        store.migration_status().await.map_err(|e| {
            anyhow!(
                "cannot read the migrations of {}: {e}",
                redact_url(&db.database_url)
            )
        })?
    };
    let mut lines = (status.applied.iter().map(|name| format!("applied  {name}")))
        .chain(status.pending.iter().map(|name| format!("pending  {name}")))
        .chain(
            (status.unknown.iter())
                .map(|name| format!("newer    {name} (applied by a newer version)")),
        )
        .chain([format!(
            "{} applied, {} pending",
            status.applied.len(),
            status.pending.len()
        )]);
    // A reader that stops early (`| head`) changes nothing of the answer.
    let _ = lines.try_for_each(crate::output::print_line);
    Ok(if status.pending.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

/// Said once the server listens, not before: a start that fails is one line.
fn warn_if_admin_closed(closed: bool) {
    if closed {
        tracing::warn!("QUOTA_ADMIN_TOKEN is not set: admin methods and Consume refuse every call");
    }
}

/// The service's settings, checked before any port or database is touched:
/// a bad one is one line and no side effect.
fn service_config(service: &ServiceArgs, cache: &CacheArgs) -> Result<ServiceConfig> {
    let per_usd = QuotaPerUsd::new(service.quota_per_usd).map_err(|e| anyhow!("{e}"))?;
    let secret = service.admin.secret()?;
    Ok(ServiceConfig {
        per_usd,
        admin: AdminCredential::new(secret.as_deref()),
        cache: CacheConfig {
            ttl: cache.ttl.cache_ttl,
            capacity: cache.cache_capacity,
        },
    })
}

/// The service over its open store; `None` when the signal came while
/// waiting for the migration lock.
async fn open_api(
    db: &DatabaseArgs,
    migrate: &MigrateArgs,
    config: ServiceConfig,
    stop: &watch::Receiver<bool>,
) -> Result<Option<(QuotaApi, Store)>> {
    let opened = open_store(
        db,
        &migrate.lock,
        migrate.migrate,
        Writes::Checked,
        Some(stop),
    )
    .await;
    match opened {
        // The signal came while the migrations ran: they are done, and
        // nothing is served.
        Ok(_) if *stop.borrow() => {
            tracing::info!("stopped before serving");
            Ok(None)
        }
        Ok(store) => Ok(Some((QuotaApi::new(store.clone(), config), store))),
        Err(e) if e.is::<StoppedAtStart>() => {
            tracing::info!("{e}");
            Ok(None)
        }
        Err(e) => Err(e),
    }
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

/// A port bound but not yet listening: a connection to it is refused.
struct Bound {
    socket: socket2::Socket,
    what: &'static str,
    addr: String,
    local: SocketAddr,
}

/// Binds `addr` (`HOST:PORT`; every address a name resolves to is tried),
/// without listening, so a busy or bad address fails at once.
fn bind(addr: &str, what: &'static str) -> Result<Bound> {
    let fail = |e: &dyn std::fmt::Display| anyhow!("cannot listen for {what} on {addr:?}: {e}");
    let mut last = None;
    for candidate in addr.to_socket_addrs().map_err(|e| fail(&e))? {
        match bind_one(candidate) {
            Ok(socket) => {
                let local = socket
                    .local_addr()?
                    .as_socket()
                    .ok_or_else(|| anyhow!("{what}: bound to a non-IP address"))?;
                tracing::debug!("{what} bound to {local}; listening once the database is ready");
                return Ok(Bound {
                    socket,
                    what,
                    addr: addr.to_owned(),
                    local,
                });
            }
            Err(e) => last = Some(e),
        }
    }
    Err(match last {
        Some(e) => fail(&e),
        None => fail(&"the name resolves to no address"),
    })
}

fn bind_one(addr: SocketAddr) -> std::io::Result<socket2::Socket> {
    use socket2::{Domain, Protocol, Socket, Type};
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    // As tokio and std do: a restart may bind while old connections linger in TIME_WAIT.
    #[cfg(unix)]
    socket.set_reuse_address(true)?;
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    Ok(socket)
}

impl Bound {
    /// Refuses a port that `other` has bound too: both can be bound (neither
    /// listens yet), but only one could listen.
    fn apart_from(&self, other: &Bound) -> Result<()> {
        if clash(self.local, other.local) {
            bail!(
                "cannot listen for {} on {:?}: {} is to listen there ({:?})",
                self.what,
                self.addr,
                other.what,
                other.addr
            );
        }
        Ok(())
    }

    /// Starts accepting connections, and says where.
    fn listen(self, tls: bool) -> Result<TcpListener> {
        let Bound {
            socket, what, addr, ..
        } = self;
        socket
            .listen(1024)
            .with_context(|| format!("cannot listen for {what} on {addr:?}"))?;
        let listener = TcpListener::from_std(socket.into())?;
        let local = listener.local_addr()?;
        let scheme = if tls { "https" } else { "http" };
        match what {
            "REST" => tracing::info!("REST listening on {scheme}://{local}"),
            _ if tls => tracing::info!("{what} listening on {local} (TLS)"),
            _ => tracing::info!("{what} listening on {local}"),
        }
        Ok(listener)
    }
}

/// Refuses a metrics listener on a port one of `bound` is to listen on: it
/// listens at once, and the other would fail only after the database is
/// open.
fn metrics_apart(metrics: Option<&TcpListener>, bound: &[&Bound]) -> Result<()> {
    let Some(metrics) = metrics else {
        return Ok(());
    };
    let local = metrics.local_addr()?;
    match bound.iter().find(|b| clash(local, b.local)) {
        Some(b) => bail!(
            "cannot listen for metrics on {local}: {} is to listen there ({:?})",
            b.what,
            b.addr
        ),
        None => Ok(()),
    }
}

/// Whether two sockets of one port could not both listen: the same address,
/// or one of them every address of the other's family.
fn clash(a: SocketAddr, b: SocketAddr) -> bool {
    let same_family = a.is_ipv4() == b.is_ipv4();
    a.port() == b.port()
        && (a.ip() == b.ip()
            || (same_family && (a.ip().is_unspecified() || b.ip().is_unspecified())))
}

/// The permits of `--max-concurrency`: one per request in flight in the process.
fn in_flight(server: &ServerArgs) -> Arc<Semaphore> {
    Arc::new(Semaphore::new(server.max_concurrency as usize))
}

/// The gRPC server's bounds and TLS.
fn grpc_options(
    in_flight: Arc<Semaphore>,
    tls: Option<Identity>,
    health: Option<SharedHealth>,
) -> ServerOptions {
    ServerOptions {
        in_flight,
        tls,
        health,
    }
}

/// The edge's bounds and throttle; `cache_ttl` is the one `--cache-ttl`.
fn edge_config(
    in_flight: Arc<Semaphore>,
    throttle: &ThrottleArgs,
    cache_ttl: Duration,
) -> EdgeConfig {
    EdgeConfig {
        in_flight,
        throttle: ThrottleConfig {
            max_failures: throttle.auth_failures_per_minute,
            window: Duration::from_secs(60),
            success_ttl: cache_ttl,
            trusted_proxies: throttle.trusted_proxies(),
        },
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
    use super::clash;

    #[test]
    fn sockets_of_one_port_clash_on_one_address_or_a_wildcard_of_its_family() {
        let at = |s: &str| s.parse().unwrap();
        assert!(clash(at("127.0.0.1:80"), at("127.0.0.1:80")));
        assert!(clash(at("0.0.0.0:80"), at("127.0.0.1:80")));
        assert!(clash(at("[::1]:80"), at("[::]:80")));
        assert!(!clash(at("127.0.0.1:80"), at("127.0.0.1:81")));
        assert!(!clash(at("127.0.0.1:80"), at("127.0.0.2:80")));
        assert!(!clash(at("0.0.0.0:80"), at("[::1]:80")));
    }
}

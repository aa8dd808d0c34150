//! Migrations under a database lock, so that any number of processes may
//! start together on one database.
//!
//! Whoever holds the lock applies what is pending; the others wait for it (a
//! bounded time), then find nothing left to do. The lock is
//!
//! - PostgreSQL: a session advisory lock (`pg_try_advisory_lock`) on a
//!   connection of its own, closed afterwards;
//! - MySQL/MariaDB: a named lock (`GET_LOCK`) per database, on a connection of
//!   its own, closed afterwards;
//! - SQLite: an exclusive transaction (`BEGIN EXCLUSIVE`) on the writer
//!   connection; the migrations run inside it and commit with it.
//!
//! A process that dies while holding it releases it: its connection closes.
//! A database with nothing pending is never locked, so a stuck holder cannot
//! stop replicas of an up-to-date database from starting.

use super::Store;
use migration::{Migrator, MigratorTrait, SchemaManager};
use sea_orm::sea_query::{Alias, Order, Query};
use sea_orm::sqlx::{self, Connection};
use sea_orm::{
    ConnectionTrait, DatabaseBackend, DatabaseConnection, DatabaseTransaction, DbErr,
    IntoDatabaseExecutor, SqliteTransactionMode, TransactionOptions, TransactionTrait,
};
use std::collections::HashSet;
use std::time::{Duration, Instant};

/// How long a process waits for another one's migrations unless told otherwise.
pub const DEFAULT_LOCK_WAIT: Duration = Duration::from_secs(60);

/// The PostgreSQL advisory lock key of the migrations (advisory locks are per
/// database): the bytes of "quotamig".
const PG_LOCK_KEY: i64 = 0x7175_6f74_616d_6967;
/// Takes the MySQL lock if free. Named locks are per server, so the name
/// carries the database's (at most 64 characters).
const MYSQL_TRY_LOCK: &str =
    "SELECT GET_LOCK(LEFT(CONCAT('quota_migrations.', COALESCE(DATABASE(), '')), 64), 0)";
/// Pause between two attempts at a lock another process holds.
const RETRY: Duration = Duration::from_millis(100);
/// The SQLite busy timeout of the writer (see `open`), restored after locking.
const SQLITE_BUSY_TIMEOUT_MS: u64 = 10_000;

/// Why migrations could not be checked or applied. Each message is one line
/// an operator can act on.
#[derive(Clone, Debug, thiserror::Error)]
pub enum MigrateError {
    /// Another process held the migration lock for the whole wait.
    #[error(
        "gave up after {}s waiting for the migration lock: another process is migrating this database or holds its lock (wait longer with --migrate-lock-timeout, or stop that process)",
        .0.as_secs_f64()
    )]
    LockTimeout(Duration),
    /// The database was migrated by a newer version and also lacks migrations of this one.
    #[error(
        "the database has migrations this version does not know ({unknown}) and lacks some it needs ({pending}): run the version that migrated it"
    )]
    Diverged {
        /// The database's migrations this build does not have.
        unknown: String,
        /// This build's migrations the database lacks.
        pending: String,
    },
    /// The database refused or failed.
    #[error("{0}")]
    Database(String),
}

impl From<DbErr> for MigrateError {
    fn from(err: DbErr) -> Self {
        MigrateError::Database(err.to_string())
    }
}

impl From<sqlx::Error> for MigrateError {
    fn from(err: sqlx::Error) -> Self {
        MigrateError::Database(err.to_string())
    }
}

/// Where a database's schema stands against this build's migrations.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct MigrationStatus {
    /// This build's migrations the database has, in order.
    pub applied: Vec<String>,
    /// This build's migrations the database lacks, in order.
    pub pending: Vec<String>,
    /// Migrations the database has that this build does not know: a newer
    /// version applied them. Migrations are additive, so this build still
    /// works on that schema.
    pub unknown: Vec<String>,
}

impl MigrationStatus {
    /// Nothing of this build is missing.
    pub fn is_current(&self) -> bool {
        self.pending.is_empty()
    }
}

/// The names of this build's migrations, in the order they apply.
pub fn migration_names() -> Vec<String> {
    Migrator::migrations()
        .iter()
        .map(|m| m.name().to_owned())
        .collect()
}

impl Store {
    /// Applies every pending migration, waiting up to [`DEFAULT_LOCK_WAIT`]
    /// for another process that migrates the same database.
    pub async fn migrate(&self) -> Result<Vec<String>, MigrateError> {
        let never = std::future::pending();
        let applied = self.migrate_until(DEFAULT_LOCK_WAIT, never).await?;
        Ok(applied.unwrap_or_default())
    }

    /// Applies every pending migration under the migration lock, waiting up
    /// to `wait` for it, or until `stop` (then `None`: nothing applied).
    /// Returns the migrations this call applied (none when another process
    /// had applied them meanwhile). Only the wait ends at `stop`: once the
    /// lock is held, the migrations run to their end. A lock taken as
    /// `stop` comes is let go with its connection (PostgreSQL, MySQL) or
    /// its transaction (SQLite).
    pub async fn migrate_until(
        &self,
        wait: Duration,
        stop: impl Future<Output = ()>,
    ) -> Result<Option<Vec<String>>, MigrateError> {
        if self.migration_status().await?.is_current() {
            return Ok(Some(Vec::new()));
        }
        let lock = tokio::select! {
            lock = self.lock_migrations(wait) => lock?,
            () = stop => return Ok(None),
        };
        Ok(Some(lock.apply().await?))
    }

    /// Which of this build's migrations the database has. Reads only: a
    /// database without the migrations table has every migration pending.
    pub async fn migration_status(&self) -> Result<MigrationStatus, MigrateError> {
        status(&self.db).await
    }

    /// Takes the migration lock, waiting up to `wait` for a process that holds
    /// it. Until [`MigrationLock::apply`] or [`MigrationLock::release`], no
    /// other process migrates this database.
    pub async fn lock_migrations(&self, wait: Duration) -> Result<MigrationLock, MigrateError> {
        let deadline = Instant::now() + wait;
        let mut held = match self.db.get_database_backend() {
            DatabaseBackend::Postgres => {
                let pool = self.db.get_postgres_connection_pool();
                Held::Postgres(pool.acquire().await?.detach())
            }
            DatabaseBackend::MySql => {
                let pool = self.db.get_mysql_connection_pool();
                Held::MySql(pool.acquire().await?.detach())
            }
            _ => Held::Sqlite(lock_sqlite(&self.db, deadline, wait).await?),
        };
        let mut logged = false;
        while !try_session_lock(&mut held).await? {
            if Instant::now() >= deadline {
                let _ = release(held).await;
                return Err(MigrateError::LockTimeout(wait));
            }
            if !logged {
                tracing::info!("another process holds the migration lock: waiting for it");
                logged = true;
            }
            tokio::time::sleep(RETRY.min(deadline.saturating_duration_since(Instant::now()))).await;
        }
        Ok(MigrationLock {
            db: self.db.clone(),
            held,
        })
    }
}

/// The migration lock of one database, held by this process.
#[derive(Debug)]
pub struct MigrationLock {
    db: DatabaseConnection,
    held: Held,
}

#[derive(Debug)]
enum Held {
    Postgres(sqlx::PgConnection),
    MySql(sqlx::MySqlConnection),
    /// SQLite: the exclusive transaction the migrations run in.
    Sqlite(DatabaseTransaction),
}

impl MigrationLock {
    /// Applies what is pending (read again under the lock), then releases the
    /// lock. Returns the migrations applied.
    pub async fn apply(self) -> Result<Vec<String>, MigrateError> {
        match self.held {
            Held::Sqlite(txn) => match apply_pending(&txn).await {
                Ok(applied) => {
                    txn.commit().await?;
                    Ok(applied)
                }
                Err(e) => {
                    let _ = txn.rollback().await;
                    Err(e)
                }
            },
            held => {
                let applied = apply_pending(&self.db).await;
                let released = release(held).await;
                let applied = applied?;
                released?;
                Ok(applied)
            }
        }
    }

    /// Lets the lock go without migrating.
    pub async fn release(self) -> Result<(), MigrateError> {
        release(self.held).await
    }
}

async fn release(held: Held) -> Result<(), MigrateError> {
    // Closing the connection ends its session, and the session's locks with it.
    match held {
        Held::Postgres(conn) => conn.close().await?,
        Held::MySql(conn) => conn.close().await?,
        Held::Sqlite(txn) => txn.rollback().await?,
    }
    Ok(())
}

/// One attempt at the PostgreSQL or MySQL lock: `true` when taken. A SQLite
/// lock is taken by the time it is held.
async fn try_session_lock(held: &mut Held) -> Result<bool, MigrateError> {
    Ok(match held {
        Held::Postgres(conn) => {
            sqlx::query_scalar::<_, bool>("SELECT pg_try_advisory_lock($1)")
                .bind(PG_LOCK_KEY)
                .fetch_one(conn)
                .await?
        }
        Held::MySql(conn) => {
            // 1: taken; 0: held by another session; NULL: an error.
            let got: Option<i64> = sqlx::query_scalar(MYSQL_TRY_LOCK).fetch_one(conn).await?;
            got == Some(1)
        }
        Held::Sqlite(_) => true,
    })
}

/// `BEGIN EXCLUSIVE` on the SQLite writer, retried until `deadline`. The
/// writer is a single connection, so the short busy timeout set for the
/// attempts is set on the connection the transaction uses.
async fn lock_sqlite(
    db: &DatabaseConnection,
    deadline: Instant,
    wait: Duration,
) -> Result<DatabaseTransaction, MigrateError> {
    let options = TransactionOptions {
        sqlite_transaction_mode: Some(SqliteTransactionMode::Exclusive),
        ..TransactionOptions::default()
    };
    db.execute_unprepared(&format!("PRAGMA busy_timeout = {}", RETRY.as_millis()))
        .await?;
    let mut logged = false;
    let txn = loop {
        match db.begin_with_options(options).await {
            Ok(txn) => break Ok(txn),
            Err(e) if sqlite_busy(&e) && Instant::now() < deadline => {
                if !logged {
                    tracing::info!("another process holds the migration lock: waiting for it");
                    logged = true;
                }
            }
            Err(e) if sqlite_busy(&e) => break Err(MigrateError::LockTimeout(wait)),
            Err(e) => break Err(e.into()),
        }
    };
    let restore = format!("PRAGMA busy_timeout = {SQLITE_BUSY_TIMEOUT_MS}");
    match txn {
        Ok(txn) => {
            txn.execute_unprepared(&restore).await?;
            Ok(txn)
        }
        Err(e) => {
            let _ = db.execute_unprepared(&restore).await;
            Err(e)
        }
    }
}

/// "database is locked" or "busy": another connection holds the lock.
fn sqlite_busy(err: &DbErr) -> bool {
    let text = err.to_string();
    text.contains("database is locked") || text.contains("database is busy")
}

/// Applies what the database lacks, read on `db` (which holds, or runs under,
/// the lock).
async fn apply_pending<'c, C>(db: C) -> Result<Vec<String>, MigrateError>
where
    C: IntoDatabaseExecutor<'c> + Copy,
{
    let now = status_on(db).await?;
    if now.pending.is_empty() {
        return Ok(Vec::new());
    }
    if !now.unknown.is_empty() {
        return Err(MigrateError::Diverged {
            unknown: now.unknown.join(", "),
            pending: now.pending.join(", "),
        });
    }
    for name in &now.pending {
        tracing::info!(migration = %name, "applying migration");
    }
    Migrator::up(db, None).await?;
    Ok(now.pending)
}

async fn status(db: &DatabaseConnection) -> Result<MigrationStatus, MigrateError> {
    status_on(db).await
}

async fn status_on<'c, C>(db: C) -> Result<MigrationStatus, MigrateError>
where
    C: IntoDatabaseExecutor<'c> + Copy,
{
    let table = Migrator::migration_table_name().to_string();
    let in_db: Vec<String> = if SchemaManager::new(db).has_table(&table).await? {
        let query = Query::select()
            .column(Alias::new("version"))
            .from(Alias::new(&table))
            .order_by(Alias::new("version"), Order::Asc)
            .to_owned();
        db.into_database_executor()
            .query_all(&query)
            .await?
            .iter()
            .map(|row| row.try_get::<String>("", "version"))
            .collect::<Result<_, _>>()?
    } else {
        Vec::new()
    };
    let known: HashSet<String> = migration_names().into_iter().collect();
    let have: HashSet<&String> = in_db.iter().collect();
    let (applied, pending) = migration_names()
        .into_iter()
        .partition(|name| have.contains(name));
    Ok(MigrationStatus {
        applied,
        pending,
        unknown: in_db.into_iter().filter(|v| !known.contains(v)).collect(),
    })
}

//! How long the service waits for a server database.
//!
//! A database that stops answering without closing its connections (a frozen
//! server, a network that drops every packet) would hold a call, a committer
//! and a pooled connection for as long as TCP takes to notice: minutes. So
//! every store call on PostgreSQL or MySQL is bounded by [`DATABASE_WAIT`]
//! and answered UNAVAILABLE past it ([`Store::bounded`]), and a connection
//! left on a query no one waits for is closed instead of going back to the
//! pool ([`check_released`]), so that the pool opens fresh ones once the
//! database answers again.
//!
//! Work given up at the bound may have reached the database: a write's
//! outcome is then unknown to its caller, who was told UNAVAILABLE. A retry
//! under the same request id is safe: the ledger's unique (token, request
//! id) index makes it a repeat if the first attempt committed.
//!
//! A SQLite file has no connection to lose; its waits (the queue behind its
//! one writer, the busy timeout of other processes) stay as they are.

use super::Store;
use crate::domain::QuotaError;
use sea_orm::sqlx::pool::PoolOptions;
use sea_orm::sqlx::{Connection, Database};
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// The longest a store call waits for PostgreSQL or MySQL before it is
/// answered UNAVAILABLE (503 at the edge). 2.5 s: the contract answers a
/// database that has gone away within 3 s, and the edge's own work and its
/// hop to the service come on top; above the pool's 2 s acquire timeout, so
/// that a database refusing connections is still reported as the pool sees it.
pub const DATABASE_WAIT: Duration = Duration::from_millis(2500);

/// How long a connection released soon after a call gave up may take to
/// answer a ping before it is closed rather than pooled again.
const RELEASE_CHECK: Duration = Duration::from_secs(1);

/// When a store call last gave up waiting for the database.
#[derive(Debug)]
pub(super) struct GaveUp {
    start: Instant,
    /// Milliseconds from `start` to the last give-up, plus one; 0: never.
    last: AtomicU64,
}

impl Default for GaveUp {
    fn default() -> Self {
        GaveUp {
            start: Instant::now(),
            last: AtomicU64::new(0),
        }
    }
}

impl GaveUp {
    fn millis(&self) -> u64 {
        u64::try_from(self.start.elapsed().as_millis()).unwrap_or(u64::MAX - 1) + 1
    }

    fn now(&self) {
        self.last.store(self.millis(), Ordering::Relaxed);
    }

    /// Whether a call gave up within the last `window`.
    fn within(&self, window: Duration) -> bool {
        let last = self.last.load(Ordering::Relaxed);
        let window = u64::try_from(window.as_millis()).unwrap_or(u64::MAX);
        last != 0 && self.millis().saturating_sub(last) <= window
    }
}

impl Store {
    /// `work`, or UNAVAILABLE once it has waited [`DATABASE_WAIT`] (on a
    /// server database; on SQLite, `work` as it is). Dropped at the bound,
    /// `work` releases whatever connection it held mid-query, which
    /// [`check_released`] then closes unless it answers at once.
    pub(super) async fn bounded<T, E: From<QuotaError>>(
        &self,
        work: impl Future<Output = Result<T, E>>,
    ) -> Result<T, E> {
        let Some(wait) = self.wait else {
            return work.await;
        };
        let mut work = std::pin::pin!(work);
        match tokio::time::timeout(wait, &mut work).await {
            Ok(done) => done,
            Err(_) => {
                // Noted before `work`, and the connection it may hold, is dropped.
                self.gave_up.now();
                Err(QuotaError::Unavailable(format!(
                    "the database did not answer within {wait:?} (unreachable, or the \
                         statement waits on a lock another session holds)"
                ))
                .into())
            }
        }
    }
}

/// `options` with a check of every connection released within
/// [`DATABASE_WAIT`] of a call giving up: it must answer a ping within
/// [`RELEASE_CHECK`], or it is closed (without a word to the server, which
/// may not be listening) instead of going back to the pool. At other times
/// the check costs nothing. Any connection released inside a transaction is
/// first rolled back ([`out_of_transaction`]), within the same bound.
pub(super) fn check_released<DB: Database>(
    options: PoolOptions<DB>,
    gave_up: std::sync::Arc<GaveUp>,
) -> PoolOptions<DB>
where
    for<'c> &'c mut DB::Connection: sea_orm::sqlx::Executor<'c, Database = DB>,
{
    options.after_release(move |conn, _| {
        let suspect = gave_up.within(DATABASE_WAIT);
        Box::pin(async move {
            // Bounded: the connection may be one whose call gave up while
            // its statement still runs (the driver answers a ROLLBACK only
            // after that statement).
            if conn.is_in_transaction() {
                match tokio::time::timeout(RELEASE_CHECK, out_of_transaction::<DB>(conn)).await {
                    Ok(true) => {}
                    Ok(false) => return Ok(false),
                    Err(_) => {
                        return Err(sea_orm::sqlx::Error::Io(std::io::Error::new(
                            std::io::ErrorKind::TimedOut,
                            "no answer to a ROLLBACK of a connection released inside a transaction",
                        )));
                    }
                }
            }
            if !suspect {
                return Ok(true);
            }
            match tokio::time::timeout(RELEASE_CHECK, conn.ping()).await {
                Ok(answered) => answered.map(|()| true),
                // An error makes the pool close it without a word.
                Err(_) => Err(sea_orm::sqlx::Error::Io(std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    "no answer to a ping after a call gave up on the database",
                ))),
            }
        })
    })
}

/// The longest a statement of the service waits for a lock another session
/// holds, on PostgreSQL (`lock_timeout`) and MySQL (row locks:
/// `innodb_lock_wait_timeout`; table locks: `lock_wait_timeout`), before
/// the database ends it. Its caller
/// gave up at [`DATABASE_WAIT`]; without this bound the statement would wait
/// on in the database, its session and the pooled connection with it, for
/// as long as the other session keeps the lock (a row locked by hand in
/// `psql`, say), and calls retried meanwhile pile up more such sessions
/// until the pool is spent. A migration waiting this long for a table lock
/// fails too, rather than stalling every query queued behind it; it is
/// retried at the next start.
pub const LOCK_WAIT: Duration = Duration::from_secs(5);

/// How long PostgreSQL lets a session of the service sit inside a
/// transaction with nothing running (`idle_in_transaction_session_timeout`):
/// a process stopped or cut off mid-transaction does not keep its locks.
const IDLE_IN_TRANSACTION: Duration = Duration::from_secs(60);

/// Sets [`LOCK_WAIT`] and [`IDLE_IN_TRANSACTION`] on a new PostgreSQL
/// connection (session settings: behind PgBouncer in transaction mode they
/// reach whichever server connection ran them, as `plan_cache_mode` does).
pub(super) async fn bound_lock_waits_postgres(conn: &mut sea_orm::sqlx::PgConnection) {
    use sea_orm::sqlx::{AssertSqlSafe, Executor};
    for setting in [
        format!("SET lock_timeout = {}", LOCK_WAIT.as_millis()),
        format!(
            "SET idle_in_transaction_session_timeout = {}",
            IDLE_IN_TRANSACTION.as_millis()
        ),
    ] {
        if let Err(e) = conn.execute(AssertSqlSafe(setting)).await {
            tracing::debug!(error = %e, "PostgreSQL keeps its default lock and idle bounds");
        }
    }
}

/// Sets [`LOCK_WAIT`] on a new MySQL connection (whole seconds), for row
/// locks (`innodb_lock_wait_timeout`) and table locks (`lock_wait_timeout`:
/// `LOCK TABLES`, a migration's DDL).
pub(super) async fn bound_lock_waits_mysql(conn: &mut sea_orm::sqlx::MySqlConnection) {
    use sea_orm::sqlx::{AssertSqlSafe, Executor};
    let seconds = LOCK_WAIT.as_secs();
    let setting =
        format!("SET SESSION innodb_lock_wait_timeout = {seconds}, lock_wait_timeout = {seconds}");
    if let Err(e) = conn.execute(AssertSqlSafe(setting)).await {
        tracing::debug!(error = %e, "MySQL keeps its default lock wait timeouts");
    }
}

/// `options` with every connection released inside a transaction rolled
/// back before it serves again, or closed if that fails ([`out_of_transaction`]).
pub(super) fn roll_back_released<DB: Database>(options: PoolOptions<DB>) -> PoolOptions<DB>
where
    for<'c> &'c mut DB::Connection: sea_orm::sqlx::Executor<'c, Database = DB>,
{
    options
        .after_release(|conn, _| Box::pin(async move { Ok(out_of_transaction::<DB>(conn).await) }))
}

/// True once `conn` is in no transaction, rolled back if it was: false if
/// that failed, and the connection must be closed rather than pooled again.
///
/// A connection should never come back to the pool inside a transaction,
/// but one does when a COMMIT fails: the driver still counts the
/// transaction as open, and the transaction is consumed, so nothing ends
/// it. After a full disk, SQLite has already rolled it back, and the
/// driver's own ROLLBACK then fails too. Pooled as it was, every later
/// transaction on it was a savepoint of one that never commits: debits
/// answered as committed, never made durable, lost when the process stopped.
/// Where SQLite has no transaction left to roll back, one is opened for the
/// driver to end (closing the connection instead would lose an in-memory
/// database); a server database's connection is closed.
async fn out_of_transaction<DB: Database>(conn: &mut DB::Connection) -> bool
where
    for<'c> &'c mut DB::Connection: sea_orm::sqlx::Executor<'c, Database = DB>,
{
    use sea_orm::sqlx::Executor;
    use sqlx_core::transaction::TransactionManager;
    if conn.is_in_transaction() {
        // A transaction dropped without a commit only queues its ROLLBACK
        // (SQLite's worker runs it later): let what is queued run first.
        if conn.ping().await.is_err() {
            return false;
        }
    }
    // One rollback per level of savepoint; a bound, not a loop on trust.
    for _ in 0..8 {
        if !conn.is_in_transaction() {
            return true;
        }
        let error = match DB::TransactionManager::rollback(conn).await {
            Ok(()) => {
                tracing::warn!("a connection released inside a transaction was rolled back");
                continue;
            }
            Err(error) => error,
        };
        // Only SQLite's BEGIN is refused inside a transaction: MySQL's
        // would commit one still open. Elsewhere the connection is closed.
        let resynced = if DB::NAME != "SQLite" {
            Err(error)
        } else {
            match conn.execute("BEGIN").await {
                Ok(_) => DB::TransactionManager::rollback(conn).await,
                Err(error) => Err(error),
            }
        };
        if let Err(error) = resynced {
            tracing::warn!(%error, "a connection released inside a transaction could not be rolled back: closed");
            return false;
        }
        tracing::warn!(
            "a connection released inside a transaction the database had ended was reset"
        );
    }
    !conn.is_in_transaction()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_give_up_is_recent_for_its_window_only() {
        let gave_up = GaveUp::default();
        assert!(!gave_up.within(DATABASE_WAIT), "never gave up");
        gave_up.now();
        assert!(gave_up.within(DATABASE_WAIT));
        assert!(gave_up.within(Duration::ZERO));
        std::thread::sleep(Duration::from_millis(20));
        assert!(!gave_up.within(Duration::from_millis(5)));
    }
}

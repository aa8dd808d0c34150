//! Database errors in the domain's terms: unreachable, busy, a unique
//! violation, or internal. No `DbErr` leaves the store.

use crate::domain::QuotaError;
use sea_orm::{DbErr, RuntimeErr, SqlErr};

impl From<DbErr> for QuotaError {
    fn from(err: DbErr) -> Self {
        if is_unreachable(&err) {
            QuotaError::Unavailable(err.to_string())
        } else if is_transient(&err) {
            QuotaError::Busy(err.to_string())
        } else {
            QuotaError::Internal(err.to_string())
        }
    }
}

/// Errors that say "not now" rather than "wrong": lock and statement
/// timeouts, broken deadlocks and serialization failures (PostgreSQL), lock
/// wait timeouts and deadlocks (MySQL, by error number: its SQLSTATE for a
/// lock wait timeout is the catch-all `HY000`), a busy or locked database
/// (SQLite).
fn is_transient(err: &DbErr) -> bool {
    let Some(db) = database_error(err) else {
        return false;
    };
    if let Some(mysql) = db.try_downcast_ref::<sea_orm::sqlx::mysql::MySqlDatabaseError>() {
        return matches!(mysql.number(), 1205 | 1213) || is_deadlock(err);
    }
    matches!(
        db.code().as_deref(),
        Some("55P03" | "57014" | "40001" | "40P01" | "5" | "6" | "517" | "261")
    )
}

/// True when the database rolled the transaction back to break a deadlock
/// or a serialization conflict (PostgreSQL `40P01`, `40001`; MySQL 1213,
/// SQLSTATE `40001`): nothing of it was written, so it may run again at once.
pub(super) fn is_deadlock(err: &DbErr) -> bool {
    database_error(err).is_some_and(|db| matches!(db.code().as_deref(), Some("40001" | "40P01")))
}

fn database_error(err: &DbErr) -> Option<&(dyn sea_orm::sqlx::error::DatabaseError + 'static)> {
    let (DbErr::Exec(RuntimeErr::SqlxError(e)) | DbErr::Query(RuntimeErr::SqlxError(e))) = err
    else {
        return None;
    };
    match e.as_ref() {
        sea_orm::sqlx::Error::Database(db) => Some(db.as_ref()),
        _ => None,
    }
}

fn is_unreachable(err: &DbErr) -> bool {
    use sea_orm::sqlx::Error as Sqlx;
    match err {
        DbErr::Conn(_) | DbErr::ConnectionAcquire(_) => true,
        DbErr::Exec(RuntimeErr::SqlxError(e)) | DbErr::Query(RuntimeErr::SqlxError(e)) => {
            match e.as_ref() {
                Sqlx::Io(_)
                | Sqlx::PoolTimedOut
                | Sqlx::PoolClosed
                | Sqlx::WorkerCrashed
                | Sqlx::Tls(_) => true,
                // PostgreSQL shutting down or starting up, a connection
                // exception, or its disk full (53100); SQLite's disk full
                // (13); MySQL's table or disk full (1114, 1021); a database
                // that takes no writes. A full disk or a read-only database
                // is the database unable to write until an operator acts (or
                // a failover ends), not a bug: the caller may retry later.
                Sqlx::Database(db) => {
                    let mysql_full = db
                        .try_downcast_ref::<sea_orm::sqlx::mysql::MySqlDatabaseError>()
                        .is_some_and(|e| matches!(e.number(), 1114 | 1021));
                    mysql_full
                        || takes_no_writes(db.as_ref())
                        || db.code().is_some_and(|c| {
                            matches!(c.as_ref(), "57P01" | "57P02" | "57P03" | "53100" | "13")
                                || c.starts_with("08")
                        })
                }
                _ => false,
            }
        }
        _ => false,
    }
}

/// Whether `err` is a database refusing a write because it takes none: a
/// PostgreSQL standby or read-only transaction (25006), a SQLite file this
/// process may only read (8, and its extended codes), MySQL's read-only
/// modes (1290, 1792, 1836).
pub(super) fn is_read_only(err: &DbErr) -> bool {
    database_error(err).is_some_and(takes_no_writes)
}

fn takes_no_writes(db: &(dyn sea_orm::sqlx::error::DatabaseError + 'static)) -> bool {
    if let Some(mysql) = db.try_downcast_ref::<sea_orm::sqlx::mysql::MySqlDatabaseError>() {
        return matches!(mysql.number(), 1290 | 1792 | 1836);
    }
    db.code()
        .is_some_and(|c| c == "25006" || sqlite_read_only(&c))
}

/// Whether a SQLite error code is SQLITE_READONLY (8) or one of its
/// extended codes (8 in the low byte). PostgreSQL's and MySQL's codes are
/// five characters, never a number this small.
fn sqlite_read_only(code: &str) -> bool {
    code.len() < 5 && code.parse::<u32>().is_ok_and(|c| c & 0xff == 8)
}

/// True when `err` is a violation of a unique index (a repeated request id).
pub(super) fn is_unique_violation(err: &DbErr) -> bool {
    matches!(err.sql_err(), Some(SqlErr::UniqueConstraintViolation(_)))
}

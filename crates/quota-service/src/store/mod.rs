//! The store: tokens and their ledger on sea-orm, in the domain's terms.
//!
//! Every function takes domain types and returns `Result<_, QuotaError>`; no
//! `DbErr` leaves this module. SQLite, PostgreSQL and MySQL run the same code.
//! On PostgreSQL and MySQL no call waits longer than [`DATABASE_WAIT`] for
//! the database: past it the call is UNAVAILABLE (`wait.rs`).

mod debit;
pub mod entity;
mod error;
mod migrate;
mod pool;
mod usage;
pub mod verify;
mod wait;

use debit::insert_ledger;
#[cfg(feature = "testing")]
pub use debit::pgbench_debit_script;
pub use migrate::{
    DEFAULT_LOCK_WAIT, MigrateError, MigrationLock, MigrationStatus, migration_names,
};
pub use wait::{DATABASE_WAIT, LOCK_WAIT};

use crate::domain::{Balance, KeyDigest, QuotaError, QuotaUnits, Token, TokenKey, TokenLocator};
use entity::{KIND_GRANT, STATUS_DISABLED, STATUS_ENABLED, ledger, token, usage_day};
use sea_orm::sea_query::{Expr, ExprTrait, Query};
use sea_orm::{
    ActiveModelTrait, ActiveValue::Set, ColumnTrait, ConnectOptions, ConnectionTrait, Database,
    DatabaseBackend, DatabaseConnection, DatabaseTransaction, DbErr, EntityTrait, QueryFilter,
    QueryOrder, QuerySelect, RuntimeErr, SqliteTransactionMode, TransactionOptions,
    TransactionTrait,
};
use std::sync::Arc;
use std::time::Duration;
use wait::GaveUp;

/// The database behind the service.
#[derive(Clone, Debug)]
pub struct Store {
    /// Every write, and reads inside write transactions.
    db: DatabaseConnection,
    /// Plain reads. On a SQLite file a pool of its own, since WAL lets readers
    /// run beside the one writer; elsewhere the same pool as `db`.
    read: DatabaseConnection,
    queues: Arc<debit::Queues>,
    /// How long a call waits for the database: [`DATABASE_WAIT`] on a
    /// server database, no bound of its own on SQLite.
    wait: Option<Duration>,
    /// When a call last gave up waiting (see `wait.rs`).
    gave_up: Arc<GaveUp>,
}

/// A new token's settings.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct NewToken {
    /// Free-form name.
    pub name: String,
    /// Initial quota in units (recorded as a grant when above zero).
    pub quota: i64,
    /// Never refused for quota.
    pub unlimited: bool,
    /// Expiry in unix seconds.
    pub expires_at: Option<i64>,
}

/// Changes to a token; `None` leaves a field as it is.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TokenChanges {
    /// New name.
    pub name: Option<String>,
    /// Enable or disable.
    pub enabled: Option<bool>,
    /// New expiry; `Some(None)` removes it.
    pub expires_at: Option<Option<i64>>,
    /// Make unlimited, or limited again.
    pub unlimited: Option<bool>,
}

/// The options of [`Store::begin_write`]'s transactions: SQLite's write
/// lock taken at `BEGIN IMMEDIATE`.
fn write_first() -> TransactionOptions {
    TransactionOptions {
        sqlite_transaction_mode: Some(SqliteTransactionMode::Immediate),
        ..TransactionOptions::default()
    }
}

/// Why [`Store::check_writable`] failed.
#[derive(Debug)]
pub enum WriteCheck {
    /// The database refused the write: it takes none (the database's words).
    ReadOnly(String),
    /// The check itself did not get through; nothing is known.
    Failed(QuotaError),
}

/// Pool size for server databases when the URL does not say otherwise.
const DEFAULT_MAX_CONNECTIONS: u32 = 16;
/// Read connections beside the single writer of a SQLite file.
const SQLITE_READERS: u32 = 4;

/// Whether `url` names a SQLite file that does not exist (yet): opening it
/// would create it.
pub fn sqlite_file_missing(url: &str) -> bool {
    use sea_orm::sqlx::sqlite::SqliteConnectOptions;
    use std::str::FromStr;
    if !url.starts_with("sqlite:") {
        return false;
    }
    // An in-memory database has no file, and every migration pending too.
    SqliteConnectOptions::from_str(url).is_ok_and(|options| !options.get_filename().exists())
}

impl Store {
    /// Connects to `url` (`sqlite:`, `postgres://` or `mysql://`).
    ///
    /// SQLite writes on a single connection: SQLite admits one writer at a
    /// time anyway, and with one connection no "database is locked" can reach
    /// a caller, since writes queue for the connection instead; debits have
    /// one committer, which takes for each transaction every call that
    /// arrived meanwhile. Reads of a SQLite file use a few more connections,
    /// which WAL runs beside the writer. WAL and a busy timeout cover other
    /// processes on the same file (`quotad migrate`).
    pub async fn connect(url: &str) -> Result<Store, QuotaError> {
        let gave_up = Arc::<GaveUp>::default();
        if !url.starts_with("sqlite:") {
            let db = open(url, DEFAULT_MAX_CONNECTIONS, &gave_up).await?;
            return Ok(Store {
                read: db.clone(),
                db,
                queues: Arc::new(debit::Queues::new(false)),
                wait: Some(DATABASE_WAIT),
                gave_up,
            });
        }
        let db = open(url, 1, &gave_up).await?;
        // An in-memory or temporary database (no file name) exists only on
        // its one connection.
        let path = url.trim_start_matches("sqlite:").trim_start_matches("//");
        let private = path.is_empty()
            || path.starts_with('?')
            || path.contains(":memory:")
            || path.contains("mode=memory");
        let read = if private {
            db.clone()
        } else {
            open(url, SQLITE_READERS, &gave_up).await?
        };
        Ok(Store {
            db,
            read,
            queues: Arc::new(debit::Queues::new(true)),
            wait: None,
            gave_up,
        })
    }

    /// Whether the database takes writes: a write that changes no row, in a
    /// transaction rolled back. A SQLite file this process may only read,
    /// or a PostgreSQL standby, answers every read and refuses every
    /// write ([`WriteCheck::ReadOnly`]), for a server to refuse it at start
    /// rather than answer every debit UNAVAILABLE. Any other failure of
    /// the check (a lock another session holds on the table, a connection
    /// lost) says nothing of that ([`WriteCheck::Failed`]).
    pub async fn check_writable(&self) -> Result<(), WriteCheck> {
        let write = async {
            let txn = self.db.begin_with_options(write_first()).await?;
            txn.execute_unprepared("UPDATE quota_tokens SET id = id WHERE 1 = 0")
                .await?;
            txn.rollback().await
        };
        // Bounded as every call is, the database's error kept whole.
        let written = self
            .bounded(async { Ok::<_, QuotaError>(write.await) })
            .await;
        match written {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) if error::is_read_only(&e) => Err(WriteCheck::ReadOnly(e.to_string())),
            Ok(Err(e)) => Err(WriteCheck::Failed(e.into())),
            Err(e) => Err(WriteCheck::Failed(e)),
        }
    }

    /// Whether the database answers a trivial query (on the read pool, so a
    /// busy SQLite writer does not make a healthy database look down).
    pub async fn ping(&self) -> Result<(), QuotaError> {
        Ok(self.read.ping().await?)
    }

    /// Every token's counters checked against its ledger (see [`verify`]).
    pub async fn verify(&self) -> Result<verify::Verification, verify::Unreadable> {
        verify::verify(&self.read).await
    }

    /// The connection, for tests and the benchmark that need to reach the tables.
    #[cfg(feature = "testing")]
    pub fn connection(&self) -> &DatabaseConnection {
        &self.db
    }

    /// A transaction that reads before it writes. On SQLite it takes the write
    /// lock at `BEGIN IMMEDIATE`, where the busy timeout applies: a deferred
    /// one fails with "database is locked" when another connection (a replica)
    /// writes between its read and its write. Other databases ignore the mode.
    async fn begin_write(&self) -> Result<DatabaseTransaction, QuotaError> {
        Ok(self.db.begin_with_options(write_first()).await?)
    }

    /// Mints a key and stores its token; the initial quota is a grant.
    pub async fn create_token(
        &self,
        new: NewToken,
        now: i64,
    ) -> Result<(Token, TokenKey), QuotaError> {
        self.bounded(async {
            if new.quota < 0 {
                return Err(QuotaError::InvalidArgument(format!(
                    "quota must not be negative, got {}",
                    new.quota
                )));
            }
            let key = TokenKey::generate()?;
            let txn = self.db.begin().await?;
            let row = token::ActiveModel {
                key_digest: Set(key.digest().as_str().to_owned()),
                display_prefix: Set(key.display_prefix()),
                name: Set(new.name),
                remaining: Set(new.quota),
                used: Set(0),
                unlimited: Set(new.unlimited),
                expires_at: Set(new.expires_at),
                status: Set(STATUS_ENABLED),
                created_at: Set(now),
                updated_at: Set(now),
                ..Default::default()
            }
            .insert(&txn)
            .await?;
            if new.quota > 0 {
                insert_ledger(&txn, row.id, KIND_GRANT, new.quota, None, now).await?;
            }
            txn.commit().await?;
            Ok((to_domain(row), key))
        })
        .await
    }

    /// The token whose key has this digest, if any.
    pub async fn token_by_digest(&self, digest: &KeyDigest) -> Result<Option<Token>, QuotaError> {
        self.bounded(async {
            let row = token::Entity::find()
                .filter(token::Column::KeyDigest.eq(digest.as_str()))
                .one(&self.read)
                .await?;
            Ok(row.map(to_domain))
        })
        .await
    }

    /// The digest of the key of the token with this id, if there is one.
    pub async fn key_digest(&self, id: i64) -> Result<Option<KeyDigest>, QuotaError> {
        self.bounded(async {
            let digest: Option<String> = token::Entity::find_by_id(id)
                .select_only()
                .column(token::Column::KeyDigest)
                .into_tuple()
                .one(&self.read)
                .await?;
            Ok(digest.as_deref().and_then(KeyDigest::from_hex))
        })
        .await
    }

    /// One token, or `TokenNotFound`.
    pub async fn token(&self, at: &TokenLocator) -> Result<Token, QuotaError> {
        self.bounded(async { find(&self.read, at).await.map(to_domain) })
            .await
    }

    /// Up to `limit` tokens with ids above `after_id`, by ascending id.
    pub async fn list_tokens(&self, after_id: i64, limit: u64) -> Result<Vec<Token>, QuotaError> {
        self.bounded(async {
            let rows = token::Entity::find()
                .filter(token::Column::Id.gt(after_id))
                .order_by_asc(token::Column::Id)
                .limit(limit)
                .all(&self.read)
                .await?;
            Ok(rows.into_iter().map(to_domain).collect())
        })
        .await
    }

    /// Adds `units` to the token's remaining quota, and so to its limit.
    pub async fn grant(
        &self,
        at: &TokenLocator,
        units: QuotaUnits,
        now: i64,
    ) -> Result<Token, QuotaError> {
        self.bounded(async {
            let txn = self.begin_write().await?;
            let row = find(&txn, at).await?;
            let update = Query::update()
                .table(token::Entity)
                .value(
                    token::Column::Remaining,
                    Expr::col(token::Column::Remaining).add(units.get()),
                )
                .value(token::Column::UpdatedAt, now)
                .and_where(Expr::col(token::Column::Id).eq(row.id))
                // The new limit, remaining + used + units, fits: written so
                // that no side of it can overflow (used >= 0).
                .and_where(
                    Expr::col(token::Column::Remaining)
                        .lte(Expr::val(i64::MAX - units.get()).sub(Expr::col(token::Column::Used))),
                )
                .to_owned();
            if txn.execute(&update).await?.rows_affected() != 1 {
                return Err(QuotaError::InvalidArgument(
                    "grant refused: the token's limit would exceed the largest number of units"
                        .into(),
                ));
            }
            insert_ledger(&txn, row.id, KIND_GRANT, units.get(), None, now).await?;
            let row = find(&txn, &TokenLocator::Id(row.id)).await?;
            txn.commit().await?;
            Ok(to_domain(row))
        })
        .await
    }

    /// Changes a token's name, status, expiry or unlimited flag.
    pub async fn update_token(
        &self,
        at: &TokenLocator,
        changes: TokenChanges,
        now: i64,
    ) -> Result<Token, QuotaError> {
        self.bounded(async {
            let row = find(&self.db, at).await?;
            let mut active: token::ActiveModel = row.into();
            if let Some(name) = changes.name {
                active.name = Set(name);
            }
            if let Some(enabled) = changes.enabled {
                active.status = Set(if enabled {
                    STATUS_ENABLED
                } else {
                    STATUS_DISABLED
                });
            }
            if let Some(expires_at) = changes.expires_at {
                active.expires_at = Set(expires_at);
            }
            if let Some(unlimited) = changes.unlimited {
                active.unlimited = Set(unlimited);
            }
            active.updated_at = Set(now);
            Ok(to_domain(active.update(&self.db).await?))
        })
        .await
    }

    /// Deletes a token, its ledger, its usage per day and its holds.
    pub async fn delete_token(&self, at: &TokenLocator) -> Result<(), QuotaError> {
        self.bounded(async {
            let txn = self.begin_write().await?;
            // The token's row first, as debits take it: no lock-order deadlock.
            let row = find_locked(&txn, at).await?;
            ledger::Entity::delete_many()
                .filter(ledger::Column::TokenId.eq(row.id))
                .exec(&txn)
                .await?;
            usage_day::Entity::delete_many()
                .filter(usage_day::Column::TokenId.eq(row.id))
                .exec(&txn)
                .await?;
            entity::hold::Entity::delete_many()
                .filter(entity::hold::Column::TokenId.eq(row.id))
                .exec(&txn)
                .await?;
            token::Entity::delete_by_id(row.id).exec(&txn).await?;
            txn.commit().await?;
            Ok(())
        })
        .await
    }
}

fn select(at: &TokenLocator) -> sea_orm::Select<token::Entity> {
    match at {
        TokenLocator::Id(id) => token::Entity::find_by_id(*id),
        TokenLocator::Digest(digest) => {
            token::Entity::find().filter(token::Column::KeyDigest.eq(digest.as_str()))
        }
    }
}

async fn find<C: ConnectionTrait>(db: &C, at: &TokenLocator) -> Result<token::Model, QuotaError> {
    select(at).one(db).await?.ok_or(QuotaError::TokenNotFound)
}

/// Like [`find`], holding the row's write lock until the transaction ends.
async fn find_locked(
    txn: &DatabaseTransaction,
    at: &TokenLocator,
) -> Result<token::Model, QuotaError> {
    select(at)
        .lock_exclusive()
        .one(txn)
        .await?
        .ok_or(QuotaError::TokenNotFound)
}

/// A pool of `connections` on `url`; SQLite connections in WAL mode with a
/// busy timeout, and kept open (an in-memory database dies with its
/// connection); server connections checked on release after a call gave up
/// on them ([`wait::check_released`]); every connection released inside a
/// transaction (a failed COMMIT) rolled back or closed.
async fn open(
    url: &str,
    connections: u32,
    gave_up: &Arc<GaveUp>,
) -> Result<DatabaseConnection, QuotaError> {
    // sqlx has one timeout for both (the pool's acquire, a new connection
    // included). A server database: 2 s, so that one that has gone away is
    // answered UNAVAILABLE (503) within the contract's 3 s, with room for the
    // request itself, and well under the edge's 10 s deadline (not 504).
    // SQLite's pools are local: a wait there is a queue behind its one
    // writer, not a database gone, so it has a little more.
    let acquire = if url.starts_with("sqlite:") {
        Duration::from_secs(3)
    } else {
        Duration::from_secs(2)
    };
    let mut opts = ConnectOptions::new(url);
    opts.sqlx_logging(false)
        .max_connections(connections)
        .connect_timeout(acquire)
        .acquire_timeout(acquire);
    if url.starts_with("sqlite:") {
        use sea_orm::sqlx::sqlite::{SqliteJournalMode, SqliteSynchronous};
        opts.map_sqlx_sqlite_pool_opts(wait::roll_back_released)
            .min_connections(1)
            .idle_timeout(None)
            .max_lifetime(None)
            .map_sqlx_sqlite_opts(|o| {
                o.create_if_missing(true)
                    .journal_mode(SqliteJournalMode::Wal)
                    .synchronous(SqliteSynchronous::Normal)
                    .busy_timeout(Duration::from_secs(10))
                    .foreign_keys(true)
            });
    } else {
        let pg = Arc::clone(gave_up);
        let mysql = Arc::clone(gave_up);
        opts.map_sqlx_postgres_pool_opts(move |o| {
            wait::check_released(o, Arc::clone(&pg)).after_connect(|conn, _| {
                Box::pin(async move {
                    plan_with_values(conn).await;
                    wait::bound_lock_waits_postgres(conn).await;
                    Ok(())
                })
            })
        })
        .map_sqlx_mysql_pool_opts(move |o| {
            wait::check_released(o, Arc::clone(&mysql)).after_connect(|conn, _| {
                Box::pin(async move {
                    wait::bound_lock_waits_mysql(conn).await;
                    Ok(())
                })
            })
        });
    }
    match Database::connect(opts).await {
        Ok(db) => Ok(db),
        Err(e) => Err(QuotaError::Unavailable(
            why_not_connected(url, acquire, e).await,
        )),
    }
}

/// Why connecting to `url` failed with `e`, in words an operator can act
/// on, with the URL's password hidden (the driver's messages may quote the
/// URL, password and all). The pool's timeout hides why no connection
/// opened (refused, a wrong password, no such database): one connection,
/// tried alone within `wait`, tells.
pub(crate) async fn why_not_connected(url: &str, wait: Duration, e: DbErr) -> String {
    let why = match e {
        e if e.to_string().contains("pool timed out") => why_no_connection(url, wait)
            .await
            .unwrap_or_else(|| e.to_string()),
        DbErr::Conn(RuntimeErr::SqlxError(e)) => format!("cannot connect: {}", refusal_text(&e)),
        e => e.to_string(),
    };
    why.replace(url, &redact_url(url))
}

/// What a database said when it refused a connection: a server's own
/// message (`database "x" does not exist`, `password authentication failed
/// for user "y"`) without the line of the server's source that PostgreSQL
/// sends with it, which sqlx's text appends (`… at line 948`) and which
/// reads as a line of the operator's own settings.
fn refusal_text(e: &sea_orm::sqlx::Error) -> String {
    match e {
        sea_orm::sqlx::Error::Database(db) => db.message().to_owned(),
        other => other.to_string(),
    }
}

/// Why a server database at `url` refuses a connection, if it does so
/// within `wait` (None for SQLite, whose pool times out only behind
/// another process's lock).
async fn why_no_connection(url: &str, wait: Duration) -> Option<String> {
    use sea_orm::sqlx::{Connection, MySqlConnection, PgConnection};
    let tried = async {
        if url.starts_with("mysql:") {
            MySqlConnection::connect(url).await.err()
        } else if url.starts_with("postgres:") || url.starts_with("postgresql:") {
            PgConnection::connect(url).await.err()
        } else {
            None
        }
    };
    tokio::time::timeout(wait, tried)
        .await
        .ok()
        .flatten()
        .map(|e| format!("cannot connect: {}", refusal_text(&e)))
}

/// Has PostgreSQL plan every execution of a prepared statement with its
/// values (`plan_cache_mode = force_custom_plan`). Otherwise, after five
/// executions it may keep one generic plan for good, made while the tables
/// were still small: the group's look-up of request ids in the ledger then
/// took the (token, time) index and read every ledger row of a hot token,
/// and one hot token's debits ran at 3,100–3,800 a second instead of
/// 4,500–5,000 (the statements are small: planning each costs less).
/// Set after connecting rather than as a startup option, which PgBouncer
/// refuses by default; a server that does not know the setting (before
/// PostgreSQL 12) keeps its default, and the connection serves as before.
async fn plan_with_values(conn: &mut sea_orm::sqlx::PgConnection) {
    use sea_orm::sqlx::Executor;
    if let Err(e) = conn
        .execute("SET plan_cache_mode = force_custom_plan")
        .await
    {
        tracing::debug!(error = %e, "PostgreSQL keeps its plan cache mode");
    }
}

/// A database URL with its password, if any, hidden: what may be shown.
/// The password of the user info, and the value of any query parameter
/// named like one (`password`, `sslpassword`), become `***`.
pub fn redact_url(url: &str) -> String {
    let shown = redact_user_info(url);
    // The user info's password is gone: a `?` left marks the query.
    let Some((base, query)) = shown.split_once('?') else {
        return shown;
    };
    let params: Vec<String> = query
        .split('&')
        .map(|param| match param.split_once('=') {
            Some((name, _)) if name.to_ascii_lowercase().contains("password") => {
                format!("{name}=***")
            }
            _ => param.to_owned(),
        })
        .collect();
    format!("{base}?{}", params.join("&"))
}

/// `url` with the password of its user info, if any, hidden.
fn redact_user_info(url: &str) -> String {
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

fn placeholder(backend: DatabaseBackend, n: usize) -> String {
    match backend {
        DatabaseBackend::Postgres => format!("${n}"),
        _ => "?".to_owned(),
    }
}

fn to_domain(row: token::Model) -> Token {
    Token {
        id: row.id,
        display_prefix: row.display_prefix,
        name: row.name,
        balance: Balance {
            remaining: row.remaining,
            used: row.used,
            unlimited: row.unlimited,
        },
        held: row.held,
        expires_at: row.expires_at,
        enabled: row.status == STATUS_ENABLED,
        created_at: row.created_at,
        updated_at: row.updated_at,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_are_redacted() {
        assert_eq!(
            redact_url("postgres://u:secret@db:5432/q"),
            "postgres://u:***@db:5432/q"
        );
        assert_eq!(redact_url("postgres://u@db/q"), "postgres://u@db/q");
        assert_eq!(redact_url("sqlite://quota.db"), "sqlite://quota.db");
        assert_eq!(
            redact_url("postgres://u@db/q?sslmode=require&password=secret&sslpassword=s2"),
            "postgres://u@db/q?sslmode=require&password=***&sslpassword=***"
        );
        assert_eq!(
            redact_url("postgres://u:se?cret@db/q?PASSWORD=x"),
            "postgres://u:***@db/q?PASSWORD=***"
        );
        assert_eq!(
            redact_url("sqlite://quota.db?mode=rwc"),
            "sqlite://quota.db?mode=rwc"
        );
    }
}

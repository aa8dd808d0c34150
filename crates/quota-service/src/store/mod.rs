//! The store: tokens and their ledger on sea-orm, in the domain's terms.
//!
//! Every function takes domain types and returns `Result<_, QuotaError>`; no
//! `DbErr` leaves this module. SQLite, PostgreSQL and MySQL run the same code.

pub mod entity;

use crate::domain::{
    Balance, DaySpend, Debit, KeyDigest, QuotaUnits, Token, TokenKey, TokenLocator, UsageWindow,
};
use crate::error::QuotaError;
use entity::{KIND_DEBIT, KIND_GRANT, STATUS_DISABLED, STATUS_ENABLED, ledger, token};
use migration::{Migrator, MigratorTrait};
use sea_orm::sea_query::{
    CaseStatement, Expr, ExprTrait, InsertStatement, Query, ReturningClause, UpdateStatement,
};
use sea_orm::{
    ActiveModelTrait, ActiveValue::Set, ColumnTrait, ConnectOptions, ConnectionTrait, Database,
    DatabaseBackend, DatabaseConnection, DatabaseTransaction, EntityTrait, QueryFilter, QueryOrder,
    QuerySelect, SqlErr, SqliteTransactionMode, Statement, TransactionOptions, TransactionTrait,
};
use std::time::Duration;

/// The database behind the service.
#[derive(Clone, Debug)]
pub struct Store {
    db: DatabaseConnection,
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

/// Pool size for server databases when the URL does not say otherwise.
const DEFAULT_MAX_CONNECTIONS: u32 = 16;

impl Store {
    /// Connects to `url` (`sqlite:`, `postgres://` or `mysql://`).
    ///
    /// SQLite runs on a single connection: SQLite admits one writer at a time
    /// anyway, and with one connection no "database is locked" can reach a
    /// caller, since requests queue for the connection instead. WAL and a busy
    /// timeout cover other processes on the same file (`quotad migrate`).
    pub async fn connect(url: &str) -> Result<Store, QuotaError> {
        let mut opts = ConnectOptions::new(url);
        opts.sqlx_logging(false)
            .connect_timeout(Duration::from_secs(5))
            .acquire_timeout(Duration::from_secs(30));
        if url.starts_with("sqlite:") {
            use sea_orm::sqlx::sqlite::{SqliteJournalMode, SqliteSynchronous};
            opts.max_connections(1)
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
            opts.max_connections(DEFAULT_MAX_CONNECTIONS);
        }
        let db = Database::connect(opts)
            .await
            .map_err(|e| QuotaError::Unavailable(e.to_string()))?;
        Ok(Store { db })
    }

    /// Applies every pending migration.
    pub async fn migrate(&self) -> Result<(), QuotaError> {
        Migrator::up(&self.db, None).await?;
        Ok(())
    }

    /// The connection, for tests and tools that need to reach the tables.
    pub fn connection(&self) -> &DatabaseConnection {
        &self.db
    }

    /// A transaction that reads before it writes. On SQLite it takes the write
    /// lock at `BEGIN IMMEDIATE`, where the busy timeout applies: a deferred
    /// one fails with "database is locked" when another connection (a replica)
    /// writes between its read and its write. Other databases ignore the mode.
    async fn begin_write(&self) -> Result<DatabaseTransaction, QuotaError> {
        let options = TransactionOptions {
            sqlite_transaction_mode: Some(SqliteTransactionMode::Immediate),
            ..TransactionOptions::default()
        };
        Ok(self.db.begin_with_options(options).await?)
    }

    /// Mints a key and stores its token; the initial quota is a grant.
    pub async fn create_token(
        &self,
        new: NewToken,
        now: i64,
    ) -> Result<(Token, TokenKey), QuotaError> {
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
    }

    /// The token whose key has this digest, if any.
    pub async fn token_by_digest(&self, digest: &KeyDigest) -> Result<Option<Token>, QuotaError> {
        let row = token::Entity::find()
            .filter(token::Column::KeyDigest.eq(digest.as_str()))
            .one(&self.db)
            .await?;
        Ok(row.map(to_domain))
    }

    /// One token, or `TokenNotFound`.
    pub async fn token(&self, at: &TokenLocator) -> Result<Token, QuotaError> {
        find(&self.db, at).await.map(to_domain)
    }

    /// Up to `limit` tokens with ids above `after_id`, by ascending id.
    pub async fn list_tokens(&self, after_id: i64, limit: u64) -> Result<Vec<Token>, QuotaError> {
        let rows = token::Entity::find()
            .filter(token::Column::Id.gt(after_id))
            .order_by_asc(token::Column::Id)
            .limit(limit)
            .all(&self.db)
            .await?;
        Ok(rows.into_iter().map(to_domain).collect())
    }

    /// Adds `units` to the token's remaining quota, and so to its limit.
    pub async fn grant(
        &self,
        at: &TokenLocator,
        units: QuotaUnits,
        now: i64,
    ) -> Result<Token, QuotaError> {
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
            .and_where(Expr::col(token::Column::Remaining).lte(i64::MAX - units.get()))
            .and_where(Expr::col(token::Column::Used).lte(i64::MAX - units.get()))
            .to_owned();
        if txn.execute(&update).await?.rows_affected() != 1 {
            return Err(QuotaError::InvalidArgument(
                "grant refused: the token's quota would exceed the largest number of units".into(),
            ));
        }
        insert_ledger(&txn, row.id, KIND_GRANT, units.get(), None, now).await?;
        let row = find(&txn, &TokenLocator::Id(row.id)).await?;
        txn.commit().await?;
        Ok(to_domain(row))
    }

    /// Changes a token's name, status, expiry or unlimited flag.
    pub async fn update_token(
        &self,
        at: &TokenLocator,
        changes: TokenChanges,
        now: i64,
    ) -> Result<Token, QuotaError> {
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
    }

    /// Deletes a token and its ledger.
    pub async fn delete_token(&self, at: &TokenLocator) -> Result<(), QuotaError> {
        let txn = self.begin_write().await?;
        let row = find(&txn, at).await?;
        ledger::Entity::delete_many()
            .filter(ledger::Column::TokenId.eq(row.id))
            .exec(&txn)
            .await?;
        token::Entity::delete_by_id(row.id).exec(&txn).await?;
        txn.commit().await?;
        Ok(())
    }

    /// Debits `units` from the token whose key has `digest`: all or nothing.
    ///
    /// One conditional UPDATE (enabled, unexpired, unlimited or enough left)
    /// and the ledger row, in one transaction. The unique (token, request id)
    /// index makes a repeat of a succeeded request id roll back; it is then
    /// answered as a repeat, with nothing more debited.
    pub async fn consume(
        &self,
        digest: &KeyDigest,
        units: QuotaUnits,
        request_id: Option<&str>,
        now: i64,
    ) -> Result<Debit, QuotaError> {
        // A refusal is diagnosed after the rollback; should the token have
        // changed in between (a grant landed), the debit is tried again.
        for _ in 0..3 {
            let txn = self.db.begin().await?;
            if let Some((token_id, balance)) = debit_counters(&txn, digest, units, now).await? {
                match insert_ledger(&txn, token_id, KIND_DEBIT, units.get(), request_id, now).await
                {
                    Ok(()) => {
                        txn.commit().await?;
                        return Ok(Debit {
                            balance,
                            repeat: false,
                        });
                    }
                    Err(e) if matches!(e.sql_err(), Some(SqlErr::UniqueConstraintViolation(_))) => {
                    }
                    Err(e) => return Err(e.into()),
                }
            }
            txn.rollback().await?;
            if let Some(refusal) = self.explain_refusal(digest, units, request_id, now).await? {
                return refusal;
            }
        }
        Err(QuotaError::Internal(
            "debit did not settle after three attempts".into(),
        ))
    }

    /// Why a debit was refused: a repeat (success), or the token's state.
    /// `None` when nothing stands in the way any more.
    async fn explain_refusal(
        &self,
        digest: &KeyDigest,
        units: QuotaUnits,
        request_id: Option<&str>,
        now: i64,
    ) -> Result<Option<Result<Debit, QuotaError>>, QuotaError> {
        let Some(token) = self.token_by_digest(digest).await? else {
            return Ok(Some(Err(QuotaError::TokenNotFound)));
        };
        if let Some(request_id) = request_id {
            let seen = ledger::Entity::find()
                .filter(ledger::Column::TokenId.eq(token.id))
                .filter(ledger::Column::RequestId.eq(request_id))
                .one(&self.db)
                .await?;
            if seen.is_some() {
                return Ok(Some(Ok(Debit {
                    balance: token.balance,
                    repeat: true,
                })));
            }
        }
        Ok(if !token.enabled {
            Some(Err(QuotaError::TokenDisabled))
        } else if token.is_expired(now) {
            Some(Err(QuotaError::TokenExpired))
        } else if !token.balance.unlimited && token.balance.remaining < units.get() {
            Some(Err(QuotaError::QuotaExhausted {
                remaining: token.balance.remaining,
                requested: units.get(),
            }))
        } else {
            None
        })
    }

    /// Units debited per UTC day within `window`, oldest first.
    pub async fn daily_usage(
        &self,
        token_id: i64,
        window: UsageWindow,
    ) -> Result<Vec<DaySpend>, QuotaError> {
        let backend = self.db.get_database_backend();
        let total = match backend {
            DatabaseBackend::Postgres => "CAST(SUM(units) AS BIGINT)",
            DatabaseBackend::MySql => "CAST(SUM(units) AS SIGNED)",
            _ => "SUM(units)",
        };
        let mut sql = format!(
            "SELECT created_at - (created_at % 86400) AS day, {total} AS units FROM quota_ledger \
             WHERE token_id = {} AND kind = {}",
            placeholder(backend, 1),
            placeholder(backend, 2)
        );
        let mut values: Vec<sea_orm::Value> = vec![token_id.into(), KIND_DEBIT.into()];
        for (bound, op) in [(window.start, ">="), (window.end, "<")] {
            if let Some(at) = bound {
                values.push(at.into());
                sql.push_str(&format!(
                    " AND created_at {op} {}",
                    placeholder(backend, values.len())
                ));
            }
        }
        sql.push_str(" GROUP BY 1 ORDER BY 1");
        let rows = self
            .db
            .query_all_raw(Statement::from_sql_and_values(backend, sql, values))
            .await?;
        rows.iter()
            .map(|row| {
                Ok(DaySpend {
                    day: row.try_get_by_index(0)?,
                    units: row.try_get_by_index(1)?,
                })
            })
            .collect::<Result<_, sea_orm::DbErr>>()
            .map_err(QuotaError::from)
    }
}

/// The conditional debit of the counters. Returns the token id and the
/// counters after the debit, or `None` when the token cannot pay.
async fn debit_counters(
    txn: &DatabaseTransaction,
    digest: &KeyDigest,
    units: QuotaUnits,
    now: i64,
) -> Result<Option<(i64, Balance)>, QuotaError> {
    use token::Column as C;
    let mut update = debit_update(digest.as_str(), units.get(), now);
    let row = if txn.support_returning() {
        txn.query_one(update.returning(debit_returning())).await?
    } else {
        if txn.execute(&update).await?.rows_affected() != 1 {
            return Ok(None);
        }
        let select = Query::select()
            .columns([C::Id, C::Remaining, C::Used, C::Unlimited])
            .from(token::Entity)
            .and_where(Expr::col(C::KeyDigest).eq(digest.as_str()))
            .to_owned();
        txn.query_one(&select).await?
    };
    let Some(row) = row else { return Ok(None) };
    let id: i64 = row.try_get_by_index(0)?;
    let balance = Balance {
        remaining: row.try_get_by_index(1)?,
        used: row.try_get_by_index(2)?,
        unlimited: row.try_get_by_index(3)?,
    };
    Ok(Some((id, balance)))
}

/// `UPDATE` of the counters that succeeds only for an enabled, unexpired
/// token that is unlimited or has at least `units` left.
fn debit_update(digest: &str, units: i64, now: i64) -> UpdateStatement {
    use token::Column as C;
    Query::update()
        .table(token::Entity)
        .value(
            C::Remaining,
            CaseStatement::new()
                .case(Expr::col(C::Unlimited).eq(true), Expr::col(C::Remaining))
                .finally(Expr::col(C::Remaining).sub(units)),
        )
        .value(C::Used, Expr::col(C::Used).add(units))
        .value(C::UpdatedAt, now)
        .and_where(Expr::col(C::KeyDigest).eq(digest))
        .and_where(Expr::col(C::Status).eq(STATUS_ENABLED))
        .and_where(
            Expr::col(C::ExpiresAt)
                .is_null()
                .or(Expr::col(C::ExpiresAt).gt(now)),
        )
        .and_where(
            Expr::col(C::Unlimited)
                .eq(true)
                .or(Expr::col(C::Remaining).gte(units)),
        )
        .and_where(Expr::col(C::Used).lte(i64::MAX - units))
        .to_owned()
}

fn debit_returning() -> ReturningClause {
    use token::Column as C;
    Query::returning().columns([C::Id, C::Remaining, C::Used, C::Unlimited])
}

fn ledger_insert(
    token_id: i64,
    kind: i16,
    units: i64,
    request_id: Option<&str>,
    now: i64,
) -> InsertStatement {
    use ledger::Column as C;
    Query::insert()
        .into_table(ledger::Entity)
        .columns([C::TokenId, C::Kind, C::Units, C::RequestId, C::CreatedAt])
        .values_panic([
            token_id.into(),
            kind.into(),
            units.into(),
            request_id.map(str::to_owned).into(),
            now.into(),
        ])
        .to_owned()
}

async fn insert_ledger(
    txn: &DatabaseTransaction,
    token_id: i64,
    kind: i16,
    units: i64,
    request_id: Option<&str>,
    now: i64,
) -> Result<(), sea_orm::DbErr> {
    txn.execute(&ledger_insert(token_id, kind, units, request_id, now))
        .await?;
    Ok(())
}

/// The statements one debit executes on PostgreSQL, as a pgbench script, so
/// that the benchmark compares the service with PostgreSQL running exactly
/// this SQL. `digest_sql` and `request_id_sql` are SQL expressions standing
/// for the bound values.
#[doc(hidden)]
pub fn pgbench_debit_script(
    digest_sql: &str,
    units: i64,
    request_id_sql: &str,
    now: i64,
) -> String {
    use sea_orm::sea_query::PostgresQueryBuilder;
    const DIGEST: &str = "@@digest@@";
    const REQUEST_ID: &str = "@@request_id@@";
    const TOKEN_ID: i64 = 987_654_321_987_654_321;
    let update = debit_update(DIGEST, units, now)
        .returning(debit_returning())
        .to_string(PostgresQueryBuilder)
        .replace(&format!("'{DIGEST}'"), digest_sql);
    let insert = ledger_insert(TOKEN_ID, KIND_DEBIT, units, Some(REQUEST_ID), now)
        .to_string(PostgresQueryBuilder)
        .replace(&format!("'{REQUEST_ID}'"), request_id_sql)
        .replace(&TOKEN_ID.to_string(), ":id");
    format!("BEGIN;\n{update} \\gset\n{insert};\nCOMMIT;\n")
}

async fn find<C: ConnectionTrait>(db: &C, at: &TokenLocator) -> Result<token::Model, QuotaError> {
    let query = match at {
        TokenLocator::Id(id) => token::Entity::find_by_id(*id),
        TokenLocator::Digest(digest) => {
            token::Entity::find().filter(token::Column::KeyDigest.eq(digest.as_str()))
        }
    };
    query.one(db).await?.ok_or(QuotaError::TokenNotFound)
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
        expires_at: row.expires_at,
        enabled: row.status == STATUS_ENABLED,
        created_at: row.created_at,
        updated_at: row.updated_at,
    }
}

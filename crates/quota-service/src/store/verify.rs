//! `quotad verify`: every token's counters recomputed from its ledger.
//!
//! The row's counters are a fast copy of the ledger: the limit
//! (`remaining + used`) is the sum of the grants and `used` the sum of the
//! debits; `held` is the units of its holds neither settled nor released and
//! not yet swept. The usage per day (`quota_usage_days`) is another copy: one
//! row per UTC day with debits, their sum. This module reads both, in one
//! read-only snapshot, and reports every token where they disagree. It only reads, so it is safe beside a
//! running service: a token's row and its sums come from one snapshot
//! (PostgreSQL and MySQL: a `REPEATABLE READ` read-only transaction; SQLite:
//! a read transaction, which is a snapshot in WAL mode), so a debit that
//! commits meanwhile is seen either whole or not at all.

use super::entity::{KIND_DEBIT, KIND_GRANT};
use super::{placeholder, redact_url};
use crate::domain::HoldState;
use sea_orm::{
    AccessMode, ConnectOptions, ConnectionTrait, Database, DatabaseBackend, DatabaseConnection,
    IsolationLevel, Statement, TransactionTrait,
};
use std::fmt;
use std::time::Duration;

/// Tokens read per statement: memory stays bounded however many there are.
const PAGE: i64 = 500;

/// A token's counters: as its row keeps them, or as its ledger says.
///
/// Each counter is one field here, one column in [`counters_sql`] and one
/// comparison in [`TokenCheck::disagreements`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Counters {
    /// Units ever granted: the row's `remaining + used`, or the ledger's grants.
    pub limit: i128,
    /// Units spent: the row's `used`, or the ledger's debits.
    pub used: i128,
    /// Units held: the row's `held`, or the units of the token's holds that
    /// are neither settled nor released and not yet swept (expired ones count
    /// until the next write to the token sweeps them, on both sides).
    pub held: i128,
}

/// One token, its row beside its ledger.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TokenCheck {
    /// The token's id.
    pub id: i64,
    /// `sk-AbCd…`, to recognise it by.
    pub display_prefix: String,
    /// The counters on the token's row.
    pub row: Counters,
    /// The counters the ledger adds up to.
    pub ledger: Counters,
    /// The days whose usage total disagrees with the ledger, oldest first.
    pub days: Vec<DayCheck>,
}

/// One UTC day of a token on which `quota_usage_days` and the ledger disagree.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DayCheck {
    /// Unix seconds of the day's start.
    pub day: i64,
    /// The day's usage total; `None` when it has no row.
    pub kept: Option<i64>,
    /// The sum of the day's debits in the ledger; `None` when it has none.
    pub debited: Option<i64>,
}

impl DayCheck {
    fn line(&self, who: &str) -> String {
        let date = chrono::DateTime::from_timestamp(self.day, 0).map_or_else(
            || self.day.to_string(),
            |d| d.format("%Y-%m-%d").to_string(),
        );
        let kept = match self.kept {
            Some(units) => format!("is {units}"),
            None => "is missing".to_owned(),
        };
        let debited = match self.debited {
            Some(units) => format!("its debits that day add up to {units}"),
            None => "it has no debits that day".to_owned(),
        };
        format!("{who}: usage on {date} {kept} but {debited}")
    }
}

impl TokenCheck {
    /// One line per counter on which the row and the ledger disagree.
    pub fn disagreements(&self) -> Vec<String> {
        let mut lines = Vec::new();
        let who = format!("token {} ({})", self.id, self.display_prefix);
        if self.row.limit != self.ledger.limit {
            lines.push(format!(
                "{who}: limit (remaining + used) is {} but its grants add up to {}",
                self.row.limit, self.ledger.limit
            ));
        }
        if self.row.used != self.ledger.used {
            lines.push(format!(
                "{who}: used is {} but its debits add up to {}",
                self.row.used, self.ledger.used
            ));
        }
        if self.row.held != self.ledger.held {
            lines.push(format!(
                "{who}: held is {} but its live holds add up to {}",
                self.row.held, self.ledger.held
            ));
        }
        lines.extend(self.days.iter().map(|day| day.line(&who)));
        lines
    }
}

/// What a whole check found.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Verification {
    /// Tokens checked.
    pub tokens: u64,
    /// The tokens whose row and ledger disagree, by id.
    pub disagreeing: Vec<TokenCheck>,
}

impl Verification {
    /// True when every token's row agrees with its ledger.
    pub fn agrees(&self) -> bool {
        self.disagreeing.is_empty()
    }
}

/// The database could not be read; the message is safe to show (no password).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Unreadable(pub String);

impl fmt::Display for Unreadable {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Unreadable {}

impl From<sea_orm::DbErr> for Unreadable {
    fn from(err: sea_orm::DbErr) -> Self {
        Unreadable(err.to_string())
    }
}

/// How long `quotad verify` waits for its connection.
const CONNECT_WAIT: Duration = Duration::from_secs(3);

/// Opens the database at `url` without creating or migrating anything (a
/// SQLite file that does not exist is an error, not a new empty database)
/// and checks every token.
pub async fn verify_url(url: &str) -> Result<Verification, Unreadable> {
    let shown = redact_url(url);
    let mut opts = ConnectOptions::new(url);
    opts.sqlx_logging(false)
        .max_connections(1)
        .connect_timeout(CONNECT_WAIT)
        .acquire_timeout(CONNECT_WAIT);
    if url.starts_with("sqlite:") {
        opts.map_sqlx_sqlite_opts(|o| {
            o.create_if_missing(false)
                .busy_timeout(Duration::from_secs(10))
        });
    }
    let db = match Database::connect(opts).await {
        Ok(db) => db,
        Err(e) => {
            let why = super::why_not_connected(url, CONNECT_WAIT, e).await;
            return Err(Unreadable(why));
        }
    };
    let checked = verify(&db)
        .await
        .map_err(|e| Unreadable(e.0.replace(url, &shown)));
    let _ = db.close().await;
    checked
}

/// Checks every token of `db`, in one read-only snapshot.
pub async fn verify(db: &DatabaseConnection) -> Result<Verification, Unreadable> {
    let backend = db.get_database_backend();
    let txn = match backend {
        // SQLite has one isolation level, and a read transaction is a snapshot.
        DatabaseBackend::Sqlite => db.begin().await?,
        _ => {
            db.begin_with_config(
                Some(IsolationLevel::RepeatableRead),
                Some(AccessMode::ReadOnly),
            )
            .await?
        }
    };
    let sql = counters_sql(backend);
    let days_sql = days_sql(backend);
    let mut found = Verification::default();
    let mut after = 0i64;
    loop {
        let rows = txn
            .query_all_raw(Statement::from_sql_and_values(
                backend,
                sql.clone(),
                [after.into(), PAGE.into()],
            ))
            .await?;
        let mut page = Vec::with_capacity(rows.len());
        for row in &rows {
            page.push(TokenCheck {
                id: row.try_get("", "id")?,
                display_prefix: row.try_get("", "display_prefix")?,
                row: Counters {
                    limit: i128::from(row.try_get::<i64>("", "remaining")?)
                        + i128::from(row.try_get::<i64>("", "used")?),
                    used: row.try_get::<i64>("", "used")?.into(),
                    held: row.try_get::<i64>("", "held")?.into(),
                },
                ledger: Counters {
                    limit: row.try_get::<i64>("", "granted")?.into(),
                    used: row.try_get::<i64>("", "debited")?.into(),
                    held: row.try_get::<i64>("", "holding")?.into(),
                },
                days: Vec::new(),
            });
        }
        let Some(last) = page.last().map(|check| check.id) else {
            break;
        };
        let mut days = txn
            .query_all_raw(Statement::from_sql_and_values(
                backend,
                days_sql.clone(),
                [after.into(), last.into(), after.into(), last.into()],
            ))
            .await?
            .into_iter()
            .peekable();
        for mut check in page {
            while let Some(row) = days.next_if(|row| {
                row.try_get::<i64>("", "token_id")
                    .is_ok_and(|id| id <= check.id)
            }) {
                let day = DayCheck {
                    day: row.try_get("", "day")?,
                    kept: (row.try_get::<i64>("", "kept_rows")? > 0)
                        .then(|| row.try_get("", "kept"))
                        .transpose()?,
                    debited: (row.try_get::<i64>("", "debit_rows")? > 0)
                        .then(|| row.try_get("", "debited"))
                        .transpose()?,
                };
                if row.try_get::<i64>("", "token_id")? == check.id {
                    check.days.push(day);
                }
            }
            found.tokens += 1;
            after = check.id;
            if check.row != check.ledger || !check.days.is_empty() {
                found.disagreeing.push(check);
            }
        }
        if rows.len() < PAGE as usize {
            break;
        }
    }
    txn.commit().await?;
    Ok(found)
}

/// One page of tokens with ids above the first parameter, each row with the
/// sums of its ledger, in one statement.
fn counters_sql(backend: DatabaseBackend) -> String {
    let bigint = match backend {
        DatabaseBackend::Postgres => "BIGINT",
        DatabaseBackend::MySql => "SIGNED",
        _ => "INTEGER",
    };
    let sum = |kind: i16| {
        format!(
            "(SELECT CAST(COALESCE(SUM(l.units), 0) AS {bigint}) FROM quota_ledger l \
             WHERE l.token_id = t.id AND l.kind = {kind})"
        )
    };
    let live = HoldState::Live.code();
    let holding = format!(
        "(SELECT CAST(COALESCE(SUM(h.units), 0) AS {bigint}) FROM quota_holds h \
         WHERE h.token_id = t.id AND h.state = {live})"
    );
    format!(
        "SELECT t.id, t.display_prefix, t.remaining, t.used, t.held, {} AS granted, \
         {} AS debited, {holding} AS holding \
         FROM quota_tokens t WHERE t.id > {} ORDER BY t.id LIMIT {}",
        sum(KIND_GRANT),
        sum(KIND_DEBIT),
        placeholder(backend, 1),
        placeholder(backend, 2),
    )
}

/// The days of tokens with ids in `(first, second]` whose usage total
/// disagrees with the sum of their debits (or where one of the two is
/// missing), by token and day. The ledger's day is the usage route's:
/// `created_at - created_at % 86400`.
fn days_sql(backend: DatabaseBackend) -> String {
    let bigint = match backend {
        DatabaseBackend::Postgres => "BIGINT",
        DatabaseBackend::MySql => "SIGNED",
        _ => "INTEGER",
    };
    let p = |n| placeholder(backend, n);
    format!(
        "SELECT token_id, day, CAST(SUM(kept) AS {bigint}) AS kept, \
         CAST(SUM(kept_rows) AS {bigint}) AS kept_rows, CAST(SUM(debited) AS {bigint}) AS debited, \
         CAST(SUM(debit_rows) AS {bigint}) AS debit_rows FROM ( \
         SELECT token_id, day, units AS kept, 1 AS kept_rows, 0 AS debited, 0 AS debit_rows \
         FROM quota_usage_days WHERE token_id > {} AND token_id <= {} \
         UNION ALL \
         SELECT token_id, created_at - (created_at % 86400) AS day, 0, 0, units, 1 \
         FROM quota_ledger WHERE kind = {KIND_DEBIT} AND token_id > {} AND token_id <= {} \
         ) u GROUP BY token_id, day \
         HAVING SUM(kept) <> SUM(debited) OR SUM(kept_rows) <> 1 OR SUM(debit_rows) = 0 \
         ORDER BY token_id, day",
        p(1),
        p(2),
        p(3),
        p(4),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(row: (i128, i128), ledger: (i128, i128)) -> TokenCheck {
        TokenCheck {
            id: 7,
            display_prefix: "sk-AbCd…".into(),
            row: Counters {
                limit: row.0,
                used: row.1,
                held: 0,
            },
            ledger: Counters {
                limit: ledger.0,
                used: ledger.1,
                held: 0,
            },
            days: Vec::new(),
        }
    }

    #[test]
    fn agreement_says_nothing() {
        assert!(check((10, 4), (10, 4)).disagreements().is_empty());
    }

    #[test]
    fn each_counter_that_disagrees_is_one_line() {
        let lines = check((11, 5), (10, 4)).disagreements();
        assert_eq!(
            lines,
            [
                "token 7 (sk-AbCd…): limit (remaining + used) is 11 but its grants add up to 10",
                "token 7 (sk-AbCd…): used is 5 but its debits add up to 4",
            ]
        );
        assert_eq!(check((10, 5), (10, 4)).disagreements().len(), 1);
        let mut held = check((10, 4), (10, 4));
        held.row.held = 3;
        assert_eq!(
            held.disagreements(),
            ["token 7 (sk-AbCd…): held is 3 but its live holds add up to 0"]
        );
    }

    #[test]
    fn each_day_that_disagrees_is_one_line() {
        let mut days = check((10, 4), (10, 4));
        let day0 = 1_799_971_200;
        days.days = vec![
            DayCheck {
                day: day0,
                kept: Some(5),
                debited: Some(4),
            },
            DayCheck {
                day: day0 + 86_400,
                kept: Some(2),
                debited: None,
            },
            DayCheck {
                day: day0 + 2 * 86_400,
                kept: None,
                debited: Some(0),
            },
        ];
        assert_eq!(
            days.disagreements(),
            [
                "token 7 (sk-AbCd…): usage on 2027-01-15 is 5 but its debits that day add up to 4",
                "token 7 (sk-AbCd…): usage on 2027-01-16 is 2 but it has no debits that day",
                "token 7 (sk-AbCd…): usage on 2027-01-17 is missing but its debits that day add up to 0",
            ]
        );
    }
}

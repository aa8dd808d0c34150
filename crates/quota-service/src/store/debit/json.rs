//! A group's statements on SQLite, each of one shape whatever the group
//! holds: its rows are bound as one JSON array, which `json_each` reads back
//! as a table.
//!
//! A statement with a `VALUES` row, an `IN` item or a `CASE` arm per call
//! has a new text for every size and mix of group; a connection keeps the
//! last hundred texts it prepared, and a group of reserves and settles spread
//! over many tokens meets several hundred of them, so that most of its
//! statements were parsed and planned again (a tenth of a pair's CPU time,
//! against a hundredth of a debit's). Here the texts are a handful, and the
//! connection's cache keeps them all.

use super::group::{LedgerRow, NewHold};
use crate::store::usage::UsageDays;
use sea_orm::{DatabaseBackend, Statement, Value};
use serde::Serialize;

/// `rows` as the JSON array that one statement binds.
fn json<T: Serialize>(rows: &T) -> Value {
    // Numbers, strings and nulls: serializing them cannot fail.
    serde_json::to_string(rows).unwrap_or_default().into()
}

/// One statement: its text and the value of each of its `?`, in order.
pub(super) struct Part {
    sql: String,
    values: Vec<Value>,
}

impl Part {
    fn new(sql: String, values: Vec<Value>) -> Part {
        Part { sql, values }
    }

    /// The part alone, as a statement.
    pub(super) fn statement(self) -> Statement {
        Part::join(vec![self], "")
    }

    /// `parts` as one statement: joined by `between` (`;` for a script,
    /// `UNION ALL` for a look-up), with their values in order.
    pub(super) fn join(parts: Vec<Part>, between: &str) -> Statement {
        let mut sql = String::new();
        let mut values = Vec::new();
        for part in parts {
            if !sql.is_empty() {
                sql.push_str(between);
            }
            sql.push_str(&part.sql);
            values.extend(part.values);
        }
        Statement::from_sql_and_values(DatabaseBackend::Sqlite, sql, values)
    }
}

/// The condition that a token's `key_digest` is one of `digests`.
pub(super) fn digest_in(digests: &[&str]) -> (String, Value) {
    (
        r#""key_digest" IN (SELECT value FROM json_each(?))"#.to_owned(),
        json(&digests),
    )
}

/// The columns of a hold, in the order of `hold::Model`, of `alias`.
fn hold_columns(alias: &str) -> String {
    [
        "id",
        "token_id",
        "request_id",
        "units",
        "expires_at",
        "state",
    ]
    .iter()
    .chain(["created_at", "updated_at"].iter())
    .map(|c| format!("{alias}.{c}"))
    .collect::<Vec<_>>()
    .join(", ")
}

/// The hold rows of exactly the (token id, request id) `pairs`: one probe
/// of the unique index per pair (`CROSS JOIN` keeps the pairs the outer loop).
pub(super) fn holds_named(pairs: &[(i64, Vec<&str>)]) -> Part {
    Part::new(
        format!(
            "SELECT {} FROM json_each(?) AS n CROSS JOIN quota_holds AS h \
             ON h.token_id = n.value ->> 0 AND h.request_id = n.value ->> 1",
            hold_columns("h")
        ),
        vec![json(&flat(pairs))],
    )
}

/// The live holds of `tokens` expired by `latest`, through the index of
/// holds by token, state and expiry.
pub(super) fn holds_expired(tokens: &[i64], live: i16, latest: i64) -> Part {
    Part::new(
        format!(
            "SELECT {} FROM quota_holds AS h WHERE h.token_id IN (SELECT value FROM json_each(?)) \
             AND h.state = ? AND h.expires_at <= ?",
            hold_columns("h")
        ),
        vec![json(&tokens), live.into(), latest.into()],
    )
}

/// The ledger rows of exactly the (token id, request id) `pairs`, as rows
/// of a hold (see `group::ledger_select`): `expires_at` is `ledger_row`.
pub(super) fn ledger_named(pairs: &[(i64, Vec<&str>)], ledger_row: i64) -> Part {
    Part::new(
        "SELECT l.id, l.token_id, l.request_id, l.units, ? AS expires_at, l.kind AS state, \
         l.created_at AS created_at, l.created_at AS updated_at \
         FROM json_each(?) AS n CROSS JOIN quota_ledger AS l \
         ON l.token_id = n.value ->> 0 AND l.request_id = n.value ->> 1"
            .to_owned(),
        vec![ledger_row.into(), json(&flat(pairs))],
    )
}

/// The pairs one by one, as `[token id, request id]`.
fn flat<'a>(pairs: &'a [(i64, Vec<&'a str>)]) -> Vec<(i64, &'a str)> {
    pairs
        .iter()
        .flat_map(|(id, ids)| ids.iter().map(move |r| (*id, *r)))
        .collect()
}

/// The counters of every row of `rows` (id, remaining, used, held, updated at).
pub(super) fn counters_update(rows: &[[i64; 5]]) -> Part {
    Part::new(
        "UPDATE quota_tokens SET remaining = v.value ->> 1, used = v.value ->> 2, \
         held = v.value ->> 3, updated_at = v.value ->> 4 \
         FROM json_each(?) AS v WHERE quota_tokens.id = v.value ->> 0"
            .to_owned(),
        vec![json(&rows)],
    )
}

/// New holds.
pub(super) fn holds_insert(rows: &[NewHold]) -> Part {
    let rows: Vec<_> = rows
        .iter()
        .map(|h| {
            (
                h.token_id,
                h.request_id.as_str(),
                h.units,
                h.expires_at,
                h.state,
                h.at,
            )
        })
        .collect();
    Part::new(
        "INSERT INTO quota_holds (token_id, request_id, units, expires_at, state, created_at, updated_at) \
         SELECT value ->> 0, value ->> 1, value ->> 2, value ->> 3, value ->> 4, value ->> 5, value ->> 5 \
         FROM json_each(?)"
            .to_owned(),
        vec![json(&rows)],
    )
}

/// Hold states: (id, state, updated at) each.
pub(super) fn hold_states(rows: &[(i64, i16, i64)]) -> Part {
    Part::new(
        "UPDATE quota_holds SET state = v.value ->> 1, updated_at = v.value ->> 2 \
         FROM json_each(?) AS v WHERE quota_holds.id = v.value ->> 0"
            .to_owned(),
        vec![json(&rows)],
    )
}

/// Ledger rows, in their order: `json_each` reads an array from its first
/// element, so the rows' ids follow it (SQLite does not promise a scan's
/// order in general; for this table-valued function it is the array's).
pub(super) fn ledger_insert(rows: &[LedgerRow]) -> Part {
    let rows: Vec<_> = rows
        .iter()
        .map(|r| (r.token_id, r.kind, r.units, r.request_id.as_deref(), r.at))
        .collect();
    Part::new(
        "INSERT INTO quota_ledger (token_id, kind, units, request_id, created_at) \
         SELECT value ->> 0, value ->> 1, value ->> 2, value ->> 3, value ->> 4 FROM json_each(?)"
            .to_owned(),
        vec![json(&rows)],
    )
}

/// The usage per token and day, added to what each day has (`WHERE true`
/// tells SQLite's parser that `ON CONFLICT` is the upsert's).
pub(super) fn usage_upsert(days: &UsageDays) -> Option<Part> {
    let rows: Vec<(i64, i64, i64)> = days.rows().collect();
    if rows.is_empty() {
        return None;
    }
    Some(Part::new(
        "INSERT INTO quota_usage_days (token_id, day, units) \
         SELECT value ->> 0, value ->> 1, value ->> 2 FROM json_each(?) WHERE true \
         ON CONFLICT (token_id, day) DO UPDATE SET units = quota_usage_days.units + excluded.units"
            .to_owned(),
        vec![json(&rows)],
    ))
}

//! Database errors classed for the caller.

use crate::helpers::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn database_errors_are_classed_for_the_caller() {
    use sea_orm::ConnectionTrait;
    let Some(db) = TestDb::postgres().await else {
        return;
    };
    let store = db.store().await;
    let txn = sea_orm::TransactionTrait::begin(store.connection())
        .await
        .unwrap();
    // A statement the database gave up on: try again later, not a bug.
    txn.execute_unprepared("SET LOCAL statement_timeout = 10")
        .await
        .unwrap();
    let gave_up = txn
        .execute_unprepared("SELECT pg_sleep(1)")
        .await
        .unwrap_err();
    assert!(matches!(QuotaError::from(gave_up), QuotaError::Busy(_)));
    drop(txn);
    // A statement that cannot work: internal.
    let broken = store
        .connection()
        .execute_unprepared("SELEC 1")
        .await
        .unwrap_err();
    assert!(matches!(QuotaError::from(broken), QuotaError::Internal(_)));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_mysql_lock_wait_timeout_is_busy() {
    use sea_orm::{ConnectionTrait, TransactionTrait};
    let Some(db) = TestDb::mysql().await else {
        return;
    };
    let store = db.store().await;
    let (tok, _) = new_token(&store, 100).await;
    let lock = format!(
        "SELECT id FROM quota_tokens WHERE id = {} FOR UPDATE",
        tok.id
    );
    let holder = store.connection().begin().await.unwrap();
    holder.execute_unprepared(&lock).await.unwrap();
    let waiter = store.connection().begin().await.unwrap();
    waiter
        .execute_unprepared("SET SESSION innodb_lock_wait_timeout = 1")
        .await
        .unwrap();
    // MySQL's SQLSTATE for this is the catch-all HY000: its number (1205) says busy.
    let gave_up = waiter.execute_unprepared(&lock).await.unwrap_err();
    assert!(
        matches!(QuotaError::from(gave_up), QuotaError::Busy(_)),
        "a lock wait timeout is busy"
    );
}

/// A trigger that fails the first `times` writes of a day total as the
/// database fails a transaction it picked to break a deadlock. Its count is
/// a sequence, which no rollback takes back.
fn deadlocks(backend: sea_orm::DatabaseBackend, times: u32) -> Vec<String> {
    match backend {
        sea_orm::DatabaseBackend::Postgres => vec![
            "CREATE SEQUENCE deadlocks".to_owned(),
            format!(
                "CREATE FUNCTION deadlock() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN \
                 IF nextval('deadlocks') <= {times} THEN \
                 RAISE EXCEPTION 'deadlock detected' USING ERRCODE = '40P01'; END IF; \
                 RETURN NEW; END $$"
            ),
            "CREATE TRIGGER deadlock BEFORE INSERT ON quota_usage_days \
             FOR EACH ROW EXECUTE FUNCTION deadlock()"
                .to_owned(),
        ],
        _ => vec![
            "CREATE SEQUENCE deadlocks".to_owned(),
            format!(
                "CREATE TRIGGER deadlock BEFORE INSERT ON quota_usage_days FOR EACH ROW BEGIN \
                 IF NEXTVAL(deadlocks) <= {times} THEN SIGNAL SQLSTATE '40001' \
                 SET MYSQL_ERRNO = 1213, MESSAGE_TEXT = 'Deadlock found when trying to get lock'; \
                 END IF; END"
            ),
        ],
    }
}

/// A debit the database rolls back to break a deadlock wrote nothing and
/// runs again: the caller sees one success, not a busy answer.
async fn a_deadlocked_debit_runs_again(db: TestDb) {
    use sea_orm::ConnectionTrait;
    let store = db.store().await;
    let (tok, key) = new_token(&store, 100).await;
    // The single debit's transaction and the first run under the row lock lose.
    for sql in deadlocks(store.connection().get_database_backend(), 2) {
        store.connection().execute_unprepared(&sql).await.unwrap();
    }
    let debit = consume(&store, &key, 30, Some("a")).await.unwrap();
    assert_eq!((debit.balance, debit.repeat), (limited(70, 30), false));
    assert_eq!(balance(&store, tok.id).await, limited(70, 30));
    let rows: Vec<(Option<String>, i64)> = debits_of(&store, tok.id)
        .await
        .into_iter()
        .map(|r| (r.request_id, r.units))
        .collect();
    assert_eq!(rows, [(Some("a".to_owned()), 30)]);
}

/// Past its retries, a deadlocked debit is answered busy (retryable) and
/// leaves nothing behind; the same request id then succeeds once.
async fn a_debit_deadlocked_past_its_retries_is_busy_and_writes_nothing(db: TestDb) {
    use sea_orm::ConnectionTrait;
    let store = db.store().await;
    let (tok, key) = new_token(&store, 100).await;
    // The single debit, then the first run under the row lock and its 3 retries.
    for sql in deadlocks(store.connection().get_database_backend(), 5) {
        store.connection().execute_unprepared(&sql).await.unwrap();
    }
    let refused = consume(&store, &key, 30, Some("a")).await.unwrap_err();
    assert!(matches!(refused, QuotaError::Busy(_)), "{refused:?}");
    assert_eq!(balance(&store, tok.id).await, limited(100, 0));
    assert!(debits_of(&store, tok.id).await.is_empty());

    let debit = consume(&store, &key, 30, Some("a")).await.unwrap();
    assert_eq!((debit.balance, debit.repeat), (limited(70, 30), false));
    let again = consume(&store, &key, 30, Some("a")).await.unwrap();
    assert_eq!((again.balance, again.repeat), (limited(70, 30), true));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deadlocked_debit_runs_again_on_postgres() {
    if let Some(db) = TestDb::postgres().await {
        a_deadlocked_debit_runs_again(db).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deadlocked_debit_runs_again_on_mysql() {
    if let Some(db) = TestDb::mysql().await {
        a_deadlocked_debit_runs_again(db).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_debit_deadlocked_past_its_retries_is_busy_on_postgres() {
    if let Some(db) = TestDb::postgres().await {
        a_debit_deadlocked_past_its_retries_is_busy_and_writes_nothing(db).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_debit_deadlocked_past_its_retries_is_busy_on_mysql() {
    if let Some(db) = TestDb::mysql().await {
        a_debit_deadlocked_past_its_retries_is_busy_and_writes_nothing(db).await;
    }
}

on_every_database!(
    a_connection_released_in_a_transaction_is_rolled_back,
    a_connection_released_in_a_transaction_is_rolled_back
);
/// A connection must not go back to the pool inside a transaction, but one
/// did after a COMMIT failed on a full disk: the driver still counted the
/// transaction as open and nothing ended it. Every later transaction on
/// that connection became a savepoint of one that never commits: debits
/// answered as committed, never made durable, lost when the process
/// stopped. Here a connection is released with a transaction begun; the pool
/// rolls it back, so the debits after it are durable (another store sees
/// them) and the first transaction's write is not.
async fn a_connection_released_in_a_transaction_is_rolled_back(db: TestDb) {
    use sea_orm::DatabaseBackend;
    let store = db.store().await;
    let (tok, key) = new_token(&store, 100).await;
    let conn = store.connection();
    let abandoned = format!("UPDATE quota_tokens SET used = 1000 WHERE id = {}", tok.id);
    match conn.get_database_backend() {
        DatabaseBackend::Sqlite => {
            begin_and_leave(conn.get_sqlite_connection_pool(), abandoned).await
        }
        DatabaseBackend::Postgres => {
            begin_and_leave(conn.get_postgres_connection_pool(), abandoned).await
        }
        DatabaseBackend::MySql => {
            begin_and_leave(conn.get_mysql_connection_pool(), abandoned).await
        }
        other => panic!("no pool for {other:?}"),
    }

    three_debits_are_durable(&db, &store, tok.id, &key).await;
}

/// Three debits of 7 units on `key` (of a 100-unit token), then its
/// balance as `store` sees it and, unless the database is in memory, as
/// another store does: 79 left, 21 used, and nothing else written.
async fn three_debits_are_durable(db: &TestDb, store: &Store, id: i64, key: &TokenKey) {
    for n in 1..=3 {
        consume(store, key, 7, Some(&format!("after-{n}")))
            .await
            .unwrap();
    }
    assert_eq!(balance(store, id).await, limited(79, 21));
    if db.url != "sqlite::memory:" {
        let other = Store::connect(&db.url).await.unwrap();
        assert_eq!(balance(&other, id).await, limited(79, 21));
    }
}

/// Takes a connection of `pool`, begins a transaction on it, runs `write`
/// and gives the connection back with the transaction still open.
async fn begin_and_leave<DB: sea_orm::sqlx::Database>(pool: &sea_orm::sqlx::Pool<DB>, write: String)
where
    for<'c> &'c mut DB::Connection: sea_orm::sqlx::Executor<'c, Database = DB>,
{
    leave_open(pool, 1, write, None).await;
}

/// Takes a connection of `pool`, begins `depth` levels of transaction
/// (savepoints past the first), runs `write`, then `then` behind the
/// driver's back, and gives the connection back with all of it open as the
/// driver counts it.
async fn leave_open<DB: sea_orm::sqlx::Database>(
    pool: &sea_orm::sqlx::Pool<DB>,
    depth: usize,
    write: String,
    then: Option<&'static str>,
) where
    for<'c> &'c mut DB::Connection: sea_orm::sqlx::Executor<'c, Database = DB>,
{
    use sea_orm::sqlx::Executor;
    use sqlx_core::transaction::TransactionManager;
    let mut conn = pool.acquire().await.unwrap();
    for _ in 0..depth {
        DB::TransactionManager::begin(&mut conn, None)
            .await
            .unwrap();
    }
    conn.execute(sea_orm::sqlx::AssertSqlSafe(write))
        .await
        .unwrap();
    if let Some(then) = then {
        conn.execute(then).await.unwrap();
    }
}

/// A connection whose transaction the pool cannot roll back (its savepoint
/// is gone, so the driver's `ROLLBACK TO` fails) is closed, which ends the
/// transaction without its write. It is never "reset" by a `BEGIN`, which
/// on MySQL would commit the open transaction, write and all.
async fn a_transaction_that_cannot_be_rolled_back_is_closed_uncommitted(db: TestDb) {
    use sea_orm::DatabaseBackend;
    let store = db.store().await;
    let (tok, key) = new_token(&store, 100).await;
    let conn = store.connection();
    let write = format!("UPDATE quota_tokens SET used = 1000 WHERE id = {}", tok.id);
    let gone = Some("RELEASE SAVEPOINT _sqlx_savepoint_1");
    match conn.get_database_backend() {
        DatabaseBackend::Sqlite => {
            leave_open(conn.get_sqlite_connection_pool(), 2, write, gone).await
        }
        DatabaseBackend::Postgres => {
            leave_open(conn.get_postgres_connection_pool(), 2, write, gone).await
        }
        DatabaseBackend::MySql => {
            leave_open(conn.get_mysql_connection_pool(), 2, write, gone).await
        }
        other => panic!("no pool for {other:?}"),
    }
    three_debits_are_durable(&db, &store, tok.id, &key).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_transaction_that_cannot_be_rolled_back_is_closed_uncommitted_on_a_sqlite_file() {
    a_transaction_that_cannot_be_rolled_back_is_closed_uncommitted(TestDb::sqlite().await).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_transaction_that_cannot_be_rolled_back_is_closed_uncommitted_on_postgres() {
    if let Some(db) = TestDb::postgres().await {
        a_transaction_that_cannot_be_rolled_back_is_closed_uncommitted(db).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_transaction_that_cannot_be_rolled_back_is_closed_uncommitted_on_mysql() {
    if let Some(db) = TestDb::mysql().await {
        a_transaction_that_cannot_be_rolled_back_is_closed_uncommitted(db).await;
    }
}

/// The other shape of that state: the database's transaction already ended
/// (SQLite rolls back by itself after a full disk) while the driver still
/// counts it, so its ROLLBACK fails as well. Left so, the next transaction
/// was a savepoint that SQLite ran as a transaction of its own; once one of
/// them was rolled back (a refused debit), SQLite's transaction stayed open
/// for good, and every debit after it was lost. The connection is reset,
/// not closed: closed, an in-memory database would be lost with it.
async fn a_transaction_the_database_ended_is_reset(db: TestDb) {
    use sea_orm::{ConnectionTrait, TransactionTrait};
    let store = db.store().await;
    let (tok, key) = new_token(&store, 100).await;
    let txn = store.connection().begin().await.unwrap();
    txn.execute_unprepared("COMMIT").await.unwrap();
    assert!(txn.commit().await.is_err(), "the driver's COMMIT fails");
    let refused = consume(&store, &key, 1_000, Some("too-much")).await;
    assert!(
        matches!(refused, Err(QuotaError::QuotaExhausted { .. })),
        "{refused:?}"
    );
    three_debits_are_durable(&db, &store, tok.id, &key).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_transaction_the_database_ended_is_reset_on_a_sqlite_file() {
    a_transaction_the_database_ended_is_reset(TestDb::sqlite().await).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_transaction_the_database_ended_is_reset_on_sqlite_in_memory() {
    a_transaction_the_database_ended_is_reset(TestDb::sqlite_memory().await).await;
}

/// A full disk is UNAVAILABLE (503: retry later, and the readiness probes
/// tell), not INTERNAL: the database cannot write until an operator acts.
/// SQLite's page limit stands in for the disk here.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_is_unavailable() {
    use sea_orm::ConnectionTrait;
    let db = TestDb::sqlite().await;
    let store = db.store().await;
    let (_, key) = new_token(&store, 1_000_000).await;
    let pages = store
        .connection()
        .query_one_raw(sea_orm::Statement::from_string(
            sea_orm::DatabaseBackend::Sqlite,
            "PRAGMA page_count",
        ))
        .await
        .unwrap()
        .unwrap()
        .try_get_by_index::<i64>(0)
        .unwrap();
    store
        .connection()
        .execute_unprepared(&format!("PRAGMA max_page_count = {pages}"))
        .await
        .unwrap();
    let mut refused = None;
    for n in 0..10_000 {
        if let Err(e) = consume(&store, &key, 1, Some(&format!("fill-{n:0>200}"))).await {
            refused = Some(e);
            break;
        }
    }
    let refused = refused.expect("the page limit is reached");
    assert!(matches!(refused, QuotaError::Unavailable(_)), "{refused:?}");
}

/// A database that takes no writes (a SQLite file the process may only
/// read; a PostgreSQL standby) is UNAVAILABLE, as a full disk is, and
/// `check_writable` tells, for a server to refuse it at start.
async fn a_database_that_takes_no_writes_is_unavailable(db: TestDb, read_only_url: String) {
    use quota_service::store::WriteCheck;
    let store = db.store().await;
    let (_, key) = new_token(&store, 100).await;
    store.check_writable().await.unwrap();
    let read_only = Store::connect(&read_only_url).await.unwrap();
    let refused = read_only.check_writable().await.unwrap_err();
    assert!(matches!(refused, WriteCheck::ReadOnly(_)), "{refused:?}");
    let refused = consume(&read_only, &key, 1, Some("ro")).await.unwrap_err();
    assert!(matches!(refused, QuotaError::Unavailable(_)), "{refused:?}");
    // Nothing was written: the writable store debits the same id, anew.
    let debit = consume(&store, &key, 1, Some("ro")).await.unwrap();
    assert!(!debit.repeat);
    assert_eq!(debit.balance.remaining, 99);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_database_that_takes_no_writes_is_unavailable_on_sqlite_file() {
    let db = TestDb::sqlite().await;
    let url = format!("{}?mode=ro", db.url);
    a_database_that_takes_no_writes_is_unavailable(db, url).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_database_that_takes_no_writes_is_unavailable_on_postgres() {
    let Some(db) = TestDb::postgres().await else {
        return;
    };
    // Every transaction read-only, as on a standby.
    let separator = if db.url.contains('?') { '&' } else { '?' };
    let url = format!(
        "{}{separator}options=-c%20default_transaction_read_only%3Don",
        db.url
    );
    a_database_that_takes_no_writes_is_unavailable(db, url).await;
}

/// A check held up by a lock on the table (another release migrating it)
/// learns nothing of whether the database takes writes: `Failed`, which a
/// server only warns of, never `ReadOnly`, which it refuses.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_check_held_up_by_a_lock_is_no_verdict() {
    use quota_service::store::WriteCheck;
    use sea_orm::{ConnectionTrait, TransactionTrait};
    let Some(db) = TestDb::postgres().await else {
        return;
    };
    let store = db.store().await;
    let outside = Store::connect(&db.url).await.unwrap();
    let holder = outside.connection().begin().await.unwrap();
    holder
        .execute_unprepared("LOCK TABLE quota_tokens IN ACCESS EXCLUSIVE MODE")
        .await
        .unwrap();
    let checked = store.check_writable().await.unwrap_err();
    assert!(matches!(checked, WriteCheck::Failed(_)), "{checked:?}");
    holder.rollback().await.unwrap();
    store.check_writable().await.unwrap();
}

/// A row another session keeps locked (by hand, in `psql`) bounds how long
/// the service's statements wait for it, in the database itself: the calls
/// give up at 2.5 s, and their statements end within the lock wait bound
/// instead of waiting on (and holding a session, and a pooled connection,
/// each) for as long as the lock is kept. Meanwhile and after, other keys
/// are served.
async fn a_held_row_lock_strands_no_session(db: TestDb) {
    use quota_service::store::LOCK_WAIT;
    use sea_orm::{ConnectionTrait, DatabaseBackend};
    let store = db.store().await;
    let (locked, locked_key) = new_token(&store, 100).await;
    let (_, free_key) = new_token(&store, 100).await;
    let outside = Store::connect(&db.url).await.unwrap();
    let holder = lock_token_row(&outside, locked.id).await;

    let started = std::time::Instant::now();
    let calls: Vec<_> = (0..20)
        .map(|n| {
            let (store, key) = (store.clone(), locked_key.clone());
            tokio::spawn(async move { consume(&store, &key, 1, Some(&format!("stuck-{n}"))).await })
        })
        .collect();
    for call in calls {
        let refused = call.await.unwrap();
        assert!(
            matches!(refused, Err(QuotaError::Unavailable(_))),
            "{refused:?}"
        );
    }
    consume(&store, &free_key, 1, Some("meanwhile"))
        .await
        .unwrap();

    // Each abandoned statement ends within LOCK_WAIT of its start (MySQL
    // checks its lock waits about once a second); without the bound they
    // wait as long as the lock is held.
    let waiting = match store.connection().get_database_backend() {
        DatabaseBackend::Postgres => {
            "SELECT count(*) FROM pg_stat_activity \
             WHERE datname = current_database() AND wait_event_type = 'Lock'"
        }
        _ => "SELECT count(*) FROM information_schema.innodb_trx WHERE trx_state = 'LOCK WAIT'",
    };
    let deadline = started + LOCK_WAIT + std::time::Duration::from_secs(5);
    loop {
        let still: i64 = holder
            .query_one_raw(sea_orm::Statement::from_string(
                holder.get_database_backend(),
                waiting,
            ))
            .await
            .unwrap()
            .unwrap()
            .try_get_by_index(0)
            .unwrap();
        if still == 0 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{still} sessions still waiting on the lock {:?} after the calls began",
            started.elapsed()
        );
        tokio::time::sleep(std::time::Duration::from_millis(250)).await;
    }
    consume(&store, &free_key, 1, Some("after")).await.unwrap();
    holder.rollback().await.unwrap();
    consume(&store, &locked_key, 1, Some("released"))
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_held_row_lock_strands_no_session_on_postgres() {
    if let Some(db) = TestDb::postgres().await {
        a_held_row_lock_strands_no_session(db).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_held_row_lock_strands_no_session_on_mysql() {
    if let Some(db) = TestDb::mysql().await {
        a_held_row_lock_strands_no_session(db).await;
    }
}

//! The per-token queue: its bound (8192 waiting debits, then busy), callers
//! that give up before their debit starts, and the batch that falls back to
//! one transaction per debit when the unique index finds a request id the
//! batch did not see; a transaction held past the bound, given up on with
//! the calls behind it.
//!
//! Most of these tests run on one thread: the token's worker is a task the first
//! debit spawns, so it runs only when the test yields, and the queue can be
//! filled and inspected while nothing of it has started.

use crate::helpers::*;
use quota_service::store::DATABASE_WAIT;
use sea_orm::{ConnectionTrait, DatabaseBackend, TransactionTrait};
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, Waker};
use std::time::Duration;

/// The most debits that may wait for one token.
const WAITING: usize = 8192;

type Call = Pin<Box<dyn Future<Output = Result<Debit, QuotaError>> + Send>>;

/// A debit of `n` units under `request_id`, not yet polled.
fn call(store: &Store, key: &TokenKey, n: i64, request_id: &str) -> Call {
    let (store, digest, id) = (store.clone(), key.digest(), request_id.to_owned());
    Box::pin(async move { store.consume(&digest, units(n), Some(&id), NOW).await })
}

/// Polls once without a waker: far enough for a debit to join its queue.
fn poll_once(call: &mut Call) -> Poll<Result<Debit, QuotaError>> {
    call.as_mut().poll(&mut Context::from_waker(Waker::noop()))
}

/// A call that joined the queue and waits.
fn joined(store: &Store, key: &TokenKey, n: i64, request_id: &str) -> Call {
    let mut c = call(store, key, n, request_id);
    assert!(poll_once(&mut c).is_pending(), "{request_id} did not wait");
    c
}

fn assert_busy(mut refused: Call) {
    match poll_once(&mut refused) {
        Poll::Ready(Err(QuotaError::Busy(why))) => {
            assert_eq!(why, "8192 debits are already waiting for one token");
        }
        Poll::Ready(other) => panic!("expected Busy, got {other:?}"),
        Poll::Pending => panic!("expected Busy, the call waits"),
    }
}

/// The request ids of the token's debits, sorted.
async fn debited_ids(store: &Store, token_id: i64) -> Vec<String> {
    let mut ids: Vec<String> = debits_of(store, token_id)
        .await
        .into_iter()
        .map(|r| r.request_id.expect("a request id"))
        .collect();
    ids.sort();
    ids
}

fn sorted(ids: impl IntoIterator<Item = String>) -> Vec<String> {
    let mut ids: Vec<String> = ids.into_iter().collect();
    ids.sort();
    ids
}

on_every_database!(
    the_8193rd_waiting_debit_is_refused_as_busy,
    the_8193rd_waiting_debit_is_refused_as_busy,
    flavor = "current_thread"
);
async fn the_8193rd_waiting_debit_is_refused_as_busy(db: TestDb) {
    const QUOTA: i64 = 10_000;
    /// The callers that give up while waiting: ids 4000..4100.
    const GONE: std::ops::Range<usize> = 4000..4100;
    let store = db.store().await;
    let (tok, key) = new_token(&store, QUOTA).await;
    let id = |i: usize| format!("q-{i}");

    // Nothing has started: 8192 debits wait, the next is refused at once.
    let mut waiting: Vec<(usize, Call)> = (0..WAITING)
        .map(|i| (i, joined(&store, &key, 1, &id(i))))
        .collect();
    assert_busy(call(&store, &key, 1, &id(WAITING)));

    // Callers that have gone hold no place: exactly as many new ones fit.
    waiting.retain(|(i, _)| !GONE.contains(i));
    let late = WAITING + 1..WAITING + 1 + GONE.len();
    waiting.extend(late.clone().map(|i| (i, joined(&store, &key, 1, &id(i)))));
    assert_busy(call(&store, &key, 1, &id(late.end)));

    // Every waiting debit is settled, in the order it joined, exactly once.
    for (position, (i, waiter)) in waiting.into_iter().enumerate() {
        let debit = waiter.await.unwrap_or_else(|e| panic!("{}: {e:?}", id(i)));
        let used = position as i64 + 1;
        assert_eq!(debit.balance, limited(QUOTA - used, used), "{}", id(i));
        assert!(!debit.repeat, "{}", id(i));
    }
    assert_eq!(
        balance(&store, tok.id).await,
        limited(QUOTA - WAITING as i64, WAITING as i64)
    );
    let expected = (0..WAITING).filter(|i| !GONE.contains(i)).chain(late);
    assert_eq!(
        debited_ids(&store, tok.id).await,
        sorted(expected.map(id)),
        "neither the refused calls nor the callers that gave up were debited"
    );
}

on_every_database!(
    a_caller_past_its_deadline_before_its_debit_starts_is_not_debited,
    a_caller_past_its_deadline_is_not_debited,
    flavor = "current_thread"
);
async fn a_caller_past_its_deadline_is_not_debited(db: TestDb) {
    let store = db.store().await;
    let (tok, key) = new_token(&store, 1_000).await;

    // Another writer holds the token (on SQLite memory: the one connection),
    // so the first debit starts and then waits for it.
    let other = db.store().await;
    let blocker = other.connection().begin().await.unwrap();
    blocker
        .execute_unprepared(&format!(
            "UPDATE quota_tokens SET updated_at = updated_at WHERE id = {}",
            tok.id
        ))
        .await
        .unwrap();
    let mut first = joined(&store, &key, 5, "first");
    tokio::task::yield_now().await; // the worker takes "first" and waits

    // Five callers with a deadline join behind it, and give up.
    let mut impatient = tokio::task::JoinSet::new();
    for i in 0..5 {
        let gives_up = call(&store, &key, 5, &format!("gave-up-{i}"));
        impatient.spawn(tokio::time::timeout(Duration::from_millis(200), gives_up));
    }
    tokio::task::yield_now().await; // they join the queue
    let patient = joined(&store, &key, 5, "patient");
    while let Some(outcome) = impatient.join_next().await {
        assert!(outcome.unwrap().is_err(), "a caller's deadline passed");
    }
    assert!(poll_once(&mut first).is_pending());
    blocker.rollback().await.unwrap();

    let first = first.await.unwrap();
    assert_eq!((first.balance, first.repeat), (limited(995, 5), false));
    let patient = patient.await.unwrap();
    assert_eq!((patient.balance, patient.repeat), (limited(990, 10), false));
    assert_eq!(balance(&store, tok.id).await, limited(990, 10));
    assert_eq!(
        debited_ids(&store, tok.id).await,
        ["first", "patient"],
        "the callers that gave up left no ledger row"
    );
}

/// A trigger standing for a writer that does not take the token's row lock:
/// the first time a debit raises `used`, it writes a debit of 10 units under
/// the request id `dup` behind the batch's back, in the same transaction.
/// On PostgreSQL a group's writes are one statement, whose parts see none of
/// each other's rows: there it fires before the ledger row of any other id,
/// so that the batch's own `dup` row, later in the same INSERT, finds it.
fn dup_trigger(backend: DatabaseBackend) -> Vec<String> {
    const ROW: &str = "INSERT INTO quota_ledger (token_id, kind, units, request_id, created_at) \
                       VALUES (NEW.id, 2, 10, 'dup', NEW.updated_at)";
    const ABSENT: &str = "NEW.used > OLD.used AND NOT EXISTS (SELECT 1 FROM quota_ledger \
                          WHERE token_id = NEW.id AND request_id = 'dup')";
    match backend {
        DatabaseBackend::Sqlite => vec![format!(
            "CREATE TRIGGER dup_behind_the_lock AFTER UPDATE ON quota_tokens \
             WHEN {ABSENT} BEGIN {ROW}; END"
        )],
        DatabaseBackend::Postgres => vec![
            format!(
                "CREATE FUNCTION dup_behind_the_lock() RETURNS trigger LANGUAGE plpgsql AS $$ \
                 BEGIN IF NEW.request_id <> 'dup' AND NOT EXISTS (SELECT 1 FROM quota_ledger \
                 WHERE token_id = NEW.token_id AND request_id = 'dup') THEN \
                 INSERT INTO quota_ledger (token_id, kind, units, request_id, created_at) \
                 VALUES (NEW.token_id, 2, 10, 'dup', NEW.created_at); END IF; RETURN NEW; END $$"
            ),
            "CREATE TRIGGER dup_behind_the_lock BEFORE INSERT ON quota_ledger \
             FOR EACH ROW EXECUTE FUNCTION dup_behind_the_lock()"
                .to_owned(),
        ],
        _ => vec![format!(
            "CREATE TRIGGER dup_behind_the_lock AFTER UPDATE ON quota_tokens \
             FOR EACH ROW BEGIN IF {ABSENT} THEN {ROW}; END IF; END"
        )],
    }
}

on_every_database!(
    a_batch_with_a_duplicate_id_gives_every_other_debit_its_own_outcome,
    a_batch_with_a_duplicate_id_falls_back_to_one_debit_at_a_time,
    flavor = "current_thread"
);
async fn a_batch_with_a_duplicate_id_falls_back_to_one_debit_at_a_time(db: TestDb) {
    let store = db.store().await;
    let (tok, key) = new_token(&store, 100).await;
    let conn = store.connection();
    for sql in dup_trigger(conn.get_database_backend()) {
        conn.execute_unprepared(&sql).await.unwrap();
    }

    // Four debits join before the worker runs: one batch. Writing it, the
    // trigger puts `dup` in the ledger first, so the batch's own `dup` row
    // breaks the unique index and the whole batch rolls back.
    let ids = ["a", "dup", "b", "c"];
    let calls: Vec<Call> = ids.iter().map(|id| joined(&store, &key, 10, id)).collect();
    let mut outcomes = Vec::new();
    for c in calls {
        outcomes.push(c.await.unwrap());
    }

    // Then each debit on its own: `a` is debited (and the trigger writes
    // `dup`), `dup` is a repeat of the row found, `b` and `c` are debited.
    let seen: Vec<(Balance, bool)> = outcomes.iter().map(|d| (d.balance, d.repeat)).collect();
    assert_eq!(
        seen,
        [
            (limited(90, 10), false),
            (limited(90, 10), true),
            (limited(80, 20), false),
            (limited(70, 30), false),
        ]
    );
    assert_eq!(balance(&store, tok.id).await, limited(70, 30));
    let rows: Vec<(String, i64)> = debits_of(&store, tok.id)
        .await
        .into_iter()
        .map(|r| (r.request_id.unwrap(), r.units))
        .collect();
    let mut rows: Vec<(&str, i64)> = rows.iter().map(|(id, u)| (id.as_str(), *u)).collect();
    // The trigger's row and `a`'s are written by one statement: in either order.
    rows.sort_unstable();
    assert_eq!(rows, [("a", 10), ("b", 10), ("c", 10), ("dup", 10)]);
}

/// A token's row held by another writer past the bound: its transaction is
/// given up on (UNAVAILABLE) in [`DATABASE_WAIT`], and so is the call waiting
/// behind it, neither debited; once the row is free, the same ids succeed.
async fn a_transaction_past_the_bound_is_unavailable_with_the_calls_behind_it(db: TestDb) {
    let store = db.store().await;
    let (tok, key) = new_token(&store, 1_000).await;
    let other = db.store().await;
    let blocker = lock_token_row(&other, tok.id).await;

    let started = std::time::Instant::now();
    let first = tokio::spawn(call(&store, &key, 5, "first"));
    tokio::time::sleep(Duration::from_millis(200)).await; // its transaction waits for the row
    let behind = tokio::spawn(call(&store, &key, 5, "behind"));
    for (id, answer) in [("first", first.await), ("behind", behind.await)] {
        assert!(
            matches!(answer.unwrap(), Err(QuotaError::Unavailable(_))),
            "{id}"
        );
    }
    let took = started.elapsed();
    assert!(
        took >= DATABASE_WAIT && took < DATABASE_WAIT + Duration::from_millis(400),
        "answered after {took:?}"
    );

    blocker.rollback().await.unwrap();
    for (id, used) in [("first", 5), ("behind", 10)] {
        let debit = call(&store, &key, 5, id).await.unwrap();
        assert_eq!(
            (debit.balance, debit.repeat),
            (limited(1_000 - used, used), false),
            "{id}"
        );
    }
    assert_eq!(debited_ids(&store, tok.id).await, ["behind", "first"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_transaction_past_the_bound_is_unavailable_with_the_calls_behind_it_on_postgres() {
    if let Some(db) = TestDb::postgres().await {
        a_transaction_past_the_bound_is_unavailable_with_the_calls_behind_it(db).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_transaction_past_the_bound_is_unavailable_with_the_calls_behind_it_on_mysql() {
    if let Some(db) = TestDb::mysql().await {
        a_transaction_past_the_bound_is_unavailable_with_the_calls_behind_it(db).await;
    }
}

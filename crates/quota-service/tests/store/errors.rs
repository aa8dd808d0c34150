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

//! Four `quotad grpc` processes started at once on one database.

use crate::{Grpc, all_answer, migration_count};
use migration::{Migrator, MigratorTrait};
use quota_service::testing::TestDb;

/// Starts four replicas at once and checks that every one comes up and answers.
async fn four_start_and_answer(db: &TestDb) {
    let mut replicas: Vec<Grpc> = (0..4).map(|_| Grpc::spawn(&db.url, &[])).collect();
    let addrs: Vec<_> = replicas.iter_mut().map(Grpc::ready).collect();
    all_answer(&addrs).await;
    let status = db.store().await.migration_status().await.unwrap();
    assert_eq!(status.pending, Vec::<String>::new());
    assert_eq!(status.applied.len(), migration_count());
}

async fn four_replicas_on_a_fresh_database(db: TestDb) {
    four_start_and_answer(&db).await;
}

on_shared_databases!(
    four_replicas_start_together_on_a_fresh_database,
    four_replicas_on_a_fresh_database
);

/// All migrations but the last already applied: the four race for the last.
/// (With a single migration this is the fresh case again.)
async fn four_replicas_with_the_last_migration_pending(db: TestDb) {
    let applied = u32::try_from(migration_count() - 1).unwrap();
    let store = db.store().await;
    Migrator::up(store.connection(), Some(applied))
        .await
        .unwrap();
    let status = store.migration_status().await.unwrap();
    assert_eq!(status.applied.len(), applied as usize);
    assert_eq!(status.pending.len(), 1);
    four_start_and_answer(&db).await;
}

on_shared_databases!(
    four_replicas_start_together_with_one_migration_pending,
    four_replicas_with_the_last_migration_pending
);

//! `--migrate=off` and `quotad migrate --status`.

use crate::{Grpc, all_answer, failed_with_one_line, migration_count, quotad_on};
use migration::{Migrator, MigratorTrait};
use quota_service::store::migration_names;
use quota_service::testing::TestDb;

/// The exact listing of `migrate --status` when the first `applied` are applied.
fn listing(applied: usize) -> String {
    let names = migration_names();
    let mut out = String::new();
    for name in &names[..applied] {
        out.push_str(&format!("applied  {name}\n"));
    }
    for name in &names[applied..] {
        out.push_str(&format!("pending  {name}\n"));
    }
    out.push_str(&format!(
        "{applied} applied, {} pending\n",
        names.len() - applied
    ));
    out
}

async fn status_lists_and_exits_1_while_pending(db: TestDb) {
    let n = migration_count();
    let out = quotad_on(&db.url, &["migrate", "--status"]);
    assert_eq!(out.status.code(), Some(1), "{}", crate::describe(&out));
    assert_eq!(String::from_utf8_lossy(&out.stdout), listing(0));

    if n >= 2 {
        let store = db.store().await;
        Migrator::up(store.connection(), Some(u32::try_from(n - 1).unwrap()))
            .await
            .unwrap();
        let out = quotad_on(&db.url, &["migrate", "--status"]);
        assert_eq!(out.status.code(), Some(1), "{}", crate::describe(&out));
        assert_eq!(String::from_utf8_lossy(&out.stdout), listing(n - 1));
    }

    let out = quotad_on(&db.url, &["migrate"]);
    assert_eq!(out.status.code(), Some(0), "{}", crate::describe(&out));
    let out = quotad_on(&db.url, &["migrate", "--status"]);
    assert_eq!(out.status.code(), Some(0), "{}", crate::describe(&out));
    assert_eq!(String::from_utf8_lossy(&out.stdout), listing(n));
}

on_shared_databases!(
    migrate_status_lists_migrations_and_exits_1_while_any_is_pending,
    status_lists_and_exits_1_while_pending
);

async fn off_refuses_a_database_that_is_behind(db: TestDb) {
    let out = quotad_on(
        &db.url,
        &["grpc", "--migrate=off", "--grpc-addr", "127.0.0.1:0"],
    );
    let line = failed_with_one_line(&out);
    // A SQLite file not made yet is refused as not there (and not made).
    let behind = line.contains("is behind") && line.contains(&migration_names()[0]);
    assert!(
        (behind || line.contains("does not exist")) && line.contains("run `quotad migrate` first"),
        "{line}"
    );
    // Nothing was applied: off means off.
    let status = db.store().await.migration_status().await.unwrap();
    assert_eq!(status.applied, Vec::<String>::new());

    // The same through the environment, after the fix: it starts.
    let out = quotad_on(&db.url, &["migrate"]);
    assert_eq!(out.status.code(), Some(0), "{}", crate::describe(&out));
    let mut server = Grpc::spawn_env(&db.url, &[], &[("QUOTA_MIGRATE", "off")]);
    let addr = server.ready();
    all_answer(&[addr]).await;
}

on_shared_databases!(
    migrate_off_refuses_a_database_that_is_behind,
    off_refuses_a_database_that_is_behind
);

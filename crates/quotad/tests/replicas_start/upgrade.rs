//! Upgrades with replicas of two versions: migrations are additive, so a
//! server keeps working while a newer version's migration is applied under it.

use crate::{ADMIN, Grpc, bearer, channel, create_key, quotad_on, remaining};
use migration::*;
use quota::pb;
use quota::pb::quota_service_client::QuotaServiceClient;
use quota_service::testing::TestDb;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

/// What the next release might ship: a new table with an index, and a new
/// nullable column on the tokens (expand; nothing dropped or renamed).
struct M29991231000001NextRelease;

impl MigrationName for M29991231000001NextRelease {
    fn name(&self) -> &str {
        "m29991231_000001_next_release"
    }
}

#[async_trait::async_trait]
impl MigrationTrait for M29991231000001NextRelease {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .create_table(
                Table::create()
                    .table(Alias::new("quota_next_release"))
                    .col(
                        ColumnDef::new(Alias::new("id"))
                            .big_integer()
                            .not_null()
                            .auto_increment()
                            .primary_key(),
                    )
                    .col(
                        ColumnDef::new(Alias::new("token_id"))
                            .big_integer()
                            .not_null(),
                    )
                    .to_owned(),
            )
            .await?;
        manager
            .create_index(
                Index::create()
                    .name("ix_quota_next_release_token")
                    .table(Alias::new("quota_next_release"))
                    .col(Alias::new("token_id"))
                    .to_owned(),
            )
            .await?;
        manager
            .alter_table(
                Table::alter()
                    .table(Alias::new("quota_tokens"))
                    .add_column(
                        ColumnDef::new(Alias::new("next_release_note"))
                            .string_len(64)
                            .null(),
                    )
                    .to_owned(),
            )
            .await
    }

    async fn down(&self, _: &SchemaManager) -> Result<(), DbErr> {
        Ok(())
    }
}

/// This build's migrations plus the next release's.
struct NextRelease;

#[async_trait::async_trait]
impl MigratorTrait for NextRelease {
    fn migrations() -> Vec<Box<dyn MigrationTrait>> {
        let mut all = Migrator::migrations();
        all.push(Box::new(M29991231000001NextRelease));
        all
    }
}

/// Debits one unit per call, with ids, until `stop`; every call must succeed.
async fn debit_until(addr: std::net::SocketAddr, key: String, stop: Arc<AtomicBool>) -> i64 {
    let mut client = QuotaServiceClient::new(channel(addr).await);
    let mut done = 0;
    while !stop.load(Ordering::Relaxed) || done == 0 {
        let request = pb::ConsumeRequest {
            token: key.clone(),
            quota: 1,
            request_id: format!("upgrade-{done}"),
        };
        client
            .consume(bearer(request, ADMIN))
            .await
            .unwrap_or_else(|s| panic!("debit {done} failed during the upgrade: {s:?}"));
        client
            .get_subscription(bearer(pb::GetSubscriptionRequest {}, &key))
            .await
            .unwrap_or_else(|s| panic!("read {done} failed during the upgrade: {s:?}"));
        done += 1;
    }
    done
}

async fn serving_through_a_newer_migration(db: TestDb) {
    let out = quotad_on(&db.url, &["migrate"]);
    assert_eq!(out.status.code(), Some(0), "{}", crate::describe(&out));
    let mut server = Grpc::spawn(&db.url, &[]);
    let addr = server.ready();
    let key = create_key(addr, 1_000_000).await;

    let stop = Arc::new(AtomicBool::new(false));
    let load = tokio::spawn(debit_until(addr, key.clone(), Arc::clone(&stop)));
    tokio::time::sleep(Duration::from_millis(200)).await;
    // The next release migrates while this one serves.
    let store = db.store().await;
    NextRelease::up(store.connection(), None).await.unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    stop.store(true, Ordering::Relaxed);
    let debits = load.await.unwrap();
    assert!(debits > 0);
    assert_eq!(remaining(addr, &key).await, 1_000_000 - debits);

    // This version still starts on the newer schema, even with --migrate=off,
    // and says what it found.
    let status = store.migration_status().await.unwrap();
    assert!(status.is_current());
    assert_eq!(
        status.unknown,
        vec!["m29991231_000001_next_release".to_owned()]
    );
    let mut again = Grpc::spawn(&db.url, &["--migrate=off"]);
    let addr = again.ready();
    assert_eq!(remaining(addr, &key).await, 1_000_000 - debits);
    let out = quotad_on(&db.url, &["migrate", "--status"]);
    assert_eq!(out.status.code(), Some(0), "{}", crate::describe(&out));
    let listing = String::from_utf8_lossy(&out.stdout);
    assert!(
        listing.contains("newer    m29991231_000001_next_release (applied by a newer version)\n"),
        "{listing}"
    );
    let out = quotad_on(&db.url, &["migrate"]);
    assert_eq!(out.status.code(), Some(0), "{}", crate::describe(&out));
    drop(server);
}

on_shared_databases!(
    a_newer_release_migrating_under_a_serving_replica_breaks_none_of_its_requests,
    serving_through_a_newer_migration
);

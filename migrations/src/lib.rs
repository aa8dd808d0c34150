//! Schema migrations of the quota store. They run at every start and from
//! `quotad migrate`; each is applied once, in order.

pub use sea_orm_migration::prelude::*;

mod m20261129_000001_create_tokens_and_ledger;

/// Every migration of the quota store, in order.
pub struct Migrator;

#[async_trait::async_trait]
impl MigratorTrait for Migrator {
    fn migrations() -> Vec<Box<dyn MigrationTrait>> {
        vec![Box::new(
            m20261129_000001_create_tokens_and_ledger::Migration,
        )]
    }
}

//! Schema migrations of the quota store. They run at start (`--migrate=auto`,
//! the default) and from `quotad migrate`; each is applied once, in order,
//! under a database lock (see `quota_service::store::migrate`), so any number
//! of replicas may start together.
//!
//! # Policy: additive migrations (expand now, contract in a later release)
//!
//! Replicas of two versions run side by side during a rolling upgrade:
//! version N keeps serving while N+1 migrates the database under it. So a
//! migration may only **expand** the schema in a way N still works with:
//!
//! - add a table, an index, or a column that is nullable or has a default;
//! - never drop, rename or retype a column or table that N reads or writes,
//!   never add a constraint N's writes would break (a NOT NULL column without
//!   a default, a new unique key over existing data);
//! - backfills run in batches and leave N's rows valid.
//!
//! The **contract** step (dropping what only N used) ships one release later,
//! once no replica of N can be running. A version started on a database that
//! has migrations it does not know (a newer version's) serves on and says so;
//! `quotad migrate --status` lists them as `newer`.
//!
//! Each migration must also apply on SQLite, PostgreSQL and MySQL/MariaDB, and
//! the tests in `crates/quotad/tests/replicas_start` must pass with it: they
//! start four replicas at once with the newest migration pending.

pub use sea_orm_migration::prelude::*;

mod m20261129_000001_create_tokens_and_ledger;
mod m20261129_000002_add_holds;
mod m20261130_000001_add_usage_days;

/// Every migration of the quota store, in order.
pub struct Migrator;

#[async_trait::async_trait]
impl MigratorTrait for Migrator {
    fn migrations() -> Vec<Box<dyn MigrationTrait>> {
        vec![
            Box::new(m20261129_000001_create_tokens_and_ledger::Migration),
            Box::new(m20261129_000002_add_holds::Migration),
            Box::new(m20261130_000001_add_usage_days::Migration),
        ]
    }
}

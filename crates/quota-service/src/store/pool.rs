//! The connection pools as an operator sees them: sampled into the
//! `quota_db_connections` gauges at each scrape.

use super::Store;
use quota_telemetry::metrics;
use sea_orm::DatabaseBackend;
use sea_orm::sqlx::{Database, Pool};

impl Store {
    /// Records the connections of each pool, in use and idle, and its
    /// maximum. PostgreSQL and MySQL have one pool (`main`); a SQLite file
    /// has its single writer (`write`) and its readers (`read`).
    pub fn record_pool_metrics(&self) {
        match self.db.get_database_backend() {
            DatabaseBackend::Postgres => record("main", self.db.get_postgres_connection_pool()),
            DatabaseBackend::MySql => record("main", self.db.get_mysql_connection_pool()),
            DatabaseBackend::Sqlite => {
                let write = self.db.get_sqlite_connection_pool();
                record("write", write);
                // In memory, reads share the writer's one connection (the
                // same pool, so the same maximum); a file has readers of its own.
                let read = self.read.get_sqlite_connection_pool();
                if read.options().get_max_connections() != write.options().get_max_connections() {
                    record("read", read);
                }
            }
            _ => {}
        }
    }
}

fn record<DB: Database>(name: &'static str, pool: &Pool<DB>) {
    let size = pool.size();
    let idle = u32::try_from(pool.num_idle()).unwrap_or(size);
    metrics::db_pool(
        name,
        size.saturating_sub(idle),
        idle,
        pool.options().get_max_connections(),
    );
}

//! The store as an operator sees it, sampled at each scrape: the connection
//! pools (`quota_db_connections`) and the live holds (`quota_holds_live`).

use super::Store;
use super::entity::{hold, token};
use crate::domain::{HoldState, QuotaError, unix_now};
use quota_telemetry::metrics;
use sea_orm::sqlx::{Database, Pool};
use sea_orm::{
    ColumnTrait, DatabaseBackend, EntityTrait, PaginatorTrait, QueryFilter, QuerySelect, QueryTrait,
};
use std::time::Duration;

/// How long a scrape waits for the count of live holds; past it (a slow or
/// unreachable database) the gauge keeps its last value.
const HOLDS_SAMPLE_WAIT: Duration = Duration::from_secs(1);

impl Store {
    /// Samples every gauge the store feeds: the pools, then the live holds.
    pub async fn record_metrics(self) {
        self.record_pool_metrics();
        if let Ok(Ok(live)) =
            tokio::time::timeout(HOLDS_SAMPLE_WAIT, self.live_holds(unix_now())).await
        {
            metrics::holds_live(live);
        }
    }

    /// Holds live at `now` in the whole database (every replica's): neither
    /// settled, released nor expired. Only tokens that hold something are
    /// looked at, each through the index of its holds by state and expiry.
    pub async fn live_holds(&self, now: i64) -> Result<u64, QuotaError> {
        let holding = token::Entity::find()
            .select_only()
            .column(token::Column::Id)
            .filter(token::Column::Held.ne(0))
            .into_query();
        Ok(hold::Entity::find()
            .filter(hold::Column::TokenId.in_subquery(holding))
            .filter(hold::Column::State.eq(HoldState::Live.code()))
            .filter(hold::Column::ExpiresAt.gt(now))
            .count(&self.read)
            .await?)
    }

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

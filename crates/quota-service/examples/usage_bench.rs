//! Usage benchmark: `GetUsage` over gRPC for a key with 1,000,000 ledger rows
//! over 90 days, for all time and for one month, on a SQLite file and on
//! PostgreSQL.
//!
//! ```sh
//! cargo run --release -p quota-service --example usage_bench -- [--rows 1000000] [--reads 200]
//!     [--postgres postgres://postgres@127.0.0.1:5432/test] [--no-postgres] [--no-sqlite]
//! ```
//!
//! Each database is fresh (a temporary file; a PostgreSQL database dropped at
//! the end). The rows are written in bulk (multi-row INSERTs in one
//! transaction), with the token's usage per day and counters to match, as the
//! debits would have left them. The reads go through an in-process gRPC
//! server on 127.0.0.1:0, one at a time, each checked against the expected
//! total. For comparison, a few reads of the ledger scan the usage route made
//! before the per-day totals are timed too. One line per case:
//!
//! ```text
//! usage sqlite all-time p50_ms=0.31 p99_ms=0.55 reads=200
//! ```
#![allow(clippy::unwrap_used, clippy::expect_used)]

use quota::pb::GetUsageRequest;
use quota::pb::quota_service_client::QuotaServiceClient;
use quota_service::Store;
use quota_service::domain::{day_start, unix_now};
use quota_service::store::NewToken;
use quota_service::testing::{TestServer, test_config};
use sea_orm::{ConnectionTrait, Statement, TransactionTrait};
use std::error::Error;
use std::time::{Duration, Instant};
use tonic::transport::Endpoint;

/// The allocator `quotad` runs with, so that the service (and the callers
/// beside it) is measured as it runs.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

type BoxError = Box<dyn Error + Send + Sync>;

const DAYS: i64 = 90;
const DAY: i64 = 86_400;
/// Ledger rows per INSERT statement.
const ROWS_PER_INSERT: usize = 2_000;
/// Reads of the old ledger scan, which is slow: a few are enough.
const SCAN_READS: usize = 5;

struct Args {
    rows: i64,
    reads: usize,
    postgres: Option<String>,
    sqlite: bool,
}

fn args() -> Result<Args, BoxError> {
    let mut args = Args {
        rows: 1_000_000,
        reads: 200,
        postgres: Some(
            std::env::var("QUOTA_TEST_POSTGRES_URL")
                .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into()),
        ),
        sqlite: true,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = || it.next().ok_or_else(|| format!("{flag} needs a value"));
        match flag.as_str() {
            "--rows" => args.rows = value()?.parse()?,
            "--reads" => args.reads = value()?.parse()?,
            "--postgres" => args.postgres = Some(value()?),
            "--no-postgres" => args.postgres = None,
            "--no-sqlite" => args.sqlite = false,
            other => {
                return Err(format!(
                    "unknown argument {other:?} (see the doc comment of usage_bench.rs)"
                )
                .into());
            }
        }
    }
    if !(DAYS..=10_000_000).contains(&args.rows) || !(1..=100_000).contains(&args.reads) {
        return Err(format!("--rows must be {DAYS}..=10000000 and --reads 1..=100000").into());
    }
    Ok(args)
}

/// The filled database: the key and what its usage must add up to.
struct Filled {
    key: String,
    token_id: i64,
    /// Units per day, oldest first: (day start, units).
    days: Vec<(i64, i64)>,
}

/// One token whose ledger has `rows` debits spread evenly over the 90 UTC
/// days that end today; its usage per day and its counters to match.
async fn fill(store: &Store, rows: i64) -> Result<Filled, BoxError> {
    let today = day_start(unix_now());
    let first_day = today - (DAYS - 1) * DAY;
    let (token, key) = store
        .create_token(
            NewToken {
                name: "usage-bench".into(),
                unlimited: true,
                ..NewToken::default()
            },
            first_day,
        )
        .await?;
    let db = store.connection();
    let txn = db.begin().await?;
    let mut days = vec![0i64; DAYS as usize];
    let mut sql = String::with_capacity(ROWS_PER_INSERT * 48);
    let mut in_statement = 0;
    for n in 0..rows {
        // Row n: day n % 90, a second within it, 1 to 7 units.
        let day = n % DAYS;
        let at = first_day + day * DAY + (n / DAYS) % DAY;
        let units = 1 + n % 7;
        days[day as usize] += units;
        if in_statement == 0 {
            sql.clear();
            sql.push_str("INSERT INTO quota_ledger (token_id, kind, units, created_at) VALUES ");
        } else {
            sql.push(',');
        }
        sql.push_str(&format!("({},2,{units},{at})", token.id));
        in_statement += 1;
        if in_statement == ROWS_PER_INSERT || n == rows - 1 {
            txn.execute_unprepared(&sql).await?;
            in_statement = 0;
        }
    }
    let values: Vec<String> = days
        .iter()
        .enumerate()
        .map(|(i, units)| format!("({},{},{units})", token.id, first_day + i as i64 * DAY))
        .collect();
    txn.execute_unprepared(&format!(
        "INSERT INTO quota_usage_days (token_id, day, units) VALUES {}",
        values.join(",")
    ))
    .await?;
    let total: i64 = days.iter().sum();
    txn.execute_unprepared(&format!(
        "UPDATE quota_tokens SET used = {total}, remaining = -{total} WHERE id = {}",
        token.id
    ))
    .await?;
    txn.commit().await?;
    // Fresh planner statistics, as a database that grew slowly would have.
    db.execute_unprepared("ANALYZE").await?;
    Ok(Filled {
        key: key.expose().to_owned(),
        token_id: token.id,
        days: days
            .into_iter()
            .enumerate()
            .map(|(i, units)| (first_day + i as i64 * DAY, units))
            .collect(),
    })
}

fn date(unix: i64) -> String {
    chrono::DateTime::from_timestamp(unix, 0)
        .map(|d| d.format("%Y-%m-%d").to_string())
        .unwrap_or_default()
}

/// The p-th percentile (0..=100) of sorted durations, in milliseconds.
fn percentile_ms(sorted: &[Duration], p: usize) -> f64 {
    let i = (sorted.len() * p).div_ceil(100).saturating_sub(1);
    sorted[i.min(sorted.len() - 1)].as_secs_f64() * 1000.0
}

fn report(database: &str, case: &str, mut took: Vec<Duration>) {
    took.sort();
    println!(
        "usage {database} {case} p50_ms={:.3} p99_ms={:.3} reads={}",
        percentile_ms(&took, 50),
        percentile_ms(&took, 99),
        took.len()
    );
}

/// Reads the usage of the filled key over gRPC `reads` times for all time and
/// for the last 30 days, and a few times by the old ledger scan; prints a
/// line per case.
async fn measure(
    database: &str,
    store: Store,
    filled: &Filled,
    reads: usize,
) -> Result<(), BoxError> {
    let server = TestServer::spawn(store.clone(), test_config()).await;
    let channel = Endpoint::from_shared(server.url())?.connect().await?;
    let mut client = QuotaServiceClient::new(channel);
    let bearer: tonic::metadata::MetadataValue<_> = format!("Bearer {}", filled.key).parse()?;
    let last = filled.days.last().map_or(0, |d| d.0);
    let month_start = last - 29 * DAY;
    let cases = [
        ("all-time", String::new(), String::new(), 0),
        ("month", date(month_start), date(last + DAY), month_start),
    ];
    for (case, start_date, end_date, from) in cases {
        let expected: i64 = filled
            .days
            .iter()
            .filter(|d| d.0 >= from)
            .map(|d| d.1)
            .sum();
        let mut took = Vec::with_capacity(reads);
        for _ in 0..reads {
            let mut request = tonic::Request::new(GetUsageRequest {
                start_date: start_date.clone(),
                end_date: end_date.clone(),
            });
            request
                .metadata_mut()
                .insert("authorization", bearer.clone());
            let started = Instant::now();
            let usage = client.get_usage(request).await?.into_inner();
            took.push(started.elapsed());
            if usage.total_units != expected {
                return Err(format!(
                    "{database} {case}: total_units {} but the ledger has {expected}",
                    usage.total_units
                )
                .into());
            }
        }
        report(database, case, took);
    }
    // The ledger scan the usage route ran before the per-day totals.
    let backend = store.connection().get_database_backend();
    let total = match backend {
        sea_orm::DatabaseBackend::Postgres => "CAST(SUM(units) AS BIGINT)",
        _ => "SUM(units)",
    };
    let scan = format!(
        "SELECT created_at - (created_at % 86400) AS day, {total} AS units FROM quota_ledger \
         WHERE token_id = {} AND kind = 2 GROUP BY 1 ORDER BY 1",
        filled.token_id
    );
    let mut took = Vec::with_capacity(SCAN_READS);
    for _ in 0..SCAN_READS {
        let started = Instant::now();
        let rows = store
            .connection()
            .query_all_raw(Statement::from_string(backend, scan.clone()))
            .await?;
        took.push(started.elapsed());
        if rows.len() != filled.days.len() {
            return Err(format!("{database}: the scan found {} days", rows.len()).into());
        }
    }
    report(database, "all-time-ledger-scan", took);
    Ok(())
}

#[tokio::main]
async fn main() -> Result<(), BoxError> {
    let args = args()?;
    if args.sqlite {
        let dir = std::env::temp_dir().join(format!("quota-usage-bench-{}", std::process::id()));
        std::fs::create_dir_all(&dir)?;
        let url = format!("sqlite://{}/quota.db", dir.display());
        let result = async {
            let store = Store::connect(&url).await?;
            store.migrate().await?;
            let started = Instant::now();
            let filled = fill(&store, args.rows).await?;
            eprintln!(
                "sqlite: {} ledger rows written in {:.1} s",
                args.rows,
                started.elapsed().as_secs_f64()
            );
            measure("sqlite", store, &filled, args.reads).await
        }
        .await;
        std::fs::remove_dir_all(&dir)?;
        result?;
    }
    if let Some(server) = &args.postgres {
        let name = format!("quota_usage_bench_{}", std::process::id());
        let admin = Store::connect(server).await?;
        admin
            .connection()
            .execute_unprepared(&format!("CREATE DATABASE {name}"))
            .await?;
        let url = format!(
            "{}/{name}",
            server
                .rsplit_once('/')
                .map_or(server.as_str(), |(base, _)| base)
        );
        let result = async {
            let store = Store::connect(&url).await?;
            store.migrate().await?;
            let started = Instant::now();
            let filled = fill(&store, args.rows).await?;
            eprintln!(
                "postgres: {} ledger rows written in {:.1} s",
                args.rows,
                started.elapsed().as_secs_f64()
            );
            let measured = measure("postgres", store.clone(), &filled, args.reads).await;
            store.connection().clone().close().await?;
            measured
        }
        .await;
        admin
            .connection()
            .execute_unprepared(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
            .await?;
        result?;
    }
    Ok(())
}

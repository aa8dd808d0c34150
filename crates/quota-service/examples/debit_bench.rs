//! Debit benchmark: `Consume` over gRPC against PostgreSQL running the same
//! SQL under pgbench, side by side in one run, and the same load on SQLite;
//! then the same load as holds: a `Reserve` and its `Settle` per call.
//!
//! ```sh
//! cargo run --release -p quota-service --example debit_bench -- [--seconds 10] [--callers 32]
//!     [--postgres postgres://postgres@127.0.0.1:5432/test] [--no-sqlite]
//! ```
//!
//! Two workloads: debits spread over 1000 tokens, and every debit on one hot
//! token. Each makes a fresh database (dropped at the end), serves it from an
//! in-process gRPC server on 127.0.0.1:0 and drives it from `--callers`
//! concurrent clients for `--seconds`; pgbench then runs the same statements
//! (rendered by the store itself) at the same concurrency on the same database.
//! The holds run counts reserve + settle pairs, compared with the debits/s of
//! `Consume` at the same concurrency.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use quota::pb::quota_service_client::QuotaServiceClient;
use quota::pb::{ConsumeRequest, ReserveRequest, SettleRequest};
use quota_service::domain::{KeyDigest, unix_now};
use quota_service::store::entity::{STATUS_ENABLED, token};
use quota_service::testing::{TEST_ADMIN_TOKEN, TestServer, test_config};
use quota_service::{Store, store};
use sea_orm::{ActiveValue::Set, ConnectionTrait, EntityTrait};
use std::error::Error;
use std::process::Command;
use std::time::{Duration, Instant};
use tonic::transport::{Channel, Endpoint};

type BoxError = Box<dyn Error + Send + Sync>;

/// Tokens of the spread workload; the hot token comes after them.
const SPREAD_TOKENS: i64 = 1000;
const HOT_TOKEN: i64 = SPREAD_TOKENS + 1;
/// Units per debit.
const UNITS: i64 = 1;
/// Callers per gRPC connection, as replicas of a relay would share them.
const CALLERS_PER_CHANNEL: usize = 8;

#[derive(Clone, Copy, Debug, PartialEq)]
enum Workload {
    Spread,
    Hot,
}

impl Workload {
    fn name(self) -> &'static str {
        match self {
            Workload::Spread => "spread over 1000 tokens",
            Workload::Hot => "one hot token",
        }
    }

    fn token(self, i: u64) -> i64 {
        match self {
            // A cheap spread without a random generator: a stride through the tokens.
            Workload::Spread => (i.wrapping_mul(7919) % SPREAD_TOKENS as u64) as i64 + 1,
            Workload::Hot => HOT_TOKEN,
        }
    }

    fn pgbench_token(self) -> &'static str {
        match self {
            Workload::Spread => "\\set n random(1, 1000)\n",
            Workload::Hot => "\\set n 1001\n",
        }
    }
}

struct Args {
    seconds: u64,
    callers: usize,
    postgres: Option<String>,
    sqlite: bool,
}

fn args() -> Result<Args, BoxError> {
    let mut args = Args {
        seconds: 10,
        callers: 32,
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
            "--seconds" => args.seconds = value()?.parse()?,
            "--callers" => args.callers = value()?.parse()?,
            "--postgres" => args.postgres = Some(value()?),
            "--no-postgres" => args.postgres = None,
            "--no-sqlite" => args.sqlite = false,
            other => {
                return Err(format!(
                    "unknown argument {other:?} (see the doc comment of debit_bench.rs)"
                )
                .into());
            }
        }
    }
    if !(1..=300).contains(&args.seconds) || !(1..=1024).contains(&args.callers) {
        return Err("--seconds must be 1..=300 and --callers 1..=1024".into());
    }
    Ok(args)
}

/// The key of bench token `n`: well-formed and derivable in SQL too.
fn bench_key(n: i64) -> String {
    format!("sk-{n:048}")
}

/// The same key digest, computed by PostgreSQL from pgbench's `:n`.
const PG_DIGEST_OF_N: &str =
    "encode(sha256(convert_to('sk-' || lpad(:n::text, 48, '0'), 'UTF8')), 'hex')";

async fn seed(store: &Store) -> Result<(), BoxError> {
    let now = unix_now();
    let rows: Vec<token::ActiveModel> = (1..=HOT_TOKEN)
        .map(|n| token::ActiveModel {
            key_digest: Set(KeyDigest::of(&bench_key(n)).as_str().to_owned()),
            display_prefix: Set(format!("{}…", &bench_key(n)[..7])),
            name: Set(format!("bench-{n}")),
            remaining: Set(i64::MAX / 4),
            used: Set(0),
            unlimited: Set(false),
            expires_at: Set(None),
            status: Set(STATUS_ENABLED),
            created_at: Set(now),
            updated_at: Set(now),
            ..Default::default()
        })
        .collect();
    for chunk in rows.chunks(200) {
        token::Entity::insert_many(chunk.to_vec())
            .exec(store.connection())
            .await?;
    }
    Ok(())
}

struct Outcome {
    per_second: f64,
    p50_ms: f64,
    p99_ms: f64,
    errors: u64,
}

/// `message` with the admin credential.
fn with_auth<T>(message: T, auth: &AdminHeader) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    request.metadata_mut().insert("authorization", auth.clone());
    request
}

type AdminHeader = tonic::metadata::MetadataValue<tonic::metadata::Ascii>;

/// What each call of a run does.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Calls {
    /// One `Consume`.
    Consume,
    /// A `Reserve` of twice the units, then its `Settle` at the units.
    ReserveSettle,
}

/// Drives `calls` from `callers` concurrent clients for `seconds`.
async fn drive(
    url: &str,
    workload: Workload,
    calls: Calls,
    callers: usize,
    seconds: u64,
) -> Result<Outcome, BoxError> {
    let channels = callers.div_ceil(CALLERS_PER_CHANNEL);
    let mut clients = Vec::new();
    for _ in 0..channels {
        let channel: Channel = Endpoint::from_shared(url.to_owned())?
            .tcp_nodelay(true)
            .connect()
            .await?;
        clients.push(QuotaServiceClient::new(channel));
    }
    let auth: AdminHeader = format!("Bearer {TEST_ADMIN_TOKEN}").parse()?;
    let started = Instant::now();
    let deadline = started + Duration::from_secs(seconds);
    let mut tasks = Vec::new();
    for caller in 0..callers {
        let mut client = clients[caller % channels].clone();
        let auth = auth.clone();
        tasks.push(tokio::spawn(async move {
            let (mut latencies, mut errors, mut i) = (Vec::new(), 0u64, caller as u64);
            while Instant::now() < deadline {
                let token = bench_key(workload.token(i));
                let request_id = format!("bench-{calls:?}-{caller}-{i}");
                let t = Instant::now();
                let done = match calls {
                    Calls::Consume => client
                        .consume(with_auth(
                            ConsumeRequest {
                                token,
                                quota: UNITS,
                                request_id,
                            },
                            &auth,
                        ))
                        .await
                        .map(|_| ()),
                    Calls::ReserveSettle => {
                        let reserve = ReserveRequest {
                            token: token.clone(),
                            quota: 2 * UNITS,
                            request_id: request_id.clone(),
                            ttl_seconds: 600,
                        };
                        match client.reserve(with_auth(reserve, &auth)).await {
                            Ok(_) => {
                                let settle = SettleRequest {
                                    token,
                                    request_id,
                                    quota: UNITS,
                                };
                                client.settle(with_auth(settle, &auth)).await.map(|_| ())
                            }
                            Err(e) => Err(e),
                        }
                    }
                };
                match done {
                    Ok(()) => latencies.push(t.elapsed().as_micros() as u32),
                    Err(_) => errors += 1,
                }
                i += callers as u64;
            }
            (latencies, errors)
        }));
    }
    let (mut latencies, mut errors) = (Vec::new(), 0);
    for task in tasks {
        let (l, e) = task.await?;
        latencies.extend(l);
        errors += e;
    }
    let elapsed = started.elapsed().as_secs_f64();
    latencies.sort_unstable();
    let pct = |p: f64| {
        latencies
            .get(((latencies.len() as f64 * p) as usize).min(latencies.len().saturating_sub(1)))
            .map_or(0.0, |us| f64::from(*us) / 1000.0)
    };
    Ok(Outcome {
        per_second: latencies.len() as f64 / elapsed,
        p50_ms: pct(0.50),
        p99_ms: pct(0.99),
        errors,
    })
}

/// pgbench on `url`'s database running the store's own debit SQL.
fn pgbench(
    url: &str,
    workload: Workload,
    callers: usize,
    seconds: u64,
) -> Result<Outcome, BoxError> {
    let script = format!(
        "{}\\set rid random(1, 1000000000000)\n{}",
        workload.pgbench_token(),
        store::pgbench_debit_script(
            PG_DIGEST_OF_N,
            UNITS,
            "'pgbench-' || :client_id || '-' || :rid",
            unix_now()
        )?
    );
    let dir = std::env::temp_dir().join(format!("quota-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let file = dir.join("debit.sql");
    std::fs::write(&file, &script)?;
    let out = Command::new("pgbench")
        .args([
            "-n",
            "-r",
            "-c",
            &callers.to_string(),
            "-j",
            "2",
            "-T",
            &seconds.to_string(),
            "-f",
        ])
        .arg(&file)
        .arg(url)
        .output()?;
    std::fs::remove_dir_all(&dir)?;
    let text = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        return Err(format!(
            "pgbench failed: {}\n{text}",
            String::from_utf8_lossy(&out.stderr)
        )
        .into());
    }
    let number_after = |label: &str| {
        text.lines()
            .find_map(|l| l.trim().strip_prefix(label))
            .and_then(|rest| {
                rest.trim_start_matches([' ', '='])
                    .split_whitespace()
                    .next()
            })
            .and_then(|n| n.parse::<f64>().ok())
    };
    let failed = text
        .lines()
        .find_map(|l| l.strip_prefix("number of failed transactions: "))
        .and_then(|r| r.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or(0);
    Ok(Outcome {
        per_second: number_after("tps")
            .ok_or_else(|| format!("no tps in pgbench output:\n{text}"))?,
        p50_ms: number_after("latency average").unwrap_or(0.0),
        p99_ms: f64::NAN,
        errors: failed,
    })
}

/// Refreshes PostgreSQL's planner statistics, as autovacuum keeps them on a
/// database in service: each run starts from tables the planner knows, not
/// from the empty ones a fresh database had when it was seeded (whose plans
/// scan every row of tables that have since grown).
async fn analyze(store: &Store) -> Result<(), BoxError> {
    store.connection().execute_unprepared("ANALYZE").await?;
    Ok(())
}

async fn serve(url: &str) -> Result<(TestServer, Store), BoxError> {
    let store = Store::connect(url).await?;
    store.migrate().await?;
    seed(&store).await?;
    let server = TestServer::spawn(store.clone(), test_config()).await;
    Ok((server, store))
}

/// Runs reserve + settle pairs and prints their row; the ratio is to the
/// `Consume` debits/s of `consume` at the same concurrency.
async fn holds_row(
    database: &str,
    url: &str,
    workload: Workload,
    consume: &Outcome,
    args: &Args,
) -> Result<(), BoxError> {
    let pairs = drive(
        url,
        workload,
        Calls::ReserveSettle,
        args.callers,
        args.seconds,
    )
    .await?;
    println!(
        "| {database} | {} | Reserve + Settle pairs | {:.0} | {:.2} | {:.2} | {} | | | {:.2} |",
        workload.name(),
        pairs.per_second,
        pairs.p50_ms,
        pairs.p99_ms,
        pairs.errors,
        pairs.per_second / consume.per_second
    );
    Ok(())
}

#[tokio::main]
async fn main() -> Result<(), BoxError> {
    let args = args()?;
    println!(
        "debit benchmark: {} callers, {} s per run, {} unit per debit",
        args.callers, args.seconds, UNITS
    );
    println!();
    println!(
        "| database | workload | calls | per s | p50 ms | p99 ms | errors | pgbench tx/s | pgbench avg ms | ratio |"
    );
    println!("|---|---|---|---:|---:|---:|---:|---:|---:|---:|");
    if let Some(server) = &args.postgres {
        let name = format!("quota_bench_{}", std::process::id());
        let admin = Store::connect(server).await?;
        admin
            .connection()
            .execute_unprepared(&format!("DROP DATABASE IF EXISTS {name}"))
            .await?;
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
            let (grpc, store) = serve(&url).await?;
            for workload in [Workload::Spread, Workload::Hot] {
                analyze(&store).await?;
                let ours = drive(&grpc.url(), workload, Calls::Consume, args.callers, args.seconds)
                    .await?;
                analyze(&store).await?;
                let pg = pgbench(&url, workload, args.callers, args.seconds)?;
                println!(
                    "| PostgreSQL | {} | Consume | {:.0} | {:.2} | {:.2} | {} | {:.0} | {:.2} | {:.2} |",
                    workload.name(),
                    ours.per_second,
                    ours.p50_ms,
                    ours.p99_ms,
                    ours.errors,
                    pg.per_second,
                    pg.p50_ms,
                    ours.per_second / pg.per_second
                );
                if pg.errors > 0 {
                    println!("(pgbench reported {} failed transactions)", pg.errors);
                }
                analyze(&store).await?;
                holds_row("PostgreSQL", &grpc.url(), workload, &ours, &args).await?;
            }
            Ok::<_, BoxError>(())
        }
        .await;
        admin
            .connection()
            .execute_unprepared(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
            .await?;
        result?;
    }
    if args.sqlite {
        let dir = std::env::temp_dir().join(format!("quota-bench-sqlite-{}", std::process::id()));
        std::fs::create_dir_all(&dir)?;
        let result = async {
            let (grpc, _store) = serve(&format!("sqlite://{}/bench.db", dir.display())).await?;
            for workload in [Workload::Spread, Workload::Hot] {
                let ours = drive(
                    &grpc.url(),
                    workload,
                    Calls::Consume,
                    args.callers,
                    args.seconds,
                )
                .await?;
                println!(
                    "| SQLite | {} | Consume | {:.0} | {:.2} | {:.2} | {} | | | |",
                    workload.name(),
                    ours.per_second,
                    ours.p50_ms,
                    ours.p99_ms,
                    ours.errors
                );
                holds_row("SQLite", &grpc.url(), workload, &ours, &args).await?;
            }
            Ok::<_, BoxError>(())
        }
        .await;
        std::fs::remove_dir_all(&dir)?;
        result?;
    }
    Ok(())
}

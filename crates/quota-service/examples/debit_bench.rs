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
//! in-process gRPC server on 127.0.0.1:0 (with `quotad`'s allocator) and
//! drives it from `--callers` concurrent clients for `--seconds`; pgbench
//! then runs the same statements (rendered by the store itself) at the same
//! concurrency on the same database.
//! The holds run counts reserve + settle pairs, compared with the debits/s of
//! `Consume` at the same concurrency. On PostgreSQL pgbench then runs the
//! least SQL a pair needs (two transactions: the hold, then its settlement)
//! at the same concurrency, and that row's `ratio` is its pairs/s over
//! pgbench's debits/s: PostgreSQL's own price of a pair, in debits, beside
//! the service's.
//!
//! Each run of the service also reports the CPU time it took per call (per
//! pair for holds), read from `/proc`: this process's (the callers, the
//! service and, on SQLite, the database) and, when PostgreSQL runs on this
//! host, that of the backends serving the benchmark's database. The pairs'
//! `cpu ratio` is a `Consume`'s CPU over a pair's: the same comparison as
//! `ratio`, which the machine's other load disturbs less than throughput.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use quota::pb::quota_service_client::QuotaServiceClient;
use quota::pb::{ConsumeRequest, ReserveRequest, SettleRequest};
use quota_service::domain::{HoldState, KeyDigest, unix_now};
use quota_service::store::entity::{KIND_DEBIT, STATUS_ENABLED, token};
use quota_service::testing::{TEST_ADMIN_TOKEN, TestServer, test_config};
use quota_service::{Store, store};
use sea_orm::{ActiveValue::Set, ConnectionTrait, EntityTrait};
use sea_orm::{DatabaseBackend, Statement};
use std::collections::HashMap;
use std::error::Error;
use std::process::Command;
use std::time::{Duration, Instant};
use tonic::transport::{Channel, Endpoint};

type BoxError = Box<dyn Error + Send + Sync>;

/// The allocator `quotad` runs with, so that the service (and the callers
/// beside it) is measured as it runs.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

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
    /// CPU µs per call of this process, and of the PostgreSQL backends
    /// serving the run (when on this host).
    cpu: Cpu,
}

/// CPU µs per call: this process's and the PostgreSQL backends'.
#[derive(Clone, Copy, Default)]
struct Cpu {
    process_us: Option<f64>,
    postgres_us: Option<f64>,
}

impl Cpu {
    /// Both together, when both were measured (or only the process, on SQLite).
    fn total_us(self) -> Option<f64> {
        Some(self.process_us? + self.postgres_us.unwrap_or(0.0))
    }
}

/// Shows a figure, or nothing when it was not measured.
fn shown(figure: Option<f64>, decimals: usize) -> String {
    figure.map_or_else(String::new, |f| format!("{f:.decimals$}"))
}

/// The kernel's clock ticks per second in `/proc/<pid>/stat` (`USER_HZ`,
/// 100 on every Linux architecture this runs on).
const TICKS_PER_SECOND: f64 = 100.0;

/// CPU seconds (user and system) process `pid` has used, from `/proc`.
fn cpu_seconds(pid: &str) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // After the command's name (in parentheses, which may hold spaces) come
    // the fields from the third on: utime and stime are the 14th and 15th.
    let mut fields = stat.rsplit_once(')')?.1.split_whitespace().skip(11);
    let user: f64 = fields.next()?.parse().ok()?;
    let system: f64 = fields.next()?.parse().ok()?;
    Some((user + system) / TICKS_PER_SECOND)
}

/// The CPU time used so far by this process and by the PostgreSQL backends
/// connected to `postgres`'s database, by process id.
struct CpuClock {
    process: Option<f64>,
    backends: HashMap<String, f64>,
}

impl CpuClock {
    async fn read(postgres: Option<&Store>) -> CpuClock {
        let mut backends = HashMap::new();
        if let Some(store) = postgres {
            let pids = store
                .connection()
                .query_all_raw(Statement::from_string(
                    DatabaseBackend::Postgres,
                    "SELECT pid::text FROM pg_stat_activity WHERE datname = current_database()",
                ))
                .await
                .unwrap_or_default();
            for row in pids {
                let Ok(pid) = row.try_get_by_index::<String>(0) else {
                    continue;
                };
                // Only when PostgreSQL runs on this host: elsewhere the id
                // names another process here, or none.
                let comm = std::fs::read_to_string(format!("/proc/{pid}/comm"));
                if comm.is_ok_and(|name| name.trim_end() == "postgres")
                    && let Some(seconds) = cpu_seconds(&pid)
                {
                    backends.insert(pid, seconds);
                }
            }
        }
        CpuClock {
            process: cpu_seconds("self"),
            backends,
        }
    }

    /// CPU µs per call from `self` to `later`, over `calls` calls; none for
    /// PostgreSQL when no backend was read (SQLite, or a server elsewhere).
    /// A backend that connected in between counts all its time; one that
    /// ended in between is missed (the pools keep their connections).
    fn per_call(&self, later: &CpuClock, calls: f64) -> Cpu {
        if calls <= 0.0 {
            return Cpu::default();
        }
        let micros = |seconds: f64| seconds * 1e6 / calls;
        let process_us = self
            .process
            .zip(later.process)
            .map(|(before, after)| micros(after - before));
        let postgres_us = (!later.backends.is_empty()).then(|| {
            let spent: f64 = later
                .backends
                .iter()
                .map(|(pid, after)| after - self.backends.get(pid).copied().unwrap_or(0.0))
                .sum();
            micros(spent)
        });
        Cpu {
            process_us,
            postgres_us,
        }
    }
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

/// Drives `calls` from `args.callers` concurrent clients for
/// `args.seconds`, counting the CPU time of this process and of
/// `postgres`'s backends, if given.
async fn drive(
    url: &str,
    workload: Workload,
    calls: Calls,
    args: &Args,
    postgres: Option<&Store>,
) -> Result<Outcome, BoxError> {
    let (callers, seconds) = (args.callers, args.seconds);
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
    let clock = CpuClock::read(postgres).await;
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
    let cpu = clock.per_call(&CpuClock::read(postgres).await, latencies.len() as f64);
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
        cpu,
    })
}

/// The store's own debit SQL, as a pgbench script for `workload`.
fn pgbench_debit(workload: Workload) -> Result<String, BoxError> {
    Ok(format!(
        "{}\\set rid random(1, 1000000000000)\n{}",
        workload.pgbench_token(),
        store::pgbench_debit_script(
            PG_DIGEST_OF_N,
            UNITS,
            "'pgbench-' || :client_id || '-' || :rid",
            unix_now()
        )?
    ))
}

/// The least SQL a reserve + settle pair needs on this schema, as a pgbench
/// script for `workload`: PostgreSQL's own cost of a pair, to set beside its
/// cost of a debit. Like [`drive`]'s pairs it holds twice the units and
/// settles the units. A reserve is one transaction: the conditional UPDATE
/// of the token (its spendable balance) and the hold's row, if no debit has
/// its request id. A settle is another: the token's counters, the hold's
/// state, the ledger row and the day's total. The store writes the same rows
/// (and looks the ids up first); a change of the schema that this script no
/// longer fits makes pgbench, and so the benchmark, fail.
fn pgbench_pair(workload: Workload) -> String {
    let now = unix_now();
    let day = now - now.rem_euclid(86_400);
    let (held, cost) = (2 * UNITS, UNITS);
    let live = HoldState::Live.code();
    let settled = HoldState::Settled.code();
    let expires = now + 600;
    let rid = "'pgbench-pair-' || :client_id || '-' || :rid";
    format!(
        "{token}\\set rid random(1, 1000000000000)
BEGIN;
UPDATE quota_tokens SET held = held + {held}, updated_at = {now} \
 WHERE key_digest = {digest} AND status = {STATUS_ENABLED} \
 AND (expires_at IS NULL OR expires_at > {now}) AND (unlimited OR remaining - held >= {held}) \
 RETURNING id \\gset
INSERT INTO quota_holds (token_id, request_id, units, expires_at, state, created_at, updated_at) \
 SELECT :id, {rid}, {held}, {expires}, {live}, {now}, {now} \
 WHERE NOT EXISTS (SELECT 1 FROM quota_ledger WHERE token_id = :id AND request_id = {rid});
COMMIT;
BEGIN;
UPDATE quota_tokens SET remaining = remaining - {cost}, used = used + {cost}, held = held - {held}, \
 updated_at = {now} WHERE key_digest = {digest} RETURNING id \\gset
UPDATE quota_holds SET state = {settled}, updated_at = {now} \
 WHERE token_id = :id AND request_id = {rid} AND state = {live};
INSERT INTO quota_ledger (token_id, kind, units, request_id, created_at) \
 VALUES (:id, {KIND_DEBIT}, {cost}, {rid}, {now});
INSERT INTO quota_usage_days (token_id, day, units) VALUES (:id, {day}, {cost}) \
 ON CONFLICT (token_id, day) DO UPDATE SET units = quota_usage_days.units + excluded.units;
COMMIT;
",
        token = workload.pgbench_token(),
        digest = PG_DIGEST_OF_N,
    )
}

/// pgbench on `url`'s database running `script` from `callers` clients for
/// `seconds`.
fn pgbench(url: &str, script: &str, callers: usize, seconds: u64) -> Result<Outcome, BoxError> {
    let dir = std::env::temp_dir().join(format!("quota-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let file = dir.join("script.sql");
    std::fs::write(&file, script)?;
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
        cpu: Cpu::default(),
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

/// Runs reserve + settle pairs and prints their row; the ratios are to the
/// `Consume` debits/s and CPU per debit of `consume` at the same concurrency.
async fn holds_row(
    database: &str,
    url: &str,
    workload: Workload,
    consume: &Outcome,
    args: &Args,
    postgres: Option<&Store>,
) -> Result<(), BoxError> {
    let pairs = drive(url, workload, Calls::ReserveSettle, args, postgres).await?;
    let cpu_ratio = consume
        .cpu
        .total_us()
        .zip(pairs.cpu.total_us())
        .map(|(debit, pair)| debit / pair);
    println!(
        "| {database} | {} | Reserve + Settle pairs | {:.0} | {:.2} | {:.2} | {} | | | {:.2} | {} | {} | {} |",
        workload.name(),
        pairs.per_second,
        pairs.p50_ms,
        pairs.p99_ms,
        pairs.errors,
        pairs.per_second / consume.per_second,
        shown(pairs.cpu.process_us, 0),
        shown(pairs.cpu.postgres_us, 0),
        shown(cpu_ratio, 2),
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
        "| database | workload | calls | per s | p50 ms | p99 ms | errors | pgbench tx/s | pgbench avg ms | ratio | cpu µs/call | PostgreSQL cpu µs/call | cpu ratio |"
    );
    println!("|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
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
                let ours = drive(&grpc.url(), workload, Calls::Consume, &args, Some(&store))
                    .await?;
                analyze(&store).await?;
                let pg = pgbench(&url, &pgbench_debit(workload)?, args.callers, args.seconds)?;
                println!(
                    "| PostgreSQL | {} | Consume | {:.0} | {:.2} | {:.2} | {} | {:.0} | {:.2} | {:.2} | {} | {} | |",
                    workload.name(),
                    ours.per_second,
                    ours.p50_ms,
                    ours.p99_ms,
                    ours.errors,
                    pg.per_second,
                    pg.p50_ms,
                    ours.per_second / pg.per_second,
                    shown(ours.cpu.process_us, 0),
                    shown(ours.cpu.postgres_us, 0),
                );
                if pg.errors > 0 {
                    println!("(pgbench reported {} failed transactions)", pg.errors);
                }
                analyze(&store).await?;
                holds_row("PostgreSQL", &grpc.url(), workload, &ours, &args, Some(&store))
                    .await?;
                analyze(&store).await?;
                let pg_pairs = pgbench(&url, &pgbench_pair(workload), args.callers, args.seconds)?;
                println!(
                    "| PostgreSQL | {} | pgbench: a pair's SQL | {:.0} | | | {} | | {:.2} | {:.2} | | | |",
                    workload.name(),
                    pg_pairs.per_second,
                    pg_pairs.errors,
                    pg_pairs.p50_ms,
                    pg_pairs.per_second / pg.per_second,
                );
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
                let ours = drive(&grpc.url(), workload, Calls::Consume, &args, None).await?;
                println!(
                    "| SQLite | {} | Consume | {:.0} | {:.2} | {:.2} | {} | | | | {} | | |",
                    workload.name(),
                    ours.per_second,
                    ours.p50_ms,
                    ours.p99_ms,
                    ours.errors,
                    shown(ours.cpu.process_us, 0),
                );
                holds_row("SQLite", &grpc.url(), workload, &ours, &args, None).await?;
            }
            Ok::<_, BoxError>(())
        }
        .await;
        std::fs::remove_dir_all(&dir)?;
        result?;
    }
    Ok(())
}

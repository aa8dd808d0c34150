//! Test support: each test gets its own database and servers on port 0.
//!
//! PostgreSQL tests run when `QUOTA_TEST_POSTGRES_URL` names a server, and
//! MySQL/MariaDB tests when `QUOTA_TEST_MYSQL_URL` does (any database on it:
//! a fresh one is created per test and dropped afterwards). Without them
//! those tests print one `skipped: ...` line each, which `scripts/test`
//! counts; with `QUOTA_TEST_REQUIRE_DATABASES=1` (as CI runs) they fail
//! instead. A variable that is set but names a server that cannot be
//! reached always fails the test.
// Test support: a failure to set up is meant to fail the test, loudly.
#![allow(clippy::expect_used)]

use crate::domain::{KeyDigest, TokenKey};
use crate::grpc::{QuotaApi, ServiceConfig, serve};
use crate::store::Store;
use std::net::SocketAddr;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::oneshot;

/// The variable that names the PostgreSQL server for tests.
pub const POSTGRES_URL_VAR: &str = "QUOTA_TEST_POSTGRES_URL";
/// The variable that names the MySQL/MariaDB server for tests.
pub const MYSQL_URL_VAR: &str = "QUOTA_TEST_MYSQL_URL";
/// The variable that, set to `1`, makes a database test whose server is not
/// configured fail instead of being skipped.
pub const REQUIRE_DATABASES_VAR: &str = "QUOTA_TEST_REQUIRE_DATABASES";

/// Whether [`REQUIRE_DATABASES_VAR`] is set to anything but empty or `0`.
pub fn databases_required() -> bool {
    std::env::var(REQUIRE_DATABASES_VAR).is_ok_and(|v| !v.is_empty() && v != "0")
}

/// A database of one test's own, migrated by the real migrator.
#[derive(Debug)]
pub struct TestDb {
    /// Where it is.
    pub url: String,
    /// A PostgreSQL database to drop when the test ends: (server URL, name).
    drop_on_exit: Option<(String, String)>,
    /// The one store of an in-memory SQLite database, which lives as long as it.
    memory: Option<Store>,
    _dir: Option<TempDir>,
}

impl TestDb {
    /// A SQLite database in memory. Every [`TestDb::store`] of it is the same
    /// store (one connection), as one instance of the service would have.
    pub async fn sqlite_memory() -> TestDb {
        let store = Store::connect("sqlite::memory:")
            .await
            .expect("open in-memory sqlite");
        store.migrate().await.expect("migrate sqlite");
        TestDb {
            url: "sqlite::memory:".into(),
            drop_on_exit: None,
            memory: Some(store),
            _dir: None,
        }
    }

    /// A SQLite database in a file of its own, so that several stores (as
    /// replicas would) or a child process can share it.
    pub async fn sqlite() -> TestDb {
        let db = TestDb::sqlite_unmigrated();
        db.store().await.migrate().await.expect("migrate sqlite");
        db
    }

    /// Where a SQLite database file of its own would be, not yet created:
    /// for tests of migrations and of the first start.
    pub fn sqlite_unmigrated() -> TestDb {
        let dir = TempDir::new();
        let url = format!("sqlite://{}/quota.db", dir.0.display());
        TestDb {
            url,
            drop_on_exit: None,
            memory: None,
            _dir: Some(dir),
        }
    }

    /// A fresh PostgreSQL database, or `None` (with a line saying the test
    /// was skipped) when `QUOTA_TEST_POSTGRES_URL` is not set.
    pub async fn postgres() -> Option<TestDb> {
        TestDb::on_server(POSTGRES_URL_VAR, "PostgreSQL", true).await
    }

    /// Like [`TestDb::postgres`], with no table yet: for tests of migrations.
    pub async fn postgres_unmigrated() -> Option<TestDb> {
        TestDb::on_server(POSTGRES_URL_VAR, "PostgreSQL", false).await
    }

    /// A fresh MySQL/MariaDB database, or `None` (with a line saying the test
    /// was skipped) when `QUOTA_TEST_MYSQL_URL` is not set.
    pub async fn mysql() -> Option<TestDb> {
        TestDb::on_server(MYSQL_URL_VAR, "MySQL", true).await
    }

    /// Like [`TestDb::mysql`], with no table yet: for tests of migrations.
    pub async fn mysql_unmigrated() -> Option<TestDb> {
        TestDb::on_server(MYSQL_URL_VAR, "MySQL", false).await
    }

    async fn on_server(var: &str, kind: &str, migrate: bool) -> Option<TestDb> {
        let Some(server) = std::env::var(var).ok().filter(|s| !s.is_empty()) else {
            skip(var, kind);
            return None;
        };
        let name = format!("quota_test_{}", &random_hex()[..16]);
        let admin = Store::connect(&server)
            .await
            .unwrap_or_else(|e| panic!("connect to the {kind} test server named by {var}: {e}"));
        use sea_orm::ConnectionTrait;
        admin
            .connection()
            .execute_unprepared(&format!("CREATE DATABASE {name}"))
            .await
            .expect("create test database");
        let url = with_database(&server, &name);
        let db = TestDb {
            url,
            drop_on_exit: Some((server, name)),
            memory: None,
            _dir: None,
        };
        if migrate {
            db.store()
                .await
                .migrate()
                .await
                .expect("migrate the test database");
        }
        Some(db)
    }

    /// A new connection pool on this database (the same one in memory).
    pub async fn store(&self) -> Store {
        if let Some(store) = &self.memory {
            return store.clone();
        }
        Store::connect(&self.url)
            .await
            .expect("connect to test database")
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        let Some((server, name)) = self.drop_on_exit.take() else {
            return;
        };
        // Drop runs inside the test's runtime: do the async work on a thread of its own.
        let done = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            rt.block_on(async {
                use sea_orm::ConnectionTrait;
                let admin = Store::connect(&server)
                    .await
                    .map_err(std::io::Error::other)?;
                // PostgreSQL refuses to drop a database others are connected to,
                // unless forced; MySQL just drops it.
                let force = match admin.connection().get_database_backend() {
                    sea_orm::DatabaseBackend::Postgres => " WITH (FORCE)",
                    _ => "",
                };
                admin
                    .connection()
                    .execute_unprepared(&format!("DROP DATABASE IF EXISTS {name}{force}"))
                    .await
                    .map_err(std::io::Error::other)?;
                admin
                    .connection()
                    .clone()
                    .close()
                    .await
                    .map_err(std::io::Error::other)
            })
        })
        .join();
        if !matches!(done, Ok(Ok(()))) {
            eprintln!("could not drop test database {:?}: {done:?}", self.url);
        }
    }
}

/// A gRPC server on 127.0.0.1, port 0, that stops when dropped.
#[derive(Debug)]
pub struct TestServer {
    /// Where it listens.
    pub addr: SocketAddr,
    _stop: oneshot::Sender<()>,
}

impl TestServer {
    /// Serves `store` with `config` on a fresh port.
    pub async fn spawn(store: Store, config: ServiceConfig) -> TestServer {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind port 0");
        let addr = listener.local_addr().expect("local addr");
        let (stop, stopped) = oneshot::channel::<()>();
        tokio::spawn(async move {
            let api = QuotaApi::new(store, config);
            serve(listener, api, async {
                let _ = stopped.await;
            })
            .await
            .expect("grpc server");
        });
        TestServer { addr, _stop: stop }
    }

    /// `http://127.0.0.1:PORT`, for clients.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }
}

/// The admin credential the test helpers configure.
pub const TEST_ADMIN_TOKEN: &str = "test-admin-secret";

/// A configuration with [`TEST_ADMIN_TOKEN`] and the default rate.
pub fn test_config() -> ServiceConfig {
    ServiceConfig {
        admin: crate::auth::AdminCredential::new(Some(TEST_ADMIN_TOKEN)),
        ..ServiceConfig::default()
    }
}

/// Runs one async test body on SQLite (in memory and in a file) and, when
/// configured, PostgreSQL and MySQL: `on_every_database!(name, body)` makes
/// `name::sqlite_memory`, `name::sqlite`, `name::postgres` and `name::mysql`,
/// each on a 2-thread runtime. `on_every_database!(name, body, flavor =
/// "current_thread")` passes its last arguments to `#[tokio::test]` instead:
/// on one thread, a task spawned by the body runs only when the body yields.
#[macro_export]
macro_rules! on_every_database {
    ($name:ident, $body:ident) => {
        $crate::on_every_database!($name, $body, flavor = "multi_thread", worker_threads = 2);
    };
    ($name:ident, $body:ident, $($runtime:tt)*) => {
        mod $name {
            #[tokio::test($($runtime)*)]
            async fn sqlite_memory() {
                super::$body($crate::testing::TestDb::sqlite_memory().await).await
            }

            #[tokio::test($($runtime)*)]
            async fn sqlite() {
                super::$body($crate::testing::TestDb::sqlite().await).await
            }

            #[tokio::test($($runtime)*)]
            async fn postgres() {
                if let Some(db) = $crate::testing::TestDb::postgres().await {
                    super::$body(db).await
                }
            }

            #[tokio::test($($runtime)*)]
            async fn mysql() {
                if let Some(db) = $crate::testing::TestDb::mysql().await {
                    super::$body(db).await
                }
            }
        }
    };
}

/// Reports a database test that cannot run: a failure when databases are
/// required, else one `skipped: TEST: VAR is not set, ...` line.
fn skip(var: &str, kind: &str) {
    assert!(
        !databases_required(),
        "{var} is not set, and {REQUIRE_DATABASES_VAR}=1 forbids skipping this {kind} test"
    );
    // The test harness names each test's thread after the test.
    let thread = std::thread::current();
    let test = thread.name().unwrap_or("a test");
    // One write, straight to stderr, past the harness's capture: whole lines
    // for `scripts/test` to count, even with tests running in parallel.
    let line = format!("skipped: {test}: {var} is not set, so this {kind} test did not run\n");
    use std::io::Write;
    let _ = std::io::stderr().write_all(line.as_bytes());
}

/// A temporary folder removed on drop.
#[derive(Debug)]
struct TempDir(std::path::PathBuf);

impl TempDir {
    fn new() -> TempDir {
        let path = std::env::temp_dir().join(format!("quota-test-{}", &random_hex()[..16]));
        std::fs::create_dir_all(&path).expect("create temp dir");
        TempDir(path)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn random_hex() -> String {
    let key = TokenKey::generate().expect("random");
    KeyDigest::of(key.expose()).as_str().to_owned()
}

/// `server` with its database name replaced by `name`.
fn with_database(server: &str, name: &str) -> String {
    let (base, query) = server
        .split_once('?')
        .map_or((server, None), |(b, q)| (b, Some(q)));
    let authority_end = base.find("://").map_or(0, |i| i + 3);
    let base = match base[authority_end..].find('/') {
        Some(slash) => &base[..authority_end + slash],
        None => base,
    };
    match query {
        Some(q) => format!("{base}/{name}?{q}"),
        None => format!("{base}/{name}"),
    }
}

/// The time before the first TCP keepalive probe of the socket at `local`
/// connected to `remote`, as the kernel has it armed (`/proc/net/tcp`,
/// Linux), once its program has set it up (waited for, up to 5 s; a server
/// first has to accept the connection): `None` if it has no keepalive timer
/// running by then. For a server's side, `local` is the listener's address
/// and `remote` the client's.
pub async fn keepalive_armed(local: SocketAddr, remote: SocketAddr) -> Option<Duration> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    loop {
        if let Some(idle) = keepalive_timer(local, remote) {
            return Some(idle);
        }
        if tokio::time::Instant::now() >= deadline {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Asserts that the socket at `local` connected to `remote` has its TCP
/// keepalive timer armed for about [`quota::liveness::TCP_KEEPALIVE_IDLE`]
/// ([`keepalive_armed`]).
pub async fn assert_keepalive_armed(local: SocketAddr, remote: SocketAddr) {
    let idle = keepalive_armed(local, remote)
        .await
        .unwrap_or_else(|| panic!("the socket at {local} (to {remote}) has no keepalive timer"));
    let wanted = quota::liveness::TCP_KEEPALIVE_IDLE;
    assert!(
        idle <= wanted && idle + Duration::from_secs(5) >= wanted,
        "first probe in {idle:?}, wanted {wanted:?}"
    );
}

/// [`keepalive_armed`] read once.
fn keepalive_timer(local: SocketAddr, remote: SocketAddr) -> Option<Duration> {
    /// `/proc/net/tcp`'s timer code of a keepalive timer.
    const KEEPALIVE_TIMER: &str = "02";
    /// Its times are in clock ticks of the kernel's USER_HZ, 100 on Linux.
    const TICKS_PER_SECOND: u64 = 100;
    let hex = |addr: SocketAddr| match addr {
        SocketAddr::V4(v4) => format!(
            "{:08X}:{:04X}",
            u32::from_ne_bytes(v4.ip().octets()),
            v4.port()
        ),
        SocketAddr::V6(_) => String::new(),
    };
    let (local, remote) = (hex(local), hex(remote));
    let table = std::fs::read_to_string("/proc/net/tcp").ok()?;
    table.lines().skip(1).find_map(|line| {
        // sl local_address rem_address st tx_queue:rx_queue tr:tm->when ...
        let fields: Vec<&str> = line.split_whitespace().collect();
        if fields.get(1) != Some(&local.as_str()) || fields.get(2) != Some(&remote.as_str()) {
            return None;
        }
        let (timer, when) = fields.get(5)?.split_once(':')?;
        let ticks = u64::from_str_radix(when, 16).ok()?;
        (timer == KEEPALIVE_TIMER).then(|| Duration::from_millis(ticks * 1000 / TICKS_PER_SECOND))
    })
}

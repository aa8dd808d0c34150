//! Replicas starting together, migrations under a lock, and ports that accept
//! connections only once their server can answer: `quotad` as real processes
//! on a SQLite file, PostgreSQL and MariaDB (the latter two when
//! `QUOTA_TEST_POSTGRES_URL` / `QUOTA_TEST_MYSQL_URL` name a server).
//!
//! Readiness is read from the server's log (`gRPC listening on ...`), never
//! waited for by sleeping. Every child process is owned by a guard that kills
//! it when the test ends. The tests work with however many migrations exist.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use quota::pb;
use quota::pb::quota_service_client::QuotaServiceClient;
use quota::pb::token_admin_client::TokenAdminClient;
use std::io::{BufRead, BufReader, Read};
use std::net::SocketAddr;
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::{Arc, Mutex, mpsc};
use std::time::{Duration, Instant};
use tonic::transport::Channel;
use tonic_health::pb::health_client::HealthClient;

/// Runs one async test body on a database of its own with no table yet: a
/// SQLite file, and PostgreSQL and MySQL when configured.
macro_rules! on_shared_databases {
    ($name:ident, $body:ident) => {
        mod $name {
            use quota_service::testing::TestDb;

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn sqlite() {
                super::$body(TestDb::sqlite_unmigrated()).await
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn postgres() {
                if let Some(db) = TestDb::postgres_unmigrated().await {
                    super::$body(db).await
                }
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn mysql() {
                if let Some(db) = TestDb::mysql_unmigrated().await {
                    super::$body(db).await
                }
            }
        }
    };
}

mod lock;
mod start;
mod status;
mod upgrade;

/// The admin credential every server here runs with.
const ADMIN: &str = "replicas-test-admin-secret";
/// How long a server may take to listen (four start at once on two cores).
const READY_TIMEOUT: Duration = Duration::from_secs(60);
/// How long a one-shot command may take.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(60);

/// `quotad` with a clean environment: no `QUOTA_*` variable of the test
/// runner leaks in; the admin credential and info logging are set.
fn quotad() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_quotad"));
    for (name, _) in std::env::vars_os() {
        if name.to_string_lossy().starts_with("QUOTA_") {
            cmd.env_remove(name);
        }
    }
    cmd.env("QUOTA_ADMIN_TOKEN", ADMIN)
        .env("QUOTA_LOG", "info")
        .stdin(Stdio::null());
    cmd
}

/// A child process that is killed (if still running) and reaped on drop.
struct ChildGuard(Child);

impl ChildGuard {
    fn wait_timeout(&mut self, limit: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(status) = self.0.try_wait().expect("poll child") {
                return Some(status);
            }
            if Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
        if let Ok(None) = self.0.try_wait() {
            let _ = self.0.kill();
        }
        let _ = self.0.wait();
    }
}

/// Runs a one-shot command to its end (killed, and the test failed, past `limit`).
fn run(mut cmd: Command, limit: Duration) -> Output {
    let mut child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {cmd:?}: {e}"));
    let drain = |mut pipe: Box<dyn Read + Send>| {
        std::thread::spawn(move || {
            let mut bytes = Vec::new();
            let _ = pipe.read_to_end(&mut bytes);
            bytes
        })
    };
    let stdout = drain(Box::new(child.stdout.take().unwrap()));
    let stderr = drain(Box::new(child.stderr.take().unwrap()));
    let mut guard = ChildGuard(child);
    let Some(status) = guard.wait_timeout(limit) else {
        panic!("{cmd:?} did not finish within {limit:?}");
    };
    Output {
        status,
        stdout: stdout.join().unwrap(),
        stderr: stderr.join().unwrap(),
    }
}

/// `quotad ARGS --database-url URL`, run to its end.
fn quotad_on(url: &str, args: &[&str]) -> Output {
    let mut cmd = quotad();
    cmd.args(args).args(["--database-url", url]);
    run(cmd, COMMAND_TIMEOUT)
}

fn describe(out: &Output) -> String {
    format!(
        "status: {}\n--- stdout ---\n{}\n--- stderr ---\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// Asserts a failure reported as the contract says: exit 1, no panic,
/// exactly one `quotad: ...` line. Returns that line.
fn failed_with_one_line(out: &Output) -> String {
    assert_eq!(out.status.code(), Some(1), "{}", describe(out));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!stderr.contains("panicked"), "{}", describe(out));
    let errors: Vec<&str> = stderr
        .lines()
        .filter(|l| l.starts_with("quotad:"))
        .collect();
    assert_eq!(errors.len(), 1, "one error line\n{}", describe(out));
    errors[0].to_owned()
}

/// A `quotad grpc` process, killed when dropped, whose stderr lines arrive on
/// a channel as they are written.
struct Grpc {
    child: ChildGuard,
    lines: mpsc::Receiver<String>,
    log: Arc<Mutex<String>>,
}

impl Grpc {
    /// Starts `quotad grpc` on `url`, port 0, with `args` added.
    fn spawn(url: &str, args: &[&str]) -> Grpc {
        Grpc::spawn_env(url, args, &[])
    }

    /// Like [`Grpc::spawn`], with environment variables set.
    fn spawn_env(url: &str, args: &[&str], env: &[(&str, &str)]) -> Grpc {
        let mut cmd = quotad();
        cmd.args(["grpc", "--database-url", url, "--grpc-addr", "127.0.0.1:0"])
            .args(args)
            .envs(env.iter().copied())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        let mut child = cmd.spawn().expect("start quotad grpc");
        let stderr = child.stderr.take().unwrap();
        let log = Arc::new(Mutex::new(String::new()));
        let (tx, lines) = mpsc::channel();
        let sink = Arc::clone(&log);
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                sink.lock().unwrap().push_str(&format!("{line}\n"));
                let _ = tx.send(line);
            }
        });
        Grpc {
            child: ChildGuard(child),
            lines,
            log,
        }
    }

    /// The address in the first line that has `marker` followed by an
    /// address; fails the test if the process ends or `limit` passes first.
    fn address_after(&mut self, marker: &str, limit: Duration) -> SocketAddr {
        let line = self.logs(marker, limit);
        let rest = &line[line.find(marker).unwrap() + marker.len()..];
        let addr = rest.split([' ', ';']).next().unwrap_or_default();
        addr.parse()
            .unwrap_or_else(|_| panic!("no address after {marker:?} in {line:?}"))
    }

    /// The first line with `marker`; fails the test if the process ends or
    /// `limit` passes first.
    fn logs(&mut self, marker: &str, limit: Duration) -> String {
        let deadline = Instant::now() + limit;
        while let Ok(line) =
            (self.lines).recv_timeout(deadline.saturating_duration_since(Instant::now()))
        {
            if line.contains(marker) {
                return line;
            }
        }
        let status = self.child.wait_timeout(Duration::from_secs(5));
        panic!(
            "quotad grpc did not log {marker:?} (status {status:?}); stderr:\n{}",
            self.log.lock().unwrap()
        );
    }

    /// Sends SIGTERM with the `kill` command.
    fn terminate(&self) {
        let status = Command::new("kill")
            .arg("-TERM")
            .arg(self.child.0.id().to_string())
            .status()
            .expect("run kill");
        assert!(status.success(), "kill -TERM failed");
    }

    /// Waits until it listens; its address.
    fn ready(&mut self) -> SocketAddr {
        self.address_after("gRPC listening on ", READY_TIMEOUT)
    }
}

/// A channel to `addr`.
async fn channel(addr: SocketAddr) -> Channel {
    Channel::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect()
        .await
        .unwrap_or_else(|e| panic!("connect to {addr}: {e}"))
}

/// A request with `authorization: Bearer SECRET`.
fn bearer<T>(message: T, secret: &str) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    request
        .metadata_mut()
        .insert("authorization", format!("Bearer {secret}").parse().unwrap());
    request
}

/// Mints a key of `units` on the server at `addr`.
async fn create_key(addr: SocketAddr, units: i64) -> String {
    TokenAdminClient::new(channel(addr).await)
        .create_token(bearer(
            pb::CreateTokenRequest {
                name: "replica".into(),
                quota: units,
                ..Default::default()
            },
            ADMIN,
        ))
        .await
        .expect("create a key")
        .into_inner()
        .key
}

/// The key's remaining units, as the server at `addr` reports them.
async fn remaining(addr: SocketAddr, key: &str) -> i64 {
    QuotaServiceClient::new(channel(addr).await)
        .get_subscription(bearer(pb::GetSubscriptionRequest {}, key))
        .await
        .expect("read the subscription")
        .into_inner()
        .remaining_units
}

/// `grpc.health.v1.Health/Check` of `service` on `addr`.
async fn health(addr: SocketAddr, service: &str) -> i32 {
    HealthClient::new(channel(addr).await)
        .check(tonic_health::pb::HealthCheckRequest {
            service: service.into(),
        })
        .await
        .expect("health check")
        .into_inner()
        .status
}

/// SERVING in `grpc.health.v1`.
const SERVING: i32 = tonic_health::pb::health_check_response::ServingStatus::Serving as i32;

/// Every server answers: one key, minted on the first, is read on each, and
/// each reports SERVING for the server and both services.
async fn all_answer(addrs: &[SocketAddr]) {
    let key = create_key(addrs[0], 7_000).await;
    for &addr in addrs {
        assert_eq!(remaining(addr, &key).await, 7_000, "read on {addr}");
        for service in ["", "quota.v1.QuotaService", "quota.v1.TokenAdmin"] {
            assert_eq!(
                health(addr, service).await,
                SERVING,
                "{service:?} on {addr}"
            );
        }
    }
}

/// The number of migrations this build has.
fn migration_count() -> usize {
    quota_service::store::migration_names().len()
}

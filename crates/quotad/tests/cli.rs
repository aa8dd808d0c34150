//! End-to-end tests of the `quotad` binary, as a user and an operator run it:
//! `quotad serve` on port 0 with a SQLite file (and PostgreSQL when
//! `QUOTA_TEST_POSTGRES_URL` is set), keys minted and managed with
//! `quotad token ...`, the REST balance read over plain HTTP/1.1, shutdown on
//! SIGTERM and Ctrl-C, failures at start, `migrate` and `--help`.
//!
//! Readiness is read from the server's log (`gRPC listening on ...`,
//! `REST listening on http://...`), never waited for by sleeping. Every child
//! process is owned by a guard that kills it when the test ends, passing or not.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStderr, Command, ExitStatus, Output, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, mpsc};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// The admin credential every server and `token` command here uses.
const ADMIN: &str = "cli-test-admin-secret";
/// How long a server may take to announce both listeners.
const READY_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a one-shot command (`token ...`, `migrate`, `--help`) may take.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a server may take to exit after SIGTERM or SIGINT: its 10 s
/// grace for requests in flight, and a margin.
const STOP_TIMEOUT: Duration = Duration::from_secs(25);

/// The exact body for a $`usd` token that never expires.
fn subscription_body(usd: i64) -> String {
    format!(
        r#"{{"object":"billing_subscription","has_payment_method":true,"soft_limit_usd":{usd},"hard_limit_usd":{usd},"system_hard_limit_usd":{usd},"access_until":0}}"#
    )
}

// ---------------------------------------------------------------- helpers --

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

/// A folder of the test's own under the system temp dir, removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new() -> TempDir {
        static COUNTER: AtomicU64 = AtomicU64::new(0);
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_nanos();
        let path = std::env::temp_dir().join(format!(
            "quotad-cli-test-{}-{nanos}-{}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&path).expect("create temp dir");
        TempDir(path)
    }

    fn path(&self) -> &Path {
        &self.0
    }

    /// `sqlite://DIR/FILE`.
    fn sqlite_url(&self, file: &str) -> String {
        format!("sqlite://{}/{file}", self.0.display())
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A child process that is killed (if still running) and reaped on drop.
struct ChildGuard(Child);

impl ChildGuard {
    /// The exit status, or `None` if it is still running after `limit`.
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

/// Reads a pipe to its end on a thread of its own.
fn drain(mut pipe: impl Read + Send + 'static) -> JoinHandle<Vec<u8>> {
    std::thread::spawn(move || {
        let mut bytes = Vec::new();
        let _ = pipe.read_to_end(&mut bytes);
        bytes
    })
}

/// Runs a one-shot command to its end, failing the test if it takes longer
/// than `limit` (the child is killed then).
fn run(mut cmd: Command, limit: Duration) -> Output {
    let mut child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {cmd:?}: {e}"));
    let stdout = drain(child.stdout.take().unwrap());
    let stderr = drain(child.stderr.take().unwrap());
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

/// Status, stdout and stderr, for assertion messages.
fn describe(out: &Output) -> String {
    format!(
        "status: {}\n--- stdout ---\n{}\n--- stderr ---\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

fn stdout_of(out: &Output) -> String {
    String::from_utf8(out.stdout.clone()).expect("stdout is UTF-8")
}

fn stderr_of(out: &Output) -> String {
    String::from_utf8(out.stderr.clone()).expect("stderr is UTF-8")
}

/// Asserts the command succeeded.
fn succeeded(out: &Output) {
    assert!(out.status.success(), "expected success\n{}", describe(out));
}

/// Asserts a failure that is reported the way the contract says: a non-zero
/// exit, no panic, exactly one `quotad: ...` line. Returns that line.
fn failed_with_one_line(out: &Output) -> String {
    assert!(!out.status.success(), "expected failure\n{}", describe(out));
    assert_eq!(out.status.code(), Some(1), "{}", describe(out));
    let stderr = stderr_of(out);
    assert!(!stderr.contains("panicked"), "{}", describe(out));
    let errors: Vec<&str> = stderr
        .lines()
        .filter(|l| l.starts_with("quotad:"))
        .collect();
    assert_eq!(errors.len(), 1, "one error line\n{}", describe(out));
    assert!(
        stderr.lines().count() <= 10,
        "stderr is short\n{}",
        describe(out)
    );
    errors[0].to_owned()
}

/// A port on 127.0.0.1 that nothing listens on (it was free a moment ago).
fn closed_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A running `quotad serve`, killed when dropped.
struct Server {
    child: ChildGuard,
    /// `http://127.0.0.1:PORT` of the gRPC API, for `--server` (`quotad serve`, `grpc`).
    grpc_url: String,
    /// The REST edge (`quotad serve`, `edge`).
    http: Option<SocketAddr>,
    /// Everything it has written on stderr so far.
    log: Arc<Mutex<String>>,
    reader: Option<JoinHandle<()>>,
}

impl Server {
    /// Starts `quotad serve` on `database_url` with both listeners on port 0,
    /// in `cwd`, and returns once both addresses are announced.
    fn start(database_url: &str, cwd: &Path) -> Server {
        let mut cmd = quotad();
        cmd.args(["serve", "--database-url", database_url]).args([
            "--grpc-addr",
            "127.0.0.1:0",
            "--http-addr",
            "127.0.0.1:0",
        ]);
        Server::spawn(
            cmd,
            cwd,
            Serves {
                grpc: true,
                http: true,
            },
        )
    }

    /// Starts a `quotad` command that serves what `serves` says, and returns
    /// once it has announced those listeners.
    fn spawn(mut cmd: Command, cwd: &Path, serves: Serves) -> Server {
        cmd.current_dir(cwd)
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        let mut child = cmd.spawn().expect("start quotad");
        let stderr = child.stderr.take().unwrap();
        let mut child = ChildGuard(child);
        let log = Arc::new(Mutex::new(String::new()));
        let (ready_tx, ready) = mpsc::channel();
        let reader = read_log(stderr, Arc::clone(&log), serves, ready_tx);
        let (grpc, http) = match ready.recv_timeout(READY_TIMEOUT) {
            Ok(addrs) => addrs,
            Err(mpsc::RecvTimeoutError::Timeout) => panic!(
                "quotad serve did not announce both listeners within {READY_TIMEOUT:?}; stderr so far:\n{}",
                log.lock().unwrap()
            ),
            Err(mpsc::RecvTimeoutError::Disconnected) => {
                let status = child.wait_timeout(STOP_TIMEOUT);
                panic!(
                    "quotad serve ended ({status:?}) before listening; stderr:\n{}",
                    log.lock().unwrap()
                )
            }
        };
        Server {
            child,
            grpc_url: grpc.map(|g| format!("http://{g}")).unwrap_or_default(),
            http,
            log,
            reader: Some(reader),
        }
    }

    fn pid(&self) -> u32 {
        self.child.0.id()
    }

    /// Sends `signal` (`TERM`, `INT`) with the `kill` command.
    fn signal(&self, signal: &str) {
        let status = Command::new("kill")
            .arg(format!("-{signal}"))
            .arg(self.pid().to_string())
            .status()
            .expect("run kill");
        assert!(status.success(), "kill -{signal} {} failed", self.pid());
    }

    /// Sends `signal` and returns the exit status and the whole log, failing
    /// the test if the server does not exit within [`STOP_TIMEOUT`].
    fn stop_with(mut self, signal: &str) -> (ExitStatus, String) {
        self.signal(signal);
        let Some(status) = self.child.wait_timeout(STOP_TIMEOUT) else {
            panic!(
                "quotad serve still running {STOP_TIMEOUT:?} after SIG{signal}; stderr:\n{}",
                self.log.lock().unwrap()
            );
        };
        if let Some(reader) = self.reader.take() {
            reader.join().unwrap();
        }
        let log = self.log.lock().unwrap().clone();
        (status, log)
    }

    /// `quotad token ARGS --server THIS`.
    fn token(&self, args: &[&str]) -> Output {
        let mut cmd = quotad();
        cmd.arg("token")
            .args(args)
            .args(["--server", &self.grpc_url]);
        run(cmd, COMMAND_TIMEOUT)
    }

    /// `quotad token ARGS` that must succeed; its stdout.
    fn token_ok(&self, args: &[&str]) -> String {
        let out = self.token(args);
        succeeded(&out);
        stdout_of(&out)
    }

    /// GET `path` on the REST edge with `Authorization: Bearer KEY`.
    fn get(&self, path: &str, key: &str) -> Response {
        http_get(
            self.http.expect("this process serves REST"),
            path,
            Some(key),
        )
    }
}

/// Collects the server's stderr into `log` and reports its addresses on
/// `ready` once all it serves are known; keeps draining until the pipe closes.
/// Which listeners a `quotad` process announces.
#[derive(Clone, Copy)]
struct Serves {
    grpc: bool,
    http: bool,
}

fn read_log(
    stderr: ChildStderr,
    log: Arc<Mutex<String>>,
    serves: Serves,
    ready: mpsc::Sender<(Option<SocketAddr>, Option<SocketAddr>)>,
) -> JoinHandle<()> {
    std::thread::spawn(move || {
        let (mut grpc, mut http) = (None, None);
        let mut ready = Some(ready);
        for line in BufReader::new(stderr).lines() {
            let Ok(line) = line else { break };
            {
                let mut log = log.lock().unwrap();
                log.push_str(&line);
                log.push('\n');
            }
            grpc = grpc.or_else(|| address_after(&line, "gRPC listening on "));
            http = http.or_else(|| address_after(&line, "REST listening on http://"));
            if grpc.is_some() == serves.grpc
                && http.is_some() == serves.http
                && let Some(ready) = ready.take()
            {
                let _ = ready.send((grpc, http));
            }
        }
    })
}

/// The socket address that follows `marker` in a log line.
fn address_after(line: &str, marker: &str) -> Option<SocketAddr> {
    let (_, rest) = line.split_once(marker)?;
    rest.split_whitespace().next()?.parse().ok()
}

/// An HTTP response, split.
#[derive(Debug)]
struct Response {
    status: u16,
    /// Header lines, names lower-cased: `name: value`.
    headers: Vec<String>,
    body: String,
}

impl Response {
    fn header(&self, name: &str) -> Option<&str> {
        let prefix = format!("{}:", name.to_ascii_lowercase());
        self.headers
            .iter()
            .find_map(|h| h.strip_prefix(&prefix))
            .map(str::trim)
    }

    /// The `code` of an OpenAI-style error body.
    fn error_code(&self) -> String {
        let json: serde_json::Value = serde_json::from_str(&self.body)
            .unwrap_or_else(|e| panic!("error body is not JSON ({e}): {self:?}"));
        assert_eq!(json["error"]["type"], "invalid_request_error", "{self:?}");
        json["error"]["code"]
            .as_str()
            .unwrap_or_default()
            .to_owned()
    }
}

/// A minimal HTTP/1.1 GET: one request, `Connection: close`, read to the end.
fn http_get(addr: SocketAddr, path: &str, bearer: Option<&str>) -> Response {
    let mut stream =
        TcpStream::connect_timeout(&addr, Duration::from_secs(10)).expect("connect to REST edge");
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    stream
        .set_write_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let auth = bearer.map_or(String::new(), |k| format!("Authorization: Bearer {k}\r\n"));
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\n{auth}Accept: application/json\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw).expect("read the response");
    let raw = String::from_utf8(raw).expect("response is UTF-8");
    let (head, body) = raw
        .split_once("\r\n\r\n")
        .unwrap_or_else(|| panic!("no end of headers in {raw:?}"));
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap();
    let status = status_line
        .strip_prefix("HTTP/1.1 ")
        .and_then(|s| s.get(..3))
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("bad status line {status_line:?}"));
    let headers: Vec<String> = lines
        .map(|l| match l.split_once(':') {
            Some((name, value)) => format!("{}:{value}", name.to_ascii_lowercase()),
            None => l.to_owned(),
        })
        .collect();
    let response = Response {
        status,
        headers,
        body: body.to_owned(),
    };
    assert!(
        response
            .header("transfer-encoding")
            .is_none_or(|te| !te.contains("chunked")),
        "this client does not decode chunked bodies: {response:?}"
    );
    if let Some(length) = response.header("content-length") {
        assert_eq!(
            length.parse::<usize>().ok(),
            Some(response.body.len()),
            "{response:?}"
        );
    }
    response
}

/// Asserts a 200 with exactly the subscription body of a $`usd` key, on both
/// the `/v1` route and the one without it.
fn assert_subscription(server: &Server, key: &str, usd: i64) {
    for path in [
        "/v1/dashboard/billing/subscription",
        "/dashboard/billing/subscription",
    ] {
        let response = server.get(path, key);
        assert_eq!(response.status, 200, "GET {path}: {response:?}");
        assert_eq!(response.body, subscription_body(usd), "GET {path}");
        assert!(
            response
                .header("content-type")
                .is_some_and(|ct| ct.starts_with("application/json")),
            "GET {path}: {response:?}"
        );
    }
}

/// Asserts the key is refused with 401 `invalid_api_key`.
fn assert_refused(server: &Server, key: &str) {
    let response = server.get("/v1/dashboard/billing/subscription", key);
    assert_eq!(response.status, 401, "{response:?}");
    assert_eq!(response.error_code(), "invalid_api_key");
    assert!(
        response
            .header("www-authenticate")
            .is_some_and(|v| v.starts_with("Bearer")),
        "{response:?}"
    );
    assert!(
        !response.body.contains(key),
        "the key is echoed: {response:?}"
    );
}

/// `quotad token create --quota-usd USD`: checks that stdout is the key and
/// nothing else; returns the key and the id reported on stderr.
fn create_key(server: &Server, usd: &str) -> (String, i64) {
    let out = server.token(&["create", "--quota-usd", usd]);
    succeeded(&out);
    let stdout = stdout_of(&out);
    let key = stdout.trim_end_matches('\n');
    assert!(
        key.starts_with("sk-") && key.len() == 51 && !key.contains(char::is_whitespace),
        "stdout is not just a key\n{}",
        describe(&out)
    );
    assert_eq!(stdout, format!("{key}\n"), "stdout holds only the key");
    let stderr = stderr_of(&out);
    let id = stderr
        .split_once("created token ")
        .and_then(|(_, rest)| rest.split_whitespace().next())
        .and_then(|id| id.parse().ok())
        .unwrap_or_else(|| panic!("no id on stderr\n{}", describe(&out)));
    (key.to_owned(), id)
}

// ------------------------------------------------------------------ tests --

#[test]
fn serve_on_sqlite_and_manage_a_key_from_the_command_line() {
    let dir = TempDir::new();
    let server = Server::start(&dir.sqlite_url("quota.db"), dir.path());
    assert!(dir.path().join("quota.db").exists(), "SQLite file created");

    let (key, id) = create_key(&server, "5");
    assert_subscription(&server, &key, 5);

    // A grant adds to the limit.
    let granted = server.token_ok(&["grant", &key, "--quota-usd", "2"]);
    assert!(granted.contains("remaining: 3500000"), "{granted}");
    assert_subscription(&server, &key, 7);

    // Disabled: refused; enabled again: served again, limit unchanged.
    let disabled = server.token_ok(&["disable", &key]);
    assert!(disabled.contains("status: disabled"), "{disabled}");
    assert_refused(&server, &key);
    let enabled = server.token_ok(&["enable", &key]);
    assert!(enabled.contains("status: enabled"), "{enabled}");
    assert_subscription(&server, &key, 7);

    // `list` shows the display prefix, never the key.
    let list = server.token(&["list"]);
    succeeded(&list);
    let listed = stdout_of(&list);
    assert!(listed.contains(&key[..7]), "{listed}");
    assert!(!listed.contains(&key), "list leaks the key: {listed}");
    assert!(!stderr_of(&list).contains(&key), "{}", describe(&list));
    let row = listed
        .lines()
        .find(|l| l.split_whitespace().next() == Some(id.to_string().as_str()))
        .unwrap_or_else(|| panic!("no row with id {id}: {listed}"));
    assert!(row.contains("enabled") && row.contains("3500000"), "{row}");

    // `show` by id and by key.
    for by in [id.to_string(), key.clone()] {
        let shown = server.token_ok(&["show", &by]);
        assert!(shown.contains(&format!("id: {id}\n")), "{shown}");
        assert!(shown.contains(&format!("prefix: {}", &key[..7])), "{shown}");
        assert!(shown.contains("remaining: 3500000"), "{shown}");
        assert!(shown.contains("used: 0"), "{shown}");
        assert!(!shown.contains(&key), "show leaks the key: {shown}");
    }

    // Deleted: refused, and gone from the admin API.
    succeeded(&server.token(&["delete", &key]));
    assert_refused(&server, &key);
    let show = server.token(&["show", &id.to_string()]);
    assert!(!show.status.success(), "{}", describe(&show));
    let list = server.token_ok(&["list"]);
    assert!(!list.contains(&key[..7]), "{list}");

    let (status, log) = server.stop_with("TERM");
    assert!(status.success(), "{status}\n{log}");
    assert!(!log.contains(&key), "the key is in the server log:\n{log}");
}

#[test]
fn grpc_and_edge_run_as_two_processes() {
    let dir = TempDir::new();
    let mut grpc = quotad();
    grpc.args(["grpc", "--database-url", &dir.sqlite_url("quota.db")])
        .args(["--grpc-addr", "127.0.0.1:0"]);
    let service = Server::spawn(
        grpc,
        dir.path(),
        Serves {
            grpc: true,
            http: false,
        },
    );
    let (key, _) = create_key(&service, "5");

    let mut edge = quotad();
    edge.args(["edge", "--upstream", &service.grpc_url])
        .args(["--http-addr", "127.0.0.1:0"]);
    let edge = Server::spawn(
        edge,
        dir.path(),
        Serves {
            grpc: false,
            http: true,
        },
    );
    assert_subscription(&edge, &key, 5);
    assert_refused(&edge, &"sk-".repeat(17));

    // The edge alone stops cleanly; with its service gone it answers 503.
    let (status, _) = service.stop_with("TERM");
    assert!(status.success(), "quotad grpc: {status:?}");
    let response = edge.get("/v1/dashboard/billing/subscription", &key);
    assert_eq!(response.status, 503, "{response:?}");
    assert!(
        response.body.contains(r#""code":"service_unavailable""#),
        "{response:?}"
    );
    let (status, _) = edge.stop_with("TERM");
    assert!(status.success(), "quotad edge: {status:?}");
}

#[test]
fn edge_refuses_an_upstream_it_cannot_call() {
    for bad in ["127.0.0.1:50051", "https://127.0.0.1:50051", "http://"] {
        let mut cmd = quotad();
        cmd.args(["edge", "--upstream", bad, "--http-addr", "127.0.0.1:0"]);
        let out = run(cmd, COMMAND_TIMEOUT);
        let line = failed_with_one_line(&out);
        assert!(line.contains("--upstream"), "{bad}: {line}");
    }
}

#[test]
fn sigterm_and_ctrl_c_stop_the_server_with_exit_0() {
    for signal in ["TERM", "INT"] {
        let dir = TempDir::new();
        let server = Server::start(&dir.sqlite_url("quota.db"), dir.path());
        let (key, _) = create_key(&server, "1");
        assert_subscription(&server, &key, 1);
        let started = Instant::now();
        let (status, log) = server.stop_with(signal);
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "SIG{signal}: took {:?}\n{log}",
            started.elapsed()
        );
        assert_eq!(status.code(), Some(0), "SIG{signal}: {status}\n{log}");
        assert!(log.contains("stopped"), "SIG{signal}:\n{log}");
        assert!(!log.contains("panicked"), "SIG{signal}:\n{log}");
    }
}

#[test]
fn connections_that_send_nothing_do_not_hold_the_shutdown_open() {
    let dir = TempDir::new();
    let server = Server::start(&dir.sqlite_url("quota.db"), dir.path());
    // Clients that connected and never spoke, on both ports, and one that
    // sent half a request.
    let _silent_grpc = TcpStream::connect(server.grpc_url.trim_start_matches("http://")).unwrap();
    let _silent_rest = TcpStream::connect(server.http.unwrap()).unwrap();
    let mut half = TcpStream::connect(server.http.unwrap()).unwrap();
    half.write_all(b"GET /v1/dashboard/billing/subscription HTTP/1.1\r\nHost: x\r\n")
        .unwrap();
    // A whole request is still answered meanwhile.
    let response = http_get(
        server.http.unwrap(),
        "/v1/dashboard/billing/subscription",
        None,
    );
    assert_eq!(response.status, 401, "{response:?}");
    let (status, log) = server.stop_with("TERM");
    assert_eq!(status.code(), Some(0), "{status}\n{log}");
}

#[test]
fn a_signal_right_after_the_listeners_are_announced_is_a_clean_stop() {
    // The handlers must be in place before readiness is announced.
    for _ in 0..5 {
        let dir = TempDir::new();
        let server = Server::start(&dir.sqlite_url("quota.db"), dir.path());
        let (status, log) = server.stop_with("TERM");
        assert_eq!(status.code(), Some(0), "{status}\n{log}");
    }
}

#[test]
fn serve_fails_in_one_line_when_the_database_is_unreachable() {
    let dir = TempDir::new();
    let url = format!("postgres://nobody:hunter2@127.0.0.1:{}/x", closed_port());
    let mut cmd = quotad();
    cmd.args(["serve", "--database-url", &url])
        .args(["--grpc-addr", "127.0.0.1:0", "--http-addr", "127.0.0.1:0"])
        .current_dir(dir.path());
    // The pool retries a refused connection until its 10 s acquire timeout.
    let out = run(cmd, Duration::from_secs(90));
    let line = failed_with_one_line(&out);
    assert_eq!(stderr_of(&out).lines().count(), 1, "{}", describe(&out));
    assert!(line.contains("cannot open database"), "{line}");
    assert!(!line.contains("hunter2"), "the password is shown: {line}");
    assert!(line.contains("nobody:***@"), "{line}");
}

#[test]
fn serve_fails_in_one_line_on_an_unsupported_database_url() {
    let dir = TempDir::new();
    let mut cmd = quotad();
    cmd.args(["serve", "--database-url", "bogus://me:hunter2@x"])
        .args(["--grpc-addr", "127.0.0.1:0", "--http-addr", "127.0.0.1:0"])
        .current_dir(dir.path());
    let out = run(cmd, COMMAND_TIMEOUT);
    let line = failed_with_one_line(&out);
    assert_eq!(stderr_of(&out).lines().count(), 1, "{}", describe(&out));
    assert!(line.contains("bogus://me:***@x"), "{line}");
    assert!(!line.contains("hunter2"), "the password is shown: {line}");
}

#[test]
fn serve_fails_on_a_bad_listen_address() {
    let dir = TempDir::new();
    for (grpc, http, bad) in [
        ("notanaddr", "127.0.0.1:0", "notanaddr"),
        ("127.0.0.1:0", "127.0.0.1:99999", "127.0.0.1:99999"),
    ] {
        let mut cmd = quotad();
        cmd.args(["serve", "--database-url", &dir.sqlite_url("quota.db")])
            .args(["--grpc-addr", grpc, "--http-addr", http])
            .current_dir(dir.path());
        let out = run(cmd, COMMAND_TIMEOUT);
        let line = failed_with_one_line(&out);
        assert!(
            line.contains("cannot listen") && line.contains(bad),
            "{line}"
        );
    }
}

#[test]
fn an_unknown_flag_prints_the_usage() {
    let out = run(
        {
            let mut cmd = quotad();
            cmd.args(["serve", "--frobnicate"]);
            cmd
        },
        COMMAND_TIMEOUT,
    );
    assert_eq!(out.status.code(), Some(2), "{}", describe(&out));
    let stderr = stderr_of(&out);
    assert!(stderr.contains("--frobnicate"), "{stderr}");
    assert!(stderr.contains("Usage: quotad serve"), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
}

#[test]
fn token_commands_need_the_admin_token() {
    let mut cmd = quotad();
    cmd.env_remove("QUOTA_ADMIN_TOKEN")
        .args(["token", "list", "--server"])
        .arg(format!("http://127.0.0.1:{}", closed_port()));
    let out = run(cmd, COMMAND_TIMEOUT);
    let line = failed_with_one_line(&out);
    assert!(line.contains("QUOTA_ADMIN_TOKEN"), "{line}");
}

#[test]
fn token_commands_say_when_the_service_cannot_be_reached() {
    let server = format!("http://127.0.0.1:{}", closed_port());
    let mut cmd = quotad();
    cmd.args(["token", "create", "--quota-usd", "5", "--server", &server]);
    let out = run(cmd, COMMAND_TIMEOUT);
    let line = failed_with_one_line(&out);
    assert!(line.contains("cannot reach"), "{line}");
    assert!(line.contains(&server), "{line}");
    assert!(out.stdout.is_empty(), "{}", describe(&out));
}

#[test]
fn migrate_creates_the_sqlite_file_and_is_idempotent() {
    let dir = TempDir::new();
    let url = dir.sqlite_url("m.db");
    for _ in 0..2 {
        let mut cmd = quotad();
        cmd.args(["migrate", "--database-url", &url])
            .current_dir(dir.path());
        let out = run(cmd, COMMAND_TIMEOUT);
        succeeded(&out);
        assert!(
            stderr_of(&out).contains("migrations applied"),
            "{}",
            describe(&out)
        );
        assert!(dir.path().join("m.db").is_file());
    }
    assert!(
        !dir.path().join("quota.db").exists(),
        "the default database was created"
    );
}

#[test]
fn help_names_the_commands_and_flags() {
    let help = |args: &[&str]| {
        let mut cmd = quotad();
        cmd.args(args);
        let out = run(cmd, COMMAND_TIMEOUT);
        succeeded(&out);
        stdout_of(&out)
    };
    let top = help(&["--help"]);
    for word in ["serve", "grpc", "edge", "migrate", "token"] {
        assert!(top.contains(word), "quotad --help lacks {word}:\n{top}");
    }
    let serve = help(&["serve", "--help"]);
    for flag in [
        "--database-url",
        "--grpc-addr",
        "--http-addr",
        "--admin-token",
    ] {
        assert!(serve.contains(flag), "serve --help lacks {flag}:\n{serve}");
    }
    let migrate = help(&["migrate", "--help"]);
    assert!(migrate.contains("--database-url"), "{migrate}");
    let create = help(&["token", "create", "--help"]);
    for flag in [
        "--quota-usd",
        "--quota ",
        "--unlimited",
        "--expires-at",
        "--name",
        "--server",
    ] {
        assert!(
            create.contains(flag),
            "token create --help lacks {flag}:\n{create}"
        );
    }
}

#[test]
fn serve_on_postgres_when_configured() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    // Declared before the server, so on every path the server is killed
    // before the database is dropped.
    let Some(db) = rt.block_on(quota_service::testing::TestDb::postgres()) else {
        eprintln!(
            "skipped: QUOTA_TEST_POSTGRES_URL is not set, so quotad serve was not run on PostgreSQL"
        );
        return;
    };
    let dir = TempDir::new();
    let server = Server::start(&db.url, dir.path());
    let (key, _) = create_key(&server, "5");
    assert_subscription(&server, &key, 5);
    succeeded(&server.token(&["grant", &key, "--quota-usd", "2"]));
    assert_subscription(&server, &key, 7);
    let (status, log) = server.stop_with("TERM");
    assert!(status.success(), "{status}\n{log}");
    drop(db);
}

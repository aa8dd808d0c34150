//! What every test of the binary shares: the `quotad` command, child
//! processes owned by guards, servers started on port 0 whose readiness is
//! read from their log, a minimal HTTP/1.1 client and the assertions on it.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStderr, Command, ExitStatus, Output, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, mpsc};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// The admin credential every server and `token` command here uses.
pub const ADMIN: &str = "cli-test-admin-secret";
/// How long a server may take to announce both listeners.
pub const READY_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a one-shot command (`token ...`, `migrate`, `--help`) may take.
pub const COMMAND_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a server may take to exit after SIGTERM or SIGINT: its 10 s
/// grace for requests in flight, and a margin.
pub const STOP_TIMEOUT: Duration = Duration::from_secs(25);

/// The exact body for a $`usd` token that never expires.
pub fn subscription_body(usd: i64) -> String {
    subscription_until(usd, 0)
}

/// The exact body for a $`usd` token that expires at `access_until`.
pub fn subscription_until(usd: i64, access_until: i64) -> String {
    format!(
        r#"{{"object":"billing_subscription","has_payment_method":true,"soft_limit_usd":{usd},"hard_limit_usd":{usd},"system_hard_limit_usd":{usd},"access_until":{access_until}}}"#
    )
}

/// `quotad` with a clean environment: no `QUOTA_*` variable of the test
/// runner leaks in; the admin credential and info logging are set.
pub fn quotad() -> Command {
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
pub struct TempDir(PathBuf);

impl TempDir {
    pub fn new() -> TempDir {
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

    pub fn path(&self) -> &Path {
        &self.0
    }

    /// `sqlite://DIR/FILE`.
    pub fn sqlite_url(&self, file: &str) -> String {
        format!("sqlite://{}/{file}", self.0.display())
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A child process that is killed (if still running) and reaped on drop.
pub struct ChildGuard(Child);

impl ChildGuard {
    /// The exit status, or `None` if it is still running after `limit`.
    pub fn wait_timeout(&mut self, limit: Duration) -> Option<ExitStatus> {
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
pub fn drain(mut pipe: impl Read + Send + 'static) -> JoinHandle<Vec<u8>> {
    std::thread::spawn(move || {
        let mut bytes = Vec::new();
        let _ = pipe.read_to_end(&mut bytes);
        bytes
    })
}

/// Runs a one-shot command to its end, failing the test if it takes longer
/// than `limit` (the child is killed then).
pub fn run(mut cmd: Command, limit: Duration) -> Output {
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
pub fn describe(out: &Output) -> String {
    format!(
        "status: {}\n--- stdout ---\n{}\n--- stderr ---\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

pub fn stdout_of(out: &Output) -> String {
    String::from_utf8(out.stdout.clone()).expect("stdout is UTF-8")
}

pub fn stderr_of(out: &Output) -> String {
    String::from_utf8(out.stderr.clone()).expect("stderr is UTF-8")
}

/// Whether `text` has a line that is exactly `line`.
pub fn has_line(text: &str, line: &str) -> bool {
    text.lines().any(|l| l == line)
}

/// Asserts the command succeeded.
pub fn succeeded(out: &Output) {
    assert!(out.status.success(), "expected success\n{}", describe(out));
}

/// Asserts a failure that is reported the way the contract says: a non-zero
/// exit, no panic, exactly one `quotad: ...` line. Returns that line.
pub fn failed_with_one_line(out: &Output) -> String {
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

/// A port on 127.0.0.1 that refuses connections for as long as this lives:
/// its socket is bound, so nothing else can take the port, and never listens.
pub struct ClosedPort(tokio::net::TcpSocket);

impl ClosedPort {
    pub fn new() -> ClosedPort {
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        socket.bind("127.0.0.1:0".parse().unwrap()).unwrap();
        ClosedPort(socket)
    }

    pub fn port(&self) -> u16 {
        self.0.local_addr().unwrap().port()
    }
}

/// A running `quotad serve`, killed when dropped.
pub struct Server {
    pub child: ChildGuard,
    /// `http://127.0.0.1:PORT` of the gRPC API, for `--server` (`quotad serve`, `grpc`).
    pub grpc_url: String,
    /// The REST edge (`quotad serve`, `edge`).
    pub http: Option<SocketAddr>,
    /// Everything it has written on stderr so far.
    pub log: Arc<Mutex<String>>,
    pub reader: Option<JoinHandle<()>>,
}

impl Server {
    /// Starts `quotad serve` on `database_url` with both listeners on port 0,
    /// in `cwd`, and returns once both addresses are announced.
    pub fn start(database_url: &str, cwd: &Path) -> Server {
        Server::serve(quotad(), database_url, &[], cwd)
    }

    /// Starts `cmd` (a `quotad` with its environment, no argument yet) as
    /// `serve` on `database_url` with both listeners on port 0 and `flags`
    /// after them, in `cwd`, and returns once both addresses are announced.
    pub fn serve(mut cmd: Command, database_url: &str, flags: &[&str], cwd: &Path) -> Server {
        cmd.args(["serve", "--database-url", database_url])
            .args(["--grpc-addr", "127.0.0.1:0", "--http-addr", "127.0.0.1:0"])
            .args(flags);
        Server::spawn(cmd, cwd, Serves::BOTH)
    }

    /// Starts a `quotad` command that serves what `serves` says, and returns
    /// once it has announced those listeners.
    pub fn spawn(mut cmd: Command, cwd: &Path, serves: Serves) -> Server {
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

    pub fn pid(&self) -> u32 {
        self.child.0.id()
    }

    /// Sends `signal` (`TERM`, `INT`) with the `kill` command.
    pub fn signal(&self, signal: &str) {
        let status = Command::new("kill")
            .arg(format!("-{signal}"))
            .arg(self.pid().to_string())
            .status()
            .expect("run kill");
        assert!(status.success(), "kill -{signal} {} failed", self.pid());
    }

    /// Sends `signal` and returns the exit status and the whole log, failing
    /// the test if the server does not exit within [`STOP_TIMEOUT`].
    pub fn stop_with(self, signal: &str) -> (ExitStatus, String) {
        self.signal(signal);
        self.exited()
    }

    /// Waits for the exit after a signal already sent; returns the exit
    /// status and the whole log, failing the test after [`STOP_TIMEOUT`].
    pub fn exited(mut self) -> (ExitStatus, String) {
        let Some(status) = self.child.wait_timeout(STOP_TIMEOUT) else {
            panic!(
                "quotad still running {STOP_TIMEOUT:?} after the signal; stderr:\n{}",
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
    pub fn token(&self, args: &[&str]) -> Output {
        let mut cmd = quotad();
        cmd.arg("token")
            .args(args)
            .args(["--server", &self.grpc_url]);
        run(cmd, COMMAND_TIMEOUT)
    }

    /// `quotad token ARGS` that must succeed; its stdout.
    pub fn token_ok(&self, args: &[&str]) -> String {
        let out = self.token(args);
        succeeded(&out);
        stdout_of(&out)
    }

    /// GET `path` on the REST edge with `Authorization: Bearer KEY`.
    pub fn get(&self, path: &str, key: &str) -> Response {
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
pub struct Serves {
    pub grpc: bool,
    pub http: bool,
}

impl Serves {
    /// `quotad grpc`: the gRPC listener alone.
    pub const GRPC: Serves = Serves {
        grpc: true,
        http: false,
    };
    /// `quotad serve`: both.
    pub const BOTH: Serves = Serves {
        grpc: true,
        http: true,
    };
    /// `quotad edge`: the REST listener alone.
    pub const HTTP: Serves = Serves {
        grpc: false,
        http: true,
    };
}

pub fn read_log(
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
            http = http
                .or_else(|| address_after(&line, "REST listening on http://"))
                .or_else(|| address_after(&line, "REST listening on https://"));
            if grpc.is_some() == serves.grpc
                && http.is_some() == serves.http
                && let Some(ready) = ready.take()
            {
                let _ = ready.send((grpc, http));
            }
        }
    })
}

/// The socket address that follows `marker` in a log line (text or JSON).
pub fn address_after(line: &str, marker: &str) -> Option<SocketAddr> {
    let (_, rest) = line.split_once(marker)?;
    let end = rest
        .find(|c: char| !(c.is_ascii_alphanumeric() || matches!(c, '.' | ':' | '[' | ']')))
        .unwrap_or(rest.len());
    rest[..end].parse().ok()
}

/// An HTTP response, split.
#[derive(Debug)]
pub struct Response {
    pub status: u16,
    /// Header lines, names lower-cased: `name: value`.
    pub headers: Vec<String>,
    pub body: String,
}

impl Response {
    pub fn header(&self, name: &str) -> Option<&str> {
        let prefix = format!("{}:", name.to_ascii_lowercase());
        self.headers
            .iter()
            .find_map(|h| h.strip_prefix(&prefix))
            .map(str::trim)
    }

    /// The `code` of an OpenAI-style error body.
    pub fn error_code(&self) -> String {
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
pub fn http_get(addr: SocketAddr, path: &str, bearer: Option<&str>) -> Response {
    let auth = bearer.map(|k| format!("Bearer {k}"));
    let headers: Vec<(&str, &str)> = auth.iter().map(|a| ("Authorization", a.as_str())).collect();
    http_request(addr, "GET", path, &headers)
}

/// One HTTP/1.1 request with `headers`, `Connection: close`, read to the end.
pub fn http_request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
) -> Response {
    let mut stream =
        TcpStream::connect_timeout(&addr, Duration::from_secs(10)).expect("connect to REST edge");
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    stream
        .set_write_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let extra: String = headers
        .iter()
        .map(|(name, value)| format!("{name}: {value}\r\n"))
        .collect();
    write!(
        stream,
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\n{extra}Accept: application/json\r\nConnection: close\r\n\r\n"
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
pub fn assert_subscription(server: &Server, key: &str, usd: i64) {
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
pub fn assert_refused(server: &Server, key: &str) {
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
pub fn create_key(server: &Server, usd: &str) -> (String, i64) {
    created_key(&server.token(&["create", "--quota-usd", usd]))
}

/// The key on stdout (and nothing else) and the id on stderr of a
/// successful `quotad token create`.
pub fn created_key(out: &Output) -> (String, i64) {
    succeeded(out);
    let stdout = stdout_of(out);
    let key = stdout.trim_end_matches('\n');
    assert!(
        key.starts_with("sk-") && key.len() == 51 && !key.contains(char::is_whitespace),
        "stdout is not just a key\n{}",
        describe(out)
    );
    assert_eq!(stdout, format!("{key}\n"), "stdout holds only the key");
    let stderr = stderr_of(out);
    let id = stderr
        .split_once("created token ")
        .and_then(|(_, rest)| rest.split_whitespace().next())
        .and_then(|id| id.parse().ok())
        .unwrap_or_else(|| panic!("no id on stderr\n{}", describe(out)));
    (key.to_owned(), id)
}

/// One `Consume` call to the gRPC service at `grpc_url`, with the admin
/// credential, on a runtime of its own.
pub fn consume(
    grpc_url: &str,
    key: &str,
    quota: i64,
    request_id: &str,
) -> Result<quota::pb::ConsumeResponse, tonic::Status> {
    use quota::pb::quota_service_client::QuotaServiceClient;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let channel = tonic::transport::Endpoint::from_shared(grpc_url.to_owned())
            .unwrap()
            .timeout(COMMAND_TIMEOUT)
            .connect()
            .await
            .map_err(|e| tonic::Status::unavailable(e.to_string()))?;
        let mut request = tonic::Request::new(quota::pb::ConsumeRequest {
            token: key.to_owned(),
            quota,
            request_id: request_id.to_owned(),
        });
        request
            .metadata_mut()
            .insert("authorization", format!("Bearer {ADMIN}").parse().unwrap());
        Ok(QuotaServiceClient::new(channel)
            .consume(request)
            .await?
            .into_inner())
    })
}

//! Processes of the built `quotad`, and gRPC clients for them.

use quota::pb::quota_service_client::QuotaServiceClient;
use quota::pb::token_admin_client::TokenAdminClient;
use quota::pb::{ConsumeRequest, ConsumeResponse, CreateTokenRequest};
use std::io::{BufRead, BufReader, Read};
use std::net::SocketAddr;
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::{Arc, Mutex, mpsc};
use std::time::{Duration, Instant};
use tonic::transport::Channel;

/// The admin credential of every server here.
pub const ADMIN: &str = "faults-test-admin-secret";
/// How long a server may take to announce its listeners.
const READY_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a one-shot command may take.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(30);

/// `quotad` with no `QUOTA_*` variable of the test runner, the admin
/// credential set and reads never cached (each request reaches the database).
pub fn quotad() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_quotad"));
    for (name, _) in std::env::vars_os() {
        if name.to_string_lossy().starts_with("QUOTA_") {
            cmd.env_remove(name);
        }
    }
    cmd.env("QUOTA_ADMIN_TOKEN", ADMIN)
        .env("QUOTA_CACHE_TTL", "0")
        .env("QUOTA_LOG", "info")
        .stdin(Stdio::null());
    cmd
}

/// A running `quotad serve` on port 0, killed when dropped.
pub struct Server {
    child: Child,
    /// The gRPC listener.
    pub grpc: SocketAddr,
    /// The REST listener.
    pub http: SocketAddr,
    log: Arc<Mutex<String>>,
}

impl Server {
    /// [`Server::serve`] from async code (it blocks until the server is ready).
    pub async fn start(database_url: &str) -> Server {
        tokio::task::block_in_place(|| Server::serve(database_url))
    }

    /// `quotad serve --database-url URL`, once both listeners are announced.
    pub fn serve(database_url: &str) -> Server {
        let mut child = quotad()
            .args(["serve", "--database-url", database_url])
            .args(["--grpc-addr", "127.0.0.1:0", "--http-addr", "127.0.0.1:0"])
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start quotad serve");
        let stderr = child.stderr.take().unwrap();
        let log = Arc::new(Mutex::new(String::new()));
        let (ready_tx, ready) = mpsc::channel();
        let lines = Arc::clone(&log);
        std::thread::spawn(move || {
            let (mut grpc, mut http) = (None, None);
            let mut ready_tx = Some(ready_tx);
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                grpc = grpc.or_else(|| address_after(&line, "gRPC listening on "));
                http = http.or_else(|| address_after(&line, "REST listening on http://"));
                lines.lock().unwrap().push_str(&format!("{line}\n"));
                if let (Some(g), Some(h)) = (grpc, http)
                    && let Some(tx) = ready_tx.take()
                {
                    let _ = tx.send((g, h));
                }
            }
        });
        let Ok((grpc, http)) = ready.recv_timeout(READY_TIMEOUT) else {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "quotad serve did not announce its listeners; stderr:\n{}",
                log.lock().unwrap()
            );
        };
        Server {
            child,
            grpc,
            http,
            log,
        }
    }

    /// Its process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Sends `signal` (`TERM`, `KILL`, ...).
    pub fn signal(&self, signal: &str) {
        let status = Command::new("kill")
            .arg(format!("-{signal}"))
            .arg(self.pid().to_string())
            .status()
            .expect("run kill");
        assert!(status.success(), "kill -{signal} {}", self.pid());
    }

    /// Waits for the process to end, at most `limit`.
    pub fn wait(&mut self, limit: Duration) -> ExitStatus {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(status) = self.child.try_wait().expect("poll quotad") {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "quotad still running after {limit:?}; stderr:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// What it has written on stderr so far.
    pub fn log(&self) -> String {
        self.log.lock().unwrap().clone()
    }

    /// A gRPC channel to it.
    pub async fn channel(&self) -> Channel {
        Channel::from_shared(format!("http://{}", self.grpc))
            .unwrap()
            .connect()
            .await
            .expect("connect to quotad")
    }

    /// Mints a key worth `units`; returns the key and its id.
    pub async fn create_token(&self, units: i64) -> (String, i64) {
        let created = TokenAdminClient::new(self.channel().await)
            .create_token(admin(CreateTokenRequest {
                name: "faults".into(),
                quota: units,
                ..Default::default()
            }))
            .await
            .expect("create a token")
            .into_inner();
        (created.key, created.token.expect("the token").id)
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
        }
        let _ = self.child.wait();
    }
}

fn address_after(line: &str, marker: &str) -> Option<SocketAddr> {
    let (_, rest) = line.split_once(marker)?;
    rest.split_whitespace().next()?.parse().ok()
}

/// `message` with the admin credential.
pub fn admin<T>(message: T) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    request.metadata_mut().insert(
        "authorization",
        format!("Bearer {ADMIN}").parse().expect("ascii"),
    );
    request
}

/// Debits one unit from `key` under `request_id`.
pub async fn consume(
    client: &mut QuotaServiceClient<Channel>,
    key: &str,
    request_id: &str,
) -> Result<ConsumeResponse, tonic::Status> {
    client
        .consume(admin(ConsumeRequest {
            token: key.to_owned(),
            quota: 1,
            request_id: request_id.to_owned(),
        }))
        .await
        .map(tonic::Response::into_inner)
}

/// `quotad verify --database-url URL`, run to its end.
pub fn verify(database_url: &str) -> Output {
    let mut child = quotad()
        .args(["verify", "--database-url", database_url])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start quotad verify");
    let drain = |mut pipe: Box<dyn Read + Send>| {
        std::thread::spawn(move || {
            let mut text = Vec::new();
            let _ = pipe.read_to_end(&mut text);
            text
        })
    };
    let stdout = drain(Box::new(child.stdout.take().unwrap()));
    let stderr = drain(Box::new(child.stderr.take().unwrap()));
    let deadline = Instant::now() + COMMAND_TIMEOUT;
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("quotad verify did not finish within {COMMAND_TIMEOUT:?}");
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    Output {
        status,
        stdout: stdout.join().unwrap(),
        stderr: stderr.join().unwrap(),
    }
}

/// Exit status, stdout and stderr, for assertion messages.
pub fn describe(out: &Output) -> String {
    format!(
        "{}\n--- stdout ---\n{}--- stderr ---\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// An answer of the REST edge, whole.
#[derive(Debug)]
pub struct Answer {
    /// The HTTP status.
    pub status: u16,
    /// The body.
    pub body: String,
}

/// `GET /v1/dashboard/billing/subscription` with `key`, on a connection of
/// its own (`Connection: close`), read to its end.
pub async fn subscription(http: SocketAddr, key: &str) -> Answer {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(http).await.unwrap();
    let request = format!(
        "GET /v1/dashboard/billing/subscription HTTP/1.1\r\nHost: {http}\r\n\
         Authorization: Bearer {key}\r\nConnection: close\r\n\r\n"
    );
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut raw = Vec::new();
    tokio::time::timeout(Duration::from_secs(30), stream.read_to_end(&mut raw))
        .await
        .expect("an answer within 30 s")
        .unwrap();
    let raw = String::from_utf8(raw).unwrap();
    let (head, body) = raw.split_once("\r\n\r\n").unwrap();
    Answer {
        status: head[9..12].parse().unwrap(),
        body: body.to_owned(),
    }
}

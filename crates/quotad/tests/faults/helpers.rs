//! Processes of the built `quotad`, and gRPC clients for them, on the
//! helpers every suite of the binary shares (`../cli/helpers.rs`).

pub use crate::common::{ADMIN, describe};
use crate::common::{COMMAND_TIMEOUT, quotad as plain_quotad, run};
use quota::pb::quota_service_client::QuotaServiceClient;
use quota::pb::token_admin_client::TokenAdminClient;
use quota::pb::{ConsumeRequest, ConsumeResponse, CreateTokenRequest};
use std::env::temp_dir;
use std::net::SocketAddr;
use std::process::{Command, ExitStatus, Output};
use std::time::Duration;
use tonic::transport::Channel;

/// `quotad` with no `QUOTA_*` variable of the test runner, the admin
/// credential set and reads never cached (each request reaches the database).
pub fn quotad() -> Command {
    let mut cmd = plain_quotad();
    cmd.env("QUOTA_CACHE_TTL", "0");
    cmd
}

/// A running `quotad serve` on port 0, killed when dropped.
pub struct Server {
    process: crate::common::Server,
    /// The REST listener.
    pub http: SocketAddr,
}

impl Server {
    /// [`Server::serve`] from async code (it blocks until the server is ready).
    pub async fn start(database_url: &str) -> Server {
        tokio::task::block_in_place(|| Server::serve(database_url))
    }

    /// `quotad serve --database-url URL`, once both listeners are announced.
    pub fn serve(database_url: &str) -> Server {
        let process = crate::common::Server::serve(quotad(), database_url, &[], &temp_dir());
        let http = process.http.expect("the REST listener");
        Server { process, http }
    }

    /// Sends `signal` (`TERM`, `KILL`, ...).
    pub fn signal(&self, signal: &str) {
        self.process.signal(signal);
    }

    /// Waits for the process to end, at most `limit`.
    pub fn wait(&mut self, limit: Duration) -> ExitStatus {
        match self.process.child.wait_timeout(limit) {
            Some(status) => status,
            None => panic!(
                "quotad still running after {limit:?}; stderr:\n{}",
                self.log()
            ),
        }
    }

    /// What it has written on stderr so far.
    pub fn log(&self) -> String {
        self.process.log.lock().unwrap().clone()
    }

    /// A gRPC channel to it.
    pub async fn channel(&self) -> Channel {
        Channel::from_shared(self.process.grpc_url.clone())
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
    let mut cmd = quotad();
    cmd.args(["verify", "--database-url", database_url]);
    run(cmd, COMMAND_TIMEOUT)
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
    request(
        http,
        "/v1/dashboard/billing/subscription",
        &format!("Authorization: Bearer {key}\r\n"),
    )
    .await
}

/// `GET path` without credentials, as [`subscription`] sends it.
pub async fn get(http: SocketAddr, path: &str) -> Answer {
    request(http, path, "").await
}

async fn request(http: SocketAddr, path: &str, headers: &str) -> Answer {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(http).await.unwrap();
    let request =
        format!("GET {path} HTTP/1.1\r\nHost: {http}\r\n{headers}Connection: close\r\n\r\n");
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

/// How soon a database that went away is answered as unavailable.
pub const UNAVAILABLE_WITHIN: Duration = Duration::from_secs(3);
/// How soon the service serves again once the database is back.
pub const RECOVERED_WITHIN: Duration = Duration::from_secs(5);

/// While the database is away: a REST read is 503 `service_unavailable` and
/// a debit (under `request_id`) UNAVAILABLE, each within [`UNAVAILABLE_WITHIN`];
/// how long each took.
pub async fn assert_unavailable(
    server: &Server,
    grpc: &mut QuotaServiceClient<Channel>,
    key: &str,
    request_id: &str,
) -> (Duration, Duration) {
    let started = std::time::Instant::now();
    let answer = subscription(server.http, key).await;
    let rest_took = started.elapsed();
    assert_eq!(answer.status, 503, "{answer:?}");
    assert!(answer.body.contains("service_unavailable"), "{answer:?}");
    assert!(rest_took < UNAVAILABLE_WITHIN, "503 after {rest_took:?}");
    let started = std::time::Instant::now();
    let status = consume(grpc, key, request_id).await.unwrap_err();
    let grpc_took = started.elapsed();
    assert_eq!(status.code(), tonic::Code::Unavailable, "{status:?}");
    assert!(
        grpc_took < UNAVAILABLE_WITHIN,
        "UNAVAILABLE after {grpc_took:?}"
    );
    (rest_took, grpc_took)
}

/// Reads `key` until it is served again (503 meanwhile), failing past
/// [`RECOVERED_WITHIN`] from `back` (when the database came back); how
/// long that took.
pub async fn read_again(server: &Server, key: &str, back: std::time::Instant) -> Duration {
    loop {
        let answer = subscription(server.http, key).await;
        if answer.status == 200 {
            return back.elapsed();
        }
        assert_eq!(answer.status, 503, "{answer:?}");
        assert!(
            back.elapsed() < RECOVERED_WITHIN,
            "still {} {:?} after the database came back; stderr:\n{}",
            answer.status,
            back.elapsed(),
            server.log()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

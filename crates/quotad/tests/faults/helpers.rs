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

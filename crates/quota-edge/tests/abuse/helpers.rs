//! An edge on port 0 in front of a fake upstream that counts its calls, and
//! a raw HTTP/1.1 client that can send what a well-behaved client would not.

use quota::pb;
use quota::pb::quota_service_server::{QuotaService, QuotaServiceServer};
use quota_edge::{EdgeConfig, ServerTls, Upstream, app_with};
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpSocket};
use tokio::sync::{Semaphore, oneshot};
use tokio_stream::wrappers::TcpListenerStream;
use tonic::Status;

/// The one key the fake upstream accepts.
pub const VALID_KEY: &str = "sk-validvalidvalidvalidvalidvalidvalidvalidvalidvali";

/// An upstream that knows one key, counts every call, and, when gated,
/// holds each call until the test lets it through.
#[derive(Clone)]
pub struct Fake {
    pub calls: Arc<AtomicUsize>,
    pub gate: Option<Arc<Semaphore>>,
}

impl Fake {
    async fn answer(&self, request: &tonic::Request<impl Sized>) -> Result<(), Status> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        if let Some(gate) = &self.gate {
            gate.acquire().await.unwrap().forget();
        }
        let auth = request.metadata().get("authorization");
        let credential = auth
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.split_once(' '))
            .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
            .map(|(_, key)| key);
        if credential == Some(VALID_KEY) {
            Ok(())
        } else {
            Err(Status::unauthenticated("unknown API key"))
        }
    }
}

#[tonic::async_trait]
impl QuotaService for Fake {
    async fn get_subscription(
        &self,
        request: tonic::Request<pb::GetSubscriptionRequest>,
    ) -> Result<tonic::Response<pb::Subscription>, Status> {
        self.answer(&request).await?;
        Ok(tonic::Response::new(pb::Subscription {
            object: "billing_subscription".into(),
            has_payment_method: true,
            soft_limit_usd: 5,
            hard_limit_usd: 5,
            system_hard_limit_usd: 5,
            ..Default::default()
        }))
    }
    async fn get_usage(
        &self,
        request: tonic::Request<pb::GetUsageRequest>,
    ) -> Result<tonic::Response<pb::Usage>, Status> {
        self.answer(&request).await?;
        Ok(tonic::Response::new(pb::Usage {
            object: "list".into(),
            ..Default::default()
        }))
    }
    async fn consume(
        &self,
        _: tonic::Request<pb::ConsumeRequest>,
    ) -> Result<tonic::Response<pb::ConsumeResponse>, Status> {
        Err(Status::unimplemented("not here"))
    }
    async fn reserve(
        &self,
        _: tonic::Request<pb::ReserveRequest>,
    ) -> Result<tonic::Response<pb::ReserveResponse>, Status> {
        Err(Status::unimplemented("not here"))
    }
    async fn settle(
        &self,
        _: tonic::Request<pb::SettleRequest>,
    ) -> Result<tonic::Response<pb::SettleResponse>, Status> {
        Err(Status::unimplemented("not here"))
    }
    async fn release(
        &self,
        _: tonic::Request<pb::ReleaseRequest>,
    ) -> Result<tonic::Response<pb::ReleaseResponse>, Status> {
        Err(Status::unimplemented("not here"))
    }
}

/// An edge serving on 127.0.0.1, port 0, until dropped.
pub struct Edge {
    pub addr: SocketAddr,
    pub calls: Arc<AtomicUsize>,
    _stop: oneshot::Sender<()>,
}

impl Edge {
    pub fn calls(&self) -> usize {
        self.calls.load(Ordering::SeqCst)
    }
}

/// The URL of `fake` served on port 0 for as long as the test runs.
pub async fn spawn_upstream(fake: Fake) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(QuotaServiceServer::new(fake))
            .serve_with_incoming(TcpListenerStream::new(listener)),
    );
    url
}

/// An edge with `config` in front of a fake upstream (gated by `gate`).
pub async fn spawn_edge_with(
    config: EdgeConfig,
    gate: Option<Arc<Semaphore>>,
    tls: Option<ServerTls>,
) -> Edge {
    let calls = Arc::new(AtomicUsize::new(0));
    let url = spawn_upstream(Fake {
        calls: calls.clone(),
        gate,
    })
    .await;
    let router = app_with(Upstream::lazy(&url).unwrap(), config);
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop, stopped) = oneshot::channel::<()>();
    tokio::spawn(quota_edge::serve_with(listener, router, tls, async {
        let _ = stopped.await;
    }));
    Edge {
        addr,
        calls,
        _stop: stop,
    }
}

pub async fn spawn_edge(config: EdgeConfig) -> Edge {
    spawn_edge_with(config, None, None).await
}

/// An HTTP response as read off the wire.
#[derive(Debug)]
pub struct Reply {
    pub status: u16,
    pub head: String,
    pub body: String,
}

impl Reply {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.head.lines().find_map(|line| {
            let (n, v) = line.split_once(':')?;
            n.eq_ignore_ascii_case(name).then(|| v.trim())
        })
    }

    /// The OpenAI-shaped error code of the body.
    pub fn code(&self) -> String {
        let v: serde_json::Value =
            serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("not JSON ({e}): {self:?}"));
        v["error"]["code"].as_str().unwrap_or_default().to_owned()
    }
}

/// `GET path` with `headers`, as one request on its own connection.
pub fn get(path: &str, headers: &[(&str, &str)]) -> Vec<u8> {
    let mut raw = format!("GET {path} HTTP/1.1\r\nHost: edge\r\nConnection: close\r\n");
    for (name, value) in headers {
        raw.push_str(&format!("{name}: {value}\r\n"));
    }
    raw.push_str("\r\n");
    raw.into_bytes()
}

/// The subscription route with `key`.
pub fn subscription(key: &str) -> Vec<u8> {
    get(
        "/v1/dashboard/billing/subscription",
        &[("Authorization", &format!("Bearer {key}"))],
    )
}

/// Sends `raw` to `edge` from the local address `from`, reads the answer.
pub async fn send_from(from: IpAddr, edge: SocketAddr, raw: &[u8]) -> Reply {
    let socket = TcpSocket::new_v4().unwrap();
    socket.bind(SocketAddr::new(from, 0)).unwrap();
    let stream = socket.connect(edge).await.unwrap();
    exchange(stream, raw).await
}

pub async fn send(edge: SocketAddr, raw: &[u8]) -> Reply {
    send_from([127, 0, 0, 1].into(), edge, raw).await
}

/// Writes `raw`, then reads until the server closes (or, after a complete
/// head with a Content-Length, until the body is in).
pub async fn exchange(mut stream: impl AsyncRead + AsyncWrite + Unpin, raw: &[u8]) -> Reply {
    // The server may answer (and close) before it has read all of `raw`.
    let _ = stream.write_all(raw).await;
    let _ = stream.flush().await;
    let mut bytes = Vec::new();
    let mut buf = [0u8; 8192];
    loop {
        match stream.read(&mut buf).await {
            Ok(0) => break,
            Ok(n) => bytes.extend_from_slice(&buf[..n]),
            Err(_) if !bytes.is_empty() => break,
            Err(e) => panic!("reading the answer: {e}"),
        }
        if complete(&bytes) {
            break;
        }
    }
    let text = String::from_utf8_lossy(&bytes).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no status line in {text:?}"));
    Reply {
        status,
        head: head.to_owned(),
        body: body.to_owned(),
    }
}

fn complete(bytes: &[u8]) -> bool {
    let text = String::from_utf8_lossy(bytes);
    let Some((head, body)) = text.split_once("\r\n\r\n") else {
        return false;
    };
    head.lines()
        .find_map(|line| {
            let (n, v) = line.split_once(':')?;
            n.eq_ignore_ascii_case("content-length")
                .then(|| v.trim().parse::<usize>().ok())?
        })
        .is_some_and(|len| body.len() >= len)
}

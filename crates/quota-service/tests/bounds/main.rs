//! The gRPC server's bounds: an oversized message is refused by tonic at
//! the door, one that does not decode is INVALID_ARGUMENT, past
//! `max_concurrency` a call is refused at once with UNAVAILABLE, and the
//! server serves on afterwards.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use quota::pb;
use quota::pb::quota_service_client::QuotaServiceClient;
use quota::pb::token_admin_client::TokenAdminClient;
use quota_service::store::NewToken;
use quota_service::testing::{TEST_ADMIN_TOKEN, TestDb, test_config};
use quota_service::{QuotaApi, ServerOptions, Store, serve_with};
use sea_orm::TransactionTrait;
use std::net::SocketAddr;
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tonic::transport::Channel;
use tonic::{Code, Request};

/// A server with `options` on port 0, stopped when the sender drops.
async fn spawn(store: Store, options: ServerOptions) -> (SocketAddr, oneshot::Sender<()>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop, stopped) = oneshot::channel::<()>();
    let api = QuotaApi::new(store, test_config());
    tokio::spawn(serve_with(listener, api, options, async {
        let _ = stopped.await;
    }));
    (addr, stop)
}

async fn channel(addr: SocketAddr) -> Channel {
    Channel::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect()
        .await
        .unwrap()
}

fn with_bearer<T>(message: T, credential: &str) -> Request<T> {
    let mut request = Request::new(message);
    request.metadata_mut().insert(
        "authorization",
        format!("Bearer {credential}").parse().unwrap(),
    );
    request
}

/// The key of a new token of one unit.
async fn one_unit_key(store: &Store) -> String {
    let new = NewToken {
        quota: 1,
        ..NewToken::default()
    };
    let (_, key) = store.create_token(new, 0).await.unwrap();
    key.expose().to_owned()
}

async fn subscription(channel: &Channel, key: &str) -> Result<pb::Subscription, tonic::Status> {
    QuotaServiceClient::new(channel.clone())
        .get_subscription(with_bearer(pb::GetSubscriptionRequest {}, key))
        .await
        .map(|r| r.into_inner())
}

/// A caller that vanishes without closing (a crashed replica, a dropped
/// NAT mapping) is found by TCP keepalive: the server's side of every
/// connection has its probe timer armed for `quota::liveness`'s idle time.
#[cfg(target_os = "linux")]
#[tokio::test]
async fn every_connection_has_tcp_keepalive() {
    let db = TestDb::sqlite_memory().await;
    let (addr, _stop) = spawn(db.store().await, ServerOptions::default()).await;
    let stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let client = stream.local_addr().unwrap();
    quota_service::testing::assert_keepalive_armed(addr, client).await;
}

#[tokio::test]
async fn a_message_over_64_kib_is_refused_before_decoding() {
    let db = TestDb::sqlite_memory().await;
    let store = db.store().await;
    let key = one_unit_key(&store).await;
    let (addr, _stop) = spawn(store, ServerOptions::default()).await;
    let channel = channel(addr).await;
    let huge = pb::CreateTokenRequest {
        name: "n".repeat(100 * 1024),
        quota: 1,
        ..Default::default()
    };
    let refused = TokenAdminClient::new(channel.clone())
        .create_token(with_bearer(huge, TEST_ADMIN_TOKEN))
        .await
        .unwrap_err();
    assert!(
        matches!(refused.code(), Code::OutOfRange | Code::ResourceExhausted),
        "{refused:?}"
    );
    let consume = pb::ConsumeRequest {
        token: key.clone(),
        quota: 1,
        request_id: "r".repeat(70 * 1024),
    };
    let refused = QuotaServiceClient::new(channel.clone())
        .consume(with_bearer(consume, TEST_ADMIN_TOKEN))
        .await
        .unwrap_err();
    assert!(
        matches!(refused.code(), Code::OutOfRange | Code::ResourceExhausted),
        "{refused:?}"
    );
    // Still serving, on the same connection.
    assert_eq!(
        subscription(&channel, &key).await.unwrap().hard_limit_usd,
        0
    );
}

/// A codec that sends its bytes as they are and reads nothing back: a
/// request the server cannot decode.
#[derive(Clone, Copy, Debug)]
struct RawCodec;

impl tonic::codec::Codec for RawCodec {
    type Encode = &'static [u8];
    type Decode = ();
    type Encoder = RawCodec;
    type Decoder = RawCodec;

    fn encoder(&mut self) -> RawCodec {
        RawCodec
    }

    fn decoder(&mut self) -> RawCodec {
        RawCodec
    }
}

impl tonic::codec::Encoder for RawCodec {
    type Item = &'static [u8];
    type Error = tonic::Status;

    fn encode(
        &mut self,
        item: &'static [u8],
        dst: &mut tonic::codec::EncodeBuf<'_>,
    ) -> Result<(), tonic::Status> {
        use prost::bytes::BufMut;
        dst.put_slice(item);
        Ok(())
    }
}

impl tonic::codec::Decoder for RawCodec {
    type Item = ();
    type Error = tonic::Status;

    fn decode(
        &mut self,
        buf: &mut tonic::codec::DecodeBuf<'_>,
    ) -> Result<Option<()>, tonic::Status> {
        use prost::bytes::Buf;
        buf.advance(buf.remaining());
        Ok(Some(()))
    }
}

/// The status of a call of `method` whose message is `bytes`.
async fn raw_call(
    channel: &Channel,
    method: &'static str,
    bytes: &'static [u8],
    credential: &str,
) -> tonic::Status {
    let mut grpc = tonic::client::Grpc::new(channel.clone());
    grpc.ready().await.unwrap();
    let path = tonic::codegen::http::uri::PathAndQuery::from_static(method);
    match grpc
        .unary(with_bearer(bytes, credential), path, RawCodec)
        .await
    {
        Ok(_) => panic!("{method} took {bytes:?}"),
        Err(status) => status,
    }
}

#[tokio::test]
async fn a_message_that_does_not_decode_is_invalid_argument_not_internal() {
    let db = TestDb::sqlite_memory().await;
    let store = db.store().await;
    let key = one_unit_key(&store).await;
    let (addr, _stop) = spawn(store, ServerOptions::default()).await;
    let channel = channel(addr).await;
    // Field 1 (a string in every one of these requests) holding a byte
    // that is not UTF-8; and a tag cut short.
    let not_utf8: &[u8] = &[0x0a, 0x01, 0xff];
    let cut_short: &[u8] = &[0xff];
    let calls = [
        ("/quota.v1.QuotaService/Consume", TEST_ADMIN_TOKEN),
        ("/quota.v1.QuotaService/Reserve", TEST_ADMIN_TOKEN),
        ("/quota.v1.QuotaService/GetUsage", &key),
        ("/quota.v1.QuotaService/GetSubscription", &key),
        ("/quota.v1.TokenAdmin/CreateToken", TEST_ADMIN_TOKEN),
    ];
    for (method, credential) in calls {
        for bytes in [not_utf8, cut_short] {
            if method.ends_with("GetSubscription") && bytes == not_utf8 {
                continue; // its request has no fields: an unknown one is skipped
            }
            let status = raw_call(&channel, method, bytes, credential).await;
            assert_eq!(
                status.code(),
                Code::InvalidArgument,
                "{method} {bytes:?}: {status:?}"
            );
        }
    }
    // Still serving, on the same connection.
    assert_eq!(
        subscription(&channel, &key).await.unwrap().hard_limit_usd,
        0
    );
}

/// A body that is not one whole gRPC message: none, a frame cut short, a
/// compressed flag with no `grpc-encoding`, a flag that is neither 0 nor 1.
/// tonic refuses each as INTERNAL, before any handler of a unary call and
/// in the stream of requests of reflection's; the caller's mistake is
/// INVALID_ARGUMENT, on every service.
#[tokio::test]
async fn a_body_that_is_not_a_grpc_message_is_invalid_argument_not_internal() {
    use http_body_util::BodyExt;
    use tonic::codegen::http;
    use tower::ServiceExt;
    let db = TestDb::sqlite_memory().await;
    let store = db.store().await;
    let key = one_unit_key(&store).await;
    let (addr, _stop) = spawn(store, ServerOptions::default()).await;
    let channel = channel(addr).await;
    let bodies: [&str; 4] = ["", "\0\0\0\0\x10ab", "\x01\0\0\0\0", "\x02\0\0\0\0"];
    let calls = [
        ("/quota.v1.QuotaService/GetSubscription", key.as_str()),
        ("/quota.v1.QuotaService/Consume", TEST_ADMIN_TOKEN),
        ("/quota.v1.TokenAdmin/ListTokens", TEST_ADMIN_TOKEN),
        ("/grpc.health.v1.Health/Check", ""),
        (
            "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo",
            "",
        ),
        (
            "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo",
            "",
        ),
    ];
    for (method, credential) in calls {
        for body in bodies {
            if method.ends_with("ServerReflectionInfo") && body.is_empty() {
                continue; // a stream of no requests, answered with none
            }
            let request = http::Request::builder()
                .method("POST")
                .uri(format!("http://{addr}{method}"))
                .header("content-type", "application/grpc")
                .header("te", "trailers")
                .header("authorization", format!("Bearer {credential}"))
                .body(tonic::body::Body::new(body.to_owned()))
                .unwrap();
            let response = channel.clone().oneshot(request).await.unwrap();
            // Before a handler: a trailers-only answer; from a stream of
            // requests: the trailers after the answers.
            let status = match tonic::Status::from_header_map(response.headers()) {
                Some(status) => status,
                None => {
                    let collected = response.into_body().collect().await.unwrap();
                    (collected.trailers())
                        .and_then(tonic::Status::from_header_map)
                        .unwrap_or_else(|| panic!("{method} {body:?}: no status"))
                }
            };
            assert_eq!(
                status.code(),
                Code::InvalidArgument,
                "{method} {body:?}: {status:?}"
            );
        }
    }
    // Still serving, on the same connection.
    assert_eq!(
        subscription(&channel, &key).await.unwrap().hard_limit_usd,
        0
    );
}

#[tokio::test]
async fn health_and_reflection_answer_a_message_that_does_not_decode_with_invalid_argument() {
    use tonic::codegen::http::uri::PathAndQuery;
    let db = TestDb::sqlite_memory().await;
    let (addr, _stop) = spawn(db.store().await, ServerOptions::default()).await;
    let channel = channel(addr).await;
    let mut grpc = tonic::client::Grpc::new(channel.clone());
    // Field 1 is a string in the requests of all three services.
    let not_utf8: &'static [u8] = &[0x0a, 0x01, 0xff];

    let status = raw_call(&channel, "/grpc.health.v1.Health/Check", not_utf8, "").await;
    assert_eq!(status.code(), Code::InvalidArgument, "Check: {status:?}");

    let watch = PathAndQuery::from_static("/grpc.health.v1.Health/Watch");
    grpc.ready().await.unwrap();
    let status = grpc
        .server_streaming(Request::new(not_utf8), watch, RawCodec)
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument, "Watch: {status:?}");

    for method in [
        "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo",
        "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo",
    ] {
        grpc.ready().await.unwrap();
        let requests = tokio_stream::iter([not_utf8]);
        let path = PathAndQuery::from_static(method);
        let answer = match grpc.streaming(Request::new(requests), path, RawCodec).await {
            Ok(answers) => answers.into_inner().message().await,
            Err(status) => Err(status),
        };
        match answer {
            Err(status) => assert_eq!(status.code(), Code::InvalidArgument, "{method}: {status:?}"),
            Ok(answer) => panic!("{method} answered {answer:?}"),
        }
        // A request that decodes is answered, and the one after it that
        // does not ends the stream with INVALID_ARGUMENT.
        let list_services: &'static [u8] = &[0x3a, 0x00];
        grpc.ready().await.unwrap();
        let requests = tokio_stream::iter([list_services, not_utf8]);
        let path = PathAndQuery::from_static(method);
        let mut answers = grpc
            .streaming(Request::new(requests), path, RawCodec)
            .await
            .unwrap()
            .into_inner();
        assert_eq!(answers.message().await.unwrap(), Some(()), "{method}");
        let status = answers.message().await.unwrap_err();
        assert_eq!(status.code(), Code::InvalidArgument, "{method}: {status:?}");
    }

    // Still serving, reflection and health included.
    assert!(
        listed_services(&channel)
            .await
            .contains("quota.v1.TokenAdmin")
    );
    let serving = tonic_health::pb::health_client::HealthClient::new(channel)
        .check(tonic_health::pb::HealthCheckRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        serving.status(),
        tonic_health::pb::health_check_response::ServingStatus::Serving
    );
}

/// The answer of reflection v1 to a listing of the services, as text.
async fn listed_services(channel: &Channel) -> String {
    use tonic_reflection::pb::v1;
    let request = v1::ServerReflectionRequest {
        host: String::new(),
        message_request: Some(v1::server_reflection_request::MessageRequest::ListServices(
            String::new(),
        )),
    };
    let listed = v1::server_reflection_client::ServerReflectionClient::new(channel.clone())
        .server_reflection_info(tokio_stream::iter([request]))
        .await
        .unwrap()
        .into_inner()
        .message()
        .await
        .unwrap()
        .expect("an answer");
    format!("{listed:?}")
}

/// Whether a call that got `answer` was refused as too large.
fn too_large<T>(answer: &Result<T, tonic::Status>) -> bool {
    matches!(answer, Err(s) if matches!(s.code(), Code::OutOfRange | Code::ResourceExhausted))
}

/// What a reflection stream answered, without the request it echoes.
fn brief<T>(answer: &Result<Option<T>, tonic::Status>) -> String {
    match answer {
        Ok(Some(_)) => "an answer".into(),
        Ok(None) => "no answer".into(),
        Err(status) => format!("{status:?}"),
    }
}

#[tokio::test]
async fn every_service_refuses_a_message_over_64_kib_reflection_and_health_included() {
    use tonic_health::pb::HealthCheckRequest;
    use tonic_health::pb::health_client::HealthClient;
    use tonic_reflection::pb::{v1, v1alpha};

    let db = TestDb::sqlite_memory().await;
    let (addr, _stop) = spawn(db.store().await, ServerOptions::default()).await;
    let channel = channel(addr).await;
    // A listing of the services, whose field reflection ignores: once read,
    // it is answered with the list.
    let filler = "s".repeat(100 * 1024);

    let request = v1::ServerReflectionRequest {
        host: String::new(),
        message_request: Some(v1::server_reflection_request::MessageRequest::ListServices(
            filler.clone(),
        )),
    };
    let answer = match v1::server_reflection_client::ServerReflectionClient::new(channel.clone())
        .server_reflection_info(tokio_stream::iter([request]))
        .await
    {
        Ok(stream) => stream.into_inner().message().await,
        Err(status) => Err(status),
    };
    assert!(too_large(&answer), "reflection v1: {}", brief(&answer));

    let request = v1alpha::ServerReflectionRequest {
        host: String::new(),
        message_request: Some(
            v1alpha::server_reflection_request::MessageRequest::ListServices(filler.clone()),
        ),
    };
    let answer =
        match v1alpha::server_reflection_client::ServerReflectionClient::new(channel.clone())
            .server_reflection_info(tokio_stream::iter([request]))
            .await
        {
            Ok(stream) => stream.into_inner().message().await,
            Err(status) => Err(status),
        };
    assert!(too_large(&answer), "reflection v1alpha: {}", brief(&answer));

    let answer = HealthClient::new(channel.clone())
        .check(HealthCheckRequest { service: filler })
        .await;
    assert!(too_large(&answer), "health: {answer:?}");

    // Still serving, reflection included.
    assert!(
        listed_services(&channel)
            .await
            .contains("quota.v1.QuotaService")
    );
}

#[tokio::test]
async fn past_max_concurrency_a_call_is_refused_at_once_with_unavailable() {
    let db = TestDb::sqlite_memory().await;
    let store = db.store().await;
    let key = one_unit_key(&store).await;
    let options = ServerOptions {
        in_flight: std::sync::Arc::new(tokio::sync::Semaphore::new(1)),
        ..ServerOptions::default()
    };
    let (addr, _stop) = spawn(store.clone(), options).await;
    let channel = channel(addr).await;
    // The in-memory database has one connection: while this transaction
    // holds it, a call that reaches the store waits, keeping its permit.
    let held = store.connection().begin().await.unwrap();
    let mut calls = tokio::task::JoinSet::new();
    for _ in 0..2 {
        let (channel, key) = (channel.clone(), key.clone());
        calls.spawn(async move { subscription(&channel, &key).await });
    }
    // One of the two holds the only permit; the other is refused at once.
    let first = calls.join_next().await.unwrap().unwrap();
    let refused = first.unwrap_err();
    assert_eq!(refused.code(), Code::Unavailable, "{refused:?}");
    assert!(refused.message().contains("busy"), "{refused:?}");
    drop(held);
    let second = calls.join_next().await.unwrap().unwrap();
    assert!(second.is_ok(), "{second:?}");
    assert!(subscription(&channel, &key).await.is_ok());
}

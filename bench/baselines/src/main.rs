//! The baselines `bench/run.sh` measures quota against: servers that do the
//! least each of quota's read paths could do, so a ratio to them says how
//! much quota itself costs.
//!
//! ```sh
//! baseline static-rest   [--addr 127.0.0.1:0]                  # axum: the subscription route's bytes
//! baseline constant-grpc [--addr 127.0.0.1:0]                  # tonic: GetSubscription, a constant
//! baseline bridge --upstream http://HOST:PORT [--addr 127.0.0.1:0]
//!                                                              # axum calling GetSubscription over loopback
//! ```
//!
//! Each binds `--addr`, prints `listening on ADDR` on stdout once it accepts
//! connections, and serves until it is killed.

use axum::Router;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use quota::pb;
use quota::pb::quota_service_client::QuotaServiceClient;
use quota::pb::quota_service_server::{QuotaService, QuotaServiceServer};
use serde::Serialize;
use std::error::Error;
use std::io::Write;
use tokio::net::TcpListener;
use tokio_stream::wrappers::TcpListenerStream;
use tonic::transport::{Channel, Endpoint};
use tonic::{Request, Status};

type BoxError = Box<dyn Error + Send + Sync>;

/// `GET /v1/dashboard/billing/subscription` of a `$5` key that never expires,
/// byte for byte as `quotad serve` answers it.
const SUBSCRIPTION_JSON: &str = r#"{"object":"billing_subscription","has_payment_method":true,"soft_limit_usd":5,"hard_limit_usd":5,"system_hard_limit_usd":5,"access_until":0}"#;

/// The paths of the subscription route.
const ROUTES: [&str; 2] = [
    "/v1/dashboard/billing/subscription",
    "/dashboard/billing/subscription",
];

#[tokio::main]
async fn main() -> Result<(), BoxError> {
    let mut args = std::env::args().skip(1);
    let mode = args.next().unwrap_or_default();
    let (mut addr, mut upstream) = ("127.0.0.1:0".to_owned(), None);
    while let Some(flag) = args.next() {
        let value = args.next().ok_or_else(|| format!("{flag} needs a value"))?;
        match flag.as_str() {
            "--addr" => addr = value,
            "--upstream" => upstream = Some(value),
            other => return Err(format!("unknown argument {other:?}").into()),
        }
    }
    let listener = TcpListener::bind(&addr).await?;
    let local = listener.local_addr()?;
    let announce = move || -> Result<(), BoxError> {
        let mut out = std::io::stdout().lock();
        writeln!(out, "listening on {local}")?;
        out.flush()?;
        Ok(())
    };
    match (mode.as_str(), upstream) {
        ("static-rest", None) => {
            announce()?;
            axum::serve(listener, static_rest()).await?;
        }
        ("constant-grpc", None) => {
            announce()?;
            tonic::transport::Server::builder()
                .tcp_nodelay(true)
                .add_service(QuotaServiceServer::new(Constant))
                .serve_with_incoming(TcpListenerStream::new(listener))
                .await?;
        }
        ("bridge", Some(upstream)) => {
            let channel = Endpoint::from_shared(upstream)?
                .tcp_nodelay(true)
                .connect()
                .await?;
            announce()?;
            axum::serve(listener, bridge(channel)).await?;
        }
        _ => {
            return Err(
                "usage: baseline static-rest | constant-grpc | bridge --upstream URL [--addr ADDR]"
                    .into(),
            );
        }
    }
    Ok(())
}

/// The static handler: the route's bytes, with the route's content type.
fn static_rest() -> Router {
    let answer = || async {
        (
            [(header::CONTENT_TYPE, "application/json")],
            SUBSCRIPTION_JSON,
        )
    };
    ROUTES.iter().fold(Router::new(), |router, path| {
        router.route(path, get(answer))
    })
}

/// The bridge: each request is one `GetSubscription` call with the caller's
/// `Authorization` as metadata over one shared HTTP/2 channel, its answer
/// serialized as the edge serializes it. The least a REST edge in front of a
/// separate gRPC service can do.
fn bridge(channel: Channel) -> Router {
    let client = QuotaServiceClient::new(channel);
    ROUTES.iter().fold(Router::new(), |router, path| {
        let client = client.clone();
        router.route(
            path,
            get(move |headers: HeaderMap| subscription(client.clone(), headers)),
        )
    })
}

/// The six fields of the subscription route, in its order.
#[derive(Serialize)]
struct Subscription {
    object: String,
    has_payment_method: bool,
    soft_limit_usd: i64,
    hard_limit_usd: i64,
    system_hard_limit_usd: i64,
    access_until: i64,
}

async fn subscription(mut client: QuotaServiceClient<Channel>, headers: HeaderMap) -> Response {
    let mut request = Request::new(pb::GetSubscriptionRequest {});
    if let Some(value) = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok())
    {
        request.metadata_mut().insert("authorization", value);
    }
    match client.get_subscription(request).await {
        Ok(answer) => {
            let s = answer.into_inner();
            axum::Json(Subscription {
                object: s.object,
                has_payment_method: s.has_payment_method,
                soft_limit_usd: s.soft_limit_usd,
                hard_limit_usd: s.hard_limit_usd,
                system_hard_limit_usd: s.system_hard_limit_usd,
                access_until: s.access_until,
            })
            .into_response()
        }
        Err(status) => (StatusCode::BAD_GATEWAY, status.message().to_owned()).into_response(),
    }
}

/// A `QuotaService` whose `GetSubscription` answers a constant `$5` key
/// without looking at anything; every other method is UNIMPLEMENTED.
struct Constant;

#[tonic::async_trait]
impl QuotaService for Constant {
    async fn get_subscription(
        &self,
        _: Request<pb::GetSubscriptionRequest>,
    ) -> Result<tonic::Response<pb::Subscription>, Status> {
        Ok(tonic::Response::new(pb::Subscription {
            object: "billing_subscription".to_owned(),
            has_payment_method: true,
            soft_limit_usd: 5,
            hard_limit_usd: 5,
            system_hard_limit_usd: 5,
            access_until: 0,
            limit_units: 2_500_000,
            remaining_units: 2_500_000,
            used_units: 0,
            unlimited: false,
            held_units: 0,
        }))
    }

    async fn get_usage(
        &self,
        _: Request<pb::GetUsageRequest>,
    ) -> Result<tonic::Response<pb::Usage>, Status> {
        Err(Status::unimplemented("a baseline"))
    }

    async fn consume(
        &self,
        _: Request<pb::ConsumeRequest>,
    ) -> Result<tonic::Response<pb::ConsumeResponse>, Status> {
        Err(Status::unimplemented("a baseline"))
    }

    async fn reserve(
        &self,
        _: Request<pb::ReserveRequest>,
    ) -> Result<tonic::Response<pb::ReserveResponse>, Status> {
        Err(Status::unimplemented("a baseline"))
    }

    async fn settle(
        &self,
        _: Request<pb::SettleRequest>,
    ) -> Result<tonic::Response<pb::SettleResponse>, Status> {
        Err(Status::unimplemented("a baseline"))
    }

    async fn release(
        &self,
        _: Request<pb::ReleaseRequest>,
    ) -> Result<tonic::Response<pb::ReleaseResponse>, Status> {
        Err(Status::unimplemented("a baseline"))
    }
}

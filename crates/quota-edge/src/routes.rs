//! The router: billing routes (with and without `/v1`), errors, CORS.

use crate::error::EdgeError;
use axum::extract::{Query, State};
use axum::http::{HeaderMap, Method, Uri, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{MethodRouter, get};
use axum::{Json, Router};
use quota::pb;
use quota::pb::quota_service_client::QuotaServiceClient;
use serde::{Deserialize, Serialize};
use std::time::Duration;
use tonic::transport::{Channel, Endpoint};
use tower_http::cors::{Any, CorsLayer};

/// How long the edge waits for the gRPC service before answering 504, unless
/// [`Upstream::timeout`] says otherwise.
const UPSTREAM_TIMEOUT: Duration = Duration::from_secs(10);

/// The gRPC service behind the edge: one shared channel (HTTP/2, multiplexed)
/// for every request.
#[derive(Clone, Debug)]
pub struct Upstream {
    client: QuotaServiceClient<Channel>,
    timeout: Duration,
}

/// An `--upstream` the edge cannot call.
#[derive(Debug)]
pub struct InvalidUpstream(String);

impl std::fmt::Display for InvalidUpstream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{:?} is not an upstream URL: expected http://HOST:PORT",
            self.0
        )
    }
}

impl std::error::Error for InvalidUpstream {}

impl Upstream {
    /// A channel to `url` (`http://host:port`), connected on first use and
    /// reconnected as needed. Fails for anything but a plain `http` URL with
    /// a host, so that a typo stops the edge at start, not at every request.
    pub fn lazy(url: &str) -> Result<Upstream, InvalidUpstream> {
        let invalid = || InvalidUpstream(url.to_owned());
        let uri: http::Uri = url.parse().map_err(|_| invalid())?;
        if uri.scheme_str() != Some("http") || uri.host().is_none_or(str::is_empty) {
            return Err(invalid());
        }
        let channel = Endpoint::from(uri)
            .tcp_nodelay(true)
            .connect_timeout(Duration::from_secs(5))
            .connect_lazy();
        Ok(Upstream::from_channel(channel))
    }

    /// Over an existing channel.
    pub fn from_channel(channel: Channel) -> Upstream {
        Upstream {
            client: QuotaServiceClient::new(channel),
            timeout: UPSTREAM_TIMEOUT,
        }
    }

    /// Waits at most `timeout` for each answer of the service.
    pub fn timeout(self, timeout: Duration) -> Upstream {
        Upstream { timeout, ..self }
    }

    /// Calls the service within the deadline; past it, DEADLINE_EXCEEDED (504).
    /// The call is then dropped (the service sees it cancelled); the service
    /// is also sent a deadline a little later, as a backstop.
    async fn call<Req, Resp, F>(
        &self,
        message: Req,
        headers: &HeaderMap,
        method: impl FnOnce(QuotaServiceClient<Channel>, tonic::Request<Req>) -> F,
    ) -> Result<Resp, EdgeError>
    where
        F: std::future::Future<Output = Result<tonic::Response<Resp>, tonic::Status>>,
    {
        let mut request = with_caller(message, headers)?;
        request.set_timeout(self.timeout + Duration::from_secs(1));
        match tokio::time::timeout(self.timeout, method(self.client.clone(), request)).await {
            Ok(answer) => Ok(answer?.into_inner()),
            Err(_) => Err(EdgeError::Upstream(tonic::Status::deadline_exceeded(
                "the quota service did not answer in time",
            ))),
        }
    }
}

/// The edge's router. CORS wraps everything, so preflights are answered
/// before any auth and every response, errors included, carries the headers.
pub fn app(upstream: Upstream) -> Router {
    let cors = CorsLayer::new()
        .allow_origin(Any)
        .allow_methods([Method::GET, Method::HEAD, Method::OPTIONS])
        .allow_headers([header::AUTHORIZATION, header::CONTENT_TYPE])
        .expose_headers([header::WWW_AUTHENTICATE])
        .max_age(Duration::from_secs(86_400));
    Router::new()
        .route(
            "/v1/dashboard/billing/subscription",
            only_get(get(subscription)),
        )
        .route(
            "/dashboard/billing/subscription",
            only_get(get(subscription)),
        )
        .route("/v1/dashboard/billing/usage", only_get(get(usage)))
        .route("/dashboard/billing/usage", only_get(get(usage)))
        .fallback(unknown_url)
        .with_state(upstream)
        .layer(cors)
}

fn only_get(route: MethodRouter<Upstream>) -> MethodRouter<Upstream> {
    route.fallback(|| async { EdgeError::MethodNotAllowed })
}

async fn unknown_url(method: Method, uri: Uri) -> EdgeError {
    EdgeError::UnknownUrl {
        method: method.to_string(),
        path: uri.path().to_owned(),
    }
}

/// The body of the subscription route: exactly the spec's six fields, in
/// order, as the service sends them (the fields it adds stay in gRPC).
#[derive(Serialize)]
struct Subscription {
    object: String,
    has_payment_method: bool,
    soft_limit_usd: i64,
    hard_limit_usd: i64,
    system_hard_limit_usd: i64,
    access_until: i64,
}

async fn subscription(
    State(upstream): State<Upstream>,
    headers: HeaderMap,
) -> Result<Response, EdgeError> {
    let s = upstream
        .call(
            pb::GetSubscriptionRequest {},
            &headers,
            |mut c, r| async move { c.get_subscription(r).await },
        )
        .await?;
    Ok(Json(Subscription {
        object: s.object,
        has_payment_method: s.has_payment_method,
        soft_limit_usd: s.soft_limit_usd,
        hard_limit_usd: s.hard_limit_usd,
        system_hard_limit_usd: s.system_hard_limit_usd,
        access_until: s.access_until,
    })
    .into_response())
}

/// The query of the usage route.
#[derive(Deserialize)]
struct UsageQuery {
    start_date: Option<String>,
    end_date: Option<String>,
}

/// The body of the usage route, as the service sends it.
#[derive(Serialize)]
struct Usage {
    object: String,
    total_usage: f64,
    daily_costs: Vec<DailyCost>,
}

#[derive(Serialize)]
struct DailyCost {
    timestamp: i64,
    line_items: Vec<LineItem>,
}

#[derive(Serialize)]
struct LineItem {
    name: String,
    cost: f64,
}

async fn usage(
    State(upstream): State<Upstream>,
    headers: HeaderMap,
    query: Result<Query<UsageQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Response, EdgeError> {
    let Query(query) = query.map_err(|e| EdgeError::InvalidQuery(e.body_text()))?;
    let window = pb::GetUsageRequest {
        start_date: query.start_date.unwrap_or_default(),
        end_date: query.end_date.unwrap_or_default(),
    };
    // The service checks the key first, then the dates; a date it refuses
    // comes back naming its field.
    let u = upstream
        .call(
            window,
            &headers,
            |mut c, r| async move { c.get_usage(r).await },
        )
        .await
        .map_err(|e| match e {
            EdgeError::Upstream(s)
                if s.code() == tonic::Code::InvalidArgument
                    && s.metadata().contains_key(quota::PARAM_METADATA) =>
            {
                EdgeError::InvalidDate(s)
            }
            other => other,
        })?;
    Ok(Json(Usage {
        object: u.object,
        total_usage: u.total_usage,
        daily_costs: u
            .daily_costs
            .into_iter()
            .map(|d| DailyCost {
                timestamp: d.timestamp,
                line_items: d
                    .line_items
                    .into_iter()
                    .map(|l| LineItem {
                        name: l.name,
                        cost: l.cost,
                    })
                    .collect(),
            })
            .collect(),
    })
    .into_response())
}

/// The gRPC request carrying the caller's `Authorization` header as metadata.
fn with_caller<T>(message: T, headers: &HeaderMap) -> Result<tonic::Request<T>, EdgeError> {
    let mut request = tonic::Request::new(message);
    if let Some(value) = headers.get(header::AUTHORIZATION) {
        let value = value
            .to_str()
            .ok()
            .and_then(|v| tonic::metadata::MetadataValue::try_from(v).ok())
            .ok_or(EdgeError::MalformedAuthorization)?;
        request.metadata_mut().insert("authorization", value);
    }
    Ok(request)
}

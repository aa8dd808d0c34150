//! The router: billing routes (with and without `/v1`), errors, CORS.

use crate::error::EdgeError;
use axum::extract::{Query, State};
use axum::http::{HeaderMap, Method, Uri, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{MethodRouter, get};
use axum::{Json, Router};
use chrono::NaiveDate;
use quota::pb;
use quota::pb::quota_service_client::QuotaServiceClient;
use serde::{Deserialize, Serialize};
use tonic::transport::{Channel, Endpoint};
use tower_http::cors::{Any, CorsLayer};

/// The gRPC service behind the edge: one shared channel (HTTP/2, multiplexed)
/// for every request.
#[derive(Clone, Debug)]
pub struct Upstream {
    client: QuotaServiceClient<Channel>,
}

impl Upstream {
    /// A channel to `url` (`http://host:port`), connected on first use and
    /// reconnected as needed. Fails only for a malformed URL.
    pub fn lazy(url: &str) -> Result<Upstream, tonic::transport::Error> {
        let channel = Endpoint::from_shared(url.to_owned())?
            .tcp_nodelay(true)
            .connect_timeout(std::time::Duration::from_secs(5))
            .connect_lazy();
        Ok(Upstream::from_channel(channel))
    }

    /// Over an existing channel.
    pub fn from_channel(channel: Channel) -> Upstream {
        Upstream {
            client: QuotaServiceClient::new(channel),
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
        .max_age(std::time::Duration::from_secs(86_400));
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

/// The body of the subscription route: exactly the spec's six fields, in order.
#[derive(Serialize)]
struct Subscription {
    object: &'static str,
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
    let request = with_caller(pb::GetSubscriptionRequest {}, &headers)?;
    let s = upstream
        .client
        .clone()
        .get_subscription(request)
        .await?
        .into_inner();
    Ok(Json(Subscription {
        object: "billing_subscription",
        has_payment_method: true,
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

#[derive(Serialize)]
struct Usage {
    object: &'static str,
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
    let start_date = checked_date(query.start_date, "start_date")?;
    let end_date = checked_date(query.end_date, "end_date")?;
    let request = with_caller(
        pb::GetUsageRequest {
            start_date,
            end_date,
        },
        &headers,
    )?;
    let u = upstream
        .client
        .clone()
        .get_usage(request)
        .await?
        .into_inner();
    Ok(Json(Usage {
        object: "list",
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

/// A usage date as the service takes it: empty when absent, else a valid
/// `YYYY-MM-DD`, so that a bad date is `invalid_date` without a round trip.
fn checked_date(date: Option<String>, field: &str) -> Result<String, EdgeError> {
    let date = date.unwrap_or_default();
    if date.is_empty() || (date.len() == 10 && NaiveDate::parse_from_str(&date, "%Y-%m-%d").is_ok())
    {
        Ok(date)
    } else {
        Err(EdgeError::InvalidDate(format!(
            "{field} must be a date as YYYY-MM-DD, got {date:?}"
        )))
    }
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

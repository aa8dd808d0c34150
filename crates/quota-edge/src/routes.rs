//! The router: billing routes (with and without `/v1`), errors, CORS.

use crate::cors::CorsLayer;
use crate::error::EdgeError;
use crate::limits::{self, MAX_AUTHORIZATION_BYTES};
use crate::throttle::{Throttle, ThrottleConfig, ThrottleLayer};
use crate::tls::{ClientTls, InvalidUrl, endpoint};
use axum::body::Body;
use axum::extract::{RawQuery, Request, State};
use axum::http::{HeaderMap, HeaderValue, Method, Uri, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{MethodRouter, get};
use axum::{Json, Router};
use quota::liveness;
use quota::pb;
use quota::pb::quota_service_client::QuotaServiceClient;
use quota::pb::quota_service_server::QuotaService;
use quota_telemetry::request_id;
use serde::Serialize;
use std::sync::Arc;
use std::task::Poll;
use std::time::Duration;
use tokio::sync::Semaphore;
use tonic::transport::Channel;
use tonic_health::pb::health_client::HealthClient;
use tower::ServiceExt;
use tower::util::BoxCloneSyncService;
use utoipa::{IntoParams, ToSchema};

/// How long the edge waits for the gRPC service before answering 504, unless
/// [`Upstream::timeout`] says otherwise.
const UPSTREAM_TIMEOUT: Duration = Duration::from_secs(10);

/// What carries the edge's gRPC calls: a channel (HTTP/2 to another
/// process), or a service of this process called directly.
pub type Transport = BoxCloneSyncService<
    http::Request<tonic::body::Body>,
    http::Response<tonic::body::Body>,
    TransportError,
>;

/// A failure of the [`Transport`] under a call (not a status of the
/// service). tonic's client takes it back as the error it wraps, and reads
/// it as it would a bare channel's (a connection failure is UNAVAILABLE).
#[derive(Debug)]
pub struct TransportError(tower::BoxError);

impl From<TransportError> for tower::BoxError {
    fn from(error: TransportError) -> tower::BoxError {
        error.0
    }
}

/// `service` as a [`Transport`].
fn transport<S>(service: S) -> Transport
where
    S: tower::Service<
            http::Request<tonic::body::Body>,
            Response = http::Response<tonic::body::Body>,
        > + Clone
        + Send
        + Sync
        + 'static,
    S::Error: Into<tower::BoxError>,
    S::Future: Send + 'static,
{
    Transport::new(service.map_err(|e| TransportError(e.into())))
}

/// The gRPC service behind the edge: one shared channel (HTTP/2, multiplexed)
/// for every request, or the service itself in the same process.
#[derive(Clone, Debug)]
pub struct Upstream {
    quota: Quota,
    /// Its `grpc.health.v1.Health`, for `/readyz`; shared, so that the
    /// clone of the upstream every request takes costs no clone of it.
    pub(crate) health: Arc<HealthClient<Transport>>,
    timeout: Duration,
}

/// How the edge reaches `quota.v1.QuotaService`.
#[derive(Clone)]
enum Quota {
    /// A tonic client over a channel to another process.
    Client(QuotaServiceClient<Transport>),
    /// The service of this process, called through the trait tonic generates
    /// for its servers: the same messages, metadata and statuses as over a
    /// channel, with nothing encoded, framed or copied in between.
    Local(Arc<dyn QuotaService>),
}

impl std::fmt::Debug for Quota {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Quota::Client(client) => f.debug_tuple("Client").field(client).finish(),
            Quota::Local(_) => f.write_str("Local"),
        }
    }
}

impl Quota {
    async fn get_subscription(
        self,
        request: tonic::Request<pb::GetSubscriptionRequest>,
    ) -> Result<tonic::Response<pb::Subscription>, tonic::Status> {
        match self {
            Quota::Client(mut client) => client.get_subscription(request).await,
            Quota::Local(service) => service.get_subscription(request).await,
        }
    }

    async fn get_usage(
        self,
        request: tonic::Request<pb::GetUsageRequest>,
    ) -> Result<tonic::Response<pb::Usage>, tonic::Status> {
        match self {
            Quota::Client(mut client) => client.get_usage(request).await,
            Quota::Local(service) => service.get_usage(request).await,
        }
    }
}

impl Upstream {
    /// A channel to `url` (`http://host:port`, or `https://host:port`
    /// trusting the web's roots), connected on first use and reconnected as
    /// needed. Fails for anything else, so that a typo stops the edge at
    /// start, not at every request.
    pub fn lazy(url: &str) -> Result<Upstream, InvalidUrl> {
        Upstream::lazy_with(url, &ClientTls::default())
    }

    /// [`Upstream::lazy`], trusting `tls` for an `https://` URL.
    pub fn lazy_with(url: &str, tls: &ClientTls) -> Result<Upstream, InvalidUrl> {
        // An upstream gone without closing (its host down, a dropped route)
        // is found by the same checks the servers make (quota::liveness),
        // and the channel connects again.
        let channel = endpoint(url, tls)?
            .tcp_nodelay(true)
            .tcp_keepalive(Some(liveness::TCP_KEEPALIVE_IDLE))
            .tcp_keepalive_interval(Some(liveness::TCP_KEEPALIVE_INTERVAL))
            .tcp_keepalive_retries(Some(liveness::TCP_KEEPALIVE_RETRIES))
            .http2_keep_alive_interval(liveness::HTTP2_PING_INTERVAL)
            .keep_alive_timeout(liveness::HTTP2_PING_TIMEOUT)
            .keep_alive_while_idle(true)
            .connect_timeout(Duration::from_secs(5))
            .connect_lazy();
        Ok(Upstream::from_channel(channel))
    }

    /// Over an existing channel.
    pub fn from_channel(channel: Channel) -> Upstream {
        Upstream {
            quota: Quota::Client(QuotaServiceClient::new(transport(channel.clone()))),
            health: Arc::new(HealthClient::new(transport(channel))),
            timeout: UPSTREAM_TIMEOUT,
        }
    }

    /// Calls `quota` (`quota.v1.QuotaService`, as the trait tonic generates
    /// for its servers) and `health` (`grpc.health.v1.Health`, a tower
    /// service) directly: services of this process, spoken to in gRPC's
    /// messages, metadata and statuses, with no socket and no encoding in
    /// between. The edge stays free of the store: it sees only gRPC services.
    pub fn in_process<H>(quota: Arc<dyn QuotaService>, health: H) -> Upstream
    where
        H: tower::Service<
                http::Request<tonic::body::Body>,
                Response = http::Response<tonic::body::Body>,
            > + Clone
            + Send
            + Sync
            + 'static,
        H::Error: Into<tower::BoxError>,
        H::Future: Send + 'static,
    {
        Upstream {
            quota: Quota::Local(quota),
            health: Arc::new(HealthClient::new(transport(health))),
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
        method: impl FnOnce(Quota, tonic::Request<Req>) -> F,
    ) -> Result<Resp, EdgeError>
    where
        F: std::future::Future<Output = Result<tonic::Response<Resp>, tonic::Status>>,
    {
        let mut request = with_caller(message, headers)?;
        // Only a transport reads these. The service of another process logs
        // the request id in its call's span and is bounded by
        // `grpc-timeout`; the service of this process runs in the edge's
        // span, under the timeout below.
        if let Quota::Client(_) = self.quota {
            forward_request_id(&mut request, headers);
            request.set_timeout(self.timeout + Duration::from_secs(1));
        }
        let mut call = std::pin::pin!(method(self.quota.clone(), request));
        // A call answered at its first poll (a cached read in `serve`)
        // needs no timer: making and dropping one reads the clock and
        // clones the runtime's handle. The deadline runs from the first
        // poll that waits.
        let first = std::future::poll_fn(|cx| Poll::Ready(call.as_mut().poll(cx))).await;
        let answer = match first {
            Poll::Ready(answer) => answer,
            Poll::Pending => tokio::time::timeout(self.timeout, call)
                .await
                .map_err(|_| {
                    EdgeError::Upstream(tonic::Status::deadline_exceeded(
                        "the quota service did not answer in time",
                    ))
                })?,
        };
        match answer {
            Ok(response) => Ok(response.into_inner()),
            // No answer of the service (refused, cut, a peer that speaks
            // no HTTP/2, or no gRPC): it could not be reached, whatever
            // code tonic made of it (CANCELLED, UNKNOWN, INTERNAL).
            Err(status)
                if matches!(self.quota, Quota::Client(_))
                    && crate::unanswered::unanswered(&status).is_some() =>
            {
                Err(EdgeError::Upstream(tonic::Status::unavailable(format!(
                    "the quota service could not be reached: {:?} {}",
                    status.code(),
                    status.message()
                ))))
            }
            Err(status) => Err(status.into()),
        }
    }
}

/// What the edge is configured with besides its upstream.
#[derive(Clone, Debug)]
pub struct EdgeConfig {
    /// One permit per request in flight (`--max-concurrency`), taken at
    /// once or refused with 503. A process that also serves gRPC (`quotad
    /// serve`) gives its gRPC server the same semaphore, so that the bound
    /// counts both.
    pub in_flight: Arc<Semaphore>,
    /// The key-guessing throttle.
    pub throttle: ThrottleConfig,
}

impl Default for EdgeConfig {
    fn default() -> Self {
        EdgeConfig {
            in_flight: Arc::new(Semaphore::new(limits::DEFAULT_MAX_CONCURRENCY)),
            throttle: ThrottleConfig::default(),
        }
    }
}

/// The edge's router with the default [`EdgeConfig`].
pub fn app(upstream: Upstream) -> Router {
    app_with(upstream, EdgeConfig::default())
}

/// The edge's router: the billing routes behind the key-guessing throttle,
/// everything behind [`layers`].
pub fn app_with(upstream: Upstream, config: EdgeConfig) -> Router {
    let throttle = Arc::new(Throttle::new(config.throttle.clone()));
    let router = Router::new()
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
        .route_layer(ThrottleLayer(throttle))
        .route(crate::ops::HEALTHZ, only_get(get(crate::ops::healthz)))
        .route("/readyz", only_get(get(crate::ops::readyz)))
        .route("/openapi.json", only_get(get(crate::openapi::openapi_json)))
        .fallback(unknown_url)
        .with_state(upstream);
    layers(router, &config)
}

/// The layers around every route and the fallback, outermost first:
/// 1. telemetry ([`crate::telemetry::layers`]): the headers measured as the
///    caller sent them ([`limits::HeadersLayer`]), the request id, the span
///    and access log, the metrics, so that every answer below is counted;
/// 2. CORS ([`crate::cors`]), so preflights are answered before the rest
///    (but for the size bounds, which they are held to too) and every
///    response, refusals included, carries the headers;
/// 3. bounds on the URI (414), the headers (431) and the body (413, or 408
///    when it is slow), then load shedding past `max_concurrency` requests
///    in flight (503 at once), `/healthz` excepted ([`limits::BoundsLayer`]).
///
/// They are one `Router::layer`: axum boxes each layer call's service apart
/// and clones every box of a route's stack for every request.
///
/// The billing routes alone are behind the key-guessing throttle (a route
/// layer, innermost).
fn layers(router: Router, config: &EdgeConfig) -> Router {
    router.layer(
        crate::telemetry::layers()
            .layer(CorsLayer)
            .layer(limits::BoundsLayer::new(config.in_flight.clone())),
    )
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
#[derive(Serialize, ToSchema)]
pub(crate) struct Subscription {
    object: String,
    has_payment_method: bool,
    soft_limit_usd: i64,
    hard_limit_usd: i64,
    system_hard_limit_usd: i64,
    access_until: i64,
}

/// The key's limit in US dollars.
#[utoipa::path(
    get,
    path = "/v1/dashboard/billing/subscription",
    tag = "billing",
    summary = "Query a token's quota limit",
    description = "Returns the authorized quota (limit) of the token key. An unlimited token \
reports 100000000. Once the quota is modified, the limit accumulates on top of the previous limit.",
    responses(
        (status = 200, description = "The key's limit", body = inline(Subscription),
            example = json!({"object": "billing_subscription", "has_payment_method": true, "soft_limit_usd": 5, "hard_limit_usd": 5, "system_hard_limit_usd": 5, "access_until": 0})),
        (status = 401, description = "`invalid_api_key`: no, malformed, unknown, disabled or expired key, or more than one `Authorization` header", body = crate::error::ErrorBody,
            headers(("WWW-Authenticate" = String, description = "`Bearer`"))),
        (status = 405, description = "`method_not_allowed`", body = crate::error::ErrorBody),
        (status = 429, description = "`rate_limit_exceeded`: too many failed keys from this address", body = crate::error::ErrorBody,
            headers(("Retry-After" = u32, description = "Seconds until this address may try again"))),
        (status = 500, description = "`internal_error`", body = crate::error::ErrorBody),
        (status = 503, description = "`service_unavailable`: the gRPC service or its database does not answer, or the process has `--max-concurrency` requests in flight (then with `Retry-After: 1`)", body = crate::error::ErrorBody,
            headers(("Retry-After" = u32, description = "Seconds to wait, when the process is busy"))),
        (status = 504, description = "`timeout`: the gRPC service did not answer in time", body = crate::error::ErrorBody),
    ),
    security(("bearer" = [])),
)]
pub(crate) async fn subscription(
    State(upstream): State<Upstream>,
    request: Request,
) -> Result<Response, EdgeError> {
    // The request itself, not a `HeaderMap` extractor: that one clones
    // every header.
    let s = upstream
        .call(
            pb::GetSubscriptionRequest {},
            request.headers(),
            Quota::get_subscription,
        )
        .await?;
    let body = Subscription {
        object: s.object,
        has_payment_method: s.has_payment_method,
        soft_limit_usd: s.soft_limit_usd,
        hard_limit_usd: s.hard_limit_usd,
        system_hard_limit_usd: s.system_hard_limit_usd,
        access_until: s.access_until,
    };
    // Built as it is sent: `(headers, String)` would set a text content
    // type first and replace it.
    let mut response = Response::new(Body::from(body.to_json()));
    response.headers_mut().insert(header::CONTENT_TYPE, JSON);
    Ok(response)
}

/// The `Content-Type` of every JSON body, as [`Json`] sets it.
const JSON: HeaderValue = HeaderValue::from_static("application/json");

impl Subscription {
    /// The body, as `serde_json` writes this struct (fields in order, no
    /// spaces), from a template: the route answers more than anything else.
    fn to_json(&self) -> String {
        let mut body = String::with_capacity(160);
        body.push_str(r#"{"object":"#);
        // The service sends a fixed word; anything else is escaped by serde_json.
        if self
            .object
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_')
        {
            body.push('"');
            body.push_str(&self.object);
            body.push('"');
        } else {
            body.push_str(&serde_json::Value::from(self.object.as_str()).to_string());
        }
        body.push_str(if self.has_payment_method {
            r#","has_payment_method":true"#
        } else {
            r#","has_payment_method":false"#
        });
        // itoa, as serde_json writes integers; `write!` would go through
        // `core::fmt` for each.
        let mut number = itoa::Buffer::new();
        for (name, value) in [
            (r#","soft_limit_usd":"#, self.soft_limit_usd),
            (r#","hard_limit_usd":"#, self.hard_limit_usd),
            (r#","system_hard_limit_usd":"#, self.system_hard_limit_usd),
            (r#","access_until":"#, self.access_until),
        ] {
            body.push_str(name);
            body.push_str(number.format(value));
        }
        body.push('}');
        body
    }
}

/// The query of the usage route.
#[derive(IntoParams)]
#[into_params(parameter_in = Query)]
pub(crate) struct UsageQuery {
    /// First UTC day counted (`YYYY-MM-DD`, inclusive); all time without it.
    #[param(example = "2026-11-01", format = Date)]
    start_date: Option<String>,
    /// First UTC day not counted (`YYYY-MM-DD`, exclusive); no end without it.
    #[param(example = "2026-12-01", format = Date)]
    end_date: Option<String>,
}

impl UsageQuery {
    /// The dates of a query string (form-encoded, as any query is read:
    /// bytes that are not UTF-8 become U+FFFD); other parameters are
    /// ignored. A date given more than once is its values joined by commas,
    /// which the service refuses as any malformed date (`invalid_date`,
    /// once the key has passed): which one the caller meant is not the
    /// edge's to guess.
    fn parse(query: &str) -> UsageQuery {
        let mut dates = UsageQuery {
            start_date: None,
            end_date: None,
        };
        for (name, value) in form_urlencoded::parse(query.as_bytes()) {
            let date = match &*name {
                "start_date" => &mut dates.start_date,
                "end_date" => &mut dates.end_date,
                _ => continue,
            };
            match date {
                Some(dates) => {
                    dates.push(',');
                    dates.push_str(&value);
                }
                None => *date = Some(value.into_owned()),
            }
        }
        dates
    }
}

/// The body of the usage route, as the service sends it.
#[derive(Serialize, ToSchema)]
pub(crate) struct Usage {
    /// Always `list`.
    object: String,
    /// Spend in the window, in US cents.
    total_usage: f64,
    /// One entry per UTC day with spend.
    daily_costs: Vec<DailyCost>,
}

/// The spend of one UTC day.
#[derive(Serialize, ToSchema)]
pub(crate) struct DailyCost {
    /// Unix seconds of the day's start (00:00 UTC).
    timestamp: i64,
    /// One item, `usage`.
    line_items: Vec<LineItem>,
}

/// One item of a day's spend.
#[derive(Serialize, ToSchema)]
pub(crate) struct LineItem {
    /// `usage`.
    name: String,
    /// In US cents.
    cost: f64,
}

/// The key's spend in US cents, in total and per UTC day.
#[utoipa::path(
    get,
    path = "/v1/dashboard/billing/usage",
    tag = "billing",
    summary = "Query a token's spend",
    params(UsageQuery),
    responses(
        (status = 200, description = "The key's spend in the window", body = Usage,
            example = json!({"object": "list", "total_usage": 100.0, "daily_costs": [{"timestamp": 1796083200, "line_items": [{"name": "usage", "cost": 100.0}]}]})),
        (status = 400, description = "`invalid_date`: a date that is not `YYYY-MM-DD`", body = crate::error::ErrorBody),
        (status = 401, description = "`invalid_api_key`: no, malformed, unknown, disabled or expired key, or more than one `Authorization` header", body = crate::error::ErrorBody,
            headers(("WWW-Authenticate" = String, description = "`Bearer`"))),
        (status = 405, description = "`method_not_allowed`", body = crate::error::ErrorBody),
        (status = 429, description = "`rate_limit_exceeded`: too many failed keys from this address", body = crate::error::ErrorBody,
            headers(("Retry-After" = u32, description = "Seconds until this address may try again"))),
        (status = 500, description = "`internal_error`", body = crate::error::ErrorBody),
        (status = 503, description = "`service_unavailable`: the gRPC service or its database does not answer, or the process has `--max-concurrency` requests in flight (then with `Retry-After: 1`)", body = crate::error::ErrorBody,
            headers(("Retry-After" = u32, description = "Seconds to wait, when the process is busy"))),
        (status = 504, description = "`timeout`: the gRPC service did not answer in time", body = crate::error::ErrorBody),
    ),
    security(("bearer" = [])),
)]
pub(crate) async fn usage(
    State(upstream): State<Upstream>,
    RawQuery(query): RawQuery,
    request: Request,
) -> Result<Response, EdgeError> {
    let query = UsageQuery::parse(query.as_deref().unwrap_or_default());
    let window = pb::GetUsageRequest {
        start_date: query.start_date.unwrap_or_default(),
        end_date: query.end_date.unwrap_or_default(),
    };
    // The service checks the key first, then the dates; a date it refuses
    // comes back naming its field.
    let u = upstream
        .call(window, request.headers(), Quota::get_usage)
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

/// Sends the request's id (set by the request-id layer) as `x-request-id` metadata.
pub(crate) fn forward_request_id<T>(request: &mut tonic::Request<T>, headers: &HeaderMap) {
    let id = headers
        .get(&request_id::HEADER)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| tonic::metadata::MetadataValue::try_from(v).ok());
    if let Some(id) = id {
        request.metadata_mut().insert("x-request-id", id);
    }
}

/// The gRPC request carrying the caller's `Authorization` header as
/// metadata; more than one is refused.
fn with_caller<T>(message: T, headers: &HeaderMap) -> Result<tonic::Request<T>, EdgeError> {
    let mut request = tonic::Request::new(message);
    let mut authorizations = headers.get_all(header::AUTHORIZATION).iter();
    if let Some(value) = authorizations.next() {
        if authorizations.next().is_some() {
            return Err(EdgeError::RepeatedAuthorization);
        }
        if value.len() > MAX_AUTHORIZATION_BYTES {
            return Err(EdgeError::MalformedAuthorization);
        }
        let value = value
            .to_str()
            .ok()
            .and_then(|v| tonic::metadata::MetadataValue::try_from(v).ok())
            .ok_or(EdgeError::MalformedAuthorization)?;
        request.metadata_mut().insert("authorization", value);
    }
    Ok(request)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_subscription_template_writes_what_serde_json_writes() {
        for (object, access_until, has_payment_method) in [
            ("billing_subscription", 0, true),
            ("a \"quoted\"\n word", 1_796_083_200, false),
        ] {
            let body = Subscription {
                object: object.into(),
                has_payment_method,
                soft_limit_usd: 5,
                hard_limit_usd: -7,
                system_hard_limit_usd: 100_000_000,
                access_until,
            };
            assert_eq!(body.to_json(), serde_json::to_string(&body).unwrap());
        }
        let body = Subscription {
            object: "billing_subscription".into(),
            has_payment_method: true,
            soft_limit_usd: 5,
            hard_limit_usd: 5,
            system_hard_limit_usd: 5,
            access_until: 0,
        };
        assert_eq!(
            body.to_json(),
            r#"{"object":"billing_subscription","has_payment_method":true,"soft_limit_usd":5,"hard_limit_usd":5,"system_hard_limit_usd":5,"access_until":0}"#
        );
    }
}

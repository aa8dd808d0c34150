//! The gRPC services, `quota.v1.QuotaService` and `quota.v1.TokenAdmin`,
//! and the server that carries them with reflection and health.

use crate::auth::{AdminCredential, caller_key};
use crate::domain::{
    QuotaPerUsd, QuotaUnits, Token, TokenKey, TokenLocator, UsageWindow, unix_now,
};
use crate::error::QuotaError;
use crate::store::{NewToken, Store, TokenChanges};
use quota::pb;
use quota::pb::quota_service_server::{QuotaService, QuotaServiceServer};
use quota::pb::token_admin_server::{TokenAdmin, TokenAdminServer};
use std::future::Future;
use std::sync::Arc;
use tokio::net::TcpListener;
use tokio_stream::wrappers::TcpListenerStream;
use tonic::{Request, Response, Status};

/// What the services need besides the store.
#[derive(Clone, Debug, Default)]
pub struct ServiceConfig {
    /// Units per dollar (`QUOTA_PER_USD`).
    pub per_usd: QuotaPerUsd,
    /// The admin credential (`QUOTA_ADMIN_TOKEN`).
    pub admin: AdminCredential,
}

/// Both gRPC services over one store.
#[derive(Clone, Debug)]
pub struct QuotaApi {
    store: Store,
    config: Arc<ServiceConfig>,
}

/// Page size of `ListTokens` when the request gives none.
const DEFAULT_PAGE_SIZE: u32 = 100;
/// The largest page of `ListTokens`.
const MAX_PAGE_SIZE: u32 = 1000;
/// The longest `request_id` the ledger keeps.
const MAX_REQUEST_ID_LEN: usize = 255;
/// The longest token name the store keeps.
const MAX_NAME_LEN: usize = 255;

fn checked_name(name: String) -> Result<String, QuotaError> {
    if name.len() > MAX_NAME_LEN {
        Err(QuotaError::InvalidArgument(format!(
            "name is longer than {MAX_NAME_LEN} bytes"
        )))
    } else {
        Ok(name)
    }
}

impl QuotaApi {
    /// The services over `store`.
    pub fn new(store: Store, config: ServiceConfig) -> QuotaApi {
        QuotaApi {
            store,
            config: Arc::new(config),
        }
    }

    /// The caller's token, if its key is known, enabled and unexpired.
    async fn caller<T>(&self, request: &Request<T>) -> Result<Token, QuotaError> {
        let key = caller_key(request.metadata())?;
        let token = self
            .store
            .token_by_digest(&key.digest())
            .await?
            .ok_or(QuotaError::UnknownKey)?;
        if !token.enabled {
            Err(QuotaError::DisabledKey)
        } else if token.is_expired(unix_now()) {
            Err(QuotaError::ExpiredKey)
        } else {
            Ok(token)
        }
    }

    fn units(&self, quota: i64, quota_usd: &str) -> Result<QuotaUnits, QuotaError> {
        match (quota, quota_usd.is_empty()) {
            (0, false) => QuotaUnits::positive(self.config.per_usd.usd_to_units(quota_usd)?),
            (_, true) => QuotaUnits::positive(quota),
            _ => Err(QuotaError::InvalidArgument(
                "give either quota or quota_usd, not both".into(),
            )),
        }
    }

    fn token_message(&self, token: Token) -> pb::Token {
        pb::Token {
            id: token.id,
            display_prefix: token.display_prefix,
            name: token.name,
            remaining: token.balance.remaining,
            used: token.balance.used,
            unlimited: token.balance.unlimited,
            expires_at: token.expires_at.unwrap_or(0),
            enabled: token.enabled,
            created_at: token.created_at,
            updated_at: token.updated_at,
        }
    }
}

/// The subscription message of a token: the limit arithmetic of the domain.
pub fn subscription(token: &Token, per_usd: QuotaPerUsd) -> pb::Subscription {
    let limit_usd = token.balance.limit_usd(per_usd);
    pb::Subscription {
        object: "billing_subscription".into(),
        has_payment_method: true,
        soft_limit_usd: limit_usd,
        hard_limit_usd: limit_usd,
        system_hard_limit_usd: limit_usd,
        access_until: token.access_until(),
        limit_units: token.balance.limit_units(),
        remaining_units: token.balance.remaining,
        used_units: token.balance.used,
        unlimited: token.balance.unlimited,
    }
}

fn locator(token: Option<pb::TokenRef>) -> Result<TokenLocator, QuotaError> {
    match token.and_then(|t| t.r#ref) {
        Some(pb::token_ref::Ref::Id(id)) => Ok(TokenLocator::Id(id)),
        Some(pb::token_ref::Ref::Key(key)) => TokenKey::parse(&key)
            .map(|k| TokenLocator::Digest(k.digest()))
            .map_err(|_| {
                QuotaError::InvalidArgument("token.key is not a well-formed key (sk-...)".into())
            }),
        None => Err(QuotaError::InvalidArgument(
            "token is required: give its id or its key".into(),
        )),
    }
}

fn expiry(expires_at: i64) -> Result<Option<i64>, QuotaError> {
    match expires_at {
        0 => Ok(None),
        at if at > 0 => Ok(Some(at)),
        at => Err(QuotaError::InvalidArgument(format!(
            "expires_at must be unix seconds (or 0 for never), got {at}"
        ))),
    }
}

#[tonic::async_trait]
impl QuotaService for QuotaApi {
    async fn get_subscription(
        &self,
        request: Request<pb::GetSubscriptionRequest>,
    ) -> Result<Response<pb::Subscription>, Status> {
        let token = self.caller(&request).await?;
        Ok(Response::new(subscription(&token, self.config.per_usd)))
    }

    async fn get_usage(
        &self,
        request: Request<pb::GetUsageRequest>,
    ) -> Result<Response<pb::Usage>, Status> {
        let token = self.caller(&request).await?;
        let req = request.get_ref();
        let window = UsageWindow::parse(&req.start_date, &req.end_date)?;
        let days = self.store.daily_usage(token.id, window).await?;
        let per_usd = self.config.per_usd;
        let total_units: i64 = days.iter().map(|d| d.units).sum();
        Ok(Response::new(pb::Usage {
            object: "list".into(),
            total_usage: per_usd.cents(total_units),
            daily_costs: days
                .iter()
                .map(|d| pb::DailyCost {
                    timestamp: d.day,
                    line_items: vec![pb::LineItem {
                        name: "usage".into(),
                        cost: per_usd.cents(d.units),
                    }],
                })
                .collect(),
            total_units,
        }))
    }

    async fn consume(
        &self,
        request: Request<pb::ConsumeRequest>,
    ) -> Result<Response<pb::ConsumeResponse>, Status> {
        self.config.admin.check(request.metadata())?;
        let req = request.into_inner();
        if req.token.is_empty() {
            return Err(QuotaError::InvalidArgument("token is required".into()).into());
        }
        let key = TokenKey::parse(&req.token).map_err(|_| {
            QuotaError::InvalidArgument("token is not a well-formed key (sk-...)".into())
        })?;
        let units = QuotaUnits::positive(req.quota)?;
        if req.request_id.len() > MAX_REQUEST_ID_LEN {
            return Err(QuotaError::InvalidArgument(format!(
                "request_id is longer than {MAX_REQUEST_ID_LEN} bytes"
            ))
            .into());
        }
        let request_id = Some(req.request_id.as_str()).filter(|id| !id.is_empty());
        let debit = self
            .store
            .consume(&key.digest(), units, request_id, unix_now())
            .await?;
        Ok(Response::new(pb::ConsumeResponse {
            remaining: debit.balance.remaining,
            used: debit.balance.used,
            repeat: debit.repeat,
            unlimited: debit.balance.unlimited,
        }))
    }
}

#[tonic::async_trait]
impl TokenAdmin for QuotaApi {
    async fn create_token(
        &self,
        request: Request<pb::CreateTokenRequest>,
    ) -> Result<Response<pb::CreateTokenResponse>, Status> {
        self.config.admin.check(request.metadata())?;
        let req = request.into_inner();
        let quota = if req.unlimited && req.quota == 0 && req.quota_usd.is_empty() {
            0
        } else if req.quota == 0 && req.quota_usd.is_empty() {
            return Err(QuotaError::InvalidArgument(
                "give a quota (quota or quota_usd) or unlimited".into(),
            )
            .into());
        } else {
            self.units(req.quota, &req.quota_usd)?.get()
        };
        let new = NewToken {
            name: checked_name(req.name)?,
            quota,
            unlimited: req.unlimited,
            expires_at: expiry(req.expires_at)?,
        };
        let (token, key) = self.store.create_token(new, unix_now()).await?;
        tracing::info!(id = token.id, prefix = %token.display_prefix, "token created");
        Ok(Response::new(pb::CreateTokenResponse {
            token: Some(self.token_message(token)),
            key: key.expose().to_owned(),
        }))
    }

    async fn get_token(
        &self,
        request: Request<pb::GetTokenRequest>,
    ) -> Result<Response<pb::Token>, Status> {
        self.config.admin.check(request.metadata())?;
        let at = locator(request.into_inner().token)?;
        Ok(Response::new(
            self.token_message(self.store.token(&at).await?),
        ))
    }

    async fn list_tokens(
        &self,
        request: Request<pb::ListTokensRequest>,
    ) -> Result<Response<pb::ListTokensResponse>, Status> {
        self.config.admin.check(request.metadata())?;
        let req = request.into_inner();
        let size = match req.page_size {
            0 => DEFAULT_PAGE_SIZE,
            n => n.min(MAX_PAGE_SIZE),
        };
        let after: i64 = if req.page_token.is_empty() {
            0
        } else {
            req.page_token.parse().map_err(|_| {
                QuotaError::InvalidArgument("page_token is not one this server gave".into())
            })?
        };
        let tokens = self.store.list_tokens(after, u64::from(size)).await?;
        let next_page_token = match tokens.last() {
            Some(last) if tokens.len() == size as usize => last.id.to_string(),
            _ => String::new(),
        };
        Ok(Response::new(pb::ListTokensResponse {
            tokens: tokens.into_iter().map(|t| self.token_message(t)).collect(),
            next_page_token,
        }))
    }

    async fn grant_quota(
        &self,
        request: Request<pb::GrantQuotaRequest>,
    ) -> Result<Response<pb::Token>, Status> {
        self.config.admin.check(request.metadata())?;
        let req = request.into_inner();
        let at = locator(req.token)?;
        let units = self.units(req.quota, &req.quota_usd)?;
        let token = self.store.grant(&at, units, unix_now()).await?;
        tracing::info!(id = token.id, units = units.get(), "quota granted");
        Ok(Response::new(self.token_message(token)))
    }

    async fn update_token(
        &self,
        request: Request<pb::UpdateTokenRequest>,
    ) -> Result<Response<pb::Token>, Status> {
        self.config.admin.check(request.metadata())?;
        let req = request.into_inner();
        let at = locator(req.token)?;
        let changes = TokenChanges {
            name: req.name.map(checked_name).transpose()?,
            enabled: req.enabled,
            expires_at: req.expires_at.map(expiry).transpose()?,
            unlimited: req.unlimited,
        };
        let token = self.store.update_token(&at, changes, unix_now()).await?;
        Ok(Response::new(self.token_message(token)))
    }

    async fn delete_token(
        &self,
        request: Request<pb::DeleteTokenRequest>,
    ) -> Result<Response<pb::DeleteTokenResponse>, Status> {
        self.config.admin.check(request.metadata())?;
        let at = locator(request.into_inner().token)?;
        self.store.delete_token(&at).await?;
        Ok(Response::new(pb::DeleteTokenResponse {}))
    }
}

/// Serves both services, reflection (v1 and v1alpha) and health on
/// `listener` until `shutdown` resolves; in-flight calls are then finished.
pub async fn serve(
    listener: TcpListener,
    api: QuotaApi,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    let (health, health_service) = tonic_health::server::health_reporter();
    health.set_serving::<QuotaServiceServer<QuotaApi>>().await;
    health.set_serving::<TokenAdminServer<QuotaApi>>().await;
    // Both reflection versions describe every served service, each other included.
    let reflection = || {
        tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(quota::pb::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_reflection::pb::v1::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(
                tonic_reflection::pb::v1alpha::FILE_DESCRIPTOR_SET,
            )
    };
    tonic::transport::Server::builder()
        // Callers usually send their own deadline (grpc-timeout); this bounds the rest.
        .timeout(std::time::Duration::from_secs(30))
        .add_service(health_service)
        .add_service(reflection().build_v1()?)
        .add_service(reflection().build_v1alpha()?)
        .add_service(QuotaServiceServer::new(api.clone()))
        .add_service(TokenAdminServer::new(api))
        .serve_with_incoming_shutdown(TcpListenerStream::new(listener), shutdown)
        .await?;
    Ok(())
}

//! `quota.v1.TokenAdmin`: create, read, list, grant, update and delete tokens.
//!
//! No method here checks the caller: the service is only ever served behind
//! the admin interceptor ([`super::token_admin_server`]).

use super::QuotaApi;
use super::status::answer;
use crate::domain::{
    PageToken, QuotaError, Token, TokenKey, TokenLocator, acts_on_a_terminal, unix_now,
};
use crate::store::{NewToken, TokenChanges};
use quota::pb;
use quota::pb::token_admin_server::TokenAdmin;
use tonic::{Request, Response, Status};

/// Page size of `ListTokens` when the request gives none.
const DEFAULT_PAGE_SIZE: u32 = 100;
/// The largest page of `ListTokens`.
const MAX_PAGE_SIZE: u32 = 1000;
/// The longest token name the store keeps.
const MAX_NAME_LEN: usize = 255;

fn checked_name(name: String) -> Result<String, QuotaError> {
    if name.len() > MAX_NAME_LEN {
        return Err(QuotaError::InvalidArgument(format!(
            "name is longer than {MAX_NAME_LEN} bytes"
        )));
    }
    // A name is printed as it is (`quotad token list`): a newline would
    // break its table, an escape sequence or a bidirectional override would
    // reach the operator's terminal. A NUL (which PostgreSQL cannot store)
    // is one of them.
    if name.chars().any(acts_on_a_terminal) {
        return Err(QuotaError::InvalidArgument(
            "name contains a control character (a newline, a tab, an escape, a NUL) or a bidirectional override".into(),
        ));
    }
    Ok(name)
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

fn token_message(token: Token) -> pb::Token {
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
        held: token.held,
    }
}

impl QuotaApi {
    async fn create(
        &self,
        req: pb::CreateTokenRequest,
    ) -> Result<pb::CreateTokenResponse, QuotaError> {
        let quota = if req.unlimited && req.quota == 0 && req.quota_usd.is_empty() {
            0
        } else if req.quota == 0 && req.quota_usd.is_empty() {
            return Err(QuotaError::InvalidArgument(
                "a limited key needs a quota of more than 0 (quota or quota_usd); or make it unlimited".into(),
            ));
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
        // A look-up of the key made before it existed may be cached as unknown.
        self.forget(Some(&key.digest()));
        tracing::info!(id = token.id, prefix = %token.display_prefix, "token created");
        Ok(pb::CreateTokenResponse {
            token: Some(token_message(token)),
            key: key.expose().to_owned(),
        })
    }

    async fn list(&self, req: pb::ListTokensRequest) -> Result<pb::ListTokensResponse, QuotaError> {
        let size = match req.page_size {
            0 => DEFAULT_PAGE_SIZE,
            n => n.min(MAX_PAGE_SIZE),
        };
        let after = PageToken::parse(&req.page_token)?;
        // One more than the page: whether another page follows, so the last
        // page says it is the last even when it is full.
        let mut tokens = self
            .store
            .list_tokens(after.after_id(), u64::from(size) + 1)
            .await?;
        let more = tokens.len() > size as usize;
        tokens.truncate(size as usize);
        for token in &mut tokens {
            token.held = self.held_now(token).await?;
        }
        let next_page_token = match tokens.last() {
            Some(last) if more => PageToken::after(last.id).encode(),
            _ => String::new(),
        };
        Ok(pb::ListTokensResponse {
            tokens: tokens.into_iter().map(token_message).collect(),
            next_page_token,
        })
    }

    async fn grant(&self, req: pb::GrantQuotaRequest) -> Result<pb::Token, QuotaError> {
        let at = locator(req.token)?;
        let units = self.units(req.quota, &req.quota_usd)?;
        let digest = self.cached_digest(&at).await?;
        let granted = self.store.grant(&at, units, unix_now()).await;
        self.forget(digest.as_ref());
        let mut token = granted?;
        tracing::info!(id = token.id, units = units.get(), "quota granted");
        token.held = self.held_now(&token).await?;
        Ok(token_message(token))
    }

    async fn update(&self, req: pb::UpdateTokenRequest) -> Result<pb::Token, QuotaError> {
        let at = locator(req.token)?;
        let changes = TokenChanges {
            name: req.name.map(checked_name).transpose()?,
            enabled: req.enabled,
            expires_at: req.expires_at.map(expiry).transpose()?,
            unlimited: req.unlimited,
        };
        let digest = self.cached_digest(&at).await?;
        let updated = self.store.update_token(&at, changes, unix_now()).await;
        self.forget(digest.as_ref());
        let mut token = updated?;
        token.held = self.held_now(&token).await?;
        Ok(token_message(token))
    }
}

#[tonic::async_trait]
impl TokenAdmin for QuotaApi {
    async fn create_token(
        &self,
        request: Request<pb::CreateTokenRequest>,
    ) -> Result<Response<pb::CreateTokenResponse>, Status> {
        answer("CreateToken", self.create(request.into_inner())).await
    }

    async fn get_token(
        &self,
        request: Request<pb::GetTokenRequest>,
    ) -> Result<Response<pb::Token>, Status> {
        let work = async {
            let at = locator(request.into_inner().token)?;
            let mut token = self.store.token(&at).await?;
            token.held = self.held_now(&token).await?;
            Ok(token_message(token))
        };
        answer("GetToken", work).await
    }

    async fn list_tokens(
        &self,
        request: Request<pb::ListTokensRequest>,
    ) -> Result<Response<pb::ListTokensResponse>, Status> {
        answer("ListTokens", self.list(request.into_inner())).await
    }

    async fn grant_quota(
        &self,
        request: Request<pb::GrantQuotaRequest>,
    ) -> Result<Response<pb::Token>, Status> {
        answer("GrantQuota", self.grant(request.into_inner())).await
    }

    async fn update_token(
        &self,
        request: Request<pb::UpdateTokenRequest>,
    ) -> Result<Response<pb::Token>, Status> {
        answer("UpdateToken", self.update(request.into_inner())).await
    }

    async fn delete_token(
        &self,
        request: Request<pb::DeleteTokenRequest>,
    ) -> Result<Response<pb::DeleteTokenResponse>, Status> {
        let work = async {
            let at = locator(request.into_inner().token)?;
            let digest = self.cached_digest(&at).await?;
            let deleted = self.store.delete_token(&at).await;
            self.forget(digest.as_ref());
            deleted?;
            Ok(pb::DeleteTokenResponse {})
        };
        answer("DeleteToken", work).await
    }
}

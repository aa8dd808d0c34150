//! The gRPC services, `quota.v1.QuotaService` and `quota.v1.TokenAdmin`,
//! and the server that carries them with reflection and health.
//!
//! Each method's work returns `Result<_, QuotaError>`; [`status`] turns the
//! error into a `Status` (and logs internal detail) at the boundary. Admin
//! authentication is in [`crate::auth`]: an interceptor on `TokenAdmin`,
//! [`QuotaApi::require_admin`] for the admin methods of `QuotaService`.

mod holds;
mod local;
mod quota_service;
mod server;
pub(crate) mod standard;
mod status;
mod token_admin;

pub use local::{LocalService, LocalServices, local_services};
pub use quota_service::subscription;
pub use server::{
    DEFAULT_MAX_CONCURRENCY, MAX_MESSAGE_BYTES, ServerOptions, serve, serve_with,
    token_admin_server,
};
pub(crate) use status::to_status;

use crate::auth::AdminCredential;
use crate::cache::{CacheConfig, KeyCache};
use crate::domain::{
    KeyDigest, QuotaError, QuotaPerUsd, QuotaUnits, RequestId, TokenKey, TokenLocator,
};
use crate::store::Store;
use std::sync::Arc;
use tonic::metadata::MetadataMap;

/// What the services need besides the store.
#[derive(Clone, Debug, Default)]
pub struct ServiceConfig {
    /// Units per dollar (`QUOTA_PER_USD`).
    pub per_usd: QuotaPerUsd,
    /// The admin credential (`QUOTA_ADMIN_TOKEN`).
    pub admin: AdminCredential,
    /// The read cache of key look-ups (`QUOTA_CACHE_TTL`, `QUOTA_CACHE_CAPACITY`).
    pub cache: CacheConfig,
}

/// Both gRPC services over one store, with the read cache of this process.
#[derive(Clone, Debug)]
pub struct QuotaApi {
    store: Store,
    config: Arc<ServiceConfig>,
    cache: Arc<KeyCache>,
}

impl QuotaApi {
    /// The services over `store`.
    pub fn new(store: Store, config: ServiceConfig) -> QuotaApi {
        QuotaApi {
            store,
            cache: Arc::new(KeyCache::new(config.cache)),
            config: Arc::new(config),
        }
    }

    /// The read cache of key look-ups.
    pub fn cache(&self) -> &KeyCache {
        &self.cache
    }

    /// The digest under which the token at `at` may be cached, taken before
    /// a change to it (a deleted token's is gone after): a token named by id
    /// costs a look-up of its digest, only with the cache on (admin calls only).
    async fn cached_digest(&self, at: &TokenLocator) -> Result<Option<KeyDigest>, QuotaError> {
        match at {
            TokenLocator::Digest(digest) => Ok(Some(digest.clone())),
            TokenLocator::Id(id) if self.cache.enabled() => self.store.key_digest(*id).await,
            TokenLocator::Id(_) => Ok(None),
        }
    }

    /// Forgets the cached look-up of `digest`, once a change to its token is
    /// committed, so that this process's next read sees the change.
    fn forget(&self, digest: Option<&KeyDigest>) {
        if let Some(digest) = digest {
            self.cache.invalidate(digest);
        }
    }

    /// Admits only the admin credential: the check of every admin method
    /// outside `TokenAdmin` (whose interceptor applies the same one).
    fn require_admin(&self, metadata: &MetadataMap) -> Result<(), QuotaError> {
        self.config.admin.check(metadata)
    }

    /// Quota units from either `quota` or a decimal `quota_usd`, not both.
    fn units(&self, quota: i64, quota_usd: &str) -> Result<QuotaUnits, QuotaError> {
        match (quota, quota_usd.is_empty()) {
            (0, false) => match self.config.per_usd.usd_to_units(quota_usd)? {
                // Zero, or so few dollars that they round down to no unit.
                0 => Err(QuotaError::InvalidArgument(format!(
                    "quota_usd {quota_usd:?} comes to 0 units ({} units make a dollar): give more",
                    self.config.per_usd.get()
                ))),
                units => QuotaUnits::positive(units),
            },
            (_, true) => QuotaUnits::positive(quota),
            _ => Err(QuotaError::InvalidArgument(
                "give either quota or quota_usd, not both".into(),
            )),
        }
    }
}

/// The key a request addresses in `field` (not the caller's own key).
fn addressed_key(key: &str, field: &str) -> Result<TokenKey, QuotaError> {
    if key.is_empty() {
        return Err(QuotaError::InvalidArgument(format!("{field} is required")));
    }
    TokenKey::parse(key).map_err(|_| {
        QuotaError::InvalidArgument(format!("{field} is not a well-formed key (sk-...)"))
    })
}

/// An optional `request_id`: empty means none; longer than the ledger keeps is refused.
fn request_id(id: &str) -> Result<Option<&str>, QuotaError> {
    Ok(RequestId::parse(id)?.map(RequestId::as_str))
}

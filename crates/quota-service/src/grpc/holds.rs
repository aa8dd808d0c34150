//! `Reserve`, `Settle` and `Release` of `quota.v1.QuotaService`: holds for
//! calls whose cost is known only at their end. Same admin credential as
//! `Consume`; the rules are the domain's ([`crate::domain::reserve`] and
//! its siblings), decided by the store under the token's row lock.

use super::quota_service::record_debit;
use super::{QuotaApi, addressed_key, request_id};
use crate::domain::{HoldTtl, QuotaError, QuotaUnits, Token, unix_now};
use quota::pb;
use tonic::Request;

/// A hold's `request_id`: required, and no longer than the ledger keeps.
fn hold_id(id: &str) -> Result<&str, QuotaError> {
    request_id(id)?.ok_or_else(|| {
        QuotaError::InvalidArgument("request_id is required: it names the hold".into())
    })
}

impl QuotaApi {
    pub(super) async fn hold(
        &self,
        request: Request<pb::ReserveRequest>,
    ) -> Result<pb::ReserveResponse, QuotaError> {
        self.require_admin(request.metadata())?;
        let req = request.into_inner();
        let key = addressed_key(&req.token, "token")?;
        let units = QuotaUnits::positive(req.quota)?;
        let id = hold_id(&req.request_id)?;
        let ttl = HoldTtl::parse(req.ttl_seconds)?;
        let digest = key.digest();
        let clock = chrono::Utc::now();
        let ttl = ttl.from_second_start(clock.timestamp_subsec_nanos());
        let held = self
            .store
            .reserve(&digest, units, id, ttl, clock.timestamp())
            .await;
        self.forget(Some(&digest));
        let held = held?;
        Ok(pb::ReserveResponse {
            remaining: held.balance.remaining,
            used: held.balance.used,
            held: held.held,
            repeat: held.repeat,
            expires_at: held.expires_at,
            unlimited: held.balance.unlimited,
        })
    }

    /// `Settle` from a caller with the admin credential: a debit of its
    /// cost, counted by outcome as `Consume`'s are (`quota_debits_total`).
    pub(super) async fn settle_hold(
        &self,
        request: Request<pb::SettleRequest>,
    ) -> Result<pb::SettleResponse, QuotaError> {
        self.require_admin(request.metadata())?;
        let req = request.into_inner();
        let settled = self.settle_as_admin(&req).await;
        // The cost is debited in full, overdraft or not.
        record_debit(settled.as_ref().map(|s| s.repeat), req.quota);
        settled
    }

    async fn settle_as_admin(
        &self,
        req: &pb::SettleRequest,
    ) -> Result<pb::SettleResponse, QuotaError> {
        let key = addressed_key(&req.token, "token")?;
        let id = hold_id(&req.request_id)?;
        if req.quota < 0 {
            return Err(QuotaError::InvalidArgument(format!(
                "quota must be zero or more units, got {}",
                req.quota
            )));
        }
        let digest = key.digest();
        let settled = self.store.settle(&digest, id, req.quota, unix_now()).await;
        self.forget(Some(&digest));
        let settled = settled?;
        Ok(pb::SettleResponse {
            remaining: settled.balance.remaining,
            used: settled.balance.used,
            held: settled.held,
            repeat: settled.repeat,
            overdraft: settled.overdraft,
        })
    }

    pub(super) async fn release_hold(
        &self,
        request: Request<pb::ReleaseRequest>,
    ) -> Result<pb::ReleaseResponse, QuotaError> {
        self.require_admin(request.metadata())?;
        let req = request.into_inner();
        let key = addressed_key(&req.token, "token")?;
        let id = hold_id(&req.request_id)?;
        let digest = key.digest();
        let released = self.store.release(&digest, id, unix_now()).await;
        self.forget(Some(&digest));
        let released = released?;
        Ok(pb::ReleaseResponse {
            remaining: released.balance.remaining,
            used: released.balance.used,
            held: released.held,
        })
    }
}

impl QuotaApi {
    /// The units of `token`'s holds unexpired now: what reads show.
    pub(super) async fn held_now(&self, token: &Token) -> Result<i64, QuotaError> {
        self.store.held_at(token, unix_now()).await
    }
}

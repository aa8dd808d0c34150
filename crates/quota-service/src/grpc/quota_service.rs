//! `quota.v1.QuotaService`: the caller's subscription and usage, and `Consume`.

use super::status::answer;
use super::{QuotaApi, addressed_key, request_id};
use crate::auth::caller_key;
use crate::cache::CallerToken;
use crate::domain::{QuotaError, QuotaPerUsd, QuotaUnits, UsageWindow, unix_now};
use quota::pb;
use quota::pb::quota_service_server::QuotaService;
use quota_telemetry::metrics::{self, DebitOutcome};
use tonic::{Request, Response, Status};

/// The subscription message of a token: the limit arithmetic of the domain.
pub fn subscription(token: &CallerToken, per_usd: QuotaPerUsd) -> pb::Subscription {
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
        held_units: token.held,
    }
}

impl QuotaApi {
    /// The caller's token, if its key is known, enabled and unexpired: from
    /// the read cache, or the database (holds counted as of now). Expiry is
    /// checked here, against the clock, whichever answered.
    async fn caller<T>(&self, request: &Request<T>) -> Result<CallerToken, QuotaError> {
        let digest = caller_key(request.metadata())?.digest();
        let token = self
            .cache
            // The look-up is boxed: the database's futures are kilobytes,
            // and inline they would make every read's future as large, to
            // be copied into the box of every call, cache hit or not.
            .get_or_load(&digest, || {
                Box::pin(async {
                    match self.store.token_by_digest(&digest).await? {
                        Some(token) => {
                            let held = self.held_now(&token).await?;
                            Ok(Some(CallerToken {
                                held,
                                ..CallerToken::from(&token)
                            }))
                        }
                        None => Ok(None),
                    }
                })
            })
            .await?
            .ok_or(QuotaError::CallerKeyUnknown)?;
        if !token.enabled {
            Err(QuotaError::CallerKeyDisabled)
        } else if token.is_expired(unix_now()) {
            Err(QuotaError::CallerKeyExpired)
        } else {
            Ok(token)
        }
    }

    async fn subscription_of_caller(
        &self,
        request: Request<pb::GetSubscriptionRequest>,
    ) -> Result<pb::Subscription, QuotaError> {
        let token = self.caller(&request).await?;
        Ok(subscription(&token, self.config.per_usd))
    }

    async fn usage_of_caller(
        &self,
        request: Request<pb::GetUsageRequest>,
    ) -> Result<pb::Usage, QuotaError> {
        let token = self.caller(&request).await?;
        let req = request.get_ref();
        let window = UsageWindow::parse(&req.start_date, &req.end_date)?;
        let days = self.store.daily_usage(token.id, window).await?;
        let per_usd = self.config.per_usd;
        let total_units: i64 = days.iter().map(|d| d.units).sum();
        Ok(pb::Usage {
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
        })
    }

    /// `Consume` from a caller with the admin credential; each decision is
    /// counted by outcome (`quota_debits_total`).
    async fn debit(
        &self,
        request: Request<pb::ConsumeRequest>,
    ) -> Result<pb::ConsumeResponse, QuotaError> {
        self.require_admin(request.metadata())?;
        let req = request.into_inner();
        let debited = self.debit_as_admin(&req).await;
        record_debit(debited.as_ref().map(|d| d.repeat), req.quota);
        debited
    }

    async fn debit_as_admin(
        &self,
        req: &pb::ConsumeRequest,
    ) -> Result<pb::ConsumeResponse, QuotaError> {
        let key = addressed_key(&req.token, "token")?;
        let units = QuotaUnits::positive(req.quota)?;
        let request_id = request_id(&req.request_id)?;
        let digest = key.digest();
        let debit = self
            .store
            .consume(&digest, units, request_id, unix_now())
            .await;
        // Whatever the outcome: a failed call may still have committed.
        self.forget(Some(&digest));
        let debit = debit?;
        Ok(pb::ConsumeResponse {
            remaining: debit.balance.remaining,
            used: debit.balance.used,
            repeat: debit.repeat,
            unlimited: debit.balance.unlimited,
        })
    }
}

/// Counts one debit, a `Consume`'s or a settle's, by what its answer says
/// (`quota_debits_total`, `quota_debited_units_total`): `answer` is the
/// answer's `repeat` flag, or its error; `units` are the units asked for,
/// counted only when they were debited.
pub(super) fn record_debit(answer: Result<bool, &QuotaError>, units: i64) {
    metrics::debit(debit_outcome(answer), units);
}

/// What a debit's answer (its `repeat` flag, or its error) says about it.
fn debit_outcome(answer: Result<bool, &QuotaError>) -> DebitOutcome {
    match answer {
        Ok(true) => DebitOutcome::Repeat,
        Ok(false) => DebitOutcome::Debited,
        Err(QuotaError::QuotaExhausted { .. }) => DebitOutcome::Insufficient,
        Err(QuotaError::Unavailable(_) | QuotaError::Busy(_) | QuotaError::Internal(_)) => {
            DebitOutcome::Failed
        }
        Err(_) => DebitOutcome::Refused,
    }
}

#[tonic::async_trait]
impl QuotaService for QuotaApi {
    async fn get_subscription(
        &self,
        request: Request<pb::GetSubscriptionRequest>,
    ) -> Result<Response<pb::Subscription>, Status> {
        answer("GetSubscription", self.subscription_of_caller(request)).await
    }

    async fn get_usage(
        &self,
        request: Request<pb::GetUsageRequest>,
    ) -> Result<Response<pb::Usage>, Status> {
        answer("GetUsage", self.usage_of_caller(request)).await
    }

    async fn consume(
        &self,
        request: Request<pb::ConsumeRequest>,
    ) -> Result<Response<pb::ConsumeResponse>, Status> {
        answer("Consume", self.debit(request)).await
    }

    async fn reserve(
        &self,
        request: Request<pb::ReserveRequest>,
    ) -> Result<Response<pb::ReserveResponse>, Status> {
        answer("Reserve", self.hold(request)).await
    }

    async fn settle(
        &self,
        request: Request<pb::SettleRequest>,
    ) -> Result<Response<pb::SettleResponse>, Status> {
        answer("Settle", self.settle_hold(request)).await
    }

    async fn release(
        &self,
        request: Request<pb::ReleaseRequest>,
    ) -> Result<Response<pb::ReleaseResponse>, Status> {
        answer("Release", self.release_hold(request)).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_debits_answer_gives_its_outcome() {
        assert_eq!(debit_outcome(Ok(false)), DebitOutcome::Debited);
        assert_eq!(debit_outcome(Ok(true)), DebitOutcome::Repeat);
        let exhausted = QuotaError::QuotaExhausted {
            spendable: 1,
            requested: 2,
        };
        assert_eq!(debit_outcome(Err(&exhausted)), DebitOutcome::Insufficient);
        for refused in [
            QuotaError::TokenNotFound,
            QuotaError::TokenDisabled,
            QuotaError::TokenExpired,
            QuotaError::InvalidArgument("quota".into()),
            QuotaError::MalformedKey,
            QuotaError::RequestIdInUse("a debit"),
            QuotaError::HoldNotFound,
            QuotaError::HoldReleased,
        ] {
            assert_eq!(
                debit_outcome(Err(&refused)),
                DebitOutcome::Refused,
                "{refused:?}"
            );
        }
        for failed in [
            QuotaError::Unavailable("down".into()),
            QuotaError::Busy("locked".into()),
            QuotaError::Internal("bug".into()),
        ] {
            assert_eq!(
                debit_outcome(Err(&failed)),
                DebitOutcome::Failed,
                "{failed:?}"
            );
        }
    }
}

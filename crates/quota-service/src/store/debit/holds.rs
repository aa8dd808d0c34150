//! Holds in the store: Reserve, Settle and Release join the token's debit
//! queue, so a hot key's holds and debits share one transaction per batch.
//!
//! The token row's `held` counts the units of its live holds that have not
//! been swept; a hold past its expiry stays in it until the next write to the
//! token sweeps it (marks it expired and subtracts it). Nothing relies on the
//! sweep for exactness: every decision sweeps first at its own time, and the
//! single conditional UPDATE of a debit or of a lone reserve only ever
//! counts unswept holds against the token (it may refuse, never overspend; a
//! refusal is then decided again under the row lock, after a sweep). A lone
//! reserve writes its hold only if no live hold of the token has expired, so
//! the `held` it answers is exact; otherwise it too is decided again. Reads
//! subtract what has expired but is not yet swept ([`Store::held_at`]).

use super::queue::{Op, Outcome};
use crate::domain::{HoldOutcome, HoldState, HoldTtl, KeyDigest, QuotaError, QuotaUnits, Token};
use crate::store::Store;
use crate::store::entity::hold;
use sea_orm::{ColumnTrait, EntityTrait, QueryFilter, QuerySelect};

impl Store {
    /// Holds `units` of the token whose key has `digest` under `request_id`
    /// for `ttl`, if its spendable balance covers them (or it is unlimited).
    /// See [`crate::domain::reserve`] for every state of the request id.
    pub async fn reserve(
        &self,
        digest: &KeyDigest,
        units: QuotaUnits,
        request_id: &str,
        ttl: HoldTtl,
        now: i64,
    ) -> Result<HoldOutcome, QuotaError> {
        let op = Op::Reserve {
            units,
            request_id: required(request_id)?,
            ttl,
        };
        hold_outcome(self.enqueue(digest, op, now).await?)
    }

    /// Turns the hold `request_id` into a debit of `cost` units (>= 0),
    /// recorded in the ledger under that id. See [`crate::domain::settle`].
    pub async fn settle(
        &self,
        digest: &KeyDigest,
        request_id: &str,
        cost: i64,
        now: i64,
    ) -> Result<HoldOutcome, QuotaError> {
        if cost < 0 {
            return Err(QuotaError::InvalidArgument(format!(
                "quota must not be negative, got {cost}"
            )));
        }
        let op = Op::Settle {
            request_id: required(request_id)?,
            cost,
        };
        hold_outcome(self.enqueue(digest, op, now).await?)
    }

    /// Frees the hold `request_id` without a debit. See [`crate::domain::release`].
    pub async fn release(
        &self,
        digest: &KeyDigest,
        request_id: &str,
        now: i64,
    ) -> Result<HoldOutcome, QuotaError> {
        let op = Op::Release {
            request_id: required(request_id)?,
        };
        hold_outcome(self.enqueue(digest, op, now).await?)
    }

    /// The units of `token`'s holds that are unexpired at `now`: its `held`
    /// less the live holds that have expired but are not yet swept.
    pub async fn held_at(&self, token: &Token, now: i64) -> Result<i64, QuotaError> {
        self.bounded(async {
            if token.held == 0 {
                return Ok(0);
            }
            let expired: Vec<i64> = hold::Entity::find()
                .select_only()
                .column(hold::Column::Units)
                .filter(hold::Column::TokenId.eq(token.id))
                .filter(hold::Column::State.eq(HoldState::Live.code()))
                .filter(hold::Column::ExpiresAt.lte(now))
                .into_tuple()
                .all(&self.read)
                .await?;
            Ok((token.held - expired.iter().sum::<i64>()).max(0))
        })
        .await
    }

    /// `token` with `held` counting only its holds unexpired at `now`, as reads show it.
    pub async fn with_held_at(&self, mut token: Token, now: i64) -> Result<Token, QuotaError> {
        token.held = self.held_at(&token, now).await?;
        Ok(token)
    }
}

fn required(request_id: &str) -> Result<String, QuotaError> {
    if request_id.is_empty() {
        Err(QuotaError::InvalidArgument(
            "request_id is required for a hold".into(),
        ))
    } else {
        Ok(request_id.to_owned())
    }
}

fn hold_outcome(outcome: Outcome) -> Result<HoldOutcome, QuotaError> {
    match outcome {
        Outcome::Hold(hold) => Ok(hold),
        Outcome::Debit(_) => Err(QuotaError::Internal(
            "a hold call was answered as a debit".into(),
        )),
    }
}

//! Integration tests of the store API on SQLite and PostgreSQL: tokens and
//! their ledger, the all-or-nothing idempotent debit, daily usage, and the
//! debit under concurrency on one store and on two stores ("replicas")
//! sharing a database, the per-token queue's bound and fallbacks, the
//! usage per day kept with the debits, and hold calls alone and in batches.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod concurrency;
mod consume;
mod errors;
mod group;
mod helpers;
mod holds;
mod idempotency;
mod queue;
mod tokens;
mod usage;
mod usage_days;

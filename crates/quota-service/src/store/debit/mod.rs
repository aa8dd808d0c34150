//! Debits: atomic, all-or-nothing, idempotent per request id, and coalesced
//! within a token and across tokens.
//!
//! Debits of one token that arrive while another of its debits is being
//! written wait in its queue; tokens with waiting debits wait for a
//! committer, which settles the waiting debits of many tokens in one
//! transaction (group commit: one row lock per token, taken in id order, one
//! UPDATE of the counters, one multi-row INSERT, one commit), each with its
//! own ledger row and its own outcome, in arrival order within its token. A
//! lone debit is written with a single conditional UPDATE. Both paths lock the
//! token's row before they look at the ledger, so they stay exact together and
//! across replicas sharing the database.

mod batch;
mod group;
mod holds;
mod json;
mod queue;
mod sql;

pub(super) use queue::Queues;
pub(super) use sql::insert_ledger;
#[cfg(feature = "testing")]
pub use sql::pgbench_debit_script;

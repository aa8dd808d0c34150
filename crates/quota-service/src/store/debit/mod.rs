//! Debits: atomic, all-or-nothing, idempotent per request id, and coalesced
//! per token.
//!
//! Debits of one token that arrive while another of its debits is being
//! written wait in a queue; the next transaction settles all of them at once
//! (one row lock, one UPDATE, one multi-row INSERT, one commit), each with its
//! own ledger row and its own outcome, in arrival order. A token that is not
//! busy is debited alone with a single conditional UPDATE. Both paths lock the
//! token's row before they look at the ledger, so they stay exact together and
//! across replicas sharing the database.

mod batch;
mod holds;
mod queue;
mod sql;

pub(super) use queue::Queues;
pub(super) use sql::insert_ledger;
#[cfg(feature = "testing")]
pub use sql::pgbench_debit_script;

//! Faults the service survives, as processes of the built `quotad`:
//!
//! - the database cut and restored through a TCP proxy: 503 within 3 s,
//!   recovery within 5 s of its return, with no restart ([`cut`]);
//! - the database stalled (connections open, nothing answered) and answering
//!   again: the same bounds, a debit on the wire when it stalled included,
//!   retried safely under its request id ([`stall`]);
//! - SIGTERM under load from 16 keep-alive clients: every request received
//!   gets its whole answer, exit 0 ([`sigterm`]);
//! - SIGKILL during a storm of debits: after a restart every acknowledged
//!   `request_id` is a repeat and `quotad verify` exits 0 ([`sigkill`]);
//! - `quotad verify` itself: clean while debits run, a counter changed
//!   behind its back found, exit 2 on a database it cannot read ([`verify`]).
//!
//! PostgreSQL and MySQL/MariaDB cases run when `QUOTA_TEST_POSTGRES_URL` and
//! `QUOTA_TEST_MYSQL_URL` are set, on a fresh database each.

#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "../cli/helpers.rs"]
#[allow(dead_code)]
mod common;
mod cut;
mod helpers;
mod proxy;
mod sigkill;
mod sigterm;
mod stall;
mod verify;

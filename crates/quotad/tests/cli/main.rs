//! End-to-end tests of the `quotad` binary, as a user and an operator run it:
//! `quotad serve` on port 0 with a SQLite file (and PostgreSQL when
//! `QUOTA_TEST_POSTGRES_URL` is set), keys minted and managed with
//! `quotad token ...`, the REST balance read over plain HTTP/1.1, shutdown on
//! SIGTERM and Ctrl-C, failures at start, `migrate` and `--help`, TLS with
//! a private CA, and the admin secret read from a file.
//!
//! Readiness is read from the server's log (`gRPC listening on ...`,
//! `REST listening on http://...`), never waited for by sleeping. Every child
//! process is owned by a guard that kills it when the test ends, passing or not.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod helpers;
#[path = "../../../quota-edge/tests/abuse/pki.rs"]
mod pki;

mod env;
mod errors;
mod help;
mod migrate;
mod ops;
mod serve;
mod shutdown;
mod tls;
mod token;

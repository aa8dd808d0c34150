//! Integration tests of the gRPC API, through real tonic clients against a
//! server on a fresh port, on SQLite and PostgreSQL: `quota.v1.QuotaService`,
//! `quota.v1.TokenAdmin`, their authentication, server reflection (v1 and
//! v1alpha) and health.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod auth;
mod cache;
mod consume;
mod helpers;
mod reflection;
mod subscription;
mod token_admin;
mod usage;

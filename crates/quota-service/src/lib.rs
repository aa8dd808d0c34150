//! The quota service: the domain (keys, units, limit arithmetic), the store
//! on sea-orm, and the gRPC services `quota.v1.QuotaService` and
//! `quota.v1.TokenAdmin` with reflection and health.
//!
//! Layers, from the bottom: [`domain`] (pure; its error type [`QuotaError`]
//! knows no database and no transport), [`store`] (sea-orm; turns database
//! errors into `QuotaError`), [`grpc`] and [`auth`] (tonic; the only place a
//! `QuotaError` becomes a `Status`).

pub mod auth;
pub mod cache;
pub mod domain;
pub mod grpc;
pub mod health;
pub mod store;
#[cfg(feature = "testing")]
pub mod testing;

pub use cache::CacheConfig;
pub use domain::QuotaError;
pub use grpc::{QuotaApi, ServerOptions, ServiceConfig, serve, serve_with};
pub use store::Store;

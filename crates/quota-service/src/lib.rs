//! The quota service: the domain (keys, units, limit arithmetic), the store
//! on sea-orm, and the gRPC services `quota.v1.QuotaService` and
//! `quota.v1.TokenAdmin` with reflection and health.

pub mod auth;
pub mod domain;
pub mod error;
pub mod grpc;
pub mod store;
#[cfg(feature = "testing")]
pub mod testing;

pub use error::QuotaError;
pub use grpc::{QuotaApi, ServiceConfig, serve};
pub use store::Store;

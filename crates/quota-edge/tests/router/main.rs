//! The edge's router, driven with `oneshot`: every error of the contract,
//! CORS, and the whole chain edge -> gRPC -> database.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod chain;
mod database;
mod helpers;
mod routing;
mod upstream;
mod usage;

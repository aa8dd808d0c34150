//! The edge's operations routes and layers: `/healthz`, `/readyz`,
//! `/openapi.json`, request ids.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod health;
mod helpers;
mod openapi;
mod request_id;

//! Bounds and abuse at the edge, over real sockets: oversized requests,
//! load shedding, the key-guessing throttle, and TLS.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod bounds;
mod helpers;
mod pki;
mod throttle;
mod tls;

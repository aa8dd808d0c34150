//! How both servers (gRPC and REST) find connections whose peer has gone:
//! a relay replica that crashed, a laptop that closed its lid, a NAT that
//! dropped the mapping. Such a peer sends no FIN, so without these checks
//! its connection stays open, holding a socket, for as long as the server
//! runs.
//!
//! - TCP keepalive on every accepted connection: after
//!   [`TCP_KEEPALIVE_IDLE`] without traffic (nothing sent and unanswered:
//!   data the peer has not acknowledged is left to the kernel's
//!   retransmission limit instead) the kernel probes the peer every
//!   [`TCP_KEEPALIVE_INTERVAL`] and drops the connection after
//!   [`TCP_KEEPALIVE_RETRIES`] unanswered probes (about 90 s in all).
//! - HTTP/2 PING: after [`HTTP2_PING_INTERVAL`] without a frame the server
//!   pings, and closes the connection if no answer comes within
//!   [`HTTP2_PING_TIMEOUT`]. This also finds a peer whose host answers TCP
//!   but whose program no longer reads. Every HTTP/2 client answers pings
//!   by itself; a live connection is never closed for being idle.
//!
//! An idle HTTP/1.1 connection is closed after 30 s by hyper's time limit
//! on the next request head.

use std::time::Duration;

/// Quiet time before the first TCP keepalive probe.
pub const TCP_KEEPALIVE_IDLE: Duration = Duration::from_secs(60);
/// Time between TCP keepalive probes.
pub const TCP_KEEPALIVE_INTERVAL: Duration = Duration::from_secs(10);
/// Unanswered probes after which the connection is dropped.
pub const TCP_KEEPALIVE_RETRIES: u32 = 3;
/// Quiet time on an HTTP/2 connection before the server pings its peer.
pub const HTTP2_PING_INTERVAL: Duration = Duration::from_secs(60);
/// How long the server waits for the answer to its ping.
pub const HTTP2_PING_TIMEOUT: Duration = Duration::from_secs(20);

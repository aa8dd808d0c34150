//! SIGTERM and Ctrl-C: a clean stop with exit 0.

use crate::helpers::*;
use std::io::Write;
use std::net::TcpStream;
use std::time::{Duration, Instant};

#[test]
fn sigterm_and_ctrl_c_stop_the_server_with_exit_0() {
    for signal in ["TERM", "INT"] {
        let dir = TempDir::new();
        let server = Server::start(&dir.sqlite_url("quota.db"), dir.path());
        let (key, _) = create_key(&server, "1");
        assert_subscription(&server, &key, 1);
        let started = Instant::now();
        let (status, log) = server.stop_with(signal);
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "SIG{signal}: took {:?}\n{log}",
            started.elapsed()
        );
        assert_eq!(status.code(), Some(0), "SIG{signal}: {status}\n{log}");
        assert!(log.contains("stopped"), "SIG{signal}:\n{log}");
        assert!(!log.contains("panicked"), "SIG{signal}:\n{log}");
    }
}

#[test]
fn connections_that_send_nothing_do_not_hold_the_shutdown_open() {
    let dir = TempDir::new();
    let server = Server::start(&dir.sqlite_url("quota.db"), dir.path());
    // Clients that connected and never spoke, on both ports, and one that
    // sent half a request.
    let _silent_grpc = TcpStream::connect(server.grpc_url.trim_start_matches("http://")).unwrap();
    let _silent_rest = TcpStream::connect(server.http.unwrap()).unwrap();
    let mut half = TcpStream::connect(server.http.unwrap()).unwrap();
    half.write_all(b"GET /v1/dashboard/billing/subscription HTTP/1.1\r\nHost: x\r\n")
        .unwrap();
    // A whole request is still answered meanwhile.
    let response = http_get(
        server.http.unwrap(),
        "/v1/dashboard/billing/subscription",
        None,
    );
    assert_eq!(response.status, 401, "{response:?}");
    let (status, log) = server.stop_with("TERM");
    assert_eq!(status.code(), Some(0), "{status}\n{log}");
}

#[test]
fn a_signal_right_after_the_listeners_are_announced_is_a_clean_stop() {
    // The handlers must be in place before readiness is announced.
    for _ in 0..5 {
        let dir = TempDir::new();
        let server = Server::start(&dir.sqlite_url("quota.db"), dir.path());
        let (status, log) = server.stop_with("TERM");
        assert_eq!(status.code(), Some(0), "{status}\n{log}");
    }
}

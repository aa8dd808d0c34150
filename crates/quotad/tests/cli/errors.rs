//! Failures at start: one clear line on stderr and a non-zero exit.

use crate::helpers::*;
use std::time::Duration;

#[test]
fn serve_fails_in_one_line_when_the_database_is_unreachable() {
    let dir = TempDir::new();
    let closed = ClosedPort::new();
    let url = format!("postgres://nobody:hunter2@127.0.0.1:{}/x", closed.port());
    let mut cmd = quotad();
    cmd.args(["serve", "--database-url", &url])
        .args(["--grpc-addr", "127.0.0.1:0", "--http-addr", "127.0.0.1:0"])
        .current_dir(dir.path());
    // The pool retries a refused connection until its 2 s acquire timeout.
    let out = run(cmd, Duration::from_secs(90));
    let line = failed_with_one_line(&out);
    assert_eq!(stderr_of(&out).lines().count(), 1, "{}", describe(&out));
    assert!(line.contains("cannot open database"), "{line}");
    assert!(!line.contains("hunter2"), "the password is shown: {line}");
    assert!(line.contains("nobody:***@"), "{line}");
}

#[test]
fn serve_fails_in_one_line_on_an_unsupported_database_url() {
    let dir = TempDir::new();
    let mut cmd = quotad();
    cmd.args(["serve", "--database-url", "bogus://me:hunter2@x"])
        .args(["--grpc-addr", "127.0.0.1:0", "--http-addr", "127.0.0.1:0"])
        .current_dir(dir.path());
    let out = run(cmd, COMMAND_TIMEOUT);
    let line = failed_with_one_line(&out);
    assert_eq!(stderr_of(&out).lines().count(), 1, "{}", describe(&out));
    assert!(line.contains("bogus://me:***@x"), "{line}");
    assert!(!line.contains("hunter2"), "the password is shown: {line}");
}

#[test]
fn serve_fails_on_a_bad_listen_address() {
    let dir = TempDir::new();
    for (grpc, http, bad) in [
        ("notanaddr", "127.0.0.1:0", "notanaddr"),
        ("127.0.0.1:0", "127.0.0.1:99999", "127.0.0.1:99999"),
    ] {
        let mut cmd = quotad();
        cmd.args(["serve", "--database-url", &dir.sqlite_url("quota.db")])
            .args(["--grpc-addr", grpc, "--http-addr", http])
            .current_dir(dir.path());
        let out = run(cmd, COMMAND_TIMEOUT);
        let line = failed_with_one_line(&out);
        assert!(
            line.contains("cannot listen") && line.contains(bad),
            "{line}"
        );
    }
}

#[test]
fn edge_refuses_an_upstream_it_cannot_call() {
    for bad in ["127.0.0.1:50051", "ftp://127.0.0.1:50051", "http://"] {
        let mut cmd = quotad();
        cmd.args(["edge", "--upstream", bad, "--http-addr", "127.0.0.1:0"]);
        let out = run(cmd, COMMAND_TIMEOUT);
        let line = failed_with_one_line(&out);
        assert!(line.contains("--upstream"), "{bad}: {line}");
    }
}

#[test]
fn an_unknown_flag_prints_the_usage() {
    let out = run(
        {
            let mut cmd = quotad();
            cmd.args(["serve", "--frobnicate"]);
            cmd
        },
        COMMAND_TIMEOUT,
    );
    assert_eq!(out.status.code(), Some(2), "{}", describe(&out));
    let stderr = stderr_of(&out);
    assert!(stderr.contains("--frobnicate"), "{stderr}");
    assert!(stderr.contains("Usage: quotad serve"), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
}

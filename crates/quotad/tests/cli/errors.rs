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
    // Why, not the pool's "timed out" that hides it.
    assert!(line.contains("Connection refused"), "{line}");
    assert!(!line.contains("hunter2"), "the password is shown: {line}");
    assert!(line.contains("nobody:***@"), "{line}");
}

/// A server that answers but refuses: its own words, and nothing else
/// (PostgreSQL sends the line of its own source with them, which sqlx's
/// text appends, "… at line 948", and which reads as a line of the
/// operator's settings).
#[test]
fn serve_says_in_the_servers_words_why_it_refused() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let (postgres, mysql) = rt.block_on(async {
        use quota_service::testing::TestDb;
        (TestDb::postgres().await, TestDb::mysql().await)
    });
    for db in [postgres, mysql].into_iter().flatten() {
        // The test's own database, named with a suffix no database has.
        let (base, query) = db.url.split_once('?').unwrap_or((&db.url, ""));
        let missing_db = format!("{base}_missing?{query}");
        let name = base.rsplit('/').next().unwrap();
        let dir = TempDir::new();
        let mut cmd = quotad();
        cmd.args(["serve", "--database-url", missing_db.trim_end_matches('?')])
            .args(["--grpc-addr", "127.0.0.1:0", "--http-addr", "127.0.0.1:0"])
            .current_dir(dir.path());
        let out = run(cmd, COMMAND_TIMEOUT);
        let line = failed_with_one_line(&out);
        assert!(line.contains("cannot open database"), "{line}");
        assert!(line.contains(&format!("{name}_missing")), "{line}");
        let said = line.to_ascii_lowercase();
        assert!(
            said.contains("does not exist") || said.contains("unknown database"),
            "{line}"
        );
        assert!(!said.contains(" at line "), "{line}");
        drop(db);
    }
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
        // Without an admin secret too: its warning waits for a server that
        // listens, so a start that fails is still one line.
        let mut cmd = quotad();
        cmd.env_remove("QUOTA_ADMIN_TOKEN")
            .args(["serve", "--database-url", &dir.sqlite_url("quota.db")])
            .args(["--grpc-addr", grpc, "--http-addr", http])
            .current_dir(dir.path());
        let out = run(cmd, COMMAND_TIMEOUT);
        let line = failed_with_one_line(&out);
        assert!(
            line.contains("cannot listen") && line.contains(bad),
            "{line}"
        );
        assert_eq!(stderr_of(&out).lines().count(), 1, "{}", describe(&out));
    }
}

#[test]
fn serve_refuses_one_port_for_grpc_and_rest_before_touching_the_database() {
    let dir = TempDir::new();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let at = |host: &str| format!("{host}:{port}");
    for (grpc, http, metrics, refused) in [
        (at("127.0.0.1"), at("127.0.0.1"), None, "REST"),
        (at("0.0.0.0"), at("127.0.0.1"), None, "REST"),
        (
            at("127.0.0.1"),
            "127.0.0.1:0".into(),
            Some(at("127.0.0.1")),
            "metrics",
        ),
    ] {
        let mut cmd = quotad();
        cmd.args(["serve", "--database-url", &dir.sqlite_url("quota.db")])
            .args(["--grpc-addr", &grpc, "--http-addr", &http])
            .current_dir(dir.path());
        if let Some(metrics) = &metrics {
            cmd.args(["--metrics-addr", metrics]);
        }
        let out = run(cmd, COMMAND_TIMEOUT);
        let line = failed_with_one_line(&out);
        assert!(
            line.contains(&format!("cannot listen for {refused}")) && line.contains("gRPC"),
            "{line}"
        );
        assert!(!dir.path().join("quota.db").exists(), "{grpc} {http}");
    }
}

#[test]
fn edge_refuses_an_upstream_it_cannot_call() {
    // (A bare HOST:PORT is a plain one, as --grpc-addr names it.)
    for bad in ["no such host:50051", "ftp://127.0.0.1:50051", "http://"] {
        let mut cmd = quotad();
        cmd.args(["edge", "--upstream", bad, "--http-addr", "127.0.0.1:0"]);
        let out = run(cmd, COMMAND_TIMEOUT);
        let line = failed_with_one_line(&out);
        assert!(line.contains("--upstream"), "{bad}: {line}");
    }
}

/// A refused command line: exit 2 and one line on stderr, which it returns.
fn refused_in_one_line(cmd: std::process::Command) -> String {
    let out = run(cmd, COMMAND_TIMEOUT);
    assert_eq!(out.status.code(), Some(2), "{}", describe(&out));
    let stderr = stderr_of(&out);
    assert_eq!(stderr.lines().count(), 1, "one line\n{}", describe(&out));
    assert!(!stderr.contains("panicked"), "{stderr}");
    stderr.trim_end().to_owned()
}

#[test]
fn a_bad_flag_or_value_is_one_line_naming_it_and_the_help() {
    let mut cmd = quotad();
    cmd.args(["serve", "--frobnicate"]);
    let line = refused_in_one_line(cmd);
    assert!(line.starts_with("quotad: "), "{line}");
    assert!(line.contains("'--frobnicate'"), "{line}");
    assert!(line.ends_with("see 'quotad serve --help'"), "{line}");

    let mut cmd = quotad();
    cmd.args(["serve", "--max-concurrency", "0"]);
    let line = refused_in_one_line(cmd);
    assert!(
        line.contains("'0'") && line.contains("--max-concurrency"),
        "{line}"
    );

    // From the environment too.
    let mut cmd = quotad();
    cmd.arg("serve").env("QUOTA_MAX_CONCURRENCY", "abc");
    let line = refused_in_one_line(cmd);
    assert!(
        line.contains("'abc'") && line.contains("--max-concurrency"),
        "{line}"
    );

    // One JSON object when JSON logs are asked for.
    for how in [&["--log-format", "json"][..], &[]] {
        let mut cmd = quotad();
        cmd.args(how).args(["serve", "--frobnicate"]);
        if how.is_empty() {
            cmd.env("QUOTA_LOG_FORMAT", "json");
        }
        let line = refused_in_one_line(cmd);
        let object: serde_json::Value = serde_json::from_str(&line).expect(&line);
        assert_eq!(object["level"], "ERROR", "{line}");
        let message = object["fields"]["message"].as_str().expect(&line);
        assert!(message.contains("'--frobnicate'"), "{line}");
    }
}

#[test]
fn the_version_is_printed_on_stdout() {
    // `--help` is `help.rs`'s; both pass through the same refusal of clap's.
    let mut cmd = quotad();
    cmd.arg("--version");
    let out = run(cmd, COMMAND_TIMEOUT);
    succeeded(&out);
    let version = stdout_of(&out);
    assert!(version.starts_with("quotad "), "{version}");
}

/// A server started without an admin secret says so, once it listens.
#[test]
fn a_server_without_an_admin_secret_warns_once_it_listens() {
    let dir = TempDir::new();
    let mut cmd = quotad();
    cmd.env_remove("QUOTA_ADMIN_TOKEN");
    let server = Server::serve(cmd, &dir.sqlite_url("quota.db"), &[], dir.path());
    let (status, log) = server.stop_with("TERM");
    assert!(status.success(), "{status}\n{log}");
    let at = |what: &str| {
        log.find(what)
            .unwrap_or_else(|| panic!("no {what:?} in\n{log}"))
    };
    assert!(
        at("REST listening") < at("QUOTA_ADMIN_TOKEN is not set"),
        "{log}"
    );
    assert_eq!(
        log.matches("QUOTA_ADMIN_TOKEN is not set").count(),
        1,
        "{log}"
    );
}

/// A database the server can read but not write (here a SQLite file opened
/// read-only; in life one whose file the server's user may only read, or a
/// PostgreSQL standby): refused at start in one line, not served with
/// every debit failing.
#[test]
fn serve_refuses_a_database_that_takes_no_writes() {
    let dir = TempDir::new();
    let url = format!("sqlite://{}/quota.db", dir.path().display());
    let mut migrate = quotad();
    migrate.args(["migrate", "--database-url", &url]);
    let out = run(migrate, COMMAND_TIMEOUT);
    assert!(out.status.success(), "{}", describe(&out));
    for command in ["serve", "grpc"] {
        let mut cmd = quotad();
        cmd.args([command, "--database-url", &format!("{url}?mode=ro")])
            .args(["--grpc-addr", "127.0.0.1:0"])
            .current_dir(dir.path());
        if command == "serve" {
            cmd.args(["--http-addr", "127.0.0.1:0"]);
        }
        let out = run(cmd, COMMAND_TIMEOUT);
        let line = failed_with_one_line(&out);
        assert!(line.contains("takes no writes"), "{line}");
        assert!(line.contains("readonly"), "{line}");
        assert!(!stderr_of(&out).contains("listening"), "{}", describe(&out));
    }
    // `quotad migrate` writes nothing when nothing is pending.
    let mut migrate = quotad();
    migrate.args(["migrate", "--database-url", &format!("{url}?mode=ro")]);
    let out = run(migrate, COMMAND_TIMEOUT);
    assert!(out.status.success(), "{}", describe(&out));
}

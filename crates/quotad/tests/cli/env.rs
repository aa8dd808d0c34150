//! Every setting read from its environment variable, with no flag given, the
//! admin secret read from a file (`QUOTA_ADMIN_TOKEN_FILE`), and the default
//! database: a SQLite file created on first start.

use crate::helpers::*;

#[test]
fn every_setting_reads_its_environment_variable() {
    let dir = TempDir::new();
    // The service: database, address, rate and admin secret from the environment.
    let mut grpc = quotad();
    grpc.arg("grpc")
        .env("QUOTA_DATABASE_URL", dir.sqlite_url("from-env.db"))
        .env("QUOTA_GRPC_ADDR", "127.0.0.1:0")
        .env("QUOTA_PER_USD", "1000");
    let service = Server::spawn(grpc, dir.path(), Serves::GRPC);
    assert!(dir.path().join("from-env.db").is_file());
    assert!(!dir.path().join("quota.db").exists());

    // The edge: upstream, address and throttle from the environment.
    let mut edge = quotad();
    edge.arg("edge")
        .env("QUOTA_UPSTREAM", &service.grpc_url)
        .env("QUOTA_HTTP_ADDR", "127.0.0.1:0")
        .env("QUOTA_AUTH_FAILURES_PER_MINUTE", "2")
        .env("QUOTA_TRUSTED_PROXIES", "10.0.0.0/8,127.0.0.1");
    let edge = Server::spawn(edge, dir.path(), Serves::HTTP);

    // `token` commands: the server and the secret from the environment.
    let token = |args: &[&str], secret: &str| {
        let mut cmd = quotad();
        cmd.arg("token")
            .args(args)
            .env("QUOTA_SERVER", &service.grpc_url)
            .env("QUOTA_ADMIN_TOKEN", secret);
        run(cmd, COMMAND_TIMEOUT)
    };
    // $7.50 at 1000 units a dollar.
    let (key, id) = created_key(&token(&["create", "--quota-usd", "7.5"], ADMIN));
    let shown = stdout_of(&token(&["show", &id.to_string()], ADMIN));
    assert!(has_line(&shown, "remaining: 7500"), "{shown}");
    assert_subscription(&edge, &key, 7);

    // 1234 units are 123.4 cents at this rate (0.2468 at the default one).
    let debit = consume(&service.grpc_url, &key, 1_234, "env-1").unwrap();
    assert_eq!((debit.remaining, debit.used), (6_266, 1_234));
    let usage = edge.get("/v1/dashboard/billing/usage", &key);
    assert_eq!(usage.status, 200, "{usage:?}");
    assert!(
        usage
            .body
            .starts_with(r#"{"object":"list","total_usage":123.4,"daily_costs":[{"timestamp":"#),
        "{usage:?}"
    );

    // The service checks the secret it was given in QUOTA_ADMIN_TOKEN.
    let refused = token(&["list"], "not-the-secret");
    let line = failed_with_one_line(&refused);
    assert_eq!(
        line,
        "quotad: unauthenticated: invalid admin credential",
        "{}",
        describe(&refused)
    );

    // The throttle: past 2 failures a minute a client is refused with 429;
    // the client is the one X-Forwarded-For names, since the peer
    // (127.0.0.1, the list's second entry) is a trusted proxy.
    let guess = format!("Bearer sk-{}", "x".repeat(48));
    let from = |client: &str| {
        let headers = [
            ("Authorization", guess.as_str()),
            ("X-Forwarded-For", client),
        ];
        http_request(
            edge.http.unwrap(),
            "GET",
            "/v1/dashboard/billing/subscription",
            &headers,
        )
        .status
    };
    let answers: Vec<u16> = (0..4).map(|_| from("203.0.113.7")).collect();
    assert_eq!(answers, [401, 401, 401, 429]);
    assert_eq!(from("203.0.113.8"), 401, "another client is not throttled");

    for server in [edge, service] {
        let (status, log) = server.stop_with("TERM");
        assert!(status.success(), "{status}\n{log}");
    }
}

#[test]
fn the_default_database_is_a_sqlite_file_created_on_first_start() {
    let dir = TempDir::new();
    let serve = || {
        let mut cmd = quotad();
        cmd.args([
            "serve",
            "--grpc-addr",
            "127.0.0.1:0",
            "--http-addr",
            "127.0.0.1:0",
        ]);
        Server::spawn(cmd, dir.path(), Serves::BOTH)
    };
    let file = dir.path().join("quota.db");
    assert!(!file.exists());
    let first = serve();
    assert!(
        file.is_file(),
        "quota.db not created in the working directory"
    );
    let (key, _) = create_key(&first, "3");
    let (status, log) = first.stop_with("TERM");
    assert!(status.success(), "{status}\n{log}");

    // The next start opens the same file: the key is still there.
    let second = serve();
    assert_subscription(&second, &key, 3);
    let (status, log) = second.stop_with("TERM");
    assert!(status.success(), "{status}\n{log}");
}

#[test]
fn the_admin_token_can_come_from_a_file_but_not_from_both() {
    let dir = TempDir::new();
    // As Docker and Kubernetes write a secret: with a trailing newline.
    let file = dir.path().join("admin-token");
    std::fs::write(&file, format!("{ADMIN}\n")).unwrap();
    let database = dir.sqlite_url("quota.db");

    // The server reads its secret from the file alone...
    let mut cmd = quotad();
    cmd.env_remove("QUOTA_ADMIN_TOKEN")
        .env("QUOTA_ADMIN_TOKEN_FILE", &file);
    let server = Server::serve(cmd, &database, &[], dir.path());
    // ... and so does the CLI.
    let mut cmd = quotad();
    cmd.env_remove("QUOTA_ADMIN_TOKEN")
        .env("QUOTA_ADMIN_TOKEN_FILE", &file)
        .args([
            "token",
            "create",
            "--quota",
            "700",
            "--server",
            &server.grpc_url,
        ]);
    let (key, _) = created_key(&run(cmd, COMMAND_TIMEOUT));
    // The newline was not part of the server's secret: the same secret
    // from QUOTA_ADMIN_TOKEN, without one, is accepted.
    assert!(has_line(
        &server.token_ok(&["show", &key]),
        "remaining: 700"
    ));

    // Both variables set: one clear line and a non-zero exit, for the CLI
    // and for a server, which then never starts: the settings are checked
    // before any port is bound (here the REST port is one in use, which
    // would be the line otherwise).
    const BOTH: &str = "quotad: QUOTA_ADMIN_TOKEN and QUOTA_ADMIN_TOKEN_FILE (--admin-token, --admin-token-file) are both set: give one";
    let mut cmd = quotad();
    cmd.env("QUOTA_ADMIN_TOKEN_FILE", &file)
        .args(["token", "list", "--server", &server.grpc_url]);
    let out = run(cmd, COMMAND_TIMEOUT);
    assert_eq!(failed_with_one_line(&out), BOTH, "{}", describe(&out));
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let taken = taken.local_addr().unwrap().to_string();
    let mut cmd = quotad();
    cmd.env("QUOTA_ADMIN_TOKEN_FILE", &file)
        .current_dir(dir.path())
        .args([
            "serve",
            "--database-url",
            &database,
            "--grpc-addr",
            "127.0.0.1:0",
            "--http-addr",
            &taken,
        ]);
    let out = run(cmd, COMMAND_TIMEOUT);
    assert_eq!(failed_with_one_line(&out), BOTH, "{}", describe(&out));

    // A file that cannot be read is named in the one line.
    let missing = dir.path().join("no-such-secret");
    let mut cmd = quotad();
    cmd.env_remove("QUOTA_ADMIN_TOKEN")
        .env("QUOTA_ADMIN_TOKEN_FILE", &missing)
        .args(["token", "list", "--server", &server.grpc_url]);
    let out = run(cmd, COMMAND_TIMEOUT);
    let line = failed_with_one_line(&out);
    let expected = format!(
        "quotad: cannot read QUOTA_ADMIN_TOKEN_FILE {}: No such file or directory (os error 2)",
        missing.display()
    );
    assert_eq!(line, expected, "{}", describe(&out));

    // So is an empty one (a secret not mounted): a server does not start
    // with its admin methods closed by accident.
    let empty = dir.path().join("empty-secret");
    std::fs::write(&empty, "\n").unwrap();
    let mut cmd = quotad();
    cmd.env_remove("QUOTA_ADMIN_TOKEN")
        .env("QUOTA_ADMIN_TOKEN_FILE", &empty)
        .current_dir(dir.path())
        .args(["serve", "--database-url", &database])
        .args(["--grpc-addr", "127.0.0.1:0", "--http-addr", "127.0.0.1:0"]);
    let out = run(cmd, COMMAND_TIMEOUT);
    let expected = format!(
        "quotad: QUOTA_ADMIN_TOKEN_FILE {} is empty: it must hold the admin secret",
        empty.display()
    );
    assert_eq!(failed_with_one_line(&out), expected, "{}", describe(&out));

    // A secret no caller could send after `Bearer ` (white space in it, a
    // second line in the file) is refused the same way, not taken for one
    // that closes the admin methods to everyone.
    let two_lines = dir.path().join("two-lines");
    std::fs::write(&two_lines, "first\nsecond\n").unwrap();
    let cases = [
        ("QUOTA_ADMIN_TOKEN", "   ".to_owned()),
        ("QUOTA_ADMIN_TOKEN", " padded".to_owned()),
        ("QUOTA_ADMIN_TOKEN", "pässwort".to_owned()),
        ("QUOTA_ADMIN_TOKEN_FILE", two_lines.display().to_string()),
    ];
    for (variable, value) in cases {
        let mut cmd = quotad();
        cmd.env_remove("QUOTA_ADMIN_TOKEN")
            .env(variable, &value)
            .current_dir(dir.path())
            .args(["serve", "--database-url", &database])
            .args(["--grpc-addr", "127.0.0.1:0", "--http-addr", "127.0.0.1:0"]);
        let out = run(cmd, COMMAND_TIMEOUT);
        let line = failed_with_one_line(&out);
        assert!(
            line.contains("cannot carry"),
            "{variable}={value:?}: {line}"
        );
        assert!(!line.contains(&value), "the secret is shown: {line}");
    }
    // A passphrase, spaces within, is one a caller can send: it works.
    let phrase = "correct horse battery staple";
    let mut cmd = quotad();
    cmd.env("QUOTA_ADMIN_TOKEN", phrase);
    let spaced = Server::serve(cmd, &dir.sqlite_url("phrase.db"), &[], dir.path());
    let mut cmd = quotad();
    cmd.env("QUOTA_ADMIN_TOKEN", phrase).args([
        "token",
        "create",
        "--quota",
        "5",
        "--server",
        &spaced.grpc_url,
    ]);
    created_key(&run(cmd, COMMAND_TIMEOUT));
    let mut cmd = quotad();
    cmd.env("QUOTA_ADMIN_TOKEN", "correct horse").args([
        "token",
        "list",
        "--server",
        &spaced.grpc_url,
    ]);
    let line = failed_with_one_line(&run(cmd, COMMAND_TIMEOUT));
    assert!(line.contains("unauthenticated"), "{line}");
    let (status, log) = spaced.stop_with("TERM");
    assert!(status.success(), "{status}\n{log}");

    let (status, log) = server.stop_with("TERM");
    assert!(status.success(), "{status}\n{log}");
}

/// A `QUOTA_LOG` that is not a filter (a typo) is not silently dropped:
/// the server logs with the default and says so in its first line.
#[test]
fn a_log_filter_that_does_not_parse_is_named_in_a_warning() {
    let dir = TempDir::new();
    for asked in ["garbage[[", "info,quota=loud"] {
        let mut cmd = quotad();
        cmd.env("QUOTA_LOG", asked);
        let server = Server::serve(cmd, &dir.sqlite_url("quota.db"), &[], dir.path());
        let (status, log) = server.stop_with("TERM");
        assert!(status.success(), "{status}\n{log}");
        let first = log.lines().next().unwrap_or_default();
        assert!(first.contains("WARN"), "{asked}: {log}");
        assert!(
            first.contains("QUOTA_LOG is not a log filter"),
            "{asked}: {log}"
        );
        assert!(first.contains(asked), "{asked}: {log}");
        // The default's lines follow.
        assert!(log.contains("INFO"), "{asked}: {log}");
    }
    // Nor one that is not UTF-8, which no filter is.
    let mut cmd = quotad();
    cmd.env(
        "QUOTA_LOG",
        <std::ffi::OsStr as std::os::unix::ffi::OsStrExt>::from_bytes(b"debug\xff"),
    );
    let server = Server::serve(cmd, &dir.sqlite_url("quota.db"), &[], dir.path());
    let (status, log) = server.stop_with("TERM");
    assert!(status.success(), "{status}\n{log}");
    let first = log.lines().next().unwrap_or_default();
    assert!(first.contains("WARN"), "{log}");
    assert!(first.contains("QUOTA_LOG is not a log filter"), "{log}");
    assert!(first.contains("not UTF-8"), "{log}");
    assert!(first.contains("debug\u{fffd}"), "{log}");
    assert!(!log.contains("DEBUG"), "the default filter is info: {log}");
}

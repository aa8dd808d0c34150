//! Every setting read from its environment variable, with no flag given, and
//! the default database: a SQLite file created on first start.

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
    let service = Server::spawn(
        grpc,
        dir.path(),
        Serves {
            grpc: true,
            http: false,
        },
    );
    assert!(dir.path().join("from-env.db").is_file());
    assert!(!dir.path().join("quota.db").exists());

    // The edge: upstream and address from the environment.
    let mut edge = quotad();
    edge.arg("edge")
        .env("QUOTA_UPSTREAM", &service.grpc_url)
        .env("QUOTA_HTTP_ADDR", "127.0.0.1:0");
    let edge = Server::spawn(
        edge,
        dir.path(),
        Serves {
            grpc: false,
            http: true,
        },
    );

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
        "quotad: The request does not have valid authentication credentials: invalid admin credential",
        "{}",
        describe(&refused)
    );

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
        Server::spawn(
            cmd,
            dir.path(),
            Serves {
                grpc: true,
                http: true,
            },
        )
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

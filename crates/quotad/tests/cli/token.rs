//! `quotad token ...` against a running `quotad serve`, and its failures.

use crate::helpers::*;

#[test]
fn serve_on_sqlite_and_manage_a_key_from_the_command_line() {
    let dir = TempDir::new();
    let server = Server::start(&dir.sqlite_url("quota.db"), dir.path());
    assert!(dir.path().join("quota.db").exists(), "SQLite file created");

    let (key, id) = create_key(&server, "5");
    assert_subscription(&server, &key, 5);

    // A grant adds to the limit.
    let granted = server.token_ok(&["grant", &key, "--quota-usd", "2"]);
    assert!(has_line(&granted, "remaining: 3500000"), "{granted}");
    assert_subscription(&server, &key, 7);

    // Disabled: refused; enabled again: served again, limit unchanged.
    let disabled = server.token_ok(&["disable", &key]);
    assert!(has_line(&disabled, "status: disabled"), "{disabled}");
    assert_refused(&server, &key);
    let enabled = server.token_ok(&["enable", &key]);
    assert!(has_line(&enabled, "status: enabled"), "{enabled}");
    assert_subscription(&server, &key, 7);

    // `list` shows the display prefix, never the key.
    let list = server.token(&["list"]);
    succeeded(&list);
    let listed = stdout_of(&list);
    assert!(listed.contains(&key[..7]), "{listed}");
    assert!(!listed.contains(&key), "list leaks the key: {listed}");
    assert!(!stderr_of(&list).contains(&key), "{}", describe(&list));
    let columns = listed_columns(&server, id);
    assert_eq!(columns[2], "enabled", "{columns:?}");
    assert_eq!(columns[4], "3500000", "{columns:?}");

    // `show` by id and by key.
    for by in [id.to_string(), key.clone()] {
        let shown = server.token_ok(&["show", &by]);
        assert!(shown.contains(&format!("id: {id}\n")), "{shown}");
        assert!(shown.contains(&format!("prefix: {}", &key[..7])), "{shown}");
        assert!(has_line(&shown, "remaining: 3500000"), "{shown}");
        assert!(has_line(&shown, "used: 0"), "{shown}");
        assert!(!shown.contains(&key), "show leaks the key: {shown}");
    }

    // Units held by a Reserve show as held, until released.
    hold(&server, &key, Some(1_000));
    let shown = server.token_ok(&["show", &id.to_string()]);
    assert!(has_line(&shown, "held: 1000"), "{shown}");
    assert!(has_line(&shown, "remaining: 3500000"), "{shown}");
    assert!(has_line(&shown, "limit: 3500000"), "{shown}");
    let columns = listed_columns(&server, id);
    assert_eq!(columns[6..8], ["1000", "never"], "{columns:?}");
    hold(&server, &key, None);
    assert!(has_line(&server.token_ok(&["show", &key]), "held: 0"));

    // Deleted: refused, and gone from the admin API.
    succeeded(&server.token(&["delete", &key]));
    assert_refused(&server, &key);
    let show = server.token(&["show", &id.to_string()]);
    assert!(!show.status.success(), "{}", describe(&show));
    let list = server.token_ok(&["list"]);
    assert!(!list.contains(&key[..7]), "{list}");

    // A key sent as the HTTP method (any token is one) is logged as its
    // display prefix only, in the request's span and its 404 line.
    {
        use std::io::{Read, Write};
        let mut stream = std::net::TcpStream::connect(server.http.unwrap()).unwrap();
        write!(
            stream,
            "{key} /nowhere HTTP/1.1\r\nHost: q\r\nConnection: close\r\n\r\n"
        )
        .unwrap();
        let mut answer = String::new();
        stream.read_to_string(&mut answer).unwrap();
        assert!(answer.starts_with("HTTP/1.1 404"), "{answer}");
        assert!(!answer.contains(&key), "the key is in the answer: {answer}");
    }

    let (status, log) = server.stop_with("TERM");
    assert!(status.success(), "{status}\n{log}");
    assert!(!log.contains(&key), "the key is in the server log:\n{log}");
    assert!(log.contains(&format!("method={}…", &key[..7])), "{log}");
}

#[test]
fn token_commands_need_the_admin_token() {
    let closed = ClosedPort::new();
    let mut cmd = quotad();
    cmd.env_remove("QUOTA_ADMIN_TOKEN")
        .args(["token", "list", "--server"])
        .arg(format!("http://127.0.0.1:{}", closed.port()));
    let out = run(cmd, COMMAND_TIMEOUT);
    let line = failed_with_one_line(&out);
    assert!(line.contains("QUOTA_ADMIN_TOKEN"), "{line}");
}

#[test]
fn token_commands_say_when_the_service_cannot_be_reached() {
    let closed = ClosedPort::new();
    let server = format!("http://127.0.0.1:{}", closed.port());
    let mut cmd = quotad();
    cmd.args(["token", "create", "--quota-usd", "5", "--server", &server]);
    let out = run(cmd, COMMAND_TIMEOUT);
    let line = failed_with_one_line(&out);
    assert!(line.contains("cannot reach"), "{line}");
    assert!(line.contains(&server), "{line}");
    assert!(out.stdout.is_empty(), "{}", describe(&out));
}

/// `--server` takes the gRPC listener as `--grpc-addr` names it, with no
/// scheme; pointed at the REST listener, a command (and `health`) says so
/// instead of quoting a gRPC decoding error.
#[test]
fn token_commands_take_host_and_port_and_name_the_rest_port_a_mistake() {
    let dir = TempDir::new();
    let server = Server::start(&dir.sqlite_url("quota.db"), dir.path());
    let (key, id) = create_key(&server, "5");
    let bare = server.grpc_url.trim_start_matches("http://");
    let mut cmd = quotad();
    cmd.args(["token", "show", &id.to_string(), "--server", bare]);
    let out = run(cmd, COMMAND_TIMEOUT);
    succeeded(&out);
    assert!(stdout_of(&out).contains(&key[..7]), "{}", describe(&out));

    let rest = format!("http://{}", server.http.unwrap());
    let mut cmd = quotad();
    cmd.args(["token", "list", "--server", &rest]);
    let line = failed_with_one_line(&run(cmd, COMMAND_TIMEOUT));
    assert!(line.contains("not as a gRPC service"), "{line}");
    assert!(line.contains("REST"), "{line}");
    let mut cmd = quotad();
    cmd.args(["health", "--grpc", &rest]);
    let line = failed_with_one_line(&run(cmd, COMMAND_TIMEOUT));
    assert!(line.contains("not as a gRPC service"), "{line}");
    let mut cmd = quotad();
    cmd.args(["health", "--grpc", bare]);
    succeeded(&run(cmd, COMMAND_TIMEOUT));
}

/// A reader that stops early (`quotad token list | head -1`) closes the
/// pipe: the command ends quietly, with no panic and exit 0.
#[test]
fn commands_end_quietly_when_their_reader_has_gone() {
    let dir = TempDir::new();
    let server = Server::start(&dir.sqlite_url("quota.db"), dir.path());
    create_key(&server, "5");
    let closed_pipe = || {
        let (reader, writer) = std::io::pipe().unwrap();
        drop(reader);
        writer
    };
    let mut commands = Vec::new();
    for args in [&["list"][..], &["show", "1"], &["list", "--output", "json"]] {
        let mut cmd = quotad();
        cmd.arg("token")
            .args(args)
            .args(["--server", &server.grpc_url]);
        commands.push((format!("token {args:?}"), cmd));
    }
    let mut cmd = quotad();
    cmd.args([
        "migrate",
        "--status",
        "--database-url",
        &dir.sqlite_url("quota.db"),
    ]);
    commands.push(("migrate --status".into(), cmd));
    let mut cmd = quotad();
    cmd.args(["verify", "--database-url", &dir.sqlite_url("quota.db")]);
    commands.push(("verify".into(), cmd));
    for (what, mut cmd) in commands {
        let out = cmd
            .stdout(closed_pipe())
            .stderr(std::process::Stdio::piped())
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "{what}: {:?}\n{stderr}", out.status);
        assert!(stderr.is_empty(), "{what}: {stderr}");
    }
    // But the one time a key is shown, not showing it is a failure, which
    // names the token to delete.
    for output in ["text", "json"] {
        let out = quotad()
            .args(["token", "create", "--quota", "5", "--output", output])
            .args(["--server", &server.grpc_url])
            .stdout(closed_pipe())
            .stderr(std::process::Stdio::piped())
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{output}: {stderr}");
        assert!(
            stderr.contains("was created, but its key could not be written"),
            "{output}: {stderr}"
        );
        assert!(
            stderr.contains("quotad token delete "),
            "{output}: {stderr}"
        );
        assert!(
            !stderr.contains("sk-"),
            "{output}: the key on stderr: {stderr}"
        );
    }
}

#[test]
fn token_commands_print_json_for_programs() {
    let dir = TempDir::new();
    let server = Server::start(&dir.sqlite_url("quota.db"), dir.path());
    let json = |args: &[&str]| -> serde_json::Value {
        let mut with_output = args.to_vec();
        with_output.extend(["--output", "json"]);
        let stdout = server.token_ok(&with_output);
        assert_eq!(stdout.lines().count(), 1, "one line: {stdout}");
        serde_json::from_str(&stdout).unwrap_or_else(|e| panic!("not JSON ({e}): {stdout}"))
    };
    let created = json(&["create", "--name", "bot", "--quota-usd", "5"]);
    let key = created["key"].as_str().unwrap().to_owned();
    assert!(key.starts_with("sk-") && key.len() == 51, "{created}");
    let token = &created["token"];
    let id = token["id"].as_i64().unwrap();
    assert_eq!(token["name"], "bot");
    assert_eq!(token["status"], "enabled");
    assert_eq!(token["unlimited"], false);
    assert_eq!(token["remaining"], 2_500_000);
    assert_eq!(token["used"], 0);
    assert_eq!(token["held"], 0);
    assert_eq!(token["limit"], 2_500_000);
    assert_eq!(token["expires_at"], serde_json::Value::Null);
    assert_eq!(token["prefix"].as_str().unwrap(), format!("{}…", &key[..7]));
    // Nowhere but in create's answer is the key.
    let shown = json(&["show", &id.to_string()]);
    assert_eq!(&shown, token, "show prints what create did");
    assert!(!shown.to_string().contains(&key));
    let unlimited = json(&[
        "create",
        "--unlimited",
        "--expires-at",
        "2030-01-01T00:00:00Z",
    ]);
    assert_eq!(unlimited["token"]["unlimited"], true);
    assert_eq!(unlimited["token"]["expires_at"], 1_893_456_000);
    let listed = json(&["list"]);
    let ids: Vec<i64> = listed
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["id"].as_i64().unwrap())
        .collect();
    assert_eq!(ids, [id, unlimited["token"]["id"].as_i64().unwrap()]);
    assert_eq!(listed[0], shown);
    let granted = json(&["grant", &id.to_string(), "--quota", "7"]);
    assert_eq!(granted["limit"], 2_500_007);
    // Held units, as `show` prints them in text.
    hold(&server, &key, Some(1_000));
    let held = json(&["show", &key]);
    assert_eq!(held["held"], 1_000, "{held}");
    assert_eq!(held["remaining"], 2_500_007, "a hold is not a debit");
    assert_eq!(held["limit"], 2_500_007, "holds never change the limit");
    hold(&server, &key, None);
    assert_eq!(json(&["show", &key])["held"], 0);
    let disabled = json(&["disable", &key]);
    assert_eq!(disabled["status"], "disabled");
    let deleted = json(&["delete", &unlimited["token"]["id"].to_string()]);
    assert_eq!(deleted, serde_json::json!({"deleted": true}));
    assert_eq!(json(&["list"]).as_array().unwrap().len(), 1);
    // The default stays text: the key alone.
    let (plain, _) = create_key(&server, "1");
    assert!(plain.starts_with("sk-"));
}

/// The `show` output of a token, as a list of its `name: value` lines.
/// The columns of `token list`'s row of token `id`:
/// ID PREFIX STATUS UNLIMITED REMAINING USED HELD EXPIRES NAME.
fn listed_columns(server: &Server, id: i64) -> Vec<String> {
    let listed = server.token_ok(&["list"]);
    let row = listed
        .lines()
        .find(|l| l.split_whitespace().next() == Some(id.to_string().as_str()))
        .unwrap_or_else(|| panic!("no row with id {id}: {listed}"));
    row.split_whitespace().map(str::to_owned).collect()
}

fn shown_lines(server: &Server, id: i64) -> Vec<String> {
    server
        .token_ok(&["show", &id.to_string()])
        .lines()
        .map(str::to_owned)
        .collect()
}

fn assert_shows(server: &Server, id: i64, expected: &[&str]) {
    let lines = shown_lines(server, id);
    for line in expected {
        assert!(
            lines.iter().any(|l| l == line),
            "{line:?} not in {lines:#?}"
        );
    }
}

#[test]
fn create_by_units_unlimited_and_expiring_and_grant_by_units() {
    let dir = TempDir::new();
    let server = Server::start(&dir.sqlite_url("quota.db"), dir.path());

    // An expiry already past: made as asked, and said plainly.
    let out = server.token(&[
        "create",
        "--quota",
        "1",
        "--expires-at",
        "2020-01-01T00:00:00Z",
    ]);
    created_key(&out);
    assert!(
        stderr_of(&out).contains(
            "): 1 units, expired at 2020-01-01T00:00:00Z (already past: the key is refused everywhere)"
        ),
        "{}",
        describe(&out)
    );

    // --quota UNITS: 1234567 units are $2 (rounded down).
    let out = server.token(&["create", "--quota", "1234567", "--name", "by-units"]);
    let (key, id) = created_key(&out);
    assert!(
        stderr_of(&out).contains(&format!("created token {id} (")),
        "{}",
        describe(&out)
    );
    assert!(
        stderr_of(&out).contains("): 1234567 units, never expires"),
        "{}",
        describe(&out)
    );
    assert_shows(
        &server,
        id,
        &[
            "name: by-units",
            "status: enabled",
            "unlimited: false",
            "remaining: 1234567",
            "used: 0",
            "expires_at: never",
        ],
    );
    assert_subscription(&server, &key, 2);

    // grant --quota UNITS, by id: the limit grows by exactly the grant.
    let granted = server.token_ok(&["grant", &id.to_string(), "--quota", "765433"]);
    assert!(has_line(&granted, "remaining: 2000000"), "{granted}");
    assert!(has_line(&granted, "used: 0"), "{granted}");
    assert_subscription(&server, &key, 4);

    // --unlimited.
    let (unlimited, unlimited_id) = created_key(&server.token(&["create", "--unlimited"]));
    assert_shows(
        &server,
        unlimited_id,
        &["unlimited: true", "remaining: 0", "used: 0"],
    );
    assert_subscription(&server, &unlimited, 100_000_000);

    // --expires-at as RFC 3339 and as unix seconds: access_until says when.
    for (at, unix) in [
        ("2099-01-01T00:00:00Z", 4_070_908_800),
        ("2099-01-01T01:00:00+01:00", 4_070_908_800),
        ("4102444800", 4_102_444_800),
    ] {
        let (expiring, expiring_id) =
            created_key(&server.token(&["create", "--quota-usd", "1", "--expires-at", at]));
        let when = if unix == 4_070_908_800 {
            "2099-01-01T00:00:00Z"
        } else {
            "2100-01-01T00:00:00Z"
        };
        assert_shows(
            &server,
            expiring_id,
            &[&format!("expires_at: {unix} ({when})")],
        );
        assert_eq!(listed_columns(&server, expiring_id)[7], when);
        for path in [
            "/v1/dashboard/billing/subscription",
            "/dashboard/billing/subscription",
        ] {
            let response = server.get(path, &expiring);
            assert_eq!(response.status, 200, "{at}: {response:?}");
            assert_eq!(response.body, subscription_until(1, unix), "{at}");
        }
    }

    // An expiry in the past: the key is refused as expired, and `show` and
    // `list` say so.
    let (expired, expired_id) =
        created_key(&server.token(&["create", "--quota-usd", "1", "--expires-at", "1000"]));
    assert_refused(&server, &expired);
    assert_shows(
        &server,
        expired_id,
        &["expires_at: 1000 (1970-01-01T00:16:40Z, past: the key is refused everywhere)"],
    );
    assert_eq!(listed_columns(&server, expired_id)[7], "expired");
    let response = server.get("/v1/dashboard/billing/subscription", &expired);
    assert!(
        response.body.contains("API key has expired"),
        "{response:?}"
    );

    // An expiry that is neither, or past what a time can say: one line,
    // nothing created.
    let out = server.token(&["create", "--quota", "1", "--expires-at", "next year"]);
    let line = failed_with_one_line(&out);
    assert!(line.contains("--expires-at \"next year\""), "{line}");
    assert!(out.stdout.is_empty(), "{}", describe(&out));
    for far in [
        "99999999999999",
        "253402300800",
        "-1",
        "1970-01-01T00:00:00Z",
    ] {
        let out = server.token(&["create", "--quota", "1", "--expires-at", far]);
        let line = failed_with_one_line(&out);
        assert!(line.contains("out of range"), "{far}: {line}");
        assert!(out.stdout.is_empty(), "{}", describe(&out));
    }
    let (_, last_id) = created_key(&server.token(&[
        "create",
        "--quota",
        "1",
        "--expires-at",
        "9999-12-31T23:59:59Z",
    ]));
    assert_shows(
        &server,
        last_id,
        &["expires_at: 253402300799 (9999-12-31T23:59:59Z)"],
    );
    // 0 in unix seconds is never, as the API has it.
    let (_, never_id) =
        created_key(&server.token(&["create", "--quota", "1", "--expires-at", "0"]));
    assert_shows(&server, never_id, &["expires_at: never"]);

    let (status, log) = server.stop_with("TERM");
    assert!(status.success(), "{status}\n{log}");
}

/// Holds `units` of `key` through the gRPC API (or releases the hold: `None`).
fn hold(server: &Server, key: &str, units: Option<i64>) {
    use quota::pb;
    use quota::pb::quota_service_client::QuotaServiceClient;
    fn admin<T>(message: T) -> tonic::Request<T> {
        let mut req = tonic::Request::new(message);
        req.metadata_mut()
            .insert("authorization", format!("Bearer {ADMIN}").parse().unwrap());
        req
    }
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let mut client = QuotaServiceClient::connect(server.grpc_url.clone())
            .await
            .unwrap();
        match units {
            Some(quota) => {
                let req = pb::ReserveRequest {
                    token: key.to_owned(),
                    quota,
                    request_id: "cli-hold".into(),
                    ttl_seconds: 600,
                };
                client.reserve(admin(req)).await.unwrap();
            }
            None => {
                let req = pb::ReleaseRequest {
                    token: key.to_owned(),
                    request_id: "cli-hold".into(),
                };
                client.release(admin(req)).await.unwrap();
            }
        }
    });
}

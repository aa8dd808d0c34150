//! Unit tests of the command line.

use super::*;
use clap::CommandFactory;

#[test]
fn one_trailing_newline_is_not_part_of_the_secret() {
    assert_eq!(without_trailing_newline("s3cret\n"), "s3cret");
    assert_eq!(without_trailing_newline("s3cret\r\n"), "s3cret");
    assert_eq!(without_trailing_newline("s3cret\n\n"), "s3cret\n");
    assert_eq!(without_trailing_newline("s3cret"), "s3cret");
}

#[test]
fn trusted_proxies_are_blocks_or_addresses() {
    assert_eq!(
        parse_cidr("10.0.0.0/8").unwrap(),
        "10.0.0.0/8".parse::<IpNet>().unwrap()
    );
    assert_eq!(
        parse_cidr("192.0.2.1").unwrap(),
        "192.0.2.1/32".parse::<IpNet>().unwrap()
    );
    assert!(parse_cidr("proxy.local").is_err());
    let cli = Cli::try_parse_from([
        "quotad",
        "edge",
        "--upstream",
        "http://x:1",
        "--trusted-proxy",
        "10.0.0.0/8",
        "--trusted-proxy",
        "::1, 192.0.2.0/24",
        "--trusted-proxy",
        "",
    ])
    .unwrap();
    let Command::Edge { throttle, .. } = cli.command else {
        panic!("not edge")
    };
    let blocks: Vec<String> = throttle
        .trusted_proxies()
        .iter()
        .map(ToString::to_string)
        .collect();
    assert_eq!(blocks, ["10.0.0.0/8", "::1/128", "192.0.2.0/24"]);
    assert!(
        Cli::try_parse_from([
            "quotad",
            "edge",
            "--upstream",
            "http://x:1",
            "--trusted-proxy",
            "10.0.0.0/8,proxy.local",
        ])
        .is_err()
    );
}

#[test]
fn tls_needs_both_files() {
    assert!(Cli::try_parse_from(["quotad", "grpc", "--tls-cert", "c.pem"]).is_err());
    assert!(Cli::try_parse_from(["quotad", "grpc", "--tls-key", "k.pem"]).is_err());
    assert!(
        Cli::try_parse_from([
            "quotad",
            "grpc",
            "--tls-cert",
            "c.pem",
            "--tls-key",
            "k.pem"
        ])
        .is_ok()
    );
    assert!(Cli::try_parse_from(["quotad", "serve", "--max-concurrency", "0"]).is_err());
}

#[test]
fn command_line_is_consistent() {
    Cli::command().debug_assert();
}

#[test]
fn create_needs_exactly_one_quota() {
    assert!(Cli::try_parse_from(["quotad", "token", "create"]).is_err());
    assert!(
        Cli::try_parse_from(["quotad", "token", "create", "--quota", "1", "--unlimited"]).is_err()
    );
    assert!(Cli::try_parse_from(["quotad", "token", "create", "--quota-usd", "5"]).is_ok());
}

#[test]
fn durations_take_a_unit_or_seconds() {
    assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
    assert_eq!(parse_duration("2s"), Ok(Duration::from_secs(2)));
    assert_eq!(parse_duration("60"), Ok(Duration::from_secs(60)));
    assert_eq!(parse_duration("1m"), Ok(Duration::from_secs(60)));
    assert!(parse_duration("soon").is_err());
    assert!(parse_duration("-1s").is_err());
    assert!(parse_duration("3h").is_err());
}

#[test]
fn migrate_is_auto_or_off() {
    assert!(Cli::try_parse_from(["quotad", "grpc", "--migrate", "off"]).is_ok());
    assert!(Cli::try_parse_from(["quotad", "grpc", "--migrate=auto"]).is_ok());
    assert!(Cli::try_parse_from(["quotad", "grpc", "--migrate", "sometimes"]).is_err());
    assert!(Cli::try_parse_from(["quotad", "health"]).is_err());
}

#[test]
fn quota_must_be_a_number() {
    assert!(Cli::try_parse_from(["quotad", "token", "grant", "1", "--quota", "lots"]).is_err());
    assert!(Cli::try_parse_from(["quotad", "serve", "--quota-per-usd", "x"]).is_err());
}

#[test]
fn a_negative_quota_is_a_value_not_a_flag() {
    // Taken as the value it is, so that the service's own refusal names it
    // ("quota must be a positive number of units, got -100") rather than
    // clap taking `-1` for a flag.
    let cli = Cli::try_parse_from(["quotad", "token", "create", "--quota", "-100"]).unwrap();
    let Command::Token {
        command: TokenCommand::Create { quota, .. },
        ..
    } = cli.command
    else {
        panic!("not token create")
    };
    assert_eq!(quota.quota, Some(-100));
    let cli = Cli::try_parse_from(["quotad", "token", "grant", "1", "--quota-usd", "-5"]).unwrap();
    let Command::Token {
        command: TokenCommand::Grant { quota, .. },
        ..
    } = cli.command
    else {
        panic!("not token grant")
    };
    assert_eq!(quota.quota_usd.as_deref(), Some("-5"));
}

#[test]
fn one_cache_ttl_and_a_capacity_for_the_service() {
    let cli = Cli::try_parse_from([
        "quotad",
        "serve",
        "--cache-ttl",
        "250ms",
        "--cache-capacity",
        "7",
    ])
    .unwrap();
    let Command::Serve { cache, .. } = cli.command else {
        panic!("not serve")
    };
    assert_eq!(cache.ttl.cache_ttl, Duration::from_millis(250));
    assert_eq!(cache.cache_capacity, 7);
    let cli = Cli::try_parse_from(["quotad", "grpc"]).unwrap();
    let Command::Grpc { cache, .. } = cli.command else {
        panic!("not grpc")
    };
    assert_eq!(cache.ttl.cache_ttl, Duration::from_secs(1));
    assert_eq!(cache.cache_capacity, quota_service::cache::DEFAULT_CAPACITY);
    // The edge keeps no look-ups of its own: a TTL, no capacity.
    assert!(
        Cli::try_parse_from([
            "quotad",
            "edge",
            "--upstream",
            "http://x:1",
            "--cache-ttl",
            "0"
        ])
        .is_ok()
    );
    assert!(
        Cli::try_parse_from([
            "quotad",
            "edge",
            "--upstream",
            "http://x:1",
            "--cache-capacity",
            "5"
        ])
        .is_err()
    );
}

#[test]
fn a_refused_command_line_is_one_line_with_its_tip_and_help() {
    let refused = |words: &[&str]| {
        let error = Cli::try_parse_from(words).unwrap_err();
        let command = command_of(words[1..].iter().map(OsString::from));
        one_line(&error.render().to_string(), &command)
    };
    let line = refused(&["quotad", "serve", "--htp-addr", "x"]);
    assert!(!line.contains('\n'), "{line}");
    assert!(
        line.starts_with("quotad: unexpected argument '--htp-addr' found"),
        "{line}"
    );
    assert!(line.contains("'--http-addr'"), "the tip: {line}");
    assert!(line.ends_with("; see 'quotad serve --help'"), "{line}");

    let line = refused(&[
        "quotad", "token", "--output", "json", "create", "--quota", "x",
    ]);
    assert!(line.contains("invalid value 'x' for '--quota"), "{line}");
    assert!(
        line.ends_with("; see 'quotad token create --help'"),
        "{line}"
    );

    let line = refused(&["quotad", "frobnicate"]);
    assert!(line.contains("'frobnicate'"), "{line}");
    assert!(line.ends_with("; see 'quotad --help'"), "{line}");

    // A negative number is a value, refused as one.
    let line = refused(&["quotad", "serve", "--max-concurrency", "-3"]);
    assert!(
        line.starts_with("quotad: invalid value '-3' for '--max-concurrency"),
        "{line}"
    );
    let line = refused(&["quotad", "serve", "--cache-ttl", "-1"]);
    assert!(
        line.starts_with("quotad: invalid value '-1' for '--cache-ttl"),
        "{line}"
    );

    // What is missing is named.
    assert_eq!(
        refused(&["quotad", "edge"]),
        "quotad: the following required arguments were not provided: --upstream <URL>; \
         see 'quotad edge --help'"
    );
    let line = refused(&["quotad", "token", "grant"]);
    assert!(
        line.contains("not provided: <--quota-usd <USD>|--quota <UNITS>>, <KEY|ID>;"),
        "{line}"
    );
}

#[test]
fn the_log_format_of_a_refused_command_line_is_read_from_its_words() {
    let words = |w: &[&str]| w.iter().map(OsString::from).collect::<Vec<_>>();
    let json = Some(OsString::from("json"));
    assert_eq!(
        log_format_of(words(&["serve", "--x"]), None),
        LogFormat::Text
    );
    assert_eq!(
        log_format_of(words(&["serve"]), json.clone()),
        LogFormat::Json
    );
    assert_eq!(
        log_format_of(words(&["--log-format", "json", "serve"]), None),
        LogFormat::Json
    );
    assert_eq!(
        log_format_of(words(&["serve", "--log-format=JSON"]), None),
        LogFormat::Json
    );
    // The flag wins over the variable, and what follows `--` is no flag.
    assert_eq!(
        log_format_of(words(&["serve", "--log-format", "text"]), json),
        LogFormat::Text
    );
    assert_eq!(
        log_format_of(words(&["serve", "--", "--log-format=json"]), None),
        LogFormat::Text
    );
}

#[test]
fn defaults_are_the_contracts() {
    let cli = Cli::try_parse_from(["quotad", "serve"]).unwrap();
    let Command::Serve {
        db,
        grpc,
        http,
        server,
        throttle,
        cache,
        ..
    } = cli.command
    else {
        panic!("not serve")
    };
    assert_eq!(db.database_url, "sqlite://quota.db");
    assert_eq!(grpc.grpc_addr, "127.0.0.1:50051");
    assert_eq!(http.http_addr, "127.0.0.1:8080");
    assert_eq!(server.max_concurrency, 1024);
    assert_eq!(throttle.auth_failures_per_minute, 60);
    assert_eq!(cache.ttl.cache_ttl, Duration::from_secs(1));
    assert_eq!(cli.log_format, LogFormat::Text);
    let cli = Cli::try_parse_from(["quotad", "token", "list"]).unwrap();
    let Command::Token { admin, .. } = cli.command else {
        panic!("not token")
    };
    assert_eq!(admin.server, "http://127.0.0.1:50051");
}

#[test]
fn the_help_names_the_default_log_filter() {
    let help = Cli::command().render_long_help().to_string();
    let help = help.split_whitespace().collect::<Vec<_>>().join(" ");
    assert!(
        help.contains(&format!("default `{}`", crate::telemetry::DEFAULT_LOG)),
        "{help}"
    );
}

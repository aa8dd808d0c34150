//! What an operator sees: Prometheus metrics on `--metrics-addr`, request
//! ids followed across `quotad edge` and `quotad grpc`, JSON logs.

use crate::helpers::*;
use quota::pb;
use quota::pb::quota_service_client::QuotaServiceClient;
use serde_json::Value;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

/// The address announced as `metrics listening on http://ADDR/metrics`.
fn metrics_addr(server: &Server) -> SocketAddr {
    let log = server.log.lock().unwrap().clone();
    log.lines()
        .find_map(|l| address_after(l, "metrics listening on http://"))
        .unwrap_or_else(|| panic!("no metrics address announced:\n{log}"))
}

/// One scrape: the text, and each sample by `name{labels}`.
fn scrape(addr: SocketAddr) -> (String, HashMap<String, f64>) {
    let response = http_request(addr, "GET", "/metrics", &[]);
    assert_eq!(response.status, 200, "{response:?}");
    assert!(
        response
            .header("content-type")
            .is_some_and(|t| t.starts_with("text/plain")),
        "{response:?}"
    );
    let samples = response
        .body
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .map(|l| {
            let (series, value) = l.rsplit_once(' ').unwrap();
            (series.to_owned(), value.parse().unwrap())
        })
        .collect();
    (response.body, samples)
}

/// How much each series moved between two scrapes (absent counts as 0).
fn delta(before: &HashMap<String, f64>, after: &HashMap<String, f64>, series: &str) -> f64 {
    after.get(series).copied().unwrap_or(0.0) - before.get(series).copied().unwrap_or(0.0)
}

fn http_series(route: &str, method: &str, status: u16) -> String {
    format!(r#"quota_http_requests_total{{route="{route}",method="{method}",status="{status}"}}"#)
}

fn debits_series(outcome: &str) -> String {
    format!(r#"quota_debits_total{{outcome="{outcome}"}}"#)
}

fn grpc_series(method: &str, code: &str) -> String {
    format!(
        r#"quota_grpc_requests_total{{method="/quota.v1.QuotaService/{method}",code="{code}"}}"#
    )
}

/// The code a gRPC call answers with, made by `call` with a client of
/// `grpc_url` and the request carrying `Authorization: Bearer {bearer}`.
fn grpc_code<T, R, F>(
    grpc_url: &str,
    bearer: &str,
    message: T,
    call: impl FnOnce(QuotaServiceClient<tonic::transport::Channel>, tonic::Request<T>) -> F,
) -> tonic::Code
where
    F: std::future::Future<Output = Result<tonic::Response<R>, tonic::Status>>,
{
    match grpc_answer(grpc_url, bearer, message, call) {
        Ok(_) => tonic::Code::Ok,
        Err(code) => code,
    }
}

/// The answer of a gRPC call made as [`grpc_code`] makes it: the message, or the code.
fn grpc_answer<T, R, F>(
    grpc_url: &str,
    bearer: &str,
    message: T,
    call: impl FnOnce(QuotaServiceClient<tonic::transport::Channel>, tonic::Request<T>) -> F,
) -> Result<R, tonic::Code>
where
    F: std::future::Future<Output = Result<tonic::Response<R>, tonic::Status>>,
{
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let client = QuotaServiceClient::connect(grpc_url.to_owned())
            .await
            .unwrap();
        let mut request = tonic::Request::new(message);
        request
            .metadata_mut()
            .insert("authorization", format!("Bearer {bearer}").parse().unwrap());
        call(client, request)
            .await
            .map(tonic::Response::into_inner)
            .map_err(|status| status.code())
    })
}

/// `GetSubscription` over gRPC, as `key`.
fn get_subscription(grpc_url: &str, key: &str) -> tonic::Code {
    grpc_code(
        grpc_url,
        key,
        pb::GetSubscriptionRequest {},
        |mut c, r| async move { c.get_subscription(r).await },
    )
}

/// `Consume` of `quota` units of `key` under `request_id`, with the admin secret.
fn consume(grpc_url: &str, key: &str, quota: i64, request_id: &str) -> tonic::Code {
    let message = pb::ConsumeRequest {
        token: key.to_owned(),
        quota,
        request_id: request_id.to_owned(),
    };
    grpc_code(grpc_url, ADMIN, message, |mut c, r| async move {
        c.consume(r).await
    })
}

/// `Reserve` of `quota` units of `key` for 600 s under `request_id`, with the admin secret.
fn reserve(grpc_url: &str, key: &str, quota: i64, request_id: &str) -> tonic::Code {
    let message = pb::ReserveRequest {
        token: key.to_owned(),
        quota,
        request_id: request_id.to_owned(),
        ttl_seconds: 600,
    };
    grpc_code(grpc_url, ADMIN, message, |mut c, r| async move {
        c.reserve(r).await
    })
}

/// `Settle` of the hold `request_id` of `key` at a cost of `quota` units, with the admin secret.
fn settle(
    grpc_url: &str,
    key: &str,
    request_id: &str,
    quota: i64,
) -> Result<pb::SettleResponse, tonic::Code> {
    let message = pb::SettleRequest {
        token: key.to_owned(),
        request_id: request_id.to_owned(),
        quota,
    };
    grpc_answer(grpc_url, ADMIN, message, |mut c, r| async move {
        c.settle(r).await
    })
}

/// `Release` of the hold `request_id` of `key`, with the admin secret.
fn release(grpc_url: &str, key: &str, request_id: &str) -> tonic::Code {
    let message = pb::ReleaseRequest {
        token: key.to_owned(),
        request_id: request_id.to_owned(),
    };
    grpc_code(grpc_url, ADMIN, message, |mut c, r| async move {
        c.release(r).await
    })
}

#[test]
fn grpc_and_edge_each_serve_their_own_metrics() {
    let dir = TempDir::new();
    let mut grpc = quotad();
    grpc.args(["grpc", "--database-url", &dir.sqlite_url("quota.db")])
        .args([
            "--grpc-addr",
            "127.0.0.1:0",
            "--metrics-addr",
            "127.0.0.1:0",
        ]);
    let service = Server::spawn(grpc, dir.path(), Serves::GRPC);
    let mut edge = quotad();
    edge.args(["edge", "--upstream", &service.grpc_url])
        .args(["--http-addr", "127.0.0.1:0"])
        .env("QUOTA_METRICS_ADDR", "127.0.0.1:0");
    let edge = Server::spawn(edge, dir.path(), Serves::HTTP);
    let (key, _) = create_key(&service, "5");
    let (service_metrics, edge_metrics) = (metrics_addr(&service), metrics_addr(&edge));
    assert_ne!(service_metrics, edge_metrics);
    let (_, service_before) = scrape(service_metrics);
    let (_, edge_before) = scrape(edge_metrics);

    const SUB: &str = "/v1/dashboard/billing/subscription";
    let auth = format!("Bearer {key}");
    let http = edge.http.unwrap();
    assert_eq!(
        http_request(http, "GET", SUB, &[("Authorization", auth.as_str())]).status,
        200
    );
    assert_eq!(
        consume(&service.grpc_url, &key, 500, "split-1"),
        tonic::Code::Ok
    );

    // The edge counts its REST request; the service the edge's gRPC call
    // and the debit, and the debit's units.
    let (text, after) = scrape(edge_metrics);
    assert_eq!(
        delta(&edge_before, &after, &http_series(SUB, "GET", 200)),
        1.0,
        "{text}"
    );
    let (text, after) = scrape(service_metrics);
    let moved = |series: &str| delta(&service_before, &after, series);
    assert_eq!(moved(&grpc_series("GetSubscription", "OK")), 1.0, "{text}");
    assert_eq!(moved(&grpc_series("Consume", "OK")), 1.0, "{text}");
    assert_eq!(moved(&debits_series("debited")), 1.0, "{text}");
    assert_eq!(moved("quota_debited_units_total"), 500.0, "{text}");
    assert!(!text.contains("quota_http_requests_total{"), "{text}");
}

#[test]
fn metrics_count_requests_by_route_method_and_status() {
    let dir = TempDir::new();
    let mut cmd = quotad();
    cmd.args(["serve", "--database-url", &dir.sqlite_url("quota.db")])
        .args(["--grpc-addr", "127.0.0.1:0", "--http-addr", "127.0.0.1:0"])
        .env("QUOTA_METRICS_ADDR", "127.0.0.1:0");
    let server = Server::spawn(cmd, dir.path(), Serves::BOTH);
    let metrics = metrics_addr(&server);
    let http = server.http.unwrap();
    let (key, _) = create_key(&server, "5");

    let (_, before) = scrape(metrics);
    const SUB: &str = "/v1/dashboard/billing/subscription";
    const BARE: &str = "/dashboard/billing/subscription";
    const USAGE: &str = "/v1/dashboard/billing/usage";
    let auth = format!("Bearer {key}");
    let with_key = [("Authorization", auth.as_str())];
    for _ in 0..3 {
        assert_eq!(http_request(http, "GET", SUB, &with_key).status, 200);
    }
    assert_eq!(http_request(http, "GET", BARE, &with_key).status, 200);
    for _ in 0..2 {
        assert_eq!(http_request(http, "GET", SUB, &[]).status, 401);
    }
    let bad_date = format!("{USAGE}?start_date=yesterday");
    // In `serve` the edge calls its service in process: the gRPC status's
    // field (`param`) still reaches the body.
    let refused = http_request(http, "GET", &bad_date, &with_key);
    assert_eq!(refused.status, 400);
    assert!(
        refused
            .body
            .contains(r#""param":"start_date","code":"invalid_date""#),
        "{refused:?}"
    );
    assert_eq!(http_request(http, "DELETE", SUB, &with_key).status, 405);
    for path in [
        "/nope",
        "/v2/dashboard/billing/subscription",
        "/sk-guessed/x?y=1",
    ] {
        assert_eq!(http_request(http, "GET", path, &with_key).status, 404);
    }
    assert_eq!(http_request(http, "GET", "/healthz", &[]).status, 200);
    assert_eq!(get_subscription(&server.grpc_url, &key), tonic::Code::Ok);
    // Debits: one debited, its repeat, one the key cannot afford, one unknown key.
    assert_eq!(
        consume(&server.grpc_url, &key, 1234, "m-1"),
        tonic::Code::Ok
    );
    assert_eq!(
        consume(&server.grpc_url, &key, 1234, "m-1"),
        tonic::Code::Ok
    );
    assert_eq!(
        consume(&server.grpc_url, &key, 1_000_000_000, "m-2"),
        tonic::Code::ResourceExhausted
    );
    let unknown = format!("sk-{}", "x".repeat(48));
    assert_eq!(
        consume(&server.grpc_url, &unknown, 1, "m-3"),
        tonic::Code::NotFound
    );

    let (text, after) = scrape(metrics);
    let moved = |series: &str| delta(&before, &after, series);
    assert_eq!(moved(&http_series(SUB, "GET", 200)), 3.0, "{text}");
    assert_eq!(moved(&http_series(BARE, "GET", 200)), 1.0, "{text}");
    assert_eq!(moved(&http_series(SUB, "GET", 401)), 2.0, "{text}");
    assert_eq!(moved(&http_series(USAGE, "GET", 400)), 1.0, "{text}");
    assert_eq!(moved(&http_series(SUB, "DELETE", 405)), 1.0, "{text}");
    assert_eq!(moved(&http_series("unknown", "GET", 404)), 3.0, "{text}");
    assert_eq!(moved(&http_series("/healthz", "GET", 200)), 1.0, "{text}");
    let sub_count = format!(r#"quota_http_request_duration_seconds_count{{route="{SUB}"}}"#);
    assert_eq!(moved(&sub_count), 6.0, "3 + 2 + 1 (the 405), {text}");
    // In `serve` the edge calls its service in process: a REST read is one
    // request, counted once, by the REST series. The gRPC series count the
    // calls of the gRPC listener: the one read and the debits below.
    assert_eq!(moved(&grpc_series("GetSubscription", "OK")), 1.0, "{text}");
    assert_eq!(
        moved(&grpc_series("GetSubscription", "UNAUTHENTICATED")),
        0.0,
        "{text}"
    );
    assert_eq!(
        moved(&grpc_series("GetUsage", "INVALID_ARGUMENT")),
        0.0,
        "{text}"
    );
    assert_eq!(moved(&grpc_series("Consume", "OK")), 2.0, "{text}");
    assert_eq!(
        moved(&grpc_series("Consume", "RESOURCE_EXHAUSTED")),
        1.0,
        "{text}"
    );
    assert_eq!(moved(&grpc_series("Consume", "NOT_FOUND")), 1.0, "{text}");
    let grpc_count =
        r#"quota_grpc_request_duration_seconds_count{method="/quota.v1.QuotaService/Consume"}"#;
    assert_eq!(moved(grpc_count), 4.0, "{text}");
    for (outcome, n) in [
        ("debited", 1.0),
        ("repeat", 1.0),
        ("insufficient", 1.0),
        ("refused", 1.0),
    ] {
        assert_eq!(moved(&debits_series(outcome)), n, "{outcome}: {text}");
    }
    assert_eq!(moved("quota_debited_units_total"), 1234.0, "{text}");
    // Both duration metrics are histograms.
    assert!(
        text.contains("# TYPE quota_http_request_duration_seconds histogram"),
        "{text}"
    );
    assert!(
        text.contains("# TYPE quota_grpc_request_duration_seconds histogram"),
        "{text}"
    );
    // The pool of the SQLite file: its writer and its readers.
    assert_eq!(
        after[r#"quota_db_connections{pool="write",state="max"}"#], 1.0,
        "{text}"
    );
    assert!(
        after.contains_key(r#"quota_db_connections{pool="read",state="in_use"}"#),
        "{text}"
    );
    // Unknown paths share one value; no path and no key is ever a label.
    assert!(!text.contains("/nope") && !text.contains("/v2/"), "{text}");
    assert!(!text.contains(&key) && !text.contains("sk-"), "{text}");
    // Anything but /metrics is a 404 on the metrics listener.
    assert_eq!(http_request(metrics, "GET", "/", &[]).status, 404);
}

#[test]
fn a_settle_is_counted_as_a_debit_of_its_cost() {
    let dir = TempDir::new();
    let mut cmd = quotad();
    cmd.args(["grpc", "--database-url", &dir.sqlite_url("quota.db")])
        .args(["--grpc-addr", "127.0.0.1:0"])
        .env("QUOTA_METRICS_ADDR", "127.0.0.1:0");
    let server = Server::spawn(cmd, dir.path(), Serves::GRPC);
    let metrics = metrics_addr(&server);
    let url = &server.grpc_url;
    // $5: 2,500,000 units.
    let (key, _) = create_key(&server, "5");

    let (_, before) = scrape(metrics);
    // Settled below its hold, then again: a debit of 700, then a repeat.
    assert_eq!(reserve(url, &key, 1000, "h-1"), tonic::Code::Ok);
    let settled = settle(url, &key, "h-1", 700).unwrap();
    assert_eq!((settled.used, settled.repeat), (700, false));
    assert!(settle(url, &key, "h-1", 700).unwrap().repeat);
    // Settled for nothing: a debit of 0 units.
    assert_eq!(reserve(url, &key, 40, "h-2"), tonic::Code::Ok);
    assert_eq!(settle(url, &key, "h-2", 0).unwrap().used, 700);
    // Refused: a released hold, no such hold, a negative cost, an unknown key.
    assert_eq!(reserve(url, &key, 50, "h-3"), tonic::Code::Ok);
    assert_eq!(release(url, &key, "h-3"), tonic::Code::Ok);
    assert_eq!(
        settle(url, &key, "h-3", 10).unwrap_err(),
        tonic::Code::FailedPrecondition
    );
    assert_eq!(
        settle(url, &key, "h-4", 10).unwrap_err(),
        tonic::Code::NotFound
    );
    assert_eq!(reserve(url, &key, 10, "h-5"), tonic::Code::Ok);
    assert_eq!(
        settle(url, &key, "h-5", -1).unwrap_err(),
        tonic::Code::InvalidArgument
    );
    let unknown = format!("sk-{}", "x".repeat(48));
    assert_eq!(
        settle(url, &unknown, "h-5", 10).unwrap_err(),
        tonic::Code::NotFound
    );
    // Above the balance: the whole cost is debited, the part the balance
    // cannot cover reported as overdraft.
    assert_eq!(reserve(url, &key, 100, "h-6"), tonic::Code::Ok);
    let over = settle(url, &key, "h-6", 3_000_000).unwrap();
    assert_eq!(over.used, 3_000_700);
    assert!(over.overdraft > 0, "{over:?}");
    // Reserves and releases are not debits, refused or not.
    assert_eq!(reserve(url, &key, 1, "h-7"), tonic::Code::ResourceExhausted);
    assert_eq!(release(url, &key, "h-5"), tonic::Code::Ok);

    let (text, after) = scrape(metrics);
    let moved = |series: &str| delta(&before, &after, series);
    for (outcome, n) in [
        ("debited", 3.0),
        ("repeat", 1.0),
        ("insufficient", 0.0),
        ("refused", 4.0),
        ("failed", 0.0),
    ] {
        assert_eq!(moved(&debits_series(outcome)), n, "{outcome}: {text}");
    }
    assert_eq!(
        moved("quota_debited_units_total"),
        700.0 + 3_000_000.0,
        "{text}"
    );
}

#[test]
fn metrics_are_off_unless_an_address_is_given() {
    let dir = TempDir::new();
    let mut cmd = quotad();
    cmd.args(["serve", "--database-url", &dir.sqlite_url("quota.db")])
        .args(["--grpc-addr", "127.0.0.1:0", "--http-addr", "127.0.0.1:0"])
        .env("QUOTA_METRICS_ADDR", "");
    let server = Server::spawn(cmd, dir.path(), Serves::BOTH);
    let (status, log) = server.stop_with("TERM");
    assert!(status.success(), "{log}");
    assert!(!log.contains("metrics listening"), "{log}");
}

/// Waits (bounded) until `server`'s log has a line containing all of `parts`.
fn wait_for_line(server: &Server, parts: &[&str]) -> String {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let log = server.log.lock().unwrap().clone();
        if let Some(line) = log.lines().find(|l| parts.iter().all(|p| l.contains(p))) {
            return line.to_owned();
        }
        assert!(
            Instant::now() < deadline,
            "no line with {parts:?} in:\n{log}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Every line of `log` is one JSON object with a level and a message.
fn every_line_is_json(log: &str, what: &str) -> Vec<Value> {
    assert!(!log.trim().is_empty(), "{what} logged nothing");
    log.lines()
        .map(|line| {
            let v: Value = serde_json::from_str(line)
                .unwrap_or_else(|e| panic!("{what}: not a JSON line ({e}): {line:?}"));
            assert!(
                v["level"].is_string() && v["fields"]["message"].is_string(),
                "{line}"
            );
            v
        })
        .collect()
}

/// `quotad grpc` on a SQLite file in `dir`, a `$5` key of it, and `quotad
/// edge` in front of it, both with `env` set.
fn edge_and_service(dir: &TempDir, env: &[(&str, &str)]) -> (Server, Server, String) {
    let mut grpc = quotad();
    grpc.args(["grpc", "--database-url", &dir.sqlite_url("quota.db")])
        .args(["--grpc-addr", "127.0.0.1:0"])
        .envs(env.iter().copied());
    let service = Server::spawn(grpc, dir.path(), Serves::GRPC);
    let (key, _) = create_key(&service, "5");
    let mut edge = quotad();
    edge.args(["edge", "--upstream", &service.grpc_url])
        .args(["--http-addr", "127.0.0.1:0"])
        .envs(env.iter().copied());
    let edge = Server::spawn(edge, dir.path(), Serves::HTTP);
    (service, edge, key)
}

/// The filter an operator sets to see every answered request, not only
/// refusals and failures, as the README's Logs section says.
const EVERY_REQUEST: &str = "info,quota_edge::telemetry=debug,quota_telemetry::grpc=debug";

#[test]
fn a_request_id_is_followed_across_edge_and_service_in_json_logs() {
    let dir = TempDir::new();
    let (service, edge, key) = edge_and_service(
        &dir,
        &[("QUOTA_LOG", EVERY_REQUEST), ("QUOTA_LOG_FORMAT", "json")],
    );

    let id = format!("trace-{}", std::process::id());
    let auth = format!("Bearer {key}");
    let response = http_request(
        edge.http.unwrap(),
        "GET",
        "/v1/dashboard/billing/subscription",
        &[("Authorization", &auth), ("X-Request-Id", &id)],
    );
    assert_eq!(response.status, 200, "{response:?}");
    assert_eq!(response.header("x-request-id"), Some(id.as_str()));
    // A made id comes back too, and differs per request.
    let made = http_request(edge.http.unwrap(), "GET", "/healthz", &[]);
    let made = made.header("x-request-id").unwrap().to_owned();
    assert_eq!(made.len(), 36, "{made}");

    let quoted = format!(r#""request_id":"{id}""#);
    wait_for_line(
        &edge,
        &[&quoted, r#""route":"/v1/dashboard/billing/subscription""#],
    );
    wait_for_line(
        &service,
        &[
            &quoted,
            r#""method":"/quota.v1.QuotaService/GetSubscription""#,
        ],
    );

    let (status, edge_log) = edge.stop_with("TERM");
    assert!(status.success(), "{edge_log}");
    let (status, service_log) = service.stop_with("TERM");
    assert!(status.success(), "{service_log}");
    for (log, what) in [(&edge_log, "quotad edge"), (&service_log, "quotad grpc")] {
        let lines = every_line_is_json(log, what);
        // The request's lines carry its id as a span field.
        let with_id: Vec<&Value> = lines
            .iter()
            .filter(|v| v["span"]["request_id"] == id.as_str())
            .collect();
        assert!(!with_id.is_empty(), "{what}: no line carries {id}:\n{log}");
        // `spans` lists every enclosing span, the line's own the last.
        for line in &with_id {
            let spans = line["spans"].as_array().map(Vec::as_slice);
            let innermost = spans.and_then(<[Value]>::last);
            assert_eq!(innermost, Some(&line["span"]), "{what}: {line}");
        }
        assert!(!log.contains(&key), "{what} logged a key:\n{log}");
    }
}

#[test]
fn at_the_default_level_refusals_are_logged_and_answered_reads_are_not() {
    let dir = TempDir::new();
    let (service, edge, key) = edge_and_service(&dir, &[]);
    const SUB: &str = "/v1/dashboard/billing/subscription";
    let pid = std::process::id();
    let (served, refused) = (format!("served-{pid}"), format!("refused-{pid}"));
    let auth = format!("Bearer {key}");
    let unknown = format!("Bearer sk-{}", "x".repeat(48));
    for (id, auth, status) in [(&served, &auth, 200), (&refused, &unknown, 401)] {
        let response = http_request(
            edge.http.unwrap(),
            "GET",
            SUB,
            &[("Authorization", auth), ("X-Request-Id", id)],
        );
        assert_eq!(response.status, status, "{response:?}");
    }
    // The refusal is one `info` line on each side, carrying its id.
    let in_span = format!("request_id={refused}");
    wait_for_line(&edge, &[&in_span, "request finished", "status=401"]);
    wait_for_line(&service, &[&in_span, "call finished", "UNAUTHENTICATED"]);
    let (status, edge_log) = edge.stop_with("TERM");
    assert!(status.success(), "{edge_log}");
    let (status, service_log) = service.stop_with("TERM");
    assert!(status.success(), "{service_log}");
    for log in [&edge_log, &service_log] {
        assert!(
            !log.contains(&served),
            "an answered read logged at info:\n{log}"
        );
    }
}

#[test]
fn a_failure_at_start_is_one_json_line_too() {
    let dir = TempDir::new();
    let closed = ClosedPort::new();
    let mut cmd = quotad();
    cmd.args(["grpc", "--grpc-addr", "127.0.0.1:0"])
        .args([
            "--database-url",
            &format!("postgres://nobody@127.0.0.1:{}/x", closed.port()),
        ])
        .env("QUOTA_LOG_FORMAT", "json")
        .current_dir(dir.path());
    let out = run(cmd, COMMAND_TIMEOUT);
    assert!(!out.status.success(), "{}", describe(&out));
    let lines = every_line_is_json(&stderr_of(&out), "quotad grpc");
    let last = lines.last().unwrap();
    assert_eq!(last["level"], "ERROR");
    assert!(
        last["fields"]["message"]
            .as_str()
            .unwrap()
            .starts_with("quotad: "),
        "{last}"
    );
}

//! `quotad verify`: clean while debits run, a counter or a day's usage total
//! changed behind its back found, exit 2 when the database cannot be read.

use crate::common::{COMMAND_TIMEOUT, run};
use crate::helpers::{Server, admin, consume, describe, quotad, verify};
use quota::pb::quota_service_client::QuotaServiceClient;
use quota::pb::token_admin_client::TokenAdminClient;
use quota::pb::{CreateTokenRequest, GrantQuotaRequest, TokenRef, token_ref};
use quota_service::testing::TestDb;
use sea_orm::ConnectionTrait;
use std::time::Duration;

fn stdout(out: &std::process::Output) -> String {
    String::from_utf8(out.stdout.clone()).unwrap()
}

/// Debits from 8 callers, grants, an unlimited token; `verify` runs three
/// times meanwhile and once after, and finds everything in agreement.
async fn clean_while_debits_run(db: TestDb) {
    let server = Server::start(&db.url).await;
    let (limited, limited_id) = server.create_token(10_000).await;
    let unlimited = TokenAdminClient::new(server.channel().await)
        .create_token(admin(CreateTokenRequest {
            unlimited: true,
            ..Default::default()
        }))
        .await
        .unwrap()
        .into_inner()
        .key;
    let channel = server.channel().await;
    let callers: Vec<_> = (0..8)
        .map(|caller| {
            let mut client = QuotaServiceClient::new(channel.clone());
            let key = if caller % 2 == 0 {
                &limited
            } else {
                &unlimited
            }
            .clone();
            tokio::spawn(async move {
                for n in 0..80 {
                    consume(&mut client, &key, &format!("{caller}-{n}"))
                        .await
                        .unwrap();
                }
            })
        })
        .collect();
    let mut admin_client = TokenAdminClient::new(channel.clone());
    for _ in 0..3 {
        admin_client
            .grant_quota(admin(GrantQuotaRequest {
                token: Some(TokenRef {
                    r#ref: Some(token_ref::Ref::Id(limited_id)),
                }),
                quota: 7,
                ..Default::default()
            }))
            .await
            .unwrap();
        let out = tokio::task::block_in_place(|| verify(&db.url));
        assert_eq!(out.status.code(), Some(0), "{}", describe(&out));
    }
    for caller in callers {
        caller.await.unwrap();
    }
    let out = tokio::task::block_in_place(|| verify(&db.url));
    assert_eq!(out.status.code(), Some(0), "{}", describe(&out));
    assert_eq!(
        stdout(&out),
        "2 tokens checked: 2 agree with their ledger, 0 disagree\n"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verify_is_clean_while_debits_run_on_sqlite() {
    clean_while_debits_run(TestDb::sqlite().await).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verify_is_clean_while_debits_run_on_postgres() {
    if let Some(db) = TestDb::postgres().await {
        clean_while_debits_run(db).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verify_is_clean_while_debits_run_on_mysql() {
    if let Some(db) = TestDb::mysql().await {
        clean_while_debits_run(db).await;
    }
}

/// Three tokens written in SQL with their ledgers; then one's `used` and
/// another's `remaining` are changed behind the ledger's back.
async fn finds_counters_changed_behind_its_back(db: TestDb) {
    let store = db.store().await;
    let sql = store.connection();
    for (id, remaining, used) in [(1, 70, 30), (2, 100, 0), (3, 0, 50)] {
        sql.execute_unprepared(&format!(
            "INSERT INTO quota_tokens (id, key_digest, display_prefix, name, remaining, used, \
             unlimited, status, created_at, updated_at) \
             VALUES ({id}, '{id:064}', 'sk-tok{id}…', '', {remaining}, {used}, FALSE, 1, 0, 0)"
        ))
        .await
        .unwrap();
        sql.execute_unprepared(&format!(
            "INSERT INTO quota_ledger (token_id, kind, units, created_at) \
             VALUES ({id}, 1, {}, 0)",
            remaining + used
        ))
        .await
        .unwrap();
        if used > 0 {
            sql.execute_unprepared(&format!(
                "INSERT INTO quota_ledger (token_id, kind, units, request_id, created_at) \
                 VALUES ({id}, 2, {used}, 'r{id}', 0)"
            ))
            .await
            .unwrap();
            sql.execute_unprepared(&format!(
                "INSERT INTO quota_usage_days (token_id, day, units) VALUES ({id}, 0, {used})"
            ))
            .await
            .unwrap();
        }
    }
    let out = tokio::task::block_in_place(|| verify(&db.url));
    assert_eq!(out.status.code(), Some(0), "{}", describe(&out));

    sql.execute_unprepared("UPDATE quota_tokens SET used = used + 5 WHERE id = 1")
        .await
        .unwrap();
    sql.execute_unprepared("UPDATE quota_tokens SET remaining = remaining - 9 WHERE id = 3")
        .await
        .unwrap();
    let out = tokio::task::block_in_place(|| verify(&db.url));
    assert_eq!(out.status.code(), Some(1), "{}", describe(&out));
    assert_eq!(
        stdout(&out),
        "token 1 (sk-tok1…): limit (remaining + used) is 105 but its grants add up to 100\n\
         token 1 (sk-tok1…): used is 35 but its debits add up to 30\n\
         token 3 (sk-tok3…): limit (remaining + used) is 41 but its grants add up to 50\n\
         3 tokens checked: 1 agree with their ledger, 2 disagree\n"
    );

    // The counters put back; then a day's usage total changed, one made up
    // for a day without debits, and one removed.
    for update in [
        "UPDATE quota_tokens SET used = used - 5 WHERE id = 1",
        "UPDATE quota_tokens SET remaining = remaining + 9 WHERE id = 3",
        "UPDATE quota_usage_days SET units = units + 4 WHERE token_id = 1",
        "INSERT INTO quota_usage_days (token_id, day, units) VALUES (2, 86400, 7)",
        "DELETE FROM quota_usage_days WHERE token_id = 3",
    ] {
        sql.execute_unprepared(update).await.unwrap();
    }
    let out = tokio::task::block_in_place(|| verify(&db.url));
    assert_eq!(out.status.code(), Some(1), "{}", describe(&out));
    assert_eq!(
        stdout(&out),
        "token 1 (sk-tok1…): usage on 1970-01-01 is 34 but its debits that day add up to 30\n\
         token 2 (sk-tok2…): usage on 1970-01-02 is 7 but it has no debits that day\n\
         token 3 (sk-tok3…): usage on 1970-01-01 is missing but its debits that day add up to 50\n\
         3 tokens checked: 0 agree with their ledger, 3 disagree\n"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verify_finds_counters_changed_on_sqlite() {
    finds_counters_changed_behind_its_back(TestDb::sqlite().await).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verify_finds_counters_changed_on_postgres() {
    if let Some(db) = TestDb::postgres().await {
        finds_counters_changed_behind_its_back(db).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verify_finds_counters_changed_on_mysql() {
    if let Some(db) = TestDb::mysql().await {
        finds_counters_changed_behind_its_back(db).await;
    }
}

/// Exit 2 and one line on stderr, naming no password; the line.
fn cannot_read(url: &str) -> String {
    let started = std::time::Instant::now();
    let out = verify(url);
    assert!(started.elapsed() < Duration::from_secs(10), "{url}");
    assert_eq!(out.status.code(), Some(2), "{}", describe(&out));
    assert!(out.stdout.is_empty(), "{}", describe(&out));
    let stderr = String::from_utf8(out.stderr.clone()).unwrap();
    assert_eq!(stderr.lines().count(), 1, "{}", describe(&out));
    assert!(
        stderr.starts_with("quotad verify: cannot read the database"),
        "{}",
        describe(&out)
    );
    assert!(!stderr.contains("hunter2"), "{}", describe(&out));

    // With QUOTA_LOG_FORMAT=json that line is one JSON object, like every
    // other line on stderr.
    let mut cmd = quotad();
    cmd.env("QUOTA_LOG_FORMAT", "json")
        .args(["verify", "--database-url", url]);
    let out = run(cmd, COMMAND_TIMEOUT);
    assert_eq!(out.status.code(), Some(2), "{}", describe(&out));
    let stderr = String::from_utf8(out.stderr.clone()).unwrap();
    assert_eq!(stderr.lines().count(), 1, "{}", describe(&out));
    let line: serde_json::Value =
        serde_json::from_str(&stderr).unwrap_or_else(|e| panic!("{e}: {}", describe(&out)));
    assert_eq!(line["level"], "ERROR", "{}", describe(&out));
    let message = line["fields"]["message"].as_str().unwrap_or_default();
    assert!(
        message.starts_with("quotad verify: cannot read the database"),
        "{}",
        describe(&out)
    );
    assert!(!stderr.contains("hunter2"), "{}", describe(&out));
    message.to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verify_exits_2_when_the_database_cannot_be_read() {
    // A port held bound, never listening: connections to it are refused.
    let held = tokio::net::TcpSocket::new_v4().unwrap();
    held.bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let port = held.local_addr().unwrap().port();
    let dir = std::env::temp_dir().join(format!("quotad-verify-{}-{port}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let missing = dir.join("missing.db");
    let empty = dir.join("empty.db");
    std::fs::write(&empty, b"").unwrap();
    tokio::task::block_in_place(|| {
        // Why, as `serve` says it, not the pool's "timed out" that hides it.
        for scheme in ["postgres", "mysql"] {
            let line = cannot_read(&format!("{scheme}://quota:hunter2@127.0.0.1:{port}/quota"));
            assert!(line.contains("Connection refused"), "{line}");
        }
        cannot_read(&format!("sqlite://{}", missing.display()));
        cannot_read(&format!("sqlite://{}", empty.display()));
    });
    assert!(!missing.exists(), "verify created a database");
    std::fs::remove_dir_all(&dir).unwrap();
    drop(held);
}
